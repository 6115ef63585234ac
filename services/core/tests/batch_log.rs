//! The aggregates topic's reader against a reference of the README's protocol: journey
//! services that crash before a batch's marker (the batch is sent again by the next owner,
//! under its claim and a new id), commit, lose committed records, say them again,
//! interleave partitions, and zombies whose partial of a batch that does not count arrives
//! after the one that does; the reader counts exactly the cells of the batches that
//! committed, each once.

use cxstream_core::batch_log::{BatchLog, Confirmed, Partial};
use cxstream_core::claims::Link;
use proptest::prelude::*;

/// What one partition sends, in order.
#[derive(Debug, Clone)]
enum Sent {
    Partial(Partial<i64>),
    Confirmed(Confirmed),
}

/// One batch: its attempts' cells (the last attempt commits), how its partial is cut into
/// chunks, whether a chunk is sent twice, whether its committed record is lost or sent
/// twice, whether an older committed record (an earlier owner's, read late) follows, and
/// whether a zombie's partial of the same batch arrives (0: no, 1: before its committed
/// record, 2: after it).
#[derive(Debug, Clone)]
struct Batch {
    attempts: Vec<Vec<i64>>,
    chunk_size: usize,
    repeat_chunk: bool,
    confirmation: u8,
    stale: bool,
    zombie: u8,
}

fn batch() -> impl Strategy<Value = Batch> {
    (
        prop::collection::vec(prop::collection::vec(-5i64..20, 0..6), 1..4),
        1usize..4,
        any::<bool>(),
        0u8..3,
        any::<bool>(),
        0u8..3,
    )
        .prop_map(
            |(attempts, chunk_size, repeat_chunk, confirmation, stale, zombie)| Batch {
                attempts,
                chunk_size,
                repeat_chunk,
                confirmation,
                stale,
                zombie,
            },
        )
}

/// The chain of an owner that claims at `seq` after the chain `chain`.
fn claimed(chain: &mut Vec<Link>, claim: u64, seq: u64) {
    if let Some(last) = chain.last_mut() {
        last.until = seq;
    }
    chain.push(Link {
        claim,
        from: seq,
        until: u64::MAX,
    });
}

/// What one partition sends for `batches` (then a crashed attempt of the next batch when
/// `trailing` holds cells), and the sum committed up to each sequence number.
fn play(batches: &[Batch], trailing: &Option<Vec<i64>>, partitions: u32) -> (Vec<Sent>, Vec<i64>) {
    let (mut out, mut prefix) = (Vec::new(), Vec::new());
    let mut next_id = 1u64;
    let mut last: Option<Confirmed> = None;
    let mut sum = 0;
    let mut claim = 1u64;
    let mut chain = Vec::new();
    claimed(&mut chain, claim, 0);
    let mut send_partials =
        |out: &mut Vec<Sent>, seq: u64, claim: u64, cells: &[i64], b: &Batch| -> u64 {
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
                    claim,
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
            id
        };
    for (seq, b) in batches.iter().enumerate() {
        let seq = seq as u64;
        for (i, cells) in b.attempts.iter().enumerate() {
            let id = send_partials(&mut out, seq, claim, cells, b);
            if i + 1 < b.attempts.len() {
                // Crashed before the marker; the restart claims the partition and names the
                // last committed batch before it sends this one again.
                claim += 1;
                claimed(&mut chain, claim, seq);
                if let Some(c) = &last {
                    out.push(Sent::Confirmed(Confirmed {
                        chain: chain.clone(),
                        ..c.clone()
                    }));
                }
                continue;
            }
            sum += cells.iter().sum::<i64>();
            let c = Confirmed {
                seq,
                batch_id: id,
                watermark: Some(seq as i64 * 1000),
                touchpoints_watermark: None,
                idle: false,
                partitions,
                chain: chain.clone(),
            };
            // The owner before (or one never in the chain), paused past its session,
            // formed the same batch: it does not count.
            let zombie = |out: &mut Vec<Sent>| {
                out.push(Sent::Partial(Partial {
                    seq,
                    claim: claim - 1,
                    batch_id: u64::MAX - seq,
                    chunk: 0,
                    chunks: 1,
                    cells: vec![1_000],
                }))
            };
            if b.zombie == 1 {
                zombie(&mut out);
            }
            // 0: lost (a crash after the marker), 1: sent, 2: sent twice.
            for _ in 0..b.confirmation {
                out.push(Sent::Confirmed(c.clone()));
            }
            if b.zombie == 2 {
                zombie(&mut out);
            }
            if b.stale {
                if let Some(old) = &last {
                    out.push(Sent::Confirmed(old.clone()));
                }
            }
            last = Some(c);
        }
        prefix.push(sum);
    }
    if let (Some(cells), Some(b)) = (trailing, batches.last()) {
        send_partials(&mut out, batches.len() as u64, claim, cells, b);
    }
    // Said again every 10 s and after a restart: the latest one arrives in the end.
    if let Some(c) = last {
        out.push(Sent::Confirmed(c));
    }
    (out, prefix)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// After every committed record the reader has counted exactly the committed batches
    /// up to the highest one confirmed, never an attempt that crashed, and in the end all.
    #[test]
    fn the_reader_counts_exactly_the_committed_batches(
        a in prop::collection::vec(batch(), 1..8),
        b in prop::collection::vec(batch(), 1..8),
        trailing in prop::option::of(prop::collection::vec(1i64..20, 1..4)),
        interleave in prop::collection::vec(any::<bool>(), 0..200),
    ) {
        let plays = [play(&a, &trailing, 2), play(&b, &None, 2)];
        let mut log = BatchLog::default();
        let mut at = [0usize; 2];
        let mut counted = [0i64; 2];
        let mut confirmed: [Option<u64>; 2] = [None; 2];
        let mut pick = interleave.into_iter();
        while at[0] < plays[0].0.len() || at[1] < plays[1].0.len() {
            let p = if at[1] >= plays[1].0.len()
                || (at[0] < plays[0].0.len() && pick.next().unwrap_or(true))
            {
                0
            } else {
                1
            };
            let record = &plays[p].0[at[p]];
            at[p] += 1;
            match record {
                Sent::Partial(x) => log.on_partial(p as u32, x.clone()),
                Sent::Confirmed(c) => {
                    let (released, errors) = log.on_confirmed(p as u32, c.clone());
                    prop_assert!(errors.is_empty(), "{errors:?}");
                    counted[p] += released.iter().flat_map(|r| &r.cells).sum::<i64>();
                    confirmed[p] = confirmed[p].max(Some(c.seq));
                    let upto = confirmed[p].map_or(0, |s| plays[p].1[s as usize]);
                    prop_assert_eq!(counted[p], upto, "partition {}", p);
                }
            }
        }
        prop_assert_eq!(counted[0], *plays[0].1.last().unwrap_or(&0));
        prop_assert_eq!(counted[1], *plays[1].1.last().unwrap_or(&0));
        let until = ((a.len() - 1).min(b.len() - 1) as i64) * 1000;
        prop_assert_eq!(log.known_until(), Some(until));
    }
}
