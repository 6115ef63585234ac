-- Claim intents: an owner writes its claim's id alone (an empty chain) before reading
-- where it resumes, then the claim whole. The intent stops the owner so far from
-- confirming batches on cx.aggregates (any higher row overtakes it), so every batch it
-- confirmed is before the new owner's resume point and counts under the new claim too.
-- What counts is the highest whole claim's chain; an intent alone changes no figure.
DROP TABLE IF EXISTS {db}.claim_chain;
CREATE VIEW IF NOT EXISTS {db}.claim_chain AS
SELECT journey, source_partition, claim, from_seq, until_seq
FROM
(
    SELECT journey, source_partition,
           argMax(chain_claims, claim) AS claims,
           argMax(chain_from, claim) AS froms,
           argMax(chain_until, claim) AS untils
    FROM {db}.partition_claims
    WHERE notEmpty(chain_claims)
    GROUP BY journey, source_partition
)
ARRAY JOIN claims AS claim, froms AS from_seq, untils AS until_seq;
