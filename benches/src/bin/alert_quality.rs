//! Alert quality of the alerter's watch of a journey, beside two baselines users have
//! today, on simulated traffic with daily and weekly cycles:
//!
//!     cargo run --release -p cxstream-benches --bin alert_quality [SEED] [DROP_THRESHOLD] [SILENCE_FLOOR]
//!
//! A shop's checkout step (budget 30 min) in three channels and three segments of very
//! different sizes, attempts converting after a delay (log-normal, median 90 s), NPS
//! answers after purchase. Three weeks of history, fourteen clean days (every alert there
//! is false), then fourteen days with incidents, apart from each other: the checkout's
//! conversion in one channel or segment falls by 10–50 % for one to four hours, a channel
//! sends nothing for 30–90 minutes, a channel's NPS falls by 15 or 25 points for two to six
//! hours. cxstream is `cxstream_core::watch::JourneyWatch` with its defaults, fed the
//! per-minute cells the journey service publishes (each minute known one minute later);
//! the baselines judge each slice's checkout conversion hourly once the hour's attempts are
//! decided (hour end + budget): a static threshold (below 80 % of the slice's long-run
//! rate) and a 3-sigma z-score against the last 24 hours. Prints recall, precision, false
//! alerts per clean day and detection delay in event minutes — measured to when the alert
//! could be known, not to the minute it is about — and cxstream's step-drop delay by slice
//! size and drop size.

use std::collections::BTreeMap;

use cxstream_core::journey_map::NO_SEGMENT;
use cxstream_core::metrics::{Counts, StepCounts};
use cxstream_core::watch::{AlertKind, AlertState, JourneyWatch, Slice, Subject};
use cxstream_core::JourneyMap;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const MAP: &str = "journey: shop
stages:
  - name: browse
    budget: 7d
    target_conversion: 0.4
  - name: buy
    budget: 2d
    target_conversion: 0.3
channels: [web, app, store]
segments: [new, regular, vip]
touchpoints:
  - name: cart
    stage: browse
    channels: [web, app, store]
  - name: paid
    stage: buy
    channels: [web, app, store]
steps:
  - name: checkout
    from: [cart]
    to: [paid]
    budget: 30m
    target_conversion: 0.7
";

const MINUTE: i64 = 60_000;
const DAY: i64 = 1440;
/// 2026-11-02T00:00Z, a Monday, in epoch minutes.
const START: i64 = 1_793_577_600_000 / MINUTE;
const WARM_DAYS: i64 = 21;
const CLEAN_DAYS: i64 = 14;
const INCIDENT_DAYS: i64 = 14;
const BUDGET_MIN: i64 = 30;
/// Attempts a minute at the daily peak per channel, share of each segment, and rates.
const CHANNEL_PEAK: [f64; 3] = [120.0, 60.0, 12.0];
const CHANNEL_RATE: [f64; 3] = [0.65, 0.6, 0.75];
const SEGMENT_SHARE: [f64; 3] = [0.4, 0.45, 0.15];
/// NPS answers a minute at the daily peak per channel (web: 720 an hour).
const ANSWERS_PEAK: [f64; 3] = [12.0, 6.0, 1.0];
/// Conversion delay: log-normal, median 90 s, σ 1; the watch's horizons.
const HORIZONS_S: [f64; 5] = [60.0, 120.0, 300.0, 600.0, 1800.0];
const DROPS: [f64; 4] = [0.1, 0.2, 0.3, 0.5];

#[derive(Debug, Clone, Copy, PartialEq)]
enum What {
    /// The checkout's conversion in a slice falls by the fraction.
    Drop(Slice, f64),
    /// A channel sends nothing.
    Silence(u8),
    /// A channel's NPS falls by the points.
    Nps(u8, f64),
}

#[derive(Debug, Clone, Copy)]
struct Injected {
    what: What,
    start: i64,
    end: i64,
}

/// Daily cycle (night at a fifth of the peak) and weekends at 70 %.
fn cycle(minute: i64) -> f64 {
    let day = (minute - START).rem_euclid(7 * DAY) / DAY;
    let hour = minute.rem_euclid(DAY) as f64 / 60.0;
    let daily = 0.2 + 0.8 * (0.5 - 0.5 * (std::f64::consts::TAU * (hour - 3.0) / 24.0).cos());
    daily * if day >= 5 { 0.7 } else { 1.0 }
}

fn poisson(rng: &mut SmallRng, mean: f64) -> u64 {
    if mean > 50.0 {
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

/// The share of conversions within each horizon (log-normal delay CDF).
fn delay_cdf() -> [f64; 5] {
    HORIZONS_S.map(|t| 0.5 * libm::erfc(-((t / 90.0_f64).ln()) / std::f64::consts::SQRT_2))
}

/// The incidents, one at a time, apart from each other, at random times of day.
fn schedule(rng: &mut SmallRng) -> Vec<Injected> {
    let mut whats = Vec::new();
    let slices = [
        Slice::Channel(0),
        Slice::Channel(1),
        Slice::Channel(2),
        Slice::Segment(0),
        Slice::Segment(1),
        Slice::Segment(2),
    ];
    for s in slices {
        for d in DROPS {
            whats.push(What::Drop(s, d));
        }
    }
    for c in 0..3 {
        whats.push(What::Silence(c));
    }
    for c in 0..2 {
        for points in [15.0, 25.0] {
            whats.push(What::Nps(c, points));
        }
    }
    // Shuffle (Fisher–Yates), then one per slot of the incident days.
    for i in (1..whats.len()).rev() {
        let j = rng.random_range(0..=i);
        whats.swap(i, j);
    }
    let from = START + (WARM_DAYS + CLEAN_DAYS) * DAY;
    let slot = INCIDENT_DAYS * DAY / whats.len() as i64;
    whats
        .into_iter()
        .enumerate()
        .map(|(i, what)| {
            let length = match what {
                What::Drop(..) => rng.random_range(60..=240),
                What::Silence(_) => rng.random_range(30..=90),
                What::Nps(..) => rng.random_range(120..=360),
            };
            let start = from + i as i64 * slot + rng.random_range(0..slot - length - 120);
            Injected {
                what,
                start,
                end: start + length,
            }
        })
        .collect()
}

/// Successes and trials of an hour's attempts, judged once decided (hour end + budget).
#[derive(Default, Clone)]
struct Hourly {
    x: u64,
    n: u64,
}

/// Below 80 % of everything before.
#[derive(Default)]
struct Static {
    total: (f64, f64),
    firing: bool,
}

impl Static {
    fn judge(&mut self, h: &Hourly) -> bool {
        let mean = self.total.0 / self.total.1.max(1.0);
        let low = h.n > 0 && self.total.1 > 0.0 && (h.x as f64 / h.n as f64) < 0.8 * mean;
        self.total = (self.total.0 + h.x as f64, self.total.1 + h.n as f64);
        let started = low && !self.firing;
        self.firing = low;
        started
    }
}

/// 3 sigma below the last 24 hours.
#[derive(Default)]
struct ZScore {
    hours: Vec<f64>,
    firing: bool,
}

impl ZScore {
    fn judge(&mut self, h: &Hourly) -> bool {
        if h.n == 0 {
            return false;
        }
        let rate = h.x as f64 / h.n as f64;
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

/// Alerts raised: (kind, event minute it could be known, subject).
type Raised = Vec<(AlertKind, i64, Subject)>;

struct Sim {
    rng: SmallRng,
    cdf: [f64; 5],
    injected: Vec<Injected>,
    /// Per incident: attempts (or answers) in its slice over its minutes.
    slice_volume: Vec<(f64, f64)>,
}

impl Sim {
    fn active(&self, minute: i64) -> impl Iterator<Item = (usize, &Injected)> {
        self.injected
            .iter()
            .enumerate()
            .filter(move |(_, i)| (i.start..i.end).contains(&minute))
    }

    /// One minute of cells, fed to the watch; the baselines' hourly sums.
    fn minute(&mut self, minute: i64, watch: &mut JourneyWatch, hours: &mut [Hourly; 7]) {
        let ms = minute * MINUTE;
        let active: Vec<(usize, Injected)> = self.active(minute).map(|(k, i)| (k, *i)).collect();
        for c in 0..3u8 {
            let silent = active.iter().any(|(_, i)| i.what == What::Silence(c));
            let mut touchpoints = 0;
            for s in 0..3u8 {
                let mean =
                    CHANNEL_PEAK[usize::from(c)] * SEGMENT_SHARE[usize::from(s)] * cycle(minute);
                let n = if silent {
                    0
                } else {
                    poisson(&mut self.rng, mean)
                };
                let mut drop = 0.0;
                for (k, i) in &active {
                    if let What::Drop(slice, d) = i.what {
                        if slice == Slice::Channel(c) || slice == Slice::Segment(s) {
                            drop = d;
                            self.slice_volume[*k].0 += n as f64;
                        }
                    }
                }
                let p = CHANNEL_RATE[usize::from(c)] * (1.0 - drop);
                // Multinomial over the horizons: converted by each, cumulative.
                let (mut left, mut by, mut cum) = (n, [0i64; 5], 0i64);
                let mut taken = 0.0;
                for (h, f) in self.cdf.iter().enumerate() {
                    let share = p * f - taken;
                    let x = binomial(&mut self.rng, left, share / (1.0 - taken).max(1e-9));
                    left -= x;
                    cum += x as i64;
                    by[h] = cum;
                    taken = p * f;
                }
                let counts = StepCounts {
                    starts: n as i64,
                    conversions: by[4],
                    within_1m: by[0],
                    within_2m: by[1],
                    within_5m: by[2],
                    within_10m: by[3],
                    ..StepCounts::default()
                };
                if n > 0 {
                    watch.add_step_cell(ms, 0, c, s, &counts, None);
                }
                for k in [0, 1 + usize::from(c), 4 + usize::from(s)] {
                    hours[k].x += by[4] as u64;
                    hours[k].n += n;
                }
                touchpoints += n as i64 + by[4];
            }
            if touchpoints > 0 {
                let counts = Counts {
                    touchpoints,
                    ..Counts::default()
                };
                watch.add_minute_cell(ms, (0, None), (c, NO_SEGMENT), &counts, None);
            }
            // NPS answers after purchase.
            let answers = if silent {
                0
            } else {
                poisson(&mut self.rng, ANSWERS_PEAK[usize::from(c)] * cycle(minute))
            };
            let mut shift = 0.0;
            for (k, i) in &active {
                if let What::Nps(ch, points) = i.what {
                    if ch == c {
                        shift = points / 200.0;
                        self.slice_volume[*k].0 += answers as f64;
                    }
                }
            }
            let (pp, pd) = (0.5 - shift, 0.2 + shift);
            let mut counts = Counts::default();
            for _ in 0..answers {
                let u: f64 = self.rng.random();
                if u < pp {
                    counts.nps_promoters += 1;
                } else if u < pp + pd {
                    counts.nps_detractors += 1;
                } else {
                    counts.nps_passives += 1;
                }
            }
            if answers > 0 {
                watch.add_minute_cell(ms, (1, None), (c, NO_SEGMENT), &counts, None);
            }
        }
        for (k, i) in &active {
            let _ = i;
            self.slice_volume[*k].1 += 1.0;
        }
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

fn quantile(d: &[i64], f: f64) -> String {
    let mut d = d.to_vec();
    d.sort_unstable();
    d.get(((d.len() as f64 - 1.0) * f).round() as usize)
        .map_or("-".to_string(), |v| v.to_string())
}

impl Score {
    fn line(&self, name: &str) -> String {
        let alerts = self.true_alerts + self.false_alerts;
        format!(
            "| {name} | {:.0} % ({}/{}) | {:.0} % | {:.2} | {} | {} | {} |",
            100.0 * self.found as f64 / self.incidents.max(1) as f64,
            self.found,
            self.incidents,
            100.0 * self.true_alerts as f64 / alerts.max(1) as f64,
            self.false_clean as f64 / CLEAN_DAYS as f64,
            self.false_clean,
            quantile(&self.delays, 0.5),
            quantile(&self.delays, 0.95)
        )
    }
}

/// How long after an incident's end an alert still counts as finding it (minutes).
fn grace(what: What) -> i64 {
    match what {
        What::Drop(..) => 60,
        What::Silence(_) => 10,
        What::Nps(..) => 120,
    }
}

fn matches(what: What, kind: AlertKind, subject: Subject) -> bool {
    match (what, kind) {
        (What::Drop(..), AlertKind::StepDrop) => true,
        (What::Silence(c), AlertKind::Silence) => subject == Subject::Source(c),
        (What::Nps(..), AlertKind::ScoreDrop) => true,
        _ => false,
    }
}

/// Scores raised alerts against the incidents of `kinds`.
fn score(
    raised: &Raised,
    injected: &[Injected],
    kinds: &[AlertKind],
    keep: impl Fn(&Injected) -> bool,
) -> (Score, Vec<Option<i64>>) {
    let clean = START + WARM_DAYS * DAY..START + (WARM_DAYS + CLEAN_DAYS) * DAY;
    let mut s = Score::default();
    for &(kind, at, subject) in raised.iter().filter(|r| kinds.contains(&r.0)) {
        let real = injected.iter().any(|i| {
            matches(i.what, kind, subject) && (i.start..i.end + grace(i.what)).contains(&at)
        });
        if real {
            s.true_alerts += 1;
        } else if at >= clean.start {
            s.false_alerts += 1;
            s.false_clean += usize::from(clean.contains(&at));
        }
    }
    let mut delays = Vec::new();
    for i in injected {
        if !keep(i) {
            delays.push(None);
            continue;
        }
        s.incidents += 1;
        let first = raised
            .iter()
            .filter(|r| {
                matches(i.what, r.0, r.2) && (i.start..i.end + grace(i.what)).contains(&r.1)
            })
            .map(|r| r.1 - i.start)
            .min();
        if let Some(d) = first {
            s.found += 1;
            s.delays.push(d);
        }
        delays.push(first);
    }
    (s, delays)
}

fn main() {
    let seed = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(7u64);
    let mut rng = SmallRng::seed_from_u64(seed);
    let injected = schedule(&mut rng);
    let map = JourneyMap::from_yaml("shop.yaml", MAP).expect("the benchmark's map is valid");
    // A lower drop threshold finds drops sooner and cries wolf more: the trade-off.
    let mut params = cxstream_core::watch::WatchParams::default();
    if let Some(t) = std::env::args().nth(2).and_then(|t| t.parse().ok()) {
        params.drop.threshold = t;
    }
    // A lower floor watches thinner channels for silence.
    if let Some(f) = std::env::args().nth(3).and_then(|f| f.parse().ok()) {
        params.silence.min_events_per_minute = f;
    }
    let mut watch = JourneyWatch::new(&map, params);
    let mut sim = Sim {
        rng,
        cdf: delay_cdf(),
        slice_volume: vec![(0.0, 0.0); injected.len()],
        injected: injected.clone(),
    };
    let end = START + (WARM_DAYS + CLEAN_DAYS + INCIDENT_DAYS) * DAY;
    let mut cx: Raised = Vec::new();
    let (mut fixed, mut z): (Raised, Raised) = (Vec::new(), Vec::new());
    // The baselines' slices: all, the channels, the segments.
    let mut hours: [Hourly; 7] = Default::default();
    let mut statics: Vec<Static> = (0..7).map(|_| Static::default()).collect();
    let mut zs: Vec<ZScore> = (0..7).map(|_| ZScore::default()).collect();
    let mut pending: Vec<(i64, [Hourly; 7])> = Vec::new();
    for minute in START..end {
        sim.minute(minute, &mut watch, &mut hours);
        for change in watch.advance((minute + 1) * MINUTE) {
            if change.state == AlertState::Firing {
                cx.push((change.subject.kind(), change.at / MINUTE, change.subject));
            }
        }
        if (minute + 1).rem_euclid(60) == 0 {
            // The hour's attempts are decided a budget later.
            pending.push((minute + 1 + BUDGET_MIN, std::mem::take(&mut hours)));
        }
        while pending.first().is_some_and(|(due, _)| *due <= minute + 1) {
            let (due, hour) = pending.remove(0);
            for k in 0..7 {
                if statics[k].judge(&hour[k]) {
                    fixed.push((AlertKind::StepDrop, due, Subject::Step(0)));
                }
                if zs[k].judge(&hour[k]) {
                    z.push((AlertKind::StepDrop, due, Subject::Step(0)));
                }
            }
        }
    }
    let drops = |i: &Injected| matches!(i.what, What::Drop(..));
    println!(
        "{} incidents ({} step drops, {} silences, {} NPS drops); {} days of history, {} clean days, {} days with incidents; seed {seed}, drop threshold {}",
        injected.len(),
        injected.iter().filter(|i| drops(i)).count(),
        injected.iter().filter(|i| matches!(i.what, What::Silence(_))).count(),
        injected.iter().filter(|i| matches!(i.what, What::Nps(..))).count(),
        WARM_DAYS,
        CLEAN_DAYS,
        INCIDENT_DAYS,
        params.drop.threshold
    );
    println!("\n| detector | recall | precision | false alerts / clean day | false alerts in clean days | delay p50 (min) | delay p95 (min) |");
    println!("|---|---|---|---|---|---|---|");
    let all = [
        AlertKind::StepDrop,
        AlertKind::ScoreDrop,
        AlertKind::Silence,
    ];
    let (step, step_delays) = score(&cx, &injected, &[AlertKind::StepDrop], drops);
    println!("{}", step.line("cxstream, step drops"));
    let (silence, _) = score(&cx, &injected, &[AlertKind::Silence], |i| {
        matches!(i.what, What::Silence(_))
    });
    println!("{}", silence.line("cxstream, silence"));
    let (nps, nps_delays) = score(&cx, &injected, &[AlertKind::ScoreDrop], |i| {
        matches!(i.what, What::Nps(..))
    });
    println!("{}", nps.line("cxstream, NPS drops"));
    let (everything, _) = score(&cx, &injected, &all, |_| true);
    println!("{}", everything.line("cxstream, all alerts"));
    let (f, _) = score(&fixed, &injected, &[AlertKind::StepDrop], drops);
    println!("{}", f.line("static threshold, hourly (step drops)"));
    let (zz, _) = score(&z, &injected, &[AlertKind::StepDrop], drops);
    println!("{}", zz.line("3-sigma z-score, last day (step drops)"));

    // Step drops by slice size (attempts a minute during the incident) and drop.
    let bucket = |per_min: f64| match per_min {
        v if v < 20.0 => "< 20",
        v if v < 50.0 => "20–50",
        v if v < 100.0 => "50–100",
        _ => "≥ 100",
    };
    let mut table: BTreeMap<(&str, u64), Vec<Option<i64>>> = BTreeMap::new();
    let mut bar_drop = Vec::new();
    for (k, i) in injected.iter().enumerate() {
        let What::Drop(_, d) = i.what else { continue };
        let (n, minutes) = sim.slice_volume[k];
        let per_min = n / minutes.max(1.0);
        table
            .entry((bucket(per_min), (d * 100.0) as u64))
            .or_default()
            .push(step_delays[k]);
        if d >= 0.3 && per_min >= 50.0 {
            bar_drop.push(step_delays[k]);
        }
    }
    println!("\ncxstream step drops, found / injected and delays (event minutes) by attempts a minute in the slice during the incident and drop:\n");
    print!("| attempts/min |");
    for d in DROPS {
        print!(" drop {:.0} % |", d * 100.0);
    }
    print!("\n|---|");
    for _ in DROPS {
        print!("---|");
    }
    println!();
    for b in ["< 20", "20–50", "50–100", "≥ 100"] {
        print!("| {b} |");
        for d in DROPS {
            let cells = table.remove(&(b, (d * 100.0) as u64)).unwrap_or_default();
            let found: Vec<i64> = cells.iter().flatten().copied().collect();
            let shown = if cells.is_empty() {
                "-".to_string()
            } else {
                format!(
                    "{}/{}{}",
                    found.len(),
                    cells.len(),
                    if found.is_empty() {
                        String::new()
                    } else {
                        format!(
                            ", {}",
                            found
                                .iter()
                                .map(|d| format!("{d}"))
                                .collect::<Vec<_>>()
                                .join(" ")
                        )
                    }
                )
            };
            print!(" {shown} |");
        }
        println!();
    }
    let found: Vec<i64> = bar_drop.iter().flatten().copied().collect();
    println!(
        "\nbar, drops of 30 % or more in slices of 50+ attempts a minute: found {}/{}, delay median {} max {} (≤ 10, median ≤ 5)",
        found.len(),
        bar_drop.len(),
        quantile(&found, 0.5),
        quantile(&found, 1.0)
    );
    let mut nps_bar = Vec::new();
    for (k, i) in injected.iter().enumerate() {
        if let What::Nps(_, points) = i.what {
            let (n, minutes) = sim.slice_volume[k];
            let per_hour = 60.0 * n / minutes.max(1.0);
            println!(
                "NPS drop of {points} points, {per_hour:.0} answers an hour: {}",
                nps_delays[k].map_or("not found".to_string(), |d| format!("found after {d} min"))
            );
            if points >= 15.0 && per_hour >= 300.0 {
                nps_bar.push(nps_delays[k]);
            }
        }
    }
    let found_nps: Vec<i64> = nps_bar.iter().flatten().copied().collect();
    println!(
        "bar, NPS drops of 15+ points on 300+ answers an hour: found {}/{}, max delay {} min (≤ 120)",
        found_nps.len(),
        nps_bar.len(),
        quantile(&found_nps, 1.0)
    );
    let during_silence = cx
        .iter()
        .filter(|r| r.0 == AlertKind::StepDrop)
        .filter(|r| {
            injected
                .iter()
                .any(|i| matches!(i.what, What::Silence(_)) && (i.start..i.end + 60).contains(&r.1))
        })
        .count();
    println!(
        "bar, silences: {} of {} alerted as silence; step-drop alerts during them: {during_silence}",
        silence.found, silence.incidents
    );
    println!(
        "bar, false alerts in the {CLEAN_DAYS} clean days: cxstream {}, static threshold {}, z-score {}",
        everything.false_clean, f.false_clean, zz.false_clean
    );
    // The history has no incident: what fires there is what a new deployment would raise
    // in its first weeks (drops judged from its second day, silence from its third).
    let warm: Vec<_> = cx
        .iter()
        .filter(|r| r.1 < START + WARM_DAYS * DAY)
        .collect();
    let of = |kind: AlertKind| warm.iter().filter(|r| r.0 == kind).count();
    println!(
        "a new deployment's first {WARM_DAYS} days (the history, clean): cxstream {} false alerts ({} step drops, {} silences, {} score drops)",
        warm.len(),
        of(AlertKind::StepDrop),
        of(AlertKind::Silence),
        of(AlertKind::ScoreDrop)
    );
}
