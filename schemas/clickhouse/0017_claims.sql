-- Fencing: a partition's owners take turns by claims, so that a batch committed by an
-- instance that has lost the partition (a zombie after a long pause) never counts.
--
-- An owner claims a partition after reading where it resumes: the claim is the previous
-- highest claim's chain, cut at the owner's first batch, plus a link of its own from there
-- on. A marker (and a compaction) counts when its claim is a link of the partition's
-- highest claim's chain and its sequence number lies in that link's range. Every chain is
-- a history that its owner's state was built from, so whichever claim is highest, what
-- counts is one owner's batches after another's, each resumed from the last.
CREATE TABLE IF NOT EXISTS {db}.partition_claims
(
    journey String,
    source_partition UInt16,
    -- Higher claims are later: 32 bits counting up from the highest seen, 32 random bits
    -- between two instances claiming at once.
    claim UInt64,
    -- The chain: the claims whose batches count, each for batch_seq in [from, until).
    chain_claims Array(UInt64),
    chain_from Array(UInt64),
    chain_until Array(UInt64),
    owner String,
    claimed_at DateTime
)
ENGINE = MergeTree
ORDER BY (journey, source_partition, claim);

ALTER TABLE {db}.ingest_batches ADD COLUMN claim UInt64 DEFAULT 0;
ALTER TABLE {db}.compactions ADD COLUMN claim UInt64 DEFAULT 0;

-- What was committed before claims existed counts under claim 0 until a first claim.
INSERT INTO {db}.partition_claims
SELECT journey, source_partition, 0, [toUInt64(0)], [toUInt64(0)], [toUInt64(18446744073709551615)],
       'before claims', now()
FROM {db}.ingest_batches
WHERE (journey, source_partition) NOT IN (SELECT journey, source_partition FROM {db}.partition_claims)
GROUP BY journey, source_partition;

-- The links of each partition's current chain (its highest claim's).
CREATE VIEW IF NOT EXISTS {db}.claim_chain AS
SELECT journey, source_partition, claim, from_seq, until_seq
FROM
(
    SELECT journey, source_partition,
           argMax(chain_claims, claim) AS claims,
           argMax(chain_from, claim) AS froms,
           argMax(chain_until, claim) AS untils
    FROM {db}.partition_claims
    GROUP BY journey, source_partition
)
ARRAY JOIN claims AS claim, froms AS from_seq, untils AS until_seq;

-- The markers that count: every figure reads batches through this view.
CREATE VIEW IF NOT EXISTS {db}.committed_batches AS
SELECT journey, source_partition, batch_seq, batch_attempt, touchpoints_next_offset,
       answers_next_offset, watermark_ms, records, committed_at, touchpoints_high_ms,
       answers_high_ms, identities_next_offset, aggregates_id, dead_letters_from,
       erasures_seen, claim
FROM {db}.ingest_batches
ALL INNER JOIN {db}.claim_chain USING (journey, source_partition, claim)
WHERE batch_seq >= from_seq AND batch_seq < until_seq;

-- The compactions that count: the compacting owner's link still reaches its live_from
-- (every batch it folded is in the current chain).
CREATE VIEW IF NOT EXISTS {db}.committed_compactions AS
SELECT journey, source_partition, generation, live_from_seq, records, compacted_at, claim
FROM {db}.compactions
ALL INNER JOIN {db}.claim_chain USING (journey, source_partition, claim)
WHERE live_from_seq <= until_seq;

DROP TABLE IF EXISTS {db}.latest_compactions;
CREATE VIEW IF NOT EXISTS {db}.latest_compactions AS
SELECT journey, source_partition, argMax(generation, live_from_seq) AS generation,
       max(live_from_seq) AS live_from, argMax(records, live_from_seq) AS folded_records
FROM {db}.committed_compactions
GROUP BY journey, source_partition;

DROP TABLE IF EXISTS {db}.live_batches;
CREATE VIEW IF NOT EXISTS {db}.live_batches AS
SELECT journey, source_partition, batch_seq, batch_attempt, records
FROM {db}.committed_batches
ANY LEFT JOIN
(
    SELECT journey, source_partition, max(live_from_seq) AS live_from
    FROM {db}.committed_compactions
    GROUP BY journey, source_partition
) AS folded USING (journey, source_partition)
WHERE batch_seq >= live_from;

DROP TABLE IF EXISTS {db}.committed_watermark;
CREATE VIEW IF NOT EXISTS {db}.committed_watermark AS
SELECT journey, min(wm) AS watermark_ms, toDateTime(intDiv(min(wm), 1000)) AS watermark
FROM
(
    SELECT journey, source_partition, argMax(watermark_ms, batch_seq) AS wm
    FROM {db}.committed_batches
    GROUP BY journey, source_partition
)
WHERE wm > 0
GROUP BY journey;
