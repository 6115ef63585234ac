-- The alerter's alerts (README § Alerts): one row per change of an incident, as on the
-- alerts topic; (journey_group, id, revision) names a change, so a row written twice (a
-- restart, a second alerter) is one after merges or FINAL. `alerts_current` is each
-- incident's latest change.
CREATE TABLE IF NOT EXISTS {db}.alerts
(
    id String,
    revision UInt32,
    state Enum8('FIRING' = 1, 'UPDATED' = 2, 'RESOLVED' = 3),
    kind Enum8('STEP_DROP' = 1, 'SCORE_DROP' = 2, 'SILENCE' = 3),
    journey String,
    journey_group String,
    subject String,
    slice String,
    firing Array(String),
    window_start_ms Int64,
    window_end_ms Int64,
    observed Float64,
    baseline Float64,
    n Float64,
    significance Float64,
    severity Enum8('INFO' = 1, 'WARNING' = 2, 'CRITICAL' = 3),
    fired_at DateTime,
    fired_at_ms Int64,
    changed_at_ms Int64,
    resolved_at_ms Int64,
    written_at DateTime
)
ENGINE = ReplacingMergeTree(written_at)
ORDER BY (journey_group, id, revision);

CREATE VIEW IF NOT EXISTS {db}.alerts_current AS
SELECT
    journey_group,
    id,
    argMax(state, revision) AS state,
    any(kind) AS kind,
    any(journey) AS journey,
    any(subject) AS subject,
    argMax(slice, revision) AS slice,
    argMax(firing, revision) AS firing,
    argMax(observed, revision) AS observed,
    argMax(baseline, revision) AS baseline,
    argMax(significance, revision) AS significance,
    argMax(severity, revision) AS severity,
    min(fired_at) AS fired_at,
    max(changed_at_ms) AS changed_at_ms,
    max(resolved_at_ms) AS resolved_at_ms,
    max(revision) AS revisions
FROM {db}.alerts
GROUP BY journey_group, id;
