//! `cxstream erase --customer ID`: forgets customers (GDPR article 17; README § Operations,
//! Erasure). The erasure is recorded first, as the customer's fingerprint on the erasures
//! topic, which every journey service reads before it resumes a partition and follows while
//! it runs; once the running journeys have each committed a batch with it applied, nothing
//! of the customer is written any more, and their rows are deleted from every table that
//! holds customer ids. The customer's past and future events still count, as anonymous
//! counts under a pseudonym, so no figure changes and a replay gives the same figures.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use clap::Args;
use cxstream_clickhouse::erasure;
use cxstream_clickhouse::Connection;
use cxstream_core::erasure::fingerprint;
use cxstream_core::JourneyMaps;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::config::Config;

#[derive(Debug, Args)]
pub struct EraseArgs {
    /// The customer id to forget, as producers send it (repeat for several).
    #[arg(long = "customer", required = true)]
    customers: Vec<String>,
    /// How long to wait for the running journey services to apply the erasure.
    #[arg(long, default_value_t = 120)]
    wait_secs: u64,
}

pub fn run(cfg: &Config, maps: &JourneyMaps, args: &EraseArgs) -> Result<()> {
    let ids = ids_of(&args.customers)?;
    let rt = crate::runtime()?;
    let seen = rt.block_on(record(cfg, &args.customers))?;
    println!(
        "erase: {} customer(s) recorded on `{}` (fingerprints {}); every journey service \
         applies the erasure before it resumes a partition",
        args.customers.len(),
        cfg.topics.erasures,
        args.customers
            .iter()
            .map(|c| format!("{}…", &fingerprint(c)[..12]))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let conn = cfg.clickhouse_connection();
    rt.block_on(conn.check_login())?;
    let client = conn.client();
    let partitions = partitions(cfg)?;
    rt.block_on(wait_for_journeys(
        &client,
        maps,
        partitions,
        seen,
        Duration::from_secs(args.wait_secs),
    ))?;
    rt.block_on(delete(&conn, &ids))
}

/// The ids to delete rows of, as journeys key them (trimmed; rows match trimmed too).
fn ids_of(customers: &[String]) -> Result<Vec<String>> {
    let mut ids = Vec::new();
    for c in customers {
        if c.trim().is_empty() {
            anyhow::bail!("--customer: an empty customer id names no one");
        }
        ids.push(c.trim().to_string());
    }
    ids.sort();
    ids.dedup();
    Ok(ids)
}

/// Writes each fingerprint to the erasures topic; returns the offset after the last.
async fn record(cfg: &Config, customers: &[String]) -> Result<u64> {
    let topic = &cfg.topics.erasures;
    let producer: FutureProducer = cfg
        .kafka
        .producer_config()
        .create()
        .context("creating the erasures producer")?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let mut after = 0;
    for c in customers {
        let fp = fingerprint(c);
        let value = format!("{{\"erased_at_ms\":{now_ms}}}");
        let delivered = producer
            .send(
                FutureRecord::to(topic).key(&fp).payload(&value),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .with_context(|| {
                format!("recording the erasure on `{topic}` (does it exist? `cxstream topics`)")
            })?;
        after = after.max(u64::try_from(delivered.offset + 1).unwrap_or(0));
    }
    Ok(after)
}

/// Partitions of the inputs.
fn partitions(cfg: &Config) -> Result<u16> {
    let consumer: rdkafka::consumer::BaseConsumer = cfg
        .kafka
        .consumer_config("cxstream-erase")
        .create()
        .context("creating a metadata client")?;
    let n = crate::journey::partition_count(&consumer, &cfg.topics.touchpoints)?;
    u16::try_from(n).context("too many partitions")
}

/// Waits until every partition of every journey has committed a batch with the erasures
/// applied: from then on nothing of the customers is written.
async fn wait_for_journeys(
    client: &clickhouse::Client,
    maps: &JourneyMaps,
    partitions: u16,
    seen: u64,
    wait: Duration,
) -> Result<()> {
    let started = Instant::now();
    loop {
        let mut waiting = Vec::new();
        for map in maps.iter() {
            let behind = erasure::not_acknowledged(client, &map.name, partitions, seen).await?;
            if !behind.is_empty() {
                waiting.push(format!("{} partitions {behind:?}", map.name));
            }
        }
        if waiting.is_empty() {
            println!("erase: every journey has applied it");
            return Ok(());
        }
        if started.elapsed() > wait {
            anyhow::bail!(
                "no journey service applied the erasure within {} s on {}: the erasure is \
                 recorded and is applied when a journey service runs; run the same `cxstream \
                 erase` again once the journey services run (rows are deleted only then, so \
                 that none is written again afterwards)",
                wait.as_secs(),
                waiting.join("; ")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// How long after the deletions the tables are checked once more: a batch commit or a
/// compaction under way when they started may have written a row they did not see.
const SETTLE: Duration = Duration::from_secs(5);

/// Deletes the customers' rows from every table that holds customer ids, waits for the
/// deletions to finish, and checks that none is left (deleting again what a batch or a
/// compaction under way wrote meanwhile).
async fn delete(conn: &Connection, ids: &[String]) -> Result<()> {
    let (client, database) = (&conn.client(), conn.database.as_str());
    let mut tables: Vec<Rows> = erasure::customer_tables(client, database, &conn.layout)
        .await?
        .into_iter()
        .map(Rows::Customer)
        .collect();
    tables.extend(erasure::DEVICE_TABLES.map(Rows::Devices));
    let mut found = Vec::new();
    let mut left = Vec::new();
    for pass in 0..3 {
        let mut deleted = false;
        for t in &tables {
            let n = t.count(client, database, ids).await?;
            if n > 0 {
                t.delete(conn, ids).await?;
                found.push(format!("{t} {n}"));
                deleted = true;
            }
        }
        if !deleted && pass > 0 {
            left.clear();
            break;
        }
        let started = Instant::now();
        while erasure::mutations_running(client, database, &conn.layout).await? > 0 {
            if started.elapsed() > Duration::from_secs(600) {
                anyhow::bail!("the deletions were still running after 10 minutes (system.mutations); run the same erase again to check");
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        tokio::time::sleep(SETTLE).await;
        left.clear();
        for t in &tables {
            let n = t.count(client, database, ids).await?;
            if n > 0 {
                left.push(format!("{t} {n}"));
            }
        }
        if left.is_empty() {
            break;
        }
    }
    if !left.is_empty() {
        anyhow::bail!(
            "rows are left after deleting three times: {}",
            left.join(", ")
        );
    }
    println!(
        "erase: rows deleted: {} ({} tables checked, none left)",
        if found.is_empty() {
            "none found".to_string()
        } else {
            found.join(", ")
        },
        tables.len()
    );
    Ok(())
}

/// Where the customers' rows are.
enum Rows {
    /// A table with a `customer_id` column.
    Customer(String),
    /// Devices' earlier rows naming the customer who claimed them (identity stitching).
    Devices(&'static str),
}

impl std::fmt::Display for Rows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rows::Customer(t) => f.write_str(t),
            Rows::Devices(t) => write!(f, "{t} (devices)"),
        }
    }
}

impl Rows {
    async fn count(&self, client: &clickhouse::Client, db: &str, ids: &[String]) -> Result<u64> {
        Ok(match self {
            Rows::Customer(t) => erasure::count_rows(client, t, ids).await?,
            Rows::Devices(t) => erasure::stale_device_rows(client, db, t, ids).await?.len() as u64,
        })
    }

    async fn delete(&self, conn: &Connection, ids: &[String]) -> Result<()> {
        let (client, db, layout) = (&conn.client(), conn.database.as_str(), &conn.layout);
        match self {
            Rows::Customer(t) => erasure::delete_rows(client, db, layout, t, ids).await?,
            Rows::Devices(t) => {
                let rows = erasure::stale_device_rows(client, db, t, ids).await?;
                erasure::delete_device_rows(client, db, layout, t, &rows).await?;
            }
        }
        Ok(())
    }
}
