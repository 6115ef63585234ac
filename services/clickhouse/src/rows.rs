//! Rows as written to ClickHouse (RowBinary, field order = column order of the DDL in
//! `schemas/clickhouse/`), and their construction from the core's batch output.

use cxstream_core::journey::{Attribution, Context, StageOutcome};
use cxstream_core::journey_map::OFF_MAP;
use cxstream_core::metrics::StepCounts;
use cxstream_core::processor::{
    AggKey, AnswerFact, EntryFact, RefusedEvent, RefusedPayload, StepFact, StepKey, TouchpointFact,
    MINUTE_MS,
};
use cxstream_core::{Counts, Input, JourneyMap, Metric, Refusal};
use serde::{Deserialize, Serialize};

#[derive(Debug, clickhouse::Row, Serialize)]
pub struct TouchpointRow<'a> {
    pub event_id: &'a str,
    pub customer_id: &'a str,
    pub anonymous_id: &'a str,
    pub event_time: u32,
    pub event_time_ms: i64,
    pub journey: &'a str,
    pub touchpoint: &'a str,
    pub channel: &'a str,
    pub stage: &'a str,
    pub stage_entered: u8,
    pub segment: &'a str,
    pub outcome: &'a str,
    pub attribute_keys: Vec<&'a str>,
    pub attribute_values: Vec<&'a str>,
    pub source_partition: u16,
    pub source_offset: i64,
    pub journey_seq: u32,
    pub off_map: u8,
}

#[derive(Debug, clickhouse::Row, Serialize)]
pub struct AnswerRow<'a> {
    pub response_id: &'a str,
    pub customer_id: &'a str,
    pub answer_time: u32,
    pub answer_time_ms: i64,
    /// Enum8: NPS = 1, CSAT = 2, CES = 3.
    pub metric: i8,
    pub score: i8,
    pub rated_key: &'a str,
    pub touchpoint_event_id: &'a str,
    pub journey: &'a str,
    pub stage: &'a str,
    pub touchpoint: &'a str,
    pub channel: &'a str,
    pub segment: &'a str,
    /// Enum8: named = 1, latest = 2, none = 3.
    pub attribution: i8,
    pub answer_channel: &'a str,
    pub comment: &'a str,
    pub source_partition: u16,
    pub source_offset: i64,
}

/// The case of a respondent's slot (the answer that counts): `is_case` = 1 when it is a
/// detractor's, with its owner and follow-up deadline by the map's `cases:` rules.
#[derive(Debug, clickhouse::Row, Serialize)]
pub struct CaseRow<'a> {
    pub journey: &'a str,
    pub customer_id: &'a str,
    pub rated_key: &'a str,
    /// Enum8: NPS = 1, CSAT = 2, CES = 3.
    pub metric: i8,
    pub response_id: &'a str,
    pub answer_time: u32,
    pub answer_time_ms: i64,
    pub score: i8,
    pub is_case: u8,
    pub owner: &'a str,
    pub due: u32,
    pub due_ms: i64,
    pub stage: &'a str,
    pub touchpoint: &'a str,
    pub channel: &'a str,
    pub segment: &'a str,
    pub touchpoint_event_id: &'a str,
    pub comment: &'a str,
    pub source_partition: u16,
    pub source_offset: i64,
}

impl<'a> CaseRow<'a> {
    pub fn new(map: &'a JourneyMap, f: &'a AnswerFact, partition: u16) -> Self {
        let answer = AnswerRow::new(map, f, partition);
        let rules = &map.cases;
        let due_ms = f.time.saturating_add(rules.follow_up_ms);
        CaseRow {
            journey: answer.journey,
            customer_id: answer.customer_id,
            rated_key: answer.rated_key,
            metric: answer.metric,
            response_id: answer.response_id,
            answer_time: answer.answer_time,
            answer_time_ms: answer.answer_time_ms,
            score: answer.score,
            is_case: u8::from(rules.is_detractor(f.metric, i32::from(f.score))),
            owner: rules.owner(f.context.as_ref()),
            due: secs(due_ms),
            due_ms,
            stage: answer.stage,
            touchpoint: answer.touchpoint,
            channel: answer.channel,
            segment: answer.segment,
            touchpoint_event_id: answer.touchpoint_event_id,
            comment: answer.comment,
            source_partition: partition,
            source_offset: f.source_offset,
        }
    }
}

#[derive(Debug, Clone, clickhouse::Row, Serialize, Deserialize, PartialEq, Eq)]
pub struct MinuteRow {
    pub minute: u32,
    pub journey: String,
    pub stage: String,
    pub touchpoint: String,
    pub channel: String,
    pub segment: String,
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
    pub stage_conversions: i64,
    pub convert_ms_sum: i64,
    pub stage_dropoffs: i64,
    pub stage_open: i64,
    pub source_partition: u16,
    pub batch_seq: u64,
    pub batch_attempt: u64,
}

/// One cell of `steps_minute`.
#[derive(Debug, Clone, clickhouse::Row, Serialize)]
pub struct StepMinuteRow<'a> {
    pub minute: u32,
    pub journey: &'a str,
    pub step: &'a str,
    pub stage: &'a str,
    pub touchpoint: &'a str,
    pub channel: &'a str,
    pub segment: &'a str,
    pub starts: i64,
    pub conversions: i64,
    pub convert_ms_sum: i64,
    pub dropoffs: i64,
    pub open_attempts: i64,
    pub source_partition: u16,
    pub batch_seq: u64,
    pub batch_attempt: u64,
}

impl<'a> StepMinuteRow<'a> {
    pub fn new(
        map: &'a JourneyMap,
        key: &StepKey,
        c: &StepCounts,
        partition: u16,
        seq: u64,
        attempt: u64,
    ) -> Self {
        let d = Context::names(Some(key.context.into()), map);
        StepMinuteRow {
            minute: secs(key.minute * MINUTE_MS),
            journey: &map.name,
            step: map.step_name(key.step),
            stage: d.stage,
            touchpoint: d.touchpoint,
            channel: d.channel,
            segment: d.segment,
            starts: c.starts,
            conversions: c.conversions,
            convert_ms_sum: c.convert_ms_sum,
            dropoffs: c.dropoffs,
            open_attempts: c.open,
            source_partition: partition,
            batch_seq: seq,
            batch_attempt: attempt,
        }
    }
}

/// One stage entry in `stage_entries`.
#[derive(Debug, clickhouse::Row, Serialize)]
pub struct EntryRow<'a> {
    pub customer_id: &'a str,
    pub journey: &'a str,
    pub event_id: &'a str,
    pub entry_time: u32,
    pub entry_time_ms: i64,
    pub entry_hash: u64,
    pub stage: &'a str,
    pub touchpoint: &'a str,
    pub channel: &'a str,
    pub segment: &'a str,
    pub journey_seq: u32,
    /// Enum8: none = 0, open = 1, converted = 2, dropped = 3.
    pub outcome: i8,
    pub deadline_ms: i64,
    pub convert_ms: i64,
    pub converted_channel: &'a str,
    pub withdrawn: u8,
    pub source_partition: u16,
    pub source_offset: i64,
}

impl<'a> EntryRow<'a> {
    pub fn new(map: &'a JourneyMap, f: &'a EntryFact, partition: u16) -> Self {
        let d = Context::names(Some(f.context), map);
        let o = &f.origin;
        let budget = map
            .stages
            .get(usize::from(f.context.stage))
            .map_or(0, |s| s.budget_ms);
        let (outcome, convert_ms, converted_channel) = outcome_columns(map, f.outcome);
        EntryRow {
            customer_id: &f.customer,
            journey: &map.name,
            event_id: o.event_id.as_str(),
            entry_time: secs(o.time),
            entry_time_ms: o.time,
            entry_hash: o.id,
            stage: d.stage,
            touchpoint: d.touchpoint,
            channel: d.channel,
            segment: d.segment,
            journey_seq: f.journey_seq,
            outcome,
            deadline_ms: if f.outcome.is_some() {
                o.time.saturating_add(budget)
            } else {
                0
            },
            convert_ms,
            converted_channel,
            withdrawn: u8::from(f.withdrawn),
            source_partition: partition,
            source_offset: o.source_offset,
        }
    }
}

/// (outcome Enum8, convert_ms, converted_channel) of a reported outcome.
fn outcome_columns(map: &JourneyMap, outcome: Option<StageOutcome>) -> (i8, i64, &str) {
    match outcome {
        None => (0, 0, ""),
        Some(StageOutcome::Open { .. }) => (1, 0, ""),
        Some(StageOutcome::Converted { after_ms, channel }) => {
            (2, after_ms, map.channel_name(channel))
        }
        Some(StageOutcome::Dropped { .. }) => (3, 0, ""),
    }
}

/// One step attempt in `step_attempts`.
#[derive(Debug, clickhouse::Row, Serialize)]
pub struct StepAttemptRow<'a> {
    pub customer_id: &'a str,
    pub journey: &'a str,
    pub step: &'a str,
    pub start_event_id: &'a str,
    pub start_time: u32,
    pub start_time_ms: i64,
    pub stage: &'a str,
    pub touchpoint: &'a str,
    pub channel: &'a str,
    pub segment: &'a str,
    /// Enum8: open = 1, converted = 2, dropped = 3.
    pub outcome: i8,
    pub deadline_ms: i64,
    pub convert_ms: i64,
    pub converted_channel: &'a str,
    pub withdrawn: u8,
    pub source_partition: u16,
    pub source_offset: i64,
}

impl<'a> StepAttemptRow<'a> {
    pub fn new(map: &'a JourneyMap, f: &'a StepFact, partition: u16) -> Self {
        let d = Context::names(Some(f.context), map);
        let o = &f.origin;
        let budget = map
            .steps
            .get(usize::from(f.step))
            .map_or(0, |s| s.budget_ms);
        let (outcome, convert_ms, converted_channel) = outcome_columns(map, Some(f.outcome));
        StepAttemptRow {
            customer_id: &f.customer,
            journey: &map.name,
            step: map.step_name(f.step),
            start_event_id: o.event_id.as_str(),
            start_time: secs(o.time),
            start_time_ms: o.time,
            stage: d.stage,
            touchpoint: d.touchpoint,
            channel: d.channel,
            segment: d.segment,
            outcome,
            deadline_ms: o.time.saturating_add(budget),
            convert_ms,
            converted_channel,
            withdrawn: u8::from(f.withdrawn),
            source_partition: partition,
            source_offset: o.source_offset,
        }
    }
}

/// A step of the journey map, as `journey_steps` keeps it.
#[derive(Debug, Clone, clickhouse::Row, Serialize)]
pub struct JourneyStepRow {
    pub journey: String,
    pub step: String,
    pub step_index: u8,
    pub from_touchpoints: Vec<String>,
    pub to_touchpoints: Vec<String>,
    pub budget_ms: i64,
    pub target_conversion: f64,
    pub updated_at: u32,
}

/// A stage of the journey map, as `journey_stages` keeps it.
#[derive(Debug, Clone, clickhouse::Row, Serialize)]
pub struct StageRow {
    pub journey: String,
    pub stage: String,
    pub stage_index: u8,
    pub budget_ms: i64,
    pub target_conversion: f64,
    pub has_outcome: u8,
    pub updated_at: u32,
}

#[derive(Debug, Clone, clickhouse::Row, Serialize, Deserialize)]
pub struct BatchRow {
    pub journey: String,
    pub source_partition: u16,
    pub batch_seq: u64,
    pub batch_attempt: u64,
    pub touchpoints_next_offset: i64,
    pub answers_next_offset: i64,
    pub watermark_ms: i64,
    pub records: u64,
    pub committed_at: u32,
    /// High marks of the inputs (`i64::MIN`: not seen yet), for resuming the event clock.
    pub touchpoints_high_ms: i64,
    pub answers_high_ms: i64,
    /// Next offset of the identities topic (-2: not read yet).
    pub identities_next_offset: i64,
    /// The id its per-minute partials went to the aggregates topic under (0: none).
    pub aggregates_id: u64,
    /// The dead-letter topic's end offset per partition when the batch was committed, or a
    /// lower bound of it (empty: not known).
    pub dead_letters_from: Vec<i64>,
    /// Records of the erasures topic applied before the batch was taken.
    pub erasures_seen: u64,
    /// The claim of the owner that committed it (`cxstream_core::claims`).
    pub claim: u64,
}

#[derive(Debug, clickhouse::Row, Serialize)]
pub struct RefusedRow<'a> {
    pub journey: &'a str,
    /// Enum8: touchpoints = 1, answers = 2.
    pub input: i8,
    /// Enum8: late = 1, future = 2.
    pub reason: i8,
    pub id: &'a str,
    pub customer_id: &'a str,
    pub event_time: u32,
    pub event_time_ms: i64,
    pub watermark_ms: i64,
    pub payload: String,
    pub source_partition: u16,
    pub source_offset: i64,
}

#[derive(Debug, clickhouse::Row, Serialize, Deserialize)]
pub struct StateRow {
    pub journey: String,
    pub source_partition: u16,
    pub customer_id: String,
    pub segment: String,
    #[serde(with = "serde_bytes")]
    pub state: Vec<u8>,
    pub batch_seq: u64,
    pub batch_attempt: u64,
}

/// A DateTime column's seconds. Event times are validated to fit (1970 to 2106); a time
/// derived from one (a deadline, a follow-up) past 2106 saturates there instead of
/// wrapping to 1970.
fn secs(ms: i64) -> u32 {
    u32::try_from(ms.div_euclid(1000).max(0)).unwrap_or(u32::MAX)
}

impl<'a> TouchpointRow<'a> {
    pub fn new(map: &'a JourneyMap, f: &'a TouchpointFact, partition: u16) -> Self {
        let d = Context::names(Some(f.context), map);
        let e = f.event.fields();
        TouchpointRow {
            event_id: e.event_id,
            customer_id: e.customer_id(&f.customer),
            anonymous_id: e.anonymous_id.unwrap_or(""),
            event_time: secs(f.time),
            event_time_ms: f.time,
            journey: &map.name,
            // An off-map touchpoint keeps its own name; the map's is the event's otherwise.
            touchpoint: e.off_map.unwrap_or(d.touchpoint),
            channel: d.channel,
            stage: d.stage,
            stage_entered: u8::from(f.stage_entered),
            segment: d.segment,
            outcome: e.outcome.unwrap_or(""),
            attribute_keys: e.attributes.iter().map(|(k, _)| *k).collect(),
            attribute_values: e.attributes.iter().map(|(_, v)| *v).collect(),
            source_partition: partition,
            source_offset: f.source_offset,
            journey_seq: f.journey_seq,
            off_map: u8::from(f.context.touchpoint == OFF_MAP),
        }
    }
}

impl<'a> AnswerRow<'a> {
    pub fn new(map: &'a JourneyMap, f: &'a AnswerFact, partition: u16) -> Self {
        let d = Context::names(f.context, map);
        let a = f.answer.fields();
        let named = a.touchpoint_event_id;
        AnswerRow {
            response_id: a.response_id,
            customer_id: a.customer_id(&f.customer),
            answer_time: secs(f.time),
            answer_time_ms: f.time,
            metric: match f.metric {
                Metric::Nps => 1,
                Metric::Csat => 2,
                Metric::Ces => 3,
            },
            score: f.score,
            rated_key: named.unwrap_or(a.response_id),
            touchpoint_event_id: named.unwrap_or(""),
            journey: &map.name,
            stage: d.stage,
            touchpoint: d.touchpoint,
            channel: d.channel,
            segment: d.segment,
            attribution: match f.attribution {
                Attribution::Named => 1,
                Attribution::Latest => 2,
                Attribution::None => 3,
            },
            answer_channel: a.channel.unwrap_or(""),
            comment: a.comment.unwrap_or(""),
            source_partition: partition,
            source_offset: f.source_offset,
        }
    }
}

impl<'a> RefusedRow<'a> {
    pub fn new(map: &'a JourneyMap, r: &'a RefusedEvent, partition: u16) -> Self {
        let (id, customer, time, payload) = match &r.event {
            RefusedPayload::Touchpoint(t) => (
                t.event_id.as_str(),
                t.customer_id.as_deref(),
                t.event_time,
                serde_json::to_string(&**t),
            ),
            RefusedPayload::Answer(a) => (
                a.response_id.as_str(),
                a.customer_id.as_deref(),
                a.answer_time,
                serde_json::to_string(&**a),
            ),
        };
        RefusedRow {
            journey: &map.name,
            input: match r.input() {
                Input::Touchpoints => 1,
                Input::Answers => 2,
            },
            reason: match r.reason {
                Refusal::Late => 1,
                Refusal::Future => 2,
            },
            id,
            customer_id: customer.unwrap_or(""),
            event_time: secs(time),
            event_time_ms: time,
            watermark_ms: r.watermark_ms.unwrap_or(i64::MIN),
            // Serializing plain strings, numbers and maps does not fail.
            payload: payload.unwrap_or_default(),
            source_partition: partition,
            source_offset: r.source_offset,
        }
    }
}

impl MinuteRow {
    pub fn new(
        map: &JourneyMap,
        key: &AggKey,
        c: &Counts,
        partition: u16,
        seq: u64,
        attempt: u64,
    ) -> Self {
        let d = Context::names(key.context.map(Context::from), map);
        MinuteRow {
            minute: secs(key.minute * MINUTE_MS),
            journey: map.name.clone(),
            stage: d.stage.to_string(),
            touchpoint: d.touchpoint.to_string(),
            channel: d.channel.to_string(),
            segment: d.segment.to_string(),
            nps_promoters: c.nps_promoters,
            nps_passives: c.nps_passives,
            nps_detractors: c.nps_detractors,
            csat_n: c.csat_n,
            csat_top2: c.csat_top2,
            csat_sum: c.csat_sum,
            ces_n: c.ces_n,
            ces_agree: c.ces_agree,
            ces_sum: c.ces_sum,
            stage_entries: c.stage_entries,
            touchpoints: c.touchpoints,
            stage_conversions: c.stage_conversions,
            convert_ms_sum: c.convert_ms_sum,
            stage_dropoffs: c.stage_dropoffs,
            stage_open: c.stage_open,
            source_partition: partition,
            batch_seq: seq,
            batch_attempt: attempt,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::secs;

    #[test]
    fn times_past_what_a_datetime_holds_saturate_instead_of_wrapping() {
        assert_eq!(secs(1_793_577_600_123), 1_793_577_600);
        assert_eq!(secs(4_294_967_295_999), u32::MAX);
        // A follow-up deadline two days after the last representable second.
        assert_eq!(secs(4_294_967_295_999 + 2 * 86_400_000), u32::MAX);
        assert_eq!(secs(-1), 0);
    }
}
