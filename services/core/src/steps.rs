//! Step attempts: the map's short, budgeted hops between touchpoints (README § Steps),
//! derived from one customer's touchpoints in event-time order, per step:
//! - a `from` touchpoint **starts** an attempt unless one is running (started, not converted,
//!   deadline not passed): a repeated `from` within the budget is a retry, not a new attempt;
//! - the first `to` touchpoint after the start, by the deadline (start + budget),
//!   **converts** it; otherwise it awaits its deadline: dropped off once the watermark has
//!   passed it, open until then (as for stage entries).

use serde::{Deserialize, Serialize};

use crate::journey::{Context, Origin, Outcome, TouchpointEntry, TouchpointView};
use crate::journey_map::{JourneyMap, StepIdx, TouchpointIdx};

/// What a touchpoint is to a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    From,
    To,
}

/// The steps of a map, looked up by touchpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepRules {
    budgets: Vec<i64>,
    /// Per touchpoint: (step, role) for every step it starts or converts.
    roles: Vec<Vec<(StepIdx, Role)>>,
}

impl StepRules {
    pub fn of(map: &JourneyMap) -> Self {
        let mut roles = vec![Vec::new(); map.touchpoints.len()];
        for (i, s) in map.steps.iter().enumerate() {
            let step = StepIdx::try_from(i).unwrap_or(StepIdx::MAX);
            for (side, role) in [(&s.from, Role::From), (&s.to, Role::To)] {
                for t in side {
                    if let Some(r) = roles.get_mut(usize::from(*t)) {
                        r.push((step, role));
                    }
                }
            }
        }
        StepRules {
            budgets: map.steps.iter().map(|s| s.budget_ms).collect(),
            roles,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.budgets.is_empty()
    }

    /// Whether the touchpoint starts or converts any step.
    pub fn concerns(&self, touchpoint: TouchpointIdx) -> bool {
        self.roles
            .get(usize::from(touchpoint))
            .is_some_and(|r| !r.is_empty())
    }

    fn roles(&self, touchpoint: TouchpointIdx) -> &[(StepIdx, Role)] {
        self.roles
            .get(usize::from(touchpoint))
            .map_or(&[], Vec::as_slice)
    }

    fn deadline(&self, step: StepIdx, time: i64) -> i64 {
        let budget = self.budgets.get(usize::from(step)).copied().unwrap_or(0);
        time.saturating_add(budget)
    }
}

/// Where an attempt started: a kept touchpoint, or one folded into the floor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    Kept(usize),
    Folded(usize),
}

/// A step attempt as derived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepView {
    pub step: StepIdx,
    pub start: Start,
    /// The start touchpoint's id and time, and its context.
    pub id: u64,
    pub time: i64,
    pub context: Context,
    pub deadline: i64,
    pub outcome: Outcome,
}

impl StepView {
    /// Attempts are the same attempt when they start at the same touchpoint.
    pub fn key(&self) -> (u64, StepIdx) {
        (self.id, self.step)
    }

    /// Whether a later event can no longer change it once everything before `cut` is
    /// folded: it converted before the cut, or its deadline is before the cut.
    fn is_final(&self, cut: i64) -> bool {
        self.deadline < cut
            || matches!(self.outcome, Outcome::Converted { after_ms, .. } if self.time + after_ms < cut)
    }
}

/// An attempt kept in the floor while a later event can still change its outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FoldedStep {
    pub step: StepIdx,
    pub origin: Origin,
    pub context: Context,
    pub deadline: i64,
}

/// Every attempt, in start order: those kept in the floor, then those the kept touchpoints
/// start (`views` index-aligned with `touchpoints`).
pub fn derive(
    rules: &StepRules,
    folded: &[FoldedStep],
    touchpoints: &[TouchpointEntry],
    views: &[TouchpointView],
) -> Vec<StepView> {
    if rules.is_empty() {
        return Vec::new();
    }
    let mut out: Vec<StepView> = Vec::new();
    // Per step, the running attempt (index into `out`).
    let mut running: Vec<Option<usize>> = vec![None; rules.budgets.len()];
    for (k, f) in folded.iter().enumerate() {
        out.push(StepView {
            step: f.step,
            start: Start::Folded(k),
            id: f.origin.id,
            time: f.origin.time,
            context: f.context,
            deadline: f.deadline,
            outcome: Outcome::Awaiting {
                deadline: f.deadline,
            },
        });
        if let Some(r) = running.get_mut(usize::from(f.step)) {
            *r = Some(out.len() - 1);
        }
    }
    for (i, (t, v)) in touchpoints.iter().zip(views).enumerate() {
        for &(step, role) in rules.roles(t.touchpoint) {
            let Some(slot) = running.get_mut(usize::from(step)) else {
                continue;
            };
            if slot.is_some_and(|r| t.time > out[r].deadline) {
                *slot = None;
            }
            match (role, *slot) {
                (Role::To, Some(r)) => {
                    let a = &mut out[r];
                    a.outcome = Outcome::Converted {
                        after_ms: t.time - a.time,
                        channel: t.channel,
                    };
                    *slot = None;
                }
                (Role::From, None) => {
                    let deadline = rules.deadline(step, t.time);
                    out.push(StepView {
                        step,
                        start: Start::Kept(i),
                        id: t.id,
                        time: t.time,
                        context: v.context,
                        deadline,
                        outcome: Outcome::Awaiting { deadline },
                    });
                    *slot = Some(out.len() - 1);
                }
                _ => {}
            }
        }
    }
    out
}

/// The attempts to keep in the floor when the touchpoints before `keep_from` (all dated
/// before `cut`) are folded: those started there whose outcome can still change.
pub fn fold(
    attempts: &[StepView],
    folded: &[FoldedStep],
    touchpoints: &[TouchpointEntry],
    keep_from: usize,
    cut: i64,
) -> Vec<FoldedStep> {
    attempts
        .iter()
        .filter(|a| !a.is_final(cut))
        .filter_map(|a| {
            let origin = match a.start {
                Start::Folded(k) => folded.get(k)?.origin.clone(),
                Start::Kept(i) if i < keep_from => Origin::folded(touchpoints.get(i)?),
                Start::Kept(_) => return None,
            };
            Some(FoldedStep {
                step: a.step,
                origin,
                context: a.context,
                deadline: a.deadline,
            })
        })
        .collect()
}
