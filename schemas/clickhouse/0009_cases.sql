-- Closed-loop cases (README § Cases): one row per respondent's slot, as survey_answers keeps
-- it (the answer that counts wins: ReplacingMergeTree on answer_time_ms), with is_case = 1
-- when it is a detractor's by the map's `cases:` rules, its owner and follow-up deadline.
CREATE TABLE IF NOT EXISTS {db}.cases
(
    journey String,
    customer_id String,
    rated_key String,
    metric Enum8('NPS' = 1, 'CSAT' = 2, 'CES' = 3),
    response_id String,
    answer_time DateTime,
    answer_time_ms Int64,
    score Int8,
    is_case UInt8,
    owner String,
    due DateTime,
    due_ms Int64,
    stage String,
    touchpoint String,
    channel String,
    segment String,
    touchpoint_event_id String,
    comment String,
    source_partition UInt16,
    source_offset Int64
)
ENGINE = ReplacingMergeTree(answer_time_ms)
ORDER BY (journey, customer_id, rated_key, metric);

-- Follow-ups done, written by the people or tools that close cases (one row per closing;
-- the latest counts). A closure is the answer's (response_id): if the respondent answers
-- again as a detractor, the slot's new answer is a new, open case.
CREATE TABLE IF NOT EXISTS {db}.case_closures
(
    journey String,
    customer_id String,
    rated_key String,
    metric Enum8('NPS' = 1, 'CSAT' = 2, 'CES' = 3),
    response_id String,
    closed_at DateTime,
    closed_by String,
    note String
)
ENGINE = MergeTree
ORDER BY (journey, customer_id, rated_key, metric, response_id);

-- The case queue: every case with its status — closed (a closure exists), overdue (its
-- deadline is behind the journey's committed watermark, in event time, so a replayed month
-- says what a live one said) or open.
CREATE VIEW IF NOT EXISTS {db}.case_queue AS
SELECT
    journey, customer_id, rated_key, metric, response_id, score, answer_time, owner, due,
    stage, touchpoint, channel, segment, comment, closed_at,
    multiIf(closed_at > toDateTime(0), 'closed', due_ms < watermark_ms, 'overdue', 'open') AS status
FROM
(
    SELECT * FROM
    (
        SELECT journey, customer_id, rated_key, metric, response_id, score, answer_time, owner,
               due, due_ms, stage, touchpoint, channel, segment, comment
        FROM {db}.cases FINAL
        WHERE is_case = 1
    ) AS open_cases
    ANY LEFT JOIN
    (
        SELECT journey, customer_id, rated_key, metric, response_id, max(closed_at) AS closed_at
        FROM {db}.case_closures
        GROUP BY journey, customer_id, rated_key, metric, response_id
    ) AS closures USING (journey, customer_id, rated_key, metric, response_id)
) AS with_closures
ANY LEFT JOIN
(
    SELECT journey, watermark_ms FROM {db}.committed_watermark
) AS watermarks USING (journey);
