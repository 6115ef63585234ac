//! An NPS significantly below its baseline: a two-sample z-test on the difference of NPS,
//! each side's variance from its own three-category counts (DESIGN: (p + d − (p − d)²)/n).

use crate::metrics::Nps;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScoreParams {
    /// Answers the window needs before it is tested (a small slice does not page). Default 100.
    pub min_answers: i64,
    /// How many standard errors below the baseline count (one-sided). Default 4, which
    /// keeps false alerts rare over hundreds of slices tested every hour.
    pub z: f64,
    /// Points of NPS the drop must also reach, so that a huge slice does not page on a
    /// difference nobody acts on. Default 5.
    pub min_drop_points: f64,
}

impl Default for ScoreParams {
    fn default() -> Self {
        ScoreParams {
            min_answers: 100,
            z: 4.0,
            min_drop_points: 5.0,
        }
    }
}

/// A significant drop: both NPS and how many standard errors apart they are.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoreDrop {
    pub observed: f64,
    pub baseline: f64,
    /// (observed − baseline) / standard error: negative.
    pub z: f64,
}

/// `window` and `baseline` as (promoters, passives, detractors).
pub fn score_drop(
    window: (i64, i64, i64),
    baseline: (i64, i64, i64),
    params: &ScoreParams,
) -> Option<ScoreDrop> {
    let w = Nps::from_counts(window.0, window.1, window.2)?;
    let b = Nps::from_counts(baseline.0, baseline.1, baseline.2)?;
    if w.n < params.min_answers || b.n < params.min_answers {
        return None;
    }
    // ci95 = 1.96 · 100 · sqrt(var / n): the standard error in points is ci95 / 1.96.
    let se = ((w.ci95 / 1.96).powi(2) + (b.ci95 / 1.96).powi(2)).sqrt();
    let diff = w.score - b.score;
    // No spread on either side (every answer alike): any difference is certain.
    let z = if se > 0.0 {
        diff / se
    } else {
        diff.signum() * f64::INFINITY
    };
    (diff <= -params.min_drop_points && z <= -params.z).then_some(ScoreDrop {
        observed: w.score,
        baseline: b.score,
        z,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clear_drop_is_found_and_noise_is_not() {
        let p = ScoreParams::default();
        // Baseline NPS +30 over 4,000 answers; the window +10 over 400: z ≈ −4.5.
        let base = (2000, 1200, 800);
        let drop = score_drop((160, 120, 120), base, &p).expect("a drop");
        assert!((drop.observed - 10.0).abs() < 1e-9 && (drop.baseline - 30.0).abs() < 1e-9);
        assert!(drop.z < -4.0, "{drop:?}");
        // The same shift on 40 answers is noise; +28 on 400 is the baseline.
        assert_eq!(score_drop((16, 12, 12), base, &p), None);
        assert_eq!(score_drop((196, 120, 84), base, &p), None);
        // A rise is not a drop.
        assert_eq!(score_drop((280, 80, 40), base, &p), None);
        // Every answer a promoter, then every one a detractor: certain.
        let all = score_drop((0, 0, 200), (400, 0, 0), &p).expect("a drop");
        assert_eq!(
            (all.observed, all.baseline, all.z),
            (-100.0, 100.0, f64::NEG_INFINITY)
        );
    }
}
