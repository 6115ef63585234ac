-- Identity stitching (README § Identity stitching): journey services also read the internal
-- identities topic (identifications, stitched touchpoints and partitions' watermarks), so a
-- batch's marker records where each journey resumes reading it. -2: not read yet. A
-- visitor's held touchpoints are stored with its journey in `journeys` (state version 4).
ALTER TABLE {db}.ingest_batches ADD COLUMN identities_next_offset Int64 DEFAULT -2;
