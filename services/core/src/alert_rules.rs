//! A journey map's `alerts:` section: the detectors' parameters for that journey, each
//! optional, defaulting to [`WatchParams::default`]'s (README § Alerts).

use serde::Deserialize;

use crate::watch::WatchParams;

/// The section as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAlerts {
    #[serde(default)]
    step_drop: RawStepDrop,
    #[serde(default)]
    score_drop: RawScoreDrop,
    #[serde(default)]
    silence: RawSilence,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStepDrop {
    /// The relative drop the test is tuned to (0.3: conversion at 70 % of its baseline).
    drop: Option<f64>,
    /// Evidence (a log-likelihood ratio) at which an incident starts.
    threshold: Option<f64>,
    /// Evidence of recovery at which it resolves.
    resolve: Option<f64>,
    /// Attempts of this hour's history a slice needs before it is tested.
    min_attempts: Option<f64>,
    /// Conversions of this hour's history a lens needs before it is tested.
    min_conversions: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScoreDrop {
    window_minutes: Option<usize>,
    /// Standard errors below the baseline (one-sided).
    z: Option<f64>,
    /// Points below the baseline at least.
    min_points: Option<f64>,
    /// Answers each side needs.
    min_answers: Option<i64>,
    resolve_after_minutes: Option<u32>,
    /// Hours the baseline must span before anything is judged.
    min_baseline_hours: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSilence {
    /// −ln of the chance below which a silent run is not chance.
    threshold: Option<f64>,
    /// Touchpoints a minute, in this hour of the weeks before, a channel needs to be watched.
    min_touchpoints_per_minute: Option<f64>,
    /// Minutes of traffic back that resolve a silence.
    resolve_after_minutes: Option<usize>,
}

/// The parameters the section sets, over the defaults; the error names the key to fix.
pub(crate) fn params(raw: &RawAlerts) -> Result<WatchParams, String> {
    let mut p = WatchParams::default();
    let (s, d) = (&raw.step_drop, &mut p.drop);
    set(&mut d.relative_drop, s.drop, "step_drop.drop", |v| {
        v > 0.0 && v < 1.0
    })?;
    set(
        &mut d.threshold,
        s.threshold,
        "step_drop.threshold",
        positive,
    )?;
    set(
        &mut d.resolve_evidence,
        s.resolve,
        "step_drop.resolve",
        positive,
    )?;
    set(
        &mut d.min_baseline_trials,
        s.min_attempts,
        "step_drop.min_attempts",
        not_negative,
    )?;
    set(
        &mut d.min_baseline_successes,
        s.min_conversions,
        "step_drop.min_conversions",
        not_negative,
    )?;
    let (s, w) = (&raw.score_drop, &mut p.score);
    set(
        &mut w.window_minutes,
        s.window_minutes,
        "score_drop.window_minutes",
        |v| (1..=24 * 60).contains(&v),
    )?;
    set(&mut w.test.z, s.z, "score_drop.z", positive)?;
    set(
        &mut w.test.min_drop_points,
        s.min_points,
        "score_drop.min_points",
        not_negative,
    )?;
    set(
        &mut w.test.min_answers,
        s.min_answers,
        "score_drop.min_answers",
        |v| v >= 1,
    )?;
    set(
        &mut w.resolve_after_minutes,
        s.resolve_after_minutes,
        "score_drop.resolve_after_minutes",
        |v| v >= 1,
    )?;
    set(
        &mut w.min_baseline_hours,
        s.min_baseline_hours,
        "score_drop.min_baseline_hours",
        |v| v >= 1,
    )?;
    let (s, q) = (&raw.silence, &mut p.silence);
    set(&mut q.threshold, s.threshold, "silence.threshold", positive)?;
    set(
        &mut q.min_events_per_minute,
        s.min_touchpoints_per_minute,
        "silence.min_touchpoints_per_minute",
        positive,
    )?;
    set(
        &mut q.resolve_after_minutes,
        s.resolve_after_minutes,
        "silence.resolve_after_minutes",
        |v| (1..=24 * 60).contains(&v),
    )?;
    Ok(p)
}

fn positive(v: f64) -> bool {
    v.is_finite() && v > 0.0
}

fn not_negative(v: f64) -> bool {
    v.is_finite() && v >= 0.0
}

fn set<T: Copy + std::fmt::Display>(
    field: &mut T,
    value: Option<T>,
    key: &str,
    valid: impl Fn(T) -> bool,
) -> Result<(), String> {
    match value {
        Some(v) if !valid(v) => Err(format!(
            "alerts.{key}: {v} is out of range ({})",
            range_of(key)
        )),
        Some(v) => {
            *field = v;
            Ok(())
        }
        None => Ok(()),
    }
}

fn range_of(key: &str) -> &'static str {
    match key {
        "step_drop.drop" => "between 0 and 1, exclusive",
        "score_drop.window_minutes" | "silence.resolve_after_minutes" => "1 to 1440",
        "score_drop.min_answers"
        | "score_drop.resolve_after_minutes"
        | "score_drop.min_baseline_hours" => "at least 1",
        k if k.ends_with("min_attempts")
            || k.ends_with("min_conversions")
            || k.ends_with("min_points") =>
        {
            "0 or more"
        }
        _ => "above 0",
    }
}

#[cfg(test)]
mod tests {
    use crate::watch::WatchParams;
    use crate::JourneyMap;

    const MAP: &str = "journey: shop
stages:
  - name: browse
    budget: 7d
    target_conversion: 0.4
channels: [web]
segments: [new]
touchpoints:
  - name: cart
    stage: browse
    channels: [web]
";

    fn with(alerts: &str) -> Result<JourneyMap, crate::journey_map::MapError> {
        JourneyMap::from_yaml("shop.yaml", &format!("{MAP}{alerts}"))
    }

    #[test]
    fn a_map_sets_its_own_detectors_and_keeps_the_defaults_elsewhere() {
        assert_eq!(with("").unwrap().alerts, WatchParams::default());
        let map = with(
            "alerts:\n  step_drop:\n    drop: 0.5\n    threshold: 12\n  score_drop:\n    z: 3.5\n    min_answers: 300\n  silence:\n    min_touchpoints_per_minute: 20\n    resolve_after_minutes: 10\n",
        )
        .unwrap();
        let (d, s, q) = (map.alerts.drop, map.alerts.score, map.alerts.silence);
        assert_eq!((d.relative_drop, d.threshold), (0.5, 12.0));
        assert_eq!(
            d.resolve_evidence,
            WatchParams::default().drop.resolve_evidence
        );
        assert_eq!((s.test.z, s.test.min_answers), (3.5, 300));
        assert_eq!(
            (q.min_events_per_minute, q.resolve_after_minutes),
            (20.0, 10)
        );
    }

    #[test]
    fn a_bad_value_or_key_says_which_and_where() {
        let e = with("alerts:\n  step_drop:\n    drop: 1.5\n").unwrap_err();
        assert!(e.message.contains("alerts.step_drop.drop: 1.5"), "{e}");
        assert_eq!(e.line, Some(12), "the line of `alerts:`");
        let e = with("alerts:\n  score_drop:\n    window_minutes: 0\n").unwrap_err();
        assert!(e.message.contains("1 to 1440"), "{e}");
        let e = with("alerts:\n  silence:\n    resolve_after_minutes: 0\n").unwrap_err();
        assert!(
            e.message
                .contains("alerts.silence.resolve_after_minutes: 0 is out of range (1 to 1440)"),
            "{e}"
        );
        let e = with("alerts:\n  step_drop:\n    treshold: 12\n").unwrap_err();
        assert!(e.message.contains("treshold"), "{e}");
    }
}
