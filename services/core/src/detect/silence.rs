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
//! Unlike a drop, where traffic goes on at a worse rate, a silence is nothing at all; it
//! ends with the first event.

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
    /// raised 37: each silent run fires and resolves with the next touchpoint).
    pub min_events_per_minute: f64,
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
    firing: bool,
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
            firing: false,
        }
    }

    /// The minute's final event count; minutes in order, each once (a minute whose
    /// watermark has not passed is not passed at all).
    pub fn observe(&mut self, minute: i64, events: u64) -> Option<Incident> {
        self.close_hours(minute);
        if events > 0 {
            // Zeros are normal too (a slice of one event a minute has a third of them): a
            // silent run that ended without an incident is learned; one that fired is not.
            if let Some((first, len)) = self.run.take() {
                if !self.firing {
                    self.learn_gap(first, len);
                    for m in first..first + len {
                        self.learn(m, 0);
                    }
                }
            }
            self.learn(minute, events);
            self.expected = 0.0;
            self.evidence = 0.0;
            if self.firing {
                self.firing = false;
                return Some(Incident::Resolved { minute });
            }
            return None;
        }
        let (first, len) = match self.run {
            Some((first, len)) => (first, len + 1),
            None => (minute, 1),
        };
        self.run = Some((first, len));
        let season = self
            .volume
            .season(
                minute,
                self.params.min_baseline_minutes,
                60.0 * self.params.min_baseline_days,
            )
            .map(|s| (s, self.volume.expected_in(minute, s).0))
            .filter(|(_, rate)| *rate >= self.params.min_events_per_minute);
        if let Some((season, rate)) = season {
            let (p, den) = self.zeros.expected_in(minute, season);
            let p0 = (p * den + 1.0) / (den + 2.0);
            self.expected += rate;
            self.evidence -= p0.ln();
        }
        let (expected, evidence) = (self.expected, self.evidence);
        if self.firing {
            return Some(Incident::Ongoing {
                minute,
                observed: 0.0,
                expected,
                trials: 0.0,
                evidence,
            });
        }
        let fires = season.is_some_and(|(s, _)| {
            evidence >= self.params.threshold && len > self.longest_gap(first, minute, s)
        });
        fires.then(|| {
            self.firing = true;
            Incident::Started {
                minute,
                observed: 0.0,
                expected,
                trials: 0.0,
                evidence,
            }
        })
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
