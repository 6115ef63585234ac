//! Survey metric math: which scores are valid, how an answer is bucketed, and how NPS, CSAT
//! and CES (with n and a 95 % interval) follow from exact counts. Everything is computed
//! from counts so that sums over minutes stay exact and intervals can be derived later.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Metric {
    #[serde(rename = "NPS")]
    Nps,
    #[serde(rename = "CSAT")]
    Csat,
    #[serde(rename = "CES")]
    Ces,
}

impl Metric {
    pub const ALL: [Metric; 3] = [Metric::Nps, Metric::Csat, Metric::Ces];

    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Nps => "NPS",
            Metric::Csat => "CSAT",
            Metric::Ces => "CES",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// Inclusive valid score range.
    pub fn range(self) -> (i32, i32) {
        match self {
            Metric::Nps => (0, 10),
            Metric::Csat => (1, 5),
            Metric::Ces => (1, 7),
        }
    }

    pub fn is_valid(self, score: i32) -> bool {
        let (lo, hi) = self.range();
        (lo..=hi).contains(&score)
    }
}

/// Exact per-cell counts. Signed, because a respondent's newer answer retracts the older one
/// and the retraction may land in another minute than the addition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub nps_promoters: i64,
    pub nps_passives: i64,
    pub nps_detractors: i64,
    pub csat_n: i64,
    pub csat_top2: i64,
    pub csat_sum: i64,
    pub ces_n: i64,
    pub ces_agree: i64,
    pub ces_sum: i64,
    pub stage_entries: i64,
    pub touchpoints: i64,
    /// Stage entries (counted in the entry's cell) that reached a later stage in budget,
    /// the sum of their times to convert, and those dropped off or still open.
    pub stage_conversions: i64,
    pub convert_ms_sum: i64,
    pub stage_dropoffs: i64,
    pub stage_open: i64,
}

/// The early horizons of a step attempt: how many converted within 1, 2, 5 and 10
/// minutes of starting is known that soon, long before a budget of hours has passed, so
/// the alerter judges a step's minute by them first.
pub const EARLY_HORIZONS_MS: [i64; 4] = [60_000, 120_000, 300_000, 600_000];

/// Exact per-cell counts of step attempts (README § Steps), in the start's cell.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepCounts {
    pub starts: i64,
    pub conversions: i64,
    pub convert_ms_sum: i64,
    pub dropoffs: i64,
    pub open: i64,
    /// Conversions at most 1, 2, 5 and 10 minutes after the start ([`EARLY_HORIZONS_MS`]).
    pub within_1m: i64,
    pub within_2m: i64,
    pub within_5m: i64,
    pub within_10m: i64,
}

impl StepCounts {
    pub fn merge(&mut self, o: &StepCounts) {
        self.starts += o.starts;
        self.conversions += o.conversions;
        self.convert_ms_sum += o.convert_ms_sum;
        self.dropoffs += o.dropoffs;
        self.open += o.open;
        self.within_1m += o.within_1m;
        self.within_2m += o.within_2m;
        self.within_5m += o.within_5m;
        self.within_10m += o.within_10m;
    }

    /// Adds (`sign` = 1) or retracts (`sign` = -1) a conversion `after_ms` after the start.
    pub fn add_conversion(&mut self, after_ms: i64, sign: i64) {
        self.conversions += sign;
        self.convert_ms_sum += sign * after_ms;
        let within = [
            &mut self.within_1m,
            &mut self.within_2m,
            &mut self.within_5m,
            &mut self.within_10m,
        ];
        for (count, horizon) in within.into_iter().zip(EARLY_HORIZONS_MS) {
            if after_ms <= horizon {
                *count += sign;
            }
        }
    }

    /// Conversions within each of [`EARLY_HORIZONS_MS`].
    pub fn within(&self) -> [i64; 4] {
        [
            self.within_1m,
            self.within_2m,
            self.within_5m,
            self.within_10m,
        ]
    }

    pub fn is_zero(&self) -> bool {
        *self == StepCounts::default()
    }
}

impl Counts {
    /// Adds (`sign` = 1) or retracts (`sign` = -1) one answer. The score must be valid.
    pub fn add_answer(&mut self, metric: Metric, score: i32, sign: i64) {
        let score = i64::from(score);
        match metric {
            Metric::Nps => match score {
                9..=10 => self.nps_promoters += sign,
                7..=8 => self.nps_passives += sign,
                _ => self.nps_detractors += sign,
            },
            Metric::Csat => {
                self.csat_n += sign;
                self.csat_sum += sign * score;
                if score >= 4 {
                    self.csat_top2 += sign;
                }
            }
            Metric::Ces => {
                self.ces_n += sign;
                self.ces_sum += sign * score;
                if score >= 5 {
                    self.ces_agree += sign;
                }
            }
        }
    }

    pub fn merge(&mut self, o: &Counts) {
        self.nps_promoters += o.nps_promoters;
        self.nps_passives += o.nps_passives;
        self.nps_detractors += o.nps_detractors;
        self.csat_n += o.csat_n;
        self.csat_top2 += o.csat_top2;
        self.csat_sum += o.csat_sum;
        self.ces_n += o.ces_n;
        self.ces_agree += o.ces_agree;
        self.ces_sum += o.ces_sum;
        self.stage_entries += o.stage_entries;
        self.touchpoints += o.touchpoints;
        self.stage_conversions += o.stage_conversions;
        self.convert_ms_sum += o.convert_ms_sum;
        self.stage_dropoffs += o.stage_dropoffs;
        self.stage_open += o.stage_open;
    }

    pub fn is_zero(&self) -> bool {
        *self == Counts::default()
    }

    pub fn nps(&self) -> Option<Nps> {
        Nps::from_counts(self.nps_promoters, self.nps_passives, self.nps_detractors)
    }

    pub fn csat(&self) -> Option<Csat> {
        (self.csat_n > 0).then(|| Csat {
            n: self.csat_n,
            top2_pct: 100.0 * self.csat_top2 as f64 / self.csat_n as f64,
            mean: self.csat_sum as f64 / self.csat_n as f64,
        })
    }

    pub fn ces(&self) -> Option<Ces> {
        (self.ces_n > 0).then(|| Ces {
            n: self.ces_n,
            mean: self.ces_sum as f64 / self.ces_n as f64,
            agree_pct: 100.0 * self.ces_agree as f64 / self.ces_n as f64,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Nps {
    pub n: i64,
    pub score: f64,
    /// Half-width of the 95 % interval, in NPS points.
    pub ci95: f64,
}

impl Nps {
    /// NPS = 100·(p − d)/n; variance of (promoter − detractor) indicator is p + d − (p − d)².
    pub fn from_counts(promoters: i64, passives: i64, detractors: i64) -> Option<Nps> {
        let n = promoters + passives + detractors;
        if n <= 0 {
            return None;
        }
        let nf = n as f64;
        let p = promoters as f64 / nf;
        let d = detractors as f64 / nf;
        let var = (p + d - (p - d).powi(2)).max(0.0);
        Some(Nps {
            n,
            score: 100.0 * (p - d),
            ci95: 100.0 * 1.96 * (var / nf).sqrt(),
        })
    }
}

/// A proportion with its 95 % Wilson score interval (which, unlike the normal
/// approximation, stays inside 0..=1 and is honest for small n and rates near 0 or 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Proportion {
    pub n: i64,
    pub p: f64,
    pub low: f64,
    pub high: f64,
}

impl Proportion {
    pub fn wilson95(successes: i64, n: i64) -> Option<Proportion> {
        if n <= 0 || !(0..=n).contains(&successes) {
            return None;
        }
        const Z: f64 = 1.96;
        let nf = n as f64;
        let p = successes as f64 / nf;
        let z2 = Z * Z;
        let centre = (p + z2 / (2.0 * nf)) / (1.0 + z2 / nf);
        let half = Z / (1.0 + z2 / nf) * (p * (1.0 - p) / nf + z2 / (4.0 * nf * nf)).sqrt();
        // At x = 0 or x = n a bound is exactly p; rounding must not put it on the wrong side.
        Some(Proportion {
            n,
            p,
            low: (centre - half).min(p).max(0.0),
            high: (centre + half).max(p).min(1.0),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Csat {
    pub n: i64,
    pub top2_pct: f64,
    pub mean: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ces {
    pub n: i64,
    pub mean: f64,
    pub agree_pct: f64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn nps_textbook_example() {
        // 50 promoters, 30 passives, 20 detractors → NPS 30.
        let n = Nps::from_counts(50, 30, 20).expect("n > 0");
        assert_eq!(n.n, 100);
        assert!((n.score - 30.0).abs() < 1e-9);
        // var = 0.7 − 0.09 = 0.61 → 1.96·sqrt(0.61/100)·100
        assert!((n.ci95 - 100.0 * 1.96 * (0.61f64 / 100.0).sqrt()).abs() < 1e-9);
        assert!(Nps::from_counts(0, 0, 0).is_none());
    }

    #[test]
    fn wilson_intervals_of_textbook_cases() {
        // None of 10: the upper bound is 0.2775 (Wilson 1927; Newcombe 1998, table I).
        let w = Proportion::wilson95(0, 10).expect("n > 0");
        assert_eq!((w.p, w.low), (0.0, 0.0));
        assert!((w.high - 0.2775).abs() < 1e-4, "{w:?}");
        // 81 of 263 (Newcombe 1998): 0.2553 to 0.3662.
        let w = Proportion::wilson95(81, 263).expect("n > 0");
        assert!(
            (w.low - 0.2553).abs() < 1e-4 && (w.high - 0.3662).abs() < 1e-4,
            "{w:?}"
        );
        assert!(Proportion::wilson95(1, 0).is_none() && Proportion::wilson95(3, 2).is_none());
    }

    #[test]
    fn buckets_follow_the_definitions() {
        let mut c = Counts::default();
        for s in 0..=10 {
            c.add_answer(Metric::Nps, s, 1);
        }
        assert_eq!(
            (c.nps_promoters, c.nps_passives, c.nps_detractors),
            (2, 2, 7)
        );
        for s in 1..=5 {
            c.add_answer(Metric::Csat, s, 1);
        }
        assert_eq!((c.csat_n, c.csat_top2, c.csat_sum), (5, 2, 15));
        for s in 1..=7 {
            c.add_answer(Metric::Ces, s, 1);
        }
        assert_eq!((c.ces_n, c.ces_agree, c.ces_sum), (7, 3, 28));
        assert!(!Metric::Nps.is_valid(11) && !Metric::Csat.is_valid(0) && !Metric::Ces.is_valid(8));
    }

    fn answers() -> impl Strategy<Value = Vec<(Metric, i32)>> {
        prop::collection::vec(
            prop_oneof![
                (0..=10i32).prop_map(|s| (Metric::Nps, s)),
                (1..=5i32).prop_map(|s| (Metric::Csat, s)),
                (1..=7i32).prop_map(|s| (Metric::Ces, s)),
            ],
            0..200,
        )
    }

    proptest! {
        /// Rolling sums of per-minute counts equal the counts of all answers at once,
        /// however the answers are split into minutes.
        #[test]
        fn merge_of_any_split_equals_whole(a in answers(), cut in 0usize..200) {
            let cut = cut.min(a.len());
            let mut whole = Counts::default();
            let (mut left, mut right) = (Counts::default(), Counts::default());
            for (i, (m, s)) in a.iter().enumerate() {
                whole.add_answer(*m, *s, 1);
                if i < cut { left.add_answer(*m, *s, 1) } else { right.add_answer(*m, *s, 1) }
            }
            left.merge(&right);
            prop_assert_eq!(left, whole);
        }

        #[test]
        fn retraction_undoes_addition(a in answers()) {
            let mut c = Counts::default();
            for (m, s) in &a { c.add_answer(*m, *s, 1); }
            for (m, s) in &a { c.add_answer(*m, *s, -1); }
            prop_assert!(c.is_zero());
        }

        /// The interval holds the rate, stays in 0..=1, and mirrors: x of n from below is
        /// n − x of n from above.
        #[test]
        fn wilson_is_bounded_and_symmetric(n in 1i64..5000, x in 0i64..5000) {
            let x = x % (n + 1);
            let w = Proportion::wilson95(x, n).expect("0 <= x <= n");
            prop_assert!(0.0 <= w.low && w.low <= w.p && w.p <= w.high && w.high <= 1.0);
            let m = Proportion::wilson95(n - x, n).expect("0 <= n - x <= n");
            prop_assert!((w.low - (1.0 - m.high)).abs() < 1e-9);
        }

        #[test]
        fn nps_is_bounded_and_matches_direct_formula(p in 0i64..1000, q in 0i64..1000, d in 0i64..1000) {
            prop_assume!(p + q + d > 0);
            let n = Nps::from_counts(p, q, d).expect("n > 0");
            prop_assert!((-100.0..=100.0).contains(&n.score));
            prop_assert!(n.ci95 >= 0.0 && n.ci95 <= 196.0);
            let direct = 100.0 * (p - d) as f64 / (p + q + d) as f64;
            prop_assert!((n.score - direct).abs() < 1e-9);
        }
    }
}
