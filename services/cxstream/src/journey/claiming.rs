//! Claiming partitions off the consumer thread. The rebalance callback only assigns a
//! partition paused and says so; reading its resume point and claiming it (a ClickHouse
//! read that grows with the partition's journeys, and one insert per journey) runs on the
//! runtime, each attempt bounded in time, retried until it succeeds or the partition goes.
//! Meanwhile the consumer thread goes on polling: the group's heartbeats and the other
//! partitions' records are never held up by a slow or absent ClickHouse.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cxstream_clickhouse::{BatchCommitter, Resume};
use tokio::task::JoinHandle;

use super::commits::{overtaken, Check};
use super::readiness::Readiness;

/// How long one attempt at reading a partition's resume point may take: reading a
/// partition's journeys grows with them, so this is far above what a healthy read takes.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(60);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long the check after claiming may take (unanswered: checked later).
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The partitions being claimed, each by a task of its own.
pub struct Claiming {
    rt: tokio::runtime::Handle,
    /// One per journey map, in the maps' order.
    committers: Vec<Arc<BatchCommitter>>,
    readiness: Arc<Readiness>,
    tasks: BTreeMap<i32, JoinHandle<Claimed>>,
}

/// A partition claimed: the resume point of every journey in the maps' order, and what a
/// check after the claims found.
pub struct Claimed {
    pub resumes: Vec<Resume>,
    pub check: Check,
}

impl Claiming {
    pub fn new(
        rt: tokio::runtime::Handle,
        committers: Vec<Arc<BatchCommitter>>,
        readiness: Arc<Readiness>,
    ) -> Self {
        Claiming {
            rt,
            committers,
            readiness,
            tasks: BTreeMap::new(),
        }
    }

    /// Starts claiming partition `p` (again, if it was being claimed).
    pub fn start(&mut self, p: i32) {
        self.cancel(p);
        let task = claim(self.committers.clone(), self.readiness.clone(), p);
        self.tasks.insert(p, self.rt.spawn(task));
    }

    /// Stops claiming `p`: it went elsewhere. A claim it wrote meanwhile only makes the
    /// partition's next owner claim it again (see `Inner::park`).
    pub fn cancel(&mut self, p: i32) {
        if let Some(task) = self.tasks.remove(&p) {
            task.abort();
        }
    }

    pub fn clear(&mut self) {
        for (_, task) in std::mem::take(&mut self.tasks) {
            task.abort();
        }
    }

    pub fn contains(&self, p: i32) -> bool {
        self.tasks.contains_key(&p)
    }

    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// The partitions claimed since the last call.
    pub fn take_claimed(&mut self) -> Vec<(i32, Claimed)> {
        let done: Vec<i32> = self
            .tasks
            .iter()
            .filter(|(_, task)| task.is_finished())
            .map(|(p, _)| *p)
            .collect();
        let mut claimed = Vec::new();
        for p in done {
            let Some(task) = self.tasks.remove(&p) else {
                continue;
            };
            // Finished, so this does not wait. A task cannot fail but by panicking.
            match self.rt.block_on(task) {
                Ok(c) => claimed.push((p, c)),
                Err(e) => {
                    tracing::error!(partition = p, error = %e, "claiming the partition failed; claiming it again");
                    self.start(p);
                }
            }
        }
        claimed
    }
}

/// Reads the resume point of every journey of partition `p` and claims it there, retrying
/// with backoff while ClickHouse does not answer or refuses; then checks the claims.
async fn claim(committers: Vec<Arc<BatchCommitter>>, readiness: Arc<Readiness>, p: i32) -> Claimed {
    let Ok(partition) = u16::try_from(p) else {
        // Kafka partitions are below 2^15 in practice; a partition number out of range
        // cannot be committed anyway (the markers key it as UInt16).
        tracing::error!(
            partition = p,
            "partition number out of range; never claimed"
        );
        return std::future::pending().await;
    };
    let mut resumes = Vec::with_capacity(committers.len());
    for committer in &committers {
        let mut backoff = FIRST_BACKOFF;
        loop {
            match tokio::time::timeout(ATTEMPT_TIMEOUT, committer.resume(partition)).await {
                Ok(Ok(resume)) => {
                    readiness.clickhouse(true);
                    resumes.push(resume);
                    break;
                }
                Ok(Err(e)) => {
                    readiness.clickhouse(false);
                    tracing::warn!(partition = p, journey = committer.journey(), error = %e, backoff_ms = backoff.as_millis() as u64, "cannot read the resume point; retrying");
                }
                Err(_) => {
                    readiness.clickhouse(false);
                    tracing::warn!(
                        partition = p,
                        journey = committer.journey(),
                        timeout_s = ATTEMPT_TIMEOUT.as_secs(),
                        backoff_ms = backoff.as_millis() as u64,
                        "reading the resume point timed out; retrying"
                    );
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
    // The batch each journey resumes after is confirmed to the alerter again, which only a
    // claim still the highest may do; not knowing waits for the next check.
    let held: Vec<(usize, u16, u64)> = resumes
        .iter()
        .enumerate()
        .map(|(lane, r)| (lane, partition, r.claim.id))
        .collect();
    let check = overtaken(&committers, &held, Some(CHECK_TIMEOUT))
        .await
        .of(p);
    Claimed { resumes, check }
}
