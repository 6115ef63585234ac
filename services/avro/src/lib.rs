//! Avro codec for cxstream's topics: Avro single-object encoding (`C3 01` + 8-byte
//! CRC-64-AVRO fingerprint + datum) with the schemas embedded from `schemas/avro/`, and the
//! Confluent wire format (`00` + 4-byte big-endian schema id + datum) that Confluent's
//! serializers write, with the writer schemas of the ids in use ([`Codec::with_confluent`]).
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
use cxstream_core::claims::Link;
use cxstream_core::metrics::StepCounts;
use cxstream_core::{Counts, SurveyAnswer, TouchpointEvent};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub const TOUCHPOINT_SCHEMA: &str = include_str!("../../../schemas/avro/touchpoint.avsc");
pub const SURVEY_ANSWER_SCHEMA: &str = include_str!("../../../schemas/avro/survey_answer.avsc");
pub const ALERT_SCHEMA: &str = include_str!("../../../schemas/avro/alert.avsc");
/// Alerts as written before score drops named their metric and touchpoint: still read.
const ALERT_SCHEMA_V1: &str = include_str!("../../../schemas/avro/alert.v1.avsc");
/// Alerts as written before a stage's decided conversion was watched: still read.
const ALERT_SCHEMA_V2: &str = include_str!("../../../schemas/avro/alert.v2.avsc");
pub const IDENTITY_MESSAGE_SCHEMA: &str =
    include_str!("../../../schemas/avro/identity_message.avsc");
pub const AGGREGATES_SCHEMA: &str = include_str!("../../../schemas/avro/aggregates.avsc");
/// Aggregates as written before committed records said how far touchpoints are final:
/// still read.
const AGGREGATES_SCHEMA_V1: &str = include_str!("../../../schemas/avro/aggregates.v1.avsc");
/// `aggregates.avsc` before records named their claims.
const AGGREGATES_SCHEMA_V2: &str = include_str!("../../../schemas/avro/aggregates.v2.avsc");

const MAGIC: [u8; 2] = [0xC3, 0x01];
const HEADER_LEN: usize = 10;
/// Confluent's framing: magic byte 0, then the schema id (big-endian u32).
const CONFLUENT_MAGIC: u8 = 0;
const CONFLUENT_HEADER_LEN: usize = 5;

/// Why bytes could not be decoded. `kind()` names go into DLQ headers and metric labels.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error(
        "neither Avro single-object encoding (C3 01 header) nor the Confluent wire format (00 + schema id)"
    )]
    NotSingleObject,
    #[error("unknown schema fingerprint {0:016x}")]
    UnknownFingerprint(u64),
    #[error("Confluent schema id {0} is not configured (schemas.confluent)")]
    UnknownSchemaId(u32),
    #[error(
        "Confluent schema id {0} is configured for another record type than this topic carries"
    )]
    WrongSchemaId(u32),
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
            DecodeError::UnknownSchemaId(_) => "unknown_schema_id",
            DecodeError::WrongSchemaId(_) => "wrong_schema",
            DecodeError::WrongSchema(_) => "wrong_schema",
            DecodeError::Malformed(_) => "malformed",
            DecodeError::TrailingBytes(_) => "trailing_bytes",
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot encode record: {0}")]
pub struct EncodeError(String);

/// A record of the internal identities topic (`schemas/avro/identity_message.avsc`): what
/// the journey services' partitions tell each other for identity stitching.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdentityMessage {
    pub journey: String,
    /// The sender's consumer group.
    pub group: String,
    pub kind: IdentityMessageKind,
    pub anonymous_id: Option<String>,
    pub customer_id: Option<String>,
    pub time: Option<i64>,
    pub watermark: Option<i64>,
    pub partition: Option<i32>,
    pub idle: bool,
    #[serde(with = "apache_avro::serde::bytes_opt")]
    pub stitched: Option<Vec<u8>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityMessageKind {
    Identification,
    Stitched,
    Watermark,
}

/// A record of `cx.aggregates` (`schemas/avro/aggregates.avsc`): a batch's per-minute
/// partial counts, or which batch of a partition committed. `S` is how the cells hold
/// their names: read as `String`, written borrowed from the journey map (`&str`), which
/// spares the sender five allocations per cell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AggregatesMessage<S = String> {
    pub journey: String,
    pub group: String,
    pub kind: AggregatesKind,
    pub partition: i32,
    pub partitions: i32,
    pub seq: i64,
    pub batch_id: i64,
    pub chunk: i32,
    pub chunks: i32,
    pub watermark: Option<i64>,
    /// Absent from records written before it (`aggregates.v1.avsc`).
    #[serde(default)]
    pub touchpoints_watermark: Option<i64>,
    pub idle: bool,
    pub minutes: Vec<MinuteCell<S>>,
    pub steps: Vec<StepCell<S>>,
    /// The bits of the owner's claim; 0 in records written before it (`aggregates.v2.avsc`).
    #[serde(default)]
    pub claim: i64,
    /// committed: the sender's chain; empty in records written before it.
    #[serde(default)]
    pub chain: Vec<ClaimLink>,
}

/// One link of a claim's chain, as `cxstream_core::claims::Link` (the bits of unsigned
/// numbers: Avro has no unsigned long).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimLink {
    pub claim: i64,
    pub from: i64,
    pub until: i64,
}

impl From<&Link> for ClaimLink {
    fn from(l: &Link) -> Self {
        ClaimLink {
            claim: l.claim as i64,
            from: l.from as i64,
            until: l.until as i64,
        }
    }
}

impl From<&ClaimLink> for Link {
    fn from(l: &ClaimLink) -> Self {
        Link {
            claim: l.claim as u64,
            from: l.from as u64,
            until: l.until as u64,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AggregatesKind {
    Partial,
    Committed,
}

/// Changes to one cell of `cx.metrics_minute`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MinuteCell<S = String> {
    /// Start of the minute, epoch ms.
    pub minute: i64,
    pub stage: S,
    pub touchpoint: S,
    pub channel: S,
    pub segment: S,
    pub counts: Counts,
}

/// Changes to one cell of `cx.steps_minute`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepCell<S = String> {
    /// Start of the minute the attempts started in, epoch ms.
    pub minute: i64,
    pub step: S,
    pub stage: S,
    pub touchpoint: S,
    pub channel: S,
    pub segment: S,
    pub counts: StepCounts,
}

/// A record of `cx.alerts` (`schemas/avro/alert.avsc`): one change of an alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename = "Alert")]
pub struct AlertMessage {
    pub id: String,
    pub revision: i32,
    pub state: AlertState,
    pub kind: AlertKind,
    pub journey: String,
    pub group: String,
    pub subject: String,
    /// Absent from alerts written before score drops named them (`alert.v1.avsc`).
    #[serde(default)]
    pub metric: Option<String>,
    #[serde(default)]
    pub touchpoint: Option<String>,
    pub slice: String,
    pub firing: Vec<String>,
    pub window_start: i64,
    pub window_end: i64,
    pub observed: f64,
    pub baseline: f64,
    pub n: f64,
    pub significance: f64,
    pub severity: Severity,
    pub fired_at: i64,
    pub changed_at: i64,
    pub resolved_at: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AlertState {
    Firing,
    Updated,
    Resolved,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AlertKind {
    StepDrop,
    ScoreDrop,
    Silence,
    FlowDrop,
    StageDrop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

/// The record types carried by cxstream's topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordType {
    Touchpoint,
    SurveyAnswer,
    Alert,
    IdentityMessage,
    Aggregates,
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
        known(ALERT_SCHEMA_V1, RecordType::Alert),
        known(ALERT_SCHEMA_V2, RecordType::Alert),
        known(ALERT_SCHEMA, RecordType::Alert),
        known(IDENTITY_MESSAGE_SCHEMA, RecordType::IdentityMessage),
        known(AGGREGATES_SCHEMA_V1, RecordType::Aggregates),
        known(AGGREGATES_SCHEMA_V2, RecordType::Aggregates),
        known(AGGREGATES_SCHEMA, RecordType::Aggregates),
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

/// Why a writer schema of a Confluent schema id cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("is not a valid Avro schema: {0}")]
    Invalid(String),
    #[error("cannot be read as cxstream's {record} schema: {reason}")]
    Incompatible {
        record: &'static str,
        reason: String,
    },
    #[error("schema id {0} is given twice")]
    DuplicateId(u32),
}

/// A record type's schema as a producer wrote it, under a Confluent schema id.
pub struct WriterSchema {
    pub id: u32,
    pub record: RecordType,
    /// The schema's JSON text.
    pub text: String,
}

/// Encodes and decodes cxstream records. Build once, share by reference.
pub struct Codec {
    readers: HashMap<u64, (RecordType, GenericDatumReader<'static>)>,
    /// Confluent-framed records: the writer schema of each id, resolved to cxstream's own.
    confluent: HashMap<u32, (RecordType, GenericDatumReader<'static>)>,
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
        Ok(Codec {
            readers,
            confluent: HashMap::new(),
            writers,
        })
    }

    /// Also decodes Confluent-framed records whose schema id is one of `schemas`: each is
    /// checked once, here, to be readable as cxstream's schema of its record type by Avro's
    /// resolution rules (fields added with defaults, fields removed, promotions).
    pub fn with_confluent(
        mut self,
        schemas: impl IntoIterator<Item = WriterSchema>,
    ) -> Result<Self, (u32, SchemaError)> {
        for w in schemas {
            let reader = confluent_reader(&w).map_err(|e| (w.id, e))?;
            if self.confluent.insert(w.id, (w.record, reader)).is_some() {
                return Err((w.id, SchemaError::DuplicateId(w.id)));
            }
        }
        Ok(self)
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

    pub fn encode_identity(
        &self,
        m: &IdentityMessage,
        out: &mut Vec<u8>,
    ) -> Result<(), EncodeError> {
        self.encode(RecordType::IdentityMessage, m, out)
    }

    pub fn decode_identity(&self, bytes: &[u8]) -> Result<IdentityMessage, DecodeError> {
        self.decode(RecordType::IdentityMessage, bytes)
    }

    pub fn encode_aggregates<S: Serialize>(
        &self,
        m: &AggregatesMessage<S>,
        out: &mut Vec<u8>,
    ) -> Result<(), EncodeError> {
        self.encode(RecordType::Aggregates, m, out)
    }

    pub fn decode_aggregates(&self, bytes: &[u8]) -> Result<AggregatesMessage, DecodeError> {
        self.decode(RecordType::Aggregates, bytes)
    }

    pub fn encode_alert(&self, m: &AlertMessage, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        self.encode(RecordType::Alert, m, out)
    }

    pub fn decode_alert(&self, bytes: &[u8]) -> Result<AlertMessage, DecodeError> {
        self.decode(RecordType::Alert, bytes)
    }

    pub fn decode<T: DeserializeOwned>(
        &self,
        expected: RecordType,
        bytes: &[u8],
    ) -> Result<T, DecodeError> {
        if bytes.len() >= CONFLUENT_HEADER_LEN && bytes[0] == CONFLUENT_MAGIC {
            return self.decode_confluent(expected, bytes);
        }
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

    /// A Confluent-framed record: its writer schema (by id) resolved to cxstream's. Slower
    /// than single-object decoding (through apache-avro's `Value`), which resolution needs.
    fn decode_confluent<T: DeserializeOwned>(
        &self,
        expected: RecordType,
        bytes: &[u8],
    ) -> Result<T, DecodeError> {
        let mut id = [0u8; 4];
        id.copy_from_slice(&bytes[1..CONFLUENT_HEADER_LEN]);
        let id = u32::from_be_bytes(id);
        let (record, reader) = self
            .confluent
            .get(&id)
            .ok_or(DecodeError::UnknownSchemaId(id))?;
        if *record != expected {
            return Err(DecodeError::WrongSchemaId(id));
        }
        let mut rest = Strict {
            rest: &bytes[CONFLUENT_HEADER_LEN..],
            truncated: false,
        };
        let value = reader
            .read_value(&mut rest)
            .map_err(|e| DecodeError::Malformed(e.to_string()))?;
        if rest.truncated {
            return Err(DecodeError::Malformed("the datum ends early".into()));
        }
        if !rest.rest.is_empty() {
            return Err(DecodeError::TrailingBytes(rest.rest.len()));
        }
        apache_avro::from_value::<T>(&value).map_err(|e| DecodeError::Malformed(e.to_string()))
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

impl RecordType {
    /// How configuration names it.
    pub fn name(self) -> &'static str {
        match self {
            RecordType::Touchpoint => "touchpoint",
            RecordType::SurveyAnswer => "survey_answer",
            RecordType::Alert => "alert",
            RecordType::IdentityMessage => "identity_message",
            RecordType::Aggregates => "aggregates",
        }
    }

    /// The newest schema of the record type (KNOWN lists oldest first).
    fn schema(self) -> &'static Schema {
        KNOWN
            .iter()
            .rev()
            .find(|k| k.record == self)
            .map_or_else(|| KNOWN[0].schema, |k| k.schema)
    }
}

/// Avro's resolution compares types, not logical types (apache-avro's check passes a
/// `uuid` string or a `timestamp-micros` long where cxstream reads a plain string or
/// `timestamp-millis`, then fails on every record). A logical type over the same bytes
/// that cxstream reads as the plain type is dropped from the writer, wherever it sits (a
/// field, a union branch, a map's values, an array's items, a nested record's fields); one
/// that means other units than cxstream's is refused here, once.
fn align_logical_types(
    mut writer: serde_json::Value,
    record: RecordType,
) -> Result<serde_json::Value, String> {
    let reader = &KNOWN
        .iter()
        .rev()
        .find(|k| k.record == record)
        .ok_or_else(|| format!("no schema for {record:?}"))?
        .json;
    align(&mut writer, reader, "")?;
    Ok(writer)
}

/// Aligns the writer's type `w` with the reader's `r` at `path` (for messages).
fn align(w: &mut serde_json::Value, r: &serde_json::Value, path: &str) -> Result<(), String> {
    use serde_json::Value;
    // A union on either side: align each writer branch with the reader's branch of the
    // same kind (the non-null one when there is a single one).
    let r = match r {
        Value::Array(branches) => {
            let mut non_null = branches.iter().filter(|b| *b != "null");
            match (non_null.next(), non_null.next()) {
                (Some(only), None) => only,
                _ => return Ok(()),
            }
        }
        r => r,
    };
    if let Value::Array(branches) = w {
        for b in branches.iter_mut().filter(|b| *b != "null") {
            align(b, r, path)?;
        }
        return Ok(());
    }
    let theirs = w
        .get("logicalType")
        .and_then(Value::as_str)
        .map(str::to_string);
    let wanted = r.get("logicalType").and_then(Value::as_str);
    match (theirs.as_deref(), wanted) {
        (Some(_), None) => {
            if let Some(o) = w.as_object_mut() {
                o.remove("logicalType");
            }
        }
        (Some(t), Some(want)) if t != want => {
            return Err(format!(
                "`{path}` is {t}, and cxstream reads it as {want}; the values would be misread"
            ))
        }
        _ => {}
    }
    let kind = w.get("type").and_then(Value::as_str).map(str::to_string);
    match kind.as_deref() {
        Some("map") => {
            if let (Some(wv), Some(rv)) = (w.get_mut("values"), r.get("values")) {
                align(wv, rv, &format!("{path}[values]"))?;
            }
        }
        Some("array") => {
            if let (Some(wi), Some(ri)) = (w.get_mut("items"), r.get("items")) {
                align(wi, ri, &format!("{path}[items]"))?;
            }
        }
        Some("record") => {
            let ours = r
                .get("fields")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if let Some(fields) = w.get_mut("fields").and_then(Value::as_array_mut) {
                for f in fields {
                    let name = f
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string();
                    let Some(o) = ours.iter().find(|o| o["name"] == name.as_str()) else {
                        continue;
                    };
                    let field_path = if path.is_empty() {
                        name.clone()
                    } else {
                        format!("{path}.{name}")
                    };
                    if let Some(t) = f.get_mut("type") {
                        align(t, &o["type"], &field_path)?;
                    }
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// The bytes of one datum, remembering whether a read ran out of them: apache-avro's value
/// decoder reads a string cut short as null instead of failing.
struct Strict<'a> {
    rest: &'a [u8],
    truncated: bool,
}

impl std::io::Read for Strict<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.rest.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.truncated = true;
        }
        Ok(n)
    }
}

fn confluent_reader(w: &WriterSchema) -> Result<GenericDatumReader<'static>, SchemaError> {
    use apache_avro::schema_compatibility::{Compatibility, SchemaCompatibility};
    let incompatible = |reason: String| SchemaError::Incompatible {
        record: w.record.name(),
        reason,
    };
    let json: serde_json::Value =
        serde_json::from_str(&w.text).map_err(|e| SchemaError::Invalid(e.to_string()))?;
    let json = align_logical_types(json, w.record).map_err(incompatible)?;
    let writer = Schema::parse(&json).map_err(|e| SchemaError::Invalid(e.to_string()))?;
    let reader = w.record.schema();
    match SchemaCompatibility::can_read(&writer, reader) {
        Ok(Compatibility::Full) => {}
        Ok(Compatibility::Partial) => {
            return Err(incompatible(
                "only partly: an enum symbol or union branch of the writer has no counterpart, \
                 and records using it would be dead-lettered"
                    .into(),
            ))
        }
        Err(e) => return Err(incompatible(e.to_string())),
    }
    // A handful of schemas, parsed once at start-up and used for the process's life.
    let writer: &'static Schema = Box::leak(Box::new(writer));
    GenericDatumReader::builder(writer)
        .reader_schema(reader)
        .human_readable(false)
        .build()
        .map_err(|e| SchemaError::Invalid(e.to_string()))
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

    #[test]
    fn identity_messages_round_trip_with_a_stitched_touchpoint() {
        let c = codec();
        let mut stitched = Vec::new();
        c.encode_touchpoint(&tp(), &mut stitched).expect("encode");
        let m = IdentityMessage {
            journey: "retail".into(),
            group: "g".into(),
            kind: IdentityMessageKind::Stitched,
            anonymous_id: None,
            customer_id: Some("c".into()),
            time: None,
            watermark: Some(-5),
            partition: Some(3),
            idle: true,
            stitched: Some(stitched),
        };
        let mut buf = Vec::new();
        c.encode_identity(&m, &mut buf).expect("encode");
        let back = c.decode_identity(&buf).expect("decode");
        assert_eq!(back, m);
        let inner = back.stitched.expect("stitched");
        assert_eq!(c.decode_touchpoint(&inner).expect("decode"), tp());
        assert!(c.decode_touchpoint(&buf).is_err(), "not a touchpoint");
    }

    #[test]
    fn aggregates_round_trip_with_their_cells() {
        let c = codec();
        let m = AggregatesMessage {
            journey: "retail".into(),
            group: "g".into(),
            kind: AggregatesKind::Partial,
            partition: 2,
            partitions: 4,
            seq: 17,
            batch_id: -3,
            chunk: 1,
            chunks: 2,
            watermark: None,
            touchpoints_watermark: Some(1_793_577_660_000),
            idle: false,
            minutes: vec![MinuteCell {
                minute: 1_793_577_600_000,
                stage: "awareness".into(),
                touchpoint: "ad_impression".into(),
                channel: "web".into(),
                segment: "new".into(),
                counts: Counts {
                    nps_detractors: -1,
                    csat_n: 2,
                    csat_sum: 7,
                    touchpoints: 3,
                    stage_open: -1,
                    ..Counts::default()
                },
            }],
            steps: vec![StepCell {
                minute: 1_793_577_600_000,
                step: "checkout".into(),
                stage: "conversion".into(),
                touchpoint: "checkout_started".into(),
                channel: "app".into(),
                segment: "unknown".into(),
                counts: StepCounts {
                    starts: 1,
                    conversions: 1,
                    convert_ms_sum: 90_000,
                    dropoffs: 0,
                    open: -1,
                    within_1m: 0,
                    within_2m: 1,
                    within_5m: 1,
                    within_10m: 1,
                },
            }],
            // Claims and the last link's end as the bits of unsigned numbers.
            claim: (9u64 << 32 | 0xffff_0001) as i64,
            chain: vec![ClaimLink {
                claim: (9u64 << 32 | 0xffff_0001) as i64,
                from: 12,
                until: u64::MAX as i64,
            }],
        };
        let mut buf = Vec::new();
        c.encode_aggregates(&m, &mut buf).expect("encode");
        assert_eq!(c.decode_aggregates(&buf).expect("decode"), m);
        assert!(c.decode_identity(&buf).is_err(), "not an identity message");
        // Written with names borrowed, as the journey service sends them: the same bytes.
        let borrowed = AggregatesMessage {
            minutes: m
                .minutes
                .iter()
                .map(|c| MinuteCell {
                    minute: c.minute,
                    stage: c.stage.as_str(),
                    touchpoint: c.touchpoint.as_str(),
                    channel: c.channel.as_str(),
                    segment: c.segment.as_str(),
                    counts: c.counts,
                })
                .collect(),
            steps: m
                .steps
                .iter()
                .map(|c| StepCell {
                    minute: c.minute,
                    step: c.step.as_str(),
                    stage: c.stage.as_str(),
                    touchpoint: c.touchpoint.as_str(),
                    channel: c.channel.as_str(),
                    segment: c.segment.as_str(),
                    counts: c.counts,
                })
                .collect(),
            journey: m.journey.clone(),
            group: m.group.clone(),
            kind: m.kind,
            partition: m.partition,
            partitions: m.partitions,
            seq: m.seq,
            batch_id: m.batch_id,
            chunk: m.chunk,
            chunks: m.chunks,
            watermark: m.watermark,
            touchpoints_watermark: m.touchpoints_watermark,
            idle: m.idle,
            claim: m.claim,
            chain: m.chain.clone(),
        };
        let mut again = Vec::new();
        c.encode_aggregates(&borrowed, &mut again).expect("encode");
        assert_eq!(again, buf);
    }

    #[test]
    fn alerts_round_trip() {
        let c = codec();
        let m = AlertMessage {
            id: "retail/step0/29905082".into(),
            revision: 2,
            state: AlertState::Resolved,
            kind: AlertKind::StepDrop,
            journey: "retail".into(),
            group: "cxstream-journey".into(),
            subject: "checkout".into(),
            metric: None,
            touchpoint: None,
            slice: "channel=app".into(),
            firing: vec![],
            window_start: 1_794_304_920_000,
            window_end: 1_794_309_120_000,
            observed: 0.21,
            baseline: 0.55,
            n: 310.0,
            significance: 3.2e-8,
            severity: Severity::Critical,
            fired_at: 1_794_305_280_000,
            changed_at: 1_794_309_120_000,
            resolved_at: Some(1_794_309_120_000),
        };
        let mut buf = Vec::new();
        c.encode_alert(&m, &mut buf).expect("encode");
        assert_eq!(c.decode_alert(&buf).expect("decode"), m);
    }

    /// Header bytes of the shipped schemas as fastavro 1.13 computes them (little-endian,
    /// as in a single-object header):
    /// `python3 -c 'import json,fastavro.schema as s; print(s.fingerprint(
    ///     s.to_parsing_canonical_form(json.load(open("schemas/avro/touchpoint.avsc"))),
    ///     "CRC-64-AVRO"))'`
    const FASTAVRO: [(RecordType, &str); 3] = [
        (RecordType::Touchpoint, "b7654fa06f31c558"),
        (RecordType::SurveyAnswer, "83a98be0c7502bf4"),
        (RecordType::Alert, "bb320932304c3b8e"),
    ];

    fn hex(fp: u64) -> String {
        fp.to_le_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// `value` single-object encoded with an older writer schema, as its producers wrote it.
    fn written_with(schema: &'static str, value: &impl Serialize) -> Vec<u8> {
        let json: serde_json::Value = serde_json::from_str(schema).expect("json");
        let writer = GenericDatumWriter::builder(parse(schema))
            .human_readable(false)
            .build()
            .expect("writer");
        let mut buf = MAGIC.to_vec();
        buf.extend_from_slice(&canonical::fingerprint(&json).to_le_bytes());
        writer.write_ser(&mut buf, value).expect("encode");
        buf
    }

    /// A committed record as written before it said how far touchpoints are final.
    #[test]
    fn aggregates_of_the_first_schema_still_decode() {
        #[derive(Serialize)]
        #[serde(rename = "AggregatesMessage")]
        struct V1 {
            journey: String,
            group: String,
            kind: AggregatesKind,
            partition: i32,
            partitions: i32,
            seq: i64,
            batch_id: i64,
            chunk: i32,
            chunks: i32,
            watermark: Option<i64>,
            idle: bool,
            minutes: Vec<MinuteCell>,
            steps: Vec<StepCell>,
        }
        let v1 = V1 {
            journey: "retail".into(),
            group: "cxstream-journey".into(),
            kind: AggregatesKind::Committed,
            partition: 3,
            partitions: 4,
            seq: 17,
            batch_id: -5,
            chunk: 0,
            chunks: 0,
            watermark: Some(1_794_309_120_000),
            idle: false,
            minutes: Vec::new(),
            steps: Vec::new(),
        };
        let buf = written_with(AGGREGATES_SCHEMA_V1, &v1);
        let m = codec().decode_aggregates(&buf).expect("decode");
        assert_eq!(m.touchpoints_watermark, None);
        assert_eq!((m.seq, m.watermark), (17, Some(1_794_309_120_000)));
    }

    /// A partial as written before records named their claims.
    #[test]
    fn aggregates_of_the_second_schema_still_decode() {
        #[derive(Serialize)]
        #[serde(rename = "AggregatesMessage")]
        struct V2 {
            journey: String,
            group: String,
            kind: AggregatesKind,
            partition: i32,
            partitions: i32,
            seq: i64,
            batch_id: i64,
            chunk: i32,
            chunks: i32,
            watermark: Option<i64>,
            touchpoints_watermark: Option<i64>,
            idle: bool,
            minutes: Vec<MinuteCell>,
            steps: Vec<StepCell>,
        }
        let v2 = V2 {
            journey: "retail".into(),
            group: "cxstream-journey".into(),
            kind: AggregatesKind::Partial,
            partition: 1,
            partitions: 4,
            seq: 3,
            batch_id: 77,
            chunk: 0,
            chunks: 1,
            watermark: None,
            touchpoints_watermark: None,
            idle: false,
            minutes: Vec::new(),
            steps: Vec::new(),
        };
        let buf = written_with(AGGREGATES_SCHEMA_V2, &v2);
        let m = codec().decode_aggregates(&buf).expect("decode");
        assert_eq!((m.seq, m.batch_id, m.claim), (3, 77, 0));
        assert!(m.chain.is_empty());
    }

    /// An alert as written before score drops named their metric and touchpoint.
    #[test]
    fn alerts_of_the_first_schema_still_decode() {
        #[derive(Serialize)]
        #[serde(rename = "Alert")]
        struct V1 {
            id: String,
            revision: i32,
            state: AlertState,
            kind: AlertKind,
            journey: String,
            group: String,
            subject: String,
            slice: String,
            firing: Vec<String>,
            window_start: i64,
            window_end: i64,
            observed: f64,
            baseline: f64,
            n: f64,
            significance: f64,
            severity: Severity,
            fired_at: i64,
            changed_at: i64,
            resolved_at: Option<i64>,
        }
        let v1 = V1 {
            id: "retail/score_drop:advocacy/29905082".into(),
            revision: 0,
            state: AlertState::Firing,
            kind: AlertKind::ScoreDrop,
            journey: "retail".into(),
            group: "cxstream-journey".into(),
            subject: "advocacy".into(),
            slice: "all".into(),
            firing: vec!["all".into()],
            window_start: 1_794_304_920_000,
            window_end: 1_794_309_120_000,
            observed: 12.5,
            baseline: 31.0,
            n: 410.0,
            significance: 1e-6,
            severity: Severity::Warning,
            fired_at: 1_794_309_120_000,
            changed_at: 1_794_309_120_000,
            resolved_at: None,
        };
        let buf = written_with(ALERT_SCHEMA_V1, &v1);
        let m = codec().decode_alert(&buf).expect("decode");
        assert_eq!((m.metric, m.touchpoint), (None, None));
        assert_eq!((m.subject.as_str(), m.observed), ("advocacy", 12.5));
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

    /// cxstream's touchpoint schema as a producer evolved it: a new optional field, the
    /// fields in another order.
    fn touchpoint_v2() -> String {
        let mut json: serde_json::Value = serde_json::from_str(TOUCHPOINT_SCHEMA).unwrap();
        let fields = json["fields"].as_array_mut().unwrap();
        fields.reverse();
        fields.push(serde_json::json!(
            {"name": "device", "type": ["null", "string"], "default": null}
        ));
        json.to_string()
    }

    /// `tp()` written by a producer with `writer` under Confluent schema id `id`.
    fn confluent_bytes(writer: &str, id: u32) -> Vec<u8> {
        confluent_datum(writer, id, &tp())
    }

    fn confluent_datum(writer: &str, id: u32, ev: &TouchpointEvent) -> Vec<u8> {
        use apache_avro::types::Value;
        let schema = Schema::parse_str(writer).unwrap();
        let Value::Record(mut fields) = apache_avro::to_value(ev.clone()).unwrap() else {
            panic!("a record")
        };
        for (name, v) in &mut fields {
            if name == "event_time" {
                let Value::Long(ms) = v else { panic!("a long") };
                *v = Value::TimestampMillis(*ms);
            }
        }
        fields.push((
            "device".into(),
            Value::Union(1, Box::new(Value::String("ios".into()))),
        ));
        let mut out = vec![0];
        out.extend_from_slice(&id.to_be_bytes());
        let writer = GenericDatumWriter::builder(&schema).build().unwrap();
        out.extend(writer.write_value_to_vec(Value::Record(fields)).unwrap());
        out
    }

    fn confluent(id: u32, record: RecordType, text: String) -> WriterSchema {
        WriterSchema { id, record, text }
    }

    #[test]
    fn confluent_framed_records_decode_through_their_writer_schema() {
        let c = codec()
            .with_confluent([confluent(7, RecordType::Touchpoint, touchpoint_v2())])
            .expect("v2 is readable as v1");
        let bytes = confluent_bytes(&touchpoint_v2(), 7);
        assert_eq!(c.decode_touchpoint(&bytes).expect("decode"), tp());
        // Single-object records still decode beside them.
        let mut buf = Vec::new();
        c.encode_touchpoint(&tp(), &mut buf).unwrap();
        assert_eq!(c.decode_touchpoint(&buf).expect("decode"), tp());
        let other_id = confluent_bytes(&touchpoint_v2(), 8);
        assert_eq!(
            c.decode_touchpoint(&other_id).unwrap_err().kind(),
            "unknown_schema_id"
        );
        assert_eq!(c.decode_answer(&bytes).unwrap_err().kind(), "wrong_schema");
        // Cut anywhere, a record is refused, never read short.
        for cut in CONFLUENT_HEADER_LEN..bytes.len() {
            assert_eq!(
                c.decode_touchpoint(&bytes[..cut]).unwrap_err().kind(),
                "malformed",
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn logical_types_over_the_same_bytes_are_read_and_other_units_refused() {
        // A producer whose event ids are uuid strings: read as the strings they are.
        let uuid = touchpoint_v2().replace(
            r#""name":"event_id","type":"string""#,
            r#""name":"event_id","type":{"type":"string","logicalType":"uuid"}"#,
        );
        assert_ne!(uuid, touchpoint_v2(), "the field was found");
        let c = codec()
            .with_confluent([confluent(4, RecordType::Touchpoint, uuid.clone())])
            .expect("a uuid string is a string");
        let mut ev = tp();
        ev.event_id = "5f0c7a3e-4b1d-4c6e-9a51-2d8f6b7e9c10".into();
        // The annotation does not change the bytes.
        let bytes = confluent_datum(&touchpoint_v2(), 4, &ev);
        assert_eq!(c.decode_touchpoint(&bytes).expect("decode"), ev);
        // Microseconds where cxstream reads milliseconds: refused when configured.
        let micros = touchpoint_v2().replace("timestamp-millis", "timestamp-micros");
        let (_, e) = codec()
            .with_confluent([confluent(5, RecordType::Touchpoint, micros)])
            .err()
            .expect("other units");
        assert!(
            e.to_string().contains("`event_time` is timestamp-micros"),
            "{e}"
        );
        // Deeper: a map whose values are uuid strings reads as cxstream's map of strings.
        let values = touchpoint_v2().replace(
            r#""type":"map","values":"string""#,
            r#""type":"map","values":{"type":"string","logicalType":"uuid"}"#,
        );
        assert_ne!(values, touchpoint_v2(), "the map was found");
        let c = codec()
            .with_confluent([confluent(8, RecordType::Touchpoint, values)])
            .expect("uuid values are strings");
        let bytes = confluent_datum(&touchpoint_v2(), 8, &tp());
        assert_eq!(c.decode_touchpoint(&bytes).expect("decode"), tp());
        // A metric cxstream does not know: only partly readable, refused.
        let more = SURVEY_ANSWER_SCHEMA.replace(r#""CES""#, r#""CES", "CSI""#);
        assert_ne!(more, SURVEY_ANSWER_SCHEMA);
        let (_, e) = codec()
            .with_confluent([confluent(6, RecordType::SurveyAnswer, more)])
            .err()
            .expect("an enum symbol cxstream lacks");
        assert!(e.to_string().contains("only partly"), "{e}");
    }

    #[test]
    fn writer_schemas_cxstream_cannot_read_are_refused_when_configured() {
        let renamed = TOUCHPOINT_SCHEMA.replace("\"touchpoint\"", "\"touch_point\"");
        let (id, e) = codec()
            .with_confluent([confluent(3, RecordType::Touchpoint, renamed)])
            .err()
            .expect("a required field is missing");
        assert_eq!(id, 3);
        assert!(
            e.to_string()
                .starts_with("cannot be read as cxstream's touchpoint schema"),
            "{e}"
        );
        let (_, e) = codec()
            .with_confluent([confluent(3, RecordType::Touchpoint, "{".into())])
            .err()
            .expect("not JSON");
        assert!(matches!(e, SchemaError::Invalid(_)), "{e}");
        let twice = [
            confluent(1, RecordType::Touchpoint, TOUCHPOINT_SCHEMA.into()),
            confluent(1, RecordType::SurveyAnswer, SURVEY_ANSWER_SCHEMA.into()),
        ];
        assert!(matches!(
            codec().with_confluent(twice).err(),
            Some((1, SchemaError::DuplicateId(1)))
        ));
    }
}
