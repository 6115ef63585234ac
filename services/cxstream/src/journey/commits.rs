//! Committing batches to ClickHouse on a thread of its own, so that the consumer thread
//! reads and applies the next batch while ClickHouse takes this one. One flush is in flight
//! at a time: the next flush first waits for it (back-pressure when ClickHouse is slow), and
//! what follows a commit (marking it committed, publishing watermarks and confirmations,
//! Kafka's offsets) happens on the consumer thread at the next flush (or shutdown) after it
//! is done, with what the batch was when taken. The exactly-once protocol is unchanged: each batch's rows, then its
//! marker, in sequence per partition and journey; partitions are independent (each resumes
//! from its own markers), so they are committed at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use cxstream_clickhouse::BatchCommitter;
use cxstream_core::claims::Claim;
use cxstream_http::JourneyMetrics;

use super::partition::{Committed, LaneBatch};
use super::readiness::Readiness;

/// One flush's work for ClickHouse.
pub struct Job {
    /// Each partition's batches, one per journey that changed.
    pub batches: Vec<(i32, Vec<LaneBatch>)>,
    /// Folds of committed batches to run after the commits.
    pub compactions: Vec<Fold>,
}

/// A fold of a journey's committed batches of a partition below `live_from`, which its
/// owner committed under `claim`.
#[derive(Debug, Clone)]
pub struct Fold {
    pub lane: usize,
    pub partition: i32,
    pub live_from: u64,
    pub claim: Arc<Claim>,
}

/// What became of a job.
pub enum Outcome {
    Done {
        /// (partition, journey lane, what was committed).
        committed: Vec<(i32, usize, Committed)>,
        /// The folds that succeeded.
        compacted: Vec<Fold>,
        /// Partitions that another owner claimed since this one did: what was committed
        /// here does not count from that owner's first batch on.
        overtaken: Vec<i32>,
        /// Partitions whose claims could not be read after the commit: their batches may
        /// not be confirmed until a later check.
        unchecked: Vec<i32>,
    },
    /// Shutting down while ClickHouse refused: what was not committed is read again by
    /// whoever owns the partition next.
    GaveUp,
}

/// Whether a job is in flight, for the rebalance callback to wait on: a partition is
/// handed over once its batches are committed or given up, or after a while (a batch that
/// commits after the next owner's claim does not count).
#[derive(Default)]
pub struct InFlight {
    busy: Mutex<bool>,
    done: Condvar,
}

impl InFlight {
    fn set(&self, busy: bool) {
        if let Ok(mut b) = self.busy.lock() {
            *b = busy;
        }
        self.done.notify_all();
    }

    /// Waits until no job is in flight, at most `limit`; whether none is.
    pub fn wait_idle(&self, limit: Duration) -> bool {
        let Ok(mut busy) = self.busy.lock() else {
            return false;
        };
        let until = Instant::now() + limit;
        while *busy {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            match self.done.wait_timeout(busy, left) {
                Ok((b, _)) => busy = b,
                Err(_) => return false,
            }
        }
        true
    }
}

struct IdleAtExit(Arc<InFlight>);

impl Drop for IdleAtExit {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

/// The consumer thread's end of the committing thread.
pub struct Pipeline {
    jobs: SyncSender<Job>,
    outcomes: Receiver<Outcome>,
    in_flight: Arc<InFlight>,
    pending: bool,
}

/// What the committing thread needs.
pub struct Committing {
    /// One per journey map, in the maps' order.
    pub committers: Vec<Arc<BatchCommitter>>,
    pub metrics: JourneyMetrics,
    pub readiness: Arc<Readiness>,
    pub shutdown: Arc<AtomicBool>,
    pub rt: tokio::runtime::Handle,
    /// How old a compaction is before the rows it folded are deleted.
    pub compaction_grace_secs: u32,
}

impl Pipeline {
    pub fn start(committing: Committing) -> Result<Self> {
        let in_flight = Arc::new(InFlight::default());
        let (jobs, queue) = sync_channel::<Job>(1);
        let (tell, outcomes) = channel();
        let flag = in_flight.clone();
        std::thread::Builder::new()
            .name("clickhouse-commits".into())
            .spawn(move || {
                // Should this thread ever panic, a rebalance waiting on it must not wait
                // forever (the consumer thread stops at its next flush).
                let _idle_at_exit = IdleAtExit(flag.clone());
                for job in queue {
                    let outcome = committing.run(job);
                    // Before the outcome is told: once it is, the next job may be in flight.
                    flag.set(false);
                    if tell.send(outcome).is_err() {
                        break;
                    }
                }
            })
            .context("starting the thread that commits to ClickHouse")?;
        Ok(Pipeline {
            jobs,
            outcomes,
            in_flight,
            pending: false,
        })
    }

    /// Hands a job over; the one before must have been waited for.
    pub fn submit(&mut self, job: Job) -> Result<()> {
        debug_assert!(!self.pending, "one job in flight at a time");
        // Busy before the job can be done (the thread clears it when it is).
        self.in_flight.set(true);
        if self.jobs.send(job).is_err() {
            self.in_flight.set(false);
            anyhow::bail!("the thread that commits to ClickHouse has stopped");
        }
        self.pending = true;
        Ok(())
    }

    /// What the rebalance callback waits on.
    pub fn in_flight(&self) -> &Arc<InFlight> {
        &self.in_flight
    }

    /// Whether a job is in flight (not waited for yet).
    pub fn pending(&self) -> bool {
        self.pending
    }

    /// Waits for the job in flight, if any.
    pub fn wait(&mut self) -> Result<Option<Outcome>> {
        if !self.pending {
            return Ok(None);
        }
        let outcome = self
            .outcomes
            .recv()
            .map_err(|_| anyhow::anyhow!("the thread that commits to ClickHouse has stopped"))?;
        self.pending = false;
        Ok(Some(outcome))
    }
}

impl Committing {
    /// Commits the partitions' batches at once (each partition's in order: they are
    /// independent, each with its own markers), then the folds.
    fn run(&self, job: Job) -> Outcome {
        let mut claims: Vec<(usize, u16, u64)> = job
            .batches
            .iter()
            .flat_map(|(p, batches)| {
                batches
                    .iter()
                    .filter_map(move |b| Some((b.lane, u16::try_from(*p).ok()?, b.end.claim)))
            })
            .collect();
        claims.sort_unstable();
        claims.dedup();
        let partitions = job
            .batches
            .into_iter()
            .map(|(p, batches)| self.commit_partition(p, batches));
        let mut committed = Vec::new();
        let mut gave_up = false;
        for done in self.rt.block_on(futures_util::future::join_all(partitions)) {
            match done {
                Some(batches) => committed.extend(batches),
                None => gave_up = true,
            }
        }
        if gave_up {
            return Outcome::GaveUp;
        }
        let checked = self.rt.block_on(overtaken(&self.committers, &claims, None));
        let compacted = job
            .compactions
            .into_iter()
            .filter(|f| !checked.overtaken.contains(&f.partition))
            .filter(|f| self.compact(f))
            .collect();
        Outcome::Done {
            committed,
            compacted,
            overtaken: checked.overtaken,
            unchecked: checked.unknown,
        }
    }

    /// Commits a partition's batches in order; `None` when shutting down first.
    async fn commit_partition(
        &self,
        p: i32,
        batches: Vec<LaneBatch>,
    ) -> Option<Vec<(i32, usize, Committed)>> {
        let mut committed = Vec::new();
        for b in batches {
            let (lane, done) = (b.lane, b.committed());
            if !self.commit_batch(p, b).await {
                return None;
            }
            committed.push((p, lane, done));
        }
        Some(committed)
    }

    /// Commits one journey's batch of partition `p` (retrying until ClickHouse takes it);
    /// false when shutting down first.
    async fn commit_batch(&self, p: i32, b: LaneBatch) -> bool {
        let LaneBatch {
            lane,
            seq,
            batch,
            end,
            ..
        } = b;
        let started = Instant::now();
        tracing::debug!(
            partition = p,
            lane,
            seq,
            records = end.records,
            "committing"
        );
        if !self.commit_with_retry(lane, p, seq, &batch, &end).await {
            return false;
        }
        let m = &self.metrics;
        m.commit_seconds.observe(started.elapsed().as_secs_f64());
        m.batches_committed.inc();
        m.last_commit_seconds.set(super::unix_now_secs());
        m.duplicates.inc_by(batch.duplicates);
        for r in &batch.refused {
            m.refused_events
                .with_label_values(&[r.input().as_str(), r.reason.as_str()])
                .inc();
        }
        for (table, n) in [
            ("touchpoints", batch.touchpoints.len()),
            ("survey_answers", batch.answers.len()),
            ("metrics_minute", batch.aggregates.len()),
            ("journeys", batch.journeys.len()),
            ("refused_events", batch.refused.len()),
        ] {
            m.rows_written.with_label_values(&[table]).inc_by(n as u64);
        }
        true
    }

    async fn commit_with_retry(
        &self,
        lane: usize,
        p: i32,
        seq: u64,
        batch: &cxstream_core::Batch,
        end: &cxstream_clickhouse::BatchEnd,
    ) -> bool {
        let Some(committer) = self.committers.get(lane) else {
            return false;
        };
        let mut backoff = Duration::from_millis(100);
        let mut retry = false;
        loop {
            let attempt = async {
                if retry && committer.is_committed(p as u16, seq, end.claim).await? {
                    return Ok(());
                }
                committer.commit(p as u16, seq, batch, end).await
            };
            match attempt.await {
                Ok(()) => {
                    self.readiness.clickhouse(true);
                    return true;
                }
                Err(e) => {
                    // Not ready while ClickHouse is away or refuses: nothing is committed.
                    self.readiness.clickhouse(false);
                    self.metrics.commit_errors.inc();
                    if self.shutdown.load(Ordering::Relaxed) {
                        tracing::warn!(partition = p, seq, error = %e, "giving up on the batch at shutdown; it will be replayed");
                        return false;
                    }
                    tracing::warn!(partition = p, seq, error = %e, backoff_ms = backoff.as_millis() as u64, "commit failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    retry = true;
                }
            }
        }
    }

    /// Folds a journey's committed batches of a partition (best effort: a failure changes
    /// no figure, and the journey's next committed batch asks again).
    fn compact(&self, f: &Fold) -> bool {
        let started = Instant::now();
        let Some(committer) = self.committers.get(f.lane) else {
            return false;
        };
        let (p, live_from) = (f.partition, f.live_from);
        let grace = self.compaction_grace_secs;
        match self
            .rt
            .block_on(committer.compact(p as u16, live_from, &f.claim, grace))
        {
            Ok(_) => {
                self.metrics.compactions.with_label_values(&["ok"]).inc();
                tracing::debug!(
                    partition = p,
                    live_from,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "compacted"
                );
                true
            }
            Err(e) => {
                self.metrics
                    .compactions
                    .with_label_values(&["failed"])
                    .inc();
                tracing::warn!(partition = p, live_from, error = %e, "compaction failed; retried after a later batch");
                false
            }
        }
    }
}

/// What a check of held claims found.
#[derive(Debug, Default)]
pub struct Checked {
    /// Partitions another owner has claimed (or is claiming) since.
    pub overtaken: Vec<i32>,
    /// Partitions whose claims could not be read.
    pub unknown: Vec<i32>,
}

/// What a check found of one partition's claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Every claim is still the partition's highest (see `Slot::is_checked`).
    Highest,
    /// Another owner claims the partition, or has begun to.
    Overtaken,
    /// The claims could not be read.
    Unknown,
}

impl Checked {
    /// What was found of partition `p`'s claims (all its journeys' asked).
    pub fn of(&self, p: i32) -> Check {
        if self.overtaken.contains(&p) {
            Check::Overtaken
        } else if self.unknown.contains(&p) {
            Check::Unknown
        } else {
            Check::Highest
        }
    }
}

/// Of the held `(journey lane, partition, claim)`, the partitions another owner has claimed
/// since, or whose claims could not be read (asked once per journey, each within `limit`
/// when given).
pub async fn overtaken(
    committers: &[Arc<BatchCommitter>],
    held: &[(usize, u16, u64)],
    limit: Option<Duration>,
) -> Checked {
    let mut checked = Checked::default();
    for (lane, committer) in committers.iter().enumerate() {
        let of_lane: Vec<(u16, u64)> = held
            .iter()
            .filter(|(l, ..)| *l == lane)
            .map(|&(_, p, c)| (p, c))
            .collect();
        if of_lane.is_empty() {
            continue;
        }
        let asked = committer.overtaken(&of_lane);
        let answer = match limit {
            Some(limit) => tokio::time::timeout(limit, asked).await.ok(),
            None => Some(asked.await),
        };
        let unknown = || of_lane.iter().map(|(p, _)| i32::from(*p));
        match answer {
            Some(Ok(ps)) => checked.overtaken.extend(ps.into_iter().map(i32::from)),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "cannot read the partitions' claims");
                checked.unknown.extend(unknown());
            }
            None => {
                tracing::warn!("the partitions' claims were not read in time");
                checked.unknown.extend(unknown());
            }
        }
    }
    for v in [&mut checked.overtaken, &mut checked.unknown] {
        v.sort_unstable();
        v.dedup();
    }
    checked
}
