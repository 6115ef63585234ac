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
use cxstream_core::{
    Batch, EventClock, EventTimePolicy, Input, JourneyMap, JourneyMaps, PartitionProcessor,
};

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

/// One journey map's processor over the partition, and how far that journey has applied
/// and committed: journeys commit their own batches, so each resumes from its own point.
struct Lane {
    processor: PartitionProcessor,
    next_seq: u64,
    /// Committed batches below this are folded into the partition's compacted generation.
    live_from: u64,
    /// Next offset of each input this journey applies; `None` until its first record or a
    /// committed resume point.
    next: [Option<i64>; 2],
    records_since_commit: u64,
    /// Something changed that must be committed even without new records (an idle input
    /// moved the watermark and journeys were folded).
    dirty: bool,
}

impl Lane {
    fn resumed(map: Arc<JourneyMap>, resume: Resume, policy: EventTimePolicy) -> Self {
        let clock = EventClock::resumed(policy, resume.clock);
        let mut processor = PartitionProcessor::resumed(map, clock);
        for (customer, journey, written) in resume.journeys {
            processor.restore(customer, journey, written);
        }
        Lane {
            processor,
            next_seq: resume.next_seq,
            live_from: resume.live_from,
            next: [resume.touchpoints_offset, resume.answers_offset],
            records_since_commit: 0,
            dirty: false,
        }
    }

    /// Whether the record at `offset` of `input` is new to this journey (then it is taken).
    fn takes(&mut self, input: Input, offset: i64) -> bool {
        let next = &mut self.next[input_index(input)];
        if next.is_some_and(|n| offset < n) {
            return false;
        }
        *next = Some(offset + 1);
        self.records_since_commit += 1;
        true
    }

    fn pending(&self) -> bool {
        self.records_since_commit > 0 || self.dirty
    }
}

/// A batch of one journey, ready to commit.
pub struct LaneBatch {
    pub lane: usize,
    pub seq: u64,
    pub batch: Batch,
    pub end: BatchEnd,
}

pub struct Slot {
    /// One per journey map, in the maps' order.
    lanes: Vec<Lane>,
    /// What the consumer has read of each input (the furthest of the journeys).
    cursors: [Cursor; 2],
    rejected: Vec<Rejected>,
    /// The journeys a record is new to (reused: no allocation per record).
    takers: Vec<usize>,
}

impl Slot {
    /// `resumes` holds each map's resume point, in the maps' order.
    pub fn new(maps: &JourneyMaps, resumes: Vec<Resume>, policy: EventTimePolicy) -> Self {
        let lanes: Vec<Lane> = maps
            .iter()
            .zip(resumes)
            .map(|(map, resume)| Lane::resumed(map.clone(), resume, policy))
            .collect();
        // Reading starts where the journey furthest behind resumes.
        let start = |i: usize| least_of_all(lanes.iter().map(|l| l.next[i]));
        Slot {
            cursors: [Cursor::new(start(0)), Cursor::new(start(1))],
            lanes,
            rejected: Vec::new(),
            takers: Vec::new(),
        }
    }

    fn cursor(&mut self, input: Input) -> &mut Cursor {
        &mut self.cursors[input_index(input)]
    }

    /// Decodes a record once and applies it to every journey that has not committed it;
    /// a refusal (the same in every journey) is collected once in [`Self::take_rejected`].
    pub fn process(&mut self, r: &Record<'_>, codec: &Codec) {
        let takers = self.take(r);
        if !takers.is_empty() {
            self.apply(r, codec, &takers);
        }
        self.takers = takers;
    }

    /// A record refused before decoding (too large): taken like any record by the journeys
    /// that have not committed it, so that its offset is committed once it is dead-lettered.
    pub fn refuse(&mut self, r: &Record<'_>, kind: &'static str, message: String) {
        let takers = self.take(r);
        if !takers.is_empty() {
            self.rejected.push(Rejected {
                input: r.input,
                offset: r.offset,
                kind,
                message,
                key: r.key.map(<[u8]>::to_vec),
                payload: r.payload.to_vec(),
            });
        }
        self.takers = takers;
    }

    /// Moves the read position past `r` and returns the journeys it is new to (the reused
    /// buffer, to be put back).
    fn take(&mut self, r: &Record<'_>) -> Vec<usize> {
        let mut takers = std::mem::take(&mut self.takers);
        takers.clear();
        let cur = self.cursor(r.input);
        if cur.next.is_some_and(|n| r.offset < n) {
            // Re-delivered below the resume point (already committed): skip.
            return takers;
        }
        cur.next = Some(r.offset + 1);
        cur.last_record = Instant::now();
        cur.idle = false;
        takers.extend((0..self.lanes.len()).filter(|&i| self.lanes[i].takes(r.input, r.offset)));
        takers
    }

    fn apply(&mut self, r: &Record<'_>, codec: &Codec, takers: &[usize]) {
        let applied = match r.input {
            Input::Touchpoints => codec
                .decode_touchpoint(r.payload)
                .map_err(|e| (e.kind(), e.to_string()))
                .and_then(|ev| {
                    self.apply_each(takers, ev, |p, ev| {
                        p.on_touchpoint(ev, r.offset, r.timestamp_ms)
                    })
                }),
            Input::Answers => codec
                .decode_answer(r.payload)
                .map_err(|e| (e.kind(), e.to_string()))
                .and_then(|a| {
                    self.apply_each(takers, a, |p, a| p.on_answer(a, r.offset, r.timestamp_ms))
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

    /// Applies `item` to the journeys `takers` (the last one takes it without a copy);
    /// the first refusal is the record's.
    fn apply_each<T: Clone>(
        &mut self,
        takers: &[usize],
        item: T,
        apply: impl Fn(&mut PartitionProcessor, T) -> Result<(), cxstream_core::Invalid>,
    ) -> Result<(), (&'static str, String)> {
        let mut refused = None;
        let (last, rest) = takers
            .split_last()
            .map_or((None, &[][..]), |(l, r)| (Some(*l), r));
        for &i in rest {
            if let Err(e) = apply(&mut self.lanes[i].processor, item.clone()) {
                refused.get_or_insert(e);
            }
        }
        if let Some(i) = last {
            if let Err(e) = apply(&mut self.lanes[i].processor, item) {
                refused.get_or_insert(e);
            }
        }
        refused.map_or(Ok(()), |e| Err((e.kind(), e.to_string())))
    }

    pub fn take_rejected(&mut self) -> Vec<Rejected> {
        std::mem::take(&mut self.rejected)
    }

    pub fn set_high_watermark(&mut self, input: Input, high: i64) {
        let cur = self.cursor(input);
        cur.high = Some(high);
        if cur.next.is_none() && high == 0 {
            cur.next = Some(0);
            for lane in &mut self.lanes {
                lane.next[input_index(input)].get_or_insert(0);
            }
        }
    }

    /// An input read to its end and quiet for `idle` stops holding the watermark back.
    pub fn tick(&mut self, idle: Duration) {
        for input in Input::ALL {
            let cur = self.cursor(input);
            let now_idle = cur.at_end() && cur.last_record.elapsed() >= idle;
            if now_idle && !cur.idle {
                cur.idle = true;
                for lane in &mut self.lanes {
                    lane.processor.set_idle(input, true);
                    lane.dirty = true;
                }
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
        self.cursors.iter().all(|c| c.at_end() && c.idle) && !self.lanes.iter().any(Lane::pending)
    }

    /// The batch of each journey to commit now, if anything changed.
    pub fn take_batches(&mut self) -> Vec<LaneBatch> {
        let mut out = Vec::new();
        for (i, lane) in self.lanes.iter_mut().enumerate() {
            if !lane.pending() {
                continue;
            }
            let end = BatchEnd {
                // -2 is librdkafka's "beginning": nothing read yet on that topic.
                touchpoints_next_offset: lane.next[0].unwrap_or(-2),
                answers_next_offset: lane.next[1].unwrap_or(-2),
                clock: lane.processor.clock().state(),
                records: lane.records_since_commit,
            };
            out.push(LaneBatch {
                lane: i,
                seq: lane.next_seq,
                batch: lane.processor.take_batch(),
                end,
            });
        }
        out
    }

    pub fn committed(&mut self, lane: usize, seq: u64) {
        if let Some(l) = self.lanes.get_mut(lane) {
            l.next_seq = seq + 1;
            l.records_since_commit = 0;
            l.dirty = false;
        }
    }

    /// The event time every journey of the partition has reached (the least watermark).
    pub fn watermark_ms(&self) -> Option<i64> {
        least_of_all(self.lanes.iter().map(|l| l.processor.watermark_ms()))
    }

    /// The sequence number below which to fold a journey's committed batches now, when at
    /// least `every` were committed since its last compaction (0: never).
    pub fn due_for_compaction(&self, lane: usize, every: u64) -> Option<u64> {
        let l = self.lanes.get(lane)?;
        (every > 0 && l.next_seq.saturating_sub(l.live_from) >= every).then_some(l.next_seq)
    }

    pub fn compacted(&mut self, lane: usize, live_from: u64) {
        if let Some(l) = self.lanes.get_mut(lane) {
            l.live_from = live_from;
        }
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

    /// Per input, the offset every journey has committed up to (what Kafka may record).
    pub fn next_offsets(&self) -> Vec<(Input, i64)> {
        Input::ALL
            .into_iter()
            .filter_map(|i| {
                let n = least_of_all(self.lanes.iter().map(|l| l.next[input_index(i)]))?;
                (n >= 0).then_some((i, n))
            })
            .collect()
    }

    pub fn tracked_customers(&self) -> usize {
        self.lanes
            .iter()
            .map(|l| l.processor.tracked_customers())
            .sum()
    }
}

/// The least of the journeys' values, or none when one of them has none yet (a journey
/// that has not started holds everything back).
pub(super) fn least_of_all(values: impl IntoIterator<Item = Option<i64>>) -> Option<i64> {
    values
        .into_iter()
        .try_fold(i64::MAX, |least, v| v.map(|v| least.min(v)))
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

    fn maps() -> JourneyMaps {
        let load = |name: &str, text: &str| JourneyMap::from_yaml(name, text).unwrap();
        JourneyMaps::new(vec![
            load(
                "retail.yaml",
                include_str!("../../../../schemas/journeys/retail.yaml"),
            ),
            load(
                "support.yaml",
                include_str!("../../../../schemas/journeys/support.yaml"),
            ),
        ])
        .unwrap()
    }

    fn slot_resuming(resumes: Vec<Resume>) -> (Slot, Codec) {
        (
            Slot::new(&maps(), resumes, EventTimePolicy::default()),
            Codec::new().unwrap(),
        )
    }

    fn slot() -> (Slot, Codec) {
        slot_resuming(vec![Resume::default(), Resume::default()])
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

    fn answer(codec: &Codec, t: i64, score: i32) -> Vec<u8> {
        let a = SurveyAnswer {
            response_id: "r1".into(),
            customer_id: Some("c1".into()),
            answer_time: t,
            metric: Metric::Csat,
            score,
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

    /// (lane, touchpoint facts, answer facts, touchpoints next, answers next) per batch.
    fn summary(batches: &[LaneBatch]) -> Vec<(usize, usize, usize, i64, i64)> {
        batches
            .iter()
            .map(|b| {
                (
                    b.lane,
                    b.batch.touchpoints.len(),
                    b.batch.answers.len(),
                    b.end.touchpoints_next_offset,
                    b.end.answers_next_offset,
                )
            })
            .collect()
    }

    fn commit_all(s: &mut Slot) {
        for b in s.take_batches() {
            s.committed(b.lane, b.seq);
        }
    }

    #[test]
    fn every_journey_commits_the_records_with_the_offsets_after_them() {
        let (mut s, codec) = slot();
        let a = answer(&codec, 1_000, 5);
        let t = touchpoint(&codec, "e0", 2_000);
        s.process(&record(Input::Answers, &a, 0), &codec);
        s.process(&record(Input::Touchpoints, &t, 7), &codec);
        let batches = s.take_batches();
        assert_eq!(summary(&batches), [(0, 1, 1, 8, 1), (1, 1, 1, 8, 1)]);
        assert_eq!(batches[1].end.clock.highs, [Some(2_000), Some(1_000)]);
        for b in batches {
            s.committed(b.lane, b.seq);
        }
        assert!(s.take_batches().is_empty());
        // Re-delivered below the committed position: skipped.
        s.process(&record(Input::Touchpoints, &t, 7), &codec);
        assert!(s.take_batches().is_empty());
        assert_eq!(
            s.next_offsets(),
            [(Input::Touchpoints, 8), (Input::Answers, 1)]
        );
    }

    #[test]
    fn a_journey_ahead_skips_what_it_committed_and_a_bad_record_is_refused_once() {
        let ahead = Resume {
            touchpoints_offset: Some(2),
            next_seq: 5,
            ..Resume::default()
        };
        let (mut s, codec) = slot_resuming(vec![ahead, Resume::default()]);
        for (offset, id) in [(0, "e0"), (1, "e1"), (2, "e2")] {
            let t = touchpoint(&codec, id, 1_000 + offset);
            s.process(&record(Input::Touchpoints, &t, offset), &codec);
        }
        let bad = answer(&codec, 1_500, 9);
        s.process(&record(Input::Answers, &bad, 0), &codec);
        let rejected = s.take_rejected();
        assert_eq!(
            rejected.len(),
            1,
            "refused by both journeys, dead-lettered once"
        );
        assert_eq!(rejected[0].kind, "score_out_of_range");
        let batches = s.take_batches();
        assert_eq!(summary(&batches), [(0, 1, 0, 3, 1), (1, 3, 0, 3, 1)]);
        assert_eq!((batches[0].seq, batches[1].seq), (5, 0));
    }

    #[test]
    fn a_record_refused_unread_is_committed_past_and_dead_lettered_once() {
        let (mut s, _) = slot();
        let big = [7u8; 16];
        s.refuse(
            &record(Input::Answers, &big, 3),
            "oversized",
            "too big".into(),
        );
        let rejected = s.take_rejected();
        assert_eq!((rejected.len(), rejected[0].kind), (1, "oversized"));
        assert_eq!(
            summary(&s.take_batches()),
            [(0, 0, 0, -2, 4), (1, 0, 0, -2, 4)]
        );
        s.refuse(
            &record(Input::Answers, &big, 3),
            "oversized",
            "too big".into(),
        );
        assert!(
            s.take_rejected().is_empty(),
            "read again below the position: skipped"
        );
    }

    #[test]
    fn an_input_at_its_end_and_quiet_becomes_idle_and_that_is_committed() {
        let (mut s, codec) = slot();
        let t = touchpoint(&codec, "e0", 2_000);
        s.process(&record(Input::Touchpoints, &t, 0), &codec);
        let batches = s.take_batches();
        assert_eq!(
            batches[0].end.clock.watermark, None,
            "the answers input was never seen"
        );
        for b in batches {
            s.committed(b.lane, b.seq);
        }
        s.set_high_watermark(Input::Touchpoints, 1);
        s.set_high_watermark(Input::Answers, 0);
        assert!(!s.caught_up());
        s.tick(Duration::ZERO);
        let batches = s.take_batches();
        assert_eq!(batches.len(), 2);
        assert!(batches.iter().all(|b| b.end.clock.watermark == Some(2_000)));
        for b in batches {
            s.committed(b.lane, b.seq);
        }
        commit_all(&mut s);
        assert!(s.caught_up());
        assert_eq!(s.watermark_ms(), Some(2_000));
    }
}
