//! Core path throughput: Avro decode + journey update + per-minute aggregation, on one core,
//! over simulated retail traffic (`cargo bench -p cxstream-benches --bench core_path`).

use std::sync::Arc;

// The same allocator as the `cxstream` binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use cxstream_avro::Codec;
use cxstream_core::{EventTimePolicy, JourneyMap, PartitionProcessor};
use cxstream_simulator::{simulate, SimConfig, SimRecord};

enum Encoded {
    Touchpoint(Vec<u8>),
    Answer(Vec<u8>),
}

fn inputs(codec: &Codec, map: &JourneyMap) -> Vec<Encoded> {
    let sim = simulate(
        map,
        &SimConfig {
            customers: 20_000,
            days: 3.0,
            ..SimConfig::default()
        },
    )
    .expect("the retail map simulates");
    sim.records
        .iter()
        .map(|s| {
            let mut buf = Vec::new();
            match &s.record {
                SimRecord::Touchpoint(t) => {
                    codec.encode_touchpoint(t, &mut buf).expect("encode");
                    Encoded::Touchpoint(buf)
                }
                SimRecord::Answer(a) => {
                    codec.encode_answer(a, &mut buf).expect("encode");
                    Encoded::Answer(buf)
                }
            }
        })
        .collect()
}

fn core_path(c: &mut Criterion) {
    let map = Arc::new(
        JourneyMap::from_yaml(
            "retail.yaml",
            include_str!("../../schemas/journeys/retail.yaml"),
        )
        .expect("map"),
    );
    let codec = Codec::new().expect("codec");
    let records = inputs(&codec, &map);
    let mut g = c.benchmark_group("core_path");
    g.throughput(Throughput::Elements(records.len() as u64));
    g.sample_size(10);
    g.bench_function("decode+journey+aggregate", |b| {
        b.iter_batched(
            || PartitionProcessor::new(map.clone(), EventTimePolicy::default()),
            |mut p| {
                for (i, r) in records.iter().enumerate() {
                    let res = match r {
                        Encoded::Touchpoint(bytes) => p.on_touchpoint(
                            codec.decode_touchpoint(bytes).expect("valid"),
                            i as i64,
                            None,
                        ),
                        Encoded::Answer(bytes) => {
                            p.on_answer(codec.decode_answer(bytes).expect("valid"), i as i64, None)
                        }
                    };
                    res.expect("valid record");
                    // A commit every 50k records, as the service does every flush interval.
                    if i % 50_000 == 49_999 {
                        std::hint::black_box(p.take_batch());
                    }
                }
                std::hint::black_box(p.take_batch())
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("decode_only", |b| {
        b.iter(|| {
            for r in &records {
                match r {
                    Encoded::Touchpoint(bytes) => {
                        std::hint::black_box(codec.decode_touchpoint(bytes).expect("valid"));
                    }
                    Encoded::Answer(bytes) => {
                        std::hint::black_box(codec.decode_answer(bytes).expect("valid"));
                    }
                }
            }
        })
    });
    g.finish();
}

criterion_group!(benches, core_path);
criterion_main!(benches);
