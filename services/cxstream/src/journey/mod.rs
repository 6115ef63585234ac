//! `cxstream journey`: consumes both input topics in one consumer group, runs one
//! [`PartitionProcessor`] per input partition, dead-letters bad records, and commits batches
//! to ClickHouse (then offsets to Kafka) on a fixed interval, on a thread of their own
//! while the next batch is read ([`commits`]). With identity stitching it
//! also reads and writes the identities topic: identifications and claimed touchpoints are
//! sent before the batch that made them commits, each journey's committed watermark after.
//!
//! The consumer runs on its own thread with a `BaseConsumer` (no wake-up per message); the
//! async ClickHouse writes are driven from it through the runtime handle.

mod aggregates;
mod claiming;
mod commits;
mod dead_letters;
mod erasures;
mod partition;
mod positions;
mod queues;
mod readiness;
mod rebalance;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use cxstream_avro::{Codec, IdentityMessage, IdentityMessageKind};
use cxstream_clickhouse::BatchCommitter;
use cxstream_core::JourneyMaps;
use cxstream_http::{Health, JourneyMetrics};

/// Rejoins of the group by `--until-caught-up` before it takes every partition itself.
const REJOINS_BEFORE_ALONE: u32 = 2;
/// A partition with records waiting and no batch committed nor claim written this long has
/// no live owner; nor is anything told before the group's last rebalance is as old.
const UNSERVED_AFTER_SECS: u64 = 30;
/// How often a member holding partitions looks for input partitions nobody serves.
const UNSERVED_CHECK_EVERY: Duration = Duration::from_secs(5);
/// How long an overtaken partition waits before it is claimed again here: a few
/// heartbeats, in which a member that lost it hears so from the group.
const PARKED_FOR: Duration = Duration::from_secs(3);
/// How long a claimed partition's inputs may refuse to move to its resume point before that
/// is logged (it is tried again at every loop).
const SEEK_PATIENCE: Duration = Duration::from_secs(10);
/// How often the claims of every held partition are checked, besides after each commit: a
/// partition with nothing to commit learns so too.
const CLAIMS_CHECK_EVERY: Duration = Duration::from_secs(5);
/// How often a catch-up whose inputs all look read to their end takes the steps a flush
/// takes (instead of every `journey.flush_interval_ms`).
const ENDING_FLUSH_EVERY: Duration = Duration::from_millis(20);
/// How long a catch-up waits for the broker's word that it read every input to its end.
const CONFIRM_END_WITHIN: Duration = Duration::from_secs(2);
const CLAIMS_CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the group rules' ClickHouse reads (who serves a partition, who committed one
/// lately) may take: the consumer is not polled meanwhile.
const RULE_READ_TIMEOUT: Duration = Duration::from_secs(2);
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{BaseRecord, Producer as _};
use rdkafka::TopicPartitionList;

use crate::config::Config;
use crate::produce::{delivered, send, Deliveries, Producer};
use aggregates::AggregatesOutput;
use commits::Check;
use partition::{Decoded, LaneBatch, Published, Record, Setup, Slot, Source};
use queues::InputQueues;
use readiness::Readiness;
use rebalance::{Change, JourneyContext};

/// Shared with the input partitions' queues ([`InputQueues`]), which poll through it.
type ConsumerHandle = Arc<BaseConsumer<JourneyContext>>;

/// librdkafka's prefetch bounds, per input partition (see [`queues`]). `fetch.max.bytes`
/// stays at librdkafka's default: left alone, it shrinks to the queue's bound, and a record
/// larger than that (4 MB) could never be fetched (the consumer retries it forever).
const PREFETCH_PER_INPUT_PARTITION: [(&str, &str); 3] = [
    ("queued.min.messages", "10000"),
    ("queued.max.messages.kbytes", "4096"),
    ("fetch.max.bytes", "52428800"),
];

/// How a consumer gets its partitions.
#[derive(Debug, Clone, Copy)]
enum Membership {
    /// From the journey group, subscribed to the inputs.
    Group,
    /// Every one of the inputs' partitions, assigned here without the group (its offsets
    /// are still committed under the group's id).
    Alone { partitions: usize },
}

/// A consumer of the inputs, in the journey group or alone.
fn connect(
    cfg: &Config,
    in_flight: &Arc<commits::InFlight>,
    readiness: &Arc<Readiness>,
    membership: Membership,
) -> Result<ConsumerHandle> {
    let ctx = JourneyContext {
        in_flight: in_flight.clone(),
        touchpoints_topic: cfg.topics.touchpoints.clone(),
        answers_topic: cfg.topics.survey_responses.clone(),
        identities_topic: cfg.identity.enabled.then(|| cfg.topics.identities.clone()),
        changes: Mutex::new(Vec::new()),
        changed: AtomicBool::new(false),
        readiness: readiness.clone(),
        high_watermarks: Mutex::new(Default::default()),
    };
    let mut consumer_config = cfg.kafka.consumer_config(&cfg.journey.group_id);
    consumer_config.set("statistics.interval.ms", "250");
    // Each input partition has its own queue (see [`queues`]), and librdkafka's prefetch
    // bounds hold per queue then, not for the consumer: a few MB each, unless
    // `kafka.properties` says otherwise.
    for (key, value) in PREFETCH_PER_INPUT_PARTITION {
        if !cfg.kafka.properties.contains_key(key) {
            consumer_config.set(key, value);
        }
    }
    let consumer: BaseConsumer<JourneyContext> = consumer_config
        .create_with_context(ctx)
        .context("creating the Kafka consumer")?;
    let mut topics = vec![
        cfg.topics.touchpoints.as_str(),
        cfg.topics.survey_responses.as_str(),
    ];
    if cfg.identity.enabled {
        topics.push(cfg.topics.identities.as_str());
    }
    match membership {
        Membership::Group => consumer
            .subscribe(&topics)
            .context("subscribing to the input topics")?,
        Membership::Alone { partitions } => {
            let all: Vec<i32> = (0..partitions)
                .filter_map(|p| i32::try_from(p).ok())
                .collect();
            consumer
                .context()
                .assign_paused(&consumer, &all)
                .context("assigning every input partition")?;
        }
    }
    Ok(Arc::new(consumer))
}

/// Options of one run that are not configuration (CLI flags).
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Exit once every input partition is assigned here, read to its end and committed.
    pub until_caught_up: bool,
}

pub struct JourneyService {
    consumer: ConsumerHandle,
    inner: Inner,
}

/// Everything but the consumer, so that a borrowed message and the state can coexist.
struct Inner {
    cfg: Config,
    maps: JourneyMaps,
    codec: Codec,
    metrics: JourneyMetrics,
    readiness: Arc<Readiness>,
    /// When ClickHouse was last heard from (a commit, a resume or a ping).
    clickhouse_seen: Instant,
    /// One per journey map, in the maps' order.
    committers: Vec<Arc<BatchCommitter>>,
    /// Reads journeys let go back from ClickHouse.
    readback: Readback,
    dlq: Producer<Deliveries>,
    /// Why a dead letter was refused when sending it, if one was.
    dlq_refused: Option<String>,
    /// What every slot shares (the event-time policy, identity stitching).
    setup: Setup,
    /// Writes identifications and claimed touchpoints to the identities topic, partitioning
    /// keys as the producers do; a refusal stops the service before any commit.
    identities: Option<Producer<Deliveries>>,
    /// Publishes watermarks there: one lost is published again, so its refusals are logged.
    watermarks: Option<Producer<Deliveries>>,
    /// When every journey's watermark was last published again.
    republished: Instant,
    /// Publishes each batch's per-minute partial counts for the alerter, when on.
    aggregates: Option<AggregatesOutput>,
    /// Partitions another owner claimed while held here, since when (see [`Inner::park`]).
    parked: BTreeMap<i32, Instant>,
    /// Partitions assigned here and being claimed, paused meanwhile.
    claiming: claiming::Claiming,
    /// Partitions claimed but not yet read from their resume point (a seek failed), since
    /// when, with the resume point of each journey.
    claimed: BTreeMap<i32, (Instant, claiming::Claimed)>,
    /// Inputs waiting (for the identity watermark, or for the other input to catch up in
    /// event time), with the first record they left and the event time they wait at: every
    /// record of theirs is left until they go on from there. Their queues are not polled
    /// meanwhile.
    waiting: BTreeMap<(i32, Source), (i64, i64)>,
    /// The records of each waiting input polled before it stopped (at most one poll's),
    /// in order: applied first when it goes on.
    left: BTreeMap<(i32, Source), Vec<LeftRecord>>,
    slots: BTreeMap<i32, Slot>,
    shutdown: Arc<AtomicBool>,
    rt: tokio::runtime::Handle,
    dlq_counts: BTreeMap<&'static str, u64>,
    /// Where the DLQ stands, and which records read again are in it already.
    dead_letters: dead_letters::DeadLetterLog,
    /// Records read since the last flush, per source and partition.
    consumed: BTreeMap<(Source, i32), u64>,
    /// Every partition this run has been assigned (its own recent commits are no sign of
    /// another instance).
    held: std::collections::BTreeSet<i32>,
    /// When the group last rebalanced (every rebalance revokes and assigns again, whether
    /// or not this member's partitions change): until that is [`UNSERVED_AFTER_SECS`] old,
    /// the group may still be handing partitions out.
    assignment_changed: Instant,
    erasures: erasures::ErasureLog,
    /// Asks the broker where inputs end, off this thread.
    positions: positions::PositionProbe,
    /// Commits to ClickHouse, off this thread.
    pipeline: commits::Pipeline,
    /// What follows the commits of the job in flight.
    after: Option<AfterCommit>,
    /// Partitions revoked while a job was in flight: what follows its commits is not
    /// theirs to do any more (another owner, or a new assignment here, resumed after it).
    handed_over: std::collections::BTreeSet<i32>,
    /// Folds due, for the next job.
    compactions: Vec<commits::Fold>,
    /// Per partition, the question asked of `positions` and how many answers are to come.
    probing: BTreeMap<i32, (u64, usize)>,
}

impl JourneyService {
    pub fn new(
        cfg: Config,
        maps: JourneyMaps,
        metrics: JourneyMetrics,
        health: Health,
        shutdown: Arc<AtomicBool>,
        rt: tokio::runtime::Handle,
    ) -> Result<Self> {
        // The configured schemas are checked before anything is asked of the broker.
        let codec = cfg.codec()?;
        let inserts = Arc::new(tokio::sync::Semaphore::new(
            cfg.clickhouse.max_concurrent_inserts,
        ));
        let committers: Vec<Arc<BatchCommitter>> = maps
            .iter()
            .map(|m| {
                Arc::new(BatchCommitter::new(
                    &cfg.clickhouse_connection(),
                    m.clone(),
                    inserts.clone(),
                    crate::process::host_and_pid(),
                ))
            })
            .collect();
        let readiness = Arc::new(Readiness::new(health));
        let positions = positions::PositionProbe::start(&cfg, readiness.clone())?;
        let pipeline = commits::Pipeline::start(commits::Committing {
            committers: committers.clone(),
            metrics: metrics.clone(),
            readiness: readiness.clone(),
            shutdown: shutdown.clone(),
            rt: rt.clone(),
            // ClickHouse subtracts it from now(): a year is more than any grace needs.
            compaction_grace_secs: u32::try_from(cfg.journey.compaction_grace_ms / 1000)
                .unwrap_or(u32::MAX)
                .min(365 * 86_400),
        })?;
        let consumer = connect(&cfg, pipeline.in_flight(), &readiness, Membership::Group)?;
        // Before any partition resumes (they are assigned when the consumer is first polled,
        // in `run`): a journey restored must know who is erased. Read while the group forms.
        let erasures = erasures::ErasureLog::load(&cfg)?;
        let claiming = claiming::Claiming::new(rt.clone(), committers.clone(), readiness.clone());
        let dlq: Producer<Deliveries> = cfg
            .kafka
            .producer_config()
            .create_with_context(Deliveries::default())
            .context("creating the dead-letter producer")?;
        let (partitions, identities, watermarks) = match cfg.identity.policy() {
            // Only the aggregates' readers need the count then.
            None if cfg.journey.publish_aggregates => (
                partition_count(&consumer, &cfg.topics.touchpoints)?,
                None,
                None,
            ),
            None => (1, None, None),
            Some(_) => {
                let partitions = copartitioned(&consumer, &cfg)?;
                let producer = || -> Result<Producer<Deliveries>> {
                    cfg.kafka
                        .producer_config()
                        .set("partitioner", &cfg.identity.partitioner)
                        .create_with_context(Deliveries::default())
                        .context("creating the identities producer")
                };
                (partitions, Some(producer()?), Some(producer()?))
            }
        };
        let aggregates = if cfg.journey.publish_aggregates {
            Some(AggregatesOutput::new(&cfg, partitions)?)
        } else {
            None
        };
        let setup = Setup {
            policy: cfg.journey.policy(),
            identity: cfg.identity.policy(),
            partitions,
            group: cfg.journey.group_id.as_str().into(),
            erasures: erasures.erased().clone(),
            let_go: cfg.journey.let_go_idle_journeys,
            let_go_quiet_after: cfg
                .journey
                .let_go_quiet_journeys_after_ms
                .map(|ms| i64::try_from(ms).unwrap_or(i64::MAX)),
        };
        let readback = Readback {
            rt: rt.clone(),
            committers: committers.clone(),
            shutdown: shutdown.clone(),
            readiness: readiness.clone(),
        };
        let inner = Inner {
            codec,
            cfg,
            maps,
            metrics,
            readiness,
            clickhouse_seen: Instant::now(),
            readback,
            committers,
            dlq,
            dlq_refused: None,
            setup,
            identities,
            watermarks,
            republished: Instant::now(),
            aggregates,
            parked: BTreeMap::new(),
            claiming,
            claimed: BTreeMap::new(),
            waiting: Default::default(),
            left: Default::default(),
            slots: BTreeMap::new(),
            shutdown,
            rt,
            dlq_counts: BTreeMap::new(),
            dead_letters: Default::default(),
            consumed: BTreeMap::new(),
            held: Default::default(),
            assignment_changed: Instant::now(),
            erasures,
            positions,
            probing: BTreeMap::new(),
            pipeline,
            after: None,
            handed_over: Default::default(),
            compactions: Vec::new(),
        };
        Ok(JourneyService { consumer, inner })
    }

    /// Runs until SIGTERM/SIGINT (or until caught up, if asked); commits before returning.
    /// The journeys it held are not freed: the process is meant to exit next.
    pub fn run(self, opts: RunOptions) -> Result<()> {
        let JourneyService {
            mut consumer,
            mut inner,
        } = self;
        let join_timeout = Duration::from_millis(inner.cfg.journey.join_timeout_ms);
        let mut unassigned_since = Some(Instant::now());
        let mut rejoins: u32 = 0;
        let mut alone = false;
        // Caught up means all of the input, not the share assigned so far: after a crash the
        // dead member keeps its partitions until the group evicts it.
        // Catching up needs the count; a long-running member only uses it to look for
        // partitions nobody serves (0: it does not look).
        let inputs = if opts.until_caught_up {
            partition_count(&consumer, &inner.cfg.topics.touchpoints)?
        } else {
            partition_count(&consumer, &inner.cfg.topics.touchpoints).unwrap_or(0)
        };
        let mut unserved_checked = Instant::now();
        let mut claims_checked = Instant::now();
        let mut unserved = false;
        // How long an input read to its end stays quiet before it stops holding the
        // watermark back. Catching up reads what is there: an input the broker confirms
        // read to its end has nothing more to wait for.
        let idle_release = if opts.until_caught_up {
            Duration::ZERO
        } else {
            Duration::from_millis(inner.cfg.journey.idle_release_ms)
        };
        let flush_every = Duration::from_millis(inner.cfg.journey.flush_interval_ms);
        let mut last_flush = Instant::now();
        let mut since_flush: u64 = 0;
        let mut queues = InputQueues::default();
        let mut got_record = false;
        inner.readiness.clickhouse(true);
        loop {
            if inner.shutdown.load(Ordering::Relaxed) {
                tracing::info!("shutting down: committing what was read");
                inner.claiming.clear();
                inner.flush(&consumer)?;
                inner.settle(&consumer)?;
                break;
            }
            // The consumer's own queue brings rebalances and errors (records only of a
            // partition not split yet); the records wait in the inputs' queues.
            let polled = consumer.poll(if got_record {
                Duration::ZERO
            } else {
                IDLE_POLL
            });
            inner.apply_rebalance(&consumer);
            queues.retain(|p| inner.slots.contains_key(&p));
            inner.start_claimed(&consumer, &mut queues)?;
            let mut msgs = Vec::new();
            match polled {
                Some(Ok(msg)) => msgs.push(msg),
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(e)) => tracing::warn!(error = %e, "consumer error"),
                None => {}
            }
            // All that librdkafka has fetched is taken (up to the next batch's size), so
            // that reading journeys back takes one query for all.
            let room = inner
                .cfg
                .journey
                .max_batch_records
                .saturating_sub(since_flush)
                .min(POLLED_TOGETHER);
            queues.poll(|at| inner.reads(at), room as usize, &mut msgs);
            got_record = !msgs.is_empty();
            if got_record {
                // A partition revoked while they were polled is not applied to.
                inner.apply_rebalance(&consumer);
                since_flush += msgs.len() as u64;
                inner.on_messages(&msgs)?;
                drop(msgs);
                if !inner.waiting.is_empty() {
                    inner.throttle()?;
                }
            }
            // Catching up alone, a share of the input is not enough either: a killed
            // member's partitions stay with it until the coordinator evicts it, which Tansu
            // never does (seen here: a run waited 20 minutes for two of four partitions).
            // With identity stitching an owner may rightly wait for the identity watermark
            // without committing: no sign that it is gone.
            let assigned = inner.assigned();
            if assigned > 0
                && inner.setup.identity.is_none()
                && assigned < inputs
                && unserved_checked.elapsed() >= UNSERVED_CHECK_EVERY
            {
                unserved_checked = Instant::now();
                let nobody = inner.unserved(&consumer, inputs);
                if !nobody.is_empty() && !unserved {
                    tracing::warn!(partitions = ?nobody, "input partitions have records waiting and nobody has committed or claimed them lately; rejoining the group");
                }
                unserved = !nobody.is_empty();
            }
            let short = assigned == 0 || unserved || opts.until_caught_up && assigned < inputs;
            if short && !alone {
                let since = *unassigned_since.get_or_insert_with(Instant::now);
                // Tansu 0.6 keeps a group whose leader was evicted formed around the missing
                // leader, so nobody ever takes the dead member's partitions; leaving and
                // joining again resets the group. Each further attempt waits twice as long:
                // a rejoin that lands while the group is settling (the dead session expires,
                // a new leader assigns) starts the settling over, and a fixed wait close to
                // the session timeout repeated that forever (seen once in CI).
                // Partitions found unserved have waited 30 s for an owner already: the
                // first rejoin for them goes at once.
                let wait = if unserved && rejoins == 0 {
                    Duration::ZERO
                } else {
                    join_timeout * 2u32.pow(rejoins.min(3))
                };
                if since.elapsed() >= wait {
                    // Catching up is a single instance's job: when the group still withholds
                    // partitions after rejoining, nobody live holds them (Tansu has also kept a
                    // group led by a member that had left, seen once in CI), so take them all.
                    alone = opts.until_caught_up
                        && rejoins >= REJOINS_BEFORE_ALONE
                        && !inner.committed_elsewhere(inputs);
                    rejoins += 1;
                    if alone {
                        tracing::warn!(
                            waited_ms = since.elapsed().as_millis() as u64,
                            assigned = inner.slots.len(),
                            partitions = inputs,
                            "the group still withholds partitions after rejoining; catching up alone with every partition assigned here"
                        );
                    } else {
                        tracing::warn!(
                            waited_ms = since.elapsed().as_millis() as u64,
                            assigned = inner.slots.len(),
                            rejoins,
                            "not all partitions assigned; rejoining the group"
                        );
                    }
                    inner.claiming.clear();
                    inner.claimed.clear();
                    inner.parked.clear();
                    if !inner.slots.is_empty() {
                        // Commit what was read; the partitions resume from their commit log
                        // wherever they are assigned next.
                        inner.flush(&consumer)?;
                        inner.settle(&consumer)?;
                        inner.slots.clear();
                        inner.parked.clear();
                        inner.waiting.clear();
                        inner.left.clear();
                        inner.probing.clear();
                        inner.compactions.clear();
                    }
                    queues.clear();
                    close_consumer(consumer);
                    let membership = if alone {
                        Membership::Alone { partitions: inputs }
                    } else {
                        Membership::Group
                    };
                    consumer = connect(
                        &inner.cfg,
                        inner.pipeline.in_flight(),
                        &inner.readiness,
                        membership,
                    )?;
                    unassigned_since = Some(Instant::now());
                    unserved = false;
                    unserved_checked = Instant::now();
                }
            } else {
                unassigned_since = None;
                rejoins = 0;
            }
            // Near the end of a catch-up, the steps to it (a last batch, the broker's word on
            // where the inputs end) each wait for the next flush: take them as soon as the
            // consumer has nothing more to hand over.
            let ending = opts.until_caught_up
                && !got_record
                && inner.slots.len() >= inputs
                && inner.slots.values().all(Slot::may_be_read_to_end);
            if last_flush.elapsed() >= flush_every
                || since_flush >= inner.cfg.journey.max_batch_records
                || ending && last_flush.elapsed() >= ENDING_FLUSH_EVERY
            {
                if claims_checked.elapsed() >= CLAIMS_CHECK_EVERY {
                    claims_checked = Instant::now();
                    inner.check_claims(&consumer);
                }
                inner.reclaim_parked(&consumer);
                inner.refresh_positions(&consumer, idle_release)?;
                inner.flush(&consumer)?;
                inner.throttle()?;
                last_flush = Instant::now();
                since_flush = 0;
                if opts.until_caught_up
                    && inner.slots.len() >= inputs
                    && inner.caught_up(&consumer)?
                {
                    tracing::info!(
                        journeys_let_go = inner.metrics.journeys_let_go.get(),
                        journeys_read_back = inner.metrics.journeys_read_back.get(),
                        "caught up: every input partition is assigned here, read to its end and committed"
                    );
                    break;
                }
            }
        }
        inner.readiness.stopping();
        // The process exits next: its journeys go back to the system whole. Freed one by
        // one, they cost a catch-up 5 % of its CPU.
        std::mem::forget(std::mem::take(&mut inner.slots));
        drop(queues);
        inner.close(consumer);
        Ok(())
    }
}

impl Inner {
    /// Delivers the last committed-batch records and closes the Kafka clients side by side:
    /// each takes its time to wind its threads down (about 100 ms for the consumer, which
    /// leaves the group if it holds partitions, see `cxstream_kafka::group::close`), and one
    /// after another they made most of a catch-up's exit.
    fn close(self, consumer: ConsumerHandle) {
        let Inner {
            aggregates,
            dlq,
            identities,
            watermarks,
            erasures,
            ..
        } = self;
        std::thread::scope(|s| {
            s.spawn(move || close_consumer(consumer));
            s.spawn(move || {
                if let Some(out) = aggregates {
                    // On exit nobody may resume the partitions to say them again.
                    out.close();
                }
            });
            s.spawn(move || drop((dlq, identities, watermarks, erasures)));
        });
    }

    /// Runs a read on the runtime for at most `timeout`: `None` if it failed or took longer.
    fn read_within<T, E>(
        &self,
        timeout: Duration,
        read: impl std::future::Future<Output = Result<T, E>>,
    ) -> Option<T> {
        // The timer is made inside the runtime: `timeout` needs its reactor.
        let done = self
            .rt
            .block_on(async { tokio::time::timeout(timeout, read).await });
        done.ok()?.ok()
    }

    /// Input partitions nobody serves: not assigned here, records waiting after their last
    /// committed batch, and for [`UNSERVED_AFTER_SECS`] no batch committed and no claim (or
    /// intent) written by anyone. Under Tansu 0.6 a killed member that led the group leaves
    /// its partitions so for good (the group stays formed around it), while the other
    /// members keep theirs and never notice. A fresh partition has neither: nothing is told
    /// until the group's last rebalance is as old, since a group that is still settling
    /// (another member joining, claiming) looks the same, and rejoining then only starts the
    /// settling over. Errors and slow answers count as served: this only decides whether to
    /// rejoin, and the consumer is not polled meanwhile.
    fn unserved(&self, consumer: &ConsumerHandle, partitions: usize) -> Vec<i32> {
        if self.assignment_changed.elapsed() < Duration::from_secs(UNSERVED_AFTER_SECS) {
            return Vec::new();
        }
        let timeout = RULE_READ_TIMEOUT;
        let inputs = [Source::Touchpoints, Source::Answers].map(|s| self.topic(s).to_string());
        let Some(c) = self.committers.first() else {
            return Vec::new();
        };
        let mut unserved = Vec::new();
        for p in (0..partitions).filter_map(|p| i32::try_from(p).ok()) {
            let Ok(partition) = u16::try_from(p) else {
                continue;
            };
            if self.slots.contains_key(&p)
                || self.claiming.contains(p)
                || self.claimed.contains_key(&p)
            {
                continue;
            }
            let recent = |age: Option<u64>| age.is_some_and(|a| a < UNSERVED_AFTER_SECS);
            let Some(last) = self.read_within(timeout, c.last_commit(partition)) else {
                continue;
            };
            if recent(last.as_ref().map(|l| l.age_secs)) {
                continue;
            }
            match self.read_within(timeout, c.last_claimed(partition)) {
                Some(age) if !recent(age) => {}
                _ => continue,
            }
            let next = last.map_or([-1, -1], |l| {
                [l.touchpoints_next_offset, l.answers_next_offset]
            });
            let waiting = inputs.iter().zip(next).any(|(topic, next)| {
                consumer
                    .fetch_watermarks(topic, p, timeout)
                    .is_ok_and(|(low, high)| high > next.max(low))
            });
            if waiting {
                unserved.push(p);
            }
        }
        unserved
    }

    /// Whether a partition never assigned here had a batch committed lately: a live
    /// instance holds it, so catching up alone would commit it twice. Unknown (ClickHouse
    /// does not answer, or not within [`RULE_READ_TIMEOUT`]) counts as yes.
    fn committed_elsewhere(&self, partitions: usize) -> bool {
        const LATELY_SECS: u32 = 30;
        let others = (0..partitions)
            .filter_map(|p| i32::try_from(p).ok())
            .filter(|p| !self.held.contains(p));
        for p in others {
            let Ok(partition) = u16::try_from(p) else {
                continue;
            };
            for c in &self.committers {
                match self.read_within(
                    RULE_READ_TIMEOUT,
                    c.committed_within(partition, LATELY_SECS),
                ) {
                    Some(false) => {}
                    Some(true) => {
                        tracing::warn!(
                            partition = p,
                            journey = c.journey(),
                            "another instance commits this partition; not catching up alone"
                        );
                        return true;
                    }
                    None => {
                        tracing::warn!(partition = p, "ClickHouse did not tell in time whether another instance commits this partition; not catching up alone");
                        return true;
                    }
                }
            }
        }
        false
    }

    /// Partitions assigned here: read, or being claimed.
    fn assigned(&self) -> usize {
        self.slots.len() + self.claiming.len() + self.claimed.len()
    }

    fn apply_rebalance(&mut self, consumer: &ConsumerHandle) {
        let changes = consumer.context().take_changes();
        if changes.is_empty() {
            return;
        }
        self.assignment_changed = Instant::now();
        for change in changes {
            match change {
                Change::Assigned(p) => {
                    self.held.insert(p);
                    self.forget(p);
                    self.claiming.start(p);
                }
                Change::Revoked(p) => {
                    if self.pipeline.pending() {
                        self.handed_over.insert(p);
                    }
                    self.forget(p);
                    self.dead_letters.sent_before.remove(&p);
                    self.metrics
                        .rebalances
                        .with_label_values(&["revoked"])
                        .inc();
                    for source in Source::ALL {
                        let _ = self
                            .metrics
                            .consumer_lag
                            .remove_label_values(&[source.as_str(), &p.to_string()]);
                    }
                }
            }
        }
        self.metrics
            .assigned_partitions
            .set(self.slots.len() as i64);
    }

    /// Drops everything held about partition `p`: it went elsewhere, or it starts afresh.
    fn forget(&mut self, p: i32) {
        self.slots.remove(&p);
        self.claiming.cancel(p);
        self.claimed.remove(&p);
        self.parked.remove(&p);
        self.probing.remove(&p);
        self.compactions.retain(|f| f.partition != p);
        self.waiting.retain(|(q, _), _| *q != p);
        self.left.retain(|(q, _), _| *q != p);
    }

    /// Reads on from their resume points the partitions claimed since the last call: each
    /// input is moved there, given its own queue, then unpaused. A partition whose inputs
    /// cannot be moved yet (librdkafka may still be fetching its committed offsets) is tried
    /// again next time.
    fn start_claimed(&mut self, consumer: &ConsumerHandle, queues: &mut InputQueues) -> Result<()> {
        for (p, claimed) in self.claiming.take_claimed() {
            self.claimed.insert(p, (Instant::now(), claimed));
        }
        if self.claimed.is_empty() {
            return Ok(());
        }
        let mut ready = Vec::new();
        for (p, (since, claimed)) in std::mem::take(&mut self.claimed) {
            if claimed.check == Check::Overtaken {
                // Claimed by another owner right after: reading on would commit batches
                // that do not count.
                self.park(consumer, p);
                continue;
            }
            let started = self
                .seek_to_resume_point(consumer, p, &claimed.resumes)
                .map_err(anyhow::Error::from)
                .and_then(|()| queues.split(consumer, p, &self.source_topics()));
            match started {
                Ok(()) => ready.push((p, claimed)),
                Err(e) => {
                    // The claim stays valid: only where librdkafka reads from is not set yet.
                    if since.elapsed() >= SEEK_PATIENCE {
                        tracing::warn!(partition = p, error = %e, waited_s = since.elapsed().as_secs(), "cannot move the inputs to the resume point yet; trying again");
                    }
                    self.claimed.insert(p, (since, claimed));
                }
            }
        }
        if ready.is_empty() {
            return Ok(());
        }
        self.learn_sent_before(ready.iter().map(|(p, c)| (*p, c.resumes.as_slice())));
        // Journeys restored now must know every erasure recorded so far.
        self.apply_new_erasures()?;
        for (p, claimed) in ready {
            for (c, resume) in self.committers.iter().zip(&claimed.resumes) {
                tracing::info!(
                    partition = p,
                    journey = c.journey(),
                    next_seq = resume.next_seq,
                    touchpoints_offset = ?resume.touchpoints_offset,
                    answers_offset = ?resume.answers_offset,
                    identities_offset = ?resume.identities_offset,
                    journeys = resume.journeys.len(),
                    "partition claimed; resuming from the last committed batch"
                );
            }
            let mut slot = Slot::new(&self.maps, claimed.resumes, &self.setup);
            slot.set_checked(claimed.check == Check::Highest);
            self.slots.insert(p, slot);
            // Where its inputs end decides when it goes idle; the statistics say so only
            // after a fetch.
            self.ask_where_inputs_end(p);
            if let Err(e) = consumer.resume(&self.inputs(p)) {
                tracing::warn!(partition = p, error = %e, "cannot unpause a claimed partition");
            }
            self.metrics
                .rebalances
                .with_label_values(&["assigned"])
                .inc();
        }
        self.metrics
            .assigned_partitions
            .set(self.slots.len() as i64);
        Ok(())
    }

    fn seek_to_resume_point(
        &self,
        consumer: &ConsumerHandle,
        p: i32,
        resumes: &[cxstream_clickhouse::Resume],
    ) -> Result<(), KafkaError> {
        for (topic, offset) in consumer.context().start_offsets(resumes) {
            consumer.seek(&topic, p, offset, Duration::from_secs(5))?;
        }
        Ok(())
    }

    /// Applies the records polled together, in order.
    fn on_messages(&mut self, msgs: &[BorrowedMessage<'_>]) -> Result<()> {
        let records: Vec<(i32, Record<'_>)> = msgs
            .iter()
            .map(|m| (m.partition(), record(m, self.source(m))))
            .collect();
        for (p, r) in &records {
            *self.consumed.entry((r.source, *p)).or_default() += 1;
        }
        self.on_records(&records)
    }

    /// Applies records of the partitions, in order. They are decoded first, and the
    /// journeys let go that they need are read back from ClickHouse in one query per
    /// partition (not one per customer).
    fn on_records(&mut self, records: &[(i32, Record<'_>)]) -> Result<()> {
        let decoded: Vec<Decoded> = records.iter().map(|(p, r)| self.decode(*p, r)).collect();
        self.read_ahead(records, &decoded)?;
        for ((p, r), decoded) in records.iter().zip(decoded) {
            self.on_record(*p, r, decoded)?;
        }
        Ok(())
    }

    /// Whether input `at` is read: its partition is, and it does not wait.
    fn reads(&self, at: (i32, Source)) -> bool {
        self.slots.contains_key(&at.0) && !self.waiting.contains_key(&at)
    }

    fn source(&self, msg: &BorrowedMessage<'_>) -> Source {
        if msg.topic() == self.cfg.topics.touchpoints {
            Source::Touchpoints
        } else if msg.topic() == self.cfg.topics.survey_responses {
            Source::Answers
        } else {
            Source::Identities
        }
    }

    /// A record of a partition read here, not waiting, and not too large: decoded.
    fn decode(&self, partition: i32, r: &Record<'_>) -> Decoded {
        if !self.reads((partition, r.source)) || r.payload.len() > self.cfg.journey.max_record_bytes
        {
            return Decoded::Later;
        }
        Slot::decode(r, &self.codec)
    }

    /// Reads back what the journeys of each partition need before `decoded` is applied.
    fn read_ahead(&mut self, records: &[(i32, Record<'_>)], decoded: &[Decoded]) -> Result<()> {
        let mut by_partition: BTreeMap<i32, Vec<&Decoded>> = BTreeMap::new();
        for ((p, _), d) in records.iter().zip(decoded) {
            if !matches!(d, Decoded::Later | Decoded::Bad(..)) {
                by_partition.entry(*p).or_default().push(d);
            }
        }
        for (partition, ahead) in by_partition {
            let mut store = self.readback.at(partition);
            if let Some(slot) = self.slots.get_mut(&partition) {
                slot.read_ahead(&ahead, &mut store)?;
            }
        }
        Ok(())
    }

    fn on_record(&mut self, partition: i32, record: &Record<'_>, decoded: Decoded) -> Result<()> {
        let source = record.source;
        let mut store = self.readback.at(partition);
        let Some(slot) = self.slots.get_mut(&partition) else {
            return Ok(());
        };
        let at = (partition, source);
        if self.waiting.contains_key(&at) {
            self.leave(partition, record);
            return Ok(());
        }
        if let Some(time) = slot.event_time(record, &decoded, &self.codec) {
            if slot.must_wait(source, record.offset, time) {
                self.waiting.insert(at, (record.offset, time));
                self.leave(partition, record);
                return Ok(());
            }
        }
        if record.payload.len() > self.cfg.journey.max_record_bytes {
            let message = format!(
                "record of {} bytes exceeds journey.max_record_bytes",
                record.payload.len()
            );
            slot.refuse(record, "oversized", message);
        } else {
            slot.process(record, decoded, &self.codec, &mut store)?;
            if let Some(time) = slot.runs_ahead(source) {
                // Goes on from the next record once the other input has caught up.
                self.waiting.insert(at, (record.offset + 1, time));
            }
        }
        let rejected = slot.take_rejected();
        self.dead_letter_all(partition, rejected);
        Ok(())
    }

    /// Keeps a record of a waiting input for when it goes on.
    fn leave(&mut self, partition: i32, record: &Record<'_>) {
        self.left
            .entry((partition, record.source))
            .or_default()
            .push(LeftRecord::new(partition, record));
    }

    fn topic(&self, source: Source) -> &str {
        match source {
            Source::Touchpoints => &self.cfg.topics.touchpoints,
            Source::Answers => &self.cfg.topics.survey_responses,
            Source::Identities => &self.cfg.topics.identities,
        }
    }

    /// The sources this service reads, each with its topic.
    fn source_topics(&self) -> Vec<(Source, String)> {
        self.sources()
            .iter()
            .map(|&s| (s, self.topic(s).to_string()))
            .collect()
    }

    /// The sources this service reads.
    fn sources(&self) -> &'static [Source] {
        if self.setup.identity.is_some() {
            &Source::ALL
        } else {
            &Source::ALL[..2]
        }
    }

    /// Lets the inputs that need not wait any more (for the identity watermark, or for the
    /// other input: see [`Slot::must_wait`]) go on, first with the records they left. Their
    /// queues were not polled meanwhile, so nothing is read twice; waiting changes when
    /// records are applied, never what they count.
    fn throttle(&mut self) -> Result<()> {
        // Records applied let the other input go on, which may let this one go on again:
        // a pass per input, the rest at the next call.
        for _ in Source::ALL {
            let due: Vec<(i32, Source)> = self
                .waiting
                .iter()
                .filter(|((p, source), (first, time))| {
                    self.slots
                        .get(p)
                        .is_some_and(|slot| !slot.must_wait(*source, *first, *time))
                })
                .map(|(at, _)| *at)
                .collect();
            if due.is_empty() {
                break;
            }
            for at in due {
                self.waiting.remove(&at);
                tracing::debug!(partition = at.0, input = at.1.as_str(), "goes on");
                let left = self.left.remove(&at).unwrap_or_default();
                let records: Vec<(i32, Record<'_>)> = left.iter().map(LeftRecord::record).collect();
                self.on_records(&records)?;
            }
        }
        Ok(())
    }

    /// Every input of partition `p`.
    fn inputs(&self, p: i32) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for &source in self.sources() {
            tpl.add_partition(self.topic(source), p);
        }
        tpl
    }

    /// Learns how far each input partition goes, to decide idleness. An input read to the
    /// end that librdkafka's statistics show, and quiet, becomes idle only once the broker
    /// has confirmed where it ends: asked here, answered at a later flush.
    fn refresh_positions(&mut self, consumer: &ConsumerHandle, idle: Duration) -> Result<()> {
        let parts: Vec<i32> = self.slots.keys().copied().collect();
        for &p in &parts {
            for &source in self.sources() {
                if let Some(high) = consumer.context().high_watermark(self.topic(source), p) {
                    if let Some(slot) = self.slots.get_mut(&p) {
                        slot.set_high_watermark(source, high);
                    }
                }
            }
        }
        let confirmed = self.take_positions();
        for p in parts {
            let Some(slot) = self.slots.get_mut(&p) else {
                continue;
            };
            if slot.would_idle(idle) && !confirmed.contains(&p) {
                self.ask_where_inputs_end(p);
                continue;
            }
            let mut store = self.readback.at(p);
            slot.tick(idle, &mut store)?;
        }
        Ok(())
    }

    /// Asks where partition `p`'s inputs end, unless that is being asked already.
    fn ask_where_inputs_end(&mut self, p: i32) {
        if self.probing.contains_key(&p) {
            return;
        }
        let inputs = self.source_topics();
        let asked = inputs.len();
        let id = self.positions.ask(p, inputs);
        self.probing.insert(p, (id, asked));
    }

    /// Applies the broker's answers that came; returns the partitions whose inputs are all
    /// answered now (an answer to a question about an earlier assignment is dropped).
    fn take_positions(&mut self) -> std::collections::BTreeSet<i32> {
        let mut confirmed = std::collections::BTreeSet::new();
        let mut failed = std::collections::BTreeSet::new();
        for a in self.positions.answers() {
            let Some((id, left)) = self.probing.get_mut(&a.partition) else {
                continue;
            };
            if *id != a.id {
                continue;
            }
            *left -= 1;
            let done = *left == 0;
            if !self.apply_end(&a) {
                failed.insert(a.partition);
            }
            if done {
                self.probing.remove(&a.partition);
                if !failed.contains(&a.partition) {
                    confirmed.insert(a.partition);
                }
            }
        }
        confirmed
    }

    /// Every assigned partition read to its end (as the broker confirms) and committed.
    fn caught_up(&mut self, consumer: &ConsumerHandle) -> Result<bool> {
        if self.slots.is_empty() || !self.slots.values().all(Slot::caught_up) {
            return Ok(false);
        }
        if !self.settle(consumer)? {
            return Ok(false);
        }
        // Folds its commits made due run first (at the next flush), as they would have in a
        // run that went on.
        if !self.compactions.is_empty() {
            return Ok(false);
        }
        // Asked on the probe's own connection: the consumer's waits behind its fetches,
        // which the broker may hold for `fetch.wait.max.ms`.
        let inputs = self.source_topics();
        let questions = self.slots.keys().map(|&p| (p, inputs.clone())).collect();
        let Some(answers) = self.positions.ask_and_wait(questions, CONFIRM_END_WITHIN) else {
            tracing::warn!(
                within_ms = CONFIRM_END_WITHIN.as_millis() as u64,
                "the broker did not say in time where the inputs end; asking again"
            );
            return Ok(false);
        };
        for a in &answers {
            if !self.apply_end(a) {
                return Ok(false);
            }
        }
        Ok(self.slots.values().all(Slot::caught_up))
    }

    /// Applies the broker's word on where an input ends; false if it has none.
    fn apply_end(&mut self, a: &positions::Answer) -> bool {
        match &a.high {
            Ok(high) => {
                if let Some(slot) = self.slots.get_mut(&a.partition) {
                    slot.confirm_high_watermark(a.source, *high);
                }
                true
            }
            Err(e) => {
                self.readiness.brokers(false);
                tracing::warn!(partition = a.partition, input = a.source.as_str(), error = %e, "cannot read where an input ends; asking again");
                false
            }
        }
    }

    /// Erasures recorded since the last flush go to every journey before its batch is taken.
    fn apply_new_erasures(&mut self) -> Result<()> {
        let Some(erased) = self.erasures.refresh() else {
            return Ok(());
        };
        self.setup.erasures = erased.clone();
        let (mut held, mut let_go) = (0, 0);
        for (p, slot) in &mut self.slots {
            let mut store = self.readback.at(*p);
            let moved = slot.set_erasures(&erased, &mut store)?;
            held += moved.held;
            let_go += moved.let_go;
        }
        tracing::info!(
            erased = erased.len(),
            journeys_moved = held,
            journeys_read_back_and_moved = let_go,
            "new erasures applied"
        );
        Ok(())
    }

    /// Waits for the commits in flight, then takes every partition's batch and hands it to
    /// the committing thread (after the DLQ, and the identities topic, have what they were
    /// sent); each journey's watermark and Kafka's offsets follow once it is committed.
    /// A dead letter the DLQ refused, now or in delivery, stops it before any commit: the
    /// batches holding such records are read again after a restart.
    fn flush(&mut self, consumer: &ConsumerHandle) -> Result<()> {
        // Waiting for the broker here, the consumer is not polled, so its statistics cannot
        // say that no broker answers: the wait does.
        let readiness = self.readiness.clone();
        let not_ready = move || readiness.brokers(false);
        // Before waiting for the commits in flight: a refusal sets off a shutdown, which
        // may make them give up, and must still stop the service with its error.
        let failed = delivered(&self.dlq, &self.cfg.topics.dlq, &not_ready)?;
        if let Some(why) = self.dlq_refused.take().or(failed) {
            anyhow::bail!(
                "the dead-letter topic `{}` refused records ({why}); nothing read since the \
                 batches being committed is committed, so they are read again when the \
                 service restarts",
                self.cfg.topics.dlq
            );
        }
        if !self.settle(consumer)? {
            // Shutting down while ClickHouse is away: what was not committed is read again
            // by whoever owns the partition next.
            return Ok(());
        }
        for ((source, p), n) in std::mem::take(&mut self.consumed) {
            self.metrics
                .records_consumed
                .with_label_values(&[source.as_str(), &p.to_string()])
                .inc_by(n);
        }
        for (kind, n) in std::mem::take(&mut self.dlq_counts) {
            self.metrics
                .dlq_records
                .with_label_values(&[kind])
                .inc_by(n);
        }
        self.apply_new_erasures()?;
        let mut taken: Vec<(i32, Vec<LaneBatch>)> = Vec::new();
        for (p, slot) in &mut self.slots {
            taken.push((*p, slot.take_batches()));
        }
        if taken.iter().any(|(_, b)| !b.is_empty()) {
            let from = self.dead_letters_from();
            for b in taken.iter_mut().flat_map(|(_, b)| b.iter_mut()) {
                b.end.dead_letters_from.clone_from(&from);
                b.end.erasures_seen = self.erasures.seen();
            }
        }
        self.send_identity_messages(&taken)?;
        if let Some(out) = &self.aggregates {
            out.send_partials(&self.codec, &self.maps, &mut taken, &not_ready)?;
        }
        let after = self.after_commit_of(&taken);
        let mut compactions = std::mem::take(&mut self.compactions);
        // Only this owner's: folding a partition another instance commits races with it.
        compactions.retain(|f| self.slots.contains_key(&f.partition));
        if taken.iter().any(|(_, b)| !b.is_empty()) || !compactions.is_empty() {
            self.pipeline.submit(commits::Job {
                batches: taken,
                compactions,
            })?;
            self.after = Some(after);
        } else {
            self.after_commit(consumer, after);
        }
        for (p, slot) in &self.slots {
            for (source, lag) in slot.lag() {
                if !self.sources().contains(&source) {
                    continue;
                }
                self.metrics
                    .consumer_lag
                    .with_label_values(&[source.as_str(), &p.to_string()])
                    .set(lag);
            }
        }
        self.metrics.held_touchpoints.set(
            self.slots
                .values()
                .map(Slot::held_touchpoints)
                .sum::<usize>() as i64,
        );
        self.metrics.tracked_customers.set(
            self.slots
                .values()
                .map(Slot::tracked_customers)
                .sum::<usize>() as i64,
        );
        self.metrics.journeys_let_go.set(
            self.slots
                .values()
                .map(Slot::journeys_let_go)
                .sum::<usize>() as i64,
        );
        let read_back: u64 = self.slots.values_mut().map(Slot::take_read_back).sum();
        self.metrics.journeys_read_back.inc_by(read_back);
        self.ping_when_idle();
        Ok(())
    }

    /// Waits for the job in flight and does what follows its commits; false when it gave
    /// up (shutting down while ClickHouse refused).
    fn settle(&mut self, consumer: &ConsumerHandle) -> Result<bool> {
        let Some(outcome) = self.pipeline.wait()? else {
            return Ok(true);
        };
        let mut after = self.after.take();
        let mut handed_over = std::mem::take(&mut self.handed_over);
        let commits::Outcome::Done {
            committed,
            compacted,
            overtaken,
            unchecked,
        } = outcome
        else {
            return Ok(false);
        };
        // What this instance committed of an overtaken partition does not count from the
        // new owner's claim on: nothing follows those commits, and it resumes afresh.
        let overtaken: Vec<i32> = overtaken
            .into_iter()
            .filter(|p| !handed_over.contains(p) && self.slots.contains_key(p))
            .collect();
        handed_over.extend(overtaken.iter().copied());
        if let Some(after) = after.as_mut() {
            after
                .partitions
                .retain(|a| !handed_over.contains(&a.partition));
            after.watermarks.retain(|(p, ..)| !handed_over.contains(p));
        }
        for f in compacted {
            if handed_over.contains(&f.partition) {
                continue;
            }
            if let Some(slot) = self.slots.get_mut(&f.partition) {
                slot.compacted(f.lane, f.live_from);
            }
        }
        let every = self.cfg.journey.compact_after_batches;
        for (p, lane, batch) in committed {
            if handed_over.contains(&p) {
                continue;
            }
            let Some(slot) = self.slots.get_mut(&p) else {
                continue;
            };
            slot.committed(lane, batch);
            // This check covered the journeys that committed, not the others: it keeps the
            // partition checked at most (a check of every journey re-arms it).
            let checked = slot.is_checked() && !unchecked.contains(&p);
            slot.set_checked(checked);
            if let Some((live_from, claim)) = slot.due_for_compaction(lane, every) {
                self.compactions.push(commits::Fold {
                    lane,
                    partition: p,
                    live_from,
                    claim,
                });
            }
        }
        self.clickhouse_seen = Instant::now();
        if let Some(after) = after {
            self.after_commit(consumer, after);
        }
        for p in overtaken {
            self.park(consumer, p);
        }
        Ok(true)
    }

    /// Another owner claimed partition `p` while this instance still held it: either this
    /// instance was paused past its session and the group gave the partition away (it hears
    /// so at a poll soon), or the other one was and claimed late. The partition's work is
    /// dropped and, unless the group takes it away meanwhile, it is claimed anew after
    /// [`PARKED_FOR`] (see [`Self::reclaim_parked`]): claiming at once would only overtake
    /// the rightful owner until the rebalance arrives.
    fn park(&mut self, consumer: &ConsumerHandle, p: i32) {
        tracing::warn!(
            partition = p,
            "another owner claimed this partition; what was committed here since does not count"
        );
        self.metrics
            .rebalances
            .with_label_values(&["overtaken"])
            .inc();
        if self.pipeline.pending() {
            self.handed_over.insert(p);
        }
        self.forget(p);
        if let Err(e) = consumer.pause(&self.inputs(p)) {
            // Its records are left unread without a slot anyway.
            tracing::debug!(partition = p, error = %e, "cannot pause a parked partition");
        }
        self.parked.insert(p, Instant::now());
        self.metrics
            .assigned_partitions
            .set(self.slots.len() as i64);
    }

    /// Parks the held partitions that another owner has claimed since (see [`Self::park`]).
    /// Not knowing parks nothing, but keeps the partition's batches from being confirmed to
    /// the alerter until a check answers; every journey of every partition is asked, so an
    /// answer re-arms the confirmations.
    fn check_claims(&mut self, consumer: &ConsumerHandle) {
        let held: Vec<(usize, u16, u64)> = self
            .slots
            .iter()
            .filter_map(|(p, slot)| Some((u16::try_from(*p).ok()?, slot)))
            .flat_map(|(p, slot)| slot.claims().map(move |(lane, claim)| (lane, p, claim)))
            .collect();
        // On the consumer thread: a ClickHouse that does not answer must not stop the
        // polling for long.
        let checked = self.rt.block_on(commits::overtaken(
            &self.committers,
            &held,
            Some(CLAIMS_CHECK_TIMEOUT),
        ));
        let parts: Vec<i32> = self.slots.keys().copied().collect();
        for p in parts {
            match checked.of(p) {
                Check::Overtaken => self.park(consumer, p),
                check => {
                    if let Some(slot) = self.slots.get_mut(&p) {
                        slot.set_checked(check == Check::Highest);
                    }
                }
            }
        }
    }

    /// Claims again the parked partitions the group still gives this instance (a revoked
    /// one is no longer parked), as after an assignment: what counts is read again and
    /// reading goes on from there.
    fn reclaim_parked(&mut self, consumer: &ConsumerHandle) {
        let due: Vec<i32> = self
            .parked
            .iter()
            .filter(|(_, since)| since.elapsed() >= PARKED_FOR)
            .map(|(p, _)| *p)
            .collect();
        let assigned = consumer.assignment().ok();
        let touchpoints = self.cfg.topics.touchpoints.clone();
        for p in due {
            self.parked.remove(&p);
            let still_here = assigned
                .as_ref()
                .is_some_and(|a| a.find_partition(&touchpoints, p).is_some());
            if consumer.assignment_lost() || !still_here {
                continue;
            }
            tracing::warn!(
                partition = p,
                "still assigned here: claiming the partition again"
            );
            self.claiming.start(p);
        }
    }

    /// What is to follow the commits of the batches `taken`, as of now.
    fn after_commit_of(&mut self, taken: &[(i32, Vec<LaneBatch>)]) -> AfterCommit {
        let mut partitions = Vec::new();
        for (p, batches) in taken {
            let Some(slot) = self.slots.get(p).filter(|_| !batches.is_empty()) else {
                continue;
            };
            let next: Vec<(Source, i64)> = slot
                .next_offsets()
                .into_iter()
                .filter(|(source, _)| self.sources().contains(source))
                .collect();
            partitions.push(PartitionAfter {
                partition: *p,
                next,
                watermark: slot.watermark_ms(),
            });
        }
        AfterCommit {
            partitions,
            watermarks: self.watermarks_due(),
        }
    }

    /// Once a job's batches are committed: the watermark gauges, the watermarks and
    /// confirmations published, and Kafka's offsets.
    fn after_commit(&mut self, consumer: &ConsumerHandle, after: AfterCommit) {
        let mut offsets = TopicPartitionList::new();
        for PartitionAfter {
            partition: p,
            next,
            watermark,
        } in after.partitions
        {
            if !self.slots.contains_key(&p) {
                continue;
            }
            if let Some(wm) = watermark.filter(|w| *w > 0) {
                self.metrics
                    .watermark_seconds
                    .with_label_values(&[&p.to_string()])
                    .set(wm / 1000);
            }
            for (source, next) in next {
                let _ = offsets.add_partition_offset(
                    self.topic(source),
                    p,
                    rdkafka::Offset::Offset(next),
                );
            }
        }
        self.publish_watermarks(after.watermarks);
        if let Some(out) = self.aggregates.as_mut() {
            out.confirm(&self.codec, &mut self.slots);
        }
        if offsets.count() > 0 {
            // Kafka's offsets only mirror the ClickHouse commit log (for lag monitoring);
            // resuming reads the log, so a lost Kafka commit costs nothing.
            if let Err(e) = consumer.commit(&offsets, CommitMode::Async) {
                tracing::debug!(error = %e, "offset commit failed");
            }
        }
    }

    /// Sends each batch's identifications (to the anonymous ids' partitions) and claimed
    /// touchpoints (to the customers' partitions), and waits until the broker has them all:
    /// a batch commits only after what it sent is durable, so a crash before its marker
    /// sends them again (identifications and touchpoints are idempotent where they land).
    fn send_identity_messages(&mut self, taken: &[(i32, Vec<LaneBatch>)]) -> Result<()> {
        let Some(producer) = &self.identities else {
            return Ok(());
        };
        let topic = &self.cfg.topics.identities;
        let (mut buf, mut touchpoint) = (Vec::new(), Vec::new());
        for (p, batches) in taken {
            let Some(slot) = self.slots.get(p) else {
                continue;
            };
            for b in batches {
                let journey = slot.journey(b.lane);
                for id in &b.batch.identifications {
                    let m = IdentityMessage {
                        anonymous_id: Some(id.anonymous_id.clone()),
                        customer_id: Some(id.customer_id.clone()),
                        time: Some(id.time),
                        watermark: id.watermark,
                        // The identifying partition: where the device's touchpoints go.
                        partition: Some(*p),
                        ..message(
                            journey,
                            &self.setup.group,
                            IdentityMessageKind::Identification,
                        )
                    };
                    buf.clear();
                    self.codec.encode_identity(&m, &mut buf)?;
                    let record = BaseRecord::to(topic)
                        .key(id.anonymous_id.as_bytes())
                        .payload(&buf[..]);
                    send(producer, record).context("sending an identification")?;
                }
                for f in &b.batch.forwarded {
                    let r = &f.routed;
                    let customer = r.event.customer_id.clone().unwrap_or_default();
                    touchpoint.clear();
                    self.codec.encode_touchpoint(&r.event, &mut touchpoint)?;
                    let m = IdentityMessage {
                        customer_id: Some(customer.clone()),
                        stitched: Some(touchpoint.clone()),
                        ..message(journey, &self.setup.group, IdentityMessageKind::Stitched)
                    };
                    buf.clear();
                    self.codec.encode_identity(&m, &mut buf)?;
                    let mut record = BaseRecord::to(topic)
                        .key(customer.as_bytes())
                        .payload(&buf[..]);
                    // A pseudonym is not keyed where its customer was: the claim knows where.
                    if let Some(to) = f.partition.and_then(|to| i32::try_from(to).ok()) {
                        record = record.partition(to);
                    }
                    send(producer, record).context("sending a stitched touchpoint")?;
                }
            }
        }
        let readiness = self.readiness.clone();
        if let Some(why) = delivered(producer, topic, &move || readiness.brokers(false))? {
            anyhow::bail!(
                "the identities topic `{topic}` refused records ({why}); nothing read since the \
                 last commit was committed, so they are sent again when the service restarts"
            );
        }
        Ok(())
    }

    /// Each journey's watermark to publish once the batches taken now are committed: those
    /// that changed (and all of them every 10 s, for partitions that restarted and forgot
    /// what they heard).
    fn watermarks_due(&mut self) -> Vec<(i32, String, Published)> {
        const AGAIN_EVERY: Duration = Duration::from_secs(10);
        let Some(producer) = &self.watermarks else {
            return Vec::new();
        };
        if let Some(why) = producer.context().take_failures() {
            tracing::warn!(error = %why, "a watermark was not delivered; it is published again");
        }
        let again = self.republished.elapsed() >= AGAIN_EVERY;
        if again {
            self.republished = Instant::now();
        }
        let mut due = Vec::new();
        for (p, slot) in &mut self.slots {
            for (lane, published) in slot.watermarks_to_publish(again) {
                due.push((*p, slot.journey(lane).to_string(), published));
            }
        }
        due
    }

    /// Publishes watermarks to every partition of the identities topic. Sent after the
    /// commits, so after every identification the batches up to them sent.
    fn publish_watermarks(&self, due: Vec<(i32, String, Published)>) {
        let Some(producer) = &self.watermarks else {
            return;
        };
        let topic = &self.cfg.topics.identities;
        let mut buf = Vec::new();
        for (p, journey, published) in due {
            let m = IdentityMessage {
                watermark: published.watermark,
                partition: Some(p),
                idle: published.idle,
                ..message(&journey, &self.setup.group, IdentityMessageKind::Watermark)
            };
            buf.clear();
            if let Err(e) = self.codec.encode_identity(&m, &mut buf) {
                tracing::warn!(error = %e, "cannot encode a watermark message");
                continue;
            }
            for to in 0..self.setup.partitions {
                let to = i32::try_from(to).unwrap_or(i32::MAX);
                let record = BaseRecord::to(topic)
                    .partition(to)
                    .key(m.journey.as_bytes())
                    .payload(&buf[..]);
                if let Err(e) = send(producer, record) {
                    // Published again within seconds; nothing waits on this one.
                    tracing::warn!(partition = to, error = %e, "cannot publish a watermark");
                }
            }
        }
    }

    /// An idle service commits nothing, so ClickHouse is asked now and then whether it
    /// answers: readiness must not go stale while the inputs are quiet.
    fn ping_when_idle(&mut self) {
        const PING_EVERY: Duration = Duration::from_secs(5);
        if self.clickhouse_seen.elapsed() < PING_EVERY {
            return;
        }
        let Some(committer) = self.committers.first() else {
            return;
        };
        let up = self.rt.block_on(committer.ping());
        if let Err(e) = &up {
            tracing::warn!(error = %e, "ClickHouse does not answer");
        }
        self.readiness.clickhouse(up.is_ok());
        self.clickhouse_seen = Instant::now();
    }
}

/// What follows the commits of a flush, as of when its batches were taken.
struct AfterCommit {
    /// Each partition that committed.
    partitions: Vec<PartitionAfter>,
    /// The watermarks to publish: (partition, journey, watermark).
    watermarks: Vec<(i32, String, Published)>,
}

/// A partition whose batches a flush commits, as of when they were taken.
struct PartitionAfter {
    partition: i32,
    /// Kafka's next offset of each input.
    next: Vec<(Source, i64)>,
    watermark: Option<i64>,
}

/// Records applied together at most (see [`Inner::on_messages`]).
const POLLED_TOGETHER: u64 = 1000;

/// How long the consumer's queue is polled when the last poll brought no record: records
/// arriving in an input's queue meanwhile wait at most this long.
const IDLE_POLL: Duration = Duration::from_millis(10);

/// Closes the consumer once its input queues are gone (see `cxstream_kafka::group::close`).
fn close_consumer(consumer: ConsumerHandle) {
    match Arc::into_inner(consumer) {
        Some(consumer) => cxstream_kafka::group::close(consumer),
        // Not reached: the queues are dropped first. Else it closes (and leaves the group)
        // when the last queue holding it is dropped.
        None => tracing::warn!("an input queue outlived the consumer; it leaves the group"),
    }
}

/// A record polled while its input waits, kept to be applied when it goes on.
struct LeftRecord {
    partition: i32,
    source: Source,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    offset: i64,
    timestamp_ms: Option<i64>,
}

impl LeftRecord {
    fn new(partition: i32, r: &Record<'_>) -> Self {
        LeftRecord {
            partition,
            source: r.source,
            key: r.key.map(<[u8]>::to_vec),
            payload: r.payload.to_vec(),
            offset: r.offset,
            timestamp_ms: r.timestamp_ms,
        }
    }

    fn record(&self) -> (i32, Record<'_>) {
        let record = Record {
            source: self.source,
            key: self.key.as_deref(),
            payload: &self.payload,
            offset: self.offset,
            timestamp_ms: self.timestamp_ms,
        };
        (self.partition, record)
    }
}

/// A polled message as the partition's record of `source`.
fn record<'a>(msg: &'a BorrowedMessage<'_>, source: Source) -> Record<'a> {
    Record {
        source,
        key: msg.key(),
        payload: msg.payload().unwrap_or(&[]),
        offset: msg.offset(),
        timestamp_ms: msg.timestamp().to_millis(),
    }
}

/// An identities-topic message of `kind` with nothing else set.
/// What reads journeys let go back from ClickHouse needs (see [`ClickHouseStore`]).
struct Readback {
    rt: tokio::runtime::Handle,
    committers: Vec<Arc<BatchCommitter>>,
    shutdown: Arc<AtomicBool>,
    readiness: Arc<Readiness>,
}

impl Readback {
    fn at(&self, partition: i32) -> ClickHouseStore<'_> {
        ClickHouseStore {
            rt: &self.rt,
            committers: &self.committers,
            shutdown: &self.shutdown,
            readiness: &self.readiness,
            partition,
        }
    }
}

/// Reads journeys let go back from ClickHouse, on the consumer thread: reading waits for it,
/// as it waits for a slow commit. It asks again until ClickHouse answers, unless the service
/// is shutting down (then nothing more is applied; what was not committed is read again
/// when the partition is next claimed). Meanwhile the service is not ready: nothing is
/// applied nor committed.
struct ClickHouseStore<'a> {
    rt: &'a tokio::runtime::Handle,
    committers: &'a [Arc<BatchCommitter>],
    shutdown: &'a AtomicBool,
    readiness: &'a Readiness,
    partition: i32,
}

impl partition::JourneyStore for ClickHouseStore<'_> {
    fn load(
        &mut self,
        lane: usize,
        claim: &cxstream_core::claims::Claim,
        wanted: cxstream_clickhouse::Wanted,
    ) -> Result<Vec<(String, cxstream_clickhouse::Stored)>> {
        let committer = self
            .committers
            .get(lane)
            .with_context(|| format!("no ClickHouse writer for journey {lane}"))?;
        let p = u16::try_from(self.partition)
            .with_context(|| format!("partition {} out of range", self.partition))?;
        let mut wait = Duration::from_millis(100);
        loop {
            match self.rt.block_on(committer.load_journeys(p, claim, &wanted)) {
                Ok(rows) => {
                    self.readiness.clickhouse(true);
                    return Ok(rows);
                }
                Err(e) if self.shutdown.load(Ordering::Relaxed) => {
                    return Err(e)
                        .context("reading journeys back from ClickHouse while shutting down")
                }
                Err(e) => {
                    self.readiness.clickhouse(false);
                    tracing::warn!(partition = p, error = %e, "cannot read journeys back from ClickHouse; asking again");
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

fn message(journey: &str, group: &str, kind: IdentityMessageKind) -> IdentityMessage {
    IdentityMessage {
        journey: journey.to_string(),
        group: group.to_string(),
        kind,
        anonymous_id: None,
        customer_id: None,
        time: None,
        watermark: None,
        partition: None,
        idle: false,
        stitched: None,
    }
}

/// The partitions of the identities topic, checked to be as many as the inputs': a key's
/// partition must be the same in all three.
fn copartitioned(consumer: &ConsumerHandle, cfg: &Config) -> Result<usize> {
    let inputs = partition_count(consumer, &cfg.topics.touchpoints)?;
    let identities = partition_count(consumer, &cfg.topics.identities)?;
    if identities != inputs {
        anyhow::bail!(
            "topic `{}` has {identities} partitions and `{}` {inputs}: identity stitching needs the same number",
            cfg.topics.identities,
            cfg.topics.touchpoints
        );
    }
    Ok(inputs)
}

/// How many partitions `topic` has; an error when it does not exist.
pub(crate) fn partition_count<C: rdkafka::consumer::ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
) -> Result<usize> {
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .with_context(|| format!("reading the metadata of topic `{topic}`"))?;
    let n = md
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map_or(0, |t| t.partitions().len());
    if n == 0 {
        anyhow::bail!("topic `{topic}` does not exist; create the topics with `cxstream topics`");
    }
    Ok(n)
}

pub(crate) fn unix_now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
