//! Tokens: who a connection is, decided on its worker. An upgrade's token, a `connect`, a
//! `refresh` and a subscription token are verified here, under a budget of verification time
//! per loop turn, and what they establish is kept in the connection's session. Runs on the
//! connection's worker.
//!
//! A signature check costs tens of microseconds (ES256 about 50 µs here), so a reconnect
//! storm of 20,000 clients is a second of one core's time. The budget keeps that from
//! stalling the connections already open: once a turn has spent [`VERIFY_BUDGET`] on
//! verifications, a connection whose next input may need one (a handshake, a pending
//! `connect`) waits for a later turn with its input unread (`Reader` asks
//! [`Tokens::exhausted`]), and the turn goes on serving everyone else. Tokens seen before
//! cost a cache lookup, not a verification (`Auth::cached`).
//!
//! Below the effects part (which hands it the requests), above the connections (whose
//! sessions it sets and whose replies it sends).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::conns::Conns;
use crate::auth::{Auth, Refusal, Verified};
use crate::codec::Kind;
use crate::conn::session::{Buckets, Rates};
use crate::conn::{CloseReason, Session, Standing, StandingKind, NEVER};
use crate::handler::{self, Denial};
use crate::handshake::{self, Credential, Endpoint};
use crate::protocol::{self, Raw};
use crate::stats::bump;

/// Verification time one loop turn may spend before connections that need one wait for the
/// next turn: about 20 ES256 checks, or hundreds of HS256 ones. An unrelated client's
/// latency grows by at most about this much during a reconnect storm.
pub(super) const VERIFY_BUDGET: Duration = Duration::from_millis(1);

/// The token part of a worker.
pub(super) struct Tokens {
    /// The verifier; `None` while auth is off.
    auth: Option<Arc<Auth>>,
    /// Verification time spent in this loop turn.
    spent: Duration,
}

/// What `connect` and the token requests reply with, built here.
const REPLY_CAPACITY: usize = 128;

impl Tokens {
    pub(super) fn new(auth: Option<Arc<Auth>>) -> Self {
        Tokens {
            auth,
            spent: Duration::ZERO,
        }
    }

    /// Auth is on.
    pub(super) fn on(&self) -> bool {
        self.auth.is_some()
    }

    /// What anonymous connections may do (auth on).
    pub(super) fn anonymous(&self) -> Option<&crate::auth::Grant> {
        self.auth.as_ref().map(|a| &**a.anonymous())
    }

    /// A loop turn begins: its budget is whole again.
    pub(super) fn begin_turn(&mut self) {
        self.spent = Duration::ZERO;
    }

    /// This turn has spent its verification budget.
    pub(super) fn exhausted(&self) -> bool {
        self.spent >= VERIFY_BUDGET
    }

    /// Whether the next input of `key` may need a token verified: a handshake, or a
    /// connection that has not connected yet. Only those wait when the budget is spent.
    pub(super) fn may_verify(&self, conns: &Conns, key: usize) -> bool {
        if !self.on() {
            return false;
        }
        let conn = &conns.slab[key];
        match conn.machine.phase() {
            crate::conn::Phase::Handshake => true,
            crate::conn::Phase::Open(_) => conn
                .session
                .as_ref()
                .is_some_and(|s| s.kind() == StandingKind::Pending),
            crate::conn::Phase::Closing => false,
        }
    }

    /// The verdict on `token`, from the cache or verified; the time it took is charged to
    /// this turn's budget (a cache hit costs a hash of the token: about a microsecond).
    fn check(&mut self, conns: &Conns, token: &str) -> Result<Arc<Verified>, Refusal> {
        let auth = self
            .auth
            .as_ref()
            .expect("tokens are checked only with auth on");
        let t0 = Instant::now();
        let verdict = auth.verify(token, conns.unix_now);
        self.spent += t0.elapsed();
        verdict
    }

    /// The tick at which a user's standing lapses: its token's expiry plus the leeway.
    fn lapses(&self, conns: &Conns, v: &Verified) -> u32 {
        conns.clock().lapse_of(v)
    }

    /// An upgrade that the request itself is fit for: with auth on, its token decides. On
    /// `Ok` the connection has its session (or, with auth off, none); `Err` is the HTTP
    /// refusal to send instead of the 101.
    pub(super) fn admit(
        &mut self,
        conns: &mut Conns,
        key: usize,
        endpoint: Endpoint,
        credential: Credential<'_>,
    ) -> Result<(), Refused> {
        let Some(auth) = self.auth.clone() else {
            if conns.cfg.rate.on() {
                self.start(conns, key, Standing::Open, NEVER);
            }
            return Ok(());
        };
        let s = auth.settings();
        let token = match credential {
            // Raw echo has no request in which a token could come later. Checked before the
            // anonymous grants: they are topics, and /echo has none to apply them to, so
            // --anonymous-without-connect must not open it to every tokenless client.
            Credential::None if endpoint == Endpoint::Echo => {
                return Err(unauthorized(None, "a token is required on /echo"));
            }
            // Only when the anonymous flags grant something: otherwise the connection could
            // do nothing but stay open, past the connect deadline that bounds tokenless
            // connections, which is why `connect` refuses a tokenless connect then too.
            Credential::None if s.anonymous_without_connect && anonymous_grants_anything(&auth) => {
                self.start(conns, key, Standing::Anonymous, NEVER);
                return Ok(());
            }
            Credential::None => {
                let deadline = conns.after(s.connect_timeout);
                self.start(conns, key, Standing::Pending, deadline);
                return Ok(());
            }
            Credential::Invalid(why) => return Err(unauthorized(Some("invalid_request"), why)),
            Credential::Query(_) if !s.query_token => {
                let why = "tokens in the query are not accepted (see --auth-query-token)";
                return Err(unauthorized(Some("invalid_request"), why));
            }
            Credential::Bearer(t) => std::borrow::Cow::Borrowed(t),
            Credential::Query(t) => t,
        };
        match self.check(conns, &token) {
            Ok(v) if v.topic().is_some() => Err(unauthorized(
                Some("invalid_token"),
                "a subscription token is not a connection token",
            )),
            Ok(v) => {
                self.start(conns, key, Standing::User(v), NEVER);
                Ok(())
            }
            Err(r) => Err(unauthorized(Some("invalid_token"), r.reason())),
        }
    }

    /// Gives the connection its first session (the upgrade arms its deadline from it);
    /// `deadline` is a pending connection's connect deadline.
    fn start(&mut self, conns: &mut Conns, key: usize, standing: Standing, deadline: u32) {
        conns.standing_changed(None, Some(standing.kind()));
        let mut session = Session::new(standing, deadline);
        if conns.cfg.rate.on() {
            session.set_rate(Buckets::full(&Rates::of(&conns.cfg.rate), conns.now_ms));
        }
        conns.slab[key].session = Some(Box::new(session));
    }

    /// `{"op":"connect"}` from a pending connection: with a token, it becomes that user or
    /// is closed with 4001 naming the token's fault; without, it becomes anonymous if the
    /// anonymous flags grant anything, and is closed with 4001 otherwise.
    pub(super) fn connect(
        &mut self,
        conns: &mut Conns,
        key: usize,
        id: Option<Raw<'_>>,
        token: Option<&str>,
    ) {
        let Some(auth) = self.auth.clone() else {
            return;
        };
        let standing = match token {
            None if anonymous_grants_anything(&auth) => Standing::Anonymous,
            None => {
                bump(&conns.stats.auth_connects_refused, 1);
                let why = "a token is required (no anonymous access is configured)";
                return conns.close_with(key, CloseReason::Unauthorized(why));
            }
            Some(t) => match self.check(conns, t) {
                Ok(v) if v.topic().is_some() => {
                    bump(&conns.stats.auth_connects_refused, 1);
                    let why = "a subscription token is not a connection token";
                    return conns.close_with(key, CloseReason::Unauthorized(why));
                }
                Ok(v) => Standing::User(v),
                Err(r) => {
                    bump(&conns.stats.auth_connects_refused, 1);
                    log::debug!(
                        "worker {}: conn {key} connect refused: {}",
                        conns.index,
                        r.reason()
                    );
                    return conns.close_with(key, CloseReason::Unauthorized(r.reason()));
                }
            },
        };
        let (lapses, user, expires_in) = match &standing {
            Standing::User(v) => (
                self.lapses(conns, v),
                Some(v.sub().to_owned()),
                v.exp().saturating_sub(conns.unix_now),
            ),
            _ => (NEVER, None, 0),
        };
        let session = conns.slab[key]
            .session
            .as_mut()
            .expect("a pending connection has a session");
        let after = standing.kind();
        let before = session.set(standing);
        conns.standing_changed(Some(before), Some(after));
        // The connect deadline that was armed may be earlier: the sweep finds nothing due
        // then and re-arms from the session.
        conns.arm(key, lapses);
        let mut out = Vec::with_capacity(REPLY_CAPACITY);
        protocol::connected(&mut out, id, user.as_deref(), expires_in);
        send(conns, key, &out);
    }

    /// `{"op":"refresh","token":..}` from a user: the same user's new token replaces the old
    /// one (its grant and expiry with it); another user's is refused, and so is a token that
    /// fails verification; either way the connection stays open until its own expiry.
    pub(super) fn refresh(
        &mut self,
        conns: &mut Conns,
        key: usize,
        id: Option<Raw<'_>>,
        token: &str,
    ) {
        let mut out = Vec::with_capacity(REPLY_CAPACITY);
        let v = match self.check(conns, token) {
            Ok(v) => v,
            Err(r) => return deny(conns, key, &mut out, id, Denial::BadToken, r.reason()),
        };
        let current = conns.slab[key]
            .session
            .as_ref()
            .and_then(|s| s.user().cloned());
        let Some(current) = current else {
            return deny(
                conns,
                key,
                &mut out,
                id,
                Denial::RefreshAnonymous,
                "no token to refresh",
            );
        };
        if v.topic().is_some() {
            let why = "a subscription token is not a connection token";
            return deny(conns, key, &mut out, id, Denial::BadToken, why);
        }
        if v.sub() != current.sub() {
            let why = "the token is another user's";
            return deny(conns, key, &mut out, id, Denial::RefreshOtherUser, why);
        }
        let lapses = self.lapses(conns, &v);
        let expires_in = v.exp().saturating_sub(conns.unix_now);
        let session = conns.slab[key].session.as_mut().expect("checked above");
        session.set(Standing::User(v));
        bump(&conns.stats.auth_refreshes, 1);
        conns.arm(key, lapses);
        protocol::renewed(&mut out, id, expires_in);
        send(conns, key, &out);
    }

    /// A subscribe outside the grant with a subscription token: the token must name this
    /// topic and this user; then the subscription holds until the token expires (plus the
    /// leeway), and a new token for the same topic renews it.
    pub(super) fn subscribe_with_token(
        &mut self,
        conns: &mut Conns,
        key: usize,
        id: Option<Raw<'_>>,
        topic: &str,
        token: &str,
        history: Option<HistoryTopic<'_, '_>>,
    ) {
        let mut out = Vec::with_capacity(REPLY_CAPACITY);
        let v = match self.check(conns, token) {
            Ok(v) => v,
            Err(r) => return deny(conns, key, &mut out, id, Denial::BadToken, r.reason()),
        };
        let user = conns.slab[key]
            .session
            .as_ref()
            .and_then(|s| s.user().cloned());
        let fits = user.is_some_and(|u| u.sub() == v.sub()) && v.topic() == Some(topic);
        if !fits {
            let why = "the subscription token is for another topic or user";
            return deny(conns, key, &mut out, id, Denial::SubscriptionToken, why);
        }
        let until = self.lapses(conns, &v);
        if let Some((h, bus, rule, recover)) = history {
            // The topic keeps history: its owner's answer subscribes the connection and
            // replies (with the epoch and offset); the token's grant holds from now on.
            if !conns.slab[key].machine.is_open() {
                return;
            }
            let name = conns.topics.name(topic).unwrap_or_else(|| Arc::from(topic));
            if let Some(s) = conns.slab[key].session.as_mut() {
                s.grant_topic(name, until);
            }
            conns.arm(key, until);
            if !h.subscribe(conns, bus, key, topic, rule, recover, id) {
                super::effects::too_many_waiting(conns, key, id, &mut out);
            }
            return;
        }
        let Some(name) = conns.subscribe(key, topic) else {
            return; // closing
        };
        if let Some(s) = conns.slab[key].session.as_mut() {
            s.grant_topic(name, until);
        }
        conns.arm(key, until);
        protocol::renewed(&mut out, id, v.exp().saturating_sub(conns.unix_now));
        send(conns, key, &out);
    }
}

/// A subscription token's topic that keeps history: the worker's history, its bus, the
/// topic's rule, and the subscribe's `recover`.
pub(super) type HistoryTopic<'h, 'r> = (
    &'h mut super::history::History,
    &'h crate::broadcast::Port,
    u16,
    Option<crate::protocol::Recover<'r>>,
);

/// Whether the anonymous flags grant anything: without, a tokenless `connect` could only
/// hold a connection open, and is refused.
fn anonymous_grants_anything(auth: &Auth) -> bool {
    let s = auth.settings();
    !s.anonymous_subscribe.is_empty() || !s.anonymous_publish.is_empty()
}

/// An upgrade refused for its token (RFC 6750 §3): `error` is the Bearer error code, absent
/// when the request carried no token at all. `invalid_request` (a token that cannot be used
/// the way it came: another scheme, given twice, in a query that is not accepted) is a 400,
/// as §3.1 says; a token that fails verification, or none, a 401.
fn unauthorized(error: Option<&str>, why: &str) -> Refused {
    let challenge = match error {
        Some(e) => {
            format!("WWW-Authenticate: Bearer error=\"{e}\", error_description=\"{why}\"\r\n")
        }
        None => "WWW-Authenticate: Bearer\r\n".to_owned(),
    };
    let (status, phrase) = match error {
        Some("invalid_request") => (400, "Bad Request"),
        _ => (401, "Unauthorized"),
    };
    Refused {
        status,
        response: handshake::http_response(status, phrase, &challenge, why),
    }
}

/// An upgrade refused for its token: the HTTP status and the whole response to send.
pub(super) struct Refused {
    pub(super) status: u16,
    pub(super) response: Vec<u8>,
}

fn deny(
    conns: &mut Conns,
    key: usize,
    out: &mut Vec<u8>,
    id: Option<Raw<'_>>,
    why: Denial,
    msg: &str,
) {
    handler::deny(out, id, why, msg);
    bump(&conns.stats.denials_by[why.index()], 1);
    send(conns, key, out);
}

fn send(conns: &mut Conns, key: usize, json: &[u8]) {
    bump(&conns.stats.messages_out, 1);
    conns.send_frame(key, Kind::Text, json);
}
