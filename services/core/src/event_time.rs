//! Event time of one input partition (the same partition number of both input topics):
//! how far each input has come, the watermark, and which events are too late or dated too
//! far in the future to be applied.
//!
//! - Each input's **high mark** is the greatest event time applied from it.
//! - The **watermark** is the lowest high mark among the inputs that are not idle (an idle
//!   input — read to its end and quiet — does not hold the other back), and never moves
//!   back: an idle input that wakes up with older events does not reopen what the watermark
//!   already closed. Until every active input has been seen there is no watermark and
//!   nothing is late.
//! - An event is **late** when it is dated before watermark − allowed lateness: it is
//!   counted and recorded, not applied (what it would change is already final).
//! - An event is from the **future** when it is dated more than `max_future_ms` after the
//!   time it was written to Kafka (its record timestamp), or, without one, after the latest
//!   event time applied: a wrong clock must not move the watermark (and every window).

use serde::{Deserialize, Serialize};

/// The two inputs of a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Input {
    Touchpoints,
    Answers,
}

impl Input {
    pub const ALL: [Input; 2] = [Input::Touchpoints, Input::Answers];

    fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Input::Touchpoints => "touchpoints",
            Input::Answers => "answers",
        }
    }
}

/// Why an event is not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Refusal {
    /// Dated before watermark − allowed lateness.
    Late,
    /// Dated too far after its record timestamp (or the watermark).
    Future,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Late => "late",
            Refusal::Future => "future",
        }
    }
}

/// The event-time rules' parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventTimePolicy {
    /// How far behind the watermark an event may be dated and still be applied.
    pub allowed_lateness_ms: i64,
    /// How far after its record timestamp an event may be dated.
    pub max_future_ms: i64,
}

impl Default for EventTimePolicy {
    /// 7 days of lateness; 1 hour into the future.
    fn default() -> Self {
        EventTimePolicy {
            allowed_lateness_ms: 7 * 86_400_000,
            max_future_ms: 3_600_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventClock {
    policy: EventTimePolicy,
    high: [Option<i64>; 2],
    idle: [bool; 2],
    watermark: Option<i64>,
}

/// What a commit keeps of the clock, to resume it exactly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockState {
    /// High marks of [touchpoints, answers].
    pub highs: [Option<i64>; 2],
    pub watermark: Option<i64>,
}

impl EventClock {
    pub fn new(policy: EventTimePolicy) -> Self {
        Self::resumed(policy, ClockState::default())
    }

    /// A clock resumed where a commit left it (see [`Self::state`]).
    pub fn resumed(policy: EventTimePolicy, state: ClockState) -> Self {
        EventClock {
            policy,
            high: state.highs,
            idle: [false; 2],
            watermark: state.watermark,
        }
    }

    /// What to persist with a commit.
    pub fn state(&self) -> ClockState {
        ClockState {
            highs: self.high,
            watermark: self.watermark,
        }
    }

    pub fn policy(&self) -> EventTimePolicy {
        self.policy
    }

    /// The watermark: `None` until every active input has been seen.
    pub fn watermark(&self) -> Option<i64> {
        self.watermark
    }

    /// The watermark once an event of `input` dated `time_ms` is observed.
    pub fn watermark_after(&self, input: Input, time_ms: i64) -> Option<i64> {
        let mut next = self.clone();
        next.observe(input, time_ms);
        next.watermark
    }

    /// The watermark once `input` is set idle.
    pub fn watermark_if_idle(&self, input: Input) -> Option<i64> {
        let mut next = self.clone();
        next.set_idle(input, true);
        next.watermark
    }

    /// The lowest high mark of the active inputs now (the latest of all when every input
    /// is idle); the watermark is the greatest this has been.
    fn lowest_active_high(&self) -> Option<i64> {
        let mut lowest: Option<i64> = None;
        let mut any_active = false;
        for i in Input::ALL {
            if self.idle[i.index()] {
                continue;
            }
            any_active = true;
            let h = self.high[i.index()]?;
            lowest = Some(lowest.map_or(h, |l| l.min(h)));
        }
        if any_active {
            lowest
        } else {
            self.latest()
        }
    }

    /// The latest event time applied from `input`.
    pub fn high(&self, input: Input) -> Option<i64> {
        self.high[input.index()]
    }

    fn latest(&self) -> Option<i64> {
        self.high.iter().flatten().copied().max()
    }

    fn advance(&mut self) {
        if let Some(w) = self.lowest_active_high() {
            self.watermark = Some(self.watermark.map_or(w, |m| m.max(w)));
        }
    }

    /// Events dated before this can no longer be applied.
    pub fn horizon(&self) -> Option<i64> {
        self.watermark()
            .map(|w| w.saturating_sub(self.policy.allowed_lateness_ms))
    }

    /// Whether an event may be applied. `record_ms` is its Kafka record timestamp, if any.
    pub fn check(&self, time_ms: i64, record_ms: Option<i64>) -> Result<(), Refusal> {
        let future_reference = record_ms.filter(|r| *r > 0).or(self.latest());
        if future_reference.is_some_and(|r| time_ms > r.saturating_add(self.policy.max_future_ms)) {
            return Err(Refusal::Future);
        }
        self.check_late(time_ms)
    }

    /// Whether an event already checked on arrival elsewhere (a stitched or released
    /// touchpoint) may still be applied: only the watermark can have passed it since.
    pub fn check_late(&self, time_ms: i64) -> Result<(), Refusal> {
        if self.horizon().is_some_and(|h| time_ms < h) {
            return Err(Refusal::Late);
        }
        Ok(())
    }

    /// An applied event advances its input's high mark (and wakes the input up).
    pub fn observe(&mut self, input: Input, time_ms: i64) {
        let h = &mut self.high[input.index()];
        *h = Some(h.map_or(time_ms, |h| h.max(time_ms)));
        self.idle[input.index()] = false;
        self.advance();
    }

    /// An input read to its end and quiet stops holding the watermark back.
    pub fn set_idle(&mut self, input: Input, idle: bool) {
        self.idle[input.index()] = idle;
        self.advance();
    }
}

/// How far counts are final (epoch ms): a partition's before a batch, or every partition's.
/// Touchpoint counts (steps, stage entries, traffic) are final up to `touchpoints`, all
/// counts — answers too — up to `all`, never later than `touchpoints`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finality {
    pub touchpoints: Option<i64>,
    pub all: Option<i64>,
}

impl Finality {
    /// Both clocks at once (no input ahead of the other).
    pub fn both(until: Option<i64>) -> Self {
        Finality {
            touchpoints: until,
            all: until,
        }
    }
}

impl From<Option<i64>> for Finality {
    fn from(until: Option<i64>) -> Self {
        Finality::both(until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;

    fn clock() -> EventClock {
        EventClock::new(EventTimePolicy::default())
    }

    #[test]
    fn the_watermark_waits_for_both_inputs_and_follows_the_slower() {
        let mut c = clock();
        c.observe(Input::Touchpoints, 100 * DAY);
        assert_eq!(c.watermark(), None);
        c.observe(Input::Answers, 90 * DAY);
        assert_eq!(c.watermark(), Some(90 * DAY));
        c.set_idle(Input::Answers, true);
        assert_eq!(c.watermark(), Some(100 * DAY));
        // The answers wake up with older events: the watermark does not move back.
        c.observe(Input::Answers, 95 * DAY);
        assert_eq!(c.watermark(), Some(100 * DAY));
        let resumed = EventClock::resumed(EventTimePolicy::default(), c.state());
        assert_eq!(resumed.watermark(), Some(100 * DAY));
    }

    #[test]
    fn late_and_future_events_are_refused() {
        let mut c = clock();
        c.observe(Input::Touchpoints, 100 * DAY);
        c.observe(Input::Answers, 100 * DAY);
        assert_eq!(c.check(93 * DAY - 1, None), Err(Refusal::Late));
        assert_eq!(c.check(93 * DAY, None), Ok(()));
        assert_eq!(c.check(100 * DAY + 3_600_001, None), Err(Refusal::Future));
        // Without a record timestamp, the future is measured from the latest event seen,
        // not from a lagging input.
        c.observe(Input::Touchpoints, 110 * DAY);
        assert_eq!(c.check(110 * DAY, None), Ok(()));
        // With a record timestamp, the future is measured from it.
        assert_eq!(c.check(101 * DAY, Some(101 * DAY)), Ok(()));
        assert_eq!(c.check(102 * DAY, Some(101 * DAY)), Err(Refusal::Future));
    }
}
