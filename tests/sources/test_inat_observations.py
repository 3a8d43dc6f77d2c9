"""observations.csv as the compact lookup: exact keys, codes for the rest, read once, faults named by row."""

import duckdb
import pyarrow as pa
import pytest
from source_fixtures import OBSERVATIONS, tsv

from pipeline.sources import inat_observations
from pipeline.sources.base import SourceError

UUID = "8f14e45f-ceea-467f-a0b6-c3d1e1e2e3e4"


def observations(tmp_path, rows):
    path = tmp_path / "observations.csv"
    tsv(path, OBSERVATIONS, [[uuid, "7", "0", "0", "1", taxon, grade, "d"] for uuid, taxon, grade in rows])
    return str(path)


def test_canonical_uuids_are_keys_any_other_spelling_is_text_and_values_are_codes(tmp_path):
    rows = [(UUID, "13", "research"), (UUID.upper(), "14", "casual"), ("o1", "", "research"), ("", "13", "")]
    read = inat_observations.read_observations(duckdb.connect(), observations(tmp_path, rows), None)
    assert read.has_text_keys
    assert pa.types.is_fixed_size_binary(read.keyed.schema.field("uuid_key").type.storage_type)
    keyed = [row for row in read.keyed.to_pylist() if row["uuid_key"] is not None]
    assert [str(row["uuid_key"]) for row in keyed] == [UUID]
    assert read.by_text.column("uuid_text").to_pylist() == [UUID.upper(), "o1", ""]
    taxa, grades = read.taxon_ids.to_pylist(), read.grades.to_pylist()
    keyed_codes = zip(read.keyed["taxon_code"].to_pylist(), read.keyed["grade_code"].to_pylist(), strict=True)
    codes = [(taxa[t], grades[g]) for t, g in keyed_codes]
    assert codes == [(taxon, grade) for _, taxon, grade in rows]

    con = duckdb.connect()
    read.register(con)
    assert con.sql("SELECT count(*) FROM observations").fetchall() == [(4,)]
    assert con.sql("SELECT taxon_id FROM observation_taxon_ids ORDER BY code").fetchall() == [("13",), ("14",), ("",)]
    with pytest.raises(RuntimeError, match="handed to a connection already"):
        read.register(con)


def test_only_canonical_uuids_need_no_text_lookup(tmp_path):
    rows = [(UUID, "13", "research"), (UUID[:-1] + "5", "13", "research")]
    read = inat_observations.read_observations(duckdb.connect(), observations(tmp_path, rows), None)
    assert not read.has_text_keys
    con = duckdb.connect()
    read.register(con)
    assert "observations_by_text" not in {name for (name,) in con.sql("SHOW TABLES").fetchall()}


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([(UUID, "13", "research"), ("o1", "13", "research"), (UUID, "14", "casual")],
         rf"observations.csv row 3 \(line 4\), field observation_uuid: id '{UUID}' repeats an earlier row"),
        ([("o1", "13", "research"), ("o2", "13", "research"), ("o1", "14", "casual")],
         r"observations.csv row 3 \(line 4\), field observation_uuid: id 'o1' repeats an earlier row"),
    ],
)  # fmt: skip
def test_a_repeated_uuid_is_named_by_row(tmp_path, rows, message):
    with pytest.raises(SourceError, match=message):
        inat_observations.read_observations(duckdb.connect(), observations(tmp_path, rows), None)


def test_a_malformed_row_is_named_by_row_and_line(tmp_path):
    path = observations(tmp_path, [(UUID, "13", "research")])
    with open(path, "a", encoding="utf-8") as out:
        out.write("\no2\t7\t0\n")
    with pytest.raises(SourceError, match=r"observations.csv row 2 \(line 4\): expected 8 fields, found 3"):
        inat_observations.read_observations(duckdb.connect(), path, None)
