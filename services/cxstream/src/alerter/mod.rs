//! `cxstream alerter` (README § Alerts): reads every partition of the aggregates topic from
//! its latest snapshot ([`snapshot`]) or its beginning, follows one journey group's
//! committed batches per journey map, judges each minute once every partition of the
//! journey has committed past it, and writes the alerts' changes to ClickHouse and the
//! alerts topic.
//!
//! The aggregates topic is its input and the alerts topic its memory of what it wrote. A
//! restart judges the aggregates again from the snapshot or their beginning (the same
//! minutes, the same way, so the same alerts under the same ids) and writes only the
//! changes the alerts topic does not have.
//!
//! Beside other alerters ([`members`]), every instance judges every journey and writes the
//! alerts of the journeys it owns; the changes of the others' journeys wait until the
//! alerts topic shows them written, and an instance that takes a journey over writes those
//! still missing.

mod input;
mod members;
mod output;
mod push;
mod snapshot;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use cxstream_avro::{AlertMessage, AlertState, Codec};
use cxstream_clickhouse::SnapshotsTable;
use cxstream_core::watch::{AlertChange, AlertKind};
use cxstream_core::JourneyMaps;
use cxstream_http::{AlerterMetrics, Health};
use rdkafka::message::Message;

use crate::config::Config;
use crate::from_beginning::from_positions;
use input::JourneyInput;
use members::Members;
use output::AlertsOutput;
use push::AlertmanagerPush;
use snapshot::{Taken, Taking};

/// Options of one run that are not configuration (CLI flags).
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Exit once every partition of the aggregates topic is read to its end.
    pub until_caught_up: bool,
}

pub struct Alerter {
    cfg: Config,
    codec: Codec,
    group: String,
    inputs: BTreeMap<String, JourneyInput>,
    output: AlertsOutput,
    /// Alertmanager, when configured.
    push: Option<AlertmanagerPush>,
    metrics: AlerterMetrics,
    health: Health,
    shutdown: Arc<AtomicBool>,
    rt: tokio::runtime::Handle,
    /// Late cells already counted in the metric, per journey.
    late_counted: BTreeMap<String, u64>,
    /// Whether this instance writes each journey's alerts, as last decided.
    owned: BTreeMap<String, bool>,
    /// Changes of journeys another alerter writes, until the alerts topic has them.
    unwritten: BTreeMap<String, Vec<AlertMessage>>,
    /// Where snapshots are kept (`alerter.snapshot_every_ms`), and when one was last taken.
    snapshots: Option<(SnapshotsTable, Instant)>,
    /// Per partition of the aggregates topic, the offset after the last record judged.
    positions: BTreeMap<i32, i64>,
    /// The latest change of each incident firing, by id: a snapshot's for Alertmanager.
    firing: BTreeMap<String, AlertMessage>,
}

/// Who writes which journey's alerts.
enum Writers {
    /// This instance, every journey.
    Alone,
    /// None yet: catching up with the aggregates before joining the other alerters, who
    /// write meanwhile (an instance that joined at once would own journeys it had not
    /// judged up to now: their changes would wait for its replay).
    CatchingUp,
    /// Each journey's owner among the alerters heard from.
    Shared(Box<Members>),
}

impl Writers {
    fn owns(&self, journey: &str) -> bool {
        match self {
            Writers::Alone => true,
            Writers::CatchingUp => false,
            Writers::Shared(m) => m.owns(journey),
        }
    }
}

/// How often the alerter hears its peers and reads what they wrote.
const PEERS_EVERY: Duration = Duration::from_millis(100);

impl Alerter {
    pub fn new(
        cfg: Config,
        maps: &JourneyMaps,
        metrics: AlerterMetrics,
        health: Health,
        shutdown: Arc<AtomicBool>,
        rt: tokio::runtime::Handle,
    ) -> Result<Self> {
        let group = cfg
            .alerter
            .journey_group
            .clone()
            .unwrap_or_else(|| cfg.journey.group_id.clone());
        let codec = cfg.codec()?;
        let output = AlertsOutput::open(&cfg, &codec, &group, metrics.clone())?;
        let push = match &cfg.alerter.alertmanager_url {
            Some(url) => {
                let client = cxstream_http::alertmanager::AlertmanagerClient::new(url)
                    .context("alerter.alertmanager_url")?;
                Some(AlertmanagerPush::new(
                    client,
                    cfg.alerter.live_within_ms,
                    metrics.clone(),
                ))
            }
            None => None,
        };
        let inputs = maps
            .iter()
            .map(|m| {
                let input = JourneyInput::new(m.clone(), m.alerts);
                (m.name.clone(), input)
            })
            .collect();
        Ok(Alerter {
            codec,
            group,
            inputs,
            output,
            push,
            metrics,
            health,
            shutdown,
            rt,
            late_counted: BTreeMap::new(),
            owned: BTreeMap::new(),
            unwritten: BTreeMap::new(),
            snapshots: cfg.alerter.snapshot_every_ms.map(|_| {
                (
                    SnapshotsTable::new(&cfg.clickhouse_connection()),
                    Instant::now(),
                )
            }),
            positions: BTreeMap::new(),
            firing: BTreeMap::new(),
            cfg,
        })
    }

    /// `--until-caught-up` is one instance by definition; otherwise peers share, unless
    /// turned off, once this one has caught up.
    fn writers(&self, opts: RunOptions) -> Writers {
        if opts.until_caught_up || !self.cfg.alerter.peers.enabled {
            Writers::Alone
        } else {
            Writers::CatchingUp
        }
    }

    /// Joins the other alerters once the aggregates are read to where they ended at start;
    /// ready from then on (a rollout waits for it before stopping the instance it replaces).
    fn join_when_caught_up(&self, writers: &mut Writers, caught_up: bool) -> Result<()> {
        if matches!(writers, Writers::CatchingUp) && caught_up {
            let me = members::instance_name(&self.cfg);
            *writers = Writers::Shared(Box::new(Members::join(&self.cfg, me)?));
            self.health.set_ready(true);
        }
        Ok(())
    }

    /// Hears the peers, reads what reached the alerts topic, and writes what a journey
    /// taken over still misses.
    fn share(&mut self, writers: &mut Writers) -> Result<()> {
        if let Writers::Shared(m) = writers {
            m.tick();
            self.metrics
                .peers
                .set(i64::try_from(m.live().count()).unwrap_or(i64::MAX));
        }
        for (journey, id, revision) in self.output.follow(&self.codec) {
            if let Some(waiting) = self.unwritten.get_mut(&journey) {
                waiting.retain(|m| !(m.id == id && m.revision == revision));
            }
        }
        let journeys: Vec<String> = self.inputs.keys().cloned().collect();
        for journey in journeys {
            let owns = writers.owns(&journey);
            if self.owned.insert(journey.clone(), owns) == Some(owns) {
                continue;
            }
            self.metrics
                .writes_journey
                .with_label_values(&[&journey])
                .set(i64::from(owns));
            if let Some(push) = &mut self.push {
                push.owns(&journey, owns);
            }
            let waiting = if owns {
                self.unwritten.remove(&journey).unwrap_or_default()
            } else {
                Vec::new()
            };
            tracing::info!(
                journey = %journey,
                owns,
                missing = waiting.len(),
                "{}",
                if owns {
                    "this alerter writes the journey's alerts"
                } else {
                    "another alerter writes the journey's alerts"
                }
            );
            if !waiting.is_empty() {
                self.write(&waiting)?;
            }
        }
        Ok(())
    }

    pub fn run(mut self, opts: RunOptions) -> Result<()> {
        let resumed = self.resume();
        let (consumer, mut to_read) = from_positions(
            &self.cfg,
            &self.cfg.topics.aggregates,
            &format!("{}-alerter", self.group),
            &resumed,
        )?;
        tracing::info!(group = %self.group, "alerter reading the aggregates");
        let mut writers = self.writers(opts);
        let mut shared: Option<Instant> = None;
        self.health.set_ready(matches!(writers, Writers::Alone));
        while !self.shutdown.load(Ordering::Relaxed) {
            if shared.is_none_or(|t| t.elapsed() >= PEERS_EVERY) {
                self.join_when_caught_up(&mut writers, to_read.at_end())?;
                self.share(&mut writers)?;
                self.snapshot_when_due(false);
                shared = Some(Instant::now());
            }
            if let Some(push) = &mut self.push {
                self.rt.block_on(push.tick());
            }
            if opts.until_caught_up && to_read.at_end() {
                break;
            }
            let msg = match consumer.poll(Duration::from_millis(200)) {
                None => continue,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "reading the aggregates topic");
                    continue;
                }
                Some(Ok(msg)) => msg,
            };
            to_read.read(msg.partition(), msg.offset());
            self.positions.insert(msg.partition(), msg.offset() + 1);
            let Some(m) = msg
                .payload()
                .and_then(|b| self.codec.decode_aggregates(b).ok())
            else {
                self.count("undecodable");
                continue;
            };
            if m.group != self.group {
                self.count("other_group");
                continue;
            }
            let journey = m.journey.clone();
            if !self.inputs.contains_key(&journey) {
                self.count("unknown_journey");
                continue;
            }
            self.count(match m.kind {
                cxstream_avro::AggregatesKind::Partial => "partial",
                cxstream_avro::AggregatesKind::Committed => "committed",
            });
            let Some(input) = self.inputs.get_mut(&journey) else {
                continue;
            };
            let read = input.on_record(m);
            for e in &read.errors {
                tracing::warn!(journey = %journey, error = %e, "aggregates of a confirmed batch are missing");
                self.metrics.log_errors.with_label_values(&[&journey]).inc();
            }
            if !read.changes.is_empty() {
                self.publish(&journey, &read.changes)?;
            }
            self.update_gauges(&journey);
            // Live by the touchpoints' clock: answers a survey tool sends late hold back
            // the scores only, not the posting of a broken checkout.
            if let (Some(push), Some(k)) = (&mut self.push, read.known.touchpoints) {
                push.judged(&journey, k);
            }
        }
        self.snapshot_when_due(true);
        // Dropping the members says `leaving`, on every way out.
        drop(writers);
        tracing::info!("alerter stopped");
        Ok(())
    }

    /// Takes up the latest snapshot, if there is one that can be used (see [`snapshot`]):
    /// the offsets to read the aggregates on from (none: from their beginning).
    fn resume(&mut self) -> BTreeMap<i32, i64> {
        let Some((table, _)) = &self.snapshots else {
            return BTreeMap::new();
        };
        let latest = match self.rt.block_on(table.latest(&self.group)) {
            Ok(Some(latest)) => latest,
            Ok(None) => return BTreeMap::new(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the latest snapshot: reading the aggregates from their beginning");
                return BTreeMap::new();
            }
        };
        match Taken::from_bytes(&latest.state).and_then(|t| self.take_up(t)) {
            Ok(positions) => {
                tracing::info!(
                    taken_at_ms = latest.taken_at_ms,
                    bytes = latest.state.len(),
                    positions = ?positions,
                    "alerter resumed from its latest snapshot"
                );
                // The next snapshot reads on from here too in partitions with nothing new.
                self.positions.clone_from(&positions);
                positions
            }
            Err(why) => {
                tracing::info!(
                    taken_at_ms = latest.taken_at_ms,
                    "the latest snapshot is not used, {why}: reading the aggregates from their beginning"
                );
                BTreeMap::new()
            }
        }
    }

    /// Every journey's input from the snapshot, if each was judged under the same map and
    /// parameters; the incidents firing to Alertmanager again.
    fn take_up(&mut self, taken: Taken) -> Result<BTreeMap<i32, i64>, String> {
        let topics = &self.cfg.topics;
        if taken.topics != (topics.aggregates.clone(), topics.alerts.clone()) {
            return Err(format!(
                "it read `{}` and wrote `{}`",
                taken.topics.0, taken.topics.1
            ));
        }
        let mut states = taken.journeys;
        let mut inputs = BTreeMap::new();
        for (name, input) in &self.inputs {
            let state = states
                .remove(name)
                .ok_or_else(|| format!("it has no journey `{name}`"))?;
            let map = input.map.clone();
            let params = map.alerts;
            let resumed = JourneyInput::resume(map, params, state).ok_or_else(|| {
                format!("journey `{name}` was judged under another map or other parameters")
            })?;
            inputs.insert(name.clone(), resumed);
        }
        self.inputs = inputs;
        self.firing = taken
            .firing
            .into_iter()
            .filter(|m| self.inputs.contains_key(&m.journey))
            .map(|m| (m.id.clone(), m))
            .collect();
        let journeys: Vec<String> = self.inputs.keys().cloned().collect();
        for journey in &journeys {
            self.update_gauges(journey);
        }
        if let Some(push) = &mut self.push {
            let firing: Vec<AlertMessage> = self.firing.values().cloned().collect();
            push.on_changes(&firing);
            for (journey, input) in &self.inputs {
                if let Some(k) = input.known.touchpoints {
                    push.judged(journey, k);
                }
            }
        }
        Ok(taken.positions)
    }

    /// Keeps a snapshot when one is due (`alerter.snapshot_every_ms` since the last, or
    /// `now`) and every change judged is on the alerts topic; otherwise at the next round.
    /// One that cannot be kept is logged: the next start reads on from an older one.
    fn snapshot_when_due(&mut self, now: bool) {
        let (Some((table, last)), Some(every)) =
            (&self.snapshots, self.cfg.alerter.snapshot_every_ms)
        else {
            return;
        };
        if !now && last.elapsed() < Duration::from_millis(every) {
            return;
        }
        if self.unwritten.values().any(|w| !w.is_empty()) {
            return;
        }
        let journeys = self
            .inputs
            .iter()
            .map(|(name, input)| (name.as_str(), input.state()))
            .collect();
        let taking = Taking::new(
            (&self.cfg.topics.aggregates, &self.cfg.topics.alerts),
            &self.positions,
            journeys,
            self.firing.values().collect(),
        );
        let taken_at_ms = u64::try_from(unix_now_ms()).unwrap_or(0);
        let kept = taking
            .to_bytes()
            .map_err(anyhow::Error::from)
            .and_then(|bytes| {
                let instance = members::instance_name(&self.cfg);
                self.rt
                    .block_on(table.save(&self.group, &instance, taken_at_ms, &bytes))
                    .map_err(anyhow::Error::from)?;
                Ok(bytes.len())
            });
        match kept {
            Ok(bytes) => {
                tracing::debug!(bytes, "alerter snapshot kept");
                self.metrics
                    .snapshot_seconds
                    .set(i64::try_from(taken_at_ms / 1000).unwrap_or(i64::MAX));
            }
            Err(e) => tracing::warn!(
                error = format!("{e:#}"),
                "alerter snapshot not kept; a start reads on from an older one"
            ),
        }
        if let Some((_, last)) = &mut self.snapshots {
            *last = Instant::now();
        }
    }

    fn count(&self, kind: &str) {
        self.metrics.records_read.with_label_values(&[kind]).inc();
    }

    /// The journey's new changes: written when this alerter owns the journey, otherwise
    /// kept until its owner has written them.
    fn publish(&mut self, journey: &str, changes: &[AlertChange]) -> Result<()> {
        let Some(input) = self.inputs.get(journey) else {
            return Ok(());
        };
        let messages: Vec<_> = changes
            .iter()
            .map(|c| output::message(&input.map, &self.group, c))
            .collect();
        if let Some(push) = &mut self.push {
            push.on_changes(&messages);
        }
        for m in &messages {
            match m.state {
                AlertState::Resolved => self.firing.remove(&m.id),
                AlertState::Firing | AlertState::Updated => {
                    self.firing.insert(m.id.clone(), m.clone())
                }
            };
        }
        if self.owned.get(journey).copied().unwrap_or(true) {
            return self.write(&messages);
        }
        let output = &self.output;
        self.unwritten
            .entry(journey.to_string())
            .or_default()
            .extend(
                messages
                    .into_iter()
                    .filter(|m| !output.has(&m.id, m.revision)),
            );
        Ok(())
    }

    /// Writes the changes, retrying with back-off while ClickHouse or the broker refuse
    /// (not ready meanwhile); gives up only on shutdown, when the next start judges them
    /// again.
    fn write(&mut self, messages: &[AlertMessage]) -> Result<()> {
        let mut wait = Duration::from_millis(500);
        loop {
            match self.rt.block_on(self.output.publish(&self.codec, messages)) {
                Ok(_) => {
                    self.health.set_ready(true);
                    return Ok(());
                }
                Err(e) => {
                    self.health.set_ready(false);
                    tracing::warn!(error = format!("{e:#}"), retry_in = ?wait, "cannot write alerts");
                    if self.shutdown.load(Ordering::Relaxed) {
                        return Err(e.context(
                            "stopping with alert changes unwritten; the next start writes them",
                        ));
                    }
                    // Firing alerts stay posted meanwhile, or Alertmanager resolves them.
                    if let Some(push) = &mut self.push {
                        self.rt.block_on(push.tick());
                    }
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    fn update_gauges(&mut self, journey: &str) {
        let Some(input) = self.inputs.get(journey) else {
            return;
        };
        if let Some(k) = input.known.all {
            self.metrics
                .judged_until_seconds
                .with_label_values(&[journey])
                .set(k / 1000);
        }
        let late = input.watch.late_cells();
        let counted = self.late_counted.entry(journey.to_string()).or_default();
        if late > *counted {
            self.metrics
                .late_cells
                .with_label_values(&[journey])
                .inc_by(late - *counted);
            *counted = late;
        }
        for kind in [
            AlertKind::StepDrop,
            AlertKind::ScoreDrop,
            AlertKind::Silence,
            AlertKind::FlowDrop,
            AlertKind::StageDrop,
        ] {
            let n = input
                .watch
                .firing()
                .filter(|(s, _)| s.kind() == kind)
                .count();
            self.metrics
                .alert_active
                .with_label_values(&[journey, kind.as_str()])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        // Every stage but the last, which has no next stage to convert to.
        let stages = input.map.stages.len().saturating_sub(1);
        for (i, stage) in input.map.stages.iter().take(stages).enumerate() {
            let Some((ratio, _)) = u8::try_from(i)
                .ok()
                .and_then(|s| input.watch.stage_conversion(s))
            else {
                continue;
            };
            self.metrics
                .stage_conversion_ratio
                .with_label_values(&[journey, &stage.name])
                .set(ratio);
        }
    }
}

/// The wall clock, epoch ms (0 before 1970).
fn unix_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
