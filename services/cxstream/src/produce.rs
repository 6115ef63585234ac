//! What every producer of the services shares: sending through a full queue, and
//! knowing that the broker has every record sent before a commit that depends on them.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context as _, Result};
use rdkafka::client::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::message::{DeliveryResult, Message as _};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;

/// Remembers the first record a producer's broker refused (checked before every commit
/// that depends on the records), and how far its deliveries reached in each partition.
#[derive(Default)]
pub struct Deliveries {
    failed: Mutex<Option<String>>,
    ends: Mutex<BTreeMap<i32, i64>>,
}

impl Deliveries {
    /// The first delivery failure since the last call, if any.
    pub fn take_failures(&self) -> Option<String> {
        self.failed.lock().ok().and_then(|mut f| f.take())
    }

    /// Per partition, the offset after the last record delivered so far.
    pub fn delivered_ends(&self) -> BTreeMap<i32, i64> {
        self.ends.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(m) => {
                if let Ok(mut ends) = self.ends.lock() {
                    let end = ends.entry(m.partition()).or_default();
                    *end = (*end).max(m.offset() + 1);
                }
            }
            Err((e, _)) => {
                if let Ok(mut f) = self.failed.lock() {
                    f.get_or_insert_with(|| e.to_string());
                }
            }
        }
    }
}

/// Waits until the broker has every record `producer` sent to `topic`; returns the first
/// refusal since the last call, if any. A broker that does not answer is waited for (a
/// restart is no refusal), calling `waiting` every 30 s meanwhile: each record is either
/// acknowledged or, after librdkafka's `message.timeout.ms`, refused, so the wait ends.
pub fn delivered(
    producer: &ThreadedProducer<Deliveries>,
    topic: &str,
    waiting: &dyn Fn(),
) -> Result<Option<String>> {
    let started = std::time::Instant::now();
    while producer.in_flight_count() > 0 {
        match producer.flush(Duration::from_secs(30)) {
            Ok(()) => break,
            Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut)) => {
                waiting();
                tracing::warn!(
                    topic,
                    waiting = producer.in_flight_count(),
                    waited_s = started.elapsed().as_secs(),
                    "the broker has not acknowledged records yet; waiting"
                );
            }
            Err(e) => return Err(e).with_context(|| format!("flushing topic `{topic}`")),
        }
    }
    Ok(producer.context().take_failures())
}

/// Sends a record, waiting while the producer's queue is full.
pub fn send<C: ProducerContext>(
    producer: &ThreadedProducer<C>,
    mut record: BaseRecord<'_, [u8], [u8], C::DeliveryOpaque>,
) -> Result<(), KafkaError> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err((e, _)) => return Err(e),
        }
    }
}
