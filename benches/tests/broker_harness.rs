//! The broker harness at a small size, on the local stack's broker engine
//! (CX_BROKER_STORAGE, TANSU_BIN and CX_POSTGRES_PORT from deploy/local/env.sh, which
//! deploy/local/test.sh sources): a broker of its own on a spare port, records produced
//! while three consumer processes are killed (SIGKILL and SIGTERM) and the broker is
//! restarted with its data; the group must end with every record read, none lost or
//! wrong, and its committed offsets at the log end. (Records processed twice are printed,
//! not asserted: Tansu 0.6.0's coordinator does not fence a member it did not tell of a
//! rebalance; see README § Local broker.) The full size is `benches/broker.sh`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn env(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is not set: run the tests through deploy/local/test.sh"))
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A private PostgreSQL cluster for the harness's broker, wiped when the test ends.
struct Postgres(PathBuf);

impl Postgres {
    fn start(dir: &Path, port: u16) -> (Postgres, String) {
        let pg = dir.join("pg");
        let out = Command::new(repo().join("deploy/local/postgres.sh"))
            .arg("start")
            .arg(&pg)
            .arg(port.to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "postgres.sh start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let url = String::from_utf8(out.stdout).unwrap().trim().to_string();
        (Postgres(pg), url)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("deploy/local/postgres.sh"))
            .arg("wipe")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn a_consumer_group_reads_every_record_through_kills_and_a_broker_restart() {
    let engine = env("CX_BROKER_STORAGE");
    let tansu = env("TANSU_BIN");
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let run = format!("bh{}", nanos % 1_000_000_000_000);
    let dir = std::env::temp_dir().join(format!("cxstream-broker-harness-{run}"));
    let workdir = dir.join("broker");
    std::fs::create_dir_all(&workdir).unwrap();
    // Beside the local stack's own PostgreSQL port, never on it.
    let pg_port: u16 = env("CX_POSTGRES_PORT").parse::<u16>().unwrap() + 1;
    let mut _postgres = None;
    let (storage, storage_dir) = match engine.as_str() {
        "postgres" => {
            let (pg, url) = Postgres::start(&dir, pg_port);
            let data = pg.0.clone();
            _postgres = Some(pg);
            (url, Some(data))
        }
        "sqlite" => ("sqlite://tansu.db".to_string(), Some(workdir.clone())),
        "memory" => ("memory://tansu/".to_string(), None),
        other => panic!("unknown CX_BROKER_STORAGE {other}"),
    };
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_broker_harness"));
    cmd.args([
        "run",
        "--engine",
        &engine,
        "--tansu",
        &tansu,
        "--storage",
        &storage,
    ])
    .arg("--workdir")
    .arg(&workdir)
    // 20,000 records at 400/s: the six disturbances fall about 8 s apart.
    .args(["--port", "19293", "--records", "20000", "--max-rate", "400"])
    .args(["--run", &run, "--deadline-min", "8"]);
    if let Some(d) = &storage_dir {
        cmd.arg("--storage-dir").arg(d);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "the harness found a problem on {engine}:\n{stdout}\n{}\n(kept: {})",
        String::from_utf8_lossy(&out.stderr),
        dir.display()
    );
    assert!(stdout.contains("complete: yes"), "{stdout}");
    std::fs::remove_dir_all(&dir).unwrap();
}
