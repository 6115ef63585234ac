-- The positions of each journey map's names, as the journey service last ran with them.
-- Stored journeys hold a map's stages, touchpoints, channels, segments and steps as
-- positions in the map's lists: a list changed in place (a name inserted, moved or
-- removed) would have every stored journey read wrong. A journey service refuses to
-- start with a list that is not the stored one with names added at its end.
CREATE TABLE IF NOT EXISTS {db}.journey_map_positions
(
    journey String,
    list String,
    names Array(String),
    updated_at DateTime
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY (journey, list);
