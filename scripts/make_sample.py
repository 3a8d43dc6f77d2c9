"""Write the bundled offline sample (sample/): small exports in the real source formats plus the images they name.

python scripts/make_sample.py [--out sample] [--seed 13]

Deterministic (fixed seed, fixed zip timestamps): rerunning with the same Pillow/pyarrow gives the same bytes.
Plant names come from the World Checklist of Vascular Plants extract shipped in the powo-nomenclature sdist's
test fixtures (CC BY 3.0, see sample/README.md); Iris tectorum is added by hand for the DALIP paper's own example.
Deliberate defects (404s, a garbage JPEG, duplicates, non-plants, opt-out images, ...) are listed with their
expected outcome in sample/expected.csv; sample/README.md explains them.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import random
import shutil
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

HOST = "http://sample.plantmix.invalid/"  # the demo maps this prefix to its loopback server (url_rewrite)
ZIP_TIME = (2024, 1, 1, 0, 0, 0)
EVAL_SET = "plantnet-mini"  # the demo recipe decontaminates against sample/eval/<EVAL_SET>
ORDERS = {  # family -> order (APG IV); WCVP lists families, not orders
    "Lamiaceae": "Lamiales",
    "Plantaginaceae": "Lamiales",
    "Violaceae": "Malpighiales",
    "Rosaceae": "Rosales",
    "Caryophyllaceae": "Caryophyllales",
    "Apiaceae": "Apiales",
    "Asteraceae": "Asterales",
    "Iridaceae": "Asparagales",
}
# (family, genus, epithet, authors, common name); all but Iris tectorum are accepted WCVP species.
PLANTS = [
    ("Iridaceae", "Iris", "tectorum", "Maxim.", "Wall iris"),
    ("Lamiaceae", "Salvia", "officinalis", "L.", "Common sage"),
    ("Lamiaceae", "Mentha", "pulegium", "L.", "Pennyroyal"),
    ("Lamiaceae", "Mentha", "arvensis", "L.", "Corn mint"),
    ("Lamiaceae", "Mentha", "suaveolens", "Ehrh.", "Apple mint"),
    ("Lamiaceae", "Nepeta", "cataria", "L.", "Catnip"),
    ("Lamiaceae", "Glechoma", "hederacea", "L.", "Ground ivy"),
    ("Lamiaceae", "Thymus", "herba-barona", "Loisel.", "Caraway thyme"),
    ("Lamiaceae", "Thymus", "piperella", "L.", None),
    ("Lamiaceae", "Micromeria", "filiformis", "(Aiton) Benth.", None),
    ("Lamiaceae", "Conradina", "canescens", "A.Gray", "False rosemary"),
    ("Lamiaceae", "Clinopodium", "chinense", "(Benth.) Kuntze", None),
    ("Lamiaceae", "Mosla", "chinensis", "Maxim.", None),
    ("Plantaginaceae", "Veronica", "micrantha", "Hoffmanns. & Link", None),
    ("Rosaceae", "Crataegus", "monogyna", "Jacq.", "Common hawthorn"),
    ("Rosaceae", "Crataegus", "laevigata", "(Poir.) DC.", "Midland hawthorn"),
    ("Caryophyllaceae", "Stellaria", "media", "(L.) Vill.", "Common chickweed"),
    ("Caryophyllaceae", "Stellaria", "palustris", "Ehrh. ex Hoffm.", "Marsh stitchwort"),
    ("Caryophyllaceae", "Stellaria", "aquatica", "(L.) Scop.", "Water chickweed"),
    ("Violaceae", "Viola", "rostrata", "Muhl. ex Pursh", "Long-spurred violet"),
    ("Violaceae", "Viola", "rotundifolia", "Michx.", "Round-leaved yellow violet"),
    ("Violaceae", "Viola", "pilosa", "Blume", None),
    ("Apiaceae", "Chaerophyllum", "temulum", "L.", "Rough chervil"),
    ("Apiaceae", "Chaerophyllum", "aureum", "L.", "Golden chervil"),
    ("Asteraceae", "Xanthium", "vayredae", "Sennen", None),
]
# Non-plants, to exercise the kingdom filter: (kingdom, phylum, class, order, family, genus, epithet, common).
OTHERS = {
    "Apis mellifera": (
        "Animalia",
        "Arthropoda",
        "Insecta",
        "Hymenoptera",
        "Apidae",
        "Apis",
        "mellifera",
        "Western honey bee",
    ),
    "Amanita muscaria": (
        "Fungi",
        "Basidiomycota",
        "Agaricomycetes",
        "Agaricales",
        "Amanitaceae",
        "Amanita",
        "muscaria",
        "Fly agaric",
    ),
    "Bombus terrestris": (
        "Animalia",
        "Arthropoda",
        "Insecta",
        "Hymenoptera",
        "Apidae",
        "Bombus",
        "terrestris",
        "Buff-tailed bumblebee",
    ),
}
GENERAL_SUBJECTS = [
    "bicycle",
    "teapot",
    "lighthouse",
    "sailboat",
    "armchair",
    "guitar",
    "umbrella",
    "kite",
    "tram",
    "clock",
]
GENERAL_PLACES = ["on a beach", "in a kitchen", "at night", "in the rain", "on a wooden table", "in a city street"]
COLOURS = ["red", "blue", "yellow", "green", "orange", "purple"]


def taxonomy_of(name: str) -> tuple[str, ...]:
    """(kingdom, phylum, class, order, family, genus, species) for a sample species."""
    if name in OTHERS:
        k, p, c, o, f, g, e, _ = OTHERS[name]
        return k, p, c, o, f, g, f"{g} {e}"
    family, genus, epithet = next((f, g, e) for f, g, e, _, _ in PLANTS if f"{g} {e}" == name)
    klass = "Liliopsida" if family == "Iridaceae" else "Magnoliopsida"
    return "Plantae", "Tracheophyta", klass, ORDERS[family], family, genus, f"{genus} {epithet}"


def common_of(name: str) -> str | None:
    if name in OTHERS:
        return OTHERS[name][-1]
    return next(c for f, g, e, _, c in PLANTS if f"{g} {e}" == name)


def draw_image(label: str, rng: random.Random, plant: bool) -> bytes:
    """A small JPEG whose palette comes from the label's hash and whose layout from the rng (so photos differ)."""
    digest = hashlib.sha256(label.encode()).digest()
    size = rng.choice((64, 96, 128))
    background = (digest[0] // 4, 90 + digest[1] // 3, digest[2] // 4) if plant else tuple(digest[3:6])
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    cx, cy = rng.randint(size // 3, 2 * size // 3), rng.randint(size // 3, 2 * size // 3)
    if plant:
        draw.line((cx, cy, cx + rng.randint(-8, 8), size), fill=(30, 120, 40), width=3)
        petal = (digest[6], digest[7], digest[8])
        radius = rng.randint(size // 8, size // 4)
        for i in range(rng.randint(4, 8)):
            dx, dy = [(radius, 0), (0, radius), (-radius, 0), (0, -radius), (radius, radius)][i % 5]
            draw.ellipse(
                (
                    cx + dx // 2 - radius // 2,
                    cy + dy // 2 - radius // 2,
                    cx + dx // 2 + radius // 2,
                    cy + dy // 2 + radius // 2,
                ),
                fill=petal,
            )
        draw.ellipse((cx - 4, cy - 4, cx + 4, cy + 4), fill=(240, 220, 60))
    else:
        for _ in range(rng.randint(3, 6)):
            x0, y0 = rng.randint(0, size - 10), rng.randint(0, size - 10)
            box = (x0, y0, x0 + rng.randint(8, size // 2), y0 + rng.randint(8, size // 2))
            colour = tuple(rng.randint(0, 255) for _ in range(3))
            (draw.rectangle if rng.random() < 0.5 else draw.ellipse)(box, fill=colour)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=70)
    return buffer.getvalue()


@dataclass
class Sample:
    out: Path
    rng: random.Random
    expected: list[dict] = field(default_factory=list)  # one entry per candidate row: adapter, record id, outcome

    def image(self, relative: str, data: bytes | None) -> str:
        """Write an image under images/ (None: deliberately absent -> 404) and return its placeholder URL."""
        if data is not None:
            path = self.out / "images" / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        return HOST + relative

    def expect(self, adapter: str, record_id: str, url: str, status: str, reason: str = "", dup: str = "") -> None:
        self.expected.append(
            {
                "adapter": adapter,
                "source_record_id": record_id,
                "url": url,
                "expected_status": status,
                "reason": reason,
                "duplicate_of": dup,
                "contaminates": "",
            }
        )


def write_tsv(path: Path, header: list[str], rows: list[list]) -> None:
    # The iNaturalist export: tab-separated, header line, no quoting, "\n" line ends.
    lines = ["\t".join(header)] + ["\t".join("" if v is None else str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


INAT_LICENSES = ["CC-BY-NC"] * 5 + ["CC-BY"] * 2 + ["CC0", "CC-BY-SA", "CC-BY-NC-SA", "CC-BY-NC-ND"]
OBSERVERS = [
    "Ana Ribeiro",
    "Kenji Sato",
    "",
    "Maria Lopez",
    "Tom Baker",
    "",
    "Léa Martin",
    "Olu Adeyemi",
    "Priya Nair",
    "Jonas Berg",
    "",
    "Sofia Rossi",
]


def write_inaturalist(sample: Sample) -> list[tuple[str, bytes]]:
    """iNaturalist open data tables; returns (record id, bytes) of photos the GBIF part re-publishes."""
    rng, folder = sample.rng, sample.out / "inaturalist"
    folder.mkdir(parents=True)
    # Top nodes use iNaturalist's real taxon ids; lower ranks get synthetic ids from 9_000_001.
    taxa = {
        "Life": [48460, "", 100, "stateofmatter"],
        "Plantae": [47126, "", 70, "kingdom"],
        "Animalia": [1, "", 70, "kingdom"],
        "Fungi": [47170, "", 70, "kingdom"],
        "Tracheophyta": [211194, "", 60, "phylum"],
        "Arthropoda": [47120, "", 60, "phylum"],
        "Basidiomycota": [47169, "", 60, "phylum"],
        "Magnoliopsida": [47124, "", 50, "class"],
        "Liliopsida": [47163, "", 50, "class"],
        "Insecta": [47158, "", 50, "class"],
        "Agaricomycetes": [50814, "", 50, "class"],
    }
    levels = [
        ("kingdom", 70),
        ("phylum", 60),
        ("class", 50),
        ("order", 40),
        ("family", 30),
        ("genus", 20),
        ("species", 10),
    ]
    next_id = 9_000_001

    def taxon_id(name: str) -> int:
        nonlocal next_id
        ranks = taxonomy_of(name)
        parent = [taxa["Life"][0]]
        for (rank, level), node in zip(levels, ranks, strict=True):
            if node not in taxa:
                taxa[node] = [next_id, "", level, rank]
                next_id += 1
            taxa[node][1] = "/".join(map(str, parent))
            parent.append(taxa[node][0])
        return taxa[ranks[-1]][0]

    observers = [[1000 + i, f"user{1000 + i}", n] for i, n in enumerate(OBSERVERS)]
    # Photo specs: (taxon name, quality grade, identify to genus only, defect); defects listed in README.
    plant_names = [f"{g} {e}" for _, g, e, _, _ in PLANTS]
    specs = [(plant_names[i % len(plant_names)], "research", False, "") for i in range(66)]
    specs += [("Apis mellifera", "research", False, "animal")] * 3 + [
        ("Amanita muscaria", "research", False, "fungus")
    ] * 2
    specs += [
        ("Salvia officinalis", "needs_id", False, "grade"),
        ("Viola rostrata", "needs_id", False, "grade"),
        ("Mentha arvensis", "casual", False, "grade"),
        ("Viola rostrata", "research", True, "genus"),
        ("Mentha pulegium", "needs_id", True, "genus"),
        ("Crataegus monogyna", "research", False, "arr"),
        ("Nepeta cataria", "research", False, "404"),
        ("Stellaria media", "research", False, "404"),
        ("Salvia officinalis", "research", False, "dup"),
    ]
    rng.shuffle(specs)
    photos, observations, shared, written = [], [], [], {}
    observation = None
    for number, (name, grade, to_genus, defect) in enumerate(specs):
        # Consecutive normal photos of one species sometimes share an observation, as multi-photo observations do.
        if observation is None or defect or observation[1] != name or rng.random() < 0.5:
            tid = taxon_id(name)
            tid = taxa[taxonomy_of(name)[5]][0] if to_genus else tid
            uuid_ = fake_uuid(rng)
            observer = rng.choice(observers)[0]
            observations.append(
                [
                    uuid_,
                    observer,
                    round(rng.uniform(35, 55), 6),
                    round(rng.uniform(-5, 25), 6),
                    rng.choice([5, 10, 30, 100]),
                    tid,
                    grade,
                    f"2023-{rng.randint(3, 9):02d}-{rng.randint(1, 28):02d}",
                    round(rng.uniform(0.5, 3), 3),
                ]
            )
            observation, position = (uuid_, name, observer), 0
        photo_id = 3_000_001 + number
        record = f"{photo_id}:{observation[0]}"
        extension = "jpg" if rng.random() < 0.2 else "jpeg"
        data = draw_image(f"{name}", rng, plant=True)
        if defect == "dup":  # same bytes as an earlier photo, uploaded again to another observation
            original = next(r for r in written if written[r][1] == name)
            data, dup = written[original][0], original
        else:
            dup = ""
        url = sample.image(f"inaturalist/photos/{photo_id}/medium.{extension}", None if defect == "404" else data)
        width, height = Image.open(io.BytesIO(data)).size
        license_ = "" if defect == "arr" else rng.choice(INAT_LICENSES)
        photos.append(
            [fake_uuid(rng), photo_id, observation[0], observation[2], extension, license_, width, height, position]
        )
        position += 1
        outcome = {
            "": ("ok", ""),
            "dup": ("ok", "exact duplicate image"),
            "animal": ("rejected", "taxon filter: kingdom Animalia not in [Plantae]"),
            "fungus": ("rejected", "taxon filter: kingdom Fungi not in [Plantae]"),
            "grade": ("rejected", f"quality grade {grade} not in [research]"),
            "genus": ("rejected", "taxon filter: rank genus is coarser than min_rank species"),
            "arr": ("rejected", "no open license (empty)"),
            "404": ("failed_download", "HTTP 404: image deliberately absent from sample/images"),
        }[defect]
        sample.expect("inaturalist", record, url, *outcome, dup=dup)
        if not defect:
            written[record] = (data, name)
    shared = [(r, written[r][0]) for r in list(written)[:2]]
    write_tsv(
        folder / "photos.csv",
        [
            "photo_uuid",
            "photo_id",
            "observation_uuid",
            "observer_id",
            "extension",
            "license",
            "width",
            "height",
            "position",
        ],
        photos,
    )
    write_tsv(
        folder / "observations.csv",
        [
            "observation_uuid",
            "observer_id",
            "latitude",
            "longitude",
            "positional_accuracy",
            "taxon_id",
            "quality_grade",
            "observed_on",
            "anomaly_score",
        ],
        observations,
    )
    rows = sorted(([tid, ancestry, level, rank, name, "true"] for name, (tid, ancestry, level, rank) in taxa.items()))
    write_tsv(folder / "taxa.csv", ["taxon_id", "ancestry", "rank_level", "rank", "name", "active"], rows)
    write_tsv(folder / "observers.csv", ["observer_id", "login", "name"], observers)
    with open(folder / "common_names.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["taxon_id", "common_name"])
        for name in [*plant_names, *OTHERS]:
            if common_of(name) and name in taxa:
                writer.writerow([taxa[name][0], common_of(name)])
    return shared


GBIF_TERMS = {
    "occurrence": [
        "gbif:gbifID",
        "gbif:datasetKey",
        "dwc:occurrenceID",
        "dc:license",
        "dc:rightsHolder",
        "dc:references",
        "dwc:basisOfRecord",
        "dwc:eventDate",
        "dwc:countryCode",
        "dwc:decimalLatitude",
        "dwc:decimalLongitude",
        "dwc:kingdom",
        "dwc:phylum",
        "dwc:class",
        "dwc:order",
        "dwc:family",
        "dwc:genus",
        "gbif:species",
        "dwc:specificEpithet",
        "dwc:infraspecificEpithet",
        "dwc:taxonRank",
        "dwc:scientificName",
        "dwc:vernacularName",
        "dwc:recordedBy",
    ],
    "multimedia": [
        "gbif:gbifID",
        "dc:type",
        "dc:format",
        "dc:identifier",
        "dc:references",
        "dc:title",
        "dc:description",
        "dc:source",
        "dc:audience",
        "dc:created",
        "dc:creator",
        "dc:contributor",
        "dc:publisher",
        "dc:license",
        "dc:rightsHolder",
    ],
}
PREFIXES = {
    "gbif": "http://rs.gbif.org/terms/1.0/",
    "dwc": "http://rs.tdwg.org/dwc/terms/",
    "dc": "http://purl.org/dc/terms/",
}
GBIF_LICENSES = [
    "http://creativecommons.org/licenses/by/4.0/legalcode",
    "http://creativecommons.org/licenses/by-sa/4.0/",
    "CC_BY_NC_4_0",
    "",
]


def meta_xml() -> str:
    """A meta.xml in the shape GBIF downloads use (tab-separated, no quotes, one header line)."""
    parts = [
        '<?xml version="1.0" encoding="utf-8"?>',
        '<archive xmlns="http://rs.tdwg.org/dwc/text/" metadata="metadata.xml">',
    ]
    for tag, id_tag, row_type, name in (
        ("core", "id", "http://rs.tdwg.org/dwc/terms/Occurrence", "occurrence"),
        ("extension", "coreid", "http://rs.gbif.org/terms/1.0/Multimedia", "multimedia"),
    ):
        parts.append(
            f'  <{tag} encoding="UTF-8" fieldsTerminatedBy="\\t" linesTerminatedBy="\\n" fieldsEnclosedBy="" '
            f'ignoreHeaderLines="1" rowType="{row_type}">'
        )
        parts += [f"    <files>\n      <location>{name}.txt</location>\n    </files>", f'    <{id_tag} index="0" />']
        for index, term in enumerate(GBIF_TERMS[name]):
            prefix, local = term.split(":")
            parts.append(f'    <field index="{index}" term="{PREFIXES[prefix]}{local}"/>')
        parts.append(f"  </{tag}>")
    return "\n".join([*parts, "</archive>", ""])


def write_gbif(sample: Sample, shared: list[tuple[str, bytes]]) -> None:
    """A Pl@ntNet-like GBIF download: meta.xml + occurrence.txt + multimedia.txt (+ a tiny EML) in one zip."""
    rng, folder = sample.rng, sample.out / "gbif"
    folder.mkdir(parents=True)
    plant_names = [f"{g} {e}" for _, g, e, _, _ in PLANTS]
    # (taxon name, identified to genus only, [media defects]); "" = a normal image.
    specs: list[tuple[str, bool, list[str]]] = []
    normal = 0
    while normal < 50:
        count = min(rng.choice((1, 1, 2)), 50 - normal)
        specs.append((plant_names[len(specs) % len(plant_names)], False, [""] * count))
        normal += count
    specs[0][2].append("sound")
    specs += [
        ("Bombus terrestris", False, ["animal", "animal"]),
        ("Crataegus laevigata", True, ["genus"]),
        ("Viola pilosa", False, ["garbage"]),
        ("Mentha suaveolens", False, ["404"]),
        ("Glechoma hederacea", False, ["404"]),
        ("Thymus piperella", False, ["optout"]),
        ("Salvia officinalis", False, ["dup0"]),
        ("Iris tectorum", False, ["dup1"]),
        ("Stellaria aquatica", False, []),
    ]
    occurrences, media = [], []
    for number, (name, to_genus, defects) in enumerate(specs):
        gbif_id = 4_400_000_001 + number
        kingdom, phylum, klass, order, family, genus, species = taxonomy_of(name)
        authors = next((a for _, g, e, a, _ in PLANTS if f"{g} {e}" == name), "(Linnaeus, 1758)")
        who = rng.choice([n for n in OBSERVERS if n])
        rank = "GENUS" if to_genus else "SPECIES"
        occurrences.append(
            [
                gbif_id,
                "7a3679ef-0000-4000-8000-00000000a1b2",
                f"plantnet-sample-{gbif_id}",
                "CC_BY_4_0",
                who,
                "",
                "HUMAN_OBSERVATION",
                f"2023-{rng.randint(3, 9):02d}-{rng.randint(1, 28):02d}",
                rng.choice(["FR", "ES", "IT", "DE", "PT"]),
                round(rng.uniform(36, 52), 5),
                round(rng.uniform(-8, 15), 5),
                kingdom,
                phylum,
                klass,
                order,
                family,
                genus,
                "" if to_genus else species,
                "" if to_genus else species.split()[1],
                "",
                rank,
                genus if to_genus else f"{species} {authors}",
                "" if to_genus else (common_of(name) or ""),
                who,
            ]
        )
        for index, defect in enumerate(defects):
            kind, fmt, ext = (
                ("Sound", "audio/mpeg", "mp3") if defect == "sound" else ("StillImage", "image/jpeg", "jpg")
            )
            folder_name = "optout" if defect == "optout" else "gbif"
            data: bytes | None = draw_image(name, rng, plant=True)
            dup = ""
            if defect.startswith("dup"):
                dup, data = shared[int(defect[-1])]
            elif defect == "garbage":
                data = b"\xff\xd8 not really a JPEG: " + bytes(rng.getrandbits(8) for _ in range(200))
            elif defect in ("404", "sound"):
                data = None
            url = sample.image(f"{folder_name}/{gbif_id}_{index}.{ext}", data)
            record = f"{gbif_id}:{url}"  # as the adapter: occurrence + media URL, independent of row order
            title = f"{name} - {rng.choice(['flower', 'leaf', 'fruit', 'habit'])}" if rng.random() < 0.4 else ""
            media.append(
                [
                    gbif_id,
                    kind,
                    fmt,
                    url,
                    "",
                    title,
                    "",
                    "",
                    "",
                    "",
                    who,
                    "",
                    "Pl@ntNet",
                    rng.choice(GBIF_LICENSES),
                    who,
                ]
            )
            outcome = {
                "": ("ok", ""),
                "dup0": ("ok", "exact duplicate image (also on iNaturalist)"),
                "dup1": ("ok", "exact duplicate image (also on iNaturalist)"),
                "sound": ("rejected", "media type Sound is not StillImage"),
                "animal": ("rejected", "taxon filter: kingdom Animalia not in [Plantae]"),
                "genus": ("rejected", "taxon filter: rank genus is coarser than min_rank species"),
                "garbage": ("failed_decode", "image bytes are not a decodable JPEG"),
                "404": ("failed_download", "HTTP 404: image deliberately absent from sample/images"),
                "optout": ("opted_out", "server sends X-Robots-Tag: noai for /optout/"),
            }[defect]
            sample.expect("gbif_dwca", record, url, *outcome, dup=dup)

    def table(name: str, rows: list[list]) -> str:
        header = "\t".join(term.split(":")[1] for term in GBIF_TERMS[name])
        return "\n".join([header] + ["\t".join(str(v) for v in row) for row in rows]) + "\n"

    eml = (
        '<?xml version="1.0" encoding="utf-8"?>\n<eml:eml xmlns:eml="eml://ecoinformatics.org/eml-2.1.1">'
        "<dataset><title>PlantMix offline sample (synthetic, Pl@ntNet-like)</title>"
        "<intellectualRights>CC0 1.0</intellectualRights></dataset></eml:eml>\n"
    )
    write_zip(
        folder / "plantnet-sample-dwca.zip",
        {
            "meta.xml": meta_xml(),
            "metadata.xml": eml,
            "occurrence.txt": table("occurrence", occurrences),
            "multimedia.txt": table("multimedia", media),
        },
    )


def write_pool(sample: Sample) -> None:
    """A DataComp/LAION-like general pool: uid, url, caption (no per-image license column)."""
    rng = sample.rng
    (sample.out / "general").mkdir(parents=True)
    captions = [
        f"{'an' if c[0] in 'aeiou' else 'a'} {c} {s} {p}"
        for s in GENERAL_SUBJECTS
        for c in COLOURS
        for p in GENERAL_PLACES
    ]
    rng.shuffle(captions)
    defects = [""] * 46 + ["caption_dup_a"] * 4 + ["caption_dup_b"] * 2 + ["dup"] * 3
    defects += ["404", "404", "optout", "ftp", "empty_caption"]
    rng.shuffle(defects)
    rows, pair_sources = [], []
    for number, defect in enumerate(defects):
        uid = hashlib.md5(f"pool-{number}".encode()).hexdigest()
        caption = {
            "caption_dup_a": "stock photo of a sunset",
            "caption_dup_b": "click here to enlarge",
            "empty_caption": "",
        }.get(defect, captions[number])
        data: bytes | None = draw_image(caption or uid, rng, plant=False)
        dup = ""
        if defect == "dup":
            dup, data = pair_sources.pop(0)  # pairs with a normal row drawn earlier
        elif defect == "404":
            data = None
        folder = "optout" if defect == "optout" else "general"
        url = sample.image(f"{folder}/{uid}.jpg", data)
        if defect == "ftp":
            url = url.replace("http://", "ftp://")
        rows.append({"uid": uid, "url": url, "caption": caption})
        outcome = {
            "dup": ("ok", "exact duplicate image"),
            "404": ("failed_download", "HTTP 404: image deliberately absent"),
            "optout": ("opted_out", "server sends X-Robots-Tag: noai for /optout/"),
            "ftp": ("rejected", "URL scheme 'ftp' not allowed"),
            "empty_caption": ("rejected", "no caption"),
        }.get(defect, ("ok", "duplicate caption" if defect.startswith("caption_dup") else ""))
        sample.expect("url_caption_pool", uid, url, *outcome, dup=dup)
        if not defect and len(pair_sources) < 3 and data is not None:
            pair_sources.append((uid, data))
    write_parquet(sample.out / "general" / "pool.parquet", rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "sample")
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args(argv)
    for generated in ("inaturalist", "gbif", "general", "images", "eval", "expected.csv"):
        target = args.out / generated
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    sample = Sample(args.out, random.Random(args.seed))
    shared = write_inaturalist(sample)
    write_gbif(sample, shared)
    write_pool(sample)
    write_eval_set(sample)
    with open(args.out / "expected.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(sample.expected[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(sample.expected)
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"{args.out}: {len(sample.expected)} candidate rows, {total / 1e6:.2f} MB")
    return 0


def write_eval_set(sample: Sample) -> None:
    """A tiny evaluation set (``eval/plantnet-mini``) holding copies of three downloadable iNaturalist photos:
    two byte-identical (found by sha256) and one re-encoded at another JPEG quality (found by embedding cosine).
    Decontamination must drop exactly those three training rows."""
    folder = sample.out / "eval" / EVAL_SET
    folder.mkdir(parents=True)
    chosen = [r for r in sample.expected if r["adapter"] == "inaturalist" and r["expected_status"] == "ok"
              and not r["duplicate_of"]][5:8]  # fmt: skip
    for i, row in enumerate(chosen):
        data = (sample.out / "images" / row["url"].removeprefix(HOST)).read_bytes()
        if i == 2:
            buffer = io.BytesIO()
            Image.open(io.BytesIO(data)).save(buffer, "JPEG", quality=70)
            data = buffer.getvalue()
        (folder / f"eval_{i}.jpg").write_bytes(data)
        row["contaminates"] = EVAL_SET


def fake_uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def write_zip(path: Path, members: dict[str, str]) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, text in members.items():
            info = zipfile.ZipInfo(name, date_time=ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, text)


def write_parquet(path: Path, rows: list[dict]) -> None:
    pq.write_table(pa.Table.from_pylist(rows), path)


if __name__ == "__main__":
    raise SystemExit(main())
