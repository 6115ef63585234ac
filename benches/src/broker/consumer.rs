//! A member of the harness's consumer group, run as its own process so that it can be
//! killed with SIGKILL or SIGTERM. It checks every record against the producer's payload,
//! writes what it read to its ledger before committing, commits on revocation, and on
//! SIGTERM commits and leaves the group.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

use super::ledger::{decode_payload, LedgerWriter, Range, Tp};

pub struct ConsumerArgs<'a> {
    pub brokers: &'a str,
    pub group: &'a str,
    pub topics: &'a [String],
    pub ledger: &'a Path,
    pub commit_every: Duration,
}

/// Ranges read since the last commit, per partition.
struct State {
    open: BTreeMap<Tp, Range>,
    /// Ranges ended by a jump in offsets, ledgered with the next commit.
    closed: Vec<(Tp, Range)>,
    ledger: LedgerWriter,
    topic_index: BTreeMap<String, u32>,
    topic_names: Vec<String>,
}

struct Ctx {
    state: Mutex<State>,
}

impl ClientContext for Ctx {}

impl ConsumerContext for Ctx {
    /// Commits what was read of the revoked partitions, so the next owner starts after it.
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let mut st = lock(&self.state);
            let revoked: Vec<Tp> = tpl
                .elements()
                .iter()
                .filter_map(|e| Some((*st.topic_index.get(e.topic())?, e.partition())))
                .collect();
            commit_open(&mut st, consumer, |tp| revoked.contains(tp));
        }
    }
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Ledgers the ranges of the partitions selected by `which`, commits the offsets after
/// them, and records the outcome. Returns whether the commit succeeded.
fn commit_open(st: &mut State, consumer: &BaseConsumer<Ctx>, which: impl Fn(&Tp) -> bool) -> bool {
    let (mut chosen, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut st.closed)
        .into_iter()
        .partition(|(tp, _)| which(tp));
    st.closed = kept;
    let open: Vec<Tp> = st.open.keys().copied().filter(|tp| which(tp)).collect();
    chosen.extend(
        open.iter()
            .filter_map(|tp| Some((*tp, st.open.remove(tp)?))),
    );
    if chosen.is_empty() {
        return true;
    }
    let mut next: BTreeMap<Tp, i64> = BTreeMap::new();
    for (tp, r) in &chosen {
        let _ = st.ledger.pending(*tp, *r);
        let n = next.entry(*tp).or_insert(0);
        *n = (*n).max(r.last + 1);
    }
    let _ = st.ledger.flush();
    let mut tpl = TopicPartitionList::new();
    for ((t, p), offset) in next {
        if let Some(name) = st.topic_names.get(t as usize) {
            let _ = tpl.add_partition_offset(name, p, Offset::Offset(offset));
        }
    }
    let ok = consumer.commit(&tpl, CommitMode::Sync).is_ok();
    let _ = st.ledger.outcome(ok);
    ok
}

/// Checks one record and extends the partition's open range.
fn record(st: &mut State, tp: Tp, offset: i64, payload: &[u8]) {
    match decode_payload(payload) {
        Some((ptp, _)) if ptp != tp => {
            let _ = st
                .ledger
                .anomaly(&format!("W {} {} {offset} {} {}", tp.0, tp.1, ptp.0, ptp.1));
        }
        Some((_, seq)) if seq != offset as u64 => {
            let _ = st
                .ledger
                .anomaly(&format!("X {} {} {offset} {seq}", tp.0, tp.1));
        }
        None => {
            let _ = st
                .ledger
                .anomaly(&format!("W {} {} {offset} ? ?", tp.0, tp.1));
        }
        Some(_) => {}
    }
    match st.open.get_mut(&tp) {
        Some(r) if offset == r.last + 1 => r.last = offset,
        Some(r) => {
            // A jump within one assignment: forwards means the broker skipped records (the
            // verifier sees the gap), backwards that it delivered records again.
            let _ = st
                .ledger
                .anomaly(&format!("J {} {} {} {offset}", tp.0, tp.1, r.last + 1));
            let ended = std::mem::replace(
                r,
                Range {
                    first: offset,
                    last: offset,
                },
            );
            st.closed.push((tp, ended));
        }
        None => {
            st.open.insert(
                tp,
                Range {
                    first: offset,
                    last: offset,
                },
            );
        }
    }
}

pub fn run(args: &ConsumerArgs<'_>, stop: &Arc<AtomicBool>) -> Result<(), String> {
    let topic_index = args
        .topics
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let state = State {
        open: BTreeMap::new(),
        closed: Vec::new(),
        topic_names: args.topics.to_vec(),
        ledger: LedgerWriter::create(args.ledger).map_err(|e| e.to_string())?,
        topic_index,
    };
    let mut config = ClientConfig::new();
    if let Ok(debug) = std::env::var("CX_HARNESS_KAFKA_DEBUG") {
        config.set("debug", debug);
    }
    let consumer: BaseConsumer<Ctx> = config
        .set("bootstrap.servers", args.brokers)
        .set("group.id", args.group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set("fetch.queue.backoff.ms", "0")
        .set("partition.assignment.strategy", "range")
        .create_with_context(Ctx {
            state: Mutex::new(state),
        })
        .map_err(|e| e.to_string())?;
    let topics: Vec<&str> = args.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics).map_err(|e| e.to_string())?;
    let mut last_commit = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            let mut st = lock(&consumer.context().state);
            if let Some(&t) = st.topic_index.get(m.topic()) {
                record(
                    &mut st,
                    (t, m.partition()),
                    m.offset(),
                    m.payload().unwrap_or(&[]),
                );
            }
        }
        if last_commit.elapsed() >= args.commit_every {
            let mut st = lock(&consumer.context().state);
            commit_open(&mut st, &consumer, |_| true);
            last_commit = Instant::now();
        }
    }
    let mut st = lock(&consumer.context().state);
    commit_open(&mut st, &consumer, |_| true);
    drop(st);
    // Leaving the group lets the others take over at once instead of after the session timeout.
    consumer.unsubscribe();
    let _ = consumer.poll(Duration::from_millis(100));
    Ok(())
}
