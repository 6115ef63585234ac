//! A drop in a proportion, by a Bernoulli CUSUM: each observation adds the log-likelihood
//! ratio of its counts under "the rate fell by `relative_drop`" against "the rate is the
//! baseline's", the sum never going below zero. Under the baseline the sum drifts down and
//! stays near zero; after a drop of that size it climbs by about n·KL(p1‖p0) a minute, so a
//! slice with many trials crosses the threshold within minutes and a small one slowly.
//! An incident resolves by the mirror test: once the observations since are
//! `resolve_evidence` times (in log) likelier under the baseline than under the drop, the
//! rate is back.
//!
//! **Stages.** A step's attempts started in a minute (a cohort) are known in stages: how
//! many converted within 1, 2, 5 and 10 minutes, then within the budget. At stage k the
//! attempts not converted by stage k−1 convert with probability
//! q_k = (P_k − P_{k−1}) / (1 − P_{k−1}) under the baseline (P_k: the share converted by
//! stage k, by hour of the week) and with every P scaled by (1 − drop) under the drop. The
//! ratios of a cohort's stages multiply to that of its whole outcome (the chain rule), so a
//! cohort gives the evidence of waiting for its budget — only sooner. One CUSUM sums every
//! cohort's stages in the order they become known.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

use super::SeasonalRate;

/// Minutes under suspicion (of each stage) held back from the baseline at most; older
/// ones are learned.
const SUSPECT_MINUTES: usize = 240;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
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
    /// The rate is back: the evidence of recovery reached `resolve_evidence` (or the
    /// incident lasted `max_incident_minutes`).
    Resolved { minute: i64 },
}

/// One slice's drop test: its baselines, its evidence, and whether it fires.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DropDetector {
    params: DropParams,
    /// Per stage: the share converted by its horizon, by hour of the week.
    baselines: Vec<SeasonalRate>,
    evidence: f64,
    /// Per stage, over the observations that built the evidence: converted by the stage,
    /// attempts, and the baseline's expectation of the first.
    run: Vec<(f64, f64, f64)>,
    firing: bool,
    /// The minute the current incident started.
    since: i64,
    /// Evidence of recovery while firing.
    recovery: f64,
    /// Observations that built the current evidence, learned once it is back at zero
    /// without an incident (an incident's are never learned): (cohort, stage, converted by
    /// the stage, attempts).
    suspect: VecDeque<(i64, usize, f64, f64)>,
}

impl DropDetector {
    /// One stage: each minute's final successes over trials.
    pub fn new(params: DropParams) -> Self {
        DropDetector::staged(params, 1)
    }

    /// Cohorts known in `stages` stages (at least one).
    pub fn staged(params: DropParams, stages: usize) -> Self {
        let stages = stages.max(1);
        DropDetector {
            baselines: vec![SeasonalRate::new(params.weekly_decay); stages],
            params,
            evidence: 0.0,
            run: vec![(0.0, 0.0, 0.0); stages],
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

    /// The stage the latest figures are of: the latest one seen over the evidence's run.
    pub fn figures_stage(&self) -> usize {
        self.run.iter().rposition(|r| r.1 > 0.0).unwrap_or(0)
    }

    /// The minute's final counts (one stage); minutes must come in order, each once.
    pub fn observe(&mut self, minute: i64, successes: u64, trials: u64) -> Option<Incident> {
        self.observe_stage(minute, 0, trials, 0, successes)
    }

    /// Stage `stage` of the cohort started in `cohort` (epoch minute): `n` attempts, of
    /// which `before` had converted by the previous stage and `by` by this one. Stages of
    /// all cohorts in the order they became known, each once.
    pub fn observe_stage(
        &mut self,
        cohort: i64,
        stage: usize,
        n: u64,
        before: u64,
        by: u64,
    ) -> Option<Incident> {
        let stage = stage.min(self.baselines.len() - 1);
        let n = n as f64;
        let by = (by as f64).min(n);
        let before = (before as f64).min(by);
        let Some((p_before, p_by)) = self.expected(cohort, stage) else {
            self.learn(cohort, stage, by, n);
            return None;
        };
        let trials = n - before;
        if trials > 0.0 {
            let d = self.params.relative_drop;
            let q0 = ((p_by - p_before) / (1.0 - p_before)).clamp(1e-6, 1.0 - 1e-6);
            let q1 = ((1.0 - d) * (p_by - p_before) / (1.0 - (1.0 - d) * p_before))
                .clamp(1e-6, 1.0 - 1e-6);
            let s = by - before;
            let llr = s * (q1 / q0).ln() + (trials - s) * ((1.0 - q1) / (1.0 - q0)).ln();
            self.evidence = (self.evidence + llr).max(0.0);
            if self.firing {
                self.recovery = (self.recovery - llr).max(0.0);
                // The evidence of the drop is reported, and capped: it says how sure the
                // incident is, not how long it lasted.
                self.evidence = self.evidence.min(self.params.threshold);
            }
        }
        self.learn(cohort, stage, by, n);
        if self.evidence > 0.0 {
            let r = &mut self.run[stage];
            *r = (r.0 + by, r.1 + n, r.2 + n * p_by);
        } else if !self.firing {
            self.run.iter_mut().for_each(|r| *r = (0.0, 0.0, 0.0));
        }
        self.transition(cohort)
    }

    /// The baseline's shares converted by the previous stage and by `stage` (smoothed),
    /// when the stage has the history to be tested. While firing the baselines learn
    /// nothing and their weights decay, but their rates do not: the test goes on against
    /// them until the incident resolves or ends.
    fn expected(&self, cohort: i64, stage: usize) -> Option<(f64, f64)> {
        let min_trials = if self.firing {
            f64::MIN_POSITIVE
        } else {
            self.params.min_baseline_trials
        };
        let share = |k: usize| -> Option<(f64, f64)> {
            let b = &self.baselines[k];
            b.expected(cohort, min_trials)
                .filter(|_| self.firing || b.hour_weight(cohort) >= min_trials)
                // Laplace's rule: a baseline without a single failure is not certainty.
                .map(|(p, den)| ((p * den + 1.0) / (den + 2.0), den))
        };
        let (p_by, den) = share(stage)?;
        let p_before = match stage {
            0 => 0.0,
            k => share(k - 1)?.0.min(p_by),
        };
        // A stage in which almost nothing converts cannot fall measurably, and its
        // smoothed rate would drift the evidence up.
        let converting = (p_by - p_before) * den;
        (self.firing || converting >= self.params.min_baseline_successes)
            .then_some((p_before.min(1.0 - 1e-6), p_by.clamp(1e-6, 1.0 - 1e-6)))
    }

    /// The baselines learn normal observations only: one that raised the evidence waits
    /// until the evidence is back at zero, and is dropped if an incident starts.
    fn learn(&mut self, cohort: i64, stage: usize, by: f64, n: f64) {
        if self.firing {
            return;
        }
        self.suspect.push_back((cohort, stage, by, n));
        let held = SUSPECT_MINUTES * self.baselines.len();
        if self.evidence > 0.0 && self.suspect.len() <= held {
            return;
        }
        let keep = if self.evidence > 0.0 { held } else { 0 };
        while self.suspect.len() > keep {
            if let Some((m, k, x, n)) = self.suspect.pop_front() {
                self.baselines[k].observe(m, x, n);
            }
        }
    }

    fn transition(&mut self, minute: i64) -> Option<Incident> {
        let (x, n, e) = self.run[self.figures_stage()];
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
            for b in &mut self.baselines {
                *b = SeasonalRate::new(self.params.weekly_decay);
            }
        }
        if self.recovery >= self.params.resolve_evidence || lasting {
            self.evidence = 0.0;
            self.firing = false;
            self.run.iter_mut().for_each(|r| *r = (0.0, 0.0, 0.0));
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
