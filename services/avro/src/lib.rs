//! Avro codec for cxstream's topics: Avro single-object encoding (`C3 01` + 8-byte
//! CRC-64-AVRO fingerprint + datum) with the schemas embedded from `schemas/avro/`.
//!
//! Decoding reads bytes straight into the domain types with apache-avro's schema-aware serde
//! deserializer; schemas are parsed and resolved once, never per record. Every writer schema
//! we know is indexed by fingerprint, so adding an evolved schema version is adding a file:
//! missing fields fall back to the domain types' serde defaults.
//!
//! Fingerprints follow the specification's Parsing Canonical Form ([`canonical`]), so records
//! from Java, Python or any conformant producer decode. Records written by cxstream before
//! that fix carry apache-avro's own (non-conformant) fingerprint and still decode.

pub mod canonical;

use std::collections::HashMap;
use std::sync::LazyLock;

use apache_avro::rabin::Rabin;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema;
use cxstream_core::{SurveyAnswer, TouchpointEvent};
use serde::de::DeserializeOwned;
use serde::Serialize;

pub const TOUCHPOINT_SCHEMA: &str = include_str!("../../../schemas/avro/touchpoint.avsc");
pub const SURVEY_ANSWER_SCHEMA: &str = include_str!("../../../schemas/avro/survey_answer.avsc");
pub const ALERT_SCHEMA: &str = include_str!("../../../schemas/avro/alert.avsc");

const MAGIC: [u8; 2] = [0xC3, 0x01];
const HEADER_LEN: usize = 10;

/// Why bytes could not be decoded. `kind()` names go into DLQ headers and metric labels.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not Avro single-object encoding (expected C3 01 header)")]
    NotSingleObject,
    #[error("unknown schema fingerprint {0:016x}")]
    UnknownFingerprint(u64),
    #[error("schema fingerprint {0:016x} belongs to another record type than this topic carries")]
    WrongSchema(u64),
    #[error("malformed Avro datum: {0}")]
    Malformed(String),
    #[error("{0} trailing bytes after the Avro datum")]
    TrailingBytes(usize),
}

impl DecodeError {
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::NotSingleObject => "not_avro",
            DecodeError::UnknownFingerprint(_) => "unknown_fingerprint",
            DecodeError::WrongSchema(_) => "wrong_schema",
            DecodeError::Malformed(_) => "malformed",
            DecodeError::TrailingBytes(_) => "trailing_bytes",
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot encode record: {0}")]
pub struct EncodeError(String);

/// The record types carried by cxstream's topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordType {
    Touchpoint,
    SurveyAnswer,
    Alert,
}

struct Known {
    schema: &'static Schema,
    /// The schema's JSON, for the specification's fingerprint.
    json: serde_json::Value,
    record: RecordType,
}

fn parse(text: &str) -> &'static Schema {
    // The embedded schemas are part of the binary; a parse failure is a build defect caught
    // by this crate's tests, not an input-dependent path.
    #[allow(clippy::expect_used)]
    let s = Schema::parse_str(text).expect("embedded Avro schema parses");
    Box::leak(Box::new(s))
}

fn known(text: &'static str, record: RecordType) -> Known {
    // As in `parse`: the embedded schemas are part of the binary.
    #[allow(clippy::expect_used)]
    let json = serde_json::from_str(text).expect("embedded Avro schema is JSON");
    Known {
        schema: parse(text),
        json,
        record,
    }
}

static KNOWN: LazyLock<Vec<Known>> = LazyLock::new(|| {
    vec![
        known(TOUCHPOINT_SCHEMA, RecordType::Touchpoint),
        known(SURVEY_ANSWER_SCHEMA, RecordType::SurveyAnswer),
        known(ALERT_SCHEMA, RecordType::Alert),
    ]
});

/// The fingerprint apache-avro 0.22 computes, which differs from the specification's for
/// schemas with a logical type. Records cxstream wrote before carry it; only decoding
/// accepts it.
pub fn legacy_fingerprint(schema: &Schema) -> u64 {
    let fp = schema.fingerprint::<Rabin>();
    let mut b = [0u8; 8];
    b.copy_from_slice(&fp.bytes[..8]);
    u64::from_le_bytes(b)
}

/// Encodes and decodes cxstream records. Build once, share by reference.
pub struct Codec {
    readers: HashMap<u64, (RecordType, GenericDatumReader<'static>)>,
    writers: HashMap<RecordType, (u64, GenericDatumWriter<'static>)>,
}

impl Codec {
    pub fn new() -> Result<Self, EncodeError> {
        let mut readers = HashMap::new();
        let mut writers = HashMap::new();
        for k in KNOWN.iter() {
            let fp = canonical::fingerprint(&k.json);
            for id in [fp, legacy_fingerprint(k.schema)] {
                let reader = GenericDatumReader::builder(k.schema)
                    .human_readable(false)
                    .build()
                    .map_err(|e| EncodeError(e.to_string()))?;
                readers.insert(id, (k.record, reader));
            }
            // The newest schema of a record type is the one we write; KNOWN lists oldest first.
            let writer = GenericDatumWriter::builder(k.schema)
                .human_readable(false)
                .build()
                .map_err(|e| EncodeError(e.to_string()))?;
            writers.insert(k.record, (fp, writer));
        }
        Ok(Codec { readers, writers })
    }

    pub fn writer_fingerprint(&self, record: RecordType) -> Option<u64> {
        self.writers.get(&record).map(|(fp, _)| *fp)
    }

    pub fn decode_touchpoint(&self, bytes: &[u8]) -> Result<TouchpointEvent, DecodeError> {
        self.decode(RecordType::Touchpoint, bytes)
    }

    pub fn decode_answer(&self, bytes: &[u8]) -> Result<SurveyAnswer, DecodeError> {
        self.decode(RecordType::SurveyAnswer, bytes)
    }

    pub fn encode_touchpoint(
        &self,
        ev: &TouchpointEvent,
        out: &mut Vec<u8>,
    ) -> Result<(), EncodeError> {
        self.encode(RecordType::Touchpoint, ev, out)
    }

    pub fn encode_answer(&self, a: &SurveyAnswer, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        self.encode(RecordType::SurveyAnswer, a, out)
    }

    pub fn decode<T: DeserializeOwned>(
        &self,
        expected: RecordType,
        bytes: &[u8],
    ) -> Result<T, DecodeError> {
        if bytes.len() < HEADER_LEN || bytes[..2] != MAGIC {
            return Err(DecodeError::NotSingleObject);
        }
        let mut fp = [0u8; 8];
        fp.copy_from_slice(&bytes[2..HEADER_LEN]);
        let fp = u64::from_le_bytes(fp);
        let (record, reader) = self
            .readers
            .get(&fp)
            .ok_or(DecodeError::UnknownFingerprint(fp))?;
        if *record != expected {
            return Err(DecodeError::WrongSchema(fp));
        }
        let mut rest = &bytes[HEADER_LEN..];
        let value = reader
            .read_deser::<T>(&mut rest)
            .map_err(|e| DecodeError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(DecodeError::TrailingBytes(rest.len()));
        }
        Ok(value)
    }

    pub fn encode<T: Serialize>(
        &self,
        record: RecordType,
        value: &T,
        out: &mut Vec<u8>,
    ) -> Result<(), EncodeError> {
        let (fp, writer) = self
            .writers
            .get(&record)
            .ok_or_else(|| EncodeError(format!("no schema for {record:?}")))?;
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&fp.to_le_bytes());
        writer
            .write_ser(out, value)
            .map_err(|e| EncodeError(e.to_string()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cxstream_core::Metric;
    use std::collections::HashMap;

    fn codec() -> Codec {
        Codec::new().expect("codec")
    }

    fn tp() -> TouchpointEvent {
        TouchpointEvent {
            event_id: "e-1".into(),
            customer_id: Some("c-42".into()),
            anonymous_id: None,
            event_time: 1_700_000_000_123,
            touchpoint: "checkout_started".into(),
            channel: "app".into(),
            stage: None,
            segment: Some("vip".into()),
            outcome: Some("success".into()),
            attributes: HashMap::from([("cart_value".to_string(), "42.10".to_string())]),
        }
    }

    fn answer() -> SurveyAnswer {
        SurveyAnswer {
            response_id: "r-1".into(),
            customer_id: Some("c-42".into()),
            answer_time: 1_700_000_100_000,
            metric: Metric::Csat,
            score: 4,
            touchpoint_event_id: Some("e-1".into()),
            touchpoint: Some("checkout_started".into()),
            channel: None,
            comment: Some("quick and easy".into()),
            attributes: HashMap::new(),
        }
    }

    #[test]
    fn round_trips_both_record_types() {
        let c = codec();
        let mut buf = Vec::new();
        c.encode_touchpoint(&tp(), &mut buf).expect("encode");
        assert_eq!(&buf[..2], &MAGIC);
        assert_eq!(c.decode_touchpoint(&buf).expect("decode"), tp());
        buf.clear();
        c.encode_answer(&answer(), &mut buf).expect("encode");
        assert_eq!(c.decode_answer(&buf).expect("decode"), answer());
    }

    /// Header bytes of the shipped schemas as fastavro 1.13 computes them (little-endian,
    /// as in a single-object header):
    /// `python3 -c 'import json,fastavro.schema as s; print(s.fingerprint(
    ///     s.to_parsing_canonical_form(json.load(open("schemas/avro/touchpoint.avsc"))),
    ///     "CRC-64-AVRO"))'`
    const FASTAVRO: [(RecordType, &str); 3] = [
        (RecordType::Touchpoint, "b7654fa06f31c558"),
        (RecordType::SurveyAnswer, "83a98be0c7502bf4"),
        (RecordType::Alert, "f81c346ac8b82add"),
    ];

    fn hex(fp: u64) -> String {
        fp.to_le_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    #[test]
    fn fingerprints_of_the_shipped_schemas_are_the_specifications() {
        let c = codec();
        for (record, expected) in FASTAVRO {
            let fp = c.writer_fingerprint(record).expect("a writer schema");
            assert_eq!(hex(fp), expected, "{record:?}");
        }
    }

    #[test]
    fn records_with_apache_avros_old_fingerprint_still_decode() {
        use apache_avro::headers::{HeaderBuilder, RabinFingerprintHeader};
        let legacy = RabinFingerprintHeader::from_schema(KNOWN[0].schema).build_header();
        let mut buf = Vec::new();
        codec().encode_touchpoint(&tp(), &mut buf).expect("encode");
        assert_ne!(
            &buf[..HEADER_LEN],
            legacy.as_slice(),
            "AVRO-4004 is fixed upstream?"
        );
        buf[..HEADER_LEN].copy_from_slice(&legacy);
        assert_eq!(codec().decode_touchpoint(&buf).expect("decode"), tp());
    }

    #[test]
    fn bad_bytes_get_typed_errors() {
        let c = codec();
        let mut buf = Vec::new();
        c.encode_touchpoint(&tp(), &mut buf).expect("encode");
        assert_eq!(
            c.decode_touchpoint(b"garbage!garbage").unwrap_err().kind(),
            "not_avro"
        );
        assert_eq!(
            c.decode_touchpoint(&buf[..buf.len() - 5])
                .unwrap_err()
                .kind(),
            "malformed"
        );
        let mut unknown = buf.clone();
        unknown[2] ^= 0xFF;
        assert_eq!(
            c.decode_touchpoint(&unknown).unwrap_err().kind(),
            "unknown_fingerprint"
        );
        assert_eq!(c.decode_answer(&buf).unwrap_err().kind(), "wrong_schema");
        let mut long = buf.clone();
        long.push(0);
        assert_eq!(
            c.decode_touchpoint(&long).unwrap_err().kind(),
            "trailing_bytes"
        );
    }
}
