//! Fencing of a partition's owners by claims (README § Scaling out).
//!
//! Kafka gives a partition to one member of the group at a time, but a member paused past
//! its session (a long GC, a frozen VM, SIGSTOP) does not know that it lost the partition
//! until it polls again, and may commit a batch meanwhile. Markers carry the claim of the
//! owner that wrote them, and a claim carries a *chain*: the claims whose batches count,
//! each over a range of sequence numbers. An owner claims a partition after reading where
//! it resumes, with the chain of the highest claim it read cut at its own first batch and
//! a link of its own from there on. A batch counts when the highest claim's chain covers
//! its claim and sequence number.
//!
//! An owner first writes its claim's id alone (an *intent*, with no chain), then reads, then
//! writes the claim whole. The intent makes the current owner stop confirming its batches
//! to readers of the aggregates topic before the resume point is read, so that a batch it
//! confirmed is always before that point: under every later claim, a confirmed batch counts
//! (see [`Claim::next`]).
//!
//! Each chain is the history its owner's state was built from (one owner's batches after
//! another's, each resumed from the last), so whichever claim is highest, what counts is a
//! history: nothing twice, nothing skipped. A zombie's later batches fall outside the
//! newer chain, and so does a claim written late by an owner that read an older chain,
//! unless it is the highest, in which case the owners it overtook are the zombies.

/// One claim's part of a chain: its batches with `from <= batch_seq < until` count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Link {
    pub claim: u64,
    pub from: u64,
    pub until: u64,
}

impl Link {
    /// Whether batch `seq` lies in this link's range.
    pub fn covers(&self, seq: u64) -> bool {
        self.from <= seq && seq < self.until
    }
}

/// A claim and its chain (its own link last).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claim {
    pub id: u64,
    pub chain: Vec<Link>,
}

/// The claim of data committed before claims existed (its chain covers everything).
pub const BEFORE_CLAIMS: u64 = 0;

impl Claim {
    /// Whether a batch committed under `claim` with sequence number `seq` counts.
    pub fn counts(&self, claim: u64, seq: u64) -> bool {
        self.chain.iter().any(|l| l.claim == claim && l.covers(seq))
    }

    /// Whether a compaction by `claim` that folded every batch below `live_from` counts:
    /// the claim is in the chain and its link reaches that far.
    pub fn counts_compaction(&self, claim: u64, live_from: u64) -> bool {
        self.chain
            .iter()
            .any(|l| l.claim == claim && live_from <= l.until)
    }

    /// The id of a claim after every claim seen (`highest`: the highest id of any claim
    /// or intent, `None`: none yet). `random` tells two owners claiming at once apart.
    pub fn id_after(highest: Option<u64>, random: u32) -> u64 {
        let turn = highest.map_or(0, |id| id >> 32) + 1;
        (turn << 32) | u64::from(random)
    }

    /// Claim `id` (from [`Claim::id_after`], written as an intent before anything was
    /// read) for an owner that read `read` as the highest whole claim (`None`: none yet)
    /// and resumes at `next_seq`, whose folded batches end at `live_from`.
    pub fn next(read: Option<&Claim>, id: u64, next_seq: u64, live_from: u64) -> Claim {
        let mut chain: Vec<Link> = read
            .map(|c| c.chain.as_slice())
            .unwrap_or_default()
            .iter()
            .filter(|l| l.from < next_seq)
            .map(|l| Link {
                until: l.until.min(next_seq),
                ..*l
            })
            // Links wholly below the folded batches only matter to the compaction that
            // folded them, whose own link reaches live_from.
            .filter(|l| l.until >= live_from)
            .collect();
        chain.push(Link {
            claim: id,
            from: next_seq,
            until: u64::MAX,
        });
        Claim { id, chain }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// A marker of the model: who wrote it, and which marker its writer's state was built
    /// on (the one before it in the writer's history).
    #[derive(Debug, Clone, Copy, PartialEq)]
    struct Marker {
        id: usize,
        seq: u64,
        claim: u64,
        parent: Option<usize>,
    }

    /// A compaction of the model: its owner's claim, the batches it folded (below
    /// `live_from`) and the last of them, which the batches after it must continue.
    #[derive(Debug, Clone, Copy)]
    struct Compaction {
        claim: u64,
        live_from: u64,
        last: Option<usize>,
    }

    /// An owner of the model. Resuming takes four steps that others may interleave, as
    /// in the adapter: the intent (the claim's id alone), the highest whole claim and the
    /// latest compaction under it, the last marker under that claim, the claim whole; then
    /// it commits, confirms and compacts.
    #[derive(Debug, Clone, Default)]
    struct Owner {
        intent: Option<u64>,
        read_generation: Option<(u64, Option<Claim>, u64)>,
        read: Option<(u64, Option<Claim>, u64, Option<Marker>)>,
        claim: Option<Claim>,
        last: Option<Marker>,
    }

    #[derive(Debug, Default)]
    struct Store {
        /// Whole claims.
        claims: Vec<Claim>,
        intents: Vec<u64>,
        markers: Vec<Marker>,
        compactions: Vec<Compaction>,
        /// Markers their owners confirmed to readers of the aggregates topic.
        confirmed: Vec<Marker>,
    }

    impl Store {
        fn top(&self) -> Option<&Claim> {
            self.claims.iter().max_by_key(|c| c.id)
        }
        /// The highest id of any claim or intent.
        fn highest(&self) -> Option<u64> {
            self.intents.iter().copied().max()
        }
        fn generation(&self, under: Option<&Claim>) -> Option<Compaction> {
            self.compactions
                .iter()
                .filter(|g| under.is_some_and(|c| c.counts_compaction(g.claim, g.live_from)))
                .max_by_key(|g| g.live_from)
                .copied()
        }
        fn counting(&self, under: Option<&Claim>, from: u64) -> Vec<Marker> {
            let mut v: Vec<Marker> = self
                .markers
                .iter()
                .filter(|m| m.seq >= from && under.is_some_and(|c| c.counts(m.claim, m.seq)))
                .copied()
                .collect();
            v.sort_by_key(|m| m.seq);
            v
        }
    }

    #[derive(Debug, Clone)]
    enum Step {
        /// Owner i writes the id of its next claim (a new assignment).
        Intent(usize, u32),
        /// Owner i reads the highest whole claim and the generation under it.
        ReadGeneration(usize),
        /// Owner i reads the last marker that counts under the claim it read.
        ReadLast(usize),
        /// Owner i writes the claim whole, as computed from what it read.
        Claim(usize),
        /// Owner i commits its next batch (if it has claimed).
        Commit(usize),
        /// Owner i confirms its last batch, unless a higher claim or intent exists.
        Confirm(usize),
        /// Owner i folds its history up to its last batch (if it has claimed).
        Compact(usize),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0..3usize, any::<u32>()).prop_map(|(i, r)| Step::Intent(i, r)),
            (0..3usize).prop_map(Step::ReadGeneration),
            (0..3usize).prop_map(Step::ReadLast),
            (0..3usize).prop_map(Step::Claim),
            (0..3usize).prop_map(Step::Commit),
            (0..3usize).prop_map(Step::Commit),
            (0..3usize).prop_map(Step::Confirm),
            (0..3usize).prop_map(Step::Compact),
        ]
    }

    fn apply(store: &mut Store, owners: &mut [Owner], s: Step) {
        match s {
            Step::Intent(i, random) => {
                let id = Claim::id_after(store.highest(), random);
                if store.intents.contains(&id) {
                    return; // the model's random collided: not a case to test
                }
                store.intents.push(id);
                owners[i] = Owner {
                    intent: Some(id),
                    ..Owner::default()
                };
            }
            Step::ReadGeneration(i) => {
                let Some(id) = owners[i].intent.take() else {
                    return;
                };
                let top = store.top().cloned();
                let live_from = store.generation(top.as_ref()).map_or(0, |g| g.live_from);
                owners[i].read_generation = Some((id, top, live_from));
            }
            Step::ReadLast(i) => {
                let Some((id, top, live_from)) = owners[i].read_generation.take() else {
                    return;
                };
                let last = store.counting(top.as_ref(), 0).last().copied();
                owners[i].read = Some((id, top, live_from, last));
            }
            Step::Claim(i) => {
                let Some((id, top, live_from, last)) = owners[i].read.take() else {
                    return;
                };
                let next_seq = last.map_or(0, |m| m.seq + 1);
                let claim = Claim::next(top.as_ref(), id, next_seq, live_from.min(next_seq));
                store.claims.push(claim.clone());
                owners[i].claim = Some(claim);
                owners[i].last = last;
            }
            Step::Commit(i) => {
                let Some(claim) = owners[i].claim.as_ref() else {
                    return;
                };
                let m = Marker {
                    id: store.markers.len(),
                    seq: owners[i].last.map_or(0, |m| m.seq + 1),
                    claim: claim.id,
                    parent: owners[i].last.map(|m| m.id),
                };
                store.markers.push(m);
                owners[i].last = Some(m);
            }
            Step::Confirm(i) => {
                let (Some(claim), Some(last)) = (owners[i].claim.as_ref(), owners[i].last) else {
                    return;
                };
                // Its own batch, or the last one it resumed after (said again on resuming).
                if store.highest() <= Some(claim.id) {
                    store.confirmed.push(last);
                }
            }
            Step::Compact(i) => {
                let (Some(claim), Some(last)) = (owners[i].claim.as_ref(), owners[i].last) else {
                    return;
                };
                store.compactions.push(Compaction {
                    claim: claim.id,
                    live_from: last.seq + 1,
                    last: Some(last.id),
                });
            }
        }
    }

    proptest! {
        /// Whatever the interleaving of three owners resuming in steps, claiming late,
        /// committing as zombies and compacting, what counts under the highest claim is one
        /// history: the latest compaction that counts, then batches numbered on from its
        /// live_from, each built on the one before, the first on the compaction's last.
        /// And every batch an owner confirmed is in that history.
        #[test]
        fn what_counts_is_always_one_history(steps in proptest::collection::vec(step(), 1..150)) {
            let mut store = Store::default();
            let mut owners = vec![Owner::default(); 3];
            for s in steps {
                apply(&mut store, &mut owners, s);
                let top = store.top();
                let generation = store.generation(top);
                let from = generation.map_or(0, |g| g.live_from);
                let counting = store.counting(top, from);
                let mut parent = generation.and_then(|g| g.last);
                for (n, m) in counting.iter().enumerate() {
                    prop_assert_eq!(m.seq, from + n as u64, "{:?}", counting);
                    prop_assert_eq!(m.parent, parent, "{:?}", counting);
                    parent = Some(m.id);
                }
                let mut history = std::collections::BTreeSet::new();
                while let Some(id) = parent {
                    history.insert(id);
                    parent = store.markers[id].parent;
                }
                for c in &store.confirmed {
                    prop_assert!(history.contains(&c.id), "confirmed {:?} does not count: {:?}", c, counting);
                }
            }
        }
    }

    #[test]
    fn a_zombies_batch_after_the_next_claim_does_not_count() {
        let first = Claim::next(None, Claim::id_after(None, 7), 0, 0);
        let second = Claim::next(Some(&first), Claim::id_after(Some(first.id), 3), 5, 0);
        assert!(second.id > first.id);
        assert!(second.counts(first.id, 4));
        assert!(!second.counts(first.id, 5), "the zombie's sixth batch");
        assert!(second.counts(second.id, 5));
        // A claim written late, from an older read, is lower and changes nothing.
        let late = Claim::next(Some(&first), Claim::id_after(Some(first.id), 1), 3, 0);
        assert!(late.id < second.id);
        let top: BTreeMap<u64, &Claim> = [(second.id, &second), (late.id, &late)].into();
        assert_eq!(top.last_key_value().map(|(k, _)| *k), Some(second.id));
    }

    #[test]
    fn links_below_the_folded_batches_are_dropped_and_compactions_need_their_link() {
        let a = Claim::next(None, Claim::id_after(None, 1), 0, 0);
        let b = Claim::next(Some(&a), Claim::id_after(Some(a.id), 2), 10, 0);
        assert!(b.counts_compaction(a.id, 10));
        assert!(
            !b.counts_compaction(a.id, 11),
            "a folded a batch that no longer counts"
        );
        let c = Claim::next(Some(&b), Claim::id_after(Some(b.id), 3), 30, 20);
        assert_eq!(
            c.chain.iter().map(|l| l.claim).collect::<Vec<_>>(),
            vec![b.id, c.id],
            "a's link ends at 10, below the batches folded up to 20"
        );
        assert!(c.counts_compaction(b.id, 20));
    }
}
