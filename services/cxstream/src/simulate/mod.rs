//! `cxstream simulate`: produces simulated traffic to the input topics, optionally a few
//! bad records, and writes the simulator's ground truth.

mod incidents;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _, Result};
use cxstream_avro::Codec;
use cxstream_core::{JourneyMap, JourneyMaps, Metric, SurveyAnswer};
use cxstream_simulator::{
    incidents_csv, simulate_maps, Anonymity, Delivery, Lens, Paths, SimConfig, SimRecord,
};
use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::client::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;

use crate::config::Config;
use crate::produce::Producer;

#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// Customers to simulate.
    #[arg(long, default_value_t = 10_000)]
    pub customers: u64,
    /// Simulated period in days (event time; produced as fast as the broker takes it).
    #[arg(long, default_value_t = 1.0)]
    pub days: f64,
    /// Random seed: the same seed produces the same traffic.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Target produce rate in records/s; 0 means as fast as possible.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Where to write the ground truth (CSV of exact per-minute counts).
    #[arg(long, default_value = "ground-truth.csv")]
    pub ground_truth: PathBuf,
    /// Also produce this many bad records (random bytes, truncated, unknown schema, score
    /// out of range), which must end in the DLQ and not in any count.
    #[arg(long, default_value_t = 0)]
    pub bad_records: u64,
    /// `punctual`: customers walk the map's stages in order and producers send when things
    /// happen (a retry now and then); `messy`: the same walk, delivered as real producers do
    /// (late touchpoints, retries a day later, re-sent answers, a survey tool 3 h behind,
    /// browsing bursts, clocks a day ahead); `journeys`: messy delivery of journeys as they
    /// really happen (skipped stages, going back, customers who return after a journey
    /// ended, steps that convert within their budget or not, touchpoints no map declares,
    /// and the first step — in the app — converting at a fifth of its target from 30 % to
    /// 60 % of the period); `incidents`: journeys as they really happen, delivered on time,
    /// with daily and weekly cycles, and four incidents (the first step converting half as
    /// often in the app at 55–60 % of the period, the first stage a third less in the first
    /// segment at 65–70 %, the web silent at 75–76 %, the last stage's first touchpoint's NPS
    /// answers 3 points lower at 85–95 %; at least 2 days); `identity`: the journeys scenario with 40 % of customers
    /// browsing anonymously on their device (web and app) until they sign in to buy or on
    /// their return, or never, and now and then signed out after — it needs identity
    /// stitching turned on (the truth follows its rule and `identity.window_ms`), and ends
    /// with one touchpoint on each partition dated a window after its last record, the traffic
    /// that would follow, so that every visitor's wait ends; whose journey each anonymous
    /// touchpoint counts in is written to `<ground truth>.owners.csv`.
    #[arg(long, value_enum, default_value_t = Scenario::Punctual)]
    pub scenario: Scenario,
    /// Incidents to inject instead of the scenario's own: a YAML list, each with `kind`
    /// (step_drop, stage_drop, silence, score_shift), its subject (`step`, `stage`,
    /// `channel` for a silence, `touchpoint`), an optional `channel` and `segment`, `drop`
    /// (0–1) or `shift` (points, with `metric`: nps, csat, ces), `start_hours` (after the
    /// period's start) and `minutes`. Their truth goes to `<ground truth>.incidents.csv`.
    #[arg(long)]
    pub incidents: Option<PathBuf>,
    /// Start of the simulated period: RFC 3339 (`2026-11-02T00:00:00Z`) or epoch ms.
    /// Default 2026-11-02T00:00:00Z, a Monday.
    #[arg(long, value_parser = parse_time, conflicts_with = "ends_now")]
    pub start: Option<i64>,
    /// The simulated period ends now (its traffic is live for the alerter).
    #[arg(long)]
    pub ends_now: bool,
    /// Produce only the records sent at or after this time (RFC 3339 or epoch ms): with
    /// `--sent-before`, the same simulation is produced in parts. The truth is always the
    /// whole period's.
    #[arg(long, value_parser = parse_time)]
    pub sent_from: Option<i64>,
    /// Produce only the records sent before this time (RFC 3339 or epoch ms).
    #[arg(long, value_parser = parse_time)]
    pub sent_before: Option<i64>,
}

/// RFC 3339 or epoch milliseconds.
fn parse_time(s: &str) -> Result<i64, String> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    let at = humantime::parse_rfc3339_weak(s).map_err(|e| {
        format!("`{s}` is neither an RFC 3339 time in UTC (2026-11-02T00:00:00Z) nor epoch ms: {e}")
    })?;
    at.duration_since(UNIX_EPOCH)
        .map_err(|_| format!("`{s}` is before 1970"))
        .and_then(|d| i64::try_from(d.as_millis()).map_err(|e| e.to_string()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    Punctual,
    Messy,
    Journeys,
    Incidents,
    Identity,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Produced {
    pub touchpoints: u64,
    pub answers: u64,
    pub bad: u64,
}

#[derive(Default)]
struct DeliveryCounter {
    failed: AtomicU64,
}

impl ClientContext for DeliveryCounter {}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if result.is_err() {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

pub fn run(cfg: &Config, maps: &JourneyMaps, args: &SimulateArgs) -> Result<Produced> {
    if args.customers == 0 || args.days <= 0.0 {
        bail!("--customers and --days must be positive");
    }
    if let (Some(from), Some(before)) = (args.sent_from, args.sent_before) {
        if from >= before {
            bail!("--sent-from must be before --sent-before: nothing would be sent");
        }
    }
    if args.scenario == Scenario::Incidents && args.incidents.is_none() && args.days < 2.0 {
        bail!(
            "--scenario incidents needs --days 2 or more: the detectors learn a day of traffic \
             before they judge one (silence needs a week), and its incidents are in the period's \
             second half"
        );
    }
    let producer: Producer<DeliveryCounter> = cfg
        .kafka
        .producer_config()
        .create_with_context(DeliveryCounter::default())
        .context("creating the producer")?;
    let period_ms = args.days * 86_400_000.0;
    let start_ms = match (args.start, args.ends_now) {
        (Some(start), _) => start,
        (None, true) => now_ms()? - period_ms as i64,
        (None, false) => SimConfig::default().start_ms,
    };
    let injected = match (&args.incidents, args.scenario) {
        (Some(file), _) => incidents::read(file, start_ms)?,
        (None, Scenario::Journeys | Scenario::Identity) => {
            incidents::journeys(maps.first(), start_ms, period_ms)
        }
        (None, Scenario::Incidents) => incidents::scenario(maps.first(), start_ms, period_ms),
        (None, _) => Vec::new(),
    };
    let sim_cfg = SimConfig {
        customers: args.customers,
        days: args.days,
        seed: args.seed,
        start_ms,
        delivery: match args.scenario {
            Scenario::Punctual | Scenario::Incidents => Delivery::punctual(),
            Scenario::Messy | Scenario::Journeys | Scenario::Identity => Delivery::messy(),
        },
        paths: match args.scenario {
            Scenario::Journeys | Scenario::Identity | Scenario::Incidents => Paths::non_linear(),
            Scenario::Punctual | Scenario::Messy => Paths::default(),
        },
        anonymity: anonymity(cfg, &producer, args.scenario)?,
        seasonality: args.scenario == Scenario::Incidents,
        incidents: injected,
    };
    let started = Instant::now();
    let maps: Vec<&JourneyMap> = maps.iter().map(|m| &**m).collect();
    let sim = simulate_maps(&maps, &sim_cfg).context("simulating the journey maps")?;
    for (i, lens) in sim.lenses.iter().enumerate() {
        write_truth(&args.ground_truth, i, lens)?;
    }
    if sim_cfg.anonymity.is_some() {
        write_owners(&args.ground_truth, &sim.owners)?;
    }
    if !sim_cfg.incidents.is_empty() {
        let path = args.ground_truth.with_extension("incidents.csv");
        std::fs::write(&path, incidents_csv(&sim_cfg.incidents, &sim.incidents))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    // What the rules refuse (and keep in refused_events), next to the counts.
    let refused = args.ground_truth.with_extension("refused.csv");
    std::fs::write(
        &refused,
        format!("reason,events\nfuture,{}\n", sim.future_dated),
    )
    .with_context(|| format!("writing {}", refused.display()))?;
    tracing::info!(records = sim.records.len(), ground_truth = %args.ground_truth.display(), "simulated");

    let codec = Codec::new().context("building the Avro codec")?;
    let wanted = |at: i64| {
        args.sent_from.is_none_or(|from| at >= from)
            && args.sent_before.is_none_or(|before| at < before)
    };
    let to_send = sim.records.iter().filter(|s| wanted(s.at_ms)).count() as u64;
    let bar = ProgressBar::new(to_send + args.bad_records);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} produce [{bar:40}] {pos}/{len} {per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut out = Produced::default();
    let mut buf = Vec::with_capacity(512);
    let pace = Pace::new(args.rate);
    for (i, sent) in sim.records.iter().filter(|s| wanted(s.at_ms)).enumerate() {
        buf.clear();
        let rec = &sent.record;
        let topic = match rec {
            SimRecord::Touchpoint(t) => {
                codec.encode_touchpoint(t, &mut buf)?;
                out.touchpoints += 1;
                &cfg.topics.touchpoints
            }
            SimRecord::Answer(a) => {
                codec.encode_answer(a, &mut buf)?;
                out.answers += 1;
                &cfg.topics.survey_responses
            }
        };
        // The record's timestamp is when the simulated producer sent it.
        send(
            &producer,
            topic,
            rec.key().as_bytes(),
            &buf,
            (Some(sent.at_ms), sent.partition),
        )?;
        if i % 1024 == 0 {
            bar.set_position(i as u64);
            pace.wait(i as u64);
        }
    }
    for i in 0..args.bad_records {
        let (topic, bytes) = bad_record(&codec, i, cfg)?;
        send(
            &producer,
            topic,
            format!("bad-{i}").as_bytes(),
            &bytes,
            (None, None),
        )?;
        out.bad += 1;
    }
    producer
        .flush(Duration::from_secs(120))
        .context("waiting for the broker to acknowledge every record")?;
    bar.finish_and_clear();
    let failed = producer.context().failed.load(Ordering::Relaxed);
    if failed > 0 {
        bail!("{failed} records were not acknowledged by the broker");
    }
    let secs = started.elapsed().as_secs_f64();
    let total = out.touchpoints + out.answers + out.bad;
    eprintln!(
        "simulate: produced {} touchpoints, {} answers, {} bad records in {secs:.1}s ({:.0} records/s); ground truth in {}",
        out.touchpoints,
        out.answers,
        out.bad,
        total as f64 / secs,
        args.ground_truth.display()
    );
    Ok(out)
}

fn now_ms() -> Result<i64> {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the clock is before 1970")?;
    i64::try_from(since.as_millis()).context("the clock is past what epoch ms hold")
}

/// The identity scenario's anonymous visitors, with the rule's window from the config and
/// the touchpoints topic's partitions from the broker; without stitching their touchpoints
/// would only be dead-lettered.
fn anonymity(
    cfg: &Config,
    producer: &BaseProducer<DeliveryCounter>,
    scenario: Scenario,
) -> Result<Option<Anonymity>> {
    if scenario != Scenario::Identity {
        return Ok(None);
    }
    if !cfg.identity.enabled {
        bail!(
            "--scenario identity sends anonymous touchpoints, which only identity stitching \
             counts: set identity.enabled: true in the config (or CXSTREAM_IDENTITY_ENABLED=true)"
        );
    }
    let topic = &cfg.topics.touchpoints;
    let metadata = producer
        .client()
        .fetch_metadata(Some(topic), Duration::from_secs(30))
        .with_context(|| format!("reading the partitions of {topic}"))?;
    let partitions = metadata
        .topics()
        .first()
        .map_or(0, |t| t.partitions().len());
    if partitions == 0 {
        bail!("topic {topic} has no partitions: create the topics first (`cxstream topics`)");
    }
    Ok(Some(Anonymity {
        share: 0.4,
        window_ms: cfg.identity.window_ms,
        partitions: u32::try_from(partitions).context("partitions of the touchpoints topic")?,
    }))
}

/// Whose journey each touchpoint sent without a customer id counts in, as CSV
/// (`event_id,customer_id`) at `<base>.owners.csv`.
fn write_owners(
    base: &std::path::Path,
    owners: &std::collections::BTreeMap<String, String>,
) -> Result<()> {
    let path = base.with_extension("owners.csv");
    let mut out = String::from("event_id,customer_id\n");
    for (event, owner) in owners {
        out.push_str(&format!("{event},{owner}\n"));
    }
    std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))
}

/// Writes a map's ground truth: the first map's at `base` (steps at `<base>.steps.csv`),
/// each other's at `<base>.journey-<name>.csv` (steps at `<base>.journey-<name>.steps.csv`;
/// the prefix keeps a map named `steps` or `refused` off the other files).
fn write_truth(base: &std::path::Path, index: usize, lens: &Lens) -> Result<()> {
    let (counts, steps) = if index == 0 {
        (base.to_path_buf(), base.with_extension("steps.csv"))
    } else {
        (
            base.with_extension(format!("journey-{}.csv", lens.journey)),
            base.with_extension(format!("journey-{}.steps.csv", lens.journey)),
        )
    };
    std::fs::write(&counts, lens.truth_csv())
        .with_context(|| format!("writing ground truth to {}", counts.display()))?;
    std::fs::write(&steps, lens.step_truth_csv())
        .with_context(|| format!("writing step ground truth to {}", steps.display()))
}

fn send(
    producer: &BaseProducer<DeliveryCounter>,
    topic: &str,
    key: &[u8],
    payload: &[u8],
    (timestamp_ms, partition): (Option<i64>, Option<u32>),
) -> Result<()> {
    let mut record = BaseRecord::to(topic).key(key).payload(payload);
    if let Some(t) = timestamp_ms {
        record = record.timestamp(t);
    }
    if let Some(p) = partition {
        record = record.partition(i32::try_from(p).context("partition number")?);
    }
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err((e, _)) => return Err(e).context("producing a record"),
        }
    }
}

/// One of the four kinds of bad input, in turn.
fn bad_record<'c>(codec: &Codec, i: u64, cfg: &'c Config) -> Result<(&'c str, Vec<u8>)> {
    let answer = SurveyAnswer {
        response_id: format!("bad-{i}"),
        customer_id: Some(format!("bad-{i}")),
        answer_time: SimConfig::default().start_ms,
        metric: Metric::Nps,
        score: 11,
        touchpoint_event_id: None,
        touchpoint: None,
        channel: None,
        comment: None,
        attributes: Default::default(),
    };
    let mut valid = Vec::new();
    codec.encode_answer(&answer, &mut valid)?;
    Ok(match i % 4 {
        0 => (
            &cfg.topics.touchpoints,
            (0..64u64)
                .map(|b| (b.wrapping_mul(2_654_435_761) ^ i) as u8)
                .collect(),
        ),
        1 => (
            &cfg.topics.survey_responses,
            valid[..valid.len() / 2].to_vec(),
        ),
        2 => {
            let mut v = valid;
            v[2..10].copy_from_slice(&0xDEAD_BEEF_u64.to_le_bytes());
            (&cfg.topics.survey_responses, v)
        }
        _ => (&cfg.topics.survey_responses, valid),
    })
}

/// Keeps a target rate by sleeping when ahead of schedule.
struct Pace {
    rate: u64,
    start: Instant,
}

impl Pace {
    fn new(rate: u64) -> Self {
        Pace {
            rate,
            start: Instant::now(),
        }
    }

    fn wait(&self, sent: u64) {
        if self.rate == 0 {
            return;
        }
        let due = Duration::from_secs_f64(sent as f64 / self.rate as f64);
        if let Some(ahead) = due.checked_sub(self.start.elapsed()) {
            std::thread::sleep(ahead);
        }
    }
}
