//! How a journey is stored in `journeys.state`: postcard, behind a version byte, so that a
//! later change of the journey's layout can still read what earlier versions wrote.
//!
//! Rows written before the version byte existed start with the floor's first field, an
//! `Option` tag (0 or 1); versions start at 2, so the first byte tells them apart.

use cxstream_core::Journey;

const V2: u8 = 2;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum StateError {
    #[error("the stored journey is empty")]
    Empty,
    #[error("the stored journey has version {0}, newer than this cxstream reads (up to {V2}); upgrade cxstream")]
    Newer(u8),
    #[error("the stored journey cannot be decoded: {0}")]
    Decode(String),
}

pub fn encode(journey: &Journey) -> Result<Vec<u8>, StateError> {
    postcard::to_extend(journey, vec![V2]).map_err(|e| StateError::Decode(e.to_string()))
}

pub fn decode(bytes: &[u8]) -> Result<Journey, StateError> {
    let (&version, rest) = bytes.split_first().ok_or(StateError::Empty)?;
    let payload = match version {
        // Before the version byte: the same layout as version 2.
        0 | 1 => bytes,
        V2 => rest,
        newer => return Err(StateError::Newer(newer)),
    };
    postcard::from_bytes(payload).map_err(|e| StateError::Decode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cxstream_core::journey::{Context, Floor};

    fn journey() -> Journey {
        Journey {
            floor: Floor {
                max_stage: Some(2),
                segment: Some(1),
                last: Some((
                    (1_000, 7),
                    Context {
                        stage: 2,
                        touchpoint: 3,
                        channel: 1,
                        segment: 1,
                    },
                )),
            },
            ..Journey::default()
        }
    }

    #[test]
    fn round_trips_with_a_version_byte() {
        let bytes = encode(&journey()).unwrap();
        assert_eq!(bytes[0], V2);
        assert_eq!(decode(&bytes), Ok(journey()));
    }

    #[test]
    fn reads_rows_written_before_the_version_byte() {
        for j in [journey(), Journey::default()] {
            let legacy = postcard::to_allocvec(&j).unwrap();
            assert!(legacy[0] <= 1);
            assert_eq!(decode(&legacy), Ok(j));
        }
    }

    #[test]
    fn refuses_newer_versions_and_garbage_with_a_reason() {
        assert_eq!(decode(&[9, 0, 0]), Err(StateError::Newer(9)));
        assert_eq!(decode(&[]), Err(StateError::Empty));
        assert!(matches!(decode(&[V2, 1]), Err(StateError::Decode(_))));
    }
}
