//! `cxstream alerter` on the real Tansu and ClickHouse: a journey's committed per-minute
//! counts, written to the aggregates topic by the README's protocol (partials under a
//! batch id, committed records naming each partition's latest committed batch, a crashed
//! batch replayed under a new id, confirmations repeated), with two weeks of normal
//! traffic, an hour in which the app's checkout converts at a third of its rate, and 40
//! minutes in which the app sends nothing. Checked against those times (not against the
//! alerter's code): the break is one STEP_DROP incident found within 10 event-minutes of
//! judging, resolved after it ends; the quiet app is one SILENCE incident and no drop;
//! nothing else fires; each change is on the alerts topic and in ClickHouse once — also
//! when the alerter crashes between writing a change to ClickHouse and to the topic and is
//! restarted, and when it runs again over the same input.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::Stack;
use cxstream_avro::{
    AggregatesKind, AggregatesMessage, AlertKind, AlertMessage, AlertState, Codec, MinuteCell,
    StepCell,
};
use cxstream_core::metrics::{Counts, StepCounts};

const MAP: &str = "journey: shop
stages:
  - name: browse
    budget: 7d
    target_conversion: 0.4
  - name: buy
    budget: 2d
    target_conversion: 0.3
channels: [web, app]
segments: [new, vip]
touchpoints:
  - name: cart
    stage: browse
    channels: [web, app]
  - name: paid
    stage: buy
    channels: [web, app]
steps:
  - name: checkout
    from: [cart]
    to: [paid]
    budget: 5m
    target_conversion: 0.6
";

/// 2026-11-02T00:00Z, a Monday, in epoch ms.
const START: i64 = 1_793_577_600_000;
const MINUTE: i64 = 60_000;
const DAY: i64 = 1440;
const DAYS: i64 = 16;
/// The app's checkout converts at a third of its rate, on day 15 from 10:00 for an hour.
const BREAK: (i64, i64) = (15 * DAY + 600, 15 * DAY + 660);
/// The app sends nothing, on day 15 from 20:00 for 40 minutes.
const SILENT: (i64, i64) = (15 * DAY + 1200, 15 * DAY + 1240);
/// Minutes per committed batch.
const BATCH_MINUTES: i64 = 10;

fn noise(key: u64) -> f64 {
    let mut z = key.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
}

/// Attempts started in minute `m` in a channel and segment, and how many converted.
fn attempts(m: i64, channel: usize, segment: usize) -> (i64, i64) {
    if channel == 1 && (SILENT.0..SILENT.1).contains(&m) {
        return (0, 0);
    }
    let key = (m as u64) << 8 | (channel as u64) << 4 | segment as u64;
    let starts = 10 + (noise(key) * 10.0) as i64;
    let mut rate = [0.6, 0.5][channel];
    if channel == 1 && (BREAK.0..BREAK.1).contains(&m) {
        rate /= 3.0;
    }
    let conversions = (1..=starts as u64)
        .filter(|i| noise(key ^ i << 40) < rate)
        .count() as i64;
    (starts, conversions)
}

const CHANNELS: [&str; 2] = ["web", "app"];
const SEGMENTS: [&str; 2] = ["new", "vip"];

/// The cells one partition (= segment) publishes for minute `m`: the attempts started,
/// their touchpoints, and the conversions of the attempts started two minutes before.
fn cells(start: i64, m: i64, segment: usize) -> (Vec<MinuteCell>, Vec<StepCell>) {
    let (mut minutes, mut steps) = (Vec::new(), Vec::new());
    for (channel, name) in CHANNELS.iter().enumerate() {
        let (starts, _) = attempts(m, channel, segment);
        let (_, conversions) = attempts(m - 2, channel, segment);
        let step = |minute: i64, counts: StepCounts| StepCell {
            minute: start + minute * MINUTE,
            step: "checkout".into(),
            stage: "browse".into(),
            touchpoint: "cart".into(),
            channel: name.to_string(),
            segment: SEGMENTS[segment].into(),
            counts,
        };
        if starts > 0 {
            steps.push(step(
                m,
                StepCounts {
                    starts,
                    open: starts,
                    ..StepCounts::default()
                },
            ));
            minutes.push(MinuteCell {
                minute: start + m * MINUTE,
                stage: "browse".into(),
                touchpoint: "cart".into(),
                channel: name.to_string(),
                segment: SEGMENTS[segment].into(),
                counts: Counts {
                    touchpoints: starts,
                    ..zero()
                },
            });
        }
        if conversions > 0 {
            steps.push(step(
                m - 2,
                // Converted two minutes after their start.
                StepCounts {
                    conversions,
                    convert_ms_sum: conversions * 2 * MINUTE,
                    open: -conversions,
                    within_2m: conversions,
                    within_5m: conversions,
                    within_10m: conversions,
                    ..StepCounts::default()
                },
            ));
        }
    }
    (minutes, steps)
}

fn zero() -> Counts {
    Counts::default()
}

/// What two journey-service partitions publish over the period, in each partition's order:
/// each batch's partials (in chunks of 50 cells), then a committed record with the batch's
/// watermark. Now and then a batch's first attempt crashes before its marker (its partial
/// is sent again under a new id), a committed record is lost (the next one confirms both),
/// or one is said again. `minutes` (from `start`) are whole batches.
fn journey_records(
    group: &str,
    start: i64,
    minutes: std::ops::Range<i64>,
) -> Vec<(String, AggregatesMessage)> {
    records_of("shop", group, start, minutes)
}

/// [`journey_records`] of the journey named `journey`.
fn records_of(
    journey: &str,
    group: &str,
    start: i64,
    minutes: std::ops::Range<i64>,
) -> Vec<(String, AggregatesMessage)> {
    let mut out = Vec::new();
    for partition in 0..2usize {
        for first in minutes.clone().step_by(BATCH_MINUTES as usize) {
            let seq = (first / BATCH_MINUTES) as usize;
            let mut batch_id = ((partition as i64 + 1) << 32) + 4 * seq as i64;
            let (mut minutes, mut steps) = (Vec::new(), Vec::new());
            for m in first..first + BATCH_MINUTES {
                let (mi, st) = cells(start, m, partition);
                minutes.extend(mi);
                steps.extend(st);
            }
            let message = |kind, seq: usize, batch_id: i64| AggregatesMessage {
                journey: journey.into(),
                group: group.into(),
                kind,
                partition: partition as i32,
                partitions: 2,
                seq: seq as i64,
                batch_id,
                chunk: 0,
                chunks: 0,
                watermark: None,
                touchpoints_watermark: None,
                idle: false,
                minutes: Vec::new(),
                steps: Vec::new(),
                // As written before records named claims: the last partial sent counts.
                claim: 0,
                chain: Vec::new(),
            };
            let crashes = seq % 97 == 5;
            for attempt in 0..=usize::from(crashes) {
                batch_id += 1;
                let chunks = steps.len().div_ceil(50).max(1);
                for c in 0..chunks {
                    let mut m = message(AggregatesKind::Partial, seq, batch_id);
                    m.chunk = c as i32;
                    m.chunks = chunks as i32;
                    m.steps = steps.iter().skip(c * 50).take(50).cloned().collect();
                    if c == 0 {
                        m.minutes = minutes.clone();
                    }
                    if attempt == 0 && crashes {
                        // The crashed attempt counted differently: it must not count.
                        m.steps.iter_mut().for_each(|s| s.counts.starts *= 3);
                    }
                    out.push((partition, m));
                }
            }
            let mut committed = message(AggregatesKind::Committed, seq, batch_id);
            committed.watermark = Some(start + (first + BATCH_MINUTES) * MINUTE);
            let lost = seq % 89 == 7;
            if !lost {
                out.push((partition, committed.clone()));
            }
            if seq % 53 == 3 {
                out.push((partition, committed));
            }
        }
    }
    out.into_iter()
        .map(|(p, m)| (format!("{journey}/{p}"), m))
        .collect()
}

fn produce_aggregates(s: &Stack, records: &[(String, AggregatesMessage)]) {
    use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
    let codec = Codec::new().unwrap();
    let producer: ThreadedProducer<rdkafka::producer::DefaultProducerContext> =
        rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &s.kafka)
            .set("linger.ms", "20")
            .create()
            .unwrap();
    let topic = s.topic("aggregates");
    for (key, m) in records {
        let mut buf = Vec::new();
        codec.encode_aggregates(m, &mut buf).unwrap();
        let mut record = BaseRecord::to(&topic).key(key.as_bytes()).payload(&buf[..]);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(60)).unwrap();
}

fn alerts_of(s: &Stack) -> Vec<AlertMessage> {
    let codec = Codec::new().unwrap();
    s.read_topic(&s.topic("alerts"), 1)
        .into_iter()
        .map(|r| codec.decode_alert(&r.payload).unwrap())
        .collect()
}

fn at(minute: i64) -> i64 {
    START + minute * MINUTE
}

/// The alerts the input calls for, checked against the incidents' times.
fn assert_expected(alerts: &[AlertMessage]) {
    assert_expected_of("shop", alerts);
}

/// [`assert_expected`] of the journey named `journey`.
fn assert_expected_of(journey: &str, alerts: &[AlertMessage]) {
    let alerts: Vec<AlertMessage> = alerts
        .iter()
        .filter(|a| a.journey == journey)
        .cloned()
        .collect();
    let alerts = &alerts[..];
    let incidents: BTreeSet<(&str, String)> = alerts
        .iter()
        .map(|a| (a.id.as_str(), format!("{:?}", a.kind)))
        .collect();
    assert_eq!(incidents.len(), 2, "one drop and one silence: {alerts:#?}");
    let of =
        |k: AlertKind| -> Vec<&AlertMessage> { alerts.iter().filter(|a| a.kind == k).collect() };

    let drop = of(AlertKind::StepDrop);
    let fired = drop.iter().find(|a| a.state == AlertState::Firing).unwrap();
    assert_eq!(fired.subject, "checkout");
    assert!(
        fired
            .id
            .starts_with(&format!("{journey}/step_drop:checkout/")),
        "{}",
        fired.id
    );
    // Known within 10 event-minutes of the break: through the share converted within 2
    // minutes, judged 3 minutes after the attempts' minute.
    assert!(
        fired.window_start >= at(BREAK.0) && fired.fired_at <= at(BREAK.0) + 10 * MINUTE,
        "{fired:#?}"
    );
    assert!(
        drop.iter()
            .flat_map(|a| a.firing.iter().chain([&a.slice]))
            .any(|f| f.starts_with("channel=app")),
        "{drop:#?}"
    );
    let resolved = drop
        .iter()
        .find(|a| a.state == AlertState::Resolved)
        .unwrap();
    assert!(resolved.resolved_at.unwrap() > at(BREAK.1));
    assert!(
        resolved.resolved_at.unwrap() < at(BREAK.1) + 60 * MINUTE,
        "{resolved:#?}"
    );

    let silence = of(AlertKind::Silence);
    let states: Vec<AlertState> = silence.iter().map(|a| a.state).collect();
    assert_eq!(
        states,
        [AlertState::Firing, AlertState::Resolved],
        "{silence:#?}"
    );
    assert_eq!(silence[0].subject, "app");
    assert!(
        (at(SILENT.0)..at(SILENT.0) + 10 * MINUTE).contains(&silence[0].fired_at),
        "{silence:#?}"
    );
    // Resolved with hysteresis: at the end of the fifth minute back at the earliest.
    assert!(
        (at(SILENT.1) + 5 * MINUTE..at(SILENT.1) + 10 * MINUTE).contains(&silence[1].changed_at),
        "{silence:#?}"
    );
}

/// Each change (id, revision) once, revisions of an incident 0, 1, 2, … in order.
fn assert_once_each(alerts: &[AlertMessage]) {
    let mut by_id: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for a in alerts {
        by_id.entry(&a.id).or_default().push(a.revision);
    }
    for (id, revisions) in by_id {
        let expected: Vec<i32> = (0..revisions.len() as i32).collect();
        assert_eq!(revisions, expected, "{id}");
    }
}

#[test]
#[cfg_attr(
    not(feature = "failpoints"),
    ignore = "crashes the alerter at a failpoint: run with --features failpoints"
)]
fn a_break_and_a_silence_are_alerted_once_each_across_a_crash_and_a_second_run() {
    let s = Stack::with_map_text("alerter", MAP);
    let records = journey_records(&format!("g.{}", s.run), START, 0..DAYS * DAY);
    // Another group's replay on the same topic: ignored.
    let other: Vec<_> = journey_records("g.someone-else", START, 0..DAYS * DAY)
        .into_iter()
        .take(500)
        .collect();
    produce_aggregates(&s, &other);
    produce_aggregates(&s, &records);

    // Crashes (abort, as a kill -9) the second time it writes: after ClickHouse, before the
    // alerts topic. Then it runs to the end.
    let crashed = s
        .command(&["alerter", "--until-caught-up"])
        .env("FAILPOINTS", "alerter-before-topic=1*off->return")
        .output()
        .unwrap();
    assert!(!crashed.status.success(), "the failpoint did not fire");
    let before = alerts_of(&s).len();
    assert!(before > 0, "the first write reached the topic");
    s.ok(&["alerter", "--until-caught-up"]);
    let after = alerts_of(&s);
    assert!(after.len() > before, "the restart wrote the rest");
    assert_expected(&after);
    assert_once_each(&after);

    // Again over the same input: nothing new.
    s.ok(&["alerter", "--until-caught-up"]);
    assert_eq!(alerts_of(&s), after);

    // ClickHouse has each change once (after merges: FINAL), the same as the topic.
    let db = s.database();
    let rows = s.query(&format!(
        "SELECT id, toString(revision), toString(state) FROM {db}.alerts FINAL ORDER BY id, revision"
    ));
    let topic: Vec<Vec<String>> = {
        let mut t: Vec<Vec<String>> = after
            .iter()
            .map(|a| {
                vec![
                    a.id.clone(),
                    a.revision.to_string(),
                    format!("{:?}", a.state).to_uppercase(),
                ]
            })
            .collect();
        t.sort();
        t
    };
    assert_eq!(rows, topic);
    let current = s.query(&format!(
        "SELECT toString(kind), toString(state) FROM {db}.alerts_current ORDER BY kind"
    ));
    assert_eq!(
        current,
        [
            vec!["STEP_DROP".to_string(), "RESOLVED".to_string()],
            vec!["SILENCE".to_string(), "RESOLVED".to_string()]
        ]
    );
}

/// A restart reads on from the alerter's latest snapshot. The first run reads up to 40
/// minutes into the break (the incident firing) and keeps a snapshot as it stops; the next
/// two take up the latest and read only what came since (one partition's rest, then the
/// other's), and the alerts are those a single read of everything raises — the break
/// updated and resolved under the id it fired with, the silence — each change once.
#[test]
fn a_restart_reads_on_from_the_latest_snapshot() {
    let s = Stack::with_map_text("alerter_snapshot", MAP);
    let config = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(&s.config, config.replace("level: warn", "level: info")).unwrap();
    let group = format!("g.{}", s.run);
    let into_break = BREAK.0 + 40;
    produce_aggregates(&s, &journey_records(&group, START, 0..into_break));
    let first = s.ok(&["alerter", "--until-caught-up"]);
    assert!(
        !String::from_utf8_lossy(&first.stderr).contains("resumed from"),
        "nothing to resume from yet"
    );
    let before = alerts_of(&s);
    assert!(
        before
            .iter()
            .any(|a| a.kind == AlertKind::StepDrop && a.state == AlertState::Firing),
        "{before:#?}"
    );
    assert!(before.iter().all(|a| a.state != AlertState::Resolved));

    // The rest in two parts, one journey-service partition's first: the second start must
    // read on from where the first left the partition that had nothing new for it.
    let rest = journey_records(&group, START, into_break..DAYS * DAY);
    let resumed_at = |part: &str| -> String {
        let records: Vec<_> = rest
            .iter()
            .filter(|(k, _)| k.ends_with(part))
            .cloned()
            .collect();
        produce_aggregates(&s, &records);
        let run = s.ok(&["alerter", "--until-caught-up"]);
        let log = String::from_utf8_lossy(&run.stderr).to_string();
        let line = log
            .lines()
            .find(|l| l.contains("alerter resumed from its latest snapshot"))
            .unwrap_or_else(|| panic!("not resumed: {log}"));
        line[line.find("positions=").unwrap()..].to_string()
    };
    let second = resumed_at("/0");
    let third = resumed_at("/1");
    let partitions = |p: &str| -> Vec<String> {
        p.split(['{', ',', '}'])
            .filter_map(|kv| kv.split_once(':').map(|(k, _)| k.trim().to_string()))
            .collect()
    };
    assert_eq!(partitions(&second).len(), 2, "{second}");
    assert_eq!(
        partitions(&second),
        partitions(&third),
        "{second} then {third}"
    );
    let after = alerts_of(&s);
    assert_expected(&after);
    assert_once_each(&after);
    assert_eq!(after[..before.len()], before[..]);
}

/// The journeys of the sharing test: the shop's map under four names.
const SHARED: [&str; 4] = ["shop", "shop_two", "shop_three", "shop_four"];

/// A process killed when the test ends, passed or not.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One alerter of the sharing test: its own name, heartbeats and metrics port.
fn peer(s: &Stack, name: &str) -> (Running, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = std::fs::read_to_string(&s.config)
        .unwrap()
        .replace("listen: 127.0.0.1:0", &format!("listen: 127.0.0.1:{port}"))
        + &format!(
            "alerter:\n  peers:\n    instance: {name}\n    heartbeat_ms: 500\n    timeout_ms: 3000\n"
        );
    let path = s.dir.join(format!("alerter-{name}.yaml"));
    std::fs::write(&path, config).unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_cxstream"))
        .arg("--config")
        .arg(&path)
        .arg("alerter")
        .spawn()
        .unwrap();
    (Running(child), port)
}

/// The journeys an alerter says it writes (its `/metrics`, through curl).
fn writes(port: u16) -> BTreeSet<String> {
    let out = std::process::Command::new("curl")
        .args(["-sf", &format!("http://127.0.0.1:{port}/metrics")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("cxstream_alerter_writes_journey{journey=\""))
        .filter_map(|l| l.split_once("\"} "))
        .filter(|(_, v)| v.trim() == "1")
        .map(|(j, _)| j.to_string())
        .collect()
}

/// Two alerters share four journeys: each journey's alerts are written by one of them, each
/// change once; one is killed (kill -9) in the middle of the incidents, and the other
/// writes the rest of its journeys' changes — every incident complete, each change once.
#[test]
fn two_alerters_share_the_journeys_and_one_writes_on_when_the_other_is_killed() {
    let maps: Vec<std::path::PathBuf> = SHARED
        .iter()
        .map(|j| {
            let path = std::env::temp_dir().join(format!(
                "cxstream-map-alerters-{j}-{}.yaml",
                std::process::id()
            ));
            std::fs::write(
                &path,
                MAP.replace("journey: shop", &format!("journey: {j}")),
            )
            .unwrap();
            path
        })
        .collect();
    let s = Stack::with_maps("alerters", maps);
    let group = format!("g.{}", s.run);
    let into_break = BREAK.0 + 40;
    for j in SHARED {
        produce_aggregates(&s, &records_of(j, &group, START, 0..into_break));
    }
    let (a, port_a) = peer(&s, "a");
    let (b, port_b) = peer(&s, "b");
    let firing = |s: &Stack| -> BTreeSet<String> {
        alerts_of(s)
            .into_iter()
            .filter(|m| m.kind == AlertKind::StepDrop && m.state == AlertState::Firing)
            .map(|m| m.journey)
            .collect()
    };
    wait_until("every journey's break firing", || {
        firing(&s).len() == SHARED.len()
    });
    // Each journey written by one of them, once both have joined: an alerter that joins
    // listens for a whole timeout before it writes, and the other lets go of its share as
    // soon as it hears it, so for a moment some journeys have no writer (their changes wait
    // and are written at the hand-over).
    let all: BTreeSet<String> = SHARED.iter().map(|j| j.to_string()).collect();
    let mut split = (BTreeSet::new(), BTreeSet::new());
    wait_until("each journey written by one alerter", || {
        split = (writes(port_a), writes(port_b));
        eprintln!("journeys written by a: {:?}, by b: {:?}", split.0, split.1);
        split.0.is_disjoint(&split.1) && &split.0 | &split.1 == all
    });
    let (of_a, _) = split;
    assert_once_each(&alerts_of(&s));

    // The writer of the first journey dies; the rest of the period follows.
    let (dead, survivor) = if of_a.contains(SHARED[0]) {
        (a, b)
    } else {
        (b, a)
    };
    drop(dead);
    for j in SHARED {
        produce_aggregates(&s, &records_of(j, &group, START, into_break..DAYS * DAY));
    }
    let complete = |s: &Stack| {
        let alerts = alerts_of(s);
        SHARED.iter().all(|j| {
            alerts
                .iter()
                .filter(|m| m.journey == *j && m.state == AlertState::Resolved)
                .count()
                == 2
        })
    };
    wait_until("every journey's incidents resolved", || complete(&s));
    let alerts = alerts_of(&s);
    for j in SHARED {
        assert_expected_of(j, &alerts);
    }
    assert_once_each(&alerts);
    drop(survivor);
}

/// Alertmanager's active alerts of `group` (its API v2, through curl).
fn alertmanager_alerts(url: &str, group: &str) -> Vec<serde_json::Value> {
    let out = std::process::Command::new("curl")
        .args(["-sfG", &format!("{url}/api/v2/alerts")])
        .args(["--data-urlencode", &format!("filter=group=\"{group}\"")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "alertmanager at {url} does not answer"
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within 90 s"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Live traffic, up to a few minutes ago: the break is posted to the real Alertmanager (read
/// back through its API) while it lasts, with the labels teams route by, and resolved there
/// once traffic after the break shows the rate back.
#[test]
fn a_live_break_reaches_alertmanager_and_resolves_there() {
    let Ok(url) = std::env::var("CX_TEST_ALERTMANAGER") else {
        eprintln!("CX_TEST_ALERTMANAGER is not set (deploy/local/test.sh sets it): skipped");
        return;
    };
    let s = Stack::with_map_text("alerter_live", MAP);
    s.append_config(&format!("alerter:\n  alertmanager_url: {url}\n"));
    let group = format!("g.{}", s.run);
    // 40 minutes into the break is five minutes ago.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let into_break = BREAK.0 + 40;
    let start = now - (into_break + 5) * MINUTE;
    let start = start - start.rem_euclid(MINUTE);
    produce_aggregates(&s, &journey_records(&group, start, 0..into_break));
    let mut alerter = s.spawn(&["alerter"]);
    wait_until("the break in Alertmanager", || {
        alertmanager_alerts(&url, &group)
            .iter()
            .any(|a| a["labels"]["alertname"] == "CxStepDrop" && a["labels"]["step"] == "checkout")
    });
    let alerts = alertmanager_alerts(&url, &group);
    let drop = alerts
        .iter()
        .find(|a| a["labels"]["alertname"] == "CxStepDrop")
        .unwrap();
    assert_eq!(drop["labels"]["team"], "cx");
    assert_eq!(drop["labels"]["journey"], "shop");
    let incident = drop["labels"]["incident"].as_str().unwrap().to_string();
    assert!(incident.starts_with("shop/step_drop:checkout/"), "{drop}");
    assert!(
        drop["annotations"]["summary"]
            .as_str()
            .unwrap()
            .contains("checkout conversion fell"),
        "{drop}"
    );
    // The same incident on the alerts topic, firing.
    let firing: Vec<AlertMessage> = alerts_of(&s)
        .into_iter()
        .filter(|a| a.id == incident)
        .collect();
    assert_eq!(firing[0].state, AlertState::Firing);

    // The rest of the break and two hours after it.
    produce_aggregates(
        &s,
        &journey_records(&group, start, into_break..BREAK.1 + 120),
    );
    wait_until("the break resolved in Alertmanager", || {
        !alertmanager_alerts(&url, &group)
            .iter()
            .any(|a| a["labels"]["incident"] == incident.as_str())
    });
    let resolved = alerts_of(&s)
        .into_iter()
        .filter(|a| a.id == incident && a.state == AlertState::Resolved)
        .count();
    assert_eq!(resolved, 1);
    alerter.kill().unwrap();
    alerter.wait().unwrap();
}

/// The whole chain from simulated traffic: `cxstream simulate` (messy delivery) with a drop
/// injected into the app's checkout, ending now; the journey service; the alerter, posting
/// to the real Alertmanager. Produced in two parts of the same simulation: up to an hour
/// into the drop, the incident is in Alertmanager and firing on the alerts topic; with the
/// rest, it resolves there and on the topic — at times checked against the simulator's
/// incident truth, and nothing else fires.
#[test]
fn a_drop_injected_into_simulated_traffic_reaches_alertmanager_and_resolves() {
    let Ok(url) = std::env::var("CX_TEST_ALERTMANAGER") else {
        eprintln!("CX_TEST_ALERTMANAGER is not set (deploy/local/test.sh sets it): skipped");
        return;
    };
    let s = Stack::with_map_text("alerter_chain", MAP);
    // The traffic ends now and the drop hours ago: every change is posted (live within a day).
    s.append_config(&format!(
        "alerter:\n  alertmanager_url: {url}\n  live_within_ms: 86400000\n"
    ));
    let group = format!("g.{}", s.run);
    let incidents = s.truth_path().with_extension("in.yaml");
    std::fs::write(
        &incidents,
        "- kind: step_drop\n  step: checkout\n  channel: app\n  drop: 0.6\n  start_hours: 25\n  minutes: 120\n",
    )
    .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    // On the hour, so that every run's minutes and hours fall alike.
    let start = now - 30 * 60 * MINUTE;
    let start = start - start.rem_euclid(60 * MINUTE);
    let (from, until) = (start + 25 * 60 * MINUTE, start + 27 * 60 * MINUTE);
    let simulate = |part: &str| {
        s.ok(&[
            "simulate",
            "--customers",
            "10000",
            "--days",
            "1.25",
            "--scenario",
            "journeys",
            "--start",
            &start.to_string(),
            "--incidents",
            incidents.to_str().unwrap(),
            "--ground-truth",
            s.truth_path().to_str().unwrap(),
            part,
            &(from + 60 * MINUTE).to_string(),
        ])
    };
    simulate("--sent-before");
    let truth = std::fs::read_to_string(s.truth_path().with_extension("incidents.csv")).unwrap();
    let row: Vec<&str> = truth.lines().nth(1).unwrap().split(',').collect();
    assert_eq!(
        row[..6],
        [
            "step_drop",
            "checkout",
            "app",
            "",
            &from.to_string(),
            &until.to_string()
        ]
    );
    let (affected, converted, would_have): (f64, f64, f64) = (
        row[7].parse().unwrap(),
        row[8].parse().unwrap(),
        row[9].parse().unwrap(),
    );
    assert!(affected > 500.0, "attempts in the drop: {truth}");
    assert!(converted < 0.5 * would_have, "{truth}");

    s.catch_up_within_minutes();
    let mut alerter = s.spawn(&["alerter"]);
    let is_drop = |a: &serde_json::Value| {
        a["labels"]["alertname"] == "CxStepDrop" && a["labels"]["step"] == "checkout"
    };
    wait_until("the drop in Alertmanager", || {
        alertmanager_alerts(&url, &group).iter().any(is_drop)
    });
    let incident = alertmanager_alerts(&url, &group)
        .into_iter()
        .find(is_drop)
        .unwrap()["labels"]["incident"]
        .as_str()
        .unwrap()
        .to_string();

    simulate("--sent-from");
    s.catch_up_within_minutes();
    wait_until("the drop resolved in Alertmanager", || {
        !alertmanager_alerts(&url, &group)
            .iter()
            .any(|a| a["labels"]["incident"] == incident.as_str())
    });
    alerter.kill().unwrap();
    alerter.wait().unwrap();

    let alerts = alerts_of(&s);
    let ids: BTreeSet<&str> = alerts.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(
        ids,
        BTreeSet::from([incident.as_str()]),
        "nothing else fires"
    );
    let fired = alerts
        .iter()
        .find(|a| a.state == AlertState::Firing)
        .unwrap();
    assert_eq!(fired.kind, AlertKind::StepDrop);
    assert!(
        fired.firing.iter().any(|f| f.contains("channel=app")),
        "{fired:?}"
    );
    // About 6 attempts a minute in the app: a test tuned to a 30 % drop gathers about 1.2
    // units of evidence a minute from this one (threshold 16), known 5 minutes after.
    assert!(
        (from..from + 45 * MINUTE).contains(&fired.fired_at),
        "fired {} min after the drop began",
        (fired.fired_at - from) / MINUTE
    );
    let resolved: Vec<&AlertMessage> = alerts
        .iter()
        .filter(|a| a.state == AlertState::Resolved)
        .collect();
    assert_eq!(resolved.len(), 1, "{alerts:?}");
    let at = resolved[0].resolved_at.unwrap();
    eprintln!(
        "{affected} attempts in the drop: alerted {} min after it began, resolved {} min after it ended",
        (fired.fired_at - from) / MINUTE,
        (at - until) / MINUTE
    );
    assert!(
        (until..until + 60 * MINUTE).contains(&at),
        "resolved {} min after the drop ended",
        (at - until) / MINUTE
    );
}
