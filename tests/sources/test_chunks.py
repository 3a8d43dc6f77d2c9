"""Hash partitions: SQL, Python and the partitions of earlier builds put every key in the same partition."""

import random

import duckdb

from pipeline.sources.chunks import in_partition, in_partition_sql


def test_sql_and_python_partitions_agree_on_every_key():
    rng = random.Random(5)
    alphabet = ["a", "7", "-", "'", "\\", "\u00e9", "\u3000", "\U0001f33f", " ", "\t"]
    keys = ["", None] + ["".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40))) for _ in range(3000)]
    keys += [f"{i:08x}-aaaa-4bbb-8ccc-{i:012x}" for i in range(3000)]  # uuid-like, as iNaturalist's
    con = duckdb.connect()
    con.execute("CREATE TABLE k AS SELECT unnest(?::VARCHAR[]) AS key", [keys])
    for n in (1, 2, 3, 16, 1000):
        for k in sorted({1, 2, n} & set(range(1, n + 1))):
            # md5_number_lower is what earlier builds partitioned by: a resumed crawl keeps its parts' rows
            before = f"md5_number_lower(coalesce(key, '')) % {n} = {k - 1}"
            rows = con.sql(f"SELECT {in_partition_sql('key', k, n)}, {before} FROM k ORDER BY rowid").fetchall()
            assert [row[0] for row in rows] == [row[1] for row in rows] == [in_partition(key, k, n) for key in keys]
            assert any(row[0] for row in rows) or n == 1000
