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
    next_id: u64,
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
        std::thread::Builder::new()
            .name("kafka-positions".into())
            .spawn(move || {
                for ask in questions {
                    let high = consumer
                        .fetch_watermarks(&ask.topic, ask.partition, ASK_WITHIN)
                        .map(|(_, high)| high)
                        .map_err(|e| e.to_string());
                    if high.is_err() {
                        readiness.brokers(false);
                    }
                    let answer = Answer {
                        id: ask.id,
                        partition: ask.partition,
                        source: ask.source,
                        high,
                    };
                    if tell.send(answer).is_err() {
                        break;
                    }
                }
            })
            .context("starting the thread that asks where the inputs end")?;
        Ok(PositionProbe {
            asks,
            answers,
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
    pub fn answers(&self) -> Vec<Answer> {
        self.answers.try_iter().collect()
    }
}
