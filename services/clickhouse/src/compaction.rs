//! Compaction: keeps reads and resumes as fast on day 30 as on day 1.
//!
//! Every batch adds per-minute delta rows, changed journeys and a marker, so without this
//! a rolling read and a resume would cost the number of batches ever written. The owner of
//! an input partition folds its committed batches below a sequence number into a new
//! *generation* (per-minute counts summed per cell; each customer's latest journey), built
//! on the previous generation inside ClickHouse. One row in `compactions` commits it, the
//! way a marker commits a batch: before that row nothing of the generation counts, after
//! it the folded batches stop counting (views read `batch_seq >= live_from_seq` only). So
//! a crash at any point leaves every figure as it was. Clean-up comes after the commit
//! and may fail or be repeated: older and uncommitted generations are dropped (each is a
//! table partition) and the folded rows deleted (a mutation), keeping the latest marker,
//! from which the partition resumes.
//!
//! With several owners over time (claims, `cxstream_core::claims`), an owner folds its own
//! chain's batches, its compaction counts while its claim's link in the current chain
//! reaches the compaction's `live_from`, and clean-up removes only what a compaction that
//! counts and is older than a grace period folded: an owner that read its resume point
//! before that compaction and claims after it still finds the rows it resumes from, as
//! long as it did not pause for longer than the grace period in between.

use cxstream_core::claims::Claim;

use crate::claims::{bind_chain, bind_compaction_chain, compaction_in_chain, in_chain};
use crate::commit::BatchCommitter;
use crate::{Context, Result};

/// A partition's committed generation; generation 0 (none) holds nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clickhouse::Row, serde::Deserialize)]
pub struct Generation {
    pub generation: u64,
    /// Every committed batch below this sequence number is in the generation.
    pub live_from: u64,
    /// Input records of the folded batches.
    pub folded_records: u64,
}

/// A per-minute table whose committed batches fold into a compacted one.
struct Counted {
    live: &'static str,
    compacted: &'static str,
    cell: &'static str,
    counts: &'static str,
    summed: &'static str,
}

const METRICS: Counted = Counted {
    live: "metrics_minute",
    compacted: "metrics_minute_compacted",
    cell: "minute, journey, stage, touchpoint, channel, segment",
    counts: "nps_promoters, nps_passives, nps_detractors, csat_n, csat_top2, csat_sum, \
             ces_n, ces_agree, ces_sum, stage_entries, touchpoints, \
             stage_conversions, convert_ms_sum, stage_dropoffs, stage_open",
    summed: "sum(nps_promoters), sum(nps_passives), sum(nps_detractors), sum(csat_n), \
             sum(csat_top2), sum(csat_sum), sum(ces_n), sum(ces_agree), sum(ces_sum), \
             sum(stage_entries), sum(touchpoints), sum(stage_conversions), \
             sum(convert_ms_sum), sum(stage_dropoffs), sum(stage_open)",
};

const STEPS: Counted = Counted {
    live: "steps_minute",
    compacted: "steps_minute_compacted",
    cell: "minute, journey, step, stage, touchpoint, channel, segment",
    counts: "starts, conversions, convert_ms_sum, dropoffs, open_attempts",
    summed: "sum(starts), sum(conversions), sum(convert_ms_sum), sum(dropoffs), \
             sum(open_attempts)",
};

impl BatchCommitter {
    /// The latest compaction of `partition` that counts under `claim`'s chain.
    pub(crate) async fn generation_under(
        &self,
        partition: u16,
        claim: &Claim,
    ) -> Result<Generation> {
        let q = self
            .client()
            .query(&format!(
                "SELECT generation, live_from_seq AS live_from, records AS folded_records \
                 FROM compactions WHERE journey = ? AND source_partition = ? AND {} \
                 ORDER BY live_from_seq DESC LIMIT 1",
                compaction_in_chain()
            ))
            .bind(self.journey())
            .bind(partition);
        let g = bind_compaction_chain(q, claim)
            .fetch_optional::<Generation>()
            .await
            .ctx(|| format!("reading the latest compaction of partition {partition}"))?;
        Ok(g.unwrap_or_default())
    }

    /// Folds the batches of `partition` below `live_from` that count under `claim` (the
    /// owner's) into a new generation, then cleans up what compactions older than
    /// `grace_secs` folded. Only the partition's owner calls this, with `live_from` at most
    /// one past its last committed batch. Returns false when there was nothing new to fold.
    pub async fn compact(
        &self,
        partition: u16,
        live_from: u64,
        claim: &Claim,
        grace_secs: u32,
    ) -> Result<bool> {
        let prev = self.generation_under(partition, claim).await?;
        if live_from <= prev.live_from {
            return Ok(false);
        }
        let generation = loop {
            let g: u64 = rand::random();
            if g != 0 && g != prev.generation {
                break g;
            }
        };
        let folding = Folding {
            partition,
            prev,
            live_from,
            claim,
        };
        for counted in [&METRICS, &STEPS] {
            self.fold_counts(counted, &folding, generation).await?;
        }
        self.fold_journeys(&folding, generation).await?;
        // One INSERT, one block: the commit point is atomic.
        let q = self
            .client()
            .query(&format!(
                "INSERT INTO compactions \
                   (journey, source_partition, generation, live_from_seq, records, compacted_at, claim) \
                 SELECT ?, toUInt16(?), toUInt64(?), toUInt64(?), toUInt64(?) + sum(records), now(), \
                        toUInt64(?) \
                 FROM ingest_batches \
                 WHERE journey = ? AND source_partition = ? AND batch_seq >= ? AND batch_seq < ? \
                 AND {}",
                in_chain("claim", "batch_seq")
            ))
            .bind(self.journey())
            .bind(partition)
            .bind(generation)
            .bind(live_from)
            .bind(prev.folded_records)
            .bind(claim.id)
            .bind(self.journey())
            .bind(partition)
            .bind(prev.live_from)
            .bind(live_from);
        bind_chain(q, claim)
            .execute()
            .await
            .ctx(|| format!("committing compaction of partition {partition}"))?;
        self.clean_up(partition, grace_secs).await?;
        Ok(true)
    }

    /// The batches of a fold's claim in `[prev.live_from, live_from)`. (Subqueries here
    /// are GLOBAL: on a cluster they run once, on the server asked, rather than on each
    /// shard, where unqualified names miss the database; on one server GLOBAL changes
    /// nothing.)
    fn committed_in(&self, table: &str, columns: &str) -> String {
        format!(
            "SELECT {columns} FROM {table} WHERE journey = ? AND source_partition = ? \
             AND batch_seq >= ? AND batch_seq < ? \
             AND (journey, source_partition, batch_seq, batch_attempt) GLOBAL IN \
               (SELECT journey, source_partition, batch_seq, batch_attempt FROM ingest_batches \
                WHERE journey = ? AND source_partition = ? AND batch_seq >= ? AND batch_seq < ? \
                AND {})",
            in_chain("claim", "batch_seq")
        )
    }

    /// Binds what a fold reads: the previous generation, then the committed batches in
    /// `[prev.live_from, live_from)` (see [`Self::committed_in`]).
    fn bind_folded(
        &self,
        q: clickhouse::query::Query,
        f: &Folding<'_>,
    ) -> clickhouse::query::Query {
        let journey = self.journey();
        let q = q
            .bind(journey)
            .bind(f.partition)
            .bind(f.prev.generation)
            .bind(journey)
            .bind(f.partition)
            .bind(f.prev.live_from)
            .bind(f.live_from)
            .bind(journey)
            .bind(f.partition)
            .bind(f.prev.live_from)
            .bind(f.live_from);
        bind_chain(q, f.claim)
    }

    async fn fold_counts(&self, t: &Counted, f: &Folding<'_>, generation: u64) -> Result<()> {
        let Counted {
            live,
            compacted,
            cell,
            counts,
            summed,
        } = t;
        let sql = format!(
            "INSERT INTO {compacted} ({cell}, {counts}, source_partition, generation) \
             SELECT {cell}, {summed}, toUInt16(?), toUInt64(?) FROM ( \
               SELECT {cell}, {counts} FROM {compacted} \
               WHERE journey = ? AND source_partition = ? AND generation = ? \
               UNION ALL {} ) \
             GROUP BY {cell}",
            self.committed_in(live, &format!("{cell}, {counts}"))
        );
        let q = self.client().query(&sql).bind(f.partition).bind(generation);
        self.bind_folded(q, f)
            .execute()
            .await
            .ctx(|| format!("folding {live} of partition {}", f.partition))
    }

    async fn fold_journeys(&self, f: &Folding<'_>, generation: u64) -> Result<()> {
        let sql = format!(
            "INSERT INTO journeys_compacted \
               (journey, source_partition, customer_id, segment, state, batch_seq, generation) \
             SELECT journey, source_partition, customer_id, argMax(segment, batch_seq), \
                    argMax(state, batch_seq), max(batch_seq), toUInt64(?) FROM ( \
               SELECT journey, source_partition, customer_id, segment, state, batch_seq \
               FROM journeys_compacted \
               WHERE journey = ? AND source_partition = ? AND generation = ? \
               UNION ALL {} ) \
             GROUP BY journey, source_partition, customer_id",
            self.committed_in(
                "journeys",
                "journey, source_partition, customer_id, segment, state, batch_seq"
            )
        );
        let q = self.client().query(&sql).bind(generation);
        self.bind_folded(q, f)
            .execute()
            .await
            .ctx(|| format!("folding journeys of partition {}", f.partition))
    }

    /// The latest compaction of `partition` that counts and is older than `grace_secs`.
    async fn settled_generation(
        &self,
        partition: u16,
        grace_secs: u32,
    ) -> Result<Option<Generation>> {
        self.client()
            .query(
                "SELECT generation, live_from_seq AS live_from, records AS folded_records \
                 FROM committed_compactions WHERE journey = ? AND source_partition = ? \
                 AND compacted_at <= now() - ? ORDER BY live_from_seq DESC LIMIT 1",
            )
            .bind(self.journey())
            .bind(partition)
            .bind(grace_secs)
            .fetch_optional::<Generation>()
            .await
            .ctx(|| format!("reading the settled compaction of partition {partition}"))
    }

    /// Drops the partition's generations that no reader needs any more (folded into the
    /// settled one, or not counting and older than the grace period and an hour:
    /// uncommitted, or committed by an owner that was overtaken) and deletes the rows the
    /// settled generation folded, keeping the marker of its last folded batch.
    async fn clean_up(&self, partition: u16, grace_secs: u32) -> Result<()> {
        let Some(settled) = self.settled_generation(partition, grace_secs).await? else {
            return Ok(());
        };
        let journey = self.journey();
        for table in [METRICS.compacted, STEPS.compacted, "journeys_compacted"] {
            let stale = self
                .client()
                .query(&format!(
                    "SELECT DISTINCT generation FROM {table} \
                     WHERE journey = ? AND source_partition = ? AND generation != ? AND ( \
                       generation GLOBAL IN (SELECT generation FROM committed_compactions \
                         WHERE journey = ? AND source_partition = ? AND live_from_seq < ?) \
                       OR (generation GLOBAL NOT IN (SELECT generation FROM committed_compactions \
                             WHERE journey = ? AND source_partition = ?) \
                           AND toString(generation) GLOBAL IN (SELECT partition FROM {parts} \
                             WHERE database = ? AND table = ? AND active \
                             GROUP BY partition HAVING max(modification_time) <= now() - ?)))",
                    parts = self.layout().system("parts")
                ))
                .bind(journey)
                .bind(partition)
                .bind(settled.generation)
                .bind(journey)
                .bind(partition)
                .bind(settled.live_from)
                .bind(journey)
                .bind(partition)
                .bind(self.database())
                .bind(self.layout().stored(table))
                .bind(grace_secs.max(ABANDONED_AFTER_SECS))
                .fetch_all::<u64>()
                .await
                .ctx(|| format!("listing old generations in {table}"))?;
            for g in stale {
                self.client()
                    .query(&format!(
                        "ALTER TABLE {} DROP PARTITION {g}",
                        self.altered(table)
                    ))
                    .execute()
                    .await
                    .ctx(|| format!("dropping generation {g} of {table}"))?;
            }
        }
        for (table, below) in [
            (METRICS.live, settled.live_from),
            (STEPS.live, settled.live_from),
            ("journeys", settled.live_from),
            ("ingest_batches", settled.live_from.saturating_sub(1)),
        ] {
            self.client()
                .query(&format!(
                    "ALTER TABLE {} DELETE WHERE journey = ? AND source_partition = ? AND batch_seq < ?",
                    self.altered(table)
                ))
                .bind(journey)
                .bind(partition)
                .bind(below)
                .execute()
                .await
                .ctx(|| format!("deleting folded rows of {table}"))?;
        }
        Ok(())
    }
}

/// A generation that does not count is dropped only this long after it was written: one
/// being folded now by the partition's owner (a fold takes seconds) does not count yet
/// either, and another owner's clean-up must leave it alone.
const ABANDONED_AFTER_SECS: u32 = 3600;

/// What one compaction folds.
struct Folding<'a> {
    partition: u16,
    prev: Generation,
    live_from: u64,
    claim: &'a Claim,
}
