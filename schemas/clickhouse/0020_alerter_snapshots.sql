-- The alerter's snapshots (README § Alerts, snapshots): its judgement of every journey of
-- a group and where it had read the aggregates topic to, so that a restart reads on from
-- there instead of from the topic's beginning. One row per snapshot; `slot` goes round 24
-- values, so that merges keep about the latest 24 of a group (the highest `taken_at_ms`
-- of each slot).
CREATE TABLE IF NOT EXISTS {db}.alerter_snapshots
(
    journey_group String,
    slot UInt8,
    taken_at_ms UInt64,
    instance String,
    state String
)
ENGINE = ReplacingMergeTree(taken_at_ms)
ORDER BY (journey_group, slot);
