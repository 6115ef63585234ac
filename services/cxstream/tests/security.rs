//! Credentials against the real ClickHouse: a login with a password (the local stack's
//! `cx_secured` user, whose SHA-256 is in `deploy/local/clickhouse/users.xml`) works from a
//! file and is never shown in a log line — at the most verbose level — or on `/metrics`; a
//! wrong one stops every command at once with a message that says what to fix, and is not
//! shown either.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{assert_cells_equal, Stack};

const USER: &str = "cx_secured";
const PASSWORD: &str = "cx-test-password-7f3a";

/// The stack's configuration, logging in as `cx_secured` with the password in a file.
fn secured_config(s: &Stack, password: &str) -> PathBuf {
    let file = s.dir.join("clickhouse-password");
    std::fs::write(&file, format!("{password}\n")).unwrap();
    let text = std::fs::read_to_string(&s.config).unwrap();
    let path = s.dir.join("secured.yaml");
    std::fs::write(
        &path,
        text.replacen(
            "clickhouse:\n",
            &format!(
                "clickhouse:\n  user: {USER}\n  password_file: {}\n",
                file.display()
            ),
            1,
        ),
    )
    .unwrap();
    path
}

fn cxstream(config: &PathBuf, args: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_cxstream"));
    c.arg("--config").arg(config).args(args);
    c
}

#[test]
fn a_password_from_a_file_logs_in_and_is_never_shown() {
    let s = Stack::new("sec_ok");
    s.simulate(300, 0.3, 2);
    let config = secured_config(&s, PASSWORD);
    let migrate = cxstream(&config, &["migrate"]).output().unwrap();
    let mut logs = String::from_utf8_lossy(&migrate.stderr).into_owned();
    assert!(migrate.status.success(), "{logs}");

    let mut child = cxstream(&config, &["journey"])
        .env("CXSTREAM_LOG_LEVEL", "trace")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in stderr.lines().map_while(Result::ok) {
            if let Some(addr) = line.split("addr=").nth(1) {
                let _ = tx.send(addr.split_whitespace().next().unwrap_or("").to_string());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the service says where it listens");
    let total = (s
        .read_topic(&s.topic("touchpoints"), common::PARTITIONS)
        .len()
        + s.read_topic(&s.topic("answers"), common::PARTITIONS).len()) as i64;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let committed = s
            .committed_records_by_journey()
            .values()
            .copied()
            .min()
            .unwrap_or(0);
        if committed >= total {
            break;
        }
        assert!(Instant::now() < deadline, "nothing committed as {USER}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut metrics = String::new();
    let mut c = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        c,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    c.read_to_string(&mut metrics).unwrap();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    assert!(child.wait().unwrap().success());
    logs.push_str(&reader.join().unwrap());

    assert!(
        logs.lines().count() > 20,
        "the trace log is not verbose: {logs}"
    );
    assert!(metrics.contains("cxstream_batches_committed_total"));
    for (what, text) in [("a log line", &logs), ("/metrics", &metrics)] {
        assert!(!text.contains(PASSWORD), "the password is in {what}");
    }
    assert_cells_equal(&s.truth(), &s.cells());
}

#[test]
fn a_wrong_password_stops_every_command_with_what_to_fix() {
    let s = Stack::new("sec_wrong");
    let wrong = "not-the-password-4411";
    let config = secured_config(&s, wrong);
    for args in [&["migrate"][..], &["journey"], &["alerter"]] {
        let started = Instant::now();
        // A file, not a pipe: a verbose child must never block on a full pipe.
        let log = s.dir.join(format!("{}.stderr", args[0]));
        let mut child = cxstream(&config, args)
            .env("CXSTREAM_LOG_LEVEL", "trace")
            .stderr(std::fs::File::create(&log).unwrap())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > Duration::from_secs(30) {
                child.kill().unwrap();
                panic!("cxstream {args:?} kept retrying a refused login");
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let err = std::fs::read_to_string(&log).unwrap();
        assert!(!status.success(), "{args:?}: {err}");
        assert!(
            err.contains(&format!("refused user `{USER}` (wrong password)"))
                && err.contains("clickhouse.password_file"),
            "{args:?}: {err}"
        );
        assert!(!err.contains(wrong), "{args:?} shows the password: {err}");
    }
    // The same with the password from the environment.
    let out = s
        .command(&["migrate"])
        .env("CXSTREAM_CLICKHOUSE_USER", USER)
        .env("CXSTREAM_CLICKHOUSE_PASSWORD", wrong)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("wrong password"),
        "{err}"
    );
    assert!(!err.contains(wrong), "{err}");
}
