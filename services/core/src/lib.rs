//! cxstream's domain, free of IO: the journey map, the journey state machine, survey metric
//! math and the per-partition processor that turns input records into exact per-minute
//! counts and enriched facts. Adapters (Avro, Kafka, ClickHouse, HTTP) live in other crates.

pub mod events;
pub mod journey;
pub mod journey_map;
pub mod metrics;
pub mod processor;

pub use events::{Invalid, SurveyAnswer, TouchpointEvent};
pub use journey_map::JourneyMap;
pub use metrics::{Counts, Metric};
pub use processor::{Batch, PartitionProcessor};
