//! What each harness consumer read and committed, written as text lines so that the
//! verifier can check, after kills, that the group processed every record exactly once.
//!
//! A consumer writes the contiguous offset ranges it read as `P` (pending) lines *before*
//! it commits the offsets after them, then `C` when the commit succeeded or `F` when it
//! failed. Records read after the last commit of a killed consumer are in no line: the next
//! owner reads them again from the committed offset, so the confirmed ranges of all ledgers
//! tile each partition's log exactly once when the group and the broker behave.
//!
//! Lines: `P topic partition first last`, `C`, `F`,
//! `X topic partition offset seq` (payload sequence differs from the offset),
//! `W topic partition offset payload_topic payload_partition` (record of another partition),
//! `J topic partition expected got` (the next record's offset was not the one expected).

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::Path;

/// Identifies a partition of the workload: (topic index, partition).
pub type Tp = (u32, i32);

/// An inclusive range of offsets read contiguously.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub first: i64,
    pub last: i64,
}

/// The payload layout the producer writes: magic, topic index, partition, sequence, padding.
pub const MAGIC: &[u8; 4] = b"CXBB";
pub const HEADER_BYTES: usize = 20;

pub fn encode_payload(tp: Tp, seq: u64, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len.max(HEADER_BYTES));
    v.extend_from_slice(MAGIC);
    v.extend_from_slice(&tp.0.to_le_bytes());
    v.extend_from_slice(&tp.1.to_le_bytes());
    v.extend_from_slice(&seq.to_le_bytes());
    v.resize(len.max(HEADER_BYTES), b'.');
    v
}

/// (topic index, partition, sequence) of a payload, or None if it is not one of ours.
pub fn decode_payload(p: &[u8]) -> Option<(Tp, u64)> {
    if p.len() < HEADER_BYTES || &p[..4] != MAGIC {
        return None;
    }
    let t = u32::from_le_bytes(p[4..8].try_into().ok()?);
    let part = i32::from_le_bytes(p[8..12].try_into().ok()?);
    let seq = u64::from_le_bytes(p[12..20].try_into().ok()?);
    Some(((t, part), seq))
}

/// The writing side, owned by one consumer process.
pub struct LedgerWriter {
    out: std::io::BufWriter<std::fs::File>,
}

impl LedgerWriter {
    pub fn create(path: &Path) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(LedgerWriter {
            out: std::io::BufWriter::new(file),
        })
    }

    pub fn pending(&mut self, tp: Tp, r: Range) -> std::io::Result<()> {
        writeln!(self.out, "P {} {} {} {}", tp.0, tp.1, r.first, r.last)
    }

    pub fn anomaly(&mut self, line: &str) -> std::io::Result<()> {
        writeln!(self.out, "{line}")
    }

    /// Ends a group of pending lines; flushed so a SIGKILL right after loses nothing written.
    pub fn outcome(&mut self, committed: bool) -> std::io::Result<()> {
        writeln!(self.out, "{}", if committed { "C" } else { "F" })?;
        self.out.flush()
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// One consumer's ledger, parsed.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Ranges whose commit succeeded.
    pub confirmed: BTreeMap<Tp, Vec<Range>>,
    /// Ranges written before a commit whose outcome was never recorded (killed in between).
    pub trailing: BTreeMap<Tp, Vec<Range>>,
    /// Ranges whose commit failed: the next owner reads them again.
    pub failed_records: i64,
    pub anomalies: Vec<String>,
}

pub fn read_ledger(path: &Path) -> std::io::Result<Ledger> {
    let file = std::fs::File::open(path)?;
    let mut ledger = Ledger::default();
    let mut pending: Vec<(Tp, Range)> = Vec::new();
    for line in std::io::BufReader::new(file).lines() {
        let line = line?;
        let f: Vec<&str> = line.split(' ').collect();
        match f.as_slice() {
            ["P", t, p, first, last] => {
                // A line cut short by SIGKILL mid-write does not parse and is skipped: its
                // commit never happened (the line is written before the commit).
                if let (Ok(t), Ok(p), Ok(first), Ok(last)) =
                    (t.parse(), p.parse(), first.parse(), last.parse())
                {
                    pending.push(((t, p), Range { first, last }));
                }
            }
            ["C"] => {
                for (tp, r) in pending.drain(..) {
                    ledger.confirmed.entry(tp).or_default().push(r);
                }
            }
            ["F"] => {
                ledger.failed_records += pending
                    .drain(..)
                    .map(|(_, r)| r.last - r.first + 1)
                    .sum::<i64>();
            }
            ["X" | "W" | "J", ..] => ledger.anomalies.push(line),
            _ => {}
        }
    }
    for (tp, r) in pending {
        ledger.trailing.entry(tp).or_default().push(r);
    }
    Ok(ledger)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trips_and_foreign_bytes_are_refused() {
        let p = encode_payload((3, 2), 41, 100);
        assert_eq!(p.len(), 100);
        assert_eq!(decode_payload(&p), Some(((3, 2), 41)));
        assert_eq!(decode_payload(b"not ours at all, not ours"), None);
    }

    #[test]
    fn ledger_separates_confirmed_failed_and_trailing_ranges() {
        let dir = std::env::temp_dir().join(format!("ledger-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("l.txt");
        let r = |first, last| Range { first, last };
        {
            let mut w = LedgerWriter::create(&path).unwrap();
            w.pending((0, 1), r(0, 9)).unwrap();
            w.outcome(true).unwrap();
            w.pending((0, 1), r(10, 14)).unwrap();
            w.outcome(false).unwrap();
            w.pending((0, 2), r(0, 3)).unwrap();
            w.flush().unwrap();
        }
        // A line cut short by a kill mid-write.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"P 0 2 4").unwrap();
        let l = read_ledger(&path).unwrap();
        assert_eq!(l.confirmed[&(0, 1)], vec![r(0, 9)]);
        assert_eq!(l.failed_records, 5);
        assert_eq!(l.trailing[&(0, 2)], vec![r(0, 3)]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
