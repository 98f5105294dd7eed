//! Topic history: which topics keep it (`--history PATTERN:COUNT:TTL_SECS`), which worker
//! owns each such topic, and the owner's retained publications (`stream`). The design, and
//! why the merge of a recovery with the live stream is exact, is in docs/history.md. Rules
//! are read on every worker (cached per topic); a stream lives on its owner alone.

pub mod stream;

use std::hash::{Hash, Hasher};

use crate::auth::grant::{GrantError, Pattern};

/// Most `--history` rules: each publish to a topic not yet in a worker's cache tries them all.
pub const MAX_RULES: usize = 64;

/// Most publications one topic may retain, whatever a rule asks.
pub const MAX_COUNT: u32 = 1_000_000;

/// Longest time to live a rule may give, in seconds (30 days).
pub const MAX_TTL_SECS: u32 = 30 * 24 * 3600;

/// One `--history` rule: topics matching `pattern` keep their last `count` publications,
/// each for `ttl_secs` after it was published.
#[derive(Debug, Clone)]
pub struct Rule {
    pub text: String,
    pattern: Pattern,
    pub count: u32,
    pub ttl_secs: u32,
}

/// Why a `--history` value is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("--history {0:?}: expected PATTERN:COUNT:TTL_SECS")]
    Shape(String),
    #[error("--history {0:?}: COUNT must be a whole number from 1 to {MAX_COUNT}")]
    Count(String),
    #[error("--history {0:?}: TTL_SECS must be a whole number from 1 to {MAX_TTL_SECS}")]
    Ttl(String),
    #[error("--history {0:?}: {{sub}} names a user, and history belongs to a topic")]
    Sub(String),
    #[error("--history: {0}")]
    Pattern(#[from] GrantError),
    #[error("more than {MAX_RULES} --history rules")]
    TooMany,
}

impl Rule {
    /// Parses `PATTERN:COUNT:TTL_SECS`; the pattern is everything before the last two colons,
    /// so a topic name with a colon in it can still be named.
    pub fn parse(text: &str) -> Result<Rule, RuleError> {
        let shape = || RuleError::Shape(text.to_owned());
        let mut parts = text.rsplitn(3, ':');
        let ttl = parts.next().ok_or_else(shape)?;
        let count = parts.next().ok_or_else(shape)?;
        let pattern = parts.next().ok_or_else(shape)?;
        if pattern.is_empty() {
            return Err(shape());
        }
        if pattern.contains("{sub}") {
            return Err(RuleError::Sub(text.to_owned()));
        }
        let count = count
            .parse::<u32>()
            .ok()
            .filter(|c| (1..=MAX_COUNT).contains(c))
            .ok_or_else(|| RuleError::Count(text.to_owned()))?;
        let ttl_secs = ttl
            .parse::<u32>()
            .ok()
            .filter(|t| (1..=MAX_TTL_SECS).contains(t))
            .ok_or_else(|| RuleError::Ttl(text.to_owned()))?;
        Ok(Rule {
            text: text.to_owned(),
            pattern: Pattern::parse(pattern)?,
            count,
            ttl_secs,
        })
    }

    pub fn matches(&self, topic: &str) -> bool {
        self.pattern.matches(topic, "")
    }
}

/// The `--history` rules, in the order given: the first that matches a topic is its rule.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    rules: Vec<Rule>,
}

impl Rules {
    pub fn parse(texts: &[String]) -> Result<Rules, RuleError> {
        if texts.len() > MAX_RULES {
            return Err(RuleError::TooMany);
        }
        let rules = texts
            .iter()
            .map(|t| Rule::parse(t))
            .collect::<Result<_, _>>()?;
        Ok(Rules { rules })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The index of the first rule that matches `topic`.
    pub fn find(&self, topic: &str) -> Option<u16> {
        self.rules
            .iter()
            .position(|r| r.matches(topic))
            .map(|i| i as u16)
    }

    pub fn get(&self, index: u16) -> &Rule {
        &self.rules[index as usize]
    }
}

/// The worker that owns `topic`'s history among `workers`. Stable for the life of the
/// process (std's `DefaultHasher::new` has fixed keys); nodes need not agree, since with
/// `--redis` the offsets are assigned in Redis.
pub fn owner_of(topic: &str, workers: usize) -> usize {
    let mut h = std::hash::DefaultHasher::new();
    topic.hash(&mut h);
    (h.finish() % workers.max(1) as u64) as usize
}

/// A new epoch: 16 hex digits from the system's random generator, so that a stream that
/// lost its history (a restart, an expiry) never presents an epoch a client already holds.
pub fn new_epoch() -> Box<str> {
    let mut b = [0u8; 8];
    // aws-lc's generator does not fail once initialised; if it ever did, a time-based
    // value still differs from any earlier epoch of this process.
    if aws_lc_rs::rand::fill(&mut b).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        b = t.to_le_bytes();
    }
    let mut s = String::with_capacity(16);
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    s.into_boxed_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rule_is_pattern_count_and_ttl_with_the_pattern_before_the_last_two_colons() {
        let r = Rule::parse("chat.>:1000:300").unwrap();
        assert_eq!((r.count, r.ttl_secs), (1000, 300));
        assert!(r.matches("chat.a") && r.matches("chat.a.b") && !r.matches("chat"));
        let r = Rule::parse("room:1.*:10:60").unwrap();
        assert!(r.matches("room:1.x") && !r.matches("room:2.x"));
    }

    #[test]
    fn bad_rules_say_what_is_wrong() {
        for (text, want) in [
            ("chat.>", RuleError::Shape("chat.>".into())),
            ("chat.>:10", RuleError::Shape("chat.>:10".into())),
            (":10:10", RuleError::Shape(":10:10".into())),
            ("a:0:10", RuleError::Count("a:0:10".into())),
            ("a:x:10", RuleError::Count("a:x:10".into())),
            ("a:2000000:10", RuleError::Count("a:2000000:10".into())),
            ("a:10:0", RuleError::Ttl("a:10:0".into())),
            ("a:10:-1", RuleError::Ttl("a:10:-1".into())),
            (
                "user.{sub}:10:10",
                RuleError::Sub("user.{sub}:10:10".into()),
            ),
        ] {
            assert_eq!(Rule::parse(text).unwrap_err(), want, "{text}");
        }
        assert!(matches!(
            Rule::parse("a..b:1:1"),
            Err(RuleError::Pattern(GrantError::EmptySegment(_)))
        ));
        let many: Vec<String> = (0..=MAX_RULES).map(|i| format!("t{i}:1:1")).collect();
        assert_eq!(Rules::parse(&many).unwrap_err(), RuleError::TooMany);
    }

    #[test]
    fn the_first_matching_rule_wins() {
        let rules = Rules::parse(&["chat.vip.*:50:10".into(), "chat.>:10:60".into()]).unwrap();
        assert_eq!(rules.find("chat.vip.x"), Some(0));
        assert_eq!(rules.find("chat.room.x"), Some(1));
        assert_eq!(rules.find("news"), None);
        assert_eq!(rules.get(1).count, 10);
    }

    #[test]
    fn owners_are_stable_and_spread() {
        let mut seen = [0usize; 4];
        for i in 0..400 {
            let t = format!("topic-{i}");
            let o = owner_of(&t, 4);
            assert_eq!(o, owner_of(&t, 4));
            seen[o] += 1;
        }
        assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
        assert_eq!(owner_of("x", 1), 0);
    }

    #[test]
    fn epochs_differ() {
        let a = new_epoch();
        assert_eq!(a.len(), 16);
        assert_ne!(a, new_epoch());
    }
}
