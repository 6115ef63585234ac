//! Closed-loop cases: a detractor's answer is handed to an owner, with the journey context
//! it was given in and a follow-up deadline. The map's `cases:` section says who is a
//! detractor, who owns which cases (first matching rule), and how long follow-up may take.
//!
//! A case belongs to the respondent's slot (the answer that counts, DESIGN's "respondent,
//! not event"): an answer replaced by a later one that is no detractor's closes nothing and
//! opens nothing — the slot simply has no case any more. So every detractor answer that
//! counts is exactly one case, however often it is delivered or replayed.

use serde::Deserialize;

use crate::journey::Context;
use crate::journey_map::{ChannelIdx, SegmentIdx, StageIdx, TouchpointIdx};
use crate::Metric;

#[derive(Debug, Clone, PartialEq)]
pub struct CaseRules {
    /// Scores at or below these are detractors' (NPS 0–6, CSAT 1–2, CES 1–3 by default).
    pub nps_at_most: i32,
    pub csat_at_most: i32,
    pub ces_at_most: i32,
    /// Time to follow up, from the answer. Default 48 h.
    pub follow_up_ms: i64,
    /// Owners by context; the first rule that matches wins.
    pub owners: Vec<OwnerRule>,
    /// Owner when no rule matches. Default `cx-team`.
    pub default_owner: String,
}

/// An owner for the cases whose context matches every field given.
#[derive(Debug, Clone, PartialEq)]
pub struct OwnerRule {
    pub stage: Option<StageIdx>,
    pub channel: Option<ChannelIdx>,
    pub touchpoint: Option<TouchpointIdx>,
    pub segment: Option<SegmentIdx>,
    pub owner: String,
}

impl Default for CaseRules {
    fn default() -> Self {
        CaseRules {
            nps_at_most: 6,
            csat_at_most: 2,
            ces_at_most: 3,
            follow_up_ms: 48 * 3_600_000,
            owners: Vec::new(),
            default_owner: "cx-team".into(),
        }
    }
}

impl CaseRules {
    pub fn is_detractor(&self, metric: Metric, score: i32) -> bool {
        let at_most = match metric {
            Metric::Nps => self.nps_at_most,
            Metric::Csat => self.csat_at_most,
            Metric::Ces => self.ces_at_most,
        };
        score <= at_most
    }

    /// Who owns a case given in `context` (none: the answer has no journey context).
    pub fn owner(&self, context: Option<&Context>) -> &str {
        let matches = |r: &OwnerRule, c: &Context| {
            r.stage.is_none_or(|s| s == c.stage)
                && r.channel.is_none_or(|x| x == c.channel)
                && r.touchpoint.is_none_or(|t| t == c.touchpoint)
                && r.segment.is_none_or(|s| s == c.segment)
        };
        context
            .and_then(|c| self.owners.iter().find(|r| matches(r, c)))
            .map_or(self.default_owner.as_str(), |r| r.owner.as_str())
    }
}

/// The `cases:` section as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCases {
    #[serde(default)]
    pub detractor_at_most: Option<RawThresholds>,
    #[serde(default)]
    pub follow_up: Option<String>,
    #[serde(default)]
    pub owners: Vec<RawOwner>,
    #[serde(default)]
    pub default_owner: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawThresholds {
    pub nps: Option<i32>,
    pub csat: Option<i32>,
    pub ces: Option<i32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOwner {
    pub owner: String,
    pub stage: Option<String>,
    pub channel: Option<String>,
    pub touchpoint: Option<String>,
    pub segment: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(stage: u8, channel: u8) -> Context {
        Context {
            stage,
            touchpoint: 0,
            channel,
            segment: 0,
        }
    }

    #[test]
    fn detractors_and_owners_follow_the_rules() {
        let rules = CaseRules {
            owners: vec![
                OwnerRule {
                    stage: Some(2),
                    channel: Some(1),
                    touchpoint: None,
                    segment: None,
                    owner: "checkout-app".into(),
                },
                OwnerRule {
                    stage: Some(2),
                    channel: None,
                    touchpoint: None,
                    segment: None,
                    owner: "checkout".into(),
                },
            ],
            ..CaseRules::default()
        };
        assert!(rules.is_detractor(Metric::Nps, 6) && !rules.is_detractor(Metric::Nps, 7));
        assert!(rules.is_detractor(Metric::Csat, 2) && !rules.is_detractor(Metric::Csat, 3));
        assert!(rules.is_detractor(Metric::Ces, 3) && !rules.is_detractor(Metric::Ces, 4));
        assert_eq!(rules.owner(Some(&ctx(2, 1))), "checkout-app");
        assert_eq!(rules.owner(Some(&ctx(2, 0))), "checkout");
        assert_eq!(rules.owner(Some(&ctx(1, 1))), "cx-team");
        assert_eq!(rules.owner(None), "cx-team");
    }
}
