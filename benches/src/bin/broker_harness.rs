//! Broker harness: `run` measures one storage engine of the broker on the cxstream-shaped
//! workload (see `cxstream_benches::broker`); `consume` is a member of its consumer group,
//! started by `run` as a separate process so it can be killed.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};
use cxstream_benches::broker::{consumer, workload};

#[derive(Debug, Parser)]
#[command(name = "broker_harness")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Start the broker, run the workload with kills and a restart, verify, report.
    Run {
        /// Label of the engine in the report (sqlite, memory, postgres, ...).
        #[arg(long)]
        engine: String,
        /// The tansu binary.
        #[arg(long)]
        tansu: PathBuf,
        /// Tansu's --storage-engine URL.
        #[arg(long)]
        storage: String,
        /// The broker's working directory (its log; sqlite files are relative to it).
        #[arg(long)]
        workdir: PathBuf,
        /// Directory whose size is the engine's storage (omit for memory: RSS is reported).
        #[arg(long)]
        storage_dir: Option<PathBuf>,
        #[arg(long, default_value_t = 19192)]
        port: u16,
        #[arg(long, default_value_t = 5_000_000)]
        records: u64,
        #[arg(long, default_value_t = 8)]
        topics: u32,
        #[arg(long, default_value_t = 4)]
        partitions: i32,
        #[arg(long, default_value_t = 3)]
        consumers: usize,
        /// Bytes per record value (cxstream's Avro touchpoints are 100–150 bytes).
        #[arg(long, default_value_t = 120)]
        payload_bytes: usize,
        /// Prefix of this run's topic and group names (unique per run).
        #[arg(long)]
        run: String,
        /// Give up (and report the broker as not answering) after this many minutes.
        #[arg(long, default_value_t = 60)]
        deadline_min: u64,
        /// Produce at most this many records per second (0: unlimited); spreads the
        /// disturbances of small runs over time.
        #[arg(long, default_value_t = 0)]
        max_rate: u64,
        /// Run without consumer kills and broker restart (a calm baseline).
        #[arg(long)]
        calm: bool,
        /// Append the JSON report to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// A consumer-group member (started by `run`).
    Consume {
        #[arg(long)]
        brokers: String,
        #[arg(long)]
        group: String,
        /// Comma-separated topics, in the workload's order.
        #[arg(long, value_delimiter = ',')]
        topics: Vec<String>,
        #[arg(long)]
        ledger: PathBuf,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Consume {
            brokers,
            group,
            topics,
            ledger,
        } => {
            // librdkafka logs through the `log` crate; this shows them (and its debug
            // contexts from CX_HARNESS_KAFKA_DEBUG) on stderr, which `run` keeps per consumer.
            tracing_subscriber::fmt()
                .with_writer(std::io::stderr)
                .init();
            let stop = Arc::new(AtomicBool::new(false));
            signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())
                .context("installing the SIGTERM handler")?;
            let args = consumer::ConsumerArgs {
                brokers: &brokers,
                group: &group,
                topics: &topics,
                ledger: &ledger,
                commit_every: Duration::from_millis(250),
            };
            consumer::run(&args, &stop).map_err(anyhow::Error::msg)
        }
        Cmd::Run {
            engine,
            tansu,
            storage,
            workdir,
            storage_dir,
            port,
            records,
            topics,
            partitions,
            consumers,
            payload_bytes,
            run,
            deadline_min,
            max_rate,
            calm,
            json,
        } => {
            if topics == 0 || partitions <= 0 || consumers == 0 || records == 0 {
                bail!("--records, --topics, --partitions and --consumers must be at least 1");
            }
            let args = workload::RunArgs {
                tansu,
                storage,
                workdir,
                storage_dir,
                port,
                records,
                topics,
                partitions,
                consumers,
                payload_bytes,
                run,
                deadline: Duration::from_secs(deadline_min * 60),
                max_rate,
                disturb: !calm,
            };
            let report = workload::run(&args).map_err(anyhow::Error::msg)?;
            let (text, line) = workload::render(&engine, &report);
            println!("{text}");
            for l in &report.stopped_answering {
                println!("  ! {l}");
            }
            for l in &report.stalls {
                println!("  stall: {l}");
            }
            for l in &report.broker_log {
                println!("  broker log: {l}");
            }
            if let Some(path) = json {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .with_context(|| format!("opening {}", path.display()))?;
                writeln!(f, "{line}")?;
            }
            // Exit status: the broker served and lost nothing (`complete`). Records processed
            // twice are reported: they mean the coordinator let two members own a partition.
            let ok = report.stopped_answering.is_empty() && report.verdict.complete();
            std::process::exit(if ok { 0 } else { 1 });
        }
    }
}
