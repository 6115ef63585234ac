//! Baseline for the end-to-end benchmark: how fast a bare rdkafka consumer (BaseConsumer,
//! same fetch settings as cxstream) reads the given topics to their end on this broker.
//! Usage: bare_consumer BROKERS TOPIC [TOPIC...]

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        return Err("usage: bare_consumer BROKERS TOPIC [TOPIC...]".into());
    }
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args[1])
        .set("group.id", "cxstream-bare-consumer-bench")
        .set("enable.auto.commit", "false")
        .set("fetch.queue.backoff.ms", "0")
        .set("queued.min.messages", "200000")
        .set("fetch.wait.max.ms", "100")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    let mut remaining = 0i64;
    for topic in &args[2..] {
        let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        for t in md.topics() {
            for p in t.partitions() {
                let (lo, hi) = consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
                remaining += hi - lo;
                if std::env::var_os("VERBOSE").is_some() {
                    eprintln!("{topic}[{}]: low {lo}, high {hi}", p.id());
                }
                tpl.add_partition_offset(topic, p.id(), Offset::Beginning)?;
            }
        }
    }
    let total = remaining;
    consumer.assign(&tpl)?;
    let start = Instant::now();
    let mut bytes = 0usize;
    while remaining > 0 {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            bytes += m.payload_len();
            remaining -= 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "bare consumer: {total} records, {bytes} bytes in {secs:.2}s = {:.0} records/s",
        total as f64 / secs
    );
    Ok(())
}
