//! Did the group read every record exactly once? From the consumers' ledgers, the log ends
//! and the group's committed offsets at the end of a run.

use std::collections::BTreeMap;

use super::ledger::{Ledger, Range, Tp};

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Records of the logs (sum of log ends).
    pub records: i64,
    /// Records the producer had acknowledged.
    pub acked: i64,
    /// Records in no committed range (skipped or never read).
    pub missing: i64,
    /// Records in more than one committed range (processed twice).
    pub twice: i64,
    /// Partitions whose committed offset is not the log end.
    pub uncommitted_partitions: usize,
    /// Records whose payload was not the one produced at that position.
    pub wrong: usize,
    /// Times a consumer saw an offset jump forward within one assignment.
    pub forward_jumps: usize,
    /// Records read again because a commit failed or a consumer was killed (allowed).
    pub reread_after_failure: i64,
}

impl Verdict {
    /// Every acknowledged record is in the log once, was read, with the payload produced
    /// at its position, and the group committed the log end.
    pub fn complete(&self) -> bool {
        self.missing == 0
            && self.uncommitted_partitions == 0
            && self.wrong == 0
            && self.forward_jumps == 0
            && self.records == self.acked
    }

    /// Complete, and no record processed twice. Processing twice needs two members owning
    /// a partition at once, which only the group coordinator can prevent (generations).
    pub fn exactly_once(&self) -> bool {
        self.complete() && self.twice == 0
    }
}

pub struct Ends {
    /// Log end (high watermark) per partition.
    pub log_end: BTreeMap<Tp, i64>,
    /// The group's committed offset per partition.
    pub committed: BTreeMap<Tp, i64>,
    /// Acknowledged records per partition (the producer numbers them from 0).
    pub acked: BTreeMap<Tp, i64>,
}

pub fn verify(ledgers: &[Ledger], ends: &Ends) -> Verdict {
    let mut v = Verdict {
        records: ends.log_end.values().sum(),
        acked: ends.acked.values().sum(),
        ..Verdict::default()
    };
    let mut ranges: BTreeMap<Tp, Vec<Range>> = BTreeMap::new();
    for l in ledgers {
        for (tp, rs) in &l.confirmed {
            ranges.entry(*tp).or_default().extend(rs);
        }
        v.reread_after_failure += l.failed_records;
        for a in &l.anomalies {
            match a.as_bytes().first() {
                Some(b'J') if is_forward_jump(a) => v.forward_jumps += 1,
                Some(b'X' | b'W') => v.wrong += 1,
                _ => {}
            }
        }
    }
    // A range ledgered just before a kill counts if its commit landed: then nobody read
    // those records again, and no confirmed range overlaps it.
    for l in ledgers {
        for (tp, rs) in &l.trailing {
            let confirmed = ranges.get(tp).cloned().unwrap_or_default();
            for r in rs {
                if confirmed.iter().any(|c| overlaps(c, r)) {
                    v.reread_after_failure += r.last - r.first + 1;
                } else {
                    ranges.entry(*tp).or_default().push(*r);
                }
            }
        }
    }
    for (tp, end) in &ends.log_end {
        let (missing, twice) = coverage(ranges.get(tp).map_or(&[][..], Vec::as_slice), *end);
        v.missing += missing;
        v.twice += twice;
        if ends.committed.get(tp) != Some(end) {
            v.uncommitted_partitions += 1;
        }
    }
    v
}

fn overlaps(a: &Range, b: &Range) -> bool {
    a.first <= b.last && b.first <= a.last
}

fn is_forward_jump(line: &str) -> bool {
    let f: Vec<i64> = line
        .split(' ')
        .skip(3)
        .filter_map(|x| x.parse().ok())
        .collect();
    matches!(f.as_slice(), [expected, got] if got > expected)
}

/// (records of 0..end in no range, records in more than one range).
fn coverage(ranges: &[Range], end: i64) -> (i64, i64) {
    let mut rs = ranges.to_vec();
    rs.sort_by_key(|r| (r.first, r.last));
    let (mut missing, mut twice, mut next) = (0, 0, 0i64);
    for r in rs {
        let last = r.last.min(end - 1);
        if r.first > next {
            missing += r.first - next;
        }
        if r.first < next {
            twice += (next.min(last + 1) - r.first).max(0);
        }
        next = next.max(last + 1);
    }
    missing += (end - next).max(0);
    (missing, twice)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(first: i64, last: i64) -> Range {
        Range { first, last }
    }

    #[test]
    fn coverage_counts_gaps_and_overlaps() {
        assert_eq!(coverage(&[r(0, 9), r(10, 19)], 20), (0, 0));
        assert_eq!(coverage(&[r(10, 19), r(0, 9)], 20), (0, 0));
        assert_eq!(coverage(&[r(0, 4), r(10, 19)], 20), (5, 0));
        assert_eq!(coverage(&[r(0, 9), r(5, 14)], 20), (5, 5));
        assert_eq!(coverage(&[r(0, 19), r(5, 9)], 20), (0, 5));
        assert_eq!(coverage(&[], 3), (3, 0));
    }

    #[test]
    fn a_trailing_range_counts_only_if_nobody_read_it_again() {
        let mut killed = Ledger::default();
        killed.confirmed.insert((0, 0), vec![r(0, 9)]);
        killed.trailing.insert((0, 0), vec![r(10, 14)]);
        let mut next_owner = Ledger::default();
        next_owner.confirmed.insert((0, 0), vec![r(15, 19)]);
        let ends = Ends {
            log_end: [((0, 0), 20)].into(),
            committed: [((0, 0), 20)].into(),
            acked: [((0, 0), 20)].into(),
        };
        let v = verify(&[killed, next_owner], &ends);
        assert!(v.exactly_once(), "{v:?}");

        let mut killed = Ledger::default();
        killed.trailing.insert((0, 0), vec![r(0, 14)]);
        let mut next_owner = Ledger::default();
        next_owner.confirmed.insert((0, 0), vec![r(0, 19)]);
        let v = verify(&[killed, next_owner], &ends);
        assert!(v.exactly_once(), "{v:?}");
        assert_eq!(v.reread_after_failure, 15);
    }

    #[test]
    fn forward_jumps_and_wrong_payloads_fail_the_run() {
        let mut l = Ledger::default();
        l.confirmed.insert((0, 0), vec![r(0, 0), r(5, 9)]);
        l.anomalies = vec!["J 0 0 1 5".into(), "J 0 0 9 3".into(), "X 0 0 7 3".into()];
        let ends = Ends {
            log_end: [((0, 0), 10)].into(),
            committed: [((0, 0), 10)].into(),
            acked: [((0, 0), 10)].into(),
        };
        let v = verify(&[l], &ends);
        assert_eq!((v.forward_jumps, v.wrong, v.missing), (1, 1, 4));
        assert!(!v.exactly_once());
    }
}
