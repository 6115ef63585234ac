-- Where the dead-letter topic stood when a batch was committed (its end offset per DLQ
-- partition, or a lower bound of it). Every dead letter of a record after the batch is at
-- or after it, so a partition resumed from this marker reads the DLQ from there to learn
-- which of the records it reads again were dead-lettered already (README § Operations,
-- Dead letters). Empty: not known (markers written before this column): read from the
-- beginning.
ALTER TABLE {db}.ingest_batches ADD COLUMN dead_letters_from Array(Int64) DEFAULT [];
