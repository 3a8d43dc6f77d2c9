"""Darwin Core Archive container and ``meta.xml`` descriptor (https://dwc.tdwg.org/text/), nothing source-specific.

An :class:`Archive` is a zip or an unpacked folder; :meth:`Archive.core_and_extension` parses ``meta.xml`` into
:class:`FileSpec` s (file location, text dialect, id column, term URI -> column index or default) and checks that the
declared files exist and carry the required terms. Defaults follow the text guide: fields ``,``, lines ``\\n``,
enclosed by ``"``, UTF-8, no header lines. Every problem raises ``SourceError`` naming the archive member (and,
for a bad descriptor, the attribute): separators and quotes must be single characters, the encoding
ASCII-compatible, and ``meta.xml`` at most ``MAX_META_XML_BYTES`` (it describes files; it never holds data).
"""

from __future__ import annotations

import posixpath
import tarfile
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from pipeline.core.io import is_local, isdir, isfile, join, open_input, open_lines, url_to_fs
from pipeline.sources.base import SourceError
from pipeline.sources.textfiles import encoding_problem, text_of

NS = "{http://rs.tdwg.org/dwc/text/}"
MAX_META_XML_BYTES = 10 * 2**20  # real descriptors are a few KiB; anything near this is not a descriptor
_ESCAPES = {"\\t": "\t", "\\n": "\n", "\\r": "\r", '\\"': '"', "\\'": "'"}


def _unescape(value: str) -> str:
    for escaped, char in _ESCAPES.items():
        value = value.replace(escaped, char)
    return value


@dataclass
class FileSpec:
    location: str  # member path inside the archive
    row_type: str  # e.g. http://rs.tdwg.org/dwc/terms/Occurrence
    id_index: int  # <id> (core) or <coreid> (extension) column
    delimiter: str = ","
    quotechar: str | None = '"'  # None: fieldsEnclosedBy="" (no quoting, as in GBIF downloads)
    encoding: str = "utf-8"
    skip_lines: int = 0
    indexes: dict[str, int] = field(default_factory=dict)  # term URI -> column
    defaults: dict[str, str] = field(default_factory=dict)  # term URI -> constant value

    @property
    def max_index(self) -> int:
        return max([self.id_index, *self.indexes.values()])

    def value(self, fields: list[str], term: str) -> str | None:
        """The row's value for a term ("" -> None), else the declared default."""
        index = self.indexes.get(term)
        if index is not None and index < len(fields) and fields[index] != "":
            return fields[index]
        return self.defaults.get(term)


class Archive:
    """A DwC-A as a zip file, a tar file (``.tgz``, ``.tar.gz``, ``.tar``) or the folder it unpacks to, local or at
    an fsspec URL (``s3://...``).

    ``meta.xml`` is at the archive's root or, as many publishers pack it, in one folder inside it (``dwca/meta.xml``);
    the files it names are read from that folder. A local archive is named as pathlib spells it, a URL as written.
    A remote zip is read in place: zipfile seeks in the fsspec file, so only the zip's directory and the members
    read are fetched. A compressed tar has no directory: each member read decompresses the stream up to it.
    """

    def __init__(self, path: str | Path) -> None:
        self.path: Path | str = Path(path) if is_local(path) else str(path).rstrip("/")
        self.zip: zipfile.ZipFile | None = None
        self.tar: tarfile.TarFile | None = None
        self.prefix = ""  # the folder inside the archive that holds meta.xml ("" or "name/")
        if not isdir(self.path):
            if not isfile(self.path):
                raise SourceError(f"{self.path}: Darwin Core Archive not found")
            self._open_packed()
        self.prefix = self._meta_folder()

    def _open_packed(self) -> None:
        stream = open_input(self.path)
        try:
            self.zip = zipfile.ZipFile(stream)
            return
        except zipfile.BadZipFile as exc:
            zip_problem = str(exc)
        except OSError as exc:
            raise SourceError(f"{self.path}: cannot read ({exc})") from None
        try:
            stream.seek(0)
            self.tar = tarfile.open(fileobj=stream, mode="r:*")
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise SourceError(
                f"{self.path}: not a readable zip ({zip_problem}) or tar archive ({exc}); expected a Darwin Core "
                "Archive"
            ) from None

    def _all_names(self) -> list[str]:
        """Every file in the archive, as paths from its root."""
        if self.zip:
            return [name for name in self.zip.namelist() if not name.endswith("/")]
        if self.tar:
            return [member.name.removeprefix("./") for member in self.tar.getmembers() if member.isfile()]
        fs, root = url_to_fs(self.path)
        return sorted(posixpath.relpath(p, root) for p in fs.find(root))

    def _meta_folder(self) -> str:
        """ "" when meta.xml is at the root; else the one folder that holds a meta.xml (two are an error)."""
        names = self._all_names()
        if "meta.xml" in names:
            return ""
        nested = sorted(name for name in names if posixpath.basename(name) == "meta.xml")
        if len(nested) > 1:
            raise SourceError(
                f"{self.path}: meta.xml in several folders ({', '.join(nested[:5])}); one archive per source"
            )
        return nested[0][: -len("meta.xml")] if nested else ""

    def member(self, name: str) -> str:
        """Where a member of an unpacked archive is."""
        return join(str(self.path), self.prefix + name)

    def label(self, member: str) -> str:
        return f"{self.path}!{self.prefix}{member}" if self.zip or self.tar else self.member(member)

    def names(self) -> list[str]:
        """The files of the archive's meta.xml folder and below, as paths from that folder."""
        return [name[len(self.prefix) :] for name in self._all_names() if name.startswith(self.prefix)]

    def open(self, member: str) -> IO[bytes]:
        name = self.prefix + member
        try:
            if self.zip:
                return self.zip.open(name)
            if self.tar:
                stream = self.tar.extractfile(self._tar_member(name))
                if stream is None:
                    raise KeyError(name)
                return stream
            return open_lines(self.member(member))
        except (KeyError, FileNotFoundError):
            raise SourceError(f"{self.label(member)}: file not in archive") from None
        except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError) as exc:
            raise SourceError(f"{self.label(member)}: cannot read ({exc})") from None

    def _tar_member(self, name: str) -> tarfile.TarInfo:
        assert self.tar is not None
        for candidate in (name, "./" + name):
            try:
                return self.tar.getmember(candidate)
            except KeyError:
                continue
        raise KeyError(name)

    def core_and_extension(
        self, core_type: str, extension_type: str, required_terms: list[str]
    ) -> tuple[FileSpec, FileSpec]:
        """Parse meta.xml; return the core of ``core_type`` and its extension of ``extension_type``."""
        label = self.label("meta.xml")
        core_spec, extensions = self.describe(core_type)
        matching = [e for e in extensions if e.row_type == extension_type]
        if not matching:
            found = [e.row_type for e in extensions]
            raise SourceError(f"{label}: no <extension> with rowType {extension_type}; found {found}")
        extension = matching[0]
        missing = [term for term in required_terms if term not in extension.indexes]
        if missing:
            raise SourceError(
                f"{label}: <extension> {extension.location} has no <field> for required term(s) {missing}"
            )
        return core_spec, extension

    def describe(self, core_type: str) -> tuple[FileSpec, list[FileSpec]]:
        """Parse meta.xml; return its core (which must be of ``core_type``) and every extension, in order."""
        label = self.label("meta.xml")
        if "meta.xml" not in self.names():
            raise SourceError(f"{label}: missing; a Darwin Core Archive describes its files in meta.xml")
        with self.open("meta.xml") as stream:
            data = stream.read(MAX_META_XML_BYTES + 1)
        if len(data) > MAX_META_XML_BYTES:
            raise SourceError(
                f"{label}: larger than {MAX_META_XML_BYTES} bytes; a meta.xml describes the archive's files "
                "in a few KiB, so this is not a Darwin Core Archive descriptor"
            )
        text = text_of(data, label)
        try:
            root = ET.fromstring(text)
        except ET.ParseError as exc:
            raise SourceError(f"{label} line {exc.position[0]}: invalid XML ({exc})") from None
        if root.tag not in (NS + "archive", "archive"):
            raise SourceError(f"{label}: root element is <{root.tag}>, expected <archive> in {NS[1:-1]}")
        core = _find(root, "core")
        if core is None:
            raise SourceError(f"{label}: no <core> element")
        core_spec = self._spec(core, "id", label)
        if core_spec.row_type != core_type:
            raise SourceError(f"{label}: <core> rowType is {core_spec.row_type!r}, expected {core_type}")
        return core_spec, [self._spec(e, "coreid", label) for e in _findall(root, "extension")]

    def _spec(self, element: ET.Element, id_tag: str, label: str) -> FileSpec:
        where = f"{label}: <{element.tag.removeprefix(NS)} rowType={element.get('rowType')!r}>"
        location = _find(element, "files/location") if _find(element, "files") is not None else None
        if location is None or not (location.text or "").strip():
            raise SourceError(f"{where} has no <files><location>")
        member = location.text.strip()
        if member not in self.names():
            raise SourceError(f"{where} declares file {member!r}, which is not in the archive (found {self.names()})")
        id_element = _find(element, id_tag)
        if id_element is None:
            raise SourceError(f"{where} has no <{id_tag} index=...> element")
        lines = _unescape(element.get("linesTerminatedBy", "\\n"))
        if lines not in ("\n", "\r\n", "\r"):
            raise SourceError(f"{where}: linesTerminatedBy {lines!r} unsupported; expected \\n or \\r\\n")
        spec = FileSpec(
            location=member,
            row_type=element.get("rowType", ""),
            id_index=_index(id_element, where),
            delimiter=_unescape(element.get("fieldsTerminatedBy", ",")),
            quotechar=_unescape(element.get("fieldsEnclosedBy", '"')) or None,
            encoding=element.get("encoding", "UTF-8"),
            skip_lines=_int(element.get("ignoreHeaderLines", "0"), where, "ignoreHeaderLines"),
        )
        _check_dialect(spec, where)
        for field_element in _findall(element, "field"):
            term = field_element.get("term")
            if not term:
                raise SourceError(f"{where}: <field> without a term attribute")
            if field_element.get("index") is not None:
                spec.indexes[term] = _index(field_element, where)
            elif field_element.get("default") is not None:
                spec.defaults[term] = field_element.get("default", "")
        return spec


def _check_dialect(spec: FileSpec, where: str) -> None:
    """The csv module needs one-character separators that differ and are not line ends (else a raw TypeError)."""
    if len(spec.delimiter) != 1 or spec.delimiter in "\r\n":
        raise SourceError(f"{where}: fieldsTerminatedBy {spec.delimiter!r} must be one character, not a line end")
    if spec.quotechar is not None:
        if len(spec.quotechar) != 1 or spec.quotechar in "\r\n":
            raise SourceError(
                f"{where}: fieldsEnclosedBy {spec.quotechar!r} must be one character or empty (no quoting)"
            )
        if spec.quotechar == spec.delimiter:
            raise SourceError(f"{where}: fieldsEnclosedBy and fieldsTerminatedBy are both {spec.delimiter!r}")
    problem = encoding_problem(spec.encoding)
    if problem:
        raise SourceError(f"{where}: attribute encoding (of {spec.location}): {problem}")


def _find(element: ET.Element, path: str) -> ET.Element | None:
    namespaced = element.find("/".join(NS + part for part in path.split("/")))
    return namespaced if namespaced is not None else element.find(path)


def _findall(element: ET.Element, tag: str) -> list[ET.Element]:
    return element.findall(NS + tag) + element.findall(tag)


def _int(value: str, where: str, attribute: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise SourceError(f"{where}: {attribute}={value!r} is not an integer") from None
    if number < 0:
        raise SourceError(f"{where}: {attribute}={value!r} must not be negative")
    return number


def _index(element: ET.Element, where: str) -> int:
    return _int(
        element.get("index", ""), f"{where} <{element.tag.removeprefix(NS)} term={element.get('term')!r}>", "index"
    )


def short_core_row(label: str, number: int, line: int, core: FileSpec, found: int) -> SourceError:
    """A core row too short for its declared terms: every media row joined to the core would be suspect."""
    return SourceError(
        f"{label} row {number} (line {line}): expected at least {core.max_index + 1} fields, found {found}"
    )


def repeated_core_id(label: str, number: int, line: int, core: FileSpec, core_id: str) -> SourceError:
    return SourceError(
        f"{label} row {number} (line {line}), field id (column {core.id_index}): core id {core_id!r} "
        "repeats an earlier row; core ids must be unique, or media rows join an occurrence by chance"
    )


def no_media_rows(label: str, media: FileSpec) -> SourceError:
    return SourceError(
        f"{label}: no data rows (ignoreHeaderLines={media.skip_lines}); "
        "a multimedia file without rows gives no image to crawl"
    )
