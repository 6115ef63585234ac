//! A whole topic read from its beginning (or, per partition, from where a snapshot had
//! read it to), and where its end was when reading started: the alerter reads its input
//! (the aggregates) and its memory (the alerts) this way, and the journey service the
//! erasures, with no consumer group offsets.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::BorrowedMessage;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::Config;

/// Assigns every partition of `topic` from its beginning (`client` names the reader), and
/// says where each partition's end was.
pub fn from_beginning(cfg: &Config, topic: &str, client: &str) -> Result<(BaseConsumer, Ends)> {
    from_positions(cfg, topic, client, &BTreeMap::new())
}

/// As [`from_beginning`], each partition of `positions` from the offset it gives instead.
pub fn from_positions(
    cfg: &Config,
    topic: &str,
    client: &str,
    positions: &BTreeMap<i32, i64>,
) -> Result<(BaseConsumer, Ends)> {
    let consumer: BaseConsumer = cfg
        .kafka
        .consumer_config(client)
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .with_context(|| format!("creating the reader of `{topic}`"))?;
    let timeout = Duration::from_secs(30);
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .with_context(|| format!("reading the metadata of `{topic}`"))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        anyhow::bail!("the topic `{topic}` has no partitions (run `cxstream topics`)");
    }
    let mut tpl = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for p in partitions {
        let from = positions.get(&p).copied();
        tpl.add_partition_offset(topic, p, from.map_or(Offset::Beginning, Offset::Offset))?;
        let (low, high) = consumer
            .fetch_watermarks(topic, p, timeout)
            .with_context(|| format!("reading the end of `{topic}` partition {p}"))?;
        if from.is_some_and(|f| f < low) {
            tracing::warn!(topic, partition = p, from = ?from, first = low, "records to read on from are gone (retention): read on from the first there is");
        }
        if high > from.unwrap_or(low).max(low) {
            ends.insert(p, high);
        }
    }
    consumer
        .assign(&tpl)
        .with_context(|| format!("assigning `{topic}`"))?;
    Ok((consumer, Ends(ends)))
}

/// Per partition not read to its end yet: the offset after its last record at start.
pub struct Ends(BTreeMap<i32, i64>);

impl Ends {
    /// A record of `partition` at `offset` was read.
    pub fn read(&mut self, partition: i32, offset: i64) {
        if self.0.get(&partition).is_some_and(|end| offset + 1 >= *end) {
            self.0.remove(&partition);
        }
    }

    /// Every partition is read to where its end was at start.
    pub fn at_end(&self) -> bool {
        self.0.is_empty()
    }
}

/// Hands each record `consumer` has ready to `f`, without waiting for more; a read error is
/// logged and ends the round (the next one reads on).
pub fn each_ready(consumer: &BaseConsumer, topic: &str, mut f: impl FnMut(&BorrowedMessage<'_>)) {
    while let Some(read) = consumer.poll(Duration::ZERO) {
        match read {
            Ok(msg) => f(&msg),
            Err(e) => {
                tracing::warn!(error = %e, topic, "reading a topic");
                break;
            }
        }
    }
}
