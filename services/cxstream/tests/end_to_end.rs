//! End-to-end against the real servers: simulated traffic through Tansu into the journey
//! service and ClickHouse, checked cell by cell against the simulator's ground truth and
//! per stage against an independent computation from the produced events.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use common::{
    assert_cells_equal, http_get, retail_in_hours, shipped_map, spawn_listening, Stack, PARTITIONS,
};
use cxstream_avro::Codec;
use cxstream_core::{JourneyMap, Metric, SurveyAnswer, TouchpointEvent};

/// FNV-1a 64 of an event id: the README's tie-break between touchpoints of the same time.
fn fnv1a(id: &str) -> u64 {
    id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Each touchpoint's (entered, stage it counts under, journey number) by the README: the
/// furthest stage of the customer's current journey; a journey lasts while its last entry
/// is within that stage's budget, and the first touchpoint after that starts a new one; a
/// touchpoint the map does not declare changes nothing (stage `None` outside a journey).
/// `list` is one customer's touchpoints in event-time order.
fn placed(map: &JourneyMap, list: &[&TouchpointEvent]) -> Vec<(bool, Option<u8>, u32)> {
    let (mut furthest, mut until, mut seq) = (None::<u8>, i64::MAX, 0u32);
    list.iter()
        .map(|t| {
            // Not in the map: off-map, changing nothing, under the journey's stage if any.
            let Some(tp) = map.touchpoint(&t.touchpoint) else {
                let over = furthest.is_some() && t.event_time > until;
                return (false, furthest.filter(|_| !over), seq);
            };
            let own = map.touchpoints[usize::from(tp)].stage;
            if furthest.is_some() && t.event_time > until {
                furthest = None;
                seq += 1;
            }
            let entered = furthest.is_none_or(|f| own > f);
            if entered {
                until = t.event_time + map.stages[usize::from(own)].budget_ms;
            }
            let at = furthest.map_or(own, |f| f.max(own));
            furthest = Some(at);
            (entered, Some(at), seq)
        })
        .collect()
}

/// Stage outcomes of one stage.
#[derive(Debug, Default, PartialEq, Eq)]
struct Funnel {
    entries: i64,
    conversions: i64,
    dropoffs: i64,
    open: i64,
    /// Every conversion's time to convert, sorted.
    convert_ms: Vec<i64>,
    /// Outcomes of entries in decided cohorts: entry minutes whose end + budget is not
    /// after the lowest partition watermark.
    decided_conversions: i64,
    decided_dropoffs: i64,
    /// Conversions by (channel entered on, channel of the next entry).
    flows: BTreeMap<(String, String), i64>,
}

/// What the independent computation gives besides the stages' funnels.
struct Independent {
    stages: BTreeMap<String, Funnel>,
    watermarks: BTreeMap<i32, i64>,
    /// Journeys by (stage of their last entry, how they end: completed, dropped or open).
    endings: BTreeMap<(String, String), i64>,
}

/// Stage outcomes straight from the produced events, by DESIGN.md's definitions: per
/// customer (one touchpoint per event id, in time order), a touchpoint enters a stage when
/// its stage is beyond every earlier one's; an entry into a stage but the last converts
/// when the next entry comes within the stage's budget, else it has dropped off when the
/// watermark of its partition (the latest valid event time there: both inputs were read to
/// their end) is past entry + budget, and is open if not.
fn independent_funnel(
    map: &JourneyMap,
    tps: &[(i32, TouchpointEvent)],
    answers: &[(i32, SurveyAnswer)],
) -> Independent {
    let mut watermarks: BTreeMap<i32, i64> = BTreeMap::new();
    let times = tps.iter().map(|(p, t)| (*p, t.event_time)).chain(
        answers
            .iter()
            .filter(|(_, a)| a.metric.is_valid(a.score))
            .map(|(p, a)| (*p, a.answer_time)),
    );
    for (p, t) in times {
        let w = watermarks.entry(p).or_insert(t);
        *w = (*w).max(t);
    }
    let mut by_customer: HashMap<&str, Vec<(i32, &TouchpointEvent)>> = HashMap::new();
    let mut seen = HashSet::new();
    for (p, t) in tps {
        if seen.insert(t.event_id.as_str()) {
            by_customer
                .entry(t.customer_id.as_deref().unwrap())
                .or_default()
                .push((*p, t));
        }
    }
    let lowest = watermarks.values().copied().min().unwrap_or(i64::MIN);
    let mut out: BTreeMap<String, Funnel> = BTreeMap::new();
    let mut endings: BTreeMap<(String, String), i64> = BTreeMap::new();
    for list in by_customer.values_mut() {
        list.sort_by_key(|(_, t)| (t.event_time, fnv1a(&t.event_id)));
        let events: Vec<&TouchpointEvent> = list.iter().map(|(_, t)| *t).collect();
        let mut entries: Vec<(i32, i64, u8, &str)> = Vec::new();
        // The last entry of each journey: how the journey ends.
        let mut last_of_journey: BTreeMap<u32, (i32, i64, u8)> = BTreeMap::new();
        for ((p, t), (entered, stage, seq)) in list.iter().zip(placed(map, &events)) {
            if let (true, Some(stage)) = (entered, stage) {
                entries.push((*p, t.event_time, stage, t.channel.as_str()));
                last_of_journey.insert(seq, (*p, t.event_time, stage));
            }
        }
        for (p, at, stage) in last_of_journey.values() {
            let ending = if usize::from(*stage) + 1 == map.stages.len() {
                "completed"
            } else if watermarks[p] > at + map.stages[usize::from(*stage)].budget_ms {
                "dropped"
            } else {
                "open"
            };
            *endings
                .entry((map.stage_name(*stage).to_string(), ending.to_string()))
                .or_default() += 1;
        }
        for (k, (p, at, stage, channel)) in entries.iter().enumerate() {
            let f = out.entry(map.stage_name(*stage).to_string()).or_default();
            f.entries += 1;
            if usize::from(*stage) + 1 == map.stages.len() {
                continue;
            }
            let budget = map.stages[usize::from(*stage)].budget_ms;
            let decided = at.div_euclid(60_000) * 60_000 + 60_000 + budget <= lowest;
            match entries.get(k + 1) {
                Some((_, next, _, to)) if next - at <= budget => {
                    f.conversions += 1;
                    f.convert_ms.push(next - at);
                    f.decided_conversions += i64::from(decided);
                    *f.flows
                        .entry((channel.to_string(), to.to_string()))
                        .or_default() += 1;
                }
                _ if watermarks[p] > at + budget => {
                    f.dropoffs += 1;
                    f.decided_dropoffs += i64::from(decided);
                }
                _ => f.open += 1,
            }
        }
    }
    for f in out.values_mut() {
        f.convert_ms.sort_unstable();
    }
    Independent {
        stages: out,
        watermarks,
        endings,
    }
}

/// Step attempts per step straight from the produced events, by DESIGN.md / README rules:
/// per customer in time order, a `from` touchpoint starts an attempt unless one is running
/// (not converted, deadline not passed); the first `to` by the deadline converts it; else
/// it has dropped off when its partition's watermark is past the deadline, and is open if
/// not.
fn independent_steps(
    map: &JourneyMap,
    tps: &[(i32, TouchpointEvent)],
    watermarks: &BTreeMap<i32, i64>,
) -> BTreeMap<String, Funnel> {
    let lowest = watermarks.values().copied().min().unwrap_or(i64::MIN);
    let mut by_customer: HashMap<&str, Vec<(i32, &TouchpointEvent)>> = HashMap::new();
    let mut seen = HashSet::new();
    for (p, t) in tps {
        if seen.insert(t.event_id.as_str()) {
            by_customer
                .entry(t.customer_id.as_deref().unwrap())
                .or_default()
                .push((*p, t));
        }
    }
    let mut out: BTreeMap<String, Funnel> = BTreeMap::new();
    for list in by_customer.values_mut() {
        list.sort_by_key(|(_, t)| (t.event_time, fnv1a(&t.event_id)));
        for step in &map.steps {
            let names = |side: &[u16]| -> Vec<&str> {
                side.iter().map(|t| map.touchpoint_name(*t)).collect()
            };
            let (from, to) = (names(&step.from), names(&step.to));
            let f = out.entry(step.name.clone()).or_default();
            let mut running: Option<(i32, i64)> = None;
            let settle = |f: &mut Funnel, (p, start): (i32, i64), converted_at: Option<i64>| {
                let deadline = start + step.budget_ms;
                let decided = start.div_euclid(60_000) * 60_000 + 60_000 + step.budget_ms <= lowest;
                match converted_at {
                    Some(at) => {
                        f.conversions += 1;
                        f.convert_ms.push(at - start);
                        f.decided_conversions += i64::from(decided);
                    }
                    None if watermarks[&p] > deadline => {
                        f.dropoffs += 1;
                        f.decided_dropoffs += i64::from(decided);
                    }
                    None => f.open += 1,
                }
            };
            for (p, t) in list.iter() {
                if let Some(r) = running {
                    if t.event_time > r.1 + step.budget_ms {
                        settle(f, r, None);
                        running = None;
                    }
                }
                let name = t.touchpoint.as_str();
                if let (Some(r), true) = (running, to.contains(&name)) {
                    settle(f, r, Some(t.event_time));
                    running = None;
                } else if running.is_none() && from.contains(&name) {
                    f.entries += 1;
                    running = Some((*p, t.event_time));
                }
            }
            if let Some(r) = running {
                settle(f, r, None);
            }
        }
    }
    for f in out.values_mut() {
        f.convert_ms.sort_unstable();
    }
    out.retain(|_, f| f.entries > 0);
    out
}

/// The same from ClickHouse: step counts from the committed per-minute aggregates, times
/// to convert from the attempts' facts (whose outcomes must agree), decided cohorts from
/// the step funnel view.
fn clickhouse_steps(s: &Stack) -> BTreeMap<String, Funnel> {
    let db = s.database();
    let mut out: BTreeMap<String, Funnel> = BTreeMap::new();
    for r in s.query(&format!(
        "SELECT step, sum(starts), sum(conversions), sum(dropoffs), sum(open_attempts) \
         FROM {db}.steps_minute_committed GROUP BY step"
    )) {
        let v: Vec<i64> = r[1..].iter().map(|x| x.parse().unwrap()).collect();
        let f = out.entry(r[0].clone()).or_default();
        (f.entries, f.conversions, f.dropoffs, f.open) = (v[0], v[1], v[2], v[3]);
    }
    for r in s.query(&format!(
        "SELECT step, count(), countIf(outcome = 'converted'), countIf(outcome = 'dropped'), \
         countIf(outcome = 'open'), \
         arrayStringConcat(arraySort(groupArrayIf(toString(convert_ms), outcome = 'converted')), ' ') \
         FROM {db}.step_attempts FINAL WHERE withdrawn = 0 GROUP BY step"
    )) {
        let facts: Vec<i64> = r[1..5].iter().map(|x| x.parse().unwrap()).collect();
        let f = out.entry(r[0].clone()).or_default();
        assert_eq!(
            facts,
            vec![f.entries, f.conversions, f.dropoffs, f.open],
            "the facts of step {} count what its aggregates do",
            r[0]
        );
        f.convert_ms = r[5].split_whitespace().map(|x| x.parse().unwrap()).collect();
        f.convert_ms.sort_unstable();
    }
    for r in s.query(&format!(
        "SELECT step, sumIf(converted, decided = 1), sumIf(dropped, decided = 1) \
         FROM {db}.step_funnel GROUP BY step"
    )) {
        let f = out.entry(r[0].clone()).or_default();
        f.decided_conversions = r[1].parse().unwrap();
        f.decided_dropoffs = r[2].parse().unwrap();
    }
    out.retain(|_, f| f.entries > 0);
    out
}

/// The same from ClickHouse: counts from the committed per-minute aggregates, times to
/// convert from the touchpoint facts (whose outcome counts must agree).
fn clickhouse_funnel(s: &Stack) -> BTreeMap<String, Funnel> {
    let db = s.database();
    let mut out: BTreeMap<String, Funnel> = s
        .query(&format!(
            "SELECT stage, sum(stage_entries), sum(stage_conversions), sum(stage_dropoffs), \
             sum(stage_open) FROM {db}.metrics_minute_committed WHERE stage != 'none' GROUP BY stage"
        ))
        .into_iter()
        .map(|r| {
            let v: Vec<i64> = r[1..].iter().map(|x| x.parse().unwrap()).collect();
            let f = Funnel {
                entries: v[0],
                conversions: v[1],
                dropoffs: v[2],
                open: v[3],
                ..Funnel::default()
            };
            (r[0].clone(), f)
        })
        .filter(|(_, f)| f.entries != 0)
        .collect();
    for r in s.query(&format!(
        "SELECT stage, count(), countIf(outcome = 'converted'), \
         countIf(outcome = 'dropped'), countIf(outcome = 'open'), \
         arrayStringConcat(arraySort(groupArrayIf(toString(convert_ms), outcome = 'converted')), ' ') \
         FROM {db}.stage_entries FINAL WHERE withdrawn = 0 GROUP BY stage"
    )) {
        let facts: Vec<i64> = r[1..5].iter().map(|x| x.parse().unwrap()).collect();
        let f = out.entry(r[0].clone()).or_default();
        assert_eq!(
            facts,
            vec![f.entries, f.conversions, f.dropoffs, f.open],
            "the facts of stage {} count what its aggregates do",
            r[0]
        );
        f.convert_ms = r[5].split_whitespace().map(|x| x.parse().unwrap()).collect();
        f.convert_ms.sort_unstable();
    }
    for r in s.query(&format!(
        "SELECT stage, entered_on, converted_on, sum(conversions) FROM {db}.channel_flow \
         GROUP BY stage, entered_on, converted_on"
    )) {
        let f = out.entry(r[0].clone()).or_default();
        f.flows
            .insert((r[1].clone(), r[2].clone()), r[3].parse().unwrap());
    }
    // Decided cohorts, from the view that sets the map's stages beside the figures.
    for r in s.query(&format!(
        "SELECT stage, sumIf(conversions, decided = 1), sumIf(dropoffs, decided = 1) \
         FROM {db}.stage_funnel GROUP BY stage"
    )) {
        let f = out.entry(r[0].clone()).or_default();
        f.decided_conversions = r[1].parse().unwrap();
        f.decided_dropoffs = r[2].parse().unwrap();
    }
    out
}

/// The map's stages as `journey_stages` holds them: (name, budget, target), in order.
fn clickhouse_stages(s: &Stack) -> Vec<(String, i64, String)> {
    s.query(&format!(
        "SELECT stage, argMax(budget_ms, updated_at), toString(argMax(target_conversion, updated_at)) \
         FROM {}.journey_stages GROUP BY stage ORDER BY argMax(stage_index, updated_at)",
        s.database()
    ))
    .into_iter()
    .map(|r| (r[0].clone(), r[1].parse().unwrap(), r[2].clone()))
    .collect()
}

#[derive(Debug, Default, PartialEq, Eq, Clone, Copy)]
struct StageScores {
    promoters: i64,
    passives: i64,
    detractors: i64,
    csat_n: i64,
    csat_top2: i64,
    csat_sum: i64,
    ces_n: i64,
    ces_sum: i64,
    ces_agree: i64,
}

/// Per-stage scores straight from the produced events, by the definitions in DESIGN.md,
/// with none of the pipeline's code: each customer's touchpoints in time order (one per
/// event id), each under its stage (see [`placed`]); an answer counts under the
/// touchpoint it names, else the latest touchpoint at or before it; per respondent,
/// touchpoint and metric only the latest answer counts; invalid records count nowhere.
fn independent(
    map: &JourneyMap,
    tps: &[TouchpointEvent],
    answers: &[SurveyAnswer],
) -> BTreeMap<String, StageScores> {
    let mut out: BTreeMap<String, StageScores> = BTreeMap::new();
    for (a, stage, _) in attributed(map, tps, answers) {
        let e = out.entry(stage).or_default();
        match a.metric {
            Metric::Nps if a.score >= 9 => e.promoters += 1,
            Metric::Nps if a.score >= 7 => e.passives += 1,
            Metric::Nps => e.detractors += 1,
            Metric::Csat => {
                e.csat_n += 1;
                e.csat_sum += i64::from(a.score);
                e.csat_top2 += i64::from(a.score >= 4);
            }
            Metric::Ces => {
                e.ces_n += 1;
                e.ces_sum += i64::from(a.score);
                e.ces_agree += i64::from(a.score >= 5);
            }
        }
    }
    out.retain(|_, v| *v != StageScores::default());
    out
}

/// Detractors' cases per owner by the map's `cases:` rules, applied here to each counting
/// answer's attributed stage and channel: the first rule whose stage and channel match.
fn independent_cases(
    map: &JourneyMap,
    tps: &[TouchpointEvent],
    answers: &[SurveyAnswer],
) -> BTreeMap<String, i64> {
    let rules = &map.cases;
    assert!(
        rules
            .owners
            .iter()
            .all(|r| r.touchpoint.is_none() && r.segment.is_none()),
        "this computation routes by stage and channel only"
    );
    let mut out = BTreeMap::new();
    for (a, stage, channel) in attributed(map, tps, answers) {
        let at_most = match a.metric {
            Metric::Nps => rules.nps_at_most,
            Metric::Csat => rules.csat_at_most,
            Metric::Ces => rules.ces_at_most,
        };
        if a.score > at_most {
            continue;
        }
        let owner = rules
            .owners
            .iter()
            .find(|r| {
                r.stage.is_none_or(|s| map.stage_name(s) == stage)
                    && r.channel
                        .is_none_or(|c| channel.as_deref() == Some(map.channel_name(c)))
            })
            .map_or(rules.default_owner.clone(), |r| r.owner.clone());
        *out.entry(owner).or_default() += 1;
    }
    out
}

/// Each answer that counts (the latest of its respondent's slot) with the stage and channel
/// of the touchpoint it is attributed to (stage `none` and no channel when there is none).
fn attributed<'a>(
    map: &JourneyMap,
    tps: &[TouchpointEvent],
    answers: &'a [SurveyAnswer],
) -> Vec<(&'a SurveyAnswer, String, Option<String>)> {
    let mut by_customer: HashMap<&str, Vec<&TouchpointEvent>> = HashMap::new();
    let mut seen = HashSet::new();
    for t in tps {
        if seen.insert(t.event_id.as_str()) {
            by_customer
                .entry(t.customer_id.as_deref().unwrap())
                .or_default()
                .push(t);
        }
    }
    // (customer, event id) → (stage name, channel)
    let mut placed_at: HashMap<(&str, &str), (String, String)> = HashMap::new();
    let mut timeline: HashMap<&str, Vec<(i64, String, String)>> = HashMap::new();
    for (c, list) in &mut by_customer {
        list.sort_by_key(|t| (t.event_time, fnv1a(&t.event_id)));
        for (t, (_, stage, _)) in list.iter().zip(placed(map, list)) {
            let name = stage.map_or("none", |s| map.stage_name(s)).to_string();
            placed_at.insert((c, t.event_id.as_str()), (name.clone(), t.channel.clone()));
            timeline
                .entry(c)
                .or_default()
                .push((t.event_time, name, t.channel.clone()));
        }
    }
    let mut latest: HashMap<(String, String, Metric), &SurveyAnswer> = HashMap::new();
    let mut unnamed: Vec<&SurveyAnswer> = Vec::new();
    for a in answers.iter().filter(|a| a.metric.is_valid(a.score)) {
        match &a.touchpoint_event_id {
            Some(id) => {
                let k = (a.customer_id.clone().unwrap(), id.clone(), a.metric);
                if latest.get(&k).is_none_or(|b| b.answer_time < a.answer_time) {
                    latest.insert(k, a);
                }
            }
            None => unnamed.push(a),
        }
    }
    let counted = latest
        .into_iter()
        .map(|((c, id, _), a)| (a, Some((c, id))))
        .chain(unnamed.into_iter().map(|a| (a, None)));
    counted
        .map(|(a, named)| {
            let c = a.customer_id.as_deref().unwrap();
            let context = match named {
                Some((_, id)) => placed_at.get(&(c, id.as_str())).cloned(),
                None => timeline
                    .get(c)
                    .and_then(|tl| tl.iter().rev().find(|(t, _, _)| *t <= a.answer_time))
                    .map(|(_, s, ch)| (s.clone(), ch.clone())),
            };
            match context {
                Some((stage, channel)) => (a, stage, Some(channel)),
                None => (a, "none".into(), None),
            }
        })
        .collect()
}

fn clickhouse_stage_scores(s: &Stack) -> BTreeMap<String, StageScores> {
    s.query(&format!(
        "SELECT stage, sum(nps_promoters), sum(nps_passives), sum(nps_detractors), sum(csat_n), sum(csat_top2), \
         sum(csat_sum), sum(ces_n), sum(ces_sum), sum(ces_agree) FROM {}.metrics_minute_committed GROUP BY stage",
        s.database()
    ))
    .into_iter()
    .map(|r| {
        let v: Vec<i64> = r[1..].iter().map(|x| x.parse().unwrap()).collect();
        (
            r[0].clone(),
            StageScores {
                promoters: v[0],
                passives: v[1],
                detractors: v[2],
                csat_n: v[3],
                csat_top2: v[4],
                csat_sum: v[5],
                ces_n: v[6],
                ces_sum: v[7],
                ces_agree: v[8],
            },
        )
    })
    .filter(|(_, v)| *v != StageScores::default())
    .collect()
}

#[test]
fn counts_equal_ground_truth_and_an_independent_computation() {
    counts_equal_ground_truth(|map_text| Stack::with_map_text("e2e", map_text));
}

/// The same figures with the tables sharded over a two-shard ClickHouse cluster (a
/// Distributed table in front of each), written and read by the same commands.
#[test]
fn counts_equal_ground_truth_on_a_two_shard_cluster() {
    counts_equal_ground_truth(|map_text| {
        let s = Stack::on_cluster("e2ecl", vec![common::map_file("e2ecl", map_text)]);
        // Each shard holds part of the rows: the figures below are not one server's.
        let db = s.database();
        assert_eq!(
            s.scalar(&format!(
                "SELECT toInt64(count()) FROM cluster('{}', system, tables) \
                 WHERE database = '{db}' AND name = 'touchpoints_local'",
                s.cluster.as_deref().unwrap()
            )),
            2
        );
        // The same database taken for one server's is refused, not misread nor written.
        let single = s.dir.join("single-server.yaml");
        let text = std::fs::read_to_string(&s.config).unwrap();
        std::fs::write(&single, text.replace("  cluster: ", "  # cluster: ")).unwrap();
        for args in [&["migrate"][..], &["journey", "--until-caught-up"]] {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_cxstream"))
                .arg("--config")
                .arg(&single)
                .args(args)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                !out.status.success() && err.contains("was created on a cluster"),
                "{args:?}: {err}"
            );
        }
        s
    });
}

fn counts_equal_ground_truth(stack: impl FnOnce(&str) -> Stack) {
    // Budgets of hours: in one day, entries convert, drop off and stay open.
    let map_text = retail_in_hours();
    let map = JourneyMap::from_yaml("retail_in_hours.yaml", &map_text).unwrap();
    let s = stack(&map_text);
    // One catch-up commits enough batches per partition for compactions (every 4 batches),
    // whatever pace the broker hands the records over at.
    s.set_journey("  max_batch_records: 500\n");
    s.simulate(4000, 1.0, 8);
    s.ok(&["journey", "--until-caught-up"]);

    // 1. Every per-minute cell equals the simulator's ground truth.
    assert_cells_equal(&s.truth(), &s.cells());
    assert_cells_equal(&s.step_truth(), &s.step_cells());

    // 2. NPS / CSAT / CES per stage equal an independent computation from the topics.
    let codec = Codec::new().unwrap();
    let tps: Vec<TouchpointEvent> = s
        .read_topic(&s.topic("touchpoints"), PARTITIONS)
        .iter()
        .filter_map(|r| codec.decode_touchpoint(&r.payload).ok())
        .collect();
    let answers: Vec<SurveyAnswer> = s
        .read_topic(&s.topic("answers"), PARTITIONS)
        .iter()
        .filter_map(|r| codec.decode_answer(&r.payload).ok())
        .collect();
    let expected = independent(&map, &tps, &answers);
    let actual = clickhouse_stage_scores(&s);
    assert_eq!(actual, expected);
    // Every detractor answer that counts is one case, with the owner its rules give.
    let expected_cases = independent_cases(&map, &tps, &answers);
    assert!(expected_cases.len() >= 3, "{expected_cases:?}");
    assert_eq!(cases_by_owner(&s), expected_cases);
    assert_funnel_is_independent(&s, &map);
    for (stage, e) in &expected {
        let n = e.promoters + e.passives + e.detractors;
        if n > 0 {
            eprintln!(
                "{stage}: NPS {:+.1} (n={n})",
                100.0 * (e.promoters - e.detractors) as f64 / n as f64
            );
        }
    }

    // 3. The rolling 7-day window over one simulated day covers every answer up to the
    //    committed watermark (later minutes are not known yet), and none after it.
    let db = s.database();
    let watermark_min = s.scalar(&format!(
        "SELECT toInt64(toUnixTimestamp(max(watermark))) FROM {db}.committed_watermark"
    )) * 1000;
    let nps_n_7d = s.scalar(&format!(
        "SELECT toInt64(sum(nps_n)) FROM {db}.rolling_metrics WHERE window = '7d'"
    ));
    let truth_nps_n: i64 = s
        .truth()
        .iter()
        .filter(|(k, _)| k.0 <= watermark_min)
        .map(|(_, v)| v[0] + v[1] + v[2])
        .sum();
    let all_nps_n: i64 = expected
        .values()
        .map(|e| e.promoters + e.passives + e.detractors)
        .sum();
    assert_eq!(nps_n_7d, truth_nps_n);
    assert!(
        truth_nps_n > all_nps_n * 9 / 10,
        "the watermark is near the end"
    );

    // 4. Facts and per-minute counts agree: the facts tables, summed into cells, give the
    //    same touchpoint and answer counts.
    assert_facts_equal_aggregates(&s);

    // 5. A real replay: a new consumer group reads the same topics from the earliest offsets
    //    into an empty database, and every cell comes out the same.
    let replay = s.replay();
    replay.ok(&["journey", "--until-caught-up"]);
    assert_cells_equal(&s.truth(), &replay.cells());
    assert_cells_equal(&s.step_truth(), &replay.step_cells());
    assert_eq!(cases_by_owner(&replay), expected_cases);
    if s.cluster.is_some() {
        // Rows of both shards were counted: the server asked holds only part of them.
        let here = s.scalar(&format!(
            "SELECT toInt64(count()) FROM {db}.touchpoints_local"
        ));
        let all = s.scalar(&format!("SELECT toInt64(count()) FROM {db}.touchpoints"));
        eprintln!("touchpoint rows: {here} of {all} on the first shard");
        assert!(0 < here && here < all, "{here} of {all}");
        // Compactions committed, and their clean-up deleted the folded batches' markers
        // (`ingest_batches_local ON CLUSTER`) wherever they were.
        assert_compacted(&s);
    }
}

/// Detractors' cases in ClickHouse (the respondent's answer that counts), per owner.
fn cases_by_owner(s: &Stack) -> BTreeMap<String, i64> {
    s.counts(&format!(
        "SELECT owner, toInt64(count()) FROM {}.cases FINAL WHERE is_case = 1 GROUP BY owner",
        s.database()
    ))
}

/// Stage entries, conversions, drop-offs, open entries and every time to convert equal an
/// independent computation from the topics (so do all their quantiles), and so do the
/// partitions' committed watermarks that tell drop-offs from open entries.
fn assert_funnel_is_independent(s: &Stack, map: &JourneyMap) {
    let codec = Codec::new().unwrap();
    // Events dated more than an hour (the default journey.max_future_ms, which the tests
    // run with) after their record's timestamp are refused as future: in no figure.
    let applied =
        |r: &common::Raw, time: i64| r.timestamp_ms.is_none_or(|ts| time <= ts + 3_600_000);
    let tps: Vec<(i32, TouchpointEvent)> = s
        .read_topic(&s.topic("touchpoints"), PARTITIONS)
        .iter()
        .filter_map(|r| {
            let t = codec.decode_touchpoint(&r.payload).ok()?;
            applied(r, t.event_time).then_some((r.partition, t))
        })
        .collect();
    let answers: Vec<(i32, SurveyAnswer)> = s
        .read_topic(&s.topic("answers"), PARTITIONS)
        .iter()
        .filter_map(|r| {
            let a = codec.decode_answer(&r.payload).ok()?;
            applied(r, a.answer_time).then_some((r.partition, a))
        })
        .collect();
    let Independent {
        stages: expected,
        watermarks,
        endings,
    } = independent_funnel(map, &tps, &answers);
    let committed: BTreeMap<i32, i64> = s
        .query(&format!(
            "SELECT source_partition, argMax(watermark_ms, batch_seq) FROM {}.ingest_batches \
             GROUP BY source_partition",
            s.database()
        ))
        .into_iter()
        .map(|r| (r[0].parse().unwrap(), r[1].parse().unwrap()))
        .collect();
    assert_eq!(committed, watermarks, "committed watermarks per partition");
    let actual = clickhouse_funnel(s);
    for (stage, f) in &expected {
        let n = f.convert_ms.len();
        eprintln!(
            "{stage}: {} entries, {} converted (p50 {} ms), {} dropped off, {} open",
            f.entries,
            f.conversions,
            f.convert_ms.get(n / 2).copied().unwrap_or(0),
            f.dropoffs,
            f.open
        );
    }
    assert_eq!(actual, expected);
    let stages: Vec<(String, i64, String)> = map
        .stages
        .iter()
        .map(|st| {
            (
                st.name.clone(),
                st.budget_ms,
                st.target_conversion.to_string(),
            )
        })
        .collect();
    assert_eq!(clickhouse_stages(s), stages);
    let paths: BTreeMap<(String, String), i64> = s
        .query(&format!(
            "SELECT last_stage, ending, sum(journeys) FROM {}.journey_paths \
             GROUP BY last_stage, ending",
            s.database()
        ))
        .into_iter()
        .map(|r| ((r[0].clone(), r[1].clone()), r[2].parse().unwrap()))
        .collect();
    assert_eq!(paths, endings, "how AS-IS paths end");
    assert_wilson_intervals(s);
    let steps = independent_steps(map, &tps, &watermarks);
    for (step, f) in &steps {
        eprintln!(
            "step {step}: {} started, {} converted, {} dropped off, {} open",
            f.entries, f.conversions, f.dropoffs, f.open
        );
    }
    assert_eq!(clickhouse_steps(s), steps);
    assert!(
        steps.values().any(|f| f.decided_conversions > 0)
            && steps.values().any(|f| f.decided_dropoffs > 0)
            && steps.values().any(|f| f.open > 0),
        "steps convert, drop off and stay open"
    );
    let total = |pick: fn(&Funnel) -> i64| expected.values().map(pick).sum::<i64>();
    assert!(
        total(|f| f.conversions) > 0
            && total(|f| f.dropoffs) > 0
            && total(|f| f.open) > 0
            && total(|f| f.decided_conversions) > 0
            && total(|f| f.decided_dropoffs) > 0,
        "the scenario has every outcome, and decided cohorts"
    );
}

/// Touchpoints in the topic whose name the map does not declare, one per event id, except
/// those dated in the future (more than the default hour after their record).
fn off_map_touchpoints(s: &Stack, map: &JourneyMap) -> i64 {
    unmapped_touchpoints(s, std::slice::from_ref(map))
}

/// Touchpoints (distinct event ids, future-dated ones aside) that none of `maps` declares.
fn unmapped_touchpoints(s: &Stack, maps: &[JourneyMap]) -> i64 {
    let codec = Codec::new().unwrap();
    let mut ids = HashSet::new();
    for r in s.read_topic(&s.topic("touchpoints"), PARTITIONS) {
        let Ok(t) = codec.decode_touchpoint(&r.payload) else {
            continue;
        };
        let future = r
            .timestamp_ms
            .is_some_and(|ts| t.event_time > ts + 3_600_000);
        if maps.iter().all(|m| m.touchpoint(&t.touchpoint).is_none()) && !future {
            ids.insert(t.event_id);
        }
    }
    ids.len() as i64
}

/// funnel_rolling's conversion and 95 % Wilson interval, recomputed here from its decided
/// counts by the textbook formula, for every row of the whole range.
fn assert_wilson_intervals(s: &Stack) {
    let rows = s.query(&format!(
        "SELECT decided_converted, decided_n, conversion, conversion_low, conversion_high \
         FROM {}.funnel_rolling WHERE window = 'all' AND decided_n > 0",
        s.database()
    ));
    assert!(!rows.is_empty());
    for r in rows {
        let v: Vec<f64> = r.iter().map(|x| x.parse().unwrap()).collect();
        let (x, n, z) = (v[0], v[1], 1.959_963_984_540_054_f64);
        let p = x / n;
        let center = (p + z * z / (2.0 * n)) / (1.0 + z * z / n);
        let half = z / (1.0 + z * z / n) * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt();
        assert!((v[2] - p).abs() < 1e-12, "{r:?}");
        // The view uses z = 1.96: within 1e-4 of the exact quantile's interval.
        assert!((v[3] - (center - half)).abs() < 1e-4, "{r:?}");
        assert!((v[4] - (center + half)).abs() < 1e-4, "{r:?}");
        assert!(v[3] <= p && p <= v[4], "{r:?}");
    }
}

/// Sums the facts (latest row per key) into cells and compares them with the committed
/// per-minute aggregates: touchpoints per cell, and every answer bucket per cell.
fn assert_facts_equal_aggregates(s: &Stack) {
    let db = s.database();
    // 18.16 wants the UNION ALL branches' columns of one type and never constant.
    let zero = "materialize(toInt64(0))";
    let from_facts = s.query(&format!(
        "SELECT toUnixTimestamp(toStartOfMinute(t)) AS m, stage, touchpoint, channel, segment, \
           sum(tp), sum(p), sum(pa), sum(d), sum(cn), sum(cs), sum(en), sum(es) FROM ( \
           SELECT event_time AS t, stage, touchpoint, channel, segment, materialize(toInt64(1)) AS tp, \
             {zero} AS p, {zero} AS pa, {zero} AS d, {zero} AS cn, {zero} AS cs, {zero} AS en, \
             {zero} AS es FROM {db}.touchpoints FINAL \
           UNION ALL \
           SELECT answer_time AS t, stage, touchpoint, channel, segment, {zero} AS tp, \
             toInt64(metric = 'NPS' AND score >= 9) AS p, toInt64(metric = 'NPS' AND score IN (7, 8)) AS pa, \
             toInt64(metric = 'NPS' AND score <= 6) AS d, toInt64(metric = 'CSAT') AS cn, \
             toInt64(if(metric = 'CSAT', score, 0)) AS cs, toInt64(metric = 'CES') AS en, \
             toInt64(if(metric = 'CES', score, 0)) AS es FROM {db}.survey_answers FINAL) \
         GROUP BY m, stage, touchpoint, channel, segment \
         HAVING sum(tp) + sum(p) + sum(pa) + sum(d) + sum(cn) + sum(en) != 0"
    ));
    let from_aggregates = s.query(&format!(
        "SELECT toUnixTimestamp(minute) AS m, stage, touchpoint, channel, segment, \
           sum(touchpoints), sum(nps_promoters), sum(nps_passives), sum(nps_detractors), \
           sum(csat_n), sum(csat_sum), sum(ces_n), sum(ces_sum) \
         FROM {db}.metrics_minute_committed GROUP BY m, stage, touchpoint, channel, segment \
         HAVING sum(touchpoints) + sum(nps_promoters) + sum(nps_passives) + sum(nps_detractors) \
           + sum(csat_n) + sum(ces_n) != 0"
    ));
    let as_map = |rows: Vec<Vec<String>>| -> BTreeMap<Vec<String>, Vec<String>> {
        rows.into_iter()
            .map(|r| (r[..5].to_vec(), r[5..].to_vec()))
            .collect()
    };
    let (f, a) = (as_map(from_facts), as_map(from_aggregates));
    let diffs: Vec<_> = f
        .keys()
        .chain(a.keys())
        .filter(|k| f.get(*k) != a.get(*k))
        .take(5)
        .map(|k| format!("{k:?}: facts {:?}, aggregates {:?}", f.get(k), a.get(k)))
        .collect();
    assert!(
        diffs.is_empty(),
        "facts and aggregates disagree:\n{}",
        diffs.join("\n")
    );
    assert!(!f.is_empty());
}

#[test]
fn bad_records_end_in_the_dlq_with_their_reason_and_counts_stay_exact() {
    let s = Stack::new("dlq");
    s.simulate(500, 0.5, 8);
    s.ok(&["journey", "--until-caught-up"]);
    assert_cells_equal(&s.truth(), &s.cells());
    assert_cells_equal(&s.step_truth(), &s.step_cells());

    let dlq = s.read_topic(&s.topic("dlq"), 1);
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for r in &dlq {
        // Random bytes that begin with 00 read as the Confluent wire format with a schema id
        // nobody configured: garbage either way.
        let kind = match r.headers["cx.error.kind"].as_str() {
            "unknown_schema_id" if r.payload.len() == 64 => "not_avro",
            k => k,
        };
        *reasons.entry(kind.to_string()).or_default() += 1;
        assert!(r.headers["cx.source.topic"].starts_with(&format!("t.{}.", s.name)));
        assert!(
            r.headers.contains_key("cx.source.partition")
                && r.headers.contains_key("cx.source.offset")
        );
        assert!(!r.headers["cx.error.message"].is_empty());
    }
    let expected: BTreeMap<String, usize> = [
        ("not_avro", 2),
        ("malformed", 2),
        ("unknown_fingerprint", 2),
        ("score_out_of_range", 2),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(reasons, expected);
    // The DLQ keeps the original bytes: the out-of-range answer still decodes.
    let codec = Codec::new().unwrap();
    let kept = dlq
        .iter()
        .find(|r| r.headers["cx.error.kind"] == "score_out_of_range")
        .unwrap();
    assert_eq!(codec.decode_answer(&kept.payload).unwrap().score, 11);
}

/// Input records committed by the journey furthest behind.
/// The DLQ refuses a dead letter (a 1,500-byte record where the producer's limit is 1,000
/// bytes, as a broker with a small limit would): the service stops with a message and
/// commits nothing past it; restarted with a DLQ that takes it, it is dead-lettered and
/// every count is exact — nothing was lost in between.
#[test]
fn dead_letters_the_dlq_refuses_are_read_again_not_lost() {
    let s = Stack::new("dlqrefuses");
    s.simulate(300, 0.2, 0);
    let garbage: Vec<u8> = (0..1500u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8 | 1)
        .collect();
    s.produce_raw(&s.topic("touchpoints"), b"bad-1", &garbage);
    // Too big for any dead-letter topic: kept as its first 512 KiB and its size.
    let huge: Vec<u8> = garbage.iter().copied().cycle().take(700_000).collect();
    s.produce_raw(&s.topic("answers"), b"bad-2", &huge);
    let total = (s.read_topic(&s.topic("touchpoints"), PARTITIONS).len()
        + s.read_topic(&s.topic("answers"), PARTITIONS).len()) as i64;
    let refusing = s.dir.join("refusing.yaml");
    let text = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(
        &refusing,
        // The size limit is every producer's: the aggregates' partials would be refused
        // first whenever a batch without the bad records is flushed before them.
        text.replacen(
            "kafka:\n",
            "kafka:\n  properties: {message.max.bytes: \"1000\"}\n",
            1,
        )
        .replacen("publish_aggregates: true", "publish_aggregates: false", 1),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cxstream"))
        .arg("--config")
        .arg(&refusing)
        .args(["journey", "--until-caught-up"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("refused records"), "{err}");
    assert!(
        committed_records(&s) < total,
        "records past the refused ones were committed"
    );
    assert_eq!(s.read_topic(&s.topic("dlq"), 1).len(), 0);

    s.ok(&["journey", "--until-caught-up"]);
    let mut dlq = s.read_topic(&s.topic("dlq"), 1);
    dlq.sort_by_key(|r| r.payload.len());
    assert_eq!(dlq.len(), 2);
    assert_eq!(dlq[0].payload, garbage);
    assert_eq!(dlq[1].payload, huge[..512 * 1024]);
    assert_eq!(dlq[1].headers["cx.original.bytes"], "700000");
    assert_eq!(committed_records(&s), total);
    assert_cells_equal(&s.truth(), &s.cells());
}

fn committed_records(s: &Stack) -> i64 {
    s.committed_records_by_journey()
        .values()
        .copied()
        .min()
        .unwrap_or(0)
}

/// Batches committed so far (compaction deletes old markers but keeps each partition's last).
fn committed_batches(s: &Stack) -> i64 {
    s.scalar(&format!(
        "SELECT toInt64(sum(n)) FROM (SELECT max(batch_seq) + 1 AS n FROM {}.ingest_batches \
         GROUP BY journey, source_partition)",
        s.database()
    ))
}

fn wait_for_batches(s: &Stack, at_least: i64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while committed_batches(s) < at_least {
        assert!(
            Instant::now() < deadline,
            "journey service committed nothing"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigterm_and_sigkill_mid_run_leave_every_count_exact() {
    sigterm_then_sigkill_mid_run(&Stack::new("kill"), |s| s.simulate(30_000, 2.0, 4));
}

/// The same on a two-shard ClickHouse cluster: resumes, claims and compaction read and
/// change rows on both shards.
#[test]
fn sigterm_and_sigkill_mid_run_leave_every_count_exact_on_a_two_shard_cluster() {
    let s = Stack::on_cluster("killcl", vec![shipped_map("retail")]);
    sigterm_then_sigkill_mid_run(&s, |s| s.simulate(30_000, 2.0, 4));
}

/// The same with journeys as they really happen, delivered messily, measured by two journey
/// maps at once (retail and support, each committing its own batches): the resumed runs
/// meet late touchpoints, retries and re-sent answers whose first copies were committed
/// before the kill, entries and step attempts reported open before it and decided after,
/// and journeys that resume from different points of the same partition.
#[test]
fn sigterm_and_sigkill_mid_run_leave_messy_counts_of_two_maps_exact() {
    let paths = vec![shipped_map("retail"), shipped_map("support")];
    let s = Stack::with_maps("killmessy", paths.clone());
    sigterm_then_sigkill_mid_run(&s, |s| {
        s.simulate_scenario(8_000, 2.0, 4, "journeys");
    });
    // What neither map declares is counted once as unmapped, whichever map saw it.
    let maps: Vec<JourneyMap> = paths
        .iter()
        .map(|p| JourneyMap::from_yaml("map", &std::fs::read_to_string(p).unwrap()).unwrap())
        .collect();
    let unmapped = unmapped_touchpoints(&s, &maps);
    assert!(unmapped > 0);
    assert_eq!(
        s.scalar(&format!(
            "SELECT toInt64(sum(touchpoints)) FROM {}.unmapped_touchpoints",
            s.database()
        )),
        unmapped
    );
}

/// Idle journeys are let go from memory once committed and read back from ClickHouse when
/// their customers return and when their entries' deadlines come. With an allowed lateness
/// of a day, journeys go idle within the four simulated days; customers come back after
/// their journeys end, and conversion entries wait two days: many journeys are let go and
/// read back. Through SIGTERM, SIGKILL and resumes every cell, fact and case stays exact,
/// and so does a replay into a new database, whose log says how many journeys it let go
/// and read back.
#[test]
fn journeys_let_go_and_read_back_count_exactly_through_kills_and_a_replay() {
    let lateness = "  allowed_lateness_ms: 86400000\n";
    let map = retail_in_hours().replace("budget: 10h\n", "budget: 2d\n");
    let s = Stack::with_map_text("letgo", &map);
    s.set_journey(lateness);
    sigterm_then_sigkill_mid_run(&s, |s| s.simulate_scenario(12_000, 4.0, 4, "incidents"));
    let db = s.database();
    let refused = s.scalar(&format!("SELECT toInt64(count()) FROM {db}.refused_events"));
    assert_eq!(refused, 0, "nothing is late by more than the hour allowed");

    let replay = s.replay();
    replay.set_journey(lateness);
    let out = replay
        .command(&["journey", "--until-caught-up"])
        .env("CXSTREAM_LOG_LEVEL", "info")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    let figure = |name: &str| -> i64 {
        let at = log
            .rfind(&format!("{name}="))
            .unwrap_or_else(|| panic!("{name} in {log}"));
        log[at + name.len() + 1..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap()
    };
    let (let_go, read_back) = (figure("journeys_let_go"), figure("journeys_read_back"));
    eprintln!("replay: {let_go} journeys let go at the end, {read_back} read back");
    assert!(let_go > 1000, "{let_go} let go");
    assert!(read_back > 100, "{read_back} read back");
    assert_cells_equal(&s.truth(), &replay.cells());
    assert_cells_equal(&s.step_truth(), &replay.step_cells());
}

/// Journeys as they really happen (skipped stages, going back, customers who return after a
/// journey ended, steps converting within their budget or not, a step broken in the app for
/// a while), delivered messily, with stage budgets of hours: every cell, step cell, stage and
/// step outcome, time to convert, flow and path ending equals the ground truth and an
/// independent computation from the topics.
#[test]
fn journeys_as_they_really_happen_count_exactly() {
    let map_text = retail_in_hours();
    let map = JourneyMap::from_yaml("retail_in_hours.yaml", &map_text).unwrap();
    let s = Stack::with_map_text("journeys", &map_text);
    s.simulate_scenario(4000, 2.0, 0, "journeys");
    s.ok(&["journey", "--until-caught-up"]);
    assert_cells_equal(&s.truth(), &s.cells());
    assert_cells_equal(&s.step_truth(), &s.step_cells());
    assert_funnel_is_independent(&s, &map);
    // Some customers started a second journey; the broken step shows in the app; touchpoints
    // no map declares are counted off-map, each once.
    let db = s.database();
    let off_map = off_map_touchpoints(&s, &map);
    assert!(off_map > 0);
    assert_eq!(
        s.scalar(&format!(
            "SELECT toInt64(sum(off_map_touchpoints)) FROM {db}.off_map_paths"
        )),
        off_map
    );
    assert_eq!(
        s.scalar(&format!(
            "SELECT toInt64(sum(touchpoints)) FROM {db}.metrics_minute_committed WHERE touchpoint = '(off-map)'"
        )),
        off_map
    );
    assert!(
        s.scalar(&format!(
            "SELECT toInt64(count()) FROM {db}.touchpoints FINAL WHERE journey_seq > 0"
        )) > 0
    );
    // (converted, decided attempts) of checkout in the app.
    let counts = |cond: &str| {
        let r = &s.query(&format!(
            "SELECT sum(converted), sum(converted + dropped) FROM {db}.step_funnel \
             WHERE step = 'checkout' AND channel = 'app' AND {cond}"
        ))[0];
        (r[0].parse::<f64>().unwrap(), r[1].parse::<f64>().unwrap())
    };
    let start = 1_793_577_600i64;
    let (from, until) = (start + 2 * 86_400 * 3 / 10, start + 2 * 86_400 * 6 / 10);
    let (xb, nb) = counts(&format!(
        "toUnixTimestamp(minute) BETWEEN {from} AND {until}"
    ));
    let (xn, nn) = counts(&format!("toUnixTimestamp(minute) < {}", from - 3600));
    // A two-proportion z-test: the broken window converts significantly less.
    let (pb, pn, p) = (xb / nb, xn / nn, (xb + xn) / (nb + nn));
    let z = (pn - pb) / (p * (1.0 - p) * (1.0 / nb + 1.0 / nn)).sqrt();
    assert!(z > 3.0, "checkout in the app broke: {pb} vs {pn} (z = {z})");
}

fn sigterm_then_sigkill_mid_run(s: &Stack, simulate: impl FnOnce(&Stack)) {
    simulate(s);
    let total = s.read_topic(&s.topic("touchpoints"), PARTITIONS).len()
        + s.read_topic(&s.topic("answers"), PARTITIONS).len();

    // SIGTERM mid-run: commits what it read and exits cleanly.
    let mut child = s.spawn(&["journey"]);
    wait_for_batches(s, 4);
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = child.wait().unwrap();
    assert!(status.success(), "SIGTERM exit: {status:?}");
    let after_term = committed_records(s);
    assert!(
        after_term < total as i64,
        "the run finished before SIGTERM; make the data set larger"
    );

    // SIGKILL mid-run: nothing is flushed; the restart resumes from the commit log.
    let batches = committed_batches(s);
    let mut child = s.spawn(&["journey"]);
    wait_for_batches(s, batches + 4);
    child.kill().unwrap();
    child.wait().unwrap();
    let after_kill = committed_records(s);
    assert!(
        after_kill < total as i64,
        "the run finished before SIGKILL; make the data set larger"
    );

    s.ok(&["journey", "--until-caught-up"]);
    for j in &s.journeys {
        assert_cells_equal(&s.truth_of(j), &s.cells_of(j));
        assert_cells_equal(&s.step_truth_of(j), &s.step_cells_of(j));
        // Facts, too, hold every record exactly once after replays.
        let facts = s.scalar(&format!(
            "SELECT toInt64(count()) FROM (SELECT * FROM {}.touchpoints FINAL WHERE journey = '{j}')",
            s.database()
        ));
        let distinct_events = s.truth_of(j).values().map(|v| v[10]).sum::<i64>();
        assert_eq!(facts, distinct_events, "{j}");
        // One case row per counting answer, a case exactly for the detractors', after
        // every kill and replay; NPS detractors as many as the ground truth has.
        let db = s.database();
        let answers = s.scalar(&format!(
            "SELECT toInt64(count()) FROM (SELECT * FROM {db}.survey_answers FINAL WHERE journey = '{j}')"
        ));
        let case_rows = s.scalar(&format!(
            "SELECT toInt64(count()) FROM (SELECT * FROM {db}.cases FINAL WHERE journey = '{j}')"
        ));
        assert_eq!(case_rows, answers, "{j}");
        let nps_cases = s.scalar(&format!(
            "SELECT toInt64(count()) FROM {db}.cases FINAL \
             WHERE journey = '{j}' AND is_case = 1 AND metric = 'NPS'"
        ));
        let nps_detractors = s.truth_of(j).values().map(|v| v[2]).sum::<i64>();
        assert_eq!(nps_cases, nps_detractors, "{j}");
    }
    assert_compacted(s);
    // What the alerter reads: the committed batches' partial counts on the aggregates topic
    // sum to the ground truth too, after SIGTERM, SIGKILL and replays.
    let (minutes, steps, within) = common::committed_aggregates(s);
    for j in &s.journeys {
        assert_cells_equal(&s.truth_of(j), minutes.get(j).unwrap_or(&BTreeMap::new()));
        assert_cells_equal(
            &s.step_truth_of(j),
            steps.get(j).unwrap_or(&BTreeMap::new()),
        );
        // The early horizons the alerter judges steps by first: as the attempts' facts.
        assert_cells_equal(
            &s.step_within_of(j),
            within.get(j).unwrap_or(&BTreeMap::new()),
        );
    }
    // The alerter reads that topic to its end with nothing missing from a confirmed batch.
    let out = s.ok(&["alerter", "--until-caught-up"]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!log.contains("are missing"), "{log}");
}

/// A product system written in Python (fastavro + confluent-kafka, schemas from
/// `schemas/avro/`, single-object encoding per the Avro specification) feeds cxstream, and
/// every record counts: per touchpoint, NPS buckets, facts, and nothing dead-lettered.
#[test]
fn records_from_a_python_fastavro_producer_are_all_counted() {
    python_producer_is_counted(&Stack::new("py"), "single-object");
}

/// The same producer writing half its records as Confluent's serializers do (magic byte 0,
/// schema id, datum) with its own version 2 of the schemas (fields reordered, fields of its
/// own), the other half single-object: the writer schemas of its ids are configured, and
/// every record counts exactly as a single-object one.
#[test]
fn confluent_framed_records_from_another_library_are_counted_like_single_object_ones() {
    let s = Stack::new("confluent");
    let schemas =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/producers/schemas");
    s.append_config(&format!(
        "schemas:\n  confluent:\n\
         \x20   - {{id: 21, record: touchpoint, file: {}}}\n\
         \x20   - {{id: 22, record: survey_answer, file: {}}}\n",
        schemas.join("touchpoint_v2.avsc").display(),
        schemas.join("survey_answer_v2.avsc").display()
    ));
    let summary = python_producer_is_counted(&s, "mixed");
    for framing in ["confluent", "single-object"] {
        assert!(
            summary["framing"][framing].as_i64().unwrap() > 100,
            "{framing}: {}",
            summary["framing"]
        );
    }
}

/// Runs the Python producer with `framing` into `s`, then the journey service, and checks
/// every count against the producer's own summary (returned).
fn python_producer_is_counted(s: &Stack, framing: &str) -> serde_json::Value {
    let summary_path = s.dir.join("python-summary.json");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/producers/fastavro_producer.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .args(["--brokers", &s.kafka, "--customers", "300", "--seed", "11"])
        .args([
            "--touchpoints",
            &s.topic("touchpoints"),
            "--answers",
            &s.topic("answers"),
        ])
        .arg("--summary")
        .arg(&summary_path)
        .args(["--framing", framing])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python producer (pip fastavro confluent-kafka, installed by deploy/local/install.sh):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.ok(&["journey", "--until-caught-up"]);
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary_path).unwrap()).unwrap();

    assert_eq!(
        s.read_topic(&s.topic("dlq"), 1).len(),
        0,
        "nothing is dead-lettered"
    );
    let db = s.database();
    let mut by_touchpoint = s.counts(&format!(
        "SELECT touchpoint, sum(touchpoints) FROM {db}.metrics_minute_committed GROUP BY touchpoint"
    ));
    by_touchpoint.retain(|_, n| *n != 0);
    let expected: BTreeMap<String, i64> = summary["by_touchpoint"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_i64().unwrap()))
        .collect();
    assert_eq!(by_touchpoint, expected);
    let nps = s.query(&format!(
        "SELECT sum(nps_promoters), sum(nps_passives), sum(nps_detractors) FROM {db}.metrics_minute_committed"
    ));
    let nps: Vec<i64> = nps[0].iter().map(|x| x.parse().unwrap()).collect();
    let want: Vec<i64> = ["promoters", "passives", "detractors"]
        .iter()
        .map(|k| summary["nps"][k].as_i64().unwrap())
        .collect();
    assert_eq!(nps, want);
    let facts = |table: &str| {
        s.scalar(&format!(
            "SELECT toInt64(count()) FROM (SELECT * FROM {db}.{table} FINAL)"
        ))
    };
    assert_eq!(
        facts("touchpoints"),
        summary["touchpoints"].as_i64().unwrap()
    );
    assert_eq!(
        facts("survey_answers"),
        summary["answers"].as_i64().unwrap()
    );
    assert!(
        summary["resent"].as_i64().unwrap() > 0,
        "the producer re-sent some events"
    );
    summary
}

/// Traffic as real producers deliver it — touchpoints up to two days late (their answers
/// arrive first), retries a day later, re-sent answers, a survey tool three hours behind,
/// browsing bursts between a touchpoint and its survey, clocks a day ahead — counts exactly
/// as the ground truth; future-dated events are kept apart; events beyond the allowed
/// lateness, produced after the watermark has passed them, change nothing and are kept too.
#[test]
fn messy_delivery_counts_exactly_and_refused_events_are_kept_apart() {
    let s = Stack::new("messy");
    // Enough batches per partition in one catch-up for compactions (every 4 batches).
    s.set_journey("  max_batch_records: 500\n");
    s.simulate_scenario(3000, 2.0, 0, "messy");
    s.ok(&["journey", "--until-caught-up"]);
    let truth = s.truth();
    assert_cells_equal(&truth, &s.cells());
    assert_cells_equal(&s.step_truth(), &s.step_cells());
    assert_facts_equal_aggregates(&s);
    let expected_future = s.expected_refused()["future"];
    assert!(expected_future > 0);
    assert_eq!(s.refused().get("future").copied(), Some(expected_future));
    assert_compacted(&s);

    // A real replay of the same topics into an empty database gives the same cells.
    let replay = s.replay();
    replay.ok(&["journey", "--until-caught-up"]);
    assert_cells_equal(&truth, &replay.cells());
    assert_cells_equal(&s.step_truth(), &replay.step_cells());

    // Events dated a month before the period, sent now: beyond the allowed lateness of
    // every partition's committed watermark. Nothing changes; they are kept as late.
    let start = 1_793_577_600_000i64;
    let old: Vec<TouchpointEvent> = (0..8)
        .map(|i| TouchpointEvent {
            event_id: format!("ancient-{i}"),
            customer_id: Some(format!("cust-{:07}", i * 7)),
            anonymous_id: None,
            event_time: start - 30 * 86_400_000 + i,
            touchpoint: "purchase_completed".into(),
            channel: "web".into(),
            stage: None,
            segment: None,
            outcome: None,
            attributes: HashMap::new(),
        })
        .collect();
    s.produce_touchpoints(&old);
    s.ok(&["journey", "--until-caught-up"]);
    assert_cells_equal(&truth, &s.cells());
    assert_cells_equal(&s.step_truth(), &s.step_cells());
    assert_eq!(s.refused().get("late").copied(), Some(8));
}

/// Compaction (every 4 batches in the tests) folded committed batches as they accumulated
/// without changing a figure (the callers compare cells), every input record counts once in
/// the commit log, and the folded batches' rows are deleted behind it.
fn assert_compacted(s: &Stack) {
    let db = s.database();
    assert!(
        s.scalar(&format!("SELECT toInt64(count()) FROM {db}.compactions")) > 0,
        "nothing was compacted"
    );
    let records = (s.read_topic(&s.topic("touchpoints"), PARTITIONS).len()
        + s.read_topic(&s.topic("answers"), PARTITIONS).len()) as i64;
    let every_journey: BTreeMap<String, i64> =
        s.journeys.iter().map(|j| (j.clone(), records)).collect();
    assert_eq!(s.committed_records_by_journey(), every_journey);
    // Left per journey and partition: fewer than 4 live batches and the marker it resumes
    // from.
    let deadline = Instant::now() + Duration::from_secs(60);
    let journeys = s.journeys.len() as i64;
    loop {
        let markers = s.scalar(&format!("SELECT toInt64(count()) FROM {db}.ingest_batches"));
        if markers <= 4 * i64::from(PARTITIONS) * journeys {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{markers} batch markers are left after compaction"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `cxstream report --html` on two journey maps: the page opens in headless Chromium with no
/// console error and loads nothing from elsewhere, every chart is drawn, and each journey's
/// funnel table holds the figures of the stage funnel view.
#[test]
fn the_html_report_renders_in_a_browser_with_the_funnel_views_figures() {
    let s = Stack::with_maps("html", vec![shipped_map("retail"), shipped_map("support")]);
    s.simulate_scenario(1500, 3.0, 0, "journeys");
    s.ok(&["journey", "--until-caught-up"]);
    let page = s.dir.join("report.html");
    s.ok(&["report", "--html", page.to_str().unwrap()]);
    let html = std::fs::read_to_string(&page).unwrap();
    for external in ["src=", "href=", "@import", "url("] {
        assert!(!html.contains(external), "the page loads {external}");
    }

    let out = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--enable-logging=stderr",
            "--v=0",
            "--dump-dom",
        ])
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("chromium (installed by deploy/local/install.sh)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let console: Vec<String> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.contains(":CONSOLE"))
        .map(str::to_string)
        .collect();
    assert!(console.is_empty(), "console messages: {console:?}");
    let dom = String::from_utf8(out.stdout).unwrap();
    for journey in &s.journeys {
        let section = dom
            .split(&format!("id=\"journey-{journey}\""))
            .nth(1)
            .unwrap_or_else(|| panic!("no section of journey {journey}"));
        let section = section.split("<section").next().unwrap();
        // Stage and step funnels, three score trends.
        assert_eq!(section.matches("<svg").count(), 5, "{journey}");
        let table = section
            .split("data-kind=\"stage\"")
            .nth(1)
            .unwrap()
            .split("</table>")
            .next()
            .unwrap();
        let funnel = s.query(&format!(
            "SELECT stage, sum(entries), sum(conversions), sum(dropoffs), sum(open_entries) \
             FROM {}.stage_funnel WHERE journey = '{journey}' AND has_outcome = 1 GROUP BY stage",
            s.database()
        ));
        assert!(!funnel.is_empty());
        for row in funnel {
            let cells: Vec<&str> = table
                .split(&format!("data-name=\"{}\"", row[0]))
                .nth(1)
                .unwrap_or_else(|| panic!("{journey}: no row for stage {}", row[0]))
                .split("</tr>")
                .next()
                .unwrap()
                .split("<td class=\"n\">")
                .skip(1)
                .take(4)
                .map(|c| c.split('<').next().unwrap())
                .collect();
            assert_eq!(
                cells,
                row[1..].iter().map(String::as_str).collect::<Vec<_>>(),
                "{journey} {}",
                row[0]
            );
        }
    }
}

/// ClickHouse unreachable: the service stays alive (`/healthz` 200), says it is not ready
/// (`/readyz` 503) while it retries, and commits nothing.
#[test]
fn without_clickhouse_the_service_is_alive_but_not_ready() {
    let s = Stack::new("notready");
    s.simulate(50, 0.1, 0);
    let mut journey = s.command(&["journey"]);
    journey.env("CXSTREAM_CLICKHOUSE_URL", "http://127.0.0.1:1");
    let (mut child, addr) = spawn_listening(journey);
    let status = |path: &str| {
        http_get(&addr, path)
            .lines()
            .next()
            .unwrap_or("")
            .to_string()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !status("/readyz").contains("503") {
        assert!(Instant::now() < deadline, "still ready without ClickHouse");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(status("/healthz").contains("200"));
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        s.scalar(&format!(
            "SELECT toInt64(count()) FROM {}.ingest_batches",
            s.database()
        )),
        0
    );
}

/// A touchpoint to produce, to the given partition or (none) to its key's.
type Placed = (TouchpointEvent, Option<i32>);

/// Identity stitching's window in the identity test: one hour.
const IDENTITY_WINDOW_MS: i64 = 3_600_000;

/// Devices browsing anonymously (keyed by their anonymous id, as producers key them), some
/// signing in within the window, some never, some hours later, some signed in before they
/// browse; and one far-future touchpoint per partition, so that every wait ends. Returns the
/// records with their partition (for the far-future ones) and, per event id, whose journey
/// it belongs to by the README's rule: the customer's when dated at or after the device's
/// first identification minus the window, else the visitor's (`anon:` + anonymous id).
fn identity_traffic(devices: u32) -> (Vec<Placed>, BTreeMap<String, String>) {
    let t0 = 1_793_836_800_000i64; // 2026-11-05 00:00 UTC
    let minute = 60_000;
    let event = |id: String, customer: Option<&str>, device: Option<&str>, t: i64, name: &str| {
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
    };
    let mut events: Vec<TouchpointEvent> = Vec::new();
    let mut owner = BTreeMap::new();
    for k in 0..devices {
        let (device, customer) = (format!("dev-{k}"), format!("cust-{k}"));
        let base = t0 + i64::from(k) * 7 * minute;
        let browse = 1 + k % 4;
        // When the device is identified (minutes after `base`), if ever.
        let identified_at = match k % 4 {
            0 => Some(20),
            1 => None,
            2 => Some(180),
            _ => Some(-5),
        };
        for i in 0..browse {
            let t = base + i64::from(i) * 3 * minute;
            let name = if i == 0 {
                "ad_impression"
            } else {
                "product_view"
            };
            events.push(event(
                format!("{device}-a{i}"),
                None,
                Some(&device),
                t,
                name,
            ));
        }
        if let Some(at) = identified_at {
            let t = base + at * minute;
            events.push(event(
                format!("{device}-i"),
                Some(&customer),
                Some(&device),
                t,
                "checkout_started",
            ));
            events.push(event(
                format!("{device}-p"),
                Some(&customer),
                None,
                t + 2 * minute,
                "purchase_completed",
            ));
            // Still browsing without signing in on the same device, later.
            events.push(event(
                format!("{device}-late"),
                None,
                Some(&device),
                t + 30 * minute,
                "product_view",
            ));
        }
        for e in events
            .iter()
            .filter(|e| e.anonymous_id.as_deref() == Some(device.as_str()))
        {
            let mine = e.customer_id.clone().or_else(|| {
                let first = base + identified_at? * minute;
                (e.event_time >= first - IDENTITY_WINDOW_MS).then(|| customer.clone())
            });
            owner.insert(
                e.event_id.clone(),
                mine.unwrap_or_else(|| format!("anon:{device}")),
            );
        }
        for e in events
            .iter()
            .filter(|e| e.customer_id.as_deref() == Some(customer.as_str()))
        {
            owner.insert(e.event_id.clone(), customer.clone());
        }
    }
    events.sort_by_key(|e| e.event_time);
    let end = t0 + i64::from(devices) * 7 * minute + 2 * 86_400_000;
    let mut records: Vec<(TouchpointEvent, Option<i32>)> =
        events.into_iter().map(|e| (e, None)).collect();
    for p in 0..PARTITIONS {
        let (id, who) = (format!("end-{p}"), format!("end-{p}"));
        owner.insert(id.clone(), who.clone());
        records.push((event(id, Some(&who), None, end, "ad_impression"), Some(p)));
    }
    (records, owner)
}

/// Whose journey each touchpoint fact is in, by event id.
fn fact_owners(s: &Stack) -> BTreeMap<String, String> {
    s.query(&format!(
        "SELECT event_id, customer_id FROM {}.touchpoints FINAL",
        s.database()
    ))
    .into_iter()
    .map(|r| (r[0].clone(), r[1].clone()))
    .collect()
}

fn assert_each_person_counted_once(s: &Stack, owner: &BTreeMap<String, String>) {
    let facts = fact_owners(s);
    let diffs: Vec<_> = owner
        .keys()
        .chain(facts.keys())
        .filter(|k| owner.get(*k) != facts.get(*k))
        .take(8)
        .map(|k| {
            format!(
                "{k}: expected {:?}, in ClickHouse {:?}",
                owner.get(k),
                facts.get(k)
            )
        })
        .collect();
    assert!(
        diffs.is_empty(),
        "touchpoints in the wrong journey:\n{}",
        diffs.join("\n")
    );
    // Every touchpoint once, in one journey: the facts hold each event id once (FINAL) and
    // the per-minute counts sum to the same.
    let db = s.database();
    let rows = s.scalar(&format!(
        "SELECT toInt64(count()) FROM {db}.touchpoints FINAL"
    ));
    assert_eq!(rows, owner.len() as i64);
    let counted = s.scalar(&format!(
        "SELECT toInt64(sum(touchpoints)) FROM {db}.metrics_minute_committed"
    ));
    assert_eq!(counted, owner.len() as i64);
    let persons: HashSet<&String> = owner.values().collect();
    let in_clickhouse = s.scalar(&format!(
        "SELECT toInt64(uniqExact(customer_id)) FROM {db}.stage_entries FINAL WHERE withdrawn = 0"
    ));
    assert_eq!(
        in_clickhouse,
        persons.len() as i64,
        "persons with a stage entry"
    );
    assert_facts_equal_aggregates(s);
    assert!(s.refused().is_empty(), "{:?}", s.refused());
    assert!(s.read_topic(&s.topic("dlq"), 1).is_empty());
}

fn identity_stack(test: &str) -> Stack {
    let s = Stack::new(test);
    s.append_config(&format!(
        "identity:\n  enabled: true\n  window_ms: {IDENTITY_WINDOW_MS}\n"
    ));
    s
}

#[test]
fn anonymous_visitors_join_the_customer_identified_on_their_device_and_count_once() {
    let s = identity_stack("identity");
    let (records, owner) = identity_traffic(120);
    s.produce_touchpoints_keyed(&records);
    s.catch_up_within_minutes();
    assert_each_person_counted_once(&s, &owner);
    let visitors = owner.values().filter(|o| o.starts_with("anon:")).count();
    let stitched = owner
        .iter()
        .filter(|(id, o)| id.contains("-a") && !o.starts_with("anon:"))
        .count();
    assert!(
        visitors > 0 && stitched > 0,
        "{visitors} visitors' touchpoints, {stitched} stitched"
    );
    // A replay of the same topics (the identities topic included) into an empty database
    // stitches the same touchpoints.
    let r = s.replay();
    r.append_config(&format!(
        "identity:\n  enabled: true\n  window_ms: {IDENTITY_WINDOW_MS}\n"
    ));
    r.catch_up_within_minutes();
    assert_each_person_counted_once(&r, &owner);
}

#[test]
fn identity_stitching_survives_kill_9_mid_run() {
    let s = identity_stack("identity_kill");
    let (records, owner) = identity_traffic(1500);
    s.produce_touchpoints_keyed(&records);
    let mut child = s.spawn(&["journey"]);
    wait_for_batches(&s, 3);
    child.kill().unwrap();
    child.wait().unwrap();
    let before = fact_owners(&s).len();
    assert!(
        before < owner.len(),
        "the run finished before SIGKILL; make the data set larger"
    );
    s.catch_up_within_minutes();
    assert_each_person_counted_once(&s, &owner);
}

/// A catch-up whose group keeps partitions from it (a member of the group that holds them
/// and reads nothing, as Tansu's wedged groups did with a member that was gone) rejoins,
/// then takes every partition itself and counts everything exactly once.
#[test]
fn a_catch_up_that_the_group_keeps_partitions_from_reads_them_all_alone() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let s = Stack::with_map_text("catch_up_alone", &retail_in_hours());
    let config = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(
        &s.config,
        config.replace("join_timeout_ms: 12000", "join_timeout_ms: 2000"),
    )
    .unwrap();
    s.simulate(1500, 1.0, 0);
    let squatter: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &s.kafka)
        .set("group.id", format!("g.{}", s.run))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    squatter
        .subscribe(&[&s.topic("touchpoints"), &s.topic("answers")])
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let polling = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            // Keeps its membership and reads nothing.
            while !stop.load(Ordering::Relaxed) {
                squatter.poll(Duration::from_millis(100));
            }
        })
    };
    s.catch_up_within_minutes();
    stop.store(true, Ordering::Relaxed);
    polling.join().unwrap();
    assert_cells_equal(&s.truth(), &s.cells());
    assert_cells_equal(&s.step_truth(), &s.step_cells());
}

/// The simulator's identity scenario (journeys as they really happen, messily delivered,
/// with 40 % of customers browsing anonymously before they sign in, or never), a kill -9
/// mid-run: every cell and step cell equals the ground truth, and each anonymous
/// touchpoint counts once, in the journey the simulator says (customer's or visitor's).
#[test]
fn the_identity_scenario_counts_each_person_once_and_equals_its_truth_across_kill_9() {
    let s = Stack::with_map_text("identity_scenario", &retail_in_hours());
    s.append_config("identity:\n  enabled: true\n  window_ms: 7200000\n");
    s.simulate_scenario(3000, 2.0, 0, "identity");
    let mut child = s.spawn(&["journey"]);
    wait_for_batches(&s, 2);
    child.kill().unwrap();
    child.wait().unwrap();
    s.catch_up_within_minutes();
    assert_cells_equal(&s.truth(), &s.cells());
    assert_cells_equal(&s.step_truth(), &s.step_cells());
    let owners: BTreeMap<String, String> =
        std::fs::read_to_string(s.truth_path().with_extension("owners.csv"))
            .unwrap()
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(','))
            .map(|(e, c)| (e.to_string(), c.to_string()))
            .collect();
    let facts = fact_owners(&s);
    let wrong: Vec<String> = owners
        .iter()
        .filter(|(e, c)| facts.get(*e) != Some(c))
        .take(8)
        .map(|(e, c)| format!("{e}: expected {c}, in ClickHouse {:?}", facts.get(e)))
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    let visitors = owners.values().filter(|c| c.starts_with("anon:")).count();
    assert!(
        visitors > 100 && owners.len() - visitors > 100,
        "{visitors} of {} anonymous touchpoints are visitors'",
        owners.len()
    );
    // The report says how many anonymous touchpoints are in visitors' journeys, and whose.
    let report = String::from_utf8(s.ok(&["report"]).stdout).unwrap();
    let devices: HashSet<&String> = owners.values().filter(|c| c.starts_with("anon:")).collect();
    assert!(
        report.contains(&format!(" {visitors} in {} visitors' own", devices.len())),
        "{report}"
    );
    assert_eq!(
        s.refused().get("future").copied(),
        Some(s.expected_refused()["future"])
    );
}

/// Stored journeys hold positions in the map's lists: a map that adds a channel at the end
/// runs, one that moves a channel is refused with what moved, before anything is read.
#[test]
fn a_journey_map_that_moves_a_name_is_refused_and_one_that_adds_at_the_end_runs() {
    let retail = std::fs::read_to_string(shipped_map("retail")).unwrap();
    let channels = "channels: [web, app, store, call_centre, email, social]";
    assert!(
        retail.contains(channels),
        "the shipped map's channels changed"
    );
    let s = Stack::with_map_text("map_positions", &retail);
    s.ok(&["journey", "--until-caught-up"]);
    let channels_stored = format!(
        "SELECT arrayStringConcat(argMax(names, length(names)), ' ') \
         FROM {}.journey_map_positions WHERE journey = 'retail' AND list = 'channels'",
        s.database()
    );
    let added = retail.replace(
        channels,
        "channels: [web, app, store, call_centre, email, social, kiosk]",
    );
    std::fs::write(&s.maps[0], &added).unwrap();
    s.ok(&["journey", "--until-caught-up"]);
    let stored = s.query(&channels_stored);
    assert_eq!(
        stored,
        vec![vec![
            "web app store call_centre email social kiosk".to_string()
        ]]
    );

    let moved = retail.replace(
        channels,
        "channels: [web, store, app, call_centre, email, social, kiosk]",
    );
    std::fs::write(&s.maps[0], &moved).unwrap();
    let out = s.run(&["journey", "--until-caught-up"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a moved channel was taken: {stderr}");
    assert!(
        stderr.contains("changed its channels in place: position 2 was `app` and is now `store`"),
        "{stderr}"
    );
    // Nothing was recorded for the refused map.
    let after = s.query(&channels_stored);
    assert_eq!(after, stored);
}
