//! Data stopped arriving: a slice that normally has traffic sends nothing for long enough
//! that chance explains it less than once in e^`threshold`. Chance is measured, not
//! assumed: a minute of this hour of the week had no event with probability p0 in the
//! weeks before (smoothed), so k silent minutes happen with p0^k — real traffic comes in
//! bursts (a customer's touchpoints together), and a Poisson rate would call its pauses
//! impossible. The run must also be longer than any pause its hour of the week had in the
//! last weeks. Until its hour of the week has that history (a new deployment's first two
//! weeks), the same hour of the days before stands in — for the chance and for the pauses
//! — once it has two days of it. An hour's own first minutes never set what its later
//! minutes are held to.
//! Unlike a drop, where traffic goes on at a worse rate, a silence is nothing at all. It
//! resolves with hysteresis, once traffic is back: every one of the last
//! `resolve_after_minutes` minutes had events, or together they brought half of what the
//! hour's history expects. A source that all but stops, its pauses each long enough to be
//! a silence, is one incident, not one per pause.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::{Incident, Season, SeasonalRate};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SilenceParams {
    /// −ln of the chance below which a silent run is not chance. Default 16 (as a drop's):
    /// a slice has some 20,000 minutes in 14 days to start a run in.
    pub threshold: f64,
    /// Events per minute this hour of the week must normally bring before its silence can
    /// fire: a trickle pauses often, and in bursts (a customer's touchpoints come
    /// together), so that its long pauses are no news. Default 5 (at 1, the demo's
    /// channels of 1–2 touchpoints a minute raised a false silence every few days; at 3, the
    /// demo's app channel, falling from 3 a minute to under 1 in the period's last days,
    /// raised 37 while a silence resolved with the next touchpoint).
    pub min_events_per_minute: f64,
    /// Minutes of traffic back that resolve a silence: each of them with events, or half
    /// their expected events in all. Default 5.
    pub resolve_after_minutes: usize,
    /// Minutes of history (decayed) the hour of the week needs. With a weekly decay of
    /// 0.5 the past weeks of an hour weigh 60 · (1/2 + 1/4 + …) < 60 minutes when it
    /// starts: 40 is two weeks of it. Default 40.
    pub min_baseline_minutes: f64,
    /// Until then, days of this hour of the day before it stands in. Default 2: one day's
    /// hour is too few minutes to measure a share of silent ones by.
    pub min_baseline_days: f64,
    pub weekly_decay: f64,
}

impl Default for SilenceParams {
    fn default() -> Self {
        SilenceParams {
            threshold: 16.0,
            min_events_per_minute: 5.0,
            resolve_after_minutes: 5,
            min_baseline_minutes: 40.0,
            min_baseline_days: 2.0,
            weekly_decay: 0.5,
        }
    }
}

/// Weeks a silent run counts as one this hour of the week has seen.
const GAP_WEEKS: i64 = 4;
/// Days a silent run counts as one this hour of the day has seen (while the days stand in).
const GAP_DAYS: i64 = 7;
/// The share of its expected events that traffic back must bring to resolve a silence.
const RESOLVE_SHARE: f64 = 0.5;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Silence {
    params: SilenceParams,
    /// Events over minutes, by hour of the week, from hours that are over: an hour is
    /// judged against the weeks before, never against its own first minutes.
    volume: SeasonalRate,
    /// Minutes without an event over minutes, the same way.
    zeros: SeasonalRate,
    /// The current hour's minutes, learned when it is over: (minute, events).
    this_hour: Vec<(i64, u64)>,
    /// The hour (epoch hours) of the latest minute observed.
    hour: i64,
    /// Per hour of the week, the longest silent run (minutes) that ended by itself in each
    /// of the last weeks: a silence must be longer than those this hour has seen lately.
    longest: Vec<BTreeMap<i64, i64>>,
    /// The same per hour of the day, for each of the last days.
    longest_daily: Vec<BTreeMap<i64, i64>>,
    /// The current run of minutes without events: its first minute and length.
    run: Option<(i64, i64)>,
    /// Events expected over the run (from the minutes with a known rate), for the figures.
    expected: f64,
    /// −ln of the chance of the run (from the minutes with a known rate).
    evidence: f64,
    /// Whether the current run has been a silence: its minutes are not learned as a pause
    /// this hour may have.
    run_silent: bool,
    firing: bool,
    /// While firing, the last `resolve_after_minutes` minutes: events and expected events
    /// (0 where the hour has no rate to judge by).
    recent: Vec<(u64, f64)>,
}

fn week_of(minute: i64) -> i64 {
    minute.div_euclid(super::WEEK_MINUTES)
}

fn day_of(minute: i64) -> i64 {
    minute.div_euclid(24 * 60)
}

impl Silence {
    pub fn new(params: SilenceParams) -> Self {
        Silence {
            volume: SeasonalRate::new(params.weekly_decay),
            zeros: SeasonalRate::new(params.weekly_decay),
            this_hour: Vec::new(),
            hour: i64::MIN,
            longest: vec![BTreeMap::new(); 168],
            longest_daily: vec![BTreeMap::new(); 24],
            params,
            run: None,
            expected: 0.0,
            evidence: 0.0,
            run_silent: false,
            firing: false,
            recent: Vec::new(),
        }
    }

    /// The minute's final event count; minutes in order, each once (a minute whose
    /// watermark has not passed is not passed at all).
    pub fn observe(&mut self, minute: i64, events: u64) -> Option<Incident> {
        self.close_hours(minute);
        let rated = (self.firing || events == 0)
            .then(|| self.rated(minute))
            .flatten();
        // Minutes count towards resolving from the first event back.
        if self.firing && (events > 0 || !self.recent.is_empty()) {
            self.recent
                .push((events, rated.map_or(0.0, |(_, rate)| rate)));
            let drop = self
                .recent
                .len()
                .saturating_sub(self.params.resolve_after_minutes);
            self.recent.drain(..drop);
        }
        if events > 0 {
            // Zeros are normal too (a slice of one event a minute has a third of them): a
            // silent run that ended is learned unless it was a silence.
            if let Some((first, len)) = self.run.take() {
                if !self.run_silent {
                    self.learn_gap(first, len);
                    for m in first..first + len {
                        self.learn(m, 0);
                    }
                }
            }
            self.run_silent = false;
            self.learn(minute, events);
            self.expected = 0.0;
            self.evidence = 0.0;
            return self.firing.then(|| self.recovery(minute));
        }
        let (first, len) = match self.run {
            Some((first, len)) => (first, len + 1),
            None => (minute, 1),
        };
        self.run = Some((first, len));
        if let Some((season, rate)) = rated {
            let (p, den) = self.zeros.expected_in(minute, season);
            let p0 = (p * den + 1.0) / (den + 2.0);
            self.expected += rate;
            self.evidence -= p0.ln();
        }
        let (expected, evidence) = (self.expected, self.evidence);
        self.run_silent |= rated.is_some_and(|(s, _)| {
            evidence >= self.params.threshold && len > self.longest_gap(first, minute, s)
        });
        if self.firing {
            return Some(Incident::Ongoing {
                minute,
                observed: 0.0,
                expected,
                trials: 0.0,
                evidence,
            });
        }
        self.run_silent.then(|| {
            self.firing = true;
            self.recent.clear();
            Incident::Started {
                minute,
                observed: 0.0,
                expected,
                trials: 0.0,
                evidence,
            }
        })
    }

    /// The history `minute` is judged by, and its expected events, when that hour of the
    /// week (or of the days before) normally brings enough of them to be watched.
    fn rated(&self, minute: i64) -> Option<(Season, f64)> {
        self.volume
            .season(
                minute,
                self.params.min_baseline_minutes,
                60.0 * self.params.min_baseline_days,
            )
            .map(|s| (s, self.volume.expected_in(minute, s).0))
            .filter(|(_, rate)| *rate >= self.params.min_events_per_minute)
    }

    /// A firing silence with traffic back: resolved once the last minutes show it back
    /// (hysteresis), else still going, with their events against those expected.
    fn recovery(&mut self, minute: i64) -> Incident {
        let events: u64 = self.recent.iter().map(|(e, _)| e).sum();
        let expected: f64 = self.recent.iter().map(|(_, x)| x).sum();
        let full = self.recent.len() >= self.params.resolve_after_minutes;
        let steady = self.recent.iter().all(|(e, _)| *e > 0);
        if full && (steady || events as f64 >= RESOLVE_SHARE * expected) {
            self.firing = false;
            self.recent.clear();
            return Incident::Resolved { minute };
        }
        Incident::Ongoing {
            minute,
            observed: events as f64,
            expected,
            trials: 0.0,
            evidence: 0.0,
        }
    }

    /// Learns a minute, holding those of the current hour back until it is over.
    fn learn(&mut self, minute: i64, events: u64) {
        if minute.div_euclid(60) < self.hour {
            self.volume.observe(minute, events as f64, 1.0);
            self.zeros
                .observe(minute, f64::from(u8::from(events == 0)), 1.0);
        } else {
            self.this_hour.push((minute, events));
        }
    }

    /// Learns the minutes held back once `minute` is in a later hour.
    fn close_hours(&mut self, minute: i64) {
        let hour = minute.div_euclid(60);
        if hour > self.hour {
            for (m, e) in std::mem::take(&mut self.this_hour) {
                self.volume.observe(m, e as f64, 1.0);
                self.zeros.observe(m, f64::from(u8::from(e == 0)), 1.0);
            }
            self.hour = hour;
        }
    }

    fn learn_gap(&mut self, first: i64, len: i64) {
        let hour = super::hour_of_week(first);
        for (runs, period, kept) in [
            (&mut self.longest[hour], week_of(first), GAP_WEEKS),
            (&mut self.longest_daily[hour % 24], day_of(first), GAP_DAYS),
        ] {
            let longest = runs.entry(period).or_default();
            *longest = (*longest).max(len);
            runs.retain(|p, _| period - *p <= kept);
        }
    }

    /// The longest silent run seen starting in `first`'s hour of the week in the
    /// `GAP_WEEKS` weeks before `now`'s, or of the day in the `GAP_DAYS` days before, as
    /// `season` says which history judges it.
    fn longest_gap(&self, first: i64, now: i64, season: Season) -> i64 {
        let hour = super::hour_of_week(first);
        let (runs, now, kept) = match season {
            Season::Week => (&self.longest[hour], week_of(now), GAP_WEEKS),
            Season::Day => (&self.longest_daily[hour % 24], day_of(now), GAP_DAYS),
        };
        runs.iter()
            .filter(|(p, _)| now - **p <= kept)
            .map(|(_, len)| *len)
            .max()
            .unwrap_or(0)
    }
}
