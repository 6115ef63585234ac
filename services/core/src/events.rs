//! Input records as the domain sees them. Field names equal the Avro schemas'
//! (`schemas/avro/*.avsc`), so the codec deserializes bytes straight into these types.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::metrics::Metric;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TouchpointEvent {
    pub event_id: String,
    pub customer_id: Option<String>,
    pub anonymous_id: Option<String>,
    /// Event time, epoch milliseconds (Avro `timestamp-millis`).
    pub event_time: i64,
    pub touchpoint: String,
    pub channel: String,
    pub stage: Option<String>,
    pub segment: Option<String>,
    pub outcome: Option<String>,
    pub attributes: HashMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SurveyAnswer {
    pub response_id: String,
    pub customer_id: Option<String>,
    /// Answer time, epoch milliseconds (Avro `timestamp-millis`).
    pub answer_time: i64,
    pub metric: Metric,
    pub score: i32,
    /// The touchpoint event this answer rates, when the survey was triggered by one.
    pub touchpoint_event_id: Option<String>,
    pub touchpoint: Option<String>,
    pub channel: Option<String>,
    pub comment: Option<String>,
    pub attributes: HashMap<String, String>,
}

/// Why a decoded record is refused. Each goes to the dead-letter topic under this name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Invalid {
    #[error("missing customer id")]
    MissingCustomerId,
    #[error("missing event or response id")]
    MissingId,
    #[error("score out of range for its metric")]
    ScoreOutOfRange,
    #[error("event time before 1970-01-01 or after 2106-02-07, which no figure can hold")]
    TimeOutOfRange,
    #[error("channel is not in the journey map")]
    UnknownChannel,
    #[error("stage is not in the journey map")]
    UnknownStage,
    #[error("segment is not in the journey map")]
    UnknownSegment,
    #[error("customer id starts with the prefix of visitors' journeys (anon:)")]
    ReservedCustomerId,
}

impl Invalid {
    /// Stable, bounded name used in DLQ headers and metric labels.
    pub fn kind(self) -> &'static str {
        match self {
            Invalid::MissingCustomerId => "missing_customer_id",
            Invalid::MissingId => "missing_id",
            Invalid::ScoreOutOfRange => "score_out_of_range",
            Invalid::TimeOutOfRange => "time_out_of_range",
            Invalid::UnknownChannel => "unknown_channel",
            Invalid::UnknownStage => "unknown_stage",
            Invalid::UnknownSegment => "unknown_segment",
            Invalid::ReservedCustomerId => "reserved_customer_id",
        }
    }
}
