//! Alert quality of the drop detector beside two baselines users have today, on simulated
//! per-minute conversion counts with daily and weekly cycles:
//!
//!     cargo run --release -p cxstream-benches --bin alert_quality [SEED]
//!
//! Slices of several sizes (trials a minute at the daily peak) and base rates get three
//! weeks of history, fourteen clean days (every alert there is false), then fourteen days
//! with incidents: a slice's conversion falls by 10–50 % for one to four hours. Detectors:
//! cxstream's CUSUM (`cxstream_core::detect::DropDetector`, defaults), a static threshold
//! evaluated hourly (the hour below 80 % of the slice's long-run rate) and a 3-sigma
//! z-score of the hour against the last day's hours. An incident counts as found when an
//! alert starts between its start and an hour after its end; any other alert is false.
//! Prints recall, precision, false alerts per day and detection delay (event minutes),
//! then the CUSUM's delay by slice size and drop size.

use std::collections::BTreeMap;

use cxstream_core::detect::{DropDetector, DropParams, Incident};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const DAY: i64 = 1440;
/// 2026-11-02T00:00Z, a Monday, in epoch minutes.
const START: i64 = 1_793_577_600_000 / 60_000;
const WARM_DAYS: i64 = 21;
const CLEAN_DAYS: i64 = 14;
const INCIDENT_DAYS: i64 = 14;
const SIZES: [f64; 4] = [5.0, 20.0, 50.0, 200.0];
const RATES: [f64; 3] = [0.3, 0.5, 0.7];
const DROPS: [f64; 4] = [0.1, 0.2, 0.3, 0.5];
const SLICES_PER_KIND: usize = 3;

struct IncidentTruth {
    slice: usize,
    start: i64,
    end: i64,
    drop: f64,
}

/// Trials at the daily peak scaled by the hour (night at a fifth) and the weekday
/// (weekends at 70 %).
fn volume(peak: f64, minute: i64) -> f64 {
    let day = (minute - START).rem_euclid(7 * DAY) / DAY;
    let hour = (minute.rem_euclid(DAY)) as f64 / 60.0;
    let daily = 0.2 + 0.8 * (0.5 - 0.5 * (std::f64::consts::TAU * (hour - 3.0) / 24.0).cos());
    let weekly = if day >= 5 { 0.7 } else { 1.0 };
    peak * daily * weekly
}

fn poisson(rng: &mut SmallRng, mean: f64) -> u64 {
    if mean > 50.0 {
        // A normal approximation where Knuth's product would underflow.
        let z: f64 = (0..12).map(|_| rng.random::<f64>()).sum::<f64>() - 6.0;
        return (mean + z * mean.sqrt()).round().max(0.0) as u64;
    }
    let l = (-mean).exp();
    let (mut k, mut p) = (0u64, 1.0);
    loop {
        p *= rng.random::<f64>();
        if p <= l {
            return k;
        }
        k += 1;
    }
}

fn binomial(rng: &mut SmallRng, n: u64, p: f64) -> u64 {
    (0..n)
        .filter(|_| rng.random_bool(p.clamp(0.0, 1.0)))
        .count() as u64
}

/// Successes and trials of the hour under way; the hourly baselines judge whole hours.
#[derive(Default)]
struct Hour {
    x: u64,
    n: u64,
}

impl Hour {
    /// Adds a minute; at the hour's last minute, returns the hour's totals.
    fn add(&mut self, minute: i64, x: u64, n: u64) -> Option<(u64, u64)> {
        self.x += x;
        self.n += n;
        ((minute + 1).rem_euclid(60) == 0)
            .then(|| std::mem::take(self))
            .map(|h| (h.x, h.n))
    }
}

/// Static threshold, hourly: the hour's rate below 80 % of the rate of everything before.
#[derive(Default)]
struct Static {
    hour: Hour,
    total: (u64, u64),
    firing: bool,
}

impl Static {
    fn observe(&mut self, minute: i64, x: u64, n: u64) -> bool {
        let Some((hx, hn)) = self.hour.add(minute, x, n) else {
            return false;
        };
        let mean = self.total.0 as f64 / self.total.1.max(1) as f64;
        let low = hn > 0 && self.total.1 > 0 && (hx as f64 / hn as f64) < 0.8 * mean;
        self.total = (self.total.0 + hx, self.total.1 + hn);
        let started = low && !self.firing;
        self.firing = low;
        started
    }
}

/// 3-sigma z-score, hourly: the hour's rate against the mean and spread of the last 24.
#[derive(Default)]
struct ZScore {
    hour: Hour,
    hours: Vec<f64>,
    firing: bool,
}

impl ZScore {
    fn observe(&mut self, minute: i64, x: u64, n: u64) -> bool {
        let Some((hx, hn)) = self.hour.add(minute, x, n) else {
            return false;
        };
        if hn == 0 {
            return false;
        }
        let rate = hx as f64 / hn as f64;
        let last: Vec<f64> = self.hours.iter().rev().take(24).copied().collect();
        let mut low = false;
        if last.len() == 24 {
            let mean = last.iter().sum::<f64>() / 24.0;
            let sd = (last.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / 23.0).sqrt();
            low = sd > 0.0 && (rate - mean) / sd < -3.0;
        }
        self.hours.push(rate);
        let started = low && !self.firing;
        self.firing = low;
        started
    }
}

#[derive(Default)]
struct Score {
    found: usize,
    incidents: usize,
    true_alerts: usize,
    false_alerts: usize,
    false_clean: usize,
    delays: Vec<i64>,
}

impl Score {
    fn line(&self, name: &str) -> String {
        let mut d = self.delays.clone();
        d.sort_unstable();
        let q = |f: f64| {
            d.get(((d.len() as f64 - 1.0) * f).round() as usize)
                .map_or("-".to_string(), |v| v.to_string())
        };
        let alerts = self.true_alerts + self.false_alerts;
        format!(
            "| {name} | {:.0} % ({}/{}) | {:.0} % | {:.2} | {} | {} | {} |",
            100.0 * self.found as f64 / self.incidents.max(1) as f64,
            self.found,
            self.incidents,
            100.0 * self.true_alerts as f64 / alerts.max(1) as f64,
            self.false_clean as f64 / CLEAN_DAYS as f64,
            self.false_clean,
            q(0.5),
            q(0.95)
        )
    }
}

fn main() {
    let seed = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(7u64);
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut slices = Vec::new();
    for &size in &SIZES {
        for &rate in &RATES {
            for _ in 0..SLICES_PER_KIND {
                slices.push((size, rate));
            }
        }
    }
    let incidents_from = START + (WARM_DAYS + CLEAN_DAYS) * DAY;
    let end = incidents_from + INCIDENT_DAYS * DAY;
    let mut truth = Vec::new();
    for s in 0..slices.len() {
        // Four incidents a slice, one of each drop size, apart from each other.
        for (k, &drop) in DROPS.iter().enumerate() {
            let window = INCIDENT_DAYS * DAY / DROPS.len() as i64;
            let start = incidents_from + k as i64 * window + rng.random_range(0..window - 6 * 60);
            let end = start + rng.random_range(60..=240);
            truth.push(IncidentTruth {
                slice: s,
                start,
                end,
                drop,
            });
        }
    }
    let mut scores: BTreeMap<&str, Score> = BTreeMap::new();
    // CUSUM delay by (slice size, drop): (found, incidents, delays).
    let mut by_kind: BTreeMap<(u64, u64), (usize, usize, Vec<i64>)> = BTreeMap::new();
    for (s, &(size, rate)) in slices.iter().enumerate() {
        let mut cusum = DropDetector::new(DropParams::default());
        let mut fixed = Static::default();
        let mut z = ZScore::default();
        let mine: Vec<&IncidentTruth> = truth.iter().filter(|t| t.slice == s).collect();
        let mut alerts: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
        for minute in START..end {
            let n = poisson(&mut rng, volume(size, minute));
            let wobble =
                1.0 + 0.02 * (std::f64::consts::TAU * (minute % DAY) as f64 / DAY as f64).sin();
            let drop = mine
                .iter()
                .find(|t| (t.start..t.end).contains(&minute))
                .map_or(0.0, |t| t.drop);
            let x = binomial(&mut rng, n, rate * wobble * (1.0 - drop));
            if let Some(Incident::Started { .. }) = cusum.observe(minute, x, n) {
                alerts.entry("cxstream CUSUM").or_default().push(minute);
            }
            if fixed.observe(minute, x, n) {
                alerts
                    .entry("static threshold, hourly")
                    .or_default()
                    .push(minute);
            }
            if z.observe(minute, x, n) {
                alerts
                    .entry("3-sigma z-score, last day")
                    .or_default()
                    .push(minute);
            }
        }
        for name in [
            "cxstream CUSUM",
            "static threshold, hourly",
            "3-sigma z-score, last day",
        ] {
            let starts = alerts.remove(name).unwrap_or_default();
            let score = scores.entry(name).or_default();
            let clean = (START + WARM_DAYS * DAY)..incidents_from;
            for &a in &starts {
                let real = mine.iter().any(|t| (t.start..t.end + 60).contains(&a));
                if real {
                    score.true_alerts += 1;
                } else if a >= clean.start {
                    score.false_alerts += 1;
                    score.false_clean += usize::from(clean.contains(&a));
                }
            }
            for t in &mine {
                score.incidents += 1;
                let first = starts.iter().find(|&&a| (t.start..t.end + 60).contains(&a));
                if let Some(&a) = first {
                    score.found += 1;
                    score.delays.push(a - t.start);
                }
                if name == "cxstream CUSUM" {
                    let e = by_kind
                        .entry((size as u64, (t.drop * 100.0) as u64))
                        .or_default();
                    e.1 += 1;
                    if let Some(&a) = first {
                        e.0 += 1;
                        e.2.push(a - t.start);
                    }
                }
            }
        }
    }
    println!(
        "{} slices ({} sizes x {} base rates x {}), {} incidents; {} days of history, {} clean days, {} days with incidents; seed {seed}",
        slices.len(),
        SIZES.len(),
        RATES.len(),
        SLICES_PER_KIND,
        truth.len(),
        WARM_DAYS,
        CLEAN_DAYS,
        INCIDENT_DAYS
    );
    println!("\n| detector | recall | precision | false alerts / clean day | false alerts in clean days | delay p50 (min) | delay p95 (min) |");
    println!("|---|---|---|---|---|---|---|");
    for (name, score) in &scores {
        println!("{}", score.line(name));
    }
    println!("\ncxstream CUSUM, found and median delay (event minutes) by trials a minute at the daily peak and drop:\n");
    print!("| trials/min |");
    for d in DROPS {
        print!(" drop {:.0} % |", d * 100.0);
    }
    print!("\n|---|");
    for _ in DROPS {
        print!("---|");
    }
    println!();
    for size in SIZES {
        print!("| {size:.0} |");
        for d in DROPS {
            let (found, n, mut delays) = by_kind
                .remove(&(size as u64, (d * 100.0) as u64))
                .unwrap_or_default();
            delays.sort_unstable();
            let median = delays
                .get(delays.len() / 2)
                .map_or("-".to_string(), |v| format!("{v} min"));
            print!(" {found}/{n}, {median} |");
        }
        println!();
    }
}
