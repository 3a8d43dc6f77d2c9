"""Normalise per-image license codes and URLs to one small vocabulary, and print credit lines.

Inputs seen in the wild:
- iNaturalist open data (``photos.license``): ``CC0``, ``CC-BY``, ``CC-BY-NC``, ``CC-BY-SA``, ``CC-BY-ND``,
  ``CC-BY-NC-SA``, ``CC-BY-NC-ND``. These carry **no version**, so they map to unversioned codes
  (``cc-by-nc``), never to a guessed version: the export does not say which one applied.
- GBIF (``dcterms:license``): Creative Commons URLs (``http://creativecommons.org/licenses/by-nc/4.0/legalcode``,
  ``http://creativecommons.org/publicdomain/zero/1.0/``) or GBIF's enum codes (``CC0_1_0``, ``CC_BY_4_0``,
  ``CC_BY_NC_4_0``).
- Hand-written codes (``cc-by-4.0``, ``CC BY-SA 3.0``).

Output codes are lowercase, SPDX-like: ``cc-by-4.0``, ``cc-by-nc-sa-3.0``, ``cc-by`` (version unknown), ``cc0-1.0``,
``pdm-1.0`` (Public Domain Mark), and ``unspecified`` -- accepted on purpose for general-domain url+caption pools
(LAION, DataComp, ...) that publish no per-image license; it means "the pool states none", not "free to use".

An empty license or "all rights reserved" raises :class:`NoOpenLicense` (iNaturalist photos without a license are
all rights reserved and must not be used); anything else not in the table raises :class:`UnknownLicense`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

UNSPECIFIED = "unspecified"

# CC license elements in the order SPDX writes them; the vocabulary is small on purpose.
_CC_KINDS = ("by", "by-sa", "by-nd", "by-nc", "by-nc-sa", "by-nc-nd")
_CC_VERSIONS = ("1.0", "2.0", "2.5", "3.0", "4.0")
_NO_LICENSE = {"", "none", "null", "all rights reserved", "all-rights-reserved", "c", "(c)", "©", "copyright"}

_CC_URL = re.compile(r"^https?://(?:www\.)?creativecommons\.org/licenses/([a-z-]+)/(\d\.\d)(?:/.*)?$")
_CC_ZERO_URL = re.compile(r"^https?://(?:www\.)?creativecommons\.org/publicdomain/zero/1\.0(?:/.*)?$")
_PDM_URL = re.compile(r"^https?://(?:www\.)?creativecommons\.org/publicdomain/mark/1\.0(?:/.*)?$")
# "cc-by-nc-4-0", "cc-by-4.0", "cc-by" after separators are unified to "-".
_CC_CODE = re.compile(r"^cc-(by(?:-nc)?(?:-sa|-nd)?)(?:-(\d)[-.](\d))?$")
_CC0_CODE = re.compile(r"^cc-?0(?:-1[-.]0)?$")


class LicenseError(ValueError):
    """A license value that cannot be used; ``code`` is the raw value as found."""

    def __init__(self, code: str | None, message: str) -> None:
        super().__init__(message)
        self.code = code


class UnknownLicense(LicenseError):
    """A license code or URL that is not in the table (fix the table or the source, never guess)."""


class NoOpenLicense(LicenseError):
    """Empty license or all rights reserved: the image is not openly licensed."""


@dataclass(frozen=True)
class License:
    code: str  # normalised code, e.g. "cc-by-nc-4.0"
    url: str | None  # canonical deed URL; None for "unspecified"

    @property
    def label(self) -> str:
        """Human form used in credit lines, e.g. "CC BY-NC 4.0", "CC0 1.0"."""
        if self.code == UNSPECIFIED:
            return "license unspecified"
        if self.code.startswith("pdm"):
            return "Public Domain Mark " + self.code.split("-", 1)[1]
        if self.code.startswith("cc0"):
            return "CC0 1.0"
        match = re.match(r"^cc-([a-z-]+?)(?:-(\d\.\d))?$", self.code)
        kind, version = (match.group(1), match.group(2)) if match else (self.code, None)
        return f"CC {kind.upper()}" + (f" {version}" if version else "")


def _cc(kind: str, version: str | None, raw: str | None) -> License:
    if kind not in _CC_KINDS or (version is not None and version not in _CC_VERSIONS):
        raise UnknownLicense(raw, f"unknown Creative Commons license {raw!r} ({kind} version {version})")
    if version is None:
        # Unversioned (iNaturalist): point at the license family's current deed, the best-known reference.
        return License(f"cc-{kind}", f"https://creativecommons.org/licenses/{kind}/4.0/")
    return License(f"cc-{kind}-{version}", f"https://creativecommons.org/licenses/{kind}/{version}/")


def normalize_license(raw: str | None) -> License:
    """Map a raw license code or URL to a :class:`License`; raise ``NoOpenLicense`` / ``UnknownLicense``."""
    text = (raw or "").strip()
    lowered = text.lower()
    if lowered in _NO_LICENSE or "all rights reserved" in lowered:
        raise NoOpenLicense(raw, f"no open license ({text!r})" if text else "no open license (empty)")
    if lowered == UNSPECIFIED:
        return License(UNSPECIFIED, None)
    if lowered.startswith(("http://", "https://")):
        url = lowered.rstrip("/") + "/"
        if _CC_ZERO_URL.match(url):
            return License("cc0-1.0", "https://creativecommons.org/publicdomain/zero/1.0/")
        if _PDM_URL.match(url):
            return License("pdm-1.0", "https://creativecommons.org/publicdomain/mark/1.0/")
        match = _CC_URL.match(url)
        if match:
            return _cc(match.group(1), match.group(2), raw)
        raise UnknownLicense(raw, f"unknown license URL {text!r}")
    code = re.sub(r"^creative\s*commons\s*", "cc-", lowered)
    code = re.sub(r"[\s_]+", "-", code).replace("--", "-")
    if _CC0_CODE.match(code):
        return License("cc0-1.0", "https://creativecommons.org/publicdomain/zero/1.0/")
    # EOL: "public domain" and "cc-publicdomain" (CC's retired Public Domain Certification, which the PDM replaced).
    if code in ("pdm", "pdm-1.0", "public-domain-mark", "public-domain", "cc-publicdomain"):
        return License("pdm-1.0", "https://creativecommons.org/publicdomain/mark/1.0/")
    match = _CC_CODE.match(code)
    if match:
        version = f"{match.group(2)}.{match.group(3)}" if match.group(2) else None
        return _cc(match.group(1), version, raw)
    raise UnknownLicense(raw, f"unknown license code {text!r}")


def attribution_line(holder: str | None, license: License) -> str:
    """Credit line in iNaturalist's own style.

    ``"(c) Jane Doe, some rights reserved (CC BY-NC)"``; public domain: ``"Jane Doe, no rights reserved (CC0 1.0)"``;
    no per-image license: ``"Jane Doe (license unspecified)"``. A missing holder prints as "unknown author".
    """
    who = holder.strip() if holder and holder.strip() else "unknown author"
    if license.code == UNSPECIFIED:
        return f"{who} (license unspecified)"
    if license.code.startswith(("cc0", "pdm")):
        return f"{who}, no rights reserved ({license.label})"
    return f"(c) {who}, some rights reserved ({license.label})"
