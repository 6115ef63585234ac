//! Baselines by hour of the week, from decayed sums: each week's weight is `decay` times
//! the next one's, so the recent weeks count most and a lasting change becomes the new
//! normal within a few weeks. In the first week, before an hour of the week has history of
//! its own, the same hour of the days before stands in for it (an hour's own first minutes
//! are no baseline: a chance high among them would be taken for normal): a new deployment
//! is watched from its second day, not its second week.

use super::hour_of_week;
use serde::{Deserialize, Serialize};

/// A ratio of two sums (successes over trials, events over minutes) per hour of the week,
/// with the same hour of the days before (in the first week), then all hours, for hours
/// with too little history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeasonalRate {
    decay: f64,
    hours: Vec<Sums>,
    hours_of_day: Vec<Sums>,
    all: Sums,
    /// The first minute observed: how many days the hours of the day have seen.
    since: Option<i64>,
}

/// The history an hour is judged by: the same hour of the weeks before, or (until those
/// are deep enough) of the days before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Season {
    Week,
    Day,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
struct Sums {
    num: f64,
    den: f64,
    /// The week the sums are decayed to.
    week: i64,
}

impl Sums {
    fn at(self, week: i64, decay: f64) -> Sums {
        let weeks = (week - self.week).max(0);
        let w = decay.powi(i32::try_from(weeks).unwrap_or(i32::MAX));
        Sums {
            num: self.num * w,
            den: self.den * w,
            week: week.max(self.week),
        }
    }

    fn add(&mut self, week: i64, decay: f64, num: f64, den: f64) {
        *self = self.at(week, decay);
        self.num += num;
        self.den += den;
    }
}

fn week_of(minute: i64) -> i64 {
    minute.div_euclid(super::WEEK_MINUTES)
}

impl SeasonalRate {
    /// `decay` per week, in (0, 1]: 0.5 halves a week's weight each following week.
    pub fn new(decay: f64) -> Self {
        SeasonalRate {
            decay: decay.clamp(f64::MIN_POSITIVE, 1.0),
            hours: vec![Sums::default(); 168],
            hours_of_day: vec![Sums::default(); 24],
            all: Sums::default(),
            since: None,
        }
    }

    /// Adds a minute's `num` over `den` (e.g. conversions over attempts).
    pub fn observe(&mut self, minute: i64, num: f64, den: f64) {
        let week = week_of(minute);
        self.since = Some(self.since.map_or(minute, |s| s.min(minute)));
        self.hours[hour_of_week(minute)].add(week, self.decay, num, den);
        // Read until the hours of the week have history: not decayed (a week boundary
        // would halve it midweek).
        self.hours_of_day[hour_of_week(minute) % 24].add(week, 1.0, num, den);
        self.all.add(week, self.decay, num, den);
    }

    /// The expected ratio at `minute` and the (decayed) denominator behind it: this hour of
    /// the week's (in the first week: this hour of the days') when it has at least
    /// `min_den`, else all hours' when they do, else none (too little history to tell a
    /// change).
    pub fn expected(&self, minute: i64, min_den: f64) -> Option<(f64, f64)> {
        let week = week_of(minute);
        let hour = hour_of_week(minute);
        let seasonal = if self.first_week(minute) {
            self.hours_of_day[hour % 24].at(week, 1.0)
        } else {
            self.hours[hour].at(week, self.decay)
        };
        [seasonal, self.all.at(week, self.decay)]
            .into_iter()
            .find(|s| s.den >= min_den && s.den > 0.0)
            .map(|s| (s.num / s.den, s.den))
    }

    /// Which history of `minute`'s hour is deep enough to judge it by: this hour of the
    /// week's, when it has at least `min_den`; until then (a new deployment's first weeks)
    /// this hour of the days before's, when they have at least `min_day_den`. Never all
    /// hours: a night is not an average hour.
    pub fn season(&self, minute: i64, min_den: f64, min_day_den: f64) -> Option<Season> {
        let deep = |s: Sums, min: f64| s.den >= min && s.den > 0.0;
        let (week, hour) = (week_of(minute), hour_of_week(minute));
        if deep(self.hours[hour].at(week, self.decay), min_den) {
            Some(Season::Week)
        } else if deep(self.hours_of_day[hour % 24], min_day_den) {
            Some(Season::Day)
        } else {
            None
        }
    }

    /// The ratio and denominator of `minute`'s hour in `season`: of this hour of the week
    /// (decayed), or of this hour of every day before (not decayed).
    pub fn expected_in(&self, minute: i64, season: Season) -> (f64, f64) {
        let hour = hour_of_week(minute);
        let s = match season {
            Season::Week => self.hours[hour].at(week_of(minute), self.decay),
            Season::Day => self.hours_of_day[hour % 24],
        };
        (s.num / s.den.max(f64::MIN_POSITIVE), s.den)
    }

    /// How much history an hour like this one has: the decayed denominator of this hour
    /// of the week at `minute`; in the first week, of this hour of a day (the days' sum over
    /// the days before), none on the first day. Per day, so that a gate on it asks the same
    /// size of a slice on its second day as after many weeks.
    pub fn hour_weight(&self, minute: i64) -> f64 {
        let (week, hour) = (week_of(minute), hour_of_week(minute));
        let (Some(since), true) = (self.since, self.first_week(minute)) else {
            return self.hours[hour].at(week, self.decay).den;
        };
        let days = (minute - since).div_euclid(24 * 60);
        if days == 0 {
            return 0.0;
        }
        self.hours_of_day[hour % 24].at(week, 1.0).den / days as f64
    }

    /// Whether `minute` is within a week of the first observed: the hours of the week have
    /// no history of their own yet.
    fn first_week(&self, minute: i64) -> bool {
        self.since.is_some_and(|s| minute - s < super::WEEK_MINUTES)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MONDAY: i64 = 1_793_577_600_000 / 60_000;

    #[test]
    fn each_hour_of_the_week_has_its_own_rate() {
        let mut b = SeasonalRate::new(0.5);
        for m in 0..60 {
            b.observe(MONDAY + m, 8.0, 10.0); // Monday 00:xx: 80 %
            b.observe(MONDAY + 120 + m, 2.0, 10.0); // Monday 02:xx: 20 %
        }
        let next_week = MONDAY + super::super::WEEK_MINUTES;
        assert_eq!(b.expected(next_week + 5, 100.0).map(|e| e.0), Some(0.8));
        assert_eq!(b.expected(next_week + 125, 100.0).map(|e| e.0), Some(0.2));
        // In the first week the same hour of the days before stands in (Tuesday 00:xx),
        // never on the first day; after it, an hour of the week without history falls back
        // to all hours (01:xx); with too little, none.
        assert_eq!(
            b.expected(MONDAY + 24 * 60 + 5, 100.0).map(|e| e.0),
            Some(0.8)
        );
        assert_eq!(b.hour_weight(MONDAY + 24 * 60 + 5), 600.0);
        assert_eq!(b.hour_weight(MONDAY + 5), 0.0);
        // After the first week the hours of the week have their own history: none here.
        assert_eq!(
            b.expected(MONDAY + 8 * 24 * 60 + 5, 100.0).map(|e| e.0),
            Some(0.5)
        );
        assert_eq!(b.hour_weight(MONDAY + 8 * 24 * 60 + 5), 0.0);
        assert_eq!(b.expected(next_week + 60, 100.0).map(|e| e.0), Some(0.5));
        assert_eq!(b.hour_weight(next_week + 60), 0.0);
        assert_eq!(b.expected(next_week + 60, 1e6), None);
        // A week later the sums weigh half.
        assert_eq!(b.expected(next_week + 5, 0.0).map(|e| e.1), Some(300.0));
    }

    #[test]
    fn recent_weeks_weigh_more() {
        let mut b = SeasonalRate::new(0.5);
        b.observe(MONDAY, 10.0, 10.0);
        b.observe(MONDAY + super::super::WEEK_MINUTES, 0.0, 10.0);
        let (rate, den) = b
            .expected(MONDAY + super::super::WEEK_MINUTES, 0.0)
            .unwrap();
        assert!((rate - 5.0 / 15.0).abs() < 1e-12, "{rate}");
        assert!((den - 15.0).abs() < 1e-12);
    }
}
