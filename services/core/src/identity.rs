//! Identity stitching: a device's anonymous touchpoints (an anonymous id, no customer id)
//! join the journey of the customer identified on that device, and every figure counts the
//! person once.
//!
//! Producers key anonymous touchpoints by anonymous id, so they reach the partition of the
//! anonymous id, while the identifying touchpoint (both ids, keyed by customer id) reaches
//! the customer's. The [`IdentityResolver`] of each partition:
//!
//! - passes a customer's touchpoint on as it is; when it also names an anonymous id and is
//!   not refused (late or from the future), it sends an [`Identification`] to the anonymous
//!   id's partition (once per device and customer, again only when it reaches further back);
//! - holds a device's anonymous touchpoint (counted nowhere yet) until either an
//!   identification that claims it arrives — then the touchpoint goes, with the customer id
//!   set, to the customer's partition and counts there like any of the customer's — or the
//!   *identity watermark* passes its time + the identity window — then it counts as the
//!   visitor's own journey, keyed [`VISITOR_PREFIX`] + anonymous id.
//!
//! The identity watermark is the lowest watermark every partition has published, each
//! publishing only after the identifications it sent before, on the same ordered stream as
//! them. An identification dated `t`, applied while its partition's watermark was `w`,
//! claims the device's anonymous touchpoints dated `s ≥ max(t, w) − window`: identified at
//! most a window after the touchpoint (or at any time before it), and known before the
//! touchpoint's wait could have ended. So a touchpoint is never counted for the visitor
//! first and taken back later, and whether it is stitched follows from the partitions' logs
//! and watermarks, not from which partition was read faster.
//!
//! Limits, documented: a device identified as two customers (a shared computer) stays with
//! the first identification that reaches its partition. A stitched touchpoint (on the
//! customer's partition) or a released one (on its own) is applied like any event, so it is
//! refused as late, and recorded as such, if that partition's watermark has run more than
//! the allowed lateness past it — possible only when one partition runs more than the
//! allowed lateness − the window ahead of the slowest.

use std::collections::{BTreeSet, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::erasure::Erasures;
use crate::event_time::EventClock;
use crate::events::{Invalid, TouchpointEvent};

/// Customer ids of visitors' journeys start with this; producers' customer ids may not.
pub const VISITOR_PREFIX: &str = "anon:";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityPolicy {
    /// How long after an anonymous touchpoint an identification may come and still claim
    /// it; also how long the touchpoint waits for one before it counts as the visitor's.
    pub window_ms: i64,
}

impl Default for IdentityPolicy {
    /// One day: a visitor who signs in or buys within a day of browsing.
    fn default() -> Self {
        IdentityPolicy {
            window_ms: 86_400_000,
        }
    }
}

/// "The customer was identified on this device": sent from the customer's partition to the
/// anonymous id's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identification {
    pub anonymous_id: String,
    pub customer_id: String,
    /// Event time of the identifying touchpoint.
    pub time: i64,
    /// The identifying partition's watermark when it applied the touchpoint (`None` before
    /// it had one).
    pub watermark: Option<i64>,
    /// The identifying (the customer's) partition, as its message says: where the device's
    /// touchpoints go, also once the customer id is a pseudonym, which is keyed elsewhere.
    pub partition: Option<u32>,
}

impl Identification {
    /// The earliest anonymous touchpoint it claims (see the module's rule).
    fn claims_from(&self, window_ms: i64) -> i64 {
        self.watermark
            .map_or(self.time, |w| w.max(self.time))
            .saturating_sub(window_ms)
    }
}

/// A touchpoint with the input offset it was read at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Routed {
    pub event: TouchpointEvent,
    pub source_offset: i64,
}

/// What to do with a touchpoint.
#[derive(Debug, Clone, PartialEq)]
pub enum Route {
    /// Apply it here: a customer's touchpoint, or an anonymous one that cannot wait (its
    /// wait is over, or it is refused anyway), keyed by its visitor.
    Apply(TouchpointEvent),
    /// Held for an identification.
    Held,
    /// The device's customer is known: send it, customer id set, to the customer's
    /// partition, to be applied there as it is (never routed again: it keeps its anonymous
    /// id, which would make it an identification).
    Forward(TouchpointEvent, Option<u32>),
}

/// A claimed touchpoint on its way to its customer's partition: `partition` when the claim
/// knows it, else the partition its customer id is keyed to.
#[derive(Debug, Clone, PartialEq)]
pub struct Forwarded {
    pub routed: Routed,
    pub partition: Option<u32>,
}

/// A device: its held touchpoints and who claimed it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Visitor {
    pub held: Vec<Routed>,
    pub claim: Option<Claim>,
}

/// The customer a device was identified as, and from when its anonymous touchpoints are
/// theirs (the furthest back any of the customer's identifications reached).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub customer_id: String,
    pub from: i64,
    /// The customer's partition, when the identification said (see [`Identification`]).
    pub partition: Option<u32>,
}

impl Visitor {
    fn claimant(&self, time: i64) -> Option<&Claim> {
        self.claim.as_ref().filter(|c| time >= c.from)
    }
}

/// One partition's identity stitching.
#[derive(Debug, Default)]
pub struct IdentityResolver {
    policy: IdentityPolicy,
    visitors: HashMap<String, Visitor>,
    /// (time + window, anonymous id) of every held touchpoint.
    releases: BTreeSet<(i64, String)>,
    /// The identity watermark last released by.
    released_to: Option<i64>,
    /// Identifications sent, per customer: each device and the furthest back it claimed
    /// (not persisted: after a restart one may be sent again, which changes nothing).
    sent: HashMap<String, Vec<(String, i64)>>,
    outbox: Vec<Identification>,
    /// Devices whose state changed since the last [`IdentityResolver::take_changed`].
    changed: HashSet<String>,
}

/// The journey key of a device's own (never identified) journey.
pub fn visitor_key(anonymous_id: &str) -> String {
    format!("{VISITOR_PREFIX}{anonymous_id}")
}

/// The id as sent (the partition it was keyed to follows from it), if not blank.
fn present(id: &Option<String>) -> Option<&str> {
    id.as_deref().filter(|s| !s.trim().is_empty())
}

impl IdentityResolver {
    pub fn new(policy: IdentityPolicy) -> Self {
        IdentityResolver {
            policy,
            ..Default::default()
        }
    }

    pub fn policy(&self) -> IdentityPolicy {
        self.policy
    }

    /// Routes a touchpoint validated but for its ids, by the partition's `clock` now and
    /// the record's timestamp.
    pub fn route(
        &mut self,
        event: TouchpointEvent,
        source_offset: i64,
        clock: &EventClock,
        record_ms: Option<i64>,
    ) -> Result<Route, Invalid> {
        let refused = clock.check(event.event_time, record_ms).is_err();
        if let Some(customer) = present(&event.customer_id) {
            if customer.trim().starts_with(VISITOR_PREFIX) {
                return Err(Invalid::ReservedCustomerId);
            }
            if let (Some(device), false) = (present(&event.anonymous_id), refused) {
                self.identified(customer, device, event.event_time, clock.watermark());
            }
            return Ok(Route::Apply(event));
        }
        let Some(device) = present(&event.anonymous_id).map(str::to_owned) else {
            return Err(Invalid::MissingCustomerId);
        };
        let time = event.event_time;
        let visitor = self.visitors.entry(device.clone()).or_default();
        if let (Some(claim), false) = (visitor.claimant(time), refused) {
            let partition = claim.partition;
            return Ok(Route::Forward(
                with_customer(event, &claim.customer_id),
                partition,
            ));
        }
        let release = time.saturating_add(self.policy.window_ms);
        if refused || self.released_to.is_some_and(|iw| release < iw) {
            if visitor.held.is_empty() && visitor.claim.is_none() {
                self.visitors.remove(&device);
            }
            return Ok(Route::Apply(with_customer(event, &visitor_key(&device))));
        }
        visitor.held.push(Routed {
            event,
            source_offset,
        });
        self.releases.insert((release, device.clone()));
        self.changed.insert(device);
        Ok(Route::Held)
    }

    /// Remembers an identification to send, unless one reaching as far back was sent.
    fn identified(&mut self, customer: &str, device: &str, time: i64, watermark: Option<i64>) {
        let id = Identification {
            anonymous_id: device.to_owned(),
            customer_id: customer.to_owned(),
            time,
            watermark,
            partition: None,
        };
        let from = id.claims_from(self.policy.window_ms);
        let devices = self.sent.entry(customer.to_owned()).or_default();
        match devices.iter_mut().find(|(d, _)| d == device) {
            Some((_, f)) if *f <= from => return,
            Some((_, f)) => *f = from,
            None => devices.push((device.to_owned(), from)),
        }
        self.outbox.push(id);
    }

    /// Identifications to send to their anonymous ids' partitions before the batch that
    /// produced them commits (and before this partition publishes a later watermark).
    pub fn take_identifications(&mut self) -> Vec<Identification> {
        std::mem::take(&mut self.outbox)
    }

    /// An identification reached the anonymous id's partition: returns the held
    /// touchpoints it claims, customer id set, to send to the customer's partition.
    pub fn on_identification(&mut self, id: Identification) -> Vec<Forwarded> {
        let from = id.claims_from(self.policy.window_ms);
        let visitor = self.visitors.entry(id.anonymous_id.clone()).or_default();
        match &mut visitor.claim {
            Some(c) if c.customer_id != id.customer_id => return Vec::new(),
            Some(c) if c.from <= from => return Vec::new(),
            Some(c) => {
                c.from = from;
                c.partition = c.partition.or(id.partition);
            }
            None => {
                visitor.claim = Some(Claim {
                    customer_id: id.customer_id,
                    from,
                    partition: id.partition,
                })
            }
        }
        let (claimed, kept): (Vec<Routed>, Vec<Routed>) = std::mem::take(&mut visitor.held)
            .into_iter()
            .partition(|r| r.event.event_time >= from);
        visitor.held = kept;
        self.changed.insert(id.anonymous_id);
        let (customer, partition) = visitor
            .claim
            .as_ref()
            .map_or(("", None), |c| (c.customer_id.as_str(), c.partition));
        claimed
            .into_iter()
            .map(|r| Forwarded {
                routed: Routed {
                    event: with_customer(r.event, customer),
                    source_offset: r.source_offset,
                },
                partition,
            })
            .collect()
    }

    /// Devices claimed by customers now erased are claimed by their pseudonyms: their
    /// touchpoints go on counting where they did, naming no one. Returns how many.
    pub fn erase(&mut self, erasures: &Erasures) -> usize {
        self.sent.retain(|c, _| erasures.pseudonym_of(c).is_none());
        let mut n = 0;
        for (device, visitor) in &mut self.visitors {
            let Some(claim) = visitor.claim.as_mut() else {
                continue;
            };
            if let Some(pseudonym) = erasures.pseudonym_of(&claim.customer_id) {
                claim.customer_id = pseudonym;
                self.changed.insert(device.clone());
                n += 1;
            }
        }
        n
    }

    /// The identity watermark moved to `iw`: returns the held touchpoints whose wait is
    /// over, keyed by their visitor, to apply here.
    pub fn release(&mut self, iw: i64) -> Vec<Routed> {
        if self.released_to.is_some_and(|r| r >= iw) {
            return Vec::new();
        }
        self.released_to = Some(iw);
        let window = self.policy.window_ms;
        let mut out = Vec::new();
        while self.releases.first().is_some_and(|(r, _)| *r < iw) {
            let Some((_, device)) = self.releases.pop_first() else {
                break;
            };
            let Some(visitor) = self.visitors.get_mut(&device) else {
                continue;
            };
            let (due, kept): (Vec<Routed>, Vec<Routed>) = std::mem::take(&mut visitor.held)
                .into_iter()
                .partition(|r| r.event.event_time.saturating_add(window) < iw);
            visitor.held = kept;
            self.changed.insert(device.clone());
            let key = visitor_key(&device);
            out.extend(due.into_iter().map(|r| Routed {
                event: with_customer(r.event, &key),
                source_offset: r.source_offset,
            }));
            if visitor.held.is_empty() && visitor.claim.is_none() {
                self.visitors.remove(&device);
            }
        }
        out
    }

    /// The devices whose state changed since the last call, with their state now (`None`:
    /// nothing left to keep), to persist with the batch.
    pub fn take_changed(&mut self) -> Vec<(String, Option<Visitor>)> {
        self.changed
            .drain()
            .map(|d| {
                let v = self.visitors.get(&d).cloned();
                (d, v)
            })
            .collect()
    }

    /// A device's state now.
    pub fn visitor(&self, device: &str) -> Option<&Visitor> {
        self.visitors.get(device)
    }

    /// Touchpoints held now.
    pub fn held(&self) -> usize {
        self.visitors.values().map(|v| v.held.len()).sum()
    }

    /// The state to persist with a commit: every device holding touchpoints or claimed.
    pub fn visitors(&self) -> impl Iterator<Item = (&str, &Visitor)> {
        self.visitors.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Restores a device's persisted state (after a restart or rebalance); a claim by a
    /// customer erased since is the pseudonym's, and stored again.
    pub fn restore(&mut self, device: String, mut visitor: Visitor, erasures: &Erasures) {
        if let Some(claim) = visitor.claim.as_mut() {
            if let Some(pseudonym) = erasures.pseudonym_of(&claim.customer_id) {
                claim.customer_id = pseudonym;
                self.changed.insert(device.clone());
            }
        }
        let window = self.policy.window_ms;
        for r in &visitor.held {
            let release = r.event.event_time.saturating_add(window);
            self.releases.insert((release, device.clone()));
        }
        self.visitors.insert(device, visitor);
    }
}

fn with_customer(mut event: TouchpointEvent, customer: &str) -> TouchpointEvent {
    event.customer_id = Some(customer.to_owned());
    event
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event_time::{ClockState, EventTimePolicy};

    const H: i64 = 3_600_000;

    /// Routes with the partition's watermark at `wm` and the record written when it
    /// happened.
    fn route(
        r: &mut IdentityResolver,
        e: TouchpointEvent,
        offset: i64,
        wm: Option<i64>,
    ) -> Result<Route, Invalid> {
        let state = ClockState {
            highs: [wm, wm],
            watermark: wm,
        };
        let clock = EventClock::resumed(EventTimePolicy::default(), state);
        let t = e.event_time;
        r.route(e, offset, &clock, Some(t))
    }

    fn resolver() -> IdentityResolver {
        IdentityResolver::new(IdentityPolicy { window_ms: 24 * H })
    }

    fn ev(id: &str, customer: Option<&str>, device: Option<&str>, t: i64) -> TouchpointEvent {
        TouchpointEvent {
            event_id: id.into(),
            customer_id: customer.map(Into::into),
            anonymous_id: device.map(Into::into),
            event_time: t,
            touchpoint: "product_view".into(),
            channel: "web".into(),
            stage: None,
            segment: None,
            outcome: None,
            attributes: Default::default(),
        }
    }

    fn identification(t: i64, watermark: Option<i64>, customer: &str) -> Identification {
        Identification {
            anonymous_id: "d".into(),
            customer_id: customer.into(),
            time: t,
            watermark,
            partition: Some(2),
        }
    }

    fn routed(claimed: Vec<Forwarded>) -> Vec<Routed> {
        claimed.into_iter().map(|f| f.routed).collect()
    }

    fn customers(rs: &[Routed]) -> Vec<(&str, &str)> {
        rs.iter()
            .map(|r| {
                let e = &r.event;
                (e.event_id.as_str(), e.customer_id.as_deref().unwrap_or(""))
            })
            .collect()
    }

    #[test]
    fn an_anonymous_touchpoint_waits_and_goes_to_the_customer_identified_within_the_window() {
        let mut r = resolver();
        let held = route(&mut r, ev("a", None, Some("d"), 10 * H), 4, None);
        assert_eq!(held, Ok(Route::Held));
        assert_eq!(r.held(), 1);
        let claimed = r.on_identification(identification(30 * H, Some(30 * H), "c"));
        assert_eq!(claimed[0].partition, Some(2));
        assert_eq!(claimed[0].routed.source_offset, 4);
        assert_eq!(customers(&routed(claimed)), [("a", "c")]);
        assert_eq!(r.held(), 0);
        // Later anonymous touchpoints of the device go straight to the customer.
        let later = route(&mut r, ev("b", None, Some("d"), 40 * H), 5, None);
        assert!(matches!(later, Ok(Route::Forward(e, _)) if e.customer_id.as_deref() == Some("c")));
    }

    #[test]
    fn without_an_identification_in_time_it_becomes_the_visitors_own() {
        let mut r = resolver();
        route(&mut r, ev("a", None, Some("d"), 10 * H), 0, None).unwrap();
        route(&mut r, ev("b", None, Some("d"), 20 * H), 1, None).unwrap();
        assert!(r.release(34 * H).is_empty(), "10 h + 24 h has not passed");
        let released = r.release(34 * H + 1);
        assert_eq!(customers(&released), [("a", "anon:d")]);
        // Identified 25 h after "a": too late for it (already counted), in time for "b".
        let claimed = r.on_identification(identification(35 * H, Some(35 * H), "c"));
        assert_eq!(customers(&routed(claimed)), [("b", "c")]);
        // Dated past the identity watermark's reach: counted as the visitor's at once.
        let old = route(&mut r, ev("z", None, Some("e"), 5 * H), 2, None);
        assert!(matches!(old, Ok(Route::Apply(e)) if e.customer_id.as_deref() == Some("anon:e")));
    }

    #[test]
    fn an_identification_known_only_after_the_figures_were_final_claims_nothing() {
        let mut r = resolver();
        route(&mut r, ev("a", None, Some("d"), 10 * H), 0, None).unwrap();
        // Applied while its partition's watermark was already past 10 h + 24 h.
        let claimed = r.on_identification(identification(20 * H, Some(40 * H), "c"));
        assert!(claimed.is_empty());
        assert_eq!(r.held(), 1);
        // An earlier one, known in time, claims it.
        let claimed = r.on_identification(identification(20 * H, Some(21 * H), "c"));
        assert_eq!(customers(&routed(claimed)), [("a", "c")]);
    }

    #[test]
    fn a_device_stays_with_the_first_customer_identified_on_it() {
        let mut r = resolver();
        route(&mut r, ev("h", None, Some("d"), 2 * H), 0, None).unwrap();
        // c's identification reaches back to 6 h: not to "h".
        assert!(r
            .on_identification(identification(30 * H, None, "c"))
            .is_empty());
        // x's would reach it, but the device is c's.
        assert!(r
            .on_identification(identification(5 * H, None, "x"))
            .is_empty());
        assert_eq!(r.held(), 1);
        let e = route(&mut r, ev("a", None, Some("d"), 11 * H), 0, None);
        assert!(matches!(e, Ok(Route::Forward(e, _)) if e.customer_id.as_deref() == Some("c")));
    }

    #[test]
    fn a_claimed_touchpoint_arriving_after_the_wait_still_goes_to_the_customer() {
        let mut r = resolver();
        r.on_identification(identification(10 * H, Some(10 * H), "c"));
        assert!(r.release(100 * H).is_empty());
        let e = route(&mut r, ev("a", None, Some("d"), 10 * H), 0, None);
        assert!(matches!(e, Ok(Route::Forward(e, _)) if e.customer_id.as_deref() == Some("c")));
    }

    #[test]
    fn refused_touchpoints_identify_nothing_and_wait_for_nothing() {
        let mut r = resolver();
        let lateness = EventTimePolicy::default().allowed_lateness_ms;
        let wm = Some(20 * H + lateness);
        let late = ev("i", Some("c"), Some("d"), 10 * H);
        assert!(matches!(route(&mut r, late, 0, wm), Ok(Route::Apply(_))));
        assert!(r.take_identifications().is_empty());
        let late = route(&mut r, ev("a", None, Some("e"), 10 * H), 0, wm);
        assert!(matches!(late, Ok(Route::Apply(e)) if e.customer_id.as_deref() == Some("anon:e")));
        assert_eq!(r.held(), 0);
    }

    #[test]
    fn identifications_are_sent_once_per_device_and_again_only_when_earlier() {
        let mut r = resolver();
        for (t, id) in [(10, "1"), (12, "2"), (8, "3"), (9, "4")] {
            let e = ev(id, Some("c"), Some("d"), t * H);
            assert!(matches!(
                route(&mut r, e, 0, Some(7 * H)),
                Ok(Route::Apply(_))
            ));
        }
        let sent: Vec<i64> = r
            .take_identifications()
            .iter()
            .map(|i| i.time / H)
            .collect();
        assert_eq!(sent, [10, 8]);
        assert!(r.take_identifications().is_empty());
    }

    #[test]
    fn ids_are_required_and_the_visitor_prefix_is_reserved() {
        let mut r = resolver();
        let none = route(&mut r, ev("a", Some(" "), None, 0), 0, None);
        assert_eq!(none, Err(Invalid::MissingCustomerId));
        let reserved = route(&mut r, ev("b", Some("anon:x"), None, 0), 0, None);
        assert_eq!(reserved, Err(Invalid::ReservedCustomerId));
    }

    #[test]
    fn restored_visitors_wait_and_release_as_before() {
        let mut r = resolver();
        route(&mut r, ev("a", None, Some("d"), 10 * H), 3, None).unwrap();
        r.on_identification(identification(100 * H, None, "c"));
        let saved: Vec<(String, Visitor)> = r
            .visitors()
            .map(|(k, v)| (k.to_owned(), v.clone()))
            .collect();
        let mut back = resolver();
        for (k, v) in saved {
            back.restore(k, v, &Erasures::default());
        }
        assert_eq!(back.held(), 1);
        assert_eq!(customers(&back.release(35 * H)), [("a", "anon:d")]);
        let later = route(&mut back, ev("b", None, Some("d"), 90 * H), 0, None);
        assert!(matches!(later, Ok(Route::Forward(..))));
    }

    #[test]
    fn a_device_claimed_by_an_erased_customer_is_claimed_by_the_pseudonym_on_the_same_partition() {
        let mut r = resolver();
        r.on_identification(identification(10 * H, Some(10 * H), "c"));
        r.take_changed();
        let mut erasures = Erasures::default();
        erasures.insert(&crate::erasure::fingerprint("c")).unwrap();
        assert_eq!(r.erase(&erasures), 1);
        let pseudonym = erasures.pseudonym_of("c").unwrap();
        let changed = r.take_changed();
        assert_eq!(changed.len(), 1);
        let claim = changed[0].1.as_ref().and_then(|v| v.claim.clone()).unwrap();
        assert_eq!(
            (claim.customer_id.as_str(), claim.partition),
            (pseudonym.as_str(), Some(2))
        );
        let later = route(&mut r, ev("b", None, Some("d"), 11 * H), 0, None);
        assert!(matches!(later, Ok(Route::Forward(e, Some(2)))
            if e.customer_id.as_deref() == Some(pseudonym.as_str())));
        // The pseudonym's own identifications claim the device as before.
        let mut again = identification(12 * H, Some(12 * H), &pseudonym);
        again.anonymous_id = "d".into();
        assert!(r.on_identification(again).is_empty());
        assert_eq!(r.erase(&erasures), 0, "nothing left to erase");
    }
}
