//! What every producer of the services shares: delivery reports served without spinning,
//! sending through a full queue, and knowing that the broker has every record sent before
//! a commit that depends on them.

use std::collections::BTreeMap;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context as _, Result};
use rdkafka::client::ClientContext;
use rdkafka::config::FromClientConfigAndContext;
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{DeliveryResult, Message as _};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;

/// How long the polling thread sleeps when no delivery report was waiting. Nothing waits
/// on it: a commit that needs its records delivered flushes, which serves the reports.
const POLL_IDLE: Duration = Duration::from_millis(20);

/// How long it sleeps when nothing is in flight at all. Each wake-up costs a context
/// switch; at [`POLL_IDLE`] they were a quarter of an idle service's CPU (four to six
/// producers).
const POLL_QUIET: Duration = Duration::from_millis(250);

/// A producer whose delivery reports a thread of its own serves, like rdkafka's
/// `ThreadedProducer` but without its busy wait: `BaseProducer::poll` with a timeout spins
/// through the last millisecond of every wait (the remaining time is rounded down to whole
/// milliseconds, so it asks librdkafka for 0 ms until the deadline passes). Measured here:
/// about 1 % of a core per producer, all the time, three to five producers per service.
/// Polling without a timeout and sleeping between empty polls costs a few wake-ups.
pub struct Producer<C: ProducerContext + 'static> {
    producer: Arc<BaseProducer<C>>,
    stop: Arc<AtomicBool>,
    poller: Option<JoinHandle<()>>,
}

impl<C: ProducerContext + 'static> FromClientConfigAndContext<C> for Producer<C> {
    fn from_config_and_context(config: &ClientConfig, context: C) -> KafkaResult<Self> {
        let producer = Arc::new(BaseProducer::from_config_and_context(config, context)?);
        let stop = Arc::new(AtomicBool::new(false));
        let poller = {
            let (producer, stop) = (producer.clone(), stop.clone());
            std::thread::Builder::new()
                .name("kafka-deliveries".into())
                .spawn(move || serve_deliveries(&producer, &stop))
                .map_err(|e| KafkaError::ClientCreation(e.to_string()))?
        };
        Ok(Producer {
            producer,
            stop,
            poller: Some(poller),
        })
    }
}

/// Serves delivery reports until told to stop: one per poll, again at once while they
/// keep coming (each served report lowers the count in flight), else after a short sleep.
fn serve_deliveries<C: ProducerContext>(producer: &BaseProducer<C>, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let before = producer.in_flight_count();
        producer.poll(Duration::ZERO);
        // Parked rather than asleep, so that dropping the producer wakes it at once.
        if before == 0 {
            std::thread::park_timeout(POLL_QUIET);
        } else if producer.in_flight_count() >= before {
            std::thread::park_timeout(POLL_IDLE);
        }
    }
}

impl<C: ProducerContext + 'static> Deref for Producer<C> {
    type Target = BaseProducer<C>;

    fn deref(&self) -> &BaseProducer<C> {
        &self.producer
    }
}

impl<C: ProducerContext + 'static> Drop for Producer<C> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(poller) = self.poller.take() {
            poller.thread().unpark();
            let _ = poller.join();
        }
    }
}

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
/// restart is no refusal), calling `waiting` once the wait has lasted 2 s and every second
/// after (the caller's consumer is not polled meanwhile, so its statistics cannot tell that
/// no broker answers: the wait does), and warning every 30 s. Each record is either
/// acknowledged or, after librdkafka's `message.timeout.ms`, refused, so the wait ends.
pub fn delivered(
    producer: &BaseProducer<Deliveries>,
    topic: &str,
    waiting: &dyn Fn(),
) -> Result<Option<String>> {
    const NOT_ANSWERING_AFTER: Duration = Duration::from_secs(2);
    const WARN_EVERY: Duration = Duration::from_secs(30);
    let started = std::time::Instant::now();
    let mut warned = started;
    while producer.in_flight_count() > 0 {
        match producer.flush(Duration::from_secs(1)) {
            Ok(()) => break,
            Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut)) => {
                if started.elapsed() >= NOT_ANSWERING_AFTER {
                    waiting();
                }
                if warned.elapsed() >= WARN_EVERY {
                    warned = std::time::Instant::now();
                    tracing::warn!(
                        topic,
                        waiting = producer.in_flight_count(),
                        waited_s = started.elapsed().as_secs(),
                        "the broker has not acknowledged records yet; waiting"
                    );
                }
            }
            Err(e) => return Err(e).with_context(|| format!("flushing topic `{topic}`")),
        }
    }
    Ok(producer.context().take_failures())
}

/// Sends a record, waiting while the producer's queue is full.
pub fn send<C: ProducerContext>(
    producer: &BaseProducer<C>,
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
