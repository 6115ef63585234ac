//! A slice's NPS over a trailing window of minutes against the week before it, minute by
//! minute: an incident starts when [`score_drop`] finds the window significantly below the
//! baseline, and resolves once it has not for `resolve_after_minutes`. While firing, the
//! minutes leaving the window are not learned, so the incident is judged against the
//! week before it.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

use super::{score_drop, Incident, ScoreParams};

/// Hours of history in the baseline.
const BASELINE_HOURS: usize = 7 * 24;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScoreWatchParams {
    pub test: ScoreParams,
    /// Minutes in the window judged. Default 120: at 300 answers an hour a 15-point drop is
    /// about five standard errors once the window is all incident.
    pub window_minutes: usize,
    /// Minutes without a significant drop before an incident resolves. Default 30.
    pub resolve_after_minutes: u32,
    /// An incident this old ends and the baseline starts afresh. Default 7 days.
    pub max_incident_minutes: i64,
    /// Hours the baseline must span before the window is judged against it. Default 24: a
    /// few hours are not "the week before" (seen: the first hours of a journey's traffic,
    /// all of it new customers, made a later hour's CES look like a drop).
    pub min_baseline_hours: i64,
}

impl Default for ScoreWatchParams {
    fn default() -> Self {
        ScoreWatchParams {
            test: ScoreParams::default(),
            window_minutes: 120,
            resolve_after_minutes: 30,
            max_incident_minutes: 7 * 24 * 60,
            min_baseline_hours: 24,
        }
    }
}

type Three = (i64, i64, i64);

fn plus(a: Three, b: Three) -> Three {
    (a.0 + b.0, a.1 + b.1, a.2 + b.2)
}

fn minus(a: Three, b: Three) -> Three {
    (a.0 - b.0, a.1 - b.1, a.2 - b.2)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreWatch {
    params: ScoreWatchParams,
    /// The window's minutes (promoters, passives, detractors) and their sum.
    window: VecDeque<Three>,
    window_sum: Three,
    /// Hourly sums of the minutes that left the window, newest last: (hour, counts).
    hours: VecDeque<(i64, Three)>,
    baseline_sum: Three,
    firing: Option<i64>,
    quiet: u32,
}

impl ScoreWatch {
    pub fn new(params: ScoreWatchParams) -> Self {
        ScoreWatch {
            params,
            window: VecDeque::new(),
            window_sum: (0, 0, 0),
            hours: VecDeque::new(),
            baseline_sum: (0, 0, 0),
            firing: None,
            quiet: 0,
        }
    }

    /// The minute's final counts (epoch minute); minutes must come in order, each once.
    pub fn observe(&mut self, minute: i64, counts: Three) -> Option<Incident> {
        self.window.push_back(counts);
        self.window_sum = plus(self.window_sum, counts);
        if self.window.len() > self.params.window_minutes.max(1) {
            if let Some(old) = self.window.pop_front() {
                self.window_sum = minus(self.window_sum, old);
                let left = minute - self.window.len() as i64;
                if self.firing.is_none() {
                    self.learn(left, old);
                }
            }
        }
        self.forget(minute);
        let span = match (self.hours.front(), self.hours.back()) {
            (Some(first), Some(last)) => last.0 - first.0 + 1,
            _ => 0,
        };
        let drop = (span >= self.params.min_baseline_hours || self.firing.is_some())
            .then(|| score_drop(self.window_sum, self.baseline_sum, &self.params.test))
            .flatten();
        let n = (self.window_sum.0 + self.window_sum.1 + self.window_sum.2) as f64;
        let Some(since) = self.firing else {
            let d = drop?;
            self.firing = Some(minute);
            self.quiet = 0;
            return Some(Incident::Started {
                minute,
                observed: d.observed,
                expected: d.baseline,
                trials: n,
                evidence: -d.z,
            });
        };
        // Too few answers in the window to tell is not a recovery (seen: a long shift
        // resolved at night, when its touchpoint was answered too seldom, and fired again in
        // the morning as a second incident).
        let judged = n >= self.params.test.min_answers as f64;
        self.quiet = match (drop.is_some(), judged) {
            (true, _) => 0,
            (false, true) => self.quiet + 1,
            (false, false) => self.quiet,
        };
        if minute - since >= self.params.max_incident_minutes {
            // A lasting change: the window is the new normal.
            self.hours.clear();
            self.baseline_sum = (0, 0, 0);
            self.firing = None;
            return Some(Incident::Resolved { minute });
        }
        if self.quiet >= self.params.resolve_after_minutes {
            self.firing = None;
            return Some(Incident::Resolved { minute });
        }
        let baseline = drop.map_or_else(|| nps(self.baseline_sum), |d| d.baseline);
        Some(Incident::Ongoing {
            minute,
            observed: drop.map_or_else(|| nps(self.window_sum), |d| d.observed),
            expected: baseline,
            trials: n,
            evidence: drop.map_or(0.0, |d| -d.z),
        })
    }

    fn learn(&mut self, minute: i64, counts: Three) {
        let hour = minute.div_euclid(60);
        match self.hours.back_mut() {
            Some((h, sum)) if *h == hour => *sum = plus(*sum, counts),
            _ => self.hours.push_back((hour, counts)),
        }
        self.baseline_sum = plus(self.baseline_sum, counts);
    }

    fn forget(&mut self, minute: i64) {
        let oldest = minute.div_euclid(60) - BASELINE_HOURS as i64;
        while let Some(&(h, sum)) = self.hours.front() {
            if h >= oldest {
                break;
            }
            self.baseline_sum = minus(self.baseline_sum, sum);
            self.hours.pop_front();
        }
    }
}

fn nps(c: Three) -> f64 {
    crate::metrics::Nps::from_counts(c.0, c.1, c.2).map_or(0.0, |n| n.score)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lasting_drop_fires_once_and_resolves_when_the_score_recovers() {
        let mut w = ScoreWatch::new(ScoreWatchParams::default());
        // Two days at NPS 20 with 5 answers a minute, then NPS 0 for two hours.
        let normal = (2, 2, 1);
        let mut events = Vec::new();
        for m in 0..2880 {
            assert_eq!(w.observe(m, normal), None, "minute {m}");
        }
        for m in 2880..3000 {
            events.extend(w.observe(m, (1, 3, 1)).map(|i| (m, i)));
        }
        let started: Vec<_> = events
            .iter()
            .filter(|(_, i)| matches!(i, Incident::Started { .. }))
            .collect();
        assert_eq!(started.len(), 1, "{events:?}");
        for m in 3000..3240 {
            if let Some(Incident::Resolved { .. }) = w.observe(m, normal) {
                return;
            }
        }
        panic!("never resolved");
    }

    #[test]
    fn a_window_too_thin_to_judge_does_not_resolve() {
        let mut w = ScoreWatch::new(ScoreWatchParams::default());
        for m in 0..2880 {
            assert_eq!(w.observe(m, (2, 2, 1)), None);
        }
        let mut started = false;
        for m in 2880..3000 {
            started |= matches!(w.observe(m, (1, 3, 1)), Some(Incident::Started { .. }));
        }
        assert!(started);
        // Still NPS 0, but one answer in three minutes: never 100 in the window.
        for m in 3000..3600 {
            let c = if m % 3 == 0 { (0, 1, 0) } else { (0, 0, 0) };
            assert!(
                !matches!(w.observe(m, c), Some(Incident::Resolved { .. })),
                "resolved at {m} without the answers to tell"
            );
        }
        // Back to normal, and answered: it resolves.
        for m in 3600..3900 {
            if let Some(Incident::Resolved { .. }) = w.observe(m, (2, 2, 1)) {
                return;
            }
        }
        panic!("never resolved");
    }

    #[test]
    fn a_baseline_of_a_few_hours_judges_nothing() {
        let mut w = ScoreWatch::new(ScoreWatchParams::default());
        for m in 0..600 {
            assert_eq!(w.observe(m, (2, 2, 1)), None);
        }
        for m in 600..1200 {
            assert_eq!(w.observe(m, (0, 1, 4)), None, "minute {m}");
        }
    }
}
