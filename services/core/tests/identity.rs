//! Identity stitching across two partitions, against the documented rule (the module
//! `cxstream_core::identity`): a device's anonymous touchpoint dated at or after its first identification −
//! the identity window counts exactly as if it had carried the customer id; any other counts
//! as the visitor's own journey, keyed `anon:` + anonymous id. So the two partitions' counts,
//! however they interleave reading their records with reading the identifications, stitched
//! touchpoints and watermarks sent to them, equal one
//! processor's over the events with that rule's customer ids written in (the processor alone
//! is checked against the reference model in `processor.rs`).
//!
//! The harness plays the service's protocol: each partition reads two queues, its records and
//! an internal one; on a commit it sends its identifications, then publishes its watermark,
//! to every partition's internal queue; a partition releases held touchpoints by the lowest
//! watermark published by all.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use cxstream_core::identity::{Identification, IdentityPolicy, IdentityResolver, Route};
use cxstream_core::metrics::StepCounts;
use cxstream_core::processor::{AggKey, StepKey};
use cxstream_core::{
    Counts, EventTimePolicy, Input, JourneyMap, PartitionProcessor, TouchpointEvent,
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
const PARTITIONS: usize = 2;

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

#[derive(Default)]
struct Totals {
    agg: BTreeMap<AggKey, Counts>,
    steps: BTreeMap<StepKey, StepCounts>,
}

impl Totals {
    fn add(&mut self, p: &mut PartitionProcessor) {
        let b = p.take_batch();
        for (k, c) in b.aggregates {
            self.agg.entry(k).or_default().merge(&c);
        }
        for (k, c) in b.step_aggregates {
            self.steps.entry(k).or_default().merge(&c);
        }
    }

    fn nonzero(mut self) -> (BTreeMap<AggKey, Counts>, BTreeMap<StepKey, StepCounts>) {
        self.agg.retain(|_, c| !c.is_zero());
        self.steps.retain(|_, c| !c.is_zero());
        (self.agg, self.steps)
    }
}

struct Partition {
    processor: PartitionProcessor,
    resolver: IdentityResolver,
    records: VecDeque<Item>,
    internal: VecDeque<Item>,
    heard: [Option<Option<i64>>; PARTITIONS],
    /// The last watermark it published (`None`: none yet).
    published: Option<Option<i64>>,
}

fn new_processor() -> PartitionProcessor {
    let mut p = PartitionProcessor::new(map(), policy());
    p.set_idle(Input::Answers, true);
    p
}

/// Plays the records through two partitions; `picks` chooses which partition takes its next
/// item, `commits` when one commits (sends identifications, then its watermark).
fn stitched_run(
    sent: &[TouchpointEvent],
    jitter: &[i64],
    picks: &[u8],
    commits: &[bool],
) -> Totals {
    let mut arrival: Vec<(i64, usize)> = sent
        .iter()
        .enumerate()
        .map(|(i, e)| (e.event_time + jitter[i % jitter.len()], i))
        .collect();
    arrival.sort();
    let mut parts: Vec<Partition> = (0..PARTITIONS)
        .map(|_| Partition {
            processor: new_processor(),
            resolver: IdentityResolver::new(IdentityPolicy { window_ms: WINDOW }),
            records: VecDeque::new(),
            internal: VecDeque::new(),
            heard: [None; PARTITIONS],
            published: None,
        })
        .collect();
    for (_, i) in arrival {
        let e = &sent[i];
        let key = e
            .customer_id
            .as_deref()
            .or(e.anonymous_id.as_deref())
            .unwrap();
        parts[partition(key)]
            .records
            .push_back(Item::Record(e.clone()));
        // A producer's retry: the same record again, later.
        if i % 5 == 0 {
            parts[partition(key)]
                .records
                .push_back(Item::Record(e.clone()));
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
        part.records.push_back(Item::Record(end));
    }
    let mut totals = Totals::default();
    let mut step = 0usize;
    loop {
        // (partition, which queue) with something to read.
        let pending: Vec<(usize, bool)> = (0..PARTITIONS)
            .flat_map(|p| [(p, false), (p, true)])
            .filter(|(p, internal)| {
                let part = &parts[*p];
                !if *internal {
                    &part.internal
                } else {
                    &part.records
                }
                .is_empty()
            })
            .collect();
        if pending.is_empty() {
            break;
        }
        let (me, internal) = pending[usize::from(picks[step % picks.len()]) % pending.len()];
        let last = parts[me].records.len() + parts[me].internal.len() == 1;
        let commit = commits[step % commits.len()] || last;
        step += 1;
        let queue = if internal {
            &mut parts[me].internal
        } else {
            &mut parts[me].records
        };
        let item = queue.pop_front().unwrap();
        let mut out: Vec<(usize, Item)> = Vec::new();
        let part = &mut parts[me];
        match item {
            Item::Record(e) => {
                part.processor.validate_touchpoint(&e).unwrap();
                let written = Some(e.event_time);
                match part
                    .resolver
                    .route(e, 0, part.processor.clock(), written)
                    .unwrap()
                {
                    Route::Apply(e) => part.processor.on_touchpoint(e, 0, written).unwrap(),
                    Route::Held => {}
                    Route::Forward(e) => {
                        let to = partition(e.customer_id.as_deref().unwrap());
                        out.push((to, Item::Stitched(e)));
                    }
                }
            }
            Item::Stitched(e) => part.processor.on_touchpoint(e, 0, None).unwrap(),
            Item::Identification(id) => {
                for r in part.resolver.on_identification(id) {
                    let to = partition(r.event.customer_id.as_deref().unwrap());
                    out.push((to, Item::Stitched(r.event)));
                }
            }
            Item::Watermark(from, wm) => {
                part.heard[from] = Some(wm);
                let lowest = part
                    .heard
                    .iter()
                    .try_fold(i64::MAX, |lo, h| Some(lo.min((*h)??)));
                if let Some(iw) = lowest {
                    for r in part.resolver.release(iw) {
                        part.processor.on_touchpoint(r.event, 0, None).unwrap();
                    }
                }
            }
        }
        if commit {
            for id in part.resolver.take_identifications() {
                out.push((partition(&id.anonymous_id), Item::Identification(id)));
            }
            totals.add(&mut part.processor);
            let wm = part.processor.watermark_ms();
            if part.published != Some(wm) {
                part.published = Some(wm);
                out.extend((0..PARTITIONS).map(|to| (to, Item::Watermark(me, wm))));
            }
        }
        for (to, item) in out {
            parts[to].internal.push_back(item);
        }
    }
    for part in &mut parts {
        assert_eq!(
            part.resolver.held(),
            0,
            "everything held was released or claimed"
        );
        totals.add(&mut part.processor);
    }
    totals
}

fn baseline(expected: &[TouchpointEvent]) -> Totals {
    let mut p = new_processor();
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
    let mut t = Totals::default();
    t.add(&mut p);
    t
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn stitched_partitions_count_as_if_the_customer_id_had_been_sent(
        devices in (1u8..6).prop_flat_map(|n| (0..n).map(device).collect::<Vec<_>>()),
        jitter in prop::collection::vec(0..JITTER, 1..20),
        picks in prop::collection::vec(any::<u8>(), 1..30),
        commits in prop::collection::vec(prop::bool::weighted(0.3), 1..30),
    ) {
        let (sent, expected) = records(&devices);
        let got = stitched_run(&sent, &jitter, &picks, &commits).nonzero();
        prop_assert_eq!(got, baseline(&expected).nonzero());
    }
}
