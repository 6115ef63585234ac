//! Erasing a customer's rows (README § Operations, Erasure): every table of the database
//! with a `customer_id` column, found by asking the server, so that a table added later
//! is never forgotten. Journeys of erased customers go on under their pseudonyms, which
//! name no one; those rows stay.

use clickhouse::Client;
use serde::Deserialize;

use crate::{Context, Result};

/// The tables (not views) of the database that hold a `customer_id` column.
pub async fn customer_tables(client: &Client, database: &str) -> Result<Vec<String>> {
    client
        .query(
            "SELECT c.table FROM system.columns AS c \
             ANY INNER JOIN (SELECT name AS table, engine FROM system.tables WHERE database = ?) \
             AS t USING (table) \
             WHERE c.database = ? AND c.name = 'customer_id' AND t.engine NOT LIKE '%View' \
             ORDER BY c.table",
        )
        .bind(database)
        .bind(database)
        .fetch_all::<String>()
        .await
        .ctx(|| "listing the tables that hold customer ids".into())
}

/// Matches a row whose `customer_id`, trimmed as journeys key it, is one of the ids: facts
/// keep the id as producers sent it, and " c-1" and "c-1" are one customer.
fn matching(ids: &[String]) -> String {
    format!(
        r"replaceRegexpAll(customer_id, '^\\s+|\\s+$', '') IN ({})",
        placeholders(ids)
    )
}

/// Rows of `ids` (trimmed) in `table`.
pub async fn count_rows(client: &Client, table: &str, ids: &[String]) -> Result<u64> {
    bind_all(
        client.query(&format!(
            "SELECT count() FROM {table} WHERE {}",
            matching(ids)
        )),
        ids,
    )
    .fetch_one::<u64>()
    .await
    .ctx(|| format!("counting the customer's rows in {table}"))
}

/// Starts deleting the rows of `ids` from `table` (a mutation: see [`mutations_running`]).
pub async fn delete_rows(client: &Client, table: &str, ids: &[String]) -> Result<()> {
    bind_all(
        client.query(&format!(
            "ALTER TABLE {table} DELETE WHERE {}",
            matching(ids)
        )),
        ids,
    )
    .execute()
    .await
    .ctx(|| format!("deleting the customer's rows from {table}"))
}

/// One `?` per id (ClickHouse 18.16 reads a bound array after `IN` as one value).
fn placeholders(ids: &[String]) -> String {
    vec!["?"; ids.len()].join(", ")
}

fn bind_all(mut q: clickhouse::query::Query, ids: &[String]) -> clickhouse::query::Query {
    for id in ids {
        q = q.bind(id);
    }
    q
}

/// Deletions of customers' rows in the database not done yet (compaction's own deletes
/// are not waited for).
pub async fn mutations_running(client: &Client, database: &str) -> Result<u64> {
    client
        .query(
            "SELECT count() FROM system.mutations WHERE database = ? AND is_done = 0 \
             AND position(command, 'customer_id') > 0",
        )
        .bind(database)
        .fetch_one::<u64>()
        .await
        .ctx(|| "reading system.mutations".into())
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct Latest {
    source_partition: u16,
    erasures_seen: u64,
}

/// The partitions among `0..partitions` whose last committed batch of `journey` had
/// applied fewer than `seen` records of the erasures topic, or that have none.
pub async fn not_acknowledged(
    client: &Client,
    journey: &str,
    partitions: u16,
    seen: u64,
) -> Result<Vec<u16>> {
    let latest = client
        .query(
            "SELECT source_partition, argMax(erasures_seen, batch_seq) AS erasures_seen \
             FROM ingest_batches WHERE journey = ? AND source_partition < ? \
             GROUP BY source_partition ORDER BY source_partition",
        )
        .bind(journey)
        .bind(partitions)
        .fetch_all::<Latest>()
        .await
        .ctx(|| format!("reading the last batch of each partition of journey {journey}"))?;
    Ok((0..partitions)
        .filter(|p| {
            !latest
                .iter()
                .any(|l| l.source_partition == *p && l.erasures_seen >= seen)
        })
        .collect())
}
