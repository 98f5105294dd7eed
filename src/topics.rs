//! One worker's topic -> local subscribers index. Runs on that worker only; never shared.

use std::collections::HashMap;
use std::sync::Arc;

use indexmap::IndexSet;

/// Subscribers are slab keys of the worker's connections. A connection removes itself from
/// every topic before its key can be reused, so a key here always names a live subscriber.
#[derive(Debug, Default)]
pub struct Topics {
    map: HashMap<Arc<str>, Topic>,
}

#[derive(Debug)]
struct Topic {
    /// The same allocation as the map key; handed to subscribers so they can unsubscribe
    /// without keeping a copy of the name.
    name: Arc<str>,
    subscribers: IndexSet<usize>,
}

impl Topics {
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
        Some(name)
    }

    /// Removes `key` from `topic`, dropping the topic when it has no subscribers left.
    pub fn unsubscribe(&mut self, topic: &str, key: usize) -> bool {
        let Some(t) = self.map.get_mut(topic) else {
            return false;
        };
        let removed = t.subscribers.swap_remove(&key);
        if t.subscribers.is_empty() {
            self.map.remove(topic);
        }
        removed
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
        let mut t = Topics::default();
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
}
