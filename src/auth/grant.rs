//! What a connection may do: the topics it may subscribe to and publish to, and whether it may
//! broadcast, as a token's `corecast` claim or the anonymous flags grant them. Compiled once
//! and shared (`Arc`) by every connection that holds the same grant; checked once per
//! subscribe and once per publish, on the connection's worker, with no allocation.
//!
//! Patterns are topic names split on `.`, as NATS subjects are:
//!
//! * a segment `*` matches exactly one segment, `>` (last only) one or more;
//! * `{sub}` inside a segment stands for the token's `sub`, so that one token template serves
//!   every user (`user.{sub}`, `inbox-{sub}.>`);
//! * wildcards match only non-empty segments (`chat.*` allows `chat.x`, not `chat.` nor
//!   `chat.x.y`); a `*` or `>` that is only part of a segment is an ordinary character.
//!
//! A `sub` that is empty or holds `.`, `*` or `>` would change the shape of a pattern that
//! names it (`user.{sub}` with the sub `a.>` would read as `user.a.>`), so a pattern that
//! names `{sub}` matches nothing for such a user: a grant can narrow through odd input,
//! never widen. Substitution happens while matching, never by rewriting the pattern, so a
//! `sub` is never read as pattern syntax at all.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use serde::Deserialize;

/// Patterns one grant may list for subscribe, and as many for publish: each subscribe and
/// publish tries them all, so this bounds the CPU a token can make a request cost.
pub const MAX_PATTERNS: usize = 32;

/// Longest pattern, in bytes. Topic names are at most 256 bytes (`protocol::MAX_TOPIC_LEN`);
/// a pattern with `{sub}` in it may be longer than what it matches, but not by much.
pub const MAX_PATTERN_LEN: usize = 512;

/// Distinct grants kept for sharing. Past this, dead entries are swept; if the table is still
/// full, a new grant is compiled for its connection alone (correct, only not shared).
const INTERNED_MAX: usize = 4096;

/// Why a pattern or a grant is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    #[error("pattern {0:?}: empty segment")]
    EmptySegment(String),
    #[error("pattern {0:?}: '>' may only be the last segment")]
    RestNotLast(String),
    #[error("pattern {0:?}: longer than {MAX_PATTERN_LEN} bytes")]
    TooLong(String),
    #[error("pattern {0:?}: control characters")]
    Control(String),
    #[error("more than {MAX_PATTERNS} {0} patterns")]
    TooMany(&'static str),
    #[error("\"corecast\" claim: {0}")]
    Claim(String),
    #[error("pattern {0:?}: {{sub}} has no meaning here (no token, no user)")]
    SubWithoutUser(String),
}

/// One segment of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    /// Exactly this text.
    Lit(Box<str>),
    /// `*`: any one non-empty segment.
    One,
    /// `>`: one or more non-empty segments, to the end.
    Rest,
    /// Text with `{sub}` in it: the pieces in order, `None` standing for the user.
    Tmpl(Box<[Option<Box<str>>]>),
}

/// A compiled topic pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    segs: Box<[Seg]>,
    /// Some segment names `{sub}`.
    names_sub: bool,
}

const SUB: &str = "{sub}";

impl Pattern {
    /// Compiles `text`; see the module doc for the syntax.
    pub fn parse(text: &str) -> Result<Pattern, GrantError> {
        let err = |f: fn(String) -> GrantError| Err(f(text.to_owned()));
        if text.len() > MAX_PATTERN_LEN {
            return err(GrantError::TooLong);
        }
        if text.chars().any(char::is_control) {
            return err(GrantError::Control);
        }
        let parts: Vec<&str> = text.split('.').collect();
        let mut segs = Vec::with_capacity(parts.len());
        let mut names_sub = false;
        for (i, part) in parts.iter().enumerate() {
            let seg = match *part {
                "" => return err(GrantError::EmptySegment),
                "*" => Seg::One,
                ">" if i + 1 == parts.len() => Seg::Rest,
                ">" => return err(GrantError::RestNotLast),
                p if p.contains(SUB) => {
                    names_sub = true;
                    let mut pieces = Vec::new();
                    let mut rest = p;
                    while let Some(at) = rest.find(SUB) {
                        if at > 0 {
                            pieces.push(Some(rest[..at].into()));
                        }
                        pieces.push(None);
                        rest = &rest[at + SUB.len()..];
                    }
                    if !rest.is_empty() {
                        pieces.push(Some(rest.into()));
                    }
                    Seg::Tmpl(pieces.into())
                }
                p => Seg::Lit(p.into()),
            };
            segs.push(seg);
        }
        Ok(Pattern {
            segs: segs.into(),
            names_sub,
        })
    }

    /// Whether `topic` matches, `{sub}` standing for `sub` (see the module doc for a `sub`
    /// that could change the pattern's shape).
    pub fn matches(&self, topic: &str, sub: &str) -> bool {
        if self.names_sub && !usable_sub(sub) {
            return false;
        }
        // Byte offsets, not `str::split`: `.` is ASCII, so every cut is a char boundary, and
        // this runs once per publish (a char searcher and a library memcmp per segment were
        // a few percent of a small publish's cost).
        let t = topic.as_bytes();
        let mut at = 0;
        for seg in self.segs.iter() {
            if at > t.len() {
                return false; // the topic is shorter than the pattern
            }
            let end = t[at..]
                .iter()
                .position(|&b| b == b'.')
                .map_or(t.len(), |p| at + p);
            let ok = match seg {
                Seg::Lit(l) => same(l.as_bytes(), &t[at..end]),
                Seg::One => end > at,
                // One or more non-empty segments: no empty one first, last or between.
                Seg::Rest => {
                    let rest = &t[at..];
                    return !rest.is_empty()
                        && rest[0] != b'.'
                        && rest[rest.len() - 1] != b'.'
                        && !rest.windows(2).any(|w| w == b"..");
                }
                Seg::Tmpl(pieces) => template_matches(pieces, &topic[at..end], sub),
            };
            if !ok {
                return false;
            }
            at = end + 1;
        }
        at > t.len()
    }
}

/// Byte equality of two short strings, inline (a segment is a few bytes: a call to the
/// library's memcmp costs more than the comparison).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

/// A `sub` that can stand in a pattern without changing its shape.
fn usable_sub(sub: &str) -> bool {
    !sub.is_empty() && !sub.bytes().any(|b| matches!(b, b'.' | b'*' | b'>'))
}

fn template_matches(pieces: &[Option<Box<str>>], mut part: &str, sub: &str) -> bool {
    for piece in pieces {
        let want = piece.as_deref().unwrap_or(sub);
        match part.strip_prefix(want) {
            Some(rest) => part = rest,
            None => return false,
        }
    }
    part.is_empty()
}

/// The `corecast` claim as a token carries it. Members it does not know are ignored (a newer
/// server's additions must not lock older ones out); what is absent grants nothing.
#[derive(Debug, Default, Clone, PartialEq, Eq, Hash, Deserialize)]
pub struct Spec {
    #[serde(default)]
    pub subscribe: Vec<String>,
    #[serde(default)]
    pub publish: Vec<String>,
    #[serde(default)]
    pub broadcast: bool,
}

/// What a connection may do.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Grant {
    subscribe: Box<[Pattern]>,
    publish: Box<[Pattern]>,
    broadcast: bool,
}

impl Grant {
    /// Compiles a claim's patterns.
    pub fn compile(spec: &Spec) -> Result<Grant, GrantError> {
        Ok(Grant {
            subscribe: patterns(&spec.subscribe, "subscribe")?,
            publish: patterns(&spec.publish, "publish")?,
            broadcast: spec.broadcast,
        })
    }

    /// The grant of connections without a token (`--anonymous-subscribe`,
    /// `--anonymous-publish`): never broadcast, and `{sub}` is refused, as there is no user.
    pub fn anonymous(subscribe: &[String], publish: &[String]) -> Result<Grant, GrantError> {
        let g = Grant::compile(&Spec {
            subscribe: subscribe.to_vec(),
            publish: publish.to_vec(),
            broadcast: false,
        })?;
        if let Some(p) = subscribe.iter().chain(publish).find(|p| p.contains(SUB)) {
            return Err(GrantError::SubWithoutUser(p.clone()));
        }
        Ok(g)
    }

    /// Reads and compiles a `corecast` claim (absent: nothing is granted).
    pub fn from_claim(claim: Option<&serde_json::Value>) -> Result<Grant, GrantError> {
        match claim {
            None => Ok(Grant::default()),
            Some(v) => Grant::compile(&spec_of(v)?),
        }
    }

    pub fn may_subscribe(&self, topic: &str, sub: &str) -> bool {
        self.subscribe.iter().any(|p| p.matches(topic, sub))
    }

    pub fn may_publish(&self, topic: &str, sub: &str) -> bool {
        self.publish.iter().any(|p| p.matches(topic, sub))
    }

    pub fn may_broadcast(&self) -> bool {
        self.broadcast
    }
}

fn patterns(list: &[String], what: &'static str) -> Result<Box<[Pattern]>, GrantError> {
    if list.len() > MAX_PATTERNS {
        return Err(GrantError::TooMany(what));
    }
    list.iter().map(|p| Pattern::parse(p)).collect()
}

/// The claim's value as a [`Spec`].
pub fn spec_of(v: &serde_json::Value) -> Result<Spec, GrantError> {
    Spec::deserialize(v).map_err(|e| GrantError::Claim(e.to_string()))
}

/// Compiled grants, shared by every connection whose token carries the same claim (20,000
/// users of one token template hold one copy). Consulted when a token is verified, never per
/// message; the lock is held for one map operation.
#[derive(Debug, Default)]
pub struct Interner {
    map: Mutex<HashMap<Spec, Weak<Grant>>>,
}

impl Interner {
    /// The shared compiled grant for `spec`, compiling it if no live connection holds it.
    pub fn intern(&self, spec: Spec) -> Result<Arc<Grant>, GrantError> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(g) = map.get(&spec).and_then(Weak::upgrade) {
            return Ok(g);
        }
        let grant = Arc::new(Grant::compile(&spec)?);
        if map.len() >= INTERNED_MAX {
            map.retain(|_, w| w.strong_count() > 0);
        }
        if map.len() < INTERNED_MAX {
            map.insert(spec, Arc::downgrade(&grant));
        }
        Ok(grant)
    }

    /// Grants in the table (some perhaps no longer held).
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The process's interner.
pub fn interner() -> &'static Interner {
    static INTERNER: OnceLock<Interner> = OnceLock::new();
    INTERNER.get_or_init(Interner::default)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Pattern {
        Pattern::parse(s).unwrap()
    }

    #[test]
    fn one_segment_wildcard_matches_exactly_one_non_empty_segment() {
        let chat = p("chat.*");
        assert!(chat.matches("chat.x", "u"));
        assert!(
            chat.matches("chat.*", "u"),
            "a literal '*' topic is one segment"
        );
        for no in ["chat", "chat.x.y", "chat.", "chatx", "other.x", "", ".x"] {
            assert!(!chat.matches(no, "u"), "{no}");
        }
        assert!(p("*").matches("a", "u"));
        assert!(!p("*").matches("a.b", "u"));
        assert!(p("a.*.c").matches("a.b.c", "u"));
        assert!(!p("a.*.c").matches("a..c", "u"));
    }

    #[test]
    fn rest_wildcard_matches_one_or_more_segments_to_the_end() {
        let feed = p("feed.>");
        assert!(feed.matches("feed.a", "u"));
        assert!(feed.matches("feed.a.b", "u"));
        for no in ["feed", "feed.", "feed.a.", "feed..a", "feedx.a", "x.feed.a"] {
            assert!(!feed.matches(no, "u"), "{no}");
        }
        assert!(p(">").matches("anything.at.all", "u"));
        assert!(!p(">").matches("", "u"));
    }

    #[test]
    fn literals_match_exactly() {
        let a = p("news.sport");
        assert!(a.matches("news.sport", "u"));
        for no in [
            "news",
            "news.sport.x",
            "news.Sport",
            "news.sports",
            "news.spor",
        ] {
            assert!(!a.matches(no, "u"), "{no}");
        }
        // Wildcard characters inside a segment are plain characters.
        let star = p("a*b.c>");
        assert!(star.matches("a*b.c>", "u"));
        assert!(!star.matches("axb.c>", "u"));
    }

    #[test]
    fn sub_stands_for_the_user() {
        let mine = p("user.{sub}");
        assert!(mine.matches("user.alice", "alice"));
        assert!(!mine.matches("user.bob", "alice"));
        assert!(!mine.matches("user.alice.x", "alice"));
        let inbox = p("inbox-{sub}-box.>");
        assert!(inbox.matches("inbox-alice-box.a.b", "alice"));
        assert!(!inbox.matches("inbox-alice-boxx.a", "alice"));
        assert!(!inbox.matches("inbox-alic-box.a", "alice"));
        let twice = p("{sub}.{sub}{sub}");
        assert!(twice.matches("ab.abab", "ab"));
        assert!(!twice.matches("ab.ab", "ab"));
    }

    #[test]
    fn a_sub_with_pattern_characters_never_widens_a_grant() {
        let mine = p("user.{sub}");
        // With a rewritten pattern these would read as `user.*`, `user.>`, `user.a.b`.
        for (sub, topic) in [
            ("*", "user.x"),
            ("*", "user.*"),
            (">", "user.x.y"),
            (">", "user.>"),
            ("a.b", "user.a.b"),
            ("a.*", "user.a.x"),
            ("", "user."),
            ("", "user"),
        ] {
            assert!(!mine.matches(topic, sub), "sub {sub:?} reached {topic:?}");
        }
        // A pattern that does not name the user is unaffected by it.
        assert!(p("public.*").matches("public.x", "a.b"));
        // Odd but harmless users still work.
        assert!(mine.matches("user.{sub}", "{sub}"));
        assert!(mine.matches("user.a-b_c@d", "a-b_c@d"));
    }

    #[test]
    fn malformed_patterns_are_refused() {
        for bad in ["", "a..b", ".a", "a.", "a.>.b", ">.a", "a.\nb"] {
            assert!(Pattern::parse(bad).is_err(), "{bad:?}");
        }
        assert!(matches!(
            Pattern::parse(&"a".repeat(MAX_PATTERN_LEN + 1)),
            Err(GrantError::TooLong(_))
        ));
        let many = Spec {
            subscribe: (0..=MAX_PATTERNS).map(|i| format!("t{i}")).collect(),
            ..Spec::default()
        };
        assert_eq!(Grant::compile(&many), Err(GrantError::TooMany("subscribe")));
    }

    #[test]
    fn a_claim_grants_what_it_lists_and_nothing_else() {
        let claim = serde_json::json!({
            "subscribe": ["chat.*", "user.{sub}"],
            "publish": ["chat.room1"],
            "future_member": 1
        });
        let g = Grant::from_claim(Some(&claim)).unwrap();
        assert!(g.may_subscribe("chat.room2", "al"));
        assert!(g.may_subscribe("user.al", "al"));
        assert!(!g.may_subscribe("user.bo", "al"));
        assert!(g.may_publish("chat.room1", "al"));
        assert!(!g.may_publish("chat.room2", "al"));
        assert!(!g.may_broadcast());
        let none = Grant::from_claim(None).unwrap();
        assert!(!none.may_subscribe("a", "al") && !none.may_publish("a", "al"));
        for bad in [
            serde_json::json!({"subscribe": "chat.*"}),
            serde_json::json!({"broadcast": "yes"}),
            serde_json::json!(["chat.*"]),
            serde_json::json!({"publish": ["a..b"]}),
        ] {
            assert!(Grant::from_claim(Some(&bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn anonymous_grants_cannot_name_a_user() {
        let g = Grant::anonymous(&["public.>".into()], &["lobby".into()]).unwrap();
        assert!(g.may_subscribe("public.x", ""));
        assert!(g.may_publish("lobby", ""));
        assert!(!g.may_broadcast());
        assert!(matches!(
            Grant::anonymous(&["user.{sub}".into()], &[]),
            Err(GrantError::SubWithoutUser(_))
        ));
    }

    #[test]
    fn the_same_claim_shares_one_compiled_grant_while_held() {
        let i = Interner::default();
        let spec = Spec {
            subscribe: vec!["user.{sub}".into(), "chat.*".into(), "feed.>".into()],
            ..Spec::default()
        };
        let a = i.intern(spec.clone()).unwrap();
        let b = i.intern(spec.clone()).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(i.len(), 1);
        let other = i
            .intern(Spec {
                broadcast: true,
                ..spec.clone()
            })
            .unwrap();
        assert!(!Arc::ptr_eq(&a, &other));
        drop((a, b));
        let c = i.intern(spec).unwrap();
        assert!(
            c.may_subscribe("feed.a.b", "x"),
            "compiled anew once none held it"
        );
        assert!(i
            .intern(Spec {
                publish: vec!["a..b".into()],
                ..Spec::default()
            })
            .is_err());
    }

    #[test]
    fn the_interner_stays_bounded() {
        let i = Interner::default();
        let mut held = Vec::new();
        for n in 0..INTERNED_MAX + 10 {
            let g = i
                .intern(Spec {
                    subscribe: vec![format!("t{n}")],
                    ..Spec::default()
                })
                .unwrap();
            held.push(g);
        }
        assert_eq!(
            i.len(),
            INTERNED_MAX,
            "full of live grants: the rest are not kept"
        );
        assert!(held
            .last()
            .unwrap()
            .may_subscribe(&format!("t{}", INTERNED_MAX + 9), ""));
        held.clear();
        i.intern(Spec::default()).unwrap();
        assert_eq!(i.len(), 1, "dead entries are swept when the table is full");
    }
}
