//! Erasing a customer's rows (README § Operations, Erasure): every table of the database
//! with a `customer_id` column, found by asking the server, so that a table added later
//! is never forgotten. Journeys of erased customers go on under their pseudonyms, which
//! name no one; those rows stay. With identity stitching, a device's stored state named
//! the customer who claimed it until the journeys applied the erasure: those earlier
//! versions of device rows are deleted too, keeping each device's latest committed one.

use clickhouse::Client;
use serde::Deserialize;

use crate::cluster::Layout;
use crate::{Context, Result};

/// The tables (not views) of the database that hold a `customer_id` column; on a cluster
/// the Distributed ones, which read every shard.
pub async fn customer_tables(
    client: &Client,
    database: &str,
    layout: &Layout,
) -> Result<Vec<String>> {
    let engine = match layout.cluster() {
        None => "t.engine NOT LIKE '%View'",
        Some(_) => "t.engine = 'Distributed'",
    };
    client
        .query(&format!(
            "SELECT c.table FROM system.columns AS c \
             ANY INNER JOIN (SELECT name AS table, engine FROM system.tables WHERE database = ?) \
             AS t USING (table) \
             WHERE c.database = ? AND c.name = 'customer_id' AND {engine} \
             ORDER BY c.table"
        ))
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

/// Starts deleting the rows of `ids` from `db.table` (a mutation: see [`mutations_running`]).
pub async fn delete_rows(
    client: &Client,
    database: &str,
    layout: &Layout,
    table: &str,
    ids: &[String],
) -> Result<()> {
    bind_all(
        client.query(&format!(
            "ALTER TABLE {} DELETE WHERE {}",
            layout.altered(&format!("{database}.{table}")),
            matching(ids)
        )),
        ids,
    )
    .execute()
    .await
    .ctx(|| format!("deleting the customer's rows from {table}"))
}

/// The tables holding devices' rows (identity stitching), keyed `anon:` + device.
pub const DEVICE_TABLES: [&str; 2] = ["journeys", "journeys_compacted"];

/// A device row whose state names one of `ids` as its claim does: postcard writes a
/// string as its length (one byte below 128) then its bytes, which makes a match of a short
/// id inside a longer string unlikely.
fn naming(ids: &[String]) -> String {
    let each = vec!["position(state, ?) > 0"; ids.len()].join(" OR ");
    format!("customer_id LIKE 'anon:%' AND ({each})")
}

fn needles(ids: &[String]) -> Vec<String> {
    ids.iter()
        .map(|id| match u8::try_from(id.len()) {
            Ok(n) if n < 128 => format!("{}{id}", char::from(n)),
            _ => id.clone(),
        })
        .collect()
}

/// A device's row: its key in a state table.
#[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, Deserialize)]
pub struct DeviceRow {
    pub journey: String,
    pub source_partition: u16,
    pub customer_id: String,
    pub batch_seq: u64,
}

/// Device rows in `table` that name one of `ids`, but for each device's latest committed
/// version (which the journeys wrote after the erasure, under the pseudonym).
pub async fn stale_device_rows(
    client: &Client,
    database: &str,
    table: &str,
    ids: &[String],
) -> Result<Vec<DeviceRow>> {
    bind_all(
        client.query(&format!(
            "SELECT journey, source_partition, customer_id, batch_seq FROM {database}.{table} \
             WHERE {} AND {}",
            naming(ids),
            not_latest(database)
        )),
        &needles(ids),
    )
    .fetch_all::<DeviceRow>()
    .await
    .ctx(|| format!("finding devices' rows naming the customer in {table}"))
}

/// Starts deleting those rows (a mutation). They are named one by one: ClickHouse 18.16
/// cannot run a mutation whose condition reads other tables (it fails in the background,
/// again and again, holding up every later mutation of the table).
pub async fn delete_device_rows(
    client: &Client,
    database: &str,
    layout: &Layout,
    table: &str,
    rows: &[DeviceRow],
) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let keys = vec!["(?, ?, ?, ?)"; rows.len()].join(", ");
    let mut q = client.query(&format!(
        "ALTER TABLE {} DELETE WHERE \
         (journey, source_partition, customer_id, batch_seq) IN ({keys})",
        layout.altered(&format!("{database}.{table}"))
    ));
    for r in rows {
        q = q
            .bind(&r.journey)
            .bind(r.source_partition)
            .bind(&r.customer_id)
            .bind(r.batch_seq);
    }
    q.execute()
        .await
        .ctx(|| format!("deleting devices' rows naming the customer from {table}"))
}

/// Not a device's latest committed version: of committed batches (their marker written)
/// and committed generations (their compaction row written), the highest batch_seq.
/// (GLOBAL IN: on a cluster each subquery runs once, on the server asked.)
fn not_latest(db: &str) -> String {
    format!(
        "(journey, source_partition, customer_id, batch_seq) GLOBAL NOT IN \
         (SELECT journey, source_partition, customer_id, max(batch_seq) FROM \
           (SELECT journey, source_partition, customer_id, batch_seq FROM {db}.journeys \
            WHERE customer_id LIKE 'anon:%' AND \
            (journey, source_partition, batch_seq, batch_attempt) GLOBAL IN \
              (SELECT journey, source_partition, batch_seq, batch_attempt FROM {db}.committed_batches) \
            UNION ALL \
            SELECT journey, source_partition, customer_id, batch_seq FROM {db}.journeys_compacted \
            WHERE customer_id LIKE 'anon:%' AND (journey, source_partition, generation) GLOBAL IN \
              (SELECT journey, source_partition, generation FROM {db}.committed_compactions)) \
          GROUP BY journey, source_partition, customer_id)"
    )
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

/// Deletions of customers' rows in the database not done yet, on any shard (compaction's
/// own deletes are not waited for).
pub async fn mutations_running(client: &Client, database: &str, layout: &Layout) -> Result<u64> {
    client
        .query(&format!(
            "SELECT count() FROM {} WHERE database = ? AND is_done = 0 \
             AND position(command, 'customer_id') > 0",
            layout.system("mutations")
        ))
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
             FROM committed_batches WHERE journey = ? AND source_partition < ? \
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
