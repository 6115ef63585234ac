//! One librdkafka fetch queue per input partition read here, polled apart from the
//! consumer's own queue (which still brings rebalances, errors and statistics).
//!
//! Why: an input that has to wait (it runs a day of event time ahead of the other input, or
//! waits for the identity watermark) is then simply not polled. Its fetched records stay in
//! its queue, librdkafka stops fetching once the queue holds `queued.min.messages` (a bound
//! per input partition once the queues are split), and nothing is read twice. Paused
//! instead, it lost its prefetched records and read them again when it went on: catching up
//! the demo's two channels spent two thirds of its time so.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Result};
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::BaseConsumer;
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;

use super::partition::Source;
use super::rebalance::JourneyContext;

#[derive(Default)]
pub struct InputQueues {
    queues: BTreeMap<(i32, Source), PartitionQueue<JourneyContext>>,
    /// Which queue a poll starts with: each in turn, so that none is always served last.
    turn: Cell<usize>,
}

impl InputQueues {
    /// Gives each input of partition `p` its own queue. Before the partition is resumed:
    /// records fetched before would be in the consumer's queue, and read out of order with
    /// those of the partition's own.
    pub fn split(
        &mut self,
        consumer: &Arc<BaseConsumer<JourneyContext>>,
        p: i32,
        inputs: &[(Source, String)],
    ) -> Result<()> {
        for (source, topic) in inputs {
            let queue = consumer
                .split_partition_queue(topic, p)
                .ok_or_else(|| anyhow!("librdkafka has no fetch queue for {topic} [{p}] yet"))?;
            self.queues.insert((p, *source), queue);
        }
        Ok(())
    }

    /// Keeps the queues of the partitions `read` still reads.
    pub fn retain(&mut self, read: impl Fn(i32) -> bool) {
        self.queues.retain(|(p, _), _| read(*p));
    }

    pub fn clear(&mut self) {
        self.queues.clear();
    }

    /// Adds to `into`, without waiting, what the queues of the inputs `readable` lets read
    /// hold, until it has `most` records.
    pub fn poll<'a>(
        &'a self,
        readable: impl Fn((i32, Source)) -> bool,
        most: usize,
        into: &mut Vec<BorrowedMessage<'a>>,
    ) {
        let n = self.queues.len();
        if n == 0 {
            return;
        }
        let start = self.turn.get() % n;
        self.turn.set(start + 1);
        let order = self.queues.iter().cycle().skip(start).take(n);
        for (&at, queue) in order {
            if !readable(at) {
                continue;
            }
            while into.len() < most {
                match queue.poll(Duration::ZERO) {
                    Some(Ok(msg)) => into.push(msg),
                    Some(Err(KafkaError::PartitionEOF(_))) => {}
                    Some(Err(e)) => tracing::warn!(partition = at.0, error = %e, "consumer error"),
                    None => break,
                }
            }
        }
    }
}
