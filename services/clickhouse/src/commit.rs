//! The batch-commit protocol, the heart of "exact under at-least-once".
//!
//! A batch of one input partition is committed by writing its facts, minute aggregates and
//! changed journey states, each tagged `(partition, batch_seq, batch_attempt)`, and then a
//! single marker row in `ingest_batches` holding the offsets to resume from. The marker is
//! the commit point: aggregates and states count only when their batch has a marker, and a
//! restarted or newly assigned consumer resumes from the latest marker. A crash anywhere
//! before the marker leaves only rows that never count; the replay writes them again under a
//! new attempt id. Facts carry natural keys, so their replays replace.

use std::sync::Arc;

use clickhouse::Client;
use cxstream_core::journey::JourneyState;
use cxstream_core::{Batch, JourneyMap};
use serde::Deserialize;

use crate::rows::{AnswerRow, BatchRow, MinuteRow, StateRow, TouchpointRow};
use crate::{Context, Error, Result};

/// Where a partition resumes.
#[derive(Debug, Default)]
pub struct Resume {
    /// Sequence number the next batch commits under.
    pub next_seq: u64,
    /// Next offsets to read, `None` when nothing was committed yet.
    pub touchpoints_offset: Option<i64>,
    pub answers_offset: Option<i64>,
    pub watermark_ms: i64,
    pub journeys: Vec<(String, JourneyState)>,
}

/// The offsets and bookkeeping a batch commits together with its rows.
#[derive(Debug, Clone, Copy)]
pub struct BatchEnd {
    pub touchpoints_next_offset: i64,
    pub answers_next_offset: i64,
    pub watermark_ms: i64,
    pub records: u64,
}

pub struct BatchCommitter {
    client: Client,
    map: Arc<JourneyMap>,
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct SavedState {
    customer_id: String,
    #[serde(with = "serde_bytes")]
    state: Vec<u8>,
}

impl BatchCommitter {
    pub fn new(client: Client, map: Arc<JourneyMap>) -> Self {
        BatchCommitter { client, map }
    }

    pub async fn resume(&self, partition: u16) -> Result<Resume> {
        let journey = self.map.name.as_str();
        let last = self
            .client
            .query(
                "SELECT ?fields FROM ingest_batches WHERE journey = ? AND source_partition = ? \
                 ORDER BY batch_seq DESC LIMIT 1",
            )
            .bind(journey)
            .bind(partition)
            .fetch_optional::<BatchRow>()
            .await
            .ctx(|| format!("reading the last committed batch of partition {partition}"))?;
        let Some(last) = last else {
            return Ok(Resume::default());
        };
        let saved = self
            .client
            .query(
                "SELECT customer_id, argMax(state, batch_seq) AS state FROM journey_state \
                 WHERE journey = ? AND source_partition = ? \
                 AND (journey, source_partition, batch_seq, batch_attempt) IN \
                   (SELECT journey, source_partition, batch_seq, batch_attempt FROM ingest_batches \
                    WHERE journey = ? AND source_partition = ?) \
                 GROUP BY customer_id",
            )
            .bind(journey)
            .bind(partition)
            .bind(journey)
            .bind(partition)
            .fetch_all::<SavedState>()
            .await
            .ctx(|| format!("reading journey state of partition {partition}"))?;
        let mut journeys = Vec::with_capacity(saved.len());
        for s in saved {
            let state: JourneyState = postcard::from_bytes(&s.state).map_err(|e| Error::State {
                partition,
                message: e.to_string(),
            })?;
            journeys.push((s.customer_id, state));
        }
        Ok(Resume {
            next_seq: last.batch_seq + 1,
            // Negative: nothing was read from that topic yet (start at its beginning).
            touchpoints_offset: Some(last.touchpoints_next_offset).filter(|o| *o >= 0),
            answers_offset: Some(last.answers_next_offset).filter(|o| *o >= 0),
            watermark_ms: last.watermark_ms,
            journeys,
        })
    }

    /// True when batch `seq` of `partition` is already committed (its marker exists). Used
    /// before retrying a commit whose marker insert may have succeeded unseen.
    pub async fn is_committed(&self, partition: u16, seq: u64) -> Result<bool> {
        let n = self
            .client
            .query("SELECT count() FROM ingest_batches WHERE journey = ? AND source_partition = ? AND batch_seq = ?")
            .bind(self.map.name.as_str())
            .bind(partition)
            .bind(seq)
            .fetch_one::<u64>()
            .await
            .ctx(|| "checking for a batch marker".into())?;
        Ok(n > 0)
    }

    /// Writes one batch and its marker. On error nothing counts; call again (a retry gets a
    /// new attempt id), after [`Self::is_committed`] says the marker is not there.
    pub async fn commit(
        &self,
        partition: u16,
        seq: u64,
        batch: &Batch,
        end: BatchEnd,
    ) -> Result<()> {
        let attempt: u64 = rand::random();
        let map = &*self.map;
        if !batch.touchpoints.is_empty() {
            let mut ins = self
                .client
                .insert::<TouchpointRow<'_>>("touchpoints")
                .await
                .ctx(|| "insert touchpoints".into())?;
            for f in &batch.touchpoints {
                ins.write(&TouchpointRow::new(map, f, partition))
                    .await
                    .ctx(|| "write touchpoint row".into())?;
            }
            ins.end().await.ctx(|| "insert touchpoints".into())?;
        }
        if !batch.answers.is_empty() {
            let mut ins = self
                .client
                .insert::<AnswerRow<'_>>("survey_answers")
                .await
                .ctx(|| "insert answers".into())?;
            for f in &batch.answers {
                ins.write(&AnswerRow::new(map, f, partition))
                    .await
                    .ctx(|| "write answer row".into())?;
            }
            ins.end().await.ctx(|| "insert answers".into())?;
        }
        if !batch.aggregates.is_empty() {
            let mut ins = self
                .client
                .insert::<MinuteRow>("metrics_minute")
                .await
                .ctx(|| "insert minute rows".into())?;
            for (k, c) in &batch.aggregates {
                ins.write(&MinuteRow::new(map, k, c, partition, seq, attempt))
                    .await
                    .ctx(|| "write minute row".into())?;
            }
            ins.end().await.ctx(|| "insert minute rows".into())?;
        }
        if !batch.journeys.is_empty() {
            let mut ins = self
                .client
                .insert::<StateRow>("journey_state")
                .await
                .ctx(|| "insert journey state".into())?;
            for (customer, state) in &batch.journeys {
                let bytes = postcard::to_allocvec(state).map_err(|e| Error::State {
                    partition,
                    message: e.to_string(),
                })?;
                let row = StateRow {
                    journey: map.name.clone(),
                    source_partition: partition,
                    customer_id: customer.clone(),
                    segment: map.segment_name(state.segment).to_string(),
                    state: bytes,
                    batch_seq: seq,
                    batch_attempt: attempt,
                };
                ins.write(&row)
                    .await
                    .ctx(|| "write journey state row".into())?;
            }
            ins.end().await.ctx(|| "insert journey state".into())?;
        }
        let marker = BatchRow {
            journey: map.name.clone(),
            source_partition: partition,
            batch_seq: seq,
            batch_attempt: attempt,
            touchpoints_next_offset: end.touchpoints_next_offset,
            answers_next_offset: end.answers_next_offset,
            watermark_ms: end.watermark_ms,
            records: end.records,
            committed_at: now_secs(),
        };
        let mut ins = self
            .client
            .insert::<BatchRow>("ingest_batches")
            .await
            .ctx(|| "insert batch marker".into())?;
        ins.write(&marker)
            .await
            .ctx(|| "write batch marker".into())?;
        ins.end().await.ctx(|| "insert batch marker".into())?;
        Ok(())
    }
}

fn now_secs() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
}
