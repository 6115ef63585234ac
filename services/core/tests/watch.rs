//! The alerter's watch of a journey, fed as the alerter feeds it: two partitions' committed
//! batches, each cell with its partition's committed watermark before the batch, and the
//! lowest committed watermark after every batch read. Checked against the README's rules:
//! two weeks of clean traffic raise nothing; a step whose conversion breaks in one channel is
//! one incident (stable id, the channel among its slices) found within minutes of event
//! time and resolved after; a channel that stops sending is silence, not a drop; a cell a
//! partition sends after it committed past the cell's minute counts nowhere; and reading
//! the partitions in another order raises the very same alerts.

#![allow(clippy::unwrap_used)]

use cxstream_core::journey_map::NO_SEGMENT;
use cxstream_core::metrics::{Counts, StepCounts};
use cxstream_core::watch::{
    AlertChange, AlertKind, AlertState, Finality, JourneyWatch, Slice, Subject,
};
use cxstream_core::JourneyMap;

const MAP: &str = "journey: shop
stages:
  - name: browse
    budget: 7d
    target_conversion: 0.4
  - name: buy
    budget: 2d
    target_conversion: 0.3
channels: [web, app]
segments: [new, vip]
touchpoints:
  - name: cart
    stage: browse
    channels: [web, app]
  - name: paid
    stage: buy
    channels: [web, app]
steps:
  - name: checkout
    from: [cart]
    to: [paid]
    budget: 5m
    target_conversion: 0.6
";

/// 2026-11-02T00:00Z, a Monday, in epoch ms.
const START: i64 = 1_793_577_600_000;
const MINUTE: i64 = 60_000;
const DAY: i64 = 1440;
/// The break: app's checkout converts at a third of its rate for an hour, on day 15.
const BREAK: (i64, i64) = (15 * DAY + 600, 15 * DAY + 660);
/// App sends nothing for 40 minutes, on day 16 (two weeks of its hour behind it).
const SILENT: (i64, i64) = (16 * DAY + 500, 16 * DAY + 540);
const DAYS: i64 = 17;

/// A deterministic pseudo-random number in [0, 1) from a key (splitmix64).
fn noise(key: u64) -> f64 {
    let mut z = key.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
}

/// One cell as the journey service publishes it.
#[derive(Debug, Clone)]
enum Cell {
    Step {
        minute: i64,
        channel: u8,
        segment: u8,
        starts: i64,
        conversions: i64,
    },
    Traffic {
        minute: i64,
        channel: u8,
        touchpoints: i64,
    },
}

/// A committed batch of one partition: its cells and the watermark it committed.
#[derive(Debug, Clone)]
struct Batch {
    cells: Vec<Cell>,
    watermark: i64,
}

/// A minute's attempts in a channel and segment: how many started, how many converted.
fn attempts(m: i64, channel: u8, segment: u8) -> (i64, i64) {
    if channel == 1 && (SILENT.0..SILENT.1).contains(&m) {
        return (0, 0);
    }
    let key = (m as u64) << 8 | u64::from(channel) << 4 | u64::from(segment);
    let starts = 12 + (noise(key) * 8.0) as i64;
    let mut rate = if channel == 0 { 0.6 } else { 0.5 };
    if channel == 1 && (BREAK.0..BREAK.1).contains(&m) {
        rate /= 3.0;
    }
    let conversions = (1..=starts as u64)
        .filter(|i| noise(key ^ i << 40) < rate)
        .count() as i64;
    (starts, conversions)
}

/// Partition = segment. Attempts start in their minute's batch and convert two minutes
/// later (in that minute's batch, counted in the start's cell); partition 0 commits every
/// 3 minutes, partition 1 every 7, each with the minute it has read up to as watermark.
/// Partition 0 also sends, now and then, a cell for a minute it committed past long ago (a
/// late event the journey service applied within its lateness).
fn partition(segment: u8) -> Vec<Batch> {
    let every = if segment == 0 { 3 } else { 7 };
    let mut batches: Vec<Batch> = Vec::new();
    for m in 0..DAYS * DAY {
        let mut now = Vec::new();
        for channel in 0..2u8 {
            let (starts, _) = attempts(m, channel, segment);
            if starts > 0 {
                now.push(Cell::Step {
                    minute: m,
                    channel,
                    segment,
                    starts,
                    conversions: 0,
                });
                now.push(Cell::Traffic {
                    minute: m,
                    channel,
                    touchpoints: starts,
                });
            }
            let (_, conversions) = attempts(m - 2, channel, segment);
            if conversions > 0 {
                now.push(Cell::Step {
                    minute: m - 2,
                    channel,
                    segment,
                    starts: 0,
                    conversions,
                });
            }
        }
        if segment == 0 && m % 997 == 0 && m > 60 {
            // Late: an hour-old minute's attempts, after the partition committed past it.
            now.push(Cell::Step {
                minute: m - 60,
                channel: 1,
                segment,
                starts: 50,
                conversions: 0,
            });
        }
        match batches.last_mut() {
            Some(b) if m % every != 0 => {
                b.cells.extend(now);
                b.watermark = (m + 1) * MINUTE;
            }
            _ => batches.push(Batch {
                cells: now,
                watermark: (m + 1) * MINUTE,
            }),
        }
    }
    batches
}

/// One cell to the watch, from a partition whose counts were final up to `before`.
fn feed(watch: &mut JourneyWatch, cell: &Cell, before: impl Into<Finality>) {
    match *cell {
        Cell::Step {
            minute,
            channel,
            segment,
            starts,
            conversions,
        } => watch.add_step_cell(
            START + minute * MINUTE,
            0,
            channel,
            segment,
            // Converted two minutes after their start.
            &StepCounts {
                starts,
                conversions,
                within_2m: conversions,
                within_5m: conversions,
                within_10m: conversions,
                ..StepCounts::default()
            },
            before,
        ),
        Cell::Traffic {
            minute,
            channel,
            touchpoints,
        } => watch.add_minute_cell(
            START + minute * MINUTE,
            (0, None),
            (channel, NO_SEGMENT),
            &Counts {
                touchpoints,
                ..Counts::default()
            },
            before,
        ),
    }
}

/// Feeds the batches in the given order of partitions; returns every alert change.
fn run(parts: &[Vec<Batch>], order: &[usize]) -> (Vec<AlertChange>, u64) {
    run_resumed(parts, order, &[])
}

/// As [`run`], the watch put in a snapshot and resumed from it before each of the
/// `resumed_at` batches (positions in `order`).
fn run_resumed(
    parts: &[Vec<Batch>],
    order: &[usize],
    resumed_at: &[usize],
) -> (Vec<AlertChange>, u64) {
    let map = JourneyMap::from_yaml("shop.yaml", MAP).unwrap();
    let mut watch = JourneyWatch::new(&map, Default::default());
    let mut next = vec![0usize; parts.len()];
    let mut watermark: Vec<Option<i64>> = vec![None; parts.len()];
    let mut out = Vec::new();
    for (i, &p) in order.iter().enumerate() {
        if resumed_at.contains(&i) {
            let bytes = postcard::to_allocvec(&watch).unwrap();
            let read: JourneyWatch = postcard::from_bytes(&bytes).unwrap();
            watch = read
                .resume(&map, Default::default(), JourneyWatch::judged_by(&map))
                .expect("the same map and parameters");
        }
        let Some(batch) = parts[p].get(next[p]) else {
            continue;
        };
        next[p] += 1;
        for c in &batch.cells {
            feed(&mut watch, c, watermark[p].map(|w| START + w));
        }
        watermark[p] = Some(batch.watermark);
        if let Some(known) = watermark.iter().copied().min().flatten() {
            out.extend(watch.advance(START + known));
        }
    }
    (out, watch.late_cells())
}

/// A watch put in a snapshot and resumed from it, anywhere — before the break, while it
/// fires, during the silence, a minute after the late cells — judges as the one that never
/// stopped: the same changes under the same ids, the same late cells. A snapshot resumes
/// only under the map and parameters it was taken under.
#[test]
fn a_watch_resumed_from_a_snapshot_judges_as_one_that_never_stopped() {
    let parts = vec![partition(0), partition(1)];
    let order = orders(&parts).remove(0);
    let (alerts, late) = run(&parts, &order);
    let at_minute = |m: i64| {
        order
            .iter()
            .scan(vec![0usize; parts.len()], |next, &p| {
                let w = parts[p].get(next[p]).map_or(i64::MAX, |b| b.watermark);
                next[p] += 1;
                Some(w)
            })
            .position(|w| w >= m * MINUTE)
            .unwrap()
    };
    let cuts = [
        at_minute(DAY),
        at_minute(BREAK.0 + 5),
        at_minute(BREAK.0 + 30),
        at_minute(SILENT.0 + 10),
        at_minute(997 * 3 + 1),
    ];
    assert_eq!(run_resumed(&parts, &order, &cuts), (alerts, late));

    let map = JourneyMap::from_yaml("shop.yaml", MAP).unwrap();
    let snapshot = || -> JourneyWatch {
        let watch = JourneyWatch::new(&map, Default::default());
        postcard::from_bytes(&postcard::to_allocvec(&watch).unwrap()).unwrap()
    };
    let other =
        JourneyMap::from_yaml("shop.yaml", &MAP.replace("budget: 5m", "budget: 8m")).unwrap();
    assert!(snapshot()
        .resume(&other, Default::default(), JourneyWatch::judged_by(&map))
        .is_none());
    let stricter = cxstream_core::watch::WatchParams {
        drop: cxstream_core::detect::DropParams {
            threshold: 20.0,
            ..Default::default()
        },
        ..Default::default()
    };
    assert!(snapshot()
        .resume(&map, stricter, JourneyWatch::judged_by(&map))
        .is_none());
}

/// Reading orders: batch by batch in turn, and each partition's whole log before the
/// other's (a reader that caught up on one partition first).
fn orders(parts: &[Vec<Batch>]) -> Vec<Vec<usize>> {
    let longest = parts.iter().map(Vec::len).max().unwrap();
    let round_robin = (0..longest).flat_map(|_| 0..parts.len()).collect();
    let first = |p: usize| -> Vec<usize> {
        let mut o = vec![p; longest];
        o.extend(
            (0..parts.len())
                .filter(|q| *q != p)
                .flat_map(|q| vec![q; longest]),
        );
        o
    };
    vec![round_robin, first(0), first(1)]
}

#[test]
fn a_break_is_one_incident_silence_is_not_a_drop_and_reading_order_changes_nothing() {
    let parts = vec![partition(0), partition(1)];
    let orders = orders(&parts);
    let (alerts, late) = run(&parts, &orders[0]);
    for order in &orders[1..] {
        let (again, late_again) = run(&parts, order);
        assert_eq!(alerts, again, "another reading order, other alerts");
        assert_eq!(late, late_again);
    }
    assert!(late >= 10, "late cells are left out: {late}");

    let by_kind = |k: AlertKind| -> Vec<&AlertChange> {
        alerts.iter().filter(|c| c.subject.kind() == k).collect()
    };
    // The break: one incident, app among its slices, within 10 minutes of its start
    // (measured to when the minute could be judged: through the 2-minute lens, its end
    // plus two minutes).
    let drops = by_kind(AlertKind::StepDrop);
    let firing: Vec<_> = drops
        .iter()
        .filter(|c| c.state == AlertState::Firing)
        .collect();
    assert_eq!(firing.len(), 1, "{drops:#?}");
    let f = firing[0];
    let start = START + BREAK.0 * MINUTE;
    assert!(
        f.window_start >= start && f.at <= start + 10 * MINUTE,
        "{f:#?}"
    );
    assert_eq!(f.id, format!("shop/step_drop:checkout/{}", f.at / MINUTE));
    assert!(
        drops
            .iter()
            .flat_map(|c| c.firing.iter().chain([&c.figures.lens.slice]))
            .any(|s| *s == Slice::Channel(1)),
        "{drops:#?}"
    );
    assert!(drops.iter().all(|c| c.id == f.id));
    let resolved: Vec<_> = drops
        .iter()
        .filter(|c| c.state == AlertState::Resolved)
        .collect();
    assert_eq!(resolved.len(), 1, "{drops:#?}");
    assert!(resolved[0].at > START + BREAK.1 * MINUTE);
    let revisions: Vec<u32> = drops.iter().map(|c| c.revision).collect();
    assert_eq!(revisions, (0..drops.len() as u32).collect::<Vec<_>>());

    // The silence: one incident on app's traffic, found while it lasts, and no drop.
    let silences = by_kind(AlertKind::Silence);
    assert_eq!(
        silences
            .iter()
            .map(|c| (c.subject, c.state))
            .collect::<Vec<_>>(),
        [
            (Subject::Source(1), AlertState::Firing),
            (Subject::Source(1), AlertState::Resolved)
        ],
        "{silences:#?}"
    );
    let silent = START + SILENT.0 * MINUTE..START + SILENT.1 * MINUTE;
    assert!(silent.contains(&silences[0].at), "{silences:#?}");
    assert!(by_kind(AlertKind::ScoreDrop).is_empty());
}

/// A stage with two touchpoints, answered with CSAT on the web (half of the answers by
/// customers already in the next stage, whose cells are that stage's): after nine days of
/// 80 % satisfied at each, one touchpoint's falls to 50 % for three hours. That touchpoint's
/// CSAT is one incident, under the stage that declares it (metric and touchpoint in its
/// subject), resolved after; the other touchpoint's is not, and no NPS or step incident
/// comes of it.
#[test]
fn a_touchpoints_csat_drop_is_its_own_incident() {
    let map = JourneyMap::from_yaml(
        "shop.yaml",
        &MAP.replace(
            "  - name: paid\n",
            "  - name: wishlist\n    stage: browse\n    channels: [web, app]\n  - name: paid\n",
        ),
    )
    .unwrap();
    let (cart, wishlist) = (
        map.touchpoint("cart").unwrap(),
        map.touchpoint("wishlist").unwrap(),
    );
    let mut watch = JourneyWatch::new(&map, Default::default());
    let drop = (9 * DAY + 600, 9 * DAY + 780);
    let mut out = Vec::new();
    for m in 0..10 * DAY {
        for (tp, salt) in [(cart, 1u64), (wishlist, 2)] {
            let satisfied = if tp == cart && (drop.0..drop.1).contains(&m) {
                0.5
            } else {
                0.8
            };
            let n = 4;
            let top2 = (0..n)
                .filter(|i| noise((m as u64) << 8 | salt << 4 | i) < satisfied)
                .count() as i64;
            let counts = Counts {
                csat_n: n as i64,
                csat_top2: top2,
                ..Counts::default()
            };
            // Every other minute's answers come from customers who went on to buy: their
            // cells are the later stage's, their touchpoint is still the browse stage's.
            let stage = u8::from(m % 2 == 1);
            watch.add_minute_cell(
                START + m * MINUTE,
                (stage, Some(tp)),
                (0, NO_SEGMENT),
                &counts,
                None,
            );
        }
        out.extend(watch.advance(START + (m + 1) * MINUTE));
    }
    let ids: std::collections::BTreeSet<&str> = out.iter().map(|c| c.id.as_str()).collect();
    assert!(
        ids.iter().all(|id| id.starts_with("shop/score_drop:csat:")),
        "{ids:?}"
    );
    // Fired, updated when the web slice joined (it is all the traffic here), resolved.
    let cart = |state: AlertState| -> Vec<&AlertChange> {
        out.iter()
            .filter(|c| c.subject.touchpoint(&map) == Some("cart") && c.state == state)
            .collect()
    };
    let (fired, resolved) = match (
        &cart(AlertState::Firing)[..],
        &cart(AlertState::Resolved)[..],
    ) {
        ([f], [r]) => (*f, *r),
        _ => panic!("one incident, fired and resolved: {out:#?}"),
    };
    assert_eq!(fired.subject.kind(), AlertKind::ScoreDrop);
    assert_eq!(fired.subject.name(&map), "browse");
    assert_eq!(
        fired.id.split('/').nth(1),
        Some("score_drop:csat:browse.cart")
    );
    assert!(
        fired.figures.observed < fired.figures.baseline - 5.0 && fired.figures.baseline > 75.0,
        "{fired:?}"
    );
    let start = START + drop.0 * MINUTE;
    assert!(
        (start..start + 120 * MINUTE).contains(&fired.fired_at),
        "{fired:?}"
    );
    assert_eq!(resolved.state, AlertState::Resolved);
    assert!(resolved.at > START + drop.1 * MINUTE);
    assert!(
        out.iter()
            .all(|c| c.subject.touchpoint(&map) != Some("wishlist")),
        "{out:#?}"
    );
}

/// Ten days of entries into `browse` and `buy`, minute by minute, in each of `slices`
/// (channel, segment): about `rate(minute, slice, stage)` a minute (binomial, 2 × rate
/// trials of ½). The flow drops' changes.
fn flows_of_entries(
    map: &JourneyMap,
    slices: &[(u8, u8)],
    rate: impl Fn(i64, (u8, u8), u8) -> f64,
) -> Vec<AlertChange> {
    let mut watch = JourneyWatch::new(map, Default::default());
    let mut out = Vec::new();
    for m in 0..10 * DAY {
        for (i, &slice) in slices.iter().enumerate() {
            for stage in [0u8, 1] {
                let key = (m as u64) << 12 | (i as u64) << 4 | u64::from(stage);
                let entries = (0..(2.0 * rate(m, slice, stage)) as u64)
                    .filter(|i| noise(key ^ i << 24) < 0.5)
                    .count() as i64;
                let counts = Counts {
                    stage_entries: entries,
                    ..Counts::default()
                };
                watch.add_minute_cell(START + m * MINUTE, (stage, None), slice, &counts, None);
            }
        }
        out.extend(watch.advance(START + (m + 1) * MINUTE));
    }
    out.into_iter()
        .filter(|c| c.subject.kind() == AlertKind::FlowDrop)
        .collect()
}

/// Entries into `buy` are half as many as into `browse`, on the web and in the app. On day
/// 9 the app's entries into `buy` fall to a fifth for two hours — a flow drop (the app
/// among its slices), resolved after; on day 8 all traffic falls by 80 % for two hours —
/// no flow drop, the share of entries is as ever.
#[test]
fn entries_into_a_stage_falling_are_a_flow_drop_and_less_traffic_is_not() {
    let map = JourneyMap::from_yaml("shop.yaml", MAP).unwrap();
    let quiet = (8 * DAY + 600, 8 * DAY + 720);
    let broken = (9 * DAY + 600, 9 * DAY + 720);
    let slices = [(0, NO_SEGMENT), (1, NO_SEGMENT)];
    let flows = flows_of_entries(&map, &slices, |m, (channel, _), stage| {
        let mut rate = if stage == 0 { 10.0 } else { 5.0 };
        if (quiet.0..quiet.1).contains(&m) {
            rate *= 0.2;
        }
        if channel == 1 && stage == 1 && (broken.0..broken.1).contains(&m) {
            rate *= 0.2;
        }
        rate
    });
    let fired: Vec<&AlertChange> = flows
        .iter()
        .filter(|c| c.state == AlertState::Firing)
        .collect();
    assert_eq!(fired.len(), 1, "{flows:#?}");
    let f = fired[0];
    assert_eq!(f.subject.name(&map), "buy");
    assert!(f.id.starts_with("shop/flow_drop:buy/"), "{f:?}");
    let start = START + broken.0 * MINUTE;
    assert!((start..start + 30 * MINUTE).contains(&f.fired_at), "{f:?}");
    assert!(
        flows.iter().any(|c| c.firing.contains(&Slice::Channel(1))),
        "the app among its slices: {flows:#?}"
    );
    let resolved = flows
        .iter()
        .find(|c| c.state == AlertState::Resolved)
        .expect("resolved");
    assert!(resolved.at > START + broken.1 * MINUTE, "{resolved:?}");
    assert!(
        resolved.at < START + (broken.1 + 60) * MINUTE,
        "{resolved:?}"
    );
}

/// The web sends 20 touchpoints a minute and a checkout whose attempts all convert 8
/// minutes after they start (budget 15 minutes). On day 3 — before silence can be judged
/// against weeks of history — it sends nothing for 40 minutes: the attempts of the 8
/// minutes before lose their conversions with the touchpoints. That is a silent source,
/// not a drop: no step incident.
#[test]
fn conversions_lost_to_a_silent_channel_are_no_drop() {
    let map =
        JourneyMap::from_yaml("shop.yaml", &MAP.replace("budget: 5m", "budget: 15m")).unwrap();
    let mut watch = JourneyWatch::new(&map, Default::default());
    let silent = (2 * DAY + 600, 2 * DAY + 640);
    let quiet = |m: i64| (silent.0..silent.1).contains(&m);
    let mut out = Vec::new();
    for m in 0..4 * DAY {
        let web = 0;
        if !quiet(m) {
            let counts = Counts {
                touchpoints: 20,
                ..Counts::default()
            };
            watch.add_minute_cell(
                START + m * MINUTE,
                (0, None),
                (web, NO_SEGMENT),
                &counts,
                None,
            );
            let starts = 12 + (noise(m as u64) * 4.0) as i64;
            // Converted 8 minutes later, unless that minute was silent.
            let lost = quiet(m + 8);
            let by = if lost { 0 } else { (starts * 3) / 4 };
            let counts = StepCounts {
                starts,
                conversions: by,
                within_10m: by,
                ..StepCounts::default()
            };
            watch.add_step_cell(START + m * MINUTE, 0, web, 0, &counts, None);
        }
        out.extend(watch.advance(START + (m + 1) * MINUTE));
    }
    let drops: Vec<&AlertChange> = out
        .iter()
        .filter(|c| c.subject.kind() == AlertKind::StepDrop)
        .collect();
    assert!(drops.is_empty(), "{drops:#?}");
}

/// A survey tool that sends its answers three hours late: every batch carries the answers
/// of three hours before, and the journey's watermark (all counts final) lags its
/// touchpoints' by as much. The break and the silence are found as soon as the touchpoints
/// show them — while the answers' clock is still hours behind — and the answers, though
/// they arrive after the touchpoints of their minute are final, are not late.
#[test]
fn answers_sent_hours_late_hold_back_the_scores_not_a_break() {
    const LAG: i64 = 180;
    let map = JourneyMap::from_yaml("shop.yaml", MAP).unwrap();
    let mut watch = JourneyWatch::new(&map, Default::default());
    let parts = [partition(0), partition(1)];
    let mut known = [Finality::default(); 2];
    let mut out: Vec<(AlertChange, Finality)> = Vec::new();
    let mut answers = 0;
    for i in 0..parts.iter().map(Vec::len).max().unwrap() {
        for (p, batches) in parts.iter().enumerate() {
            let Some(batch) = batches.get(i) else {
                continue;
            };
            let before = known[p];
            for c in &batch.cells {
                feed(&mut watch, c, before);
            }
            // The answers of the minutes LAG before this batch's.
            let to = batch.watermark / MINUTE - LAG;
            let from = before.all.map_or(to - 3, |a| (a - START) / MINUTE);
            for m in from.max(0)..to {
                answers += 1;
                watch.add_minute_cell(
                    START + m * MINUTE,
                    (1, None),
                    (0, NO_SEGMENT),
                    &Counts {
                        nps_promoters: 1,
                        ..Counts::default()
                    },
                    before,
                );
            }
            known[p] = Finality {
                touchpoints: Some(START + batch.watermark),
                all: Some(START + to * MINUTE),
            };
            let every = Finality {
                touchpoints: known.iter().map(|k| k.touchpoints).min().flatten(),
                all: known.iter().map(|k| k.all).min().flatten(),
            };
            let changes = watch.advance_to(every);
            out.extend(changes.into_iter().map(|c| (c, every)));
        }
    }
    assert!(answers > 10_000);
    // Only the deliberately late step cells (see `partition`) are late, no answer.
    let (_, late) = run(&parts, &orders(&parts)[0]);
    assert_eq!(watch.late_cells(), late);

    let fired = |kind: AlertKind| {
        out.iter()
            .find(|(c, _)| c.subject.kind() == kind && c.state == AlertState::Firing)
            .unwrap_or_else(|| panic!("no {kind:?} fired"))
    };
    let (drop, when) = fired(AlertKind::StepDrop);
    let start = START + BREAK.0 * MINUTE;
    assert!(drop.at <= start + 10 * MINUTE, "{drop:#?}");
    // Raised once the touchpoints showed it (partitions commit every 3 and 7 minutes),
    // with the answers hours behind.
    assert!(
        when.touchpoints.unwrap() <= drop.at + 7 * MINUTE,
        "{when:?}"
    );
    assert!(when.all.unwrap() <= drop.at - 2 * 60 * MINUTE, "{when:?}");
    let (silence, when) = fired(AlertKind::Silence);
    assert!(
        (START + SILENT.0 * MINUTE..START + SILENT.1 * MINUTE).contains(&silence.at),
        "{silence:#?}"
    );
    assert!(when.all.unwrap() < START + SILENT.0 * MINUTE, "{when:?}");
}

/// Stages with budgets of minutes, so that a test's entries are decided within hours.
const SHORT: &str = "journey: short
stages:
  - name: look
    budget: 30m
    target_conversion: 0.5
  - name: buy
    budget: 1h
    target_conversion: 0.3
channels: [web, app]
segments: [new, vip]
touchpoints:
  - name: visit
    stage: look
    channels: [web, app]
  - name: order
    stage: buy
    channels: [web, app]
";

/// Feeds `minutes` of a stage's entries in each of `slices` (channel, segment),
/// `of(minute, slice)` = (entries, converted), as one partition committing every 5 minutes sends them: entries in their
/// minute, their conversions 10 minutes later and their drop-offs at the 30-minute budget,
/// each in the entry's cell. Returns each batch's first minute and the changes it raised.
fn batches_of_entries(
    minutes: i64,
    slices: &[(u8, u8)],
    of: impl Fn(i64, (u8, u8)) -> (i64, i64),
    watch: &mut JourneyWatch,
) -> Vec<(i64, Vec<AlertChange>)> {
    const BATCH: i64 = 5;
    let mut out = Vec::new();
    for first in (0..minutes).step_by(BATCH as usize) {
        let before = Some(START + first * MINUTE);
        for m in first..first + BATCH {
            for &slice in slices {
                let mut cell = |minute: i64, counts: Counts| {
                    watch.add_minute_cell(
                        START + minute * MINUTE,
                        (0, None),
                        slice,
                        &counts,
                        before,
                    );
                };
                let (n, _) = of(m, slice);
                cell(
                    m,
                    Counts {
                        touchpoints: n,
                        stage_entries: n,
                        ..Counts::default()
                    },
                );
                if m >= 10 {
                    let (_, k) = of(m - 10, slice);
                    cell(
                        m - 10,
                        Counts {
                            stage_conversions: k,
                            ..Counts::default()
                        },
                    );
                }
                if m >= 30 {
                    let (n, k) = of(m - 30, slice);
                    cell(
                        m - 30,
                        Counts {
                            stage_dropoffs: n - k,
                            ..Counts::default()
                        },
                    );
                }
            }
        }
        out.push((first, watch.advance(START + (first + BATCH) * MINUTE)));
    }
    out
}

/// Entries' outcomes land on the entry's minute as they are decided — a conversion when the
/// next stage is reached, a drop-off when the budget has passed — so they arrive in batches
/// committed long after that minute. They count (nothing is late), and a stage's conversion
/// is over the cohorts decided by the journey's watermark.
#[test]
fn outcomes_decided_a_budget_after_the_entry_count_in_the_stage_conversion() {
    let map = JourneyMap::from_yaml("short.yaml", SHORT).unwrap();
    let mut watch = JourneyWatch::new(&map, Default::default());
    let mut ratios = Vec::new();
    // 10 entries a minute on the web, 6 of which convert.
    for (first, changes) in batches_of_entries(600, &[(0, NO_SEGMENT)], |_, _| (10, 6), &mut watch)
    {
        assert!(changes.is_empty(), "{changes:#?}");
        ratios.push((first, watch.stage_conversion(0)));
    }
    assert_eq!(watch.late_cells(), 0);
    // Decided by the last watermark (minute 600): the entries of hours wholly a budget
    // before it, minutes 0–539 (hours 0–8), 10 a minute, 6 of them converted.
    assert_eq!(watch.stage_conversion(0), Some((0.6, 5400)));
    assert!(
        ratios
            .iter()
            .filter_map(|r| r.1)
            .all(|(r, _)| (r - 0.6).abs() < 1e-9),
        "{ratios:?}"
    );
}

/// A stage's decided conversion: after two days of the app's entries converting at 50 %, a
/// third of that for two hours. One STAGE_DROP incident on the stage, the app among its
/// slices, raised once the entries of the break are decided (their budget after them) and
/// resolved after; the web's conversion, unchanged, raises nothing.
#[test]
fn a_stage_whose_entries_stop_converting_is_a_stage_drop() {
    let map = JourneyMap::from_yaml("short.yaml", SHORT).unwrap();
    const BREAK: (i64, i64) = (2 * DAY + 600, 2 * DAY + 720);
    let mut watch = JourneyWatch::new(&map, Default::default());
    let converted = |m: i64, (channel, _): (u8, u8)| -> (i64, i64) {
        let n = 15 + (noise(m as u64 * 2 + u64::from(channel)) * 10.0) as i64;
        let mut rate = if channel == 0 { 0.6 } else { 0.5 };
        if channel == 1 && (BREAK.0..BREAK.1).contains(&m) {
            rate /= 3.0;
        }
        let k = (0..n)
            .filter(|i| noise((m as u64) << 20 | u64::from(channel) << 16 | *i as u64) < rate)
            .count() as i64;
        (n, k)
    };
    let out: Vec<AlertChange> = batches_of_entries(
        3 * DAY,
        &[(0, NO_SEGMENT), (1, NO_SEGMENT)],
        converted,
        &mut watch,
    )
    .into_iter()
    .flat_map(|(_, changes)| changes)
    .collect();
    assert_eq!(watch.late_cells(), 0);
    let drops: Vec<&AlertChange> = out
        .iter()
        .filter(|c| c.subject.kind() == AlertKind::StageDrop)
        .collect();
    let firing: Vec<_> = drops
        .iter()
        .filter(|c| c.state == AlertState::Firing)
        .collect();
    assert_eq!(firing.len(), 1, "{drops:#?}");
    let f = firing[0];
    let start = START + BREAK.0 * MINUTE;
    // Known once the break's first entries are decided (a minute and the 30-minute budget
    // after them), within minutes of that.
    assert!(f.window_start >= start, "{f:#?}");
    assert!(f.at <= start + 31 * MINUTE + 10 * MINUTE, "{f:#?}");
    assert!(f.id.starts_with("short/stage_drop:look/"), "{f:?}");
    assert!(
        drops
            .iter()
            .flat_map(|c| c.firing.iter().chain([&c.figures.lens.slice]))
            .any(|s| *s == Slice::Channel(1)),
        "{drops:#?}"
    );
    assert!(
        !drops
            .iter()
            .flat_map(|c| c.firing.iter())
            .any(|s| *s == Slice::Channel(0)),
        "{drops:#?}"
    );
    let resolved: Vec<_> = drops
        .iter()
        .filter(|c| c.state == AlertState::Resolved)
        .collect();
    assert_eq!(resolved.len(), 1, "{drops:#?}");
    assert!(
        resolved[0].at > START + BREAK.1 * MINUTE,
        "{:#?}",
        resolved[0]
    );
}

/// The shop's new and vip customers in both channels, entries into `buy` half those into
/// `browse`; on day 9 the vip customers' entries into `buy` fall to a fifth for two hours
/// (a sign-up step that fails for them alone), everywhere. A flow drop with the vip segment
/// among its slices; the new customers' flow never fires.
#[test]
fn a_segment_no_longer_reaching_a_stage_is_a_flow_drop_of_that_segment() {
    let map = JourneyMap::from_yaml("shop.yaml", MAP).unwrap();
    let vip = map.segment("vip").unwrap();
    let broken = (9 * DAY + 600, 9 * DAY + 720);
    let slices = [(0, 0), (1, 0), (0, vip), (1, vip)];
    let flows = flows_of_entries(&map, &slices, |m, (_, segment), stage| {
        let base = if stage == 0 { 10.0 } else { 5.0 };
        let mut rate = if segment == vip { base } else { 2.0 * base };
        if segment == vip && stage == 1 && (broken.0..broken.1).contains(&m) {
            rate *= 0.2;
        }
        rate
    });
    let fired: Vec<&AlertChange> = flows
        .iter()
        .filter(|c| c.state == AlertState::Firing)
        .collect();
    assert_eq!(fired.len(), 1, "{flows:#?}");
    let start = START + broken.0 * MINUTE;
    assert!(
        (start..start + 30 * MINUTE).contains(&fired[0].fired_at),
        "{fired:?}"
    );
    let firing = || flows.iter().flat_map(|c| c.firing.iter());
    assert!(firing().any(|s| *s == Slice::Segment(vip)), "{flows:#?}");
    assert!(!firing().any(|s| *s == Slice::Segment(0)), "{flows:#?}");
}

/// A stage's decided conversion per segment: the vip customers' entries (both channels)
/// convert at a third of their rate for two hours on day 2. One STAGE_DROP incident with the
/// vip segment among its slices; the new customers' conversion never fires.
#[test]
fn a_segment_whose_entries_stop_converting_is_a_stage_drop_of_that_segment() {
    let map = JourneyMap::from_yaml("short.yaml", SHORT).unwrap();
    let vip = map.segment("vip").unwrap();
    const BREAK: (i64, i64) = (2 * DAY + 600, 2 * DAY + 720);
    let mut watch = JourneyWatch::new(&map, Default::default());
    let converted = |m: i64, (channel, segment): (u8, u8)| -> (i64, i64) {
        let key = m as u64 * 4 + u64::from(channel) * 2 + u64::from(segment.min(1));
        let n = 10 + (noise(key) * 10.0) as i64;
        let mut rate = 0.5;
        if segment == vip && (BREAK.0..BREAK.1).contains(&m) {
            rate /= 3.0;
        }
        let k = (0..n)
            .filter(|i| noise(key << 20 | *i as u64) < rate)
            .count() as i64;
        (n, k)
    };
    let slices = [(0, 0), (1, 0), (0, vip), (1, vip)];
    let out: Vec<AlertChange> = batches_of_entries(3 * DAY, &slices, converted, &mut watch)
        .into_iter()
        .flat_map(|(_, changes)| changes)
        .collect();
    let drops: Vec<&AlertChange> = out
        .iter()
        .filter(|c| c.subject.kind() == AlertKind::StageDrop)
        .collect();
    let firing: Vec<_> = drops
        .iter()
        .filter(|c| c.state == AlertState::Firing)
        .collect();
    assert_eq!(firing.len(), 1, "{drops:#?}");
    assert!(
        firing[0].window_start >= START + BREAK.0 * MINUTE,
        "{firing:#?}"
    );
    let slices = || drops.iter().flat_map(|c| c.firing.iter());
    assert!(slices().any(|s| *s == Slice::Segment(vip)), "{drops:#?}");
    assert!(!slices().any(|s| *s == Slice::Segment(0)), "{drops:#?}");
}
