-- Views over one build's manifest. `plantmix sql` (pipeline/query/sql.py) substitutes {manifest}
-- with the manifest's Parquet path (a glob or URL works too) and runs this file.

-- Every candidate row of every source, with its status and, when dropped, the reason.
CREATE OR REPLACE VIEW samples AS
SELECT * FROM read_parquet('{manifest}');

-- The rows that passed every rule (the sample stage draws the release from these).
CREATE OR REPLACE VIEW kept AS
SELECT * FROM samples WHERE keep;

-- Candidates and kept rows per source.
CREATE OR REPLACE VIEW by_source AS
SELECT source, domain,
       count(*) AS candidates,
       count(*) FILTER (WHERE keep) AS kept,
       count(*) FILTER (WHERE NOT keep) AS dropped,
       round(100.0 * count(*) FILTER (WHERE keep) / count(*), 1) AS kept_pct
FROM samples GROUP BY ALL ORDER BY source;

-- Rows per status and drop reason; the counts add up to count(*) FROM samples.
CREATE OR REPLACE VIEW by_status AS
SELECT status, drop_reason, count(*) AS n
FROM samples GROUP BY ALL ORDER BY n DESC, status;

-- License lineage: how many images each license covers, and how many of them are kept.
CREATE OR REPLACE VIEW licenses AS
SELECT coalesce(license, '(none)') AS license, license_url,
       count(*) AS candidates,
       count(*) FILTER (WHERE keep) AS kept,
       count(DISTINCT rights_holder) AS rights_holders
FROM samples GROUP BY ALL ORDER BY candidates DESC, license;

-- Why rows failed, grouped by the error text.
CREATE OR REPLACE VIEW failures AS
SELECT source, status, error, count(*) AS n
FROM samples WHERE NOT keep GROUP BY ALL ORDER BY n DESC, source;

-- Kept rows per taxon (plant domain).
CREATE OR REPLACE VIEW taxa AS
SELECT taxonomy.family AS family, scientific_name, any_value(common_name) AS common_name,
       count(*) AS images
FROM kept WHERE domain = 'plant' GROUP BY ALL ORDER BY images DESC, scientific_name;

-- CLIP-score distribution per source (rows the embed stage scored).
CREATE OR REPLACE VIEW clip_scores AS
SELECT source, domain, any_value(clip_model) AS clip_model, count(clip_score) AS scored,
       round(min(clip_score), 4) AS min, round(quantile_cont(clip_score, 0.1), 4) AS p10,
       round(median(clip_score), 4) AS p50, round(quantile_cont(clip_score, 0.9), 4) AS p90,
       round(max(clip_score), 4) AS max, round(avg(clip_score), 4) AS mean
FROM samples WHERE clip_score IS NOT NULL GROUP BY ALL ORDER BY source;

-- Rows each rule dropped, per domain (download statuses included: the first failing rule wins).
CREATE OR REPLACE VIEW filter_stats AS
SELECT domain, coalesce(drop_reason, '(kept)') AS rule, count(*) AS n
FROM samples GROUP BY ALL ORDER BY domain, n DESC;

-- Duplicate groups: one row per (method, representative) with the members it stands for. The representative
-- is kept by dedup (it may still fail another rule); every other member names it and was dropped for it.
CREATE OR REPLACE VIEW duplicates AS
WITH members AS (
    SELECT 'exact' AS method, exact_dup_of AS representative, sample_id FROM samples WHERE exact_dup_of IS NOT NULL
    UNION ALL
    SELECT 'caption', text_cluster, sample_id FROM samples WHERE text_cluster IS NOT NULL AND text_cluster <> sample_id
    UNION ALL
    SELECT 'image', image_cluster, sample_id FROM samples WHERE image_cluster IS NOT NULL AND image_cluster <> sample_id
)
SELECT m.method, m.representative, any_value(r.source) AS representative_source,
       any_value(r.caption) AS representative_caption, count(*) AS duplicates,
       list(m.sample_id ORDER BY m.sample_id) AS members,
       list(DISTINCT d.drop_reason) AS member_drop_reasons
FROM members m
JOIN samples r ON r.sample_id = m.representative
JOIN samples d ON d.sample_id = m.sample_id
GROUP BY m.method, m.representative
ORDER BY m.method, duplicates DESC, m.representative;

-- Rows that match an evaluation image, per benchmark.
CREATE OR REPLACE VIEW contamination AS
SELECT contaminates AS benchmark, source, count(*) AS rows
FROM samples WHERE contaminates IS NOT NULL GROUP BY ALL ORDER BY benchmark, rows DESC;

-- The rows in the release (NULL selected: the build has no sample section, or it has not run yet).
CREATE OR REPLACE VIEW released AS
SELECT * FROM samples WHERE selected;

-- The sample stage's decisions per domain: kept rows selected, or why not (the counts add up to kept rows).
CREATE OR REPLACE VIEW sampling AS
SELECT domain, coalesce(sample_reason, CASE WHEN selected THEN '(selected)' ELSE '(not sampled yet)' END) AS outcome,
       count(*) AS rows, sum(sample_repeat) AS copies
FROM samples WHERE keep GROUP BY ALL ORDER BY domain, rows DESC;
