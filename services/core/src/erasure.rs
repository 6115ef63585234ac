//! Customers who asked to be forgotten (GDPR article 17).
//!
//! An erasure is recorded as the SHA-256 of the customer id (its fingerprint): enough to
//! recognise the customer's events whenever they are read again, not to read the id back.
//! From then on the customer's events enter the journey under a pseudonym
//! (`erased:` + fingerprint) and stripped of everything personal — the id, the anonymous
//! id, comments and free attributes — so that they still count where they counted before,
//! as anonymous counts, and no fact, case or path of theirs is written again. A replay of
//! the inputs from their beginning therefore gives the same counts as the live run, with
//! nothing of the customer in any table.

use std::collections::HashSet;
use std::fmt::Write as _;

use sha2::{Digest, Sha256};

use crate::events::{SurveyAnswer, TouchpointEvent};

/// What an erased customer's journey is keyed by. Producers may not use it (their ids
/// starting with it are dead-lettered as `reserved_customer_id`).
pub const PSEUDONYM_PREFIX: &str = "erased:";

/// The SHA-256 of a customer id, trimmed as journeys key it, in lower-case hex.
pub fn fingerprint(customer_id: &str) -> String {
    let digest = Sha256::digest(customer_id.trim().as_bytes());
    digest.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Whether a journey key is an erased customer's pseudonym.
pub fn is_pseudonym(key: &str) -> bool {
    key.starts_with(PSEUDONYM_PREFIX)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a customer fingerprint (64 lower-case hex digits, the SHA-256 of the id)")]
pub struct NotAFingerprint(pub String);

/// The fingerprints of every erased customer.
#[derive(Debug, Clone, Default)]
pub struct Erasures {
    fingerprints: HashSet<String, ahash::RandomState>,
}

impl Erasures {
    /// Adds a fingerprint; false when it was there already.
    pub fn insert(&mut self, fingerprint: &str) -> Result<bool, NotAFingerprint> {
        let valid = fingerprint.len() == 64
            && fingerprint
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !valid {
            return Err(NotAFingerprint(fingerprint.chars().take(80).collect()));
        }
        Ok(self.fingerprints.insert(fingerprint.to_string()))
    }

    /// Every erased customer's fingerprint.
    pub fn fingerprints(&self) -> impl Iterator<Item = &str> {
        self.fingerprints.iter().map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.fingerprints.is_empty()
    }

    pub fn len(&self) -> usize {
        self.fingerprints.len()
    }

    /// The pseudonym of `customer_id` when that customer is erased.
    pub fn pseudonym_of(&self, customer_id: &str) -> Option<String> {
        if self.fingerprints.is_empty() || is_pseudonym(customer_id) {
            return None;
        }
        let fp = fingerprint(customer_id);
        self.fingerprints
            .contains(&fp)
            .then(|| format!("{PSEUDONYM_PREFIX}{fp}"))
    }

    /// A touchpoint of an erased customer as the journey may keep it.
    pub fn scrub_touchpoint(&self, ev: &mut TouchpointEvent) {
        if let Some(p) = ev.customer_id.as_deref().and_then(|c| self.pseudonym_of(c)) {
            strip_touchpoint(ev, p);
        }
    }

    /// An answer of an erased customer as the journey may keep it.
    pub fn scrub_answer(&self, ans: &mut SurveyAnswer) {
        if let Some(p) = ans
            .customer_id
            .as_deref()
            .and_then(|c| self.pseudonym_of(c))
        {
            strip_answer(ans, p);
        }
    }
}

/// Keeps what the journey's rules read; drops who it was and what they wrote.
pub fn strip_touchpoint(ev: &mut TouchpointEvent, pseudonym: String) {
    ev.customer_id = Some(pseudonym);
    ev.anonymous_id = None;
    ev.attributes.clear();
}

pub fn strip_answer(ans: &mut SurveyAnswer, pseudonym: String) {
    ans.customer_id = Some(pseudonym);
    ans.comment = None;
    ans.attributes.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_is_the_sha256_of_the_trimmed_id() {
        // echo -n abc | sha256sum
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(fingerprint("abc"), abc);
        assert_eq!(fingerprint(" abc\n"), abc);
    }

    #[test]
    fn only_erased_customers_get_a_pseudonym() {
        let mut e = Erasures::default();
        assert_eq!(e.insert(&fingerprint("c-1")), Ok(true));
        assert_eq!(e.insert(&fingerprint("c-1")), Ok(false));
        assert!(e.insert("C0FFEE").is_err());
        let p = e.pseudonym_of("c-1").unwrap();
        assert_eq!(p, format!("erased:{}", fingerprint("c-1")));
        assert_eq!(e.pseudonym_of("c-2"), None);
        assert_eq!(e.pseudonym_of(&p), None, "a pseudonym is not erased again");
    }

    #[test]
    fn a_scrubbed_answer_keeps_its_score_and_loses_its_words() {
        let mut e = Erasures::default();
        e.insert(&fingerprint("c-1")).unwrap();
        let mut a = SurveyAnswer {
            response_id: "r".into(),
            customer_id: Some("c-1".into()),
            answer_time: 1,
            metric: crate::Metric::Nps,
            score: 3,
            touchpoint_event_id: Some("t".into()),
            touchpoint: None,
            channel: Some("app".into()),
            comment: Some("call me on 555".into()),
            attributes: [("phone".to_string(), "555".to_string())].into(),
        };
        e.scrub_answer(&mut a);
        assert_eq!(a.customer_id.as_deref(), e.pseudonym_of("c-1").as_deref());
        assert_eq!((a.comment, a.attributes.len(), a.score), (None, 0, 3));
        assert_eq!(a.touchpoint_event_id.as_deref(), Some("t"));
    }
}
