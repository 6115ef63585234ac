//! The detectors against the documented rules, with a reference computation of each rule
//! written here (not the detectors' code): a slice at its baseline never fires, a drop of
//! the tuned size fires when the reference evidence crosses the threshold, an incident
//! resolves after the evidence has stayed at zero, and a silence fires when the events it
//! misses are less likely than the threshold allows.

#![allow(clippy::unwrap_used)]

use cxstream_core::detect::{DropDetector, DropParams, Incident, Silence, SilenceParams};
use proptest::prelude::*;

/// 2026-11-02T00:00Z, a Monday, in epoch minutes.
const START: i64 = 1_793_577_600_000 / 60_000;
const WEEK: i64 = 7 * 24 * 60;

/// The rule's log-likelihood ratio of x successes in n trials, rate p0 against
/// p0·(1 − drop), from the Bernoulli likelihoods.
fn reference_llr(x: f64, n: f64, p0: f64, drop: f64) -> f64 {
    let p1 = p0 * (1.0 - drop);
    let lik = |p: f64| x * p.ln() + (n - x) * (1.0 - p).ln();
    lik(p1) - lik(p0)
}

fn warmed(params: DropParams, k: u64, n: u64, weeks: i64) -> (DropDetector, i64) {
    let mut d = DropDetector::new(params);
    for m in 0..weeks * WEEK {
        assert_eq!(d.observe(START + m, k, n), None, "fired while warming up");
    }
    (d, START + weeks * WEEK)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// A slice converting exactly at its baseline never builds evidence, whatever its size.
    #[test]
    fn a_slice_at_its_baseline_never_fires(n in 1u64..400, share in 0.01f64..0.99) {
        let k = ((n as f64 * share) as u64).clamp(1, n.saturating_sub(1).max(1));
        let (mut d, from) = warmed(DropParams::default(), k, n, 2);
        for m in 0..WEEK {
            prop_assert_eq!(d.observe(from + m, k, n), None);
            prop_assert_eq!(d.evidence(), 0.0);
        }
    }

    /// After a drop of the tuned size, the incident starts at the minute the reference
    /// evidence crosses the threshold (give or take the one the baseline learned meanwhile).
    #[test]
    fn a_drop_fires_when_the_reference_evidence_crosses(n in 50u64..400, share in 0.5f64..0.95) {
        let params = DropParams::default();
        let k = (n as f64 * share) as u64;
        let (mut d, from) = warmed(params, k, n, 2);
        let p0 = k as f64 / n as f64;
        let dropped = (k as f64 * (1.0 - params.relative_drop)).floor();
        let per_minute = reference_llr(dropped, n as f64, p0, params.relative_drop);
        prop_assert!(per_minute > 0.0);
        let due = (params.threshold / per_minute).ceil() as i64;
        let mut fired = None;
        for m in 0..60 {
            if let Some(Incident::Started { minute, observed, .. }) = d.observe(from + m, dropped as u64, n) {
                fired = Some(minute - from + 1);
                prop_assert!((observed - dropped / n as f64).abs() < 1e-9);
                break;
            }
        }
        let fired = fired.expect("the drop fires within the hour");
        prop_assert!((fired - due).abs() <= 1, "fired after {} minutes, reference {}", fired, due);
        // The bar: at 50 trials a minute and more, a 30 % drop is found within 10 minutes.
        prop_assert!(fired <= 10, "{} minutes", fired);
    }
}

/// The incident goes on while the rate stays low, and resolves once the minutes since are
/// `resolve_evidence` likelier (in log) under the baseline than under the drop; the
/// baseline did not learn the incident.
#[test]
fn an_incident_resolves_once_the_recovery_is_evident() {
    let params = DropParams::default();
    let (mut d, from) = warmed(params, 70, 100, 2);
    let mut t = from;
    let mut events = Vec::new();
    for _ in 0..30 {
        events.push(d.observe(t, 40, 100));
        t += 1;
    }
    assert!(matches!(
        events.iter().flatten().next(),
        Some(Incident::Started { .. })
    ));
    assert!(matches!(
        events.last(),
        Some(Some(Incident::Ongoing { .. }))
    ));
    // Firing, the evidence stays at the threshold: recovery does not take as long as the
    // incident lasted.
    assert!(d.evidence() <= params.threshold + 1e-9);
    // Back to normal: the evidence of recovery grows by the reference's amount a minute
    // (the baseline is Laplace-smoothed over thousands of trials), and the incident
    // resolves the minute it reaches `resolve_evidence`.
    let per_minute = -reference_llr(70.0, 100.0, 0.7, params.relative_drop);
    let due = (params.resolve_evidence / per_minute).ceil() as u32 - 1;
    let mut resolved_at = None;
    for i in 0..200u32 {
        if let Some(Incident::Resolved { .. }) = d.observe(t, 70, 100) {
            resolved_at = Some(i);
            break;
        }
        t += 1;
    }
    let resolved_at = resolved_at.expect("resolves");
    assert!(
        resolved_at.abs_diff(due) <= 1,
        "resolved at {resolved_at}, the reference's recovery evidence crosses at {due}"
    );
    assert!(!d.firing());
}

/// A baseline without a single failure (every attempt converted) is not certainty: one
/// minute with two failures does not page.
#[test]
fn a_perfect_baseline_does_not_page_on_one_bad_minute() {
    let (mut d, from) = warmed(DropParams::default(), 10, 10, 3);
    assert_eq!(d.observe(from, 8, 10), None);
    for m in 1..WEEK {
        assert_eq!(d.observe(from + m, 10, 10), None);
    }
}

/// A drop that lasts: the incident ends after `max_incident_minutes`, the new rate is
/// learned afresh, and the slice does not page again at it.
#[test]
fn a_lasting_change_ends_its_incident_and_becomes_the_normal() {
    let params = DropParams::default();
    let (mut d, from) = warmed(params, 7, 10, 2);
    let mut started = 0;
    let mut resolved = Vec::new();
    for m in 0..5 * WEEK {
        match d.observe(from + m, 3, 10) {
            Some(Incident::Started { .. }) => started += 1,
            Some(Incident::Resolved { minute }) => resolved.push(minute - from),
            _ => {}
        }
    }
    assert_eq!(started, 1, "one incident");
    assert_eq!(resolved.len(), 1);
    assert!((params.max_incident_minutes..params.max_incident_minutes + 60).contains(&resolved[0]));
    assert!(!d.firing());
}

/// Too little history in this hour of the week: the slice is not tested.
#[test]
fn a_small_slice_does_not_page() {
    let (mut d, from) = warmed(DropParams::default(), 1, 2, 1);
    for m in 0..WEEK {
        assert_eq!(d.observe(from + m, 0, 2), None);
    }
}

/// A slice with one silent minute in every `every` (10 events a minute otherwise), then
/// none: it fires at the minute the run's chance, from the measured share of silent
/// minutes of that hour of the week (p0, smoothed), falls below e^−threshold; and it
/// resolves with the first event.
#[test]
fn a_silence_fires_when_chance_no_longer_explains_it() {
    for every in [3i64, 10, 50] {
        let params = SilenceParams::default();
        let mut s = Silence::new(params);
        for m in 0..2 * WEEK {
            let events = if m % every == every - 1 { 0 } else { 10 };
            assert_eq!(s.observe(START + m, events), None);
        }
        let from = START + 2 * WEEK;
        // Monday 00:xx of the two weeks before, weighing 1/4 and 1/2 (weekly decay).
        let den = 60.0 * 0.75;
        let p0 = (den / every as f64 + 1.0) / (den + 2.0);
        let due = (params.threshold / -p0.ln()).ceil() as i64;
        let mut fired = None;
        for m in 0..30 {
            if let Some(Incident::Started { minute, .. }) = s.observe(from + m, 0) {
                fired = Some(minute - from + 1);
                break;
            }
        }
        let fired = fired.expect("fires");
        assert!(
            (fired - due).abs() <= 1,
            "every {every}: fired after {fired}, due {due}"
        );
        // Back at its usual 10 a minute: resolved in the fifth minute (hysteresis).
        for m in 40..44 {
            assert!(matches!(
                s.observe(from + m, 10),
                Some(Incident::Ongoing { .. })
            ));
        }
        assert!(matches!(
            s.observe(from + 44, 10),
            Some(Incident::Resolved { .. })
        ));
    }
    // Busy days and quiet nights: a night is measured against nights, not the day.
    let mut s = Silence::new(SilenceParams::default());
    let mut incidents = 0;
    for m in 0..4 * WEEK {
        let hour = (m / 60) % 24;
        let events = if (7..22).contains(&hour) {
            10
        } else {
            u64::from(m % 20 == 0)
        };
        incidents += usize::from(matches!(
            s.observe(START + m, events),
            Some(Incident::Started { .. })
        ));
    }
    assert_eq!(incidents, 0);
    // A trickle (under one event a minute) is silent too often to page.
    let mut s = Silence::new(SilenceParams::default());
    for m in 0..2 * WEEK {
        s.observe(START + m, u64::from(m % 3 == 0));
    }
    for m in 0..600 {
        assert_eq!(s.observe(START + 2 * WEEK + m, 0), None);
    }
}

/// Where a map watches thinner channels (a floor of 3 touchpoints a minute), one of 3.5 a
/// minute in bursts (a customer's few touchpoints together, a third of its minutes empty)
/// that goes silent fires once the run's chance falls below e^−threshold; three weeks of its
/// usual pauses raise nothing.
#[test]
fn a_thin_channel_that_goes_silent_fires_where_thin_channels_are_watched() {
    let params = SilenceParams {
        min_events_per_minute: 3.0,
        ..SilenceParams::default()
    };
    let mut s = Silence::new(params);
    let bursts = [7u64, 0, 4, 0, 5, 5];
    let thin = |m: i64| bursts[m.rem_euclid(6) as usize];
    for m in 0..3 * WEEK {
        assert_eq!(s.observe(START + m, thin(m)), None, "minute {m}");
    }
    let from = START + 3 * WEEK;
    // Three weeks of this hour of the week, weighing 1/8, 1/4 and 1/2.
    let den: f64 = 60.0 * 0.875;
    let p0 = (den / 3.0 + 1.0) / (den + 2.0);
    let due = (params.threshold / -p0.ln()).ceil() as i64;
    let fired = (0..60)
        .find(|m| matches!(s.observe(from + m, 0), Some(Incident::Started { .. })))
        .map(|m| m + 1)
        .expect("fires");
    assert!((fired - due).abs() <= 1, "fired after {fired}, due {due}");
}

/// A silence resolves with hysteresis: a source that all but stops (one event, then a pause
/// long enough to be a silence, again and again) is one incident; it resolves once the last
/// five minutes since traffic came back each had events, or brought half the hour's usual
/// volume (here 9 a minute) between empty minutes, and not while traffic comes back
/// thinner than both.
#[test]
fn a_silence_resolves_once_traffic_is_back_not_with_each_event() {
    // The rule, for minutes since the first event back: the index of the one resolving.
    fn resolves_at(back: &[u64]) -> Option<usize> {
        (4..back.len()).find(|&i| {
            let last = &back[i - 4..=i];
            last.iter().all(|&e| e > 0) || last.iter().sum::<u64>() as f64 >= 0.5 * 5.0 * 9.0
        })
    }
    let mut s = Silence::new(SilenceParams::default());
    let usual = |m: i64| if m % 10 == 9 { 0 } else { 10 };
    for m in 0..2 * WEEK {
        assert_eq!(s.observe(START + m, usual(m)), None);
    }
    let mut minute = START + 2 * WEEK;
    let mut feed = |s: &mut Silence, events: &[u64]| {
        let mut said = String::new();
        for &e in events {
            said.push(match s.observe(minute, e) {
                Some(Incident::Started { .. }) => 'S',
                Some(Incident::Resolved { .. }) => 'R',
                Some(Incident::Ongoing { .. }) => '.',
                None => ' ',
            });
            minute += 1;
        }
        said
    };
    let expect = |back: &[u64]| {
        let r = resolves_at(back).expect("the rule resolves it");
        (0..back.len())
            .map(|i| match i.cmp(&r) {
                std::cmp::Ordering::Less => '.',
                std::cmp::Ordering::Equal => 'R',
                std::cmp::Ordering::Greater => ' ',
            })
            .collect::<String>()
    };
    let said = feed(&mut s, &[0; 30]);
    assert_eq!(said.matches('S').count(), 1, "{said:?}");
    // All but stopped (one event between pauses of 20 minutes, five times), then back at
    // 4 a minute, every minute.
    let mut back = Vec::new();
    for _ in 0..5 {
        back.push(1);
        back.extend([0; 20]);
    }
    back.extend([4; 8]);
    assert_eq!(feed(&mut s, &back), expect(&back));
    // Another silence; traffic thinner than both rules (3 every other minute), then half
    // the volume between empty minutes, then the usual.
    let said = feed(&mut s, &[0; 30]);
    assert_eq!(said.matches('S').count(), 1, "{said:?}");
    let mut back = vec![3, 0, 3, 0, 3, 0, 3, 0, 3, 0, 3, 0, 3];
    assert_eq!(resolves_at(&back), None);
    back.extend([15, 0, 15, 0, 10, 10, 10, 10, 10]);
    assert_eq!(feed(&mut s, &back), expect(&back));
}

/// An hour is judged against the weeks before it, never against its own first minutes: a
/// slice without history is not silent, however busy its hour began.
#[test]
fn a_silence_needs_the_hour_of_weeks_before() {
    let mut s = Silence::new(SilenceParams::default());
    for m in 0..50 {
        assert_eq!(s.observe(START + m, 30), None);
    }
    for m in 50..600 {
        assert_eq!(s.observe(START + m, 0), None, "minute {m}");
    }
}

/// Bursty traffic: each hour normally has a pause of 10 minutes at 20 events a minute
/// otherwise (Poisson would call 10 silent minutes impossible). Such a pause pages no one;
/// a longer one fires the minute it is longer than any this hour has had.
#[test]
fn a_silence_is_longer_than_the_pauses_its_hour_has_seen() {
    let params = SilenceParams::default();
    let mut s = Silence::new(params);
    let bursty = |m: i64| if (20..30).contains(&(m % 60)) { 0 } else { 20 };
    for m in 0..3 * WEEK {
        assert_eq!(s.observe(START + m, bursty(m)), None, "minute {m}");
    }
    let from = START + 3 * WEEK;
    let mut fired = None;
    for m in 0..60 {
        let events = if (20..50).contains(&m) { 0 } else { 20 };
        if let Some(Incident::Started { .. }) = s.observe(from + m, events) {
            fired = Some(m);
        }
    }
    assert_eq!(fired, Some(30), "the 11th silent minute");
}

/// A new deployment: before its hour of the week has history, the same hour of the days
/// before stands in, once there are two days of it. Each hour has a pause of 10 minutes (20
/// events a minute otherwise). On the second day a whole hour's silence raises nothing (one
/// day of history); on the third, a pause as long as the usual ones raises nothing, and a
/// longer one fires the minute it is longer than any this hour had in the days before.
#[test]
fn a_silence_in_the_first_weeks_is_judged_against_the_days_before() {
    const DAY: i64 = 24 * 60;
    let bursty = |m: i64| if (20..30).contains(&(m % 60)) { 0 } else { 20 };
    let mut s = Silence::new(SilenceParams::default());
    for m in 0..DAY + 840 {
        assert_eq!(s.observe(START + m, bursty(m)), None, "minute {m}");
    }
    for m in DAY + 840..DAY + 900 {
        assert_eq!(s.observe(START + m, 0), None, "day 2, minute {m}");
    }
    for m in DAY + 900..2 * DAY + 600 {
        assert_eq!(s.observe(START + m, bursty(m)), None, "minute {m}");
    }
    let mut fired = None;
    for m in 0..60 {
        let events = if (20..50).contains(&m) { 0 } else { 20 };
        match s.observe(START + 2 * DAY + 600 + m, events) {
            Some(Incident::Started { .. }) => fired = Some(m),
            Some(Incident::Resolved { .. }) => assert_eq!(m, 54, "five minutes back"),
            _ => {}
        }
    }
    assert_eq!(fired, Some(30), "the 11th silent minute");
}

/// A rate of almost nothing (a lens in which hardly any attempt converts yet) is not
/// tested: its smoothed baseline would drift the evidence up minute by minute.
#[test]
fn a_rate_of_almost_nothing_does_not_page() {
    let mut d = DropDetector::new(DropParams::default());
    for m in 0..3 * WEEK {
        let x = u64::from(m % 5000 == 0);
        assert_eq!(d.observe(START + m, x, 60), None, "minute {m}");
    }
}

/// The stages of a cohort carry exactly the evidence of its whole outcome (the chain rule):
/// fed stage by stage, a staged test's evidence equals that of a one-stage test fed only
/// the final counts; and the first stage alone already says much of it.
#[test]
fn the_stages_of_a_cohort_carry_the_evidence_of_its_outcome() {
    for by in [
        [30u64, 50, 60, 65, 70],
        [5, 10, 40, 41, 42],
        [60, 80, 90, 95, 99],
    ] {
        // Never firing, so that the evidence is not capped.
        let params = DropParams {
            threshold: f64::MAX,
            ..DropParams::default()
        };
        let mut staged = DropDetector::staged(params, 5);
        let mut whole = DropDetector::new(params);
        let stage = |d: &mut DropDetector, m: i64, counts: &[u64; 5]| {
            for k in 0..5 {
                let before = if k == 0 { 0 } else { counts[k - 1] };
                assert_eq!(d.observe_stage(m, k, 100, before, counts[k]), None);
            }
        };
        for m in 0..2 * WEEK {
            stage(&mut staged, START + m, &by);
            assert_eq!(whole.observe(START + m, by[4], 100), None);
        }
        // A broken minute: nobody converts. Its first stage alone builds evidence.
        let from = START + 2 * WEEK;
        staged.observe_stage(from, 0, 100, 0, 0);
        let first = staged.evidence();
        for k in 1..5 {
            staged.observe_stage(from, k, 100, 0, 0);
        }
        whole.observe(from, 0, 100);
        let (s, w) = (staged.evidence(), whole.evidence());
        assert!(
            s > 0.0 && (s - w).abs() < 1e-6 * w,
            "{by:?}: staged {s}, whole {w}"
        );
        assert!(
            first > 0.0 && first < s,
            "{by:?}: first stage {first} of {s}"
        );
    }
}
