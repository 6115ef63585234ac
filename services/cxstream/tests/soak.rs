//! The soak: a day of traffic compressed in event time (a Python producer, a fixed
//! population, records at a steady rate, retries and answers) through a journey service
//! that runs all along, with its memory, open files, consumer lag and the customers it
//! knows (journeys held or let go) sampled every second. Once the population has been seen,
//! nothing may keep growing: memory and open files in the last quarter of the day stay
//! where they were in the second, lag stays bounded and ends at zero, and every count
//! equals the producer's own.
//!
//! Size from CX_SOAK_CUSTOMERS, CX_SOAK_TOUCHPOINTS and CX_SOAK_RATE (records/s); the suite
//! runs a small one, `benches/soak.sh` a large one. The samples go to CX_SOAK_SAMPLES (CSV)
//! when set.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{http_get, spawn_listening, stop_with_sigterm, Score, Stack, CLICKHOUSE_INSERTS};

fn size(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    secs: f64,
    rss_kib: u64,
    open_files: u64,
    lag: i64,
    known: i64,
}

/// The service's resident memory and open files (from /proc), lag and the customers it
/// knows (from its /metrics: journeys in memory and let go); None once it is gone.
fn sample(pid: u32, addr: &str, since: Instant) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let open_files = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    let metrics = http_get(addr, "/metrics");
    let sum = |name: &str| -> i64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as i64
    };
    Some(Sample {
        secs: since.elapsed().as_secs_f64(),
        rss_kib,
        open_files,
        lag: sum("cxstream_consumer_lag_records{"),
        // Held in memory or let go: the customers the service knows.
        known: sum("cxstream_tracked_customers ") + sum("cxstream_journeys_let_go "),
    })
}

fn max_of(samples: &[Sample], f: impl Fn(&Sample) -> u64) -> u64 {
    samples.iter().map(f).max().unwrap_or(0)
}

/// The samples taken between fractions `from` and `to` of the production period.
fn phase(samples: &[Sample], period: f64, from: f64, to: f64) -> Vec<Sample> {
    samples
        .iter()
        .copied()
        .filter(|s| s.secs >= from * period && s.secs <= to * period)
        .collect()
}

#[test]
fn a_day_at_a_steady_rate_grows_nothing_without_bound() {
    let customers = size("CX_SOAK_CUSTOMERS", 2_000);
    let touchpoints = size("CX_SOAK_TOUCHPOINTS", 60_000);
    let rate = size("CX_SOAK_RATE", 1_000);
    let s = Stack::new("soak");
    // An hour of lateness: what is kept for de-duplication turns over many times a day.
    // Batches as often as in production; compaction every 30 s, so that a day sees several
    // (CX_SOAK_FLUSH_MS and CX_SOAK_COMPACT_EVERY try other cadences).
    let flush_ms = size("CX_SOAK_FLUSH_MS", 1_000);
    let compact_every = size("CX_SOAK_COMPACT_EVERY", 30_000 / flush_ms.max(1));
    s.set_journey(&format!(
        "  allowed_lateness_ms: 3600000\n  flush_interval_ms: {flush_ms}\n  \
         max_batch_records: 200000\n  compact_after_batches: {compact_every}\n"
    ));
    let (mut child, addr) = spawn_listening(s.command(&["journey"]));

    let summary_path = s.dir.join("steady-summary.json");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/producers/steady_producer.py");
    let mut producer = std::process::Command::new("python3")
        .arg(script)
        .args(["--brokers", &s.kafka])
        .args(["--touchpoints", &s.topic("touchpoints")])
        .args(["--answers", &s.topic("answers")])
        .args(["--customers", &customers.to_string()])
        .args(["--touchpoint-count", &touchpoints.to_string()])
        .args(["--rate", &rate.to_string(), "--hours", "24"])
        .arg("--summary")
        .arg(&summary_path)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("python3 with fastavro and confluent-kafka (deploy/local/install.sh)");

    let started = Instant::now();
    let mut samples = Vec::new();
    let produced = loop {
        if let Some(status) = producer.try_wait().unwrap() {
            assert!(status.success(), "the steady producer failed: {status:?}");
            break started.elapsed().as_secs_f64();
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the journey service exited"
        );
        samples.extend(sample(child.id(), &addr, started));
        std::thread::sleep(Duration::from_secs(1));
    };
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary_path).unwrap()).unwrap();
    let records = summary["records"].as_i64().unwrap();
    let ended = Instant::now();
    s.wait_until_committed(
        &mut child,
        records,
        Duration::from_secs(300),
        "the soak's records were not all committed 5 minutes after the last one",
    );
    let caught_up = ended.elapsed();
    // The lag gauge is set with each poll: give it a few to see the log end.
    std::thread::sleep(Duration::from_secs(3));
    let last = sample(child.id(), &addr, started).expect("the service is alive");
    stop_with_sigterm(&mut child);

    let found = Found::of(&s, &summary);
    let warm = phase(&samples, produced, 0.25, 0.5);
    let late = phase(&samples, produced, 0.75, 1.0);
    let report = Report::of(&samples, &warm, &late, &last, produced);
    eprintln!("{report}");
    if let Ok(path) = std::env::var("CX_SOAK_SAMPLES") {
        let mut csv = String::from("secs,rss_kib,open_files,lag,known_customers\n");
        for x in samples.iter().chain([&last]) {
            csv.push_str(&format!(
                "{:.1},{},{},{},{}\n",
                x.secs, x.rss_kib, x.open_files, x.lag, x.known
            ));
        }
        std::fs::write(path, csv).unwrap();
    }
    Score {
        test: "day_at_a_steady_rate",
        fault: format!(
            "24 h of event time in {produced:.0} s at {rate} records/s; {}",
            report.short()
        ),
        records_in: records,
        exact: found.differences.is_empty(),
        duplicates: found.duplicates,
        lost: found.lost,
        recovery: caught_up,
    }
    .write();

    assert!(
        found.differences.is_empty(),
        "counts differ from the producer's: {:#?}",
        found.differences
    );
    assert_eq!((found.duplicates, found.lost), (0, 0));
    assert!(
        warm.len() >= 5 && late.len() >= 5,
        "too few samples: make the soak longer"
    );
    let population_seen = warm.iter().all(|x| x.known as u64 * 10 >= customers * 9);
    assert!(
        population_seen,
        "the population was not seen by the second quarter: more touchpoints per customer"
    );
    // Memory: what the second quarter needed, plus room for the allocator's rounding and
    // librdkafka's queues; a leak per record or per event-minute exceeds it.
    let (warm_rss, late_rss) = (max_of(&warm, |x| x.rss_kib), max_of(&late, |x| x.rss_kib));
    assert!(
        late_rss <= warm_rss + warm_rss / 5 + 16 * 1024,
        "memory grows: {report}"
    );
    // Open files: the connections to ClickHouse come and go with the INSERTs in flight
    // (at most CLICKHOUSE_INSERTS), a few others with the broker's; a leak exceeds both.
    assert!(
        max_of(&late, |x| x.open_files)
            <= max_of(&warm, |x| x.open_files) + CLICKHOUSE_INSERTS as u64 + 4,
        "open files grow: {report}"
    );
    // Lag: bounded by what a few seconds bring, and none once caught up.
    let lag_bound = (rate * 10).max(5_000);
    assert!(
        max_of(&late, |x| x.lag.max(0) as u64) <= lag_bound,
        "lag grows: {report}"
    );
    assert_eq!(last.lag, 0, "lag after catching up: {report}");
}

/// The counts in ClickHouse against the producer's summary.
struct Found {
    differences: Vec<String>,
    duplicates: i64,
    lost: i64,
}

impl Found {
    fn of(s: &Stack, summary: &serde_json::Value) -> Found {
        let db = s.database();
        let expected = |key: &str| -> BTreeMap<String, i64> {
            summary[key]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_i64().unwrap()))
                .collect()
        };
        let mut differences = Vec::new();
        let mut compare = |what: &str, mut got: BTreeMap<String, i64>, want| {
            got.retain(|_, n| *n != 0);
            if got != want {
                differences.push(format!("{what}: got {got:?}, want {want:?}"));
            }
        };
        compare(
            "touchpoints by touchpoint",
            s.counts(&format!(
                "SELECT touchpoint, sum(touchpoints) FROM {db}.metrics_minute_committed \
                 GROUP BY touchpoint"
            )),
            expected("by_touchpoint"),
        );
        // 2026-01-01T00:00:00Z, where the producer's day starts.
        compare(
            "touchpoints by hour",
            s.counts(&format!(
                "SELECT toString(intDiv(toUInt32(minute) - 1767225600, 3600)) AS hour, \
                 sum(touchpoints) FROM {db}.metrics_minute_committed GROUP BY hour"
            )),
            expected("by_hour"),
        );
        let nps = s.query(&format!(
            "SELECT sum(nps_promoters), sum(nps_passives), sum(nps_detractors) \
             FROM {db}.metrics_minute_committed"
        ));
        let nps: BTreeMap<String, i64> = ["promoters", "passives", "detractors"]
            .iter()
            .zip(&nps[0])
            .map(|(k, v)| (k.to_string(), v.parse().unwrap()))
            .collect();
        compare("NPS answers", nps, expected("nps"));
        let refused = s.refused();
        if !refused.is_empty() {
            differences.push(format!("refused events: {refused:?}"));
        }
        let (mut duplicates, mut lost) = (0, 0);
        for (table, key) in [
            ("touchpoints", "touchpoints"),
            ("survey_answers", "answers"),
        ] {
            let facts = s.scalar(&format!(
                "SELECT toInt64(count()) FROM (SELECT * FROM {db}.{table} FINAL)"
            ));
            let want = summary[key].as_i64().unwrap();
            duplicates += (facts - want).max(0);
            lost += (want - facts).max(0);
        }
        Found {
            differences,
            duplicates,
            lost,
        }
    }
}

/// The samples in a few figures.
struct Report {
    samples: usize,
    produced: f64,
    rss_mib: [f64; 3],
    open_files: [u64; 3],
    lag: [u64; 3],
    known: i64,
}

impl Report {
    fn of(all: &[Sample], warm: &[Sample], late: &[Sample], last: &Sample, produced: f64) -> Self {
        let mib = |v: &[Sample]| max_of(v, |x| x.rss_kib) as f64 / 1024.0;
        let lag = |v: &[Sample]| max_of(v, |x| x.lag.max(0) as u64);
        Report {
            samples: all.len(),
            produced,
            rss_mib: [mib(warm), mib(late), last.rss_kib as f64 / 1024.0],
            open_files: [
                max_of(warm, |x| x.open_files),
                max_of(late, |x| x.open_files),
                last.open_files,
            ],
            lag: [lag(warm), lag(late), last.lag.max(0) as u64],
            known: last.known,
        }
    }

    fn short(&self) -> String {
        format!(
            "RSS {:.0}/{:.0} MiB, open files {}/{}, lag max {}/{} (2nd/4th quarter)",
            self.rss_mib[0],
            self.rss_mib[1],
            self.open_files[0],
            self.open_files[1],
            self.lag[0],
            self.lag[1]
        )
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "soak: {} samples over {:.0} s; {} customers known at the end (held or let go)",
            self.samples, self.produced, self.known
        )?;
        writeln!(
            f,
            "  max over        2nd quarter  4th quarter  after catch-up"
        )?;
        writeln!(
            f,
            "  RSS (MiB)       {:>11.1}  {:>11.1}  {:>14.1}",
            self.rss_mib[0], self.rss_mib[1], self.rss_mib[2]
        )?;
        writeln!(
            f,
            "  open files      {:>11}  {:>11}  {:>14}",
            self.open_files[0], self.open_files[1], self.open_files[2]
        )?;
        write!(
            f,
            "  lag (records)   {:>11}  {:>11}  {:>14}",
            self.lag[0], self.lag[1], self.lag[2]
        )
    }
}
