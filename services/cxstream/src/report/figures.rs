//! What the reports show, read from ClickHouse (committed data only): per journey, scores
//! per stage, the stage and step funnels beside the map's targets, daily score trends and
//! the touchpoint × stage heat map.

use anyhow::{Context as _, Result};
use clickhouse::Client;
use cxstream_core::{Counts, JourneyMap};
use serde::Deserialize;

#[derive(Debug, clickhouse::Row, Deserialize)]
pub struct StageLine {
    pub stage: String,
    pub entries: i64,
    pub touchpoints: i64,
    pub promoters: i64,
    pub passives: i64,
    pub detractors: i64,
    pub csat_n: i64,
    pub csat_top2: i64,
    pub csat_sum: i64,
    pub ces_n: i64,
    pub ces_agree: i64,
    pub ces_sum: i64,
    pub conversions: i64,
    pub convert_ms_sum: i64,
    pub dropoffs: i64,
    pub open: i64,
}

impl StageLine {
    pub fn counts(&self) -> Counts {
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

/// One line of a funnel: a stage (entries) or a step (attempts started), beside the map.
#[derive(Debug, Clone, PartialEq)]
pub struct FunnelRow {
    pub name: String,
    pub entries: i64,
    pub converted: i64,
    pub dropped: i64,
    pub open: i64,
    /// Converted and decided (converted + dropped) in decided cohorts; none decided yet: 0.
    pub decided_converted: i64,
    pub decided: i64,
    pub target: f64,
    /// Time to convert, p50 and p90 (ms), of the conversions.
    pub convert_ms: Option<(i64, i64)>,
}

impl FunnelRow {
    /// Conversion of the decided cohorts, if any is decided.
    pub fn conversion(&self) -> Option<f64> {
        (self.decided > 0).then(|| self.decided_converted as f64 / self.decided as f64)
    }
}

/// Scores of one day.
#[derive(Debug, clickhouse::Row, Deserialize)]
pub struct DayLine {
    pub day: String,
    pub promoters: i64,
    pub passives: i64,
    pub detractors: i64,
    pub csat_n: i64,
    pub csat_top2: i64,
    pub ces_n: i64,
    pub ces_agree: i64,
}

/// One cell of the touchpoint × stage heat map.
#[derive(Debug, clickhouse::Row, Deserialize)]
pub struct HeatLine {
    pub stage: String,
    pub touchpoint: String,
    pub touchpoints: i64,
    pub csat_n: i64,
    pub csat_sum: i64,
    pub promoters: i64,
    pub passives: i64,
    pub detractors: i64,
}

/// Detractors' cases of one owner, by status.
#[derive(Debug, clickhouse::Row, Deserialize)]
pub struct CaseLine {
    pub owner: String,
    pub open: u64,
    pub overdue: u64,
    pub closed: u64,
}

/// Touchpoints that carry an anonymous id (identity stitching): in customers' journeys
/// (stitched, or the sign-ins that identified a device) and in visitors' own.
#[derive(Debug, clickhouse::Row, Deserialize)]
pub struct IdentityLine {
    pub in_customers: u64,
    pub customers: u64,
    pub in_visitors: u64,
    pub visitors: u64,
}

/// Everything the reports show of one journey map.
pub struct Journey {
    pub name: String,
    pub touchpoints: i64,
    pub answers: u64,
    /// Scores per stage, in the map's order (then `none`).
    pub stages: Vec<StageLine>,
    pub stage_funnel: Vec<FunnelRow>,
    pub step_funnel: Vec<FunnelRow>,
    pub cases: Vec<CaseLine>,
    /// None when no touchpoint carried an anonymous id.
    pub identity: Option<IdentityLine>,
}

pub async fn journey(client: &Client, map: &JourneyMap) -> Result<Journey> {
    let name = map.name.as_str();
    let mut stages = fetch::<StageLine>(
        client,
        name,
        "SELECT stage, sum(stage_entries) AS entries, sum(touchpoints) AS touchpoints, \
         sum(nps_promoters) AS promoters, sum(nps_passives) AS passives, sum(nps_detractors) AS detractors, \
         sum(csat_n) AS csat_n, sum(csat_top2) AS csat_top2, sum(csat_sum) AS csat_sum, \
         sum(ces_n) AS ces_n, sum(ces_agree) AS ces_agree, sum(ces_sum) AS ces_sum, \
         sum(stage_conversions) AS conversions, sum(convert_ms_sum) AS convert_ms_sum, \
         sum(stage_dropoffs) AS dropoffs, sum(stage_open) AS open \
         FROM metrics_minute_committed WHERE journey = ? GROUP BY stage",
        "per-stage metrics",
    )
    .await?;
    stages.sort_by_key(|l| map.stage(&l.stage).map_or(usize::MAX, usize::from));
    let answers: u64 = client
        .query("SELECT count() FROM survey_answers FINAL WHERE journey = ?")
        .bind(name)
        .fetch_one()
        .await
        .context("counting survey answers")?;
    Ok(Journey {
        name: name.to_string(),
        touchpoints: stages.iter().map(|l| l.touchpoints).sum(),
        answers,
        stage_funnel: stage_funnel(client, map, &stages).await?,
        step_funnel: step_funnel(client, map).await?,
        cases: fetch::<CaseLine>(
            client,
            name,
            "SELECT owner, countIf(status = 'open') AS open, countIf(status = 'overdue') AS overdue, \
                    countIf(status = 'closed') AS closed \
             FROM case_queue WHERE journey = ? GROUP BY owner ORDER BY owner",
            "the case queue",
        )
        .await?,
        identity: fetch::<IdentityLine>(
            client,
            name,
            "SELECT countIf(startsWith(customer_id, 'anon:') = 0) AS in_customers, \
                    uniqExactIf(customer_id, startsWith(customer_id, 'anon:') = 0) AS customers, \
                    countIf(startsWith(customer_id, 'anon:')) AS in_visitors, \
                    uniqExactIf(customer_id, startsWith(customer_id, 'anon:')) AS visitors \
             FROM touchpoints FINAL WHERE journey = ? AND anonymous_id != ''",
            "touchpoints with an anonymous id",
        )
        .await?
        .into_iter()
        .find(|l| l.in_customers + l.in_visitors > 0),
        stages,
    })
}

/// Entries, conversions, drop-offs and open entries per stage but the last (which has no
/// later stage to convert to), with decided conversion and the time to convert.
async fn stage_funnel(
    client: &Client,
    map: &JourneyMap,
    stages: &[StageLine],
) -> Result<Vec<FunnelRow>> {
    let name = map.name.as_str();
    let decided = fetch::<DecidedLine>(
        client,
        name,
        "SELECT stage AS name, sum(conversions) AS converted, sum(dropoffs) AS dropped \
         FROM stage_funnel WHERE decided = 1 AND journey = ? GROUP BY stage",
        "decided stage cohorts",
    )
    .await?;
    let times = fetch::<ConvertTime>(
        client,
        name,
        "SELECT stage AS name, quantileExact(0.5)(convert_ms) AS p50_ms, \
                quantileExact(0.9)(convert_ms) AS p90_ms \
         FROM stage_entries FINAL WHERE outcome = 'converted' AND withdrawn = 0 AND journey = ? \
         GROUP BY stage",
        "stage times to convert",
    )
    .await?;
    let last = map.stages.len().saturating_sub(1);
    Ok(map
        .stages
        .iter()
        .take(last)
        .filter_map(|stage| {
            let l = stages.iter().find(|l| l.stage == stage.name)?;
            Some(row(
                &stage.name,
                [l.entries, l.conversions, l.dropoffs, l.open],
                &decided,
                stage.target_conversion,
                &times,
            ))
        })
        .collect())
}

async fn step_funnel(client: &Client, map: &JourneyMap) -> Result<Vec<FunnelRow>> {
    if map.steps.is_empty() {
        return Ok(Vec::new());
    }
    let name = map.name.as_str();
    let steps = fetch::<StepLine>(
        client,
        name,
        "SELECT step AS name, sum(starts) AS started, sum(conversions) AS converted, \
                sum(dropoffs) AS dropped, sum(open_attempts) AS still_open \
         FROM steps_minute_committed WHERE journey = ? GROUP BY step",
        "step attempts",
    )
    .await?;
    let decided = fetch::<DecidedLine>(
        client,
        name,
        "SELECT step AS name, sum(converted) AS converted, sum(dropped) AS dropped \
         FROM step_funnel WHERE decided = 1 AND journey = ? GROUP BY step",
        "decided step cohorts",
    )
    .await?;
    let times = fetch::<ConvertTime>(
        client,
        name,
        "SELECT step AS name, quantileExact(0.5)(convert_ms) AS p50_ms, \
                quantileExact(0.9)(convert_ms) AS p90_ms \
         FROM step_attempts FINAL WHERE outcome = 'converted' AND withdrawn = 0 AND journey = ? \
         GROUP BY step",
        "step times to convert",
    )
    .await?;
    Ok(map
        .steps
        .iter()
        .filter_map(|step| {
            let l = steps.iter().find(|l| l.name == step.name)?;
            Some(row(
                &step.name,
                [l.started, l.converted, l.dropped, l.still_open],
                &decided,
                step.target_conversion,
                &times,
            ))
        })
        .collect())
}

fn row(
    name: &str,
    [entries, converted, dropped, open]: [i64; 4],
    decided: &[DecidedLine],
    target: f64,
    times: &[ConvertTime],
) -> FunnelRow {
    let d = decided.iter().find(|d| d.name == name);
    FunnelRow {
        name: name.to_string(),
        entries,
        converted,
        dropped,
        open,
        decided_converted: d.map_or(0, |d| d.converted),
        decided: d.map_or(0, |d| d.converted + d.dropped),
        target,
        convert_ms: times
            .iter()
            .find(|t| t.name == name)
            .map(|t| (t.p50_ms, t.p90_ms)),
    }
}

/// Daily scores of a journey, oldest first.
pub async fn days(client: &Client, journey: &str) -> Result<Vec<DayLine>> {
    fetch::<DayLine>(
        client,
        journey,
        "SELECT toString(toDate(minute)) AS day, sum(nps_promoters) AS promoters, \
                sum(nps_passives) AS passives, sum(nps_detractors) AS detractors, \
                sum(csat_n) AS csat_n, sum(csat_top2) AS csat_top2, \
                sum(ces_n) AS ces_n, sum(ces_agree) AS ces_agree \
         FROM metrics_minute_committed WHERE journey = ? GROUP BY day ORDER BY day",
        "daily scores",
    )
    .await
}

/// The touchpoint × stage heat map of a journey over the whole range.
pub async fn heat(client: &Client, journey: &str) -> Result<Vec<HeatLine>> {
    fetch::<HeatLine>(
        client,
        journey,
        "SELECT stage, touchpoint, sum(touchpoint_count) AS touchpoints, \
                sum(csat_answers) AS csat_n, sum(csat_total) AS csat_sum, \
                sum(promoters) AS promoters, sum(passives) AS passives, sum(detractors) AS detractors \
         FROM touchpoint_heat WHERE journey = ? GROUP BY stage, touchpoint",
        "the touchpoint heat map",
    )
    .await
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

/// An incident of the alerter, as `alerts_current` has it.
#[derive(Debug, clickhouse::Row, Deserialize)]
pub struct AlertLine {
    pub kind: String,
    /// The step, stage or channel; a score's with its touchpoint and metric
    /// (`retention/delivery_received CSAT`).
    pub subject: String,
    pub slice: String,
    pub state: String,
    /// UTC, `YYYY-MM-DD hh:mm:ss`.
    pub fired_utc: String,
    pub observed: f64,
    pub baseline: f64,
}

/// The journey group's incidents, latest first (at most `limit`), and how many there are.
pub async fn alerts(
    client: &Client,
    journey: &str,
    group: &str,
    limit: u64,
) -> Result<(u64, Vec<AlertLine>)> {
    let total: u64 = client
        .query("SELECT count() FROM alerts_current WHERE journey = ? AND journey_group = ?")
        .bind(journey)
        .bind(group)
        .fetch_one()
        .await
        .context("counting alerts")?;
    let lines = client
        .query(
            "SELECT toString(kind) AS kind, \
             if(metric = '', subject, concat(subject, if(touchpoint = '', '', concat('/', touchpoint)), ' ', metric)) AS subject, \
             slice, toString(state) AS state, \
             toString(fired_at, 'UTC') AS fired_utc, observed, baseline \
             FROM alerts_current WHERE journey = ? AND journey_group = ? \
             ORDER BY fired_utc DESC, subject LIMIT ?",
        )
        .bind(journey)
        .bind(group)
        .bind(limit)
        .fetch_all::<AlertLine>()
        .await
        .context("reading alerts from ClickHouse")?;
    Ok((total, lines))
}
