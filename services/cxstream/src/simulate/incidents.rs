//! The incidents `cxstream simulate` injects: read from `--incidents FILE`, or the
//! `incidents` and `journeys` scenarios' own, placed within the simulated period.

use std::path::Path;

use anyhow::{bail, Context as _, Result};
use cxstream_core::{JourneyMap, Metric};
use cxstream_simulator::{Incident, IncidentKind};
use serde::Deserialize;

/// One entry of an incidents file (YAML list). Times are hours after the period's start.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IncidentSpec {
    /// `step_drop`, `stage_drop`, `silence` or `score_shift`.
    kind: String,
    step: Option<String>,
    stage: Option<String>,
    touchpoint: Option<String>,
    /// Only this channel (for a silence: the channel that goes silent).
    channel: Option<String>,
    /// Only this segment.
    segment: Option<String>,
    /// Share of conversions lost, 0–1 (step_drop, stage_drop).
    drop: Option<f64>,
    /// Points added to each answer's score (score_shift; negative lowers it).
    shift: Option<i32>,
    /// `nps` (default), `csat` or `ces` (score_shift).
    metric: Option<String>,
    start_hours: f64,
    minutes: f64,
}

/// Reads an incidents file, placing its times after `start_ms`.
pub fn read(path: &Path, start_ms: i64) -> Result<Vec<Incident>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let specs: Vec<IncidentSpec> = yaml_serde::from_str(&text)
        .with_context(|| format!("{}: not a list of incidents", path.display()))?;
    specs
        .into_iter()
        .enumerate()
        .map(|(i, spec)| {
            incident(spec, start_ms).with_context(|| {
                format!("{}: incident {} (counting from 1)", path.display(), i + 1)
            })
        })
        .collect()
}

fn incident(spec: IncidentSpec, start_ms: i64) -> Result<Incident> {
    let needs = |what: Option<String>, name: &str| {
        what.with_context(|| format!("a {} needs `{name}`", spec.kind))
    };
    let drop = || {
        spec.drop
            .with_context(|| format!("a {} needs `drop` (0–1)", spec.kind))
    };
    let kind = match spec.kind.as_str() {
        "step_drop" => IncidentKind::StepDrop {
            step: needs(spec.step.clone(), "step")?,
            drop: drop()?,
        },
        "stage_drop" => IncidentKind::StageDrop {
            stage: needs(spec.stage.clone(), "stage")?,
            drop: drop()?,
        },
        "silence" => IncidentKind::Silence,
        "score_shift" => IncidentKind::ScoreShift {
            touchpoint: needs(spec.touchpoint.clone(), "touchpoint")?,
            metric: match spec.metric.as_deref().unwrap_or("nps") {
                "nps" => Metric::Nps,
                "csat" => Metric::Csat,
                "ces" => Metric::Ces,
                other => bail!("metric `{other}`: use nps, csat or ces"),
            },
            shift: spec.shift.context("a score_shift needs `shift` (points)")?,
        },
        other => bail!("kind `{other}`: use step_drop, stage_drop, silence or score_shift"),
    };
    if !(spec.start_hours.is_finite() && spec.minutes.is_finite() && spec.minutes > 0.0) {
        bail!("`start_hours` and a positive `minutes` are needed");
    }
    let from_ms = start_ms + (spec.start_hours * 3_600_000.0) as i64;
    Ok(Incident {
        kind,
        channel: spec.channel,
        segment: spec.segment,
        from_ms,
        until_ms: from_ms + (spec.minutes * 60_000.0) as i64,
    })
}

/// The journeys scenario's incident: the map's first step, in the app where it runs there
/// (else its first channel), converts at a fifth of its target from 30 % to 60 % of the
/// period.
pub fn journeys(map: &JourneyMap, start_ms: i64, period_ms: f64) -> Vec<Incident> {
    let Some((step, channel)) = first_step(map) else {
        return Vec::new();
    };
    vec![Incident {
        kind: IncidentKind::StepDrop { step, drop: 0.8 },
        channel: Some(channel),
        segment: None,
        from_ms: start_ms + (0.3 * period_ms) as i64,
        until_ms: start_ms + (0.6 * period_ms) as i64,
    }]
}

/// The incidents scenario's four, in the period's second half (the detectors learn a day
/// before they judge, silence a week): the first step converting half as often in the app
/// (55–60 % of the period), the first stage a third less in the first segment (65–70 %),
/// the web channel silent (75–76 %), and the last stage's first touchpoint's NPS answers
/// three points lower (85–95 %).
pub fn scenario(map: &JourneyMap, start_ms: i64, period_ms: f64) -> Vec<Incident> {
    let at = |share: f64| start_ms + (share * period_ms) as i64;
    let mut out = Vec::new();
    if let Some((step, channel)) = first_step(map) {
        out.push(Incident {
            kind: IncidentKind::StepDrop { step, drop: 0.5 },
            channel: Some(channel),
            segment: None,
            from_ms: at(0.55),
            until_ms: at(0.60),
        });
    }
    if let (Some(stage), Some(segment)) = (map.stages.first(), map.segments.first()) {
        out.push(Incident {
            kind: IncidentKind::StageDrop {
                stage: stage.name.clone(),
                drop: 1.0 / 3.0,
            },
            channel: None,
            segment: Some(segment.clone()),
            from_ms: at(0.65),
            until_ms: at(0.70),
        });
    }
    let silent = map
        .channels
        .iter()
        .find(|c| *c == "web")
        .or(map.channels.first());
    if let Some(channel) = silent {
        out.push(Incident {
            kind: IncidentKind::Silence,
            channel: Some(channel.clone()),
            segment: None,
            from_ms: at(0.75),
            until_ms: at(0.76),
        });
    }
    let last = map.stages.len().saturating_sub(1);
    if let Some(tp) = u8::try_from(last)
        .ok()
        .and_then(|s| map.touchpoints_of(s).next())
    {
        out.push(Incident {
            kind: IncidentKind::ScoreShift {
                touchpoint: map.touchpoint_name(tp).to_string(),
                metric: Metric::Nps,
                shift: -3,
            },
            channel: None,
            segment: None,
            from_ms: at(0.85),
            until_ms: at(0.95),
        });
    }
    out
}

/// The map's first step, and the app if its first `from` touchpoint runs there, else that
/// touchpoint's first channel.
fn first_step(map: &JourneyMap) -> Option<(String, String)> {
    let step = map.steps.first()?;
    let from = map.touchpoints.get(usize::from(*step.from.first()?))?;
    let channels: Vec<&str> = from.channels.iter().map(|c| map.channel_name(*c)).collect();
    let channel = if channels.contains(&"app") {
        "app"
    } else {
        channels.first()?
    };
    Some((step.name.clone(), channel.to_string()))
}
