//! One run of the broker workload: produce N numbered records over T topics × P
//! partitions while a consumer group of separate processes reads them; kill consumers
//! with SIGKILL and SIGTERM and restart the broker with its data along the way; then wait
//! until the group has committed the log end and check that every record was read
//! exactly once.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cxstream_kafka::{KafkaSettings, TopicSpec};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::ledger::{encode_payload, read_ledger, Tp};
use super::probes::{quantile, Probes};
use super::tansu::{dir_bytes, log_trouble, Broker};
use super::verify::{verify, Ends, Verdict};

pub struct RunArgs {
    pub tansu: PathBuf,
    pub storage: String,
    pub workdir: PathBuf,
    /// Where the engine keeps its data (measured for growth); None for in-memory storage.
    pub storage_dir: Option<PathBuf>,
    pub port: u16,
    pub records: u64,
    pub topics: u32,
    pub partitions: i32,
    pub consumers: usize,
    pub payload_bytes: usize,
    pub run: String,
    pub deadline: Duration,
    /// Records per second at most (0: as fast as the broker takes them). Small runs use it
    /// so that the disturbances do not all fall within the group's first join.
    pub max_rate: u64,
    /// Kill consumers and restart the broker along the way (off: a calm baseline).
    pub disturb: bool,
}

/// What the harness prints per run.
#[derive(Debug, Default)]
pub struct Report {
    pub run: String,
    pub records: u64,
    pub produce_secs: f64,
    pub catch_up_secs: f64,
    pub metadata_p50_ms: f64,
    pub metadata_p99_ms: f64,
    pub metadata_max_ms: f64,
    pub group_p99_ms: f64,
    pub topics_created: usize,
    pub storage_before: u64,
    pub storage_after: u64,
    pub broker_rss_max: u64,
    pub restart_needed_sigkill: bool,
    pub consumer_kills: usize,
    /// Times the group stalled with partitions assigned to nobody, and was given a member.
    pub stalls: Vec<String>,
    pub stopped_answering: Vec<String>,
    pub verdict: Verdict,
    pub broker_log: Vec<String>,
}

/// Produced-fraction at which each disturbance happens.
enum Disturbance {
    KillConsumer,
    TermConsumer,
    RestartBroker,
}

const SCHEDULE: [(f64, Disturbance); 6] = [
    (0.15, Disturbance::KillConsumer),
    (0.30, Disturbance::TermConsumer),
    (0.45, Disturbance::KillConsumer),
    (0.50, Disturbance::RestartBroker),
    (0.65, Disturbance::TermConsumer),
    (0.80, Disturbance::KillConsumer),
];

struct Acks {
    acked: Mutex<BTreeMap<Tp, i64>>,
    failed: Mutex<Vec<String>>,
}

struct AckCtx(Arc<Acks>);
impl ClientContext for AckCtx {}
impl ProducerContext for AckCtx {
    type DeliveryOpaque = Box<Tp>;
    fn delivery(&self, result: &DeliveryResult<'_>, tp: Self::DeliveryOpaque) {
        match result {
            Ok(_) => {
                if let Ok(mut a) = self.0.acked.lock() {
                    *a.entry(*tp).or_insert(0) += 1;
                }
            }
            Err((e, _)) => {
                if let Ok(mut f) = self.0.failed.lock() {
                    f.push(e.to_string());
                }
            }
        }
    }
}

impl Acks {
    fn total(&self) -> (i64, usize) {
        let acked = self.acked.lock().map(|a| a.values().sum()).unwrap_or(0);
        let failed = self.failed.lock().map(|f| f.len()).unwrap_or(0);
        (acked, failed)
    }
}

/// The group's members: child processes running `consume`, replaced when killed.
struct Group {
    exe: PathBuf,
    brokers: String,
    name: String,
    topics: Vec<String>,
    workdir: PathBuf,
    members: Vec<Child>,
    spawned: usize,
    ledgers: Vec<PathBuf>,
}

impl Group {
    fn spawn(&mut self) -> Result<(), String> {
        let ledger = self
            .workdir
            .join(format!("{}.ledger.{}", self.name, self.spawned));
        // librdkafka's own log (CX_HARNESS_KAFKA_DEBUG=cgrp,fetch adds its debug contexts).
        let log = std::fs::File::create(
            self.workdir
                .join(format!("{}.consumer.{}.log", self.name, self.spawned)),
        )
        .map_err(|e| format!("consumer log: {e}"))?;
        let child = Command::new(&self.exe)
            .args(["consume", "--brokers", &self.brokers, "--group", &self.name])
            .arg("--ledger")
            .arg(&ledger)
            .arg("--topics")
            .arg(self.topics.join(","))
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting a consumer: {e}"))?;
        self.members.push(child);
        self.ledgers.push(ledger);
        self.spawned += 1;
        Ok(())
    }

    /// Kills the oldest member (SIGKILL or SIGTERM) and starts a replacement.
    fn replace_oldest(&mut self, sigkill: bool) -> Result<(), String> {
        if !self.members.is_empty() {
            let mut c = self.members.remove(0);
            stop_child(&mut c, sigkill);
        }
        self.spawn()
    }

    fn stop_all(&mut self) {
        for mut c in self.members.drain(..) {
            stop_child(&mut c, false);
        }
    }
}

fn stop_child(c: &mut Child, sigkill: bool) {
    if sigkill {
        let _ = c.kill();
    } else {
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
    }
    let _ = c.wait();
}

pub fn run(args: &RunArgs) -> Result<Report, String> {
    let mut broker = Broker::new(&args.tansu, &args.storage, &args.workdir, args.port);
    broker.start()?;
    let storage_bytes = |b: &Broker| match &args.storage_dir {
        Some(d) => dir_bytes(d),
        None => b.rss_bytes(),
    };
    let mut report = Report {
        run: args.run.clone(),
        records: args.records,
        storage_before: storage_bytes(&broker),
        ..Report::default()
    };
    let settings = KafkaSettings {
        brokers: broker.address(),
        ..KafkaSettings::default()
    };
    let start = Instant::now();
    let probes = Probes::start(&settings.brokers, &args.run, start);
    let topics: Vec<String> = (0..args.topics)
        .map(|i| format!("{}.data.{i}", args.run))
        .collect();
    create_topics(&settings, &topics, args.partitions)?;
    let mut group = Group {
        exe: std::env::current_exe().map_err(|e| e.to_string())?,
        brokers: settings.brokers.clone(),
        name: format!("{}.group", args.run),
        topics: topics.clone(),
        workdir: args.workdir.clone(),
        members: Vec::new(),
        spawned: 0,
        ledgers: Vec::new(),
    };
    for _ in 0..args.consumers {
        group.spawn()?;
    }
    let acks = Arc::new(Acks {
        acked: Mutex::new(BTreeMap::new()),
        failed: Mutex::new(Vec::new()),
    });
    let deadline = start + args.deadline;
    let produced = produce(
        args,
        &settings,
        &topics,
        &acks,
        &mut broker,
        &mut group,
        &mut report,
        deadline,
    );
    report.produce_secs = start.elapsed().as_secs_f64();
    if let Err(e) = produced {
        report.stopped_answering.push(e);
    }
    let acked = acks.acked.lock().map(|a| a.clone()).unwrap_or_default();
    match wait_caught_up(
        &settings,
        &mut group,
        args.partitions,
        deadline,
        &mut report,
    ) {
        Ok((log_end, committed)) => {
            report.catch_up_secs = start.elapsed().as_secs_f64();
            group.stop_all();
            let mut ledgers = Vec::new();
            for path in &group.ledgers {
                ledgers.push(read_ledger(path).map_err(|e| format!("{}: {e}", path.display()))?);
            }
            report.verdict = verify(
                &ledgers,
                &Ends {
                    log_end,
                    committed,
                    acked,
                },
            );
        }
        Err(e) => {
            group.stop_all();
            report.stopped_answering.push(e);
        }
    }
    let stats = probes.finish();
    report.metadata_p50_ms = quantile(&stats.metadata_ms, 0.50);
    report.metadata_p99_ms = quantile(&stats.metadata_ms, 0.99);
    report.metadata_max_ms = quantile(&stats.metadata_ms, 1.0);
    report.group_p99_ms = quantile(&stats.group_ms, 0.99);
    report.topics_created = stats.topics_created + topics.len();
    // A wedged broker fails every probe: the first few and a count say it all.
    report.stopped_answering.extend(
        stats
            .failures
            .iter()
            .take(3)
            .map(|(at, what)| format!("at {at:.0} s: {what}")),
    );
    if let Some((last, _)) = stats.failures.get(3..).and_then(<[_]>::last) {
        report.stopped_answering.push(format!(
            "… {} more probe failures, the last at {last:.0} s",
            stats.failures.len() - 3
        ));
    }
    if let Ok(f) = acks.failed.lock() {
        if let Some(first) = f.first() {
            report
                .stopped_answering
                .push(format!("{} deliveries failed, first: {first}", f.len()));
        }
    }
    report.broker_rss_max = report.broker_rss_max.max(broker.rss_bytes());
    report.storage_after = storage_bytes(&broker);
    broker.stop(Duration::from_secs(30));
    report.broker_log = log_trouble(&broker.log_path(), 12);
    Ok(report)
}

fn create_topics(
    settings: &KafkaSettings,
    topics: &[String],
    partitions: i32,
) -> Result<(), String> {
    let specs: Vec<TopicSpec> = topics
        .iter()
        .map(|t| TopicSpec {
            name: t.clone(),
            partitions,
            keep_forever: false,
        })
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(cxstream_kafka::ensure_topics(settings, &specs))
        .map_err(|e| e.to_string())
}

#[allow(clippy::too_many_arguments)]
fn produce(
    args: &RunArgs,
    settings: &KafkaSettings,
    topics: &[String],
    acks: &Arc<Acks>,
    broker: &mut Broker,
    group: &mut Group,
    report: &mut Report,
    deadline: Instant,
) -> Result<(), String> {
    let producer: BaseProducer<AckCtx> = settings
        .client_config()
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "500000")
        // Long enough to ride out the broker restart; a stalled broker is caught by the deadline.
        .set("message.timeout.ms", "600000")
        .create_with_context(AckCtx(acks.clone()))
        .map_err(|e| e.to_string())?;
    let mut next_seq: BTreeMap<Tp, u64> = BTreeMap::new();
    let mut schedule = SCHEDULE.iter().filter(|_| args.disturb).peekable();
    let key_space = 1_000_003u64;
    let started = Instant::now();
    let mut watchdog = Watchdog::new(deadline);
    for i in 0..args.records {
        let tp: Tp = (
            (i % u64::from(args.topics)) as u32,
            ((i / u64::from(args.topics)) % args.partitions as u64) as i32,
        );
        let seq = next_seq.entry(tp).or_insert(0);
        let payload = encode_payload(tp, *seq, args.payload_bytes);
        *seq += 1;
        let key = format!("customer-{}", (i * 7919) % key_space);
        let mut record = BaseRecord::with_opaque_to(&topics[tp.0 as usize], Box::new(tp))
            .partition(tp.1)
            .key(key.as_bytes())
            .payload(&payload);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    record = back;
                    producer.poll(Duration::from_millis(10));
                    watchdog.check(acks, args.records)?;
                }
            }
        }
        if args.max_rate > 0 && i % 100 == 0 {
            let due = Duration::from_secs_f64(i as f64 / args.max_rate as f64);
            let ahead = due.saturating_sub(started.elapsed());
            if !ahead.is_zero() {
                producer.poll(ahead);
            }
        }
        if i % 1_000 == 0 {
            producer.poll(Duration::ZERO);
            let done = acks.total().0 as f64 / args.records as f64;
            while let Some((_, d)) = schedule.next_if(|(at, _)| done >= *at) {
                disturb(d, broker, group, report)?;
            }
        }
    }
    // Acknowledgements, and the disturbances not reached while sending.
    loop {
        producer.poll(Duration::from_millis(100));
        let (acked, failed) = acks.total();
        let done = acked as f64 / args.records as f64;
        while let Some((_, d)) = schedule.next_if(|(at, _)| done >= *at) {
            disturb(d, broker, group, report)?;
        }
        if acked + failed as i64 >= args.records as i64 {
            return Ok(());
        }
        watchdog.check(acks, args.records)?;
        report.broker_rss_max = report.broker_rss_max.max(broker.rss_bytes());
    }
}

/// Gives up on a broker that acknowledges nothing for two minutes, or at the deadline.
struct Watchdog {
    deadline: Instant,
    last: (Instant, i64),
}

impl Watchdog {
    const STALL: Duration = Duration::from_secs(120);

    fn new(deadline: Instant) -> Self {
        Watchdog {
            deadline,
            last: (Instant::now(), -1),
        }
    }

    fn check(&mut self, acks: &Acks, records: u64) -> Result<(), String> {
        let (acked, failed) = acks.total();
        let progress = acked + failed as i64;
        if progress > self.last.1 {
            self.last = (Instant::now(), progress);
        }
        if self.last.0.elapsed() > Self::STALL || Instant::now() > self.deadline {
            return Err(format!(
                "producer: {acked} of {records} acknowledged ({failed} failed), none for {:.0} s",
                self.last.0.elapsed().as_secs_f64()
            ));
        }
        Ok(())
    }
}

fn disturb(
    d: &Disturbance,
    broker: &mut Broker,
    group: &mut Group,
    report: &mut Report,
) -> Result<(), String> {
    report.broker_rss_max = report.broker_rss_max.max(broker.rss_bytes());
    match d {
        Disturbance::KillConsumer => {
            report.consumer_kills += 1;
            group.replace_oldest(true)
        }
        Disturbance::TermConsumer => {
            report.consumer_kills += 1;
            group.replace_oldest(false)
        }
        Disturbance::RestartBroker => {
            report.restart_needed_sigkill = broker.stop(Duration::from_secs(30));
            broker.start()
        }
    }
}

type Offsets = BTreeMap<Tp, i64>;

/// Waits until the group's committed offsets reach the log end of every partition.
/// Returns (log ends, committed offsets).
///
/// A group that stops progressing while partitions are behind gets one more member, which
/// forces a rebalance: Tansu 0.6.0's coordinator can leave a killed member's partitions
/// assigned to nobody while calling the group stable (fixed upstream after 0.6.0, in
/// "fix group coordinator generation_id and sync_group assignment validation"). Each such
/// rescue is counted in the report; without it the run would stall for good.
fn wait_caught_up(
    settings: &KafkaSettings,
    group: &mut Group,
    partitions: i32,
    deadline: Instant,
    report: &mut Report,
) -> Result<(Offsets, Offsets), String> {
    const RESCUE_AFTER: Duration = Duration::from_secs(45);
    const GIVE_UP_AFTER: Duration = Duration::from_secs(180);
    let client: BaseConsumer = settings
        .client_config()
        .set("group.id", &group.name)
        .create()
        .map_err(|e| e.to_string())?;
    let topics = group.topics.clone();
    let mut tpl = TopicPartitionList::new();
    for t in &topics {
        for p in 0..partitions {
            tpl.add_partition(t, p);
        }
    }
    let index: BTreeMap<&str, u32> = topics
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i as u32))
        .collect();
    let (mut last_change, mut last_sum, mut rescued_at) = (Instant::now(), -1i64, None);
    loop {
        let log_end = log_ends(&client, &topics, partitions);
        let committed: Offsets = client
            .committed_offsets(tpl.clone(), Duration::from_secs(10))
            .map(|c| {
                c.elements()
                    .iter()
                    .filter_map(|e| match e.offset() {
                        Offset::Offset(o) => Some(((*index.get(e.topic())?, e.partition()), o)),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let behind = match &log_end {
            Ok(ends) => {
                let behind: Vec<String> = ends
                    .iter()
                    .filter(|(tp, end)| committed.get(tp) != Some(end))
                    .map(|(tp, end)| {
                        format!("{tp:?}: committed {:?}, log end {end}", committed.get(tp))
                    })
                    .collect();
                if behind.is_empty() {
                    return Ok((ends.clone(), committed));
                }
                format!("{} partitions behind, e.g. {}", behind.len(), behind[0])
            }
            Err(e) => format!("log end unknown: {e}"),
        };
        let sum: i64 = committed.values().sum();
        if sum > last_sum {
            (last_change, last_sum) = (Instant::now(), sum);
        }
        let stalled = last_change.elapsed();
        if stalled > RESCUE_AFTER && rescued_at.is_none_or(|t: Instant| t.elapsed() > RESCUE_AFTER)
        {
            report.stalls.push(format!(
                "no progress for {:.0} s with {behind}; {}; added a member",
                stalled.as_secs_f64(),
                describe_group(&client, &group.name)
            ));
            group.spawn()?;
            rescued_at = Some(Instant::now());
        }
        if stalled > GIVE_UP_AFTER || Instant::now() > deadline {
            return Err(format!(
                "consumer group: committed {sum} records, no progress for {:.0} s; {behind}; {}",
                stalled.as_secs_f64(),
                describe_group(&client, &group.name)
            ));
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// The group as the coordinator describes it: state and members with assignment sizes.
fn describe_group(client: &BaseConsumer, group: &str) -> String {
    match client.fetch_group_list(Some(group), Duration::from_secs(10)) {
        Ok(list) => list
            .groups()
            .iter()
            .map(|g| {
                let members: Vec<String> = g
                    .members()
                    .iter()
                    .map(|m| {
                        format!(
                            "{} ({} assignment bytes)",
                            m.id(),
                            m.assignment().map_or(0, <[u8]>::len)
                        )
                    })
                    .collect();
                format!("group state {}, members: {}", g.state(), members.join(", "))
            })
            .collect::<Vec<_>>()
            .join("; "),
        Err(e) => format!("group not described: {e}"),
    }
}

fn log_ends(
    client: &BaseConsumer,
    topics: &[String],
    partitions: i32,
) -> Result<BTreeMap<Tp, i64>, String> {
    let mut ends = BTreeMap::new();
    for (i, t) in topics.iter().enumerate() {
        for p in 0..partitions {
            let (_, hi) = client
                .fetch_watermarks(t, p, Duration::from_secs(10))
                .map_err(|e| e.to_string())?;
            ends.insert((i as u32, p), hi);
        }
    }
    Ok(ends)
}

/// Human-readable lines and one JSON object for the run.
pub fn render(engine: &str, r: &Report) -> (String, String) {
    let per_record =
        |bytes: u64| (bytes.saturating_sub(r.storage_before)) as f64 / r.records.max(1) as f64;
    let stopped = if r.stopped_answering.is_empty() {
        "no"
    } else {
        "yes"
    };
    let text = format!(
        "{engine} {run}: {records} records; produce {prod:.0} rec/s; group caught up at {cu:.1} s ({cons:.0} rec/s); \
         metadata p50 {p50:.1} ms p99 {p99:.1} ms max {max:.0} ms; new topic+group round trip p99 {gp99:.0} ms ({topics} topics created); \
         storage {before:.1} → {after:.1} MB ({bpr:.0} B/record); broker RSS max {rss:.0} MB; \
         stopped answering: {stopped}; group stalls rescued: {stalls}; complete: {complete}; \
         processed twice: {twice}; exactly once: {eo} ({v:?})",
        run = r.run,
        records = r.records,
        prod = r.records as f64 / r.produce_secs.max(1e-9),
        cu = r.catch_up_secs,
        cons = r.records as f64 / r.catch_up_secs.max(1e-9),
        p50 = r.metadata_p50_ms,
        p99 = r.metadata_p99_ms,
        max = r.metadata_max_ms,
        gp99 = r.group_p99_ms,
        topics = r.topics_created,
        before = r.storage_before as f64 / 1e6,
        after = r.storage_after as f64 / 1e6,
        bpr = per_record(r.storage_after),
        rss = r.broker_rss_max as f64 / 1e6,
        eo = if r.verdict.exactly_once() && r.stopped_answering.is_empty() { "yes" } else { "no" },
        v = r.verdict,
        stalls = r.stalls.len(),
        complete = if r.verdict.complete() && r.stopped_answering.is_empty() { "yes" } else { "no" },
        twice = r.verdict.twice,
    );
    let json = serde_json::json!({
        "engine": engine, "run": r.run, "records": r.records,
        "produce_records_per_s": r.records as f64 / r.produce_secs.max(1e-9),
        "catch_up_s": r.catch_up_secs,
        "consume_records_per_s": r.records as f64 / r.catch_up_secs.max(1e-9),
        "metadata_p50_ms": r.metadata_p50_ms, "metadata_p99_ms": r.metadata_p99_ms,
        "metadata_max_ms": r.metadata_max_ms, "group_round_trip_p99_ms": r.group_p99_ms,
        "topics_created": r.topics_created,
        "storage_bytes_before": r.storage_before, "storage_bytes_after": r.storage_after,
        "storage_bytes_per_record": per_record(r.storage_after),
        "broker_rss_max_bytes": r.broker_rss_max,
        "broker_restart_needed_sigkill": r.restart_needed_sigkill,
        "consumer_kills": r.consumer_kills,
        "group_stalls_rescued": r.stalls.len(),
        "group_stalls": r.stalls,
        "stopped_answering": !r.stopped_answering.is_empty(),
        "stopped_answering_reasons": r.stopped_answering,
        "complete": r.verdict.complete() && r.stopped_answering.is_empty(),
        "exactly_once": r.verdict.exactly_once() && r.stopped_answering.is_empty(),
        "missing": r.verdict.missing, "twice": r.verdict.twice,
        "uncommitted_partitions": r.verdict.uncommitted_partitions,
        "wrong_records": r.verdict.wrong, "forward_jumps": r.verdict.forward_jumps,
        "log_records": r.verdict.records, "acked_records": r.verdict.acked,
        "reread_after_failure": r.verdict.reread_after_failure,
        "broker_log_trouble": r.broker_log,
    });
    (text, json.to_string())
}
