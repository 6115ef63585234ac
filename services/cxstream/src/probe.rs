//! `cxstream probe`: does each server the pipeline needs actually serve? For operators
//! (before a deploy, in a readiness check) and for the local stack's scripts, which use it
//! to tell a wedged broker from a failing test.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Result};
use cxstream_kafka::{probe, TopicSpec};

use crate::config::Config;

#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    /// Topic of the consumer-group round trip (default: topics.touchpoints). The probe joins
    /// a new group of its own, so it never disturbs the services' groups.
    #[arg(long)]
    topic: Option<String>,
    /// Deadline of each check, in milliseconds.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    timeout_ms: u64,
    /// Skip ClickHouse (e.g. to check only the broker).
    #[arg(long)]
    kafka_only: bool,
    /// Create the topic (one partition) if it does not exist.
    #[arg(long)]
    create_topic: bool,
}

pub fn run(cfg: &Config, args: &ProbeArgs) -> Result<()> {
    let timeout = Duration::from_millis(args.timeout_ms);
    let client_config = cfg.kafka.client_config();
    let brokers = &cfg.kafka.brokers;
    let md =
        probe::metadata(&client_config, timeout).map_err(|e| anyhow!("kafka {brokers}: {e}"))?;
    let topic = args.topic.as_deref().unwrap_or(&cfg.topics.touchpoints);
    if args.create_topic {
        let spec = TopicSpec {
            name: topic.to_string(),
            partitions: 1,
            keep_forever: false,
        };
        crate::runtime()?
            .block_on(async {
                tokio::time::timeout(timeout, cxstream_kafka::ensure_topics(&cfg.kafka, &[spec]))
                    .await
            })
            .map_err(|_| anyhow!("kafka {brokers}: CreateTopics: no answer within {timeout:?}"))?
            .map_err(|e| anyhow!("kafka {brokers}: {e}"))?;
    }
    let group = format!("cxstream-probe-{}-{}", std::process::id(), unix_millis());
    let rt = probe::group_round_trip(&client_config, topic, &group, timeout)
        .map_err(|e| anyhow!("kafka {brokers}: {e}"))?;
    println!(
        "kafka {brokers}: metadata {} ms ({} brokers, {} topics); group round trip on `{topic}` {} ms (join {}, commit {}, fetch {})",
        md.latency.as_millis(),
        md.brokers,
        md.topics,
        rt.total.as_millis(),
        rt.join.as_millis(),
        rt.commit.as_millis(),
        rt.fetch_committed.as_millis()
    );
    if !args.kafka_only {
        let url = &cfg.clickhouse.url;
        let started = Instant::now();
        let version = crate::runtime()?
            .block_on(async {
                tokio::time::timeout(
                    timeout,
                    cxstream_clickhouse::server_version(
                        &cfg.clickhouse_connection().server_client(),
                    ),
                )
                .await
            })
            .map_err(|_| anyhow!("clickhouse {url}: no answer within {timeout:?}"))?
            .map_err(|e| anyhow!("clickhouse {url}: {e}"))?;
        println!(
            "clickhouse {url}: version {version} ({} ms)",
            started.elapsed().as_millis()
        );
    }
    Ok(())
}

fn unix_millis() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}
