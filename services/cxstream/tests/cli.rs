//! The command line refuses bad configuration, flags and journey maps with a message that
//! says what to fix (no servers needed).

use std::process::Command;

fn cxstream(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cxstream"))
        .args(args)
        .output()
        .expect("runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn temp_file(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("cxstream-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p
}

#[test]
fn unknown_config_key_names_file_line_and_key() {
    let cfg = temp_file(
        "bad.yaml",
        "kafka:\n  brokers: 127.0.0.1:1\nclickhouse:\n  ulr: http://x\n",
    );
    let (code, err) = cxstream(&["--config", cfg.to_str().expect("utf8"), "report"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("bad.yaml:4") && err.contains("ulr"), "{err}");
}

#[test]
fn bad_value_says_what_to_fix() {
    let cfg = temp_file("proto.yaml", "kafka:\n  security_protocol: tls\n");
    let (code, err) = cxstream(&["--config", cfg.to_str().expect("utf8"), "report"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("security_protocol `tls` is not one of plaintext, ssl"),
        "{err}"
    );
}

#[test]
fn an_alertmanager_url_the_alerter_cannot_post_to_says_what_to_fix() {
    let cfg = temp_file(
        "am.yaml",
        "alerter:\n  alertmanager_url: https://am.example:9093\n",
    );
    let (code, err) = cxstream(&["--config", cfg.to_str().expect("utf8"), "alerter"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("alerter.alertmanager_url `https://am.example:9093` must be http://host:port"),
        "{err}"
    );
}

#[test]
fn a_cluster_name_clickhouse_cannot_take_says_what_to_fix() {
    let cfg = temp_file("cluster.yaml", "clickhouse:\n  cluster: two-shards\n");
    let (code, err) = cxstream(&["--config", cfg.to_str().expect("utf8"), "migrate"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("clickhouse.cluster `two-shards` must be letters, digits and _ only"),
        "{err}"
    );
}

#[test]
fn unknown_flag_is_refused() {
    let (code, err) = cxstream(&["simulate", "--customerz", "5"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--customerz"), "{err}");
}

#[test]
fn invalid_journey_map_names_file_line_and_fix() {
    let shipped = include_str!("../../../schemas/journeys/retail.yaml");
    let map = temp_file(
        "map.yaml",
        &shipped.replace(
            "stage: retention\n    channels: [call_centre]",
            "stage: loyalty\n    channels: [call_centre]",
        ),
    );
    let (code, err) = cxstream(&["check-map", map.to_str().expect("utf8")]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("map.yaml:") && err.contains("names unknown stage `loyalty`"),
        "{err}"
    );
    assert!(err.contains("declared stages are: awareness"), "{err}");
}

#[test]
fn a_step_naming_an_unknown_touchpoint_names_its_line() {
    let shipped = include_str!("../../../schemas/journeys/retail.yaml");
    let broken = shipped.replace(
        "from: [sales_call]\n    to: [phone_order]",
        "from: [sales_call]\n    to: [phone_ordr]",
    );
    let line = broken
        .lines()
        .position(|l| l.trim() == "- name: sales_call_to_order")
        .expect("the shipped map has the step")
        + 1;
    let map = temp_file("steps.yaml", &broken);
    let (code, err) = cxstream(&["check-map", map.to_str().expect("utf8")]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "steps.yaml:{line}: step `sales_call_to_order`: `to` names unknown touchpoint `phone_ordr`"
        )),
        "{err}"
    );
}

#[test]
fn maps_that_cannot_run_together_say_why() {
    let retail = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../schemas/journeys/retail.yaml"
    );
    let support = include_str!("../../../schemas/journeys/support.yaml");
    let other = temp_file(
        "support.yaml",
        &support.replace(
            "segments: [new, regular, vip, business]",
            "segments: [new, regular]",
        ),
    );
    let cfg = temp_file(
        "maps.yaml",
        &format!(
            "journey:\n  maps: [{retail}, {}]\n",
            other.to_str().expect("utf8")
        ),
    );
    let (code, err) = cxstream(&["--config", cfg.to_str().expect("utf8"), "check-map"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("journey maps `retail` and `support` declare different segments (only `retail` has vip, business)"),
        "{err}"
    );
}

#[test]
fn a_confluent_writer_schema_cxstream_cannot_read_stops_the_service_with_id_and_file() {
    let shipped = include_str!("../../../schemas/avro/touchpoint.avsc");
    let schema = temp_file(
        "touchpoint_v9.avsc",
        &shipped.replace("\"channel\"", "\"channel_name\""),
    );
    let cfg = temp_file(
        "confluent.yaml",
        &format!(
            "kafka:\n  brokers: 127.0.0.1:1\njourney:\n  maps: [{}]\n\
             schemas:\n  confluent:\n    - {{id: 9, record: touchpoint, file: {}}}\nhttp:\n  listen: 127.0.0.1:0\n",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../../schemas/journeys/retail.yaml"),
            schema.to_str().expect("utf8")
        ),
    );
    let (code, err) = cxstream(&["--config", cfg.to_str().expect("utf8"), "journey"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("schemas.confluent id 9 (")
            && err.contains("touchpoint_v9.avsc): cannot be read as cxstream's touchpoint schema"),
        "{err}"
    );
}

#[test]
fn incidents_the_simulator_cannot_inject_say_what_to_fix() {
    let cfg = temp_file(
        "sim.yaml",
        &format!(
            "kafka:\n  brokers: 127.0.0.1:1\njourney:\n  maps: [{}/../../schemas/journeys/retail.yaml]\n",
            env!("CARGO_MANIFEST_DIR")
        ),
    );
    let cfg = cfg.to_str().expect("utf8");
    let (code, err) = cxstream(&[
        "--config",
        cfg,
        "simulate",
        "--scenario",
        "incidents",
        "--days",
        "1",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("--scenario incidents needs --days 2"), "{err}");
    let typo = temp_file("typo.yaml", "- kind: step_drop\n  stepp: checkout\n");
    let (code, err) = cxstream(&[
        "--config",
        cfg,
        "simulate",
        "--incidents",
        typo.to_str().expect("utf8"),
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("typo.yaml") && err.contains("unknown field `stepp`"),
        "{err}"
    );
    let unknown = temp_file(
        "unknown.yaml",
        "- kind: step_drop\n  step: teleport\n  drop: 0.5\n  start_hours: 1\n  minutes: 5\n",
    );
    let (code, err) = cxstream(&[
        "--config",
        cfg,
        "simulate",
        "--scenario",
        "journeys",
        "--incidents",
        unknown.to_str().expect("utf8"),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("no map declares `teleport`"), "{err}");
    let (code, err) = cxstream(&["--config", cfg, "simulate", "--start", "yesterday"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("RFC 3339"), "{err}");
}

#[test]
fn a_maps_alert_parameter_out_of_range_names_key_and_line() {
    let map = temp_file(
        "alerts_map.yaml",
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../schemas/journeys/retail.yaml"
        ))
        .expect("retail map")
        .replace("step_drop: {drop: 0.3,", "step_drop: {drop: 1.3,"),
    );
    let (code, err) = cxstream(&["check-map", map.to_str().expect("utf8")]);
    assert_ne!(code, 0);
    assert!(
        err.contains("alerts_map.yaml:") && err.contains("alerts.step_drop.drop: 1.3"),
        "{err}"
    );
}
