//! The aggregates topic's reader against a reference of the README's protocol: journey
//! services that crash before a batch's marker (the batch is sent again under a new id),
//! commit, lose committed records, say them again and interleave partitions; the reader
//! counts exactly the cells of the batches that committed, each once.

use cxstream_core::batch_log::{BatchLog, Confirmed, Partial};
use proptest::prelude::*;

/// What one partition sends, in order.
#[derive(Debug, Clone)]
enum Sent {
    Partial(Partial<i64>),
    Confirmed(Confirmed),
}

/// One batch: its attempts' cells (the last attempt commits), how its partial is cut into
/// chunks, whether a chunk is sent twice, and whether its committed record is lost or sent
/// twice.
#[derive(Debug, Clone)]
struct Batch {
    attempts: Vec<Vec<i64>>,
    chunk_size: usize,
    repeat_chunk: bool,
    confirmation: u8,
}

fn batch() -> impl Strategy<Value = Batch> {
    (
        prop::collection::vec(prop::collection::vec(-5i64..20, 0..6), 1..4),
        1usize..4,
        any::<bool>(),
        0u8..3,
    )
        .prop_map(|(attempts, chunk_size, repeat_chunk, confirmation)| Batch {
            attempts,
            chunk_size,
            repeat_chunk,
            confirmation,
        })
}

/// The records one partition sends for `batches`, and the sum of what committed.
fn play(batches: &[Batch], partitions: u32) -> (Vec<Sent>, i64) {
    let (mut out, mut committed) = (Vec::new(), 0);
    let mut next_id = 1u64;
    let mut last = None;
    for (seq, b) in batches.iter().enumerate() {
        let seq = seq as u64;
        for (i, cells) in b.attempts.iter().enumerate() {
            let id = next_id;
            next_id += 1;
            let parts: Vec<&[i64]> = if cells.is_empty() {
                vec![&[]]
            } else {
                cells.chunks(b.chunk_size).collect()
            };
            for (k, part) in parts.iter().enumerate() {
                let p = Partial {
                    seq,
                    batch_id: id,
                    chunk: k as u32,
                    chunks: parts.len() as u32,
                    cells: part.to_vec(),
                };
                if b.repeat_chunk {
                    out.push(Sent::Partial(p.clone()));
                }
                out.push(Sent::Partial(p));
            }
            if i + 1 == b.attempts.len() {
                committed += cells.iter().sum::<i64>();
                let c = Confirmed {
                    seq,
                    batch_id: id,
                    watermark: Some(seq as i64 * 1000),
                    idle: false,
                    partitions,
                };
                last = Some(c);
                // 0: lost (a crash after the marker), 1: sent, 2: sent twice.
                for _ in 0..b.confirmation {
                    out.push(Sent::Confirmed(c));
                }
            }
        }
    }
    // Said again every 10 s and after a restart: the latest one arrives in the end.
    if let Some(c) = last {
        out.push(Sent::Confirmed(c));
    }
    (out, committed)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn the_reader_counts_exactly_the_committed_batches(
        a in prop::collection::vec(batch(), 1..8),
        b in prop::collection::vec(batch(), 1..8),
        interleave in prop::collection::vec(any::<bool>(), 0..200),
    ) {
        let (sent_a, sum_a) = play(&a, 2);
        let (sent_b, sum_b) = play(&b, 2);
        let mut log = BatchLog::default();
        let (mut ia, mut ib, mut total) = (0, 0, 0);
        let mut pick = interleave.into_iter();
        while ia < sent_a.len() || ib < sent_b.len() {
            let from_a = ib >= sent_b.len() || (ia < sent_a.len() && pick.next().unwrap_or(true));
            let (partition, record) = if from_a {
                ia += 1;
                (0, &sent_a[ia - 1])
            } else {
                ib += 1;
                (1, &sent_b[ib - 1])
            };
            match record {
                Sent::Partial(p) => log.on_partial(partition, p.clone()),
                Sent::Confirmed(c) => {
                    let (released, errors) = log.on_confirmed(partition, *c);
                    prop_assert!(errors.is_empty(), "{errors:?}");
                    total += released.iter().flat_map(|r| &r.cells).sum::<i64>();
                }
            }
        }
        prop_assert_eq!(total, sum_a + sum_b);
        let until = ((a.len() - 1).min(b.len() - 1) as i64) * 1000;
        prop_assert_eq!(log.known_until(), Some(until));
    }
}
