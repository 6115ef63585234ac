//! Each stage's conversion over the cohorts that entered it in the last week and are
//! decided (their budget has passed): the figure behind `cxstream_stage_conversion_ratio`.
//! Outcomes land on their entry's minute, so an hour of entries is complete once the
//! watermark is a budget past its end; younger cohorts are left out, or the quick
//! conversions would be counted before the slow drop-offs.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::journey_map::{JourneyMap, StageIdx};

const HOUR_MS: i64 = 3_600_000;
/// Hours of decided cohorts in the ratio.
const WINDOW_HOURS: i64 = 7 * 24;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageConversions {
    budgets: Vec<i64>,
    /// Per stage, per hour of entry (epoch hours): conversions and drop-offs.
    hours: Vec<BTreeMap<i64, (i64, i64)>>,
}

impl StageConversions {
    pub fn new(map: &JourneyMap) -> Self {
        StageConversions {
            budgets: map.stages.iter().map(|s| s.budget_ms).collect(),
            hours: vec![BTreeMap::new(); map.stages.len()],
        }
    }

    /// A cell's outcomes (signed changes), for entries in the minute `minute_ms`.
    pub fn add(&mut self, minute_ms: i64, stage: StageIdx, conversions: i64, dropoffs: i64) {
        if conversions == 0 && dropoffs == 0 {
            return;
        }
        if let Some(h) = self.hours.get_mut(usize::from(stage)) {
            let c = h.entry(minute_ms.div_euclid(HOUR_MS)).or_default();
            *c = (c.0 + conversions, c.1 + dropoffs);
        }
    }

    /// The share of a stage's decided entries that converted, over the week of cohorts
    /// decided by `known_until` (epoch ms), and how many entries that is; none without any.
    pub fn ratio(&self, stage: StageIdx, known_until: i64) -> Option<(f64, i64)> {
        let s = usize::from(stage);
        let (hours, budget) = (self.hours.get(s)?, *self.budgets.get(s)?);
        let end = (known_until - budget).div_euclid(HOUR_MS);
        let (c, d) = hours
            .range(end - WINDOW_HOURS..end)
            .fold((0, 0), |(c, d), (_, (x, y))| (c + x, d + y));
        let n = c + d;
        (n > 0).then(|| (c as f64 / n as f64, n))
    }

    /// Forgets the cohorts no ratio at `known_until` or later reads.
    pub fn forget(&mut self, known_until: i64) {
        for (hours, budget) in self.hours.iter_mut().zip(&self.budgets) {
            let oldest = (known_until - budget).div_euclid(HOUR_MS) - WINDOW_HOURS;
            *hours = hours.split_off(&oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_decided_cohorts_of_the_last_week_count() {
        let map = JourneyMap::from_yaml(
            "m.yaml",
            "journey: m\nstages:\n  - name: a\n    budget: 2h\n    target_conversion: 0.5\n  - name: b\n    budget: 1d\n    target_conversion: 0.5\nchannels: [web]\nsegments: [s]\ntouchpoints:\n  - {name: x, stage: a, channels: [web]}\n  - {name: y, stage: b, channels: [web]}\n",
        )
        .unwrap();
        let mut s = StageConversions::new(&map);
        let t0 = 100 * 24 * HOUR_MS;
        // Old cohorts (9 days back): out of the week. Decided ones: 3 of 4. Young ones
        // (an hour ago), quick conversions only so far: not yet.
        s.add(t0 - 9 * 24 * HOUR_MS, 0, 10, 0);
        s.add(t0 - 5 * HOUR_MS, 0, 3, 0);
        s.add(t0 - 4 * HOUR_MS, 0, 0, 1);
        s.add(t0 - HOUR_MS, 0, 5, 0);
        assert_eq!(s.ratio(0, t0), Some((0.75, 4)));
        // Stage b's budget is a day: none of it is decided.
        s.add(t0 - 5 * HOUR_MS, 1, 1, 1);
        assert_eq!(s.ratio(1, t0), None);
        // A change that takes one back (a late event) counts as it comes.
        s.add(t0 - 5 * HOUR_MS, 0, -1, 1);
        assert_eq!(s.ratio(0, t0), Some((0.5, 4)));
        s.forget(t0);
        assert_eq!(s.ratio(0, t0), Some((0.5, 4)));
        assert_eq!(s.hours[0].len(), 3, "the old cohort is forgotten");
    }
}
