//! `/readyz` of the journey service: ready while both the brokers and ClickHouse answer.
//! Each side is judged by what last happened to it — librdkafka's broker states in every
//! statistics report (every 250 ms), and for ClickHouse the last commit, resume or, when
//! idle, a ping — so one side's recovery never hides the other's outage.

use std::sync::atomic::{AtomicBool, Ordering};

use cxstream_http::Health;

pub struct Readiness {
    health: Health,
    brokers: AtomicBool,
    clickhouse: AtomicBool,
}

impl Readiness {
    pub fn new(health: Health) -> Self {
        Readiness {
            health,
            brokers: AtomicBool::new(true),
            clickhouse: AtomicBool::new(true),
        }
    }

    pub fn brokers(&self, up: bool) {
        self.brokers.store(up, Ordering::Relaxed);
        self.publish();
    }

    pub fn clickhouse(&self, up: bool) {
        self.clickhouse.store(up, Ordering::Relaxed);
        self.publish();
    }

    /// The service stops: not ready, whatever the servers say.
    pub fn stopping(&self) {
        self.health.set_ready(false);
    }

    fn publish(&self) {
        self.health.set_ready(
            self.brokers.load(Ordering::Relaxed) && self.clickhouse.load(Ordering::Relaxed),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_while_both_sides_answer() {
        let health = Health::default();
        let r = Readiness::new(health.clone());
        r.clickhouse(true);
        assert!(health.is_ready());
        r.brokers(false);
        r.clickhouse(true);
        assert!(!health.is_ready(), "a commit does not hide a broker outage");
        r.brokers(true);
        r.clickhouse(false);
        assert!(!health.is_ready());
        r.clickhouse(true);
        assert!(health.is_ready());
        r.stopping();
        assert!(!health.is_ready());
    }
}
