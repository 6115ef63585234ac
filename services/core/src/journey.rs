//! One customer's journey through one journey map, as a small state machine driven by
//! touchpoints in event time.
//!
//! Rules:
//! - A touchpoint whose stage is later than the current stage moves the customer into that
//!   stage (a *stage entry*); touchpoints of the current or earlier stages keep the stage,
//!   because a customer who bought does not "un-buy" by seeing an ad.
//! - The last [`RECENT`] touchpoints are kept with their context, so a survey answer can be
//!   attributed to the touchpoint it rates even when it arrives after later touchpoints, and
//!   so a repeated answer for the same touchpoint replaces the earlier one (respondent, not
//!   event).

use serde::{Deserialize, Serialize};

use crate::events::SurveyAnswer;
use crate::journey_map::{ChannelIdx, SegmentIdx, StageIdx, TouchpointIdx, NO_SEGMENT};
use crate::metrics::Metric;

/// How many recent touchpoints a journey remembers for attribution and de-duplication.
pub const RECENT: usize = 6;

/// The journey context an answer or touchpoint is counted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Context {
    pub stage: StageIdx,
    pub touchpoint: TouchpointIdx,
    pub channel: ChannelIdx,
    pub segment: SegmentIdx,
}

/// A remembered answer: enough to retract it when the respondent answers again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnsweredScore {
    pub score: i8,
    pub time_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecentTouchpoint {
    pub id_hash: u64,
    pub time_ms: i64,
    pub context: Context,
    /// Latest answer per metric ([`Metric::index`]) that rated this touchpoint.
    pub answers: [Option<AnsweredScore>; 3],
}

/// An answer waiting for the touchpoint it rates (or for event time to pass it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingAnswer {
    pub answer: SurveyAnswer,
    pub source_offset: i64,
    /// Key in the processor's release index; unique within a partition.
    pub seq: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JourneyState {
    /// Current stage; `None` until the first mapped touchpoint.
    pub stage: Option<StageIdx>,
    pub stage_entered_ms: i64,
    pub entry_channel: ChannelIdx,
    pub entry_touchpoint: TouchpointIdx,
    pub segment: SegmentIdx,
    /// Event time of the latest touchpoint applied.
    pub last_time_ms: i64,
    /// Oldest first; at most [`RECENT`].
    pub recent: Vec<RecentTouchpoint>,
    pub pending: Vec<PendingAnswer>,
    /// Changed since the last batch was taken (processor bookkeeping, not persisted).
    #[serde(skip)]
    pub dirty: bool,
}

impl Default for JourneyState {
    fn default() -> Self {
        JourneyState {
            stage: None,
            stage_entered_ms: 0,
            entry_channel: 0,
            entry_touchpoint: 0,
            segment: NO_SEGMENT,
            last_time_ms: i64::MIN,
            recent: Vec::new(),
            pending: Vec::new(),
            dirty: false,
        }
    }
}

/// What applying a touchpoint did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Already seen (same event id among the recent touchpoints): counts once.
    Duplicate,
    /// Applied; `entered` tells whether it moved the customer into a new stage.
    Applied { context: Context, entered: bool },
}

/// How an answer found its context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attribution {
    /// The touchpoint the answer names.
    Named,
    /// The customer's latest touchpoint at or before the answer time.
    Latest,
    /// The customer had no touchpoint before the answer.
    None,
}

impl Attribution {
    pub fn as_str(self) -> &'static str {
        match self {
            Attribution::Named => "named",
            Attribution::Latest => "latest",
            Attribution::None => "none",
        }
    }
}

/// Where an answer's counts go and which earlier answer (if any) it replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnswerOutcome {
    pub context: Option<Context>,
    pub attribution: Attribution,
    /// The earlier answer of the same respondent for the same touchpoint and metric,
    /// to be retracted.
    pub replaces: Option<AnsweredScore>,
    /// False when a later answer for the same touchpoint and metric is already counted.
    pub counted: bool,
}

impl JourneyState {
    pub fn apply_touchpoint(
        &mut self,
        id_hash: u64,
        time_ms: i64,
        touchpoint: TouchpointIdx,
        stage: StageIdx,
        channel: ChannelIdx,
        segment: Option<SegmentIdx>,
    ) -> Applied {
        if self.recent.iter().any(|r| r.id_hash == id_hash) {
            return Applied::Duplicate;
        }
        if let Some(s) = segment {
            self.segment = s;
        }
        let entered = self.stage.is_none_or(|cur| stage > cur);
        if entered {
            self.stage = Some(stage);
            self.stage_entered_ms = time_ms;
            self.entry_channel = channel;
            self.entry_touchpoint = touchpoint;
        }
        let context = Context {
            stage: self.stage.unwrap_or(stage),
            touchpoint,
            channel,
            segment: self.segment,
        };
        self.last_time_ms = self.last_time_ms.max(time_ms);
        if self.recent.len() == RECENT {
            self.recent.remove(0);
        } else if self.recent.capacity() == 0 {
            self.recent.reserve_exact(RECENT);
        }
        // Kept in event-time order so "latest at or before t" is a reverse scan.
        let pos = self
            .recent
            .iter()
            .rposition(|r| r.time_ms <= time_ms)
            .map_or(0, |p| p + 1);
        self.recent.insert(
            pos,
            RecentTouchpoint {
                id_hash,
                time_ms,
                context,
                answers: [None; 3],
            },
        );
        Applied::Applied { context, entered }
    }

    /// True when the answer can be attributed now without guessing: its named touchpoint
    /// is known, or the customer's own touchpoints have moved past the answer time (a
    /// customer's touchpoints arrive in event-time order, so nothing earlier is coming).
    pub fn can_attribute(&self, named: Option<u64>, time_ms: i64) -> bool {
        match named {
            Some(h) if self.recent.iter().any(|r| r.id_hash == h) => true,
            _ => self.last_time_ms > time_ms,
        }
    }

    /// Attributes an answer and records it for respondent de-duplication.
    pub fn attribute(
        &mut self,
        named: Option<u64>,
        metric: Metric,
        score: i32,
        time_ms: i64,
    ) -> AnswerOutcome {
        let by_name = named.and_then(|h| self.recent.iter().rposition(|r| r.id_hash == h));
        let (slot, attribution) = match by_name {
            Some(i) => (Some(i), Attribution::Named),
            None => match self.recent.iter().rposition(|r| r.time_ms <= time_ms) {
                Some(i) => (Some(i), Attribution::Latest),
                None => (None, Attribution::None),
            },
        };
        let Some(i) = slot else {
            return AnswerOutcome {
                context: None,
                attribution,
                replaces: None,
                counted: true,
            };
        };
        let rt = &mut self.recent[i];
        let context = Some(rt.context);
        // Only answers that name their touchpoint identify "the same survey for the same
        // touchpoint"; answers attributed by time are independent responses.
        if attribution != Attribution::Named {
            return AnswerOutcome {
                context,
                attribution,
                replaces: None,
                counted: true,
            };
        }
        let prev = rt.answers[metric.index()];
        match prev {
            Some(p) if p.time_ms >= time_ms => AnswerOutcome {
                context,
                attribution,
                replaces: None,
                counted: false,
            },
            _ => {
                rt.answers[metric.index()] = Some(AnsweredScore {
                    score: score as i8,
                    time_ms,
                });
                AnswerOutcome {
                    context,
                    attribution,
                    replaces: prev,
                    counted: true,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s() -> JourneyState {
        JourneyState::default()
    }

    #[test]
    fn stages_only_move_forward() {
        let mut j = s();
        assert_eq!(
            j.apply_touchpoint(1, 10, 0, 0, 0, Some(3)),
            Applied::Applied {
                context: Context {
                    stage: 0,
                    touchpoint: 0,
                    channel: 0,
                    segment: 3
                },
                entered: true
            }
        );
        assert!(matches!(
            j.apply_touchpoint(2, 20, 5, 2, 1, None),
            Applied::Applied { entered: true, .. }
        ));
        // An awareness touchpoint after conversion keeps the customer in conversion.
        let Applied::Applied { context, entered } = j.apply_touchpoint(3, 30, 0, 0, 0, None) else {
            panic!("applied")
        };
        assert!(!entered);
        assert_eq!(context.stage, 2);
        assert_eq!(j.stage_entered_ms, 20);
        assert_eq!(j.apply_touchpoint(2, 20, 5, 2, 1, None), Applied::Duplicate);
    }

    #[test]
    fn named_answer_attributes_to_its_touchpoint_and_replaces_older() {
        let mut j = s();
        j.apply_touchpoint(1, 10, 0, 0, 0, None);
        j.apply_touchpoint(2, 20, 3, 1, 2, None);
        let a = j.attribute(Some(1), Metric::Nps, 9, 25);
        assert_eq!(a.attribution, Attribution::Named);
        assert_eq!(a.context.map(|c| c.stage), Some(0));
        let b = j.attribute(Some(1), Metric::Nps, 3, 40);
        assert_eq!(
            b.replaces,
            Some(AnsweredScore {
                score: 9,
                time_ms: 25
            })
        );
        // An older re-delivery does not replace the newer answer.
        let c = j.attribute(Some(1), Metric::Nps, 10, 30);
        assert!(!c.counted);
    }

    #[test]
    fn unnamed_answer_takes_latest_touchpoint_before_it() {
        let mut j = s();
        j.apply_touchpoint(1, 10, 0, 0, 0, None);
        j.apply_touchpoint(2, 20, 3, 1, 2, None);
        assert!(j.can_attribute(None, 15));
        assert!(!j.can_attribute(None, 25));
        let a = j.attribute(None, Metric::Csat, 4, 15);
        assert_eq!(
            (a.attribution, a.context.map(|c| c.touchpoint)),
            (Attribution::Latest, Some(0))
        );
        let none = s().attribute(None, Metric::Csat, 4, 15);
        assert_eq!(none.attribution, Attribution::None);
    }
}
