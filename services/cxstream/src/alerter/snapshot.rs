//! Snapshots of the alerter's judgement (README § Alerts → Snapshots): every journey's
//! input (its batch log and watch), where the aggregates topic was read to, and the
//! incidents firing, kept in ClickHouse (`alerter_snapshots`). A start reads on from the
//! latest instead of from the topic's beginning, and judges as if it had read everything:
//! the watch's judgement depends only on the records, in each partition's order.
//!
//! A snapshot is only taken when every change judged so far is on the alerts topic (none
//! waits for another alerter to write it), so a start from it misses none. One taken under
//! another map, other detector parameters, another aggregates or alerts topic, or that
//! cannot be read, is not used: the start reads from the beginning, as without snapshots.

use std::collections::BTreeMap;

use cxstream_avro::AlertMessage;
use serde::{Deserialize, Serialize};

use super::input::{InputState, InputStateRef};

/// Bumped when what a snapshot holds changes shape: an older one is not used.
const FORMAT: u16 = 2;

/// A snapshot as written (field for field as [`Taken`]).
#[derive(Serialize)]
pub struct Taking<'a> {
    format: u16,
    /// The aggregates topic read, and the alerts topic whose changes it holds written.
    topics: (&'a str, &'a str),
    /// Per partition of the aggregates topic, the offset to read on from.
    positions: &'a BTreeMap<i32, i64>,
    journeys: BTreeMap<&'a str, InputStateRef<'a>>,
    /// The latest change of each incident firing, for Alertmanager.
    firing: Vec<&'a AlertMessage>,
}

/// A snapshot read back.
#[derive(Deserialize)]
pub struct Taken {
    format: u16,
    pub topics: (String, String),
    pub positions: BTreeMap<i32, i64>,
    pub journeys: BTreeMap<String, InputState>,
    pub firing: Vec<AlertMessage>,
}

impl<'a> Taking<'a> {
    pub fn new(
        topics: (&'a str, &'a str),
        positions: &'a BTreeMap<i32, i64>,
        journeys: BTreeMap<&'a str, InputStateRef<'a>>,
        firing: Vec<&'a AlertMessage>,
    ) -> Self {
        Taking {
            format: FORMAT,
            topics,
            positions,
            journeys,
            firing,
        }
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>, postcard::Error> {
        postcard::to_allocvec(self)
    }
}

impl Taken {
    /// The snapshot in `bytes`, or why it cannot be used.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        let taken: Taken = postcard::from_bytes(bytes)
            .map_err(|e| format!("it cannot be read (another version of cxstream?): {e}"))?;
        if taken.format != FORMAT {
            return Err(format!("it has format {}, not {FORMAT}", taken.format));
        }
        Ok(taken)
    }
}
