//! What a connection is to auth and to the fair-use limits, for the connections that have
//! any of it: who it is (waiting for its token, anonymous, or a verified user), when that
//! lapses, the topics it holds through a subscription token of their own, and its rate-limit
//! buckets. Boxed in `Conn::session`, which is `None` while auth and rate limits are off.
//! Pure data and pure decisions; the worker carries them out. Runs on the connection's
//! worker.

use std::sync::Arc;

use thin_vec::ThinVec;

use super::connection::NEVER;
use crate::auth::Verified;

/// Where a connection stands with auth, as it is given to a session.
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

/// Which [`Standing`] a session is in, without its user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StandingKind {
    Open,
    Pending,
    Anonymous,
    User,
}

impl Standing {
    pub fn kind(&self) -> StandingKind {
        match self {
            Standing::Open => StandingKind::Open,
            Standing::Pending => StandingKind::Pending,
            Standing::Anonymous => StandingKind::Anonymous,
            Standing::User(_) => StandingKind::User,
        }
    }
}

/// The clocks a session's deadlines are read against: the worker's tick and unix time as of
/// this loop turn, and the leeway a token's `exp` gets.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub now: u32,
    pub unix_now: u64,
    pub leeway: u64,
}

impl Clock {
    /// The tick at which a user's token lapses: its `exp` plus the leeway.
    pub fn lapse_of(&self, v: &Verified) -> u32 {
        tick_of(v.exp().saturating_add(self.leeway), self.unix_now, self.now)
    }
}

/// One connection's session (see the module doc). 16 bytes, the smallest size class that
/// holds it: a connection with a verified token and nothing else (no rate limit, no topic of
/// its own), the usual case, is its user alone; what fewer connections have (a connect
/// deadline, subscription-token topics, rate buckets) is in a second box, there only while
/// some of it is. A user's lapse is its token's `exp`, read when needed.
#[derive(Debug, Default)]
pub struct Session {
    user: Option<Arc<Verified>>,
    more: Option<Box<More>>,
}

/// The rest of a session, for the connections that have any of it.
#[derive(Debug)]
struct More {
    kind: StandingKind,
    /// The connect deadline, while [`StandingKind::Pending`]; [`NEVER`] otherwise.
    deadline: u32,
    /// Topics subscribed through a subscription token (the grant did not cover them), each
    /// with the tick its token expires at (plus the leeway).
    topic_grants: ThinVec<(Arc<str>, u32)>,
    /// Token buckets, with `--max-messages-per-sec` or `--max-bytes-per-sec`.
    rate: Option<Buckets>,
}

impl More {
    /// Nothing here that the kind cannot do without: a user or an anonymous connection with
    /// no topic of its own and no rate limit.
    fn is_spare(&self) -> bool {
        matches!(self.kind, StandingKind::User | StandingKind::Anonymous)
            && self.topic_grants.is_empty()
            && self.rate.is_none()
    }
}

impl Session {
    /// A session of `standing`; `deadline` is a pending connection's connect deadline.
    pub fn new(standing: Standing, deadline: u32) -> Session {
        let mut s = Session::default();
        s.set(standing);
        if let Some(m) = s.more.as_mut() {
            if m.kind == StandingKind::Pending {
                m.deadline = deadline;
            }
        }
        s
    }

    pub fn kind(&self) -> StandingKind {
        match (&self.more, &self.user) {
            (Some(m), _) => m.kind,
            (None, Some(_)) => StandingKind::User,
            (None, None) => StandingKind::Anonymous,
        }
    }

    /// Gives the session a new standing (its topics and buckets stay); returns the kind it
    /// had. A pending connection's deadline is set with [`Session::new`] only.
    pub fn set(&mut self, standing: Standing) -> StandingKind {
        let before = self.kind();
        let kind = standing.kind();
        self.user = match standing {
            Standing::User(v) => Some(v),
            _ => None,
        };
        let needs_more = matches!(kind, StandingKind::Open | StandingKind::Pending);
        if needs_more || self.more.is_some() {
            let m = self.more_mut();
            m.kind = kind;
            m.deadline = NEVER;
        }
        self.tidy();
        before
    }

    /// The user, if the connection has one.
    pub fn user(&self) -> Option<&Arc<Verified>> {
        self.user.as_ref()
    }

    fn more_mut(&mut self) -> &mut More {
        let kind = self.kind();
        self.more.get_or_insert_with(|| {
            Box::new(More {
                kind,
                deadline: NEVER,
                topic_grants: ThinVec::new(),
                rate: None,
            })
        })
    }

    /// Frees the second box once nothing in it is needed.
    fn tidy(&mut self) {
        if self.more.as_ref().is_some_and(|m| m.is_spare()) {
            self.more = None;
        }
    }

    /// The tick at which the standing lapses: the connect deadline while pending, the
    /// token's `exp` plus the leeway for a user; [`NEVER`] otherwise.
    pub fn lapses(&self, clock: &Clock) -> u32 {
        match (self.kind(), &self.user) {
            (StandingKind::User, Some(v)) => clock.lapse_of(v),
            (StandingKind::Pending, _) => self.more.as_ref().map_or(NEVER, |m| m.deadline),
            _ => NEVER,
        }
    }

    /// Topics held through a subscription token, with the tick each token expires at.
    pub fn topic_grants(&self) -> &[(Arc<str>, u32)] {
        self.more.as_ref().map_or(&[], |m| &m.topic_grants)
    }

    /// The rate buckets, with a rate limit on.
    pub fn rate(&mut self) -> Option<&mut Buckets> {
        self.more.as_mut().and_then(|m| m.rate.as_mut())
    }

    pub fn has_rate(&self) -> bool {
        self.more.as_ref().is_some_and(|m| m.rate.is_some())
    }

    /// Gives the session its rate buckets.
    pub fn set_rate(&mut self, b: Buckets) {
        self.more_mut().rate = Some(b);
    }

    /// The earliest tick something of this session falls due ([`NEVER`]: nothing does).
    pub fn next_due(&self, clock: &Clock) -> u32 {
        self.topic_grants()
            .iter()
            .map(|(_, at)| *at)
            .fold(self.lapses(clock), u32::min)
    }

    /// Keeps (or renews) `topic`'s own grant until tick `until`.
    pub fn grant_topic(&mut self, topic: Arc<str>, until: u32) {
        let grants = &mut self.more_mut().topic_grants;
        match grants.iter_mut().find(|(t, _)| *t == topic) {
            Some(g) => g.1 = until,
            None => grants.push((topic, until)),
        }
    }

    /// Forgets `topic`'s own grant (unsubscribed): true if it had one.
    pub fn drop_topic(&mut self, topic: &str) -> bool {
        let Some(m) = self.more.as_mut() else {
            return false;
        };
        let Some(i) = m.topic_grants.iter().position(|(t, _)| **t == *topic) else {
            return false;
        };
        m.topic_grants.swap_remove(i);
        self.tidy();
        true
    }

    /// Takes out the topic grants whose tokens have expired at `now`.
    pub fn expired_topics(&mut self, now: u32) -> Vec<Arc<str>> {
        let Some(m) = self.more.as_mut() else {
            return Vec::new();
        };
        let mut gone = Vec::new();
        m.topic_grants.retain(|(t, at)| {
            let keep = *at > now;
            if !keep {
                gone.push(t.clone());
            }
            keep
        });
        self.tidy();
        gone
    }
}

/// What a connection over its rate gets (`--rate-limit-policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RatePolicy {
    /// Stop reading it until its buckets refill: TCP slows the client down, nothing is lost.
    Hold,
    /// Drop the message and reply with error code `rate_limited`.
    Refuse,
    /// Close it with 1008.
    Close,
}

/// A connection's two token buckets, messages and bytes, refilled continuously at their
/// rates up to `burst` seconds' worth (a rate of 0 is no limit, and its bucket is ignored).
/// 12 bytes: levels as `f32` (exact to a few bytes at tens of MiB per second), the time of
/// the last refill in milliseconds of the worker's clock, which wraps after 49 days: a
/// connection silent that long refills by less than it is owed, never by more.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Buckets {
    messages: f32,
    bytes: f32,
    at_ms: u32,
}

/// The rates, as the buckets use them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rates {
    /// Per second; 0: no limit.
    pub messages: f32,
    pub bytes: f32,
    /// The buckets' size, in seconds of rate.
    pub burst: f32,
}

impl Rates {
    pub fn of(cfg: &crate::config::RateLimits) -> Rates {
        Rates {
            messages: cfg.messages_per_sec as f32,
            bytes: cfg.bytes_per_sec as f32,
            burst: cfg.burst_secs as f32,
        }
    }
}

impl Buckets {
    /// Full buckets at `now_ms`.
    pub fn full(r: &Rates, now_ms: u32) -> Buckets {
        Buckets {
            messages: r.messages * r.burst,
            bytes: r.bytes * r.burst,
            at_ms: now_ms,
        }
    }

    fn refill(&mut self, r: &Rates, now_ms: u32) {
        let secs = now_ms.wrapping_sub(self.at_ms) as f32 / 1000.0;
        self.at_ms = now_ms;
        self.messages = (self.messages + r.messages * secs).min(r.messages * r.burst);
        self.bytes = (self.bytes + r.bytes * secs).min(r.bytes * r.burst);
    }

    /// For `refuse` and `close`: takes a message of `len` bytes if the buckets hold it (a
    /// message larger than the whole byte bucket passes when that bucket is full); false,
    /// taking nothing, if not.
    pub fn try_take(&mut self, r: &Rates, now_ms: u32, len: usize) -> bool {
        self.refill(r, now_ms);
        let len = len as f32;
        let fits_messages = r.messages == 0.0 || self.messages >= 1.0;
        let fits_bytes = r.bytes == 0.0 || self.bytes >= len.min(r.bytes * r.burst);
        if !(fits_messages && fits_bytes) {
            return false;
        }
        self.take(r, len);
        true
    }

    /// For `hold`: takes the message whatever the level (the buckets may go into debt), and
    /// says whether the connection may read on (false: hold it until [`Buckets::ready_in_ms`]).
    pub fn take_then_ready(&mut self, r: &Rates, now_ms: u32, len: usize) -> bool {
        self.refill(r, now_ms);
        self.take(r, len as f32);
        self.ready(r)
    }

    fn take(&mut self, r: &Rates, len: f32) {
        if r.messages > 0.0 {
            self.messages -= 1.0;
        }
        if r.bytes > 0.0 {
            self.bytes -= len;
        }
    }

    /// Another message may be read: a whole message's token, and no byte debt (for the
    /// limits that are on).
    fn ready(&self, r: &Rates) -> bool {
        (r.messages == 0.0 || self.messages >= 1.0) && (r.bytes == 0.0 || self.bytes >= 0.0)
    }

    /// Milliseconds from `now_ms` until the connection may read on (0: now).
    pub fn ready_in_ms(&mut self, r: &Rates, now_ms: u32) -> u32 {
        self.refill(r, now_ms);
        let wait = |level: f32, want: f32, rate: f32| {
            if rate == 0.0 || level >= want {
                0.0
            } else {
                (want - level) / rate * 1000.0
            }
        };
        let ms = wait(self.messages, 1.0, r.messages).max(wait(self.bytes, 0.0, r.bytes));
        ms.ceil().min(u32::MAX as f32) as u32
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

    const TEN_A_SECOND: Rates = Rates {
        messages: 10.0,
        bytes: 0.0,
        burst: 2.0,
    };

    #[test]
    fn a_burst_then_the_rate() {
        let r = TEN_A_SECOND;
        let mut b = Buckets::full(&r, 0);
        let taken = (0..100).filter(|_| b.try_take(&r, 0, 10)).count();
        assert_eq!(taken, 20, "two seconds' worth at once");
        assert!(!b.try_take(&r, 50, 10), "not a whole token after 50 ms");
        assert!(b.try_take(&r, 100, 10), "one token after 100 ms");
        let taken = (0..100).filter(|_| b.try_take(&r, 1100, 10)).count();
        assert_eq!(taken, 10, "a second later: a second's worth");
        let taken = (0..100).filter(|_| b.try_take(&r, 60_000, 10)).count();
        assert_eq!(
            taken, 20,
            "never more than the burst, however long the wait"
        );
    }

    #[test]
    fn bytes_limit_and_a_message_larger_than_the_bucket() {
        let r = Rates {
            messages: 0.0,
            bytes: 1000.0,
            burst: 1.0,
        };
        let mut b = Buckets::full(&r, 0);
        assert!(b.try_take(&r, 0, 600));
        assert!(!b.try_take(&r, 0, 600), "400 left");
        assert!(b.try_take(&r, 0, 400));
        assert!(
            !b.try_take(&r, 500, 5000),
            "a huge one waits for a full bucket"
        );
        assert!(b.try_take(&r, 1000, 5000), "and then passes");
        assert!(!b.try_take(&r, 1000, 1), "leaving a debt");
        assert_eq!(b.ready_in_ms(&r, 1000), 4000);
        assert!(b.try_take(&r, 5001, 1));
    }

    #[test]
    fn hold_takes_everything_and_says_when_to_read_again() {
        let r = Rates {
            messages: 10.0,
            bytes: 100.0,
            burst: 1.0,
        };
        let mut b = Buckets::full(&r, 0);
        for _ in 0..9 {
            assert!(b.take_then_ready(&r, 0, 1));
        }
        assert!(
            !b.take_then_ready(&r, 0, 1),
            "the tenth empties the message bucket"
        );
        // (f32 arithmetic: a millisecond either way.)
        let near = |ms: u32, want: u32| ms.abs_diff(want) <= 1;
        assert!(near(b.ready_in_ms(&r, 0), 100));
        assert!(near(b.ready_in_ms(&r, 60), 40));
        assert!(near(b.ready_in_ms(&r, 101), 0));
        assert!(!b.take_then_ready(&r, 101, 300), "200 bytes of debt");
        assert!(near(b.ready_in_ms(&r, 101), 2000));
        // One limit alone: the other bucket is not looked at.
        let bytes_only = Rates {
            messages: 0.0,
            bytes: 100.0,
            burst: 1.0,
        };
        let mut b = Buckets::full(&bytes_only, 0);
        assert!(b.take_then_ready(&bytes_only, 0, 50));
        assert!(!b.take_then_ready(&bytes_only, 0, 51));
        let messages_only = Rates {
            messages: 2.0,
            bytes: 0.0,
            burst: 1.0,
        };
        let mut b = Buckets::full(&messages_only, 0);
        assert!(b.take_then_ready(&messages_only, 0, 1 << 30));
        assert!(!b.take_then_ready(&messages_only, 0, 1));
        let off = Rates {
            messages: 0.0,
            bytes: 0.0,
            burst: 1.0,
        };
        let mut none = Buckets::full(&off, 0);
        assert!(none.try_take(&off, 0, usize::MAX));
        assert_eq!(none.ready_in_ms(&off, 0), 0);
    }

    #[test]
    fn the_clock_wrapping_never_refills_more_than_the_burst() {
        let r = TEN_A_SECOND;
        let mut b = Buckets::full(&r, u32::MAX - 10);
        for _ in 0..20 {
            assert!(b.try_take(&r, u32::MAX - 10, 1));
        }
        assert!(b.try_take(&r, 200, 1), "211 ms across the wrap: two tokens");
        assert!(b.try_take(&r, 200, 1));
        assert!(!b.try_take(&r, 200, 1));
    }

    const CLOCK: Clock = Clock {
        now: 100,
        unix_now: 1_000_000,
        leeway: 5,
    };

    fn user(exp: u64) -> Arc<Verified> {
        Arc::new(Verified::new("al", exp, Arc::default(), None))
    }

    #[test]
    fn a_session_is_16_bytes_and_a_bare_user_needs_no_second_box() {
        assert_eq!(std::mem::size_of::<Session>(), 16);
        let mut s = Session::new(Standing::Pending, 7);
        assert_eq!(
            (s.kind(), s.user().is_none()),
            (StandingKind::Pending, true)
        );
        assert_eq!(s.lapses(&CLOCK), 7, "the connect deadline");
        assert_eq!(
            s.set(Standing::User(user(1_000_010))),
            StandingKind::Pending
        );
        assert_eq!(s.kind(), StandingKind::User);
        assert!(s.more.is_none(), "a user alone is its user");
        assert_eq!(s.lapses(&CLOCK), 115, "exp plus the leeway, as a tick");
        s.grant_topic("t".into(), 50);
        assert!(s.more.is_some());
        assert_eq!((s.kind(), s.next_due(&CLOCK)), (StandingKind::User, 50));
        assert!(s.drop_topic("t"));
        assert!(s.more.is_none(), "and is again once its topic is gone");
        assert_eq!(s.set(Standing::Anonymous), StandingKind::User);
        assert_eq!(
            (s.kind(), s.lapses(&CLOCK)),
            (StandingKind::Anonymous, NEVER)
        );
        let mut open = Session::new(Standing::Open, NEVER);
        assert_eq!(open.kind(), StandingKind::Open);
        open.set_rate(Buckets::full(&TEN_A_SECOND, 0));
        assert!(open.has_rate() && open.rate().is_some());
        assert_eq!(
            open.set(Standing::User(user(1_000_010))),
            StandingKind::Open
        );
        assert!(open.has_rate(), "the buckets stay with a new standing");
    }

    #[test]
    fn topic_grants_are_renewed_dropped_and_expire() {
        let mut s = Session::new(Standing::Anonymous, NEVER);
        assert_eq!(s.next_due(&CLOCK), NEVER);
        s.grant_topic("a".into(), 10);
        s.grant_topic("b".into(), 20);
        s.grant_topic("a".into(), 30);
        assert_eq!(s.topic_grants().len(), 2, "renewed, not added twice");
        assert_eq!(s.next_due(&CLOCK), 20);
        assert!(s.drop_topic("b"));
        assert!(!s.drop_topic("b"));
        assert_eq!(s.next_due(&CLOCK), 30);
        s.grant_topic("c".into(), 25);
        let gone = s.expired_topics(25);
        assert_eq!(gone, vec![Arc::<str>::from("c")]);
        assert_eq!(s.next_due(&CLOCK), 30);
        s.set(Standing::User(user(1_000_002)));
        assert_eq!(
            s.next_due(&CLOCK),
            30,
            "exp + leeway is tick 107, the topic's 30"
        );
        assert!(s.expired_topics(30).len() == 1 && s.more.is_none());
    }
}
