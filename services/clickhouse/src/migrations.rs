//! Versioned migrations from `schemas/clickhouse/`, embedded in the binary. Each is applied
//! once, in order, and recorded in `{db}.schema_migrations`; statements use
//! `IF NOT EXISTS`, so re-running a half-applied migration is safe.

use clickhouse::Client;
use serde::Deserialize;

use crate::cluster::Layout;
use crate::{Connection, Context, Result};

#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub sql: &'static str,
    /// Whether journey services of the versions before must be stopped first (besides
    /// table swaps, which always need it).
    pub stops_journeys: bool,
}

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "facts_and_minute_aggregates",
        sql: include_str!("../../../schemas/clickhouse/0001_facts_and_minute_aggregates.sql"),
        stops_journeys: false,
    },
    Migration {
        version: 2,
        name: "rolling_metrics",
        sql: include_str!("../../../schemas/clickhouse/0002_rolling_metrics.sql"),
        stops_journeys: false,
    },
    Migration {
        version: 3,
        name: "event_time",
        sql: include_str!("../../../schemas/clickhouse/0003_event_time.sql"),
        stops_journeys: false,
    },
    Migration {
        version: 4,
        name: "compaction",
        sql: include_str!("../../../schemas/clickhouse/0004_compaction.sql"),
        stops_journeys: false,
    },
    Migration {
        version: 5,
        name: "stage_outcomes",
        sql: include_str!("../../../schemas/clickhouse/0005_stage_outcomes.sql"),
        stops_journeys: false,
    },
    Migration {
        version: 6,
        name: "steps",
        sql: include_str!("../../../schemas/clickhouse/0006_steps.sql"),
        stops_journeys: false,
    },
    Migration {
        version: 7,
        name: "expectation",
        sql: include_str!("../../../schemas/clickhouse/0007_expectation.sql"),
        stops_journeys: false,
    },
    Migration {
        version: 8,
        name: "several_journeys",
        sql: include_str!("../../../schemas/clickhouse/0008_several_journeys.sql"),
        stops_journeys: false,
    },
    Migration {
        version: 9,
        name: "cases",
        sql: include_str!("../../../schemas/clickhouse/0009_cases.sql"),
        stops_journeys: false,
    },
    Migration {
        version: 10,
        name: "identities",
        sql: include_str!("../../../schemas/clickhouse/0010_identities.sql"),
        stops_journeys: false,
    },
    Migration {
        version: 11,
        name: "aggregates",
        sql: include_str!("../../../schemas/clickhouse/0011_aggregates.sql"),
        stops_journeys: false,
    },
    Migration {
        version: 12,
        name: "alerts",
        sql: include_str!("../../../schemas/clickhouse/0012_alerts.sql"),
        stops_journeys: false,
    },
    Migration {
        version: 13,
        name: "score_alerts",
        sql: include_str!("../../../schemas/clickhouse/0013_score_alerts.sql"),
        stops_journeys: false,
    },
    Migration {
        version: 14,
        name: "stage_alerts",
        sql: include_str!("../../../schemas/clickhouse/0014_stage_alerts.sql"),
        stops_journeys: false,
    },
    Migration {
        version: 15,
        name: "dead_letter_positions",
        sql: include_str!("../../../schemas/clickhouse/0015_dead_letter_positions.sql"),
        stops_journeys: false,
    },
    Migration {
        version: 16,
        name: "erasures",
        sql: include_str!("../../../schemas/clickhouse/0016_erasures.sql"),
        stops_journeys: false,
    },
    Migration {
        version: 17,
        name: "claims",
        sql: include_str!("../../../schemas/clickhouse/0017_claims.sql"),
        // Markers of a service that does not claim would count under no claim.
        stops_journeys: true,
    },
    Migration {
        version: 18,
        name: "claim intents",
        sql: include_str!("../../../schemas/clickhouse/0018_claim_intents.sql"),
        // A service of the version before would read an intent as the highest claim and
        // build its claim on an empty chain.
        stops_journeys: true,
    },
    Migration {
        version: 19,
        name: "map positions",
        sql: include_str!("../../../schemas/clickhouse/0019_map_positions.sql"),
        stops_journeys: false,
    },
    Migration {
        version: 20,
        name: "alerter snapshots",
        sql: include_str!("../../../schemas/clickhouse/0020_alerter_snapshots.sql"),
        stops_journeys: false,
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

/// Applies the migrations not yet recorded; returns the versions applied now. On a
/// cluster every statement is applied in its cluster form (see [`crate::cluster`]).
pub async fn apply_migrations(conn: &Connection) -> Result<Vec<u32>> {
    let server = conn.server_client();
    let db = &conn.database;
    let layout = &conn.layout;
    exec(
        &server,
        &format!("CREATE DATABASE IF NOT EXISTS {db}{}", layout.on_cluster()),
    )
    .await?;
    conn.check_layout(&server).await?;
    let ledger = format!(
        "CREATE TABLE IF NOT EXISTS {db}.schema_migrations \
         (version UInt32, name String, applied_at DateTime) \
         ENGINE = MergeTree ORDER BY version"
    );
    for st in in_layout(layout, db, ledger)? {
        exec(&server, &st).await?;
    }
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
        let statements = m.statements(db);
        let swaps: Vec<(&str, &str)> = statements
            .iter()
            .filter_map(|st| swapped_table(st))
            .collect();
        if !swaps.is_empty() || m.stops_journeys {
            refuse_while_journeys_commit(&server, db, m).await?;
        }
        for (table, before) in swaps {
            put_back(&server, layout, db, table, before).await?;
        }
        for st in statements
            .iter()
            .cloned()
            .map(|st| in_layout(layout, db, st))
        {
            for st in st? {
                if let Some((table, column)) = added_column(&st) {
                    // ClickHouse 18.16 has no ADD COLUMN IF NOT EXISTS; a half-applied
                    // migration must still re-run.
                    if column_exists(&server, db, table, column).await? {
                        continue;
                    }
                }
                exec(&server, &st).await?;
            }
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

/// `statement` as it applies to the layout: itself on a single server.
fn in_layout(layout: &Layout, db: &str, statement: String) -> Result<Vec<String>> {
    match layout.cluster() {
        None => Ok(vec![statement]),
        Some(c) => Ok(crate::cluster::rewrite(&statement, db, c)?),
    }
}

/// ClickHouse 18.16 renames the two tables of a swap one after the other: a crash between
/// them leaves only the table's old name; this puts it back before the swap runs again. On
/// a cluster the swap also drops and makes again the Distributed tables: one stopped in
/// between leaves a local table without its Distributed one, which is made here.
async fn put_back(
    server: &Client,
    layout: &Layout,
    db: &str,
    table: &str,
    before: &str,
) -> Result<()> {
    let (stored, stored_before) = (layout.stored(table), layout.stored(before));
    let mut present = table_exists(server, db, &stored).await?;
    if !present && table_exists(server, db, &stored_before).await? {
        exec(
            server,
            &format!(
                "RENAME TABLE {db}.{stored_before} TO {db}.{stored}{}",
                layout.on_cluster()
            ),
        )
        .await?;
        present = true;
    }
    match layout.cluster() {
        Some(c) if present => exec(server, &crate::cluster::distributed_table(db, table, c)?).await,
        _ => Ok(()),
    }
}

/// A migration that swaps a table for a rebuilt copy loses whatever a running journey
/// service writes between the copy and the swap: it waits for them to be stopped.
async fn refuse_while_journeys_commit(client: &Client, db: &str, m: &Migration) -> Result<()> {
    if !table_exists(client, db, "ingest_batches").await? {
        return Ok(());
    }
    let recent = client
        .query(&format!(
            "SELECT count() FROM {db}.ingest_batches WHERE committed_at > now() - 30"
        ))
        .fetch_one::<u64>()
        .await
        .ctx(|| "reading the latest batch commits".into())?;
    if recent > 0 {
        return Err(crate::Error::JourneysRunning(format!(
            "migration {} ({}) changes how batches commit, and journey services committed {recent} \
             batches in the last 30 s; stop every `cxstream journey` (e.g. kubectl scale \
             deployment/cxstream-journey --replicas=0), then migrate again",
            m.version, m.name
        )));
    }
    Ok(())
}

/// `(table, old name)` of a swap `RENAME TABLE db.table TO db.old, db.copy TO db.table`.
fn swapped_table(statement: &str) -> Option<(&str, &str)> {
    let rest = statement.strip_prefix("RENAME TABLE")?;
    let (first, second) = rest.split_once(',')?;
    let (table, old) = first.split_once(" TO ")?;
    let (_, to) = second.split_once(" TO ")?;
    let (table, old, to) = (unqualified(table)?, unqualified(old)?, unqualified(to)?);
    (table == to).then_some((table, old))
}

/// `table` of `db.table`.
fn unqualified(name: &str) -> Option<&str> {
    name.trim().rsplit('.').next().map(str::trim)
}

async fn table_exists(client: &Client, db: &str, table: &str) -> Result<bool> {
    let n = client
        .query("SELECT count() FROM system.tables WHERE database = ? AND name = ?")
        .bind(db)
        .bind(table)
        .fetch_one::<u64>()
        .await
        .ctx(|| format!("looking up table {table}"))?;
    Ok(n > 0)
}

/// `(table, column)` of an `ALTER TABLE db.table [ON CLUSTER c] ADD COLUMN column ...`
/// statement.
fn added_column(statement: &str) -> Option<(&str, &str)> {
    let words: Vec<&str> = statement.split_whitespace().take(9).collect();
    let (table, rest) = match words.as_slice() {
        ["ALTER", "TABLE", table, "ON", "CLUSTER", _, rest @ ..] => (table, rest),
        ["ALTER", "TABLE", table, rest @ ..] => (table, rest),
        _ => return None,
    };
    match rest {
        ["ADD", "COLUMN", column, ..] => Some((table.rsplit('.').next()?, column)),
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
    fn table_swaps_are_recognised() {
        let swaps: Vec<String> = MIGRATIONS
            .iter()
            .flat_map(|m| m.statements("cx"))
            .filter_map(|st| swapped_table(&st).map(|(a, b)| format!("{a} {b}")))
            .collect();
        assert_eq!(
            swaps,
            [
                "touchpoints touchpoints_before_journeys",
                "survey_answers survey_answers_before_journeys",
                "stage_entries stage_entries_before_journeys",
                "step_attempts step_attempts_before_journeys",
            ]
        );
        assert_eq!(swapped_table("RENAME TABLE cx.a TO cx.b"), None);
    }

    #[test]
    fn added_columns_are_recognised() {
        assert_eq!(
            added_column("ALTER TABLE cx.ingest_batches ADD COLUMN a_ms Int64 DEFAULT 0"),
            Some(("ingest_batches", "a_ms"))
        );
        assert_eq!(
            added_column("ALTER TABLE cx.alerts_local ON CLUSTER two ADD COLUMN a UInt8"),
            Some(("alerts_local", "a"))
        );
        assert_eq!(
            added_column("CREATE TABLE IF NOT EXISTS cx.t (a Int64)"),
            None
        );
    }
}
