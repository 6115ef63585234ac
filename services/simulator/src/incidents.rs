//! Incidents injected into the traffic, and their ground truth: what was injected where,
//! and how much traffic it touched, tallied by the simulator as it draws the traffic.

use cxstream_core::{JourneyMap, Metric, SurveyAnswer};

use crate::SimError;

/// Something that goes wrong for a while. Only the traffic of the slice it names is
/// touched: a channel, a segment, both, or all (neither).
#[derive(Debug, Clone, PartialEq)]
pub struct Incident {
    pub kind: IncidentKind,
    pub channel: Option<String>,
    pub segment: Option<String>,
    /// Event time, epoch ms: `[from_ms, until_ms)`.
    pub from_ms: i64,
    pub until_ms: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum IncidentKind {
    /// A step's attempts started in the window convert within its budget `drop` less
    /// often (0.3: 30 % fewer).
    StepDrop { step: String, drop: f64 },
    /// Customers who enter the stage in the window go on to the next stage `drop` less
    /// often.
    StageDrop { stage: String, drop: f64 },
    /// The channel's producers send nothing: its touchpoints dated in the window are lost,
    /// and so are the answers they would have been asked for. Needs `channel`.
    Silence,
    /// Answers of `metric` about the touchpoint's visits in the window are `shift` points
    /// higher on their scale (negative: lower), kept within it.
    ScoreShift {
        touchpoint: String,
        metric: Metric,
        shift: i32,
    },
}

impl Incident {
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            IncidentKind::StepDrop { .. } => "step_drop",
            IncidentKind::StageDrop { .. } => "stage_drop",
            IncidentKind::Silence => "silence",
            IncidentKind::ScoreShift { .. } => "score_shift",
        }
    }

    /// The step, stage, touchpoint, or (silence) channel it is about.
    pub fn subject(&self) -> &str {
        match &self.kind {
            IncidentKind::StepDrop { step, .. } => step,
            IncidentKind::StageDrop { stage, .. } => stage,
            IncidentKind::Silence => self.channel.as_deref().unwrap_or(""),
            IncidentKind::ScoreShift { touchpoint, .. } => touchpoint,
        }
    }

    /// The drop (0–1) or the score shift (points).
    pub fn size(&self) -> f64 {
        match &self.kind {
            IncidentKind::StepDrop { drop, .. } | IncidentKind::StageDrop { drop, .. } => *drop,
            IncidentKind::Silence => 1.0,
            IncidentKind::ScoreShift { shift, .. } => f64::from(*shift),
        }
    }
}

/// What an incident touched, counted while the traffic was drawn.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IncidentTally {
    /// Step attempts or stage entries (as the customers walk; the pipeline may count a
    /// return as a new journey's) in the slice and window, touchpoints lost, or answers
    /// shifted that count (sent, and not replaced by a later answer).
    pub affected: u64,
    /// Of the attempts or entries, how many converted, and how many would have without
    /// the incident (the same draws). Zero for the other kinds.
    pub converted: u64,
    pub would_have_converted: u64,
    /// The shifted NPS answers that count: (promoters, passives, detractors) as sent, and
    /// as they would have been without the shift.
    pub nps_sent: (u64, u64, u64),
    pub nps_unshifted: (u64, u64, u64),
}

/// One incident resolved against one map's indices (a map without its subject is not
/// touched by it).
#[derive(Debug, Clone)]
struct Resolved {
    what: What,
    channel: Option<usize>,
    segment: Option<usize>,
    from_ms: i64,
    until_ms: i64,
}

#[derive(Debug, Clone, Copy)]
enum What {
    Step(usize, f64),
    Stage(usize, f64),
    Silence,
    Score(usize, Metric, i32),
    /// The map has no such subject.
    Elsewhere,
}

/// The incidents as one map's traffic sees them, with every incident's tally.
#[derive(Debug)]
pub(crate) struct Injector {
    per_map: Vec<Vec<Resolved>>,
    pub(crate) tallies: Vec<IncidentTally>,
}

impl Injector {
    /// `steps_taken`: whether the simulated customers take the maps' steps at all.
    pub(crate) fn new(
        maps: &[&JourneyMap],
        incidents: &[Incident],
        steps_taken: bool,
    ) -> Result<Self, SimError> {
        let mut per_map = vec![Vec::new(); maps.len()];
        for inc in incidents {
            let bad = |why: String| SimError::Incident {
                incident: format!("{} of `{}`", inc.kind_name(), inc.subject()),
                why,
            };
            if inc.until_ms <= inc.from_ms {
                return Err(bad("it ends before it starts".into()));
            }
            if let IncidentKind::StepDrop { drop, .. } | IncidentKind::StageDrop { drop, .. } =
                inc.kind
            {
                if !(0.0..=1.0).contains(&drop) {
                    return Err(bad(format!("drop {drop} is not between 0 and 1")));
                }
            }
            if matches!(inc.kind, IncidentKind::Silence)
                && (inc.channel.is_none() || inc.segment.is_some())
            {
                return Err(bad("a silence names a channel and no segment".into()));
            }
            let mut found = false;
            for (m, map) in maps.iter().enumerate() {
                // A slice the map does not have: the incident is not in its traffic.
                let channel = inc.channel.as_ref().map(|c| map.channel(c));
                let segment = inc.segment.as_ref().map(|s| map.segment(s));
                let sliced = !matches!(channel, Some(None)) && !matches!(segment, Some(None));
                let what = match &inc.kind {
                    _ if !sliced => What::Elsewhere,
                    IncidentKind::StepDrop { step, drop } => map
                        .steps
                        .iter()
                        .position(|s| &s.name == step)
                        .map_or(What::Elsewhere, |i| What::Step(i, *drop)),
                    IncidentKind::StageDrop { stage, drop } => map
                        .stage(stage)
                        .map_or(What::Elsewhere, |i| What::Stage(usize::from(i), *drop)),
                    IncidentKind::Silence => What::Silence,
                    IncidentKind::ScoreShift {
                        touchpoint,
                        metric,
                        shift,
                    } => map.touchpoint(touchpoint).map_or(What::Elsewhere, |i| {
                        What::Score(usize::from(i), *metric, *shift)
                    }),
                };
                found |= !matches!(what, What::Elsewhere);
                per_map[m].push(Resolved {
                    what,
                    channel: channel.flatten().map(usize::from),
                    segment: segment.flatten().map(usize::from),
                    from_ms: inc.from_ms,
                    until_ms: inc.until_ms,
                });
            }
            if !found {
                let slice = |what: &str, name: &Option<String>| {
                    name.as_ref()
                        .map_or(String::new(), |n| format!(" with {what} `{n}`"))
                };
                return Err(bad(format!(
                    "no map declares `{}`{}{}",
                    inc.subject(),
                    slice("channel", &inc.channel),
                    slice("segment", &inc.segment),
                )));
            }
            if matches!(inc.kind, IncidentKind::StepDrop { .. }) && !steps_taken {
                return Err(bad(
                    "customers take no steps in this scenario (use journeys, incidents or identity)"
                        .into(),
                ));
            }
        }
        Ok(Injector {
            per_map,
            tallies: vec![IncidentTally::default(); incidents.len()],
        })
    }

    /// The incidents as the traffic of map `map` (its index) sees them.
    pub(crate) fn for_map(&mut self, map: usize) -> MapInjector<'_> {
        MapInjector {
            injector: self,
            map,
        }
    }
}

/// The [`Injector`] for one map's customers. Places are (channel, segment, event time).
pub(crate) struct MapInjector<'a> {
    injector: &'a mut Injector,
    map: usize,
}

impl MapInjector<'_> {
    fn active(
        &self,
        (channel, segment, t): (usize, usize, i64),
    ) -> impl Iterator<Item = (usize, What)> + '_ {
        self.injector.per_map[self.map]
            .iter()
            .enumerate()
            .filter(move |(_, r)| {
                r.channel.is_none_or(|c| c == channel)
                    && r.segment.is_none_or(|s| s == segment)
                    && (r.from_ms..r.until_ms).contains(&t)
            })
            .map(|(i, r)| (i, r.what))
    }

    /// Whether an attempt of `step` converts, given the uniform draw `u` and the chance
    /// `p` it has without incidents.
    pub(crate) fn step_converts(
        &mut self,
        step: usize,
        at: (usize, usize, i64),
        u: f64,
        p: f64,
    ) -> bool {
        self.converts(at, u, p, |w| matches!(w, What::Step(s, _) if s == step))
    }

    /// Whether an entry into `stage` goes on to the next stage.
    pub(crate) fn stage_converts(
        &mut self,
        stage: usize,
        at: (usize, usize, i64),
        u: f64,
        p: f64,
    ) -> bool {
        self.converts(at, u, p, |w| matches!(w, What::Stage(s, _) if s == stage))
    }

    fn converts(
        &mut self,
        at: (usize, usize, i64),
        u: f64,
        p: f64,
        about: impl Fn(What) -> bool,
    ) -> bool {
        let hits: Vec<(usize, f64)> = self
            .active(at)
            .filter(|(_, w)| about(*w))
            .map(|(i, w)| match w {
                What::Step(_, d) | What::Stage(_, d) => (i, d),
                _ => (i, 0.0),
            })
            .collect();
        let factor: f64 = hits.iter().map(|(_, d)| 1.0 - d).product();
        let converts = u < p * factor;
        for (i, _) in hits {
            let t = &mut self.injector.tallies[i];
            t.affected += 1;
            t.converted += u64::from(converts);
            t.would_have_converted += u64::from(u < p);
        }
        converts
    }

    /// Whether a touchpoint is lost to a silenced channel (counted if so).
    pub(crate) fn silenced(&mut self, at: (usize, usize, i64)) -> bool {
        let hit = self
            .active(at)
            .find(|(_, w)| matches!(w, What::Silence))
            .map(|(i, _)| i);
        if let Some(i) = hit {
            self.injector.tallies[i].affected += 1;
        }
        hit.is_some()
    }

    /// Shifts an answer about `touchpoint` (at the place and time of its visit) when an
    /// incident says so: which incidents did, and the score it had, for [`Self::counted`].
    pub(crate) fn shift_score(
        &mut self,
        touchpoint: usize,
        at: (usize, usize, i64),
        answer: &mut SurveyAnswer,
    ) -> Option<Shifted> {
        let metric = answer.metric;
        let hits: Vec<(usize, i32)> = self
            .active(at)
            .filter_map(|(i, w)| match w {
                What::Score(tp, m, shift) if tp == touchpoint && m == metric => Some((i, shift)),
                _ => None,
            })
            .collect();
        if hits.is_empty() {
            return None;
        }
        let (lo, hi) = metric.range();
        let before = answer.score;
        answer.score = (before + hits.iter().map(|(_, s)| s).sum::<i32>()).clamp(lo, hi);
        Some(Shifted {
            incidents: hits.into_iter().map(|(i, _)| i).collect(),
            before,
        })
    }

    /// A shifted answer that counts (sent, and not replaced by a later one): the truth.
    pub(crate) fn counted(&mut self, shifted: &Shifted, answer: &SurveyAnswer) {
        for &i in &shifted.incidents {
            let t = &mut self.injector.tallies[i];
            t.affected += 1;
            if answer.metric == Metric::Nps {
                bump(&mut t.nps_sent, answer.score);
                bump(&mut t.nps_unshifted, shifted.before);
            }
        }
    }
}

/// What [`MapInjector::shift_score`] did to an answer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Shifted {
    incidents: Vec<usize>,
    before: i32,
}

/// Promoters 9–10, passives 7–8, detractors 0–6 (the NPS definition).
fn bump(c: &mut (u64, u64, u64), score: i32) {
    match score {
        9.. => c.0 += 1,
        7..=8 => c.1 += 1,
        _ => c.2 += 1,
    }
}

/// NPS in points of (promoters, passives, detractors), if any answered.
pub fn nps((p, q, d): (u64, u64, u64)) -> Option<f64> {
    let n = p + q + d;
    (n > 0).then(|| 100.0 * (p as f64 - d as f64) / n as f64)
}

/// The incidents' ground truth as CSV, one row per incident.
pub fn incidents_csv(incidents: &[Incident], tallies: &[IncidentTally]) -> String {
    let mut s = String::from(
        "kind,subject,channel,segment,from_ms,until_ms,size,affected,converted,\
         would_have_converted,nps_sent,nps_unshifted\n",
    );
    for (inc, t) in incidents.iter().zip(tallies) {
        let fmt = |x: Option<f64>| x.map_or(String::new(), |v| format!("{v:.2}"));
        s.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{},{}\n",
            inc.kind_name(),
            inc.subject(),
            inc.channel.as_deref().unwrap_or(""),
            inc.segment.as_deref().unwrap_or(""),
            inc.from_ms,
            inc.until_ms,
            inc.size(),
            t.affected,
            t.converted,
            t.would_have_converted,
            fmt(nps(t.nps_sent)),
            fmt(nps(t.nps_unshifted)),
        ));
    }
    s
}
