//! What the alerter watches in one journey (README § Alerts): the committed per-minute
//! counts every journey instance publishes, merged across partitions, judged minute by
//! minute once every partition's committed watermark has passed the minute, and turned
//! into alerts — one per incident, with a stable id.
//!
//! Signals, each per slice (all traffic, each channel, and for steps, flows and stages
//! each segment):
//! - **step drop**: a step's attempts started in a minute and how many converted, known
//!   through *lenses*: how many converted within 1, 2, 5 and 10 minutes (those shorter
//!   than the budget), each as soon as the watermark has passed the minute plus that
//!   horizon, and how many within the budget, once the attempts' deadlines have passed.
//!   Each slice's [`DropDetector`] takes the lenses as stages of one test, so a checkout
//!   with a 30-minute budget that breaks shows within minutes, with all the evidence its
//!   outcomes hold. A busy channel's silent minute within the horizon keeps the minute
//!   from being judged: its conversions are missing, not failing;
//! - **flow drop**: the entries into a stage as a share of the entries into it and into the
//!   stage before it, per minute (a [`DropDetector`] of one stage): a stage no longer
//!   reached, told apart from less traffic;
//! - **score drop**: a stage's NPS, CSAT and CES — and each touchpoint's in a stage with
//!   several — over a trailing window against the week before ([`ScoreWatch`]);
//! - **silence**: a channel that normally sends touchpoints sends none ([`Silence`]).
//!
//! Minutes whose counts are not known yet are never judged as zero: a signal's minute is
//! judged only when [`JourneyWatch::advance`] is told that every partition has committed
//! past it. Two clocks say how far: the signals of touchpoints (steps, flows, silence) go
//! by how far every partition's touchpoint counts are final, the scores (and the stages'
//! decided conversions) by the journey's watermark, which also waits for the answers — a
//! survey tool that sends late holds back the scores, not a broken checkout ([`Finality`]).
//! Counts that arrive for a minute after that (late events applied by the journey
//! service within its allowed lateness) are left out: the alert was judged without them.
//! Which counts are left out depends only on each partition's own order of batches (a
//! cell is late when its partition had already committed past its minute), so reading the
//! same aggregates again judges the same minutes the same way and raises the same alerts
//! under the same ids.
//!
//! All slices of one subject (a step, a stage's flow or score, a channel's traffic) that fire
//! together are one incident: it starts when the first fires, is updated when the set of
//! firing slices changes, and resolves when the last has resolved.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

pub use crate::event_time::Finality;

use crate::detect::{
    DropDetector, DropParams, Incident, ScoreWatch, ScoreWatchParams, Silence, SilenceParams,
};
use crate::journey_map::{ChannelIdx, JourneyMap, SegmentIdx, StageIdx, StepIdx, TouchpointIdx};
use crate::metrics::{Counts, Metric, StepCounts, EARLY_HORIZONS_MS};
use crate::stage_conversion::StageConversions;

const MINUTE_MS: i64 = 60_000;
/// Touchpoints a minute a channel must have sent lately (decayed) for a minute without any to
/// be a gap that keeps the steps whose horizons span it from being judged. A thinner
/// channel's empty minutes are its usual pauses, and its lost conversions too few to read as
/// a drop.
const GAP_MIN_EVENTS_PER_MINUTE: f64 = 5.0;

/// The detectors' parameters for one journey.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct WatchParams {
    pub drop: DropParams,
    pub score: ScoreWatchParams,
    pub silence: SilenceParams,
}

/// Which traffic a detector sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Slice {
    All,
    Channel(ChannelIdx),
    Segment(SegmentIdx),
}

impl Slice {
    /// `all`, `channel=NAME` or `segment=NAME`.
    pub fn name(self, map: &JourneyMap) -> String {
        match self {
            Slice::All => "all".into(),
            Slice::Channel(c) => format!("channel={}", map.channel_name(c)),
            Slice::Segment(s) => format!("segment={}", map.segment_name(s)),
        }
    }
}

/// What an incident is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Subject {
    /// A step's conversion.
    Step(StepIdx),
    /// A score of a stage's answers, or of one of its touchpoints'.
    Score(ScoreOf),
    /// A channel's touchpoints.
    Source(ChannelIdx),
    /// The flow of entries into a stage (after the first), as a share of the entries into
    /// it and into the stage before it.
    Flow(StageIdx),
    /// A stage's decided conversion: of its entries (by minute of entry), the share that
    /// reached a later stage within the budget, known a budget after they entered.
    Stage(StageIdx),
}

/// Which answers a score is over. As points, like NPS: CSAT as the share of satisfied
/// answers (top two of five), CES as the share agreeing it was easy (5–7 of seven), in %.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ScoreOf {
    pub metric: Metric,
    pub stage: StageIdx,
    /// Only this touchpoint's answers (in a stage with several).
    pub touchpoint: Option<TouchpointIdx>,
}

impl Subject {
    /// The step's, stage's (a score's, also of a touchpoint) or channel's name.
    pub fn name(self, map: &JourneyMap) -> &str {
        match self {
            Subject::Step(s) => map.step_name(s),
            Subject::Score(s) => map.stage_name(s.stage),
            Subject::Source(c) => map.channel_name(c),
            Subject::Flow(s) | Subject::Stage(s) => map.stage_name(s),
        }
    }

    /// A score's touchpoint, when it is over one touchpoint's answers.
    pub fn touchpoint(self, map: &JourneyMap) -> Option<&str> {
        match self {
            Subject::Score(ScoreOf {
                touchpoint: Some(t),
                ..
            }) => Some(map.touchpoint_name(t)),
            _ => None,
        }
    }

    /// A score's metric.
    pub fn metric(self) -> Option<Metric> {
        match self {
            Subject::Score(s) => Some(s.metric),
            _ => None,
        }
    }

    /// Unique per subject, for the incidents' ids: the name; another score than a stage's
    /// NPS (whose ids are as before there were others) has its metric first and touchpoint
    /// after (`csat:conversion`, `nps:conversion.checkout_started`).
    fn key(self, map: &JourneyMap) -> String {
        match (self.metric(), self.touchpoint(map)) {
            (Some(m), Some(t)) => format!("{}:{}.{t}", m.as_str().to_lowercase(), self.name(map)),
            (Some(Metric::Nps), None) | (None, _) => self.name(map).to_string(),
            (Some(m), None) => format!("{}:{}", m.as_str().to_lowercase(), self.name(map)),
        }
    }

    pub fn kind(self) -> AlertKind {
        match self {
            Subject::Step(_) => AlertKind::StepDrop,
            Subject::Score(_) => AlertKind::ScoreDrop,
            Subject::Source(_) => AlertKind::Silence,
            Subject::Flow(_) => AlertKind::FlowDrop,
            Subject::Stage(_) => AlertKind::StageDrop,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AlertKind {
    StepDrop,
    ScoreDrop,
    Silence,
    FlowDrop,
    StageDrop,
}

impl AlertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::StepDrop => "step_drop",
            AlertKind::ScoreDrop => "score_drop",
            AlertKind::Silence => "silence",
            AlertKind::FlowDrop => "flow_drop",
            AlertKind::StageDrop => "stage_drop",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertState {
    Firing,
    Updated,
    Resolved,
}

/// Which detector of a subject: its slice and, for a step, its horizon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Lens {
    pub slice: Slice,
    /// A step's share converted within this time (ms); `None`: within its budget, or not a
    /// step.
    pub within_ms: Option<i64>,
}

impl Lens {
    /// `all`, `channel=app`, `segment=vip within 2m`, …
    pub fn name(self, map: &JourneyMap) -> String {
        match self.within_ms {
            Some(ms) => format!("{} within {}m", self.slice.name(map), ms / MINUTE_MS),
            None => self.slice.name(map),
        }
    }
}

/// A lens's figures when the alert changed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    pub lens: Lens,
    /// Conversion rate (0–1), NPS (points) or touchpoints a minute.
    pub observed: f64,
    pub baseline: f64,
    /// Attempts or answers behind the figures (0 for a silence).
    pub n: f64,
    /// The probability of evidence this strong without a change (an upper bound from the
    /// test's likelihood ratio; the one-sided normal tail for scores).
    pub significance: f64,
}

/// One change of an alert; `(id, revision)` names it.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertChange {
    pub id: String,
    pub revision: u32,
    pub state: AlertState,
    pub subject: Subject,
    /// The strongest firing slice's figures (at resolution: the last slice's).
    pub figures: Figures,
    /// Every slice firing after the change (none when resolved).
    pub firing: Vec<Slice>,
    /// Event time (ms) of the incident's first judged minute, and the end of the minute
    /// judged now.
    pub window_start: i64,
    pub window_end: i64,
    /// Event time (ms) by which the change could be known: the end of the minute judged
    /// plus what it waited for (a step's horizon or budget). Detection delay is measured
    /// to this.
    pub at: i64,
    /// `at` of the change that fired the incident.
    pub fired_at: i64,
}

/// A slice's step attempts in a minute, as one lens sees them: how many started, how many
/// had converted by the previous lens's horizon and by this one's.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct Trials {
    starts: i64,
    before: i64,
    by: i64,
}

/// A step's lens: which count of conversions (an index into the early horizons, or the
/// budget's) and how long after a minute it is known.
#[derive(Debug, Clone, Copy)]
struct StepLens {
    early: Option<usize>,
    wait: i64,
}

/// One subject's open incident.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Open {
    id: String,
    revision: u32,
    start: i64,
    fired_at: i64,
    slices: BTreeMap<Slice, Figures>,
}

/// Promoters, passives, detractors.
type NpsCounts = (i64, i64, i64);

/// Per signal, the next minute (epoch ms) to judge: none until its first cell.
type Cursor = Option<i64>;

#[derive(Debug, Serialize, Deserialize)]
pub struct JourneyWatch {
    /// Names for the alerts' ids. Not in a snapshot: [`JourneyWatch::resume`] gives it back.
    #[serde(skip)]
    map: JourneyMap,
    params: WatchParams,
    /// Per step, its lenses (the early horizons shorter than its budget, then the budget).
    #[serde(skip)]
    step_lenses: Vec<Vec<StepLens>>,
    steps: BTreeMap<(i64, StepIdx, u8, Slice), Trials>,
    /// Per step and lens.
    step_cursor: Vec<Vec<Cursor>>,
    /// Per step and slice, one detector judging every lens as a stage.
    drops: BTreeMap<(StepIdx, Slice), DropDetector>,
    scores_in: BTreeMap<(i64, (ScoreOf, Slice)), NpsCounts>,
    sources_in: BTreeMap<(i64, ChannelIdx), i64>,
    /// Per minute, stage and slice: entries into the stage, and into it or the one before.
    flows_in: BTreeMap<(i64, (StageIdx, Slice)), (i64, i64)>,
    flows: BTreeMap<(StageIdx, Slice), DropDetector>,
    conversions: StageConversions,
    /// Per minute of entry, stage and slice: entries converted and dropped off.
    outcomes_in: BTreeMap<(i64, (StageIdx, Slice)), (i64, i64)>,
    /// Per stage, the next minute of entries to judge (a budget after it).
    outcome_cursor: Vec<Cursor>,
    stage_drops: BTreeMap<(StageIdx, Slice), DropDetector>,
    /// Touchpoint signals' next minute (flows, silence), and the scores'.
    minute_cursor: Cursor,
    score_cursor: Cursor,
    scores: BTreeMap<(ScoreOf, Slice), ScoreWatch>,
    sources: BTreeMap<ChannelIdx, Silence>,
    /// Touchpoints a minute each channel sent lately (smoothed over about 20 minutes).
    traffic: BTreeMap<ChannelIdx, f64>,
    /// Minutes in which a busy channel sent nothing: what happened there is missing, not
    /// failing, so the steps whose horizon spans one are not judged.
    gaps: BTreeSet<i64>,
    open: BTreeMap<Subject, Open>,
    /// Cells that came after their minute was judged (or their partition had committed
    /// past it): left out of every alert.
    late_cells: u64,
    known: Finality,
}

impl JourneyWatch {
    pub fn new(map: &JourneyMap, params: WatchParams) -> Self {
        let step_lenses: Vec<Vec<StepLens>> =
            map.steps.iter().map(|s| lenses(s.budget_ms)).collect();
        let step_cursor = step_lenses.iter().map(|l| vec![None; l.len()]).collect();
        JourneyWatch {
            map: map.clone(),
            params,
            step_lenses,
            steps: BTreeMap::new(),
            step_cursor,
            drops: BTreeMap::new(),
            scores_in: BTreeMap::new(),
            sources_in: BTreeMap::new(),
            flows_in: BTreeMap::new(),
            flows: BTreeMap::new(),
            conversions: StageConversions::new(map),
            outcomes_in: BTreeMap::new(),
            outcome_cursor: vec![None; map.stages.len()],
            stage_drops: BTreeMap::new(),
            minute_cursor: None,
            score_cursor: None,
            scores: BTreeMap::new(),
            sources: BTreeMap::new(),
            traffic: BTreeMap::new(),
            gaps: BTreeSet::new(),
            open: BTreeMap::new(),
            late_cells: 0,
            known: Finality::default(),
        }
    }

    /// Takes a watch read back from a snapshot (serde; everything but the map) up again
    /// under `map` and `params`: `None` when it was taken under another map (`taken_under`
    /// is [`Self::judged_by`] then) or other parameters, which would judge the same cells
    /// differently (then the aggregates are read again).
    pub fn resume(
        mut self,
        map: &JourneyMap,
        params: WatchParams,
        taken_under: u64,
    ) -> Option<Self> {
        if taken_under != Self::judged_by(map) || self.params != params {
            return None;
        }
        self.step_lenses = map.steps.iter().map(|s| lenses(s.budget_ms)).collect();
        let lenses_fit = self
            .step_cursor
            .iter()
            .map(Vec::len)
            .eq(self.step_lenses.iter().map(Vec::len));
        self.map = map.clone();
        lenses_fit.then_some(self)
    }

    /// What of `map` the watch's judgement rests on, as a number that stays the same from
    /// one run to the next: names and positions of stages, steps, channels, segments and
    /// touchpoints, budgets, and the detectors' parameters.
    pub fn judged_by(map: &JourneyMap) -> u64 {
        use std::hash::Hasher as _;
        let mut h = siphasher::sip::SipHasher24::new_with_keys(0, 0);
        let about = format!(
            "{}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}",
            map.name,
            map.stages,
            map.steps,
            map.channels,
            map.segments,
            map.touchpoints,
            map.alerts
        );
        h.write(about.as_bytes());
        h.finish()
    }

    pub fn late_cells(&self) -> u64 {
        self.late_cells
    }

    /// A stage's conversion over the last week of its decided cohorts, as far as judged
    /// (see [`StageConversions`]), and how many entries that is.
    pub fn stage_conversion(&self, stage: StageIdx) -> Option<(f64, i64)> {
        self.conversions.ratio(stage, self.known.all?)
    }

    /// The incidents firing now.
    pub fn firing(&self) -> impl Iterator<Item = (Subject, &str)> {
        self.open.iter().map(|(s, o)| (*s, o.id.as_str()))
    }

    /// A committed step cell (minute = start of the attempts' minute, epoch ms), from a
    /// partition whose counts were final up to `before` before this batch.
    pub fn add_step_cell(
        &mut self,
        minute: i64,
        step: StepIdx,
        channel: ChannelIdx,
        segment: SegmentIdx,
        counts: &StepCounts,
        before: impl Into<Finality>,
    ) {
        let before = before.into();
        let Some(lenses) = self.step_lenses.get(usize::from(step)) else {
            return;
        };
        let minute = minute_start(minute);
        let within = counts.within();
        for (l, lens) in lenses.iter().enumerate() {
            if is_late(
                minute.saturating_add(lens.wait),
                self.known.touchpoints,
                before.touchpoints,
            ) {
                self.late_cells += 1;
                continue;
            }
            let cursor = &mut self.step_cursor[usize::from(step)][l];
            if cursor.is_none_or(|c| minute < c) {
                *cursor = Some(minute);
            }
            let by = |lens: &StepLens| lens.early.map_or(counts.conversions, |i| within[i]);
            let before = l.checked_sub(1).map_or(0, |k| by(&lenses[k]));
            let by = by(lens);
            let l = u8::try_from(l).unwrap_or(u8::MAX);
            for slice in [Slice::All, Slice::Channel(channel), Slice::Segment(segment)] {
                let t = self.steps.entry((minute, step, l, slice)).or_default();
                t.starts += counts.starts;
                t.before += before;
                t.by += by;
            }
        }
    }

    /// A committed per-minute cell (minute start, epoch ms) of a stage and touchpoint (none:
    /// answers about no touchpoint of the map), as for [`add_step_cell`].
    ///
    /// [`add_step_cell`]: JourneyWatch::add_step_cell
    pub fn add_minute_cell(
        &mut self,
        minute: i64,
        (stage, touchpoint): (StageIdx, Option<TouchpointIdx>),
        (channel, segment): (ChannelIdx, SegmentIdx),
        counts: &Counts,
        before: impl Into<Finality>,
    ) {
        let before = before.into();
        let minute = minute_start(minute);
        let end = minute.saturating_add(MINUTE_MS);
        // Each part of the cell by its own clock; a part with nothing in it is never late.
        // Entries' outcomes land on the entry's minute as they are decided, up to the
        // stage's budget after it: only then are they final.
        let answers = score_counts(counts).next().is_some();
        let outcomes = counts.stage_conversions != 0 || counts.stage_dropoffs != 0;
        let touchpoints = counts.touchpoints != 0 || counts.stage_entries != 0;
        let decided = self.decided(stage, minute);
        let late_answers = answers && is_late(end, self.known.all, before.all);
        let late_outcomes = outcomes && is_late(decided, self.known.all, before.all);
        let late_touchpoints =
            touchpoints && is_late(end, self.known.touchpoints, before.touchpoints);
        if late_answers || late_outcomes || late_touchpoints {
            self.late_cells += 1;
        }
        if answers && !late_answers {
            self.add_answers(minute, (stage, touchpoint), channel, counts);
        }
        if outcomes && !late_outcomes {
            self.add_outcomes(minute, stage, (channel, segment), counts);
        }
        if touchpoints && !late_touchpoints {
            self.add_touchpoints(minute, stage, (channel, segment), counts);
        }
    }

    /// A cell's decided outcomes of entries (in their entry's minute), judged a budget later
    /// by the journey's watermark. The last stage converts to nothing.
    fn add_outcomes(
        &mut self,
        minute: i64,
        stage: StageIdx,
        (channel, segment): (ChannelIdx, SegmentIdx),
        counts: &Counts,
    ) {
        let (conversions, dropoffs) = (counts.stage_conversions, counts.stage_dropoffs);
        self.conversions.add(minute, stage, conversions, dropoffs);
        if usize::from(stage) + 1 >= self.map.stages.len() {
            return;
        }
        let cursor = &mut self.outcome_cursor[usize::from(stage)];
        if cursor.is_none_or(|c| minute < c) {
            *cursor = Some(minute);
        }
        for slice in [Slice::All, Slice::Channel(channel), Slice::Segment(segment)] {
            let o = self
                .outcomes_in
                .entry((minute, (stage, slice)))
                .or_default();
            *o = (o.0 + conversions, o.1 + dropoffs);
        }
    }

    /// When a minute of a stage's entries is decided: a budget after the minute's end.
    fn decided(&self, stage: StageIdx, minute: i64) -> i64 {
        let budget = self
            .map
            .stages
            .get(usize::from(stage))
            .map_or(0, |s| s.budget_ms);
        minute.saturating_add(MINUTE_MS).saturating_add(budget)
    }

    /// A cell's scores, judged by the journey's watermark.
    fn add_answers(
        &mut self,
        minute: i64,
        (stage, touchpoint): (StageIdx, Option<TouchpointIdx>),
        channel: ChannelIdx,
        counts: &Counts,
    ) {
        if self.score_cursor.is_none_or(|c| minute < c) {
            self.score_cursor = Some(minute);
        }
        // The cell's stage is the customer's (the furthest reached); a touchpoint's own score
        // is under the stage that declares it, and only where that stage has others (else
        // it is that stage's score).
        let own = touchpoint
            .and_then(|t| Some((self.map.touchpoints.get(usize::from(t))?.stage, t)))
            .filter(|(s, _)| self.map.touchpoints_of(*s).nth(1).is_some());
        // Answers in no stage of this journey (before any, or other journeys' customers)
        // are nobody's score to watch: their mix, not their mood, changes.
        let in_map = usize::from(stage) < self.map.stages.len();
        for (metric, three) in score_counts(counts) {
            let scopes = in_map
                .then_some((stage, None))
                .into_iter()
                .chain(own.map(|(s, t)| (s, Some(t))));
            for (stage, touchpoint) in scopes {
                let of = ScoreOf {
                    metric,
                    stage,
                    touchpoint,
                };
                for slice in [Slice::All, Slice::Channel(channel)] {
                    let c = self.scores_in.entry((minute, (of, slice))).or_default();
                    *c = (c.0 + three.0, c.1 + three.1, c.2 + three.2);
                }
            }
        }
    }

    /// A cell's traffic and stage entries, judged by how far touchpoints are final.
    fn add_touchpoints(
        &mut self,
        minute: i64,
        stage: StageIdx,
        (channel, segment): (ChannelIdx, SegmentIdx),
        counts: &Counts,
    ) {
        if self.minute_cursor.is_none_or(|c| minute < c) {
            self.minute_cursor = Some(minute);
        }
        if counts.touchpoints != 0 {
            *self.sources_in.entry((minute, channel)).or_default() += counts.touchpoints;
        }
        if counts.stage_entries != 0 && usize::from(stage) < self.map.stages.len() {
            let e = counts.stage_entries;
            // Into this stage (against the one before), and before the next one.
            let into = (stage > 0).then_some((stage, e));
            let before = (usize::from(stage) + 1 < self.map.stages.len()).then_some((stage + 1, 0));
            for (target, k) in into.into_iter().chain(before) {
                for slice in [Slice::All, Slice::Channel(channel), Slice::Segment(segment)] {
                    let f = self.flows_in.entry((minute, (target, slice))).or_default();
                    *f = (f.0 + k, f.1 + e);
                }
            }
        }
    }

    /// Every partition has committed everything up to `known_until` (epoch ms): judges every
    /// minute that is now known, in order, and returns the alerts' changes.
    pub fn advance(&mut self, known_until: i64) -> Vec<AlertChange> {
        self.advance_to(Finality::both(Some(known_until)))
    }

    /// As [`advance`](Self::advance), touchpoints final up to `known.touchpoints` and all
    /// counts up to `known.all` (each clock only ever goes forward).
    pub fn advance_to(&mut self, known: Finality) -> Vec<AlertChange> {
        let all = known.all.max(self.known.all);
        let known = Finality {
            touchpoints: known.touchpoints.max(all).max(self.known.touchpoints),
            all,
        };
        if known == self.known {
            return Vec::new();
        }
        self.known = known;
        if let Some(all) = known.all {
            self.conversions.forget(all);
        }
        let mut out = Vec::new();
        // Every signal's minutes in the order they became known (then steps before
        // minutes, by step and lens): how far another signal has come when one changes an
        // incident never depends on how far the clocks jumped.
        while let Some(signal) = self.next_due(known) {
            match signal {
                Due::Step(step, lens, minute) => self.judge_step(step, lens, minute, &mut out),
                Due::Minute(minute) => self.judge_minute(minute, &mut out),
                Due::Scores(minute) => self.judge_scores(minute, &mut out),
                Due::Outcomes(stage, minute) => self.judge_outcomes(stage, minute, &mut out),
            }
        }
        out
    }

    /// The signal whose next minute became known first, if one is known by `known`.
    fn next_due(&self, known: Finality) -> Option<Due> {
        let touchpoints = known.touchpoints.unwrap_or(i64::MIN);
        let all = known.all.unwrap_or(i64::MIN);
        let steps = self
            .step_cursor
            .iter()
            .enumerate()
            .flat_map(|(s, cursors)| {
                cursors.iter().enumerate().filter_map(move |(l, c)| {
                    let minute = (*c)?;
                    let at = minute + self.step_lenses[s][l].wait;
                    let step = StepIdx::try_from(s).ok()?;
                    Some((at, Due::Step(step, l, minute)))
                })
            });
        let minutes = self
            .minute_cursor
            .map(|minute| (minute + MINUTE_MS, Due::Minute(minute)));
        let touchpoint_signals = steps.chain(minutes).filter(|(at, _)| *at <= touchpoints);
        let scores = self
            .score_cursor
            .map(|minute| (minute + MINUTE_MS, Due::Scores(minute)))
            .filter(|(at, _)| *at <= all);
        let outcomes = self
            .outcome_cursor
            .iter()
            .enumerate()
            .filter_map(|(s, c)| {
                let stage = StageIdx::try_from(s).ok()?;
                let minute = (*c)?;
                Some((self.decided(stage, minute), Due::Outcomes(stage, minute)))
            })
            .filter(|(at, _)| *at <= all);
        touchpoint_signals
            .chain(scores)
            .chain(outcomes)
            .min_by_key(|(at, due)| (*at, *due))
            .map(|(_, due)| due)
    }

    /// Judges a step's minute through one lens: a stage of its slices' detectors.
    fn judge_step(&mut self, step: StepIdx, lens: usize, minute: i64, out: &mut Vec<AlertChange>) {
        let lenses = &self.step_lenses[usize::from(step)];
        let (stages, wait) = (lenses.len(), lenses[lens].wait);
        let l = u8::try_from(lens).unwrap_or(u8::MAX);
        // Slices seen before are judged every minute (a minute without trials is known
        // too); new ones join with their first cell.
        let mut slices: BTreeSet<Slice> = self
            .drops
            .range((step, Slice::All)..=(step, Slice::Segment(SegmentIdx::MAX)))
            .map(|(k, _)| k.1)
            .collect();
        let first = (minute, step, l, Slice::All);
        let last = (minute, step, l, Slice::Segment(SegmentIdx::MAX));
        let cells: Vec<(Slice, Trials)> = self
            .steps
            .range(first..=last)
            .map(|(k, t)| (k.3, *t))
            .collect();
        slices.extend(cells.iter().map(|c| c.0));
        // A busy channel silent within the horizon lost conversions (and starts) with its
        // touchpoints: a silent source must not read as a drop.
        let lost = self.gaps.range(minute..minute + wait).next().is_some();
        for slice in slices {
            let t = cells
                .iter()
                .find(|c| c.0 == slice)
                .map_or(Trials::default(), |c| c.1);
            self.steps.remove(&(minute, step, l, slice));
            if lost {
                continue;
            }
            let d = self
                .drops
                .entry((step, slice))
                .or_insert_with(|| DropDetector::staged(self.params.drop, stages));
            let incident = d.observe_stage(
                minute / MINUTE_MS,
                lens,
                at_least_zero(t.starts),
                at_least_zero(t.before),
                at_least_zero(t.by),
            );
            if let Some(i) = incident {
                // The horizon of the stage the figures are of.
                let within_ms = self.step_lenses[usize::from(step)]
                    .get(d.figures_stage())
                    .and_then(|l| l.early)
                    .map(|i| EARLY_HORIZONS_MS[i]);
                let lens = Lens { slice, within_ms };
                self.apply(Subject::Step(step), lens, i, minute, minute + wait, out);
            }
        }
        self.step_cursor[usize::from(step)][lens] = Some(minute + MINUTE_MS);
    }

    /// Judges a minute of a stage's entries, now decided: a stage of its slices' detectors.
    fn judge_outcomes(&mut self, stage: StageIdx, minute: i64, out: &mut Vec<AlertChange>) {
        let at = self.decided(stage, minute);
        let mut slices: BTreeSet<Slice> = self
            .stage_drops
            .range((stage, Slice::All)..=(stage, Slice::Segment(SegmentIdx::MAX)))
            .map(|(k, _)| k.1)
            .collect();
        let first = (minute, (stage, Slice::All));
        let last = (minute, (stage, Slice::Segment(SegmentIdx::MAX)));
        let cells: BTreeMap<Slice, (i64, i64)> = self
            .outcomes_in
            .range(first..=last)
            .map(|(k, v)| (k.1 .1, *v))
            .collect();
        // Cells of earlier minutes were late, never kept: the minute's are all there are.
        for slice in cells.keys() {
            self.outcomes_in.remove(&(minute, (stage, *slice)));
        }
        slices.extend(cells.keys().copied());
        // A busy channel silent while the entries could convert lost their conversions with
        // its touchpoints: missing, not failing.
        let lost = self.gaps.range(minute..at).next().is_some();
        for slice in slices {
            if lost {
                break;
            }
            let (converted, dropped) = cells.get(&slice).copied().unwrap_or((0, 0));
            let converted = at_least_zero(converted);
            let decided = converted + at_least_zero(dropped);
            let d = self
                .stage_drops
                .entry((stage, slice))
                .or_insert_with(|| DropDetector::new(self.params.drop));
            if let Some(i) = d.observe(minute / MINUTE_MS, converted, decided) {
                let lens = Lens {
                    slice,
                    within_ms: None,
                };
                self.apply(Subject::Stage(stage), lens, i, minute, at, out);
            }
        }
        self.outcome_cursor[usize::from(stage)] = Some(minute + MINUTE_MS);
    }

    /// Judges a minute's scores.
    fn judge_scores(&mut self, minute: i64, out: &mut Vec<AlertChange>) {
        let at = minute + MINUTE_MS;
        let m = minute / MINUTE_MS;
        let scores = take_minute(&mut self.scores_in, minute);
        let mut keys: BTreeSet<(ScoreOf, Slice)> = self.scores.keys().copied().collect();
        keys.extend(scores.keys().copied());
        for key in keys {
            let c = scores.get(&key).copied().unwrap_or((0, 0, 0));
            let w = self
                .scores
                .entry(key)
                .or_insert_with(|| ScoreWatch::new(self.params.score));
            if let Some(i) = w.observe(m, c) {
                let lens = Lens {
                    slice: key.1,
                    within_ms: None,
                };
                self.apply(Subject::Score(key.0), lens, i, minute, at, out);
            }
        }
        self.score_cursor = Some(minute + MINUTE_MS);
    }

    /// Judges a minute's traffic and flows.
    fn judge_minute(&mut self, minute: i64, out: &mut Vec<AlertChange>) {
        let at = minute + MINUTE_MS;
        let m = minute / MINUTE_MS;
        let sources = take_minute(&mut self.sources_in, minute);
        let mut channels: BTreeSet<ChannelIdx> = self.sources.keys().copied().collect();
        channels.extend(sources.keys().copied());
        for channel in channels {
            let events = sources.get(&channel).copied().unwrap_or(0);
            let rate = self.traffic.entry(channel).or_default();
            if events == 0 && *rate >= GAP_MIN_EVENTS_PER_MINUTE {
                self.gaps.insert(minute);
            }
            *rate = 0.95 * *rate + 0.05 * events as f64;
            let s = self
                .sources
                .entry(channel)
                .or_insert_with(|| Silence::new(self.params.silence));
            if let Some(i) = s.observe(m, u64::try_from(events).unwrap_or(0)) {
                let lens = Lens {
                    slice: Slice::Channel(channel),
                    within_ms: None,
                };
                self.apply(Subject::Source(channel), lens, i, minute, at, out);
            }
        }
        let flows = take_minute(&mut self.flows_in, minute);
        let mut keys: BTreeSet<(StageIdx, Slice)> = self.flows.keys().copied().collect();
        keys.extend(flows.keys().copied());
        for key in keys {
            let (k, n) = flows.get(&key).copied().unwrap_or((0, 0));
            let d = self
                .flows
                .entry(key)
                .or_insert_with(|| DropDetector::new(self.params.drop));
            if let Some(i) = d.observe(m, at_least_zero(k).min(at_least_zero(n)), at_least_zero(n))
            {
                let lens = Lens {
                    slice: key.1,
                    within_ms: None,
                };
                self.apply(Subject::Flow(key.0), lens, i, minute, at, out);
            }
        }
        self.minute_cursor = Some(minute + MINUTE_MS);
        // No step's horizon reaches back further than its longest lens (steps go by this
        // clock); a stage's entries still to judge are within a budget of the journey's
        // watermark, which may be far behind (answers sent late): keep what either needs,
        // however far apart the clocks are.
        let longest_step = self
            .step_lenses
            .iter()
            .flatten()
            .map(|l| l.wait)
            .max()
            .unwrap_or(0);
        let longest_budget = self
            .map
            .stages
            .iter()
            .map(|s| s.budget_ms + MINUTE_MS)
            .max()
            .unwrap_or(0);
        let stages_need = self
            .known
            .all
            .map_or(i64::MIN, |all| all.saturating_sub(longest_budget));
        self.gaps = self
            .gaps
            .split_off(&(minute - longest_step).min(stages_need));
    }

    /// A slice's detector said something: the subject's incident starts, changes or ends.
    fn apply(
        &mut self,
        subject: Subject,
        lens: Lens,
        incident: Incident,
        minute: i64,
        at: i64,
        out: &mut Vec<AlertChange>,
    ) {
        let window_end = minute + MINUTE_MS;
        match incident {
            Incident::Started {
                observed,
                expected,
                trials,
                evidence,
                ..
            }
            | Incident::Ongoing {
                observed,
                expected,
                trials,
                evidence,
                ..
            } => {
                let figures = Figures {
                    lens,
                    observed,
                    baseline: expected,
                    n: trials,
                    significance: significance(subject, evidence),
                };
                let map = &self.map;
                let open = self.open.entry(subject).or_insert_with(|| Open {
                    id: alert_id(map, subject, at),
                    revision: 0,
                    start: minute,
                    fired_at: at,
                    slices: BTreeMap::new(),
                });
                // Each slice keeps its figures current and its strongest significance.
                let figures = match open.slices.get(&lens.slice) {
                    Some(before) => Figures {
                        significance: figures.significance.min(before.significance),
                        ..figures
                    },
                    None => figures,
                };
                if open.slices.insert(lens.slice, figures).is_some() {
                    return;
                }
                let state = if open.slices.len() == 1 {
                    AlertState::Firing
                } else {
                    open.revision += 1;
                    AlertState::Updated
                };
                out.push(change(open, state, subject, figures, window_end, at));
            }
            Incident::Resolved { .. } => {
                let Some(open) = self.open.get_mut(&subject) else {
                    return;
                };
                let Some(figures) = open.slices.remove(&lens.slice) else {
                    return;
                };
                open.revision += 1;
                let state = if open.slices.is_empty() {
                    AlertState::Resolved
                } else {
                    AlertState::Updated
                };
                out.push(change(open, state, subject, figures, window_end, at));
                if state == AlertState::Resolved {
                    self.open.remove(&subject);
                }
            }
        }
    }
}

/// A cell's answers as three counts whose NPS-like score (first minus last, in % of all) is
/// the metric's: NPS's promoters, passives and detractors; CSAT's satisfied and not; CES's
/// agreeing and not. Metrics without answers in the cell are left out.
fn score_counts(c: &Counts) -> impl Iterator<Item = (Metric, NpsCounts)> {
    [
        (
            Metric::Nps,
            (c.nps_promoters, c.nps_passives, c.nps_detractors),
        ),
        (Metric::Csat, (c.csat_top2, c.csat_n - c.csat_top2, 0)),
        (Metric::Ces, (c.ces_agree, c.ces_n - c.ces_agree, 0)),
    ]
    .into_iter()
    .filter(|(_, three)| *three != (0, 0, 0))
}

/// Summed signed changes as a count (a retraction can outrun its cell's additions).
fn at_least_zero(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// A signal's next minute to judge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Due {
    Step(StepIdx, usize, i64),
    Minute(i64),
    Scores(i64),
    Outcomes(StageIdx, i64),
}

/// A step's lenses: the early horizons shorter than its budget, then the budget.
fn lenses(budget_ms: i64) -> Vec<StepLens> {
    EARLY_HORIZONS_MS
        .iter()
        .enumerate()
        .filter(|(_, h)| **h < budget_ms)
        .map(|(i, h)| StepLens {
            early: Some(i),
            wait: h + MINUTE_MS,
        })
        .chain(std::iter::once(StepLens {
            early: None,
            wait: budget_ms + MINUTE_MS,
        }))
        .collect()
}

/// A cell is late for the alerter when its partition had committed past the minute's
/// judging point before the cell's batch (whether the other partitions had too depends on
/// reading order, not on the data), or when the minute was judged already (possible only
/// when its partition was idle then).
fn is_late(point: i64, known_until: Option<i64>, partition_watermark: Option<i64>) -> bool {
    partition_watermark.is_some_and(|w| w >= point) || known_until.is_some_and(|k| k >= point)
}

/// The start of the minute `ms` is in: a cell's minute off the grid would never be judged.
fn minute_start(ms: i64) -> i64 {
    ms - ms.rem_euclid(MINUTE_MS)
}

/// The cells of `minute` (and any of earlier minutes, judged already), taken out.
fn take_minute<K: Ord + Copy, V>(cells: &mut BTreeMap<(i64, K), V>, minute: i64) -> BTreeMap<K, V> {
    let mut now = BTreeMap::new();
    while let Some(entry) = cells.first_entry() {
        if entry.key().0 > minute {
            break;
        }
        let ((m, k), v) = entry.remove_entry();
        if m == minute {
            now.insert(k, v);
        }
    }
    now
}

fn change(
    open: &Open,
    state: AlertState,
    subject: Subject,
    resolved: Figures,
    window_end: i64,
    at: i64,
) -> AlertChange {
    let strongest = open
        .slices
        .values()
        .copied()
        .min_by(|a, b| a.significance.total_cmp(&b.significance));
    AlertChange {
        id: open.id.clone(),
        revision: open.revision,
        state,
        subject,
        figures: strongest.unwrap_or(resolved),
        firing: open.slices.keys().copied().collect(),
        window_start: open.start,
        window_end,
        at,
        fired_at: open.fired_at,
    }
}

/// Evidence as a probability: the CUSUM's and silence's are log-likelihood ratios, and the
/// chance of a ratio ever that large without a change is at most e^−evidence (Ville's
/// inequality); a score's is a z statistic.
fn significance(subject: Subject, evidence: f64) -> f64 {
    match subject {
        Subject::Score(_) => 0.5 * libm::erfc(evidence / std::f64::consts::SQRT_2),
        Subject::Step(_) | Subject::Source(_) | Subject::Flow(_) | Subject::Stage(_) => {
            (-evidence).exp().min(1.0)
        }
    }
}

/// Stable across restarts and replays: the journey, what the incident is about and the
/// minute it became known (epoch minutes) — after the subject's previous incident
/// resolved, so never the same twice (the minute the evidence is about can be: a later
/// lens of an earlier minute).
fn alert_id(map: &JourneyMap, subject: Subject, known_at: i64) -> String {
    format!(
        "{}/{}:{}/{}",
        map.name,
        subject.kind().as_str(),
        subject.key(map),
        known_at / MINUTE_MS
    )
}
