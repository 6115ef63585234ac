//! The reader's side of the aggregates topic (README § Aggregates for the alerter): which
//! partial counts a reader may count, and how far every partition of a journey has
//! committed.
//!
//! Per journey and partition, records arrive in the order they were sent: partial counts
//! under a batch's sequence number and id (in one or more chunks), and committed records
//! naming the latest committed batch. A committed record naming batch n confirms it and
//! every earlier batch of the partition. Of each sequence number, the partial that counts is
//! the one under the claim that the committed record's chain names for it (a batch replayed
//! after a crash is sent again by the next owner, under its own claim; a zombie's partial
//! of a batch that does not count may arrive after it, under its old claim); batch n's is
//! also named by id. Records written before claims carry no chain: the last partial sent
//! under a sequence number counts. [`BatchLog`] releases each confirmed batch's cells
//! exactly once, whatever was repeated or lost of the committed records, and
//! [`BatchLog::known_until`] says up to which event time every partition's committed
//! watermark has come: after it a minute's counts are not known yet (never zero); before it
//! they are no longer missing, though late events within the allowed lateness and outcomes
//! decided at their deadlines still change them, as they change ClickHouse's.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::claims::Link;
use crate::event_time::Finality;

/// A partial record: one chunk of a batch's cells.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Partial<C> {
    pub seq: u64,
    /// The claim of the owner that formed the batch.
    pub claim: u64,
    pub batch_id: u64,
    pub chunk: u32,
    pub chunks: u32,
    pub cells: Vec<C>,
}

/// A committed record: the partition's latest committed batch and watermark.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmed {
    pub seq: u64,
    pub batch_id: u64,
    /// Committed watermark, epoch ms (none yet: `None`).
    pub watermark: Option<i64>,
    /// How far the committed touchpoint counts are final, epoch ms, when that is further
    /// than the watermark (answers lag); `None`: as far as the watermark.
    pub touchpoints_watermark: Option<i64>,
    /// The partition's inputs are read to their end and quiet: it holds nothing back.
    pub idle: bool,
    /// How many partitions the journey reads.
    pub partitions: u32,
    /// The sender's chain: which claim's batch counts under each sequence number (empty in
    /// records written before claims).
    pub chain: Vec<Link>,
}

/// Why a confirmed batch's counts cannot be counted as they should.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    #[error(
        "batch {seq} is confirmed under id {named:x}, but the partial that counts has id {last:x}"
    )]
    WrongId { seq: u64, named: u64, last: u64 },
    #[error("batch {seq} is confirmed with {read} of its {chunks} chunks read")]
    Incomplete { seq: u64, read: u32, chunks: u32 },
    #[error("batches {from} to {to} are confirmed but were never read (the topic's retention?)")]
    Missing { from: u64, to: u64 },
    #[error(
        "batch {seq} is confirmed under claim {claim:x}, but no partial of that claim was read"
    )]
    Unclaimed { seq: u64, claim: u64 },
}

/// A confirmed batch's cells, released once.
#[derive(Debug, Clone, PartialEq)]
pub struct Released<C> {
    pub seq: u64,
    pub cells: Vec<C>,
}

/// The partial chunks of one batch as formed by one owner.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Formed<C> {
    claim: u64,
    batch_id: u64,
    chunks: Vec<Partial<C>>,
}

/// One partition's partials waiting for confirmation, and how far it has committed.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PartitionLog<C> {
    /// Under each sequence number not released yet, the last batch each claim sent, the one
    /// read last at the end.
    waiting: BTreeMap<u64, Vec<Formed<C>>>,
    /// The highest sequence number released.
    released: Option<u64>,
    watermark: Option<i64>,
    /// Never behind `watermark`.
    touchpoints: Option<i64>,
    idle: bool,
}

impl<C> Default for PartitionLog<C> {
    fn default() -> Self {
        PartitionLog {
            waiting: BTreeMap::new(),
            released: None,
            watermark: None,
            touchpoints: None,
            idle: false,
        }
    }
}

/// What a reader knows of one journey's partitions.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchLog<C> {
    partitions: BTreeMap<u32, PartitionLog<C>>,
    /// How many partitions the journey reads (from its committed records).
    expected: u32,
}

impl<C> Default for BatchLog<C> {
    fn default() -> Self {
        BatchLog {
            partitions: BTreeMap::new(),
            expected: 0,
        }
    }
}

impl<C> BatchLog<C> {
    pub fn on_partial(&mut self, partition: u32, p: Partial<C>) {
        let log = self.partitions.entry(partition).or_default();
        if log.released.is_some_and(|r| p.seq <= r) {
            // A batch confirmed before cannot be sent again; a stray copy changes nothing.
            return;
        }
        let formed = log.waiting.entry(p.seq).or_default();
        // One batch per claim: an owner commits each sequence number once, so a later one
        // under the same claim (all of them, in records written before claims) replaces it.
        let mut f = match formed.iter().position(|f| f.claim == p.claim) {
            Some(i) => formed.remove(i),
            None => Formed {
                claim: p.claim,
                batch_id: p.batch_id,
                chunks: Vec::new(),
            },
        };
        if f.batch_id != p.batch_id {
            // Sent again after a crash: the later batch replaces the earlier one.
            f.batch_id = p.batch_id;
            f.chunks.clear();
        }
        f.chunks.push(p);
        // Last read last: without a chain, the last partial sent counts.
        formed.push(f);
    }

    /// A committed record: releases every batch it confirms that was not released yet, in
    /// order, with what is wrong with any of them (it is released as read all the same).
    pub fn on_confirmed(
        &mut self,
        partition: u32,
        c: Confirmed,
    ) -> (Vec<Released<C>>, Vec<LogError>) {
        self.expected = self.expected.max(c.partitions);
        let log = self.partitions.entry(partition).or_default();
        let (mut out, mut errors) = (Vec::new(), Vec::new());
        if log.released.is_some_and(|r| c.seq < r) {
            // An earlier owner's record, read late: it says nothing new.
            return (out, errors);
        }
        log.watermark = c.watermark.max(log.watermark);
        log.touchpoints = c
            .touchpoints_watermark
            .max(log.watermark)
            .max(log.touchpoints);
        log.idle = c.idle;
        if log.released == Some(c.seq) {
            // Said again (every 10 s, after a restart): only idleness may have changed.
            return (out, errors);
        }
        let later = match c.seq.checked_add(1) {
            Some(next) => log.waiting.split_off(&next),
            None => BTreeMap::new(),
        };
        let confirmed = std::mem::replace(&mut log.waiting, later);
        for (seq, formed) in confirmed {
            if let Some(r) = log.released.filter(|r| seq > r + 1) {
                errors.push(LogError::Missing {
                    from: r + 1,
                    to: seq - 1,
                });
            }
            log.released = Some(seq);
            let Some(Formed {
                batch_id: id,
                mut chunks,
                ..
            }) = chosen(formed, seq, &c.chain, &mut errors)
            else {
                continue;
            };
            if seq == c.seq && id != c.batch_id {
                errors.push(LogError::WrongId {
                    seq,
                    named: c.batch_id,
                    last: id,
                });
            }
            chunks.sort_by_key(|p| p.chunk);
            chunks.dedup_by_key(|p| p.chunk);
            let expected = chunks.first().map_or(0, |p| p.chunks);
            if chunks.len() as u32 != expected {
                errors.push(LogError::Incomplete {
                    seq,
                    read: chunks.len() as u32,
                    chunks: expected,
                });
            }
            out.push(Released {
                seq,
                cells: chunks.into_iter().flat_map(|p| p.cells).collect(),
            });
        }
        if log.released.is_none_or(|r| r < c.seq) {
            errors.push(LogError::Missing {
                from: log.released.map_or(0, |r| r + 1),
                to: c.seq,
            });
            log.released = Some(c.seq);
        }
        (out, errors)
    }

    /// The event time up to which every partition has committed: the lowest committed
    /// watermark among the partitions still reading (an idle one, read to its end and
    /// quiet, holds nothing back), or among all when all are idle; `None` until every
    /// partition has named a committed batch with a watermark.
    pub fn known_until(&self) -> Option<i64> {
        self.lowest(|l| l.watermark)
    }

    /// How far one partition's committed counts are final, as its committed records said.
    pub fn partition_known(&self, partition: u32) -> Finality {
        self.partitions
            .get(&partition)
            .map_or_else(Finality::default, |l| Finality {
                touchpoints: l.touchpoints,
                all: l.watermark,
            })
    }

    /// As [`known_until`](Self::known_until), for all counts and for touchpoint counts.
    pub fn known(&self) -> Finality {
        Finality {
            touchpoints: self.lowest(|l| l.touchpoints),
            all: self.known_until(),
        }
    }

    fn lowest(&self, of: impl Fn(&PartitionLog<C>) -> Option<i64>) -> Option<i64> {
        if self.expected == 0 || (self.partitions.len() as u32) < self.expected {
            return None;
        }
        let lowest = |idle: bool| -> Option<Option<i64>> {
            let mut it = self
                .partitions
                .values()
                .filter(|l| l.idle == idle)
                .peekable();
            it.peek()?;
            Some(it.map(&of).min().flatten())
        };
        match lowest(false) {
            Some(reading) => reading,
            None => lowest(true).flatten(),
        }
    }
}

/// Of the batches formed under `seq`, the one that counts: the one under the claim that
/// `chain` names for `seq`, or with no chain (records written before claims) the last read.
/// Where the chain does not tell (its links below the folded batches are dropped) or names a
/// claim whose partial was written before partials carried claims (claim 0, during an
/// upgrade), a batch formed only once is the one.
fn chosen<C>(
    mut formed: Vec<Formed<C>>,
    seq: u64,
    chain: &[Link],
    errors: &mut Vec<LogError>,
) -> Option<Formed<C>> {
    if chain.is_empty() {
        return formed.pop();
    }
    let claim = chain.iter().find(|l| l.covers(seq)).map(|l| l.claim);
    if let Some(i) = formed.iter().position(|f| Some(f.claim) == claim) {
        return Some(formed.swap_remove(i));
    }
    let only = formed.len() == 1;
    let untold = claim.is_none() || formed.first().is_some_and(|f| f.claim == 0);
    if only && untold {
        return formed.pop();
    }
    errors.push(LogError::Unclaimed {
        seq,
        claim: claim.unwrap_or_default(),
    });
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partial(seq: u64, batch_id: u64, cells: Vec<i64>) -> Partial<i64> {
        Partial {
            seq,
            claim: 0,
            batch_id,
            chunk: 0,
            chunks: 1,
            cells,
        }
    }

    fn confirmed(seq: u64, batch_id: u64, watermark: i64) -> Confirmed {
        Confirmed {
            touchpoints_watermark: None,
            seq,
            batch_id,
            watermark: Some(watermark),
            idle: false,
            partitions: 2,
            chain: Vec::new(),
        }
    }

    #[test]
    fn of_each_batch_the_partial_of_the_claim_the_chain_names_counts() {
        let link = |claim, from, until| Link { claim, from, until };
        let under = |claim, p: Partial<i64>| Partial { claim, ..p };
        let mut log = BatchLog::default();
        log.on_partial(0, under(1, partial(0, 1, vec![1])));
        log.on_partial(0, under(2, partial(1, 2, vec![10])));
        // Owner 1, paused past its session, committed batch 1 after owner 2 claimed: its
        // partial arrives last and does not count.
        log.on_partial(0, under(1, partial(1, 3, vec![1_000])));
        log.on_partial(0, under(2, partial(2, 4, vec![100])));
        let chain = vec![link(1, 0, 1), link(2, 1, u64::MAX)];
        let (out, errors) = log.on_confirmed(
            0,
            Confirmed {
                chain: chain.clone(),
                ..confirmed(2, 4, 5_000)
            },
        );
        assert!(errors.is_empty(), "{errors:?}");
        let cells: Vec<i64> = out.into_iter().flat_map(|r| r.cells).collect();
        assert_eq!(cells, [1, 10, 100]);
        // A batch whose owner's partial was never read is reported, and not counted.
        log.on_partial(0, under(1, partial(3, 5, vec![7])));
        let (out, errors) = log.on_confirmed(
            0,
            Confirmed {
                chain,
                ..confirmed(3, 6, 6_000)
            },
        );
        assert!(out.is_empty());
        assert_eq!(errors, [LogError::Unclaimed { seq: 3, claim: 2 }]);
    }

    #[test]
    fn where_the_chain_does_not_tell_a_batch_formed_once_counts() {
        let link = |claim, from, until| Link { claim, from, until };
        let under = |claim, p: Partial<i64>| Partial { claim, ..p };
        let mut log = BatchLog::default();
        // Written before partials carried claims, committed under claim 5 (an upgrade).
        log.on_partial(0, partial(0, 1, vec![1]));
        // Below the chain's first link (folded): formed once, then twice.
        log.on_partial(0, under(7, partial(1, 2, vec![10])));
        log.on_partial(0, under(7, partial(2, 3, vec![100])));
        log.on_partial(0, under(8, partial(2, 4, vec![1_000])));
        log.on_partial(0, under(9, partial(3, 5, vec![10_000])));
        let chain = vec![link(5, 0, 1), link(9, 3, u64::MAX)];
        let (out, errors) = log.on_confirmed(
            0,
            Confirmed {
                chain,
                ..confirmed(3, 5, 5_000)
            },
        );
        let cells: Vec<i64> = out.into_iter().flat_map(|r| r.cells).collect();
        assert_eq!(cells, [1, 10, 10_000]);
        assert_eq!(errors, [LogError::Unclaimed { seq: 2, claim: 0 }]);
    }

    #[test]
    fn touchpoints_are_known_as_far_as_every_partition_says_never_behind_its_watermark() {
        let mut log: BatchLog<i64> = BatchLog::default();
        let ahead = |seq, id, watermark, touchpoints| Confirmed {
            touchpoints_watermark: Some(touchpoints),
            ..confirmed(seq, id, watermark)
        };
        log.on_confirmed(0, ahead(0, 1, 5_000, 9_000));
        // Partition 1 says nothing of its touchpoints: they are as far as its watermark.
        log.on_confirmed(1, confirmed(0, 2, 3_000));
        let known = |t, a| Finality {
            touchpoints: Some(t),
            all: Some(a),
        };
        assert_eq!(log.known(), known(3_000, 3_000));
        log.on_confirmed(1, ahead(1, 3, 4_000, 7_000));
        assert_eq!(log.known(), known(7_000, 4_000));
        // A touchpoint watermark behind the partition's own counts as the latter, and
        // neither goes back.
        log.on_confirmed(0, ahead(1, 4, 8_000, 1_000));
        log.on_confirmed(1, ahead(2, 5, 10_000, 2_000));
        assert_eq!(log.known(), known(9_000, 8_000));
    }

    #[test]
    fn a_replayed_batch_replaces_the_crashed_one_and_a_lost_confirmation_is_covered() {
        let mut log = BatchLog::default();
        log.on_partial(0, partial(0, 1, vec![1]));
        log.on_partial(0, partial(1, 2, vec![10])); // crashed before its marker
        log.on_partial(0, partial(1, 3, vec![20])); // the replay, committed
        log.on_partial(0, partial(2, 4, vec![100]));
        // Batch 1's committed record was lost; batch 2's confirms both.
        let (out, errors) = log.on_confirmed(0, confirmed(2, 4, 5_000));
        assert!(errors.is_empty(), "{errors:?}");
        let cells: Vec<i64> = out.into_iter().flat_map(|r| r.cells).collect();
        assert_eq!(cells, [1, 20, 100]);
        // Said again (every 10 s, after a restart): nothing more.
        assert_eq!(log.on_confirmed(0, confirmed(2, 4, 5_000)).0, []);
        assert_eq!(log.known_until(), None, "partition 1 not heard from");
        log.on_confirmed(1, confirmed(0, 9, 3_000));
        assert_eq!(log.known_until(), Some(3_000));
        log.on_confirmed(
            1,
            Confirmed {
                idle: true,
                ..confirmed(0, 9, 3_000)
            },
        );
        assert_eq!(
            log.known_until(),
            Some(5_000),
            "an idle partition holds nothing back"
        );
    }

    #[test]
    fn chunks_are_counted_once_and_a_missing_one_is_reported() {
        let mut log = BatchLog::default();
        for chunk in [1, 0, 1] {
            log.on_partial(
                0,
                Partial {
                    chunk,
                    chunks: 3,
                    ..partial(0, 7, vec![i64::from(chunk)])
                },
            );
        }
        let (out, errors) = log.on_confirmed(0, confirmed(0, 7, 1));
        assert_eq!(out[0].cells, [0, 1]);
        assert_eq!(
            errors,
            [LogError::Incomplete {
                seq: 0,
                read: 2,
                chunks: 3
            }]
        );
        let (_, errors) = log.on_confirmed(0, confirmed(3, 8, 2));
        assert_eq!(errors, [LogError::Missing { from: 1, to: 3 }]);
    }
}
