//! The Customer Journey Map as data: ordered stages, the touchpoints that put a customer
//! into each stage, per-stage time budgets and conversion targets, and steps: short,
//! budgeted hops between touchpoints (e.g. checkout started → purchase completed in 30 min)
//! that show a broken step within minutes where a stage budget takes days.
//!
//! Loading validates the map; every error names the file, the line and what to fix, because
//! the people who edit these files are CX analysts, not the authors of this crate.

use std::collections::HashMap;
use std::fmt;

use serde::Deserialize;

/// Index of a stage in [`JourneyMap::stages`]; stage order is journey order.
pub type StageIdx = u8;
/// Index of a touchpoint in [`JourneyMap::touchpoints`].
pub type TouchpointIdx = u16;
/// Index of a step in [`JourneyMap::steps`].
pub type StepIdx = u8;
/// Index of a channel in [`JourneyMap::channels`].
pub type ChannelIdx = u8;
/// Index of a customer segment in [`JourneyMap::segments`]; [`NO_SEGMENT`] when unknown.
pub type SegmentIdx = u8;
/// A customer whose events never named a segment.
pub const NO_SEGMENT: SegmentIdx = SegmentIdx::MAX;
/// A touchpoint the map does not declare (counted off-map, under [`OFF_MAP_NAME`]).
pub const OFF_MAP: TouchpointIdx = TouchpointIdx::MAX;
/// How [`OFF_MAP`] is shown in per-minute counts (facts keep the event's own name).
pub const OFF_MAP_NAME: &str = "(off-map)";
/// No stage: an off-map touchpoint's own, or the context of one outside any journey.
pub const NO_STAGE: StageIdx = StageIdx::MAX;
/// How [`NO_STAGE`] is shown in outputs.
pub const NO_STAGE_NAME: &str = "none";
/// How [`NO_SEGMENT`] is shown in outputs.
pub const NO_SEGMENT_NAME: &str = "unknown";

#[derive(Debug, Clone, PartialEq)]
pub struct Stage {
    pub name: String,
    /// Milliseconds a customer has to reach the next stage before counting as dropped off.
    pub budget_ms: i64,
    /// Expected share (0..=1) of entrants that reach the next stage within the budget.
    pub target_conversion: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Touchpoint {
    pub name: String,
    pub stage: StageIdx,
    /// Channels this touchpoint is expected on; the simulator draws from them.
    pub channels: Vec<ChannelIdx>,
}

/// A step: from any of `from` to any of `to` within `budget_ms`, inside or across stages.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub name: String,
    pub from: Vec<TouchpointIdx>,
    pub to: Vec<TouchpointIdx>,
    pub budget_ms: i64,
    /// Expected share (0..=1) of started steps that reach `to` within the budget.
    pub target_conversion: f64,
}

/// `Default` is an empty map: what a watch read back from a snapshot holds until
/// [`crate::watch::JourneyWatch::resume`] gives it its map.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct JourneyMap {
    pub name: String,
    pub stages: Vec<Stage>,
    pub steps: Vec<Step>,
    pub channels: Vec<String>,
    /// Customer segments; declared so that they stay a bounded set of labels.
    pub segments: Vec<String>,
    pub touchpoints: Vec<Touchpoint>,
    // Looked up for every record: a fast hash, not SipHash (names come from our own map).
    segment_index: Index<SegmentIdx>,
    touchpoint_index: Index<TouchpointIdx>,
    channel_index: Index<ChannelIdx>,
    stage_index: Index<StageIdx>,
    /// Who is a detractor, who owns their cases, and how soon to follow up.
    pub cases: crate::cases::CaseRules,
    /// The alerter's detectors for this journey (`alerts:`; defaults where not set).
    pub alerts: crate::watch::WatchParams,
    /// Stages only the other maps running beside this one declare (see [`JourneyMaps`]).
    stages_elsewhere: Vec<String>,
}

type Index<T> = HashMap<String, T, ahash::RandomState>;

#[derive(Debug, thiserror::Error, PartialEq)]
pub struct MapError {
    pub file: String,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.file, line, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMap {
    journey: String,
    stages: Vec<RawStage>,
    channels: Vec<String>,
    segments: Vec<String>,
    touchpoints: Vec<RawTouchpoint>,
    #[serde(default)]
    steps: Vec<RawStep>,
    #[serde(default)]
    cases: Option<crate::cases::RawCases>,
    #[serde(default)]
    alerts: Option<crate::alert_rules::RawAlerts>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    name: String,
    from: Vec<String>,
    to: Vec<String>,
    budget: String,
    target_conversion: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStage {
    name: String,
    budget: String,
    target_conversion: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTouchpoint {
    name: String,
    stage: String,
    channels: Vec<String>,
}

impl JourneyMap {
    /// Parses and validates a journey map. `file` is only used in error messages.
    pub fn from_yaml(file: &str, text: &str) -> Result<Self, MapError> {
        let err = |line: Option<usize>, message: String| MapError {
            file: file.to_string(),
            line,
            message,
        };
        let raw: RawMap = yaml_serde::from_str(text)
            .map_err(|e| err(e.location().map(|l| l.line()), e.to_string()))?;
        let at = |needle: &str| find_line(text, needle);

        if raw.stages.is_empty() {
            return Err(err(
                at("stages:"),
                "a journey needs at least one stage".into(),
            ));
        }
        if raw.stages.len() > usize::from(StageIdx::MAX) {
            return Err(err(at("stages:"), "too many stages (at most 255)".into()));
        }
        let mut stage_index = Index::default();
        let mut stages = Vec::with_capacity(raw.stages.len());
        for (i, s) in raw.stages.iter().enumerate() {
            let line = at(&format!("name: {}", s.name));
            if stage_index.insert(s.name.clone(), i as StageIdx).is_some() {
                return Err(err(
                    line,
                    format!(
                        "stage `{}` is declared twice; stage names must be unique",
                        s.name
                    ),
                ));
            }
            let budget_ms = parse_duration_ms(&s.budget).map_err(|m| {
                err(
                    at(&format!("budget: {}", s.budget)),
                    format!("stage `{}`: {m}", s.name),
                )
            })?;
            if !(0.0..=1.0).contains(&s.target_conversion) {
                return Err(err(
                    at(&format!("target_conversion: {}", s.target_conversion)),
                    format!(
                        "stage `{}`: target_conversion {} must be a share between 0 and 1 (e.g. 0.35)",
                        s.name, s.target_conversion
                    ),
                ));
            }
            stages.push(Stage {
                name: s.name.clone(),
                budget_ms,
                target_conversion: s.target_conversion,
            });
        }

        let mut channel_index = Index::default();
        for (i, c) in raw.channels.iter().enumerate() {
            if channel_index.insert(c.clone(), i as ChannelIdx).is_some() {
                return Err(err(at(c), format!("channel `{c}` is listed twice")));
            }
        }

        let mut segment_index = Index::default();
        for (i, c) in raw.segments.iter().enumerate() {
            if i >= usize::from(NO_SEGMENT) {
                return Err(err(at(c), "too many segments (at most 254)".into()));
            }
            if c == NO_SEGMENT_NAME || segment_index.insert(c.clone(), i as SegmentIdx).is_some() {
                return Err(err(
                    at(c),
                    format!("segment `{c}` is listed twice or reserved"),
                ));
            }
        }

        let mut touchpoint_index = Index::default();
        let mut touchpoints = Vec::with_capacity(raw.touchpoints.len());
        for t in &raw.touchpoints {
            let line = at(&format!("name: {}", t.name));
            let Some(&stage) = stage_index.get(&t.stage) else {
                return Err(err(
                    line,
                    format!(
                        "touchpoint `{}` names unknown stage `{}`; declared stages are: {}",
                        t.name,
                        t.stage,
                        raw.stages
                            .iter()
                            .map(|s| s.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            };
            let mut channels = Vec::with_capacity(t.channels.len());
            for c in &t.channels {
                let Some(&ci) = channel_index.get(c) else {
                    return Err(err(
                        line,
                        format!("touchpoint `{}` uses channel `{c}`, which is not in `channels:`; add it there or fix the name", t.name),
                    ));
                };
                channels.push(ci);
            }
            if touchpoints.len() >= usize::from(OFF_MAP) {
                return Err(err(line, "too many touchpoints (at most 65534)".into()));
            }
            let idx = touchpoints.len() as TouchpointIdx;
            if touchpoint_index.insert(t.name.clone(), idx).is_some() {
                return Err(err(
                    find_nth_line(text, &format!("name: {}", t.name), 2),
                    format!("touchpoint `{}` is mapped twice; a touchpoint puts a customer into exactly one stage", t.name),
                ));
            }
            touchpoints.push(Touchpoint {
                name: t.name.clone(),
                stage,
                channels,
            });
        }
        let steps = raw
            .steps
            .iter()
            .map(|s| parse_step(s, &touchpoint_index, text).map_err(|(line, m)| err(line, m)))
            .collect::<Result<Vec<_>, _>>()?;
        if steps.len() > usize::from(StepIdx::MAX) {
            return Err(err(
                find_line(text, "steps:"),
                "too many steps (at most 255)".into(),
            ));
        }
        for (i, s) in steps.iter().enumerate() {
            if steps[..i].iter().any(|o| o.name == s.name) {
                return Err(err(
                    step_line(text, &s.name, 2),
                    format!(
                        "step `{}` is declared twice; step names must be unique",
                        s.name
                    ),
                ));
            }
        }
        for (i, s) in stages.iter().enumerate() {
            if !touchpoints.iter().any(|t| usize::from(t.stage) == i) {
                return Err(err(
                    at(&format!("name: {}", s.name)),
                    format!(
                        "stage `{}` has no touchpoint; no customer could ever enter it",
                        s.name
                    ),
                ));
            }
        }
        let cases = match &raw.cases {
            Some(c) => parse_cases(
                c,
                &Names {
                    stages: &stage_index,
                    channels: &channel_index,
                    touchpoints: &touchpoint_index,
                    segments: &segment_index,
                },
                text,
            )
            .map_err(|(line, m)| err(line, m))?,
            None => crate::cases::CaseRules::default(),
        };
        let alerts = match &raw.alerts {
            Some(a) => crate::alert_rules::params(a).map_err(|m| err(at("alerts:"), m))?,
            None => crate::watch::WatchParams::default(),
        };
        Ok(JourneyMap {
            cases,
            alerts,
            name: raw.journey,
            stages,
            steps,
            channels: raw.channels,
            segments: raw.segments,
            segment_index,
            touchpoints,
            touchpoint_index,
            channel_index,
            stage_index,
            stages_elsewhere: Vec::new(),
        })
    }

    pub fn touchpoint(&self, name: &str) -> Option<TouchpointIdx> {
        self.touchpoint_index.get(name).copied()
    }

    pub fn channel(&self, name: &str) -> Option<ChannelIdx> {
        self.channel_index.get(name).copied()
    }

    pub fn segment(&self, name: &str) -> Option<SegmentIdx> {
        self.segment_index.get(name).copied()
    }

    /// The segment [`Self::segment_name`] shows as `name`: one of the map's, or
    /// [`NO_SEGMENT`] for its name of none.
    pub fn segment_named(&self, name: &str) -> Option<SegmentIdx> {
        self.segment(name)
            .or_else(|| (name == NO_SEGMENT_NAME).then_some(NO_SEGMENT))
    }

    pub fn segment_name(&self, idx: SegmentIdx) -> &str {
        self.segments
            .get(usize::from(idx))
            .map_or(NO_SEGMENT_NAME, |s| s.as_str())
    }

    pub fn stage(&self, name: &str) -> Option<StageIdx> {
        self.stage_index.get(name).copied()
    }

    /// Whether `name` is a stage of another map running beside this one: an event that
    /// names it is that map's business, and takes this map's own stage for its touchpoint.
    pub fn is_stage_elsewhere(&self, name: &str) -> bool {
        self.stages_elsewhere.iter().any(|s| s == name)
    }

    /// The stage [`Self::stage_name`] shows as `name`: one of the map's, or [`NO_STAGE`]
    /// for its name of none.
    pub fn stage_named(&self, name: &str) -> Option<StageIdx> {
        self.stage(name)
            .or_else(|| (name == NO_STAGE_NAME).then_some(NO_STAGE))
    }

    pub fn stage_name(&self, idx: StageIdx) -> &str {
        self.stages
            .get(usize::from(idx))
            .map_or(NO_STAGE_NAME, |s| s.name.as_str())
    }

    /// A step's name; empty for an index the map does not have.
    pub fn step_name(&self, idx: StepIdx) -> &str {
        self.steps
            .get(usize::from(idx))
            .map_or("", |s| s.name.as_str())
    }

    pub fn touchpoint_name(&self, idx: TouchpointIdx) -> &str {
        self.touchpoints
            .get(usize::from(idx))
            .map_or(OFF_MAP_NAME, |t| t.name.as_str())
    }

    pub fn channel_name(&self, idx: ChannelIdx) -> &str {
        self.channels
            .get(usize::from(idx))
            .map_or("", |c| c.as_str())
    }

    /// Touchpoints that put a customer into `stage`.
    pub fn touchpoints_of(&self, stage: StageIdx) -> impl Iterator<Item = TouchpointIdx> + '_ {
        self.touchpoints
            .iter()
            .enumerate()
            .filter(move |(_, t)| t.stage == stage)
            .map(|(i, _)| i as TouchpointIdx)
    }
}

/// Journey maps that one journey service measures at once over the same streams. Each is a
/// lens of its own (its journeys, figures and off-map touchpoints), so they need not share
/// touchpoints or stages; channels and segments describe the product systems, not a
/// journey, so every map declares the same ones (a record valid in one is valid in all).
#[derive(Debug, Clone)]
pub struct JourneyMaps(Vec<std::sync::Arc<JourneyMap>>);

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MapSetError {
    #[error("no journey map configured; set journey.maps to at least one file")]
    Empty,
    #[error("two journey maps are both named `{0}`; journey names must be unique")]
    SameName(String),
    #[error(
        "journey maps `{first}` and `{other}` declare different {what} ({detail}); \
         {what} describe the product systems, so every map running together declares the same ones"
    )]
    Differ {
        first: String,
        other: String,
        what: &'static str,
        detail: String,
    },
}

impl JourneyMaps {
    pub fn new(mut maps: Vec<JourneyMap>) -> Result<Self, MapSetError> {
        let Some(first) = maps.first() else {
            return Err(MapSetError::Empty);
        };
        for (i, m) in maps.iter().enumerate() {
            if maps[..i].iter().any(|o| o.name == m.name) {
                return Err(MapSetError::SameName(m.name.clone()));
            }
            for (what, a, b) in [
                ("channels", &first.channels, &m.channels),
                ("segments", &first.segments, &m.segments),
            ] {
                if let Some(detail) = set_difference(&first.name, a, &m.name, b) {
                    return Err(MapSetError::Differ {
                        first: first.name.clone(),
                        other: m.name.clone(),
                        what,
                        detail,
                    });
                }
            }
        }
        let all_stages: Vec<String> = maps
            .iter()
            .flat_map(|m| m.stages.iter().map(|s| s.name.clone()))
            .collect();
        for m in &mut maps {
            let mut elsewhere: Vec<String> = all_stages
                .iter()
                .filter(|s| m.stage(s).is_none())
                .cloned()
                .collect();
            elsewhere.sort();
            elsewhere.dedup();
            m.stages_elsewhere = elsewhere;
        }
        Ok(JourneyMaps(
            maps.into_iter().map(std::sync::Arc::new).collect(),
        ))
    }

    pub fn iter(&self) -> impl Iterator<Item = &std::sync::Arc<JourneyMap>> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The first map configured: the one the simulator's incidents and the demo lead with.
    pub fn first(&self) -> &std::sync::Arc<JourneyMap> {
        &self.0[0]
    }
}

/// What one name list has that the other lacks, if they differ as sets.
fn set_difference(a_name: &str, a: &[String], b_name: &str, b: &[String]) -> Option<String> {
    let only = |x: &[String], y: &[String]| -> Vec<String> {
        x.iter().filter(|v| !y.contains(v)).cloned().collect()
    };
    let (only_a, only_b) = (only(a, b), only(b, a));
    let mut parts = Vec::new();
    if !only_a.is_empty() {
        parts.push(format!("only `{a_name}` has {}", only_a.join(", ")));
    }
    if !only_b.is_empty() {
        parts.push(format!("only `{b_name}` has {}", only_b.join(", ")));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

fn parse_step(
    s: &RawStep,
    touchpoints: &Index<TouchpointIdx>,
    text: &str,
) -> Result<Step, (Option<usize>, String)> {
    let line = step_line(text, &s.name, 1);
    let resolve = |side: &str, names: &[String]| {
        if names.is_empty() {
            return Err((
                line,
                format!("step `{}`: `{side}` lists no touchpoint", s.name),
            ));
        }
        names
            .iter()
            .map(|n| {
                touchpoints.get(n).copied().ok_or_else(|| {
                    (
                        line,
                        format!(
                            "step `{}`: `{side}` names unknown touchpoint `{n}`; use one of `touchpoints:`",
                            s.name
                        ),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let from = resolve("from", &s.from)?;
    let to = resolve("to", &s.to)?;
    if let Some(both) = from.iter().position(|t| to.contains(t)) {
        return Err((
            line,
            format!(
                "step `{}`: touchpoint `{}` is in both `from` and `to`; a step goes from one to another",
                s.name, s.from[both]
            ),
        ));
    }
    let budget_ms =
        parse_duration_ms(&s.budget).map_err(|m| (line, format!("step `{}`: {m}", s.name)))?;
    if !(0.0..=1.0).contains(&s.target_conversion) {
        return Err((
            line,
            format!(
                "step `{}`: target_conversion {} must be a share between 0 and 1 (e.g. 0.7)",
                s.name, s.target_conversion
            ),
        ));
    }
    Ok(Step {
        name: s.name.clone(),
        from,
        to,
        budget_ms,
        target_conversion: s.target_conversion,
    })
}

/// The line of the `nth` step named `name` (under `steps:`, matched exactly so that a step
/// `checkout` is not found at a touchpoint `checkout_started`).
fn step_line(text: &str, name: &str, nth: usize) -> Option<usize> {
    let start = find_line(text, "steps:")?;
    let wanted = format!("name: {name}");
    text.lines()
        .enumerate()
        .skip(start)
        .filter(|(_, l)| l.trim_start().trim_start_matches("- ").trim_end() == wanted)
        .nth(nth.saturating_sub(1))
        .map(|(i, _)| i + 1)
}

/// `30m`, `48h`, `7d` → milliseconds. Negative or unit-less values are refused with a hint.
pub fn parse_duration_ms(text: &str) -> Result<i64, String> {
    let t = text.trim();
    let hint = "write a positive number with a unit: s, m, h or d (e.g. `48h`, `7d`)";
    if t.starts_with('-') {
        return Err(format!("budget `{t}` is negative; {hint}"));
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: i64 = num
        .parse()
        .map_err(|_| format!("budget `{t}` is not a duration; {hint}"))?;
    let unit_ms = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("budget `{t}` has no known unit; {hint}")),
    };
    if n == 0 {
        return Err(format!("budget `{t}` is zero; {hint}"));
    }
    n.checked_mul(unit_ms)
        .ok_or_else(|| format!("budget `{t}` is too large"))
}

/// Milliseconds → the largest unit that divides them (`30m`, `7d`), as budgets are written.
pub fn format_duration_ms(ms: i64) -> String {
    [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1_000, "s"),
    ]
    .into_iter()
    .find(|(unit, _)| ms % unit == 0)
    .map_or_else(
        || format!("{ms}ms"),
        |(unit, name)| format!("{}{name}", ms / unit),
    )
}

/// The map's names, to resolve the names rules give.
struct Names<'a> {
    stages: &'a Index<StageIdx>,
    channels: &'a Index<ChannelIdx>,
    touchpoints: &'a Index<TouchpointIdx>,
    segments: &'a Index<SegmentIdx>,
}

fn parse_cases(
    raw: &crate::cases::RawCases,
    names: &Names<'_>,
    text: &str,
) -> Result<crate::cases::CaseRules, (Option<usize>, String)> {
    let mut rules = crate::cases::CaseRules::default();
    if let Some(t) = &raw.detractor_at_most {
        for (metric, value, range, slot) in [
            ("nps", t.nps, 0..=10, &mut rules.nps_at_most),
            ("csat", t.csat, 1..=5, &mut rules.csat_at_most),
            ("ces", t.ces, 1..=7, &mut rules.ces_at_most),
        ] {
            let Some(v) = value else { continue };
            if !range.contains(&v) {
                return Err((
                    find_line(text, "detractor_at_most"),
                    format!(
                        "cases: detractor_at_most {metric} {v} is not a {metric} score ({}..={})",
                        range.start(),
                        range.end()
                    ),
                ));
            }
            *slot = v;
        }
    }
    if let Some(f) = &raw.follow_up {
        rules.follow_up_ms = parse_duration_ms(f).map_err(|m| {
            (
                find_line(text, "follow_up:"),
                format!("cases: follow_up: {m}"),
            )
        })?;
    }
    if let Some(d) = &raw.default_owner {
        rules.default_owner = d.clone();
    }
    for o in &raw.owners {
        // `owner: X` as a rule's field, not `default_owner: X` or `owner: X-longer`.
        let line = text
            .lines()
            .position(|l| {
                l.split(['{', ',']).any(|part| {
                    let part = part.trim().trim_start_matches("- ").trim_end_matches('}');
                    part.trim() == format!("owner: {}", o.owner)
                })
            })
            .map(|i| i + 1);
        rules.owners.push(crate::cases::OwnerRule {
            stage: resolve(o, line, "stage", &o.stage, names.stages)?,
            channel: resolve(o, line, "channel", &o.channel, names.channels)?,
            touchpoint: resolve(o, line, "touchpoint", &o.touchpoint, names.touchpoints)?,
            segment: resolve(o, line, "segment", &o.segment, names.segments)?,
            owner: o.owner.clone(),
        });
    }
    Ok(rules)
}

/// The index of the `what` an owner rule names, if it names one.
fn resolve<T: Copy>(
    rule: &crate::cases::RawOwner,
    line: Option<usize>,
    what: &str,
    name: &Option<String>,
    index: &Index<T>,
) -> Result<Option<T>, (Option<usize>, String)> {
    let Some(n) = name else { return Ok(None) };
    index.get(n).copied().map(Some).ok_or_else(|| {
        (
            line,
            format!(
                "cases: the rule for owner `{}` names {what} `{n}`, which the map does not declare",
                rule.owner
            ),
        )
    })
}

fn find_line(text: &str, needle: &str) -> Option<usize> {
    find_nth_line(text, needle, 1)
}

fn find_nth_line(text: &str, needle: &str, nth: usize) -> Option<usize> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.contains(needle))
        .nth(nth.saturating_sub(1))
        .map(|(i, _)| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAP: &str = "journey: shop
stages:
  - name: awareness
    budget: 7d
    target_conversion: 0.4
  - name: conversion
    budget: 48h
    target_conversion: 0.3
channels: [web, app]
segments: [new, vip]
touchpoints:
  - name: ad_click
    stage: awareness
    channels: [web]
  - name: purchase
    stage: conversion
    channels: [web, app]
";

    #[test]
    fn loads_a_valid_map() {
        let m = JourneyMap::from_yaml("shop.yaml", MAP).expect("valid");
        assert_eq!(m.stages.len(), 2);
        assert_eq!(m.stages[1].budget_ms, 48 * 3_600_000);
        assert_eq!(m.touchpoint("purchase"), Some(1));
        assert_eq!(m.touchpoints[1].stage, 1);
    }

    #[test]
    fn unknown_stage_names_file_line_and_fix() {
        let bad = MAP.replace("stage: conversion", "stage: checkout");
        let e = JourneyMap::from_yaml("shop.yaml", &bad).unwrap_err();
        assert_eq!(e.line, Some(15));
        let s = e.to_string();
        assert!(
            s.starts_with("shop.yaml:15: touchpoint `purchase` names unknown stage `checkout`"),
            "{s}"
        );
        assert!(s.contains("awareness, conversion"));
    }

    #[test]
    fn case_rules_name_what_the_map_declares() {
        let with =
            |cases: &str| JourneyMap::from_yaml("shop.yaml", &format!("{MAP}cases:\n{cases}"));
        let m = with("  follow_up: 2d\n  owners:\n    - {stage: conversion, channel: app, owner: team-a}\n  default_owner: team-z\n").unwrap();
        assert_eq!(m.cases.follow_up_ms, 2 * 86_400_000);
        assert_eq!(
            (m.cases.owners[0].stage, m.cases.owners[0].channel),
            (Some(1), Some(1))
        );
        assert_eq!(m.cases.default_owner, "team-z");
        let e = with("  owners:\n    - {stage: checkout, owner: team-a}\n").unwrap_err();
        // MAP's 17 lines, `cases:`, `owners:`, then the rule.
        assert_eq!(e.line, Some(20));
        assert!(
            e.message
                .contains("names stage `checkout`, which the map does not declare"),
            "{e}"
        );
        let e = with("  detractor_at_most: {nps: 11}\n").unwrap_err();
        assert!(
            e.message.contains("nps 11 is not a nps score (0..=10)"),
            "{e}"
        );
        assert_eq!(
            JourneyMap::from_yaml("shop.yaml", MAP)
                .unwrap()
                .cases
                .nps_at_most,
            6
        );
    }

    #[test]
    fn touchpoint_mapped_twice_is_refused() {
        let bad = format!("{MAP}  - name: ad_click\n    stage: conversion\n    channels: [app]\n");
        let e = JourneyMap::from_yaml("shop.yaml", &bad).unwrap_err();
        assert_eq!(e.line, Some(18));
        assert!(e.message.contains("`ad_click` is mapped twice"));
    }

    #[test]
    fn negative_budget_is_refused() {
        let bad = MAP.replace("budget: 48h", "budget: -2d");
        let e = JourneyMap::from_yaml("shop.yaml", &bad).unwrap_err();
        assert_eq!(e.line, Some(7));
        assert!(e.message.contains("negative"), "{}", e.message);
    }

    #[test]
    fn unknown_field_points_at_its_line() {
        let bad = MAP.replace("    budget: 7d\n", "    budget: 7d\n    budgte: 3d\n");
        let e = JourneyMap::from_yaml("shop.yaml", &bad).unwrap_err();
        assert_eq!(e.line, Some(5));
        assert!(e.message.contains("budgte"));
    }

    const STEPS: &str = "steps:
  - name: checkout
    from: [ad_click]
    to: [purchase]
    budget: 30m
    target_conversion: 0.7
";

    #[test]
    fn steps_are_loaded_with_their_touchpoints() {
        let m = JourneyMap::from_yaml("shop.yaml", &format!("{MAP}{STEPS}")).expect("valid");
        assert_eq!(m.steps.len(), 1);
        assert_eq!(
            (m.steps[0].from.clone(), m.steps[0].to.clone()),
            (vec![0], vec![1])
        );
        assert_eq!(m.steps[0].budget_ms, 1_800_000);
    }

    #[test]
    fn a_step_with_an_unknown_touchpoint_names_its_line_and_the_fix() {
        let bad = format!(
            "{MAP}{}",
            STEPS.replace("to: [purchase]", "to: [purchased]")
        );
        let e = JourneyMap::from_yaml("shop.yaml", &bad).unwrap_err();
        assert_eq!(e.line, Some(19));
        assert!(
            e.to_string().starts_with(
                "shop.yaml:19: step `checkout`: `to` names unknown touchpoint `purchased`"
            ),
            "{e}"
        );
    }

    #[test]
    fn step_errors_are_refused() {
        for (from, to, message) in [
            ("budget: 30m", "budget: 0m", "zero"),
            (
                "to: [purchase]",
                "to: [ad_click]",
                "in both `from` and `to`",
            ),
            ("from: [ad_click]", "from: []", "lists no touchpoint"),
            (
                "target_conversion: 0.7",
                "target_conversion: 70",
                "between 0 and 1",
            ),
        ] {
            let bad = format!("{MAP}{}", STEPS.replace(from, to));
            let e = JourneyMap::from_yaml("shop.yaml", &bad).unwrap_err();
            assert!(e.message.contains(message), "{to}: {e}");
            assert_eq!(e.line, Some(19), "{to}");
        }
        let twice = format!("{MAP}{STEPS}{}", STEPS.trim_start_matches("steps:\n"));
        let e = JourneyMap::from_yaml("shop.yaml", &twice).unwrap_err();
        assert_eq!(e.line, Some(24));
        assert!(e.message.contains("declared twice"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("30m"), Ok(1_800_000));
        assert!(parse_duration_ms("30").is_err());
        assert!(parse_duration_ms("0h").is_err());
        for text in ["30m", "36h", "7d", "90s"] {
            assert_eq!(format_duration_ms(parse_duration_ms(text).unwrap()), text);
        }
    }
}

#[cfg(test)]
mod shipped_maps {
    use super::{JourneyMap, JourneyMaps, MapSetError};

    fn shipped() -> (JourneyMap, JourneyMap) {
        let retail = include_str!("../../../schemas/journeys/retail.yaml");
        let support = include_str!("../../../schemas/journeys/support.yaml");
        (
            JourneyMap::from_yaml("retail.yaml", retail).expect("retail map is valid"),
            JourneyMap::from_yaml("support.yaml", support).expect("support map is valid"),
        )
    }

    #[test]
    fn the_shipped_maps_run_together_and_know_each_others_stages() {
        let (retail, support) = shipped();
        assert!(support.steps.len() >= 3);
        assert!(
            retail
                .touchpoints
                .iter()
                .all(|t| support.touchpoint(&t.name).is_none()),
            "each map has touchpoints of its own"
        );
        let maps = JourneyMaps::new(vec![retail, support]).expect("they run together");
        let names: Vec<&str> = maps.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["retail", "support"]);
        let (retail, support) = (&maps.iter().next().unwrap(), maps.iter().nth(1).unwrap());
        assert!(retail.is_stage_elsewhere("diagnosis"));
        assert!(!retail.is_stage_elsewhere("awareness"));
        assert!(!retail.is_stage_elsewhere("made_up"));
        assert!(support.is_stage_elsewhere("awareness"));
    }

    #[test]
    fn maps_running_together_must_agree_on_channels_segments_and_names() {
        let (retail, support) = shipped();
        let fewer = JourneyMap::from_yaml(
            "support.yaml",
            &include_str!("../../../schemas/journeys/support.yaml").replace(
                "segments: [new, regular, vip, business]",
                "segments: [new, regular, vip, partner]",
            ),
        )
        .unwrap();
        let e = JourneyMaps::new(vec![retail.clone(), fewer]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "journey maps `retail` and `support` declare different segments (only `retail` has \
             business; only `support` has partner); segments describe the product systems, so \
             every map running together declares the same ones"
        );
        assert_eq!(
            JourneyMaps::new(vec![retail.clone(), retail]).unwrap_err(),
            MapSetError::SameName("retail".into())
        );
        assert_eq!(JourneyMaps::new(vec![]).unwrap_err(), MapSetError::Empty);
        assert_eq!(JourneyMaps::new(vec![support]).unwrap().len(), 1);
    }

    #[test]
    fn the_retail_map_is_valid() {
        let text = include_str!("../../../schemas/journeys/retail.yaml");
        let m = JourneyMap::from_yaml("retail.yaml", text).expect("retail map is valid");
        assert_eq!(m.stages.len(), 5);
        assert_eq!(m.channels.len(), 6);
        assert!(m.steps.len() >= 3);
    }
}
