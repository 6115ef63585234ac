//! Kafka adapter: librdkafka client configuration (incl. SASL/SSL), idempotent topic
//! creation, and the dead-letter record format. Nothing here depends on the broker being
//! Tansu; a real Kafka cluster works unchanged.

pub mod group;
pub mod probe;

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::types::RDKafkaErrorCode;
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kafka: {context}: {source}")]
    Kafka {
        context: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("kafka: creating topic {topic}: {message}")]
    CreateTopic { topic: String, message: String },
    #[error("kafka: timed out {context}")]
    Timeout { context: String },
}

/// A string that never shows in `Debug` output or logs.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "\"\""
        } else {
            "<redacted>"
        })
    }
}

/// How to reach the brokers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSettings {
    /// Bootstrap servers, comma separated. Default `127.0.0.1:19092` (the local stack).
    pub brokers: String,
    /// `plaintext` (default), `ssl`, `sasl_plaintext` or `sasl_ssl`.
    pub security_protocol: String,
    /// SASL mechanism when SASL is used: `PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`.
    pub sasl_mechanism: Option<String>,
    pub sasl_username: Option<String>,
    /// Also from `CXSTREAM_KAFKA_SASL_PASSWORD` or `sasl_password_file`; never logged.
    pub sasl_password: Option<Secret>,
    /// A file whose first line is the SASL password (a mounted secret).
    pub sasl_password_file: Option<std::path::PathBuf>,
    /// CA bundle for `ssl` / `sasl_ssl`.
    pub ssl_ca_location: Option<String>,
    /// Extra librdkafka properties, applied last (e.g. `fetch.max.bytes`).
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        KafkaSettings {
            brokers: "127.0.0.1:19092".into(),
            security_protocol: "plaintext".into(),
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password: None,
            sasl_password_file: None,
            ssl_ca_location: None,
            properties: BTreeMap::new(),
        }
    }
}

impl KafkaSettings {
    pub fn validate(&self) -> Result<(), String> {
        const PROTOCOLS: [&str; 4] = ["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"];
        if self.brokers.trim().is_empty() {
            return Err("kafka.brokers is empty; set it to host:port[,host:port]".into());
        }
        if !PROTOCOLS.contains(&self.security_protocol.as_str()) {
            return Err(format!(
                "kafka.security_protocol `{}` is not one of {}",
                self.security_protocol,
                PROTOCOLS.join(", ")
            ));
        }
        if self.security_protocol.starts_with("sasl")
            && (self.sasl_username.is_none() || self.sasl_password.is_none())
        {
            return Err("kafka.security_protocol uses SASL: set kafka.sasl_username and the password (kafka.sasl_password_file or CXSTREAM_KAFKA_SASL_PASSWORD)".into());
        }
        Ok(())
    }

    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        c.set("security.protocol", &self.security_protocol);
        if let Some(m) = &self.sasl_mechanism {
            c.set("sasl.mechanism", m);
        }
        if let Some(u) = &self.sasl_username {
            c.set("sasl.username", u);
        }
        if let Some(p) = &self.sasl_password {
            c.set("sasl.password", &p.0);
        }
        if let Some(ca) = &self.ssl_ca_location {
            c.set("ssl.ca.location", ca);
        }
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }

    /// Consumer tuned for catching up fast: large fetches, no fetch-queue back-off, offsets
    /// committed by us only after the batch they cover is durable.
    pub fn consumer_config(&self, group_id: &str) -> ClientConfig {
        let mut c = self.client_config();
        c.set("group.id", group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "true")
            .set("fetch.queue.backoff.ms", "0")
            .set("queued.min.messages", "200000")
            .set("fetch.wait.max.ms", "100")
            .set("partition.assignment.strategy", "range")
            // A killed instance's partitions move on after 10 s instead of 45 s.
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000");
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }

    /// Producer for inputs (simulator) and side outputs (DLQ): batched, acknowledged by all
    /// replicas. Not idempotent across restarts: a record re-read after a crash is sent again.
    pub fn producer_config(&self) -> ClientConfig {
        let mut c = self.client_config();
        c.set("linger.ms", "20")
            .set("batch.num.messages", "10000")
            .set("queue.buffering.max.messages", "1000000")
            .set("compression.type", "none")
            .set("acks", "all");
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }
}

/// A topic the pipeline needs. Retention and clean-up are the broker's defaults: they
/// decide how far back a replay from the earliest offsets can go.
#[derive(Debug, Clone)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    /// Never delete records (`retention.ms=-1`): what must outlive the inputs.
    pub keep_forever: bool,
}

/// Creates the topics that do not exist yet; existing topics are left as they are.
pub async fn ensure_topics(settings: &KafkaSettings, topics: &[TopicSpec]) -> Result<(), Error> {
    let admin: AdminClient<DefaultClientContext> =
        settings
            .client_config()
            .create()
            .map_err(|source| Error::Kafka {
                context: "creating admin client".into(),
                source,
            })?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| {
            let topic = NewTopic::new(&t.name, t.partitions, TopicReplication::Fixed(1));
            if t.keep_forever {
                topic.set("retention.ms", "-1")
            } else {
                topic
            }
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics(new.iter(), &opts)
        .await
        .map_err(|source| Error::Kafka {
            context: "creating topics".into(),
            source,
        })?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(Error::CreateTopic {
                    topic,
                    message: code.to_string(),
                })
            }
        }
    }
    Ok(())
}

/// Why a record went to the dead-letter topic, and where it came from.
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    pub source_topic: &'a str,
    pub source_partition: i32,
    pub source_offset: i64,
    /// Bounded, typed reason (`not_avro`, `score_out_of_range`, ...): one of the decoder's
    /// and validator's fixed names, so it can label a metric.
    pub kind: &'static str,
    /// Human-readable detail; never contains payload text.
    pub message: &'a str,
    /// The record's size when only its first bytes are kept (see [`DEAD_LETTER_MAX_BYTES`]).
    pub original_bytes: Option<usize>,
}

/// Dead letters keep at most this many bytes of the original record (and say its size in
/// [`HEADER_ORIGINAL_BYTES`]): brokers refuse records over about 1 MB by default, and a
/// dead letter that cannot be written would stop the pipeline on one bad record.
pub const DEAD_LETTER_MAX_BYTES: usize = 512 * 1024;

pub const HEADER_SOURCE_TOPIC: &str = "cx.source.topic";
pub const HEADER_SOURCE_PARTITION: &str = "cx.source.partition";
pub const HEADER_SOURCE_OFFSET: &str = "cx.source.offset";
pub const HEADER_ERROR_KIND: &str = "cx.error.kind";
pub const HEADER_ERROR_MESSAGE: &str = "cx.error.message";
pub const HEADER_ORIGINAL_BYTES: &str = "cx.original.bytes";

impl DeadLetter<'_> {
    /// Headers of the DLQ record; the payload and key are the original bytes.
    pub fn headers(&self) -> OwnedHeaders {
        let partition = self.source_partition.to_string();
        let offset = self.source_offset.to_string();
        let headers = OwnedHeaders::new_with_capacity(6)
            .insert(Header {
                key: HEADER_SOURCE_TOPIC,
                value: Some(self.source_topic),
            })
            .insert(Header {
                key: HEADER_SOURCE_PARTITION,
                value: Some(&partition),
            })
            .insert(Header {
                key: HEADER_SOURCE_OFFSET,
                value: Some(&offset),
            })
            .insert(Header {
                key: HEADER_ERROR_KIND,
                value: Some(self.kind),
            })
            .insert(Header {
                key: HEADER_ERROR_MESSAGE,
                value: Some(self.message),
            });
        match self.original_bytes {
            Some(n) => headers.insert(Header {
                key: HEADER_ORIGINAL_BYTES,
                value: Some(&n.to_string()),
            }),
            None => headers,
        }
    }
}

/// Where a dead letter's record came from (its headers).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceCoordinates {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// The source coordinates of the dead letters in `topic` written from `from` (offset per
/// DLQ partition; a partition without one is read from its beginning) to its current end,
/// of records from the source partitions `of`. Letters without the headers are skipped.
pub fn dead_letters_since(
    settings: &KafkaSettings,
    topic: &str,
    from: &[i64],
    of: &std::collections::BTreeSet<i32>,
    timeout: Duration,
) -> Result<Vec<SourceCoordinates>, Error> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    use rdkafka::{Offset, TopicPartitionList};
    let err = |context: &str| {
        let context = format!("{context} of dead-letter topic `{topic}`");
        move |source| Error::Kafka { context, source }
    };
    let consumer: BaseConsumer = settings
        .client_config()
        .set("group.id", "cxstream-dead-letter-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .map_err(err("creating a reader"))?;
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(err("reading the partitions"))?;
    let partitions = metadata
        .topics()
        .first()
        .map_or(0, |t| t.partitions().len());
    let mut tpl = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for p in (0..partitions).filter_map(|p| i32::try_from(p).ok()) {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, timeout)
            .map_err(err("reading the offsets"))?;
        let start = usize::try_from(p)
            .ok()
            .and_then(|i| from.get(i))
            .map_or(low, |f| (*f).max(low));
        if start < high {
            tpl.add_partition_offset(topic, p, Offset::Offset(start))
                .map_err(err("assigning a partition"))?;
            ends.insert(p, high);
        }
    }
    let mut found = Vec::new();
    if ends.is_empty() {
        return Ok(found);
    }
    consumer.assign(&tpl).map_err(err("assigning"))?;
    let deadline = std::time::Instant::now() + timeout;
    while !ends.is_empty() {
        if std::time::Instant::now() > deadline {
            return Err(Error::Timeout {
                context: format!("reading dead-letter topic `{topic}` to its end"),
            });
        }
        let Some(m) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = m.map_err(err("reading"))?;
        if ends
            .get(&m.partition())
            .is_some_and(|h| m.offset() + 1 >= *h)
        {
            ends.remove(&m.partition());
        }
        let header = |key: &str| {
            m.headers()?
                .iter()
                .find(|h| h.key == key)
                .and_then(|h| std::str::from_utf8(h.value?).ok())
        };
        let (Some(source), Some(partition), Some(offset)) = (
            header(HEADER_SOURCE_TOPIC),
            header(HEADER_SOURCE_PARTITION).and_then(|p| p.parse().ok()),
            header(HEADER_SOURCE_OFFSET).and_then(|o| o.parse().ok()),
        ) else {
            continue;
        };
        if of.contains(&partition) {
            found.push(SourceCoordinates {
                topic: source.to_string(),
                partition,
                offset,
            });
        }
    }
    Ok(found)
}
