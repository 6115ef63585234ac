//! One owned input partition (the same partition number of both input topics): its
//! processor, read positions, event-time alignment and idleness.
//!
//! Alignment: a touchpoint is applied only once the survey topic has caught up to within
//! `alignment_ms` of it (or has nothing more to give). Touchpoints that run ahead wait in a
//! local queue, which is cheap; only if that queue grows past [`MAX_HELD`] is the Kafka
//! partition paused. This keeps an answer's touchpoint among the customer's recent ones
//! when the answer is read, so attribution does not depend on fetch timing.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cxstream_avro::Codec;
use cxstream_clickhouse::{BatchEnd, Resume};
use cxstream_core::{Batch, JourneyMap, PartitionProcessor, TouchpointEvent};
use cxstream_http::JourneyMetrics;

use crate::config::JourneySettings;

/// Touchpoints held for alignment before the partition is paused instead.
const MAX_HELD: usize = 200_000;
/// Answers waiting in the processor before the survey partition is paused.
const MAX_PENDING: usize = 200_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    Touchpoints,
    Answers,
}

/// Read position of one input topic-partition.
#[derive(Debug, Clone, Copy)]
struct Cursor {
    /// Next offset to read; `None` until the first record or a committed resume point.
    next: Option<i64>,
    /// High watermark as last fetched.
    high: Option<i64>,
    /// Event time of the last record read.
    time_ms: i64,
    paused: bool,
}

impl Cursor {
    fn new(next: Option<i64>) -> Self {
        Cursor {
            next,
            high: None,
            time_ms: i64::MIN,
            paused: false,
        }
    }

    fn at_end(&self) -> bool {
        match (self.next, self.high) {
            (_, Some(0)) => true,
            (Some(n), Some(h)) => n >= h,
            _ => false,
        }
    }
}

/// A record refused by decoding or validation, to be dead-lettered.
pub struct Rejected {
    pub input: Input,
    pub offset: i64,
    pub kind: &'static str,
    pub message: String,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
}

struct Held {
    event: TouchpointEvent,
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
}

pub struct Slot {
    partition: i32,
    processor: PartitionProcessor,
    next_seq: u64,
    touchpoints: Cursor,
    answers: Cursor,
    held: VecDeque<Held>,
    rejected: Vec<Rejected>,
    records_since_commit: u64,
    /// Something changed that must be committed even without new records (released answers).
    dirty: bool,
    last_record: Instant,
    alignment_ms: i64,
}

impl Slot {
    pub fn new(
        partition: i32,
        map: Arc<JourneyMap>,
        resume: Resume,
        cfg: &JourneySettings,
    ) -> Self {
        let mut processor = PartitionProcessor::new(map);
        for (customer, state) in resume.journeys {
            processor.restore(customer, state, resume.watermark_ms);
        }
        Slot {
            partition,
            processor,
            next_seq: resume.next_seq,
            touchpoints: Cursor::new(resume.touchpoints_offset),
            answers: Cursor::new(resume.answers_offset),
            held: VecDeque::new(),
            rejected: Vec::new(),
            records_since_commit: 0,
            dirty: false,
            last_record: Instant::now(),
            alignment_ms: cfg.alignment_ms,
        }
    }

    fn cursor(&mut self, input: Input) -> &mut Cursor {
        match input {
            Input::Touchpoints => &mut self.touchpoints,
            Input::Answers => &mut self.answers,
        }
    }

    /// Decodes and applies (or holds) one record; refusals collect in [`Self::take_rejected`].
    pub fn process(
        &mut self,
        input: Input,
        key: Option<&[u8]>,
        payload: &[u8],
        offset: i64,
        codec: &Codec,
    ) {
        let cur = self.cursor(input);
        if cur.next.is_some_and(|n| offset < n) {
            // Re-delivered below the resume point (already committed): skip.
            return;
        }
        cur.next = Some(offset + 1);
        self.records_since_commit += 1;
        self.last_record = Instant::now();
        let reject = |kind: &'static str, message: String| Rejected {
            input,
            offset,
            kind,
            message,
            key: key.map(<[u8]>::to_vec),
            payload: payload.to_vec(),
        };
        match input {
            Input::Touchpoints => match codec.decode_touchpoint(payload) {
                Ok(ev) => {
                    self.touchpoints.time_ms = self.touchpoints.time_ms.max(ev.event_time);
                    if self.held.is_empty() && !self.runs_ahead(ev.event_time) {
                        if let Err(e) = self.processor.on_touchpoint(ev, offset) {
                            self.rejected.push(reject(e.kind(), e.to_string()));
                        }
                    } else {
                        self.held.push_back(Held {
                            event: ev,
                            offset,
                            key: key.map(<[u8]>::to_vec),
                            payload: payload.to_vec(),
                        });
                    }
                }
                Err(e) => self.rejected.push(reject(e.kind(), e.to_string())),
            },
            Input::Answers => match codec.decode_answer(payload) {
                Ok(a) => {
                    self.answers.time_ms = self.answers.time_ms.max(a.answer_time);
                    // Touchpoints the survey topic has now caught up with go first.
                    self.release_held();
                    if let Err(e) = self.processor.on_answer(a, offset) {
                        self.rejected.push(reject(e.kind(), e.to_string()));
                    }
                }
                Err(e) => self.rejected.push(reject(e.kind(), e.to_string())),
            },
        }
    }

    fn runs_ahead(&self, time_ms: i64) -> bool {
        time_ms > self.answers.time_ms.saturating_add(self.alignment_ms) && !self.answers.at_end()
    }

    fn release_held(&mut self) {
        while let Some(h) = self.held.front() {
            if self.runs_ahead(h.event.event_time) {
                break;
            }
            let Some(h) = self.held.pop_front() else {
                break;
            };
            // Applying it changes what the next batch must commit, even with no new record.
            self.dirty = true;
            if let Err(e) = self.processor.on_touchpoint(h.event, h.offset) {
                self.rejected.push(Rejected {
                    input: Input::Touchpoints,
                    offset: h.offset,
                    kind: e.kind(),
                    message: e.to_string(),
                    key: h.key,
                    payload: h.payload,
                });
            }
        }
    }

    pub fn take_rejected(&mut self) -> Vec<Rejected> {
        std::mem::take(&mut self.rejected)
    }

    /// Back-pressure: which input to pause and which to resume. Only needed when the local
    /// hold queue or the waiting answers grow past their bounds.
    pub fn backpressure(&mut self) -> (Option<Input>, Option<Input>) {
        let pause_tp = self.held.len() >= MAX_HELD;
        let pause_ans =
            self.processor.pending_answers() >= MAX_PENDING && !self.touchpoints.at_end();
        let mut pause = None;
        let mut resume = None;
        for (input, should_pause) in [(Input::Touchpoints, pause_tp), (Input::Answers, pause_ans)] {
            let cur = self.cursor(input);
            if should_pause && !cur.paused {
                cur.paused = true;
                pause = Some(input);
            } else if !should_pause && cur.paused {
                cur.paused = false;
                resume = Some(input);
            }
        }
        (pause, resume)
    }

    pub fn set_high_watermark(&mut self, input: Input, high: i64) {
        let cur = self.cursor(input);
        cur.high = Some(high);
        if cur.next.is_none() && high == 0 {
            cur.next = Some(0);
        }
    }

    /// Periodic housekeeping: releases held touchpoints once the survey topic is at its end,
    /// and once both inputs are read to their end and quiet, places waiting answers with
    /// what is known (nothing that could change their attribution is coming).
    pub fn tick(&mut self, idle: Duration) {
        if !self.held.is_empty() {
            self.release_held();
        }
        if self.would_release(idle) {
            self.processor.release_all();
            self.dirty = true;
        }
    }

    /// Whether [`Self::tick`] would place the waiting answers now.
    pub fn would_release(&self, idle: Duration) -> bool {
        self.processor.pending_answers() > 0
            && self.held.is_empty()
            && self.touchpoints.at_end()
            && self.answers.at_end()
            && self.last_record.elapsed() >= idle
    }

    pub fn caught_up(&self) -> bool {
        self.touchpoints.at_end()
            && self.answers.at_end()
            && self.held.is_empty()
            && self.records_since_commit == 0
            && !self.dirty
            && self.processor.pending_answers() == 0
    }

    /// Next touchpoint offset that is safe to commit: held touchpoints are not applied yet.
    fn touchpoints_commit_offset(&self) -> Option<i64> {
        self.held
            .front()
            .map(|h| h.offset)
            .or(self.touchpoints.next)
    }

    /// The batch to commit now, if anything changed.
    pub fn take_batch(&mut self) -> Option<(u64, Batch, BatchEnd)> {
        if self.records_since_commit == 0 && !self.dirty {
            return None;
        }
        let end = BatchEnd {
            // -2 is librdkafka's "beginning": nothing read yet on that topic.
            touchpoints_next_offset: self.touchpoints_commit_offset().unwrap_or(-2),
            answers_next_offset: self.answers.next.unwrap_or(-2),
            watermark_ms: self.processor.watermark_ms(),
            records: self.records_since_commit,
        };
        Some((self.next_seq, self.processor.take_batch(), end))
    }

    pub fn committed(&mut self, seq: u64, metrics: &JourneyMetrics) {
        self.next_seq = seq + 1;
        self.records_since_commit = 0;
        self.dirty = false;
        let wm = self.processor.watermark_ms();
        if wm > 0 {
            metrics
                .watermark_seconds
                .with_label_values(&[&self.partition.to_string()])
                .set(wm / 1000);
        }
    }

    pub fn next_offsets(&self) -> Vec<(Input, i64)> {
        [
            (Input::Touchpoints, self.touchpoints_commit_offset()),
            (Input::Answers, self.answers.next),
        ]
        .into_iter()
        .filter_map(|(i, n)| n.filter(|n| *n >= 0).map(|n| (i, n)))
        .collect()
    }

    pub fn tracked_customers(&self) -> usize {
        self.processor.tracked_customers()
    }

    pub fn pending_answers(&self) -> usize {
        self.processor.pending_answers() + self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cxstream_core::{Metric, SurveyAnswer};

    fn slot() -> (Slot, Codec) {
        let map = JourneyMap::from_yaml(
            "retail.yaml",
            include_str!("../../../../schemas/journeys/retail.yaml"),
        )
        .unwrap();
        let cfg = JourneySettings {
            alignment_ms: 60_000,
            ..JourneySettings::default()
        };
        (
            Slot::new(0, Arc::new(map), Resume::default(), &cfg),
            Codec::new().unwrap(),
        )
    }

    fn touchpoint(codec: &Codec, id: &str, t: i64) -> Vec<u8> {
        let ev = TouchpointEvent {
            event_id: id.into(),
            customer_id: Some("c1".into()),
            anonymous_id: None,
            event_time: t,
            touchpoint: "ad_impression".into(),
            channel: "web".into(),
            stage: None,
            segment: None,
            outcome: None,
            attributes: Default::default(),
        };
        let mut buf = Vec::new();
        codec.encode_touchpoint(&ev, &mut buf).unwrap();
        buf
    }

    fn answer(codec: &Codec, t: i64) -> Vec<u8> {
        let a = SurveyAnswer {
            response_id: "r1".into(),
            customer_id: Some("c1".into()),
            answer_time: t,
            metric: Metric::Csat,
            score: 5,
            touchpoint_event_id: None,
            touchpoint: None,
            channel: None,
            comment: None,
            attributes: Default::default(),
        };
        let mut buf = Vec::new();
        codec.encode_answer(&a, &mut buf).unwrap();
        buf
    }

    #[test]
    fn touchpoints_ahead_of_the_survey_topic_wait_and_are_not_committed_past() {
        let (mut s, codec) = slot();
        s.process(Input::Answers, None, &answer(&codec, 1_000), 0, &codec);
        s.process(
            Input::Touchpoints,
            None,
            &touchpoint(&codec, "e0", 2_000),
            0,
            &codec,
        );
        s.process(
            Input::Touchpoints,
            None,
            &touchpoint(&codec, "e1", 500_000),
            1,
            &codec,
        );
        let (_, batch, end) = s.take_batch().unwrap();
        assert_eq!(batch.touchpoints.len(), 1, "the far-ahead touchpoint waits");
        assert_eq!(
            end.touchpoints_next_offset, 1,
            "and the commit does not pass it"
        );
        s.committed(0, &JourneyMetrics::new().unwrap());
    }

    #[test]
    fn touchpoints_released_at_the_end_are_committed() {
        let (mut s, codec) = slot();
        s.process(Input::Answers, None, &answer(&codec, 1_000), 0, &codec);
        s.process(
            Input::Touchpoints,
            None,
            &touchpoint(&codec, "e1", 500_000),
            0,
            &codec,
        );
        let (seq, _, end) = s.take_batch().unwrap();
        assert_eq!(end.touchpoints_next_offset, 0);
        s.committed(seq, &JourneyMetrics::new().unwrap());
        assert!(s.take_batch().is_none());
        // The survey topic turns out to be at its end: the held touchpoint is applied, and
        // that must be committed although no new record arrived.
        s.set_high_watermark(Input::Answers, 1);
        s.set_high_watermark(Input::Touchpoints, 1);
        s.tick(Duration::from_secs(3600));
        assert!(!s.caught_up());
        let (_, batch, end) = s.take_batch().unwrap();
        assert_eq!(batch.touchpoints.len(), 1);
        assert_eq!(end.touchpoints_next_offset, 1);
    }
}
