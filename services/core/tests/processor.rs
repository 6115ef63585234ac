//! The processor against a small reference model of the documented rules (README § What
//! it does), written here from the rules and sharing no code with the processor: any
//! arrival order of the events, re-deliveries, batch cuts and save/restore points give the
//! reference's counts (stage outcomes included, at the watermark the run ends with); facts
//! always sum to the aggregates; events beyond the allowed lateness are refused exactly as
//! the watermark rule says.

#![allow(clippy::unwrap_used, clippy::type_complexity)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use cxstream_core::erasure::{fingerprint, Erasures};
use cxstream_core::journey::{Journey, StageOutcome};
use cxstream_core::metrics::StepCounts;
use cxstream_core::processor::{AggKey, Batch, Written};
use cxstream_core::{
    ClockState, Counts, EventClock, EventTimePolicy, Input, Invalid, JourneyMap, Metric,
    PartitionProcessor, Refusal, SurveyAnswer, TouchpointEvent,
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
  - {name: view_to_purchase, from: [product_view], to: [purchase], budget: 3h, target_conversion: 0.3}
";
/// The steps of the map above: (name, from, to, budget).
const STEPS: [(&str, &str, &str, i64); 2] = [
    ("click_to_view", "ad_click", "product_view", 30 * 60_000),
    (
        "view_to_purchase",
        "product_view",
        "purchase",
        3 * 3_600_000,
    ),
];
const TOUCHPOINTS: [(&str, usize); 3] = [("ad_click", 0), ("product_view", 1), ("purchase", 2)];
const SEGMENTS: [&str; 2] = ["new", "vip"];
/// The budgets of the map above, by stage (the last stage has no later one).
const BUDGETS_MS: [Option<i64>; 3] = [Some(6 * 3_600_000), Some(2 * 3_600_000), None];
/// How long a journey lasts after an entry into each stage (the last stage's budget: a
/// completed journey).
const LASTS_MS: [i64; 3] = [6 * 3_600_000, 2 * 3_600_000, 2 * 86_400_000];

/// Each touchpoint's (entered, stage it counts under) by the README: the furthest stage of
/// the current journey so far; a journey lasts while its last entry is within that stage's
/// budget, and the first touchpoint after that starts a new journey.
fn stages(list: &[&TouchpointEvent]) -> Vec<(bool, Option<usize>)> {
    let (mut furthest, mut until) = (None::<usize>, i64::MAX);
    list.iter()
        .map(|t| {
            // A touchpoint the map does not declare changes nothing: it counts off-map
            // under the journey's furthest stage, or none outside a journey.
            let Some(own) = own_stage(&t.touchpoint) else {
                let over = furthest.is_some() && t.event_time > until;
                return (false, furthest.filter(|_| !over));
            };
            if furthest.is_some() && t.event_time > until {
                furthest = None;
            }
            let entered = furthest.is_none_or(|f| own > f);
            if entered {
                until = t.event_time + LASTS_MS[own];
            }
            furthest = Some(furthest.map_or(own, |f| f.max(own)));
            (entered, furthest)
        })
        .collect()
}

fn own_stage(touchpoint: &str) -> Option<usize> {
    TOUCHPOINTS
        .iter()
        .find(|(n, _)| *n == touchpoint)
        .map(|x| x.1)
}

/// A stage by name, "none" for no stage.
fn stage_name(at: Option<usize>) -> String {
    at.map_or("none", |s| ["awareness", "consideration", "conversion"][s])
        .to_string()
}

/// A touchpoint as the per-minute counts name it.
fn counted_name(touchpoint: &str) -> String {
    if own_stage(touchpoint).is_some() {
        touchpoint.to_string()
    } else {
        "(off-map)".to_string()
    }
}

fn map() -> Arc<JourneyMap> {
    Arc::new(JourneyMap::from_yaml("shop.yaml", MAP).expect("valid map"))
}

/// Nothing is late or from the future: the rules alone decide.
fn no_lateness() -> EventTimePolicy {
    EventTimePolicy {
        allowed_lateness_ms: i64::MAX / 4,
        max_future_ms: i64::MAX / 4,
    }
}

fn tp(
    id: &str,
    customer: &str,
    t: i64,
    touchpoint: &str,
    segment: Option<&str>,
) -> TouchpointEvent {
    TouchpointEvent {
        event_id: id.into(),
        customer_id: Some(customer.into()),
        anonymous_id: None,
        event_time: t,
        touchpoint: touchpoint.into(),
        channel: "web".into(),
        stage: None,
        segment: segment.map(Into::into),
        outcome: None,
        attributes: HashMap::new(),
    }
}

fn ans(
    id: &str,
    customer: &str,
    t: i64,
    metric: Metric,
    score: i32,
    names: Option<&str>,
) -> SurveyAnswer {
    SurveyAnswer {
        response_id: id.into(),
        customer_id: Some(customer.into()),
        answer_time: t,
        metric,
        score,
        touchpoint_event_id: names.map(Into::into),
        touchpoint: None,
        channel: None,
        comment: None,
        attributes: HashMap::new(),
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Rec {
    T(TouchpointEvent),
    A(SurveyAnswer),
}

impl Rec {
    fn time(&self) -> i64 {
        match self {
            Rec::T(t) => t.event_time,
            Rec::A(a) => a.answer_time,
        }
    }
}

/// A cell by names: (minute, stage, touchpoint, channel, segment); answers without a
/// touchpoint before them are under stage "none".
type Cell = (i64, String, String, String, String);

// ---------------------------------------------------------------------------------------
// The reference model: the README's rules applied to the whole set of events at once.

fn reference(recs: &[Rec], watermark: Option<i64>) -> BTreeMap<Cell, Counts> {
    let applied: Vec<(Rec, Option<i64>)> = recs.iter().map(|r| (r.clone(), None)).collect();
    reference_with_horizons(&applied, watermark)
}

/// The rules over applied events in arrival order, each with the horizon (watermark −
/// allowed lateness) when it arrived. Looking back is bounded by the allowed lateness: an
/// answer is attributed to the touchpoint it names only if that is dated at or after the
/// horizon when the answer arrived, and replaces an earlier answer of its slot only if that
/// one is dated at or after the horizon then (older ones are final).
///
/// A stage entry (of any stage but the last) converts when the customer's next entry comes
/// within its stage's budget, else it has dropped off if `watermark` is past its deadline,
/// and is open if not; all counted in the entry's cell.
fn reference_with_horizons(
    applied: &[(Rec, Option<i64>)],
    watermark: Option<i64>,
) -> BTreeMap<Cell, Counts> {
    let mut seen = HashSet::new();
    let mut tps: HashMap<String, Vec<&TouchpointEvent>> = HashMap::new();
    let mut answers: Vec<(usize, &SurveyAnswer, Option<i64>)> = Vec::new();
    // Event id → (arrival, horizon then) of the touchpoint's first copy.
    let mut tp_arrival: HashMap<String, (usize, Option<i64>)> = HashMap::new();
    for (arrival, (r, horizon)) in applied.iter().enumerate() {
        match r {
            Rec::T(t) if seen.insert(t.event_id.clone()) => {
                tp_arrival.insert(t.event_id.clone(), (arrival, *horizon));
                tps.entry(t.customer_id.clone().unwrap_or_default())
                    .or_default()
                    .push(t)
            }
            Rec::A(a) if seen.insert(format!("{a:?}")) => answers.push((arrival, a, *horizon)),
            _ => {}
        }
    }
    let mut out: BTreeMap<Cell, Counts> = BTreeMap::new();
    // Each touchpoint's context: the furthest stage so far, the latest named segment.
    let mut context: HashMap<String, (i64, (String, String, String, String))> = HashMap::new();
    let mut timelines: HashMap<String, Vec<(i64, (String, String, String, String))>> =
        HashMap::new();
    for (customer, list) in &mut tps {
        list.sort_by_key(|t| t.event_time);
        let mut segment = "unknown".to_string();
        // (cell, time, stage) of each stage entry, in time order.
        let mut entries: Vec<(Cell, i64, usize)> = Vec::new();
        let placed = stages(list);
        for (t, (entered, at)) in list.iter().zip(placed) {
            let own = own_stage(&t.touchpoint).unwrap_or(0);
            if let Some(s) = &t.segment {
                segment = s.clone();
            }
            let ctx = (
                stage_name(at),
                counted_name(&t.touchpoint),
                t.channel.clone(),
                segment.clone(),
            );
            let cell = (
                t.event_time / 60_000,
                ctx.0.clone(),
                ctx.1.clone(),
                ctx.2.clone(),
                ctx.3.clone(),
            );
            let c = out.entry(cell.clone()).or_default();
            c.touchpoints += 1;
            c.stage_entries += i64::from(entered);
            if entered {
                entries.push((cell, t.event_time, own));
            }
            context.insert(t.event_id.clone(), (t.event_time, ctx.clone()));
            timelines
                .entry(customer.clone())
                .or_default()
                .push((t.event_time, ctx));
        }
        for (k, (cell, at, stage)) in entries.iter().enumerate() {
            let Some(budget) = BUDGETS_MS[*stage] else {
                continue;
            };
            let c = out.entry(cell.clone()).or_default();
            match entries.get(k + 1) {
                Some((_, next, _)) if next - at <= budget => {
                    c.stage_conversions += 1;
                    c.convert_ms_sum += next - at;
                }
                _ if watermark.is_some_and(|w| w > at + budget) => c.stage_dropoffs += 1,
                _ => c.stage_open += 1,
            }
        }
    }
    // An answer follows the touchpoint it names if that touchpoint arrived before it and was
    // still within the horizon then, or arrived after it while the answer still was.
    let at = |h: Option<i64>, t: i64| h.is_none_or(|h| t >= h);
    let follows = |a_arrival: usize,
                   a: &SurveyAnswer,
                   a_horizon: Option<i64>|
     -> Option<&(i64, (String, String, String, String))> {
        let id = a.touchpoint_event_id.as_ref()?;
        let (t_arrival, t_horizon) = *tp_arrival.get(id)?;
        let ctx = context.get(id)?;
        let same_customer = tps
            .get(&a.customer_id.clone().unwrap_or_default())
            .is_some_and(|l| l.iter().any(|t| &t.event_id == id));
        let ok = if t_arrival < a_arrival {
            at(a_horizon, ctx.0)
        } else {
            at(t_horizon, a.answer_time)
        };
        (same_customer && ok).then_some(ctx)
    };
    // An answer is present at arrival k (horizon h) while dated within it, or while it
    // follows a touchpoint that is.
    let present =
        |a_arrival: usize, a: &SurveyAnswer, a_horizon: Option<i64>, k: usize, h: Option<i64>| {
            at(h, a.answer_time)
                || follows(a_arrival, a, a_horizon).is_some_and(|(t, _)| {
                    let id = a.touchpoint_event_id.as_deref().unwrap_or_default();
                    tp_arrival.get(id).is_some_and(|(ta, _)| *ta < k) && at(h, *t)
                })
        };
    // Per slot only the latest answer counts: an answer is replaced by a later-ranked one of
    // its slot that arrived before it, or after it while it was still present.
    let slot = |a: &SurveyAnswer| match &a.touchpoint_event_id {
        Some(id) => (a.customer_id.clone(), id.clone(), a.metric),
        None => (a.customer_id.clone(), a.response_id.clone(), a.metric),
    };
    for &(arrival, a, horizon) in &answers {
        let replaced = answers.iter().any(|&(b_arrival, b, b_horizon)| {
            slot(b) == slot(a)
                && b.answer_time > a.answer_time
                && (b_arrival < arrival || present(arrival, a, horizon, b_arrival, b_horizon))
        });
        if replaced {
            continue;
        }
        let customer = a.customer_id.clone().unwrap_or_default();
        let named = follows(arrival, a, horizon).map(|(_, c)| c.clone());
        let latest = || {
            timelines
                .get(&customer)
                .and_then(|tl| tl.iter().rev().find(|(t, _)| *t <= a.answer_time))
                .map(|(_, c)| c.clone())
        };
        let ctx = named.or_else(latest).unwrap_or_else(|| {
            (
                "none".into(),
                "none".into(),
                "none".into(),
                "unknown".into(),
            )
        });
        out.entry((a.answer_time / 60_000, ctx.0, ctx.1, ctx.2, ctx.3))
            .or_default()
            .add_answer(a.metric, a.score, 1);
    }
    out.retain(|_, c| !c.is_zero());
    out
}

/// A step cell by names: (start minute, step, stage, touchpoint, channel, segment).
type StepCell = (i64, String, String, String, String, String);

/// Step attempts by the README's rules, over the applied touchpoints (one per event id),
/// per customer in time order: a `from` touchpoint starts an attempt unless one is running
/// (not converted, deadline not passed); the first `to` after it by the deadline converts
/// it; otherwise it has dropped off if `watermark` is past the deadline, and is open if
/// not. Counted in the start's cell, under the start's stage and segment.
fn reference_steps(applied: &[Rec], watermark: Option<i64>) -> BTreeMap<StepCell, StepCounts> {
    let mut seen = HashSet::new();
    let mut tps: BTreeMap<String, Vec<&TouchpointEvent>> = BTreeMap::new();
    for r in applied {
        if let Rec::T(t) = r {
            if seen.insert(t.event_id.clone()) {
                tps.entry(t.customer_id.clone().unwrap_or_default())
                    .or_default()
                    .push(t);
            }
        }
    }
    let mut out: BTreeMap<StepCell, StepCounts> = BTreeMap::new();
    for list in tps.values_mut() {
        list.sort_by_key(|t| t.event_time);
        let mut segment = "unknown".to_string();
        // Per step: the running attempt's (cell, start, deadline).
        let mut running: Vec<Option<(StepCell, i64, i64)>> = vec![None; STEPS.len()];
        let placed = stages(list);
        for (t, (_, furthest)) in list.iter().zip(placed) {
            if let Some(sg) = &t.segment {
                segment = sg.clone();
            }
            for (i, (name, from, to, budget)) in STEPS.iter().enumerate() {
                if running[i]
                    .as_ref()
                    .is_some_and(|(_, _, d)| t.event_time > *d)
                {
                    let (cell, _, d) = running[i].take().unwrap();
                    let c = out.entry(cell).or_default();
                    if watermark.is_some_and(|w| w > d) {
                        c.dropoffs += 1
                    } else {
                        c.open += 1
                    }
                }
                if t.touchpoint == *to {
                    if let Some((cell, start, _)) = running[i].take() {
                        let c = out.entry(cell).or_default();
                        let after = t.event_time - start;
                        c.conversions += 1;
                        c.convert_ms_sum += after;
                        // Converted within 1, 2, 5, 10 minutes of the start.
                        c.within_1m += i64::from(after <= 60_000);
                        c.within_2m += i64::from(after <= 120_000);
                        c.within_5m += i64::from(after <= 300_000);
                        c.within_10m += i64::from(after <= 600_000);
                    }
                } else if t.touchpoint == *from && running[i].is_none() {
                    let cell = (
                        t.event_time / 60_000,
                        name.to_string(),
                        stage_name(furthest),
                        t.touchpoint.clone(),
                        t.channel.clone(),
                        segment.clone(),
                    );
                    out.entry(cell.clone()).or_default().starts += 1;
                    running[i] = Some((cell, t.event_time, t.event_time + budget));
                }
            }
        }
        for (cell, _, d) in running.into_iter().flatten() {
            let c = out.entry(cell).or_default();
            if watermark.is_some_and(|w| w > d) {
                c.dropoffs += 1
            } else {
                c.open += 1
            }
        }
    }
    out.retain(|_, c| !c.is_zero());
    out
}

// ---------------------------------------------------------------------------------------
// Driving the processor.

fn cell(map: &JourneyMap, k: &AggKey) -> Cell {
    match k.context {
        Some((s, t, c, g)) => (
            k.minute,
            map.stage_name(s).to_string(),
            map.touchpoint_name(t).to_string(),
            map.channel_name(c).to_string(),
            map.segment_name(g).to_string(),
        ),
        None => (
            k.minute,
            "none".into(),
            "none".into(),
            "none".into(),
            "unknown".into(),
        ),
    }
}

fn step_cell(map: &JourneyMap, minute: i64, step: u8, (s, t, c, g): (u8, u16, u8, u8)) -> StepCell {
    (
        minute,
        map.steps[usize::from(step)].name.clone(),
        map.stage_name(s).to_string(),
        map.touchpoint_name(t).to_string(),
        map.channel_name(c).to_string(),
        map.segment_name(g).to_string(),
    )
}

/// What a run leaves behind, as ClickHouse would hold it.
#[derive(Default)]
struct Sink {
    aggregates: BTreeMap<Cell, Counts>,
    /// Latest fact per touchpoint event id (ReplacingMergeTree: last written wins): its
    /// cell, with what it counts there.
    touchpoint_facts: HashMap<String, (Cell, Counts)>,
    /// Latest fact per stage entry (customer, event id), likewise.
    entry_facts: HashMap<(String, String), (Cell, Counts)>,
    /// Latest (journey, time, stage index) per stage entry, None when withdrawn.
    entry_places: HashMap<(String, String), Option<(u32, i64, u8)>>,
    /// Counted answer per (customer, rated key, metric), by (answer time, write order).
    answer_facts: HashMap<(String, String, Metric), (i64, Cell, Metric, i32)>,
    step_aggregates: BTreeMap<StepCell, StepCounts>,
    /// Latest fact per (start event id, step): its cell and what it counts (none when
    /// withdrawn).
    step_facts: HashMap<(String, String), (StepCell, StepCounts)>,
    /// Persisted journeys, as the commit protocol saves them.
    saved: HashMap<String, Vec<u8>>,
    /// Who is erased, and since when nothing of theirs may be written.
    erasures: Arc<Erasures>,
    forgotten: Option<String>,
    clock: ClockState,
    refused: Vec<(String, Refusal)>,
}

impl Sink {
    fn commit(&mut self, map: &JourneyMap, p: &mut PartitionProcessor) {
        let b: Batch = p.take_batch();
        if let Some(c) = &self.forgotten {
            assert_nothing_of(c, &b);
        }
        for (k, c) in &b.aggregates {
            self.aggregates.entry(cell(map, k)).or_default().merge(c);
        }
        let mut written = HashSet::new();
        for f in &b.touchpoints {
            assert!(
                written.insert(f.event.event_id().to_string()),
                "one fact per touchpoint and batch"
            );
            let key = AggKey::new(f.time, Some(f.context));
            let c = Counts {
                touchpoints: 1,
                ..Counts::default()
            };
            self.touchpoint_facts
                .insert(f.event.event_id().to_string(), (cell(map, &key), c));
        }
        let mut written = HashSet::new();
        for f in &b.entries {
            let id = (
                f.customer.to_string(),
                f.origin.event_id.as_str().to_string(),
            );
            assert!(written.insert(id.clone()), "one fact per entry and batch");
            let key = AggKey::new(f.origin.time, Some(f.context));
            let mut c = Counts {
                stage_entries: i64::from(!f.withdrawn),
                ..Counts::default()
            };
            match f.outcome.filter(|_| !f.withdrawn) {
                Some(StageOutcome::Converted { after_ms, .. }) => {
                    c.stage_conversions = 1;
                    c.convert_ms_sum = after_ms;
                }
                Some(StageOutcome::Dropped { .. }) => c.stage_dropoffs = 1,
                Some(StageOutcome::Open { .. }) => c.stage_open = 1,
                None => {}
            }
            self.entry_facts.insert(id.clone(), (cell(map, &key), c));
            let place = (f.journey_seq, f.origin.time, f.context.stage);
            self.entry_places
                .insert(id, (!f.withdrawn).then_some(place));
        }
        for f in &b.answers {
            let a = f.answer.fields();
            let rated = a.touchpoint_event_id.unwrap_or(a.response_id).to_string();
            let key = (a.customer_id(&f.customer).to_string(), rated, f.metric);
            let c = cell(map, &AggKey::new(f.time, f.context));
            if self
                .answer_facts
                .get(&key)
                .is_none_or(|(t, ..)| *t <= f.time)
            {
                self.answer_facts
                    .insert(key, (f.time, c, f.metric, i32::from(f.score)));
            }
        }
        for (k, c) in &b.step_aggregates {
            let cell = step_cell(map, k.minute, k.step, k.context);
            self.step_aggregates.entry(cell).or_default().merge(c);
        }
        let mut written = HashSet::new();
        for f in &b.steps {
            let step = map.steps[usize::from(f.step)].name.clone();
            assert!(
                written.insert((f.origin.event_id.as_str().to_string(), step.clone())),
                "one fact per step attempt and batch"
            );
            let c = f.context;
            let cell = step_cell(
                map,
                f.origin.time.div_euclid(60_000),
                f.step,
                (c.stage, c.touchpoint, c.channel, c.segment),
            );
            let mut counts = StepCounts::default();
            if !f.withdrawn {
                counts.starts = 1;
                match f.outcome {
                    StageOutcome::Converted { after_ms, .. } => {
                        counts.conversions = 1;
                        counts.convert_ms_sum = after_ms;
                        counts.within_1m = i64::from(after_ms <= 60_000);
                        counts.within_2m = i64::from(after_ms <= 120_000);
                        counts.within_5m = i64::from(after_ms <= 300_000);
                        counts.within_10m = i64::from(after_ms <= 600_000);
                    }
                    StageOutcome::Dropped { .. } => counts.dropoffs = 1,
                    StageOutcome::Open { .. } => counts.open = 1,
                }
            }
            self.step_facts.insert(
                (f.origin.event_id.as_str().to_string(), step),
                (cell, counts),
            );
        }
        for (customer, j) in &b.journeys {
            self.saved
                .insert(customer.to_string(), serde_json::to_vec(j).unwrap());
        }
        for r in &b.refused {
            let id = match &r.event {
                cxstream_core::processor::RefusedPayload::Touchpoint(t) => t.event_id.clone(),
                cxstream_core::processor::RefusedPayload::Answer(a) => a.response_id.clone(),
            };
            self.refused.push((id, r.reason));
        }
        self.clock = p.clock().state();
    }

    /// A restart: a new processor from what was committed.
    fn restore(&self, policy: EventTimePolicy) -> PartitionProcessor {
        self.restore_on(map(), policy)
    }

    fn restore_on(&self, m: Arc<JourneyMap>, policy: EventTimePolicy) -> PartitionProcessor {
        let mut p = PartitionProcessor::resumed(m, EventClock::resumed(policy, self.clock));
        p.set_erasures(self.erasures.clone());
        for (c, bytes) in &self.saved {
            let j: Journey = serde_json::from_slice(bytes).unwrap();
            p.restore(c.clone(), j, Written::WithOutcomes);
        }
        p
    }

    fn aggregates(&self) -> BTreeMap<Cell, Counts> {
        let mut a = self.aggregates.clone();
        a.retain(|_, c| !c.is_zero());
        a
    }

    /// Within each of a customer's journeys, stage entries in time order enter ever later
    /// stages: a customer is never in two stages of one journey.
    fn assert_one_stage_at_a_time(&self) {
        let mut by_journey: BTreeMap<(String, u32), Vec<(i64, u8)>> = BTreeMap::new();
        for ((customer, _), place) in &self.entry_places {
            if let Some((seq, time, stage)) = place {
                by_journey
                    .entry((customer.clone(), *seq))
                    .or_default()
                    .push((*time, *stage));
            }
        }
        for (journey, mut entries) in by_journey {
            entries.sort_unstable();
            assert!(
                entries.windows(2).all(|w| w[0].1 < w[1].1),
                "{journey:?} enters {entries:?}"
            );
        }
    }

    fn step_aggregates(&self) -> BTreeMap<StepCell, StepCounts> {
        let mut a = self.step_aggregates.clone();
        a.retain(|_, c| !c.is_zero());
        a
    }

    fn step_facts_summed(&self) -> BTreeMap<StepCell, StepCounts> {
        let mut out: BTreeMap<StepCell, StepCounts> = BTreeMap::new();
        for (cell, c) in self.step_facts.values() {
            out.entry(cell.clone()).or_default().merge(c);
        }
        out.retain(|_, c| !c.is_zero());
        out
    }

    /// The facts, summed into cells as a query over the facts tables would.
    fn facts_summed(&self) -> BTreeMap<Cell, Counts> {
        let mut out: BTreeMap<Cell, Counts> = BTreeMap::new();
        for (cell, c) in self
            .touchpoint_facts
            .values()
            .chain(self.entry_facts.values())
        {
            out.entry(cell.clone()).or_default().merge(c);
        }
        for (_, c, metric, score) in self.answer_facts.values() {
            out.entry(c.clone())
                .or_default()
                .add_answer(*metric, *score, 1);
        }
        out
    }
}

/// Actions between records: nothing, commit a batch, or commit and restart.
#[derive(Debug, Clone, Copy)]
enum Cut {
    None,
    Commit,
    Restart,
    /// An input read to its end and quiet: it stops holding the watermark back.
    Idle(Input),
}

/// A batch holds no fact of `customer`, and what it persists of them (under their
/// pseudonym) names neither them nor anything they wrote.
fn assert_nothing_of(customer: &str, b: &Batch) {
    let theirs = |id: &Option<String>| {
        id.as_deref()
            .is_some_and(|c| c == customer || c.starts_with("erased:"))
    };
    assert!(!b.touchpoints.iter().any(|f| {
        let raw = f.event.fields().customer_id(&f.customer).to_string();
        theirs(&Some(raw))
    }));
    assert!(!b.answers.iter().any(|f| {
        let raw = f.answer.fields().customer_id(&f.customer).to_string();
        theirs(&Some(raw))
    }));
    assert!(!b
        .entries
        .iter()
        .any(|f| theirs(&Some(f.customer.to_string()))));
    assert!(!b
        .steps
        .iter()
        .any(|f| theirs(&Some(f.customer.to_string()))));
    assert!(!b.refused.iter().any(|r| theirs(r.customer_id())));
    for (key, j) in &b.journeys {
        assert_ne!(&**key, customer, "their journey persisted under their id");
        let text = serde_json::to_string(j).unwrap();
        let quoted = format!("\"{customer}\"");
        for secret in [quoted.as_str(), "call me", "555-0199"] {
            assert!(!text.contains(secret), "{secret} kept in {text}");
        }
    }
}

fn run(recs: &[Rec], cuts: &[Cut], policy: EventTimePolicy) -> Sink {
    run_erasing(recs, cuts, policy, None)
}

/// As [`run`]; with `erase` = (i, customer), the customer is erased after the i-th record.
fn run_erasing(
    recs: &[Rec],
    cuts: &[Cut],
    policy: EventTimePolicy,
    erase: Option<(usize, &str)>,
) -> Sink {
    let m = map();
    let mut sink = Sink::default();
    let mut p = PartitionProcessor::new(m.clone(), policy);
    let erase_now = |sink: &mut Sink, p: &mut PartitionProcessor, customer: &str| {
        let mut e = Erasures::default();
        e.insert(&fingerprint(customer)).unwrap();
        sink.erasures = Arc::new(e);
        p.set_erasures(sink.erasures.clone());
        sink.forgotten = Some(customer.to_string());
    };
    for (i, r) in recs.iter().enumerate() {
        if let Some((_, customer)) = erase.filter(|(at, _)| *at == i) {
            erase_now(&mut sink, &mut p, customer);
        }
        apply(&mut p, r, i as i64);
        match cuts.get(i).copied().unwrap_or(Cut::None) {
            Cut::None => {}
            Cut::Commit => sink.commit(&m, &mut p),
            Cut::Restart => {
                sink.commit(&m, &mut p);
                p = sink.restore(policy);
            }
            Cut::Idle(input) => p.set_idle(input, true),
        }
    }
    if let Some((_, customer)) = erase.filter(|(at, _)| *at >= recs.len()) {
        erase_now(&mut sink, &mut p, customer);
    }
    sink.commit(&m, &mut p);
    sink
}

fn apply(p: &mut PartitionProcessor, r: &Rec, offset: i64) {
    let res = match r {
        Rec::T(t) => p.on_touchpoint(t.clone(), offset, None),
        Rec::A(a) => p.on_answer(a.clone(), offset, None),
    };
    res.expect("valid record");
}

/// How journeys are let go in [`run_letting_go_on`].
#[derive(Debug, Clone, Copy)]
struct LetGo {
    /// Journeys with events are let go too, once quiet this long behind the watermark.
    quiet: Option<i64>,
    /// What the next this many records need is read back together (as the journey service
    /// reads back for the records polled together), before each one's own.
    ahead: usize,
    /// A batch is committed after the next record was applied (one batch in flight), as
    /// the journey service pipelines its commits.
    pipelined: bool,
}

const IDLE_ONLY: LetGo = LetGo {
    quiet: None,
    ahead: 1,
    pipelined: false,
};

/// As [`run`], with idle journeys let go once committed and read back as the journey
/// service does: the sink is the store, found by customer key or by ClickHouse's
/// `sipHash64` of it (computed here, not by the processor). Returns the sink and how many
/// journeys were read back.
fn run_letting_go(recs: &[Rec], cuts: &[Cut], policy: EventTimePolicy) -> (Sink, usize) {
    run_letting_go_on(map(), recs, cuts, policy, IDLE_ONLY)
}

fn letting_go(m: Arc<JourneyMap>, policy: EventTimePolicy, how: LetGo) -> PartitionProcessor {
    let p = PartitionProcessor::new(m, policy).letting_go();
    match how.quiet {
        Some(after) => p.letting_quiet_journeys_go(after),
        None => p,
    }
}

fn read_back_for(r: &Rec) -> (&Option<String>, i64, Input) {
    match r {
        Rec::T(t) => (&t.customer_id, t.event_time, Input::Touchpoints),
        Rec::A(a) => (&a.customer_id, a.answer_time, Input::Answers),
    }
}

fn run_letting_go_on(
    m: Arc<JourneyMap>,
    recs: &[Rec],
    cuts: &[Cut],
    policy: EventTimePolicy,
    how: LetGo,
) -> (Sink, usize) {
    let mut sink = Sink::default();
    let mut p = letting_go(m.clone(), policy, how);
    let mut loaded = 0;
    let mut in_flight = false;
    for (i, r) in recs.iter().enumerate() {
        if i % how.ahead.max(1) == 0 {
            let next = &recs[i..(i + how.ahead).min(recs.len())];
            let (customers, due_by) = p.to_load_ahead(next.iter().map(read_back_for));
            loaded += sink.load_all(&mut p, &customers, due_by);
        }
        let (customer, time, input) = read_back_for(r);
        let load = p.to_load(customer, time, input);
        loaded += sink.load(&mut p, load.customer.as_deref(), load.due_by);
        apply(&mut p, r, i as i64);
        let cut = cuts.get(i).copied().unwrap_or(Cut::None);
        if in_flight && matches!(cut, Cut::None) {
            // Committed while the next record was applied.
            p.committed();
            in_flight = false;
        }
        match cut {
            Cut::None => {}
            Cut::Commit => {
                if std::mem::take(&mut in_flight) {
                    p.committed();
                }
                sink.commit(&m, &mut p);
                if how.pipelined {
                    in_flight = true;
                } else {
                    p.committed();
                }
            }
            Cut::Restart => {
                sink.commit(&m, &mut p);
                in_flight = false;
                p = sink.restore_on(m.clone(), policy).letting_go();
                if let Some(after) = how.quiet {
                    p = p.letting_quiet_journeys_go(after);
                }
                p.let_go_restored();
            }
            Cut::Idle(input) => {
                let due = p.to_load_when_idle(input);
                loaded += sink.load(&mut p, None, due);
                p.set_idle(input, true);
            }
        }
    }
    sink.commit(&m, &mut p);
    (sink, loaded)
}

impl Sink {
    /// Reads journeys back into `p`: the customers', and those due by `due_by`.
    fn load_all(
        &self,
        p: &mut PartitionProcessor,
        customers: &[String],
        due_by: Option<i64>,
    ) -> usize {
        let read: usize = customers.iter().map(|c| self.load(p, Some(c), None)).sum();
        read + self.load(p, None, due_by)
    }

    /// Reads journeys back into `p`: the customer's, and those due by `due_by`.
    fn load(
        &self,
        p: &mut PartitionProcessor,
        customer: Option<&str>,
        due_by: Option<i64>,
    ) -> usize {
        let mut n = 0;
        let mut read = |p: &mut PartitionProcessor, c: &String| {
            let j: Journey = serde_json::from_slice(&self.saved[c]).unwrap();
            n += usize::from(p.restore_loaded(c.clone(), j, Written::WithOutcomes));
        };
        if let Some(c) = customer {
            let c = c.to_string();
            if self.saved.contains_key(&c) {
                read(p, &c);
            }
        }
        if let Some(by) = due_by {
            let wanted: HashSet<u64> = p.stored_due_by(by).into_iter().collect();
            let mut found = HashSet::new();
            for c in self.saved.keys() {
                let h = clickhouse_sip_hash64(c);
                if wanted.contains(&h) {
                    found.insert(h);
                    read(p, c);
                }
            }
            assert_eq!(found, wanted, "every journey let go is in the store");
        }
        n
    }
}

/// ClickHouse's `sipHash64` of a string: SipHash-2-4 with both keys 0.
fn clickhouse_sip_hash64(s: &str) -> u64 {
    use std::hash::Hasher;
    let mut h = siphasher::sip::SipHasher24::new_with_keys(0, 0);
    h.write(s.as_bytes());
    h.finish()
}

// ---------------------------------------------------------------------------------------
// Histories: long gaps, browsing bursts, answers before their touchpoint, re-deliveries
// long after, repeated answers, answers naming touchpoints far back.

fn customer_history(c: u8) -> impl Strategy<Value = Vec<Rec>> {
    let step = (
        0usize..4,
        1i64..4_000_000,
        0u8..6,
        0i32..=10,
        0u8..4,
        any::<bool>(),
        0u8..4,
    );
    prop::collection::vec(step, 1..14).prop_map(move |steps| {
        let c = format!("c{c}");
        let (mut t, mut recs, mut ids) = (1_700_000_000_000i64, Vec::new(), Vec::new());
        for (i, (stage, dt, kind, score, seg, named, repeat)) in steps.into_iter().enumerate() {
            // Distinct times (no ties between a customer's touchpoints or within a slot).
            t += dt * 7 + 3;
            let id = format!("{c}-e{i}");
            let segment = (seg < 2).then(|| SEGMENTS[usize::from(seg)]);
            // 3: a touchpoint the map does not declare (off-map).
            let name = TOUCHPOINTS.get(stage).map_or("help_search", |x| x.0);
            recs.push(Rec::T(tp(&id, &c, t, name, segment)));
            ids.push(id.clone());
            if kind < 3 {
                let m = Metric::ALL[usize::from(kind)];
                let (lo, hi) = m.range();
                // repeat 3: a survey tool whose clock is behind dates the answer before the
                // touchpoint it rates, and the response also answers another question.
                let skewed = repeat == 3;
                let repeat = repeat.min(2);
                // Named answers may rate a touchpoint further back than the last one.
                let rated =
                    named.then(|| ids[ids.len().saturating_sub(1 + usize::from(repeat))].clone());
                for k in 0..=repeat {
                    let at = if skewed {
                        t - dt * 3 - 1 - i64::from(k) * 97
                    } else {
                        t + 1 + i64::from(k) * 97
                    };
                    let a = ans(
                        &format!("{c}-r{i}-{k}"),
                        &c,
                        at,
                        m,
                        (score + i32::from(k)).clamp(lo, hi),
                        rated.as_deref(),
                    );
                    if skewed && k == 0 {
                        let other = Metric::ALL[(usize::from(kind) + 1) % 3];
                        let (lo, hi) = other.range();
                        let mut b = a.clone();
                        (b.metric, b.score, b.answer_time) = (other, score.clamp(lo, hi), at - 13);
                        recs.push(Rec::A(b));
                    }
                    recs.push(Rec::A(a));
                }
            }
        }
        recs
    })
}

fn histories() -> impl Strategy<Value = Vec<Rec>> {
    prop::collection::vec(0u8..5, 1..4)
        .prop_flat_map(|cs| {
            let cs: Vec<u8> = cs.into_iter().collect::<HashSet<_>>().into_iter().collect();
            cs.into_iter().map(customer_history).collect::<Vec<_>>()
        })
        .prop_map(|v| v.into_iter().flatten().collect())
}

/// The records with some re-delivered (a producer retry: identical, at any later point),
/// in an arbitrary arrival order.
fn arrivals() -> impl Strategy<Value = (Vec<Rec>, Vec<Rec>)> {
    histories().prop_flat_map(|recs| {
        let n = recs.len();
        (
            Just(recs),
            prop::collection::vec(any::<prop::sample::Index>(), 0..=n / 3),
        )
            .prop_flat_map(|(recs, dup)| {
                let mut all = recs.clone();
                all.extend(dup.iter().map(|i| recs[i.index(recs.len())].clone()));
                (Just(recs), Just(all).prop_shuffle())
            })
    })
}

/// The watermark rule, by the README: the lowest of the non-idle inputs' highest applied
/// event times (the latest of all when both are idle), once those were seen, never moving
/// back; late = dated before watermark − lateness. Returns the applied records with the
/// horizon each was applied at, the late ones, and the watermark at the end.
fn watermark_rule(
    arrived: &[Rec],
    cuts: &[Cut],
    lateness: i64,
) -> (Vec<(Rec, Option<i64>)>, Vec<Rec>, Option<i64>) {
    let (mut high, mut idle, mut wm) = ([None::<i64>; 2], [false; 2], None::<i64>);
    let advance = |high: &[Option<i64>; 2], idle: &[bool; 2], wm: &mut Option<i64>| {
        let active: Vec<Option<i64>> = (0..2).filter(|i| !idle[*i]).map(|i| high[i]).collect();
        let w = if active.is_empty() {
            high.iter().flatten().copied().max()
        } else {
            active
                .into_iter()
                .collect::<Option<Vec<i64>>>()
                .and_then(|v| v.into_iter().min())
        };
        if let Some(w) = w {
            *wm = Some(wm.map_or(w, |m| m.max(w)));
        }
    };
    let (mut applied, mut late) = (Vec::new(), Vec::new());
    for (i, r) in arrived.iter().enumerate() {
        if wm.is_some_and(|w| r.time() < w - lateness) {
            late.push(r.clone());
        } else {
            let input = usize::from(matches!(r, Rec::A(_)));
            high[input] = Some(high[input].map_or(r.time(), |h| h.max(r.time())));
            idle[input] = false;
            advance(&high, &idle, &mut wm);
            // The horizon the processor folds with: after this event's own advance.
            applied.push((r.clone(), wm.map(|w| w - lateness)));
        }
        match cuts.get(i) {
            Some(Cut::Idle(input)) => {
                idle[usize::from(*input == Input::Answers)] = true;
                advance(&high, &idle, &mut wm);
            }
            // A restarted service finds out again which inputs are idle.
            Some(Cut::Restart) => idle = [false; 2],
            _ => {}
        }
    }
    (applied, late, wm)
}

fn cuts(n: usize) -> impl Strategy<Value = Vec<Cut>> {
    prop::collection::vec(
        prop_oneof![
            12 => Just(Cut::None),
            4 => Just(Cut::Commit),
            2 => Just(Cut::Restart),
            1 => Just(Cut::Idle(Input::Touchpoints)),
            1 => Just(Cut::Idle(Input::Answers)),
        ],
        n..=n,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Any arrival order, re-deliveries, batch cuts and restarts give the reference's
    /// counts, and the facts sum to the aggregates.
    #[test]
    fn counts_equal_the_reference_model_in_any_arrival_order(
        (recs, arrived) in arrivals(),
        cuts in cuts(60),
    ) {
        let sink = run(&arrived, &cuts, no_lateness());
        let (_, _, watermark) = watermark_rule(&arrived, &cuts, i64::MAX / 4);
        prop_assert_eq!(sink.clock.watermark, watermark);
        let expected = reference(&recs, watermark);
        prop_assert_eq!(sink.aggregates(), expected.clone());
        let mut facts = sink.facts_summed();
        facts.retain(|_, c| !c.is_zero());
        prop_assert_eq!(facts, expected.clone());
        sink.assert_one_stage_at_a_time();
        let steps = reference_steps(&recs, watermark);
        prop_assert_eq!(sink.step_aggregates(), steps.clone());
        prop_assert_eq!(sink.step_facts_summed(), steps.clone());
        // Journeys with events let go as soon as committed and quiet, read back ahead.
        let how = LetGo { quiet: Some(0), ahead: 4, pipelined: true };
        let (sink, _) = run_letting_go_on(map(), &arrived, &cuts, no_lateness(), how);
        prop_assert_eq!(sink.aggregates(), expected.clone());
        let mut facts = sink.facts_summed();
        facts.retain(|_, c| !c.is_zero());
        prop_assert_eq!(facts, expected);
        prop_assert_eq!(sink.step_aggregates(), steps.clone());
        prop_assert_eq!(sink.step_facts_summed(), steps);
    }

    /// A customer erased at any point (their answers carrying comments and personal
    /// attributes) still counts as the reference says, as anonymous counts, while nothing
    /// of theirs is written from then on, across batch cuts and restarts.
    #[test]
    fn an_erased_customer_counts_anonymously_and_is_never_written_again(
        (recs, arrived) in arrivals(),
        cuts in cuts(60),
        at in any::<prop::sample::Index>(),
    ) {
        let victim = match &recs[0] {
            Rec::T(t) => t.customer_id.clone().unwrap(),
            Rec::A(a) => a.customer_id.clone().unwrap(),
        };
        let personal = |r: &Rec| {
            let mut r = r.clone();
            if let Rec::A(a) = &mut r {
                if a.customer_id.as_deref() == Some(victim.as_str()) {
                    a.comment = Some("call me".into());
                    a.attributes.insert("phone".into(), "555-0199".into());
                }
            }
            r
        };
        let arrived: Vec<Rec> = arrived.iter().map(personal).collect();
        let at = at.index(arrived.len() + 1);
        let sink = run_erasing(&arrived, &cuts, no_lateness(), Some((at, &victim)));
        let (_, _, watermark) = watermark_rule(&arrived, &cuts, i64::MAX / 4);
        prop_assert_eq!(sink.aggregates(), reference(&recs, watermark));
        prop_assert_eq!(sink.step_aggregates(), reference_steps(&recs, watermark));
    }

    /// With a finite allowed lateness, exactly the events the watermark rule calls late are
    /// refused (and recorded); the rest count as the reference says — also with idle
    /// journeys let go once committed and read back before an event or a deadline needs
    /// them (journeys go idle once the horizon passes all their events).
    #[test]
    fn events_beyond_the_allowed_lateness_are_refused_and_the_rest_count(
        (_, arrived) in arrivals(),
        lateness in 1i64..20_000_000,
        cuts in cuts(60),
    ) {
        let policy = EventTimePolicy { allowed_lateness_ms: lateness, max_future_ms: i64::MAX / 4 };
        let (applied, late, watermark) = watermark_rule(&arrived, &cuts, lateness);
        let expected = reference_with_horizons(&applied, watermark);
        let applied: Vec<Rec> = applied.into_iter().map(|(r, _)| r).collect();
        let expected_steps = reference_steps(&applied, watermark);
        let quiet = LetGo { quiet: Some(lateness / 3), ahead: 3, pipelined: true };
        for sink in [
            run(&arrived, &cuts, policy),
            run_letting_go(&arrived, &cuts, policy).0,
            run_letting_go_on(map(), &arrived, &cuts, policy, quiet).0,
        ] {
            prop_assert_eq!(sink.refused.len(), late.len());
            prop_assert!(sink.refused.iter().all(|(_, why)| *why == Refusal::Late));
            prop_assert_eq!(sink.clock.watermark, watermark);
            prop_assert_eq!(sink.aggregates(), expected.clone());
            prop_assert_eq!(sink.step_aggregates(), expected_steps.clone());
        }
    }
}

#[test]
fn a_late_touchpoint_moves_later_events_into_its_stage_and_segment() {
    let m = map();
    let mut p = PartitionProcessor::new(m.clone(), no_lateness());
    p.on_touchpoint(tp("e2", "c", 120_000, "ad_click", None), 0, None)
        .unwrap();
    p.on_answer(ans("r", "c", 130_000, Metric::Nps, 10, Some("e2")), 0, None)
        .unwrap();
    // Arrives last, dated first: a purchase by a vip.
    p.on_touchpoint(tp("e1", "c", 60_000, "purchase", Some("vip")), 1, None)
        .unwrap();
    let b = p.take_batch();
    let mut net: BTreeMap<Cell, Counts> = BTreeMap::new();
    for (k, c) in &b.aggregates {
        net.entry(cell(&m, k)).or_default().merge(c);
    }
    net.retain(|_, c| !c.is_zero());
    let at = |min: i64, tp: &str| {
        (
            min,
            "conversion".to_string(),
            tp.to_string(),
            "web".to_string(),
            "vip".to_string(),
        )
    };
    assert_eq!(net.len(), 2, "{net:?}");
    assert_eq!(net[&at(1, "purchase")].stage_entries, 1);
    assert_eq!(net[&at(2, "ad_click")].touchpoints, 1);
    assert_eq!(net[&at(2, "ad_click")].nps_promoters, 1);
    // The corrected fact was written again: once per batch, its last version.
    let e2: Vec<_> = b
        .touchpoints
        .iter()
        .filter(|f| f.event.event_id() == "e2")
        .collect();
    assert_eq!(e2.len(), 1);
    assert_eq!(m.stage_name(e2[0].context.stage), "conversion");
}

#[test]
fn a_resent_response_counts_once() {
    let mut p = PartitionProcessor::new(map(), no_lateness());
    p.on_touchpoint(tp("e1", "c", 1_000, "purchase", None), 0, None)
        .unwrap();
    for offset in 0..3 {
        p.on_answer(ans("r1", "c", 2_000, Metric::Csat, 5, None), offset, None)
            .unwrap();
    }
    let b = p.take_batch();
    let n: i64 = b.aggregates.iter().map(|(_, c)| c.csat_n).sum();
    assert_eq!((n, b.duplicates, b.answers.len()), (1, 2, 1));
}

#[test]
fn an_event_dated_in_the_future_is_refused_and_does_not_move_the_watermark() {
    let mut p = PartitionProcessor::new(map(), EventTimePolicy::default());
    let now = 1_700_000_000_000;
    p.on_touchpoint(tp("e1", "c", now, "ad_click", None), 0, Some(now))
        .unwrap();
    p.on_answer(ans("r1", "c", now, Metric::Nps, 9, None), 0, Some(now))
        .unwrap();
    let year = 365 * 86_400_000;
    p.on_touchpoint(tp("e2", "c", now + year, "purchase", None), 1, Some(now))
        .unwrap();
    assert_eq!(p.watermark_ms(), Some(now));
    let b = p.take_batch();
    assert_eq!(b.refused.len(), 1);
    assert_eq!(b.refused[0].reason, Refusal::Future);
    assert_eq!(b.touchpoints.len(), 1);
}

/// Answers that lag (a survey tool sending late) hold the watermark back, not how far the
/// touchpoint counts are final; that goes as far as the touchpoints applied, but not past
/// when the latest was written (one dated ahead of its record, within the future bound,
/// does not close minutes still to come), and never behind the watermark.
#[test]
fn touchpoints_are_final_as_far_as_they_came_and_were_written() {
    let mut p = PartitionProcessor::new(map(), EventTimePolicy::default());
    let now = 1_700_000_000_000;
    let hour = 3_600_000;
    p.on_answer(
        ans("r1", "c", now - 3 * hour, Metric::Nps, 9, None),
        0,
        Some(now),
    )
    .unwrap();
    assert_eq!(p.touchpoints_final_ms(), None, "no touchpoint yet");
    p.on_touchpoint(tp("e1", "c", now, "ad_click", None), 0, Some(now))
        .unwrap();
    assert_eq!(p.watermark_ms(), Some(now - 3 * hour));
    assert_eq!(p.touchpoints_final_ms(), Some(now));
    // Dated half an hour after it was written: accepted, but final only up to its writing.
    p.on_touchpoint(
        tp("e2", "c", now + hour / 2, "product_view", None),
        1,
        Some(now + 60_000),
    )
    .unwrap();
    assert_eq!(p.touchpoints_final_ms(), Some(now + 60_000));
    // Without record timestamps nothing bounds the touchpoints' time: the watermark only.
    let mut q = PartitionProcessor::new(map(), EventTimePolicy::default());
    q.on_answer(ans("r1", "c", now - hour, Metric::Nps, 9, None), 0, None)
        .unwrap();
    q.on_touchpoint(tp("e1", "c", now, "ad_click", None), 0, None)
        .unwrap();
    assert_eq!(q.touchpoints_final_ms(), Some(now - hour));
}

#[test]
fn invalid_records_are_refused_with_a_reason() {
    let mut p = PartitionProcessor::new(map(), no_lateness());
    assert_eq!(
        p.on_answer(ans("r", "c", 1, Metric::Csat, 6, None), 0, None),
        Err(Invalid::ScoreOutOfRange)
    );
    let mut t = tp("e", "c", 1, "ad_click", None);
    t.customer_id = None;
    assert_eq!(p.on_touchpoint(t, 0, None), Err(Invalid::MissingCustomerId));
    // A touchpoint the map does not declare is counted off-map, not refused.
    assert_eq!(
        p.on_touchpoint(tp("e", "c", 1, "teleport", None), 0, None),
        Ok(())
    );
    let mut t = tp("e", "c", 1, "ad_click", None);
    t.channel = "fax".into();
    assert_eq!(p.on_touchpoint(t, 0, None), Err(Invalid::UnknownChannel));
    // Outside what a DateTime holds: a wrong unit (seconds as µs) or a broken clock.
    assert_eq!(
        p.on_touchpoint(tp("e", "c", -1, "ad_click", None), 0, None),
        Err(Invalid::TimeOutOfRange)
    );
    assert_eq!(
        p.on_answer(
            ans("r", "c", 1_793_577_600_000_000, Metric::Nps, 9, None),
            0,
            None
        ),
        Err(Invalid::TimeOutOfRange)
    );
    assert_eq!(
        p.on_touchpoint(tp("e", "c", 4_294_967_295_999, "ad_click", None), 0, None),
        Ok(())
    );
    // Erased customers' pseudonyms are the processor's own: never a producer's.
    assert_eq!(
        p.on_touchpoint(tp("e2", " erased:ab", 1, "ad_click", None), 0, None),
        Err(Invalid::ReservedCustomerId)
    );
    assert_eq!(
        p.on_answer(ans("r2", "erased:ab", 1, Metric::Nps, 9, None), 0, None),
        Err(Invalid::ReservedCustomerId)
    );
}

/// Beside another map, an event naming that map's stage is that map's business: here it
/// takes this map's stage for its touchpoint. A stage no running map declares is refused.
#[test]
fn a_stage_named_by_another_running_map_is_not_refused() {
    let other = MAP
        .replace("journey: shop", "journey: care")
        .replace("name: awareness", "name: contact")
        .replace("stage: awareness", "stage: contact");
    let maps = cxstream_core::JourneyMaps::new(vec![
        JourneyMap::from_yaml("shop.yaml", MAP).unwrap(),
        JourneyMap::from_yaml("care.yaml", &other).unwrap(),
    ])
    .unwrap();
    let mut p = PartitionProcessor::new(maps.first().clone(), no_lateness());
    let mut t = tp("e1", "c", 1, "ad_click", None);
    t.stage = Some("contact".into());
    assert_eq!(p.on_touchpoint(t, 0, None), Ok(()));
    let mut t = tp("e2", "c", 2, "purchase", None);
    t.stage = Some("made_up".into());
    assert_eq!(p.on_touchpoint(t, 1, None), Err(Invalid::UnknownStage));
    let batch = p.take_batch();
    let facts: Vec<(u8, bool)> = batch
        .touchpoints
        .iter()
        .map(|f| (f.context.stage, f.stage_entered))
        .collect();
    assert_eq!(facts, [(0, true)], "ad_click's own stage, awareness");
}

/// A journey persisted before stage outcomes were counted (its entries' outcomes are in no
/// committed count): restored, its outcomes are counted once, and everything ends as the
/// reference says.
#[test]
fn journeys_written_before_outcomes_have_them_counted_once_on_restore() {
    let m = map();
    let hour = 3_600_000;
    let t0 = 1_700_000_000_000;
    let first = [
        Rec::T(tp("a1", "a", t0, "ad_click", None)),
        Rec::T(tp("b1", "b", t0 + hour, "ad_click", None)),
        Rec::T(tp("b2", "b", t0 + 2 * hour, "product_view", None)),
        Rec::A(ans("r1", "a", t0 + 3 * hour, Metric::Nps, 9, None)),
    ];
    let second = [
        Rec::T(tp("a2", "a", t0 + 4 * hour, "product_view", None)),
        Rec::T(tp("c1", "c", t0 + 20 * hour, "ad_click", None)),
        Rec::A(ans("r2", "c", t0 + 20 * hour, Metric::Csat, 4, None)),
    ];
    let feed = |p: &mut PartitionProcessor, recs: &[Rec]| {
        for (i, r) in recs.iter().enumerate() {
            match r {
                Rec::T(t) => p.on_touchpoint(t.clone(), i as i64, None),
                Rec::A(a) => p.on_answer(a.clone(), i as i64, None),
            }
            .unwrap();
        }
    };
    let mut sink = Sink::default();
    let mut p = PartitionProcessor::new(m.clone(), no_lateness());
    feed(&mut p, &first);
    sink.commit(&m, &mut p);
    // What an earlier version committed: the same, without outcomes.
    for c in sink.aggregates.values_mut() {
        (
            c.stage_conversions,
            c.convert_ms_sum,
            c.stage_dropoffs,
            c.stage_open,
        ) = (0, 0, 0, 0);
    }
    let mut p =
        PartitionProcessor::resumed(m.clone(), EventClock::resumed(no_lateness(), sink.clock));
    for (c, bytes) in &sink.saved {
        let j: Journey = serde_json::from_slice(bytes).unwrap();
        p.restore(c.clone(), j, Written::BeforeOutcomes);
    }
    sink.commit(&m, &mut p);
    // Persisted again with the outcomes counted: a second restore counts nothing twice.
    let mut p = sink.restore(no_lateness());
    feed(&mut p, &second);
    sink.commit(&m, &mut p);
    let all: Vec<Rec> = first.iter().chain(&second).cloned().collect();
    let expected = reference(&all, sink.clock.watermark);
    assert_eq!(sink.aggregates(), expected);
    let outcomes: i64 = expected
        .values()
        .map(|c| c.stage_conversions + c.stage_dropoffs + c.stage_open)
        .sum();
    assert_eq!(
        outcomes, 5,
        "a1 and b1 converted, a2 and b2 dropped off, c1 open"
    );
}

/// A journey let go is read back when its customer comes back and when the watermark
/// reaches its entry's deadline, and counts as if it had stayed held.
#[test]
fn a_journey_let_go_is_read_back_for_its_customer_and_for_its_deadline() {
    const DAY: i64 = 86_400_000;
    let t0 = 1_700_000_000_000i64;
    let recs = vec![
        // c's entry waits 6 h; e's waits 2 h; d moves the clock a day and a half on.
        Rec::T(tp("c-1", "c", t0, "ad_click", None)),
        Rec::T(tp("e-1", "e", t0 + 1000, "product_view", None)),
        Rec::T(tp("d-1", "d", t0 + 3 * DAY / 2, "ad_click", None)),
        // c comes back: its journey is read back for the purchase.
        Rec::T(tp("c-2", "c", t0 + 3 * DAY / 2 + 1000, "purchase", None)),
        Rec::T(tp("d-2", "d", t0 + 3 * DAY, "product_view", None)),
    ];
    let cuts = idle_answers_then_commits(recs.len());
    let policy = an_hour_late();
    let plain = run(&recs, &cuts, policy);
    let (let_go, loaded) = run_letting_go(&recs, &cuts, policy);
    assert_eq!(let_go.aggregates(), plain.aggregates());
    assert_eq!(let_go.step_aggregates(), plain.step_aggregates());
    assert_eq!(loaded, 1, "c read back for its purchase");
    let dropped: i64 = plain.aggregates().values().map(|c| c.stage_dropoffs).sum();
    assert!(dropped >= 1, "e's entry dropped off");
}

/// A journey let go while its entry waits for a deadline days away is read back when the
/// watermark comes near it, and the entry drops off then.
#[test]
fn a_journey_let_go_is_read_back_before_its_deadline_passes() {
    const DAY: i64 = 86_400_000;
    let m = awareness_for_three_days();
    let t0 = 1_700_000_000_000i64;
    let recs = vec![
        Rec::T(tp("f-1", "f", t0, "ad_click", None)),
        Rec::T(tp("d-1", "d", t0 + 3 * DAY / 2, "ad_click", None)),
        Rec::T(tp("d-2", "d", t0 + 4 * DAY, "product_view", None)),
    ];
    let cuts = vec![Cut::Idle(Input::Answers), Cut::Commit, Cut::Commit];
    let policy = an_hour_late();
    let (sink, loaded) = run_letting_go_on(m, &recs, &cuts, policy, IDLE_ONLY);
    assert_eq!(loaded, 1, "f read back for its deadline");
    assert_dropped_off_once(&sink, t0);
}

/// A customer erased after their journey was let go: the store finds it by the erasure's
/// fingerprint (ClickHouse's `lower(hex(SHA256(customer_id)))`, computed here), and it moves
/// under the pseudonym like a held one. Nothing of theirs is written again, and their open
/// entry still drops off when its deadline comes.
#[test]
fn a_journey_let_go_of_a_customer_erased_since_is_read_back_and_moved() {
    use sha2::{Digest, Sha256};
    const DAY: i64 = 86_400_000;
    let m = awareness_for_three_days();
    let policy = an_hour_late();
    let t0 = 1_700_000_000_000i64;
    let mut sink = Sink::default();
    let mut p = PartitionProcessor::new(m.clone(), policy).letting_go();
    p.on_touchpoint(tp("f-1", "f", t0, "ad_click", None), 0, None)
        .unwrap();
    p.set_idle(Input::Answers, true);
    sink.commit(&m, &mut p);
    p.committed();
    p.on_touchpoint(tp("d-1", "d", t0 + 3 * DAY / 2, "ad_click", None), 1, None)
        .unwrap();
    sink.commit(&m, &mut p);
    p.committed();
    assert_eq!(p.stored_journeys(), 1, "f let go");

    let mut erased = Erasures::default();
    erased.insert(&fingerprint("f")).unwrap();
    sink.erasures = Arc::new(erased);
    p.set_erasures(sink.erasures.clone());
    let wanted = format!("{:x}", Sha256::digest("f".as_bytes()));
    for (c, bytes) in &sink.saved {
        if format!("{:x}", Sha256::digest(c.as_bytes())) == wanted {
            let j: Journey = serde_json::from_slice(bytes).unwrap();
            assert!(p.restore_loaded(c.clone(), j, Written::WithOutcomes));
        }
    }
    assert_eq!(p.stored_journeys(), 0);
    sink.forgotten = Some("f".into());
    sink.commit(&m, &mut p);
    p.committed();
    let d2 = tp("d-2", "d", t0 + 4 * DAY, "product_view", None);
    let load = p.to_load(&d2.customer_id, d2.event_time, Input::Touchpoints);
    assert_eq!(load.customer, None);
    sink.load(&mut p, None, load.due_by);
    p.on_touchpoint(d2, 2, None).unwrap();
    sink.commit(&m, &mut p);
    assert_dropped_off_once(&sink, t0);
}

/// A journey with events inside the allowed lateness, quiet for the time set, is let go once
/// committed (not only idle ones), read back when its customer comes back, and read back
/// when its entry's deadline comes: it counts as if it had stayed held.
#[test]
fn a_quiet_journey_with_events_is_let_go_and_read_back_when_needed() {
    const HOUR: i64 = 3_600_000;
    let m = awareness_for_three_days();
    let t0 = 1_700_000_000_000i64;
    let recs = vec![
        Rec::T(tp("c-1", "c", t0, "ad_click", None)),
        Rec::T(tp("f-1", "f", t0 + 1000, "ad_click", None)),
        // Two hours on: c and f are quiet, with their events a day inside the lateness.
        Rec::T(tp("d-1", "d", t0 + 2 * HOUR, "ad_click", None)),
        // c comes back; f never does, and its awareness entry drops off in three days.
        Rec::T(tp("c-2", "c", t0 + 3 * HOUR, "purchase", None)),
        Rec::T(tp("d-2", "d", t0 + 80 * HOUR, "product_view", None)),
    ];
    let cuts = idle_answers_then_commits(recs.len());
    let policy = EventTimePolicy {
        allowed_lateness_ms: 24 * HOUR,
        max_future_ms: i64::MAX / 4,
    };
    let how = LetGo {
        quiet: Some(HOUR),
        ahead: 1,
        pipelined: false,
    };
    let plain = run_letting_go_on(m.clone(), &recs, &cuts, policy, IDLE_ONLY);
    let (quiet, loaded) = run_letting_go_on(m, &recs, &cuts, policy, how);
    assert_eq!(plain.1, 0, "nothing idle to let go");
    assert_eq!(
        loaded, 2,
        "c read back for its purchase, f for its deadline"
    );
    assert_eq!(quiet.aggregates(), plain.0.aggregates());
    assert_eq!(quiet.step_aggregates(), plain.0.step_aggregates());
    let dropped: i64 = quiet.aggregates().values().map(|c| c.stage_dropoffs).sum();
    assert!(dropped >= 1, "f's entry dropped off");
}

/// The answers input is idle from the first record on, and a batch is committed after each.
fn idle_answers_then_commits(records: usize) -> Vec<Cut> {
    let mut cuts = vec![Cut::Commit; records];
    cuts[0] = Cut::Idle(Input::Answers);
    cuts
}

/// The shop map with awareness entries waiting three days: journeys go idle (with an hour
/// of lateness) long before their entries' deadlines.
fn awareness_for_three_days() -> Arc<JourneyMap> {
    Arc::new(JourneyMap::from_yaml("shop.yaml", &MAP.replace("budget: 6h", "budget: 3d")).unwrap())
}

fn an_hour_late() -> EventTimePolicy {
    EventTimePolicy {
        allowed_lateness_ms: 3_600_000,
        max_future_ms: i64::MAX / 4,
    }
}

/// The awareness entry at `t0` (web, no segment) counted once, and dropped off.
fn assert_dropped_off_once(sink: &Sink, t0: i64) {
    let cell = (
        t0.div_euclid(60_000),
        "awareness".to_string(),
        "ad_click".to_string(),
        "web".to_string(),
        "unknown".to_string(),
    );
    let c = sink.aggregates()[&cell];
    assert_eq!((c.stage_entries, c.stage_dropoffs, c.stage_open), (1, 1, 0));
}
