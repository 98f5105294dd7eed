//! What a connection is to auth and to the fair-use limits, for the connections that have
//! any of it: who it is (waiting for its token, anonymous, or a verified user), when that
//! lapses, and the topics it holds through a subscription token of their own. Boxed in
//! `Conn::session`, which is `None` while auth and rate limits are off. Pure data and pure
//! decisions; the worker carries them out. Runs on the connection's worker.

use std::sync::Arc;

use thin_vec::ThinVec;

use super::connection::NEVER;
use crate::auth::Verified;

/// Where a connection stands with auth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// Auth is off: everything is allowed, as without a session.
    Open,
    /// Auth is on and no token came with the upgrade: only `connect` is served, until the
    /// connect deadline.
    Pending,
    /// Connected without a token: the anonymous grant applies.
    Anonymous,
    /// Connected with a verified token: its grant applies, until it expires.
    User(Arc<Verified>),
}

/// One connection's session (see the module doc).
#[derive(Debug)]
pub struct Session {
    pub standing: Standing,
    /// The tick at which the standing lapses: the connect deadline while
    /// [`Standing::Pending`], the token's expiry plus the leeway for a user; [`NEVER`]
    /// otherwise.
    pub lapses: u32,
    /// Topics subscribed through a subscription token (the grant did not cover them), each
    /// with the tick its token expires at (plus the leeway).
    pub topic_grants: ThinVec<(Arc<str>, u32)>,
}

impl Session {
    pub fn new(standing: Standing, lapses: u32) -> Session {
        Session {
            standing,
            lapses,
            topic_grants: ThinVec::new(),
        }
    }

    /// The user, if the connection has one.
    pub fn user(&self) -> Option<&Arc<Verified>> {
        match &self.standing {
            Standing::User(v) => Some(v),
            _ => None,
        }
    }

    /// The earliest tick something of this session falls due ([`NEVER`]: nothing does).
    pub fn next_due(&self) -> u32 {
        self.topic_grants
            .iter()
            .map(|(_, at)| *at)
            .fold(self.lapses, u32::min)
    }

    /// Keeps (or renews) `topic`'s own grant until tick `until`.
    pub fn grant_topic(&mut self, topic: Arc<str>, until: u32) {
        match self.topic_grants.iter_mut().find(|(t, _)| *t == topic) {
            Some(g) => g.1 = until,
            None => self.topic_grants.push((topic, until)),
        }
    }

    /// Forgets `topic`'s own grant (unsubscribed): true if it had one.
    pub fn drop_topic(&mut self, topic: &str) -> bool {
        match self.topic_grants.iter().position(|(t, _)| **t == *topic) {
            Some(i) => {
                self.topic_grants.swap_remove(i);
                true
            }
            None => false,
        }
    }

    /// Takes out the topic grants whose tokens have expired at `now`.
    pub fn expired_topics(&mut self, now: u32) -> Vec<Arc<str>> {
        let mut gone = Vec::new();
        self.topic_grants.retain(|(t, at)| {
            let keep = *at > now;
            if !keep {
                gone.push(t.clone());
            }
            keep
        });
        gone
    }
}

/// The worker tick of unix time `at`, given that unix time `unix_now` is tick `now`;
/// saturating at both ends ([`NEVER`] is never reached by a finite time, `u32::MAX - 1` at
/// most).
pub fn tick_of(at: u64, unix_now: u64, now: u32) -> u32 {
    let ahead = at.saturating_sub(unix_now);
    u64::from(now)
        .saturating_add(ahead)
        .min(u64::from(NEVER - 1)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_times_become_ticks_without_overflow() {
        assert_eq!(tick_of(1_000_010, 1_000_000, 5), 15);
        assert_eq!(tick_of(999_990, 1_000_000, 5), 5, "a past time is due now");
        assert_eq!(tick_of(u64::MAX, 0, 5), NEVER - 1);
        assert_eq!(tick_of(u64::from(u32::MAX) * 4, 0, u32::MAX - 3), NEVER - 1);
    }

    #[test]
    fn topic_grants_are_renewed_dropped_and_expire() {
        let mut s = Session::new(Standing::Anonymous, NEVER);
        assert_eq!(s.next_due(), NEVER);
        s.grant_topic("a".into(), 10);
        s.grant_topic("b".into(), 20);
        s.grant_topic("a".into(), 30);
        assert_eq!(s.topic_grants.len(), 2, "renewed, not added twice");
        assert_eq!(s.next_due(), 20);
        assert!(s.drop_topic("b"));
        assert!(!s.drop_topic("b"));
        assert_eq!(s.next_due(), 30);
        s.grant_topic("c".into(), 25);
        let gone = s.expired_topics(25);
        assert_eq!(gone, vec![Arc::<str>::from("c")]);
        assert_eq!(s.next_due(), 30);
        s.lapses = 12;
        assert_eq!(s.next_due(), 12);
    }
}
