-- The alerter's input (README § Aggregates for the alerter): each batch's per-minute partial
-- counts go to the aggregates topic before the batch commits, under a random id that the
-- marker keeps, so that after a restart the service can say again which of the partials it
-- sent committed. 0: a batch committed before this (or with publishing off).
ALTER TABLE {db}.ingest_batches ADD COLUMN aggregates_id UInt64 DEFAULT 0;
