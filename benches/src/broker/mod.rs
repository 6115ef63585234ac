//! The broker harness: measures a Kafka-API broker (Tansu with each of its storage
//! engines) on the workload cxstream's tests and benchmarks put on it, and checks that a
//! consumer group reads every record exactly once through consumer kills and a broker
//! restart. Run by `benches/broker.sh`; a small size runs in the test suite.

pub mod consumer;
pub mod ledger;
pub mod probes;
pub mod tansu;
pub mod verify;
pub mod workload;
