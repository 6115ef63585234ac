//! The journeys a partition processor holds, by customer. Most customers are idle most of
//! the time: the horizon has passed all their events and only the journey's floor is left,
//! a few dozen bytes of facts about the past. Such a journey is held *packed* (postcard
//! bytes, about a tenth of the decoded journey with its fixed-size vectors and options) and
//! unpacked when an event or a deadline needs it; a journey with events is held *live*,
//! shared with the batches that persist it.
//!
//! An idle journey whose state is committed may also be *let go*: only its customer's
//! [`store_hash`] and the earliest deadline it waits for stay, about 20 bytes, and the
//! journey is read back from the store (ClickHouse) before an event or a deadline needs it.

use std::hash::Hasher;
use std::sync::Arc;

use crate::journey::{Floor, Journey};

/// Keyed by customer id, shared (not copied) with the deadlines and the dirty list.
pub struct Held {
    by_customer: hashbrown::HashMap<Arc<str>, Slot, ahash::RandomState>,
    /// Journeys let go, by [`store_hash`] of their customer: the earliest deadline each
    /// waits for (`i64::MAX`: none). A hash stands for one customer only: a journey whose
    /// hash is taken already stays held.
    stored: hashbrown::HashMap<u64, i64, ahash::RandomState>,
    /// At most the earliest deadline in `stored` (a journey read back does not raise it
    /// until the next [`Self::stored_due_by`]).
    earliest_stored: i64,
}

/// The hash that names a customer's journey in the store: SipHash-2-4 with both keys 0 of
/// the journey's key, which is ClickHouse's `sipHash64(customer_id)`, so that the store can
/// find the journeys whose deadlines come.
pub fn store_hash(customer: &str) -> u64 {
    let mut h = siphasher::sip::SipHasher24::new_with_keys(0, 0);
    h.write(customer.as_bytes());
    h.finish()
}

/// A live journey with nothing to persist and no event within `busy`.
fn is_quiet(j: &Journey, (from, to): (i64, i64)) -> bool {
    !j.dirty && !j.is_idle() && !j.has_event_within(from, to)
}

enum Slot {
    Live(Arc<Journey>),
    Idle(PackedFloor),
}

impl Default for Held {
    fn default() -> Self {
        Held {
            by_customer: Default::default(),
            stored: Default::default(),
            earliest_stored: i64::MAX,
        }
    }
}

impl Held {
    /// Journeys held here (not those let go).
    pub fn len(&self) -> usize {
        self.by_customer.len()
    }

    /// Journeys let go to the store.
    pub fn stored_len(&self) -> usize {
        self.stored.len()
    }

    /// Whether the customer's journey was let go (and must be read back before it changes).
    pub fn is_stored(&self, customer: &str) -> bool {
        !self.stored.is_empty()
            && !self.by_customer.contains_key(customer)
            && self.stored.contains_key(&store_hash(customer))
    }

    /// Whether a journey let go has this [`store_hash`].
    pub fn is_stored_hash(&self, hash: u64) -> bool {
        self.stored.contains_key(&hash)
    }

    /// At most the earliest deadline a journey let go waits for.
    pub fn earliest_stored(&self) -> i64 {
        self.earliest_stored
    }

    /// The hashes of the journeys let go that wait for a deadline at or before `by`.
    pub fn stored_due_by(&mut self, by: i64) -> Vec<u64> {
        let mut due = Vec::new();
        let mut earliest = i64::MAX;
        for (hash, deadline) in &self.stored {
            if *deadline <= by {
                due.push(*hash);
            } else {
                earliest = earliest.min(*deadline);
            }
        }
        // Those due are read back next; what stays waits for the rest.
        self.earliest_stored = earliest;
        due
    }

    /// Lets the customer's journey go if it is packed (idle, nothing to persist), or live,
    /// unchanged since its last batch and without events within `busy` (see
    /// [`Self::quiet`]); and if no other journey let go has its hash. Its deadlines before
    /// `watermark` are passed already: it is read back for the earliest of the others (of a
    /// live journey, what `open_deadline` finds).
    pub fn let_go(
        &mut self,
        customer: &str,
        watermark: Option<i64>,
        busy: Option<(i64, i64)>,
        open_deadline: impl FnOnce(&Journey) -> Option<i64>,
    ) -> bool {
        let due = match self.by_customer.get(customer) {
            Some(Slot::Idle(packed)) => {
                let floor = packed.unpack().floor;
                floor
                    .pending
                    .iter()
                    .map(|p| p.deadline)
                    .chain(floor.pending_steps.iter().map(|s| s.deadline))
                    .filter(|d| watermark.is_none_or(|w| *d >= w))
                    .min()
            }
            Some(Slot::Live(j)) if busy.is_some_and(|b| is_quiet(j, b)) => open_deadline(j),
            _ => return false,
        };
        let hash = store_hash(customer);
        if self.stored.contains_key(&hash) {
            return false;
        }
        let due = due.unwrap_or(i64::MAX);
        self.by_customer.remove(customer);
        self.stored.insert(hash, due);
        self.earliest_stored = self.earliest_stored.min(due);
        true
    }

    /// Customers whose journeys are live, unchanged since their last batch, and have no
    /// event within `busy` (around the watermark, where the inputs are being read):
    /// [`Self::let_go`] takes them once their batch is committed.
    pub fn quiet(&self, busy: (i64, i64)) -> impl Iterator<Item = &Arc<str>> {
        self.by_customer
            .iter()
            .filter_map(move |(c, slot)| match slot {
                Slot::Live(j) if is_quiet(j, busy) => Some(c),
                _ => None,
            })
    }

    /// Gives memory back once most journeys were let go.
    pub fn shrink(&mut self) {
        if self.by_customer.len() < self.by_customer.capacity() / 4 {
            self.by_customer.shrink_to_fit();
        }
    }

    /// Whether a journey read back from the store is the one let go under its customer's
    /// hash (not one held here, nor one the store still has from before): if so it is no
    /// longer counted as let go, and is to be held again.
    pub fn take_stored(&mut self, customer: &str) -> bool {
        if self.by_customer.contains_key(customer) {
            return false;
        }
        self.stored.remove(&store_hash(customer)).is_some()
    }

    /// Forgets that the journeys of `hashes` were let go (the store had nothing for them).
    pub fn drop_stored(&mut self, hashes: &[u64]) -> usize {
        hashes
            .iter()
            .filter(|h| self.stored.remove(*h).is_some())
            .count()
    }

    pub fn contains_key(&self, customer: &str) -> bool {
        self.by_customer.contains_key(customer)
    }

    pub fn keys(&self) -> impl Iterator<Item = &Arc<str>> {
        self.by_customer.keys()
    }

    /// The customer's journey, unpacked if idle (then not kept unpacked).
    pub fn get(&self, customer: &str) -> Option<Arc<Journey>> {
        self.by_customer.get(customer).map(Slot::journey)
    }

    /// As [`Self::get`], with the key it is held under (the one its facts carry).
    pub fn get_with_key(&self, customer: &str) -> Option<(&Arc<str>, Arc<Journey>)> {
        self.by_customer
            .get_key_value(customer)
            .map(|(k, s)| (k, s.journey()))
    }

    pub fn remove(&mut self, customer: &str) -> Option<Arc<Journey>> {
        self.by_customer.remove(customer).map(|s| s.into_live())
    }

    /// Holds `journey`, packed if it is idle and has nothing to persist.
    pub fn insert(&mut self, customer: Arc<str>, journey: Arc<Journey>) {
        self.by_customer.insert(customer, Slot::of(journey));
    }

    /// The customer's journey to change, unpacked (or made, empty) and held live; with the
    /// key it is held under.
    pub fn live(&mut self, customer: &str) -> (Arc<str>, &mut Arc<Journey>) {
        let entry = match self.by_customer.entry_ref(customer) {
            hashbrown::hash_map::EntryRef::Occupied(o) => o,
            hashbrown::hash_map::EntryRef::Vacant(v) => {
                v.insert_entry_with_key(Arc::from(customer), Slot::Live(Arc::default()))
            }
        };
        let key = entry.key().clone();
        (key, entry.into_mut().wake())
    }

    /// The journey of a customer in the dirty list (held live since it changed).
    pub fn live_if_held(&mut self, customer: &str) -> Option<&mut Arc<Journey>> {
        self.by_customer.get_mut(customer).map(Slot::wake)
    }

    /// Packs the customer's journey if it is idle and has nothing to persist.
    pub fn settle(&mut self, customer: &str) {
        if let Some(slot) = self.by_customer.get_mut(customer) {
            slot.settle();
        }
    }

    /// Runs `prune` on every journey that may have something to fold before `cut`
    /// (unpacking the idle ones whose floor waits for a deadline before it), and packs
    /// the journeys left idle with nothing to persist.
    pub fn sweep(&mut self, cut: i64, mut prune: impl FnMut(&Arc<str>, &mut Arc<Journey>)) {
        for (customer, slot) in &mut self.by_customer {
            let may_fold = match slot {
                Slot::Live(_) => true,
                Slot::Idle(p) => p.due_before(cut),
            };
            if may_fold {
                prune(customer, slot.wake());
            }
            slot.settle();
        }
    }
}

impl Slot {
    fn of(journey: Arc<Journey>) -> Self {
        let mut slot = Slot::Live(journey);
        slot.settle();
        slot
    }

    fn journey(&self) -> Arc<Journey> {
        match self {
            Slot::Live(j) => j.clone(),
            Slot::Idle(p) => Arc::new(p.unpack()),
        }
    }

    fn into_live(self) -> Arc<Journey> {
        match self {
            Slot::Live(j) => j,
            Slot::Idle(p) => Arc::new(p.unpack()),
        }
    }

    fn wake(&mut self) -> &mut Arc<Journey> {
        if let Slot::Idle(p) = self {
            *self = Slot::Live(Arc::new(p.unpack()));
        }
        match self {
            Slot::Live(j) => j,
            Slot::Idle(_) => unreachable!("woken above"),
        }
    }

    fn settle(&mut self) {
        if let Slot::Live(j) = self {
            if j.is_idle() && !j.dirty {
                *self = Slot::Idle(PackedFloor::of(&j.floor));
            }
        }
    }
}

/// An idle journey's floor as postcard bytes, after the earliest deadline of what it keeps
/// pending (so that a sweep reads one number, not the floor).
struct PackedFloor(Box<[u8]>);

impl PackedFloor {
    fn of(floor: &Floor) -> Self {
        let due = floor
            .pending
            .iter()
            .map(|p| p.deadline)
            .chain(floor.pending_steps.iter().map(|s| s.deadline))
            .min()
            .unwrap_or(i64::MAX);
        // Writing to a Vec cannot fail: postcard fails only on a full buffer or on types it
        // cannot write (none in a floor).
        match postcard::to_allocvec(&(due, floor)) {
            Ok(v) => PackedFloor(v.into_boxed_slice()),
            Err(e) => unreachable!("postcard writes a floor to a Vec: {e}"),
        }
    }

    /// Whether a pending entry or step attempt has its deadline before `cut` (the floor
    /// then folds it).
    fn due_before(&self, cut: i64) -> bool {
        postcard::take_from_bytes::<i64>(&self.0).is_ok_and(|(due, _)| due < cut)
    }

    fn unpack(&self) -> Journey {
        // The bytes were written by `of`, from a floor of this build.
        match postcard::from_bytes::<(i64, Floor)>(&self.0) {
            Ok((_, floor)) => Journey {
                floor,
                ..Journey::default()
            },
            Err(e) => unreachable!("a packed floor reads back: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journey::{Context, EventId, FoldedEntry, Origin, Progress};

    fn floor(deadline: i64) -> Floor {
        let context = Context {
            stage: 1,
            touchpoint: 2,
            channel: 0,
            segment: 1,
        };
        Floor {
            progress: Progress {
                furthest: Some(1),
                open_until: 9_000,
                seq: 2,
            },
            segment: Some(1),
            last: Some(((1_000, 7), context)),
            pending: Some(Box::new(FoldedEntry {
                origin: Origin {
                    id: 7,
                    event_id: EventId::Owned("e-7".into()),
                    time: 1_000,
                    source_offset: 4,
                },
                context,
                deadline,
                journey_seq: 2,
            })),
            pending_steps: Vec::new(),
        }
    }

    fn idle(deadline: i64) -> Arc<Journey> {
        Arc::new(Journey {
            floor: floor(deadline),
            ..Journey::default()
        })
    }

    #[test]
    fn an_idle_journey_is_packed_and_reads_back_the_same() {
        let mut held = Held::default();
        held.insert("c".into(), idle(5_000));
        assert!(matches!(held.by_customer.get("c"), Some(Slot::Idle(_))));
        assert_eq!(held.get("c"), Some(idle(5_000)));
        assert_eq!(held.remove("c"), Some(idle(5_000)));
        assert_eq!(held.len(), 0);
    }

    #[test]
    fn a_journey_with_events_or_changes_to_persist_stays_live() {
        let mut held = Held::default();
        let mut dirty = Journey::clone(&idle(5_000));
        dirty.dirty = true;
        held.insert("c".into(), Arc::new(dirty));
        assert!(matches!(held.by_customer.get("c"), Some(Slot::Live(_))));
        // Persisted: it settles.
        if let Some(j) = held.live_if_held("c") {
            Arc::make_mut(j).dirty = false;
        }
        held.settle("c");
        assert!(matches!(held.by_customer.get("c"), Some(Slot::Idle(_))));
        // Changed again: live until persisted.
        let (key, j) = held.live("c");
        assert_eq!(&*key, "c");
        Arc::make_mut(j).dirty = true;
        held.settle("c");
        assert!(matches!(held.by_customer.get("c"), Some(Slot::Live(_))));
    }

    #[test]
    fn a_sweep_unpacks_only_floors_with_a_deadline_before_the_cut() {
        let mut held = Held::default();
        held.insert("early".into(), idle(5_000));
        held.insert("late".into(), idle(50_000));
        let mut seen = Vec::new();
        held.sweep(10_000, |c, _| seen.push(c.to_string()));
        assert_eq!(seen, vec!["early".to_string()]);
        // Nothing changed it: packed again.
        assert!(matches!(held.by_customer.get("early"), Some(Slot::Idle(_))));
    }
}
