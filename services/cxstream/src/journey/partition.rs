//! One owned input partition (the same partition number of both input topics): its
//! processor, read positions, event-time alignment and idleness.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cxstream_avro::Codec;
use cxstream_clickhouse::{BatchEnd, Resume};
use cxstream_core::{Batch, JourneyMap, PartitionProcessor};
use cxstream_http::JourneyMetrics;

use crate::config::JourneySettings;

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
        Cursor { next, high: None, time_ms: i64::MIN, paused: false }
    }

    fn at_end(&self) -> bool {
        match (self.next, self.high) {
            (_, Some(0)) => true,
            (Some(n), Some(h)) => n >= h,
            _ => false,
        }
    }
}

pub struct Slot {
    partition: i32,
    processor: PartitionProcessor,
    next_seq: u64,
    touchpoints: Cursor,
    answers: Cursor,
    records_since_commit: u64,
    /// Something changed that must be committed even without new records (released answers).
    dirty: bool,
    last_record: Instant,
    alignment_ms: i64,
}

pub type Rejection = (&'static str, String);

impl Slot {
    pub fn new(partition: i32, map: Arc<JourneyMap>, resume: Resume, cfg: &JourneySettings) -> Self {
        let mut processor = PartitionProcessor::new(map);
        for (customer, state) in resume.journeys {
            processor.restore(customer, state, resume.watermark_ms);
        }
        let mut touchpoints = Cursor::new(resume.touchpoints_offset);
        if resume.touchpoints_offset.is_some() {
            touchpoints.time_ms = resume.watermark_ms;
        }
        Slot {
            partition,
            processor,
            next_seq: resume.next_seq,
            touchpoints,
            answers: Cursor::new(resume.answers_offset),
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

    /// Decodes and applies one record. `Err` carries the DLQ reason and message.
    pub fn process(&mut self, input: Input, payload: &[u8], offset: i64, codec: &Codec) -> Result<(), Rejection> {
        let cur = self.cursor(input);
        if cur.next.is_some_and(|n| offset < n) {
            // Re-delivered below the resume point (already committed): skip.
            return Ok(());
        }
        cur.next = Some(offset + 1);
        self.records_since_commit += 1;
        self.last_record = Instant::now();
        match input {
            Input::Touchpoints => {
                let ev = codec.decode_touchpoint(payload).map_err(|e| (e.kind(), e.to_string()))?;
                self.touchpoints.time_ms = self.touchpoints.time_ms.max(ev.event_time);
                self.processor.on_touchpoint(ev, offset).map_err(|e| (e.kind(), e.to_string()))
            }
            Input::Answers => {
                let a = codec.decode_answer(payload).map_err(|e| (e.kind(), e.to_string()))?;
                self.answers.time_ms = self.answers.time_ms.max(a.answer_time);
                self.processor.on_answer(a, offset).map_err(|e| (e.kind(), e.to_string()))
            }
        }
    }

    /// Which input to pause and which to resume so neither runs more than `alignment_ms`
    /// (event time) ahead of the other, unless the other has nothing more to give.
    pub fn alignment(&mut self) -> (Option<Input>, Option<Input>) {
        let ahead = |a: &Cursor, b: &Cursor, skew: i64| a.time_ms > b.time_ms.saturating_add(skew) && !b.at_end();
        let tp_ahead = ahead(&self.touchpoints, &self.answers, self.alignment_ms);
        let ans_ahead = ahead(&self.answers, &self.touchpoints, self.alignment_ms);
        let mut pause = None;
        let mut resume = None;
        for (input, should_pause) in [(Input::Touchpoints, tp_ahead), (Input::Answers, ans_ahead)] {
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

    /// Once both inputs are read to their end and quiet, waiting answers are placed with what
    /// is known: nothing that could change their attribution is coming.
    pub fn release_if_idle(&mut self, idle: Duration) {
        if self.processor.pending_answers() > 0
            && self.touchpoints.at_end()
            && self.answers.at_end()
            && self.last_record.elapsed() >= idle
        {
            self.processor.release_all();
            self.dirty = true;
        }
    }

    pub fn caught_up(&self) -> bool {
        self.touchpoints.at_end()
            && self.answers.at_end()
            && self.records_since_commit == 0
            && !self.dirty
            && self.processor.pending_answers() == 0
    }

    /// The batch to commit now, if anything changed.
    pub fn take_batch(&mut self) -> Option<(u64, Batch, BatchEnd)> {
        if self.records_since_commit == 0 && !self.dirty {
            return None;
        }
        let end = BatchEnd {
            // -2 is librdkafka's "beginning": nothing read yet on that topic.
            touchpoints_next_offset: self.touchpoints.next.unwrap_or(-2),
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
            metrics.watermark_seconds.with_label_values(&[&self.partition.to_string()]).set(wm / 1000);
        }
    }

    pub fn next_offsets(&self) -> Vec<(Input, i64)> {
        [(Input::Touchpoints, self.touchpoints.next), (Input::Answers, self.answers.next)]
            .into_iter()
            .filter_map(|(i, n)| n.filter(|n| *n >= 0).map(|n| (i, n)))
            .collect()
    }

    pub fn tracked_customers(&self) -> usize {
        self.processor.tracked_customers()
    }

    pub fn pending_answers(&self) -> usize {
        self.processor.pending_answers()
    }
}
