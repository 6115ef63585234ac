//! Identity stitching across three partitions, against the documented rule (the module
//! `cxstream_core::identity`): a device's anonymous touchpoint dated at or after its first identification −
//! the identity window counts exactly as if it had carried the customer id; any other counts
//! as the visitor's own journey, keyed `anon:` + anonymous id. So the partitions' counts,
//! however they interleave reading their records with reading the identifications, stitched
//! touchpoints and watermarks sent to them, equal one
//! processor's over the events with that rule's customer ids written in (the processor alone
//! is checked against the reference model in `processor.rs`).
//!
//! The harness plays the service's protocol: each partition reads two logs, its records and
//! an internal one; on a commit it sends its identifications and claimed touchpoints, writes
//! its batch (with its journeys and held touchpoints), then publishes its watermark to every
//! partition's internal log; a partition releases held touchpoints by the lowest watermark
//! published by all. A crash after sending but before writing restarts the partition from
//! its last commit (its outputs were sent and are sent again); every partition republishes
//! its watermark now and then, which a restarted one needs.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use cxstream_core::erasure::{fingerprint, Erasures};
use cxstream_core::identity::{Identification, IdentityPolicy, Visitor};
use cxstream_core::journey::Journey;
use cxstream_core::metrics::StepCounts;
use cxstream_core::processor::{AggKey, StepKey, Written};
use cxstream_core::{
    ClockState, Counts, EventClock, EventTimePolicy, Input, JourneyMap, PartitionProcessor,
    TouchpointEvent,
};
use proptest::prelude::*;

const MAP: &str = "journey: shop
stages:
  - {name: awareness, budget: 6h, target_conversion: 0.4}
  - {name: consideration, budget: 2h, target_conversion: 0.4}
  - {name: conversion, budget: 2d, target_conversion: 0.3}
channels: [web, app]
segments: [new, vip]
touchpoints:
  - {name: ad_click, stage: awareness, channels: [web]}
  - {name: product_view, stage: consideration, channels: [web, app]}
  - {name: purchase, stage: conversion, channels: [web, app]}
steps:
  - {name: click_to_view, from: [ad_click], to: [product_view], budget: 30m, target_conversion: 0.5}
";
const NAMES: [&str; 4] = ["ad_click", "product_view", "purchase", "help_search"];
const HOUR: i64 = 3_600_000;
const WINDOW: i64 = 24 * HOUR;
/// Arrival is at most this much out of event-time order.
const JITTER: i64 = 2 * HOUR;
const T0: i64 = 1_700_000_000_000;
const PARTITIONS: usize = 3;

fn map() -> Arc<JourneyMap> {
    Arc::new(JourneyMap::from_yaml("shop.yaml", MAP).expect("valid map"))
}

fn policy() -> EventTimePolicy {
    EventTimePolicy {
        allowed_lateness_ms: i64::MAX / 4,
        max_future_ms: i64::MAX / 4,
    }
}

fn tp(
    id: String,
    customer: Option<&str>,
    device: Option<&str>,
    t: i64,
    name: &str,
) -> TouchpointEvent {
    TouchpointEvent {
        event_id: id,
        customer_id: customer.map(Into::into),
        anonymous_id: device.map(Into::into),
        event_time: t,
        touchpoint: name.into(),
        channel: "web".into(),
        stage: None,
        segment: None,
        outcome: None,
        attributes: HashMap::new(),
    }
}

/// The partition of a key: its own hash, not the producer's nor the service's.
fn partition(key: &str) -> usize {
    key.bytes().map(usize::from).sum::<usize>() % PARTITIONS
}

/// One device (and its customer, `c` + half its number: a customer may have two devices): anonymous touchpoints, maybe
/// identifications (touchpoints with both ids), the customer's own touchpoints after.
/// Anonymous touchpoints are dated either well inside or well outside the window before the
/// first identification, so that the arrival jitter never decides (the documented rule's
/// watermark condition holds whenever the time condition does).
#[derive(Debug, Clone)]
struct Device {
    n: u8,
    /// Offsets from the first identification (which is at 0), in hours.
    anonymous: Vec<(i64, u8)>,
    identified: Option<Vec<(i64, u8)>>,
    customer_after: Vec<(i64, u8)>,
}

fn device(n: u8) -> impl Strategy<Value = Device> {
    // −100..−27 h: before the window (claimed by nobody); −21..0 h: inside; 0..40 h: after.
    let offset = prop_oneof![-100i64..-27, -21i64..0, 0i64..40];
    (
        prop::collection::vec((offset, 0u8..4), 1..6),
        prop::option::of(prop::collection::vec((0i64..30, 0u8..4), 1..3)),
        prop::collection::vec((1i64..50, 0u8..4), 0..4),
    )
        .prop_map(move |(anonymous, identified, customer_after)| Device {
            n,
            anonymous,
            identified: identified.map(|mut v| {
                // The first identification is at 0 by construction.
                v[0].0 = 0;
                v
            }),
            customer_after,
        })
}

/// Every record of the devices, and the same events with the rule's customer ids.
fn records(devices: &[Device]) -> (Vec<TouchpointEvent>, Vec<TouchpointEvent>) {
    let (mut sent, mut expected) = (Vec::new(), Vec::new());
    for d in devices {
        let (dev, cust) = (format!("d{}", d.n), format!("c{}", d.n / 2));
        // Minutes apart per device so that no two of its touchpoints tie.
        let base = T0 + 200 * HOUR + i64::from(d.n) * 7 * 60_000;
        let at = |h: i64, k: usize| base + h * HOUR + k as i64 * 60_000;
        for (k, (h, name)) in d.anonymous.iter().enumerate() {
            let t = at(*h, k);
            let e = tp(
                format!("{dev}-a{k}"),
                None,
                Some(&dev),
                t,
                NAMES[usize::from(*name)],
            );
            let claimed = d.identified.is_some() && *h >= -WINDOW / HOUR;
            let owner = if claimed {
                cust.clone()
            } else {
                format!("anon:{dev}")
            };
            let mut x = e.clone();
            x.customer_id = Some(owner);
            sent.push(e);
            expected.push(x);
        }
        for (k, (h, name)) in d.identified.iter().flatten().enumerate() {
            let e = tp(
                format!("{dev}-i{k}"),
                Some(&cust),
                Some(&dev),
                at(*h, k) + 30_000,
                NAMES[usize::from(*name)],
            );
            expected.push(e.clone());
            sent.push(e);
        }
        for (k, (h, name)) in d.customer_after.iter().enumerate() {
            let e = tp(
                format!("{dev}-c{k}"),
                Some(&cust),
                None,
                at(*h, k) + 45_000,
                NAMES[usize::from(*name)],
            );
            expected.push(e.clone());
            sent.push(e);
        }
    }
    (sent, expected)
}

#[derive(Debug, Clone)]
enum Item {
    Record(TouchpointEvent),
    /// A claimed touchpoint, customer id set, from the anonymous id's partition.
    Stitched(TouchpointEvent),
    Identification(Identification),
    Watermark(usize, Option<i64>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Cut {
    None,
    Commit,
    /// Outputs sent, the batch not written: restart from the last commit.
    CrashBeforeWrite,
}

#[derive(Default)]
struct Totals {
    agg: BTreeMap<AggKey, Counts>,
    steps: BTreeMap<StepKey, StepCounts>,
}

impl Totals {
    fn nonzero(mut self) -> (BTreeMap<AggKey, Counts>, BTreeMap<StepKey, StepCounts>) {
        self.agg.retain(|_, c| !c.is_zero());
        self.steps.retain(|_, c| !c.is_zero());
        (self.agg, self.steps)
    }
}

/// What one partition committed: its state and read positions.
#[derive(Default)]
struct Committed {
    journeys: HashMap<Arc<str>, Arc<Journey>>,
    visitors: HashMap<String, Visitor>,
    clock: ClockState,
    /// Read positions of (records, internal).
    at: [usize; 2],
}

struct Partition {
    processor: PartitionProcessor,
    logs: [Vec<Item>; 2],
    at: [usize; 2],
    committed: Committed,
    heard: [Option<Option<i64>>; PARTITIONS],
    /// The last watermark it published (`None`: none yet).
    published: Option<Option<i64>>,
    /// The erasures it knows, read again on a restart before its state, as the service does.
    erasures: Arc<Erasures>,
}

fn identity() -> IdentityPolicy {
    IdentityPolicy { window_ms: WINDOW }
}

fn new_processor() -> PartitionProcessor {
    let mut p = PartitionProcessor::new(map(), policy()).with_identity(identity());
    p.set_idle(Input::Answers, true);
    p
}

impl Partition {
    fn restart(&mut self) {
        let c = &self.committed;
        let clock = EventClock::resumed(policy(), c.clock);
        let mut p = PartitionProcessor::resumed(map(), clock).with_identity(identity());
        p.set_erasures(self.erasures.clone());
        for (k, j) in &c.journeys {
            p.restore(k.to_string(), (**j).clone(), Written::WithOutcomes);
        }
        for (d, v) in &c.visitors {
            p.restore_visitor(d.clone(), v.clone());
        }
        p.set_idle(Input::Answers, true);
        self.processor = p;
        self.at = c.at;
        self.heard = [None; PARTITIONS];
    }

    fn read(&mut self, item: Item) {
        let p = &mut self.processor;
        match item {
            Item::Record(e) => {
                let written = Some(e.event_time);
                p.on_touchpoint(e, 0, written).unwrap();
            }
            Item::Stitched(e) => p.on_stitched(e, 0).unwrap(),
            Item::Identification(id) => p.on_identification(id),
            Item::Watermark(from, wm) => {
                self.heard[from] = Some(wm);
                let lowest = self
                    .heard
                    .iter()
                    .try_fold(i64::MAX, |lo, h| Some(lo.min((*h)??)));
                if let Some(iw) = lowest {
                    p.release_identities(iw);
                }
            }
        }
    }

    /// Sends the batch's outputs, then (unless it crashes first) writes it and publishes
    /// the watermark.
    fn commit(&mut self, me: usize, totals: &mut Totals, crash: bool) -> Vec<(usize, Item)> {
        let b = self.processor.take_batch();
        let mut out: Vec<(usize, Item)> = Vec::new();
        for mut id in b.identifications {
            // The service says which partition identified (the customer's).
            id.partition = Some(me as u32);
            out.push((partition(&id.anonymous_id), Item::Identification(id)));
        }
        for f in b.forwarded {
            let key = partition(f.routed.event.customer_id.as_deref().unwrap());
            let to = f.partition.map_or(key, |p| p as usize);
            out.push((to, Item::Stitched(f.routed.event)));
        }
        if crash {
            self.restart();
            return out;
        }
        for (k, c) in b.aggregates {
            totals.agg.entry(k).or_default().merge(&c);
        }
        for (k, c) in b.step_aggregates {
            totals.steps.entry(k).or_default().merge(&c);
        }
        for (k, j) in b.journeys {
            if let Some(device) = k.strip_prefix("anon:") {
                match b.visitors.get(&k) {
                    Some(v) => self.committed.visitors.insert(device.to_owned(), v.clone()),
                    None => self.committed.visitors.remove(device),
                };
            }
            self.committed.journeys.insert(k, j);
        }
        self.committed.clock = self.processor.clock().state();
        self.committed.at = self.at;
        let wm = self.processor.watermark_ms();
        if self.published != Some(wm) {
            self.published = Some(wm);
            out.extend((0..PARTITIONS).map(|to| (to, Item::Watermark(me, wm))));
        }
        out
    }
}

/// A customer erased at a step of the run (0: known before anything is read, a replay).
#[derive(Debug, Clone)]
struct Erase {
    customer: String,
    at_step: usize,
}

/// Plays the records through the partitions; `picks` chooses which log is read next,
/// `cuts` when a partition commits or crashes. With `erase`, every partition learns of the
/// erasure at its step, and the run ends with a commit on each after it.
fn stitched_run(
    sent: &[TouchpointEvent],
    jitter: &[i64],
    picks: &[u8],
    cuts: &[Cut],
    erase: Option<&Erase>,
) -> (Totals, Vec<Partition>) {
    let mut arrival: Vec<(i64, usize)> = sent
        .iter()
        .enumerate()
        .map(|(i, e)| (e.event_time + jitter[i % jitter.len()], i))
        .collect();
    arrival.sort();
    let mut parts: Vec<Partition> = (0..PARTITIONS)
        .map(|_| Partition {
            processor: new_processor(),
            logs: [Vec::new(), Vec::new()],
            at: [0, 0],
            committed: Committed::default(),
            heard: [None; PARTITIONS],
            published: None,
            erasures: Arc::default(),
        })
        .collect();
    let erased: Arc<Erasures> = Arc::new(erase.map_or_else(Erasures::default, |e| {
        let mut set = Erasures::default();
        set.insert(&fingerprint(&e.customer)).unwrap();
        set
    }));
    let learn = |parts: &mut Vec<Partition>, step: usize| {
        let due = erase.is_some_and(|e| e.at_step <= step);
        if due && parts[0].erasures.is_empty() {
            for part in parts.iter_mut() {
                part.erasures = erased.clone();
                part.processor.set_erasures(erased.clone());
            }
        }
    };
    for (_, i) in arrival {
        let e = &sent[i];
        let key = e
            .customer_id
            .as_deref()
            .or(e.anonymous_id.as_deref())
            .unwrap();
        let log = &mut parts[partition(key)].logs[0];
        log.push(Item::Record(e.clone()));
        // A producer's retry: the same record again, later.
        if i % 5 == 0 {
            log.push(Item::Record(e.clone()));
        }
    }
    // The end of the inputs: a far-future touchpoint on each partition moves every
    // watermark past everything.
    for (n, part) in parts.iter_mut().enumerate() {
        let end = tp(
            format!("end{n}"),
            Some(&format!("zz{n}")),
            None,
            T0 + 10_000 * HOUR,
            "ad_click",
        );
        part.logs[0].push(Item::Record(end));
    }
    let mut totals = Totals::default();
    let (mut step, mut crashes) = (0usize, 0);
    loop {
        learn(&mut parts, step);
        let pending: Vec<(usize, usize)> = (0..PARTITIONS)
            .flat_map(|p| [(p, 0), (p, 1)])
            .filter(|&(p, l)| parts[p].at[l] < parts[p].logs[l].len())
            .collect();
        if pending.is_empty() {
            break;
        }
        let (me, log) = pending[usize::from(picks[step % picks.len()]) % pending.len()];
        let mut cut = cuts[step % cuts.len()];
        step += 1;
        let part = &mut parts[me];
        let item = part.logs[log][part.at[log]].clone();
        part.at[log] += 1;
        part.read(item);
        let mut out = Vec::new();
        let last = part.at.iter().zip(&part.logs).all(|(a, l)| *a == l.len());
        if cut == Cut::CrashBeforeWrite && crashes >= 4 || cut == Cut::None && last {
            cut = Cut::Commit;
        }
        if cut != Cut::None {
            let crash = cut == Cut::CrashBeforeWrite;
            crashes += usize::from(crash);
            out.extend(part.commit(me, &mut totals, crash));
            if crash {
                // Every partition republishes its watermark now and then.
                for r in 0..PARTITIONS {
                    if let Some(wm) = parts[r].published {
                        parts[me].logs[1].push(Item::Watermark(r, wm));
                    }
                }
            }
        }
        for (to, item) in out {
            parts[to].logs[1].push(item);
        }
    }
    if erase.is_some() {
        // Learnt at the end if not before; committed, as the erasure's marker waits for.
        learn(&mut parts, usize::MAX);
        for (me, part) in parts.iter_mut().enumerate() {
            assert!(part
                .commit(me, &mut totals, false)
                .iter()
                .all(|(_, i)| matches!(i, Item::Watermark(..))));
        }
    }
    for part in &parts {
        assert_eq!(
            part.processor.held_touchpoints(),
            0,
            "everything held was released or claimed"
        );
    }
    (totals, parts)
}

fn baseline(expected: &[TouchpointEvent]) -> Totals {
    let mut p = PartitionProcessor::new(map(), policy());
    p.set_idle(Input::Answers, true);
    let mut events = expected.to_vec();
    for n in 0..PARTITIONS {
        events.push(tp(
            format!("end{n}"),
            Some(&format!("zz{n}")),
            None,
            T0 + 10_000 * HOUR,
            "ad_click",
        ));
    }
    events.sort_by_key(|e| e.event_time);
    for e in events {
        p.on_touchpoint(e, 0, None).unwrap();
    }
    let b = p.take_batch();
    Totals {
        agg: b.aggregates.into_iter().collect(),
        steps: b.step_aggregates.into_iter().collect(),
    }
}

fn cuts() -> impl Strategy<Value = Vec<Cut>> {
    prop::collection::vec(
        prop_oneof![
            10 => Just(Cut::None),
            4 => Just(Cut::Commit),
            1 => Just(Cut::CrashBeforeWrite),
        ],
        1..40,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn stitched_partitions_count_as_if_the_customer_id_had_been_sent(
        devices in (1u8..6).prop_flat_map(|n| (0..n).map(device).collect::<Vec<_>>()),
        jitter in prop::collection::vec(0..JITTER, 1..20),
        picks in prop::collection::vec(any::<u8>(), 1..30),
        cuts in cuts(),
    ) {
        let (sent, expected) = records(&devices);
        let got = stitched_run(&sent, &jitter, &picks, &cuts, None).0.nonzero();
        prop_assert_eq!(got, baseline(&expected).nonzero());
    }

    /// A customer erased at any point — or before anything is read, as in a replay of the
    /// inputs — goes on counting as before (anonymously): the devices it identified stay
    /// stitched to the pseudonym, on the customer's partition, and no device's committed
    /// state names the customer.
    #[test]
    fn an_erased_customer_stitches_as_before_live_and_in_a_replay(
        devices in (1u8..6).prop_flat_map(|n| (0..n).map(device).collect::<Vec<_>>()),
        jitter in prop::collection::vec(0..JITTER, 1..20),
        picks in prop::collection::vec(any::<u8>(), 1..30),
        cuts in cuts(),
        who in any::<prop::sample::Index>(),
        at_step in 0usize..200,
    ) {
        let (sent, expected) = records(&devices);
        let customer = format!("c{}", devices[who.index(devices.len())].n / 2);
        let want = baseline(&expected).nonzero();
        for at_step in [at_step, 0] {
            let erase = Erase { customer: customer.clone(), at_step };
            let (totals, parts) = stitched_run(&sent, &jitter, &picks, &cuts, Some(&erase));
            prop_assert_eq!(totals.nonzero(), want.clone(), "erased at step {}", at_step);
            for part in &parts {
                // (Journeys stored under the id are deleted by `cxstream erase`; the devices'
                // rows, keyed by device, must stop naming the customer by themselves.)
                for v in part.committed.visitors.values() {
                    prop_assert!(v.claim.as_ref().is_none_or(|cl| cl.customer_id != customer));
                }
            }
        }
    }
}
