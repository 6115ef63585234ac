//! Alerts to Alertmanager (`alerter.alertmanager_url`), so teams route them with the
//! receivers they already use. One Alertmanager alert per incident: its labels (the
//! incident's id, kind, journey, journey group, subject, severity at firing, `team=cx`) stay the same
//! from firing to resolution; figures go in annotations. Firing incidents are posted again
//! every 30 s (Alertmanager forgets what is not), a resolved one once with its end.
//!
//! Only while the alerter is *live* — the journey judged up to within
//! `alerter.live_within_ms` of the wall clock: catching up on history (a restart, a
//! replay) pages no one for incidents long over. A restart finds the incidents still
//! firing by judging again, and posts them once it is live. Beside other alerters, only the
//! journeys this one writes are posted; it knows the others' incidents, to post them when
//! it takes a journey over.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use cxstream_avro::{AlertKind, AlertMessage, AlertState, Severity};
use cxstream_http::alertmanager::{rfc3339, AlertmanagerClient, AlertmanagerError, PostableAlert};
use cxstream_http::AlerterMetrics;

const AGAIN_EVERY: Duration = Duration::from_secs(30);
const POST_TIMEOUT: Duration = Duration::from_secs(10);

pub struct AlertmanagerPush {
    client: AlertmanagerClient,
    live_within_ms: i64,
    /// Firing incidents by id: their alert as first posted (labels stay), updated
    /// annotations.
    firing: BTreeMap<String, PostableAlert>,
    /// Resolved since the last post: sent once.
    resolved: Vec<PostableAlert>,
    /// Journeys live now.
    live: BTreeMap<String, bool>,
    /// Journeys another alerter writes (and posts) now.
    others: BTreeMap<String, bool>,
    sent: Option<Instant>,
    changed: bool,
    metrics: AlerterMetrics,
}

impl AlertmanagerPush {
    pub fn new(client: AlertmanagerClient, live_within_ms: i64, metrics: AlerterMetrics) -> Self {
        AlertmanagerPush {
            client,
            live_within_ms,
            firing: BTreeMap::new(),
            resolved: Vec::new(),
            live: BTreeMap::new(),
            others: BTreeMap::new(),
            sent: None,
            changed: false,
            metrics,
        }
    }

    /// Every change judged (published before or not): the incidents firing now.
    pub fn on_changes(&mut self, changes: &[AlertMessage]) {
        for m in changes {
            match m.state {
                AlertState::Firing | AlertState::Updated => {
                    let alert = self
                        .firing
                        .entry(m.id.clone())
                        .or_insert_with(|| PostableAlert {
                            labels: labels(m),
                            annotations: BTreeMap::new(),
                            ends_at: None,
                        });
                    alert.annotations = annotations(m);
                    self.changed |= m.state == AlertState::Firing;
                }
                AlertState::Resolved => {
                    if let Some(mut alert) = self.firing.remove(&m.id) {
                        alert.annotations = annotations(m);
                        if self.posts(&m.journey) {
                            self.resolved.push(alert.resolved_at(SystemTime::now()));
                            self.changed = true;
                        }
                    }
                }
            }
        }
    }

    /// How far a journey is judged (event time, ms): whether it is live.
    pub fn judged(&mut self, journey: &str, known_until: i64) {
        let live = super::unix_now_ms().saturating_sub(known_until) <= self.live_within_ms;
        let before = self.live.insert(journey.to_string(), live);
        self.changed |= live && before != Some(true);
    }

    /// Whether this alerter writes the journey's alerts (it does unless told otherwise).
    pub fn owns(&mut self, journey: &str, owns: bool) {
        let before = self.others.insert(journey.to_string(), !owns);
        self.changed |= owns && before == Some(true);
    }

    fn posts(&self, journey: &str) -> bool {
        self.live.get(journey).copied().unwrap_or(false)
            && !self.others.get(journey).copied().unwrap_or(false)
    }

    /// Posts when something changed or the firing alerts are due again. A refused post is
    /// logged and tried again with the next.
    pub async fn tick(&mut self) {
        let due = self.sent.is_none_or(|t| t.elapsed() >= AGAIN_EVERY);
        let waiting = !self.firing.is_empty() || !self.resolved.is_empty();
        if !(self.changed || due && waiting) {
            return;
        }
        let mut alerts: Vec<PostableAlert> = self
            .firing
            .values()
            .filter(|a| self.posts(a.labels.get("journey").map_or("", String::as_str)))
            .cloned()
            .collect();
        alerts.extend(self.resolved.iter().cloned());
        self.sent = Some(Instant::now());
        self.changed = false;
        if alerts.is_empty() {
            return;
        }
        // An Alertmanager that hangs must not stop the alerter: give up, post again later.
        let posted = tokio::time::timeout(POST_TIMEOUT, self.client.post(&alerts))
            .await
            .unwrap_or(Err(AlertmanagerError::Timeout(POST_TIMEOUT)));
        match posted {
            Ok(()) => self.resolved.clear(),
            Err(e) => {
                self.metrics
                    .write_errors
                    .with_label_values(&["alertmanager"])
                    .inc();
                tracing::warn!(error = %e, "alerts not posted to Alertmanager; posting again in 30 s");
            }
        }
    }
}

fn labels(m: &AlertMessage) -> BTreeMap<String, String> {
    let (alertname, subject_label) = match m.kind {
        AlertKind::StepDrop => ("CxStepDrop", "step"),
        AlertKind::ScoreDrop => ("CxScoreDrop", "stage"),
        AlertKind::Silence => ("CxSilence", "channel"),
        AlertKind::FlowDrop => ("CxFlowDrop", "stage"),
        AlertKind::StageDrop => ("CxStageDrop", "stage"),
    };
    let severity = match m.severity {
        Severity::Info => "info",
        Severity::Warning => "warning",
        Severity::Critical => "critical",
    };
    let mut labels = BTreeMap::from([
        ("alertname".to_string(), alertname.to_string()),
        ("team".to_string(), "cx".to_string()),
        ("journey".to_string(), m.journey.clone()),
        ("group".to_string(), m.group.clone()),
        (subject_label.to_string(), m.subject.clone()),
        ("severity".to_string(), severity.to_string()),
        ("incident".to_string(), m.id.clone()),
    ]);
    // A score's metric and touchpoint are as much what it is about as its stage.
    for (name, value) in [("metric", &m.metric), ("touchpoint", &m.touchpoint)] {
        if let Some(v) = value {
            labels.insert(name.to_string(), v.to_lowercase());
        }
    }
    labels
}

fn annotations(m: &AlertMessage) -> BTreeMap<String, String> {
    let metric = m.metric.as_deref().unwrap_or("NPS");
    let value = |v: f64| match m.kind {
        AlertKind::StepDrop | AlertKind::FlowDrop | AlertKind::StageDrop => {
            format!("{:.1} %", 100.0 * v)
        }
        AlertKind::ScoreDrop if metric == "NPS" => format!("NPS {v:.1}"),
        AlertKind::ScoreDrop => format!("{metric} {v:.1} %"),
        AlertKind::Silence => format!("{v:.0} touchpoints"),
    };
    let about = match &m.touchpoint {
        Some(t) => format!("{} ({t})", m.subject),
        None => m.subject.clone(),
    };
    let summary = match m.kind {
        AlertKind::StepDrop => format!(
            "{} conversion fell to {} from {} ({})",
            m.subject,
            value(m.observed),
            value(m.baseline),
            m.slice
        ),
        AlertKind::ScoreDrop => format!(
            "{about} score fell to {} from {} ({})",
            value(m.observed),
            value(m.baseline),
            m.slice
        ),
        AlertKind::FlowDrop => format!(
            "entries into {} fell to {} of its and the stage before's, from {} ({})",
            m.subject,
            value(m.observed),
            value(m.baseline),
            m.slice
        ),
        AlertKind::StageDrop => format!(
            "{} converted {} of its decided entries, from {} ({})",
            m.subject,
            value(m.observed),
            value(m.baseline),
            m.slice
        ),
        AlertKind::Silence => format!(
            "{} sent no touchpoints while {} were expected",
            m.subject,
            value(m.baseline)
        ),
    };
    let at = |ms: i64| {
        rfc3339(SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0)))
    };
    BTreeMap::from([
        ("summary".to_string(), summary),
        ("slices".to_string(), m.firing.join(", ")),
        ("observed".to_string(), format!("{}", m.observed)),
        ("baseline".to_string(), format!("{}", m.baseline)),
        ("n".to_string(), format!("{}", m.n)),
        ("significance".to_string(), format!("{:e}", m.significance)),
        ("fired_at".to_string(), at(m.fired_at)),
        ("window_start".to_string(), at(m.window_start)),
    ])
}
