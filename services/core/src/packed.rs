//! Events as journeys keep them. A journey holds each event until the horizon passes it,
//! because a later arrival may change the event's context, and the event's fact is then
//! written again, whole. The rules read only the map's indices, which the journey's entries
//! hold beside. The rest of the event (its ids, free-form fields and attributes) is packed
//! into one shared allocation of postcard bytes, a fraction of the decoded event's size,
//! and read back borrowed when a fact is written.

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::events::{SurveyAnswer, TouchpointEvent};

/// An event's fields that no rule reads, packed; `K` says which fields. Cloning shares
/// them.
pub struct Packed<K: Kind>(Arc<[u8]>, PhantomData<K>);

/// What a kind of packed event holds, borrowed from its bytes.
pub trait Kind {
    type Fields<'a>: Serialize + Deserialize<'a> + fmt::Debug;
    /// What it is, for an error reading stored state.
    const WHAT: &'static str;
}

/// A touchpoint event's packed fields.
pub enum Touchpoint {}

impl Kind for Touchpoint {
    type Fields<'a> = TouchpointFields<'a>;
    const WHAT: &'static str = "a kept touchpoint";
}

/// A survey answer's packed fields.
pub enum Answer {}

impl Kind for Answer {
    type Fields<'a> = AnswerFields<'a>;
    const WHAT: &'static str = "a kept answer";
}

pub type PackedTouchpoint = Packed<Touchpoint>;
pub type PackedAnswer = Packed<Answer>;

/// A packed touchpoint's fields, borrowed from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TouchpointFields<'a> {
    pub event_id: &'a str,
    /// The customer id as sent, when it is not the journey's key (the key is trimmed).
    #[serde(borrow)]
    pub customer_id: Option<&'a str>,
    #[serde(borrow)]
    pub anonymous_id: Option<&'a str>,
    /// The touchpoint's name, when the map does not know it (the map's name otherwise).
    #[serde(borrow)]
    pub off_map: Option<&'a str>,
    #[serde(borrow)]
    pub outcome: Option<&'a str>,
    /// Sorted by key, so that a fact written again lists them in the same order.
    #[serde(borrow)]
    pub attributes: Vec<(&'a str, &'a str)>,
}

impl<'a> TouchpointFields<'a> {
    /// What `ev` keeps beside the map's indices; `on_map`: whether the map knows its
    /// touchpoint.
    pub fn of(ev: &'a TouchpointEvent, on_map: bool) -> Self {
        let customer_id = ev.customer_id.as_deref();
        TouchpointFields {
            event_id: &ev.event_id,
            customer_id: untrimmed(customer_id),
            anonymous_id: ev.anonymous_id.as_deref(),
            off_map: (!on_map).then_some(ev.touchpoint.as_str()),
            outcome: ev.outcome.as_deref(),
            attributes: sorted(&ev.attributes),
        }
    }

    /// The customer id a fact is written under: as sent, for a journey keyed `key`.
    pub fn customer_id<'k>(&self, key: &'k str) -> &'k str
    where
        'a: 'k,
    {
        self.customer_id.unwrap_or(key)
    }

    /// The same with nothing personal left (an erased customer's, kept under a
    /// pseudonym that is the journey's key).
    pub fn stripped(&self) -> Self {
        TouchpointFields {
            customer_id: None,
            anonymous_id: None,
            attributes: Vec::new(),
            ..self.clone()
        }
    }

    pub fn pack(&self) -> PackedTouchpoint {
        Packed::new(self)
    }
}

impl PackedTouchpoint {
    /// The first field alone (facts of stage entries and step attempts read it): no
    /// attributes read.
    pub fn event_id(&self) -> &str {
        match postcard::take_from_bytes::<&str>(&self.0) {
            Ok((id, _)) => id,
            Err(e) => unreachable!("{} is checked when made: {e}", Touchpoint::WHAT),
        }
    }
}

/// A packed survey answer's fields, borrowed from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnswerFields<'a> {
    pub response_id: &'a str,
    /// The customer id as sent, when it is not the journey's key (the key is trimmed).
    #[serde(borrow)]
    pub customer_id: Option<&'a str>,
    #[serde(borrow)]
    pub touchpoint_event_id: Option<&'a str>,
    /// The channel the answer was given on.
    #[serde(borrow)]
    pub channel: Option<&'a str>,
    #[serde(borrow)]
    pub comment: Option<&'a str>,
}

impl<'a> AnswerFields<'a> {
    /// What `a` keeps beside its slot, time, metric and score. (Its touchpoint name and
    /// attributes are in no fact: the rated touchpoint's own fact has them.)
    pub fn of(a: &'a SurveyAnswer) -> Self {
        AnswerFields {
            response_id: &a.response_id,
            customer_id: untrimmed(a.customer_id.as_deref()),
            touchpoint_event_id: a.touchpoint_event_id.as_deref(),
            channel: a.channel.as_deref(),
            comment: a.comment.as_deref(),
        }
    }

    /// The customer id a fact is written under: as sent, for a journey keyed `key`.
    pub fn customer_id<'k>(&self, key: &'k str) -> &'k str
    where
        'a: 'k,
    {
        self.customer_id.unwrap_or(key)
    }

    /// The same with nothing personal left (an erased customer's, kept under a
    /// pseudonym that is the journey's key).
    pub fn stripped(&self) -> Self {
        AnswerFields {
            customer_id: None,
            comment: None,
            ..self.clone()
        }
    }

    pub fn pack(&self) -> PackedAnswer {
        Packed::new(self)
    }
}

/// The id as sent when trimming changes it (journeys are keyed by the trimmed id).
fn untrimmed(id: Option<&str>) -> Option<&str> {
    id.filter(|c| c.trim() != *c)
}

impl<K: Kind> Packed<K> {
    pub fn new(fields: &K::Fields<'_>) -> Self {
        // Writing to a Vec cannot fail: postcard fails only on a full buffer or on types
        // it cannot write (none here).
        match postcard::to_allocvec(fields) {
            Ok(v) => Packed(Arc::from(v), PhantomData),
            Err(e) => unreachable!("postcard writes {} to a Vec: {e}", K::WHAT),
        }
    }

    pub fn fields(&self) -> K::Fields<'_> {
        // The bytes were written by `new`, or checked by `Deserialize` when stored ones
        // were read.
        match postcard::from_bytes(&self.0) {
            Ok(f) => f,
            Err(e) => unreachable!("{} is checked when made: {e}", K::WHAT),
        }
    }

    /// Identifies the packed bytes: facts sharing them are of the same kept event.
    pub fn as_ptr(&self) -> *const u8 {
        self.0.as_ptr()
    }

    /// Bytes held (the allocation's own header aside).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<K: Kind> Clone for Packed<K> {
    fn clone(&self) -> Self {
        Packed(self.0.clone(), PhantomData)
    }
}

impl<K: Kind> PartialEq for Packed<K> {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl<K: Kind> Eq for Packed<K> {}

impl<K: Kind> fmt::Debug for Packed<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.fields().fmt(f)
    }
}

fn sorted(attributes: &HashMap<String, String>) -> Vec<(&str, &str)> {
    let mut v: Vec<(&str, &str)> = attributes
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    v.sort_unstable();
    v
}

/// Stored as the packed bytes, checked when read back.
impl<K: Kind> Serialize for Packed<K> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de, K: Kind> Deserialize<'de> for Packed<K> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes = serde_bytes::ByteBuf::deserialize(d)?.into_vec();
        postcard::from_bytes::<K::Fields<'_>>(&bytes)
            .map_err(|e| serde::de::Error::custom(format!("{}: {e}", K::WHAT)))?;
        Ok(Packed(Arc::from(bytes), PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> TouchpointEvent {
        TouchpointEvent {
            event_id: "e-1".into(),
            customer_id: Some(" c-1".into()),
            anonymous_id: Some("d-1".into()),
            event_time: 1_000,
            touchpoint: "kiosk".into(),
            channel: "web".into(),
            stage: None,
            segment: None,
            outcome: Some("ok".into()),
            attributes: [("b", "2"), ("a", "1")]
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    #[test]
    fn packing_keeps_what_facts_need_and_what_the_map_cannot_give() {
        let ev = event();
        let packed = TouchpointFields::of(&ev, false).pack();
        let f = packed.fields();
        assert_eq!(f.event_id, "e-1");
        assert_eq!(f.customer_id("c-1"), " c-1");
        assert_eq!(f.anonymous_id, Some("d-1"));
        assert_eq!(f.off_map, Some("kiosk"));
        assert_eq!(f.outcome, Some("ok"));
        assert_eq!(f.attributes, vec![("a", "1"), ("b", "2")]);
        assert_eq!(packed.event_id(), "e-1");
    }

    #[test]
    fn a_trimmed_id_and_a_known_touchpoint_are_not_kept_twice() {
        let mut ev = event();
        ev.customer_id = Some("c-1".into());
        let f = TouchpointFields::of(&ev, true);
        assert_eq!(f.customer_id, None);
        assert_eq!(f.customer_id("c-1"), "c-1");
        assert_eq!(f.off_map, None);
    }

    #[test]
    fn stripping_leaves_nothing_personal() {
        let ev = event();
        let s = TouchpointFields::of(&ev, true).stripped().pack();
        let f = s.fields();
        assert_eq!(f.customer_id("erased:x"), "erased:x");
        assert_eq!((f.anonymous_id, f.attributes.len()), (None, 0));
        assert_eq!(f.event_id, "e-1");
    }

    /// Erasure says what is personal once (`erasure::strip_*`): stripping a packed event
    /// keeps what stripping the event itself keeps.
    #[test]
    fn stripping_a_packed_event_equals_packing_the_stripped_event() {
        let mut ev = event();
        let packed = TouchpointFields::of(&ev, false).stripped().pack();
        crate::erasure::strip_touchpoint(&mut ev, "c-1".into());
        assert_eq!(packed, TouchpointFields::of(&ev, false).pack());
        let mut a = SurveyAnswer {
            response_id: "r-1".into(),
            customer_id: Some(" c-1".into()),
            answer_time: 1_000,
            metric: crate::Metric::Nps,
            score: 3,
            touchpoint_event_id: Some("e-1".into()),
            touchpoint: Some("kiosk".into()),
            channel: Some("app".into()),
            comment: Some("slow".into()),
            attributes: [("k".to_string(), "v".to_string())].into(),
        };
        let packed = AnswerFields::of(&a).stripped().pack();
        crate::erasure::strip_answer(&mut a, "c-1".into());
        assert_eq!(packed, AnswerFields::of(&a).pack());
    }

    #[test]
    fn stored_bytes_read_back_equal_and_broken_ones_are_refused() {
        let ev = event();
        let packed = TouchpointFields::of(&ev, false).pack();
        let stored = postcard::to_allocvec(&packed).unwrap();
        let back: PackedTouchpoint = postcard::from_bytes(&stored).unwrap();
        assert_eq!(back, packed);
        let broken = postcard::to_allocvec(&[9u8, 200, 1][..]).unwrap();
        assert!(postcard::from_bytes::<PackedTouchpoint>(&broken).is_err());
    }
}
