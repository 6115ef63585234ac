//! The batch-commit protocol, the heart of "exact under at-least-once".
//!
//! A batch of one input partition is committed by writing its facts, minute aggregates and
//! changed journey states, each tagged `(partition, batch_seq, batch_attempt)`, and then a
//! single marker row in `ingest_batches` holding the offsets to resume from. The marker is
//! the commit point: aggregates and states count only when their batch has a marker, and a
//! restarted or newly assigned consumer resumes from the latest marker. A crash anywhere
//! before the marker leaves only rows that never count; the replay writes them again under a
//! new attempt id. Facts carry natural keys, so their replays replace.

use std::sync::Arc;

use clickhouse::Client;
use cxstream_core::claims::Claim;
use cxstream_core::{Batch, ClockState, JourneyMap};
use serde::Deserialize;

use crate::cluster::Layout;
use crate::journey_state;
use crate::rows::{
    AnswerRow, BatchRow, CaseRow, EntryRow, JourneyStepRow, MinuteRow, RefusedRow, StageRow,
    StateRow, StepAttemptRow, StepMinuteRow, TouchpointRow,
};
use crate::{Connection, Context, Error, Result};

/// A partition's last committed batch, as another instance sees it.
#[derive(Debug, Clone, clickhouse::Row, Deserialize)]
pub struct LastCommit {
    pub age_secs: u64,
    /// Negative: nothing read from that topic yet.
    pub touchpoints_next_offset: i64,
    pub answers_next_offset: i64,
}

/// Where a partition resumes.
#[derive(Debug, Default)]
pub struct Resume {
    /// Sequence number the next batch commits under.
    pub next_seq: u64,
    /// Next offsets to read, `None` when nothing was committed yet.
    pub touchpoints_offset: Option<i64>,
    pub answers_offset: Option<i64>,
    pub identities_offset: Option<i64>,
    /// The event clock as committed.
    pub clock: ClockState,
    /// Each customer's (and visitor's) stored journey.
    pub journeys: Vec<(String, journey_state::Stored)>,
    /// Batches below this sequence number are folded into the partition's generation.
    pub live_from: u64,
    /// The last committed batch's sequence number and aggregates id.
    pub last: Option<(u64, u64)>,
    /// Where the dead-letter topic stood at the last commit, per DLQ partition (see
    /// [`BatchEnd::dead_letters_from`]); `None` when nothing was committed or it is not
    /// known: the DLQ is then read from its beginning.
    pub dead_letters_from: Option<Vec<i64>>,
    /// The claim this owner's batches commit under.
    pub claim: Claim,
}

/// The offsets and bookkeeping a batch commits together with its rows.
#[derive(Debug, Clone)]
pub struct BatchEnd {
    pub touchpoints_next_offset: i64,
    pub answers_next_offset: i64,
    pub identities_next_offset: i64,
    pub clock: ClockState,
    pub records: u64,
    /// The id its partial counts were published under (0: not published).
    pub aggregates_id: u64,
    /// The dead-letter topic's end offset per partition after every dead letter of the
    /// batch's records was delivered (a lower bound is enough): dead letters of later
    /// records come after it, so a replay from this batch finds its earlier ones from there.
    pub dead_letters_from: Vec<i64>,
    /// How many records of the erasures topic were applied before the batch was taken.
    pub erasures_seen: u64,
    /// The owner's claim (see [`Resume::claim`]).
    pub claim: u64,
}

pub struct BatchCommitter {
    client: Client,
    /// Where `ALTER`s that change rows go (compaction's clean-up).
    database: String,
    layout: Layout,
    map: Arc<JourneyMap>,
    /// Shared by every committer of the service: the INSERTs in flight at once, and with
    /// them the connections to ClickHouse (a flush writes each partition's tables together).
    inserts: Arc<tokio::sync::Semaphore>,
    /// Who this process is, in its claims (`partition_claims.owner`).
    owner: String,
    /// Whether the map's stages were written to `journey_stages` by this instance.
    map_published: std::sync::atomic::AtomicBool,
}

/// Which journeys of a partition to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wanted {
    All,
    /// By journey key (the table's order: read by its index).
    Customers(Vec<String>),
    /// By `cxstream_core::held::store_hash` of the key: ClickHouse's `sipHash64`.
    Hashes(Vec<u64>),
    /// By erasure fingerprint: the SHA-256 of the key, in lower-case hex.
    Fingerprints(Vec<String>),
}

impl Wanted {
    fn condition(&self) -> String {
        let marks = |n: usize| vec!["?"; n.max(1)].join(", ");
        match self {
            Wanted::All => "1".into(),
            Wanted::Customers(ids) => format!("customer_id IN ({})", marks(ids.len())),
            // Numbers, written into the query.
            Wanted::Hashes(h) => {
                let list: Vec<String> = h.iter().map(u64::to_string).collect();
                let list = if list.is_empty() {
                    "0".to_string()
                } else {
                    list.join(", ")
                };
                format!("sipHash64(customer_id) IN ({list})")
            }
            Wanted::Fingerprints(f) => {
                format!("lower(hex(SHA256(customer_id))) IN ({})", marks(f.len()))
            }
        }
    }

    fn bind(&self, mut q: clickhouse::query::Query) -> clickhouse::query::Query {
        let strings = match self {
            Wanted::Customers(s) | Wanted::Fingerprints(s) => s,
            Wanted::All | Wanted::Hashes(_) => return q,
        };
        if strings.is_empty() {
            return q.bind("");
        }
        for s in strings {
            q = q.bind(s);
        }
        q
    }
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct SavedState {
    customer_id: String,
    #[serde(with = "serde_bytes")]
    state: Vec<u8>,
}

impl BatchCommitter {
    pub fn new(
        conn: &Connection,
        map: Arc<JourneyMap>,
        inserts: Arc<tokio::sync::Semaphore>,
        owner: String,
    ) -> Self {
        BatchCommitter {
            client: conn.client(),
            database: conn.database.clone(),
            layout: conn.layout.clone(),
            map,
            inserts,
            owner,
            map_published: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Checks that the map's lists did not move (see [`crate::map_positions`]) and writes
    /// its stages and steps (budgets, targets) for the views that set expectation beside
    /// reality; once per instance, before it resumes its first partition.
    async fn publish_map(&self) -> Result<()> {
        use std::sync::atomic::Ordering;
        if self.map_published.load(Ordering::Relaxed) {
            return Ok(());
        }
        let map = &*self.map;
        crate::map_positions::check(&self.client, map).await?;
        let last = map.stages.len().saturating_sub(1);
        // Collected before the insert is awaited: a lazy iterator's closure held across an
        // await keeps the future from being spawned (rust-lang/rust#64552).
        let rows: Vec<StageRow> = map
            .stages
            .iter()
            .enumerate()
            .map(|(i, s)| StageRow {
                journey: map.name.clone(),
                stage: s.name.clone(),
                stage_index: u8::try_from(i).unwrap_or(u8::MAX),
                budget_ms: s.budget_ms,
                target_conversion: s.target_conversion,
                has_outcome: u8::from(i < last),
                updated_at: now_secs(),
            })
            .collect();
        self.insert_rows::<StageRow>("journey_stages", rows).await?;
        let names = |ts: &[u16]| -> Vec<String> {
            ts.iter()
                .map(|t| map.touchpoint_name(*t).to_string())
                .collect()
        };
        let steps: Vec<JourneyStepRow> = map
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| JourneyStepRow {
                journey: map.name.clone(),
                step: s.name.clone(),
                step_index: u8::try_from(i).unwrap_or(u8::MAX),
                from_touchpoints: names(&s.from),
                to_touchpoints: names(&s.to),
                budget_ms: s.budget_ms,
                target_conversion: s.target_conversion,
                updated_at: now_secs(),
            })
            .collect();
        self.insert_rows::<JourneyStepRow>("journey_steps", steps)
            .await?;
        self.map_published.store(true, Ordering::Relaxed);
        Ok(())
    }

    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// What an `ALTER TABLE` that changes the rows of `table` names.
    pub(crate) fn altered(&self, table: &str) -> String {
        self.layout.altered(&format!("{}.{table}", self.database))
    }

    pub(crate) fn database(&self) -> &str {
        &self.database
    }

    pub(crate) fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn journey(&self) -> &str {
        &self.map.name
    }

    pub(crate) fn owner(&self) -> &str {
        &self.owner
    }

    /// Reads where `partition` resumes (the last batch that counts, the journeys as of it)
    /// and claims the partition from there: batches of earlier owners after it no longer
    /// count.
    pub async fn resume(&self, partition: u16) -> Result<Resume> {
        self.publish_map().await?;
        // The intent before anything is read: a batch the owner so far confirmed after it
        // is not confirmed, and one confirmed before it is read below (and so counts).
        let id = self.write_intent(partition).await?;
        let top = self.highest_claim(partition).await?;
        let read = top.clone().unwrap_or_default();
        // The generation first: a compaction after it folds only batches committed after
        // it, so the last marker read next is at or past its live_from, and what the claim
        // keeps of the chain reaches every batch the state is read from.
        let generation = self.generation_under(partition, &read).await?;
        let last = crate::claims::bind_chain(
            self.client()
                .query(&format!(
                    "SELECT ?fields FROM ingest_batches WHERE journey = ? AND source_partition = ? \
                     AND {} ORDER BY batch_seq DESC LIMIT 1",
                    crate::claims::in_chain("claim", "batch_seq")
                ))
                .bind(self.journey())
                .bind(partition),
            &read,
        )
        .fetch_optional::<BatchRow>()
        .await
        .ctx(|| format!("reading the last committed batch of partition {partition}"))?;
        let next_seq = last.as_ref().map_or(0, |l| l.batch_seq + 1);
        let claim = self
            .write_claim(
                partition,
                top.as_ref(),
                id,
                next_seq,
                generation.live_from.min(next_seq),
            )
            .await?;
        let Some(last) = last else {
            return Ok(Resume {
                claim,
                ..Resume::default()
            });
        };
        let journeys = self
            .journeys_where(partition, generation, &claim, &Wanted::All)
            .await?;
        Ok(Resume {
            next_seq,
            // Negative: nothing was read from that topic yet (start at its beginning).
            touchpoints_offset: Some(last.touchpoints_next_offset).filter(|o| *o >= 0),
            answers_offset: Some(last.answers_next_offset).filter(|o| *o >= 0),
            identities_offset: Some(last.identities_next_offset).filter(|o| *o >= 0),
            clock: ClockState {
                highs: [last.touchpoints_high_ms, last.answers_high_ms]
                    .map(|h| Some(h).filter(|h| *h != i64::MIN)),
                watermark: Some(last.watermark_ms).filter(|w| *w != i64::MIN),
            },
            journeys,
            live_from: generation.live_from,
            last: Some((last.batch_seq, last.aggregates_id)),
            dead_letters_from: Some(last.dead_letters_from).filter(|d| !d.is_empty()),
            claim,
        })
    }

    /// Journeys of `partition` let go by its owner (see `cxstream_core::held`), read back
    /// as they were last committed under `claim`.
    pub async fn load_journeys(
        &self,
        partition: u16,
        claim: &Claim,
        wanted: &Wanted,
    ) -> Result<Vec<(String, journey_state::Stored)>> {
        // Asked each time: a compaction may have committed a newer generation since.
        let generation = self.generation_under(partition, claim).await?;
        self.journeys_where(partition, generation, claim, wanted)
            .await
    }

    /// Each customer's latest journey that `wanted` names, in the generation and the
    /// batches after it that count under `claim` (whose chain ends the history where the
    /// claim's owner resumes). (GLOBAL IN: see `committed_in` in compaction.rs.)
    async fn journeys_where(
        &self,
        partition: u16,
        generation: crate::Generation,
        claim: &Claim,
        wanted: &Wanted,
    ) -> Result<Vec<(String, journey_state::Stored)>> {
        let journey = self.journey();
        let filter = wanted.condition();
        let q = self
            .client()
            .query(&format!(
                "SELECT customer_id, argMax(state, batch_seq) AS state FROM ( \
                   SELECT customer_id, state, batch_seq FROM journeys_compacted \
                   WHERE journey = ? AND source_partition = ? AND generation = ? AND {filter} \
                   UNION ALL \
                   SELECT customer_id, state, batch_seq FROM journeys \
                   WHERE journey = ? AND source_partition = ? AND batch_seq >= ? AND {filter} \
                   AND (journey, source_partition, batch_seq, batch_attempt) GLOBAL IN \
                     (SELECT journey, source_partition, batch_seq, batch_attempt FROM ingest_batches \
                      WHERE journey = ? AND source_partition = ? AND batch_seq >= ? AND {})) \
                 GROUP BY customer_id",
                crate::claims::in_chain("claim", "batch_seq")
            ))
            .bind(journey)
            .bind(partition)
            .bind(generation.generation);
        let q = wanted
            .bind(q)
            .bind(journey)
            .bind(partition)
            .bind(generation.live_from);
        let q = wanted
            .bind(q)
            .bind(journey)
            .bind(partition)
            .bind(generation.live_from);
        let saved = crate::claims::bind_chain(q, claim)
            .fetch_all::<SavedState>()
            .await
            .ctx(|| format!("reading journey state of partition {partition}"))?;
        let mut journeys = Vec::with_capacity(saved.len());
        for s in saved {
            let stored = journey_state::decode(&s.state).map_err(|e| Error::State {
                partition,
                message: e.to_string(),
            })?;
            journeys.push((s.customer_id, stored));
        }
        Ok(journeys)
    }

    /// Whether ClickHouse answers a query now (readiness while nothing is committed).
    pub async fn ping(&self) -> Result<()> {
        self.client
            .query("SELECT 1")
            .fetch_one::<u8>()
            .await
            .map(|_| ())
            .ctx(|| "pinging ClickHouse".into())
    }

    /// Whether a batch of `partition` was committed within the last `seconds` (its marker's
    /// time, the committer's clock, against ClickHouse's): another instance works on it.
    pub async fn committed_within(&self, partition: u16, seconds: u32) -> Result<bool> {
        let n = self
            .client
            .query("SELECT count() FROM committed_batches WHERE journey = ? AND source_partition = ? AND committed_at > now() - ?")
            .bind(self.map.name.as_str())
            .bind(partition)
            .bind(seconds)
            .fetch_one::<u64>()
            .await
            .ctx(|| "checking for recent batch markers".into())?;
        Ok(n > 0)
    }

    /// The last committed batch of `partition`: how many seconds ago, by ClickHouse's clock,
    /// and the input offsets it reached (`None`: nothing committed yet).
    pub async fn last_commit(&self, partition: u16) -> Result<Option<LastCommit>> {
        self.client
            .query(
                "SELECT toUInt64(greatest(0, now() - committed_at)) AS age_secs, \
                 touchpoints_next_offset, answers_next_offset FROM committed_batches \
                 WHERE journey = ? AND source_partition = ? ORDER BY batch_seq DESC LIMIT 1",
            )
            .bind(self.map.name.as_str())
            .bind(partition)
            .fetch_optional::<LastCommit>()
            .await
            .ctx(|| format!("reading the last committed batch of partition {partition}"))
    }

    /// True when batch `seq` of `partition` is already committed under `claim` (its marker
    /// exists). Used before retrying a commit whose marker insert may have succeeded unseen.
    pub async fn is_committed(&self, partition: u16, seq: u64, claim: u64) -> Result<bool> {
        let n = self
            .client
            .query("SELECT count() FROM ingest_batches WHERE journey = ? AND source_partition = ? AND batch_seq = ? AND claim = ?")
            .bind(self.map.name.as_str())
            .bind(partition)
            .bind(seq)
            .bind(claim)
            .fetch_one::<u64>()
            .await
            .ctx(|| "checking for a batch marker".into())?;
        Ok(n > 0)
    }

    /// Writes one batch and its marker. On error nothing counts; call again (a retry gets a
    /// new attempt id), after [`Self::is_committed`] says the marker is not there.
    pub async fn commit(
        &self,
        partition: u16,
        seq: u64,
        batch: &Batch,
        end: &BatchEnd,
    ) -> Result<()> {
        let attempt: u64 = rand::random();
        let map = &*self.map;
        let states = batch
            .journeys
            .iter()
            .map(|(customer, state)| {
                let visitor = batch.visitors.get(customer);
                let bytes = journey_state::encode(state, visitor).map_err(|e| Error::State {
                    partition,
                    message: e.to_string(),
                })?;
                Ok(StateRow {
                    journey: map.name.clone(),
                    source_partition: partition,
                    customer_id: customer.to_string(),
                    segment: state
                        .floor
                        .segment
                        .or_else(|| state.touchpoints.iter().rev().find_map(|t| t.segment))
                        .map_or("unknown", |s| map.segment_name(s))
                        .to_string(),
                    state: bytes,
                    batch_seq: seq,
                    batch_attempt: attempt,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        // The rows of every table at once: nothing counts before the marker, so their
        // order does not matter, and each INSERT waits mostly for ClickHouse to write a part.
        tokio::try_join!(
            self.insert_rows::<TouchpointRow<'_>>(
                "touchpoints",
                batch
                    .touchpoints
                    .iter()
                    .map(|f| TouchpointRow::new(map, f, partition)),
            ),
            self.insert_rows::<AnswerRow<'_>>(
                "survey_answers",
                batch
                    .answers
                    .iter()
                    .map(|f| AnswerRow::new(map, f, partition)),
            ),
            self.insert_rows::<CaseRow<'_>>(
                "cases",
                batch
                    .answers
                    .iter()
                    .map(|f| CaseRow::new(map, f, partition)),
            ),
            self.insert_rows::<MinuteRow>(
                "metrics_minute",
                batch
                    .aggregates
                    .iter()
                    .map(|(k, c)| MinuteRow::new(map, k, c, partition, seq, attempt)),
            ),
            self.insert_rows::<EntryRow<'_>>(
                "stage_entries",
                batch
                    .entries
                    .iter()
                    .map(|f| EntryRow::new(map, f, partition)),
            ),
            self.insert_rows::<StepAttemptRow<'_>>(
                "step_attempts",
                batch
                    .steps
                    .iter()
                    .map(|f| StepAttemptRow::new(map, f, partition)),
            ),
            self.insert_rows::<StepMinuteRow<'_>>(
                "steps_minute",
                batch
                    .step_aggregates
                    .iter()
                    .map(|(k, c)| StepMinuteRow::new(map, k, c, partition, seq, attempt)),
            ),
            self.insert_rows::<StateRow>("journeys", states),
            self.insert_rows::<RefusedRow<'_>>(
                "refused_events",
                batch
                    .refused
                    .iter()
                    .map(|r| RefusedRow::new(map, r, partition)),
            ),
        )?;
        // The marker goes last, alone: it is the commit point. (The failpoint crashes the
        // crash tests here: every row written, the marker not.)
        fail::fail_point!("journey-before-marker", |_| std::process::abort());
        let marker = BatchRow {
            journey: map.name.clone(),
            source_partition: partition,
            batch_seq: seq,
            batch_attempt: attempt,
            touchpoints_next_offset: end.touchpoints_next_offset,
            answers_next_offset: end.answers_next_offset,
            watermark_ms: end.clock.watermark.unwrap_or(i64::MIN),
            records: end.records,
            committed_at: now_secs(),
            touchpoints_high_ms: end.clock.highs[0].unwrap_or(i64::MIN),
            answers_high_ms: end.clock.highs[1].unwrap_or(i64::MIN),
            identities_next_offset: end.identities_next_offset,
            aggregates_id: end.aggregates_id,
            dead_letters_from: end.dead_letters_from.clone(),
            erasures_seen: end.erasures_seen,
            claim: end.claim,
        };
        self.insert_rows::<BatchRow>("ingest_batches", [marker])
            .await?;
        Ok(())
    }

    /// One INSERT of all `rows` into `table`; nothing is sent when there are none.
    async fn insert_rows<'r, T: clickhouse::RowWrite>(
        &self,
        table: &str,
        rows: impl IntoIterator<Item = T::Value<'r>>,
    ) -> Result<()> {
        let mut rows = rows.into_iter().peekable();
        if rows.peek().is_none() {
            return Ok(());
        }
        // Never closed, so acquiring only waits.
        let _slot = self.inserts.acquire().await;
        let mut ins = self
            .client
            .insert::<T>(table)
            .await
            .ctx(|| format!("insert into {table}"))?;
        for row in rows {
            ins.write(&row)
                .await
                .ctx(|| format!("write a row of {table}"))?;
        }
        ins.end().await.ctx(|| format!("insert into {table}"))
    }
}

pub(crate) fn now_secs() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
}
