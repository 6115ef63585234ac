//! HTTP adapter: `/metrics` (Prometheus text), `/healthz` (the process is alive) and
//! `/readyz` (the service is doing its job), plus the registry of pipeline metrics; and
//! Alertmanager's API as a client ([`alertmanager`]).
//! Label sets are bounded: topic kinds, reasons, partitions — never customer ids or text.

pub mod alertmanager;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
/// The registry services hand to [`serve`].
pub use prometheus::Registry;
use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, TextEncoder,
};

/// Metrics of the journey service.
#[derive(Clone)]
pub struct JourneyMetrics {
    pub registry: Registry,
    pub records_consumed: IntCounterVec,
    pub dlq_records: IntCounterVec,
    pub duplicates: IntCounter,
    pub batches_committed: IntCounter,
    pub commit_errors: IntCounter,
    pub compactions: IntCounterVec,
    pub commit_seconds: Histogram,
    pub rows_written: IntCounterVec,
    pub tracked_customers: IntGauge,
    pub journeys_let_go: IntGauge,
    pub journeys_read_back: IntCounter,
    pub held_touchpoints: IntGauge,
    pub refused_events: IntCounterVec,
    pub assigned_partitions: IntGauge,
    pub rebalances: IntCounterVec,
    pub watermark_seconds: IntGaugeVec,
    pub consumer_lag: IntGaugeVec,
    pub last_commit_seconds: IntGauge,
}

fn counter_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

fn counter(r: &Registry, name: &str, help: &str) -> prometheus::Result<IntCounter> {
    let c = IntCounter::new(name, help)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

fn gauge(r: &Registry, name: &str, help: &str) -> prometheus::Result<IntGauge> {
    let g = IntGauge::new(name, help)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

impl JourneyMetrics {
    pub fn new() -> prometheus::Result<Self> {
        let r = Registry::new();
        let commit_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "cxstream_commit_duration_seconds",
                "Time to write one batch (facts, aggregates, state, marker) to ClickHouse.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )?;
        r.register(Box::new(commit_seconds.clone()))?;
        let watermark_seconds = IntGaugeVec::new(
            Opts::new(
                "cxstream_watermark_seconds",
                "Event-time watermark per input partition: the lower of the two inputs' highest applied event times.",
            ),
            &["partition"],
        )?;
        r.register(Box::new(watermark_seconds.clone()))?;
        let consumer_lag = IntGaugeVec::new(
            Opts::new(
                "cxstream_consumer_lag_records",
                "Records not read yet per owned input partition (log end − next offset), by topic kind.",
            ),
            &["topic", "partition"],
        )?;
        r.register(Box::new(consumer_lag.clone()))?;
        let build_info = IntGaugeVec::new(
            Opts::new(
                "cxstream_build_info",
                "Always 1; the running cxstream's version is in the label.",
            ),
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        r.register(Box::new(build_info))?;
        Ok(JourneyMetrics {
            records_consumed: counter_vec(
                &r,
                "cxstream_records_consumed_total",
                "Input records read, by topic kind (touchpoints, answers) and partition.",
                &["topic", "partition"],
            )?,
            dlq_records: counter_vec(
                &r,
                "cxstream_dlq_records_total",
                "Records sent to the dead-letter topic, by typed reason.",
                &["reason"],
            )?,
            duplicates: counter(
                &r,
                "cxstream_duplicates_total",
                "Re-delivered touchpoints and superseded answers that were counted once.",
            )?,
            batches_committed: counter(
                &r,
                "cxstream_batches_committed_total",
                "Batches durably committed to ClickHouse.",
            )?,
            commit_errors: counter(
                &r,
                "cxstream_commit_errors_total",
                "Failed batch commits (retried with back-off; nothing is lost).",
            )?,
            compactions: counter_vec(
                &r,
                "cxstream_compactions_total",
                "Compactions of committed batches into a partition's generation, by result \
                 (failed ones are retried at the next batch; figures never depend on them).",
                &["result"],
            )?,
            rows_written: counter_vec(
                &r,
                "cxstream_rows_written_total",
                "Rows written to ClickHouse, by table.",
                &["table"],
            )?,
            tracked_customers: gauge(
                &r,
                "cxstream_tracked_customers",
                "Customers with journey state in memory.",
            )?,
            journeys_let_go: gauge(
                &r,
                "cxstream_journeys_let_go",
                "Idle journeys let go from memory once committed (read back from ClickHouse \
                 when their customer returns or a deadline of theirs comes).",
            )?,
            journeys_read_back: counter(
                &r,
                "cxstream_journeys_read_back_total",
                "Journeys read back from ClickHouse after they were let go.",
            )?,
            held_touchpoints: gauge(
                &r,
                "cxstream_identity_held_touchpoints",
                "Anonymous touchpoints waiting for an identification (identity stitching).",
            )?,
            refused_events: counter_vec(
                &r,
                "cxstream_refused_events_total",
                "Valid events not applied, kept in the refused_events table: by input and reason \
                 (late: dated before watermark − allowed lateness; future: dated too far after \
                 their record timestamp).",
                &["input", "reason"],
            )?,
            assigned_partitions: gauge(
                &r,
                "cxstream_assigned_partitions",
                "Input partitions this instance owns.",
            )?,
            rebalances: counter_vec(
                &r,
                "cxstream_rebalances_total",
                "Partitions assigned to or revoked from this instance by the consumer group, or overtaken by another owner's claim.",
                &["change"],
            )?,
            last_commit_seconds: gauge(
                &r,
                "cxstream_last_commit_timestamp_seconds",
                "Wall-clock time of the last batch committed to ClickHouse (Unix seconds).",
            )?,
            commit_seconds,
            watermark_seconds,
            consumer_lag,
            registry: r,
        })
    }
}

/// Metrics of the alerter.
#[derive(Clone)]
pub struct AlerterMetrics {
    pub registry: Registry,
    pub records_read: IntCounterVec,
    pub log_errors: IntCounterVec,
    pub late_cells: IntCounterVec,
    pub judged_until_seconds: IntGaugeVec,
    pub alert_changes: IntCounterVec,
    pub alert_active: IntGaugeVec,
    pub stage_conversion_ratio: GaugeVec,
    pub write_errors: IntCounterVec,
    pub peers: IntGauge,
    pub writes_journey: IntGaugeVec,
    pub snapshot_seconds: IntGauge,
}

impl AlerterMetrics {
    pub fn new() -> prometheus::Result<Self> {
        let r = Registry::new();
        let gauge_vec =
            |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<IntGaugeVec> {
                let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
                r.register(Box::new(g.clone()))?;
                Ok(g)
            };
        Ok(AlerterMetrics {
            judged_until_seconds: gauge_vec(
                "cxstream_alerter_judged_until_seconds",
                "Event time up to which every partition of the journey has committed and the alerter has judged.",
                &["journey"],
            )?,
            peers: {
                let g = IntGauge::new(
                    "cxstream_alerter_peers",
                    "Alerter instances sharing the journeys, this one included, as this one hears them.",
                )?;
                r.register(Box::new(g.clone()))?;
                g
            },
            snapshot_seconds: {
                let g = IntGauge::new(
                    "cxstream_alerter_snapshot_seconds",
                    "Wall time (unix seconds) of the last snapshot this alerter kept; 0 before the first.",
                )?;
                r.register(Box::new(g.clone()))?;
                g
            },
            writes_journey: gauge_vec(
                "cxstream_alerter_writes_journey",
                "1 when this alerter writes (and posts) the journey's alerts, 0 when another does.",
                &["journey"],
            )?,
            alert_active: gauge_vec(
                "cxstream_alert_active",
                "Incidents firing now, by journey and kind (step_drop, flow_drop, stage_drop, score_drop, silence).",
                &["journey", "kind"],
            )?,
            stage_conversion_ratio: {
                let g = GaugeVec::new(
                    Opts::new(
                        "cxstream_stage_conversion_ratio",
                        "Share of a stage's entries that converted to the next stage within its budget, over the last week of cohorts decided by the judged event time.",
                    ),
                    &["journey", "stage"],
                )?;
                r.register(Box::new(g.clone()))?;
                g
            },
            records_read: counter_vec(
                &r,
                "cxstream_alerter_records_total",
                "Aggregates records read, by kind (partial, committed, other_group, unknown_journey).",
                &["kind"],
            )?,
            log_errors: counter_vec(
                &r,
                "cxstream_alerter_log_errors_total",
                "Confirmed batches whose partial counts were not all read (missing, incomplete, wrong id).",
                &["journey"],
            )?,
            late_cells: counter_vec(
                &r,
                "cxstream_alerter_late_cells_total",
                "Cells that arrived after their minute was judged (late events the journey service applied): in no alert.",
                &["journey"],
            )?,
            alert_changes: counter_vec(
                &r,
                "cxstream_alert_changes_total",
                "Alert changes published, by kind and state (firing, updated, resolved).",
                &["kind", "state"],
            )?,
            write_errors: counter_vec(
                &r,
                "cxstream_alerter_write_errors_total",
                "Failed writes of alert changes, by sink (clickhouse, kafka); they are retried.",
                &["sink"],
            )?,
            registry: r,
        })
    }
}

/// Liveness and readiness as seen by `/healthz` and `/readyz`.
#[derive(Clone, Default)]
pub struct Health {
    ready: Arc<AtomicBool>,
}

impl Health {
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

#[derive(Clone)]
struct AppState {
    registry: Registry,
    health: Health,
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    let mut buf = Vec::new();
    match TextEncoder::new().encode(&s.registry.gather(), &mut buf) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            buf,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    if s.health.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

/// Serves the endpoints until the process ends. Returns the bound address.
pub async fn serve(
    listen: SocketAddr,
    registry: Registry,
    health: Health,
) -> std::io::Result<SocketAddr> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(AppState { registry, health });
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "http server stopped");
        }
    });
    Ok(addr)
}

#[cfg(test)]
mod tests {
    /// The shipped Prometheus rules only use metrics the service exports (a renamed
    /// metric would silently turn an alert off).
    #[test]
    fn the_prometheus_rules_use_only_exported_metrics() {
        let m = JourneyMetrics::new().unwrap();
        // A labelled metric is exported once it has a child.
        m.records_consumed.with_label_values(&["touchpoints", "0"]);
        m.rebalances.with_label_values(&["assigned"]);
        m.dlq_records.with_label_values(&["not_avro"]);
        m.consumer_lag.with_label_values(&["touchpoints", "0"]);
        m.watermark_seconds.with_label_values(&["0"]);
        m.compactions.with_label_values(&["ok"]);
        m.refused_events.with_label_values(&["touchpoints", "late"]);
        m.rows_written.with_label_values(&["touchpoints"]);
        let a = AlerterMetrics::new().unwrap();
        a.writes_journey.with_label_values(&["retail"]);
        a.write_errors.with_label_values(&["clickhouse"]);
        let exported: Vec<String> = m
            .registry
            .gather()
            .iter()
            .chain(a.registry.gather().iter())
            .map(|f| f.name().to_string())
            .collect();
        let rules = include_str!("../../../deploy/prometheus/cxstream.rules.yml");
        let used: std::collections::BTreeSet<&str> = rules
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("cxstream_"))
            .map(|w| w.strip_suffix("_bucket").unwrap_or(w))
            .collect();
        assert!(used.len() >= 6, "{used:?}");
        for name in used {
            assert!(
                exported.iter().any(|e| e == name),
                "the rules use {name}, which the service does not export"
            );
        }
    }

    use super::*;
    use std::io::Write;
    use std::process::{Command, Stdio};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn endpoints_answer_and_metrics_pass_promtool() {
        let m = JourneyMetrics::new().unwrap();
        m.dlq_records.with_label_values(&["not_avro"]).inc();
        m.records_consumed
            .with_label_values(&["touchpoints", "0"])
            .inc_by(3);
        m.rebalances.with_label_values(&["assigned"]).inc();
        m.commit_seconds.observe(0.02);
        m.watermark_seconds.with_label_values(&["0"]).set(1);
        m.consumer_lag
            .with_label_values(&["touchpoints", "0"])
            .set(5);
        m.last_commit_seconds.set(1_800_000_000);
        let health = Health::default();
        let addr = serve(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            m.registry.clone(),
            health.clone(),
        )
        .await
        .unwrap();
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 503"));
        health.set_ready(true);
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        let page = get(addr, "/metrics").await;
        let body = page.split("\r\n\r\n").nth(1).unwrap().to_string();
        assert!(
            body.contains("cxstream_dlq_records_total{reason=\"not_avro\"} 1"),
            "{body}"
        );
        assert!(
            body.contains(&format!(
                "cxstream_build_info{{version=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION")
            )),
            "{body}"
        );

        // Prometheus' own linter: naming (counters end in _total, units), help texts, types.
        let mut promtool = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool is installed by deploy/local/install.sh");
        promtool
            .stdin
            .take()
            .unwrap()
            .write_all(body.as_bytes())
            .unwrap();
        let out = promtool.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
