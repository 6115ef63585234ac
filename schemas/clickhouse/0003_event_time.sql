-- Event time (README § What it does): each batch marker also keeps both inputs' high marks,
-- from which a restarted instance resumes the watermark exactly; events that were valid
-- but not applied (too late, or dated in the future) are kept with why; the rolling views
-- end at the committed watermark instead of the latest minute with data, so one event with
-- a wrong clock cannot blank every window.

-- Each customer's journey (postcard-encoded cxstream_core::Journey: the events within the
-- allowed lateness and the floor of older ones), written with the batch that changed it.
-- It replaces journey_state, whose rows hold an older encoding and are no longer read: a
-- database written before this migration is rebuilt by replaying (README § Operations).
CREATE TABLE IF NOT EXISTS {db}.journeys
(
    journey String,
    source_partition UInt16,
    customer_id String,
    segment String,
    state String,
    batch_seq UInt64,
    batch_attempt UInt64
)
ENGINE = MergeTree
ORDER BY (journey, source_partition, customer_id, batch_seq);

-- i64::MIN: that input of the partition was not seen yet.
ALTER TABLE {db}.ingest_batches ADD COLUMN touchpoints_high_ms Int64 DEFAULT -9223372036854775808;
ALTER TABLE {db}.ingest_batches ADD COLUMN answers_high_ms Int64 DEFAULT -9223372036854775808;

-- Keyed by source coordinates: a replayed batch replaces its rows. `payload` is the event as
-- JSON (field names of schemas/avro), so nothing of it is lost.
CREATE TABLE IF NOT EXISTS {db}.refused_events
(
    journey String,
    input Enum8('touchpoints' = 1, 'answers' = 2),
    reason Enum8('late' = 1, 'future' = 2),
    id String,
    customer_id String,
    event_time DateTime,
    event_time_ms Int64,
    watermark_ms Int64,
    payload String,
    source_partition UInt16,
    source_offset Int64
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (journey, input, source_partition, source_offset);

-- The watermark of the whole journey: the lowest latest-committed watermark over the input
-- partitions (a minute after it is not known yet, and is not shown as zero).
CREATE VIEW IF NOT EXISTS {db}.committed_watermark AS
SELECT journey, min(wm) AS watermark_ms, toDateTime(intDiv(min(wm), 1000)) AS watermark
FROM
(
    SELECT journey, source_partition, argMax(watermark_ms, batch_seq) AS wm
    FROM {db}.ingest_batches
    GROUP BY journey, source_partition
)
WHERE wm > 0
GROUP BY journey;

DROP TABLE IF EXISTS {db}.rolling_metrics;

-- Rolling NPS / CSAT / CES over 1 h, 24 h and 7 d by journey, stage, channel and segment,
-- summed from exact per-minute counts (never averages of averages), ending at the committed
-- watermark (event time), so a replayed week answers like live traffic.
-- nps_ci95 mirrors cxstream_core::metrics::Nps::from_counts.
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
    FROM {db}.metrics_minute_committed
)
WHERE minute <= (SELECT max(watermark) FROM {db}.committed_watermark)
  AND minute > (SELECT max(watermark) FROM {db}.committed_watermark) - tupleElement(w, 2) * 60
GROUP BY tupleElement(w, 1) AS window, journey, stage, channel, segment;
