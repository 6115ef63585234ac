//! One owned input partition (the same partition number of both input topics): its
//! processor and the read positions of both inputs.
//!
//! The event-time rules live in the core's processor; this only tells it what the
//! consumer sees: each record with its Kafka timestamp, and when an input is read to its
//! end and quiet (idle), so that a silent input does not hold the watermark back forever.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cxstream_avro::Codec;
use cxstream_clickhouse::{BatchEnd, Resume};
use cxstream_core::{Batch, EventClock, EventTimePolicy, Input, JourneyMap, PartitionProcessor};
use cxstream_http::JourneyMetrics;

/// Read position of one input topic-partition.
#[derive(Debug, Clone, Copy)]
struct Cursor {
    /// Next offset to read; `None` until the first record or a committed resume point.
    next: Option<i64>,
    /// High watermark as last fetched.
    high: Option<i64>,
    last_record: Instant,
    idle: bool,
}

impl Cursor {
    fn new(next: Option<i64>) -> Self {
        Cursor {
            next,
            high: None,
            last_record: Instant::now(),
            idle: false,
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

/// One record as the consumer read it.
pub struct Record<'a> {
    pub input: Input,
    pub key: Option<&'a [u8]>,
    pub payload: &'a [u8],
    pub offset: i64,
    /// Kafka record timestamp, epoch ms.
    pub timestamp_ms: Option<i64>,
}

pub struct Slot {
    partition: i32,
    processor: PartitionProcessor,
    next_seq: u64,
    /// Committed batches below this are folded into the partition's compacted generation.
    live_from: u64,
    cursors: [Cursor; 2],
    rejected: Vec<Rejected>,
    records_since_commit: u64,
    /// Something changed that must be committed even without new records (an idle input
    /// moved the watermark and journeys were folded).
    dirty: bool,
}

impl Slot {
    pub fn new(
        partition: i32,
        map: Arc<JourneyMap>,
        resume: Resume,
        policy: EventTimePolicy,
    ) -> Self {
        let clock = EventClock::resumed(policy, resume.clock);
        let mut processor = PartitionProcessor::resumed(map, clock);
        for (customer, journey, written) in resume.journeys {
            processor.restore(customer, journey, written);
        }
        Slot {
            partition,
            processor,
            next_seq: resume.next_seq,
            live_from: resume.live_from,
            cursors: [
                Cursor::new(resume.touchpoints_offset),
                Cursor::new(resume.answers_offset),
            ],
            rejected: Vec::new(),
            records_since_commit: 0,
            dirty: false,
        }
    }

    fn cursor(&mut self, input: Input) -> &mut Cursor {
        &mut self.cursors[input_index(input)]
    }

    /// Decodes and applies one record; refusals collect in [`Self::take_rejected`].
    pub fn process(&mut self, r: &Record<'_>, codec: &Codec) {
        let cur = self.cursor(r.input);
        if cur.next.is_some_and(|n| r.offset < n) {
            // Re-delivered below the resume point (already committed): skip.
            return;
        }
        cur.next = Some(r.offset + 1);
        cur.last_record = Instant::now();
        cur.idle = false;
        self.records_since_commit += 1;
        let applied = match r.input {
            Input::Touchpoints => codec
                .decode_touchpoint(r.payload)
                .map_err(|e| (e.kind(), e.to_string()))
                .and_then(|ev| {
                    self.processor
                        .on_touchpoint(ev, r.offset, r.timestamp_ms)
                        .map_err(|e| (e.kind(), e.to_string()))
                }),
            Input::Answers => codec
                .decode_answer(r.payload)
                .map_err(|e| (e.kind(), e.to_string()))
                .and_then(|a| {
                    self.processor
                        .on_answer(a, r.offset, r.timestamp_ms)
                        .map_err(|e| (e.kind(), e.to_string()))
                }),
        };
        if let Err((kind, message)) = applied {
            self.rejected.push(Rejected {
                input: r.input,
                offset: r.offset,
                kind,
                message,
                key: r.key.map(<[u8]>::to_vec),
                payload: r.payload.to_vec(),
            });
        }
    }

    pub fn take_rejected(&mut self) -> Vec<Rejected> {
        std::mem::take(&mut self.rejected)
    }

    pub fn set_high_watermark(&mut self, input: Input, high: i64) {
        let cur = self.cursor(input);
        cur.high = Some(high);
        if cur.next.is_none() && high == 0 {
            cur.next = Some(0);
        }
    }

    /// An input read to its end and quiet for `idle` stops holding the watermark back.
    pub fn tick(&mut self, idle: Duration) {
        for input in Input::ALL {
            let cur = self.cursor(input);
            let now_idle = cur.at_end() && cur.last_record.elapsed() >= idle;
            if now_idle && !cur.idle {
                cur.idle = true;
                self.processor.set_idle(input, true);
                self.dirty = true;
            }
        }
    }

    /// Whether [`Self::tick`] would mark an input idle now.
    pub fn would_idle(&self, idle: Duration) -> bool {
        self.cursors
            .iter()
            .any(|c| !c.idle && c.at_end() && c.last_record.elapsed() >= idle)
    }

    pub fn caught_up(&self) -> bool {
        self.cursors.iter().all(|c| c.at_end() && c.idle)
            && self.records_since_commit == 0
            && !self.dirty
    }

    /// The batch to commit now, if anything changed.
    pub fn take_batch(&mut self) -> Option<(u64, Batch, BatchEnd)> {
        if self.records_since_commit == 0 && !self.dirty {
            return None;
        }
        let end = BatchEnd {
            // -2 is librdkafka's "beginning": nothing read yet on that topic.
            touchpoints_next_offset: self.cursors[0].next.unwrap_or(-2),
            answers_next_offset: self.cursors[1].next.unwrap_or(-2),
            clock: self.processor.clock().state(),
            records: self.records_since_commit,
        };
        Some((self.next_seq, self.processor.take_batch(), end))
    }

    pub fn committed(&mut self, seq: u64, metrics: &JourneyMetrics) {
        self.next_seq = seq + 1;
        self.records_since_commit = 0;
        self.dirty = false;
        if let Some(wm) = self.processor.watermark_ms().filter(|w| *w > 0) {
            metrics
                .watermark_seconds
                .with_label_values(&[&self.partition.to_string()])
                .set(wm / 1000);
        }
    }

    /// The sequence number below which to fold committed batches now, when at least
    /// `every` were committed since the last compaction (0: never).
    pub fn due_for_compaction(&self, every: u64) -> Option<u64> {
        (every > 0 && self.next_seq.saturating_sub(self.live_from) >= every)
            .then_some(self.next_seq)
    }

    pub fn compacted(&mut self, live_from: u64) {
        self.live_from = live_from;
    }

    /// Records not read yet per input, where the log end is known.
    pub fn lag(&self) -> Vec<(Input, i64)> {
        Input::ALL
            .into_iter()
            .filter_map(|i| {
                let c = &self.cursors[input_index(i)];
                let high = c.high?;
                Some((i, (high - c.next.unwrap_or(0).max(0)).max(0)))
            })
            .collect()
    }

    pub fn next_offsets(&self) -> Vec<(Input, i64)> {
        Input::ALL
            .into_iter()
            .filter_map(|i| {
                let n = self.cursors[input_index(i)].next?;
                (n >= 0).then_some((i, n))
            })
            .collect()
    }

    pub fn tracked_customers(&self) -> usize {
        self.processor.tracked_customers()
    }
}

fn input_index(input: Input) -> usize {
    match input {
        Input::Touchpoints => 0,
        Input::Answers => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cxstream_core::{Metric, SurveyAnswer, TouchpointEvent};

    fn slot() -> (Slot, Codec) {
        let map = JourneyMap::from_yaml(
            "retail.yaml",
            include_str!("../../../../schemas/journeys/retail.yaml"),
        )
        .unwrap();
        (
            Slot::new(
                0,
                Arc::new(map),
                Resume::default(),
                EventTimePolicy::default(),
            ),
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

    fn record(input: Input, payload: &[u8], offset: i64) -> Record<'_> {
        Record {
            input,
            key: None,
            payload,
            offset,
            timestamp_ms: None,
        }
    }

    #[test]
    fn records_are_committed_with_the_offsets_after_them() {
        let (mut s, codec) = slot();
        let a = answer(&codec, 1_000);
        let t = touchpoint(&codec, "e0", 2_000);
        s.process(&record(Input::Answers, &a, 0), &codec);
        s.process(&record(Input::Touchpoints, &t, 7), &codec);
        let (seq, batch, end) = s.take_batch().unwrap();
        assert_eq!((batch.touchpoints.len(), batch.answers.len()), (1, 1));
        assert_eq!(
            (end.touchpoints_next_offset, end.answers_next_offset),
            (8, 1)
        );
        assert_eq!(end.clock.highs, [Some(2_000), Some(1_000)]);
        s.committed(seq, &JourneyMetrics::new().unwrap());
        assert!(s.take_batch().is_none());
        // Re-delivered below the committed position: skipped.
        s.process(&record(Input::Touchpoints, &t, 7), &codec);
        assert!(s.take_batch().is_none());
    }

    #[test]
    fn an_input_at_its_end_and_quiet_becomes_idle_and_that_is_committed() {
        let (mut s, codec) = slot();
        let t = touchpoint(&codec, "e0", 2_000);
        s.process(&record(Input::Touchpoints, &t, 0), &codec);
        let (seq, _, end) = s.take_batch().unwrap();
        assert_eq!(
            end.clock.watermark, None,
            "the answers input was never seen"
        );
        s.committed(seq, &JourneyMetrics::new().unwrap());
        s.set_high_watermark(Input::Touchpoints, 1);
        s.set_high_watermark(Input::Answers, 0);
        assert!(!s.caught_up());
        s.tick(Duration::ZERO);
        let (seq, _, end) = s.take_batch().unwrap();
        assert_eq!(end.clock.watermark, Some(2_000));
        s.committed(seq, &JourneyMetrics::new().unwrap());
        assert!(s.caught_up());
    }
}
