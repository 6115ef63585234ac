//! `cxstream report`: a short summary of what is in ClickHouse (committed data only) and of
//! the dead-letter topic.

use std::time::Duration;

use anyhow::{Context as _, Result};
use clickhouse::Client;
use cxstream_core::{Counts, JourneyMap, JourneyMaps};
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde::Deserialize;

use crate::config::Config;

#[derive(Debug, clickhouse::Row, Deserialize)]
struct StageLine {
    stage: String,
    entries: i64,
    touchpoints: i64,
    promoters: i64,
    passives: i64,
    detractors: i64,
    csat_n: i64,
    csat_top2: i64,
    csat_sum: i64,
    ces_n: i64,
    ces_agree: i64,
    ces_sum: i64,
    conversions: i64,
    convert_ms_sum: i64,
    dropoffs: i64,
    open: i64,
}

impl StageLine {
    fn counts(&self) -> Counts {
        Counts {
            nps_promoters: self.promoters,
            nps_passives: self.passives,
            nps_detractors: self.detractors,
            csat_n: self.csat_n,
            csat_top2: self.csat_top2,
            csat_sum: self.csat_sum,
            ces_n: self.ces_n,
            ces_agree: self.ces_agree,
            ces_sum: self.ces_sum,
            stage_entries: self.entries,
            touchpoints: self.touchpoints,
            stage_conversions: self.conversions,
            convert_ms_sum: self.convert_ms_sum,
            stage_dropoffs: self.dropoffs,
            stage_open: self.open,
        }
    }
}

/// Outcomes of a stage or step in minutes whose cohort is decided (every deadline is
/// behind the committed watermark).
#[derive(Debug, clickhouse::Row, Deserialize)]
struct DecidedLine {
    name: String,
    converted: i64,
    dropped: i64,
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct ConvertTime {
    name: String,
    p50_ms: i64,
    p90_ms: i64,
}

/// A step's attempts over the whole range.
#[derive(Debug, clickhouse::Row, Deserialize)]
struct StepLine {
    name: String,
    started: i64,
    converted: i64,
    dropped: i64,
    still_open: i64,
}

pub async fn run(cfg: &Config, maps: &JourneyMaps) -> Result<String> {
    let client: Client = cfg.clickhouse_connection().client();
    let dlq = dlq_count(cfg).unwrap_or(0);
    let mut out = format!(
        "cxstream summary (ClickHouse {} / database {})   dead-lettered: {dlq}\n",
        cfg.clickhouse.url, cfg.clickhouse.database
    );
    for map in maps.iter() {
        out.push_str(&journey(&client, map).await?);
    }
    Ok(out)
}

/// One journey map's figures: its touchpoints and answers, scores per stage, its funnel.
async fn journey(client: &Client, map: &JourneyMap) -> Result<String> {
    let stage_order: Vec<&str> = map.stages.iter().map(|s| s.name.as_str()).collect();
    let mut lines = client
        .query(
            "SELECT stage, sum(stage_entries) AS entries, sum(touchpoints) AS touchpoints, \
             sum(nps_promoters) AS promoters, sum(nps_passives) AS passives, sum(nps_detractors) AS detractors, \
             sum(csat_n) AS csat_n, sum(csat_top2) AS csat_top2, sum(csat_sum) AS csat_sum, \
             sum(ces_n) AS ces_n, sum(ces_agree) AS ces_agree, sum(ces_sum) AS ces_sum, \
             sum(stage_conversions) AS conversions, sum(convert_ms_sum) AS convert_ms_sum, \
             sum(stage_dropoffs) AS dropoffs, sum(stage_open) AS open \
             FROM metrics_minute_committed WHERE journey = ? GROUP BY stage",
        )
        .bind(map.name.as_str())
        .fetch_all::<StageLine>()
        .await
        .context("reading per-stage metrics from ClickHouse")?;
    let answers: u64 = client
        .query("SELECT count() FROM survey_answers FINAL WHERE journey = ?")
        .bind(map.name.as_str())
        .fetch_one()
        .await
        .context("counting survey answers")?;
    lines.sort_by_key(|l| {
        stage_order
            .iter()
            .position(|s| *s == l.stage.as_str())
            .unwrap_or(usize::MAX)
    });
    let touchpoints: i64 = lines.iter().map(|l| l.touchpoints).sum();
    let mut out = format!(
        "\njourney `{}`: touchpoints counted: {touchpoints}   survey answers (latest per respondent): {answers}\n\n",
        map.name
    );
    out.push_str(&format!(
        "  {:<14} {:>8} {:>20} {:>16} {:>16}\n",
        "stage", "entries", "NPS (n, ±95%)", "CSAT% (n)", "CES mean (n)"
    ));
    for l in &lines {
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
    out.push_str(&funnel(client, map, &lines).await?);
    Ok(out)
}

/// Entries, conversions, drop-offs and open entries per stage and step, with the
/// conversion of decided cohorts beside the map's target, and the time to convert from
/// the facts.
async fn funnel(client: &Client, map: &JourneyMap, lines: &[StageLine]) -> Result<String> {
    let journey = map.name.as_str();
    let stage_decided = fetch::<DecidedLine>(
        client,
        journey,
        "SELECT stage AS name, sum(conversions) AS converted, sum(dropoffs) AS dropped \
         FROM stage_funnel WHERE decided = 1 AND journey = ? GROUP BY stage",
        "decided stage cohorts",
    )
    .await?;
    let stage_times = fetch::<ConvertTime>(
        client,
        journey,
        "SELECT stage AS name, quantileExact(0.5)(convert_ms) AS p50_ms, \
                quantileExact(0.9)(convert_ms) AS p90_ms \
         FROM stage_entries FINAL WHERE outcome = 'converted' AND withdrawn = 0 AND journey = ? GROUP BY stage",
        "stage times to convert",
    )
    .await?;
    let mut out = header("stage", "entries");
    // The last stage has no later stage to convert to.
    let last = map.stages.len().saturating_sub(1);
    for (stage, l) in map.stages.iter().zip(lines_by_stage(map, lines)).take(last) {
        let Some(l) = l else { continue };
        let counts = [l.entries, l.conversions, l.dropoffs, l.open];
        out.push_str(&row(
            &stage.name,
            counts,
            stage_decided.iter().find(|d| d.name == stage.name),
            stage.target_conversion,
            stage_times.iter().find(|t| t.name == stage.name),
        ));
    }
    if map.steps.is_empty() {
        return Ok(out);
    }
    let steps = fetch::<StepLine>(
        client,
        journey,
        "SELECT step AS name, sum(starts) AS started, sum(conversions) AS converted, \
                sum(dropoffs) AS dropped, sum(open_attempts) AS still_open \
         FROM steps_minute_committed WHERE journey = ? GROUP BY step",
        "step attempts",
    )
    .await?;
    let step_decided = fetch::<DecidedLine>(
        client,
        journey,
        "SELECT step AS name, sum(converted) AS converted, sum(dropped) AS dropped \
         FROM step_funnel WHERE decided = 1 AND journey = ? GROUP BY step",
        "decided step cohorts",
    )
    .await?;
    let step_times = fetch::<ConvertTime>(
        client,
        journey,
        "SELECT step AS name, quantileExact(0.5)(convert_ms) AS p50_ms, \
                quantileExact(0.9)(convert_ms) AS p90_ms \
         FROM step_attempts FINAL WHERE outcome = 'converted' AND withdrawn = 0 AND journey = ? GROUP BY step",
        "step times to convert",
    )
    .await?;
    out.push_str(&header("step", "started"));
    for step in &map.steps {
        let Some(l) = steps.iter().find(|l| l.name == step.name) else {
            continue;
        };
        out.push_str(&row(
            &step.name,
            [l.started, l.converted, l.dropped, l.still_open],
            step_decided.iter().find(|d| d.name == step.name),
            step.target_conversion,
            step_times.iter().find(|t| t.name == step.name),
        ));
    }
    Ok(out)
}

/// Rows of `sql`, whose one parameter is the journey.
async fn fetch<T>(client: &Client, journey: &str, sql: &str, what: &str) -> Result<Vec<T>>
where
    T: clickhouse::Row + for<'b> clickhouse::RowRead<Value<'b> = T> + 'static,
{
    client
        .query(sql)
        .bind(journey)
        .fetch_all::<T>()
        .await
        .with_context(|| format!("reading {what} from ClickHouse"))
}

fn header(what: &str, entries: &str) -> String {
    format!(
        "\n  {what:<26} {entries:>8} {:>9} {:>8} {:>8} {:>22} {:>18}\n",
        "converted", "dropped", "open", "conversion (target)", "to convert p50/p90"
    )
}

/// One line of a funnel: [entries, converted, dropped, open], the decided conversion beside
/// the target, and the time to convert.
fn row(
    name: &str,
    [entries, converted, dropped, open]: [i64; 4],
    decided: Option<&DecidedLine>,
    target: f64,
    time: Option<&ConvertTime>,
) -> String {
    let rate =
        decided
            .filter(|d| d.converted + d.dropped > 0)
            .map_or("not yet known".to_string(), |d| {
                let n = d.converted + d.dropped;
                format!("{:.1}% of {n}", 100.0 * d.converted as f64 / n as f64)
            });
    let time = time.map_or("-".to_string(), |t| {
        format!(
            "{} / {}",
            human_duration(t.p50_ms),
            human_duration(t.p90_ms)
        )
    });
    let rate = format!("{rate} ({:.0}%)", 100.0 * target);
    format!(
        "  {name:<26} {entries:>8} {converted:>9} {dropped:>8} {open:>8} {rate:>22} {time:>18}\n"
    )
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

fn lines_by_stage<'a>(map: &JourneyMap, lines: &'a [StageLine]) -> Vec<Option<&'a StageLine>> {
    map.stages
        .iter()
        .map(|s| lines.iter().find(|l| l.stage == s.name))
        .collect()
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
