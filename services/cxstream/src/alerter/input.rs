//! One journey's side of the aggregates topic, as the alerter reads it: records of the
//! followed group go through the journey's [`BatchLog`]; each confirmed batch's cells go
//! to its [`JourneyWatch`] with the watermark their partition had committed before, and
//! every advance of the journey's known-until judges what became known.

use std::collections::HashMap;

use cxstream_avro::{AggregatesKind, AggregatesMessage, MinuteCell, StepCell};
use cxstream_core::batch_log::{BatchLog, Confirmed, LogError, Partial};
use cxstream_core::claims::Link;
use cxstream_core::journey_map::StepIdx;
use cxstream_core::watch::{AlertChange, Finality, JourneyWatch, WatchParams};
use cxstream_core::JourneyMap;
use serde::{Deserialize, Serialize};

type Cells = (Vec<MinuteCell>, Vec<StepCell>);

pub struct JourneyInput {
    pub map: std::sync::Arc<JourneyMap>,
    log: BatchLog<Cells>,
    pub watch: JourneyWatch,
    steps: HashMap<String, StepIdx>,
    /// Cells naming a stage, channel, segment or step the map does not have (another
    /// version of the map): left out.
    pub unknown_cells: u64,
    /// How far every partition's counts are final, as last judged.
    pub known: Finality,
}

/// What a snapshot keeps of one journey's input (field for field as [`InputState`]).
#[derive(Serialize)]
pub struct InputStateRef<'a> {
    judged_by: u64,
    log: &'a BatchLog<Cells>,
    watch: &'a JourneyWatch,
    unknown_cells: u64,
    known: Finality,
}

/// A journey's input read back from a snapshot.
#[derive(Deserialize)]
pub struct InputState {
    judged_by: u64,
    log: BatchLog<Cells>,
    watch: JourneyWatch,
    unknown_cells: u64,
    known: Finality,
}

/// What one record changed.
#[derive(Default)]
pub struct Read {
    pub changes: Vec<AlertChange>,
    pub errors: Vec<LogError>,
    /// How far the journey is judged now (after a committed record).
    pub known: Finality,
}

impl JourneyInput {
    pub fn new(map: std::sync::Arc<JourneyMap>, params: WatchParams) -> Self {
        let steps = map
            .steps
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((s.name.clone(), StepIdx::try_from(i).ok()?)))
            .collect();
        JourneyInput {
            watch: JourneyWatch::new(&map, params),
            map,
            log: BatchLog::default(),
            steps,
            unknown_cells: 0,
            known: Finality::default(),
        }
    }

    /// What a snapshot keeps of this input.
    pub fn state(&self) -> InputStateRef<'_> {
        InputStateRef {
            judged_by: JourneyWatch::judged_by(&self.map),
            log: &self.log,
            watch: &self.watch,
            unknown_cells: self.unknown_cells,
            known: self.known,
        }
    }

    /// This journey's input as a snapshot kept it, if it was taken under the same map and
    /// parameters.
    pub fn resume(
        map: std::sync::Arc<JourneyMap>,
        params: WatchParams,
        state: InputState,
    ) -> Option<Self> {
        let watch = state.watch.resume(&map, params, state.judged_by)?;
        let mut input = JourneyInput::new(map, params);
        input.watch = watch;
        input.log = state.log;
        input.unknown_cells = state.unknown_cells;
        input.known = state.known;
        Some(input)
    }

    /// A record of this journey and the followed group.
    pub fn on_record(&mut self, m: AggregatesMessage) -> Read {
        let partition = u32::try_from(m.partition).unwrap_or(0);
        match m.kind {
            AggregatesKind::Partial => {
                self.log.on_partial(
                    partition,
                    Partial {
                        seq: u64::try_from(m.seq).unwrap_or(0),
                        // The bits of unsigned numbers, as Avro has no unsigned long.
                        claim: m.claim as u64,
                        batch_id: m.batch_id as u64,
                        chunk: u32::try_from(m.chunk).unwrap_or(0),
                        chunks: u32::try_from(m.chunks).unwrap_or(0),
                        cells: vec![(m.minutes, m.steps)],
                    },
                );
                Read::default()
            }
            AggregatesKind::Committed => {
                let confirmed = Confirmed {
                    seq: u64::try_from(m.seq).unwrap_or(0),
                    batch_id: m.batch_id as u64,
                    watermark: m.watermark,
                    touchpoints_watermark: m.touchpoints_watermark,
                    idle: m.idle,
                    partitions: u32::try_from(m.partitions).unwrap_or(0),
                    chain: m.chain.iter().map(Link::from).collect(),
                };
                // The batches it releases count with what the partition had committed before.
                let before = self.log.partition_known(partition);
                let (released, errors) = self.log.on_confirmed(partition, confirmed);
                for (minutes, steps) in released.into_iter().flat_map(|b| b.cells) {
                    self.add(&minutes, &steps, before);
                }
                let mut read = Read {
                    errors,
                    ..Read::default()
                };
                let known = self.log.known();
                if known != self.known {
                    self.known = known;
                    read.changes = self.watch.advance_to(known);
                }
                read.known = self.known;
                read
            }
        }
    }

    fn add(&mut self, minutes: &[MinuteCell], steps: &[StepCell], before: Finality) {
        let map = &self.map;
        for c in minutes {
            let (Some(stage), Some(channel), Some(segment)) = (
                map.stage_named(&c.stage),
                map.channel(&c.channel),
                map.segment_named(&c.segment),
            ) else {
                self.unknown_cells += 1;
                continue;
            };
            // Answers about no touchpoint of the map count for their stage only.
            let touchpoint = map.touchpoint(&c.touchpoint);
            self.watch.add_minute_cell(
                c.minute,
                (stage, touchpoint),
                (channel, segment),
                &c.counts,
                before,
            );
        }
        for c in steps {
            let (Some(&step), Some(channel), Some(segment)) = (
                self.steps.get(&c.step),
                map.channel(&c.channel),
                map.segment_named(&c.segment),
            ) else {
                self.unknown_cells += 1;
                continue;
            };
            self.watch
                .add_step_cell(c.minute, step, channel, segment, &c.counts, before);
        }
    }
}
