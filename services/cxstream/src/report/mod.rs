//! `cxstream report`: a short summary of what is in ClickHouse (committed data only) and of
//! the dead-letter topic, as text, and with `--html` as one self-contained page.

mod charts;
mod figures;
mod html;

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clickhouse::Client;
use cxstream_core::JourneyMaps;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::config::Config;
use figures::FunnelRow;

/// The summary as text; with `html`, also the page with charts, from the same figures.
pub async fn run(cfg: &Config, maps: &JourneyMaps, html: Option<&Path>) -> Result<String> {
    let client: Client = cfg.clickhouse_connection().client();
    let dlq = dlq_count(cfg).unwrap_or(0);
    let mut out = format!(
        "cxstream summary (ClickHouse {} / database {})   dead-lettered: {dlq}\n",
        cfg.clickhouse.url, cfg.clickhouse.database
    );
    let mut journeys = Vec::new();
    let group = cfg
        .alerter
        .journey_group
        .as_deref()
        .unwrap_or(&cfg.journey.group_id);
    for map in maps.iter() {
        let j = figures::journey(&client, map).await?;
        out.push_str(&journey(&j));
        journeys.push(j);
        let (total, lines) = figures::alerts(&client, &map.name, group, 10).await?;
        out.push_str(&alerts(total, &lines));
    }
    if let Some(path) = html {
        html::write(cfg, &client, maps, &journeys, dlq, path).await?;
        out.push_str(&format!("\nreport: wrote {}\n", path.display()));
    }
    Ok(out)
}

/// The alerter's incidents: how many, and the latest.
fn alerts(total: u64, lines: &[figures::AlertLine]) -> String {
    let firing = lines.iter().filter(|l| l.state != "RESOLVED").count();
    let mut out = format!(
        "\n  alerts: {total} incidents{}\n",
        if firing > 0 {
            format!(" ({firing} of the latest still firing)")
        } else {
            String::new()
        }
    );
    for l in lines {
        let value = |v: f64| {
            if matches!(l.kind.as_str(), "STEP_DROP" | "FLOW_DROP" | "STAGE_DROP") {
                format!("{:.1} %", 100.0 * v)
            } else {
                format!("{v:.1}")
            }
        };
        out.push_str(&format!(
            "    {:<11} {:<20} {:<18} fired {}  {} vs baseline {}  {}\n",
            l.kind,
            l.subject,
            l.slice,
            l.fired_utc,
            value(l.observed),
            value(l.baseline),
            l.state.to_lowercase()
        ));
    }
    out
}

/// One journey map's figures: its touchpoints and answers, scores per stage, its funnels.
fn journey(j: &figures::Journey) -> String {
    let mut out = format!(
        "\njourney `{}`: touchpoints counted: {}   survey answers (latest per respondent): {}\n\n",
        j.name, j.touchpoints, j.answers
    );
    out.push_str(&format!(
        "  {:<14} {:>8} {:>20} {:>16} {:>16}\n",
        "stage", "entries", "NPS (n, ±95%)", "CSAT% (n)", "CES mean (n)"
    ));
    for l in &j.stages {
        // The core's metric math, the same that defines the numbers everywhere else.
        let c = l.counts();
        let nps = c.nps().map_or("-".to_string(), |n| {
            format!("{:+.1} ({}, ±{:.1})", n.score, n.n, n.ci95)
        });
        let csat = c.csat().map(|m| format!("{:.1} ({})", m.top2_pct, m.n));
        let ces = c.ces().map(|m| format!("{:.2} ({})", m.mean, m.n));
        out.push_str(&format!(
            "  {:<14} {:>8} {:>20} {:>16} {:>16}\n",
            l.stage,
            l.entries,
            nps,
            csat.unwrap_or_else(|| "-".into()),
            ces.unwrap_or_else(|| "-".into())
        ));
    }
    if let Some(i) = &j.identity {
        out.push_str(&format!(
            "\n  anonymous touchpoints: {} in {} customers' journeys (stitched, or their sign-ins), {} in {} visitors' own\n",
            i.in_customers, i.customers, i.in_visitors, i.visitors
        ));
    }
    out.push_str(&funnel("stage", "entries", &j.stage_funnel));
    if !j.step_funnel.is_empty() {
        out.push_str(&funnel("step", "started", &j.step_funnel));
    }
    if !j.cases.is_empty() {
        out.push_str(&format!(
            "\n  {:<26} {:>8} {:>9} {:>8}\n",
            "detractor cases by owner", "open", "overdue", "closed"
        ));
        for c in &j.cases {
            out.push_str(&format!(
                "  {:<26} {:>8} {:>9} {:>8}\n",
                c.owner, c.open, c.overdue, c.closed
            ));
        }
    }
    out
}

/// Entries, conversions, drop-offs and open entries per stage or step, with the
/// conversion of decided cohorts beside the map's target, and the time to convert.
fn funnel(what: &str, entries: &str, rows: &[FunnelRow]) -> String {
    let mut out = format!(
        "\n  {what:<26} {entries:>8} {:>9} {:>8} {:>8} {:>22} {:>18}\n",
        "converted", "dropped", "open", "conversion (target)", "to convert p50/p90"
    );
    for r in rows {
        let rate = r.conversion().map_or("not yet known".to_string(), |c| {
            format!("{:.1}% of {}", 100.0 * c, r.decided)
        });
        let rate = format!("{rate} ({:.0}%)", 100.0 * r.target);
        let time = r.convert_ms.map_or("-".to_string(), |(p50, p90)| {
            format!("{} / {}", human_duration(p50), human_duration(p90))
        });
        out.push_str(&format!(
            "  {:<26} {:>8} {:>9} {:>8} {:>8} {rate:>22} {time:>18}\n",
            r.name, r.entries, r.converted, r.dropped, r.open
        ));
    }
    out
}

/// A measured duration in its two largest units ("2h 53m").
fn human_duration(ms: i64) -> String {
    let s = ms / 1000;
    match s {
        86_400.. => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
        3600.. => format!("{}h {}m", s / 3600, s % 3600 / 60),
        60.. => format!("{}m {}s", s / 60, s % 60),
        _ => format!("{s}s"),
    }
}

/// Records in the dead-letter topic (sum over partitions of high − low watermark).
pub fn dlq_count(cfg: &Config) -> Result<i64> {
    let consumer: BaseConsumer = cfg
        .kafka
        .client_config()
        .create()
        .context("creating a Kafka client")?;
    let md = consumer
        .fetch_metadata(Some(&cfg.topics.dlq), Duration::from_secs(10))
        .context("reading DLQ topic metadata")?;
    let mut n = 0;
    for t in md.topics() {
        for p in t.partitions() {
            let (lo, hi) = consumer
                .fetch_watermarks(&cfg.topics.dlq, p.id(), Duration::from_secs(10))
                .context("reading DLQ watermarks")?;
            n += hi - lo;
        }
    }
    Ok(n)
}
