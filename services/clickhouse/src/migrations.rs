//! Versioned migrations from `schemas/clickhouse/`, embedded in the binary. Each is applied
//! once, in order, and recorded in `{db}.schema_migrations`; statements use
//! `IF NOT EXISTS`, so re-running a half-applied migration is safe.

use clickhouse::Client;
use serde::Deserialize;

use crate::{Connection, Context, Result};

#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub sql: &'static str,
}

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "facts_and_minute_aggregates",
        sql: include_str!("../../../schemas/clickhouse/0001_facts_and_minute_aggregates.sql"),
    },
    Migration {
        version: 2,
        name: "rolling_metrics",
        sql: include_str!("../../../schemas/clickhouse/0002_rolling_metrics.sql"),
    },
    Migration {
        version: 3,
        name: "event_time",
        sql: include_str!("../../../schemas/clickhouse/0003_event_time.sql"),
    },
    Migration {
        version: 4,
        name: "compaction",
        sql: include_str!("../../../schemas/clickhouse/0004_compaction.sql"),
    },
    Migration {
        version: 5,
        name: "stage_outcomes",
        sql: include_str!("../../../schemas/clickhouse/0005_stage_outcomes.sql"),
    },
    Migration {
        version: 6,
        name: "steps",
        sql: include_str!("../../../schemas/clickhouse/0006_steps.sql"),
    },
    Migration {
        version: 7,
        name: "expectation",
        sql: include_str!("../../../schemas/clickhouse/0007_expectation.sql"),
    },
    Migration {
        version: 8,
        name: "several_journeys",
        sql: include_str!("../../../schemas/clickhouse/0008_several_journeys.sql"),
    },
];

impl Migration {
    /// The statements of this migration for database `db`, comments stripped.
    pub fn statements(&self, db: &str) -> Vec<String> {
        let body: String = self
            .sql
            .lines()
            .filter(|l| !l.trim_start().starts_with("--"))
            .collect::<Vec<_>>()
            .join("\n");
        body.split(';')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| s.replace("{db}", db))
            .collect()
    }
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct Applied {
    version: u32,
}

/// Applies the migrations not yet recorded; returns the versions applied now.
pub async fn apply_migrations(conn: &Connection) -> Result<Vec<u32>> {
    let server = conn.server_client();
    let db = &conn.database;
    exec(&server, &format!("CREATE DATABASE IF NOT EXISTS {db}")).await?;
    exec(
        &server,
        &format!(
            "CREATE TABLE IF NOT EXISTS {db}.schema_migrations \
             (version UInt32, name String, applied_at DateTime) \
             ENGINE = MergeTree ORDER BY version"
        ),
    )
    .await?;
    let applied: Vec<u32> = server
        .query(&format!("SELECT version FROM {db}.schema_migrations"))
        .fetch_all::<Applied>()
        .await
        .ctx(|| "reading schema_migrations".into())?
        .into_iter()
        .map(|a| a.version)
        .collect();
    let mut now = Vec::new();
    for m in MIGRATIONS.iter().filter(|m| !applied.contains(&m.version)) {
        for st in m.statements(db) {
            if let Some((table, column)) = added_column(&st) {
                // ClickHouse 18.16 has no ADD COLUMN IF NOT EXISTS; a half-applied migration
                // must still re-run.
                if column_exists(&server, db, table, column).await? {
                    continue;
                }
            }
            exec(&server, &st).await?;
        }
        exec(
            &server,
            &format!(
                "INSERT INTO {db}.schema_migrations (version, name, applied_at) VALUES ({}, '{}', now())",
                m.version, m.name
            ),
        )
        .await?;
        now.push(m.version);
    }
    Ok(now)
}

/// `(table, column)` of an `ALTER TABLE db.table ADD COLUMN column ...` statement.
fn added_column(statement: &str) -> Option<(&str, &str)> {
    let mut words = statement.split_whitespace();
    let head: Vec<&str> = words.by_ref().take(5).collect();
    match head.as_slice() {
        ["ALTER", "TABLE", table, "ADD", "COLUMN"] => {
            let table = table.rsplit('.').next()?;
            Some((table, words.next()?))
        }
        _ => None,
    }
}

async fn column_exists(client: &Client, db: &str, table: &str, column: &str) -> Result<bool> {
    let n = client
        .query("SELECT count() FROM system.columns WHERE database = ? AND table = ? AND name = ?")
        .bind(db)
        .bind(table)
        .bind(column)
        .fetch_one::<u64>()
        .await
        .ctx(|| format!("looking up column {table}.{column}"))?;
    Ok(n > 0)
}

async fn exec(client: &Client, sql: &str) -> Result<()> {
    client.query(sql).execute().await.ctx(|| {
        let head: String = sql.chars().take(80).collect();
        format!("executing `{head}`")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_increasing_and_statements_split() {
        for w in MIGRATIONS.windows(2) {
            assert!(w[0].version < w[1].version);
        }
        let st = MIGRATIONS[0].statements("cx");
        assert!(st
            .iter()
            .all(|s| !s.contains("{db}") && !s.starts_with("--")));
        assert!(st
            .iter()
            .any(|s| s.starts_with("CREATE TABLE IF NOT EXISTS cx.touchpoints")));
    }

    #[test]
    fn added_columns_are_recognised() {
        assert_eq!(
            added_column("ALTER TABLE cx.ingest_batches ADD COLUMN a_ms Int64 DEFAULT 0"),
            Some(("ingest_batches", "a_ms"))
        );
        assert_eq!(
            added_column("CREATE TABLE IF NOT EXISTS cx.t (a Int64)"),
            None
        );
    }
}
