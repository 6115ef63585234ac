//! Deterministic CX traffic: customers in segments walking a journey map's stages across
//! channels, with per-stage conversion, delays, and survey answers whose scores differ by
//! stage, channel and segment. Same seed, same traffic.
//!
//! It also keeps the ground truth of what it produced — exact counts per minute × stage ×
//! touchpoint × channel × segment — computed from its own model of each customer, not with
//! the pipeline's code, so that the pipeline can be checked against it. The traffic is not
//! shaped around the pipeline: producers retry hours later, respondents answer again, and
//! records go out in the order they are sent, not sorted for anyone's convenience.

use std::collections::BTreeMap;

use cxstream_core::{JourneyMap, Metric, SurveyAnswer, TouchpointEvent};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

mod incidents;
pub use incidents::{incidents_csv, nps, Incident, IncidentKind, IncidentTally};
use incidents::{Injector, MapInjector, Shifted};

const MINUTE_MS: i64 = 60_000;
/// The segment of a touchpoint when none up to it names one (README).
const UNKNOWN_SEGMENT: &str = "unknown";
const HOUR_MS: f64 = 3_600_000.0;

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub customers: u64,
    /// Length of the simulated period in days.
    pub days: f64,
    pub seed: u64,
    /// Event time of the period's start, epoch ms.
    pub start_ms: i64,
    /// How the producers deliver: on time, or the way real ones do.
    pub delivery: Delivery,
    /// How customers move through the map: straight through it, or as real ones do.
    pub paths: Paths,
    /// Customers who browse anonymously before they sign in (identity stitching).
    pub anonymity: Option<Anonymity>,
    /// Journeys start more often in the evening than at night and less at weekends (UTC),
    /// instead of evenly over the period.
    pub seasonality: bool,
    /// What goes wrong, and when; its truth is in [`Simulation::incidents`].
    pub incidents: Vec<Incident>,
}

/// Customers who browse on a device without signing in, and sign in later, or never.
///
/// A share of customers browse anonymously on their own device (one device each, never
/// shared): on the web and app channels, until they sign in at their first digital visit in
/// the map's third stage (to buy) or in a second journey; now and then after it too, signed
/// out. Store and call-centre visits know the customer. Sign-ins are sent as they happen
/// (the shop's backend), while the anonymous touchpoints go out as messily as any. So the
/// identifying partition's watermark `w` is never past the sign-in's time `t`, and the
/// rule's `max(t, w) − window` is `t − window` here: a late sign-in (whose claim depends on
/// how far its partition had read) is left to the core's property test.
///
/// The truth follows the README's rule: an anonymous touchpoint is the customer's when dated
/// at or after the device's first sign-in minus the window, else the visitor's own journey
/// (`anon:` + device id), with no segment. Answers need a customer: anonymous touchpoints
/// are not surveyed.
#[derive(Debug, Clone, PartialEq)]
pub struct Anonymity {
    /// Share of customers who start anonymous.
    pub share: f64,
    /// The identity window: how long after an anonymous touchpoint a sign-in claims it.
    pub window_ms: i64,
    /// The period ends with one touchpoint on each of this many partitions, dated a window
    /// and a minute after its last record (the traffic that would follow), so that every
    /// device's wait for a sign-in ends within the simulation.
    pub partitions: u32,
}

/// How customers move through the journey map. The default walks the stages in order,
/// one journey per customer, touchpoints drawn at random within each stage.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Paths {
    /// Share of stage hops that skip a stage.
    pub skip_share: f64,
    /// Share of stages in which the customer also goes back to an earlier stage's
    /// touchpoint.
    pub back_share: f64,
    /// Share of customers who come back after their journey ended and start another.
    pub return_share: f64,
    /// Whether a step's `from` touchpoint is followed by one of its `to` touchpoints
    /// within the budget, at the step's target conversion (less during a step drop).
    pub steps: bool,
    /// Share of visits followed by a touchpoint the map does not declare (help searches,
    /// order status checks, chats), counted off-map.
    pub off_map_share: f64,
}

impl Paths {
    /// Journeys as they really happen: skipped stages, going back, customers who return
    /// after a completed or abandoned journey, steps that convert (or not) within their
    /// budget.
    pub fn non_linear() -> Self {
        Paths {
            skip_share: 0.15,
            back_share: 0.2,
            return_share: 0.25,
            steps: true,
            off_map_share: 0.1,
        }
    }
}

/// How producers deliver what happened: a record's send time (its Kafka timestamp) and
/// copies. None of it changes the truth, except events dated in the future, which the
/// rules refuse (and the simulation counts in [`Simulation::future_dated`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Delivery {
    /// Share of touchpoints whose producer sends them late, by up to `late_by_ms`.
    pub late_share: f64,
    pub late_by_ms: i64,
    /// Share of touchpoints sent again later (a producer retry), on average this much later.
    pub redeliver_share: f64,
    pub redeliver_after_ms: f64,
    /// Share of answers the survey tool sends twice (same response id), the copy later.
    pub resend_share: f64,
    /// The survey tool sends answers this long after they are given: the answers topic runs
    /// behind the touchpoints topic.
    pub survey_lag_ms: i64,
    /// Share of surveyed touchpoints followed by a browsing burst (5–30 product views)
    /// before the answer.
    pub burst_share: f64,
    /// Touchpoints dated this long after they are sent (a wrong clock), per customer in
    /// 1,000; refused as future-dated.
    pub future_per_mille: u32,
}

impl Delivery {
    /// Records sent when they happen; a producer retry now and then, hours later.
    pub fn punctual() -> Self {
        Delivery {
            late_share: 0.0,
            late_by_ms: 0,
            redeliver_share: 0.01,
            redeliver_after_ms: 3.0 * HOUR_MS,
            resend_share: 0.0,
            survey_lag_ms: 0,
            burst_share: 0.0,
            future_per_mille: 0,
        }
    }

    /// Real traffic: touchpoints up to 2 days late (so answers arrive before the touchpoint
    /// they rate), retries up to a day later, re-sent answers, a survey tool 3 hours behind,
    /// browsing bursts, and a few clocks a day in the future.
    pub fn messy() -> Self {
        Delivery {
            late_share: 0.05,
            late_by_ms: 2 * 86_400_000,
            redeliver_share: 0.03,
            redeliver_after_ms: 8.0 * HOUR_MS,
            resend_share: 0.05,
            survey_lag_ms: 3 * 3_600_000,
            burst_share: 0.3,
            future_per_mille: 5,
        }
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            customers: 10_000,
            days: 1.0,
            seed: 42,
            // 2026-11-02T00:00:00Z, a Monday.
            start_ms: 1_793_577_600_000,
            delivery: Delivery::punctual(),
            paths: Paths::default(),
            anonymity: None,
            seasonality: false,
            incidents: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum SimRecord {
    Touchpoint(TouchpointEvent),
    Answer(SurveyAnswer),
}

impl SimRecord {
    pub fn time_ms(&self) -> i64 {
        match self {
            SimRecord::Touchpoint(t) => t.event_time,
            SimRecord::Answer(a) => a.answer_time,
        }
    }

    pub fn customer_id(&self) -> &str {
        let id = match self {
            SimRecord::Touchpoint(t) => &t.customer_id,
            SimRecord::Answer(a) => &a.customer_id,
        };
        id.as_deref().unwrap_or("")
    }

    /// The Kafka key producers give it: the customer id, or for an anonymous touchpoint its
    /// anonymous id.
    pub fn key(&self) -> &str {
        match self {
            SimRecord::Touchpoint(TouchpointEvent {
                customer_id: None,
                anonymous_id: Some(device),
                ..
            }) => device,
            _ => self.customer_id(),
        }
    }
}

/// A ground-truth cell: (minute start, stage, touchpoint, channel, segment).
pub type TruthKey = (i64, String, String, String, String);

/// Exact counts of one cell, bucketed by the DESIGN.md definitions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TruthCounts {
    pub nps_promoters: i64,
    pub nps_passives: i64,
    pub nps_detractors: i64,
    pub csat_n: i64,
    pub csat_top2: i64,
    pub csat_sum: i64,
    pub ces_n: i64,
    pub ces_agree: i64,
    pub ces_sum: i64,
    pub stage_entries: i64,
    pub touchpoints: i64,
    /// Stage entries (in their entry cell) whose next entry came within the stage's
    /// budget, with the sum of those gaps, and those without one: dropped off or still
    /// open, which only the watermark the pipeline ends at tells apart.
    pub stage_conversions: i64,
    pub convert_ms_sum: i64,
    pub stage_not_converted: i64,
}

pub const TRUTH_HEADER: &str = "minute_ms,stage,touchpoint,channel,segment,nps_promoters,nps_passives,nps_detractors,csat_n,csat_top2,csat_sum,ces_n,ces_agree,ces_sum,stage_entries,touchpoints,stage_conversions,convert_ms_sum,stage_not_converted";

impl TruthCounts {
    fn answer(&mut self, metric: Metric, score: i32) {
        let s = i64::from(score);
        match metric {
            Metric::Nps if score >= 9 => self.nps_promoters += 1,
            Metric::Nps if score >= 7 => self.nps_passives += 1,
            Metric::Nps => self.nps_detractors += 1,
            Metric::Csat => {
                self.csat_n += 1;
                self.csat_sum += s;
                self.csat_top2 += i64::from(score >= 4);
            }
            Metric::Ces => {
                self.ces_n += 1;
                self.ces_sum += s;
                self.ces_agree += i64::from(score >= 5);
            }
        }
    }

    pub fn csv_fields(&self) -> [i64; 14] {
        [
            self.nps_promoters,
            self.nps_passives,
            self.nps_detractors,
            self.csat_n,
            self.csat_top2,
            self.csat_sum,
            self.ces_n,
            self.ces_agree,
            self.ces_sum,
            self.stage_entries,
            self.touchpoints,
            self.stage_conversions,
            self.convert_ms_sum,
            self.stage_not_converted,
        ]
    }
}

/// A step ground-truth cell: (start minute, step, stage, touchpoint, channel, segment).
pub type StepTruthKey = (i64, String, String, String, String, String);

/// Step attempts of one cell by DESIGN.md's rules: a `from` touchpoint starts one unless
/// one is running; it converts at the first `to` by its deadline; else it is not converted
/// (dropped off or open, which only the pipeline's final watermark tells apart).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepTruth {
    pub starts: i64,
    pub conversions: i64,
    pub convert_ms_sum: i64,
    pub not_converted: i64,
}

pub const STEP_TRUTH_HEADER: &str =
    "minute_ms,step,stage,touchpoint,channel,segment,starts,conversions,convert_ms_sum,not_converted";

/// A record and when its producer sent it (epoch ms; its Kafka timestamp).
#[derive(Debug, Clone, PartialEq)]
pub struct Sent {
    pub at_ms: i64,
    pub record: SimRecord,
    /// The partition it must go to, if not its key's.
    pub partition: Option<u32>,
}

/// Everything one simulation produced, records in the order they were sent.
#[derive(Debug)]
pub struct Simulation {
    pub records: Vec<Sent>,
    /// Touchpoints dated too far after they were sent: refused, in no count.
    pub future_dated: u64,
    /// The ground truth of each journey map, in the maps' order.
    pub lenses: Vec<Lens>,
    /// Whose journey each touchpoint sent without a customer id counts in, by event id:
    /// the customer's, or the visitor's (`anon:` + anonymous id).
    pub owners: BTreeMap<String, String>,
    /// What each of [`SimConfig::incidents`] touched, in their order.
    pub incidents: Vec<IncidentTally>,
}

impl Simulation {
    /// The first map's ground truth.
    pub fn first(&self) -> &Lens {
        &self.lenses[0]
    }
}

/// One journey map's ground truth over all the traffic: its own customers walk it; every
/// touchpoint of the other maps' customers is off-map in it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Lens {
    pub journey: String,
    pub truth: BTreeMap<TruthKey, TruthCounts>,
    pub step_truth: BTreeMap<StepTruthKey, StepTruth>,
}

/// Why a set of maps cannot be simulated with a truth the simulator can vouch for.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SimError {
    #[error("no journey map to simulate")]
    NoMap,
    #[error(
        "touchpoint `{touchpoint}` is declared by journey `{journey}` and {also}; the \
         simulator computes each map's truth assuming every touchpoint has one home"
    )]
    SharedTouchpoint {
        touchpoint: String,
        journey: String,
        also: String,
    },
    #[error("incident {incident}: {why}")]
    Incident { incident: String, why: String },
}

impl Lens {
    /// Step ground truth as CSV (header [`STEP_TRUTH_HEADER`]).
    pub fn step_truth_csv(&self) -> String {
        let mut out = String::from(STEP_TRUTH_HEADER);
        out.push('\n');
        for ((minute, step, stage, tp, ch, seg), c) in &self.step_truth {
            out.push_str(&format!(
                "{minute},{step},{stage},{tp},{ch},{seg},{},{},{},{}\n",
                c.starts, c.conversions, c.convert_ms_sum, c.not_converted
            ));
        }
        out
    }

    /// Ground truth as CSV (header [`TRUTH_HEADER`]).
    pub fn truth_csv(&self) -> String {
        let mut out = String::from(TRUTH_HEADER);
        out.push('\n');
        for ((minute, stage, tp, ch, seg), c) in &self.truth {
            out.push_str(&format!("{minute},{stage},{tp},{ch},{seg}"));
            for v in c.csv_fields() {
                out.push_str(&format!(",{v}"));
            }
            out.push('\n');
        }
        out
    }
}

/// A touchpoint as the simulator modelled it.
struct Visit {
    id: String,
    time: i64,
    touchpoint: usize,
    channel: usize,
    /// The stage of the touchpoint itself.
    stage: usize,
    /// The furthest stage the customer has reached at this visit (what it counts under).
    reached: usize,
    entered: bool,
    /// For an entry into a stage but the last: the gap to the next entry when that came
    /// within the stage's budget (converted), else `Some(None)`.
    converted_after: Option<Option<i64>>,
    /// Browsing between a touchpoint and its survey; never surveyed itself.
    burst: bool,
    /// A touchpoint the map does not declare (its name): it changes no stage and counts
    /// off-map under the stage the customer is in.
    off_map: Option<&'static str>,
    /// Carries the customer id (signed in, or a channel that knows the customer).
    known: bool,
    /// Carries the customer's device's anonymous id.
    device: bool,
    /// Identifies the device: the customer's first sign-in on it.
    identifies: bool,
    /// Counted in the device visitor's journey, not the customer's.
    visitor: bool,
    /// Counted in the customer's segment: a visit up to it names the segment.
    in_segment: bool,
}

/// Touchpoints product systems send that no journey map declares.
const OFF_MAP_TOUCHPOINTS: [&str; 4] = [
    "help_center_search",
    "order_status_check",
    "chat_opened",
    "faq_view",
];

impl Visit {
    /// Its name as the event carries it.
    fn name<'a>(&'a self, map: &'a JourneyMap) -> &'a str {
        self.off_map
            .unwrap_or_else(|| map.touchpoints[self.touchpoint].name.as_str())
    }

    /// Its segment as counts carry it, given the customer's.
    fn segment<'a>(&self, customer_segment: &'a str) -> &'a str {
        if self.in_segment {
            customer_segment
        } else {
            UNKNOWN_SEGMENT
        }
    }

    /// Its name as per-minute counts carry it.
    fn counted_name<'a>(&'a self, map: &'a JourneyMap) -> &'a str {
        if self.off_map.is_some() {
            "(off-map)"
        } else {
            self.name(map)
        }
    }
}

struct Planned {
    answer: SurveyAnswer,
    /// What an incident did to its score, if anything.
    shifted: Option<Shifted>,
    /// Index into the customer's visits this answer is counted under (None: no context).
    context: Option<usize>,
    /// Replaced by a later answer of the same respondent for the same touchpoint/metric.
    superseded: bool,
}

const COMMENTS_GOOD: [&str; 4] = [
    "Quick and easy.",
    "Friendly staff, thank you!",
    "Great app.",
    "Delivery was early.",
];
const COMMENTS_BAD: [&str; 4] = [
    "Checkout kept failing.",
    "Waited 40 minutes on the phone.",
    "Parcel arrived damaged.",
    "Too many steps to pay.",
];

/// Traffic of customers walking one journey map.
pub fn simulate(map: &JourneyMap, cfg: &SimConfig) -> Result<Simulation, SimError> {
    simulate_maps(&[map], cfg)
}

/// Traffic of customers walking several journey maps at once: each customer walks one of
/// them (the first for 70 %, the others alike for the rest), and each map's truth counts
/// everyone's touchpoints, the other maps' as off-map.
pub fn simulate_maps(maps: &[&JourneyMap], cfg: &SimConfig) -> Result<Simulation, SimError> {
    check_maps(maps)?;
    let mut injector = Injector::new(maps, &cfg.incidents, cfg.paths.steps)?;
    let mut records = Vec::new();
    let mut owners = BTreeMap::new();
    let mut lenses: Vec<Lens> = maps
        .iter()
        .map(|m| Lens {
            journey: m.name.clone(),
            ..Lens::default()
        })
        .collect();
    let mut future_dated = 0;
    let end_ms = cfg.start_ms + (cfg.days * 24.0 * HOUR_MS) as i64;
    for c in 0..cfg.customers {
        // One RNG per customer: a customer's traffic does not depend on the others.
        let mut rng = SmallRng::seed_from_u64(cfg.seed ^ c.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let home = if maps.len() > 1 && rng.random_bool(0.3) {
            rng.random_range(1..maps.len())
        } else {
            0
        };
        let out = Out::of(&mut lenses, home, &mut records, &mut owners);
        let inject = injector.for_map(home);
        simulate_customer(maps[home], cfg, c, end_ms, &mut rng, out, inject);
        if cfg.delivery.future_per_mille > 0
            && rng.random_range(0..1000) < cfg.delivery.future_per_mille
        {
            records.push(future_dated_touchpoint(
                maps[home], cfg, c, end_ms, &mut rng,
            ));
            future_dated += 1;
        }
    }
    if let Some(a) = &cfg.anonymity {
        close_partitions(
            maps[0],
            cfg,
            a,
            end_ms,
            &mut lenses,
            &mut records,
            &mut owners,
            &mut injector,
        );
    }
    records.sort_by_key(|s: &Sent| s.at_ms);
    Ok(Simulation {
        records,
        future_dated,
        lenses,
        owners,
        incidents: injector.tallies,
    })
}

/// The traffic that follows the period, as far as the identity rule needs it: one
/// touchpoint on each partition, dated a window and a minute after the last record (or the
/// period's end), so that every device's wait for a sign-in ends. Counted like any
/// customer's.
#[allow(clippy::too_many_arguments)]
fn close_partitions(
    map: &JourneyMap,
    cfg: &SimConfig,
    a: &Anonymity,
    end_ms: i64,
    lenses: &mut [Lens],
    records: &mut Vec<Sent>,
    owners: &mut BTreeMap<String, String>,
    injector: &mut Injector,
) {
    let Some(tp) = map.touchpoints_of(0).map(usize::from).next() else {
        return;
    };
    let channel = usize::from(map.touchpoints[tp].channels[0]);
    // Browsing bursts run on a little past the period's end.
    let last = records
        .iter()
        .map(|r| r.record.time_ms())
        .max()
        .unwrap_or(end_ms);
    let at = last.max(end_ms) + a.window_ms + MINUTE_MS;
    for p in 0..a.partitions {
        let mut rng = SmallRng::seed_from_u64(cfg.seed ^ u64::from(p).wrapping_add(0x5EED));
        let person = Person {
            customer: format!("closing-{p}"),
            segment: 0,
            device: None,
        };
        let mut visits = vec![visit(&person.customer, 0, at, tp, channel, 0)];
        let first = records.len();
        let out = Out::of(lenses, 0, records, owners);
        let mut inject = injector.for_map(0);
        settle(
            map,
            cfg,
            &person,
            &mut visits,
            end_ms,
            &mut rng,
            out,
            &mut inject,
        );
        for sent in &mut records[first..] {
            sent.partition = Some(p);
        }
    }
}

/// Every touchpoint the simulator sends has one home: the map whose customers send it, or
/// none (the off-map ones). Otherwise the other maps' truth would need their rules too.
fn check_maps(maps: &[&JourneyMap]) -> Result<(), SimError> {
    if maps.is_empty() {
        return Err(SimError::NoMap);
    }
    for (i, m) in maps.iter().enumerate() {
        for t in &m.touchpoints {
            let also = maps
                .iter()
                .enumerate()
                .find(|(j, o)| *j != i && o.touchpoint(&t.name).is_some())
                .map(|(_, o)| format!("journey `{}`", o.name))
                .or_else(|| {
                    OFF_MAP_TOUCHPOINTS
                        .contains(&t.name.as_str())
                        .then(|| "the simulator's own off-map touchpoints".to_string())
                });
            if let Some(also) = also {
                return Err(SimError::SharedTouchpoint {
                    touchpoint: t.name.clone(),
                    journey: m.name.clone(),
                    also,
                });
            }
        }
    }
    Ok(())
}

/// Where a customer's records and truth go.
struct Out<'a> {
    records: &'a mut Vec<Sent>,
    /// The truth of the map the customer walks.
    truth: &'a mut BTreeMap<TruthKey, TruthCounts>,
    step_truth: &'a mut BTreeMap<StepTruthKey, StepTruth>,
    /// The truth of every other map, where all the customer's touchpoints are off-map.
    elsewhere: Vec<&'a mut BTreeMap<TruthKey, TruthCounts>>,
    /// Whose journey each touchpoint sent without a customer id counts in.
    owners: &'a mut BTreeMap<String, String>,
}

impl<'a> Out<'a> {
    /// Where the records and truth of a customer of map `home` go.
    fn of(
        lenses: &'a mut [Lens],
        home: usize,
        records: &'a mut Vec<Sent>,
        owners: &'a mut BTreeMap<String, String>,
    ) -> Self {
        let (before, rest) = lenses.split_at_mut(home);
        let (own, after) = rest.split_at_mut(1);
        Out {
            records,
            truth: &mut own[0].truth,
            step_truth: &mut own[0].step_truth,
            elsewhere: before
                .iter_mut()
                .chain(after.iter_mut())
                .map(|l| &mut l.truth)
                .collect(),
            owners,
        }
    }
}

fn pick_weighted(rng: &mut SmallRng, n: usize) -> usize {
    // Weight 1/(i+1): the first listed segments are the common ones.
    let total: f64 = (0..n).map(|i| 1.0 / (i as f64 + 1.0)).sum();
    let mut x = rng.random::<f64>() * total;
    for i in 0..n {
        x -= 1.0 / (i as f64 + 1.0);
        if x <= 0.0 {
            return i;
        }
    }
    n - 1
}

fn fnv1a(id: &str) -> u64 {
    use std::hash::Hasher;
    let mut h = fnv::FnvHasher::default();
    h.write(id.as_bytes());
    h.finish()
}

fn exp_delay(rng: &mut SmallRng, mean_ms: f64) -> i64 {
    let u: f64 = rng.random::<f64>().max(1e-12);
    (-u.ln() * mean_ms) as i64 + 1_000
}

/// A person whose visits are counted together: a customer, or a device's visitor.
struct Person {
    /// The customer's id (also for their visitor's records, which do not carry it).
    customer: String,
    /// Index of the customer's segment in the map.
    segment: usize,
    /// The device the customer browses anonymously on, if any.
    device: Option<String>,
}

fn simulate_customer(
    map: &JourneyMap,
    cfg: &SimConfig,
    c: u64,
    end_ms: i64,
    rng: &mut SmallRng,
    out: Out<'_>,
    mut inject: MapInjector<'_>,
) {
    let customer = format!("cust-{c:07}");
    let segment = pick_weighted(rng, map.segments.len().max(1));
    let favourite_channel = rng.random_range(0..map.channels.len().max(1));
    let mut t = journey_start(cfg, end_ms, rng);
    let mut visits: Vec<Visit> = Vec::new();

    // Walk the stages; a returning customer walks them again after the first journey ended.
    let journeys = if cfg.paths.return_share > 0.0 && rng.random_bool(cfg.paths.return_share) {
        2
    } else {
        1
    };
    let mut second_journey = i64::MAX;
    for j in 0..journeys {
        let last = walk(
            map,
            cfg,
            &customer,
            favourite_channel,
            (segment, end_ms),
            t,
            rng,
            &mut visits,
            &mut inject,
        );
        let Some((time, stage)) = last.filter(|_| j + 1 < journeys) else {
            break;
        };
        // Back after the journey ended: past the last entry's budget.
        t = time + map.stages[stage].budget_ms + exp_delay(rng, 48.0 * HOUR_MS) + 1;
        if t >= end_ms {
            break;
        }
        second_journey = t;
    }

    add_bursts(map, cfg, &customer, rng, &mut visits);
    // A customer's journey in event time (ties by the FNV-1a 64 hash of the event id, as the
    // README says).
    visits.sort_by_key(|v| (v.time, fnv1a(&v.id)));
    // A silenced channel's producers lose what happens there (before sign-ins are chosen:
    // a lost visit identifies no one).
    visits.retain(|v| !inject.silenced((v.channel, segment, v.time)));
    let device = match &cfg.anonymity {
        Some(a) if rng.random_bool(a.share) => {
            let device = format!("device-{c:07}");
            browse_anonymously(map, a, second_journey, rng, &mut visits);
            Some(device)
        }
        _ => None,
    };
    let person = Person {
        customer,
        segment,
        device,
    };
    settle(
        map,
        cfg,
        &person,
        &mut visits,
        end_ms,
        rng,
        out,
        &mut inject,
    );
}

/// When a customer's first journey starts: evenly over the period's first 90 %, or with
/// [`SimConfig::seasonality`] as often as the hour and day make it.
fn journey_start(cfg: &SimConfig, end_ms: i64, rng: &mut SmallRng) -> i64 {
    let span = (end_ms - cfg.start_ms) as f64 * 0.9;
    let mut t = cfg.start_ms + (rng.random::<f64>() * span) as i64;
    if cfg.seasonality {
        // Thinning: accept a time as often as its intensity over the highest.
        for _ in 0..64 {
            if rng.random::<f64>() * 1.87 < seasonal_intensity(t) {
                break;
            }
            t = cfg.start_ms + (rng.random::<f64>() * span) as i64;
        }
    }
    t
}

/// Relative traffic at `t` (epoch ms, UTC): busiest at 20:00, quietest at 08:00 (0.3 of
/// the mean to 1.7), a little busier late in the week, quieter at weekends.
fn seasonal_intensity(t: i64) -> f64 {
    const DAY_MS: i64 = 86_400_000;
    let hour = t.rem_euclid(DAY_MS) as f64 / HOUR_MS;
    let daily = 1.0 + 0.7 * (std::f64::consts::TAU * (hour - 20.0) / 24.0).cos();
    // 1970-01-01 was a Thursday: +3 makes Monday 0.
    let weekday = usize::try_from((t.div_euclid(DAY_MS) + 3).rem_euclid(7)).unwrap_or(0);
    daily * [1.0, 1.0, 1.0, 1.05, 1.1, 0.8, 0.7][weekday]
}

/// Digital visits before the customer signs in are anonymous; the sign-in (the first
/// digital visit in the third stage or a second journey) identifies the device; after it,
/// a few visits are signed out. Anonymous visits dated before the sign-in minus the window
/// are the visitor's (see [`Anonymity`]).
fn browse_anonymously(
    map: &JourneyMap,
    a: &Anonymity,
    second_journey: i64,
    rng: &mut SmallRng,
    visits: &mut [Visit],
) {
    let digital = |v: &Visit| matches!(map.channels[v.channel].as_str(), "web" | "app");
    let sign_in = visits.iter().position(|v| {
        digital(v) && !v.burst && v.off_map.is_none() && (v.stage == 2 || v.time >= second_journey)
    });
    let signed_in_at = sign_in.map(|i| visits[i].time);
    for (i, v) in visits.iter_mut().enumerate() {
        if !digital(v) {
            continue;
        }
        let before = sign_in.is_none_or(|s| i < s);
        v.identifies = sign_in == Some(i);
        v.device = v.identifies || before || rng.random_bool(0.15);
        v.known = v.identifies || !v.device;
        v.visitor = !v.known && signed_in_at.is_none_or(|t| v.time < t - a.window_ms);
    }
}

/// Counts a customer's visits (and their visitor's) by the rules, plans their answers and
/// sends both.
#[allow(clippy::too_many_arguments)]
fn settle(
    map: &JourneyMap,
    cfg: &SimConfig,
    person: &Person,
    visits: &mut [Visit],
    end_ms: i64,
    rng: &mut SmallRng,
    out: Out<'_>,
    inject: &mut MapInjector<'_>,
) {
    let Out {
        records,
        truth,
        step_truth,
        mut elsewhere,
        owners,
    } = out;
    let customer = &person.customer;
    let seg_name = map
        .segments
        .get(person.segment)
        .map_or(UNKNOWN_SEGMENT, String::as_str)
        .to_string();
    let (theirs, visitors): (Vec<usize>, Vec<usize>) =
        (0..visits.len()).partition(|&i| !visits[i].visitor);
    for members in [&theirs, &visitors] {
        follow_journey(map, visits, members);
        count_steps(map, visits, members, &seg_name, step_truth);
    }
    let mut planned: Vec<Planned> = Vec::new();
    for (vi, v) in visits.iter().enumerate() {
        if v.burst || v.off_map.is_some() || !v.known {
            continue;
        }
        let p_survey = [0.05, 0.10, 0.35, 0.30, 0.20]
            .get(v.stage)
            .copied()
            .unwrap_or(0.1);
        if !rng.random_bool(p_survey) {
            continue;
        }
        let metric = match v.stage {
            2 => Metric::Csat,
            3 if v.name(map).contains("support") => Metric::Ces,
            0 | 1 => [Metric::Csat, Metric::Ces][rng.random_range(0..2)],
            _ => Metric::Nps,
        };
        let at = v.time + exp_delay(rng, 0.2 * HOUR_MS);
        let place = (v.channel, person.segment, v.time);
        let mut first = answer(
            rng,
            map,
            customer,
            planned.len(),
            at,
            metric,
            v,
            person.segment,
        );
        let shifted = inject.shift_score(v.touchpoint, place, &mut first);
        planned.push(Planned {
            answer: first,
            shifted,
            context: Some(vi),
            superseded: false,
        });
        // A few respondents answer the same survey again; the later answer counts.
        if rng.random_bool(0.03) {
            let again = at + exp_delay(rng, 0.1 * HOUR_MS);
            if let Some(prev) = planned.last_mut() {
                prev.superseded = true;
            }
            let mut again = answer(
                rng,
                map,
                customer,
                planned.len(),
                again,
                metric,
                v,
                person.segment,
            );
            let shifted = inject.shift_score(v.touchpoint, place, &mut again);
            planned.push(Planned {
                answer: again,
                shifted,
                context: Some(vi),
                superseded: false,
            });
        }
    }
    // Relationship NPS, not tied to a touchpoint: counted under the customer's latest
    // touchpoint before it (their visitor's are another journey).
    if !visits.is_empty() && rng.random_bool(0.05) {
        let first = visits[0].time;
        let at = first + (rng.random::<f64>() * (end_ms - first) as f64) as i64;
        let ctx = theirs.iter().rev().copied().find(|&i| visits[i].time <= at);
        let mut a = answer(
            rng,
            map,
            customer,
            planned.len(),
            at,
            Metric::Nps,
            &visits[ctx.unwrap_or(0)],
            person.segment,
        );
        a.touchpoint_event_id = None;
        a.touchpoint = None;
        planned.push(Planned {
            answer: a,
            shifted: None,
            context: ctx,
            superseded: false,
        });
    }

    // Answers after the simulated period are not sent; respondent groups stay whole, so
    // that "superseded" stays true to what is sent.
    let in_period: Vec<bool> = planned
        .iter()
        .map(|p| p.answer.answer_time < end_ms)
        .collect();
    let keep: Vec<bool> = (0..planned.len())
        .map(|i| {
            let replacement_sent = in_period.get(i + 1).copied().unwrap_or(true);
            in_period[i] && (!planned[i].superseded || replacement_sent)
        })
        .collect();

    for v in visits.iter() {
        let ev = TouchpointEvent {
            event_id: v.id.clone(),
            customer_id: v.known.then(|| customer.clone()),
            anonymous_id: v.device.then(|| person.device.clone()).flatten(),
            event_time: v.time,
            touchpoint: v.name(map).to_string(),
            channel: map.channels[v.channel].clone(),
            stage: None,
            segment: v.known.then(|| seg_name.clone()),
            outcome: Some(
                if rng.random_bool(0.95) {
                    "success"
                } else {
                    "error"
                }
                .to_string(),
            ),
            attributes: Default::default(),
        };
        if let (false, Some(device)) = (v.known, &person.device) {
            let owner = if v.visitor {
                format!("anon:{device}")
            } else {
                customer.clone()
            };
            owners.insert(v.id.clone(), owner);
        }
        for other in &mut elsewhere {
            other
                .entry(off_map_key(map, v, v.time, &seg_name))
                .or_default()
                .touchpoints += 1;
        }
        let cell = truth.entry(key(map, v, &seg_name)).or_default();
        cell.touchpoints += 1;
        cell.stage_entries += i64::from(v.entered);
        match v.converted_after {
            Some(Some(gap)) => {
                cell.stage_conversions += 1;
                cell.convert_ms_sum += gap;
            }
            Some(None) => cell.stage_not_converted += 1,
            None => {}
        }
        let d = &cfg.delivery;
        let mut at = v.time;
        if d.late_share > 0.0 && rng.random_bool(d.late_share) && !v.identifies {
            at += rng.random_range(0..=d.late_by_ms.max(0));
        }
        // Producers retry, sometimes hours later: the same event id must count once.
        if rng.random_bool(d.redeliver_share) {
            records.push(Sent {
                at_ms: at + exp_delay(rng, d.redeliver_after_ms),
                record: SimRecord::Touchpoint(ev.clone()),
                partition: None,
            });
        }
        records.push(Sent {
            at_ms: at,
            record: SimRecord::Touchpoint(ev),
            partition: None,
        });
    }
    for (p, k) in planned.into_iter().zip(keep) {
        if !k {
            continue;
        }
        if !p.superseded {
            if let Some(shifted) = &p.shifted {
                inject.counted(shifted, &p.answer);
            }
            for other in &mut elsewhere {
                let k = match p.context {
                    Some(vi) => off_map_key(map, &visits[vi], p.answer.answer_time, &seg_name),
                    None => no_context_key(p.answer.answer_time),
                };
                other
                    .entry(k)
                    .or_default()
                    .answer(p.answer.metric, p.answer.score);
            }
            let key = match p.context {
                Some(vi) => key(map, &visits[vi], &seg_name),
                None => no_context_key(p.answer.answer_time),
            };
            let key = (
                p.answer.answer_time.div_euclid(MINUTE_MS) * MINUTE_MS,
                key.1,
                key.2,
                key.3,
                key.4,
            );
            truth
                .entry(key)
                .or_default()
                .answer(p.answer.metric, p.answer.score);
        }
        let d = &cfg.delivery;
        let at = p.answer.answer_time + d.survey_lag_ms;
        // A survey tool that sends an answer again: the same response id counts once.
        if d.resend_share > 0.0 && rng.random_bool(d.resend_share) {
            records.push(Sent {
                at_ms: at + exp_delay(rng, HOUR_MS),
                record: SimRecord::Answer(p.answer.clone()),
                partition: None,
            });
        }
        records.push(Sent {
            at_ms: at,
            record: SimRecord::Answer(p.answer),
            partition: None,
        });
    }
}

/// One person's journeys over their visits (`members`, in event-time order), by the
/// README's rules: each visit counts under the furthest stage reached so far, and enters a
/// stage when its own is beyond every earlier one's; a journey lasts while its last entry
/// is within that stage's budget, the next visit after that starts a new one; an entry
/// converts when the person's next entry comes within its stage's budget. A visit's segment
/// is known from the first visit that names one (the customer's signed-in visits).
fn follow_journey(map: &JourneyMap, visits: &mut [Visit], members: &[usize]) {
    let mut furthest: Option<usize> = None;
    let mut open_until = i64::MAX;
    let mut named = false;
    for &i in members {
        let v = &mut visits[i];
        named |= v.known;
        v.in_segment = named;
        if v.off_map.is_some() {
            let over = furthest.is_some() && v.time > open_until;
            v.entered = false;
            v.reached = furthest.filter(|_| !over).unwrap_or(usize::MAX);
            continue;
        }
        if furthest.is_some() && v.time > open_until {
            furthest = None;
        }
        v.entered = furthest.is_none_or(|f| v.stage > f);
        v.reached = furthest.map_or(v.stage, |f| f.max(v.stage));
        furthest = Some(v.reached);
        if v.entered {
            open_until = v.time.saturating_add(map.stages[v.stage].budget_ms);
        }
    }
    let entries: Vec<usize> = members
        .iter()
        .copied()
        .filter(|&i| visits[i].entered)
        .collect();
    for (k, &i) in entries.iter().enumerate() {
        let stage = visits[i].stage;
        if stage + 1 >= map.stages.len() {
            continue;
        }
        let gap = entries.get(k + 1).map(|&j| visits[j].time - visits[i].time);
        visits[i].converted_after = Some(gap.filter(|g| *g <= map.stages[stage].budget_ms));
    }
}

/// Browsing between a surveyed-to-be touchpoint and its answer: product views (the
/// touchpoints of the second stage) within the next 20 minutes.
fn add_bursts(
    map: &JourneyMap,
    cfg: &SimConfig,
    customer: &str,
    rng: &mut SmallRng,
    visits: &mut Vec<Visit>,
) {
    let d = &cfg.delivery;
    if d.burst_share <= 0.0 || map.stages.len() < 2 {
        return;
    }
    let browse: Vec<usize> = map.touchpoints_of(1).map(usize::from).collect();
    let anchors: Vec<i64> = visits.iter().map(|v| v.time).collect();
    for t0 in anchors {
        if browse.is_empty() || !rng.random_bool(d.burst_share) {
            continue;
        }
        for _ in 0..rng.random_range(5..=30) {
            let tp = browse[rng.random_range(0..browse.len())];
            let chans = &map.touchpoints[tp].channels;
            let time = t0 + rng.random_range(1_000..1_200_000);
            let channel = usize::from(chans[rng.random_range(0..chans.len())]);
            visits.push(Visit {
                burst: true,
                ..visit(customer, visits.len(), time, tp, channel, 1)
            });
        }
    }
}

/// A touchpoint from a device whose clock is a day ahead: dated a day after it is sent.
fn future_dated_touchpoint(
    map: &JourneyMap,
    cfg: &SimConfig,
    c: u64,
    end_ms: i64,
    rng: &mut SmallRng,
) -> Sent {
    let sent = cfg.start_ms + rng.random_range(0..(end_ms - cfg.start_ms).max(1));
    let tp = &map.touchpoints[rng.random_range(0..map.touchpoints.len())];
    Sent {
        at_ms: sent,
        record: SimRecord::Touchpoint(TouchpointEvent {
            event_id: format!("cust-{c:07}-future"),
            customer_id: Some(format!("cust-{c:07}")),
            anonymous_id: None,
            event_time: sent + 86_400_000,
            touchpoint: tp.name.clone(),
            channel: map.channels[usize::from(tp.channels[0])].clone(),
            stage: None,
            segment: None,
            outcome: None,
            attributes: Default::default(),
        }),
        partition: None,
    }
}

/// One journey from `t`: visits appended to `visits`; returns the time and stage of the
/// furthest stage's first visit (the journey's last entry), if any.
#[allow(clippy::too_many_arguments)]
fn walk(
    map: &JourneyMap,
    cfg: &SimConfig,
    customer: &str,
    favourite_channel: usize,
    (segment, end_ms): (usize, i64),
    mut t: i64,
    rng: &mut SmallRng,
    visits: &mut Vec<Visit>,
    inject: &mut MapInjector<'_>,
) -> Option<(i64, usize)> {
    let paths = &cfg.paths;
    let mut last: Option<(i64, usize)> = None;
    let mut stage = 0;
    while stage < map.stages.len() {
        let tps: Vec<usize> = map.touchpoints_of(stage as u8).map(usize::from).collect();
        let n = rng.random_range(1..=3);
        // Where and when the stage was entered (a stage drop there holds customers back).
        let mut entered_at = (0, segment, t);
        for k in 0..n {
            if t >= end_ms {
                break;
            }
            let tp = tps[rng.random_range(0..tps.len())];
            let channel = pick_channel(map, tp, favourite_channel, rng);
            visits.push(visit(customer, visits.len(), t, tp, channel, stage));
            if k == 0 {
                last = Some((t, stage));
                entered_at = (channel, segment, t);
            }
            if paths.steps {
                follow_steps(
                    map,
                    customer,
                    (tp, channel, segment, t),
                    end_ms,
                    rng,
                    visits,
                    inject,
                );
            }
            if paths.off_map_share > 0.0 && rng.random_bool(paths.off_map_share) {
                let at = t + exp_delay(rng, 0.2 * HOUR_MS) + 1;
                if at < end_ms {
                    let name = OFF_MAP_TOUCHPOINTS[rng.random_range(0..OFF_MAP_TOUCHPOINTS.len())];
                    let mut v = visit(customer, visits.len(), at, 0, channel, usize::MAX);
                    v.off_map = Some(name);
                    visits.push(v);
                }
            }
            t += exp_delay(rng, 0.5 * HOUR_MS);
        }
        if stage > 0 && paths.back_share > 0.0 && rng.random_bool(paths.back_share) && t < end_ms {
            let earlier = rng.random_range(0..stage);
            let back: Vec<usize> = map.touchpoints_of(earlier as u8).map(usize::from).collect();
            let tp = back[rng.random_range(0..back.len())];
            let channel = pick_channel(map, tp, favourite_channel, rng);
            visits.push(visit(customer, visits.len(), t, tp, channel, earlier));
            // Going back is a visit like any: a step started there converts as often (its
            // attempts never converting made the step look broken wherever returns were
            // most of the traffic: at night, and once new journeys stop near the end).
            if paths.steps {
                follow_steps(
                    map,
                    customer,
                    (tp, channel, segment, t),
                    end_ms,
                    rng,
                    visits,
                    inject,
                );
            }
            t += exp_delay(rng, 0.5 * HOUR_MS);
        }
        // Segment and channel shift conversion around the map's target.
        let base = map.stages[stage].target_conversion;
        let lift = [0.0, 0.05, 0.15, 0.08].get(segment).copied().unwrap_or(0.0);
        if stage + 1 == map.stages.len()
            || t >= end_ms
            || !inject.stage_converts(
                stage,
                entered_at,
                rng.random::<f64>(),
                (base + lift).clamp(0.0, 1.0),
            )
        {
            break;
        }
        t += exp_delay(
            rng,
            [3.0, 6.0, 12.0, 24.0, 24.0]
                .get(stage)
                .copied()
                .unwrap_or(12.0)
                * HOUR_MS,
        );
        let skip = paths.skip_share > 0.0
            && stage + 2 < map.stages.len()
            && rng.random_bool(paths.skip_share);
        stage += if skip { 2 } else { 1 };
    }
    last
}

fn visit(
    customer: &str,
    n: usize,
    time: i64,
    touchpoint: usize,
    channel: usize,
    stage: usize,
) -> Visit {
    Visit {
        id: format!("{customer}-t{n}"),
        time,
        touchpoint,
        channel,
        stage,
        reached: stage,
        entered: false,
        converted_after: None,
        burst: false,
        off_map: None,
        known: true,
        device: false,
        identifies: false,
        visitor: false,
        in_segment: true,
    }
}

fn pick_channel(map: &JourneyMap, tp: usize, favourite: usize, rng: &mut SmallRng) -> usize {
    let chans = &map.touchpoints[tp].channels;
    if chans.contains(&(favourite as u8)) && rng.random_bool(0.6) {
        favourite
    } else {
        usize::from(chans[rng.random_range(0..chans.len())])
    }
}

/// After a step's `from` touchpoint (touchpoint, channel, segment, time), one of its `to`
/// touchpoints on the same channel, within the budget at the step's target conversion (less
/// during a step drop there), else after it now and then; none after the period.
fn follow_steps(
    map: &JourneyMap,
    customer: &str,
    (tp, channel, segment, t): (usize, usize, usize, i64),
    end_ms: i64,
    rng: &mut SmallRng,
    visits: &mut Vec<Visit>,
    inject: &mut MapInjector<'_>,
) {
    for (i, step) in map.steps.iter().enumerate() {
        if !step.from.contains(&(tp as u16)) {
            continue;
        }
        let to = usize::from(step.to[rng.random_range(0..step.to.len())]);
        let budget = step.budget_ms as f64;
        let p = step.target_conversion.clamp(0.0, 1.0);
        let after = if inject.step_converts(i, (channel, segment, t), rng.random::<f64>(), p) {
            (budget * rng.random_range(0.05..0.95)) as i64
        } else if rng.random_bool(0.3) {
            (budget * rng.random_range(1.05..2.0)) as i64
        } else {
            continue;
        };
        let at = t + after.max(1);
        if at >= end_ms {
            continue;
        }
        let stage = usize::from(map.touchpoints[to].stage);
        visits.push(visit(customer, visits.len(), at, to, channel, stage));
    }
}

/// Step attempts of one customer's visits (in event-time order), by the rules on
/// [`StepTruth`].
fn count_steps(
    map: &JourneyMap,
    visits: &[Visit],
    members: &[usize],
    segment: &str,
    step_truth: &mut BTreeMap<StepTruthKey, StepTruth>,
) {
    for step in &map.steps {
        // The running attempt: (its cell, start time).
        let mut running: Option<(StepTruthKey, i64)> = None;
        for v in members.iter().map(|&i| &visits[i]) {
            let tp = if v.off_map.is_some() {
                u16::MAX
            } else {
                v.touchpoint as u16
            };
            if let Some((cell, start)) = running.take() {
                let in_budget = v.time <= start + step.budget_ms;
                if in_budget && step.to.contains(&tp) {
                    let c = step_truth.entry(cell).or_default();
                    c.conversions += 1;
                    c.convert_ms_sum += v.time - start;
                    continue;
                }
                if in_budget {
                    running = Some((cell, start));
                } else {
                    step_truth.entry(cell).or_default().not_converted += 1;
                }
            }
            if running.is_none() && step.from.contains(&tp) {
                let k = key(map, v, segment);
                let cell = (k.0, step.name.clone(), k.1, k.2, k.3, k.4);
                step_truth.entry(cell.clone()).or_default().starts += 1;
                running = Some((cell, v.time));
            }
        }
        if let Some((cell, _)) = running {
            step_truth.entry(cell).or_default().not_converted += 1;
        }
    }
}

/// The cell of visit `v` (or of an answer at `time` rating it) in a map that does not
/// declare its touchpoint, for a customer with no journey in that map.
fn off_map_key(home: &JourneyMap, v: &Visit, time: i64, segment: &str) -> TruthKey {
    (
        time.div_euclid(MINUTE_MS) * MINUTE_MS,
        "none".into(),
        "(off-map)".into(),
        home.channels[v.channel].clone(),
        v.segment(segment).to_string(),
    )
}

/// The cell of an answer with no touchpoint before it to give it a context.
fn no_context_key(time: i64) -> TruthKey {
    (
        time.div_euclid(MINUTE_MS) * MINUTE_MS,
        "none".into(),
        "none".into(),
        "none".into(),
        "unknown".into(),
    )
}

fn key(map: &JourneyMap, v: &Visit, segment: &str) -> TruthKey {
    (
        v.time.div_euclid(MINUTE_MS) * MINUTE_MS,
        map.stages
            .get(v.reached)
            .map_or("none", |s| s.name.as_str())
            .to_string(),
        v.counted_name(map).to_string(),
        map.channels[v.channel].clone(),
        v.segment(segment).to_string(),
    )
}

/// Draws a score whose level depends on stage, channel and segment.
#[allow(clippy::too_many_arguments)]
fn answer(
    rng: &mut SmallRng,
    map: &JourneyMap,
    customer: &str,
    n: usize,
    at: i64,
    metric: Metric,
    v: &Visit,
    segment: usize,
) -> SurveyAnswer {
    let stage_mood = [0.62, 0.58, 0.66, 0.55, 0.80]
        .get(v.stage)
        .copied()
        .unwrap_or(0.6);
    let channel_mood = match map.channels[v.channel].as_str() {
        "call_centre" => -0.12,
        "app" => 0.05,
        "store" => 0.04,
        _ => 0.0,
    };
    let segment_mood = [-0.03, 0.0, 0.08, -0.05]
        .get(segment)
        .copied()
        .unwrap_or(0.0);
    // Sum of uniforms: a bell-ish spread around the mood.
    let noise: f64 = (0..3).map(|_| rng.random::<f64>()).sum::<f64>() / 3.0 - 0.5;
    // Respondents use the top of the NPS scale more than of the shorter scales.
    let metric_mood = match metric {
        Metric::Nps => 0.18,
        Metric::Csat => 0.08,
        Metric::Ces => 0.04,
    };
    let level =
        (stage_mood + channel_mood + segment_mood + metric_mood + noise * 0.9).clamp(0.0, 1.0);
    let (lo, hi) = metric.range();
    let score = lo + (level * f64::from(hi - lo)).round() as i32;
    let comment = rng.random_bool(0.1).then(|| {
        let pool = if level > 0.6 {
            &COMMENTS_GOOD
        } else {
            &COMMENTS_BAD
        };
        pool[rng.random_range(0..pool.len())].to_string()
    });
    SurveyAnswer {
        response_id: format!("{customer}-r{n}"),
        customer_id: Some(customer.to_string()),
        answer_time: at,
        metric,
        score: score.clamp(lo, hi),
        touchpoint_event_id: Some(v.id.clone()),
        touchpoint: Some(v.name(map).to_string()),
        channel: Some(map.channels[v.channel].clone()),
        comment,
        attributes: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> JourneyMap {
        JourneyMap::from_yaml(
            "retail.yaml",
            include_str!("../../../schemas/journeys/retail.yaml"),
        )
        .expect("map")
    }

    #[test]
    fn same_seed_same_traffic() {
        let cfg = SimConfig {
            customers: 300,
            ..SimConfig::default()
        };
        let a = simulate(&map(), &cfg).unwrap();
        let b = simulate(&map(), &cfg).unwrap();
        assert_eq!(a.records, b.records);
        assert_eq!(a.lenses, b.lenses);
        assert!(a.records.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
        assert!(a.records.iter().all(|s| s.at_ms >= s.record.time_ms()));
    }

    #[test]
    fn traffic_is_rich_enough_to_test_with() {
        let s = simulate(
            &map(),
            &SimConfig {
                customers: 2000,
                ..SimConfig::default()
            },
        )
        .unwrap();
        let answers: Vec<&SurveyAnswer> = s
            .records
            .iter()
            .filter_map(|s| {
                if let SimRecord::Answer(a) = &s.record {
                    Some(a)
                } else {
                    None
                }
            })
            .collect();
        for m in Metric::ALL {
            assert!(
                answers.iter().filter(|a| a.metric == m).count() > 20,
                "{m:?}"
            );
        }
        assert!(answers.iter().any(|a| a.touchpoint_event_id.is_none()));
        assert!(answers.iter().any(|a| a.comment.is_some()));
        let stages_entered: i64 = s.first().truth.values().map(|c| c.stage_entries).sum();
        assert!(stages_entered > 2000);
        let advocacy = s.first().truth.keys().filter(|k| k.1 == "advocacy").count();
        assert!(advocacy > 0, "some customers reach the last stage");
    }

    #[test]
    fn non_linear_journeys_skip_go_back_return_and_take_steps() {
        let m = map();
        let cfg = SimConfig {
            customers: 2000,
            days: 30.0,
            paths: Paths::non_linear(),
            ..SimConfig::default()
        };
        let s = simulate(&m, &cfg).unwrap();
        let s = s.first();
        let entries = |stage: &str| -> i64 {
            s.truth
                .iter()
                .filter(|(k, _)| k.1 == stage)
                .map(|(_, c)| c.stage_entries)
                .sum()
        };
        // Returning customers start a second journey at the first stage.
        assert!(entries("awareness") > 2000, "{}", entries("awareness"));
        // Skipped stages: more customers enter conversion than convert out of consideration.
        let converted_from_consideration: i64 = s
            .truth
            .iter()
            .filter(|(k, _)| k.1 == "consideration")
            .map(|(_, c)| c.stage_conversions)
            .sum();
        assert!(entries("conversion") > converted_from_consideration);
        // Steps convert within their budget at about their target.
        let checkout: Vec<&StepTruth> = s
            .step_truth
            .iter()
            .filter(|(k, _)| k.1 == "checkout")
            .map(|(_, c)| c)
            .collect();
        let (started, converted) = checkout
            .iter()
            .fold((0, 0), |(a, b), c| (a + c.starts, b + c.conversions));
        let rate = converted as f64 / started as f64;
        assert!((0.55..0.85).contains(&rate), "checkout converts {rate}");
    }

    #[test]
    fn messy_delivery_is_late_repeated_bursty_and_sometimes_future_dated() {
        let cfg = SimConfig {
            customers: 2000,
            delivery: Delivery::messy(),
            ..SimConfig::default()
        };
        let s = simulate(&map(), &cfg).unwrap();
        let late = s
            .records
            .iter()
            .filter(|r| r.at_ms > r.record.time_ms() + 3_600_000)
            .count();
        let ahead = s
            .records
            .iter()
            .filter(|r| r.at_ms < r.record.time_ms())
            .count() as u64;
        assert!(late > 100, "late deliveries: {late}");
        assert_eq!(ahead, s.future_dated);
        assert!(s.future_dated > 0);
        let mut responses = std::collections::HashMap::new();
        for r in &s.records {
            if let SimRecord::Answer(a) = &r.record {
                *responses.entry(a.response_id.clone()).or_insert(0) += 1;
            }
        }
        assert!(
            responses.values().any(|n| *n > 1),
            "some answers are re-sent"
        );
        // Browsing bursts are touchpoints too: the truth counts them.
        let punctual = simulate(
            &map(),
            &SimConfig {
                customers: 2000,
                ..SimConfig::default()
            },
        )
        .unwrap();
        let sum = |s: &Simulation| s.first().truth.values().map(|c| c.touchpoints).sum::<i64>();
        assert!(sum(&s) > sum(&punctual), "browsing bursts add touchpoints");
    }

    #[test]
    fn several_maps_each_count_all_traffic_the_others_as_off_map() {
        let retail = map();
        let support = JourneyMap::from_yaml(
            "support.yaml",
            include_str!("../../../schemas/journeys/support.yaml"),
        )
        .unwrap();
        let cfg = SimConfig {
            customers: 1000,
            days: 7.0,
            paths: Paths::non_linear(),
            ..SimConfig::default()
        };
        let s = simulate_maps(&[&retail, &support], &cfg).unwrap();
        let journeys: Vec<&str> = s.lenses.iter().map(|l| l.journey.as_str()).collect();
        assert_eq!(journeys, ["retail", "support"]);
        let sum = |l: &Lens, f: fn(&TruthCounts) -> i64| l.truth.values().map(f).sum::<i64>();
        let (r, p) = (&s.lenses[0], &s.lenses[1]);
        // Every touchpoint and answer counts once in each map.
        assert_eq!(sum(r, |c| c.touchpoints), sum(p, |c| c.touchpoints));
        assert_eq!(
            sum(r, |c| c.csat_n + c.ces_n),
            sum(p, |c| c.csat_n + c.ces_n)
        );
        // Both maps have customers of their own, and see the others' off-map.
        for (own, other) in [(r, "diagnosis"), (p, "consideration")] {
            assert!(sum(own, |c| c.stage_entries) > 100, "{}", own.journey);
            assert!(!own.truth.keys().any(|k| k.1 == other));
            let off_map: i64 = own
                .truth
                .iter()
                .filter(|(k, _)| k.2 == "(off-map)")
                .map(|(_, c)| c.touchpoints)
                .sum();
            assert!(off_map > 1000, "{}: {off_map}", own.journey);
        }
        assert!(p.step_truth.keys().any(|k| k.1 == "chat_answered"));
    }

    /// The owners follow the README's rule, recomputed here from the records alone: an
    /// anonymous touchpoint is its device's customer's when dated at or after the device's
    /// first identification (a touchpoint with both ids) minus the window.
    #[test]
    fn anonymous_visitors_sign_in_later_or_never_and_the_owners_follow_the_rule() {
        let window = 86_400_000;
        let cfg = SimConfig {
            customers: 3000,
            days: 20.0,
            delivery: Delivery::messy(),
            paths: Paths::non_linear(),
            anonymity: Some(Anonymity {
                share: 0.4,
                window_ms: window,
                partitions: 3,
            }),
            ..SimConfig::default()
        };
        let s = simulate(&map(), &cfg).unwrap();
        let touchpoints: Vec<(&Sent, &TouchpointEvent)> = s
            .records
            .iter()
            .filter_map(|r| match &r.record {
                SimRecord::Touchpoint(t) => Some((r, t)),
                SimRecord::Answer(_) => None,
            })
            .collect();
        let mut identified: BTreeMap<&str, (i64, &str)> = BTreeMap::new();
        let mut first_sent: BTreeMap<&str, i64> = BTreeMap::new();
        for (sent, t) in &touchpoints {
            if let (Some(c), Some(d)) = (&t.customer_id, &t.anonymous_id) {
                let at = first_sent.entry(&t.event_id).or_insert(sent.at_ms);
                *at = (*at).min(sent.at_ms);
                let e = identified.entry(d).or_insert((t.event_time, c));
                assert_eq!(e.1, c, "a device is one customer's");
                e.0 = e.0.min(t.event_time);
            }
        }
        // Sign-ins are sent as they happen (a retry may follow).
        for (_, t) in &touchpoints {
            if let Some(at) = first_sent.get(t.event_id.as_str()) {
                assert_eq!(*at, t.event_time, "{}", t.event_id);
            }
        }
        let mut expected = BTreeMap::new();
        for (_, t) in &touchpoints {
            if let (None, Some(d)) = (&t.customer_id, &t.anonymous_id) {
                let owner = match identified.get(d.as_str()) {
                    Some((first, c)) if t.event_time >= first - window => c.to_string(),
                    _ => format!("anon:{d}"),
                };
                expected.insert(t.event_id.clone(), owner);
                assert!(t.segment.is_none());
            }
        }
        assert_eq!(s.owners, expected);
        let visitors = expected.values().filter(|o| o.starts_with("anon:")).count();
        let stitched = expected.len() - visitors;
        assert!(visitors > 300 && stitched > 300, "{visitors} / {stitched}");
        // Nobody answers for an anonymous touchpoint; the period is closed on each partition.
        assert!(s.records.iter().all(|r| match &r.record {
            SimRecord::Answer(a) =>
                !expected.contains_key(a.touchpoint_event_id.as_deref().unwrap_or("")),
            SimRecord::Touchpoint(_) => true,
        }));
        let closing: std::collections::BTreeSet<u32> =
            s.records.iter().filter_map(|r| r.partition).collect();
        assert_eq!(closing, (0..3).collect());
        // The visitors' journeys are counted: awareness entries in segment "unknown".
        let unknown_entries: i64 = s
            .first()
            .truth
            .iter()
            .filter(|(k, _)| k.4 == "unknown")
            .map(|(_, c)| c.stage_entries)
            .sum();
        assert!(unknown_entries > 100, "{unknown_entries}");
    }

    fn incident(kind: IncidentKind, channel: Option<&str>, hours: (i64, i64)) -> Incident {
        let start = SimConfig::default().start_ms;
        Incident {
            kind,
            channel: channel.map(str::to_string),
            segment: None,
            from_ms: start + hours.0 * 3_600_000,
            until_ms: start + hours.1 * 3_600_000,
        }
    }

    fn in_window(t: i64, inc: &Incident) -> bool {
        (inc.from_ms..inc.until_ms).contains(&t)
    }

    #[test]
    fn injected_incidents_change_only_their_slice_and_window_and_say_how_much() {
        let incidents = vec![
            incident(
                IncidentKind::StepDrop {
                    step: "checkout".into(),
                    drop: 0.6,
                },
                Some("app"),
                (24, 36),
            ),
            incident(IncidentKind::Silence, Some("web"), (40, 42)),
            incident(
                IncidentKind::ScoreShift {
                    touchpoint: "review_posted".into(),
                    metric: Metric::Nps,
                    shift: -4,
                },
                None,
                (12, 60),
            ),
        ];
        let cfg = SimConfig {
            customers: 30_000,
            days: 3.0,
            paths: Paths::non_linear(),
            incidents: incidents.clone(),
            ..SimConfig::default()
        };
        let sim = simulate(&map(), &cfg).unwrap();
        let [drop, silence, shift] = &sim.incidents[..] else {
            panic!("one tally per incident: {:?}", sim.incidents);
        };

        // The drop: the tally's own draws, and the step truth, inside against outside.
        assert!(drop.affected > 200, "{drop:?}");
        let ratio = drop.converted as f64 / drop.would_have_converted as f64;
        assert!((0.3..0.5).contains(&ratio), "{drop:?}");
        let rate = |inside: bool, channel: &str| {
            let (mut n, mut c) = (0, 0);
            for (k, v) in &sim.first().step_truth {
                if k.1 == "checkout" && k.4 == channel && in_window(k.0, &incidents[0]) == inside {
                    n += v.starts;
                    c += v.conversions;
                }
            }
            c as f64 / n as f64
        };
        assert!(rate(true, "app") < 0.6 * rate(false, "app"));
        assert!(
            rate(true, "web") > 0.8 * rate(false, "web"),
            "other channels go on"
        );

        // The silence: nothing dated in it on the web is sent; other channels are.
        let sent_in = |channel: &str| {
            sim.records
                .iter()
                .filter(|s| match &s.record {
                    SimRecord::Touchpoint(t) => {
                        t.channel == channel && in_window(t.event_time, &incidents[1])
                    }
                    SimRecord::Answer(_) => false,
                })
                .count()
        };
        assert_eq!(sent_in("web"), 0);
        assert!(sent_in("app") > 20);
        assert!(silence.affected > 20, "{silence:?}");

        // The shift: the same answers, 4 points lower, which moves NPS a lot.
        let (sent, unshifted) = (
            nps(shift.nps_sent).unwrap(),
            nps(shift.nps_unshifted).unwrap(),
        );
        assert!(shift.affected > 30, "{shift:?}");
        assert!(unshifted - sent > 30.0, "{sent} vs {unshifted}");
        let csv = incidents_csv(&incidents, &sim.incidents);
        assert_eq!(csv.lines().count(), 4, "{csv}");
        assert!(csv.contains("step_drop,checkout,app,,"), "{csv}");
    }

    #[test]
    fn seasonal_traffic_peaks_in_the_evening_and_dips_at_weekends() {
        let cfg = SimConfig {
            customers: 20_000,
            days: 14.0,
            seasonality: true,
            ..SimConfig::default()
        };
        let sim = simulate(&map(), &cfg).unwrap();
        let (mut by_hour, mut by_day) = ([0u64; 24], [0u64; 7]);
        for s in &sim.records {
            let t = s.record.time_ms();
            by_hour[usize::try_from(t.rem_euclid(86_400_000) / 3_600_000).unwrap()] += 1;
            // The period starts on a Monday.
            let day = (t - cfg.start_ms).div_euclid(86_400_000).rem_euclid(7);
            by_day[usize::try_from(day).unwrap()] += 1;
        }
        assert!(by_hour[20] > 2 * by_hour[8], "{by_hour:?}");
        assert!(by_day[6] < by_day[2], "{by_day:?}");
    }

    #[test]
    fn incidents_naming_what_no_map_declares_are_refused() {
        for (kind, channel) in [
            (
                IncidentKind::StepDrop {
                    step: "teleport".into(),
                    drop: 0.5,
                },
                None,
            ),
            (
                IncidentKind::StepDrop {
                    step: "checkout".into(),
                    drop: 1.5,
                },
                None,
            ),
            (IncidentKind::Silence, Some("fax")),
            (IncidentKind::Silence, None),
        ] {
            let cfg = SimConfig {
                customers: 10,
                incidents: vec![incident(kind, channel, (1, 2))],
                ..SimConfig::default()
            };
            let err = simulate(&map(), &cfg).unwrap_err();
            assert!(matches!(err, SimError::Incident { .. }), "{err}");
        }
    }

    #[test]
    fn maps_sharing_a_touchpoint_are_refused() {
        let retail = map();
        let mut copy = map();
        copy.name = "copy".into();
        let e = simulate_maps(&[&retail, &copy], &SimConfig::default()).unwrap_err();
        assert!(
            e.to_string().starts_with(
                "touchpoint `ad_impression` is declared by journey `retail` and journey `copy`"
            ),
            "{e}"
        );
    }
}
