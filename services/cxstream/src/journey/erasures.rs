//! The erasures topic (`topics.erasures`) as the journey service reads it: every erasure
//! `cxstream erase` recorded, read to the end before any partition resumes, then followed
//! at each flush. Each batch marker says how many it had applied (`erasures_seen`), which is
//! what `cxstream erase` waits for before it deletes the customer's rows.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use cxstream_core::erasure::Erasures;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Message};

use crate::config::Config;
use crate::from_beginning::{each_ready, from_beginning};

/// How long reading the erasures recorded so far may take at start.
const LOAD_WITHIN: Duration = Duration::from_secs(60);

pub struct ErasureLog {
    consumer: BaseConsumer,
    topic: String,
    erased: Arc<Erasures>,
    /// The offset after the last record read: what markers acknowledge.
    seen: u64,
}

impl ErasureLog {
    /// Reads every erasure recorded so far.
    pub fn load(cfg: &Config) -> Result<Self> {
        let topic = cfg.topics.erasures.clone();
        let (consumer, mut ends) = from_beginning(cfg, &topic, "cxstream-erasures")?;
        // One partition: its offset is what markers acknowledge. Its first record still
        // there: an erasure lost to retention would let the customer be written again.
        let partitions = super::partition_count(&consumer, &topic)?;
        if partitions != 1 {
            anyhow::bail!(
                "the erasures topic `{topic}` has {partitions} partitions; it must have one \
                 (create it with `cxstream topics`)"
            );
        }
        let (low, _) = consumer
            .fetch_watermarks(&topic, 0, Duration::from_secs(30))
            .with_context(|| format!("reading the start of `{topic}`"))?;
        if low > 0 {
            anyhow::bail!(
                "the erasures topic `{topic}` has lost its first {low} records (retention): \
                 erased customers would be written again; restore them and set \
                 retention.ms=-1 on it"
            );
        }
        let mut log = ErasureLog {
            consumer,
            topic,
            erased: Arc::default(),
            seen: 0,
        };
        let started = Instant::now();
        while !ends.at_end() {
            if started.elapsed() > LOAD_WITHIN {
                anyhow::bail!(
                    "could not read the erasures topic `{}` to its end within {} s; without \
                     it erased customers would be written again",
                    log.topic,
                    LOAD_WITHIN.as_secs()
                );
            }
            match log.consumer.poll(Duration::from_millis(200)) {
                Some(Ok(msg)) => {
                    ends.read(msg.partition(), msg.offset());
                    take(&mut log.erased, &mut log.seen, &msg);
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, topic = %log.topic, "reading the erasures")
                }
                None => {}
            }
        }
        tracing::info!(erased = log.erased.len(), "erasures read");
        Ok(log)
    }

    /// Erasures recorded since the last call: the whole set, when there are new ones.
    pub fn refresh(&mut self) -> Option<Arc<Erasures>> {
        let before = self.seen;
        let ErasureLog {
            consumer,
            topic,
            erased,
            seen,
        } = self;
        each_ready(consumer, topic, |msg| take(erased, seen, msg));
        (self.seen > before).then(|| self.erased.clone())
    }

    pub fn erased(&self) -> &Arc<Erasures> {
        &self.erased
    }

    pub fn seen(&self) -> u64 {
        self.seen
    }
}

/// A record's key is the customer's fingerprint (see `cxstream erase`).
fn take(erased: &mut Arc<Erasures>, seen: &mut u64, msg: &BorrowedMessage<'_>) {
    *seen = (*seen).max(u64::try_from(msg.offset() + 1).unwrap_or(0));
    let key = msg.key().map(String::from_utf8_lossy).unwrap_or_default();
    if let Err(e) = Arc::make_mut(erased).insert(&key) {
        tracing::warn!(offset = msg.offset(), error = %e, "an erasure record that names no customer is skipped");
    }
}
