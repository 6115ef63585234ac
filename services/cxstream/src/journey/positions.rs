//! Asking the broker where an input partition ends, off the consumer thread. Letting an
//! input stop holding the watermark back takes the broker's own word that nothing is left
//! (librdkafka's statistics can lag), but a busy broker has kept that answer waiting for
//! seconds (seen here with Tansu: two-second timeouts, again and again, during a catch-up),
//! and the consumer thread is not polled while it waits. So a thread with its own client
//! asks, and the consumer thread takes the answers when they come.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::time::Duration;

use anyhow::{Context as _, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use super::partition::Source;
use super::readiness::Readiness;
use crate::config::Config;

/// How long one question may wait for the broker.
const ASK_WITHIN: Duration = Duration::from_secs(10);

/// One question: where does `topic` partition `partition` end?
struct Ask {
    id: u64,
    partition: i32,
    source: Source,
    topic: String,
}

/// The broker's answer to question `id`: the high watermark, or why there is none.
pub struct Answer {
    pub id: u64,
    pub partition: i32,
    pub source: Source,
    pub high: Result<i64, String>,
}

/// Dropping it closes the questions: its thread ends after the one it is asking (not
/// joined, so that a shutdown never waits for a broker that does not answer).
pub struct PositionProbe {
    asks: Sender<Ask>,
    answers: Receiver<Answer>,
    /// Answers that came while [`Self::ask_and_wait`] waited for its own.
    stash: Vec<Answer>,
    next_id: u64,
}

/// The high watermark of each asked partition, in the order asked.
fn ends(consumer: &BaseConsumer, asks: &[Ask]) -> Vec<Result<i64, String>> {
    let mut tpl = TopicPartitionList::new();
    for ask in asks {
        if tpl.find_partition(&ask.topic, ask.partition).is_none() {
            // The "timestamp" -1 asks for the end.
            if let Err(e) = tpl.add_partition_offset(&ask.topic, ask.partition, Offset::End) {
                return asks.iter().map(|_| Err(e.to_string())).collect();
            }
        }
    }
    let found = match consumer.offsets_for_times(tpl, ASK_WITHIN) {
        Ok(found) => found,
        Err(e) => return asks.iter().map(|_| Err(e.to_string())).collect(),
    };
    asks.iter()
        .map(|ask| {
            let Some(elem) = found.find_partition(&ask.topic, ask.partition) else {
                return Err("not in the broker's answer".to_string());
            };
            elem.error().map_err(|e| e.to_string())?;
            match elem.offset() {
                Offset::Offset(high) => Ok(high),
                other => Err(format!("no end offset ({other:?})")),
            }
        })
        .collect()
}

impl PositionProbe {
    /// A question the broker leaves unanswered marks the brokers not ready at once.
    pub fn start(cfg: &Config, readiness: std::sync::Arc<Readiness>) -> Result<Self> {
        let consumer: BaseConsumer = cfg
            .kafka
            .consumer_config(&cfg.journey.group_id)
            .create()
            .context("creating the client that asks where the inputs end")?;
        let (asks, questions) = channel::<Ask>();
        let (tell, answers) = channel();
        let warm_up = cfg.topics.touchpoints.clone();
        std::thread::Builder::new()
            .name("kafka-positions".into())
            .spawn(move || {
                // Connects while the group forms: the first question comes as soon as a
                // partition is claimed, and a catch-up waits for its answer. (Failing here
                // only delays that answer.)
                let _ = consumer.fetch_metadata(Some(&warm_up), ASK_WITHIN);
                while let Ok(first) = questions.recv() {
                    // Every question waiting goes in one request: a catch-up asks about all
                    // its partitions at once, and the broker answers each in one go.
                    let asks: Vec<Ask> =
                        std::iter::once(first).chain(questions.try_iter()).collect();
                    let highs = ends(&consumer, &asks);
                    if highs.iter().any(Result::is_err) {
                        readiness.brokers(false);
                    }
                    for (ask, high) in asks.into_iter().zip(highs) {
                        let answer = Answer {
                            id: ask.id,
                            partition: ask.partition,
                            source: ask.source,
                            high,
                        };
                        if tell.send(answer).is_err() {
                            return;
                        }
                    }
                }
            })
            .context("starting the thread that asks where the inputs end")?;
        Ok(PositionProbe {
            asks,
            answers,
            stash: Vec::new(),
            next_id: 0,
        })
    }

    /// Asks where each of `inputs` ends in partition `partition`; returns the question's
    /// id, which its answers carry.
    pub fn ask(&mut self, partition: i32, inputs: Vec<(Source, String)>) -> u64 {
        self.next_id += 1;
        for (source, topic) in inputs {
            let ask = Ask {
                id: self.next_id,
                partition,
                source,
                topic,
            };
            // The thread only ends when this probe is dropped.
            let _ = self.asks.send(ask);
        }
        self.next_id
    }

    /// The answers that came since the last call.
    pub fn answers(&mut self) -> Vec<Answer> {
        let mut answers = std::mem::take(&mut self.stash);
        answers.extend(self.answers.try_iter());
        answers
    }

    /// Asks where the inputs of each partition end and waits for every answer, at most
    /// `within`: `None` if one did not come in time.
    pub fn ask_and_wait(
        &mut self,
        questions: Vec<(i32, Vec<(Source, String)>)>,
        within: Duration,
    ) -> Option<Vec<Answer>> {
        let deadline = std::time::Instant::now() + within;
        let mut ids = std::collections::BTreeSet::new();
        let mut left = 0;
        for (partition, inputs) in questions {
            left += inputs.len();
            ids.insert(self.ask(partition, inputs));
        }
        let mut mine = Vec::with_capacity(left);
        while mine.len() < left {
            let wait = deadline.saturating_duration_since(std::time::Instant::now());
            let answer = self.answers.recv_timeout(wait).ok()?;
            if ids.contains(&answer.id) {
                mine.push(answer);
            } else {
                self.stash.push(answer);
            }
        }
        Some(mine)
    }
}
