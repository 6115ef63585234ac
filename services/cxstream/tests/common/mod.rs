//! Shared harness of the integration tests: a private set of topics, a private ClickHouse
//! database and consumer group per test, against the real servers of the local stack
//! (`deploy/local/up.sh`; addresses from CX_TEST_KAFKA / CX_TEST_CLICKHOUSE).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

pub const PARTITIONS: i32 = 4;
/// The INSERTs a service of the tests sends at once: fewer than a flush's tables, so the
/// commits queue for them.
pub const CLICKHOUSE_INSERTS: usize = 4;

/// A cell: (minute, stage, touchpoint, channel, segment).
pub type Cell = (i64, String, String, String, String);
/// A step cell: (minute, step, stage, touchpoint, channel, segment).
pub type StepCell = (i64, String, String, String, String, String);

/// Rows of key fields then counts as cells: `key` takes the fields it needs and says how
/// many; a cell whose counts are all zero is none (committed deltas may sum to zero).
fn cells_of<K: Ord>(
    rows: Vec<Vec<String>>,
    key: impl Fn(&[String]) -> (K, usize),
) -> BTreeMap<K, Vec<i64>> {
    rows.into_iter()
        .map(|r| {
            let (k, n) = key(&r);
            (
                k,
                r[n..]
                    .iter()
                    .map(|v| v.parse().unwrap())
                    .collect::<Vec<i64>>(),
            )
        })
        .filter(|(_, v)| v.iter().any(|x| *x != 0))
        .collect()
}

fn cell_key(f: &[String]) -> (Cell, usize) {
    let k = (
        f[0].parse().unwrap(),
        f[1].clone(),
        f[2].clone(),
        f[3].clone(),
        f[4].clone(),
    );
    (k, 5)
}

fn step_key(f: &[String]) -> (StepCell, usize) {
    let k = (
        f[0].parse().unwrap(),
        f[1].clone(),
        f[2].clone(),
        f[3].clone(),
        f[4].clone(),
        f[5].clone(),
    );
    (k, 6)
}

/// A ground-truth CSV's rows (after its header), split into fields.
fn csv_rows(path: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect()
}

pub struct Stack {
    /// Names the topics.
    pub name: String,
    /// Names the database and consumer group (`name` unless this is a replay).
    pub run: String,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub kafka: String,
    pub clickhouse: String,
    /// The ClickHouse cluster the tables are sharded over (`None`: one server).
    pub cluster: Option<String>,
    /// The journey map files the services run with.
    pub maps: Vec<PathBuf>,
    /// Their journey names, in the same order.
    pub journeys: Vec<String>,
}

/// One raw record read back from a topic.
pub struct Raw {
    pub partition: i32,
    pub offset: i64,
    /// The record's timestamp (epoch ms).
    pub timestamp_ms: Option<i64>,
    pub payload: Vec<u8>,
    pub headers: BTreeMap<String, String>,
}

impl Stack {
    /// A fresh, isolated pipeline: unique topics, database and group.
    pub fn new(test: &str) -> Stack {
        Stack::with_maps(test, vec![shipped_map("retail")])
    }

    /// A fresh pipeline whose services run with the journey map `yaml`.
    pub fn with_map_text(test: &str, yaml: &str) -> Stack {
        Stack::with_maps(test, vec![map_file(test, yaml)])
    }

    /// A fresh pipeline whose journey service measures all of `maps` at once.
    pub fn with_maps(test: &str, maps: Vec<PathBuf>) -> Stack {
        Stack::create(test, maps, None)
    }

    /// As [`Self::with_maps`], with the tables sharded over the local two-shard cluster
    /// (`deploy/local/cluster.sh`; CX_TEST_CLUSTER_URL, CX_TEST_CLUSTER_NAME).
    pub fn on_cluster(test: &str, maps: Vec<PathBuf>) -> Stack {
        let name = std::env::var("CX_TEST_CLUSTER_NAME").unwrap_or_else(|_| "cx_two_shards".into());
        Stack::create(test, maps, Some(name))
    }

    fn create(test: &str, maps: Vec<PathBuf>, cluster: Option<String>) -> Stack {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let name = format!("{test}_{}", nanos % 1_000_000_000_000);
        let s = Stack::with_run(&name, &name, maps, cluster);
        s.broker_serves();
        s.ok(&["topics"]);
        s.ok(&["migrate"]);
        s
    }

    /// The same topics read into an empty database by a new consumer group from the
    /// earliest offsets: a real replay.
    pub fn replay(&self) -> Stack {
        let s = Stack::with_run(
            &self.name,
            &format!("{}_replay", self.run),
            self.maps.clone(),
            self.cluster.clone(),
        );
        s.ok(&["migrate"]);
        s
    }

    fn with_run(name: &str, run: &str, maps: Vec<PathBuf>, cluster: Option<String>) -> Stack {
        let (name, run) = (name.to_string(), run.to_string());
        let dir = std::env::temp_dir().join(format!("cxstream-test-{run}"));
        std::fs::create_dir_all(&dir).unwrap();
        let kafka = std::env::var("CX_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:19092".into());
        let clickhouse = match cluster {
            None => std::env::var("CX_TEST_CLICKHOUSE")
                .unwrap_or_else(|_| "http://127.0.0.1:18123".into()),
            Some(_) => std::env::var("CX_TEST_CLUSTER_URL")
                .unwrap_or_else(|_| "http://127.0.0.1:28121".into()),
        };
        let cluster_line = cluster
            .as_ref()
            .map(|c| format!("  cluster: {c}\n"))
            .unwrap_or_default();
        let config = dir.join("cxstream.yaml");
        // CX_TEST_KAFKA_DEBUG=cgrp,fetch turns on librdkafka's debug log in the services.
        let debug = std::env::var("CX_TEST_KAFKA_DEBUG")
            .map(|d| format!("  properties: {{debug: \"{d}\"}}\n"))
            .unwrap_or_default();
        let map_list = maps
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let journeys = maps
            .iter()
            .map(|p| {
                let text = std::fs::read_to_string(p).unwrap();
                cxstream_core::JourneyMap::from_yaml(&p.display().to_string(), &text)
                    .unwrap()
                    .name
            })
            .collect();
        std::fs::write(
            &config,
            format!(
                "kafka:\n  brokers: {kafka}\n{debug}\
                 topics:\n  touchpoints: t.{name}.touchpoints\n  survey_responses: t.{name}.answers\n  \
                 aggregates: t.{name}.aggregates\n  alerts: t.{name}.alerts\n  dlq: t.{name}.dlq\n  identities: t.{name}.identities\n  alerter_members: t.{name}.members\n  erasures: t.{name}.erasures\n  partitions: {PARTITIONS}\n\
                 clickhouse:\n  url: {clickhouse}\n  database: t_{run}\n  max_concurrent_inserts: {CLICKHOUSE_INSERTS}\n{cluster_line}\
                 journey:\n  maps: [{map_list}]\n  group_id: g.{run}\n  flush_interval_ms: 200\n  max_batch_records: 5000\n  compact_after_batches: 4\n  compaction_grace_ms: 0\n  idle_release_ms: 500\n  join_timeout_ms: 12000\n  publish_aggregates: true\n\
                 http:\n  listen: 127.0.0.1:0\nlog:\n  level: warn\n"
            ),
        )
        .unwrap();
        Stack {
            name,
            run,
            dir,
            config,
            kafka,
            clickhouse,
            cluster,
            maps,
            journeys,
        }
    }

    /// The same pipeline on another broker (its topics created there).
    pub fn on_broker(self, kafka: &str) -> Stack {
        self.on_broker_with(kafka, "")
    }

    /// As [`Self::on_broker`], with more `kafka:` settings (YAML lines indented two spaces).
    pub fn on_broker_with(mut self, kafka: &str, settings: &str) -> Stack {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let text = text.replacen(
            &format!("brokers: {}\n", self.kafka),
            &format!("brokers: {kafka}\n{settings}"),
            1,
        );
        std::fs::write(&self.config, text).unwrap();
        self.kafka = kafka.to_string();
        self.ok(&["topics"]);
        self
    }

    /// Sets `journey:` settings (YAML lines `  key: value`), replacing the harness's own.
    pub fn set_journey(&self, lines: &str) {
        let key = |l: &str| l.split(':').next().unwrap_or("").to_string();
        let keys: Vec<String> = lines.lines().map(key).collect();
        let mut out = String::new();
        let mut in_journey = false;
        for l in std::fs::read_to_string(&self.config).unwrap().lines() {
            if !l.starts_with("  ") {
                in_journey = l == "journey:";
            }
            if !(in_journey && keys.contains(&key(l))) {
                out.push_str(l);
                out.push('\n');
            }
            if l == "journey:" {
                out.push_str(lines);
            }
        }
        std::fs::write(&self.config, out).unwrap();
    }

    /// Adds top-level sections to the services' configuration file.
    pub fn append_config(&self, yaml: &str) {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.config)
            .unwrap();
        f.write_all(yaml.as_bytes()).unwrap();
    }

    pub fn database(&self) -> String {
        format!("t_{}", self.run)
    }

    pub fn topic(&self, kind: &str) -> String {
        format!("t.{}.{kind}", self.name)
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cxstream"));
        c.arg("--config").arg(&self.config).args(args);
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("cxstream runs")
    }

    pub fn ok(&self, args: &[&str]) -> Output {
        let out = self.run(args);
        // Shown by the test harness when the test fails.
        eprintln!(
            "cxstream {args:?}:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "cxstream {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.diagnose()
        );
        out
    }

    /// Once per test binary: the broker and ClickHouse really serve (a metadata request, a
    /// consumer-group round trip, a query). A wedged server fails here, named as such,
    /// instead of every test timing out on its own.
    fn broker_serves(&self) {
        static VERDICT: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
        let verdict = VERDICT.get_or_init(|| self.probe(Duration::from_secs(20)));
        if let Err(e) = verdict {
            panic!("the local stack does not serve: {e}");
        }
    }

    fn probe(&self, timeout: Duration) -> Result<(), String> {
        let ms = timeout.as_millis().to_string();
        let out = self.run(&[
            "probe",
            "--topic",
            "cxstream.probe",
            "--create-topic",
            "--timeout-ms",
            &ms,
        ]);
        if out.status.success() {
            return Ok(());
        }
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stderr).trim(),
            broker_log_trouble()
        ))
    }

    /// After a failed command: was it the servers? (The probe says, with the broker's log.)
    pub fn diagnose(&self) -> String {
        match self.probe(Duration::from_secs(5)) {
            Ok(()) => "(the broker and ClickHouse serve: the failure is not theirs)".into(),
            Err(e) => format!("the local stack does not serve: {e}"),
        }
    }

    /// `journey --until-caught-up`, failing (not hanging) if it has not caught up in 5
    /// minutes.
    pub fn catch_up_within_minutes(&self) {
        let mut child = self.spawn(&["journey", "--until-caught-up"]);
        let status = exit_within(
            &mut child,
            Duration::from_secs(300),
            "journey --until-caught-up did not catch up within 5 minutes",
        );
        assert!(status.success(), "journey --until-caught-up: {status:?}");
    }

    pub fn spawn(&self, args: &[&str]) -> Child {
        self.command(args).spawn().expect("cxstream starts")
    }

    pub fn truth_path(&self) -> PathBuf {
        self.dir.join("ground-truth.csv")
    }

    /// Where the simulator wrote the ground truth of `journey` (`steps`: its step truth).
    fn truth_path_of(&self, journey: &str, steps: bool) -> PathBuf {
        let first = self.journeys.first().is_some_and(|j| j == journey);
        let stem = if first {
            String::new()
        } else {
            format!("journey-{journey}.")
        };
        let tail = if steps { "steps.csv" } else { "csv" };
        self.truth_path().with_extension(format!("{stem}{tail}"))
    }

    pub fn simulate(&self, customers: u64, days: f64, bad: u64) {
        self.simulate_scenario(customers, days, bad, "punctual");
    }

    pub fn simulate_scenario(&self, customers: u64, days: f64, bad: u64, scenario: &str) {
        let truth = self.truth_path();
        self.ok(&[
            "simulate",
            "--customers",
            &customers.to_string(),
            "--days",
            &days.to_string(),
            "--bad-records",
            &bad.to_string(),
            "--scenario",
            scenario,
            "--ground-truth",
            truth.to_str().unwrap(),
        ]);
    }

    /// Events the simulation expects refused, by reason (from the simulator's side file).
    pub fn expected_refused(&self) -> BTreeMap<String, i64> {
        let path = self.truth_path().with_extension("refused.csv");
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(','))
            .map(|(r, n)| (r.to_string(), n.parse().unwrap()))
            .collect()
    }

    /// Produces touchpoints to the touchpoints topic, keyed by customer id.
    pub fn produce_touchpoints(&self, events: &[cxstream_core::TouchpointEvent]) {
        let codec = cxstream_avro::Codec::new().unwrap();
        let records: Vec<(Vec<u8>, Vec<u8>)> = events
            .iter()
            .map(|e| {
                let mut buf = Vec::new();
                codec.encode_touchpoint(e, &mut buf).unwrap();
                (e.customer_id.clone().unwrap_or_default().into_bytes(), buf)
            })
            .collect();
        self.produce(&self.topic("touchpoints"), &records);
    }

    /// Produces touchpoints keyed as producers key them: by customer id, or by anonymous id
    /// when there is none; to the given partition when one is given (else the producer's
    /// partitioner, librdkafka's default, picks).
    pub fn produce_touchpoints_keyed(
        &self,
        events: &[(cxstream_core::TouchpointEvent, Option<i32>)],
    ) {
        use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
        let codec = cxstream_avro::Codec::new().unwrap();
        let producer: ThreadedProducer<rdkafka::producer::DefaultProducerContext> =
            ClientConfig::new()
                .set("bootstrap.servers", &self.kafka)
                .create()
                .unwrap();
        let topic = self.topic("touchpoints");
        for (e, partition) in events {
            let mut buf = Vec::new();
            codec.encode_touchpoint(e, &mut buf).unwrap();
            let key = e
                .customer_id
                .clone()
                .or(e.anonymous_id.clone())
                .unwrap_or_default();
            let mut record = BaseRecord::to(&topic).key(key.as_bytes()).payload(&buf);
            if let Some(p) = partition {
                record = record.partition(*p);
            }
            producer.send(record).map_err(|(e, _)| e).unwrap();
        }
        producer.flush(Duration::from_secs(30)).unwrap();
    }

    /// Produces `payload` as it is to `topic`.
    pub fn produce_raw(&self, topic: &str, key: &[u8], payload: &[u8]) {
        self.produce(topic, &[(key.to_vec(), payload.to_vec())]);
    }

    /// Produces (key, payload) records to `topic` and waits for the broker to have them.
    fn produce(&self, topic: &str, records: &[(Vec<u8>, Vec<u8>)]) {
        use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
        let producer: ThreadedProducer<rdkafka::producer::DefaultProducerContext> =
            ClientConfig::new()
                .set("bootstrap.servers", &self.kafka)
                // Poison of several megabytes, as a producer with a raised limit sends it.
                .set("message.max.bytes", "8000000")
                .create()
                .unwrap();
        for (key, payload) in records {
            producer
                .send(BaseRecord::to(topic).key(key).payload(payload))
                .map_err(|(e, _)| e)
                .unwrap();
        }
        producer.flush(Duration::from_secs(30)).unwrap();
    }

    /// Refused events in ClickHouse, by reason.
    pub fn refused(&self) -> BTreeMap<String, i64> {
        self.counts(&format!(
            "SELECT reason, toInt64(count()) FROM (SELECT * FROM {}.refused_events FINAL) GROUP BY reason",
            self.database()
        ))
    }

    /// The (name, number) rows of `sql`.
    pub fn counts(&self, sql: &str) -> BTreeMap<String, i64> {
        self.query(sql)
            .into_iter()
            .map(|r| (r[0].clone(), r[1].parse().unwrap()))
            .collect()
    }

    /// Runs an SQL query over HTTP and returns TabSeparated rows.
    pub fn query(&self, sql: &str) -> Vec<Vec<String>> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut client = clickhouse::Client::default()
            .with_url(&self.clickhouse)
            .with_compression(clickhouse::Compression::None)
            .with_validation(false);
        if self.cluster.is_some() {
            // The tests' own joins of two tables read the right one whole, as a user's
            // would with GLOBAL (the views have it written in).
            client = client.with_setting("distributed_product_mode", "global");
        }
        let bytes = rt.block_on(async {
            let mut cursor = client.query(sql).fetch_bytes("TabSeparated").unwrap();
            cursor.collect().await.unwrap()
        });
        String::from_utf8(bytes.to_vec())
            .unwrap()
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| l.split('\t').map(str::to_string).collect())
            .collect()
    }

    /// Records on the input topics (touchpoints and answers).
    pub fn records_in(&self) -> i64 {
        (self
            .read_topic(&self.topic("touchpoints"), PARTITIONS)
            .len()
            + self.read_topic(&self.topic("answers"), PARTITIONS).len()) as i64
    }

    /// Input records committed by every journey (the least of them).
    pub fn committed_records(&self) -> i64 {
        self.committed_records_by_journey()
            .values()
            .copied()
            .min()
            .unwrap_or(0)
    }

    /// Waits until `total` input records are committed by `service`, which must not exit
    /// meanwhile; panics with `late` after `within`.
    pub fn wait_until_committed(
        &self,
        service: &mut Child,
        total: i64,
        within: Duration,
        late: &str,
    ) {
        let deadline = Instant::now() + within;
        while self.committed_records() < total {
            assert!(Instant::now() < deadline, "{late}");
            assert!(service.try_wait().unwrap().is_none(), "the service exited");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Input records committed (folded or live), per journey.
    pub fn committed_records_by_journey(&self) -> BTreeMap<String, i64> {
        self.counts(&format!(
            "SELECT journey, toInt64(sum(records)) FROM {}.committed_records GROUP BY journey",
            self.database()
        ))
    }

    pub fn scalar(&self, sql: &str) -> i64 {
        self.query(sql)[0][0].parse().unwrap()
    }

    /// Per-minute cells of the committed aggregates, as in the ground-truth file (of a
    /// stack with one journey map).
    pub fn cells(&self) -> BTreeMap<Cell, Vec<i64>> {
        assert_eq!(self.journeys.len(), 1, "cells_of(journey) for several maps");
        self.cells_of(&self.journeys[0])
    }

    /// One journey's committed per-minute cells.
    pub fn cells_of(&self, journey: &str) -> BTreeMap<Cell, Vec<i64>> {
        let rows = self.query(&format!(
            "SELECT toUnixTimestamp(minute) * 1000 AS m, stage, touchpoint, channel, segment, \
             sum(nps_promoters), sum(nps_passives), sum(nps_detractors), sum(csat_n), sum(csat_top2), sum(csat_sum), \
             sum(ces_n), sum(ces_agree), sum(ces_sum), sum(stage_entries), sum(touchpoints), \
             sum(stage_conversions), sum(convert_ms_sum), sum(stage_dropoffs) + sum(stage_open) \
             FROM {}.metrics_minute_committed WHERE journey = '{journey}' \
             GROUP BY m, stage, touchpoint, channel, segment",
            self.database()
        ));
        cells_of(rows, cell_key)
    }

    /// The simulator's ground truth of the first journey map.
    pub fn truth(&self) -> BTreeMap<Cell, Vec<i64>> {
        self.truth_of(&self.journeys[0])
    }

    pub fn truth_of(&self, journey: &str) -> BTreeMap<Cell, Vec<i64>> {
        cells_of(csv_rows(&self.truth_path_of(journey, false)), cell_key)
    }

    /// The simulator's step ground truth of the first journey map: (minute, step, stage,
    /// touchpoint, channel, segment) → starts, conversions, convert_ms_sum, not converted.
    pub fn step_truth(&self) -> BTreeMap<StepCell, Vec<i64>> {
        self.step_truth_of(&self.journeys[0])
    }

    pub fn step_truth_of(&self, journey: &str) -> BTreeMap<StepCell, Vec<i64>> {
        cells_of(csv_rows(&self.truth_path_of(journey, true)), step_key)
    }

    /// Committed step cells (of a stack with one journey map), as in the step ground truth
    /// (dropped off and open together).
    pub fn step_cells(&self) -> BTreeMap<StepCell, Vec<i64>> {
        assert_eq!(
            self.journeys.len(),
            1,
            "step_cells_of(journey) for several maps"
        );
        self.step_cells_of(&self.journeys[0])
    }

    pub fn step_cells_of(&self, journey: &str) -> BTreeMap<StepCell, Vec<i64>> {
        let rows = self.query(&format!(
            "SELECT toUnixTimestamp(minute) * 1000 AS m, step, stage, touchpoint, channel, segment, \
             sum(starts), sum(conversions), sum(convert_ms_sum), sum(dropoffs) + sum(open_attempts) \
             FROM {}.steps_minute_committed WHERE journey = '{journey}' \
             GROUP BY m, step, stage, touchpoint, channel, segment",
            self.database()
        ));
        cells_of(rows, step_key)
    }

    /// Per step cell, the attempts (facts) that converted within 1, 2, 5 and 10 minutes of
    /// their start.
    pub fn step_within_of(&self, journey: &str) -> BTreeMap<StepCell, Vec<i64>> {
        let rows = self.query(&format!(
            "SELECT intDiv(start_time_ms, 60000) * 60000 AS m, step, stage, touchpoint, channel, segment, \
             sum(c AND convert_ms <= 60000), sum(c AND convert_ms <= 120000), \
             sum(c AND convert_ms <= 300000), sum(c AND convert_ms <= 600000) \
             FROM (SELECT *, outcome = 'converted' AND withdrawn = 0 AS c \
                   FROM {}.step_attempts FINAL WHERE journey = '{journey}') \
             GROUP BY m, step, stage, touchpoint, channel, segment",
            self.database()
        ));
        cells_of(rows, step_key)
    }

    /// Reads a whole topic from the beginning.
    pub fn read_topic(&self, topic: &str, partitions: i32) -> Vec<Raw> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.kafka)
            .set("group.id", format!("reader-{}", self.name))
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        let mut remaining = BTreeMap::new();
        for p in 0..partitions {
            let (lo, hi) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap();
            if hi > lo {
                tpl.add_partition_offset(topic, p, Offset::Beginning)
                    .unwrap();
                remaining.insert(p, hi);
            }
        }
        let mut out = Vec::new();
        if remaining.is_empty() {
            return out;
        }
        consumer.assign(&tpl).unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        while !remaining.is_empty() {
            assert!(Instant::now() < deadline, "timed out reading {topic}");
            let Some(m) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let m = m.unwrap();
            let mut headers = BTreeMap::new();
            if let Some(h) = m.headers() {
                for i in 0..h.count() {
                    let hd = h.get(i);
                    headers.insert(
                        hd.key.to_string(),
                        String::from_utf8_lossy(hd.value.unwrap_or(&[])).into_owned(),
                    );
                }
            }
            out.push(Raw {
                partition: m.partition(),
                offset: m.offset(),
                timestamp_ms: m.timestamp().to_millis(),
                payload: m.payload().unwrap_or(&[]).to_vec(),
                headers,
            });
            if remaining
                .get(&m.partition())
                .is_some_and(|hi| m.offset() + 1 >= *hi)
            {
                remaining.remove(&m.partition());
            }
        }
        out
    }
}

impl Drop for Stack {
    /// A passing test leaves no database behind; a failing one keeps its data to look at.
    /// (Topics stay: deleting them is slow on Tansu and they are small.) No service of the
    /// stack outlives it: one left by a failing test went on loading the shared broker and
    /// writing into the next run's log.
    fn drop(&mut self) {
        self.kill_services();
        let _ = std::fs::remove_dir_all(&self.dir);
        if std::thread::panicking() {
            return;
        }
        let on_cluster = self
            .cluster
            .as_ref()
            .map(|c| format!(" ON CLUSTER {c}"))
            .unwrap_or_default();
        let _ = self.query(&format!(
            "DROP DATABASE IF EXISTS {}{on_cluster}",
            self.database()
        ));
    }
}

impl Stack {
    /// Kills every process still running with this stack's configuration.
    fn kill_services(&self) {
        let config = self.config.to_string_lossy().into_owned();
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return;
        };
        for entry in procs.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            if args.contains(&config.as_bytes()) {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
    }
}

/// The retail map with stage budgets of hours instead of days, so that one simulated day
/// has conversions, drop-offs and open entries.
pub fn retail_in_hours() -> String {
    const RETAIL: &str = include_str!("../../../../schemas/journeys/retail.yaml");
    let (stages, rest) = RETAIL.split_at(RETAIL.find("\nchannels:").unwrap());
    let mut stages = stages.to_string();
    for (days, hours) in [("14d", "4h"), ("7d", "6h"), ("30d", "10h"), ("60d", "12h")] {
        stages = stages.replace(&format!("budget: {days}\n"), &format!("budget: {hours}\n"));
    }
    stages + rest
}

/// A journey map shipped in `schemas/journeys/`.
/// The journey map `yaml` written to a file of its own for `test`.
pub fn map_file(test: &str, yaml: &str) -> PathBuf {
    let path =
        std::env::temp_dir().join(format!("cxstream-map-{test}-{}.yaml", std::process::id()));
    std::fs::write(&path, yaml).unwrap();
    path
}

pub fn shipped_map(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../schemas/journeys/{name}.yaml"))
}

/// The broker log's last warnings and errors (CX_TEST_BROKER_LOG, set by deploy/local/test.sh).
fn broker_log_trouble() -> String {
    let Ok(path) = std::env::var("CX_TEST_BROKER_LOG") else {
        return String::new();
    };
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("error") || l.contains("warn") || l.contains("panic")
        })
        .collect();
    let tail = &lines[lines.len().saturating_sub(10)..];
    format!("\nlast warnings and errors in {path}:\n{}", tail.join("\n"))
}

/// Asserts two cell maps are equal, printing the first differences.
pub fn assert_cells_equal<K: Ord + std::fmt::Debug>(
    expected: &BTreeMap<K, Vec<i64>>,
    actual: &BTreeMap<K, Vec<i64>>,
) {
    let diffs: Vec<_> = expected
        .keys()
        .chain(actual.keys())
        .filter(|k| expected.get(*k) != actual.get(*k))
        .take(10)
        .map(|k| {
            format!(
                "{k:?}: expected {:?}, clickhouse {:?}",
                expected.get(k),
                actual.get(k)
            )
        })
        .collect();
    assert!(
        diffs.is_empty(),
        "{} cells expected, {} in ClickHouse; first differences:\n{}",
        expected.len(),
        actual.len(),
        diffs.join("\n")
    );
    assert!(!expected.is_empty());
}

/// A line of the fault battery's scorecard (`tests/faults/scorecard.py`, to
/// `$CX_FAULTS_SCORECARD` when set): what a test found, measured before it asserts anything.
pub struct Score {
    pub test: &'static str,
    pub fault: String,
    pub records_in: i64,
    pub exact: bool,
    pub duplicates: i64,
    pub lost: i64,
    pub recovery: Duration,
}

impl Score {
    pub fn write(&self) {
        let Ok(path) = std::env::var("CX_FAULTS_SCORECARD") else {
            return;
        };
        use std::io::Write as _;
        let line = format!(
            "{{\"test\":\"{}\",\"fault\":\"{}\",\"records_in\":{},\"exact\":{},\"duplicates\":{},\"lost\":{},\"recovery_s\":{:.1}}}\n",
            self.test,
            self.fault.replace('"', "'"),
            self.records_in,
            self.exact,
            self.duplicates,
            self.lost,
            self.recovery.as_secs_f64()
        );
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(line.as_bytes()).unwrap();
    }
}

/// Starts a service at `info` level; returns it and the address its HTTP endpoints listen
/// on (read from its log). Its warnings and errors are shown with the test's output.
pub fn spawn_listening(mut command: Command) -> (Child, String) {
    use std::io::BufRead;
    let mut child = command
        .env("CXSTREAM_LOG_LEVEL", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if let Some(addr) = line.split("addr=").nth(1) {
                let _ = tx.send(addr.split_whitespace().next().unwrap_or("").to_string());
            }
            // Shown when the test fails: why the service complained or stopped.
            if line.contains(" WARN ") || line.contains(" ERROR ") || line.starts_with("cxstream:")
            {
                eprintln!("service: {line}");
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the service says where it listens");
    (child, addr)
}

/// The service's whole answer to `GET path` (status line, headers, body); empty when it
/// cannot be reached.
pub fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut c) = std::net::TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = write!(
        c,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let mut out = String::new();
    let _ = c.read_to_string(&mut out);
    out
}

/// Stops a service as a service manager does (SIGTERM); it must exit 0.
pub fn stop_with_sigterm(service: &mut Child) {
    let sent = Command::new("kill")
        .args(["-TERM", &service.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success(), "kill -TERM {}", service.id());
    assert!(service.wait().unwrap().success(), "SIGTERM exit");
}

/// A Tansu of the test's own, on a free port, storing in a database of its own in the local
/// stack's PostgreSQL (`TANSU_BIN`, `CX_POSTGRES_PORT`: deploy/local/env.sh), so that it
/// can be stopped and started again with its data while other tests use the shared broker.
pub struct PrivateBroker {
    /// Where clients reach it (its advertised listener).
    pub addr: String,
    /// Where it listens.
    pub listen: String,
    storage: String,
    /// (PostgreSQL port, database) of its storage, dropped when the test ends.
    database: (String, String),
    log: std::path::PathBuf,
    child: Option<std::process::Child>,
}

impl PrivateBroker {
    pub fn start(name: &str, dir: &std::path::Path) -> PrivateBroker {
        Self::advertising(name, dir, None)
    }

    /// Listening on a free port, advertising `advertised` (a TLS proxy in front of it, say)
    /// when given.
    pub fn advertising(
        name: &str,
        dir: &std::path::Path,
        advertised: Option<&str>,
    ) -> PrivateBroker {
        let pg_port = std::env::var("CX_POSTGRES_PORT").unwrap_or_else(|_| "15432".into());
        let db = format!("tansu_{name}");
        let psql = |database: &str, args: &[&str]| {
            let out = std::process::Command::new("psql")
                .args(["-h", "127.0.0.1", "-p", &pg_port, "-U", "postgres", "-v"])
                .args(["ON_ERROR_STOP=1", "-qAt", "-d", database])
                .args(args)
                .output()
                .expect("psql (deploy/local/install.sh installs it)");
            assert!(
                out.status.success(),
                "psql {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        psql("postgres", &["-c", &format!("create database {db}")]);
        let schema = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../deploy/local/tansu/postgres-schema.sql"
        );
        psql(&db, &["-f", schema]);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let listen = format!("127.0.0.1:{port}");
        let mut b = PrivateBroker {
            addr: advertised.map_or_else(|| listen.clone(), str::to_string),
            listen,
            storage: format!("postgres://postgres@127.0.0.1:{pg_port}/{db}"),
            database: (pg_port.clone(), db.clone()),
            log: dir.join("private-broker.log"),
            child: None,
        };
        b.up();
        b
    }

    pub fn up(&mut self) {
        let bin = std::env::var("TANSU_BIN")
            .expect("TANSU_BIN names the broker binary (source deploy/local/env.sh)");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let (listen, advertised) = (
            format!("tcp://{}", self.listen),
            format!("tcp://{}", self.addr),
        );
        self.child = Some(
            std::process::Command::new(bin)
                .args(["broker", "--storage-engine", &self.storage])
                .args(["--listener-url", &listen])
                .args(["--advertised-listener-url", &advertised])
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
        // Its first start creates its tables in PostgreSQL: once, under the full suite's
        // load, that took longer than 30 s.
        let deadline = Instant::now() + Duration::from_secs(90);
        // Asked where it listens: metadata answers name the advertised address, but a
        // metadata request is answered either way.
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.listen)
            .create()
            .unwrap();
        while consumer
            .fetch_metadata(None, Duration::from_secs(2))
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "the private broker does not serve; its log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGTERM, as a service manager stops it; its data stays.
    pub fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    c.kill().unwrap();
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.down();
        let (port, db) = &self.database;
        let _ = std::process::Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                port,
                "-U",
                "postgres",
                "-qAt",
                "-d",
                "postgres",
            ])
            .args(["-c", &format!("drop database if exists {db}")])
            .output();
    }
}

/// Cells per journey, as in the ground truth files.
pub type JourneyCells<K> = BTreeMap<String, BTreeMap<K, Vec<i64>>>;

/// The per-minute and step cells a reader of the aggregates topic has, by the README's
/// protocol as the core's `BatchLog` implements it (the alerter's reader): only batches a
/// committed record of the stack's group confirms, each once, every one of them whole.
pub fn committed_aggregates(
    s: &Stack,
) -> (
    JourneyCells<Cell>,
    JourneyCells<StepCell>,
    JourneyCells<StepCell>,
) {
    use cxstream_avro::{AggregatesKind, MinuteCell};
    use cxstream_core::batch_log::{BatchLog, Confirmed, Partial};
    use cxstream_core::claims::Link;
    let codec = cxstream_avro::Codec::new().unwrap();
    let group = format!("g.{}", s.run);
    let mut raw = s.read_topic(&s.topic("aggregates"), PARTITIONS);
    raw.sort_by_key(|r| (r.partition, r.offset));
    type Cells = (Vec<MinuteCell>, Vec<cxstream_avro::StepCell>);
    let mut logs: BTreeMap<String, BatchLog<Cells>> = BTreeMap::new();
    let (mut minutes, mut steps, mut within) = (
        JourneyCells::new(),
        JourneyCells::new(),
        JourneyCells::new(),
    );
    for r in raw {
        let m = codec.decode_aggregates(&r.payload).unwrap();
        if m.group != group {
            continue;
        }
        let log = logs.entry(m.journey.clone()).or_default();
        let partition = m.partition as u32;
        match m.kind {
            AggregatesKind::Partial => log.on_partial(
                partition,
                Partial {
                    seq: m.seq as u64,
                    claim: m.claim as u64,
                    batch_id: m.batch_id as u64,
                    chunk: m.chunk as u32,
                    chunks: m.chunks as u32,
                    cells: vec![(m.minutes, m.steps)],
                },
            ),
            AggregatesKind::Committed => {
                let (released, errors) = log.on_confirmed(
                    partition,
                    Confirmed {
                        seq: m.seq as u64,
                        batch_id: m.batch_id as u64,
                        watermark: m.watermark,
                        touchpoints_watermark: m.touchpoints_watermark,
                        idle: m.idle,
                        partitions: m.partitions as u32,
                        chain: m.chain.iter().map(Link::from).collect(),
                    },
                );
                assert!(errors.is_empty(), "{}/{partition}: {errors:?}", m.journey);
                for (mins, stps) in released.into_iter().flat_map(|b| b.cells) {
                    for c in mins {
                        let key = (c.minute, c.stage, c.touchpoint, c.channel, c.segment);
                        let n = &c.counts;
                        let v = [
                            n.nps_promoters,
                            n.nps_passives,
                            n.nps_detractors,
                            n.csat_n,
                            n.csat_top2,
                            n.csat_sum,
                            n.ces_n,
                            n.ces_agree,
                            n.ces_sum,
                            n.stage_entries,
                            n.touchpoints,
                            n.stage_conversions,
                            n.convert_ms_sum,
                            n.stage_dropoffs + n.stage_open,
                        ];
                        add(minutes.entry(m.journey.clone()).or_default(), key, &v);
                    }
                    for c in stps {
                        let key = (
                            c.minute,
                            c.step,
                            c.stage,
                            c.touchpoint,
                            c.channel,
                            c.segment,
                        );
                        let n = &c.counts;
                        let v = [
                            n.starts,
                            n.conversions,
                            n.convert_ms_sum,
                            n.dropoffs + n.open,
                        ];
                        add(steps.entry(m.journey.clone()).or_default(), key.clone(), &v);
                        add(
                            within.entry(m.journey.clone()).or_default(),
                            key,
                            &n.within(),
                        );
                    }
                }
            }
        }
    }
    // Every partition named its last batch, with the watermark it committed.
    for (journey, log) in &logs {
        assert!(
            log.known_until().is_some(),
            "{journey}: a partition never said"
        );
    }
    for cells in minutes.values_mut() {
        cells.retain(|_, v| v.iter().any(|x| *x != 0));
    }
    for cells in steps.values_mut().chain(within.values_mut()) {
        cells.retain(|_, v| v.iter().any(|x| *x != 0));
    }
    (minutes, steps, within)
}

fn add<K: Ord>(cells: &mut BTreeMap<K, Vec<i64>>, key: K, v: &[i64]) {
    let sum = cells.entry(key).or_insert_with(|| vec![0; v.len()]);
    for (s, x) in sum.iter_mut().zip(v) {
        *s += x;
    }
}

/// The child's exit status; a child that has not exited in `limit` is killed and the test
/// fails with `late` (a service that waits for something that never comes would otherwise
/// hang the suite).
pub fn exit_within(child: &mut Child, limit: Duration, late: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("{late}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
