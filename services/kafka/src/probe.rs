//! Is the broker serving? A metadata request and a full consumer-group round trip (join,
//! commit, fetch the commit, leave), each under a deadline. A port that accepts
//! connections says little: a broker was seen here answering metadata while its group
//! coordinator no longer answered, so both paths are exercised. Plain Kafka protocol, no
//! broker-specific request.

use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::{Offset, TopicPartitionList};

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("metadata request: no answer within {0:?}: {1}")]
    Metadata(Duration, String),
    #[error("topic `{0}` does not exist (create it, or probe another topic)")]
    NoTopic(String),
    #[error("consumer group `{group}`: {step} did not complete within {timeout:?}{detail}")]
    Group {
        group: String,
        step: &'static str,
        timeout: Duration,
        detail: String,
    },
    #[error("creating the probe client: {0}")]
    Client(#[from] rdkafka::error::KafkaError),
}

/// What the broker answered to a metadata request.
#[derive(Debug, Clone)]
pub struct MetadataAnswer {
    pub latency: Duration,
    pub brokers: usize,
    pub topics: usize,
}

/// Remembers the last error librdkafka logged (a TLS handshake's reason, say), which a
/// failed request's own error does not carry.
#[derive(Default)]
struct LastError(std::sync::Mutex<Option<String>>);

impl ClientContext for LastError {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        tracing::debug!(fac, log_message, "librdkafka");
        let severe = matches!(
            level,
            RDKafkaLogLevel::Emerg
                | RDKafkaLogLevel::Alert
                | RDKafkaLogLevel::Critical
                | RDKafkaLogLevel::Error
        );
        if severe {
            if let Ok(mut last) = self.0.lock() {
                *last = Some(log_message.to_string());
            }
        }
    }
}

impl ConsumerContext for LastError {}

/// One metadata request (all topics) with a deadline; a failure says the client's last
/// error too (why the connection failed).
pub fn metadata(config: &ClientConfig, timeout: Duration) -> Result<MetadataAnswer, ProbeError> {
    let client: BaseConsumer<LastError> = config.create_with_context(LastError::default())?;
    metadata_with(&client, timeout).map_err(|e| match e {
        ProbeError::Metadata(t, m) => {
            // The client's logs wait in its queue until it is polled.
            for _ in 0..5 {
                let _ = client.poll(Duration::from_millis(50));
            }
            let why = client.context().0.lock().ok().and_then(|l| l.clone());
            ProbeError::Metadata(
                t,
                why.map_or(m.clone(), |w| format!("{m}; the client's last error: {w}")),
            )
        }
        other => other,
    })
}

/// As [`metadata`], on a client the caller keeps (repeated probes reuse its connection).
pub fn metadata_with<C: ConsumerContext>(
    client: &BaseConsumer<C>,
    timeout: Duration,
) -> Result<MetadataAnswer, ProbeError> {
    let start = Instant::now();
    let md = client
        .fetch_metadata(None, timeout)
        .map_err(|e| ProbeError::Metadata(timeout, e.to_string()))?;
    Ok(MetadataAnswer {
        latency: start.elapsed(),
        brokers: md.brokers().len(),
        topics: md.topics().len(),
    })
}

/// How long each step of a group round trip took.
#[derive(Debug, Clone)]
pub struct GroupRoundTrip {
    pub join: Duration,
    pub commit: Duration,
    pub fetch_committed: Duration,
    pub total: Duration,
}

/// Joins `group` (which should be new: the probe must not disturb a live group) on `topic`,
/// commits the first assigned partition's position, reads the commit back, and leaves.
pub fn group_round_trip(
    config: &ClientConfig,
    topic: &str,
    group: &str,
    timeout: Duration,
) -> Result<GroupRoundTrip, ProbeError> {
    let start = Instant::now();
    let mut cfg = config.clone();
    cfg.set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "500");
    let consumer: BaseConsumer = cfg.create()?;
    let group_error = |step, detail: String| ProbeError::Group {
        group: group.to_string(),
        step,
        timeout,
        detail,
    };
    let md = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| ProbeError::Metadata(timeout, e.to_string()))?;
    if md
        .topics()
        .first()
        .is_none_or(|t| t.error().is_some() || t.partitions().is_empty())
    {
        return Err(ProbeError::NoTopic(topic.to_string()));
    }
    consumer
        .subscribe(&[topic])
        .map_err(|e| group_error("subscribe", format!(": {e}")))?;
    let assigned = wait_for_assignment(&consumer, start + timeout)
        .ok_or_else(|| group_error("join (JoinGroup/SyncGroup)", String::new()))?;
    let join = start.elapsed();

    let step = Instant::now();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, assigned, Offset::Offset(0))
        .map_err(|e| group_error("commit", format!(": {e}")))?;
    consumer
        .commit(&tpl, CommitMode::Sync)
        .map_err(|e| group_error("commit (OffsetCommit)", format!(": {e}")))?;
    let commit = step.elapsed();

    let step = Instant::now();
    let remaining = (start + timeout).saturating_duration_since(Instant::now());
    let committed = consumer
        .committed_offsets(tpl, remaining)
        .map_err(|e| group_error("fetch committed (OffsetFetch)", format!(": {e}")))?;
    let fetch_committed = step.elapsed();
    let read_back = committed
        .find_partition(topic, assigned)
        .map(|p| p.offset());
    if read_back != Some(Offset::Offset(0)) {
        return Err(group_error(
            "fetch committed (OffsetFetch)",
            format!(": committed offset 0, read back {read_back:?}"),
        ));
    }
    consumer.unsubscribe();
    Ok(GroupRoundTrip {
        join,
        commit,
        fetch_committed,
        total: start.elapsed(),
    })
}

/// Polls (which drives the group protocol) until a partition is assigned.
fn wait_for_assignment(consumer: &BaseConsumer, deadline: Instant) -> Option<i32> {
    while Instant::now() < deadline {
        // Records are irrelevant here; polling serves the join and rebalance callbacks.
        let _ = consumer.poll(Duration::from_millis(100));
        if let Some(p) = consumer
            .assignment()
            .ok()
            .and_then(|a| a.elements().first().map(|e| e.partition()))
        {
            return Some(p);
        }
    }
    None
}
