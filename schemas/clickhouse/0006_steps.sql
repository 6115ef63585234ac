-- Steps (README § Steps): short, budgeted hops between touchpoints. Every attempt (a
-- `from` touchpoint while no attempt of the step is running) converts at a later `to`
-- touchpoint within the budget, drops off once the watermark passes its deadline, or is
-- open. Per-minute counts in the start's cell, committed like metrics_minute (batch
-- markers, compaction generations); one fact per attempt, written again when it changes.

CREATE TABLE IF NOT EXISTS {db}.steps_minute
(
    minute DateTime,
    journey String,
    step String,
    stage String,
    touchpoint String,
    channel String,
    segment String,
    starts Int64,
    conversions Int64,
    convert_ms_sum Int64,
    dropoffs Int64,
    open_attempts Int64,
    source_partition UInt16,
    batch_seq UInt64,
    batch_attempt UInt64
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (journey, step, minute, stage, touchpoint, channel, segment, source_partition, batch_seq, batch_attempt);

CREATE TABLE IF NOT EXISTS {db}.steps_minute_compacted
(
    minute DateTime,
    journey String,
    step String,
    stage String,
    touchpoint String,
    channel String,
    segment String,
    starts Int64,
    conversions Int64,
    convert_ms_sum Int64,
    dropoffs Int64,
    open_attempts Int64,
    source_partition UInt16,
    generation UInt64
)
ENGINE = MergeTree
PARTITION BY generation
ORDER BY (journey, step, minute, stage, touchpoint, channel, segment, source_partition);

CREATE VIEW IF NOT EXISTS {db}.steps_minute_committed AS
SELECT minute, journey, step, stage, touchpoint, channel, segment,
       starts, conversions, convert_ms_sum, dropoffs, open_attempts, source_partition
FROM {db}.steps_minute_compacted
WHERE (journey, source_partition, generation) IN
    (SELECT journey, source_partition, generation FROM {db}.latest_compactions)
UNION ALL
SELECT minute, journey, step, stage, touchpoint, channel, segment,
       starts, conversions, convert_ms_sum, dropoffs, open_attempts, source_partition
FROM {db}.steps_minute
WHERE (journey, source_partition, batch_seq, batch_attempt) IN
    (SELECT journey, source_partition, batch_seq, batch_attempt FROM {db}.live_batches);

-- One row per attempt: the start touchpoint's event id and time, its context, and the
-- outcome now (FINAL). withdrawn = 1: a late, earlier start made it a retry of that one.
CREATE TABLE IF NOT EXISTS {db}.step_attempts
(
    customer_id String,
    journey String,
    step String,
    start_event_id String,
    start_time DateTime,
    start_time_ms Int64,
    stage String,
    touchpoint String,
    channel String,
    segment String,
    outcome Enum8('open' = 1, 'converted' = 2, 'dropped' = 3),
    deadline_ms Int64,
    convert_ms Int64,
    converted_channel String,
    withdrawn UInt8,
    source_partition UInt16,
    source_offset Int64
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(start_time)
ORDER BY (customer_id, step, start_event_id);

-- The map's steps as the journey service runs with them (latest version counts).
CREATE TABLE IF NOT EXISTS {db}.journey_steps
(
    journey String,
    step String,
    step_index UInt8,
    from_touchpoints Array(String),
    to_touchpoints Array(String),
    budget_ms Int64,
    target_conversion Float64,
    updated_at DateTime
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY (journey, step);

-- Expectation beside reality, per minute, step, channel and segment of the start: the
-- step's budget and target, and whether the minute's attempts are all decided (their
-- deadlines are behind the committed watermark). Conversion = converted / (converted +
-- dropped) over decided rows; still_open attempts are reported apart.
CREATE VIEW IF NOT EXISTS {db}.step_funnel AS
SELECT minute, journey, step, channel, segment, started, converted, dropped, still_open,
       convert_ms_total, step_index, budget_ms, target_conversion,
       toUInt8(toInt64(toUnixTimestamp(minute)) * 1000 + 60000 + budget_ms <= watermark_ms) AS decided
FROM
(
    SELECT minute, journey, step, channel, segment, started, converted, dropped,
           still_open, convert_ms_total, step_index, budget_ms, target_conversion
    FROM
    (
        SELECT minute, journey, step, channel, segment,
               sum(starts) AS started, sum(conversions) AS converted,
               sum(dropoffs) AS dropped, sum(open_attempts) AS still_open,
               sum(convert_ms_sum) AS convert_ms_total
        FROM {db}.steps_minute_committed
        GROUP BY minute, journey, step, channel, segment
    ) AS counted
    ANY INNER JOIN
    (
        SELECT journey, step, argMax(step_index, updated_at) AS step_index,
               argMax(budget_ms, updated_at) AS budget_ms,
               argMax(target_conversion, updated_at) AS target_conversion
        FROM {db}.journey_steps
        GROUP BY journey, step
    ) AS steps USING (journey, step)
) AS funnel
ANY LEFT JOIN
(
    SELECT journey, watermark_ms FROM {db}.committed_watermark
) AS committed USING (journey);
