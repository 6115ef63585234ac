-- Facts, per-minute aggregates, the batch-commit log and persisted journey state.
-- Runs on ClickHouse 18.16 and current releases. `{db}` is the configured database.
--
-- Exactness: every aggregate and journey-state row carries the batch (source_partition,
-- batch_seq, batch_attempt) that produced it, and only batches recorded in ingest_batches
-- count. A batch that crashed half-written is never recorded; its replay writes under a new
-- attempt id. Facts are keyed by their natural ids, so a replay replaces instead of adding.

CREATE TABLE IF NOT EXISTS {db}.touchpoints
(
    event_id String,
    customer_id String,
    anonymous_id String,
    event_time DateTime,
    event_time_ms Int64,
    journey String,
    touchpoint String,
    channel String,
    stage String,
    stage_entered UInt8,
    segment String,
    outcome String,
    attribute_keys Array(String),
    attribute_values Array(String),
    source_partition UInt16,
    source_offset Int64
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (customer_id, event_id);

-- One row per respondent, survey and touchpoint: a newer answer (higher answer_time_ms)
-- replaces the older one. rated_key is the rated touchpoint's event id, else the response id.
CREATE TABLE IF NOT EXISTS {db}.survey_answers
(
    response_id String,
    customer_id String,
    answer_time DateTime,
    answer_time_ms Int64,
    metric Enum8('NPS' = 1, 'CSAT' = 2, 'CES' = 3),
    score Int8,
    rated_key String,
    touchpoint_event_id String,
    journey String,
    stage String,
    touchpoint String,
    channel String,
    segment String,
    attribution Enum8('named' = 1, 'latest' = 2, 'none' = 3),
    answer_channel String,
    comment String,
    source_partition UInt16,
    source_offset Int64
)
ENGINE = ReplacingMergeTree(answer_time_ms)
ORDER BY (customer_id, rated_key, metric);

-- Exact per-minute counts per (journey, stage, touchpoint, channel, segment), as deltas
-- per committed batch. Read through metrics_minute_committed.
CREATE TABLE IF NOT EXISTS {db}.metrics_minute
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
    batch_seq UInt64,
    batch_attempt UInt64
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (journey, minute, stage, touchpoint, channel, segment, source_partition, batch_seq, batch_attempt);

-- The commit log: one row per committed batch and input partition. It is also where the
-- journey service resumes: the next offsets of both input topics and the watermark.
CREATE TABLE IF NOT EXISTS {db}.ingest_batches
(
    journey String,
    source_partition UInt16,
    batch_seq UInt64,
    batch_attempt UInt64,
    touchpoints_next_offset Int64,
    answers_next_offset Int64,
    watermark_ms Int64,
    records UInt64,
    committed_at DateTime
)
ENGINE = MergeTree
ORDER BY (journey, source_partition, batch_seq);

-- Journey state of customers changed in a batch (postcard-encoded JourneyState).
CREATE TABLE IF NOT EXISTS {db}.journey_state
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

CREATE VIEW IF NOT EXISTS {db}.metrics_minute_committed AS
SELECT *
FROM {db}.metrics_minute
WHERE (journey, source_partition, batch_seq, batch_attempt) IN
    (SELECT journey, source_partition, batch_seq, batch_attempt FROM {db}.ingest_batches);
