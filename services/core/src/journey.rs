//! One customer's journey through one journey map: the customer's touchpoints and answers
//! within the allowed lateness, from which every count is *derived*, so that the result is
//! a function of the events and never of the order in which they arrived.
//!
//! The rules (README § What it does), for one customer, with touchpoints ordered by
//! (event time, event-id hash):
//! - a touchpoint's **stage** is the furthest stage of the touchpoints up to and including it
//!   (its own stage is the explicit `stage` or the map's); it is a **stage entry** when its
//!   own stage is beyond every earlier one's;
//! - its **segment** is that of the latest touchpoint up to it that names one;
//! - an event id counts once; a response re-sent unchanged counts once;
//! - an answer is **attributed** to the touchpoint it names when the customer has it, else to
//!   the latest touchpoint at or before the answer time, else to nothing;
//! - per **slot** — (named touchpoint, metric) for answers that name one, (response id,
//!   metric) for those that do not — only the latest answer counts (ties: the higher
//!   response-id hash, then the higher score), so a respondent who answers again replaces
//!   their earlier answer.
//!
//! - a stage entry into any stage but the last has an **outcome**: *converted* when the
//!   customer's next stage entry comes within the stage's budget (time-to-convert = the gap,
//!   on the next entry's channel), else *awaiting* its deadline (entry time + budget), which
//!   the processor reports as *dropped off* once the watermark has passed the deadline and
//!   as *open* until then.
//!
//! Events older than the horizon (watermark − allowed lateness) can no longer arrive
//! (the processor refuses them as late), so the journey folds them into a [`Floor`] whose
//! effect on later events is final. An answer dated before the horizon stays while the
//! touchpoint it names does, since that touchpoint's context can still change; the last
//! stage entry stays (as [`Floor::pending`]) while a later event can still decide or change
//! its outcome.

use serde::{Deserialize, Serialize};

use crate::journey_map::{
    ChannelIdx, JourneyMap, SegmentIdx, StageIdx, TouchpointIdx, NO_SEGMENT, NO_SEGMENT_NAME,
    NO_STAGE,
};
use crate::metrics::Metric;
use crate::packed::{PackedAnswer, PackedTouchpoint};
use crate::steps::{self, FoldedStep, Start, StepRules, StepView};

/// Each stage's time budget to reach a later stage (index = stage; the last stage has no
/// later stage, so its entries have no outcome), and the map's steps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Budgets {
    stages: Vec<i64>,
    pub steps: StepRules,
}

impl Budgets {
    pub fn of(map: &JourneyMap) -> Self {
        Budgets {
            stages: map.stages.iter().map(|s| s.budget_ms).collect(),
            steps: StepRules::of(map),
        }
    }

    /// The rules before journeys ended: budgets without end, no steps.
    pub fn endless(&self) -> Self {
        Budgets::new(vec![i64::MAX; self.stages.len()])
    }

    /// Budgets by stage, the last one unused; no steps.
    pub fn new(by_stage: Vec<i64>) -> Self {
        Budgets {
            stages: by_stage,
            steps: StepRules::default(),
        }
    }

    /// How long a journey whose last entry is into `stage` at `time` lasts: until that
    /// entry's deadline (for the last stage, its budget is how long a completed journey
    /// lasts before the customer may start a new one).
    pub fn open_until(&self, stage: StageIdx, time: i64) -> i64 {
        let budget = self
            .stages
            .get(usize::from(stage))
            .copied()
            .unwrap_or(i64::MAX);
        time.saturating_add(budget)
    }

    /// When an entry into `stage` at `time` drops off unless a later stage is entered.
    pub fn deadline(&self, stage: StageIdx, time: i64) -> Option<i64> {
        let s = usize::from(stage);
        (s + 1 < self.stages.len()).then(|| time.saturating_add(self.stages[s]))
    }
}

/// What a stage entry's journey says of its outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Outcome {
    /// The next stage entry came `after_ms` later (within the budget), on `channel`.
    Converted { after_ms: i64, channel: ChannelIdx },
    /// No later stage within the budget so far: dropped off once the watermark passes
    /// `deadline`, open until then.
    Awaiting { deadline: i64 },
}

impl Outcome {
    /// The outcome as reported at `watermark`.
    pub fn at(self, watermark: Option<i64>) -> StageOutcome {
        match self {
            Outcome::Converted { after_ms, channel } => {
                StageOutcome::Converted { after_ms, channel }
            }
            Outcome::Awaiting { deadline } if watermark.is_some_and(|w| w > deadline) => {
                StageOutcome::Dropped { deadline }
            }
            Outcome::Awaiting { deadline } => StageOutcome::Open { deadline },
        }
    }
}

/// A stage entry's outcome as reported (README § Stage conversion).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StageOutcome {
    /// Its deadline has not passed and no later stage was entered yet.
    Open {
        deadline: i64,
    },
    Converted {
        after_ms: i64,
        channel: ChannelIdx,
    },
    /// The watermark passed its deadline with no later stage entered within the budget.
    Dropped {
        deadline: i64,
    },
}

/// The journey context an answer or touchpoint is counted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Context {
    pub stage: StageIdx,
    pub touchpoint: TouchpointIdx,
    pub channel: ChannelIdx,
    pub segment: SegmentIdx,
}

/// Per-minute keys hold a context as (stage, touchpoint, channel, segment).
impl From<(StageIdx, TouchpointIdx, ChannelIdx, SegmentIdx)> for Context {
    fn from(
        (stage, touchpoint, channel, segment): (StageIdx, TouchpointIdx, ChannelIdx, SegmentIdx),
    ) -> Self {
        Context {
            stage,
            touchpoint,
            channel,
            segment,
        }
    }
}

impl Context {
    /// The names a context is reported under in every output; without one (an answer with
    /// no touchpoint before it) stage, touchpoint and channel are `none` and the segment
    /// `unknown`.
    pub fn names(c: Option<Context>, map: &JourneyMap) -> ContextNames<'_> {
        match c {
            Some(c) => ContextNames {
                stage: map.stage_name(c.stage),
                touchpoint: map.touchpoint_name(c.touchpoint),
                channel: map.channel_name(c.channel),
                segment: map.segment_name(c.segment),
            },
            None => ContextNames {
                stage: "none",
                touchpoint: "none",
                channel: "none",
                segment: NO_SEGMENT_NAME,
            },
        }
    }
}

/// A context's dimensions by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContextNames<'a> {
    pub stage: &'a str,
    pub touchpoint: &'a str,
    pub channel: &'a str,
    pub segment: &'a str,
}

/// How an answer found its context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Attribution {
    /// The touchpoint the answer names.
    Named,
    /// The customer's latest touchpoint at or before the answer time.
    Latest,
    /// The customer had no touchpoint before the answer.
    None,
}

impl Attribution {
    pub fn as_str(self) -> &'static str {
        match self {
            Attribution::Named => "named",
            Attribution::Latest => "latest",
            Attribution::None => "none",
        }
    }
}

/// A touchpoint as the journey keeps it: what the rules need, and the rest of the event
/// packed, so that a corrected fact can be written again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TouchpointEntry {
    pub id: u64,
    pub time: i64,
    pub touchpoint: TouchpointIdx,
    pub channel: ChannelIdx,
    /// Its own stage (explicit, or the map's for the touchpoint).
    pub stage: StageIdx,
    pub segment: Option<SegmentIdx>,
    pub event: PackedTouchpoint,
    pub source_offset: i64,
}

impl TouchpointEntry {
    fn order(&self) -> (i64, u64) {
        (self.time, self.id)
    }
}

/// An answer as the journey keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnswerEntry {
    pub response: u64,
    /// Hash of the event id of the touchpoint it names.
    pub named: Option<u64>,
    pub time: i64,
    pub metric: Metric,
    pub score: i8,
    /// The context of its named touchpoint, fixed when that touchpoint left the horizon.
    pub fixed: Option<Context>,
    pub answer: PackedAnswer,
    pub source_offset: i64,
}

impl AnswerEntry {
    /// Answers in the same slot replace each other. It is also the facts table's key
    /// (customer, rated touchpoint or response id, metric).
    pub fn slot(&self) -> (u64, Metric) {
        (self.named.unwrap_or(self.response), self.metric)
    }

    /// Within a slot, the greatest counts: a total order, so that arrival order never
    /// decides.
    fn rank(&self) -> (i64, u64, i8) {
        (self.time, self.response, self.score)
    }
}

/// Where a customer is in their current journey: a journey lasts while its last stage
/// entry is within its stage's budget; the first touchpoint after that starts a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// The furthest stage of the current journey (`None` before the first touchpoint).
    pub furthest: Option<StageIdx>,
    /// The current journey's end: its last entry's time + that stage's budget.
    pub open_until: i64,
    /// Journeys this customer started before the current one.
    pub seq: u32,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            furthest: None,
            open_until: i64::MAX,
            seq: 0,
        }
    }
}

impl Progress {
    /// Whether a touchpoint of `stage` at `time`, coming after this, would enter a stage of
    /// the current journey and so decide the outcome of the entry before it.
    pub fn would_decide(&self, stage: StageIdx, time: i64) -> bool {
        stage != NO_STAGE && self.furthest.is_some_and(|f| stage > f) && time <= self.open_until
    }

    /// Advances over a touchpoint of its own `stage` at `time`; returns whether it enters
    /// a stage, and the stage it counts under (the furthest of the journey so far).
    /// An off-map touchpoint (`NO_STAGE`) changes nothing and counts under the journey's
    /// furthest stage, or no stage outside any journey.
    fn advance(&mut self, budgets: &Budgets, stage: StageIdx, time: i64) -> (bool, StageIdx) {
        if stage == NO_STAGE {
            let over = self.furthest.is_some() && time > self.open_until;
            let at = self.furthest.filter(|_| !over).unwrap_or(NO_STAGE);
            return (false, at);
        }
        if self.furthest.is_some() && time > self.open_until {
            self.furthest = None;
            self.seq += 1;
        }
        let entered = self.furthest.is_none_or(|f| stage > f);
        let at = self.furthest.map_or(stage, |f| f.max(stage));
        self.furthest = Some(at);
        if entered {
            self.open_until = budgets.open_until(stage, time);
        }
        (entered, at)
    }
}

/// What the touchpoints that left the horizon leave behind.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Floor {
    /// The journey as of the last of them.
    pub progress: Progress,
    pub segment: Option<SegmentIdx>,
    /// The last of them: (order, its context), for answers after it.
    pub last: Option<((i64, u64), Context)>,
    /// The last stage entry among them while its deadline is not before the horizon: a
    /// later event may still convert it (or change when it converted).
    /// Boxed: most journeys, while they have events, have none.
    pub pending: Option<Box<FoldedEntry>>,
    /// Step attempts started among them whose outcome a later event may still change.
    pub pending_steps: Vec<FoldedStep>,
}

/// What a stage entry's or step attempt's fact needs of the touchpoint it started at, kept
/// once the touchpoint itself has left the horizon (a few dozen bytes, not the event).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub id: u64,
    pub event_id: EventId,
    pub time: i64,
    pub source_offset: i64,
}

impl Origin {
    /// For a fact: shares the kept event, copying nothing.
    pub fn of(t: &TouchpointEntry) -> Self {
        Origin {
            id: t.id,
            event_id: EventId::Shared(t.event.clone()),
            time: t.time,
            source_offset: t.source_offset,
        }
    }

    /// For the floor: keeps the id alone, so that the event can go.
    pub fn folded(t: &TouchpointEntry) -> Self {
        Origin {
            event_id: EventId::Owned(t.event.event_id().into()),
            ..Origin::of(t)
        }
    }
}

/// An event id: shared with its event while the touchpoint is kept, owned once folded.
/// Stored as the id string.
#[derive(Debug, Clone)]
pub enum EventId {
    Shared(PackedTouchpoint),
    Owned(Box<str>),
}

impl EventId {
    pub fn as_str(&self) -> &str {
        match self {
            EventId::Shared(e) => e.event_id(),
            EventId::Owned(s) => s,
        }
    }
}

impl PartialEq for EventId {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for EventId {}

impl Serialize for EventId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for EventId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|s| EventId::Owned(s.into()))
    }
}

/// A stage entry kept in the floor, with what its outcome needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FoldedEntry {
    pub origin: Origin,
    pub context: Context,
    pub deadline: i64,
    pub journey_seq: u32,
}

impl FoldedEntry {
    fn view(&self) -> TouchpointView {
        TouchpointView {
            context: self.context,
            entered: true,
            journey_seq: self.journey_seq,
            outcome: Some(Outcome::Awaiting {
                deadline: self.deadline,
            }),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Journey {
    pub floor: Floor,
    /// Ordered by (time, id).
    pub touchpoints: Vec<TouchpointEntry>,
    pub answers: Vec<AnswerEntry>,
    /// Changed since the last batch was taken (processor bookkeeping, not persisted).
    #[serde(skip)]
    pub dirty: bool,
}

/// A touchpoint's derived place in the journey.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TouchpointView {
    pub context: Context,
    pub entered: bool,
    /// Which of the customer's journeys it belongs to (0 for the first).
    pub journey_seq: u32,
    /// For a stage entry into any stage but the last.
    pub outcome: Option<Outcome>,
}

/// An answer's derived place in the journey.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnswerView {
    pub context: Option<Context>,
    pub attribution: Attribution,
    /// Whether it is its slot's latest (only those count).
    pub counted: bool,
}

/// The derived views, index-aligned with [`Journey::touchpoints`] and [`Journey::answers`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Derived {
    /// The view of [`Floor::pending`].
    pub pending: Option<TouchpointView>,
    pub touchpoints: Vec<TouchpointView>,
    pub answers: Vec<AnswerView>,
    pub steps: Vec<StepView>,
}

/// The kept stage entries' and touchpoints' views: [`Floor::pending`]'s, then one per
/// touchpoint.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TouchpointViews {
    pub pending: Option<TouchpointView>,
    pub touchpoints: Vec<TouchpointView>,
}

/// Most journeys keep a handful of events at a time: a vector grows by one up to eight
/// (a small realloc each) instead of to four at once, and doubles after that, so that a
/// burst of browsing stays linear.
fn room_for_one<T>(v: &mut Vec<T>) {
    if v.len() == v.capacity() && v.len() < 8 {
        v.reserve_exact(1);
    }
}

/// A stage entry's outcome before the next entry is looked at.
fn awaiting(budgets: &Budgets, entered: bool, stage: StageIdx, time: i64) -> Option<Outcome> {
    entered
        .then(|| budgets.deadline(stage, time))
        .flatten()
        .map(|deadline| Outcome::Awaiting { deadline })
}

/// Converts the entry whose outcome is `slot` (entered at `entered`) when the next entry,
/// at `next` on `channel`, comes by its deadline.
fn decide(slot: &mut Option<Outcome>, entered: i64, next: i64, channel: ChannelIdx) {
    if let Some(Outcome::Awaiting { deadline }) = *slot {
        if next <= deadline {
            *slot = Some(Outcome::Converted {
                after_ms: next - entered,
                channel,
            });
        }
    }
}

impl Journey {
    pub fn is_idle(&self) -> bool {
        self.touchpoints.is_empty() && self.answers.is_empty()
    }

    /// Whether it keeps an event dated within `from..=to` (touchpoints are ordered by time).
    pub fn has_event_within(&self, from: i64, to: i64) -> bool {
        let first = self.touchpoints.partition_point(|t| t.time < from);
        self.touchpoints.get(first).is_some_and(|t| t.time <= to)
            || self.answers.iter().any(|a| (from..=to).contains(&a.time))
    }

    pub fn has_touchpoint(&self, id: u64) -> bool {
        self.touchpoints.iter().any(|t| t.id == id)
    }

    /// Whether an identical answer (same response id, slot, time and score) is kept.
    pub fn has_answer(&self, a: &AnswerEntry) -> bool {
        self.answers.iter().any(|b| {
            b.response == a.response
                && b.slot() == a.slot()
                && b.time == a.time
                && b.score == a.score
        })
    }

    /// Inserts in (time, id) order; returns its index.
    pub fn insert_touchpoint(&mut self, t: TouchpointEntry) -> usize {
        let at = self.touchpoints.partition_point(|x| x.order() <= t.order());
        room_for_one(&mut self.touchpoints);
        self.touchpoints.insert(at, t);
        at
    }

    pub fn insert_answer(&mut self, a: AnswerEntry) {
        room_for_one(&mut self.answers);
        self.answers.push(a);
    }

    /// Everything derived from the kept events and the floor, by the rules above.
    pub fn derive(&self, budgets: &Budgets) -> Derived {
        let views = self.touchpoint_views(budgets);
        let answers = self.derive_answers(&views.touchpoints);
        let steps = self.step_views(budgets, &views.touchpoints);
        Derived {
            pending: views.pending,
            touchpoints: views.touchpoints,
            answers,
            steps,
        }
    }

    /// The touchpoint a step attempt started at.
    pub fn step_start(&self, v: &StepView) -> Option<Origin> {
        match v.start {
            Start::Kept(i) => self.touchpoints.get(i).map(Origin::of),
            Start::Folded(k) => self.floor.pending_steps.get(k).map(|f| f.origin.clone()),
        }
    }

    /// The step attempts, given the touchpoints' views.
    pub fn step_views(&self, budgets: &Budgets, views: &[TouchpointView]) -> Vec<StepView> {
        steps::derive(
            &budgets.steps,
            &self.floor.pending_steps,
            &self.touchpoints,
            views,
        )
    }

    /// The touchpoints' (and the pending entry's) views, without the answers'.
    pub fn touchpoint_views(&self, budgets: &Budgets) -> TouchpointViews {
        let mut progress = self.floor.progress;
        let mut segment = self.floor.segment;
        let mut touchpoints: Vec<TouchpointView> = self
            .touchpoints
            .iter()
            .map(|t| {
                let (entered, stage) = progress.advance(budgets, t.stage, t.time);
                if t.segment.is_some() {
                    segment = t.segment;
                }
                TouchpointView {
                    context: Context {
                        stage,
                        touchpoint: t.touchpoint,
                        channel: t.channel,
                        segment: segment.unwrap_or(NO_SEGMENT),
                    },
                    entered,
                    journey_seq: progress.seq,
                    outcome: awaiting(budgets, entered, stage, t.time),
                }
            })
            .collect();
        let mut pending = self.floor.pending.as_deref().map(FoldedEntry::view);
        // Each entry's outcome is decided by the next entry.
        let mut previous: Option<(i64, &mut Option<Outcome>)> = self
            .floor
            .pending
            .as_ref()
            .map(|p| p.origin.time)
            .zip(pending.as_mut().map(|v| &mut v.outcome));
        for (t, v) in self.touchpoints.iter().zip(touchpoints.iter_mut()) {
            if v.entered {
                if let Some((at, slot)) = previous {
                    decide(slot, at, t.time, t.channel);
                }
                previous = Some((t.time, &mut v.outcome));
            }
        }
        TouchpointViews {
            pending,
            touchpoints,
        }
    }

    /// The view of touchpoint `i` alone (what [`Self::derive`] gives it), without
    /// deriving the others'.
    pub fn touchpoint_view(&self, i: usize, budgets: &Budgets) -> TouchpointView {
        let progress = self.progress_before(&self.touchpoints[..i], budgets);
        self.view_after(i, progress, budgets)
    }

    /// The view of touchpoint `i`, given the journey's progress before it.
    pub fn view_after(
        &self,
        i: usize,
        mut progress: Progress,
        budgets: &Budgets,
    ) -> TouchpointView {
        let before = &self.touchpoints[..i];
        let t = &self.touchpoints[i];
        let segment = t
            .segment
            .or_else(|| before.iter().rev().find_map(|t| t.segment))
            .or(self.floor.segment);
        let (entered, stage) = progress.advance(budgets, t.stage, t.time);
        let mut outcome = awaiting(budgets, entered, stage, t.time);
        let later = |n: &&TouchpointEntry| n.stage != NO_STAGE && n.stage > stage;
        if let Some(next) = self.touchpoints[i + 1..].iter().find(later) {
            decide(&mut outcome, t.time, next.time, next.channel);
        }
        TouchpointView {
            context: Context {
                stage,
                touchpoint: t.touchpoint,
                channel: t.channel,
                segment: segment.unwrap_or(NO_SEGMENT),
            },
            entered,
            journey_seq: progress.seq,
            outcome,
        }
    }

    /// The journey's progress after every kept touchpoint: what an appended one meets.
    pub fn progress(&self, budgets: &Budgets) -> Progress {
        self.progress_before(&self.touchpoints, budgets)
    }

    /// The journey's progress after the floor and `before` (a prefix of the touchpoints).
    fn progress_before(&self, before: &[TouchpointEntry], budgets: &Budgets) -> Progress {
        let mut progress = self.floor.progress;
        for t in before {
            progress.advance(budgets, t.stage, t.time);
        }
        progress
    }

    /// The view of answer `j` alone.
    pub fn answer_view(&self, j: usize, budgets: &Budgets) -> AnswerView {
        let a = &self.answers[j];
        let (context, attribution) = self.attribute_with(a, |i| self.touchpoint_view(i, budgets));
        AnswerView {
            context,
            attribution,
            counted: self.is_latest_of_slot(a),
        }
    }

    fn is_latest_of_slot(&self, a: &AnswerEntry) -> bool {
        !self
            .answers
            .iter()
            .any(|b| b.slot() == a.slot() && b.rank() > a.rank())
    }

    fn derive_answers(&self, tps: &[TouchpointView]) -> Vec<AnswerView> {
        self.answers
            .iter()
            .map(|a| {
                let (context, attribution) = self.attribute_with(a, |i| tps[i]);
                AnswerView {
                    context,
                    attribution,
                    counted: self.is_latest_of_slot(a),
                }
            })
            .collect()
    }

    /// Attribution by the rules; `view(i)` gives touchpoint `i`'s view.
    fn attribute_with(
        &self,
        a: &AnswerEntry,
        view: impl Fn(usize) -> TouchpointView,
    ) -> (Option<Context>, Attribution) {
        if let Some(ctx) = a.fixed {
            return (Some(ctx), Attribution::Named);
        }
        if let Some(named) = a.named {
            if let Some(i) = self.touchpoints.iter().position(|t| t.id == named) {
                return (Some(view(i).context), Attribution::Named);
            }
        }
        let latest = self.touchpoints.partition_point(|t| t.time <= a.time);
        if latest > 0 {
            return (Some(view(latest - 1).context), Attribution::Latest);
        }
        match self.floor.last {
            Some(((time, _), ctx)) if time <= a.time => (Some(ctx), Attribution::Latest),
            _ => (None, Attribution::None),
        }
    }

    /// Whether [`Self::prune`] at `cut` would change anything.
    pub fn can_prune(&self, cut: i64) -> bool {
        self.touchpoints.first().is_some_and(|t| t.time < cut)
            || self.answers.iter().any(|a| self.answer_leaves(a, cut))
            || self
                .floor
                .pending
                .as_ref()
                .is_some_and(|p| p.deadline < cut)
            || self.floor.pending_steps.iter().any(|p| p.deadline < cut)
    }

    /// An answer dated before `cut` leaves, unless the touchpoint it names stays.
    fn answer_leaves(&self, a: &AnswerEntry, cut: i64) -> bool {
        a.time < cut
            && !a
                .named
                .is_some_and(|id| self.touchpoints.iter().any(|t| t.id == id && t.time >= cut))
    }

    /// Folds events dated before `cut` into the floor (their effect is final: nothing dated
    /// before `cut` can arrive any more). Returns whether anything changed.
    pub fn prune(&mut self, cut: i64, budgets: &Budgets) -> bool {
        if !self.can_prune(cut) {
            return false;
        }
        let keep_from = self.touchpoints.partition_point(|t| t.time < cut);
        let answers_before = self.answers.len();
        let pending_before = (self.floor.pending.is_some(), self.floor.pending_steps.len());
        let views = self.touchpoint_views(budgets).touchpoints;
        let attempts = self.step_views(budgets, &views);
        self.floor.pending_steps = steps::fold(
            &attempts,
            &self.floor.pending_steps,
            &self.touchpoints,
            keep_from,
            cut,
        );
        for (t, v) in self.touchpoints[..keep_from].iter().zip(&views) {
            // Each entry decides the one before it; the last stays while it can change.
            if v.entered {
                self.floor.pending = budgets.deadline(v.context.stage, t.time).map(|deadline| {
                    Box::new(FoldedEntry {
                        origin: Origin::folded(t),
                        context: v.context,
                        deadline,
                        journey_seq: v.journey_seq,
                    })
                });
            }
            // Answers that stay and name a leaving touchpoint keep its context.
            for a in self.answers.iter_mut().filter(|a| a.named == Some(t.id)) {
                a.fixed = Some(v.context);
            }
            let f = &mut self.floor;
            f.progress.advance(budgets, t.stage, t.time);
            if t.segment.is_some() {
                f.segment = t.segment;
            }
            f.last = Some((t.order(), v.context));
        }
        // Once its deadline is before the cut, no event that could still arrive converts it.
        if self
            .floor
            .pending
            .as_ref()
            .is_some_and(|p| p.deadline < cut)
        {
            self.floor.pending = None;
        }
        let leaving: Vec<bool> = self
            .answers
            .iter()
            .map(|a| self.answer_leaves(a, cut))
            .collect();
        let mut leaves = leaving.into_iter();
        self.answers.retain(|_| !leaves.next().unwrap_or(false));
        self.touchpoints.drain(..keep_from);
        // Most journeys end up idle, with nothing left but the floor: keep no spare room.
        self.touchpoints.shrink_to_fit();
        self.answers.shrink_to_fit();
        keep_from > 0
            || self.answers.len() != answers_before
            || pending_before != (self.floor.pending.is_some(), self.floor.pending_steps.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packed::{AnswerFields, TouchpointFields};

    /// Three stages: 100 ms to leave the first, 50 ms the second; a completed journey
    /// lasts 1,000 ms.
    fn budgets() -> Budgets {
        Budgets::new(vec![100, 50, 1_000])
    }

    fn tp(id: u64, time: i64, stage: StageIdx, segment: Option<SegmentIdx>) -> TouchpointEntry {
        TouchpointEntry {
            id,
            time,
            touchpoint: u16::from(stage),
            channel: 0,
            stage,
            segment,
            event: TouchpointFields {
                event_id: &id.to_string(),
                customer_id: None,
                anonymous_id: None,
                off_map: None,
                outcome: None,
                attributes: Vec::new(),
            }
            .pack(),
            source_offset: 0,
        }
    }

    fn ans(response: u64, named: Option<u64>, time: i64, score: i8) -> AnswerEntry {
        AnswerEntry {
            response,
            named,
            time,
            metric: Metric::Nps,
            score,
            fixed: None,
            answer: AnswerFields {
                response_id: &response.to_string(),
                customer_id: None,
                touchpoint_event_id: None,
                channel: None,
                comment: None,
            }
            .pack(),
            source_offset: 0,
        }
    }

    #[test]
    fn stage_and_segment_follow_event_time_not_arrival() {
        let mut in_order = Journey::default();
        let mut reversed = Journey::default();
        let events = [
            tp(1, 10, 0, Some(1)),
            tp(2, 20, 2, None),
            tp(3, 30, 1, Some(2)),
        ];
        for e in events.iter().cloned() {
            in_order.insert_touchpoint(e);
        }
        for e in events.iter().rev().cloned() {
            reversed.insert_touchpoint(e);
        }
        assert_eq!(in_order.derive(&budgets()), reversed.derive(&budgets()));
        let d = in_order.derive(&budgets());
        for (i, v) in d.touchpoints.iter().enumerate() {
            assert_eq!(in_order.touchpoint_view(i, &budgets()), *v);
        }
        let stages: Vec<_> = d
            .touchpoints
            .iter()
            .map(|v| (v.context.stage, v.entered))
            .collect();
        assert_eq!(stages, vec![(0, true), (2, true), (2, false)]);
        let segments: Vec<_> = d.touchpoints.iter().map(|v| v.context.segment).collect();
        assert_eq!(segments, vec![1, 1, 2]);
    }

    #[test]
    fn a_named_answer_moves_to_its_touchpoint_when_it_arrives() {
        let mut j = Journey::default();
        j.insert_touchpoint(tp(1, 10, 0, None));
        j.insert_answer(ans(100, Some(2), 40, 9));
        assert_eq!(
            j.derive(&budgets()).answers[0].attribution,
            Attribution::Latest
        );
        j.insert_touchpoint(tp(2, 30, 1, None));
        let v = j.derive(&budgets()).answers[0];
        assert_eq!(
            (v.attribution, v.context.map(|c| c.stage)),
            (Attribution::Named, Some(1))
        );
    }

    #[test]
    fn only_the_latest_answer_of_a_slot_counts() {
        let mut j = Journey::default();
        j.insert_touchpoint(tp(1, 10, 0, None));
        j.insert_answer(ans(100, Some(1), 50, 3));
        j.insert_answer(ans(101, Some(1), 40, 9));
        j.insert_answer(ans(102, None, 45, 9));
        let counted: Vec<bool> = j
            .derive(&budgets())
            .answers
            .iter()
            .map(|v| v.counted)
            .collect();
        assert_eq!(counted, vec![true, false, true]);
    }

    #[test]
    fn an_old_answer_stays_while_the_touchpoint_it_names_can_change() {
        let mut j = Journey::default();
        j.insert_touchpoint(tp(1, 10, 0, None));
        j.insert_touchpoint(tp(2, 150, 0, None));
        j.insert_answer(ans(100, Some(2), 50, 9));
        j.prune(100, &budgets());
        assert_eq!(j.answers.len(), 1, "its touchpoint (150) is after the cut");
        // A purchase before it arrives: the answer follows its touchpoint's new stage.
        j.insert_touchpoint(tp(3, 120, 2, None));
        let v = j.derive(&budgets()).answers[0];
        assert_eq!(
            (v.attribution, v.context.map(|c| c.stage)),
            (Attribution::Named, Some(2))
        );
        j.prune(200, &budgets());
        assert!(j.is_idle());
    }

    #[test]
    fn pruning_keeps_every_later_result() {
        let mut j = Journey::default();
        for e in [
            tp(1, 10, 1, Some(3)),
            tp(2, 20, 0, None),
            tp(3, 30, 0, None),
        ] {
            j.insert_touchpoint(e);
        }
        j.insert_answer(ans(100, Some(1), 35, 9));
        j.insert_answer(ans(101, None, 25, 9));
        let before = j.derive(&budgets());
        assert!(j.prune(25, &budgets()));
        let after = j.derive(&budgets());
        assert_eq!(after.touchpoints, before.touchpoints[2..].to_vec());
        assert_eq!(after.answers, before.answers);
        assert!(!j.prune(25, &budgets()));
    }

    fn outcomes(j: &Journey) -> Vec<Option<Outcome>> {
        let d = j.derive(&budgets());
        d.pending
            .iter()
            .chain(&d.touchpoints)
            .map(|v| v.outcome)
            .collect()
    }

    #[test]
    fn an_entry_converts_when_the_next_entry_comes_within_its_budget() {
        let mut j = Journey::default();
        j.insert_touchpoint(tp(1, 10, 0, None));
        j.insert_touchpoint(tp(2, 60, 0, None));
        j.insert_touchpoint(tp(3, 110, 1, None));
        j.insert_touchpoint(tp(4, 200, 2, None));
        let awaiting = |deadline| Some(Outcome::Awaiting { deadline });
        let converted = |after_ms| {
            Some(Outcome::Converted {
                after_ms,
                channel: 0,
            })
        };
        // Stage 1 was entered at 110, its budget ended at 160: awaiting, never converted.
        assert_eq!(
            outcomes(&j),
            vec![converted(100), None, awaiting(160), None]
        );
        for (i, v) in j.derive(&budgets()).touchpoints.iter().enumerate() {
            assert_eq!(j.touchpoint_view(i, &budgets()), *v);
        }
        // A late touchpoint of stage 2 within stage 1's budget converts it; the later one
        // is no entry any more.
        j.insert_touchpoint(tp(5, 150, 2, None));
        assert_eq!(
            outcomes(&j),
            vec![converted(100), None, converted(40), None, None]
        );
    }

    #[test]
    fn the_last_entry_stays_in_the_floor_while_a_late_event_can_convert_it() {
        let mut j = Journey::default();
        j.insert_touchpoint(tp(1, 10, 0, None));
        j.insert_touchpoint(tp(2, 20, 0, None));
        assert!(j.prune(50, &budgets()));
        assert!(j.touchpoints.is_empty());
        let pending = j.floor.pending.as_ref().map(|p| (p.origin.id, p.deadline));
        assert_eq!(pending, Some((1, 110)));
        j.insert_touchpoint(tp(3, 90, 1, None));
        assert_eq!(
            j.derive(&budgets()).pending.and_then(|v| v.outcome),
            Some(Outcome::Converted {
                after_ms: 80,
                channel: 0
            })
        );
        // Folded with the entry that converted it: final, nothing stays.
        assert!(j.prune(200, &budgets()));
        assert_eq!(j.floor.pending, None);
        assert!(j.is_idle());
    }

    #[test]
    fn an_entry_past_its_deadline_leaves_the_floor() {
        let mut j = Journey::default();
        j.insert_touchpoint(tp(1, 10, 0, None));
        j.prune(50, &budgets());
        assert!(j.floor.pending.is_some());
        assert!(j.can_prune(111));
        assert!(j.prune(111, &budgets()));
        assert_eq!(j.floor.pending, None);
        // The last stage has no later stage: nothing to wait for.
        j.insert_touchpoint(tp(2, 300, 2, None));
        j.prune(400, &budgets());
        assert_eq!(j.floor.pending, None);
    }
}
