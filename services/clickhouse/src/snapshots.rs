//! The alerter's snapshots (`alerter_snapshots`): bytes the alerter makes of its judgement,
//! kept per journey group; the latest is read back at start.

use serde::{Deserialize, Serialize};

use crate::{Connection, Context, Result};

/// Snapshots of a group go round this many slots: merges keep the latest of each.
const SLOTS: u64 = 24;

#[derive(Debug, clickhouse::Row, Serialize)]
struct SnapshotRow<'a> {
    journey_group: &'a str,
    slot: u8,
    taken_at_ms: u64,
    instance: &'a str,
    #[serde(with = "serde_bytes")]
    state: &'a [u8],
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct LatestRow {
    taken_at_ms: u64,
    #[serde(with = "serde_bytes")]
    state: Vec<u8>,
}

/// A snapshot read back: when it was taken (epoch ms, by the taker's clock) and its bytes.
#[derive(Debug)]
pub struct Snapshot {
    pub taken_at_ms: u64,
    pub state: Vec<u8>,
}

pub struct SnapshotsTable {
    client: clickhouse::Client,
}

impl SnapshotsTable {
    pub fn new(conn: &Connection) -> Self {
        SnapshotsTable {
            client: conn.client(),
        }
    }

    pub async fn save(
        &self,
        group: &str,
        instance: &str,
        taken_at_ms: u64,
        state: &[u8],
    ) -> Result<()> {
        let row = SnapshotRow {
            journey_group: group,
            // Slots by the hour of taking: a day's snapshots, one an hour, stay.
            slot: u8::try_from((taken_at_ms / 3_600_000) % SLOTS).unwrap_or(0),
            taken_at_ms,
            instance,
            state,
        };
        let mut ins = self
            .client
            .insert::<SnapshotRow<'_>>("alerter_snapshots")
            .await
            .ctx(|| "insert into alerter_snapshots".to_string())?;
        ins.write(&row)
            .await
            .ctx(|| "write an alerter snapshot".to_string())?;
        ins.end()
            .await
            .ctx(|| "insert into alerter_snapshots".to_string())
    }

    /// The group's latest snapshot, if any.
    pub async fn latest(&self, group: &str) -> Result<Option<Snapshot>> {
        let row = self
            .client
            .query(
                "SELECT taken_at_ms, state FROM alerter_snapshots \
                 WHERE journey_group = ? ORDER BY taken_at_ms DESC LIMIT 1",
            )
            .bind(group)
            .fetch_optional::<LatestRow>()
            .await
            .ctx(|| "read the latest alerter snapshot".to_string())?;
        Ok(row.map(|r| Snapshot {
            taken_at_ms: r.taken_at_ms,
            state: r.state,
        }))
    }
}
