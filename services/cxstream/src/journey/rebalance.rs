//! Partition assignment for the journey service. A partition is assigned paused; the consumer
//! thread then claims it and reads its resume point from ClickHouse's commit log (not from
//! Kafka's committed offsets, which may lag the last durable batch), seeks there and
//! unpauses it (see `claiming`).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cxstream_clickhouse::Resume;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde::Deserialize;

/// What the consumer thread learns from a rebalance.
pub enum Change {
    /// A partition assigned here, paused until it is claimed.
    Assigned(i32),
    Revoked(i32),
}

/// How long a revocation waits for the commits in flight.
const REVOKE_WAIT: Duration = Duration::from_secs(10);

pub struct JourneyContext {
    /// The commits in flight, waited for (at most [`REVOKE_WAIT`]) before a partition is
    /// handed over.
    pub in_flight: Arc<super::commits::InFlight>,
    pub touchpoints_topic: String,
    pub answers_topic: String,
    /// The identities topic, when identity stitching is on.
    pub identities_topic: Option<String>,
    pub changes: Mutex<Vec<Change>>,
    pub changed: AtomicBool,
    /// Not ready while ClickHouse cannot be read or no broker answers.
    pub readiness: Arc<super::readiness::Readiness>,
    /// High watermarks from librdkafka's statistics (fed by fetch responses), so knowing
    /// whether a partition is read to its end costs no request to the broker.
    pub high_watermarks: Mutex<HashMap<(String, i32), i64>>,
}

/// What is read of librdkafka's statistics. The rest of its JSON (latency histograms, queue
/// sizes, per broker and per partition) is skipped rather than decoded: decoding all of it
/// into `rdkafka::Statistics` every 250 ms cost a catch-up 2 % of its CPU.
#[derive(Deserialize)]
struct Stats<'a> {
    /// Absent: readiness is left as it was (rdkafka's own decoding failed then).
    #[serde(borrow)]
    brokers: Option<HashMap<String, BrokerStats<'a>>>,
    #[serde(default)]
    topics: HashMap<String, TopicStats>,
}

#[derive(Deserialize)]
struct BrokerStats<'a> {
    nodeid: i32,
    #[serde(borrow)]
    state: Cow<'a, str>,
}

#[derive(Deserialize)]
struct TopicStats {
    #[serde(default)]
    partitions: HashMap<i32, PartitionStats>,
}

#[derive(Deserialize)]
struct PartitionStats {
    hi_offset: i64,
}

impl ClientContext for JourneyContext {
    fn stats_raw(&self, statistics: &[u8]) {
        let stats: Stats = match serde_json::from_slice(statistics) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read librdkafka's statistics");
                return;
            }
        };
        // Logical brokers (the bootstrap list, the group coordinator) have ids below 0.
        if let Some(brokers) = &stats.brokers {
            let up = brokers
                .values()
                .filter(|b| b.nodeid >= 0)
                .any(|b| b.state == "UP");
            self.readiness.brokers(up);
        }
        let Ok(mut highs) = self.high_watermarks.lock() else {
            return;
        };
        for (topic, t) in stats.topics {
            for (p, part) in t.partitions {
                if p >= 0 && part.hi_offset >= 0 {
                    highs.insert((topic.clone(), p), part.hi_offset);
                }
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // Reaching the end of a partition is reported as an error by librdkafka; it is the
        // normal state of a caught-up consumer.
        let eof = matches!(error, KafkaError::PartitionEOF(_))
            || error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF);
        if !eof {
            tracing::error!(error = %error, reason, "kafka client error");
        }
        if error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::AllBrokersDown) {
            self.readiness.brokers(false);
        }
    }
}

impl JourneyContext {
    /// Where each input of a partition is read from: journeys resume from their own
    /// batches, so reading starts at the earliest and each skips what it has committed.
    pub fn start_offsets(&self, resumes: &[Resume]) -> Vec<(String, Offset)> {
        let earliest = |of: fn(&Resume) -> Option<i64>| {
            super::partition::least_of_all(resumes.iter().map(of))
                .map_or(Offset::Beginning, Offset::Offset)
        };
        let mut offsets = vec![
            (
                self.touchpoints_topic.clone(),
                earliest(|r| r.touchpoints_offset),
            ),
            (self.answers_topic.clone(), earliest(|r| r.answers_offset)),
        ];
        if let Some(t) = &self.identities_topic {
            offsets.push((t.clone(), earliest(|r| r.identities_offset)));
        }
        offsets
    }

    /// Assigns `partitions` paused and queues them for the consumer thread, which claims each
    /// and moves it to its resume point. Nothing here waits on ClickHouse. They are assigned
    /// at the group's committed offsets, which mirror the markers and so are never past the
    /// resume point: should librdkafka apply one after the move, reading from there only
    /// re-reads what the journeys skip. (Assigned at their end instead, `broker_restarted`
    /// stalled once under load, cause not established.) Until librdkafka has the committed
    /// offsets a partition cannot be moved; the consumer thread tries again.
    pub fn assign_paused(
        &self,
        consumer: &BaseConsumer<Self>,
        partitions: &[i32],
    ) -> Result<(), KafkaError> {
        let mut assignment = TopicPartitionList::new();
        for &p in partitions {
            for topic in self.input_topics() {
                assignment.add_partition_offset(topic, p, Offset::Invalid)?;
            }
        }
        consumer.assign(&assignment)?;
        if let Err(e) = consumer.pause(&assignment) {
            // Records read before the claim are dropped (no slot), and read again from the
            // resume point.
            tracing::warn!(error = %e, "cannot pause the partitions assigned until they are claimed");
        }
        for &p in partitions {
            self.push(Change::Assigned(p));
        }
        Ok(())
    }

    fn input_topics(&self) -> impl Iterator<Item = &String> {
        [&self.touchpoints_topic, &self.answers_topic]
            .into_iter()
            .chain(self.identities_topic.as_ref())
    }

    pub fn push(&self, c: Change) {
        if let Ok(mut v) = self.changes.lock() {
            v.push(c);
        }
        self.changed.store(true, Ordering::Release);
    }

    pub fn high_watermark(&self, topic: &str, partition: i32) -> Option<i64> {
        self.high_watermarks
            .lock()
            .ok()?
            .get(&(topic.to_string(), partition))
            .copied()
    }

    pub fn take_changes(&self) -> Vec<Change> {
        if !self.changed.swap(false, Ordering::AcqRel) {
            return Vec::new();
        }
        self.changes
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    }
}

impl ConsumerContext for JourneyContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let mut partitions: Vec<i32> =
                    tpl.elements().iter().map(|e| e.partition()).collect();
                partitions.sort_unstable();
                partitions.dedup();
                if let Err(e) = self.assign_paused(consumer, &partitions) {
                    tracing::error!(error = %e, "assign failed");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                // The next owner resumes from the commit log: the batches being committed
                // should be in it before the partitions go. Not for ever: a batch committed
                // after the next owner claimed the partition does not count (fencing), so
                // an absent ClickHouse costs this member its place in the group, never a
                // figure.
                if !self.in_flight.wait_idle(REVOKE_WAIT) {
                    tracing::warn!(
                        waited_ms = REVOKE_WAIT.as_millis() as u64,
                        "handing over partitions with a commit still in flight; the next owner reads again what it does not find committed"
                    );
                }
                let mut partitions: Vec<i32> =
                    tpl.elements().iter().map(|e| e.partition()).collect();
                partitions.sort_unstable();
                partitions.dedup();
                for p in partitions {
                    // Work not yet committed is dropped: the next owner resumes from the last
                    // marker, so nothing is lost or counted twice.
                    self.push(Change::Revoked(p));
                }
                if let Err(e) = consumer.unassign() {
                    tracing::error!(error = %e, "unassign failed");
                }
            }
            other => tracing::error!(error = ?other, "rebalance error"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Stats;

    /// The shape of librdkafka's statistics (STATISTICS.md), trimmed to a few of its fields.
    const SAMPLE: &str = r#"{
      "name": "rdkafka#consumer-1", "ts": 5016483227792, "msg_cnt": 0,
      "brokers": {
        "GroupCoordinator": {"name": "GroupCoordinator", "nodeid": -1, "state": "UP",
                             "rtt": {"min": 0, "max": 0, "p99": 0}},
        "127.0.0.1:19092/111": {"name": "127.0.0.1:19092/111", "nodeid": 111, "state": "UP",
                                "toppars": {"t-0": {"topic": "t", "partition": 0}}}
      },
      "topics": {
        "cx.touchpoints": {"topic": "cx.touchpoints", "age": 9,
          "partitions": {
            "0": {"partition": 0, "hi_offset": 1200, "lo_offset": 0, "fetch_state": "active"},
            "-1": {"partition": -1, "hi_offset": -1001}
          }}
      },
      "cgrp": {"state": "up", "rebalance_cnt": 1}
    }"#;

    #[test]
    fn reads_brokers_and_high_watermarks_and_skips_the_rest() {
        let stats: Stats = serde_json::from_str(SAMPLE).unwrap();
        let up: Vec<(i32, &str)> = stats
            .brokers
            .as_ref()
            .unwrap()
            .values()
            .map(|b| (b.nodeid, &*b.state))
            .collect();
        assert_eq!(up.len(), 2);
        assert!(up.contains(&(111, "UP")));
        let parts = &stats.topics["cx.touchpoints"].partitions;
        assert_eq!(parts[&0].hi_offset, 1200);
        assert_eq!(parts[&-1].hi_offset, -1001);
        let empty: Stats = serde_json::from_str("{}").unwrap();
        assert!(empty.brokers.is_none() && empty.topics.is_empty());
    }
}
