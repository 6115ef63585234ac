//! cxstream's domain, free of IO: the journey map, the event-time rules, each customer's
//! journey (from which counts are derived), survey metric math and the per-partition
//! processor that turns input records into exact per-minute counts and enriched facts.
//! Adapters (Avro, Kafka, ClickHouse, HTTP) live in other crates.

mod alert_rules;
pub mod batch_log;
pub mod cases;
pub mod claims;
pub mod detect;
pub mod erasure;
pub mod event_time;
pub mod events;
mod held;
pub mod identity;
pub mod journey;
pub mod journey_map;
pub mod metrics;
pub mod packed;
pub mod processor;
pub mod stage_conversion;
pub mod steps;
pub mod watch;

pub use event_time::{ClockState, EventClock, EventTimePolicy, Input, Refusal};
pub use events::{Invalid, SurveyAnswer, TouchpointEvent};
pub use journey::Journey;
pub use journey_map::{JourneyMap, JourneyMaps};
pub use metrics::{Counts, Metric, Proportion};
pub use processor::{Batch, PartitionProcessor};
