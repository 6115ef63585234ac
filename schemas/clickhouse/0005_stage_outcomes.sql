-- Stage outcomes (README § Stage conversion): every stage entry into a stage but the last
-- converts (reaches a later stage within the stage's budget), drops off (the watermark
-- passed its deadline first) or is still open. Counted per minute in the entry's cell, and
-- in one fact per entry, written again when its outcome changes (so `stage_entries FINAL`
-- gives each entry's outcome now, and exact time-to-convert quantiles).

ALTER TABLE {db}.metrics_minute ADD COLUMN stage_conversions Int64 DEFAULT 0;
ALTER TABLE {db}.metrics_minute ADD COLUMN convert_ms_sum Int64 DEFAULT 0;
ALTER TABLE {db}.metrics_minute ADD COLUMN stage_dropoffs Int64 DEFAULT 0;
ALTER TABLE {db}.metrics_minute ADD COLUMN stage_open Int64 DEFAULT 0;
ALTER TABLE {db}.metrics_minute_compacted ADD COLUMN stage_conversions Int64 DEFAULT 0;
ALTER TABLE {db}.metrics_minute_compacted ADD COLUMN convert_ms_sum Int64 DEFAULT 0;
ALTER TABLE {db}.metrics_minute_compacted ADD COLUMN stage_dropoffs Int64 DEFAULT 0;
ALTER TABLE {db}.metrics_minute_compacted ADD COLUMN stage_open Int64 DEFAULT 0;

-- One row per stage entry: the entering touchpoint's event id and time (entry_hash, the
-- FNV-1a 64 of its event id, orders entries of the same millisecond as the journey does), its context, and
-- the outcome now (FINAL): 'none' for an entry into the last stage. deadline_ms is entry
-- time + the stage's budget; convert_ms and converted_channel tell how long it took and on
-- which channel the next stage was entered. withdrawn = 1: a late touchpoint made it no
-- entry any more.
CREATE TABLE IF NOT EXISTS {db}.stage_entries
(
    customer_id String,
    journey String,
    event_id String,
    entry_time DateTime,
    entry_time_ms Int64,
    entry_hash UInt64,
    stage String,
    touchpoint String,
    channel String,
    segment String,
    journey_seq UInt32,
    outcome Enum8('none' = 0, 'open' = 1, 'converted' = 2, 'dropped' = 3),
    deadline_ms Int64,
    convert_ms Int64,
    converted_channel String,
    withdrawn UInt8,
    source_partition UInt16,
    source_offset Int64
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(entry_time)
ORDER BY (customer_id, event_id);

DROP TABLE IF EXISTS {db}.metrics_minute_committed;

-- Every committed per-minute count: the partitions' latest generations plus the live batches.
CREATE VIEW IF NOT EXISTS {db}.metrics_minute_committed AS
SELECT minute, journey, stage, touchpoint, channel, segment,
       nps_promoters, nps_passives, nps_detractors, csat_n, csat_top2, csat_sum,
       ces_n, ces_agree, ces_sum, stage_entries, touchpoints,
       stage_conversions, convert_ms_sum, stage_dropoffs, stage_open, source_partition
FROM {db}.metrics_minute_compacted
WHERE (journey, source_partition, generation) IN
    (SELECT journey, source_partition, generation FROM {db}.latest_compactions)
UNION ALL
SELECT minute, journey, stage, touchpoint, channel, segment,
       nps_promoters, nps_passives, nps_detractors, csat_n, csat_top2, csat_sum,
       ces_n, ces_agree, ces_sum, stage_entries, touchpoints,
       stage_conversions, convert_ms_sum, stage_dropoffs, stage_open, source_partition
FROM {db}.metrics_minute
WHERE (journey, source_partition, batch_seq, batch_attempt) IN
    (SELECT journey, source_partition, batch_seq, batch_attempt FROM {db}.live_batches);

-- The funnel by stage, channel and segment for each minute of entry: entries into the
-- stage, and of those the converted (with the mean time to convert), dropped off and still
-- open. Conversion is over decided entries (converted + dropped): open ones are not yet
-- known, never zero. Sum over a range of minutes for any period (README § Stage conversion).
CREATE VIEW IF NOT EXISTS {db}.stage_funnel_minute AS
SELECT minute, journey, stage, channel, segment,
       sum(stage_entries) AS entries,
       sum(stage_conversions) AS conversions,
       sum(stage_dropoffs) AS dropoffs,
       sum(stage_open) AS open_entries,
       sum(convert_ms_sum) AS convert_ms_total
FROM {db}.metrics_minute_committed
WHERE stage != 'none'
GROUP BY minute, journey, stage, channel, segment
HAVING entries != 0 OR conversions != 0 OR dropoffs != 0 OR open_entries != 0;

-- The journey map's stages as the journey service runs with them (written when it resumes a
-- partition): the expectation the funnel is measured against. The latest version counts.
CREATE TABLE IF NOT EXISTS {db}.journey_stages
(
    journey String,
    stage String,
    stage_index UInt8,
    budget_ms Int64,
    target_conversion Float64,
    has_outcome UInt8,
    updated_at DateTime
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY (journey, stage);

-- Expectation beside reality: stage_funnel_minute with the stage's budget and target, and
-- whether the minute's cohort is decided (every entry's deadline is behind the committed
-- watermark, so each has converted or dropped off). Conversion = converted / (converted +
-- dropped) over decided rows; rows of the last stage (has_outcome = 0) have entries only.
CREATE VIEW IF NOT EXISTS {db}.stage_funnel AS
SELECT minute, journey, stage, channel, segment, entries, conversions, dropoffs, open_entries,
       convert_ms_total, stage_index, has_outcome, budget_ms, target_conversion,
       toUInt8(has_outcome = 1 AND toInt64(toUnixTimestamp(minute)) * 1000 + 60000 + budget_ms <= watermark_ms) AS decided
FROM
(
    SELECT minute, journey, stage, channel, segment, entries, conversions, dropoffs,
           open_entries, convert_ms_total, stage_index, has_outcome, budget_ms, target_conversion
    FROM {db}.stage_funnel_minute
    ANY INNER JOIN
    (
        SELECT journey, stage, argMax(stage_index, updated_at) AS stage_index,
               argMax(has_outcome, updated_at) AS has_outcome,
               argMax(budget_ms, updated_at) AS budget_ms,
               argMax(target_conversion, updated_at) AS target_conversion
        FROM {db}.journey_stages
        GROUP BY journey, stage
    ) AS stages USING (journey, stage)
) AS funnel
ANY LEFT JOIN
(
    SELECT journey, watermark_ms FROM {db}.committed_watermark
) AS committed USING (journey);
