//! A drop in a proportion, by a Bernoulli CUSUM: each minute adds the log-likelihood ratio
//! of its counts under "the rate fell by `relative_drop`" against "the rate is the
//! baseline's", the sum never going below zero. Under the baseline the sum drifts down and
//! stays near zero; after a drop of that size it climbs by about n·KL(p1‖p0) a minute, so a
//! slice with many trials crosses the threshold within minutes and a small one slowly.
//! An incident resolves by the mirror test: once the minutes since are `resolve_evidence`
//! times (in log) likelier under the baseline than under the drop, the rate is back.

use std::collections::VecDeque;

use super::SeasonalRate;

/// Minutes under suspicion held back from the baseline at most; older ones are learned.
const SUSPECT_MINUTES: usize = 240;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DropParams {
    /// The relative drop the test is tuned to (0.3: the rate falls to 70 % of the
    /// baseline). Smaller drops are found later, larger ones sooner. Default 0.3.
    pub relative_drop: f64,
    /// The evidence (log-likelihood ratio) at which an incident starts. Under the baseline
    /// the sum crosses it about once in e^threshold minutes at most (Wald): 16 keeps 50
    /// slices × 14 days of minutes well clear of a false alert. Default 16.
    pub threshold: f64,
    /// Trials of history (decayed) this hour of the week needs before the slice is tested
    /// at all: a slice too small to estimate its rate does not page. Default 120 (about
    /// two a minute; the alert-quality benchmark found no false alert down to 5 a minute at
    /// the daily peak, while 500 left quiet nights unwatched).
    pub min_baseline_trials: f64,
    /// Successes (decayed) behind the baseline before the slice is tested: a rate of
    /// almost nothing cannot fall measurably, and its smoothed estimate would drift the
    /// evidence up (a lens in which almost no attempt converts yet). Default 30.
    pub min_baseline_successes: f64,
    /// The evidence of recovery (the log-likelihood ratio of the baseline's rate against
    /// the dropped one, summed from zero and never below it) at which an incident
    /// resolves. Default 8: back to normal, a slice of 100 trials a minute resolves within
    /// minutes, while a still-broken one hits it about once in e^8 minutes at most.
    /// (Waiting for the evidence of the drop to stay at zero instead took hours on small
    /// noisy slices: each minute a little below the baseline started the wait again.)
    pub resolve_evidence: f64,
    /// Weight of a week of history against the next one. Default 0.5.
    pub weekly_decay: f64,
    /// An incident this old ends and its rate becomes the baseline: a lasting change is
    /// the new normal, not an alert that never resolves. Default 7 days.
    pub max_incident_minutes: i64,
}

impl Default for DropParams {
    fn default() -> Self {
        DropParams {
            relative_drop: 0.3,
            threshold: 16.0,
            min_baseline_trials: 120.0,
            min_baseline_successes: 30.0,
            resolve_evidence: 8.0,
            weekly_decay: 0.5,
            max_incident_minutes: 7 * 24 * 60,
        }
    }
}

/// What a minute did to a slice's incident.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Incident {
    /// The evidence crossed the threshold at `minute`.
    Started {
        minute: i64,
        /// The rate over the minutes that built the evidence, and their trials.
        observed: f64,
        expected: f64,
        trials: f64,
        evidence: f64,
    },
    /// Still firing; figures over the incident so far.
    Ongoing {
        minute: i64,
        observed: f64,
        expected: f64,
        trials: f64,
        evidence: f64,
    },
    /// The evidence went back to zero and stayed there.
    Resolved { minute: i64 },
}

/// One slice's drop test: its baseline, its evidence, and whether it fires.
#[derive(Debug, Clone, PartialEq)]
pub struct DropDetector {
    params: DropParams,
    baseline: SeasonalRate,
    evidence: f64,
    /// Successes, trials and the expected successes since the evidence last left zero.
    run: (f64, f64, f64),
    firing: bool,
    /// The minute the current incident started.
    since: i64,
    /// Evidence of recovery while firing.
    recovery: f64,
    /// Minutes that built the current evidence, learned once it is back at zero without an
    /// incident (an incident's minutes are never learned): (minute, successes, trials).
    suspect: VecDeque<(i64, f64, f64)>,
}

impl DropDetector {
    pub fn new(params: DropParams) -> Self {
        DropDetector {
            baseline: SeasonalRate::new(params.weekly_decay),
            params,
            evidence: 0.0,
            run: (0.0, 0.0, 0.0),
            firing: false,
            since: 0,
            recovery: 0.0,
            suspect: VecDeque::new(),
        }
    }

    pub fn evidence(&self) -> f64 {
        self.evidence
    }

    pub fn firing(&self) -> bool {
        self.firing
    }

    /// The minute's final counts; minutes must come in order, each once.
    pub fn observe(&mut self, minute: i64, successes: u64, trials: u64) -> Option<Incident> {
        let (x, n) = (successes.min(trials) as f64, trials as f64);
        // While firing the baseline learns nothing and its weights decay, but its rate does
        // not: the test goes on against it until the incident resolves or ends.
        let min_trials = if self.firing {
            f64::MIN_POSITIVE
        } else {
            self.params.min_baseline_trials
        };
        let expected = self
            .baseline
            .expected(minute, min_trials)
            .filter(|_| self.firing || self.baseline.hour_weight(minute) >= min_trials)
            .filter(|(p, den)| self.firing || p * den >= self.params.min_baseline_successes)
            // Laplace's rule: a baseline without a single failure is not certainty.
            .map(|(p, den)| (p * den + 1.0) / (den + 2.0));
        let Some(p0) = expected.map(|p| p.clamp(1e-6, 1.0 - 1e-6)) else {
            self.learn(minute, x, n);
            return None;
        };
        if n > 0.0 {
            let p1 = p0 * (1.0 - self.params.relative_drop);
            let llr = x * (p1 / p0).ln() + (n - x) * ((1.0 - p1) / (1.0 - p0)).ln();
            self.evidence = (self.evidence + llr).max(0.0);
            if self.firing {
                self.recovery = (self.recovery - llr).max(0.0);
                // The evidence of the drop is reported, and capped: it says how sure the
                // incident is, not how long it lasted.
                self.evidence = self.evidence.min(self.params.threshold);
            }
        }
        self.learn(minute, x, n);
        if self.evidence > 0.0 {
            self.run = (self.run.0 + x, self.run.1 + n, self.run.2 + n * p0);
        } else if !self.firing {
            self.run = (0.0, 0.0, 0.0);
        }
        self.transition(minute)
    }

    /// The baseline learns normal minutes only: a minute that raised the evidence waits
    /// until the evidence is back at zero, and is dropped if an incident starts.
    fn learn(&mut self, minute: i64, x: f64, n: f64) {
        if self.firing {
            return;
        }
        self.suspect.push_back((minute, x, n));
        if self.evidence > 0.0 && self.suspect.len() <= SUSPECT_MINUTES {
            return;
        }
        let keep = if self.evidence > 0.0 {
            SUSPECT_MINUTES
        } else {
            0
        };
        while self.suspect.len() > keep {
            if let Some((m, x, n)) = self.suspect.pop_front() {
                self.baseline.observe(m, x, n);
            }
        }
    }

    fn transition(&mut self, minute: i64) -> Option<Incident> {
        let (x, n, e) = self.run;
        let observed = if n > 0.0 { x / n } else { 0.0 };
        let expected = if n > 0.0 { e / n } else { 0.0 };
        let evidence = self.evidence;
        if !self.firing {
            if evidence < self.params.threshold {
                return None;
            }
            self.firing = true;
            self.since = minute;
            self.recovery = 0.0;
            self.suspect.clear();
            return Some(Incident::Started {
                minute,
                observed,
                expected,
                trials: n,
                evidence,
            });
        }
        let lasting = minute - self.since >= self.params.max_incident_minutes;
        if lasting {
            // The change lasted: it is learned afresh as the normal, not measured against
            // weeks before it.
            self.baseline = SeasonalRate::new(self.params.weekly_decay);
        }
        if self.recovery >= self.params.resolve_evidence || lasting {
            self.evidence = 0.0;
            self.firing = false;
            self.run = (0.0, 0.0, 0.0);
            return Some(Incident::Resolved { minute });
        }
        Some(Incident::Ongoing {
            minute,
            observed,
            expected,
            trials: n,
            evidence,
        })
    }
}
