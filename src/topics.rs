//! One worker's topic -> local subscribers index. Runs on that worker only; never shared.

use std::collections::HashMap;
use std::sync::Arc;

use indexmap::IndexSet;

use crate::backplane::Link;

/// A table (of topics, or of one topic's subscribers) with more room than this shrinks once
/// it is three quarters empty, so memory taken by a burst goes back when the burst leaves;
/// halving at a quarter keeps shrinking amortised O(1) per removal.
const SHRINK_ABOVE: usize = 64;

/// Subscribers are slab keys of the worker's connections. A connection removes itself from
/// every topic before its key can be reused, so a key here always names a live subscriber.
#[derive(Debug, Default)]
pub struct Topics {
    map: HashMap<Arc<str>, Topic>,
    /// Told when a topic appears on or leaves this worker (`--redis`: interest routing).
    backplane: Option<Arc<Link>>,
    /// This worker's index, as the backplane knows it.
    worker: usize,
    /// A report did not fit in the backplane's queue: the next one is the whole topic set.
    resync: bool,
}

#[derive(Debug)]
struct Topic {
    /// The same allocation as the map key; handed to subscribers so they can unsubscribe
    /// without keeping a copy of the name.
    name: Arc<str>,
    subscribers: IndexSet<usize>,
}

impl Topics {
    pub fn new(worker: usize, backplane: Option<Arc<Link>>) -> Topics {
        Topics {
            map: HashMap::new(),
            backplane,
            worker,
            resync: false,
        }
    }

    /// Tells the backplane that `name` appeared (or left) here. Once a report has not fit,
    /// changes are not reported one by one until the whole set has been sent instead.
    fn report(&mut self, name: &Arc<str>, added: bool) {
        let Some(b) = &self.backplane else {
            return;
        };
        if self.resync {
            return self.resync_backplane();
        }
        let fit = if added {
            b.topic_added(self.worker, name)
        } else {
            b.topic_removed(self.worker, name)
        };
        self.resync = !fit;
    }

    /// Sends the backplane this worker's whole topic set if a report did not fit and there
    /// is room now. Called every loop turn; costs nothing unless a resync is due.
    pub fn resync_backplane(&mut self) {
        if !self.resync {
            return;
        }
        let (Some(b), map) = (&self.backplane, &self.map) else {
            return;
        };
        if b.resync(self.worker, || map.keys().cloned().collect()) {
            self.resync = false;
        }
    }

    /// Adds `key` to `topic`; returns the shared name to keep on the connection, or `None`
    /// if it was already subscribed.
    pub fn subscribe(&mut self, topic: &str, key: usize) -> Option<Arc<str>> {
        if let Some(t) = self.map.get_mut(topic) {
            return t.subscribers.insert(key).then(|| t.name.clone());
        }
        let name: Arc<str> = Arc::from(topic);
        let t = Topic {
            name: name.clone(),
            subscribers: IndexSet::from([key]),
        };
        self.map.insert(name.clone(), t);
        self.report(&name, true);
        Some(name)
    }

    /// Removes `key` from `topic`, dropping the topic when it has no subscribers left.
    pub fn unsubscribe(&mut self, topic: &str, key: usize) -> bool {
        let Some(t) = self.map.get_mut(topic) else {
            return false;
        };
        let removed = t.subscribers.swap_remove(&key);
        if t.subscribers.is_empty() {
            if let Some((name, _)) = self.map.remove_entry(topic) {
                self.report(&name, false);
            }
            // A burst of subscriptions leaves a big table behind; give it back as it empties.
            if self.map.capacity() > SHRINK_ABOVE && self.map.len() < self.map.capacity() / 4 {
                self.map.shrink_to(self.map.len() * 2);
            }
        } else if t.subscribers.capacity() > SHRINK_ABOVE
            && t.subscribers.len() < t.subscribers.capacity() / 4
        {
            t.subscribers.shrink_to(t.subscribers.len() * 2);
        }
        removed
    }

    /// The shared name of `topic` if it has subscribers here: a publish to it then names
    /// its target with a refcount bump instead of a new allocation.
    pub fn name(&self, topic: &str) -> Option<Arc<str>> {
        self.map.get(topic).map(|t| t.name.clone())
    }

    pub fn subscribers(&self, topic: &str) -> Option<&IndexSet<usize>> {
        self.map.get(topic).map(|t| &t.subscribers)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribe_unsubscribe_and_cleanup() {
        let mut t = Topics::new(0, None);
        assert!(t.subscribe("a", 1).is_some());
        assert!(t.subscribe("a", 2).is_some());
        assert!(t.subscribe("a", 1).is_none(), "second subscribe is a no-op");
        assert!(t.subscribe("b", 1).is_some());
        let mut subs: Vec<_> = t.subscribers("a").unwrap().iter().copied().collect();
        subs.sort();
        assert_eq!(subs, [1, 2]);
        assert!(t.unsubscribe("a", 1));
        assert!(!t.unsubscribe("a", 1));
        assert!(t.unsubscribe("a", 2));
        assert!(t.subscribers("a").is_none(), "empty topics are dropped");
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn tables_shrink_after_a_burst_leaves() {
        let mut t = Topics::new(0, None);
        for i in 0..10_000 {
            t.subscribe(&format!("t{i}"), i);
            t.subscribe("hot", i);
        }
        let big = t.map.capacity();
        for i in 0..10_000 {
            t.unsubscribe(&format!("t{i}"), i);
            t.unsubscribe("hot", i);
        }
        assert!(t.is_empty());
        assert!(
            t.map.capacity() <= SHRINK_ABOVE * 2,
            "{} of {big}",
            t.map.capacity()
        );
    }
}
