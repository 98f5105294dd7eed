//! Whether a connection's input is read, held back, or resuming: one value per connection,
//! and the rules that move it, as pure functions (the worker carries them out).
//!
//! Input is held back, rather than buffered, when reading on would make the server hold more
//! for the client than its bounds allow: its own output is over `--max-outbound-bytes`
//! (a client that sends and never reads), or its publishes found the other workers' queues
//! full (a publisher faster than its subscribers' workers). While held, its socket is not
//! read, so TCP's window stops the client and nothing more is buffered for it.

/// Why input is held back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// The connection's own output is over its bound; its flush lets it go once the output
    /// is down to half.
    Output,
    /// Its publishes found the other workers' queues full; the worker's check of those queues
    /// lets it go once they are down to half (its own output draining does not).
    Queues,
    /// It sent faster than its rate limit (`--rate-limit-policy hold`); the deadline sweep
    /// lets it go once its buckets have refilled. No backpressure timeout: the wait is as
    /// long as the client's own excess.
    Rate,
}

/// A connection's input. One byte: it lives in the state machine's padding (see
/// `Machine::input`), and the tick a hold began is the connection's `last_rx`, which a hold
/// sets and nothing else moves while the connection is not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputState {
    /// Read as it arrives.
    Reading,
    /// Not read, for this reason, since the connection's `last_rx`. The backpressure timeout
    /// runs from then.
    Held(Hold),
    /// Just let go, or stopped by the per-turn work bound: the connection's input buffer may
    /// hold whole frames not handled yet, which are handled before anything more is read.
    Resuming,
}

impl InputState {
    pub fn is_held(&self) -> bool {
        matches!(self, InputState::Held(_))
    }

    /// After a flush: whether a hold for the connection's own output ends, the output (queue
    /// and transport) having drained to `out_cost` against a bound of `limit`. A hold for the
    /// other workers' queues does not end here.
    pub fn released_by_flush(&self, out_cost: usize, limit: usize) -> bool {
        matches!(self, InputState::Held(Hold::Output)) && out_cost <= limit / 2
    }

    /// The other workers' queues are down to half: what becomes of a connection held for
    /// them, whose output now costs `out_cost` against a bound of `limit`. `None`: let it
    /// go. A connection whose own output is over half its bound stays held, now for its
    /// output, from the same tick (its flush lets it go). Anything else is left as it is.
    pub fn after_queues_drained(&self, out_cost: usize, limit: usize) -> Option<InputState> {
        match *self {
            InputState::Held(Hold::Queues) if out_cost > limit / 2 => {
                Some(InputState::Held(Hold::Output))
            }
            InputState::Held(Hold::Queues) => None,
            other => Some(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 1000;

    #[test]
    fn a_hold_for_output_ends_at_half_the_bound_and_not_before() {
        let held = InputState::Held(Hold::Output);
        assert!(held.is_held());
        assert!(!held.released_by_flush(501, LIMIT));
        assert!(held.released_by_flush(500, LIMIT));
        assert!(held.released_by_flush(0, LIMIT));
    }

    #[test]
    fn a_hold_for_the_queues_is_not_ended_by_the_connections_own_flush() {
        let held = InputState::Held(Hold::Queues);
        assert!(!held.released_by_flush(0, LIMIT));
        for s in [InputState::Reading, InputState::Resuming] {
            assert!(!s.released_by_flush(0, LIMIT), "{s:?} is not held");
            assert!(!s.is_held());
        }
    }

    #[test]
    fn drained_queues_let_a_publisher_go_unless_its_own_output_is_over_half() {
        let held = InputState::Held(Hold::Queues);
        assert_eq!(held.after_queues_drained(500, LIMIT), None);
        assert_eq!(
            held.after_queues_drained(501, LIMIT),
            Some(InputState::Held(Hold::Output)),
            "still held, for its output (from the same tick: last_rx is not touched)"
        );
        let for_output = InputState::Held(Hold::Output);
        assert_eq!(for_output.after_queues_drained(0, LIMIT), Some(for_output));
        assert_eq!(
            InputState::Reading.after_queues_drained(0, LIMIT),
            Some(InputState::Reading)
        );
    }
}
