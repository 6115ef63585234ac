//! Dead letters: a record that cannot count goes to the dead-letter topic once, also when
//! it is read again after a crash.
//!
//! A dead letter is sent when its record is read, and the batch that holds the record is
//! committed later; a crash in between reads the record again. So each marker keeps where
//! the DLQ stood when it was committed (its end per partition, or a lower bound of it:
//! every dead letter of a later record comes after it), and a partition resumed from a
//! marker first reads the DLQ from there. The records of its own whose letters it finds
//! were dead-lettered before the crash, and are not sent again.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cxstream_kafka::{DeadLetter, DEAD_LETTER_MAX_BYTES};
use rdkafka::producer::{BaseRecord, Producer};

use super::partition::{self, Source};
use super::Inner;
use crate::produce::send;
use cxstream_clickhouse::Resume;

/// A dead letter keeps at most this much of its record's key.
const DEAD_LETTER_MAX_KEY_BYTES: usize = 4096;
/// How often the broker is asked where the DLQ ends (this instance's own deliveries move
/// the position in between; other instances' letters only make a resume read more).
const ASK_EVERY: Duration = Duration::from_secs(30);
/// How long reading the DLQ on a resume may take before the partition goes on without it
/// (its dead letters are then written at least once).
const READ_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Default)]
pub(super) struct DeadLetterLog {
    /// The DLQ's end per partition as the broker last said, or a lower bound of it.
    ends: Vec<i64>,
    asked: Option<Instant>,
    /// Per input partition, the records (source, offset) whose letters are in the DLQ
    /// already: found there when the partition was assigned.
    pub(super) sent_before: BTreeMap<i32, HashSet<(Source, i64)>>,
}

impl Inner {
    pub(super) fn dead_letter_all(&mut self, partition: i32, rejected: Vec<partition::Rejected>) {
        for r in rejected {
            let sent = self
                .dead_letters
                .sent_before
                .get(&partition)
                .is_some_and(|s| s.contains(&(r.source, r.offset)));
            if sent {
                tracing::debug!(
                    partition,
                    offset = r.offset,
                    "record read again; its dead letter was written before"
                );
                continue;
            }
            let topic = self.topic(r.source).to_string();
            let letter = DeadLetter {
                source_topic: &topic,
                source_partition: partition,
                source_offset: r.offset,
                kind: r.kind,
                message: &r.message,
                original_bytes: None,
            };
            self.dead_letter(letter, r.key.as_deref(), &r.payload);
        }
    }

    fn dead_letter(&mut self, mut letter: DeadLetter<'_>, key: Option<&[u8]>, payload: &[u8]) {
        let payload = if payload.len() > DEAD_LETTER_MAX_BYTES {
            letter.original_bytes = Some(payload.len());
            &payload[..DEAD_LETTER_MAX_BYTES]
        } else {
            payload
        };
        // Keys are customer ids; one of megabytes is garbage too, and must not make the
        // dead letter itself too large to write.
        let key = key.map(|k| &k[..k.len().min(DEAD_LETTER_MAX_KEY_BYTES)]);
        *self.dlq_counts.entry(letter.kind).or_default() += 1;
        tracing::debug!(
            topic = letter.source_topic,
            partition = letter.source_partition,
            offset = letter.source_offset,
            reason = letter.kind,
            "record dead-lettered"
        );
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&self.cfg.topics.dlq)
            .payload(payload)
            .headers(letter.headers());
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Err(e) = send(&self.dlq, record) {
            // Nothing read since the last commit is committed now (see `flush`), so
            // the record is read again after a restart instead of being lost.
            tracing::error!(error = %e, "dead-letter topic refused a record");
            self.dlq_refused.get_or_insert_with(|| e.to_string());
            self.shutdown.store(true, Ordering::Relaxed);
        }
    }

    /// Where the DLQ stands now, for the markers of a flush (called once every dead letter
    /// sent so far is delivered): the broker's word at most [`ASK_EVERY`] old, moved on by
    /// this instance's deliveries since.
    pub(super) fn dead_letters_from(&mut self) -> Vec<i64> {
        let log = &mut self.dead_letters;
        if log.asked.is_none_or(|t| t.elapsed() >= ASK_EVERY) {
            match dlq_ends(&*self.dlq, &self.cfg.topics.dlq) {
                Ok(ends) => {
                    log.ends = ends;
                    log.asked = Some(Instant::now());
                }
                // The older position is still a lower bound: a resume reads a little more.
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read where the dead-letter topic ends")
                }
            }
        }
        for (p, end) in self.dlq.context().delivered_ends() {
            let Ok(i) = usize::try_from(p) else {
                continue;
            };
            if log.ends.len() <= i {
                log.ends.resize(i + 1, 0);
            }
            log.ends[i] = log.ends[i].max(end);
        }
        log.ends.clone()
    }

    /// Before the partitions just claimed are read: which of their records that will be
    /// read again were dead-lettered already (by an instance that crashed, or by a journey
    /// map that committed further than another).
    pub(super) fn learn_sent_before<'a>(
        &mut self,
        claimed: impl IntoIterator<Item = (i32, &'a [Resume])>,
    ) {
        let mut partitions = BTreeSet::new();
        let mut positions = Vec::new();
        for (p, resumes) in claimed {
            self.dead_letters.sent_before.remove(&p);
            partitions.insert(p);
            positions.extend(resumes.iter().map(|r| r.dead_letters_from.as_deref()));
        }
        if partitions.is_empty() {
            return;
        }
        let from = earliest(&positions);
        let started = Instant::now();
        // Asked on the producer's connection, which is open already: a reader of its own
        // takes longer to start than most resumes take in all.
        match dlq_ends(&*self.dlq, &self.cfg.topics.dlq) {
            Ok(ends) => {
                let nothing_after = nothing_after(&from, &ends);
                self.dead_letters.ends = ends;
                self.dead_letters.asked = Some(Instant::now());
                if nothing_after {
                    tracing::debug!(partitions = ?partitions, "no dead letters after the resume points");
                    return;
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot read where the dead-letter topic ends; reading it")
            }
        }
        let found = match cxstream_kafka::dead_letters_since(
            &self.cfg.kafka,
            &self.cfg.topics.dlq,
            &from,
            &partitions,
            READ_TIMEOUT,
        ) {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the dead-letter topic; dead letters of records read again may be written twice");
                return;
            }
        };
        let sources = self.source_topics();
        for c in &found {
            if let Some((source, _)) = sources.iter().find(|(_, t)| *t == c.topic) {
                self.dead_letters
                    .sent_before
                    .entry(c.partition)
                    .or_default()
                    .insert((*source, c.offset));
            }
        }
        tracing::info!(
            partitions = ?partitions,
            found = found.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "dead letters already written read back"
        );
    }
}

/// Where every one of `positions` has its letters after it: the least per DLQ partition;
/// an unknown position (nothing committed, or a marker older than positions) reads the
/// whole topic (empty).
fn earliest(positions: &[Option<&[i64]>]) -> Vec<i64> {
    let mut known = Vec::new();
    for p in positions {
        let Some(p) = p else {
            return Vec::new();
        };
        known.push(*p);
    }
    let len = known.iter().map(|p| p.len()).max().unwrap_or(0);
    (0..len)
        .map(|i| {
            known
                .iter()
                .map(|p| p.get(i).copied().unwrap_or(0))
                .min()
                .unwrap_or(0)
        })
        .collect()
}

/// Whether no DLQ partition holds a letter at or after `from` (a partition `from` does not
/// name is read from its beginning).
fn nothing_after(from: &[i64], ends: &[i64]) -> bool {
    ends.iter()
        .enumerate()
        .all(|(i, end)| *end <= from.get(i).copied().unwrap_or(0))
}

/// The DLQ's end offset per partition, as the broker says now.
fn dlq_ends<P: Producer<C>, C: rdkafka::producer::ProducerContext>(
    producer: &P,
    topic: &str,
) -> Result<Vec<i64>, rdkafka::error::KafkaError> {
    let timeout = Duration::from_secs(10);
    let client = producer.client();
    let metadata = client.fetch_metadata(Some(topic), timeout)?;
    let partitions = metadata
        .topics()
        .first()
        .map_or(0, |t| t.partitions().len());
    (0..partitions)
        .map(|p| {
            let p = i32::try_from(p).unwrap_or(i32::MAX);
            client
                .fetch_watermarks(topic, p, timeout)
                .map(|(_, high)| high)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{earliest, nothing_after};

    #[test]
    fn letters_are_read_back_only_where_the_topic_goes_past_the_resume_point() {
        assert!(nothing_after(&[5, 9], &[5, 9]));
        assert!(!nothing_after(&[5, 9], &[5, 10]));
        // Unknown (nothing committed): only an empty topic has nothing to read.
        assert!(nothing_after(&[], &[0, 0]));
        assert!(!nothing_after(&[], &[0, 1]));
        // A partition added since the marker: read from its beginning.
        assert!(!nothing_after(&[5], &[5, 1]));
    }

    #[test]
    fn the_earliest_position_is_the_least_and_unknown_reads_everything() {
        assert_eq!(earliest(&[Some(&[5, 9]), Some(&[7, 3])]), vec![5, 3]);
        // A marker written when the topic had fewer partitions: the new one from 0.
        assert_eq!(earliest(&[Some(&[5, 9]), Some(&[7])]), vec![5, 0]);
        assert!(earliest(&[Some(&[5]), None]).is_empty());
        assert!(earliest(&[]).is_empty());
    }
}
