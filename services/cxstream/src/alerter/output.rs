//! Where alerts go: the ClickHouse alerts table, then the alerts topic. The topic is also
//! the alerter's memory: on start it reads which changes of the followed group are there
//! already, and judging the aggregates again (from their beginning or a snapshot) raises
//! the same changes under the same names, so only those missing are written — none lost, none repeated.
//! It goes on reading the topic, for what other alerters write.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{Context as _, Result};
use cxstream_avro::{AlertKind, AlertMessage, AlertState, Codec, Severity};
use cxstream_clickhouse::{AlertRow, AlertsTable};
use cxstream_core::watch::{self, AlertChange, Subject};
use cxstream_core::JourneyMap;
use cxstream_http::AlerterMetrics;
use rdkafka::consumer::BaseConsumer;
use rdkafka::message::Message;
use rdkafka::producer::BaseRecord;

use crate::config::Config;
use crate::from_beginning::{each_ready, from_beginning};
use crate::produce::{delivered, send, Deliveries, Producer};

pub struct AlertsOutput {
    producer: Producer<Deliveries>,
    topic: String,
    table: AlertsTable,
    /// (id, revision) of the group's changes on the topic.
    sent: HashSet<(String, i32)>,
    /// Reads on from where `sent` was read to.
    memory: BaseConsumer,
    group: String,
    metrics: AlerterMetrics,
}

impl AlertsOutput {
    /// Reads the alerts topic to its end first: what is there is not written again.
    pub fn open(cfg: &Config, codec: &Codec, group: &str, metrics: AlerterMetrics) -> Result<Self> {
        let (memory, sent) = read_sent(cfg, group, codec)?;
        tracing::info!(changes = sent.len(), topic = %cfg.topics.alerts, "alert changes already published");
        Ok(AlertsOutput {
            producer: cfg
                .kafka
                .producer_config()
                .create_with_context(Deliveries::default())
                .context("creating the alerts producer")?,
            topic: cfg.topics.alerts.clone(),
            table: AlertsTable::new(&cfg.clickhouse_connection()),
            sent,
            memory,
            group: group.to_string(),
            metrics,
        })
    }

    /// Whether the alerts topic has the change.
    pub fn has(&self, id: &str, revision: i32) -> bool {
        self.sent.contains(&(id.to_string(), revision))
    }

    /// Reads what reached the alerts topic since (others' writes and this one's): the
    /// group's changes, as (journey, id, revision).
    pub fn follow(&mut self, codec: &Codec) -> Vec<(String, String, i32)> {
        let mut read = Vec::new();
        let (group, sent) = (&self.group, &mut self.sent);
        each_ready(&self.memory, &self.topic, |msg| {
            let Some(m) = msg.payload().and_then(|b| codec.decode_alert(b).ok()) else {
                return;
            };
            if m.group == *group && sent.insert((m.id.clone(), m.revision)) {
                read.push((m.journey, m.id, m.revision));
            }
        });
        read
    }

    /// Writes the changes not published yet: all to ClickHouse, then to the topic, and waits
    /// until the broker has them. Returns how many were new.
    pub async fn publish(&mut self, codec: &Codec, changes: &[AlertMessage]) -> Result<usize> {
        let new: Vec<&AlertMessage> = changes
            .iter()
            .filter(|m| !self.sent.contains(&(m.id.clone(), m.revision)))
            .collect();
        if new.is_empty() {
            return Ok(0);
        }
        let rows: Vec<AlertRow> = new.iter().map(|m| row(m)).collect();
        if let Err(e) = self.table.insert(&rows).await {
            self.metrics
                .write_errors
                .with_label_values(&["clickhouse"])
                .inc();
            return Err(e).context("writing alerts to ClickHouse");
        }
        // The crash tests' worst moment: written to ClickHouse, not to the topic.
        fail::fail_point!("alerter-before-topic", |_| std::process::abort());
        let mut buf = Vec::new();
        for m in &new {
            buf.clear();
            codec.encode_alert(m, &mut buf)?;
            let record = BaseRecord::to(&self.topic)
                .key(m.id.as_bytes())
                .payload(&buf[..]);
            send(&self.producer, record).context("sending an alert")?;
        }
        if let Some(why) = delivered(&self.producer, &self.topic, &|| {})? {
            self.metrics
                .write_errors
                .with_label_values(&["kafka"])
                .inc();
            anyhow::bail!("the alerts topic `{}` refused a record: {why}", self.topic);
        }
        for m in new.iter() {
            self.sent.insert((m.id.clone(), m.revision));
            let state = format!("{:?}", m.state).to_lowercase();
            let kind = kind_label(m.kind);
            self.metrics
                .alert_changes
                .with_label_values(&[kind, &state])
                .inc();
            tracing::info!(
                id = %m.id, revision = m.revision, state = %state, journey = %m.journey,
                subject = %m.subject, slice = %m.slice, observed = m.observed,
                baseline = m.baseline, n = m.n, significance = m.significance,
                "alert"
            );
        }
        Ok(new.len())
    }
}

fn kind_label(k: AlertKind) -> &'static str {
    match k {
        AlertKind::StepDrop => "step_drop",
        AlertKind::ScoreDrop => "score_drop",
        AlertKind::Silence => "silence",
        AlertKind::FlowDrop => "flow_drop",
        AlertKind::StageDrop => "stage_drop",
    }
}

/// The changes of `group` on the alerts topic, read from its beginning to its end, and the
/// reader, to read on.
fn read_sent(
    cfg: &Config,
    group: &str,
    codec: &Codec,
) -> Result<(BaseConsumer, HashSet<(String, i32)>)> {
    let topic = &cfg.topics.alerts;
    let (consumer, mut to_read) = from_beginning(cfg, topic, "cxstream-alerter-memory")?;
    let mut sent = HashSet::new();
    let started = std::time::Instant::now();
    while !to_read.at_end() {
        if started.elapsed() > Duration::from_secs(300) {
            anyhow::bail!("reading `{topic}` to its end took over 5 minutes");
        }
        let Some(msg) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let msg = msg.with_context(|| format!("reading `{topic}`"))?;
        if let Some(m) = msg.payload().and_then(|b| codec.decode_alert(b).ok()) {
            if m.group == group {
                sent.insert((m.id, m.revision));
            }
        }
        to_read.read(msg.partition(), msg.offset());
    }
    Ok((consumer, sent))
}

/// A change as the alerts topic has it.
pub fn message(map: &JourneyMap, group: &str, c: &AlertChange) -> AlertMessage {
    let kind = match c.subject.kind() {
        watch::AlertKind::StepDrop => AlertKind::StepDrop,
        watch::AlertKind::ScoreDrop => AlertKind::ScoreDrop,
        watch::AlertKind::Silence => AlertKind::Silence,
        watch::AlertKind::FlowDrop => AlertKind::FlowDrop,
        watch::AlertKind::StageDrop => AlertKind::StageDrop,
    };
    let f = &c.figures;
    let severity = match c.subject {
        Subject::Source(_) => Severity::Critical,
        Subject::Step(_) | Subject::Flow(_) | Subject::Stage(_)
            if f.observed < 0.5 * f.baseline =>
        {
            Severity::Critical
        }
        _ => Severity::Warning,
    };
    AlertMessage {
        id: c.id.clone(),
        revision: i32::try_from(c.revision).unwrap_or(i32::MAX),
        state: match c.state {
            watch::AlertState::Firing => AlertState::Firing,
            watch::AlertState::Updated => AlertState::Updated,
            watch::AlertState::Resolved => AlertState::Resolved,
        },
        kind,
        journey: map.name.clone(),
        group: group.to_string(),
        subject: c.subject.name(map).to_string(),
        metric: c.subject.metric().map(|m| m.as_str().to_string()),
        touchpoint: c.subject.touchpoint(map).map(str::to_string),
        slice: f.lens.name(map),
        firing: c.firing.iter().map(|l| l.name(map)).collect(),
        window_start: c.window_start,
        window_end: c.window_end,
        observed: f.observed,
        baseline: f.baseline,
        n: f.n,
        significance: f.significance,
        severity,
        fired_at: c.fired_at,
        changed_at: c.at,
        resolved_at: (c.state == watch::AlertState::Resolved).then_some(c.at),
    }
}

fn row(m: &AlertMessage) -> AlertRow {
    AlertRow {
        id: m.id.clone(),
        revision: u32::try_from(m.revision).unwrap_or(0),
        state: match m.state {
            AlertState::Firing => 1,
            AlertState::Updated => 2,
            AlertState::Resolved => 3,
        },
        kind: match m.kind {
            AlertKind::StepDrop => 1,
            AlertKind::ScoreDrop => 2,
            AlertKind::Silence => 3,
            AlertKind::FlowDrop => 4,
            AlertKind::StageDrop => 5,
        },
        journey: m.journey.clone(),
        journey_group: m.group.clone(),
        subject: m.subject.clone(),
        metric: m.metric.clone().unwrap_or_default(),
        touchpoint: m.touchpoint.clone().unwrap_or_default(),
        slice: m.slice.clone(),
        firing: m.firing.clone(),
        window_start_ms: m.window_start,
        window_end_ms: m.window_end,
        observed: m.observed,
        baseline: m.baseline,
        n: m.n,
        significance: m.significance,
        severity: match m.severity {
            Severity::Info => 1,
            Severity::Warning => 2,
            Severity::Critical => 3,
        },
        fired_at: u32::try_from(m.fired_at.div_euclid(1000)).unwrap_or(0),
        fired_at_ms: m.fired_at,
        changed_at_ms: m.changed_at,
        resolved_at_ms: m.resolved_at.unwrap_or(0),
        written_at: u32::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        )
        .unwrap_or(0),
    }
}
