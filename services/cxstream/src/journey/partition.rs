//! One owned input partition (the same partition number of both input topics, and of the
//! identities topic when identity stitching is on): each journey map's processor and the
//! read positions of every source.
//!
//! The event-time rules live in the core's processor; this only tells it what the
//! consumer sees: each record with its Kafka timestamp, and when an input is read to its
//! end and quiet (idle), so that a silent input does not hold the watermark back forever.
//! With identity stitching it also dispatches the identities topic's messages to their
//! journey and keeps, per journey, the watermark every partition last published.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cxstream_avro::{Codec, IdentityMessage, IdentityMessageKind};
use cxstream_clickhouse::{BatchEnd, Resume, Stored, Wanted};
use cxstream_core::claims::Claim;
use cxstream_core::erasure::Erasures;
use cxstream_core::identity::{Identification, IdentityPolicy, VISITOR_PREFIX};
use cxstream_core::{
    Batch, EventClock, EventTimePolicy, Input, Journey, JourneyMap, JourneyMaps,
    PartitionProcessor, SurveyAnswer, TouchpointEvent,
};

/// Journeys moved under erased customers' pseudonyms.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Moved {
    /// Held in memory.
    pub held: usize,
    /// Let go, and read back to be moved.
    pub let_go: usize,
}

/// Where a partition's journeys let go are read back from (ClickHouse, as last committed).
pub trait JourneyStore {
    /// The journeys of `lane` (a journey map) that `wanted` names, as committed under
    /// `claim`. An error stops the reading: nothing after it is applied.
    fn load(
        &mut self,
        lane: usize,
        claim: &Claim,
        wanted: Wanted,
    ) -> anyhow::Result<Vec<(String, Stored)>>;
}

/// Hashes asked for in one query: each about 20 characters of its text, twice (ClickHouse
/// reads at most 256 KiB of a query's text).
const HASHES_PER_QUERY: usize = 2000;
/// Erasure fingerprints asked for in one query (68 characters each, twice).
const FINGERPRINTS_PER_QUERY: usize = 1000;
/// Customers asked for in one query (a customer id is at most a few dozen characters).
const CUSTOMERS_PER_QUERY: usize = 1000;

/// An input record decoded once, ahead of applying it: the records polled together are
/// looked at first, so that the journeys they need are read back in one query.
pub enum Decoded {
    Touchpoint(TouchpointEvent),
    Answer(SurveyAnswer),
    /// Refused: the kind of error and its message.
    Bad(&'static str, String),
    /// Not decoded ahead (an identities message, or a record skipped).
    Later,
}

impl Decoded {
    /// The record's customer, event time and input, for what to read back before it.
    fn read_back_for(&self) -> Option<(&Option<String>, i64, Input)> {
        match self {
            Decoded::Touchpoint(ev) => Some((&ev.customer_id, ev.event_time, Input::Touchpoints)),
            Decoded::Answer(a) => Some((&a.customer_id, a.answer_time, Input::Answers)),
            Decoded::Bad(..) | Decoded::Later => None,
        }
    }
}

/// How far, in event time, one input is read ahead of the other while the other has records
/// to read. Catching up, the broker may hand one topic over long before the other; the
/// watermark follows the slower, so journeys would keep every event of the faster (and no
/// journey would go idle, nor deadline pass) until the end. The input ahead then waits
/// until the other has come as far, and goes on from where it stopped (its queue is not
/// polled meanwhile, see `journey::queues`).
const ALIGN_MS: i64 = 86_400_000;

/// Where a record comes from: an input topic, or the internal identities topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    Touchpoints,
    Answers,
    Identities,
}

impl Source {
    pub const ALL: [Source; 3] = [Source::Touchpoints, Source::Answers, Source::Identities];

    fn index(self) -> usize {
        self as usize
    }

    /// The input whose event time it carries, if an input.
    pub fn input(self) -> Option<Input> {
        match self {
            Source::Touchpoints => Some(Input::Touchpoints),
            Source::Answers => Some(Input::Answers),
            Source::Identities => None,
        }
    }

    /// Bounded metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Touchpoints => "touchpoints",
            Source::Answers => "answers",
            Source::Identities => "identities",
        }
    }
}

/// Read position of one source topic-partition.
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

    /// A source not read at all (identity stitching off): always at its end and quiet.
    fn unused() -> Self {
        Cursor {
            next: Some(0),
            high: Some(0),
            last_record: Instant::now(),
            idle: true,
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
    pub source: Source,
    pub offset: i64,
    pub kind: &'static str,
    pub message: String,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
}

/// One record as the consumer read it.
pub struct Record<'a> {
    pub source: Source,
    pub key: Option<&'a [u8]>,
    pub payload: &'a [u8],
    pub offset: i64,
    /// Kafka record timestamp, epoch ms.
    pub timestamp_ms: Option<i64>,
}

/// A partition's committed watermark as it publishes it to every partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub watermark: Option<i64>,
    /// Its inputs are read to their end and quiet: it holds no one back.
    pub idle: bool,
}

/// A journey's latest committed batch, as the aggregates topic is told of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    pub seq: u64,
    /// The id its partial counts were published under (0: none).
    pub aggregates_id: u64,
    pub published: Published,
    /// How far its touchpoint counts are final (may be ahead of the watermark).
    pub touchpoints: Option<i64>,
}

/// One journey map's processor over the partition, and how far that journey has applied
/// and committed: journeys commit their own batches, so each resumes from its own point.
struct Lane {
    processor: PartitionProcessor,
    next_seq: u64,
    /// Committed batches below this are folded into the partition's compacted generation.
    live_from: u64,
    /// Next offset of each source this journey applies; `None` until its first record or a
    /// committed resume point.
    next: [Option<i64>; 3],
    /// Records taken since the last batch was taken (its records).
    records_since_commit: u64,
    /// Something changed that must be committed even without new records (an idle input
    /// moved the watermark, and journeys may have been folded).
    dirty: bool,
    /// Identity stitching: the watermark each partition last published (`None`: not heard
    /// from yet, which holds every held touchpoint back).
    heard: Vec<Option<Published>>,
    /// What this journey last published of its own.
    published: Option<Published>,
    /// The lowest of `heard` (see [`identity_watermark`]).
    identity_watermark: Option<i64>,
    /// The latest committed batch as it was taken, and what the aggregates topic was last
    /// told of it.
    last: Option<Committed>,
    confirmed: Option<Committed>,
    /// This owner's claim on the partition, which its batches commit under.
    claim: Arc<Claim>,
}

impl Lane {
    /// Reads back from `store` what `load` names, into this lane's processor. What is not
    /// found is asked once more: a compaction committed between a load's two reads (the
    /// generation, then the rows) may have moved the rows out of what the first read.
    fn read_back(
        &mut self,
        lane: usize,
        store: &mut dyn JourneyStore,
        mut customers: Vec<String>,
        due_by: Option<i64>,
    ) -> anyhow::Result<()> {
        for _ in 0..2 {
            for chunk in customers.chunks(CUSTOMERS_PER_QUERY) {
                let wanted = Wanted::Customers(chunk.to_vec());
                self.restore_loaded(store.load(lane, &self.claim, wanted)?);
            }
            // Still let go after two reads: another customer with the same hash was.
            customers.retain(|c| self.processor.is_stored(c));
            if customers.is_empty() {
                break;
            }
        }
        let Some(by) = due_by else {
            return Ok(());
        };
        let mut due = self.processor.stored_due_by(by);
        for _ in 0..2 {
            for chunk in due.chunks(HASHES_PER_QUERY) {
                let wanted = Wanted::Hashes(chunk.to_vec());
                self.restore_loaded(store.load(lane, &self.claim, wanted)?);
            }
            due = self.processor.still_stored(&due);
            if due.is_empty() {
                return Ok(());
            }
        }
        let missing = self.processor.drop_stored(&due);
        tracing::error!(
            journey = self.processor.map().name.as_str(),
            missing,
            "journeys let go were not found in ClickHouse when their deadlines came; they are forgotten, as a restart would find them"
        );
        Ok(())
    }

    fn restore_loaded(&mut self, rows: Vec<(String, Stored)>) {
        for (c, s) in rows {
            self.processor.restore_loaded(c, s.journey, s.written);
        }
    }

    fn resumed(map: Arc<JourneyMap>, resume: Resume, setup: &Setup) -> Self {
        let clock = EventClock::resumed(setup.policy, resume.clock);
        let mut processor = PartitionProcessor::resumed(map, clock);
        if let Some(identity) = setup.identity {
            processor = processor.with_identity(identity);
        }
        if setup.let_go {
            processor = processor.letting_go();
            if let Some(after) = setup.let_go_quiet_after {
                processor = processor.letting_quiet_journeys_go(after);
            }
        }
        processor.set_erasures(setup.erasures.clone());
        let mut unheld = Vec::new();
        for (customer, stored) in resume.journeys {
            let device = customer.strip_prefix(VISITOR_PREFIX);
            let keep_journey = stored.visitor.is_none() || stored.journey != Journey::default();
            if let (Some(device), Some(visitor)) = (device, stored.visitor) {
                if setup.identity.is_some() {
                    processor.restore_visitor(device.to_string(), visitor);
                } else {
                    unheld.extend(visitor.held.into_iter().map(|r| (customer.clone(), r)));
                }
            }
            if keep_journey {
                processor.restore(customer, stored.journey, stored.written);
            }
        }
        // Identity stitching was turned off: what waited counts as its visitor's now (its
        // input offsets are committed, so it is never read again).
        for (visitor, mut r) in unheld {
            r.event.customer_id = Some(visitor);
            if let Err(e) = processor.on_stitched(r.event, r.source_offset) {
                tracing::warn!(error = %e, "a held touchpoint could not be applied");
            }
        }
        // Restored from what is committed: the idle ones can be read again when needed.
        processor.let_go_restored();
        // Restored, the processor is where the last batch left it.
        let last = resume.last.map(|(seq, aggregates_id)| Committed {
            seq,
            aggregates_id,
            published: Published {
                watermark: processor.watermark_ms(),
                idle: false,
            },
            touchpoints: processor.touchpoints_final_ms(),
        });
        Lane {
            claim: Arc::new(resume.claim),
            processor,
            next_seq: resume.next_seq,
            live_from: resume.live_from,
            next: [
                resume.touchpoints_offset,
                resume.answers_offset,
                resume.identities_offset,
            ],
            records_since_commit: 0,
            // With erasures, a resumed partition commits at once, so that its marker says
            // they are applied here (what `cxstream erase` waits for).
            dirty: !setup.erasures.is_empty(),
            heard: vec![None; setup.partitions],
            published: None,
            identity_watermark: None,
            last,
            confirmed: None,
        }
    }

    /// Its watermark and idleness as a batch taken now holds them.
    fn published_now(&self, idle: bool) -> Published {
        Published {
            watermark: self.processor.watermark_ms(),
            idle,
        }
    }

    /// Whether the record at `offset` of `source` is new to this journey (then it is taken).
    fn takes(&mut self, source: Source, offset: i64) -> bool {
        let next = &mut self.next[source.index()];
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

    /// A partition published its watermark: held touchpoints whose wait is over are
    /// released by the lowest watermark of all.
    fn heard_from(&mut self, partition: usize, published: Published) {
        let Some(slot) = self.heard.get_mut(partition) else {
            return;
        };
        *slot = Some(published);
        self.identity_watermark = identity_watermark(&self.heard);
        if let Some(iw) = self.identity_watermark {
            self.processor.release_identities(iw);
        }
    }

    /// Whether an event of `input` dated `time` must wait: see [`Slot::must_wait`].
    fn must_wait(&self, input: Input, time: i64, lead: i64) -> bool {
        match (self.processor.clock().high(input), self.identity_watermark) {
            (_, Some(iw)) => time > iw.saturating_add(lead),
            (Some(_), None) => true,
            (None, None) => false,
        }
    }
}

/// The lowest watermark the partitions published: of those reading (an idle partition, read
/// to its end and quiet, holds nothing back, or traffic on one partition would wait for
/// quiet ones forever), or of all when all are idle; none while one was not heard from or a
/// reading one has none yet.
fn identity_watermark(heard: &[Option<Published>]) -> Option<i64> {
    let mut reading: Option<i64> = None;
    let mut idle: Option<i64> = None;
    let mut any_reading = false;
    for h in heard {
        let h = (*h)?;
        let lowest = if h.idle {
            &mut idle
        } else {
            any_reading = true;
            &mut reading
        };
        match h.watermark {
            Some(w) => *lowest = Some(lowest.map_or(w, |l| l.min(w))),
            None if h.idle => {}
            None => return None,
        }
    }
    if any_reading {
        reading
    } else {
        idle
    }
}

/// Whether `now` must be published: it differs from what was `sent` last, or everything is
/// published `again`; then it is what was sent.
fn unsent<T: PartialEq + Copy>(sent: &mut Option<T>, now: T, again: bool) -> bool {
    let publish = again || *sent != Some(now);
    if publish {
        *sent = Some(now);
    }
    publish
}

/// A batch of one journey, ready to commit.
pub struct LaneBatch {
    pub lane: usize,
    pub seq: u64,
    pub batch: Batch,
    pub end: BatchEnd,
    /// The journey's watermark and idleness as of this batch: what may be published once
    /// it is committed (later records are not in it).
    pub published: Published,
    /// How far its touchpoint counts are final as of this batch.
    pub touchpoints_final: Option<i64>,
}

impl LaneBatch {
    /// What the aggregates topic is told of this batch once it is committed.
    pub fn committed(&self) -> Committed {
        Committed {
            seq: self.seq,
            aggregates_id: self.end.aggregates_id,
            published: self.published,
            touchpoints: self.touchpoints_final,
        }
    }
}

/// What every slot of the service shares.
#[derive(Debug, Clone)]
pub struct Setup {
    pub policy: EventTimePolicy,
    /// Identity stitching, when on.
    pub identity: Option<IdentityPolicy>,
    /// Partitions of the topics (how many watermarks the identity watermark waits for).
    pub partitions: usize,
    /// The consumer group: only its own journeys' watermarks count (a replay under a new
    /// group reading an identities topic an earlier run wrote must not run ahead on them).
    pub group: Arc<str>,
    /// Erased customers, known before any journey is restored.
    pub erasures: Arc<Erasures>,
    /// Whether idle journeys are let go once committed (`journey.let_go_idle_journeys`).
    pub let_go: bool,
    /// With `let_go`, journeys with events are let go too once quiet this long
    /// (`journey.let_go_quiet_journeys_after_ms`).
    pub let_go_quiet_after: Option<i64>,
}

impl Setup {
    /// With identity stitching, how far a partition's event time may run ahead of the
    /// identity watermark: half of (allowed lateness − identity window). A touchpoint
    /// claimed on one partition is then never late on another, and one released is never
    /// late on its own (README § Identity stitching).
    pub fn identity_lead(&self) -> Option<i64> {
        self.identity
            .map(|i| (self.policy.allowed_lateness_ms - i.window_ms) / 2)
    }
}

pub struct Slot {
    /// One per journey map, in the maps' order.
    lanes: Vec<Lane>,
    /// See [`Setup::identity_lead`].
    lead: Option<i64>,
    group: Arc<str>,
    /// What the consumer has read of each source (the furthest of the journeys).
    cursors: [Cursor; 3],
    rejected: Vec<Rejected>,
    /// The journeys a record is new to (reused: no allocation per record).
    takers: Vec<usize>,
    /// Whether a check since the last commit (or the claim) found every claim still the
    /// partition's highest: only then may its batches be confirmed to the alerter.
    checked: bool,
}

impl Slot {
    /// `resumes` holds each map's resume point, in the maps' order.
    pub fn new(maps: &JourneyMaps, resumes: Vec<Resume>, setup: &Setup) -> Self {
        let lanes: Vec<Lane> = maps
            .iter()
            .zip(resumes)
            .map(|(map, resume)| Lane::resumed(map.clone(), resume, setup))
            .collect();
        // Reading starts where the journey furthest behind resumes.
        let start = |i: usize| Cursor::new(least_of_all(lanes.iter().map(|l| l.next[i])));
        let identities = if setup.identity.is_some() {
            start(2)
        } else {
            Cursor::unused()
        };
        Slot {
            cursors: [start(0), start(1), identities],
            lead: setup.identity_lead(),
            group: setup.group.clone(),
            lanes,
            rejected: Vec::new(),
            takers: Vec::new(),
            // Until a check after the claim: another owner may have claimed meanwhile.
            checked: false,
        }
    }

    fn cursor(&mut self, source: Source) -> &mut Cursor {
        &mut self.cursors[source.index()]
    }

    /// The journey (map) name of a lane.
    pub fn journey(&self, lane: usize) -> &str {
        self.lanes
            .get(lane)
            .map_or("", |l| l.processor.map().name.as_str())
    }

    /// Decodes an input record (touchpoint or answer) once for every journey.
    pub fn decode(r: &Record<'_>, codec: &Codec) -> Decoded {
        let decoded = match r.source {
            Source::Touchpoints => codec.decode_touchpoint(r.payload).map(Decoded::Touchpoint),
            Source::Answers => codec.decode_answer(r.payload).map(Decoded::Answer),
            Source::Identities => return Decoded::Later,
        };
        decoded.unwrap_or_else(|e| Decoded::Bad(e.kind(), e.to_string()))
    }

    /// Reads back, in as few queries as it takes, what the journeys need before records
    /// `ahead` (decoded, in the order they are read) are applied: the same as
    /// [`Self::process`] reads back before each, for all at once. What is read back and
    /// not needed after all stays until the next commit lets it go again.
    pub fn read_ahead(
        &mut self,
        ahead: &[&Decoded],
        store: &mut dyn JourneyStore,
    ) -> anyhow::Result<()> {
        for (i, lane) in self.lanes.iter_mut().enumerate() {
            if lane.processor.stored_journeys() == 0 {
                continue;
            }
            let records = ahead.iter().filter_map(|d| d.read_back_for());
            let (customers, due_by) = lane.processor.to_load_ahead(records);
            if !customers.is_empty() || due_by.is_some() {
                lane.read_back(i, store, customers, due_by)?;
            }
        }
        Ok(())
    }

    /// Applies a record, decoded ([`Self::decode`]) or not, to every journey that has not
    /// committed it; a refusal (the same in every journey) is collected once in
    /// [`Self::take_rejected`].
    pub fn process(
        &mut self,
        r: &Record<'_>,
        decoded: Decoded,
        codec: &Codec,
        store: &mut dyn JourneyStore,
    ) -> anyhow::Result<()> {
        let takers = self.take(r);
        let done = if takers.is_empty() {
            Ok(())
        } else if r.source == Source::Identities {
            self.apply_identity(r, codec, &takers);
            Ok(())
        } else if let Decoded::Later = decoded {
            self.apply(r, Self::decode(r, codec), &takers, store)
        } else {
            self.apply(r, decoded, &takers, store)
        };
        self.takers = takers;
        done
    }

    /// A record refused before decoding (too large): taken like any record by the journeys
    /// that have not committed it, so that its offset is committed once it is dead-lettered.
    pub fn refuse(&mut self, r: &Record<'_>, kind: &'static str, message: String) {
        let takers = self.take(r);
        if !takers.is_empty() {
            self.reject(r, kind, message);
        }
        self.takers = takers;
    }

    fn reject(&mut self, r: &Record<'_>, kind: &'static str, message: String) {
        self.rejected.push(Rejected {
            source: r.source,
            offset: r.offset,
            kind,
            message,
            key: r.key.map(<[u8]>::to_vec),
            payload: r.payload.to_vec(),
        });
    }

    /// Moves the read position past `r` and returns the journeys it is new to (the reused
    /// buffer, to be put back).
    fn take(&mut self, r: &Record<'_>) -> Vec<usize> {
        let mut takers = std::mem::take(&mut self.takers);
        takers.clear();
        let cur = self.cursor(r.source);
        if cur.next.is_some_and(|n| r.offset < n) {
            // Re-delivered below the resume point (already committed): skip.
            return takers;
        }
        cur.next = Some(r.offset + 1);
        cur.last_record = Instant::now();
        cur.idle = false;
        takers.extend((0..self.lanes.len()).filter(|&i| self.lanes[i].takes(r.source, r.offset)));
        takers
    }

    fn apply(
        &mut self,
        r: &Record<'_>,
        decoded: Decoded,
        takers: &[usize],
        store: &mut dyn JourneyStore,
    ) -> anyhow::Result<()> {
        let applied = match decoded {
            Decoded::Touchpoint(ev) => {
                let input = Input::Touchpoints;
                self.read_back(takers, &ev.customer_id, ev.event_time, input, store)?;
                self.apply_each(takers, ev, |p, ev| {
                    p.on_touchpoint(ev, r.offset, r.timestamp_ms)
                })
            }
            Decoded::Answer(a) => {
                self.read_back(takers, &a.customer_id, a.answer_time, Input::Answers, store)?;
                self.apply_each(takers, a, |p, a| p.on_answer(a, r.offset, r.timestamp_ms))
            }
            Decoded::Bad(kind, message) => Err((kind, message)),
            Decoded::Later => Ok(()),
        };
        if let Err((kind, message)) = applied {
            self.reject(r, kind, message);
        }
        Ok(())
    }

    /// Reads back, for each journey that takes a record of `customer_id` dated `time`,
    /// what its processor needs before applying it.
    fn read_back(
        &mut self,
        takers: &[usize],
        customer_id: &Option<String>,
        time: i64,
        input: Input,
        store: &mut dyn JourneyStore,
    ) -> anyhow::Result<()> {
        for &i in takers {
            let lane = &mut self.lanes[i];
            let load = lane.processor.to_load(customer_id, time, input);
            if !load.is_empty() {
                lane.read_back(i, store, load.customer.into_iter().collect(), load.due_by)?;
            }
        }
        Ok(())
    }

    /// A message of the identities topic, for the lane of its journey (taken by every
    /// lane that has not committed past it; the others' journeys are another map's).
    fn apply_identity(&mut self, r: &Record<'_>, codec: &Codec, takers: &[usize]) {
        let m = match codec.decode_identity(r.payload) {
            Ok(m) => m,
            Err(e) => return self.reject(r, e.kind(), e.to_string()),
        };
        let Some(&lane) = takers.iter().find(|&&i| self.journey(i) == m.journey) else {
            return;
        };
        if let Err(message) = self.apply_message(lane, m, r.offset, codec) {
            self.reject(r, "invalid_identity_message", message);
        }
    }

    fn apply_message(
        &mut self,
        lane: usize,
        m: IdentityMessage,
        offset: i64,
        codec: &Codec,
    ) -> Result<(), String> {
        let group = self.group.clone();
        let lane = &mut self.lanes[lane];
        match m.kind {
            IdentityMessageKind::Identification => {
                let (Some(anonymous_id), Some(customer_id), Some(time)) =
                    (m.anonymous_id, m.customer_id, m.time)
                else {
                    return Err("an identification without its ids or time".into());
                };
                lane.processor.on_identification(Identification {
                    anonymous_id,
                    customer_id,
                    time,
                    watermark: m.watermark,
                    partition: m.partition.and_then(|p| u32::try_from(p).ok()),
                });
            }
            IdentityMessageKind::Stitched => {
                let bytes = m
                    .stitched
                    .ok_or("a stitched message without its touchpoint")?;
                let ev = codec.decode_touchpoint(&bytes).map_err(|e| e.to_string())?;
                lane.processor
                    .on_stitched(ev, offset)
                    .map_err(|e| e.to_string())?;
            }
            IdentityMessageKind::Watermark => {
                if *m.group != *group {
                    return Ok(());
                }
                let from = m
                    .partition
                    .and_then(|p| usize::try_from(p).ok())
                    .ok_or("a watermark without its partition")?;
                let published = Published {
                    watermark: m.watermark,
                    idle: m.idle,
                };
                lane.heard_from(from, published);
            }
        }
        Ok(())
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

    /// A high watermark the broker confirmed: the higher of it and what the statistics
    /// said (a record written since the question was asked is not undone by its answer).
    pub fn confirm_high_watermark(&mut self, source: Source, high: i64) {
        let known = self.cursors[source.index()].high.unwrap_or(0);
        self.set_high_watermark(source, high.max(known));
    }

    pub fn set_high_watermark(&mut self, source: Source, high: i64) {
        let cur = self.cursor(source);
        cur.high = Some(high);
        if cur.next.is_none() && high == 0 {
            cur.next = Some(0);
            for lane in &mut self.lanes {
                lane.next[source.index()].get_or_insert(0);
            }
        }
    }

    /// An input read to its end and quiet for `idle` stops holding the watermark back (the
    /// identities topic holds no event time; its quiet matters for catching up only).
    pub fn tick(&mut self, idle: Duration, store: &mut dyn JourneyStore) -> anyhow::Result<()> {
        for source in Source::ALL {
            let cur = self.cursor(source);
            let now_idle = cur.at_end() && cur.last_record.elapsed() >= idle;
            if now_idle && !cur.idle {
                cur.idle = true;
                let Some(input) = source.input() else {
                    continue;
                };
                for (i, lane) in self.lanes.iter_mut().enumerate() {
                    // The watermark may move: the deadlines it may pass are read back first.
                    if let Some(by) = lane.processor.to_load_when_idle(input) {
                        lane.read_back(i, store, Vec::new(), Some(by))?;
                    }
                    lane.processor.set_idle(input, true);
                    lane.dirty = true;
                }
            }
        }
        Ok(())
    }

    /// Whether [`Self::tick`] would mark a source idle now.
    pub fn would_idle(&self, idle: Duration) -> bool {
        self.cursors
            .iter()
            .any(|c| !c.idle && c.at_end() && c.last_record.elapsed() >= idle)
    }

    /// Whether every input is read to where it is known to end, or its end is not known yet.
    pub fn may_be_read_to_end(&self) -> bool {
        self.cursors.iter().all(|c| c.high.is_none() || c.at_end())
    }

    pub fn caught_up(&self) -> bool {
        self.cursors.iter().all(|c| c.at_end() && c.idle) && !self.lanes.iter().any(Lane::pending)
    }

    /// New erasures: every journey commits a batch with them applied (even an empty one),
    /// so that its marker tells `cxstream erase` that nothing of theirs is written any more.
    /// Journeys let go are read back if their customer is erased, and moved likewise.
    /// Returns how many journeys moved under pseudonyms.
    pub fn set_erasures(
        &mut self,
        erasures: &Arc<Erasures>,
        store: &mut dyn JourneyStore,
    ) -> anyhow::Result<Moved> {
        let mut moved = Moved::default();
        let fingerprints: Vec<String> = erasures.fingerprints().map(str::to_string).collect();
        for (i, lane) in self.lanes.iter_mut().enumerate() {
            moved.held += lane.processor.set_erasures(erasures.clone());
            lane.dirty = true;
            if lane.processor.stored_journeys() == 0 {
                continue;
            }
            let before = lane.processor.stored_journeys();
            for chunk in fingerprints.chunks(FINGERPRINTS_PER_QUERY) {
                let wanted = Wanted::Fingerprints(chunk.to_vec());
                lane.restore_loaded(store.load(i, &lane.claim, wanted)?);
            }
            moved.let_go += before - lane.processor.stored_journeys();
        }
        Ok(moved)
    }

    /// The batch of each journey to commit now, if anything changed. Records read after
    /// this go into the next batch, whether or not this one is committed yet.
    pub fn take_batches(&mut self) -> Vec<LaneBatch> {
        let idle = self.inputs_idle();
        let mut out = Vec::new();
        for (i, lane) in self.lanes.iter_mut().enumerate() {
            if !lane.pending() {
                continue;
            }
            // -2 is librdkafka's "beginning": nothing read yet on that topic.
            let next = |s: Source| lane.next[s.index()].unwrap_or(-2);
            let end = BatchEnd {
                touchpoints_next_offset: next(Source::Touchpoints),
                answers_next_offset: next(Source::Answers),
                identities_next_offset: next(Source::Identities),
                clock: lane.processor.clock().state(),
                records: lane.records_since_commit,
                aggregates_id: 0,
                // Set by the flush, which knows where the dead-letter topic stands.
                dead_letters_from: Vec::new(),
                erasures_seen: 0,
                claim: lane.claim.id,
            };
            let batch = lane.processor.take_batch();
            out.push(LaneBatch {
                lane: i,
                seq: lane.next_seq,
                published: lane.published_now(idle),
                touchpoints_final: lane.processor.touchpoints_final_ms(),
                batch,
                end,
            });
            lane.next_seq += 1;
            lane.records_since_commit = 0;
            lane.dirty = false;
        }
        out
    }

    /// A batch taken by [`Self::take_batches`] is committed.
    pub fn committed(&mut self, lane: usize, batch: Committed) {
        if let Some(l) = self.lanes.get_mut(lane) {
            l.last = Some(batch);
            l.processor.committed();
        }
    }

    /// Each journey's latest committed batch to name on the aggregates topic, as it was
    /// when taken: those not named yet (a new commit, a resume), or all when `again`.
    pub fn confirmations_to_publish(&mut self, again: bool) -> Vec<(usize, Committed)> {
        let mut out = Vec::new();
        for (i, lane) in self.lanes.iter_mut().enumerate() {
            let Some(now) = lane.last else {
                continue;
            };
            if unsent(&mut lane.confirmed, now, again) {
                out.push((i, now));
            }
        }
        out
    }

    /// Each journey's watermark to publish to every partition once the batches taken now
    /// are committed: those that changed since last published, or all when `again`. Call
    /// right after [`Self::take_batches`] (then its watermark is the one being committed).
    pub fn watermarks_to_publish(&mut self, again: bool) -> Vec<(usize, Published)> {
        let idle = self.inputs_idle();
        let mut out = Vec::new();
        for (i, lane) in self.lanes.iter_mut().enumerate() {
            let now = lane.published_now(idle);
            if unsent(&mut lane.published, now, again) {
                out.push((i, now));
            }
        }
        out
    }

    /// Both inputs are read to their end and quiet.
    fn inputs_idle(&self) -> bool {
        self.cursors[..2].iter().all(|c| c.idle)
    }

    /// Whether the record at `offset` of an input, dated `time`, must wait for the identity
    /// watermark: in a journey that has not taken it yet, it is dated more than
    /// [`Setup::identity_lead`] after the identity watermark, or the identity watermark is
    /// not known (yet, or again after a restart) while the input has delivered before. An
    /// input's first event never waits, so every partition reaches a watermark and
    /// publishes it.
    ///
    /// Without identity stitching, an input that stopped at `time` ([`Self::runs_ahead`])
    /// waits until the other input has come as far, or has nothing more to read.
    pub fn must_wait(&self, source: Source, offset: i64, time: i64) -> bool {
        let Some(input) = source.input() else {
            return false;
        };
        let Some(lead) = self.lead else {
            return self.waits_for_the_other(source, time, 0);
        };
        self.lanes.iter().any(|l| {
            let new = l.next[source.index()].is_none_or(|n| offset >= n);
            new && l.must_wait(input, time, lead)
        })
    }

    /// The event time input `source` has reached, if it is more than [`ALIGN_MS`] ahead of
    /// the other input, which has records to read (not at its end, not idle): it waits
    /// there (without identity stitching, whose own wait decides).
    pub fn runs_ahead(&self, source: Source) -> Option<i64> {
        if self.lead.is_some() {
            return None;
        }
        let high = self.high(source.input()?)?;
        self.waits_for_the_other(source, high, ALIGN_MS)
            .then_some(high)
    }

    /// Whether the other input, with records to read, is more than `by` behind `time`.
    fn waits_for_the_other(&self, source: Source, time: i64, by: i64) -> bool {
        let other = match source {
            Source::Touchpoints => Source::Answers,
            Source::Answers => Source::Touchpoints,
            Source::Identities => return false,
        };
        let cur = &self.cursors[other.index()];
        if cur.at_end() || cur.idle {
            return false;
        }
        // Records to read and none applied yet: their times are not known, so wait for them.
        other
            .input()
            .and_then(|i| self.high(i))
            .is_none_or(|h| time > h.saturating_add(by))
    }

    /// The latest event time any journey applied from `input`.
    fn high(&self, input: Input) -> Option<i64> {
        self.lanes
            .iter()
            .filter_map(|l| l.processor.clock().high(input))
            .max()
    }

    /// With identity stitching, the event time of an input record (`None` when it cannot be
    /// decoded: it is dead-lettered as usual).
    pub fn event_time(&self, r: &Record<'_>, decoded: &Decoded, codec: &Codec) -> Option<i64> {
        self.lead?;
        match decoded {
            Decoded::Later => Self::decode(r, codec).read_back_for().map(|(_, t, _)| t),
            d => d.read_back_for().map(|(_, t, _)| t),
        }
    }

    /// The event time every journey of the partition has reached (the least watermark).
    pub fn watermark_ms(&self) -> Option<i64> {
        least_of_all(self.lanes.iter().map(|l| l.processor.watermark_ms()))
    }

    /// The sequence number below which to fold a journey's committed batches now, when at
    /// least `every` were committed since its last compaction (0: never), and the claim
    /// they were committed under.
    pub fn due_for_compaction(&self, lane: usize, every: u64) -> Option<(u64, Arc<Claim>)> {
        let l = self.lanes.get(lane)?;
        (every > 0 && l.next_seq.saturating_sub(l.live_from) >= every)
            .then(|| (l.next_seq, l.claim.clone()))
    }

    /// See [`Slot::checked`].
    pub fn set_checked(&mut self, checked: bool) {
        self.checked = checked;
    }

    /// Whether the last check found every claim of the partition still its highest (see
    /// `cxstream_core::claims`: a batch confirmed after that counts under every later
    /// claim).
    pub fn is_checked(&self) -> bool {
        self.checked
    }

    /// A journey lane's claim on the partition.
    pub fn claim(&self, lane: usize) -> Option<&Claim> {
        self.lanes.get(lane).map(|l| &*l.claim)
    }

    /// Each journey lane's claim id on the partition.
    pub fn claims(&self) -> impl Iterator<Item = (usize, u64)> + '_ {
        self.lanes.iter().enumerate().map(|(i, l)| (i, l.claim.id))
    }

    pub fn compacted(&mut self, lane: usize, live_from: u64) {
        if let Some(l) = self.lanes.get_mut(lane) {
            l.live_from = live_from;
        }
    }

    /// Records not read yet per source, where the log end is known.
    pub fn lag(&self) -> Vec<(Source, i64)> {
        Source::ALL
            .into_iter()
            .filter_map(|s| {
                let c = &self.cursors[s.index()];
                let high = c.high?;
                Some((s, (high - c.next.unwrap_or(0).max(0)).max(0)))
            })
            .collect()
    }

    /// Per source, the offset every journey has committed up to (what Kafka may record).
    pub fn next_offsets(&self) -> Vec<(Source, i64)> {
        Source::ALL
            .into_iter()
            .filter_map(|s| {
                let n = least_of_all(self.lanes.iter().map(|l| l.next[s.index()]))?;
                (n >= 0).then_some((s, n))
            })
            .collect()
    }

    /// Journeys let go from memory.
    pub fn journeys_let_go(&self) -> usize {
        self.lanes
            .iter()
            .map(|l| l.processor.stored_journeys())
            .sum()
    }

    /// Journeys read back since the last call.
    pub fn take_read_back(&mut self) -> u64 {
        self.lanes
            .iter_mut()
            .map(|l| l.processor.take_read_back())
            .sum()
    }

    pub fn tracked_customers(&self) -> usize {
        self.lanes
            .iter()
            .map(|l| l.processor.tracked_customers())
            .sum()
    }

    /// Touchpoints held for an identification, over the journeys.
    pub fn held_touchpoints(&self) -> usize {
        self.lanes
            .iter()
            .map(|l| l.processor.held_touchpoints())
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

    fn setup() -> Setup {
        Setup {
            policy: EventTimePolicy::default(),
            identity: None,
            partitions: 1,
            group: "g".into(),
            erasures: Default::default(),
            let_go: false,
            let_go_quiet_after: None,
        }
    }

    /// Nothing is let go in these tests: nothing is read back.
    struct NoStore;

    impl JourneyStore for NoStore {
        fn load(
            &mut self,
            _: usize,
            _: &Claim,
            wanted: Wanted,
        ) -> anyhow::Result<Vec<(String, Stored)>> {
            anyhow::bail!("nothing was let go, yet {wanted:?} was asked for")
        }
    }

    fn slot_resuming(resumes: Vec<Resume>) -> (Slot, Codec) {
        (Slot::new(&maps(), resumes, &setup()), Codec::new().unwrap())
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
        answer_to(codec, "r1", t, score)
    }

    fn answer_to(codec: &Codec, response: &str, t: i64, score: i32) -> Vec<u8> {
        let a = SurveyAnswer {
            response_id: response.into(),
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

    /// Applies `r` to `s` as the journey service does, undecoded.
    fn apply(s: &mut Slot, r: &Record<'_>, codec: &Codec) {
        s.process(r, Decoded::Later, codec, &mut NoStore)
            .expect("nothing to read back");
    }

    fn record(source: Source, payload: &[u8], offset: i64) -> Record<'_> {
        Record {
            source,
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
            s.committed(b.lane, b.committed());
        }
    }

    #[test]
    fn every_journey_commits_the_records_with_the_offsets_after_them() {
        let (mut s, codec) = slot();
        let a = answer(&codec, 1_000, 5);
        let t = touchpoint(&codec, "e0", 2_000);
        apply(&mut s, &record(Source::Answers, &a, 0), &codec);
        apply(&mut s, &record(Source::Touchpoints, &t, 7), &codec);
        let batches = s.take_batches();
        assert_eq!(summary(&batches), [(0, 1, 1, 8, 1), (1, 1, 1, 8, 1)]);
        assert_eq!(batches[1].end.clock.highs, [Some(2_000), Some(1_000)]);
        for b in batches {
            s.committed(b.lane, b.committed());
        }
        assert!(s.take_batches().is_empty());
        // Re-delivered below the committed position: skipped.
        apply(&mut s, &record(Source::Touchpoints, &t, 7), &codec);
        assert!(s.take_batches().is_empty());
        assert_eq!(
            s.next_offsets(),
            [(Source::Touchpoints, 8), (Source::Answers, 1)]
        );
    }

    #[test]
    fn a_batch_committed_after_more_was_read_is_named_as_taken_and_the_rest_stays_pending() {
        let (mut s, codec) = slot();
        const DAY: i64 = 86_400_000;
        let t0 = touchpoint(&codec, "e0", 8 * DAY);
        let a0 = answer(&codec, 8 * DAY, 4);
        apply(&mut s, &record(Source::Touchpoints, &t0, 0), &codec);
        apply(&mut s, &record(Source::Answers, &a0, 0), &codec);
        let taken = s.take_batches();
        // Read while the batch is being committed: later events move the watermark on.
        let later = 8 * DAY + 1_800_000;
        let t1 = touchpoint(&codec, "e1", later);
        let a1 = answer_to(&codec, "r2", later, 4);
        apply(&mut s, &record(Source::Touchpoints, &t1, 1), &codec);
        apply(&mut s, &record(Source::Answers, &a1, 1), &codec);
        for b in &taken {
            s.committed(b.lane, b.committed());
        }
        let named: Vec<Committed> = s
            .confirmations_to_publish(false)
            .into_iter()
            .map(|(_, c)| c)
            .collect();
        let as_taken: Vec<Committed> = taken.iter().map(LaneBatch::committed).collect();
        assert_eq!(named, as_taken);
        let next = s.take_batches();
        assert_eq!(
            next.len(),
            taken.len(),
            "what was read since is the next batch"
        );
        for (a, b) in taken.iter().zip(&next) {
            assert_eq!(b.seq, a.seq + 1);
            assert_eq!((a.end.records, b.end.records), (2, 2));
            assert_eq!(b.end.touchpoints_next_offset, 2);
            assert_eq!(b.end.answers_next_offset, 2);
            assert!(b.published.watermark > a.published.watermark);
        }
    }

    #[test]
    fn an_input_a_day_ahead_of_the_other_waits_until_the_other_comes_as_far() {
        const DAY: i64 = 86_400_000;
        let (mut s, codec) = slot();
        // Sent when they happened (an event is not refused as dated in the future).
        let at = |source, payload, offset, time| Record {
            timestamp_ms: Some(time),
            ..record(source, payload, offset)
        };
        s.set_high_watermark(Source::Answers, 10);
        // Nothing of the answers applied yet, and they have records to read.
        let t = touchpoint(&codec, "e0", DAY);
        apply(&mut s, &at(Source::Touchpoints, &t, 0, DAY), &codec);
        assert_eq!(s.runs_ahead(Source::Touchpoints), Some(DAY));
        let a = answer_to(&codec, "r1", DAY / 2, 4);
        apply(&mut s, &at(Source::Answers, &a, 0, DAY / 2), &codec);
        // Within a day: reading goes on; a day and more ahead: it stops there.
        assert_eq!(s.runs_ahead(Source::Touchpoints), None);
        let t = touchpoint(&codec, "e1", 3 * DAY);
        apply(&mut s, &at(Source::Touchpoints, &t, 1, 3 * DAY), &codec);
        assert_eq!(s.runs_ahead(Source::Touchpoints), Some(3 * DAY));
        assert_eq!(s.runs_ahead(Source::Answers), None);
        // It goes on once the answers came as far, or have nothing more to read.
        assert!(s.must_wait(Source::Touchpoints, 2, 3 * DAY));
        let a = answer_to(&codec, "r2", 3 * DAY, 4);
        apply(&mut s, &at(Source::Answers, &a, 1, 3 * DAY), &codec);
        assert!(!s.must_wait(Source::Touchpoints, 2, 3 * DAY));
        assert!(s.must_wait(Source::Touchpoints, 2, 4 * DAY));
        s.set_high_watermark(Source::Answers, 2);
        assert!(!s.must_wait(Source::Touchpoints, 2, 4 * DAY));
    }

    #[test]
    fn a_confirmed_end_older_than_the_statistics_does_not_undo_a_record_written_since() {
        let (mut s, codec) = slot();
        let t = touchpoint(&codec, "e0", 60_000);
        apply(&mut s, &record(Source::Touchpoints, &t, 0), &codec);
        // The statistics saw a second record; the broker's answer predates it.
        s.set_high_watermark(Source::Touchpoints, 2);
        s.confirm_high_watermark(Source::Touchpoints, 1);
        assert!(s.lag().contains(&(Source::Touchpoints, 1)));
        s.confirm_high_watermark(Source::Touchpoints, 3);
        assert!(s.lag().contains(&(Source::Touchpoints, 2)));
    }

    #[test]
    fn the_latest_committed_batch_is_named_after_a_resume_or_a_commit() {
        let resumed = Resume {
            next_seq: 8,
            last: Some((7, 42)),
            ..Resume::default()
        };
        let (mut s, codec) = slot_resuming(vec![resumed, Resume::default()]);
        // Resumed: its last batch is named again at once; the other journey has none yet.
        let named: Vec<(usize, u64, u64)> = s
            .confirmations_to_publish(false)
            .into_iter()
            .map(|(lane, c)| (lane, c.seq, c.aggregates_id))
            .collect();
        assert_eq!(named, [(0, 7, 42)]);
        assert!(s.confirmations_to_publish(false).is_empty());
        let t = touchpoint(&codec, "e0", 60_000);
        apply(&mut s, &record(Source::Touchpoints, &t, 0), &codec);
        for mut b in s.take_batches() {
            b.end.aggregates_id = 100 + b.lane as u64;
            s.committed(b.lane, b.committed());
        }
        let named: Vec<(usize, u64, u64)> = s
            .confirmations_to_publish(false)
            .into_iter()
            .map(|(lane, c)| (lane, c.seq, c.aggregates_id))
            .collect();
        assert_eq!(named, [(0, 8, 100), (1, 0, 101)]);
        assert!(s.confirmations_to_publish(false).is_empty());
        assert_eq!(s.confirmations_to_publish(true).len(), 2, "all, again");
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
            apply(&mut s, &record(Source::Touchpoints, &t, offset), &codec);
        }
        let bad = answer(&codec, 1_500, 9);
        apply(&mut s, &record(Source::Answers, &bad, 0), &codec);
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
            &record(Source::Answers, &big, 3),
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
            &record(Source::Answers, &big, 3),
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
        apply(&mut s, &record(Source::Touchpoints, &t, 0), &codec);
        let batches = s.take_batches();
        assert_eq!(
            batches[0].end.clock.watermark, None,
            "the answers input was never seen"
        );
        for b in batches {
            s.committed(b.lane, b.committed());
        }
        s.set_high_watermark(Source::Touchpoints, 1);
        s.set_high_watermark(Source::Answers, 0);
        assert!(!s.caught_up());
        s.tick(Duration::ZERO, &mut NoStore).unwrap();
        let batches = s.take_batches();
        assert_eq!(batches.len(), 2);
        assert!(batches.iter().all(|b| b.end.clock.watermark == Some(2_000)));
        for b in batches {
            s.committed(b.lane, b.committed());
        }
        commit_all(&mut s);
        assert!(s.caught_up());
        assert_eq!(s.watermark_ms(), Some(2_000));
    }

    #[test]
    fn the_identity_watermark_waits_for_every_partition_reading() {
        let at = |w: Option<i64>, idle: bool| Some(Published { watermark: w, idle });
        assert_eq!(identity_watermark(&[at(Some(5), false), None]), None);
        assert_eq!(
            identity_watermark(&[at(Some(5), false), at(None, false)]),
            None
        );
        assert_eq!(
            identity_watermark(&[at(Some(5), false), at(None, true)]),
            Some(5)
        );
        assert_eq!(
            identity_watermark(&[at(Some(5), false), at(Some(3), false)]),
            Some(3)
        );
        // A quiet partition holds no one back; when all are quiet, the lowest counts.
        let quiet = [at(Some(5), false), at(Some(3), true)];
        assert_eq!(identity_watermark(&quiet), Some(5));
        let all_quiet = [at(Some(5), true), at(Some(3), true)];
        assert_eq!(identity_watermark(&all_quiet), Some(3));
    }

    #[test]
    fn an_input_waits_while_the_identity_watermark_is_unknown_or_far_behind() {
        let mut setup = setup();
        setup.identity = Some(IdentityPolicy { window_ms: 10 });
        setup.partitions = 2;
        let lead = setup.identity_lead().unwrap();
        let codec = Codec::new().unwrap();
        let resumes = vec![Resume::default(), Resume::default()];
        let mut s = Slot::new(&maps(), resumes, &setup);
        let tp = Source::Touchpoints;
        assert!(
            !s.must_wait(tp, 0, 1_000),
            "the first event reads to get a watermark"
        );
        let t = touchpoint(&codec, "e0", 1_000);
        apply(&mut s, &record(tp, &t, 0), &codec);
        assert!(
            s.must_wait(tp, 1, 1_000),
            "the identity watermark is not known"
        );
        assert!(!s.must_wait(tp, 0, 1_000), "taken already by every journey");
        assert!(
            !s.must_wait(Source::Answers, 0, 1_000),
            "the other input reads on"
        );
        assert!(!s.must_wait(Source::Identities, 0, 1_000));
        for lane in &mut s.lanes {
            let heard = |w, idle| Published { watermark: w, idle };
            lane.heard_from(0, heard(Some(900), false));
            lane.heard_from(1, heard(None, true));
        }
        assert!(!s.must_wait(tp, 1, 900 + lead));
        assert!(s.must_wait(tp, 1, 901 + lead), "more than the lead ahead");
    }
}
