-- A fifth kind of alert: a stage's decided conversion (its entries that reached a later
-- stage within the budget) fell, known a budget after the entries (README § Alerts).
ALTER TABLE {db}.alerts MODIFY COLUMN kind Enum8('STEP_DROP' = 1, 'SCORE_DROP' = 2, 'SILENCE' = 3, 'FLOW_DROP' = 4, 'STAGE_DROP' = 5);
