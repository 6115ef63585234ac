-- Compaction (README § Storage): reads must not get slower as batches accumulate. The owner
-- of an input partition folds its committed batches below a sequence number into one
-- *generation*: per-minute counts summed per cell, and each customer's latest journey. A
-- row in `compactions` commits the generation, like a batch marker commits a batch; rows
-- of a generation without one never count, and the next compaction drops them. Once a
-- generation is committed, the folded batches' rows are no longer read and are deleted,
-- and older generations are dropped (a generation is a table partition).

CREATE TABLE IF NOT EXISTS {db}.metrics_minute_compacted
(
    minute DateTime,
    journey String,
    stage String,
    touchpoint String,
    channel String,
    segment String,
    nps_promoters Int64,
    nps_passives Int64,
    nps_detractors Int64,
    csat_n Int64,
    csat_top2 Int64,
    csat_sum Int64,
    ces_n Int64,
    ces_agree Int64,
    ces_sum Int64,
    stage_entries Int64,
    touchpoints Int64,
    source_partition UInt16,
    generation UInt64
)
ENGINE = MergeTree
PARTITION BY generation
ORDER BY (journey, minute, stage, touchpoint, channel, segment, source_partition);

-- Each customer's journey as of the generation; batch_seq is the batch that last changed it.
CREATE TABLE IF NOT EXISTS {db}.journeys_compacted
(
    journey String,
    source_partition UInt16,
    customer_id String,
    segment String,
    state String,
    batch_seq UInt64,
    generation UInt64
)
ENGINE = MergeTree
PARTITION BY generation
ORDER BY (journey, source_partition, customer_id);

-- The commit point of a generation: it holds every committed batch of the partition with
-- batch_seq < live_from_seq, which together read `records` input records.
CREATE TABLE IF NOT EXISTS {db}.compactions
(
    journey String,
    source_partition UInt16,
    generation UInt64,
    live_from_seq UInt64,
    records UInt64,
    compacted_at DateTime
)
ENGINE = MergeTree
ORDER BY (journey, source_partition, live_from_seq);

-- The generation each partition reads: its latest compaction (none: generation 0, every
-- batch live).
CREATE VIEW IF NOT EXISTS {db}.latest_compactions AS
SELECT journey, source_partition, argMax(generation, live_from_seq) AS generation,
       max(live_from_seq) AS live_from, argMax(records, live_from_seq) AS folded_records
FROM {db}.compactions
GROUP BY journey, source_partition;

-- Committed batches not folded into a generation yet.
CREATE VIEW IF NOT EXISTS {db}.live_batches AS
SELECT journey, source_partition, batch_seq, batch_attempt, records
FROM {db}.ingest_batches
ANY LEFT JOIN
(
    SELECT journey, source_partition, max(live_from_seq) AS live_from
    FROM {db}.compactions
    GROUP BY journey, source_partition
) AS folded USING (journey, source_partition)
WHERE batch_seq >= live_from;

-- Input records committed so far, per journey and partition (folded and live batches).
CREATE VIEW IF NOT EXISTS {db}.committed_records AS
SELECT journey, source_partition, sum(records) AS records
FROM
(
    SELECT journey, source_partition, folded_records AS records FROM {db}.latest_compactions
    UNION ALL
    SELECT journey, source_partition, records FROM {db}.live_batches
)
GROUP BY journey, source_partition;

DROP TABLE IF EXISTS {db}.rolling_metrics;
DROP TABLE IF EXISTS {db}.metrics_minute_committed;

-- Every committed per-minute count: the partitions' latest generations plus the live batches.
CREATE VIEW IF NOT EXISTS {db}.metrics_minute_committed AS
SELECT minute, journey, stage, touchpoint, channel, segment,
       nps_promoters, nps_passives, nps_detractors, csat_n, csat_top2, csat_sum,
       ces_n, ces_agree, ces_sum, stage_entries, touchpoints, source_partition
FROM {db}.metrics_minute_compacted
WHERE (journey, source_partition, generation) IN
    (SELECT journey, source_partition, generation FROM {db}.latest_compactions)
UNION ALL
SELECT minute, journey, stage, touchpoint, channel, segment,
       nps_promoters, nps_passives, nps_detractors, csat_n, csat_top2, csat_sum,
       ces_n, ces_agree, ces_sum, stage_entries, touchpoints, source_partition
FROM {db}.metrics_minute
WHERE (journey, source_partition, batch_seq, batch_attempt) IN
    (SELECT journey, source_partition, batch_seq, batch_attempt FROM {db}.live_batches);

-- Rolling NPS / CSAT / CES over 1 h, 24 h and 7 d by journey, stage, channel and segment,
-- summed from exact per-minute counts (never averages of averages), ending at the committed
-- watermark (event time), so a replayed week answers like live traffic. The 7-day bound
-- sits on each table read, where ClickHouse uses it to skip older data: a read costs the
-- window, not the history. nps_ci95 mirrors cxstream_core::metrics::Nps::from_counts.
CREATE VIEW IF NOT EXISTS {db}.rolling_metrics AS
SELECT
    window,
    journey,
    stage,
    channel,
    segment,
    sum(nps_promoters) AS promoters,
    sum(nps_passives) AS passives,
    sum(nps_detractors) AS detractors,
    promoters + passives + detractors AS nps_n,
    if(nps_n = 0, nan, 100 * (promoters - detractors) / nps_n) AS nps,
    if(nps_n = 0, nan, 196 * sqrt(((promoters + detractors) / nps_n - pow((promoters - detractors) / nps_n, 2)) / nps_n)) AS nps_ci95,
    sum(csat_n) AS csat_responses,
    sum(csat_top2) AS csat_top2_count,
    if(csat_responses = 0, nan, 100 * csat_top2_count / csat_responses) AS csat,
    if(csat_responses = 0, nan, sum(csat_sum) / csat_responses) AS csat_mean,
    sum(ces_n) AS ces_responses,
    if(ces_responses = 0, nan, sum(ces_sum) / ces_responses) AS ces_mean,
    if(ces_responses = 0, nan, 100 * sum(ces_agree) / ces_responses) AS ces_agree_pct
FROM
(
    SELECT *, arrayJoin([('1h', 60), ('24h', 1440), ('7d', 10080)]) AS w
    FROM
    (
        SELECT minute, journey, stage, channel, segment,
               nps_promoters, nps_passives, nps_detractors, csat_n, csat_top2, csat_sum,
               ces_n, ces_agree, ces_sum
        FROM {db}.metrics_minute_compacted
        WHERE minute > (SELECT max(watermark) FROM {db}.committed_watermark) - 10080 * 60
          AND (journey, source_partition, generation) IN
            (SELECT journey, source_partition, generation FROM {db}.latest_compactions)
        UNION ALL
        SELECT minute, journey, stage, channel, segment,
               nps_promoters, nps_passives, nps_detractors, csat_n, csat_top2, csat_sum,
               ces_n, ces_agree, ces_sum
        FROM {db}.metrics_minute
        WHERE minute > (SELECT max(watermark) FROM {db}.committed_watermark) - 10080 * 60
          AND (journey, source_partition, batch_seq, batch_attempt) IN
            (SELECT journey, source_partition, batch_seq, batch_attempt FROM {db}.live_batches)
    )
)
WHERE minute <= (SELECT max(watermark) FROM {db}.committed_watermark)
  AND minute > (SELECT max(watermark) FROM {db}.committed_watermark) - tupleElement(w, 2) * 60
GROUP BY tupleElement(w, 1) AS window, journey, stage, channel, segment;
