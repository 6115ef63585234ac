//! Claims in ClickHouse (`partition_claims`, see `cxstream_core::claims`): writing an
//! intent (a row with an empty chain), reading a partition's highest whole claim, writing
//! the claim whole, telling which held claims were overtaken (by a claim or an intent), and
//! the SQL condition that keeps to one chain's batches.

use cxstream_core::claims::{Claim, Link};
use serde::{Deserialize, Serialize};

use crate::commit::BatchCommitter;
use crate::{Context, Result};

#[derive(Debug, clickhouse::Row, Serialize, Deserialize)]
struct ClaimRow {
    journey: String,
    source_partition: u16,
    claim: u64,
    chain_claims: Vec<u64>,
    chain_from: Vec<u64>,
    chain_until: Vec<u64>,
    owner: String,
    claimed_at: u32,
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct Highest {
    source_partition: u16,
    claim: u64,
}

/// The condition that a row's `claim` and `seq` columns lie in a chain bound as its
/// claims, then claims, froms and untils (see [`bind_chain`]). (ClickHouse 18.16 reads no
/// column that only a lambda names: `has` names the claim outside it, and every caller
/// reads `seq` elsewhere in the query.)
pub(crate) fn in_chain(claim: &str, seq: &str) -> String {
    format!(
        "has(?, {claim}) AND arrayExists((c, f, u) -> c = {claim} AND {seq} >= f AND {seq} < u, ?, ?, ?)"
    )
}

/// As [`in_chain`] for a compaction's claim and `live_from_seq` (claims twice, untils).
pub(crate) fn compaction_in_chain() -> &'static str {
    "has(?, claim) AND arrayExists((c, u) -> c = claim AND live_from_seq <= u, ?, ?)"
}

/// Binds the three arrays of [`in_chain`]. Never empty: ClickHouse 18.16 cannot type `[]`,
/// and no link has claim `u64::MAX`.
pub(crate) fn bind_chain(q: clickhouse::query::Query, c: &Claim) -> clickhouse::query::Query {
    let (claims, froms, untils) = arrays(c);
    q.bind(&claims).bind(claims).bind(froms).bind(untils)
}

/// Binds the two arrays of [`compaction_in_chain`].
pub(crate) fn bind_compaction_chain(
    q: clickhouse::query::Query,
    c: &Claim,
) -> clickhouse::query::Query {
    let (claims, _, untils) = arrays(c);
    q.bind(&claims).bind(claims).bind(untils)
}

fn arrays(c: &Claim) -> (Vec<u64>, Vec<u64>, Vec<u64>) {
    let mut links = c.chain.clone();
    if links.is_empty() {
        links.push(Link {
            claim: u64::MAX,
            from: 0,
            until: 0,
        });
    }
    (
        links.iter().map(|l| l.claim).collect(),
        links.iter().map(|l| l.from).collect(),
        links.iter().map(|l| l.until).collect(),
    )
}

impl BatchCommitter {
    /// The partition's highest whole claim (intents have no chain), `None` before any.
    pub(crate) async fn highest_claim(&self, partition: u16) -> Result<Option<Claim>> {
        let row = self
            .client()
            .query(
                "SELECT ?fields FROM partition_claims WHERE journey = ? AND source_partition = ? \
                 AND notEmpty(chain_claims) ORDER BY claim DESC LIMIT 1",
            )
            .bind(self.journey())
            .bind(partition)
            .fetch_optional::<ClaimRow>()
            .await
            .ctx(|| format!("reading the claims of partition {partition}"))?;
        Ok(row.map(|r| Claim {
            id: r.claim,
            chain: r
                .chain_claims
                .iter()
                .zip(&r.chain_from)
                .zip(&r.chain_until)
                .map(|((&claim, &from), &until)| Link { claim, from, until })
                .collect(),
        }))
    }

    /// Writes the id of this owner's next claim of `partition`, above every claim and
    /// intent: from here on the partition's owner so far stops confirming its batches
    /// (see `cxstream_core::claims`).
    pub(crate) async fn write_intent(&self, partition: u16) -> Result<u64> {
        let highest = self
            .client()
            .query(
                "SELECT source_partition, max(claim) AS claim FROM partition_claims \
                 WHERE journey = ? AND source_partition = ? GROUP BY source_partition",
            )
            .bind(self.journey())
            .bind(partition)
            .fetch_optional::<Highest>()
            .await
            .ctx(|| format!("reading the claims of partition {partition}"))?;
        let id = Claim::id_after(highest.map(|h| h.claim), rand::random());
        self.write_row(
            partition,
            &Claim {
                id,
                chain: Vec::new(),
            },
        )
        .await?;
        Ok(id)
    }

    /// Writes claim `id` whole, for an owner that read `read` as the highest whole claim
    /// and resumes at `next_seq`.
    pub(crate) async fn write_claim(
        &self,
        partition: u16,
        read: Option<&Claim>,
        id: u64,
        next_seq: u64,
        live_from: u64,
    ) -> Result<Claim> {
        let claim = Claim::next(read, id, next_seq, live_from);
        self.write_row(partition, &claim).await?;
        Ok(claim)
    }

    async fn write_row(&self, partition: u16, claim: &Claim) -> Result<()> {
        let row = ClaimRow {
            journey: self.journey().to_string(),
            source_partition: partition,
            claim: claim.id,
            chain_claims: claim.chain.iter().map(|l| l.claim).collect(),
            chain_from: claim.chain.iter().map(|l| l.from).collect(),
            chain_until: claim.chain.iter().map(|l| l.until).collect(),
            owner: self.owner().to_string(),
            claimed_at: crate::commit::now_secs(),
        };
        let mut ins = self
            .client()
            .insert::<ClaimRow>("partition_claims")
            .await
            .ctx(|| format!("claiming partition {partition}"))?;
        ins.write(&row)
            .await
            .ctx(|| format!("claiming partition {partition}"))?;
        ins.end()
            .await
            .ctx(|| format!("claiming partition {partition}"))?;
        Ok(())
    }

    /// Seconds since anyone wrote the partition's newest claim or intent (the highest id);
    /// `None` before any. An owner that is claiming has not committed yet, but is there.
    /// The newest, not the latest dated: one row dated ahead by a writer's clock would
    /// otherwise keep the partition looking served until the server's clock passes it.
    pub async fn last_claimed(&self, partition: u16) -> Result<Option<u64>> {
        #[derive(Debug, clickhouse::Row, Deserialize)]
        struct Age {
            claims: u64,
            age_secs: u64,
        }
        let age = self
            .client()
            .query(
                "SELECT count() AS claims, toUInt64(greatest(0, now() - argMax(claimed_at, claim))) \
                 AS age_secs FROM partition_claims WHERE journey = ? AND source_partition = ?",
            )
            .bind(self.journey())
            .bind(partition)
            .fetch_one::<Age>()
            .await
            .ctx(|| format!("reading when partition {partition} was last claimed"))?;
        Ok((age.claims > 0).then_some(age.age_secs))
    }

    /// Of the `(partition, claim)` held here, the partitions claimed since by another
    /// owner: their batches no longer count, and they resume from what does.
    pub async fn overtaken(&self, held: &[(u16, u64)]) -> Result<Vec<u16>> {
        if held.is_empty() {
            return Ok(Vec::new());
        }
        let highest = self
            .client()
            .query(
                "SELECT source_partition, max(claim) AS claim FROM partition_claims \
                 WHERE journey = ? GROUP BY source_partition",
            )
            .bind(self.journey())
            .fetch_all::<Highest>()
            .await
            .ctx(|| "reading the highest claims".into())?;
        Ok(held
            .iter()
            .filter(|(p, claim)| {
                highest
                    .iter()
                    .any(|h| h.source_partition == *p && h.claim > *claim)
            })
            .map(|(p, _)| *p)
            .collect())
    }
}
