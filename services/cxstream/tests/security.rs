//! Credentials and TLS against the real servers: a login with a password (the local stack's
//! `cx_secured` user, whose SHA-256 is in `deploy/local/clickhouse/users.xml`) over ClickHouse's
//! HTTPS port (the throw-away CA up.sh makes) works from a file and is never shown in a log
//! line — at the most verbose level — or on `/metrics`; a wrong one, or a server certificate
//! that is not trusted, stops every command at once with a message that says what to fix.
//! Kafka over TLS through a TLS listener in front of a broker of the test's own.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{assert_cells_equal, exit_within, stop_with_sigterm, Stack};

const USER: &str = "cx_secured";
const PASSWORD: &str = "cx-test-password-7f3a";

/// ClickHouse's HTTPS url and the CA its certificate is signed by (deploy/local/up.sh).
fn https_and_ca() -> (String, PathBuf) {
    let url = std::env::var("CX_TEST_CLICKHOUSE_HTTPS")
        .unwrap_or_else(|_| "https://127.0.0.1:18443".into());
    let ca = std::env::var("CX_TEST_CLICKHOUSE_CA").map_or_else(
        |_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.run/clickhouse/tls/ca.pem"),
        PathBuf::from,
    );
    (url, ca)
}

/// The stack's configuration, logging in as `cx_secured` with the password in a file;
/// over HTTPS when `tls` says with which CA file (`Some(None)`: the system's roots only).
fn secured_config(s: &Stack, password: &str, tls: Option<Option<&std::path::Path>>) -> PathBuf {
    let file = s.dir.join("clickhouse-password");
    std::fs::write(&file, format!("{password}\n")).unwrap();
    let mut text = std::fs::read_to_string(&s.config).unwrap();
    let mut lines = format!("  user: {USER}\n  password_file: {}\n", file.display());
    if let Some(ca) = tls {
        let (https, _) = https_and_ca();
        text = text.replacen(
            &format!("  url: {}\n", s.clickhouse),
            &format!("  url: {https}\n"),
            1,
        );
        if let Some(ca) = ca {
            lines.push_str(&format!("  ca_file: {}\n", ca.display()));
        }
    }
    let path = s.dir.join("secured.yaml");
    std::fs::write(
        &path,
        text.replacen("clickhouse:\n", &format!("clickhouse:\n{lines}"), 1),
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
fn over_https_a_password_from_a_file_logs_in_and_is_never_shown() {
    let s = Stack::new("sec_ok");
    s.simulate(300, 0.3, 2);
    let (https, ca) = https_and_ca();
    let config = secured_config(&s, PASSWORD, Some(Some(&ca)));
    assert!(std::fs::read_to_string(&config).unwrap().contains(&https));
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
    s.wait_until_committed(
        &mut child,
        s.records_in(),
        Duration::from_secs(120),
        &format!("nothing committed as {USER}"),
    );
    let mut metrics = String::new();
    let mut c = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        c,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    c.read_to_string(&mut metrics).unwrap();
    stop_with_sigterm(&mut child);
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

/// Runs each of migrate, journey and alerter, which must stop within 30 s; their stderr.
fn each_command_stops(s: &Stack, config: &PathBuf, what: &str) -> Vec<String> {
    let mut errs = Vec::new();
    for args in [&["migrate"][..], &["journey"], &["alerter"]] {
        // A file, not a pipe: a verbose child must never block on a full pipe.
        let log = s.dir.join(format!("{}.stderr", args[0]));
        let mut child = cxstream(config, args)
            .env("CXSTREAM_LOG_LEVEL", "trace")
            .stderr(std::fs::File::create(&log).unwrap())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let status = exit_within(
            &mut child,
            Duration::from_secs(30),
            &format!("cxstream {args:?} kept retrying {what}"),
        );
        let err = std::fs::read_to_string(&log).unwrap();
        assert!(!status.success(), "{args:?}: {err}");
        errs.push(err);
    }
    errs
}

#[test]
fn a_wrong_password_stops_every_command_with_what_to_fix() {
    let s = Stack::new("sec_wrong");
    let wrong = "not-the-password-4411";
    let config = secured_config(&s, wrong, None);
    for err in each_command_stops(&s, &config, "a refused login") {
        assert!(
            err.contains(&format!("refused user `{USER}` (wrong password)"))
                && err.contains("clickhouse.password_file"),
            "{err}"
        );
        assert!(!err.contains(wrong), "the password is shown: {err}");
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

/// ClickHouse's certificate is signed by the stack's throw-away CA: without `ca_file` the
/// system's roots do not vouch for it, and no command takes that for an outage to wait out.
#[test]
fn an_untrusted_clickhouse_certificate_stops_every_command_with_what_to_fix() {
    let s = Stack::new("sec_untrusted");
    let config = secured_config(&s, PASSWORD, Some(None));
    for err in each_command_stops(&s, &config, "an untrusted certificate") {
        assert!(
            err.contains("is not trusted (unable to get local issuer certificate)")
                && err.contains("set clickhouse.ca_file"),
            "{err}"
        );
        assert!(!err.contains(PASSWORD), "the password is shown: {err}");
    }
}

/// Kafka over TLS: a TLS listener (socat, with a throw-away CA made by
/// `deploy/local/tls-ca.sh`) in front of a broker of the test's own that advertises it.
/// Simulator, journey service and topic creation all speak TLS and the counts are exact; a
/// client that does not trust the CA gets no answer and says why.
#[test]
fn the_pipeline_runs_over_tls_to_kafka_and_an_untrusted_broker_is_refused() {
    let shared = Stack::new("sec_tls");
    let dir = shared.dir.clone();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/local/tls-ca.sh");
    for sub in ["tls", "other"] {
        let made = std::process::Command::new(script)
            .arg(dir.join(sub))
            .output()
            .unwrap();
        assert!(made.status.success(), "{made:?}");
    }
    let tls_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let tls_addr = format!("127.0.0.1:{tls_port}");
    let broker = common::PrivateBroker::advertising(&shared.run, &dir, Some(&tls_addr));
    let tls = dir.join("tls");
    let mut proxy = std::process::Command::new("socat")
        .arg(format!(
            "OPENSSL-LISTEN:{tls_port},bind=127.0.0.1,reuseaddr,fork,verify=0,cert={},key={}",
            tls.join("server.pem").display(),
            tls.join("server.key").display()
        ))
        .arg(format!("TCP:{}", broker.listen))
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("socat (deploy/local/install.sh installs it)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(&tls_addr).is_err() {
        assert!(Instant::now() < deadline, "the TLS listener does not open");
        std::thread::sleep(Duration::from_millis(100));
    }
    let trusting = |ca: &str| {
        format!(
            "  security_protocol: ssl\n  ssl_ca_location: {}\n",
            dir.join(ca).join("ca.pem").display()
        )
    };
    let s = shared.on_broker_with(&tls_addr, &trusting("tls"));
    s.simulate(1_500, 0.5, 0);
    s.ok(&["journey", "--until-caught-up"]);
    assert_cells_equal(&s.truth(), &s.cells());
    assert_cells_equal(&s.step_truth(), &s.step_cells());

    // The same broker, a CA that did not sign it.
    let text = std::fs::read_to_string(&s.config).unwrap();
    let untrusting = s.dir.join("untrusting.yaml");
    std::fs::write(
        &untrusting,
        text.replacen(&trusting("tls"), &trusting("other"), 1),
    )
    .unwrap();
    let out = cxstream(
        &untrusting,
        &["probe", "--kafka-only", "--timeout-ms", "5000"],
    )
    .output()
    .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let _ = proxy.kill();
    let _ = proxy.wait();
    assert!(
        !out.status.success(),
        "an untrusted broker was used: {said}"
    );
    assert!(
        said.to_lowercase().contains("certificate") || said.contains("SSL"),
        "the refusal does not say why: {said}"
    );
}
