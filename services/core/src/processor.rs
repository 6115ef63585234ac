//! The journey processor of one input partition (the same partition number of both input
//! topics, which are co-partitioned by customer id). It validates records, applies the
//! event-time rules ([`EventClock`]), keeps each customer's [`Journey`], and turns every
//! change of a journey's derived results into exact per-minute count deltas and facts,
//! until the caller takes them as a [`Batch`] to commit.
//!
//! Counts are derived from the events a journey holds, so they do not depend on the order
//! in which the two topics (or one customer's events) arrive: a late touchpoint that changes
//! the stage, segment or attribution of later events retracts what they counted and counts
//! them again, and rewrites their facts.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::hash::Hasher;
use std::sync::Arc;

use crate::erasure::{is_pseudonym, strip_touchpoint, Erasures, PSEUDONYM_PREFIX};
use crate::event_time::{EventClock, EventTimePolicy, Input, Refusal};
use crate::held::Held;
use crate::packed::{AnswerFields, PackedAnswer, PackedTouchpoint, TouchpointFields};

use crate::events::{Invalid, SurveyAnswer, TouchpointEvent};
use crate::identity::{
    visitor_key, Forwarded, Identification, IdentityPolicy, IdentityResolver, Route, Routed,
    Visitor, VISITOR_PREFIX,
};
use crate::journey::{
    AnswerEntry, AnswerView, Attribution, Budgets, Context, Derived, Journey, Origin, Outcome,
    StageOutcome, TouchpointEntry, TouchpointView,
};
use crate::journey_map::{
    ChannelIdx, JourneyMap, SegmentIdx, StageIdx, StepIdx, TouchpointIdx, NO_STAGE, OFF_MAP,
};
use crate::metrics::{Counts, Metric, StepCounts};
use crate::steps::StepView;

/// Stable 64-bit id of an event or response id string (persisted in journey state).
pub fn event_id_hash(id: &str) -> u64 {
    let mut h = fnv::FnvHasher::default();
    h.write(id.as_bytes());
    h.finish()
}

pub const MINUTE_MS: i64 = 60_000;

/// One cell of the per-minute aggregates. `context == None` holds answers of customers
/// with no touchpoint before the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AggKey {
    pub minute: i64,
    pub context: Option<(StageIdx, TouchpointIdx, ChannelIdx, SegmentIdx)>,
}

impl AggKey {
    pub fn new(time_ms: i64, c: Option<Context>) -> Self {
        AggKey {
            minute: time_ms.div_euclid(MINUTE_MS),
            context: c.map(|c| (c.stage, c.touchpoint, c.channel, c.segment)),
        }
    }
}

/// One cell of the per-minute step aggregates: the start's minute and context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StepKey {
    pub minute: i64,
    pub step: StepIdx,
    pub context: (StageIdx, TouchpointIdx, ChannelIdx, SegmentIdx),
}

impl StepKey {
    fn of(v: &StepView) -> Self {
        let c = v.context;
        StepKey {
            minute: v.time.div_euclid(MINUTE_MS),
            step: v.step,
            context: (c.stage, c.touchpoint, c.channel, c.segment),
        }
    }
}

/// A step attempt with its outcome; written again, with the same key (customer, step,
/// start event), when the outcome changes.
#[derive(Debug, Clone, PartialEq)]
pub struct StepFact {
    pub customer: Arc<str>,
    /// The touchpoint that started it.
    pub origin: Origin,
    pub step: StepIdx,
    pub context: Context,
    pub outcome: StageOutcome,
    /// Whether it is no attempt any more (a late, earlier start made it a retry).
    pub withdrawn: bool,
}

/// A stage entry with its outcome; written again, with the same key (customer, entry
/// event), when the outcome changes.
#[derive(Debug, Clone, PartialEq)]
pub struct EntryFact {
    pub customer: Arc<str>,
    /// The touchpoint that entered the stage.
    pub origin: Origin,
    pub context: Context,
    pub journey_seq: u32,
    /// `None` for an entry into the last stage.
    pub outcome: Option<StageOutcome>,
    /// Whether it is no entry any more (a late touchpoint moved it into a later stage).
    pub withdrawn: bool,
}

/// A touchpoint with its journey context. Written again, with the same key, when a later
/// arrival changes its context.
#[derive(Debug, Clone, PartialEq)]
pub struct TouchpointFact {
    /// The journey's key (the customer id, trimmed).
    pub customer: Arc<str>,
    /// Its event time, epoch milliseconds.
    pub time: i64,
    /// The rest of the event as received; the map gives its touchpoint (unless off-map)
    /// and channel names from `context`.
    pub event: PackedTouchpoint,
    pub context: Context,
    pub stage_entered: bool,
    /// Which of the customer's journeys it belongs to (0 for the first).
    pub journey_seq: u32,
    pub source_offset: i64,
}

/// The answer that counts for its slot, with its context.
#[derive(Debug, Clone, PartialEq)]
pub struct AnswerFact {
    /// The journey's key (the customer id, trimmed).
    pub customer: Arc<str>,
    /// Its answer time, epoch milliseconds.
    pub time: i64,
    pub metric: Metric,
    pub score: i8,
    /// The rest of the answer as received.
    pub answer: PackedAnswer,
    pub context: Option<Context>,
    pub attribution: Attribution,
    pub source_offset: i64,
}

/// A valid event that was not applied: too late, or dated in the future. Kept, with why.
#[derive(Debug, Clone, PartialEq)]
pub struct RefusedEvent {
    pub reason: Refusal,
    /// The partition's watermark when it arrived.
    pub watermark_ms: Option<i64>,
    pub source_offset: i64,
    pub event: RefusedPayload,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RefusedPayload {
    Touchpoint(Arc<TouchpointEvent>),
    Answer(Arc<SurveyAnswer>),
}

impl RefusedEvent {
    pub fn customer_id(&self) -> &Option<String> {
        match &self.event {
            RefusedPayload::Touchpoint(t) => &t.customer_id,
            RefusedPayload::Answer(a) => &a.customer_id,
        }
    }

    pub fn input(&self) -> Input {
        match self.event {
            RefusedPayload::Touchpoint(_) => Input::Touchpoints,
            RefusedPayload::Answer(_) => Input::Answers,
        }
    }
}

/// Which layout a restored journey was persisted with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// Its entries' outcomes are in the committed counts.
    WithOutcomes,
    /// Written before stage outcomes were counted.
    BeforeOutcomes,
}

/// Everything derived since the last [`PartitionProcessor::take_batch`].
#[derive(Debug, Default)]
pub struct Batch {
    pub touchpoints: Vec<TouchpointFact>,
    pub answers: Vec<AnswerFact>,
    pub aggregates: Vec<(AggKey, Counts)>,
    pub entries: Vec<EntryFact>,
    pub steps: Vec<StepFact>,
    pub step_aggregates: Vec<(StepKey, StepCounts)>,
    pub refused: Vec<RefusedEvent>,
    /// Customers whose journey changed, with the journey to persist (shared with the
    /// processor until it changes again: taking a batch copies no journey).
    pub journeys: Vec<(Arc<str>, Arc<Journey>)>,
    pub duplicates: u64,
    /// With identity stitching: the state of each device whose visitor's journey is in
    /// `journeys` (none for a key without an entry: nothing held or claimed), persisted with
    /// that journey.
    pub visitors: HashMap<Arc<str>, Visitor>,
    /// Identifications to send to the anonymous ids' partitions before this batch commits.
    pub identifications: Vec<Identification>,
    /// Claimed anonymous touchpoints, customer id set, to send to the customers' partitions
    /// before this batch commits.
    pub forwarded: Vec<Forwarded>,
}

/// What journeys' changes produce until the next batch is taken, and the deadlines of what
/// they reported open.
#[derive(Default)]
struct Effects {
    agg: HashMap<AggKey, Counts, ahash::RandomState>,
    step_agg: HashMap<StepKey, StepCounts, ahash::RandomState>,
    entries: Vec<EntryFact>,
    steps: Vec<StepFact>,
    touchpoints: Vec<TouchpointFact>,
    /// Whether a fact was written again since the last batch.
    rewritten: bool,
    answers: Vec<AnswerFact>,
    /// (deadline, customer) of every entry or attempt reported open: it drops off when the
    /// watermark passes the deadline, unless converted by then.
    deadlines: BTreeSet<(i64, Arc<str>)>,
}

pub struct PartitionProcessor {
    map: Arc<JourneyMap>,
    budgets: Budgets,
    clock: EventClock,
    journeys: Held,
    out: Effects,
    refused: Vec<RefusedEvent>,
    /// Customers whose journey changed since the last batch (each once: see `Journey::dirty`).
    dirty: Vec<Arc<str>>,
    duplicates: u64,
    /// The horizon at the last sweep of all journeys.
    swept_to: i64,
    /// Identity stitching, when on.
    identity: Option<IdentityResolver>,
    forwarded: Vec<Forwarded>,
    /// The latest record timestamp of a touchpoint applied from the input.
    touchpoints_written: Option<i64>,
    /// Customers who asked to be forgotten: see [`crate::erasure`].
    erasures: Arc<Erasures>,
    /// Whether idle journeys are let go once committed (see [`Held`]).
    letting_go: bool,
    /// Journeys with events are let go too, once committed and without an event within
    /// this much event time around the watermark.
    quiet_after: Option<i64>,
    /// The watermark at the last look for quiet journeys.
    quiet_looked_at: i64,
    /// Per batch taken and not yet committed, oldest first: the journeys it persisted or
    /// that were read back before it, which may be let go once it is committed.
    settled: VecDeque<Vec<Arc<str>>>,
    /// Journeys read back from the store since the last batch was taken.
    loaded: Vec<Arc<str>>,
    /// Customers whose entries or steps dropped off since the last batch was taken (their
    /// journeys unchanged): not let go before that batch is committed, since the batch
    /// tells its facts apart by the customer's key as held.
    dropped: Vec<Arc<str>>,
    /// Journeys let go since their deadlines were last dropped (see `purge_deadlines`).
    let_go_since_purge: usize,
    /// Journeys read back since [`Self::take_read_back`].
    read_back: u64,
}

/// What to read back from the store before a record can be applied (see
/// [`PartitionProcessor::to_load`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Load {
    /// The record's journey key, when its journey was let go.
    pub customer: Option<String>,
    /// Every journey let go that waits for a deadline at or before this: the watermark may
    /// pass it.
    pub due_by: Option<i64>,
}

impl Load {
    pub fn is_empty(&self) -> bool {
        self.customer.is_none() && self.due_by.is_none()
    }
}

/// Journeys whose deadlines come within this much event time of what must be read back
/// are read back with it, so that the store is asked about once an hour of event time, not
/// on every record.
const DEADLINES_READ_AHEAD_MS: i64 = 3_600_000;

impl PartitionProcessor {
    pub fn new(map: Arc<JourneyMap>, policy: EventTimePolicy) -> Self {
        Self::resumed(map, EventClock::new(policy))
    }

    /// A processor resuming with a committed clock; journeys follow with [`Self::restore`].
    pub fn resumed(map: Arc<JourneyMap>, clock: EventClock) -> Self {
        PartitionProcessor {
            budgets: Budgets::of(&map),
            map,
            clock,
            journeys: Held::default(),
            out: Effects::default(),
            refused: Vec::new(),
            dirty: Vec::new(),
            duplicates: 0,
            swept_to: i64::MIN,
            identity: None,
            forwarded: Vec::new(),
            touchpoints_written: None,
            erasures: Arc::default(),
            letting_go: false,
            quiet_after: None,
            quiet_looked_at: i64::MIN,
            settled: VecDeque::new(),
            loaded: Vec::new(),
            dropped: Vec::new(),
            let_go_since_purge: 0,
            read_back: 0,
        }
    }

    /// Lets idle journeys go once the batch that persisted them is committed (see
    /// [`Held`]): before each record the caller asks [`Self::to_load`] what to read back.
    /// Not with identity stitching, whose visitors' journeys stay held.
    pub fn letting_go(mut self) -> Self {
        self.letting_go = true;
        self
    }

    /// Also lets journeys with events go, once committed and without an event within
    /// `after_ms` of event time around the watermark (with [`Self::letting_go`]): a
    /// customer between visits costs what an idle one does, and is read back when they
    /// come back. Around, not only before: an input read far ahead of the other (a broker
    /// catching a reader up may hand one topic over long before the other) would otherwise
    /// keep every journey it touched until the other comes as far.
    pub fn letting_quiet_journeys_go(mut self, after_ms: i64) -> Self {
        self.quiet_after = Some(after_ms.max(0));
        self
    }

    fn lets_go(&self) -> bool {
        self.letting_go && self.identity.is_none()
    }

    /// What must be read back from the store before a record of `input` for `customer_id`
    /// dated `time_ms` is applied: its customer's journey if it was let go, and the
    /// journeys let go whose deadlines the watermark will pass with it.
    pub fn to_load(&self, customer_id: &Option<String>, time_ms: i64, input: Input) -> Load {
        if self.journeys.stored_len() == 0 {
            return Load::default();
        }
        Load {
            customer: self.stored_key(customer_id),
            due_by: self.deadlines_to_load(self.clock.watermark_after(input, time_ms)),
        }
    }

    /// What a run of records (customer, event time, input each) needs read back before
    /// they are applied, all at once: the journeys let go of their customers, and those
    /// whose deadlines the watermark will pass with them (the journeys' keys, and the
    /// time to read back deadlines by, as [`Self::to_load`]).
    pub fn to_load_ahead<'a>(
        &self,
        records: impl IntoIterator<Item = (&'a Option<String>, i64, Input)>,
    ) -> (Vec<String>, Option<i64>) {
        if self.journeys.stored_len() == 0 {
            return (Vec::new(), None);
        }
        let mut clock = self.clock.clone();
        let mut customers = Vec::new();
        for (customer_id, time_ms, input) in records {
            clock.observe(input, time_ms);
            customers.extend(self.stored_key(customer_id));
        }
        customers.sort_unstable();
        customers.dedup();
        (customers, self.deadlines_to_load(clock.watermark()))
    }

    /// The journey key of `customer_id` (their pseudonym once erased), if that journey was
    /// let go.
    fn stored_key(&self, customer_id: &Option<String>) -> Option<String> {
        let key = customer_of(customer_id);
        let pseudonym = self.erasures.pseudonym_of(key);
        let key = pseudonym.as_deref().unwrap_or(key);
        (!key.is_empty() && self.journeys.is_stored(key)).then(|| key.to_string())
    }

    /// What must be read back before `input` is set idle (which may move the watermark):
    /// the journeys let go that wait for a deadline at or before the returned time.
    pub fn to_load_when_idle(&self, input: Input) -> Option<i64> {
        if self.journeys.stored_len() == 0 {
            return None;
        }
        self.deadlines_to_load(self.clock.watermark_if_idle(input))
    }

    /// Those due before the watermark will be (`watermark`), and with them those due within
    /// an hour after it.
    fn deadlines_to_load(&self, watermark: Option<i64>) -> Option<i64> {
        let wm = watermark?;
        (self.journeys.earliest_stored() <= wm).then(|| wm.saturating_add(DEADLINES_READ_AHEAD_MS))
    }

    /// The store hashes ([`crate::held::store_hash`]) of the journeys let go that wait for a
    /// deadline at or before `by`: read them back and hand them to [`Self::restore_loaded`].
    pub fn stored_due_by(&mut self, by: i64) -> Vec<u64> {
        self.journeys.stored_due_by(by)
    }

    /// A journey read back from the store: held again if it is the one let go under its
    /// customer (false when it is held already or was not let go: the store's copy is then
    /// older, or another customer's with the same hash).
    pub fn restore_loaded(&mut self, customer: String, journey: Journey, written: Written) -> bool {
        if !self.journeys.take_stored(&customer) {
            return false;
        }
        let key: Arc<str> = customer.as_str().into();
        self.restore(customer, journey, written);
        self.loaded.push(key);
        self.read_back += 1;
        true
    }

    /// Whether the journey of `key` (a journey key, as [`Load::customer`]) is let go.
    pub fn is_stored(&self, key: &str) -> bool {
        self.journeys.is_stored(key)
    }

    /// Those of `hashes` whose journeys are still let go.
    pub fn still_stored(&self, hashes: &[u64]) -> Vec<u64> {
        hashes
            .iter()
            .copied()
            .filter(|h| self.journeys.is_stored_hash(*h))
            .collect()
    }

    /// Journeys let go that the store did not have when asked for them: they are
    /// forgotten (what a restart would also find). Returns how many.
    pub fn drop_stored(&mut self, hashes: &[u64]) -> usize {
        self.journeys.drop_stored(hashes)
    }

    /// A batch taken (the oldest not yet committed) is committed: the journeys it persisted
    /// that are still idle and unchanged are let go.
    pub fn committed(&mut self) {
        let Some(settled) = self.settled.pop_front() else {
            return;
        };
        let quiet = self.quiet_look();
        // A journey also persisted by a later batch (or with facts for the next one) waits
        // for that one.
        let later: HashSet<&Arc<str>> =
            self.settled.iter().flatten().chain(&self.dropped).collect();
        let mut free: Vec<Arc<str>> = settled.into_iter().filter(|k| !later.contains(k)).collect();
        if let Some(busy) = quiet {
            free.extend(
                self.journeys
                    .quiet(busy)
                    .filter(|k| !later.contains(k))
                    .cloned(),
            );
        }
        for key in free {
            self.let_go(&key);
        }
        self.purge_deadlines();
    }

    /// Where journeys are busy (see [`Self::letting_quiet_journeys_go`]), when the
    /// watermark has moved a quarter of the quiet time (at least a minute) since the last
    /// look: each look reads every journey held.
    fn quiet_look(&mut self) -> Option<(i64, i64)> {
        let wm = self.clock.watermark()?;
        let step = (self.quiet_after? / 4).max(60_000);
        if wm < self.quiet_looked_at.saturating_add(step) {
            return None;
        }
        self.quiet_looked_at = wm;
        self.busy()
    }

    /// The event time around the watermark within which a journey is not quiet.
    fn busy(&self) -> Option<(i64, i64)> {
        let (after, wm) = (self.quiet_after?, self.clock.watermark()?);
        Some((wm.saturating_sub(after), wm.saturating_add(after)))
    }

    /// Drops the deadlines of journeys let go (each is read back, its deadlines with it,
    /// before the watermark passes the earliest): they would keep the customers' keys in
    /// memory. Entries of past stage entries and attempts are among them (a deadline is not
    /// taken out when its entry converts), so the journey's own floor cannot name them all.
    /// Done once as many journeys were let go as a quarter of the deadlines, so that its
    /// cost is a constant per journey let go.
    fn purge_deadlines(&mut self) {
        if self.let_go_since_purge == 0
            || self.let_go_since_purge.saturating_mul(4) < self.out.deadlines.len()
        {
            return;
        }
        let held = &self.journeys;
        self.out.deadlines.retain(|(_, k)| held.contains_key(k));
        self.let_go_since_purge = 0;
        self.journeys.shrink();
    }

    /// Lets every idle journey go: all are committed (just restored).
    pub fn let_go_restored(&mut self) {
        if !self.lets_go() {
            return;
        }
        let keys: Vec<Arc<str>> = self.journeys.keys().cloned().collect();
        for key in keys {
            self.let_go(&key);
        }
        self.purge_deadlines();
    }

    fn let_go(&mut self, key: &Arc<str>) {
        let (wm, busy) = (self.clock.watermark(), self.busy());
        let budgets = &self.budgets;
        let open = |j: &Journey| open_deadlines(j, budgets, wm).min();
        if self.journeys.let_go(key, wm, busy, open) {
            self.let_go_since_purge += 1;
        }
    }

    /// Sets who is erased (before [`Self::restore`], and whenever erasures are added):
    /// journeys of newly erased customers go on under their pseudonyms, stripped of
    /// everything personal, and their facts not yet taken are never written. Returns how
    /// many journeys that moved.
    pub fn set_erasures(&mut self, erasures: Arc<Erasures>) -> usize {
        self.erasures = erasures;
        if self.erasures.is_empty() {
            return 0;
        }
        let erased: Vec<(Arc<str>, String)> = self
            .journeys
            .keys()
            .filter_map(|k| Some((k.clone(), self.erasures.pseudonym_of(k)?)))
            .collect();
        for (key, pseudonym) in &erased {
            self.forget(key, pseudonym);
        }
        if let Some(resolver) = self.identity.as_mut() {
            resolver.erase(&self.erasures);
        }
        erased.len()
    }

    /// Moves a customer's journey to their pseudonym. Its counts stay where they are (as
    /// anonymous counts), its open entries keep their deadlines; nothing personal stays.
    fn forget(&mut self, key: &Arc<str>, pseudonym: &str) {
        let Some(mut journey) = self.journeys.remove(key) else {
            return;
        };
        let p: Arc<str> = Arc::from(pseudonym);
        // Both restored (the real id's row was not deleted yet): the pseudonym's is newer.
        let replaced = self.journeys.contains_key(pseudonym);
        let moved: Vec<(i64, Arc<str>)> = self
            .out
            .deadlines
            .iter()
            .filter(|(_, c)| c == key)
            .cloned()
            .collect();
        for (deadline, c) in moved {
            self.out.deadlines.remove(&(deadline, c));
            if !replaced {
                self.out.deadlines.insert((deadline, p.clone()));
            }
        }
        let own = |id: &Option<String>| customer_of(id) == &**key;
        self.out.touchpoints.retain(|f| f.customer != *key);
        self.out.answers.retain(|f| f.customer != *key);
        self.out.entries.retain(|f| f.customer != *key);
        self.out.steps.retain(|f| f.customer != *key);
        self.refused.retain(|r| !own(r.customer_id()));
        if replaced {
            return;
        }
        let j = Arc::make_mut(&mut journey);
        for t in &mut j.touchpoints {
            t.event = t.event.fields().stripped().pack();
        }
        for a in &mut j.answers {
            a.answer = a.answer.fields().stripped().pack();
        }
        j.dirty = false;
        mark_dirty(j, &p, &mut self.dirty);
        self.journeys.insert(p, journey);
    }

    /// Turns identity stitching on (see [`crate::identity`]): anonymous touchpoints wait for
    /// an identification instead of being refused for their missing customer id.
    pub fn with_identity(mut self, policy: IdentityPolicy) -> Self {
        self.identity = Some(IdentityResolver::new(policy));
        self
    }

    /// Touchpoints held for an identification.
    pub fn held_touchpoints(&self) -> usize {
        self.identity.as_ref().map_or(0, IdentityResolver::held)
    }

    pub fn map(&self) -> &JourneyMap {
        &self.map
    }

    pub fn watermark_ms(&self) -> Option<i64> {
        self.clock.watermark()
    }

    /// How far this partition's touchpoint counts are final: as far as its touchpoints have
    /// come, but not past when the latest of them was written (one dated in the future must
    /// not close minutes still to come), or the watermark if that is further. The answers
    /// may lag: the scores wait for the watermark, a broken step need not. With identity
    /// stitching a touchpoint may be held for an identification: the watermark only.
    pub fn touchpoints_final_ms(&self) -> Option<i64> {
        let watermark = self.clock.watermark();
        if self.identity.is_some() {
            return watermark;
        }
        let come = self
            .clock
            .high(Input::Touchpoints)
            .min(self.touchpoints_written);
        come.max(watermark)
    }

    /// The event-time state to persist with a commit.
    pub fn clock(&self) -> &EventClock {
        &self.clock
    }

    /// Customers whose journey is held in memory.
    pub fn tracked_customers(&self) -> usize {
        self.journeys.len()
    }

    /// Journeys let go to the store.
    pub fn stored_journeys(&self) -> usize {
        self.journeys.stored_len()
    }

    /// How many journeys were read back since the last call.
    pub fn take_read_back(&mut self) -> u64 {
        std::mem::take(&mut self.read_back)
    }

    /// Restores a customer's persisted journey (after a restart or rebalance). Entries and
    /// step attempts it reported open wait for their deadlines again. A journey written before stage
    /// outcomes were counted has its entries' outcomes counted now, and is persisted with
    /// the next batch so that this happens once.
    pub fn restore(&mut self, customer: String, journey: Journey, written: Written) {
        let customer: Arc<str> = customer.into();
        // A customer erased since this row was written: their pseudonym's row (written
        // after the erasure) is the newer one wherever both are stored.
        if let Some(pseudonym) = self.erasures.pseudonym_of(&customer) {
            if self.journeys.contains_key(pseudonym.as_str()) {
                return;
            }
            self.restore_as(customer.clone(), journey, written);
            self.forget(&customer, &pseudonym);
            return;
        }
        self.restore_as(customer, journey, written);
    }

    fn restore_as(&mut self, customer: Arc<str>, journey: Journey, written: Written) {
        if written == Written::BeforeOutcomes {
            self.restore_counted_before_outcomes(customer, journey);
            return;
        }
        let wm = self.clock.watermark();
        for deadline in open_deadlines(&journey, &self.budgets, wm) {
            self.out.deadlines.insert((deadline, customer.clone()));
        }
        self.journeys.insert(customer, Arc::new(journey));
    }

    /// A journey stored before outcomes, steps and journey ends were counted: its counts
    /// were derived by the rules of then (no journey ends, no outcomes, no steps), so those
    /// views are taken out and today's put in, facts included; persisted with the next batch
    /// so that this happens once. A folded journey ends a budget after its last touchpoint.
    fn restore_counted_before_outcomes(&mut self, customer: Arc<str>, mut journey: Journey) {
        let floor = &mut journey.floor;
        if let (Some(stage), Some(((time, _), _))) = (floor.progress.furthest, floor.last) {
            if floor.progress.open_until == i64::MAX {
                floor.progress.open_until = self.budgets.open_until(stage, time);
            }
        }
        let mut before = journey.derive(&self.budgets.endless());
        for v in before.touchpoints.iter_mut() {
            v.outcome = None;
        }
        before.steps.clear();
        let after = journey.derive(&self.budgets);
        let mut out = Emitter {
            out: &mut self.out,
            budgets: &self.budgets,
            watermark: self.clock.watermark(),
            customer: &customer,
        };
        emit_diff(&journey, &before, &after, None, &mut out);
        mark_dirty(&mut journey, &customer, &mut self.dirty);
        self.journeys.insert(customer, Arc::new(journey));
    }

    /// An input read to its end and quiet no longer holds the watermark back. Journeys are
    /// swept by the same rule as on any record (once the horizon has moved a day): a quiet
    /// partition goes idle again after every lull, and each sweep reads every journey it
    /// holds (6 % of a catch-up's CPU went to the sweeps when each idle input swept). So a
    /// journey untouched since the last sweep may hold up to a day of events it could fold.
    pub fn set_idle(&mut self, input: Input, idle: bool) {
        self.clock.set_idle(input, idle);
        self.pass_deadlines();
        self.maybe_sweep();
    }

    /// Reports as dropped off every open entry whose deadline the watermark has passed.
    /// Runs whenever the watermark moves, before anything else is applied, so every count
    /// and fact always reflects the current watermark.
    fn pass_deadlines(&mut self) {
        let Some(wm) = self.clock.watermark() else {
            return;
        };
        while self.out.deadlines.first().is_some_and(|(d, _)| *d < wm) {
            let Some((deadline, customer)) = self.out.deadlines.pop_first() else {
                break;
            };
            // Gone (converted, no longer an entry, or folded) entries need nothing. The
            // facts carry the key the journey is held under: the deadline's may be an older
            // copy, from before the journey was let go and read back, and a batch tells
            // facts apart by it.
            let Some((customer, journey)) = self.journeys.get_with_key(&customer) else {
                continue;
            };
            let customer = customer.clone();
            let views = journey.touchpoint_views(&self.budgets);
            for a in journey.step_views(&self.budgets, &views.touchpoints) {
                if a.outcome != (Outcome::Awaiting { deadline }) {
                    continue;
                }
                let Some(origin) = journey.step_start(&a) else {
                    continue;
                };
                let cell = self.out.step_agg.entry(StepKey::of(&a)).or_default();
                cell.open -= 1;
                cell.dropoffs += 1;
                self.out.rewritten = true;
                self.out.steps.push(StepFact {
                    customer: customer.clone(),
                    origin,
                    step: a.step,
                    context: a.context,
                    outcome: StageOutcome::Dropped { deadline },
                    withdrawn: false,
                });
            }
            if self.lets_go() {
                self.dropped.push(customer.clone());
            }
            let pending = journey.floor.pending.as_ref().map(|p| p.origin.clone());
            let kept = journey.touchpoints.iter().map(Some);
            let entries = pending
                .into_iter()
                .zip(views.pending)
                .map(|(o, v)| (Some(o), None, v))
                .chain(kept.zip(views.touchpoints).map(|(t, v)| (None, t, v)));
            for (folded, kept, v) in entries {
                if v.outcome != Some(Outcome::Awaiting { deadline }) {
                    continue;
                }
                let Some(origin) = folded.or_else(|| kept.map(Origin::of)) else {
                    continue;
                };
                let cell = self
                    .out
                    .agg
                    .entry(AggKey::new(origin.time, Some(v.context)))
                    .or_default();
                cell.stage_open -= 1;
                cell.stage_dropoffs += 1;
                self.out.rewritten = true;
                self.out.entries.push(EntryFact {
                    customer: customer.clone(),
                    origin,
                    context: v.context,
                    journey_seq: v.journey_seq,
                    outcome: Some(StageOutcome::Dropped { deadline }),
                    withdrawn: false,
                });
            }
        }
    }

    /// Checks everything of a touchpoint but its customer id (which identity stitching may
    /// still set) — the event id, the time and the names the map must know — and resolves
    /// those names.
    fn resolved(&self, ev: &TouchpointEvent) -> Result<Resolved, Invalid> {
        if ev.event_id.is_empty() {
            return Err(Invalid::MissingId);
        }
        valid_time(ev.event_time)?;
        self.resolve(ev)
    }

    /// Applies a touchpoint read from this partition's input. `record_ms` is its Kafka record
    /// timestamp (for the future bound). With identity stitching an anonymous touchpoint may
    /// wait instead, or go to its customer's partition (in the next batch's `forwarded`).
    pub fn on_touchpoint(
        &mut self,
        ev: TouchpointEvent,
        source_offset: i64,
        record_ms: Option<i64>,
    ) -> Result<(), Invalid> {
        if self.identity.is_none() {
            return self.apply_touchpoint(ev, source_offset, Arrival::Input(record_ms));
        }
        let resolved = self.resolved(&ev)?;
        if customer_of(&ev.customer_id).starts_with(PSEUDONYM_PREFIX) {
            return Err(Invalid::ReservedCustomerId);
        }
        // An erased customer's touchpoint is stripped, but its device still identifies, under
        // the pseudonym: a replay stitches what the live run stitched before the erasure.
        let mut ev = ev;
        if let Some(p) = ev
            .customer_id
            .as_deref()
            .and_then(|c| self.erasures.pseudonym_of(c))
        {
            let device = ev.anonymous_id.take();
            strip_touchpoint(&mut ev, p);
            ev.anonymous_id = device;
        }
        let time = ev.event_time;
        let Some(resolver) = self.identity.as_mut() else {
            return Ok(());
        };
        match resolver.route(ev, source_offset, &self.clock, record_ms)? {
            Route::Apply(mut ev) => {
                if is_pseudonym(customer_of(&ev.customer_id)) {
                    ev.anonymous_id = None;
                } else {
                    valid_customer(&ev.customer_id)?;
                }
                self.apply_resolved(ev, resolved, source_offset, Arrival::Input(record_ms))
            }
            route => {
                // Arrived here: it moves this input's event time like any touchpoint.
                self.clock.observe(Input::Touchpoints, time);
                self.pass_deadlines();
                if let Route::Forward(event, partition) = route {
                    self.forwarded.push(Forwarded {
                        routed: Routed {
                            event,
                            source_offset,
                        },
                        partition,
                    });
                }
                Ok(())
            }
        }
    }

    /// Applies a customer's touchpoint stitched on another partition (claimed there for
    /// this customer). It was checked against the clock there; it does not move this
    /// partition's event time, which follows this partition's inputs.
    pub fn on_stitched(&mut self, ev: TouchpointEvent, source_offset: i64) -> Result<(), Invalid> {
        if !is_pseudonym(customer_of(&ev.customer_id)) {
            return self.apply_touchpoint(ev, source_offset, Arrival::Internal);
        }
        // Claimed for an erased customer, whose pseudonym only journeys write: kept as the
        // journey keeps the customer's own, naming no device.
        let mut ev = ev;
        let pseudonym = customer_of(&ev.customer_id).to_string();
        strip_touchpoint(&mut ev, pseudonym);
        let resolved = self.resolved(&ev)?;
        self.apply_resolved(ev, resolved, source_offset, Arrival::Internal)
    }

    /// An identification from the customer's partition reached this (the anonymous id's)
    /// partition: the touchpoints it claims go to the customer's partition.
    pub fn on_identification(&mut self, mut id: Identification) {
        // Sent before the customer's erasure reached this partition.
        if let Some(p) = self.erasures.pseudonym_of(&id.customer_id) {
            id.customer_id = p;
        }
        if let Some(resolver) = self.identity.as_mut() {
            let claimed = resolver.on_identification(id);
            self.forwarded.extend(claimed);
        }
    }

    /// The identity watermark (the lowest every partition published) moved: touchpoints
    /// whose wait is over count as their visitors'.
    pub fn release_identities(&mut self, identity_watermark: i64) {
        let Some(resolver) = self.identity.as_mut() else {
            return;
        };
        for r in resolver.release(identity_watermark) {
            // Cannot be refused: it was valid when it arrived and its visitor's key is a
            // customer id (only the watermark may have moved past it: then it is kept as
            // refused, like any late touchpoint).
            let applied = self.apply_touchpoint(r.event, r.source_offset, Arrival::Internal);
            debug_assert!(applied.is_ok());
        }
    }

    /// Restores a device's persisted identity state.
    pub fn restore_visitor(&mut self, device: String, visitor: Visitor) {
        if let Some(resolver) = self.identity.as_mut() {
            resolver.restore(device, visitor, &self.erasures);
        }
    }

    fn apply_touchpoint(
        &mut self,
        ev: TouchpointEvent,
        source_offset: i64,
        arrival: Arrival,
    ) -> Result<(), Invalid> {
        valid_customer(&ev.customer_id)?;
        let resolved = self.resolved(&ev)?;
        self.apply_resolved(ev, resolved, source_offset, arrival)
    }

    /// Applies a touchpoint whose customer id and names were checked (`resolved`).
    fn apply_resolved(
        &mut self,
        ev: TouchpointEvent,
        (touchpoint, channel, stage, segment): Resolved,
        source_offset: i64,
        arrival: Arrival,
    ) -> Result<(), Invalid> {
        let mut ev = ev;
        self.erasures.scrub_touchpoint(&mut ev);
        let time = ev.event_time;
        let checked = match arrival {
            Arrival::Input(record_ms) => self.clock.check(time, record_ms),
            Arrival::Internal => self.clock.check_late(time),
        };
        if let Err(reason) = checked {
            self.refuse(
                reason,
                source_offset,
                RefusedPayload::Touchpoint(Arc::new(ev)),
            );
            return Ok(());
        }
        if let Arrival::Input(record_ms) = arrival {
            self.clock.observe(Input::Touchpoints, time);
            self.touchpoints_written = self.touchpoints_written.max(record_ms.filter(|r| *r > 0));
            self.pass_deadlines();
        }
        let entry = TouchpointEntry {
            id: event_id_hash(&ev.event_id),
            time,
            touchpoint,
            channel,
            stage,
            segment,
            event: TouchpointFields::of(&ev, touchpoint != OFF_MAP).pack(),
            source_offset,
        };
        self.apply(customer_of(&ev.customer_id), |journey, out| {
            if journey.has_touchpoint(entry.id) {
                return false;
            }
            insert_touchpoint(journey, entry, out);
            true
        });
        Ok(())
    }

    /// Applies a survey answer. `record_ms` is its Kafka record timestamp.
    pub fn on_answer(
        &mut self,
        ans: SurveyAnswer,
        source_offset: i64,
        record_ms: Option<i64>,
    ) -> Result<(), Invalid> {
        valid_customer(&ans.customer_id)?;
        if ans.response_id.is_empty() {
            return Err(Invalid::MissingId);
        }
        valid_time(ans.answer_time)?;
        if !ans.metric.is_valid(ans.score) {
            return Err(Invalid::ScoreOutOfRange);
        }
        let mut ans = ans;
        self.erasures.scrub_answer(&mut ans);
        let time = ans.answer_time;
        if let Err(reason) = self.clock.check(time, record_ms) {
            self.refuse(reason, source_offset, RefusedPayload::Answer(Arc::new(ans)));
            return Ok(());
        }
        self.clock.observe(Input::Answers, time);
        self.pass_deadlines();
        let entry = AnswerEntry {
            response: event_id_hash(&ans.response_id),
            named: ans.touchpoint_event_id.as_deref().map(event_id_hash),
            time,
            metric: ans.metric,
            // In range for its metric (checked above): 0..=10.
            score: ans.score as i8,
            fixed: None,
            answer: AnswerFields::of(&ans).pack(),
            source_offset,
        };
        self.apply(customer_of(&ans.customer_id), |journey, out| {
            if journey.has_answer(&entry) {
                return false;
            }
            insert_answer(journey, entry, out);
            true
        });
        Ok(())
    }

    /// Runs `insert` on the customer's journey, folded to the current horizon first; it
    /// returns false for a duplicate.
    fn apply(
        &mut self,
        customer: &str,
        insert: impl FnOnce(&mut Journey, &mut Emitter<'_>) -> bool,
    ) {
        let horizon = self.clock.horizon();
        debug_assert!(
            !self.journeys.is_stored(customer),
            "a journey let go is read back before it changes"
        );
        let (customer, journey) = self.journeys.live(customer);
        let customer = &customer;
        let journey = Arc::make_mut(journey);
        if let Some(h) = horizon {
            journey.prune(h, &self.budgets);
        }
        let mut out = Emitter {
            out: &mut self.out,
            budgets: &self.budgets,
            watermark: self.clock.watermark(),
            customer,
        };
        if insert(journey, &mut out) {
            mark_dirty(journey, customer, &mut self.dirty);
        } else {
            self.duplicates += 1;
            self.journeys.settle(customer);
        }
        self.maybe_sweep();
    }

    /// Takes everything derived since the last call.
    pub fn take_batch(&mut self) -> Batch {
        let aggregates = drain_nonzero(&mut self.out.agg, |c| c.is_zero());
        let mut journeys: Vec<(Arc<str>, Arc<Journey>)> = std::mem::take(&mut self.dirty)
            .into_iter()
            .filter_map(|c| {
                let j = self.journeys.live_if_held(&c)?;
                Arc::make_mut(j).dirty = false;
                let j = j.clone();
                self.journeys.settle(&c);
                Some((c, j))
            })
            .collect();
        // A touchpoint (stage entry, step attempt) written twice in a batch keeps its last
        // fact only: rows of one INSERT have no order a ReplacingMergeTree could tell "last"
        // by.
        let mut facts = std::mem::take(&mut self.out.touchpoints);
        let mut entries = std::mem::take(&mut self.out.entries);
        let mut steps = std::mem::take(&mut self.out.steps);
        if std::mem::take(&mut self.out.rewritten) {
            keep_last(&mut facts, |f| (f.event.as_ptr(), 0, 0));
            keep_last(&mut entries, |f| (f.customer.as_ptr(), f.origin.id, 0));
            keep_last(&mut steps, |f| {
                (f.customer.as_ptr(), f.origin.id, u16::from(f.step) + 1)
            });
        }
        // Erased customers' events count, but no fact of theirs is written.
        let erased = |id: &Option<String>| is_pseudonym(customer_of(id));
        facts.retain(|f| !is_pseudonym(&f.customer));
        entries.retain(|f| !is_pseudonym(&f.customer));
        steps.retain(|f| !is_pseudonym(&f.customer));
        self.out.answers.retain(|f| !is_pseudonym(&f.customer));
        self.refused.retain(|r| !erased(r.customer_id()));
        let (identifications, visitors) = self.take_identity(&mut journeys);
        if self.lets_go() {
            let mut settled: Vec<Arc<str>> = std::mem::take(&mut self.loaded);
            settled.append(&mut self.dropped);
            settled.extend(journeys.iter().map(|(k, _)| k.clone()));
            self.settled.push_back(settled);
        }
        // The next batch is likely as large as this one: start at its size instead of
        // growing (and copying) from empty.
        self.out.touchpoints = Vec::with_capacity(facts.len());
        let answers = Vec::with_capacity(self.out.answers.len());
        Batch {
            touchpoints: facts,
            answers: std::mem::replace(&mut self.out.answers, answers),
            aggregates,
            entries,
            steps,
            step_aggregates: drain_nonzero(&mut self.out.step_agg, |c| c.is_zero()),
            refused: std::mem::take(&mut self.refused),
            journeys,
            duplicates: std::mem::take(&mut self.duplicates),
            visitors,
            identifications,
            forwarded: std::mem::take(&mut self.forwarded),
        }
    }

    /// The identifications to send, and the identity state of every device whose visitor
    /// journey is persisted with this batch (the changed ones added to `journeys`): a
    /// visitor's row holds both.
    fn take_identity(
        &mut self,
        journeys: &mut Vec<(Arc<str>, Arc<Journey>)>,
    ) -> (Vec<Identification>, HashMap<Arc<str>, Visitor>) {
        let Some(resolver) = self.identity.as_mut() else {
            return Default::default();
        };
        let identifications = resolver.take_identifications();
        let changed = resolver.take_changed();
        let mut keys: std::collections::HashSet<Arc<str>> = if changed.is_empty() {
            Default::default()
        } else {
            journeys.iter().map(|(k, _)| k.clone()).collect()
        };
        for (device, _) in changed {
            let key: Arc<str> = visitor_key(&device).into();
            if keys.insert(key.clone()) {
                let journey = self.journeys.get(&key).unwrap_or_default();
                journeys.push((key, journey));
            }
        }
        let visitors = journeys
            .iter()
            .filter_map(|(key, _)| {
                let device = key.strip_prefix(VISITOR_PREFIX)?;
                Some((key.clone(), resolver.visitor(device)?.clone()))
            })
            .collect();
        (identifications, visitors)
    }

    fn resolve(&self, ev: &TouchpointEvent) -> Result<Resolved, Invalid> {
        // A touchpoint the map does not declare is off-map: counted, never dead-lettered.
        let tp = self.map.touchpoint(&ev.touchpoint).unwrap_or(OFF_MAP);
        let channel = self
            .map
            .channel(&ev.channel)
            .ok_or(Invalid::UnknownChannel)?;
        let stage = match &ev.stage {
            Some(s) if self.map.is_stage_elsewhere(s) => self.own_stage(tp),
            Some(s) => self.map.stage(s).ok_or(Invalid::UnknownStage)?,
            None => self.own_stage(tp),
        };
        let segment = match ev.segment.as_deref() {
            Some(s) => Some(self.map.segment(s).ok_or(Invalid::UnknownSegment)?),
            None => None,
        };
        Ok((tp, channel, stage, segment))
    }

    /// The stage the map gives touchpoint `tp` (none when off-map).
    fn own_stage(&self, tp: TouchpointIdx) -> StageIdx {
        self.map
            .touchpoints
            .get(usize::from(tp))
            .map_or(NO_STAGE, |t| t.stage)
    }

    fn refuse(&mut self, reason: Refusal, source_offset: i64, event: RefusedPayload) {
        self.refused.push(RefusedEvent {
            reason,
            watermark_ms: self.clock.watermark(),
            source_offset,
            event,
        });
    }

    /// Once the horizon has moved a day since the last sweep, folds every journey's events
    /// before it into its floor (idle customers then hold only their floor).
    fn maybe_sweep(&mut self) {
        const SWEEP_EVERY_MS: i64 = 86_400_000;
        if self
            .clock
            .horizon()
            .is_some_and(|h| h >= self.swept_to.saturating_add(SWEEP_EVERY_MS))
        {
            self.sweep();
        }
    }

    fn sweep(&mut self) {
        let Some(h) = self.clock.horizon() else {
            return;
        };
        let (budgets, dirty) = (&self.budgets, &mut self.dirty);
        self.journeys.sweep(h, |customer, journey| {
            // Most journeys have nothing to fold; only those that do are copied (if shared).
            if journey.can_prune(h) {
                let journey = Arc::make_mut(journey);
                if journey.prune(h, budgets) {
                    mark_dirty(journey, customer, dirty);
                }
            }
        });
        self.swept_to = h;
    }
}

/// The deadlines a journey's stage entries and step attempts still wait for at `watermark`.
fn open_deadlines(
    journey: &Journey,
    budgets: &Budgets,
    watermark: Option<i64>,
) -> impl Iterator<Item = i64> {
    let views = journey.touchpoint_views(budgets);
    let steps = journey.step_views(budgets, &views.touchpoints);
    let outcomes: Vec<_> = views
        .pending
        .iter()
        .chain(&views.touchpoints)
        .filter_map(|v| v.outcome)
        .chain(steps.iter().map(|a| a.outcome))
        .collect();
    outcomes
        .into_iter()
        .filter_map(move |o| match o.at(watermark) {
            StageOutcome::Open { deadline } => Some(deadline),
            _ => None,
        })
}

/// A touchpoint's names as the map's indices: touchpoint, channel, stage, segment.
type Resolved = (TouchpointIdx, ChannelIdx, StageIdx, Option<SegmentIdx>);

/// How a touchpoint reached the processor.
#[derive(Debug, Clone, Copy)]
enum Arrival {
    /// Read from this partition's input, with its record timestamp.
    Input(Option<i64>),
    /// Stitched on another partition, or released after waiting here: checked on arrival.
    Internal,
}

/// Where the consequences of a journey's change go.
struct Emitter<'a> {
    out: &'a mut Effects,
    budgets: &'a Budgets,
    watermark: Option<i64>,
    customer: &'a Arc<str>,
}

impl Emitter<'_> {
    fn touchpoint(
        &mut self,
        t: &TouchpointEntry,
        old: Option<TouchpointView>,
        new: TouchpointView,
    ) {
        if old == Some(new) {
            return;
        }
        self.count(t.time, old, new);
        let placed = |v: TouchpointView| (v.context, v.entered, v.journey_seq);
        if old.map(placed) != Some(placed(new)) {
            self.out.rewritten |= old.is_some();
            self.out.touchpoints.push(TouchpointFact {
                customer: self.customer.clone(),
                time: t.time,
                event: t.event.clone(),
                context: new.context,
                stage_entered: new.entered,
                journey_seq: new.journey_seq,
                source_offset: t.source_offset,
            });
        }
        self.entry(|| Origin::of(t), old, new);
    }

    /// The floor's pending entry changed outcome.
    fn pending(&mut self, origin: &Origin, old: Option<TouchpointView>, new: TouchpointView) {
        if old == Some(new) {
            return;
        }
        self.count(origin.time, old, new);
        self.entry(|| origin.clone(), old, new);
    }

    /// Moves what a touchpoint view counts from `old` to `new`, and waits for the deadline
    /// of an entry reported open.
    fn count(&mut self, time: i64, old: Option<TouchpointView>, new: TouchpointView) {
        // One lookup when only the outcome changed, the common case.
        let same_cell = old.is_some_and(|o| o.context == new.context);
        if let Some(o) = old.filter(|_| !same_cell) {
            let cell = self
                .out
                .agg
                .entry(AggKey::new(time, Some(o.context)))
                .or_default();
            tally(cell, &o, self.watermark, -1);
        }
        let cell = self
            .out
            .agg
            .entry(AggKey::new(time, Some(new.context)))
            .or_default();
        if let Some(o) = old.filter(|_| same_cell) {
            tally(cell, &o, self.watermark, -1);
        }
        if let Some(StageOutcome::Open { deadline }) = tally(cell, &new, self.watermark, 1) {
            self.out.deadlines.insert((deadline, self.customer.clone()));
        }
    }

    /// Writes the stage entry's fact when the entry or its reported outcome changed.
    fn entry(
        &mut self,
        origin: impl FnOnce() -> Origin,
        old: Option<TouchpointView>,
        new: TouchpointView,
    ) {
        let wm = self.watermark;
        let reported = |v: TouchpointView| {
            v.entered
                .then(|| (v.context, v.journey_seq, v.outcome.map(|o| o.at(wm))))
        };
        let was = old.and_then(reported);
        let is = reported(new);
        if was == is {
            return;
        }
        let Some((context, journey_seq, outcome)) = is.or(was) else {
            return;
        };
        self.out.rewritten |= was.is_some();
        self.out.entries.push(EntryFact {
            customer: self.customer.clone(),
            origin: origin(),
            context,
            journey_seq,
            outcome,
            withdrawn: is.is_none(),
        });
    }

    /// A step attempt started at `origin` changed: from `old` to `new` (`None`: no attempt).
    fn step(&mut self, origin: Origin, old: Option<StepView>, new: Option<StepView>) {
        if old == new {
            return;
        }
        if let Some(o) = old {
            let cell = self.out.step_agg.entry(StepKey::of(&o)).or_default();
            tally_step(cell, o.outcome.at(self.watermark), -1);
            self.out.rewritten = true;
        }
        let Some(v) = new.or(old) else {
            return;
        };
        let outcome = v.outcome.at(self.watermark);
        if let Some(n) = new {
            let cell = self.out.step_agg.entry(StepKey::of(&n)).or_default();
            tally_step(cell, outcome, 1);
            if let StageOutcome::Open { deadline } = outcome {
                self.out.deadlines.insert((deadline, self.customer.clone()));
            }
        }
        self.out.steps.push(StepFact {
            customer: self.customer.clone(),
            origin,
            step: v.step,
            context: v.context,
            outcome,
            withdrawn: new.is_none(),
        });
    }

    fn answer(&mut self, a: &AnswerEntry, old: Option<AnswerView>, new: AnswerView) {
        if old == Some(new) {
            return;
        }
        let score = i32::from(a.score);
        if let Some(o) = old.filter(|o| o.counted) {
            self.out
                .agg
                .entry(AggKey::new(a.time, o.context))
                .or_default()
                .add_answer(a.metric, score, -1);
        }
        if new.counted {
            self.out
                .agg
                .entry(AggKey::new(a.time, new.context))
                .or_default()
                .add_answer(a.metric, score, 1);
            self.out.answers.push(AnswerFact {
                customer: self.customer.clone(),
                time: a.time,
                metric: a.metric,
                score: a.score,
                answer: a.answer.clone(),
                context: new.context,
                attribution: new.attribution,
                source_offset: a.source_offset,
            });
        }
    }
}

/// Adds (`sign` = 1) or retracts (`sign` = -1) what a touchpoint view counts at the
/// watermark; returns its outcome as reported.
fn tally(
    cell: &mut Counts,
    v: &TouchpointView,
    watermark: Option<i64>,
    sign: i64,
) -> Option<StageOutcome> {
    cell.touchpoints += sign;
    cell.stage_entries += sign * i64::from(v.entered);
    let outcome = v.outcome.map(|o| o.at(watermark));
    match outcome {
        Some(StageOutcome::Converted { after_ms, .. }) => {
            cell.stage_conversions += sign;
            cell.convert_ms_sum += sign * after_ms;
        }
        Some(StageOutcome::Dropped { .. }) => cell.stage_dropoffs += sign,
        Some(StageOutcome::Open { .. }) => cell.stage_open += sign,
        None => {}
    }
    outcome
}

/// Keeps the last of the facts with the same key, in order.
fn keep_last<T>(facts: &mut Vec<T>, key: impl Fn(&T) -> (*const u8, u64, u16)) {
    let mut seen =
        hashbrown::HashSet::with_capacity_and_hasher(facts.len(), ahash::RandomState::new());
    facts.reverse();
    facts.retain(|f| seen.insert(key(f)));
    facts.reverse();
}

/// Adds (`sign` = 1) or retracts (`sign` = -1) a step attempt with its reported outcome.
fn tally_step(cell: &mut StepCounts, outcome: StageOutcome, sign: i64) {
    cell.starts += sign;
    match outcome {
        StageOutcome::Converted { after_ms, .. } => cell.add_conversion(after_ms, sign),
        StageOutcome::Dropped { .. } => cell.dropoffs += sign,
        StageOutcome::Open { .. } => cell.open += sign,
    }
}

/// Inserts a touchpoint and emits what changed. A touchpoint that is the customer's latest,
/// that decides no earlier entry's outcome, starts or converts no step and that no kept
/// answer could be attributed to,
/// changes nothing else: only its own view is derived. Otherwise the whole journey is
/// derived before and after.
fn insert_touchpoint(journey: &mut Journey, entry: TouchpointEntry, out: &mut Emitter<'_>) {
    let progress = journey.progress(out.budgets);
    let affects_others = journey
        .touchpoints
        .last()
        .is_some_and(|l| (l.time, l.id) > (entry.time, entry.id))
        || progress.would_decide(entry.stage, entry.time)
        || journey
            .answers
            .iter()
            .any(|a| a.named == Some(entry.id) || (a.time >= entry.time && a.fixed.is_none()));
    if affects_others {
        let before = journey.derive(out.budgets);
        let at = journey.insert_touchpoint(entry);
        let after = journey.derive(out.budgets);
        emit_diff(journey, &before, &after, Some(at), out);
        return;
    }
    // The latest touchpoint changes no other touchpoint's or answer's view; if it starts or
    // converts a step, only step attempts change besides its own view.
    let steps = out.budgets.steps.concerns(entry.touchpoint);
    let mut views = if steps {
        journey.touchpoint_views(out.budgets).touchpoints
    } else {
        Vec::new()
    };
    let before = if steps {
        journey.step_views(out.budgets, &views)
    } else {
        Vec::new()
    };
    let at = journey.insert_touchpoint(entry);
    let view = journey.view_after(at, progress, out.budgets);
    out.touchpoint(&journey.touchpoints[at], None, view);
    if steps {
        views.push(view);
        let after = journey.step_views(out.budgets, &views);
        emit_step_diff(journey, &before, &after, out);
    }
}

/// Inserts an answer and emits what changed: its own view, and its slot's previous latest.
fn insert_answer(journey: &mut Journey, entry: AnswerEntry, out: &mut Emitter<'_>) {
    let slot = entry.slot();
    let rivals: Vec<(usize, AnswerView)> = journey
        .answers
        .iter()
        .enumerate()
        .filter(|(_, a)| a.slot() == slot)
        .map(|(j, _)| (j, journey.answer_view(j, out.budgets)))
        .collect();
    journey.insert_answer(entry);
    let new = journey.answers.len() - 1;
    out.answer(
        &journey.answers[new],
        None,
        journey.answer_view(new, out.budgets),
    );
    for (j, old) in rivals {
        out.answer(
            &journey.answers[j],
            Some(old),
            journey.answer_view(j, out.budgets),
        );
    }
}

/// Emits the difference between two derivations; `inserted` is the index of a touchpoint
/// that `before` does not have.
fn emit_diff(
    journey: &Journey,
    before: &Derived,
    after: &Derived,
    inserted: Option<usize>,
    out: &mut Emitter<'_>,
) {
    if let (Some(p), Some(new)) = (&journey.floor.pending, after.pending) {
        out.pending(&p.origin, before.pending, new);
    }
    for (i, new) in after.touchpoints.iter().enumerate() {
        let old = match inserted {
            Some(at) if i == at => None,
            Some(at) if i > at => before.touchpoints.get(i - 1).copied(),
            _ => before.touchpoints.get(i).copied(),
        };
        out.touchpoint(&journey.touchpoints[i], old, *new);
    }
    for (j, new) in after.answers.iter().enumerate() {
        out.answer(&journey.answers[j], before.answers.get(j).copied(), *new);
    }
    emit_step_diff(journey, &before.steps, &after.steps, out);
}

/// Emits the step attempts that changed, appeared or disappeared.
fn emit_step_diff(
    journey: &Journey,
    before: &[StepView],
    after: &[StepView],
    out: &mut Emitter<'_>,
) {
    for new in after {
        let old = before.iter().find(|o| o.key() == new.key()).copied();
        if old == Some(*new) {
            continue;
        }
        if let Some(origin) = journey.step_start(new) {
            out.step(origin, old, Some(*new));
        }
    }
    for old in before {
        if !after.iter().any(|n| n.key() == old.key()) {
            if let Some(t) = journey.touchpoints.iter().find(|t| t.id == old.id) {
                out.step(Origin::of(t), Some(*old), None);
            }
        }
    }
}

/// The cells of `map` that are not zero, leaving it empty (with its capacity). Sized up
/// front: collected from the filter, the Vec grew by doubling, and each step copied and
/// touched fresh pages (2 % of a catch-up's CPU).
fn drain_nonzero<K: Eq + std::hash::Hash, V>(
    map: &mut HashMap<K, V, ahash::RandomState>,
    is_zero: impl Fn(&V) -> bool,
) -> Vec<(K, V)> {
    let mut cells = Vec::with_capacity(map.len());
    cells.extend(map.drain().filter(|(_, c)| !is_zero(c)));
    // Room for a batch like this one, not for the largest ever (a catch-up's first batch
    // may hold a day of one input's cells).
    map.shrink_to(cells.len());
    cells
}

/// Remembers that a journey must be persisted with the next batch: one key copy per
/// customer and batch, not per event.
fn mark_dirty(journey: &mut Journey, customer: &Arc<str>, dirty: &mut Vec<Arc<str>>) {
    if !journey.dirty {
        journey.dirty = true;
        dirty.push(customer.clone());
    }
}

/// The journey's key: the customer id as validated by [`valid_customer`].
fn customer_of(id: &Option<String>) -> &str {
    id.as_deref().map_or("", str::trim)
}

/// Event times from 1970-01-01 to 2106-02-07: what a ClickHouse `DateTime` (and so every
/// per-minute figure) holds. Anything else is a broken clock or a wrong unit.
fn valid_time(ms: i64) -> Result<(), Invalid> {
    const LAST_MS: i64 = u32::MAX as i64 * 1000 + 999;
    if (0..=LAST_MS).contains(&ms) {
        Ok(())
    } else {
        Err(Invalid::TimeOutOfRange)
    }
}

fn valid_customer(id: &Option<String>) -> Result<&str, Invalid> {
    match id.as_deref().map(str::trim) {
        Some(s) if s.starts_with(PSEUDONYM_PREFIX) => Err(Invalid::ReservedCustomerId),
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(Invalid::MissingCustomerId),
    }
}
