//! How a journey is stored in `journeys.state`: postcard, behind a version byte, so that a
//! later change of the journey's layout can still read what earlier versions wrote.
//!
//! Rows written before the version byte existed start with the floor's first field, an
//! `Option` tag (0 or 1); versions start at 2, so the first byte tells them apart.
//! Version 3 added the floor's journey progress, pending stage entry and step attempts;
//! rows of earlier versions were written before stage and step outcomes were counted.
//! Version 4 is a visitor's row (identity stitching): its journey and the device's held
//! touchpoints and claim, written together so that they commit together. Version 5 is the
//! same with the claim's partition (where the device's touchpoints go once the customer is
//! erased); a version 4 claim knows none. Versions 6 and 7 are 3 and 5 with each kept event
//! packed (`cxstream_core::packed`): only the fields no rule reads, as bytes; a kept
//! answer drops its touchpoint name and attributes, which no fact holds.

use cxstream_core::identity::{Claim, Routed, Visitor};
use cxstream_core::journey::{AnswerEntry, Context, Floor, Progress, TouchpointEntry};
use cxstream_core::journey_map::{ChannelIdx, SegmentIdx, StageIdx, TouchpointIdx, OFF_MAP};
use cxstream_core::packed::{AnswerFields, TouchpointFields};
use cxstream_core::processor::Written;
use cxstream_core::{Journey, Metric, SurveyAnswer, TouchpointEvent};
use serde::{Deserialize, Serialize};

const V2: u8 = 2;
const V3: u8 = 3;
const V4: u8 = 4;
const V5: u8 = 5;
const V6: u8 = 6;
const V7: u8 = 7;

/// A stored row, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub journey: Journey,
    pub written: Written,
    /// A visitor's device state, on a visitor's row.
    pub visitor: Option<Visitor>,
}

/// The layout of versions 0 to 2.
#[derive(Serialize, Deserialize)]
struct JourneyV2 {
    floor: FloorV2,
    touchpoints: Vec<TouchpointV5>,
    answers: Vec<AnswerV5>,
}

/// The layout of versions 3 to 5: each kept event whole.
#[derive(Serialize, Deserialize)]
struct JourneyV5 {
    floor: Floor,
    touchpoints: Vec<TouchpointV5>,
    answers: Vec<AnswerV5>,
}

#[derive(Serialize, Deserialize)]
struct TouchpointV5 {
    id: u64,
    time: i64,
    touchpoint: TouchpointIdx,
    channel: ChannelIdx,
    stage: StageIdx,
    segment: Option<SegmentIdx>,
    event: TouchpointEvent,
    source_offset: i64,
}

#[derive(Serialize, Deserialize)]
struct AnswerV5 {
    response: u64,
    named: Option<u64>,
    time: i64,
    metric: Metric,
    score: i8,
    fixed: Option<Context>,
    answer: SurveyAnswer,
    source_offset: i64,
}

impl From<TouchpointV5> for TouchpointEntry {
    fn from(t: TouchpointV5) -> Self {
        TouchpointEntry {
            id: t.id,
            time: t.time,
            touchpoint: t.touchpoint,
            channel: t.channel,
            stage: t.stage,
            segment: t.segment,
            event: TouchpointFields::of(&t.event, t.touchpoint != OFF_MAP).pack(),
            source_offset: t.source_offset,
        }
    }
}

impl From<AnswerV5> for AnswerEntry {
    fn from(a: AnswerV5) -> Self {
        AnswerEntry {
            response: a.response,
            named: a.named,
            time: a.time,
            metric: a.metric,
            score: a.score,
            fixed: a.fixed,
            answer: AnswerFields::of(&a.answer).pack(),
            source_offset: a.source_offset,
        }
    }
}

impl From<JourneyV5> for Journey {
    fn from(j: JourneyV5) -> Self {
        Journey {
            floor: j.floor,
            touchpoints: j.touchpoints.into_iter().map(Into::into).collect(),
            answers: j.answers.into_iter().map(Into::into).collect(),
            dirty: false,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct FloorV2 {
    max_stage: Option<u8>,
    segment: Option<u8>,
    last: Option<((i64, u64), Context)>,
}

impl From<JourneyV2> for Journey {
    fn from(j: JourneyV2) -> Self {
        JourneyV5 {
            floor: Floor {
                // Journeys folded before they could end go on (never ending) as they were.
                progress: Progress {
                    furthest: j.floor.max_stage,
                    open_until: i64::MAX,
                    seq: 0,
                },
                segment: j.floor.segment,
                last: j.floor.last,
                pending: None,
                pending_steps: Vec::new(),
            },
            touchpoints: j.touchpoints,
            answers: j.answers,
        }
        .into()
    }
}

/// A visitor's device state as version 4 wrote it.
#[derive(Serialize, Deserialize)]
struct VisitorV4 {
    held: Vec<Routed>,
    claim: Option<ClaimV4>,
}

#[derive(Serialize, Deserialize)]
struct ClaimV4 {
    customer_id: String,
    from: i64,
}

impl From<VisitorV4> for Visitor {
    fn from(v: VisitorV4) -> Self {
        Visitor {
            held: v.held,
            claim: v.claim.map(|c| Claim {
                customer_id: c.customer_id,
                from: c.from,
                partition: None,
            }),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum StateError {
    #[error("the stored journey is empty")]
    Empty,
    #[error("the stored journey has version {0}, newer than this cxstream reads (up to {V7}); upgrade cxstream")]
    Newer(u8),
    #[error("the stored journey cannot be decoded: {0}")]
    Decode(String),
}

pub fn encode(journey: &Journey, visitor: Option<&Visitor>) -> Result<Vec<u8>, StateError> {
    // The version byte leads as a tuple's first field: postcard writes a u8 as one byte.
    // Written into room for the whole journey, so that the buffer does not grow (and move)
    // as it fills. (`to_extend` copies strings byte by byte.)
    let room = Vec::with_capacity(size_hint(journey));
    let written = match visitor {
        None => postcard::to_io(&(V6, journey), room),
        Some(v) => postcard::to_io(&(V7, journey, v), room),
    };
    written.map_err(|e| StateError::Decode(e.to_string()))
}

/// About the bytes a journey takes stored: its packed events and a few dozen bytes for
/// each event's indices and for the floor.
fn size_hint(journey: &Journey) -> usize {
    let touchpoints: usize = journey.touchpoints.iter().map(|t| t.event.len() + 40).sum();
    let answers: usize = journey.answers.iter().map(|a| a.answer.len() + 40).sum();
    128 + touchpoints + answers
}

fn with_outcomes(journey: Journey, visitor: Option<Visitor>) -> Stored {
    Stored {
        journey,
        written: Written::WithOutcomes,
        visitor,
    }
}

pub fn decode(bytes: &[u8]) -> Result<Stored, StateError> {
    let (&version, rest) = bytes.split_first().ok_or(StateError::Empty)?;
    let err = |e: postcard::Error| StateError::Decode(e.to_string());
    let before_outcomes = |journey: JourneyV2| Stored {
        journey: journey.into(),
        written: Written::BeforeOutcomes,
        visitor: None,
    };
    match version {
        // Before the version byte: the same layout as version 2.
        0 | 1 => Ok(before_outcomes(
            postcard::from_bytes::<JourneyV2>(bytes).map_err(err)?,
        )),
        V2 => Ok(before_outcomes(
            postcard::from_bytes::<JourneyV2>(rest).map_err(err)?,
        )),
        V3 => Ok(with_outcomes(
            postcard::from_bytes::<JourneyV5>(rest).map_err(err)?.into(),
            None,
        )),
        V4 => {
            let (journey, visitor) =
                postcard::from_bytes::<(JourneyV5, VisitorV4)>(rest).map_err(err)?;
            Ok(with_outcomes(journey.into(), Some(visitor.into())))
        }
        V5 => {
            let (journey, visitor) =
                postcard::from_bytes::<(JourneyV5, Visitor)>(rest).map_err(err)?;
            Ok(with_outcomes(journey.into(), Some(visitor)))
        }
        V6 => Ok(with_outcomes(
            postcard::from_bytes(rest).map_err(err)?,
            None,
        )),
        V7 => {
            let (journey, visitor) =
                postcard::from_bytes::<(Journey, Visitor)>(rest).map_err(err)?;
            Ok(with_outcomes(journey, Some(visitor)))
        }
        newer => Err(StateError::Newer(newer)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cxstream_core::journey::{EventId, FoldedEntry, Origin};

    fn context() -> Context {
        Context {
            stage: 2,
            touchpoint: 3,
            channel: 1,
            segment: 1,
        }
    }

    fn legacy() -> JourneyV2 {
        JourneyV2 {
            floor: FloorV2 {
                max_stage: Some(2),
                segment: Some(1),
                last: Some(((1_000, 7), context())),
            },
            touchpoints: Vec::new(),
            answers: Vec::new(),
        }
    }

    fn journey() -> Journey {
        let mut j: Journey = legacy().into();
        j.floor.pending = Some(Box::new(FoldedEntry {
            origin: Origin {
                id: 7,
                event_id: EventId::Owned("e".into()),
                time: 1_000,
                source_offset: 5,
            },
            context: context(),
            deadline: 9_000,
            journey_seq: 1,
        }));
        j
    }

    fn stored(journey: Journey, written: Written, visitor: Option<Visitor>) -> Stored {
        Stored {
            journey,
            written,
            visitor,
        }
    }

    #[test]
    fn round_trips_with_a_version_byte() {
        let bytes = encode(&journey(), None).unwrap();
        assert_eq!(bytes[0], V6);
        let expected = stored(journey(), Written::WithOutcomes, None);
        assert_eq!(decode(&bytes), Ok(expected));
        // The version byte, then the journey.
        let before = postcard::to_extend(&journey(), vec![V6]).unwrap();
        assert_eq!(bytes, before);
    }

    #[test]
    fn a_visitors_row_keeps_its_held_touchpoints_and_claim() {
        use cxstream_core::TouchpointEvent;
        let event = TouchpointEvent {
            event_id: "a".into(),
            customer_id: None,
            anonymous_id: Some("d".into()),
            event_time: 5,
            touchpoint: "product_view".into(),
            channel: "web".into(),
            stage: None,
            segment: None,
            outcome: None,
            attributes: [("k".to_string(), "v".to_string())].into(),
        };
        let visitor = Visitor {
            held: vec![Routed {
                event,
                source_offset: 3,
            }],
            claim: Some(Claim {
                customer_id: "c".into(),
                from: 1,
                partition: Some(3),
            }),
        };
        let bytes = encode(&journey(), Some(&visitor)).unwrap();
        assert_eq!(bytes[0], V7);
        let before = postcard::to_extend(&(journey(), &visitor), vec![V7]).unwrap();
        assert_eq!(bytes, before);
        let expected = stored(journey(), Written::WithOutcomes, Some(visitor.clone()));
        assert_eq!(decode(&bytes), Ok(expected));
        // Version 5: the same, with the journey's events whole.
        let bytes = postcard::to_extend(&(v5(), &visitor), vec![V5]).unwrap();
        let expected = stored(v5().into(), Written::WithOutcomes, Some(visitor.clone()));
        assert_eq!(decode(&bytes), Ok(expected));
        // Version 4 knew no claim's partition.
        let v4 = VisitorV4 {
            held: visitor.held.clone(),
            claim: Some(ClaimV4 {
                customer_id: "c".into(),
                from: 1,
            }),
        };
        let bytes = postcard::to_extend(&(v5(), v4), vec![V4]).unwrap();
        let mut then = visitor;
        then.claim = then.claim.map(|c| Claim {
            partition: None,
            ..c
        });
        let expected = stored(v5().into(), Written::WithOutcomes, Some(then));
        assert_eq!(decode(&bytes), Ok(expected));
    }

    /// A journey as versions 3 to 5 wrote it: a touchpoint of the map, one off it (whose
    /// name only the event has) and an answer naming the first, each with its event whole.
    fn v5() -> JourneyV5 {
        let event = |id: &str, touchpoint: &str| TouchpointEvent {
            event_id: id.into(),
            customer_id: Some(" c-1 ".into()),
            anonymous_id: None,
            event_time: 2_000,
            touchpoint: touchpoint.into(),
            channel: "web".into(),
            stage: None,
            segment: None,
            outcome: Some("ok".into()),
            attributes: [("k".to_string(), "v".to_string())].into(),
        };
        let touchpoint = |id: u64, idx, name| TouchpointV5 {
            id,
            time: 2_000,
            touchpoint: idx,
            channel: 0,
            stage: 1,
            segment: None,
            event: event(name, name),
            source_offset: 10,
        };
        JourneyV5 {
            floor: journey().floor,
            touchpoints: vec![
                touchpoint(1, 3, "product_view"),
                touchpoint(2, OFF_MAP, "kiosk"),
            ],
            answers: vec![AnswerV5 {
                response: 9,
                named: Some(1),
                time: 2_500,
                metric: Metric::Nps,
                score: 3,
                fixed: None,
                answer: SurveyAnswer {
                    response_id: "r-1".into(),
                    customer_id: Some("c-1".into()),
                    answer_time: 2_500,
                    metric: Metric::Nps,
                    score: 3,
                    touchpoint_event_id: Some("product_view".into()),
                    touchpoint: Some("product_view".into()),
                    channel: Some("app".into()),
                    comment: Some("slow".into()),
                    attributes: Default::default(),
                },
                source_offset: 11,
            }],
        }
    }

    #[test]
    fn rows_of_versions_3_to_5_read_with_their_events_packed() {
        let bytes = postcard::to_extend(&v5(), vec![V3]).unwrap();
        let read = decode(&bytes).unwrap().journey;
        let [on, off] = &read.touchpoints[..] else {
            panic!("two touchpoints: {read:?}");
        };
        let (on, off) = (on.event.fields(), off.event.fields());
        assert_eq!((on.event_id, on.off_map), ("product_view", None));
        assert_eq!((off.event_id, off.off_map), ("kiosk", Some("kiosk")));
        assert_eq!(on.customer_id("c-1"), " c-1 ");
        assert_eq!(
            (on.outcome, on.attributes.clone()),
            (Some("ok"), vec![("k", "v")])
        );
        let a = read.answers[0].answer.fields();
        assert_eq!((a.response_id, a.customer_id("c-1")), ("r-1", "c-1"));
        assert_eq!(
            (a.touchpoint_event_id, a.channel, a.comment),
            (Some("product_view"), Some("app"), Some("slow"))
        );
        assert_eq!(read.answers[0].score, 3);
        // Written again, it is version 6 and reads back the same.
        let again = encode(&read, None).unwrap();
        assert_eq!(again[0], V6);
        assert_eq!(decode(&again).unwrap().journey, read);
        assert!(
            again.len() < bytes.len(),
            "{} ≥ {}",
            again.len(),
            bytes.len()
        );
    }

    #[test]
    fn reads_rows_of_earlier_versions_as_written_before_outcomes() {
        let expected: Journey = legacy().into();
        let v2 = postcard::to_extend(&legacy(), vec![V2]).unwrap();
        let before = stored(expected, Written::BeforeOutcomes, None);
        assert_eq!(decode(&v2), Ok(before.clone()));
        let unversioned = postcard::to_allocvec(&legacy()).unwrap();
        assert!(unversioned[0] <= 1);
        assert_eq!(decode(&unversioned), Ok(before));
    }

    #[test]
    fn refuses_newer_versions_and_garbage_with_a_reason() {
        assert_eq!(decode(&[9, 0, 0]), Err(StateError::Newer(9)));
        assert_eq!(decode(&[]), Err(StateError::Empty));
        assert!(matches!(decode(&[V3, 1]), Err(StateError::Decode(_))));
        assert!(matches!(decode(&[V6, 1]), Err(StateError::Decode(_))));
    }
}
