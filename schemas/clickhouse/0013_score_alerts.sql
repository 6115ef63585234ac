-- Score drops name their metric (NPS, CSAT, CES) and, over one touchpoint's answers, the
-- touchpoint (README § Alerts); empty for the other kinds and for a whole stage's score.
-- And a fourth kind of alert.
ALTER TABLE {db}.alerts ADD COLUMN metric String DEFAULT '' AFTER subject;
ALTER TABLE {db}.alerts ADD COLUMN touchpoint String DEFAULT '' AFTER metric;
-- Flow drops: entries into a stage falling as a share of its and the stage before's.
ALTER TABLE {db}.alerts MODIFY COLUMN kind Enum8('STEP_DROP' = 1, 'SCORE_DROP' = 2, 'SILENCE' = 3, 'FLOW_DROP' = 4);

DROP TABLE IF EXISTS {db}.alerts_current;

CREATE VIEW IF NOT EXISTS {db}.alerts_current AS
SELECT
    journey_group,
    id,
    argMax(state, revision) AS state,
    any(kind) AS kind,
    any(journey) AS journey,
    any(subject) AS subject,
    any(metric) AS metric,
    any(touchpoint) AS touchpoint,
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
