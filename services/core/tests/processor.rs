//! The processor's promises: exact counts, respondent de-duplication, and results that do
//! not depend on how the two input topics interleave or where batches are cut.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use cxstream_core::journey::RECENT;
use cxstream_core::processor::AggKey;
use cxstream_core::{
    Counts, Invalid, JourneyMap, Metric, PartitionProcessor, SurveyAnswer, TouchpointEvent,
};
use proptest::prelude::*;

const MAP: &str = "journey: shop
stages:
  - {name: awareness, budget: 7d, target_conversion: 0.4}
  - {name: consideration, budget: 7d, target_conversion: 0.4}
  - {name: conversion, budget: 2d, target_conversion: 0.3}
channels: [web, app]
segments: [vip]
touchpoints:
  - {name: ad_click, stage: awareness, channels: [web]}
  - {name: product_view, stage: consideration, channels: [web, app]}
  - {name: purchase, stage: conversion, channels: [web, app]}
";

fn map() -> Arc<JourneyMap> {
    Arc::new(JourneyMap::from_yaml("shop.yaml", MAP).expect("valid map"))
}

fn tp(id: &str, customer: &str, t: i64, touchpoint: &str) -> TouchpointEvent {
    TouchpointEvent {
        event_id: id.into(),
        customer_id: Some(customer.into()),
        anonymous_id: None,
        event_time: t,
        touchpoint: touchpoint.into(),
        channel: "web".into(),
        stage: None,
        segment: Some("vip".into()),
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

#[derive(Debug, Clone)]
enum Rec {
    T(TouchpointEvent),
    A(SurveyAnswer),
}

fn run(p: &mut PartitionProcessor, recs: &[Rec]) -> BTreeMap<AggKey, Counts> {
    let mut out = BTreeMap::new();
    for (i, r) in recs.iter().enumerate() {
        let res = match r {
            Rec::T(t) => p.on_touchpoint(t.clone(), i as i64),
            Rec::A(a) => p.on_answer(a.clone(), i as i64),
        };
        res.expect("valid record");
    }
    p.release_all();
    for (k, c) in p.take_batch().aggregates {
        out.entry(k).or_insert_with(Counts::default).merge(&c);
    }
    out.retain(|_, c| !c.is_zero());
    out
}

#[test]
fn answer_before_its_touchpoint_waits_and_is_attributed_to_it() {
    let mut p = PartitionProcessor::new(map());
    p.on_answer(ans("r1", "c1", 70_000, Metric::Nps, 10, Some("e2")), 0)
        .expect("ok");
    assert_eq!(p.pending_answers(), 1);
    p.on_touchpoint(tp("e1", "c1", 1_000, "ad_click"), 0)
        .expect("ok");
    p.on_touchpoint(tp("e2", "c1", 61_000, "purchase"), 1)
        .expect("ok");
    assert_eq!(p.pending_answers(), 0);
    let b = p.take_batch();
    assert_eq!(b.answers.len(), 1);
    assert_eq!(b.answers[0].context.map(|c| c.stage), Some(2));
    let cell = b
        .aggregates
        .iter()
        .find(|(_, c)| c.nps_promoters == 1)
        .expect("promoter counted");
    assert_eq!(cell.0.minute, 1);
}

#[test]
fn a_respondent_counts_once_with_the_latest_answer() {
    let mut p = PartitionProcessor::new(map());
    p.on_touchpoint(tp("e1", "c1", 1_000, "purchase"), 0)
        .expect("ok");
    p.on_answer(ans("r1", "c1", 2_000, Metric::Nps, 10, Some("e1")), 0)
        .expect("ok");
    p.on_answer(ans("r2", "c1", 130_000, Metric::Nps, 2, Some("e1")), 1)
        .expect("ok");
    let mut total = Counts::default();
    for (_, c) in p.take_batch().aggregates {
        total.merge(&c);
    }
    assert_eq!((total.nps_promoters, total.nps_detractors), (0, 1));
}

#[test]
fn invalid_records_are_refused_with_a_reason() {
    let mut p = PartitionProcessor::new(map());
    assert_eq!(
        p.on_answer(ans("r", "c", 1, Metric::Csat, 6, None), 0),
        Err(Invalid::ScoreOutOfRange)
    );
    let mut t = tp("e", "c", 1, "ad_click");
    t.customer_id = None;
    assert_eq!(p.on_touchpoint(t, 0), Err(Invalid::MissingCustomerId));
    assert_eq!(
        p.on_touchpoint(tp("e", "c", 1, "teleport"), 0),
        Err(Invalid::UnknownTouchpoint)
    );
    let mut t = tp("e", "c", 1, "ad_click");
    t.channel = "fax".into();
    assert_eq!(p.on_touchpoint(t, 0), Err(Invalid::UnknownChannel));
}

#[test]
fn duplicated_touchpoint_counts_once() {
    let mut p = PartitionProcessor::new(map());
    p.on_touchpoint(tp("e1", "c1", 1_000, "ad_click"), 0)
        .expect("ok");
    p.on_touchpoint(tp("e1", "c1", 1_000, "ad_click"), 1)
        .expect("ok");
    let b = p.take_batch();
    assert_eq!(b.touchpoints.len(), 1);
    assert_eq!(b.duplicates, 1);
}

/// A customer's events in event-time order, as the simulator and real producers emit them.
/// At most `RECENT` touchpoints: an answer is placed exactly as long as its touchpoint is
/// among the customer's last `RECENT` ones when the answer is read (the documented bound).
fn customer_stream() -> impl Strategy<Value = (Vec<TouchpointEvent>, Vec<SurveyAnswer>)> {
    (
        0u8..4,
        prop::collection::vec(
            (0u8..3, 1i64..600_000, 0u8..4, 0i32..=10, any::<bool>()),
            1..=RECENT,
        ),
    )
        .prop_map(|(cust, steps)| {
            let c = format!("c{cust}");
            let names = ["ad_click", "product_view", "purchase"];
            let (mut t, mut tps, mut answers) = (0i64, Vec::new(), Vec::new());
            for (i, (stage, dt, kind, score, named)) in steps.into_iter().enumerate() {
                t += dt;
                let id = format!("{c}-e{i}");
                tps.push(tp(&id, &c, t, names[usize::from(stage)]));
                if kind < 3 {
                    let m = Metric::ALL[usize::from(kind)];
                    let (lo, hi) = m.range();
                    let s = score.clamp(lo, hi);
                    answers.push(ans(
                        &format!("{c}-r{i}"),
                        &c,
                        t + dt / 2,
                        m,
                        s,
                        named.then_some(id.as_str()),
                    ));
                }
            }
            (tps, answers)
        })
}

proptest! {
    /// However the touchpoint and survey topics interleave (each in its own order), and
    /// however the work is cut into batches, the counts are the same.
    #[test]
    fn counts_do_not_depend_on_interleaving(
        customers in prop::collection::vec(customer_stream(), 1..4),
        picks in prop::collection::vec(any::<bool>(), 0..200),
    ) {
        let mut tps: Vec<TouchpointEvent> = customers.iter().flat_map(|c| c.0.clone()).collect();
        tps.sort_by_key(|t| t.event_time);
        let mut answers: Vec<SurveyAnswer> = customers.iter().flat_map(|c| c.1.clone()).collect();
        answers.sort_by_key(|a| a.answer_time);

        // Reference: all touchpoints first, then all answers.
        let reference: Vec<Rec> = tps.iter().cloned().map(Rec::T).chain(answers.iter().cloned().map(Rec::A)).collect();
        let expected = run(&mut PartitionProcessor::new(map()), &reference);

        // Any other interleaving driven by `picks`.
        let (mut i, mut j, mut mixed) = (0, 0, Vec::new());
        let mut pick = picks.into_iter();
        while i < tps.len() || j < answers.len() {
            let take_tp = j >= answers.len() || (i < tps.len() && pick.next().unwrap_or(true));
            if take_tp { mixed.push(Rec::T(tps[i].clone())); i += 1 } else { mixed.push(Rec::A(answers[j].clone())); j += 1 }
        }
        prop_assert_eq!(run(&mut PartitionProcessor::new(map()), &mixed), expected);
    }
}
