//! The journey service's output for the alerter (README § Aggregates for the alerter):
//! each batch's per-minute partial counts go to `topics.aggregates` before the batch
//! commits, under a random id that its marker keeps; after the commit (again every 10 s,
//! and first thing after a restart) a `committed` record names each journey's latest
//! committed batch of the partition, with the committed watermark. Summing the partials
//! the committed records confirm, per group, gives exactly the committed per-minute counts;
//! a partial no committed record confirms (a crash before the marker) never counts.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use cxstream_avro::{AggregatesKind, AggregatesMessage, ClaimLink, Codec, MinuteCell, StepCell};
use cxstream_core::claims::Claim;
use cxstream_core::journey::Context;
use cxstream_core::processor::MINUTE_MS;
use cxstream_core::{Batch, JourneyMap, JourneyMaps};
use rdkafka::producer::{BaseRecord, Producer as _};

use super::partition::{Committed, LaneBatch, Slot};
use crate::config::Config;
use crate::produce::{delivered, send, Deliveries, Producer};

/// Cells per record: a large batch goes out in several records, each far below the
/// broker's message size limit (a cell is about 100 bytes).
const CELLS_PER_RECORD: usize = 2000;

/// How often every journey's latest committed batch is named again.
const AGAIN_EVERY: Duration = Duration::from_secs(10);

pub struct AggregatesOutput {
    /// Partials: a refusal stops the service before the batch commits.
    producer: Producer<Deliveries>,
    /// Committed records: one refused is logged and sent again.
    confirmations: Producer<Deliveries>,
    topic: String,
    group: String,
    /// Input partitions of the journeys.
    partitions: i32,
    republished: Instant,
}

impl AggregatesOutput {
    pub fn new(cfg: &Config, partitions: usize) -> Result<Self> {
        let producer = || -> Result<Producer<Deliveries>> {
            cfg.kafka
                .producer_config()
                .create_with_context(Deliveries::default())
                .context("creating the aggregates producer")
        };
        Ok(AggregatesOutput {
            producer: producer()?,
            confirmations: producer()?,
            topic: cfg.topics.aggregates.clone(),
            group: cfg.journey.group_id.clone(),
            partitions: i32::try_from(partitions).unwrap_or(i32::MAX),
            republished: Instant::now(),
        })
    }

    /// Sends each batch's partial counts under a fresh id (kept in the batch's end, which
    /// its marker records) and waits until the broker has them all: a batch commits only
    /// after what it published is durable.
    pub fn send_partials(
        &self,
        codec: &Codec,
        maps: &JourneyMaps,
        taken: &mut [(i32, Vec<LaneBatch>)],
        waiting: &dyn Fn(),
    ) -> Result<()> {
        let maps: Vec<&JourneyMap> = maps.iter().map(|m| &**m).collect();
        let mut buf = Vec::new();
        for (p, batches) in taken.iter_mut() {
            for b in batches.iter_mut() {
                let Some(map) = maps.get(b.lane) else {
                    continue;
                };
                // Never 0, which markers of batches without partials hold.
                let id = rand::random::<u64>().max(1);
                b.end.aggregates_id = id;
                for m in self.partials(map, *p, b.seq, (b.end.claim, id), &b.batch) {
                    buf.clear();
                    codec.encode_aggregates(&m, &mut buf)?;
                    let key = key(&map.name, *p);
                    let record = BaseRecord::to(&self.topic)
                        .key(key.as_bytes())
                        .payload(&buf[..]);
                    send(&self.producer, record).context("sending partial aggregates")?;
                }
            }
        }
        if let Some(why) = delivered(&self.producer, &self.topic, waiting)? {
            anyhow::bail!(
                "the aggregates topic `{}` refused records ({why}); nothing read since the \
                 last commit was committed, so they are sent again when the service restarts",
                self.topic
            );
        }
        Ok(())
    }

    /// Names each journey's latest committed batch of every partition, as it was taken,
    /// when it is new (all of them every 10 s). Call after the commits. A record the
    /// broker refuses is logged: it is sent again within seconds.
    pub fn confirm(&mut self, codec: &Codec, slots: &mut BTreeMap<i32, Slot>) {
        if let Some(why) = self.confirmations.context().take_failures() {
            tracing::warn!(error = %why, "a committed-batch record was not delivered; it is sent again");
        }
        let again = self.republished.elapsed() >= AGAIN_EVERY;
        if again {
            self.republished = Instant::now();
        }
        let mut buf = Vec::new();
        // A partition not checked since its last commit may have been claimed by another
        // owner: its batches wait (see `cxstream_core::claims`).
        for (p, slot) in slots.iter_mut().filter(|(_, s)| s.is_checked()) {
            for (lane, c) in slot.confirmations_to_publish(again) {
                let journey = slot.journey(lane).to_string();
                let m = self.committed(&journey, *p, c, slot.claim(lane));
                buf.clear();
                if let Err(e) = codec.encode_aggregates(&m, &mut buf) {
                    tracing::warn!(error = %e, "cannot encode a committed-batch record");
                    continue;
                }
                let key = key(&journey, *p);
                let record = BaseRecord::to(&self.topic)
                    .key(key.as_bytes())
                    .payload(&buf[..]);
                if let Err(e) = send(&self.confirmations, record) {
                    tracing::warn!(partition = p, error = %e, "cannot send a committed-batch record");
                }
            }
        }
    }

    /// Waits (a while) for the last committed records to reach the broker: on exit nobody
    /// may resume the partitions to say them again.
    pub fn close(&self) {
        if let Err(e) = self.confirmations.flush(Duration::from_secs(10)) {
            tracing::warn!(error = %e, "the last committed-batch records may not have been delivered");
        }
    }

    fn message<S>(
        &self,
        journey: &str,
        partition: i32,
        kind: AggregatesKind,
    ) -> AggregatesMessage<S> {
        AggregatesMessage {
            journey: journey.to_string(),
            group: self.group.clone(),
            kind,
            partition,
            partitions: self.partitions,
            seq: 0,
            batch_id: 0,
            chunk: 0,
            chunks: 0,
            watermark: None,
            touchpoints_watermark: None,
            idle: false,
            minutes: Vec::new(),
            steps: Vec::new(),
            claim: 0,
            chain: Vec::new(),
        }
    }

    /// The committed record of batch `c`, with the sender's chain: of each batch it
    /// confirms, the chain names the claim whose partial counts.
    fn committed(
        &self,
        journey: &str,
        partition: i32,
        c: Committed,
        claim: Option<&Claim>,
    ) -> AggregatesMessage {
        AggregatesMessage {
            // The id's bits, as Avro has no unsigned long.
            claim: claim.map_or(0, |c| c.id as i64),
            chain: claim.map_or_else(Vec::new, |c| c.chain.iter().map(ClaimLink::from).collect()),
            seq: i64::try_from(c.seq).unwrap_or(i64::MAX),
            // The id's bits, as Avro has no unsigned long.
            batch_id: c.aggregates_id as i64,
            watermark: c.published.watermark,
            touchpoints_watermark: c.touchpoints,
            idle: c.published.idle,
            ..self.message(journey, partition, AggregatesKind::Committed)
        }
    }

    /// A batch's changes in records of at most [`CELLS_PER_RECORD`] cells; at least one,
    /// so that a reader can tell every batch it was told committed was read whole.
    fn partials<'m>(
        &self,
        map: &'m JourneyMap,
        partition: i32,
        seq: u64,
        (claim, id): (u64, u64),
        batch: &Batch,
    ) -> Vec<AggregatesMessage<&'m str>> {
        let minutes: Vec<MinuteCell<&str>> = batch
            .aggregates
            .iter()
            .map(|(k, c)| {
                let n = Context::names(k.context.map(Context::from), map);
                MinuteCell {
                    minute: k.minute * MINUTE_MS,
                    stage: n.stage,
                    touchpoint: n.touchpoint,
                    channel: n.channel,
                    segment: n.segment,
                    counts: *c,
                }
            })
            .collect();
        let steps: Vec<StepCell<&str>> = batch
            .step_aggregates
            .iter()
            .map(|(k, c)| {
                let n = Context::names(Some(k.context.into()), map);
                StepCell {
                    minute: k.minute * MINUTE_MS,
                    step: map.step_name(k.step),
                    stage: n.stage,
                    touchpoint: n.touchpoint,
                    channel: n.channel,
                    segment: n.segment,
                    counts: *c,
                }
            })
            .collect();
        let chunks = minutes
            .len()
            .div_ceil(CELLS_PER_RECORD)
            .max(steps.len().div_ceil(CELLS_PER_RECORD))
            .max(1);
        // The cells move into their chunks.
        let (mut minutes, mut steps) = (minutes.into_iter(), steps.into_iter());
        (0..chunks)
            .map(|i| AggregatesMessage {
                seq: i64::try_from(seq).unwrap_or(i64::MAX),
                batch_id: id as i64,
                claim: claim as i64,
                chunk: i32::try_from(i).unwrap_or(i32::MAX),
                chunks: i32::try_from(chunks).unwrap_or(i32::MAX),
                minutes: minutes.by_ref().take(CELLS_PER_RECORD).collect(),
                steps: steps.by_ref().take(CELLS_PER_RECORD).collect(),
                ..self.message(&map.name, partition, AggregatesKind::Partial)
            })
            .collect()
    }
}

/// The records of a journey's partition share a key, so they stay in order.
fn key(journey: &str, partition: i32) -> String {
    format!("{journey}/{partition}")
}
