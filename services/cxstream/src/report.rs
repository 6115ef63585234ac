//! `cxstream report`: a short summary of what is in ClickHouse (committed data only) and of
//! the dead-letter topic.

use std::time::Duration;

use anyhow::{Context as _, Result};
use clickhouse::Client;
use cxstream_core::Counts;
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
        }
    }
}

pub async fn run(cfg: &Config, stage_order: &[String]) -> Result<String> {
    let client: Client = cfg.clickhouse_connection().client();
    let lines = client
        .query(
            "SELECT stage, sum(stage_entries) AS entries, sum(touchpoints) AS touchpoints, \
             sum(nps_promoters) AS promoters, sum(nps_passives) AS passives, sum(nps_detractors) AS detractors, \
             sum(csat_n) AS csat_n, sum(csat_top2) AS csat_top2, sum(csat_sum) AS csat_sum, \
             sum(ces_n) AS ces_n, sum(ces_agree) AS ces_agree, sum(ces_sum) AS ces_sum \
             FROM metrics_minute_committed GROUP BY stage",
        )
        .fetch_all::<StageLine>()
        .await
        .context("reading per-stage metrics from ClickHouse")?;
    let answers: u64 = client
        .query("SELECT count() FROM survey_answers FINAL")
        .fetch_one()
        .await
        .context("counting survey answers")?;
    let dlq = dlq_count(cfg).unwrap_or(0);

    let mut lines = lines;
    lines.sort_by_key(|l| {
        stage_order
            .iter()
            .position(|s| *s == l.stage)
            .unwrap_or(usize::MAX)
    });
    let touchpoints: i64 = lines.iter().map(|l| l.touchpoints).sum();
    let mut out = format!(
        "cxstream summary (ClickHouse {} / database {})\n  touchpoints counted: {touchpoints}   survey answers (latest per respondent): {answers}   dead-lettered: {dlq}\n\n",
        cfg.clickhouse.url, cfg.clickhouse.database
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
    Ok(out)
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
