//! A byte budget shared between threads: a counter of bytes held that a reservation never
//! takes past its bound, not even for an instant (gauges and tests read it). Used for what
//! outside the workers may queue to them and for what workers queue to each other.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// Adds `want` to `held` if the sum stays within `bound`; false (and nothing added) if it
/// would not. Threads racing for the last room each see the other's reservation.
pub fn try_reserve(held: &AtomicUsize, want: usize, bound: usize) -> bool {
    held.fetch_update(Relaxed, Relaxed, |now| {
        now.checked_add(want).filter(|&after| after <= bound)
    })
    .is_ok()
}

/// Gives `n` bytes held back to the budget: one atomic operation, none for nothing.
pub fn give_back(held: &AtomicUsize, n: usize) {
    if n > 0 {
        held.fetch_sub(n, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_stop_at_the_bound() {
        let held = AtomicUsize::new(0);
        assert!(try_reserve(&held, 60, 100));
        assert!(!try_reserve(&held, 41, 100));
        assert_eq!(held.load(Relaxed), 60, "a refused reservation adds nothing");
        assert!(try_reserve(&held, 40, 100));
        assert!(!try_reserve(&held, 1, 100));
        assert!(!try_reserve(&held, usize::MAX, usize::MAX), "no overflow");
    }

    #[test]
    fn racing_threads_never_take_more_than_the_bound() {
        let held = AtomicUsize::new(0);
        let taken = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..10_000 {
                        if try_reserve(&held, 7, 1000) {
                            taken.fetch_add(7, Relaxed);
                            assert!(held.load(Relaxed) <= 1000);
                            held.fetch_sub(7, Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(held.load(Relaxed), 0);
        assert!(taken.load(Relaxed) > 0);
    }
}
