//! Benchmarks live in `benches/benches/` (criterion) and `benches/*.sh` (end to end); this
//! crate hosts them and the broker harness.

pub mod broker;
