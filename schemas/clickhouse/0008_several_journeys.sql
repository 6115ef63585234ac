-- Several journey maps measured at once (journey.maps): every map writes its own facts of
-- the same events (its stage, entry, journey and off-map flag), so each fact table's key
-- begins with the journey. A ReplacingMergeTree's key cannot change in place: each table
-- is copied into one keyed by journey and swapped in; rows that reached the old table
-- between the copy and the swap are copied after it (`cxstream migrate` also refuses to run
-- while journey services commit). Every statement can run again after a crash anywhere:
-- the copy is always rebuilt from the table in place.

DROP TABLE IF EXISTS {db}.touchpoints_by_journey;
CREATE TABLE {db}.touchpoints_by_journey AS {db}.touchpoints
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (journey, customer_id, event_id);
INSERT INTO {db}.touchpoints_by_journey SELECT * FROM {db}.touchpoints;
DROP TABLE IF EXISTS {db}.touchpoints_before_journeys;
RENAME TABLE {db}.touchpoints TO {db}.touchpoints_before_journeys,
             {db}.touchpoints_by_journey TO {db}.touchpoints;
INSERT INTO {db}.touchpoints SELECT * FROM {db}.touchpoints_before_journeys
WHERE (journey, customer_id, event_id) NOT IN (SELECT journey, customer_id, event_id FROM {db}.touchpoints);
DROP TABLE IF EXISTS {db}.touchpoints_before_journeys;

DROP TABLE IF EXISTS {db}.survey_answers_by_journey;
CREATE TABLE {db}.survey_answers_by_journey AS {db}.survey_answers
ENGINE = ReplacingMergeTree(answer_time_ms)
ORDER BY (journey, customer_id, rated_key, metric);
INSERT INTO {db}.survey_answers_by_journey SELECT * FROM {db}.survey_answers;
DROP TABLE IF EXISTS {db}.survey_answers_before_journeys;
RENAME TABLE {db}.survey_answers TO {db}.survey_answers_before_journeys,
             {db}.survey_answers_by_journey TO {db}.survey_answers;
INSERT INTO {db}.survey_answers SELECT * FROM {db}.survey_answers_before_journeys
WHERE (journey, customer_id, rated_key, metric) NOT IN (SELECT journey, customer_id, rated_key, metric FROM {db}.survey_answers);
DROP TABLE IF EXISTS {db}.survey_answers_before_journeys;

DROP TABLE IF EXISTS {db}.stage_entries_by_journey;
CREATE TABLE {db}.stage_entries_by_journey AS {db}.stage_entries
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(entry_time)
ORDER BY (journey, customer_id, event_id);
INSERT INTO {db}.stage_entries_by_journey SELECT * FROM {db}.stage_entries;
DROP TABLE IF EXISTS {db}.stage_entries_before_journeys;
RENAME TABLE {db}.stage_entries TO {db}.stage_entries_before_journeys,
             {db}.stage_entries_by_journey TO {db}.stage_entries;
INSERT INTO {db}.stage_entries SELECT * FROM {db}.stage_entries_before_journeys
WHERE (journey, customer_id, event_id) NOT IN (SELECT journey, customer_id, event_id FROM {db}.stage_entries);
DROP TABLE IF EXISTS {db}.stage_entries_before_journeys;

DROP TABLE IF EXISTS {db}.step_attempts_by_journey;
CREATE TABLE {db}.step_attempts_by_journey AS {db}.step_attempts
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(start_time)
ORDER BY (journey, customer_id, step, start_event_id);
INSERT INTO {db}.step_attempts_by_journey SELECT * FROM {db}.step_attempts;
DROP TABLE IF EXISTS {db}.step_attempts_before_journeys;
RENAME TABLE {db}.step_attempts TO {db}.step_attempts_before_journeys,
             {db}.step_attempts_by_journey TO {db}.step_attempts;
INSERT INTO {db}.step_attempts SELECT * FROM {db}.step_attempts_before_journeys
WHERE (journey, customer_id, step, start_event_id) NOT IN (SELECT journey, customer_id, step, start_event_id FROM {db}.step_attempts);
DROP TABLE IF EXISTS {db}.step_attempts_before_journeys;

-- Touchpoints outside every journey map running (each map's facts flag what it does not
-- declare; a touchpoint is unmapped when no map declares it), per day, touchpoint and
-- channel: what product systems send that no journey accounts for.
CREATE VIEW IF NOT EXISTS {db}.unmapped_touchpoints AS
SELECT day, touchpoint, channel, toUInt64(count()) AS touchpoints, uniqExact(customer_id) AS customers
FROM
(
    SELECT event_id, customer_id, any(touchpoint) AS touchpoint, any(channel) AS channel,
           toDate(any(event_time)) AS day
    FROM {db}.touchpoints FINAL
    GROUP BY customer_id, event_id
    HAVING min(off_map) = 1
)
GROUP BY day, touchpoint, channel;

-- The touchpoint × stage heat map per day: volume and the counts behind each mean score
-- (committed data only; sum over a range, then divide: mean CSAT = csat_sum / csat_n).
CREATE VIEW IF NOT EXISTS {db}.touchpoint_heat AS
SELECT
    toDate(minute) AS day, journey, stage, touchpoint, channel, segment,
    sum(touchpoints) AS touchpoint_count,
    sum(nps_promoters) AS promoters, sum(nps_passives) AS passives, sum(nps_detractors) AS detractors,
    sum(csat_n) AS csat_answers, sum(csat_sum) AS csat_total,
    sum(ces_n) AS ces_answers, sum(ces_sum) AS ces_total
FROM {db}.metrics_minute_committed
GROUP BY day, journey, stage, touchpoint, channel, segment;
