-- Expectation beside reality (README § Journey funnel): the funnel over rolling windows
-- with a Wilson interval on the conversion, the cross-channel flow of conversions, and the
-- AS-IS paths of customers who completed, dropped off or are still on their way.

-- Which of the customer's journeys a touchpoint belongs to: a journey lasts while its last
-- stage entry is within the stage's budget, and the next touchpoint starts a new one.
ALTER TABLE {db}.touchpoints ADD COLUMN journey_seq UInt32 DEFAULT 0;
-- 1: a touchpoint the journey map does not declare, counted off-map (per-minute counts name
-- it "(off-map)"; the fact keeps its own name).
ALTER TABLE {db}.touchpoints ADD COLUMN off_map UInt8 DEFAULT 0;

-- The stage funnel over the last 24 h, 7 d and 28 d of entries and over all of them,
-- ending at the committed watermark, per journey, stage, channel and segment. Conversion
-- and its 95 % Wilson interval are over decided entries (converted + dropped off); open
-- entries are reported apart. target and budget_ms are the map's.
CREATE VIEW IF NOT EXISTS {db}.funnel_rolling AS
SELECT
    window, journey, stage, channel, segment,
    any(stage_index) AS stage_order,
    any(target_conversion) AS target,
    any(budget_ms) AS budget,
    sum(entries) AS entered,
    sum(conversions) AS converted,
    sum(dropoffs) AS dropped,
    sum(open_entries) AS still_open,
    sumIf(conversions, decided = 1) AS decided_converted,
    sumIf(conversions + dropoffs, decided = 1) AS decided_n,
    if(decided_n = 0, nan, decided_converted / decided_n) AS conversion,
    -- Exactly 0 and 1 at 0 % and 100 % (the formula's rounding would miss them by a hair).
    if(decided_n = 0, nan, if(decided_converted = 0, 0.,
       (conversion + 1.9208 / decided_n - 1.96 * sqrt(conversion * (1 - conversion) / decided_n + 0.9604 / (decided_n * decided_n)))
       / (1 + 3.8416 / decided_n))) AS conversion_low,
    if(decided_n = 0, nan, if(decided_converted = decided_n, 1.,
       (conversion + 1.9208 / decided_n + 1.96 * sqrt(conversion * (1 - conversion) / decided_n + 0.9604 / (decided_n * decided_n)))
       / (1 + 3.8416 / decided_n))) AS conversion_high,
    if(converted = 0, nan, sum(convert_ms_total) / converted) AS mean_convert_ms
FROM
(
    SELECT *, arrayJoin([('24h', 1440), ('7d', 10080), ('28d', 40320), ('all', 0)]) AS w
    FROM {db}.stage_funnel
    WHERE has_outcome = 1
)
WHERE minute <= (SELECT max(watermark) FROM {db}.committed_watermark)
  AND (tupleElement(w, 2) = 0
       OR minute > (SELECT max(watermark) FROM {db}.committed_watermark) - tupleElement(w, 2) * 60)
GROUP BY tupleElement(w, 1) AS window, journey, stage, channel, segment;

-- The omnichannel view: per day of entry, the channel customers entered a stage on and the
-- channel they entered the next stage on (converted entries only).
CREATE VIEW IF NOT EXISTS {db}.channel_flow AS
SELECT toDate(entry_time) AS day, journey, stage, channel AS entered_on,
       converted_channel AS converted_on, count() AS conversions,
       sum(convert_ms) AS convert_ms_total
FROM {db}.stage_entries FINAL
WHERE outcome = 'converted' AND withdrawn = 0
GROUP BY day, journey, stage, entered_on, converted_on;

-- AS-IS paths: each journey's stage entries in event time (the touchpoints through which
-- the customer entered each stage), by day of the first entry, with how the path ends:
-- completed (reached the last stage), dropped (at its last stage, past the deadline) or
-- open. A customer who starts again after a completed or abandoned journey has one path
-- per journey.
CREATE VIEW IF NOT EXISTS {db}.journey_paths AS
SELECT day, journey, path, stages, ending, last_stage, count() AS journeys
FROM
(
    SELECT customer_id, journey, journey_seq,
           arraySort(x -> (tupleElement(x, 1), tupleElement(x, 5)),
                     groupArray((entry_time_ms, stage, touchpoint, outcome, entry_hash))) AS entries,
           toDate(toDateTime(intDiv(tupleElement(entries[1], 1), 1000))) AS day,
           arrayStringConcat(arrayMap(x -> tupleElement(x, 3), entries), ' > ') AS path,
           arrayStringConcat(arrayMap(x -> tupleElement(x, 2), entries), ' > ') AS stages,
           tupleElement(entries[-1], 2) AS last_stage,
           multiIf(tupleElement(entries[-1], 4) = 'none', 'completed',
                   tupleElement(entries[-1], 4) = 'dropped', 'dropped',
                   tupleElement(entries[-1], 4) = 'open', 'open', 'converted') AS ending
    FROM {db}.stage_entries FINAL
    WHERE withdrawn = 0
    GROUP BY customer_id, journey, journey_seq
)
GROUP BY day, journey, path, stages, ending, last_stage;

-- Off-map paths: the touchpoints no map declares, as each journey meets them in a stage
-- (in event time), by day of the first; stage 'none' outside any journey.
CREATE VIEW IF NOT EXISTS {db}.off_map_paths AS
SELECT day, journey, stage, path, count() AS journeys, sum(path_length) AS off_map_touchpoints
FROM
(
    SELECT customer_id, journey, journey_seq, stage,
           arraySort(x -> tupleElement(x, 1), groupArray((event_time_ms, touchpoint))) AS visits,
           toDate(toDateTime(intDiv(tupleElement(visits[1], 1), 1000))) AS day,
           arrayStringConcat(arrayMap(x -> tupleElement(x, 2), visits), ' > ') AS path,
           length(visits) AS path_length
    FROM {db}.touchpoints FINAL
    WHERE off_map = 1
    GROUP BY customer_id, journey, journey_seq, stage
)
GROUP BY day, journey, stage, path;
