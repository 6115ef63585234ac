//! Background probes while the workload runs: a metadata request every 250 ms and, every
//! 5 s, a topic created, written to and read through a brand-new consumer group (the way
//! every cxstream test uses the broker). Latencies and failures are kept for the report.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cxstream_kafka::probe;
use cxstream_kafka::{KafkaSettings, TopicSpec};
use rdkafka::consumer::BaseConsumer;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

pub const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
pub const GROUP_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Default, Clone)]
pub struct ProbeStats {
    pub metadata_ms: Vec<f64>,
    pub group_ms: Vec<f64>,
    pub topics_created: usize,
    /// (seconds since start, what failed)
    pub failures: Vec<(f64, String)>,
}

pub struct Probes {
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<ProbeStats>>,
    threads: Vec<JoinHandle<()>>,
}

impl Probes {
    pub fn start(brokers: &str, run: &str, start: Instant) -> Probes {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(ProbeStats::default()));
        let settings = KafkaSettings {
            brokers: brokers.to_string(),
            ..KafkaSettings::default()
        };
        let threads = vec![
            spawn_loop(&stop, Duration::from_millis(250), {
                let (stats, settings) = (stats.clone(), settings.clone());
                let client: Option<BaseConsumer> = settings.client_config().create().ok();
                move || metadata_probe(client.as_ref(), &stats, start)
            }),
            spawn_loop(&stop, Duration::from_secs(5), {
                let (stats, run) = (stats.clone(), run.to_string());
                let mut n = 0;
                move || {
                    n += 1;
                    churn_probe(&settings, &format!("{run}.churn.{n}"), &stats, start);
                }
            }),
        ];
        Probes {
            stop,
            stats,
            threads,
        }
    }

    pub fn stats(&self) -> ProbeStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn finish(self) -> ProbeStats {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

fn spawn_loop(
    stop: &Arc<AtomicBool>,
    every: Duration,
    mut f: impl FnMut() + Send + 'static,
) -> JoinHandle<()> {
    let stop = stop.clone();
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let began = Instant::now();
            f();
            let rest = every.saturating_sub(began.elapsed());
            let until = Instant::now() + rest;
            while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    })
}

fn record(stats: &Mutex<ProbeStats>, f: impl FnOnce(&mut ProbeStats)) {
    if let Ok(mut s) = stats.lock() {
        f(&mut s);
    }
}

fn metadata_probe(client: Option<&BaseConsumer>, stats: &Mutex<ProbeStats>, start: Instant) {
    let Some(client) = client else {
        record(stats, |s| {
            s.failures
                .push((start.elapsed().as_secs_f64(), "metadata client".into()))
        });
        return;
    };
    match probe::metadata_with(client, METADATA_TIMEOUT) {
        Ok(a) => record(stats, |s| s.metadata_ms.push(ms(a.latency))),
        Err(e) => record(stats, |s| {
            s.metadata_ms.push(ms(METADATA_TIMEOUT));
            s.failures
                .push((start.elapsed().as_secs_f64(), e.to_string()));
        }),
    }
}

/// A new topic, ten records, and a new group that joins, commits and reads its commit.
fn churn_probe(settings: &KafkaSettings, topic: &str, stats: &Mutex<ProbeStats>, start: Instant) {
    let began = Instant::now();
    let result = create_and_fill(settings, topic).and_then(|()| {
        probe::group_round_trip(
            &settings.client_config(),
            topic,
            &format!("{topic}.group"),
            GROUP_TIMEOUT,
        )
        .map_err(|e| e.to_string())
    });
    match result {
        Ok(_) => record(stats, |s| {
            s.group_ms.push(ms(began.elapsed()));
            s.topics_created += 1;
        }),
        Err(e) => record(stats, |s| {
            s.group_ms.push(ms(began.elapsed()));
            s.failures
                .push((start.elapsed().as_secs_f64(), format!("{topic}: {e}")));
        }),
    }
}

fn create_and_fill(settings: &KafkaSettings, topic: &str) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let spec = TopicSpec {
        name: topic.to_string(),
        partitions: 1,
        keep_forever: false,
    };
    rt.block_on(async {
        tokio::time::timeout(
            GROUP_TIMEOUT,
            cxstream_kafka::ensure_topics(settings, &[spec]),
        )
        .await
    })
    .map_err(|_| format!("CreateTopics: no answer within {GROUP_TIMEOUT:?}"))?
    .map_err(|e| e.to_string())?;
    let producer: BaseProducer = settings
        .client_config()
        .set("message.timeout.ms", "30000")
        .create()
        .map_err(|e| e.to_string())?;
    for i in 0..10u8 {
        producer
            .send(BaseRecord::<[u8], [u8]>::to(topic).payload(&[i]))
            .map_err(|(e, _)| e.to_string())?;
    }
    producer
        .flush(GROUP_TIMEOUT)
        .map_err(|e| format!("produce: {e}"))
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The q-quantile (0..=1) of the samples, nearest rank.
pub fn quantile(samples: &[f64], q: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}
