//! The alerter's table: one row per change of an alert, as on the alerts topic. Writing a
//! change twice is harmless (`ReplacingMergeTree` on its name), so the alerter writes here
//! first and to the topic after: a crash between the two writes both again.

use serde::Serialize;

use crate::{Connection, Context, Result};

#[derive(Debug, Clone, clickhouse::Row, Serialize)]
pub struct AlertRow {
    pub id: String,
    pub revision: u32,
    /// Enum8: FIRING = 1, UPDATED = 2, RESOLVED = 3.
    pub state: i8,
    /// Enum8: STEP_DROP = 1, SCORE_DROP = 2, SILENCE = 3.
    pub kind: i8,
    pub journey: String,
    pub journey_group: String,
    pub subject: String,
    /// `NPS`, `CSAT` or `CES` for a score; empty otherwise.
    pub metric: String,
    /// A score's touchpoint; empty for a stage's.
    pub touchpoint: String,
    pub slice: String,
    pub firing: Vec<String>,
    pub window_start_ms: i64,
    pub window_end_ms: i64,
    pub observed: f64,
    pub baseline: f64,
    pub n: f64,
    pub significance: f64,
    /// Enum8: INFO = 1, WARNING = 2, CRITICAL = 3.
    pub severity: i8,
    pub fired_at: u32,
    pub fired_at_ms: i64,
    pub changed_at_ms: i64,
    /// 0 while firing.
    pub resolved_at_ms: i64,
    pub written_at: u32,
}

pub struct AlertsTable {
    client: clickhouse::Client,
}

impl AlertsTable {
    pub fn new(conn: &Connection) -> Self {
        AlertsTable {
            client: conn.client(),
        }
    }

    /// One INSERT of the rows; nothing is sent when there are none.
    pub async fn insert(&self, rows: &[AlertRow]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut ins = self
            .client
            .insert::<AlertRow>("alerts")
            .await
            .ctx(|| "insert into alerts".into())?;
        for row in rows {
            ins.write(row)
                .await
                .ctx(|| "write a row of alerts".into())?;
        }
        ins.end().await.ctx(|| "insert into alerts".into())
    }
}
