//! Detectors of the alerter (issue 12), pure and in event time: each consumes one slice's
//! per-minute counts in minute order, only for minutes whose counts are final (every
//! input's watermark has passed them: a minute not yet known is never passed as zero), and
//! says when an incident starts, goes on and ends.
//!
//! - [`SeasonalRate`]: the baseline of a proportion (a step's or stage's conversion, the
//!   flow into the next stage) by hour of the week, so that nights and weekends are not
//!   drops.
//! - [`DropDetector`]: a Bernoulli CUSUM on the minute's successes and trials against that
//!   baseline, testing for a relative drop of at least the configured size; an incident
//!   fires when the evidence crosses the threshold and resolves, with hysteresis, once the
//!   mirror test finds the rate back at the baseline.
//! - [`score_drop`]: an NPS significantly below its baseline (variance from the three
//!   categories' counts); [`ScoreWatch`] runs it minute by minute on a trailing window
//!   against the week before.
//! - [`Silence`]: a slice that normally has traffic sends nothing for longer than chance
//!   explains ("data stopped arriving"), told apart from a drop, where traffic goes on.

mod baseline;
mod cusum;
mod score;
mod score_watch;
mod silence;

pub use baseline::{Season, SeasonalRate};
pub use cusum::{DropDetector, DropParams, Incident};
pub use score::{score_drop, ScoreDrop, ScoreParams};
pub use score_watch::{ScoreWatch, ScoreWatchParams};
pub use silence::{Silence, SilenceParams};

/// Minutes in a week: the baselines' season.
pub const WEEK_MINUTES: i64 = 7 * 24 * 60;

/// Hour of the week of an epoch minute, 0 = Monday 00:00 UTC.
pub fn hour_of_week(minute: i64) -> usize {
    // 1970-01-01 was a Thursday: shift so that Monday is 0.
    let m = (minute + 3 * 24 * 60).rem_euclid(WEEK_MINUTES);
    (m / 60) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weeks_start_on_monday_midnight_utc() {
        // 2026-11-02T00:00:00Z is a Monday.
        let monday = 1_793_577_600_000 / 60_000;
        assert_eq!(hour_of_week(monday), 0);
        assert_eq!(hour_of_week(monday + 61), 1);
        assert_eq!(hour_of_week(monday - 1), 167);
        assert_eq!(hour_of_week(monday + WEEK_MINUTES + 24 * 60 * 2 + 125), 50);
    }
}
