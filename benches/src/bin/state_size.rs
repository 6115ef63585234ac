//! Bytes of journey state per customer, as the journey service holds it in memory: a day of
//! simulated traffic for N customers is applied to one partition processor (every customer
//! *active*: their events are within the allowed lateness), then the event clock moves
//! eight days on, so every journey folds to what stays after the horizon (*idle*), held in
//! memory; once that batch is committed the idle journeys are let go (*let go*: read back
//! from ClickHouse when needed), as the journey service does.
//! Usage: state_size [CUSTOMERS] (default 1000000)

use std::alloc::System;
use std::sync::Arc;

use cap::Cap;
use cxstream_core::{EventTimePolicy, Input, JourneyMap, PartitionProcessor, TouchpointEvent};
use cxstream_simulator::{simulate, SimConfig, SimRecord};

/// Counts the bytes handed out (not the allocator's own overhead).
#[global_allocator]
static ALLOCATED: Cap<System> = Cap::new(System, usize::MAX);

const DAY_MS: i64 = 86_400_000;

fn main() -> anyhow::Result<()> {
    let customers: u64 = match std::env::args().nth(1) {
        Some(n) => n
            .parse()
            .map_err(|e| anyhow::anyhow!("CUSTOMERS `{n}` is not a number: {e}"))?,
        None => 1_000_000,
    };
    let map = Arc::new(JourneyMap::from_yaml(
        "retail.yaml",
        include_str!("../../../schemas/journeys/retail.yaml"),
    )?);
    let base = ALLOCATED.allocated();
    let mut processor =
        PartitionProcessor::new(map.clone(), EventTimePolicy::default()).letting_go();
    let cfg = SimConfig {
        customers,
        days: 1.0,
        ..SimConfig::default()
    };
    let sim = simulate(&map, &cfg)?;
    let events = sim.records.len();
    let mut last_ms = cfg.start_ms;
    for (offset, sent) in sim.records.into_iter().enumerate() {
        last_ms = last_ms.max(sent.record.time_ms());
        // Refusals (none expected here) are not state; the result is ignored on purpose.
        let _ = match sent.record {
            SimRecord::Touchpoint(t) => processor.on_touchpoint(t, offset as i64, Some(sent.at_ms)),
            SimRecord::Answer(a) => processor.on_answer(a, offset as i64, Some(sent.at_ms)),
        };
        if offset % 100_000 == 0 {
            drop(processor.take_batch());
            processor.committed();
        }
    }
    drop(sim.lenses);
    drop(processor.take_batch());
    processor.committed();
    let tracked = processor.tracked_customers().max(1);
    let active = ALLOCATED.allocated().saturating_sub(base);
    println!(
        "{events} events, {tracked} customers: {:.0} B per active customer ({:.1} MB)",
        active as f64 / tracked as f64,
        active as f64 / 1e6
    );

    // Eight days later (one customer's clock moves it), with both inputs quiet: every
    // journey is beyond the allowed lateness of 7 days.
    let later = last_ms + 8 * DAY_MS;
    let _ = processor.on_touchpoint(clock_event(&map, later), 0, Some(later));
    processor.set_idle(Input::Touchpoints, true);
    processor.set_idle(Input::Answers, true);
    drop(processor.take_batch());
    let idle = ALLOCATED.allocated().saturating_sub(base);
    println!(
        "after 8 days of quiet: {:.0} B per idle customer held ({:.1} MB)",
        idle as f64 / tracked as f64,
        idle as f64 / 1e6
    );
    // The batch that persisted them is committed: they are let go.
    processor.committed();
    let let_go = ALLOCATED.allocated().saturating_sub(base);
    println!(
        "once committed: {:.0} B per idle customer let go ({:.1} MB; {} of {tracked} let go)",
        let_go as f64 / tracked as f64,
        let_go as f64 / 1e6,
        processor.stored_journeys()
    );
    Ok(())
}

fn clock_event(map: &JourneyMap, at_ms: i64) -> TouchpointEvent {
    let tp = &map.touchpoints[0];
    TouchpointEvent {
        event_id: "state-size-clock".into(),
        customer_id: Some("state-size-clock".into()),
        anonymous_id: None,
        event_time: at_ms,
        touchpoint: tp.name.clone(),
        channel: map.channels[usize::from(tp.channels[0])].clone(),
        stage: None,
        segment: None,
        outcome: None,
        attributes: Default::default(),
    }
}
