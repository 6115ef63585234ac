-- How many records of the erasures topic (`topics.erasures`) a journey had applied when it
-- committed a batch: from that batch on, nothing of a customer erased by one of them is
-- written. `cxstream erase` waits for every partition's marker to say so before it deletes
-- the customer's rows (README § Operations, Erasure). 0: none, or written before this column.
ALTER TABLE {db}.ingest_batches ADD COLUMN erasures_seen UInt64 DEFAULT 0;
