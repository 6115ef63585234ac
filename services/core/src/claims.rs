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
//! Each chain is the history its owner's state was built from (one owner's batches after
//! another's, each resumed from the last), so whichever claim is highest, what counts is a
//! history: nothing twice, nothing skipped. A zombie's later batches fall outside the
//! newer chain, and so does a claim written late by an owner that read an older chain,
//! unless it is the highest, in which case the owners it overtook are the zombies.

/// One claim's part of a chain: its batches with `from <= batch_seq < until` count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    pub claim: u64,
    pub from: u64,
    pub until: u64,
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
        self.chain
            .iter()
            .any(|l| l.claim == claim && l.from <= seq && seq < l.until)
    }

    /// Whether a compaction by `claim` that folded every batch below `live_from` counts:
    /// the claim is in the chain and its link reaches that far.
    pub fn counts_compaction(&self, claim: u64, live_from: u64) -> bool {
        self.chain
            .iter()
            .any(|l| l.claim == claim && live_from <= l.until)
    }

    /// The claim that follows this one (the highest read, `None`: none yet) for an owner
    /// resuming at `next_seq`, whose folded batches end at `live_from`. `random` tells two
    /// owners claiming at once apart.
    pub fn next(top: Option<&Claim>, next_seq: u64, live_from: u64, random: u32) -> Claim {
        let turn = top.map_or(0, |c| c.id >> 32) + 1;
        let id = (turn << 32) | u64::from(random);
        let mut chain: Vec<Link> = top
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

    /// An owner of the model. Resuming takes three steps that others may interleave, as
    /// in the adapter: the highest claim and the latest compaction under it, then the last
    /// marker under that claim, then the claim written; then it commits and compacts.
    #[derive(Debug, Clone, Default)]
    struct Owner {
        read_generation: Option<(Option<Claim>, u64)>,
        read: Option<(Option<Claim>, u64, Option<Marker>)>,
        claim: Option<Claim>,
        last: Option<Marker>,
    }

    #[derive(Debug, Default)]
    struct Store {
        claims: Vec<Claim>,
        markers: Vec<Marker>,
        compactions: Vec<Compaction>,
    }

    impl Store {
        fn top(&self) -> Option<&Claim> {
            self.claims.iter().max_by_key(|c| c.id)
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
        /// Owner i reads the highest claim and the generation under it (a new assignment).
        ReadGeneration(usize),
        /// Owner i reads the last marker that counts under the claim it read.
        ReadLast(usize),
        /// Owner i writes the claim it computed from what it read.
        Claim(usize, u32),
        /// Owner i commits its next batch (if it has claimed).
        Commit(usize),
        /// Owner i folds its history up to its last batch (if it has claimed).
        Compact(usize),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0..3usize).prop_map(Step::ReadGeneration),
            (0..3usize).prop_map(Step::ReadLast),
            (0..3usize, any::<u32>()).prop_map(|(i, r)| Step::Claim(i, r)),
            (0..3usize).prop_map(Step::Commit),
            (0..3usize).prop_map(Step::Commit),
            (0..3usize).prop_map(Step::Compact),
        ]
    }

    fn apply(store: &mut Store, owners: &mut [Owner], s: Step) {
        match s {
            Step::ReadGeneration(i) => {
                let top = store.top().cloned();
                let live_from = store.generation(top.as_ref()).map_or(0, |g| g.live_from);
                owners[i] = Owner {
                    read_generation: Some((top, live_from)),
                    ..Owner::default()
                };
            }
            Step::ReadLast(i) => {
                let Some((top, live_from)) = owners[i].read_generation.take() else {
                    return;
                };
                let last = store.counting(top.as_ref(), 0).last().copied();
                owners[i].read = Some((top, live_from, last));
            }
            Step::Claim(i, random) => {
                let Some((top, live_from, last)) = owners[i].read.take() else {
                    return;
                };
                let next_seq = last.map_or(0, |m| m.seq + 1);
                let claim = Claim::next(top.as_ref(), next_seq, live_from.min(next_seq), random);
                if store.claims.iter().any(|c| c.id == claim.id) {
                    return; // the model's random collided: not a case to test
                }
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
        #[test]
        fn what_counts_is_always_one_history(steps in proptest::collection::vec(step(), 1..120)) {
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
            }
        }
    }

    #[test]
    fn a_zombies_batch_after_the_next_claim_does_not_count() {
        let first = Claim::next(None, 0, 0, 7);
        let second = Claim::next(Some(&first), 5, 0, 3);
        assert!(second.id > first.id);
        assert!(second.counts(first.id, 4));
        assert!(!second.counts(first.id, 5), "the zombie's sixth batch");
        assert!(second.counts(second.id, 5));
        // A claim written late, from an older read, is lower and changes nothing.
        let late = Claim::next(Some(&first), 3, 0, 1);
        assert!(late.id < second.id);
        let top: BTreeMap<u64, &Claim> = [(second.id, &second), (late.id, &late)].into();
        assert_eq!(top.last_key_value().map(|(k, _)| *k), Some(second.id));
    }

    #[test]
    fn links_below_the_folded_batches_are_dropped_and_compactions_need_their_link() {
        let a = Claim::next(None, 0, 0, 1);
        let b = Claim::next(Some(&a), 10, 0, 2);
        assert!(b.counts_compaction(a.id, 10));
        assert!(
            !b.counts_compaction(a.id, 11),
            "a folded a batch that no longer counts"
        );
        let c = Claim::next(Some(&b), 30, 20, 3);
        assert_eq!(
            c.chain.iter().map(|l| l.claim).collect::<Vec<_>>(),
            vec![b.id, c.id],
            "a's link ends at 10, below the batches folded up to 20"
        );
        assert!(c.counts_compaction(b.id, 20));
    }
}
