//! Partition assignment for the journey service. On assignment, the resume point of each
//! partition is read from ClickHouse's commit log (not from Kafka's committed offsets, which
//! may lag the last durable batch) and the consumer is assigned at exactly those offsets.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cxstream_clickhouse::{BatchCommitter, Resume};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, Statistics, TopicPartitionList};

/// What the consumer thread learns from a rebalance.
pub enum Change {
    /// A partition and the resume point of each journey map, in the maps' order.
    Assigned(i32, Vec<Resume>),
    Revoked(i32),
}

pub struct JourneyContext {
    pub rt: tokio::runtime::Handle,
    /// One per journey map, in the maps' order.
    pub committers: Vec<Arc<BatchCommitter>>,
    /// The commits in flight, waited for before a partition is handed over.
    pub in_flight: Arc<super::commits::InFlight>,
    pub touchpoints_topic: String,
    pub answers_topic: String,
    /// The identities topic, when identity stitching is on.
    pub identities_topic: Option<String>,
    pub changes: Mutex<Vec<Change>>,
    pub changed: AtomicBool,
    pub shutdown: Arc<AtomicBool>,
    /// Not ready while ClickHouse cannot be read or no broker answers.
    pub readiness: Arc<super::readiness::Readiness>,
    /// High watermarks from librdkafka's statistics (fed by fetch responses), so knowing
    /// whether a partition is read to its end costs no request to the broker.
    pub high_watermarks: Mutex<HashMap<(String, i32), i64>>,
}

impl ClientContext for JourneyContext {
    fn stats(&self, statistics: Statistics) {
        // Logical brokers (the bootstrap list, the group coordinator) have ids below 0.
        let up = statistics
            .brokers
            .values()
            .filter(|b| b.nodeid >= 0)
            .any(|b| b.state == "UP");
        self.readiness.brokers(up);
        let Ok(mut highs) = self.high_watermarks.lock() else {
            return;
        };
        for (topic, t) in statistics.topics {
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

    /// Reads a partition's resume point of every journey and claims it, retrying while
    /// ClickHouse is unreachable; `None` when shutting down first.
    pub fn resume(&self, partition: i32) -> Option<Vec<Resume>> {
        self.committers
            .iter()
            .map(|c| self.resume_one(c, partition))
            .collect()
    }

    fn resume_one(&self, committer: &BatchCommitter, partition: i32) -> Option<Resume> {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.rt.block_on(committer.resume(partition as u16)) {
                Ok(r) => {
                    self.readiness.clickhouse(true);
                    return Some(r);
                }
                Err(e) => {
                    self.readiness.clickhouse(false);
                    tracing::warn!(partition, journey = committer.journey(), error = %e, "cannot read resume point; retrying");
                    if self.shutdown.load(Ordering::Relaxed) {
                        return None;
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// The assignment of the partitions, each input at the earliest resume point of its
    /// journeys, reading every resume point from ClickHouse and queueing the changes for
    /// the consumer thread; `None` when shutting down first.
    pub fn assignment(&self, partitions: &[i32]) -> Option<TopicPartitionList> {
        let mut assignment = TopicPartitionList::new();
        for &p in partitions {
            let resumes = self.resume(p)?;
            let mut added = Ok(());
            for (topic, offset) in self.start_offsets(&resumes) {
                added = added.and_then(|_| assignment.add_partition_offset(&topic, p, offset));
            }
            if let Err(e) = added {
                tracing::error!(partition = p, error = %e, "cannot build assignment");
                continue;
            }
            for (c, resume) in self.committers.iter().zip(&resumes) {
                tracing::info!(
                    partition = p,
                    journey = c.journey(),
                    next_seq = resume.next_seq,
                    touchpoints_offset = ?resume.touchpoints_offset,
                    answers_offset = ?resume.answers_offset,
                    identities_offset = ?resume.identities_offset,
                    journeys = resume.journeys.len(),
                    "partition assigned; resuming from the last committed batch"
                );
            }
            self.push(Change::Assigned(p, resumes));
        }
        Some(assignment)
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
                let Some(assignment) = self.assignment(&partitions) else {
                    return;
                };
                if let Err(e) = consumer.assign(&assignment) {
                    tracing::error!(error = %e, "assign failed");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                // The next owner resumes from the commit log: the batches being committed
                // must be in it (or given up, at shutdown) before the partitions go.
                self.in_flight.wait_idle();
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
