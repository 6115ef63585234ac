//! Configuration: an optional YAML file, then environment overrides, then validation.
//! Every option has a documented default that works with the local stack
//! (`deploy/local/up.sh`); see README.md § Configuration.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use cxstream_kafka::{KafkaSettings, Secret};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub kafka: KafkaSettings,
    pub topics: Topics,
    pub clickhouse: ClickHouseSettings,
    pub journey: JourneySettings,
    pub identity: IdentitySettings,
    pub alerter: AlerterSettings,
    pub schemas: SchemaSettings,
    pub http: HttpSettings,
    pub log: LogSettings,
}

/// Writer schemas of records in the Confluent wire format (`00` + 4-byte schema id), which
/// Confluent's serializers write. Single-object records need none of this.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchemaSettings {
    /// The schema ids producers use and the writer schema of each, as their schema registry
    /// holds them (`GET /schemas/ids/{id}`). Default none: a Confluent-framed record is then
    /// dead-lettered as `unknown_schema_id`.
    pub confluent: Vec<ConfluentSchema>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfluentSchema {
    /// The schema id in the records' header.
    pub id: u32,
    /// What the records are: `touchpoint` or `survey_answer`.
    pub record: ConfluentRecord,
    /// The writer schema (`.avsc` JSON); it must be readable as cxstream's schema of `record`
    /// by Avro's resolution rules.
    pub file: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfluentRecord {
    Touchpoint,
    SurveyAnswer,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Topics {
    /// Touchpoint events (input). Default `cx.touchpoints`.
    pub touchpoints: String,
    /// Survey answers (input), co-partitioned with touchpoints. Default `cx.survey-responses`.
    pub survey_responses: String,
    /// Per-minute partial aggregates for the alerter. Default `cx.aggregates`.
    pub aggregates: String,
    /// Alerts. Default `cx.alerts`.
    pub alerts: String,
    /// Dead letters: original bytes plus headers naming source and reason. Default `cx.dlq`.
    pub dlq: String,
    /// Internal topic of identity stitching, co-partitioned with the inputs (read and written
    /// by journey services only). Default `cx.identities`.
    pub identities: String,
    /// Alerter instances say here that they are alive (one partition). Default
    /// `cx.alerter-members`.
    pub alerter_members: String,
    /// Customers who asked to be forgotten, by fingerprint (one partition, kept forever:
    /// a replay of the inputs reads it first). Default `cx.erasures`.
    pub erasures: String,
    /// Partitions of both input topics (and the identities topic) when `cxstream topics`
    /// creates them. Default 4.
    pub partitions: i32,
}

impl Default for Topics {
    fn default() -> Self {
        Topics {
            touchpoints: "cx.touchpoints".into(),
            survey_responses: "cx.survey-responses".into(),
            aggregates: "cx.aggregates".into(),
            alerts: "cx.alerts".into(),
            dlq: "cx.dlq".into(),
            identities: "cx.identities".into(),
            alerter_members: "cx.alerter-members".into(),
            erasures: "cx.erasures".into(),
            partitions: 4,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseSettings {
    /// HTTP endpoint. Default `http://127.0.0.1:18123` (the local stack).
    pub url: String,
    /// Database holding cxstream's tables. Default `cx`.
    pub database: String,
    /// Default `default`.
    pub user: String,
    /// Default empty. Prefer `password_file` or `CXSTREAM_CLICKHOUSE_PASSWORD`; never logged.
    pub password: Secret,
    /// File whose first line is the password (e.g. a mounted secret).
    pub password_file: Option<PathBuf>,
    /// PEM file of the CA(s) that signed the server's certificate, trusted besides the
    /// system's roots; only with an `https://` url. Default none.
    pub ca_file: Option<PathBuf>,
    /// INSERTs the journey service sends at once, which bounds its connections to the
    /// server: a flush writes each partition's tables together, up to this many at a time.
    /// Default 16.
    pub max_concurrent_inserts: usize,
    /// The cluster (a name in the servers' `remote_servers`) whose shards hold the tables:
    /// `migrate` creates each table on every shard behind a Distributed table (README §
    /// Operations, A ClickHouse cluster). Default none: one server.
    pub cluster: Option<String>,
    /// Built from `ca_file` when the configuration is read.
    #[serde(skip)]
    pub tls: Option<cxstream_clickhouse::Tls>,
    /// Built from `cluster` when the configuration is read.
    #[serde(skip)]
    pub layout: cxstream_clickhouse::cluster::Layout,
}

impl ClickHouseSettings {
    /// The TLS roots an `https://` url needs; an error names what to fix.
    fn tls_settings(&self) -> Result<Option<cxstream_clickhouse::Tls>> {
        let https = match &self.url {
            u if u.starts_with("https://") => true,
            u if u.starts_with("http://") => false,
            u => bail!("clickhouse.url `{u}` must start with http:// or https://"),
        };
        if !https {
            if let Some(f) = &self.ca_file {
                bail!(
                    "clickhouse.ca_file {} is set but clickhouse.url `{}` is not https://: \
                     use the server's https port or drop ca_file",
                    f.display(),
                    self.url
                );
            }
            return Ok(None);
        }
        Ok(Some(cxstream_clickhouse::Tls::new(
            self.ca_file.as_deref(),
        )?))
    }
}

impl Default for ClickHouseSettings {
    fn default() -> Self {
        ClickHouseSettings {
            url: "http://127.0.0.1:18123".into(),
            database: "cx".into(),
            user: "default".into(),
            password: Secret::default(),
            password_file: None,
            ca_file: None,
            max_concurrent_inserts: 16,
            cluster: None,
            tls: None,
            layout: cxstream_clickhouse::cluster::Layout::single(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JourneySettings {
    /// Journey map files, each measured as a journey of its own over the same streams (one
    /// consumer, one decode per record). Maps running together declare the same channels
    /// and segments. Default `[schemas/journeys/retail.yaml]`.
    pub maps: Vec<PathBuf>,
    /// Consumer group of the journey service. Default `cxstream-journey`.
    pub group_id: String,
    /// How often a batch is committed to ClickHouse, ms. Default 1000.
    pub flush_interval_ms: u64,
    /// Commit earlier when this many records were read since the last commit. Default 200000.
    pub max_batch_records: u64,
    /// Fold a partition's committed batches into its compacted generation once this many
    /// were committed since the last compaction, so that reads and resumes do not slow
    /// down as batches accumulate; 0 never compacts. Default 600 (10 minutes of batches
    /// at the default flush interval).
    pub compact_after_batches: u64,
    /// How old a compaction is before the rows it folded are deleted and the generations
    /// before it dropped, ms. An owner that read where it resumes before a compaction and
    /// claims the partition after it (a new owner paused in between) still finds its rows
    /// if it paused for less than this. Default 600000 (10 minutes).
    pub compaction_grace_ms: u64,
    /// How far behind the watermark (event time) an event may be dated and still be applied,
    /// ms; later ones are kept in `refused_events` as `late`. De-duplication, respondent
    /// replacement and named attribution look back this far. Default 604800000 (7 days).
    pub allowed_lateness_ms: i64,
    /// How far after its Kafka record timestamp an event may be dated, ms; later-dated ones
    /// are kept in `refused_events` as `future`. Default 3600000 (1 hour).
    pub max_future_ms: i64,
    /// An input partition read to its end and quiet for this long stops holding the
    /// watermark back, ms. Default 2000.
    pub idle_release_ms: u64,
    /// Records larger than this go to the DLQ as `oversized`. Default 1048576.
    pub max_record_bytes: usize,
    /// Whether a journey left with nothing but its floor (every event beyond the allowed
    /// lateness) is let go from memory once committed, and read back from ClickHouse when
    /// its customer comes back or its deadline comes (not with identity stitching).
    /// Default true.
    pub let_go_idle_journeys: bool,
    /// With `let_go_idle_journeys`, a journey that still has events inside the allowed
    /// lateness is let go too once committed and without an event in this much event time
    /// before the watermark (a customer between visits), ms; `null` keeps such journeys in
    /// memory. Default 3600000 (1 hour).
    pub let_go_quiet_journeys_after_ms: Option<u64>,
    /// Leave and re-join the consumer group when no partition was assigned for this long,
    /// ms; each further attempt waits twice as long, up to 8× (`--until-caught-up` takes
    /// every partition itself instead of a third). Default 20000 (twice the session
    /// timeout).
    pub join_timeout_ms: u64,
    /// Publish each batch's per-minute partial counts to `topics.aggregates`, for the
    /// alerter. Default true.
    pub publish_aggregates: bool,
}

impl JourneySettings {
    pub fn policy(&self) -> cxstream_core::EventTimePolicy {
        cxstream_core::EventTimePolicy {
            allowed_lateness_ms: self.allowed_lateness_ms,
            max_future_ms: self.max_future_ms,
        }
    }
}

impl Default for JourneySettings {
    fn default() -> Self {
        JourneySettings {
            maps: vec![PathBuf::from("schemas/journeys/retail.yaml")],
            group_id: "cxstream-journey".into(),
            flush_interval_ms: 1000,
            max_batch_records: 200_000,
            compact_after_batches: 600,
            compaction_grace_ms: 600_000,
            allowed_lateness_ms: 7 * 86_400_000,
            max_future_ms: 3_600_000,
            idle_release_ms: 2000,
            max_record_bytes: 1 << 20,
            let_go_idle_journeys: true,
            let_go_quiet_journeys_after_ms: Some(3_600_000),
            join_timeout_ms: 20_000,
            publish_aggregates: true,
        }
    }
}

/// Identity stitching (README § Identity stitching): a device's anonymous touchpoints join
/// the journey of the customer later identified on it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentitySettings {
    /// Default false: a touchpoint without a customer id is dead-lettered as
    /// `missing_customer_id`. On, the journey service also reads and writes
    /// `topics.identities`.
    pub enabled: bool,
    /// How long after an anonymous touchpoint an identification may come and still claim
    /// it, and how long it waits for one before it counts as the visitor's own journey, ms;
    /// less than `journey.allowed_lateness_ms`. Default 86400000 (1 day).
    pub window_ms: i64,
    /// How producers choose a key's partition, in librdkafka's names: cxstream sends each
    /// identification to the anonymous id's partition and each claimed touchpoint to the
    /// customer's, so it must partition keys as the producers do. `consistent_random`
    /// (default: librdkafka's, so Python, Go, .NET and Rust clients') or `murmur2_random`
    /// (Java clients').
    pub partitioner: String,
}

impl Default for IdentitySettings {
    fn default() -> Self {
        IdentitySettings {
            enabled: false,
            window_ms: 86_400_000,
            partitioner: "consistent_random".into(),
        }
    }
}

impl IdentitySettings {
    /// The core's policy, when stitching is on.
    pub fn policy(&self) -> Option<cxstream_core::identity::IdentityPolicy> {
        self.enabled
            .then_some(cxstream_core::identity::IdentityPolicy {
                window_ms: self.window_ms,
            })
    }
}

/// The alerter (README § Alerts).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlerterSettings {
    /// The consumer group of the journey services whose committed aggregates are judged
    /// (a replay under another group publishes its own). Default: `journey.group_id`.
    pub journey_group: Option<String>,
    /// Alertmanager (`http://host:port`) to post alerts to. Default none: alerts go to
    /// ClickHouse and the alerts topic only.
    pub alertmanager_url: Option<String>,
    /// Alerts go to Alertmanager only while a journey is judged up to within this of the
    /// wall clock, ms: catching up on history pages no one. Default 3600000 (1 hour).
    pub live_within_ms: i64,
    /// How often the alerter keeps a snapshot of its judgement in ClickHouse, ms of wall
    /// time (and when it stops): a restart reads the aggregates on from the latest instead
    /// of from their beginning. Default 600000 (10 minutes); `null` keeps none and reads
    /// from the beginning at every start.
    pub snapshot_every_ms: Option<u64>,
    /// Several alerters sharing the journeys.
    pub peers: AlerterPeers,
}

impl Default for AlerterSettings {
    fn default() -> Self {
        AlerterSettings {
            journey_group: None,
            alertmanager_url: None,
            live_within_ms: 3_600_000,
            snapshot_every_ms: Some(600_000),
            peers: AlerterPeers::default(),
        }
    }
}

/// Alerter instances that share the journeys through `topics.alerter_members` (README §
/// Alerts → Several alerters). `alerter --until-caught-up` always writes every journey.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlerterPeers {
    /// Share with the other alerters following the same journey group. Default true; off,
    /// this instance writes every journey's alerts whatever others do.
    pub enabled: bool,
    /// This instance's name among its peers. Default: host name and process id.
    pub instance: Option<String>,
    /// How often an instance says it is alive, ms. Default 2000.
    pub heartbeat_ms: u64,
    /// An instance not heard from for this long is gone and its journeys move, ms; a new
    /// instance writes nothing for this long after it starts. Default 10000.
    pub timeout_ms: u64,
}

impl Default for AlerterPeers {
    fn default() -> Self {
        AlerterPeers {
            enabled: true,
            instance: None,
            heartbeat_ms: 2_000,
            timeout_ms: 10_000,
        }
    }
}

/// Partitioners librdkafka knows (its `partitioner` setting).
const PARTITIONERS: [&str; 7] = [
    "random",
    "consistent",
    "consistent_random",
    "murmur2",
    "murmur2_random",
    "fnv1a",
    "fnv1a_random",
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    /// Address of `/metrics`, `/healthz`, `/readyz`. Default `127.0.0.1:9464`.
    pub listen: SocketAddr,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `text` (default) or `json`.
    pub format: String,
    /// tracing filter, e.g. `info` (default) or `cxstream=debug,rdkafka=warn`.
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            format: "text".into(),
            level: "info".into(),
        }
    }
}

impl Config {
    /// Loads `path` (if given), applies `CXSTREAM_*` environment overrides and validates.
    pub fn load(path: Option<&Path>) -> Result<Config> {
        let mut cfg = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading config file {}", p.display()))?;
                yaml_serde::from_str::<Config>(&text).map_err(|e| {
                    let at = e
                        .location()
                        .map(|l| format!(":{}", l.line()))
                        .unwrap_or_default();
                    anyhow::anyhow!("{}{at}: {e}", p.display())
                })?
            }
            None => Config::default(),
        };
        cfg.apply_env(|k| std::env::var(k).ok())?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<()> {
        if let Some(v) = get("CXSTREAM_KAFKA_BROKERS") {
            self.kafka.brokers = v;
        }
        if let Some(v) = get("CXSTREAM_KAFKA_SASL_PASSWORD") {
            self.kafka.sasl_password = Some(Secret(v));
        }
        if let Some(v) = get("CXSTREAM_CLICKHOUSE_URL") {
            self.clickhouse.url = v;
        }
        if let Some(v) = get("CXSTREAM_CLICKHOUSE_DATABASE") {
            self.clickhouse.database = v;
        }
        if let Some(v) = get("CXSTREAM_CLICKHOUSE_USER") {
            self.clickhouse.user = v;
        }
        if let Some(v) = get("CXSTREAM_CLICKHOUSE_PASSWORD") {
            self.clickhouse.password = Secret(v);
        }
        if let Some(v) = get("CXSTREAM_CLICKHOUSE_CLUSTER") {
            self.clickhouse.cluster = Some(v).filter(|c| !c.is_empty());
        }
        if let Some(v) = get("CXSTREAM_CLICKHOUSE_CA_FILE") {
            self.clickhouse.ca_file = Some(PathBuf::from(v)).filter(|p| !p.as_os_str().is_empty());
        }
        if get("CXSTREAM_JOURNEY_MAP").is_some() {
            // Ignoring it would quietly measure the default map instead of the one meant.
            bail!("CXSTREAM_JOURNEY_MAP is now CXSTREAM_JOURNEY_MAPS (a comma-separated list of map files)");
        }
        if let Some(v) = get("CXSTREAM_JOURNEY_MAPS") {
            self.journey.maps = v
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
                .collect();
        }
        if let Some(v) = get("CXSTREAM_IDENTITY_ENABLED") {
            self.identity.enabled = boolean("CXSTREAM_IDENTITY_ENABLED", &v)?;
        }
        if let Some(v) = get("CXSTREAM_PUBLISH_AGGREGATES") {
            self.journey.publish_aggregates = boolean("CXSTREAM_PUBLISH_AGGREGATES", &v)?;
        }
        if let Some(v) = get("CXSTREAM_JOURNEY_GROUP_ID") {
            self.journey.group_id = v;
        }
        if let Some(v) = get("CXSTREAM_ALERTER_JOURNEY_GROUP") {
            self.alerter.journey_group = Some(v);
        }
        if let Some(v) = get("CXSTREAM_ALERTMANAGER_URL") {
            self.alerter.alertmanager_url = Some(v).filter(|v| !v.is_empty());
        }
        if let Some(v) = get("CXSTREAM_HTTP_LISTEN") {
            self.http.listen = v.parse().with_context(|| {
                format!("CXSTREAM_HTTP_LISTEN `{v}` is not host:port (e.g. 127.0.0.1:9464)")
            })?;
        }
        if let Some(v) = get("CXSTREAM_LOG_FORMAT") {
            self.log.format = v;
        }
        if let Some(v) = get("CXSTREAM_LOG_LEVEL") {
            self.log.level = v;
        }
        Ok(())
    }

    fn validate(&mut self) -> Result<()> {
        if let Some(f) = &self.kafka.sasl_password_file {
            let text = std::fs::read_to_string(f).with_context(|| {
                format!("kafka.sasl_password_file {} cannot be read", f.display())
            })?;
            self.kafka.sasl_password = Some(Secret(text.lines().next().unwrap_or("").to_string()));
        }
        self.kafka.validate().map_err(anyhow::Error::msg)?;
        if let Some(f) = &self.clickhouse.password_file {
            let text = std::fs::read_to_string(f).with_context(|| {
                format!("clickhouse.password_file {} cannot be read", f.display())
            })?;
            self.clickhouse.password = Secret(text.lines().next().unwrap_or("").to_string());
        }
        self.clickhouse.tls = self.clickhouse.tls_settings()?;
        self.clickhouse.layout = match &self.clickhouse.cluster {
            None => cxstream_clickhouse::cluster::Layout::single(),
            Some(name) => cxstream_clickhouse::cluster::Layout::on(
                cxstream_clickhouse::cluster::Cluster::new(name)?,
            ),
        };
        let db_ok = !self.clickhouse.database.is_empty()
            && self
                .clickhouse
                .database
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !db_ok {
            bail!(
                "clickhouse.database `{}` must be letters, digits and _ only",
                self.clickhouse.database
            );
        }
        if self.clickhouse.max_concurrent_inserts == 0 {
            bail!("clickhouse.max_concurrent_inserts must be at least 1");
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            bail!("log.format `{}` must be `text` or `json`", self.log.format);
        }
        if self.journey.maps.is_empty() {
            bail!("journey.maps lists no journey map; give at least one file (e.g. schemas/journeys/retail.yaml)");
        }
        if self.topics.partitions < 1 {
            bail!("topics.partitions must be at least 1");
        }
        if self.journey.flush_interval_ms == 0 || self.journey.max_batch_records == 0 {
            bail!("journey.flush_interval_ms and journey.max_batch_records must be positive");
        }
        if self.journey.allowed_lateness_ms < 0 || self.journey.max_future_ms < 0 {
            bail!("journey.allowed_lateness_ms and journey.max_future_ms must not be negative");
        }
        let peers = &self.alerter.peers;
        if peers.heartbeat_ms == 0 || peers.timeout_ms < peers.heartbeat_ms.saturating_mul(2) {
            bail!(
                "alerter.peers.timeout_ms ({}) must be at least twice alerter.peers.heartbeat_ms ({}), which must be positive",
                peers.timeout_ms,
                peers.heartbeat_ms
            );
        }
        if self.alerter.snapshot_every_ms.is_some_and(|ms| ms < 1_000) {
            bail!("alerter.snapshot_every_ms must be at least 1000 (or null for no snapshots)");
        }
        if let Some(url) = &self.alerter.alertmanager_url {
            if !url.starts_with("http://") {
                bail!("alerter.alertmanager_url `{url}` must be http://host:port (e.g. http://127.0.0.1:9093)");
            }
        }
        let id = &self.identity;
        if id.enabled && !(0 < id.window_ms && id.window_ms < self.journey.allowed_lateness_ms) {
            bail!(
                "identity.window_ms {} must be positive and less than journey.allowed_lateness_ms ({}), so that a stitched touchpoint is not late where it goes",
                id.window_ms,
                self.journey.allowed_lateness_ms
            );
        }
        if !PARTITIONERS.contains(&id.partitioner.as_str()) {
            bail!(
                "identity.partitioner `{}` is not one of {} (murmur2_random for Java producers)",
                id.partitioner,
                PARTITIONERS.join(", ")
            );
        }
        Ok(())
    }

    /// The Avro codec: cxstream's schemas, and the writer schemas of `schemas.confluent`.
    pub fn codec(&self) -> Result<cxstream_avro::Codec> {
        use cxstream_avro::{RecordType, WriterSchema};
        let mut writers = Vec::new();
        for c in &self.schemas.confluent {
            let text = std::fs::read_to_string(&c.file).with_context(|| {
                format!(
                    "schemas.confluent id {}: cannot read {}",
                    c.id,
                    c.file.display()
                )
            })?;
            let record = match c.record {
                ConfluentRecord::Touchpoint => RecordType::Touchpoint,
                ConfluentRecord::SurveyAnswer => RecordType::SurveyAnswer,
            };
            writers.push(WriterSchema {
                id: c.id,
                record,
                text,
            });
        }
        let codec = cxstream_avro::Codec::new().context("building the Avro codec")?;
        codec.with_confluent(writers).map_err(|(id, e)| {
            let file = self
                .schemas
                .confluent
                .iter()
                .find(|c| c.id == id)
                .map_or_else(String::new, |c| format!(" ({})", c.file.display()));
            anyhow::anyhow!("schemas.confluent id {id}{file}: {e}")
        })
    }

    pub fn clickhouse_connection(&self) -> cxstream_clickhouse::Connection {
        cxstream_clickhouse::Connection {
            url: self.clickhouse.url.clone(),
            database: self.clickhouse.database.clone(),
            user: self.clickhouse.user.clone(),
            password: self.clickhouse.password.0.clone(),
            tls: self.clickhouse.tls.clone(),
            layout: self.clickhouse.layout.clone(),
        }
    }
}

/// An environment variable's yes or no.
fn boolean(name: &str, v: &str) -> Result<bool> {
    match v {
        "true" | "1" | "on" => Ok(true),
        "false" | "0" | "off" => Ok(false),
        _ => bail!("{name} `{v}` must be true or false"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_secrets_are_redacted() {
        let mut c = Config::default();
        c.apply_env(|k| (k == "CXSTREAM_CLICKHOUSE_PASSWORD").then(|| "hunter2".to_string()))
            .expect("env");
        c.validate().expect("valid");
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(dbg.contains("<redacted>"));
    }

    #[test]
    fn a_sasl_password_comes_from_its_file_and_is_never_shown() {
        let file = std::env::temp_dir().join(format!("cx-sasl-{}", std::process::id()));
        std::fs::write(&file, "s3cret-sasl\n").expect("write");
        let mut c: Config = yaml_serde::from_str(&format!(
            "kafka:\n  security_protocol: sasl_ssl\n  sasl_mechanism: SCRAM-SHA-512\n  \
             sasl_username: cx\n  sasl_password_file: {}\n",
            file.display()
        ))
        .expect("parses");
        c.validate().expect("valid");
        let _ = std::fs::remove_file(&file);
        assert_eq!(c.kafka.sasl_password, Some(Secret("s3cret-sasl".into())));
        assert!(!format!("{c:?}").contains("s3cret"));
        let mut missing = Config::default();
        missing.kafka.security_protocol = "sasl_ssl".into();
        missing.kafka.sasl_username = Some("cx".into());
        let e = missing.validate().unwrap_err().to_string();
        assert!(e.contains("kafka.sasl_password_file"), "{e}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = yaml_serde::from_str::<Config>("kafka:\n  brokers: x\n  borkers: y\n").unwrap_err();
        assert!(e.to_string().contains("borkers"), "{e}");
    }

    #[test]
    fn bad_values_say_what_to_fix() {
        let mut c = Config::default();
        c.clickhouse.url = "127.0.0.1:8123".into();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("must start with http://"));
        let mut c = Config::default();
        c.clickhouse.max_concurrent_inserts = 0;
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("max_concurrent_inserts must be at least 1"),
            "{e}"
        );
        let mut c = Config::default();
        c.alerter.snapshot_every_ms = Some(10);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("alerter.snapshot_every_ms"), "{e}");
        let mut c = Config::default();
        c.apply_env(|k| (k == "CXSTREAM_HTTP_LISTEN").then(|| "nope".to_string()))
            .map(|_| ())
            .unwrap_err();
        let e = Config::default()
            .apply_env(|k| (k == "CXSTREAM_JOURNEY_MAP").then(|| "support.yaml".to_string()))
            .map(|_| ())
            .unwrap_err();
        assert!(e.to_string().contains("CXSTREAM_JOURNEY_MAPS"), "{e}");
    }

    #[test]
    fn a_clickhouse_ca_file_must_be_a_readable_pem_for_an_https_url() {
        let with = |url: &str, ca: &str| {
            let mut c = Config::default();
            c.clickhouse.url = url.into();
            c.clickhouse.ca_file = Some(PathBuf::from(ca));
            c.validate().map(|_| c.clickhouse.tls.is_some())
        };
        let e = with("http://127.0.0.1:18123", "/etc/hostname").unwrap_err();
        assert!(e.to_string().contains("is not https://"), "{e}");
        let e = with("https://127.0.0.1:18443", "/nonexistent/ca.pem").unwrap_err();
        assert!(
            e.to_string()
                .contains("clickhouse.ca_file /nonexistent/ca.pem cannot be read"),
            "{e}"
        );
        let not_pem = std::env::temp_dir().join(format!("cx-not-pem-{}", std::process::id()));
        std::fs::write(&not_pem, "not a certificate\n").expect("write");
        let e = with("https://127.0.0.1:18443", &not_pem.display().to_string()).unwrap_err();
        let _ = std::fs::remove_file(&not_pem);
        assert!(e.to_string().contains("holds no PEM certificate"), "{e}");
        let mut plain = Config::default();
        plain.clickhouse.url = "https://clickhouse.example:8443".into();
        plain.validate().expect("system roots");
        assert!(plain.clickhouse.tls.is_some());
    }

    #[test]
    fn identity_settings_are_checked() {
        let mut c = Config::default();
        c.apply_env(|k| (k == "CXSTREAM_IDENTITY_ENABLED").then(|| "true".to_string()))
            .expect("env");
        assert!(c.identity.enabled);
        c.identity.window_ms = c.journey.allowed_lateness_ms;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("identity.window_ms"), "{e}");
        let mut c = Config::default();
        c.identity.partitioner = "murmur3".into();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("murmur2_random"), "{e}");
    }

    #[test]
    fn several_maps_come_from_the_environment() {
        let mut c = Config::default();
        c.apply_env(|k| (k == "CXSTREAM_JOURNEY_MAPS").then(|| "a.yaml, b.yaml,".to_string()))
            .expect("env");
        assert_eq!(
            c.journey.maps,
            [PathBuf::from("a.yaml"), PathBuf::from("b.yaml")]
        );
    }
}
