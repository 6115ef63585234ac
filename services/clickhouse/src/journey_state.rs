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
//! erased); a version 4 claim knows none.

use cxstream_core::identity::{Claim, Routed, Visitor};
use cxstream_core::journey::{AnswerEntry, Context, Floor, Progress, TouchpointEntry};
use cxstream_core::processor::Written;
use cxstream_core::Journey;
use serde::{Deserialize, Serialize};

const V2: u8 = 2;
const V3: u8 = 3;
const V4: u8 = 4;
const V5: u8 = 5;

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
    touchpoints: Vec<TouchpointEntry>,
    answers: Vec<AnswerEntry>,
}

#[derive(Serialize, Deserialize)]
struct FloorV2 {
    max_stage: Option<u8>,
    segment: Option<u8>,
    last: Option<((i64, u64), Context)>,
}

impl From<JourneyV2> for Journey {
    fn from(j: JourneyV2) -> Self {
        Journey {
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
            dirty: false,
        }
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
    #[error("the stored journey has version {0}, newer than this cxstream reads (up to {V5}); upgrade cxstream")]
    Newer(u8),
    #[error("the stored journey cannot be decoded: {0}")]
    Decode(String),
}

pub fn encode(journey: &Journey, visitor: Option<&Visitor>) -> Result<Vec<u8>, StateError> {
    // The version byte leads as a tuple's first field: postcard writes a u8 as one byte.
    // (`to_extend` into a Vec copies strings byte by byte.)
    let written = match visitor {
        None => postcard::to_allocvec(&(V3, journey)),
        Some(v) => postcard::to_allocvec(&(V5, journey, v)),
    };
    written.map_err(|e| StateError::Decode(e.to_string()))
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
        V3 => Ok(Stored {
            journey: postcard::from_bytes(rest).map_err(err)?,
            written: Written::WithOutcomes,
            visitor: None,
        }),
        V4 => {
            let (journey, visitor) =
                postcard::from_bytes::<(Journey, VisitorV4)>(rest).map_err(err)?;
            Ok(Stored {
                journey,
                written: Written::WithOutcomes,
                visitor: Some(visitor.into()),
            })
        }
        V5 => {
            let (journey, visitor) =
                postcard::from_bytes::<(Journey, Visitor)>(rest).map_err(err)?;
            Ok(Stored {
                journey,
                written: Written::WithOutcomes,
                visitor: Some(visitor),
            })
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
        j.floor.pending = Some(FoldedEntry {
            origin: Origin {
                id: 7,
                event_id: EventId::Owned("e".into()),
                time: 1_000,
                source_offset: 5,
            },
            context: context(),
            deadline: 9_000,
            journey_seq: 1,
        });
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
        assert_eq!(bytes[0], V3);
        let expected = stored(journey(), Written::WithOutcomes, None);
        assert_eq!(decode(&bytes), Ok(expected));
        // The layout rows were written in before: the version byte, then the journey.
        let before = postcard::to_extend(&journey(), vec![V3]).unwrap();
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
        assert_eq!(bytes[0], V5);
        let before = postcard::to_extend(&(journey(), &visitor), vec![V5]).unwrap();
        assert_eq!(bytes, before);
        let expected = stored(journey(), Written::WithOutcomes, Some(visitor.clone()));
        assert_eq!(decode(&bytes), Ok(expected));
        // Version 4 knew no claim's partition.
        let v4 = VisitorV4 {
            held: visitor.held.clone(),
            claim: Some(ClaimV4 {
                customer_id: "c".into(),
                from: 1,
            }),
        };
        let bytes = postcard::to_extend(&(journey(), v4), vec![V4]).unwrap();
        let mut then = visitor;
        then.claim = then.claim.map(|c| Claim {
            partition: None,
            ..c
        });
        let expected = stored(journey(), Written::WithOutcomes, Some(then));
        assert_eq!(decode(&bytes), Ok(expected));
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
    }
}
