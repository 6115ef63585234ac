//! The right to be forgotten against the real Tansu and ClickHouse: a customer erased while
//! the journey service runs is in no table afterwards — nor after a replay of the topics
//! from the earliest offsets into an empty database — while every per-minute count still
//! equals the simulator's ground truth (erased customers count as anonymous counts, README
//! § Operations, Erasure) and every other customer's facts are all there.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{assert_cells_equal, retail_in_hours, stop_with_sigterm, Stack};

/// Tables (not views) of the stack's database with a `customer_id` column, asked of the
/// server (a table added later is covered without changing this test).
fn customer_tables(s: &Stack) -> Vec<String> {
    let db = s.database();
    s.query(&format!(
        "SELECT table FROM system.columns WHERE database = '{db}' AND name = 'customer_id' \
         AND table IN (SELECT name FROM system.tables WHERE database = '{db}' \
         AND engine NOT LIKE '%View') ORDER BY table"
    ))
    .into_iter()
    .map(|r| r[0].clone())
    .collect()
}

/// Per table, rows whose customer id matches `condition` (nonzero only).
fn rows_where(s: &Stack, condition: &str) -> Vec<(String, i64)> {
    let db = s.database();
    customer_tables(s)
        .into_iter()
        .map(|t| {
            let n = s.scalar(&format!(
                "SELECT toInt64(count()) FROM {db}.{t} WHERE {condition}"
            ));
            (t, n)
        })
        .filter(|(_, n)| *n > 0)
        .collect()
}

/// Under a pseudonym there are journey rows only: no fact of an erased customer.
fn assert_only_journeys_under_pseudonyms(s: &Stack) {
    let pseudonymous = rows_where(s, "startsWith(customer_id, 'erased:')");
    assert!(
        pseudonymous.iter().all(|(t, _)| t.starts_with("journeys")),
        "{pseudonymous:?}"
    );
}

/// Runs `cxstream erase` on the customer, which must succeed; what it said.
fn erase(s: &Stack, customer: &str) -> String {
    let out = s
        .command(&["erase", "--customer", customer, "--wait-secs", "60"])
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "erase failed: {said}");
    said
}

/// Touchpoint facts of every customer, each once.
fn touchpoint_facts(s: &Stack) -> i64 {
    s.scalar(&format!(
        "SELECT toInt64(count()) FROM {}.touchpoints FINAL",
        s.database()
    ))
}

#[test]
fn an_erased_customer_is_in_no_table_also_after_a_replay_and_every_count_stays_exact() {
    erased_in_no_table(Stack::new("erase"));
}

/// The same with the tables sharded over a two-shard cluster: the deletions run on every
/// shard, and `erase` waits for each shard's.
#[test]
fn an_erased_customer_is_in_no_table_of_a_two_shard_cluster() {
    erased_in_no_table(Stack::on_cluster(
        "erasecl",
        vec![common::shipped_map("retail")],
    ));
}

/// Erases `victim` while `service` runs: nothing of theirs is left at once; then reads to
/// the end of the `total` records and stops. Returns the condition naming their rows.
fn erase_while_running(
    s: &Stack,
    service: &mut std::process::Child,
    victim: &str,
    total: i64,
) -> String {
    let said = erase(s, victim);
    assert!(said.contains("none left"), "{said}");
    let victim_is = format!("customer_id = '{victim}'");
    assert_eq!(rows_where(s, &victim_is), vec![], "right after the erase");
    s.wait_until_committed(
        service,
        total,
        Duration::from_secs(300),
        "not caught up after the erase",
    );
    stop_with_sigterm(service);
    victim_is
}

fn erased_in_no_table(s: Stack) {
    s.simulate(4_000, 2.0, 0);
    let total = s.records_in();
    let mut service = s.spawn(&["journey"]);
    // Someone who wrote a comment and whose journey entered a stage (personal data in
    // several tables), while the service is still reading.
    let db = s.database();
    let deadline = Instant::now() + Duration::from_secs(120);
    let victim = loop {
        let found = s.query(&format!(
            "SELECT customer_id FROM {db}.survey_answers WHERE comment != '' AND customer_id \
             IN (SELECT customer_id FROM {db}.stage_entries) ORDER BY customer_id LIMIT 1"
        ));
        if let Some(row) = found.first() {
            break row[0].clone();
        }
        assert!(Instant::now() < deadline, "nothing committed");
        assert!(service.try_wait().unwrap().is_none(), "the service exited");
        std::thread::sleep(Duration::from_millis(100));
    };
    let erased_at = s.committed_records();
    assert!(erased_at < total, "the run finished before the erase");
    let victim_is = erase_while_running(&s, &mut service, &victim, total);

    // Nothing of theirs, nor any fact under their pseudonym; their journey goes on under it.
    assert_eq!(rows_where(&s, &victim_is), vec![], "after the run");
    assert_only_journeys_under_pseudonyms(&s);
    // Every count as if nothing had been erased; every other customer's facts all there.
    assert_cells_equal(&s.truth(), &s.cells());
    assert_cells_equal(&s.step_truth(), &s.step_cells());
    let truth_events: i64 = s.truth().values().map(|v| v[10]).sum();
    let theirs = truth_events - touchpoint_facts(&s);
    assert!(theirs > 0, "the victim had touchpoints");

    // A replay from the earliest offsets into an empty database: the erasure holds.
    let replay = s.replay();
    replay.ok(&["journey", "--until-caught-up"]);
    assert_eq!(rows_where(&replay, &victim_is), vec![], "after the replay");
    assert_only_journeys_under_pseudonyms(&replay);
    assert_cells_equal(&s.truth(), &replay.cells());
    assert_cells_equal(&s.step_truth(), &replay.step_cells());
    assert_eq!(touchpoint_facts(&replay), truth_events - theirs);
}

/// A customer whose journey was let go from memory (idle for days, with an allowed lateness
/// of a day) is erased while the service runs: the service reads the journey back from
/// ClickHouse by the erasure's fingerprint and moves it under the pseudonym before it says
/// the erasure is applied, so nothing of theirs is left in any table and every count stays
/// exact.
#[test]
fn an_erased_customer_whose_journey_was_let_go_is_in_no_table() {
    const DAY_MS: i64 = 86_400_000;
    let s = Stack::new("erase_let_go");
    s.set_journey("  allowed_lateness_ms: 86400000\n");
    s.simulate(4_000, 4.0, 0);
    let total = s.records_in();
    let db = s.database();
    let log_path = s.dir.join("let-go-service.log");
    let mut service = s
        .command(&["journey"])
        .env("CXSTREAM_LOG_LEVEL", "info")
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    // Someone with personal data in several tables, all of it in the first half day.
    let deadline = Instant::now() + Duration::from_secs(180);
    let (victim, start) = loop {
        let found = s.query(&format!(
            "SELECT customer_id, toString((SELECT min(event_time_ms) FROM {db}.touchpoints)) \
             AS start FROM {db}.touchpoints GROUP BY customer_id \
             HAVING max(event_time_ms) < toInt64(start) + {} AND customer_id IN \
               (SELECT customer_id FROM {db}.survey_answers WHERE comment != '') \
             ORDER BY customer_id LIMIT 1",
            DAY_MS / 2
        ));
        if let Some(row) = found.first() {
            break (row[0].clone(), row[1].parse::<i64>().unwrap());
        }
        assert!(Instant::now() < deadline, "nothing committed");
        assert!(service.try_wait().unwrap().is_none(), "the service exited");
        std::thread::sleep(Duration::from_millis(100));
    };
    // Three days later their journey is beyond the allowed lateness, folded by a daily
    // sweep, committed and let go.
    let later = start + 3 * DAY_MS;
    loop {
        let watermark = s.scalar(&format!(
            "SELECT toInt64(min(w)) FROM (SELECT source_partition, max(watermark_ms) AS w \
             FROM {db}.ingest_batches GROUP BY source_partition)"
        ));
        if watermark >= later && s.committed_records() < total {
            break;
        }
        assert!(
            s.committed_records() < total,
            "the run finished before the erase; make the data set larger"
        );
        assert!(service.try_wait().unwrap().is_none(), "the service exited");
        std::thread::sleep(Duration::from_millis(50));
    }
    let victim_is = erase_while_running(&s, &mut service, &victim, total);
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.contains("journeys_moved=0 journeys_read_back_and_moved=1"),
        "the journey was let go when the erasure came: {log}"
    );
    assert_eq!(rows_where(&s, &victim_is), vec![], "after the run");
    assert_only_journeys_under_pseudonyms(&s);
    assert_cells_equal(&s.truth(), &s.cells());
    assert_cells_equal(&s.step_truth(), &s.step_cells());
}

const STITCHING: &str = "identity:\n  enabled: true\n  window_ms: 7200000\n";

/// Devices' rows (identity stitching) holding a string that is `id` exactly, as the claim
/// of a device identified as that customer does: the state is postcard, which writes a
/// string as its length (one byte, for a short one) and its bytes. (The simulator's event
/// ids start with the customer id, so a mere substring says nothing.)
fn device_rows_naming(s: &Stack, id: &str) -> i64 {
    let db = s.database();
    let len = format!("{:02X}", id.len());
    ["journeys", "journeys_compacted"]
        .iter()
        .map(|t| {
            s.scalar(&format!(
                "SELECT toInt64(count()) FROM {db}.{t} WHERE startsWith(customer_id, 'anon:') \
                 AND position(state, concat(unhex('{len}'), '{id}')) > 0"
            ))
        })
        .sum()
}

/// With identity stitching: a customer who signed in on a device that had browsed
/// anonymously, erased while the service runs, is named by no table — not even by the
/// device's stored state, which said who claimed it — and the device's touchpoints go on
/// counting where they did (under the pseudonym, on the customer's partition), so every
/// cell equals the ground truth, also after a replay into an empty database.
#[test]
fn with_identity_stitching_an_erased_customer_is_in_no_table_and_counts_stay_exact() {
    let s = Stack::with_map_text("erase_identity", &retail_in_hours());
    s.append_config(STITCHING);
    // No compaction: the devices' earlier rows, which name the customer, stay for the erase.
    s.set_journey("  compact_after_batches: 0\n");
    s.simulate_scenario(3000, 2.0, 0, "identity");
    let total = s.records_in();
    let mut service = s.spawn(&["journey"]);
    let db = s.database();
    let deadline = Instant::now() + Duration::from_secs(300);
    // A customer with touchpoints from a device that browsed anonymously first, whose
    // device's stored state names them as its claimant.
    let victim = loop {
        let found = s.query(&format!(
            "SELECT customer_id FROM {db}.touchpoints WHERE anonymous_id != '' \
             AND NOT startsWith(customer_id, 'anon:') GROUP BY customer_id \
             HAVING count() >= 2 ORDER BY customer_id LIMIT 50"
        ));
        if let Some(row) = found.iter().find(|r| device_rows_naming(&s, &r[0]) > 0) {
            break row[0].clone();
        }
        assert!(Instant::now() < deadline, "no device claim was committed");
        assert!(service.try_wait().unwrap().is_none(), "the service exited");
        std::thread::sleep(Duration::from_millis(200));
    };
    // Claims are committed late (a device waits for the identity watermark), so the inputs
    // may be read to their end by now: the running service applies the erasure to what it
    // holds, and the replay below reads every touchpoint with the erasure known.
    let said = erase(&s, &victim);
    assert!(
        said.contains("(devices)"),
        "no device row was deleted: {said}"
    );
    s.wait_until_committed(
        &mut service,
        total,
        Duration::from_secs(300),
        "not caught up after the erase",
    );
    // Every input record committed is not yet every count: with stitching, visitors'
    // touchpoints are held until the identity watermark passes them, and claimed ones may
    // still be on their way through the identities topic. The running service gets there
    // once its partitions are read to their end and quiet (a stop before then keeps them
    // in the journeys' state, for the next run).
    let (truth, step_truth) = (s.truth(), s.step_truth());
    let settled_by = Instant::now() + Duration::from_secs(120);
    while (s.cells() != truth || s.step_cells() != step_truth) && Instant::now() < settled_by {
        assert!(service.try_wait().unwrap().is_none(), "the service exited");
        std::thread::sleep(Duration::from_millis(500));
    }
    stop_with_sigterm(&mut service);

    let victim_is = format!("customer_id = '{victim}'");
    let replay = s.replay();
    replay.append_config(STITCHING);
    for (stack, when) in [(&s, "after the run"), (&replay, "after a replay")] {
        if when == "after a replay" {
            stack.ok(&["journey", "--until-caught-up"]);
        }
        assert_eq!(rows_where(stack, &victim_is), vec![], "{when}");
        assert_eq!(device_rows_naming(stack, &victim), 0, "{when}");
        assert_only_journeys_under_pseudonyms(stack);
        assert_cells_equal(&s.truth(), &stack.cells());
        assert_cells_equal(&s.step_truth(), &stack.step_cells());
    }
}

#[test]
fn erase_stops_with_what_to_do_when_no_journey_service_applies_it() {
    let s = Stack::new("erase_idle");
    s.simulate(200, 0.2, 0);
    s.ok(&["journey", "--until-caught-up"]);
    let out = s
        .command(&["erase", "--customer", "cust-0000001", "--wait-secs", "2"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("no journey service applied the erasure")
            && err.contains("run the same `cxstream erase` again"),
        "{err}"
    );
    // Recorded all the same: the next run applies it, and the erase then finishes.
    let mut service = s.spawn(&["journey"]);
    let out = s
        .command(&["erase", "--customer", "cust-0000001", "--wait-secs", "60"])
        .output()
        .unwrap();
    let _ = service.kill();
    let _ = service.wait();
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert_eq!(
        rows_where(&s, "customer_id = 'cust-0000001'"),
        vec![],
        "{said}"
    );
}
