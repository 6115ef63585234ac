//! Several alerters sharing the journeys (README § Alerts → Several alerters). Each
//! instance says it is alive on the members topic every `heartbeat_ms` and reads what the
//! others say; a journey's alerts are written by one of the instances heard from within
//! `timeout_ms` (itself included): the one with the highest hash of (instance, journey) —
//! rendezvous hashing, so an instance that comes or goes moves only its own share.
//!
//! Liveness is judged by when this instance *read* a heartbeat, not by the sender's clock,
//! so clocks that disagree between hosts do not matter. This does not go through the
//! broker's consumer-group coordinator: Tansu 0.6 keeps a group formed around a member
//! that died, so its partitions would never move to the survivors.

use std::collections::HashMap;
use std::hash::Hasher as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::{AlerterPeers, Config};
use crate::from_beginning::each_ready;
use crate::produce::Producer;

const ALIVE: &[u8] = b"alive";
const LEAVING: &[u8] = b"leaving";

pub struct Members {
    me: String,
    topic: String,
    timeout: Duration,
    consumer: BaseConsumer,
    /// When each other instance was last heard from.
    heard: HashMap<String, Instant>,
    joined: Instant,
    /// Says this instance is alive every `heartbeat_ms` on a thread of its own, so that a
    /// main loop waiting on ClickHouse or Alertmanager does not pass for a dead instance.
    heartbeat: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
}

impl Members {
    /// Starts listening at the members topic's end and saying this instance is alive. Join
    /// once caught up with the aggregates: the others hand over this instance's share
    /// within a timeout of hearing it.
    pub fn join(cfg: &Config, me: String) -> Result<Self> {
        let AlerterPeers {
            heartbeat_ms,
            timeout_ms,
            ..
        } = cfg.alerter.peers;
        let topic = cfg.topics.alerter_members.clone();
        let consumer: BaseConsumer = cfg
            .kafka
            .consumer_config(&format!("cxstream-alerter-members-{me}"))
            .set("enable.partition.eof", "false")
            .set("fetch.wait.max.ms", "100")
            .create()
            .context("creating the reader of the alerter members topic")?;
        let metadata = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(30))
            .with_context(|| format!("reading the metadata of `{topic}`"))?;
        if !metadata
            .topics()
            .iter()
            .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
        {
            anyhow::bail!(
                "the alerter members topic `{topic}` does not exist: create it with `cxstream topics` (or set alerter.peers.enabled: false)"
            );
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 0, Offset::End)?;
        consumer
            .assign(&tpl)
            .with_context(|| format!("reading `{topic}` (run `cxstream topics`)"))?;
        let producer: Producer<DefaultProducerContext> = cfg
            .kafka
            .producer_config()
            .set("linger.ms", "0")
            .create_with_context(DefaultProducerContext)
            .context("creating the alerter members producer")?;
        let stop = Arc::new(AtomicBool::new(false));
        let beat = {
            let (stop, topic, me) = (stop.clone(), topic.clone(), me.clone());
            let every = Duration::from_millis(heartbeat_ms);
            std::thread::Builder::new()
                .name("alerter-heartbeat".into())
                .spawn(move || heartbeats(&producer, &topic, &me, every, &stop))
                .context("starting the alerter heartbeat")?
        };
        tracing::info!(instance = %me, topic = %topic, "alerter joining its peers");
        Ok(Members {
            me,
            topic,
            timeout: Duration::from_millis(timeout_ms),
            consumer,
            heard: HashMap::new(),
            joined: Instant::now(),
            heartbeat: Some((stop, beat)),
        })
    }

    /// Reads what the others said.
    pub fn tick(&mut self) {
        let (me, heard) = (&self.me, &mut self.heard);
        each_ready(&self.consumer, &self.topic, |msg| {
            let Some(who) = msg.key().and_then(|k| std::str::from_utf8(k).ok()) else {
                return;
            };
            if who == me {
                return;
            }
            if msg.payload() == Some(LEAVING) {
                heard.remove(who);
            } else {
                heard.insert(who.to_string(), Instant::now());
            }
        });
        let timeout = self.timeout;
        self.heard.retain(|_, t| t.elapsed() < timeout);
    }

    /// Whether this instance writes the journey's alerts now. Nothing until it has listened
    /// for a whole timeout: before that it may not have heard from every live instance.
    pub fn owns(&self, journey: &str) -> bool {
        self.joined.elapsed() >= self.timeout
            && owner(journey, self.live()).is_some_and(|o| o == self.me)
    }

    /// The instances heard from within the timeout, this one included.
    pub fn live(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.me.as_str()).chain(self.heard.keys().map(String::as_str))
    }
}

impl Drop for Members {
    /// Tells the others to take over now instead of after the timeout, however the alerter
    /// stops.
    fn drop(&mut self) {
        if let Some((stop, beat)) = self.heartbeat.take() {
            stop.store(true, Ordering::Relaxed);
            let _ = beat.join();
        }
    }
}

/// Says `alive` every `every` until stopped, then `leaving`.
fn heartbeats(
    producer: &BaseProducer<DefaultProducerContext>,
    topic: &str,
    me: &str,
    every: Duration,
    stop: &AtomicBool,
) {
    let say = |what: &[u8]| {
        let record = BaseRecord::to(topic).key(me.as_bytes()).payload(what);
        if let Err((e, _)) = producer.send(record) {
            tracing::warn!(error = %e, topic, "cannot tell the alerter members");
        }
    };
    let step = Duration::from_millis(50).min(every);
    let mut said: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        if said.is_none_or(|t| t.elapsed() >= every) {
            say(ALIVE);
            said = Some(Instant::now());
        }
        std::thread::sleep(step);
    }
    say(LEAVING);
    let _ = rdkafka::producer::Producer::flush(producer, Duration::from_secs(5));
}

/// The instance that writes a journey's alerts: the highest SipHash-2-4 (keys 0) of
/// `instance \0 journey` (rendezvous hashing), ties to the greater name.
fn owner<'a>(journey: &str, live: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    live.max_by_key(|i| {
        let mut h = siphasher::sip::SipHasher24::new();
        h.write(i.as_bytes());
        h.write(&[0]);
        h.write(journey.as_bytes());
        (h.finish(), *i)
    })
}

/// This process's name among its peers: the configured one, or host and process id.
pub fn instance_name(cfg: &Config) -> String {
    cfg.alerter
        .peers
        .instance
        .clone()
        .unwrap_or_else(crate::process::host_and_pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_journey_has_one_owner_and_a_leaver_moves_only_its_own() {
        let journeys: Vec<String> = (0..200).map(|i| format!("journey{i}")).collect();
        let three = ["a", "b", "c"];
        let before: Vec<&str> = journeys
            .iter()
            .map(|j| owner(j, three.iter().copied()).unwrap())
            .collect();
        // Every instance gets a share.
        for i in three {
            let n = before.iter().filter(|o| **o == i).count();
            assert!((40..=100).contains(&n), "{i}: {n} of 200");
        }
        // The same view gives the same owner, in any order.
        for j in &journeys {
            assert_eq!(
                owner(j, three.iter().copied()),
                owner(j, three.iter().rev().copied())
            );
        }
        // `b` leaves: its journeys move, no other does.
        let after: Vec<&str> = journeys
            .iter()
            .map(|j| owner(j, ["a", "c"].into_iter()).unwrap())
            .collect();
        for (b, a) in before.iter().zip(&after) {
            if *b != "b" {
                assert_eq!(b, a);
            } else {
                assert_ne!(*a, "b");
            }
        }
        assert_eq!(owner("j", std::iter::empty()), None);
    }
}
