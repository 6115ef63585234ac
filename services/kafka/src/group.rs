//! Leaving a consumer group the way a crashed member does: by going quiet.

use rdkafka::bindings::{rd_kafka_destroy_flags, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};

/// Destroys `consumer` without sending LeaveGroup or committing: its member stays in the
/// group until its session times out, and the coordinator evicts it like a crashed one.
///
/// Why: Tansu 0.6 keeps the leader of a group that is still forming when that leader leaves
/// (its LeaveGroup removes the member but not the leadership), and from then on every joiner
/// is told to wait for the departed leader's assignment, for good (seen in a test run: a
/// member that rejoined just as it had been made leader left the group without partitions
/// for 30 minutes). A member that times out instead loses the leadership with its membership.
///
/// The Rust side of the consumer (its context, a few KB) is leaked: librdkafka's handle is
/// gone and must not be destroyed twice. Meant for rejoins and for exits that hold no
/// partitions: a member with partitions to hand over should leave.
#[allow(unsafe_code)]
pub fn drop_without_leaving<C: ConsumerContext>(consumer: BaseConsumer<C>) {
    let consumer = std::mem::ManuallyDrop::new(consumer);
    // SAFETY: the pointer is the live handle the consumer owns; ManuallyDrop keeps the
    // consumer's own Drop (which would close and destroy the handle again) from running, and
    // nothing uses the consumer after this call, which takes it by value.
    unsafe {
        rd_kafka_destroy_flags(
            consumer.client().native_ptr(),
            RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE,
        );
    }
}

/// Closes a group member: one holding partitions leaves, so that the group hands them over
/// at once; one holding none has nothing to hand over and may be the leader of a group
/// still forming, so it goes quietly ([`drop_without_leaving`]).
pub fn close<C: ConsumerContext>(consumer: BaseConsumer<C>) {
    if consumer.assignment().is_ok_and(|a| a.count() > 0) {
        drop(consumer);
    } else {
        drop_without_leaving(consumer);
    }
}
