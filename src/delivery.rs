//! What a publish becomes on its way to subscribers: a frame encoded once and its audience.
//! Made on the publishing thread (a worker, the control thread), carried through every queue
//! between threads, and read by every worker that delivers it.
//!
//! A leaf of its own: the queues that carry it (`worker::handle`, the backplane's link) and
//! the bus that fills them all name it without naming each other.

use std::sync::Arc;

use bytes::Bytes;

/// Who a delivery is for.
#[derive(Debug, Clone)]
pub enum Target {
    /// Every open JSON connection.
    All,
    /// Subscribers of one topic.
    Topic(Arc<str>),
}

impl Target {
    /// The same audience: both everyone, or the same topic (the same name, shared or not).
    pub fn same(&self, other: &Target) -> bool {
        match (self, other) {
            (Target::All, Target::All) => true,
            (Target::Topic(a), Target::Topic(b)) => Arc::ptr_eq(a, b) || a == b,
            _ => false,
        }
    }
}

/// A ready-to-send server frame and its audience. Cloning it costs two refcount bumps.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub target: Target,
    /// A complete unmasked WebSocket text frame; identical for every recipient.
    pub frame: Bytes,
}
