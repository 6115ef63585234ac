//! The `cxstream` binary: one command per service, wiring the adapters together.

mod alerter;
mod config;
mod erase;
mod from_beginning;
mod journey;
mod probe;
mod process;
mod produce;
mod report;
mod simulate;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use cxstream_core::journey_map::format_duration_ms;
use cxstream_core::{JourneyMap, JourneyMaps};
use cxstream_kafka::TopicSpec;

use config::Config;

// Decoding allocates a few small strings per record; mimalloc makes that cheap.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// cxstream: customer-experience feedback pipeline. Touchpoints and survey answers from
/// Kafka become per-customer journeys, exact NPS/CSAT/CES and stage metrics in ClickHouse.
#[derive(Debug, Parser)]
#[command(name = "cxstream", version, propagate_version = true)]
struct Cli {
    /// YAML configuration file (every option has a default; see README § Configuration).
    #[arg(long, short, global = true, env = "CXSTREAM_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply the ClickHouse migrations in schemas/clickhouse/ that are not applied yet.
    Migrate,
    /// Create the Kafka topics (inputs and identities co-partitioned, DLQ, aggregates,
    /// alerts) if missing.
    Topics,
    /// Produce simulated customer journeys and survey answers; write the ground truth.
    Simulate(simulate::SimulateArgs),
    /// Run the journey service: inputs → journeys → facts and per-minute aggregates in ClickHouse.
    Journey {
        /// Exit once every input partition is assigned here, read to its end and committed
        /// (a single instance: demo, tests).
        #[arg(long)]
        until_caught_up: bool,
    },
    /// Run the alerter: committed per-minute aggregates → alerts on drops, score drops and
    /// silence, to ClickHouse and the alerts topic.
    Alerter {
        /// Exit once the aggregates topic is read to its end (tests).
        #[arg(long)]
        until_caught_up: bool,
    },
    /// Forget customers (right to be forgotten): record the erasure, wait for the journey
    /// services to apply it, delete the customers' rows. Their events still count, anonymously.
    Erase(erase::EraseArgs),
    /// Print a summary of what is in ClickHouse: events, NPS/CSAT/CES per stage, funnels,
    /// DLQ count.
    Report {
        /// Also write one self-contained HTML page with charts (funnel against targets,
        /// score trends with intervals, heat map) to this file.
        #[arg(long, value_name = "FILE")]
        html: Option<PathBuf>,
    },
    /// Check that Kafka and ClickHouse serve: a metadata request, a consumer-group round
    /// trip (join, commit, read the commit back, leave) and a ClickHouse query.
    Probe(probe::ProbeArgs),
    /// Check a journey map file and print its stages and touchpoints.
    CheckMap {
        /// Journey map YAML (default: every map of journey.maps, checked as a set).
        path: Option<PathBuf>,
    },
}

fn main() {
    // Inert unless built with `--features failpoints` and FAILPOINTS is set (crash tests).
    let _failpoints = fail::FailScenario::setup();
    let cli = Cli::parse();
    let cfg = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cxstream: configuration error: {e:#}");
            std::process::exit(2);
        }
    };
    init_logging(&cfg);
    if let Err(e) = run(cli.command, cfg) {
        eprintln!("cxstream: {e:#}");
        std::process::exit(1);
    }
}

fn init_logging(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&cfg.log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour codes only for a person at a terminal, never in log files or collectors.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if cfg.log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn load_map(path: &std::path::Path) -> Result<JourneyMap> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "reading journey map {} (set journey.maps or CXSTREAM_JOURNEY_MAPS)",
            path.display()
        )
    })?;
    Ok(JourneyMap::from_yaml(&path.display().to_string(), &text)?)
}

/// The configured journey maps, checked one by one and as a set that runs together.
fn load_maps(cfg: &Config) -> Result<JourneyMaps> {
    let maps = cfg
        .journey
        .maps
        .iter()
        .map(|p| load_map(p))
        .collect::<Result<Vec<_>>>()?;
    JourneyMaps::new(maps).context("journey.maps")
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn run(command: Command, cfg: Config) -> Result<()> {
    match command {
        Command::Migrate => {
            let rt = runtime()?;
            let conn = cfg.clickhouse_connection();
            rt.block_on(conn.check_login())?;
            let applied = rt.block_on(cxstream_clickhouse::apply_migrations(&conn))?;
            if applied.is_empty() {
                println!(
                    "migrate: database `{}` is up to date",
                    cfg.clickhouse.database
                );
            } else {
                println!(
                    "migrate: applied {applied:?} to database `{}`",
                    cfg.clickhouse.database
                );
            }
            Ok(())
        }
        Command::Topics => {
            let t = &cfg.topics;
            let specs = [
                (t.touchpoints.as_str(), t.partitions),
                (t.survey_responses.as_str(), t.partitions),
                (t.aggregates.as_str(), t.partitions),
                (t.identities.as_str(), t.partitions),
                (t.alerts.as_str(), 1),
                (t.dlq.as_str(), 1),
                (t.alerter_members.as_str(), 1),
                (t.erasures.as_str(), 1),
            ]
            .map(|(name, partitions)| TopicSpec {
                name: name.to_string(),
                partitions,
                keep_forever: name == t.erasures,
            });
            runtime()?.block_on(cxstream_kafka::ensure_topics(&cfg.kafka, &specs))?;
            println!("topics: ready ({} partitions for the inputs)", t.partitions);
            Ok(())
        }
        Command::Simulate(args) => {
            let maps = load_maps(&cfg)?;
            simulate::run(&cfg, &maps, &args).map(|_| ())
        }
        Command::Journey { until_caught_up } => {
            run_journey(cfg, journey::RunOptions { until_caught_up })
        }
        Command::Alerter { until_caught_up } => {
            run_alerter(cfg, alerter::RunOptions { until_caught_up })
        }
        Command::Report { html } => {
            let maps = load_maps(&cfg)?;
            print!(
                "{}",
                runtime()?.block_on(report::run(&cfg, &maps, html.as_deref()))?
            );
            Ok(())
        }
        Command::Probe(args) => probe::run(&cfg, &args),
        Command::Erase(args) => erase::run(&cfg, &load_maps(&cfg)?, &args),
        Command::CheckMap { path: Some(path) } => {
            print_map(&load_map(&path)?);
            Ok(())
        }
        Command::CheckMap { path: None } => {
            let maps = load_maps(&cfg)?;
            for map in maps.iter() {
                print_map(map);
            }
            Ok(())
        }
    }
}

fn print_map(map: &JourneyMap) {
    println!(
        "journey `{}`: {} stages, {} touchpoints, {} channels, {} steps",
        map.name,
        map.stages.len(),
        map.touchpoints.len(),
        map.channels.len(),
        map.steps.len()
    );
    for (i, s) in map.stages.iter().enumerate() {
        let tps: Vec<&str> = map
            .touchpoints_of(i as u8)
            .map(|t| map.touchpoint_name(t))
            .collect();
        println!(
            "  {} (budget {}, target {:.0}%): {}",
            s.name,
            format_duration_ms(s.budget_ms),
            s.target_conversion * 100.0,
            tps.join(", ")
        );
    }
    let names = |tps: &[u16]| {
        tps.iter()
            .map(|t| map.touchpoint_name(*t))
            .collect::<Vec<_>>()
            .join(" | ")
    };
    for s in &map.steps {
        println!(
            "  step {} (budget {}, target {:.0}%): {} -> {}",
            s.name,
            format_duration_ms(s.budget_ms),
            s.target_conversion * 100.0,
            names(&s.from),
            names(&s.to)
        );
    }
    let c = &map.cases;
    println!(
        "  cases: NPS <= {}, CSAT <= {}, CES <= {}; follow up within {}; owner {} unless:",
        c.nps_at_most,
        c.csat_at_most,
        c.ces_at_most,
        format_duration_ms(c.follow_up_ms),
        c.default_owner
    );
    for r in &c.owners {
        let mut when = Vec::new();
        if let Some(s) = r.stage {
            when.push(format!("stage {}", map.stage_name(s)));
        }
        if let Some(ch) = r.channel {
            when.push(format!("channel {}", map.channel_name(ch)));
        }
        if let Some(t) = r.touchpoint {
            when.push(format!("touchpoint {}", map.touchpoint_name(t)));
        }
        if let Some(s) = r.segment {
            when.push(format!("segment {}", map.segment_name(s)));
        }
        println!("    {} -> {}", when.join(", "), r.owner);
    }
}

fn run_journey(cfg: Config, opts: journey::RunOptions) -> Result<()> {
    let maps = load_maps(&cfg)?;
    let metrics = cxstream_http::JourneyMetrics::new().context("registering metrics")?;
    let s = Serving::start(&cfg, metrics.registry.clone())?;
    let journeys: Vec<&str> = maps.iter().map(|m| m.name.as_str()).collect();
    tracing::info!(addr = %s.addr, journeys = ?journeys, group = %cfg.journey.group_id, "journey service starting");
    // A refused login is a configuration error, not an outage to wait out.
    let conn = cfg.clickhouse_connection();
    s.rt.block_on(conn.check_login())?;
    // So is a map that moved a list. Unchecked now (ClickHouse not answering), it is
    // checked before the first partition resumes, which waits until it passes.
    for map in maps.iter() {
        match s.rt.block_on(cxstream_clickhouse::map_positions::check(
            &conn.client(),
            map,
        )) {
            Err(e @ cxstream_clickhouse::Error::MapMoved(_)) => return Err(e.into()),
            Err(e) => {
                tracing::warn!(journey = %map.name, error = %e, "cannot check the journey map's positions yet")
            }
            Ok(()) => {}
        }
    }
    let service = journey::JourneyService::new(
        cfg,
        maps,
        metrics,
        s.health.clone(),
        s.shutdown.clone(),
        s.rt.handle().clone(),
    )?;
    s.run("journey-consumer", move || service.run(opts))
}

fn run_alerter(cfg: Config, opts: alerter::RunOptions) -> Result<()> {
    let maps = load_maps(&cfg)?;
    let metrics = cxstream_http::AlerterMetrics::new().context("registering metrics")?;
    let s = Serving::start(&cfg, metrics.registry.clone())?;
    tracing::info!(addr = %s.addr, "alerter starting");
    s.rt.block_on(cfg.clickhouse_connection().check_login())?;
    let alerter = alerter::Alerter::new(
        cfg,
        &maps,
        metrics,
        s.health.clone(),
        s.shutdown.clone(),
        s.rt.handle().clone(),
    )?;
    s.run("alerter", move || alerter.run(opts))
}

/// What a long-running service runs with: the runtime, `/metrics` and the health endpoints
/// on `http.listen`, and a flag that SIGTERM or SIGINT sets.
struct Serving {
    rt: tokio::runtime::Runtime,
    addr: std::net::SocketAddr,
    health: cxstream_http::Health,
    shutdown: Arc<AtomicBool>,
}

impl Serving {
    fn start(cfg: &Config, registry: cxstream_http::Registry) -> Result<Self> {
        let rt = runtime()?;
        let health = cxstream_http::Health::default();
        let addr = rt
            .block_on(cxstream_http::serve(
                cfg.http.listen,
                registry,
                health.clone(),
            ))
            .with_context(|| format!("listening on {} (http.listen)", cfg.http.listen))?;
        let shutdown = Arc::new(AtomicBool::new(false));
        {
            let shutdown = shutdown.clone();
            rt.spawn(async move {
                wait_for_signal().await;
                tracing::info!("signal received");
                shutdown.store(true, Ordering::Relaxed);
            });
        }
        Ok(Serving {
            rt,
            addr,
            health,
            shutdown,
        })
    }

    /// Runs the service's loop on a thread of its own (its blocking Kafka calls stay off
    /// the runtime) until it returns, then stops the runtime.
    fn run(self, name: &str, service: impl FnOnce() -> Result<()> + Send + 'static) -> Result<()> {
        let result = std::thread::Builder::new()
            .name(name.into())
            .spawn(service)
            .with_context(|| format!("starting the {name} thread"))?
            .join()
            .map_err(|_| anyhow::anyhow!("the {name} thread panicked"))?;
        self.rt.shutdown_timeout(std::time::Duration::from_secs(2));
        result
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
