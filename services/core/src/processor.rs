//! The journey processor of one input partition (the same partition number of both input
//! topics, which are co-partitioned by customer id). It validates records, drives each
//! customer's [`JourneyState`], attributes answers, and accumulates exact per-minute counts
//! until the caller takes them as a [`Batch`] to commit.
//!
//! Everything it produces is a function of the input records and the restored state, not of
//! how the two topics happen to interleave: an answer whose context is not yet known waits
//! (in the customer's state) until its touchpoint arrives or event time passes it.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hasher;
use std::sync::Arc;

use crate::events::{Invalid, SurveyAnswer, TouchpointEvent};
use crate::journey::{Applied, Attribution, Context, JourneyState, PendingAnswer};
use crate::journey_map::{ChannelIdx, JourneyMap, SegmentIdx, StageIdx, TouchpointIdx};
use crate::metrics::Counts;

/// Stable 64-bit id of an event id string (persisted in journey state).
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
    fn new(time_ms: i64, c: Option<Context>) -> Self {
        AggKey {
            minute: time_ms.div_euclid(MINUTE_MS),
            context: c.map(|c| (c.stage, c.touchpoint, c.channel, c.segment)),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TouchpointFact {
    /// The event as received; its `customer_id` is the journey's key.
    pub event: TouchpointEvent,
    pub context: Context,
    pub stage_entered: bool,
    pub source_offset: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AnswerFact {
    /// The answer as received; its `customer_id` is the journey's key.
    pub answer: SurveyAnswer,
    pub context: Option<Context>,
    pub attribution: Attribution,
    pub source_offset: i64,
}

/// Everything derived since the last [`PartitionProcessor::take_batch`].
#[derive(Debug, Default)]
pub struct Batch {
    pub touchpoints: Vec<TouchpointFact>,
    pub answers: Vec<AnswerFact>,
    pub aggregates: Vec<(AggKey, Counts)>,
    /// Customers whose state changed, with the state to persist.
    pub journeys: Vec<(String, JourneyState)>,
    pub duplicates: u64,
}

pub struct PartitionProcessor {
    map: Arc<JourneyMap>,
    journeys: hashbrown::HashMap<String, JourneyState, ahash::RandomState>,
    agg: HashMap<AggKey, Counts, ahash::RandomState>,
    touchpoints: Vec<TouchpointFact>,
    answers: Vec<AnswerFact>,
    dirty: Vec<String>,
    /// Highest touchpoint event time seen on this partition.
    watermark_ms: i64,
    /// Pending answers by (answer time, seq) → customer, for release as event time passes.
    pending_index: BTreeMap<(i64, u64), String>,
    next_seq: u64,
    duplicates: u64,
}

impl PartitionProcessor {
    pub fn new(map: Arc<JourneyMap>) -> Self {
        PartitionProcessor {
            map,
            journeys: hashbrown::HashMap::default(),
            agg: HashMap::default(),
            touchpoints: Vec::new(),
            answers: Vec::new(),
            dirty: Vec::new(),
            watermark_ms: i64::MIN,
            pending_index: BTreeMap::new(),
            next_seq: 0,
            duplicates: 0,
        }
    }

    pub fn map(&self) -> &JourneyMap {
        &self.map
    }

    pub fn watermark_ms(&self) -> i64 {
        self.watermark_ms
    }

    pub fn tracked_customers(&self) -> usize {
        self.journeys.len()
    }

    pub fn pending_answers(&self) -> usize {
        self.pending_index.len()
    }

    /// Restores a customer's persisted journey (after a restart or rebalance).
    pub fn restore(&mut self, customer: String, state: JourneyState, watermark_ms: i64) {
        self.watermark_ms = self.watermark_ms.max(watermark_ms);
        for p in &state.pending {
            self.next_seq = self.next_seq.max(p.seq + 1);
            self.pending_index
                .insert((p.answer.answer_time, p.seq), customer.clone());
        }
        self.journeys.insert(customer, state);
    }

    pub fn on_touchpoint(
        &mut self,
        ev: TouchpointEvent,
        source_offset: i64,
    ) -> Result<(), Invalid> {
        let customer = valid_customer(&ev.customer_id)?;
        if ev.event_id.is_empty() {
            return Err(Invalid::MissingId);
        }
        let tp = self
            .map
            .touchpoint(&ev.touchpoint)
            .ok_or(Invalid::UnknownTouchpoint)?;
        let channel = self
            .map
            .channel(&ev.channel)
            .ok_or(Invalid::UnknownChannel)?;
        let stage = match &ev.stage {
            Some(s) => self.map.stage(s).ok_or(Invalid::UnknownStage)?,
            None => self.map.touchpoints[usize::from(tp)].stage,
        };
        let segment = match ev.segment.as_deref() {
            Some(s) => Some(self.map.segment(s).ok_or(Invalid::UnknownSegment)?),
            None => None,
        };
        let id_hash = event_id_hash(&ev.event_id);
        let time = ev.event_time;
        let customer: &str = customer;
        let state = journey_mut(&mut self.journeys, customer);
        match state.apply_touchpoint(id_hash, time, tp, stage, channel, segment) {
            Applied::Duplicate => self.duplicates += 1,
            Applied::Applied { context, entered } => {
                // One lookup per event: read what the rest needs while the state is at hand.
                let has_pending = !state.pending.is_empty();
                if !state.dirty {
                    state.dirty = true;
                    self.dirty.push(customer.to_string());
                }
                let cell = self
                    .agg
                    .entry(AggKey::new(time, Some(context)))
                    .or_default();
                cell.touchpoints += 1;
                cell.stage_entries += i64::from(entered);
                if has_pending {
                    self.release_for_customer(customer);
                }
                self.touchpoints.push(TouchpointFact {
                    event: ev,
                    context,
                    stage_entered: entered,
                    source_offset,
                });
            }
        }
        if time > self.watermark_ms {
            self.watermark_ms = time;
            self.release_until(time);
        }
        Ok(())
    }

    pub fn on_answer(&mut self, ans: SurveyAnswer, source_offset: i64) -> Result<(), Invalid> {
        let customer = valid_customer(&ans.customer_id)?.to_string();
        if ans.response_id.is_empty() {
            return Err(Invalid::MissingId);
        }
        if !ans.metric.is_valid(ans.score) {
            return Err(Invalid::ScoreOutOfRange);
        }
        let named = ans.touchpoint_event_id.as_deref().map(event_id_hash);
        let state = journey_mut(&mut self.journeys, &customer);
        if state.can_attribute(named, ans.answer_time) || ans.answer_time <= self.watermark_ms {
            self.settle(&customer, ans, source_offset);
        } else {
            let seq = self.next_seq;
            self.next_seq += 1;
            let time = ans.answer_time;
            state.pending.push(PendingAnswer {
                answer: ans,
                source_offset,
                seq,
            });
            self.pending_index.insert((time, seq), customer.clone());
        }
        self.mark_dirty(&customer);
        Ok(())
    }

    /// Attributes every waiting answer with what is known now. Called when the touchpoint
    /// partition has been idle at its end, so nothing that could change the answer is coming.
    pub fn release_all(&mut self) {
        self.release_until(i64::MAX);
    }

    /// Takes everything derived since the last call.
    pub fn take_batch(&mut self) -> Batch {
        let aggregates: Vec<(AggKey, Counts)> =
            self.agg.drain().filter(|(_, c)| !c.is_zero()).collect();
        let journeys = std::mem::take(&mut self.dirty)
            .into_iter()
            .filter_map(|c| {
                let state = self.journeys.get_mut(&c)?;
                state.dirty = false;
                Some((c, state.clone()))
            })
            .collect();
        // The next batch is likely as large as this one: start at its size instead of
        // growing (and copying) from empty.
        let touchpoints = Vec::with_capacity(self.touchpoints.len());
        let answers = Vec::with_capacity(self.answers.len());
        Batch {
            touchpoints: std::mem::replace(&mut self.touchpoints, touchpoints),
            answers: std::mem::replace(&mut self.answers, answers),
            aggregates,
            journeys,
            duplicates: std::mem::take(&mut self.duplicates),
        }
    }

    /// Remembers that a customer's state must be persisted with the next batch; one key
    /// copy per customer and batch, not per event.
    fn mark_dirty(&mut self, customer: &str) {
        if let Some(state) = self.journeys.get_mut(customer) {
            if !state.dirty {
                state.dirty = true;
                self.dirty.push(customer.to_string());
            }
        }
    }

    fn release_until(&mut self, time_ms: i64) {
        while let Some(entry) = self.pending_index.first_entry() {
            if entry.key().0 > time_ms {
                break;
            }
            let ((_, seq), customer) = entry.remove_entry();
            self.settle_pending(&customer, |p| p.seq == seq);
            self.mark_dirty(&customer);
        }
    }

    /// After a touchpoint: settles the customer's waiting answers that can now be placed.
    fn release_for_customer(&mut self, customer: &str) {
        let Some(state) = self.journeys.get(customer) else {
            return;
        };
        if state.pending.is_empty() {
            return;
        }
        let ready: Vec<(i64, u64)> = state
            .pending
            .iter()
            .filter(|p| {
                let named = p.answer.touchpoint_event_id.as_deref().map(event_id_hash);
                state.can_attribute(named, p.answer.answer_time)
            })
            .map(|p| (p.answer.answer_time, p.seq))
            .collect();
        for key in ready {
            self.pending_index.remove(&key);
            self.settle_pending(customer, |p| p.seq == key.1);
        }
    }

    fn settle_pending(&mut self, customer: &str, which: impl Fn(&PendingAnswer) -> bool) {
        let Some(state) = self.journeys.get_mut(customer) else {
            return;
        };
        let Some(i) = state.pending.iter().position(which) else {
            return;
        };
        let p = state.pending.remove(i);
        self.settle(customer, p.answer, p.source_offset);
    }

    fn settle(&mut self, customer: &str, ans: SurveyAnswer, source_offset: i64) {
        let Some(state) = self.journeys.get_mut(customer) else {
            return;
        };
        let named = ans.touchpoint_event_id.as_deref().map(event_id_hash);
        let out = state.attribute(named, ans.metric, ans.score, ans.answer_time);
        if !out.counted {
            self.duplicates += 1;
            return;
        }
        if let Some(prev) = out.replaces {
            self.agg
                .entry(AggKey::new(prev.time_ms, out.context))
                .or_default()
                .add_answer(ans.metric, i32::from(prev.score), -1);
        }
        self.agg
            .entry(AggKey::new(ans.answer_time, out.context))
            .or_default()
            .add_answer(ans.metric, ans.score, 1);
        self.answers.push(AnswerFact {
            answer: ans,
            context: out.context,
            attribution: out.attribution,
            source_offset,
        });
    }
}

fn journey_mut<'a>(
    journeys: &'a mut hashbrown::HashMap<String, JourneyState, ahash::RandomState>,
    customer: &str,
) -> &'a mut JourneyState {
    // `entry_ref` looks up by &str and copies the key only for a new customer.
    journeys.entry_ref(customer).or_default()
}

fn valid_customer(id: &Option<String>) -> Result<&str, Invalid> {
    match id.as_deref().map(str::trim) {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(Invalid::MissingCustomerId),
    }
}
