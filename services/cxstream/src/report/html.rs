//! `cxstream report --html FILE`: one self-contained page (no script, no external file)
//! with each journey's funnel beside the map's targets, daily NPS / CSAT / CES with their
//! 95 % intervals, and the touchpoint × stage heat map, for someone without Grafana.

use std::path::Path;

use anyhow::{Context as _, Result};
use clickhouse::Client;
use cxstream_core::metrics::{Nps, Proportion};
use cxstream_core::{JourneyMap, JourneyMaps};
use maud::{html, Markup, PreEscaped, DOCTYPE};

use super::charts::{self, Point};
use super::figures::{self, DayLine, FunnelRow, HeatLine};
use super::human_duration;
use crate::config::Config;

/// Writes the page of `journeys` (the figures of `maps`, in order) to `path`.
pub async fn write(
    cfg: &Config,
    client: &Client,
    maps: &JourneyMaps,
    journeys: &[figures::Journey],
    dlq: i64,
    path: &Path,
) -> Result<()> {
    let mut sections = Vec::new();
    for (map, j) in maps.iter().zip(journeys) {
        sections.push(journey(client, map, j).await?);
    }
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { "cxstream report" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                h1 { "cxstream report" }
                p.meta {
                    "ClickHouse " (cfg.clickhouse.url) " / database " (cfg.clickhouse.database)
                    " · committed data only · dead-lettered records: " (dlq)
                }
                @for s in &sections { (s) }
            }
        }
    };
    std::fs::write(path, page.into_string())
        .with_context(|| format!("writing the report to {}", path.display()))
}

async fn journey(client: &Client, map: &JourneyMap, j: &figures::Journey) -> Result<Markup> {
    let days = figures::days(client, &map.name).await?;
    let heat = figures::heat(client, &map.name).await?;
    Ok(html! {
        section.journey id=(format!("journey-{}", j.name)) {
            h2 { "Journey " (j.name) }
            p { (j.touchpoints) " touchpoints counted · " (j.answers) " survey answers (latest per respondent)" }
            @if let Some(i) = &j.identity {
                p {
                    "Anonymous touchpoints: " (i.in_customers) " in " (i.customers)
                    " customers' journeys (stitched, or their sign-ins) · " (i.in_visitors) " in "
                    (i.visitors) " visitors' own"
                }
            }
            h3 { "Funnel: expectation beside reality" }
            p.note {
                "Bars: conversion of decided cohorts (every deadline behind the committed "
                "watermark) with its 95 % Wilson interval; red: the map's target. Open "
                "entries are reported apart, never as drop-offs."
            }
            div.charts {
                (PreEscaped(charts::funnel("Stages", &j.stage_funnel)?))
                @if !j.step_funnel.is_empty() {
                    (PreEscaped(charts::funnel("Steps", &j.step_funnel)?))
                }
            }
            (funnel_table("stage", "entered", &j.stage_funnel))
            @if !j.step_funnel.is_empty() { (funnel_table("step", "started", &j.step_funnel)) }
            h3 { "Detractors' cases" }
            p.note {
                "Every detractor's answer that counts is a case for its owner; overdue: its "
                "follow-up deadline is behind the committed watermark without a closure."
            }
            table.cases {
                thead { tr { th { "owner" } th { "open" } th { "overdue" } th { "closed" } } }
                tbody { @for c in &j.cases {
                    tr data-owner=(c.owner) {
                        td { (c.owner) } td.n { (c.open) } td.n { (c.overdue) } td.n { (c.closed) }
                    }
                } }
            }
            h3 { "Scores by day, with 95 % intervals" }
            div.charts { (trends(&days)?) }
            h3 { "Touchpoint × stage heat map" }
            p.note { "Touchpoints counted per stage they were met in; hover a cell for its scores." }
            (heat_map(map, &heat))
        }
    })
}

fn funnel_table(what: &str, entered: &str, rows: &[FunnelRow]) -> Markup {
    html! {
        table.funnel data-kind=(what) {
            thead { tr {
                th { (what) } th { (entered) } th { "converted" } th { "dropped" } th { "open" }
                th { "conversion (decided)" } th { "target" } th { "to convert p50 / p90" }
            } }
            tbody { @for r in rows {
                tr data-name=(r.name) {
                    td { (r.name) } td.n { (r.entries) } td.n { (r.converted) }
                    td.n { (r.dropped) } td.n { (r.open) }
                    td.n { @match r.conversion() {
                        Some(c) => { (format!("{:.1}% of {}", 100.0 * c, r.decided)) },
                        None => { "not yet known" },
                    } }
                    td.n { (format!("{:.0}%", 100.0 * r.target)) }
                    td.n { @match r.convert_ms {
                        Some((p50, p90)) => { (human_duration(p50)) " / " (human_duration(p90)) },
                        None => { "-" },
                    } }
                }
            } }
        }
    }
}

fn trends(days: &[DayLine]) -> Result<Markup> {
    let labels: Vec<String> = days.iter().map(|d| d.day.clone()).collect();
    let nps: Vec<Point> = days
        .iter()
        .map(|d| {
            Nps::from_counts(d.promoters, d.passives, d.detractors)
                .map(|n| (n.score, n.score - n.ci95, n.score + n.ci95))
        })
        .collect();
    let pct = |x: i64, n: i64| -> Point {
        Proportion::wilson95(x, n).map(|w| (100.0 * w.p, 100.0 * w.low, 100.0 * w.high))
    };
    let csat: Vec<Point> = days.iter().map(|d| pct(d.csat_top2, d.csat_n)).collect();
    let ces: Vec<Point> = days.iter().map(|d| pct(d.ces_agree, d.ces_n)).collect();
    Ok(html! {
        (PreEscaped(charts::trend("NPS", &labels, &nps, (-100.0, 100.0))?))
        (PreEscaped(charts::trend("CSAT: % satisfied (4-5)", &labels, &csat, (0.0, 100.0))?))
        (PreEscaped(charts::trend("CES: % agree it was easy (5-7)", &labels, &ces, (0.0, 100.0))?))
    })
}

fn heat_map(map: &JourneyMap, cells: &[HeatLine]) -> Markup {
    let mut stages: Vec<&str> = map.stages.iter().map(|s| s.name.as_str()).collect();
    stages.push(cxstream_core::journey_map::NO_STAGE_NAME);
    let mut touchpoints: Vec<&str> = map.touchpoints.iter().map(|t| t.name.as_str()).collect();
    touchpoints.push(cxstream_core::journey_map::OFF_MAP_NAME);
    let max = cells
        .iter()
        .map(|c| c.touchpoints)
        .max()
        .unwrap_or(0)
        .max(1);
    let cell = |tp: &str, stage: &str| {
        cells
            .iter()
            .find(|c| c.touchpoint == tp && c.stage == stage)
    };
    html! {
        table.heat {
            thead { tr { th { "touchpoint" } @for s in &stages { th { (s) } } } }
            tbody { @for tp in &touchpoints {
                tr { th { (tp) } @for s in &stages {
                    @match cell(tp, s).filter(|c| c.touchpoints > 0) {
                        Some(c) => {
                            td.n style=(format!("background: rgba(31, 119, 180, {:.2})", 0.08 + 0.8 * (c.touchpoints as f64 / max as f64).sqrt()))
                                title=(heat_title(c)) { (c.touchpoints) }
                        },
                        None => { td {} },
                    }
                } }
            } }
        }
    }
}

fn heat_title(c: &HeatLine) -> String {
    let mut parts = vec![format!("{} touchpoints", c.touchpoints)];
    if c.csat_n > 0 {
        parts.push(format!(
            "mean CSAT {:.2} (n {})",
            c.csat_sum as f64 / c.csat_n as f64,
            c.csat_n
        ));
    }
    if let Some(n) = Nps::from_counts(c.promoters, c.passives, c.detractors) {
        parts.push(format!("NPS {:+.0} (n {})", n.score, n.n));
    }
    parts.join(" · ")
}

const STYLE: &str = "
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { margin-bottom: 0; } p.meta, p.note { color: #666; font-size: 0.9em; }
section.journey { border-top: 2px solid #ddd; margin-top: 2em; }
div.charts { display: flex; flex-wrap: wrap; gap: 1em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
table.heat td { min-width: 4em; }
";
