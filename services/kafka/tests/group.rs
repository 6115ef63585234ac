//! Against the local broker (`deploy/local/up.sh`; address from CX_TEST_KAFKA).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cxstream_kafka::group::drop_without_leaving;
use cxstream_kafka::{ensure_topics, KafkaSettings, TopicSpec};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

const SESSION_MS: u64 = 6_000;

fn member(brokers: &str, group: &str, topic: &str) -> BaseConsumer {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", SESSION_MS.to_string())
        .set("heartbeat.interval.ms", "500")
        .create()
        .expect("a consumer");
    consumer.subscribe(&[topic]).expect("subscribed");
    consumer
}

/// Polls until the consumer holds partitions.
fn until_assigned(consumer: &BaseConsumer) {
    let started = Instant::now();
    while consumer.assignment().map_or(0, |a| a.count()) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "never assigned"
        );
        consumer.poll(Duration::from_millis(100));
    }
}

/// A member dropped without leaving keeps its place until its session times out: the next
/// member waits for that before it gets the partitions, as after a crash. (A member that
/// leaves hands them over at once; Tansu 0.6 can then keep waiting for it for good.)
#[test]
fn a_member_dropped_without_leaving_holds_its_place_until_its_session_ends() {
    let brokers = std::env::var("CX_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:19092".into());
    let run = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_nanos();
    let (topic, group) = (format!("t.quiet.{run}"), format!("g.quiet.{run}"));
    let settings = KafkaSettings {
        brokers: brokers.clone(),
        ..KafkaSettings::default()
    };
    let spec = TopicSpec {
        name: topic.clone(),
        partitions: 2,
        keep_forever: false,
    };
    tokio::runtime::Runtime::new()
        .expect("a runtime")
        .block_on(ensure_topics(&settings, &[spec]))
        .expect("the topic");

    let first = member(&brokers, &group, &topic);
    until_assigned(&first);
    let dropped = Instant::now();
    drop_without_leaving(first);
    assert!(
        dropped.elapsed() < Duration::from_secs(5),
        "dropping took {:?}",
        dropped.elapsed()
    );
    let second = member(&brokers, &group, &topic);
    until_assigned(&second);
    let waited = dropped.elapsed();
    assert!(
        waited >= Duration::from_millis(SESSION_MS * 2 / 3),
        "the next member was assigned {waited:?} after the drop: the first one left"
    );
}
