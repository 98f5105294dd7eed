//! A per-worker hashed timer wheel with one-second ticks. Runs on its worker only.
//!
//! Each connection has at most one entry. An entry names the connection by slab key and a
//! generation number, so a stale entry (the key was reused) is recognised and skipped.
//! Activity never touches the wheel: the connection records its own deadline, and an entry
//! that fires early is simply put back for the remaining time. So a busy connection costs one
//! wheel operation per timeout period, and a tick costs only the entries in its slot.

/// Slots in the wheel; deadlines further out than this just take several laps.
const SLOTS: usize = 64;

/// A slot (or the caller's due list) that grew past this many entries is freed once empty.
pub const SHRINK_ABOVE: usize = 256;

/// A scheduled check: which connection, and which incarnation of that slab key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub key: usize,
    pub generation: u32,
    /// The tick the entry was scheduled for; it may come out a lap early.
    pub at: u32,
}

#[derive(Debug)]
pub struct Wheel {
    slots: Vec<Vec<Entry>>,
    /// The last tick processed; entries are only ever added for later ticks.
    now: u64,
}

impl Wheel {
    pub fn new(now: u64) -> Self {
        Wheel {
            slots: (0..SLOTS).map(|_| Vec::new()).collect(),
            now,
        }
    }

    /// Schedules a check at tick `entry.at` (clamped to the next tick at the earliest).
    pub fn schedule(&mut self, entry: Entry) {
        let at = (entry.at as u64).max(self.now + 1);
        let lap = (at - self.now).min(SLOTS as u64);
        self.slots[((self.now + lap) % SLOTS as u64) as usize].push(entry);
    }

    /// Moves the wheel to tick `to` and appends every entry whose slot was passed to `due`.
    /// Entries scheduled more than a lap ahead come out early; the caller reschedules them.
    pub fn advance(&mut self, to: u64, due: &mut Vec<Entry>) {
        // After a long stall every slot is due once; no need to walk more than one lap.
        let from = self.now.max(to.saturating_sub(SLOTS as u64));
        for t in from + 1..=to {
            let slot = &mut self.slots[(t % SLOTS as u64) as usize];
            due.append(slot);
            // A burst of connections leaves a large slot behind; give that memory back.
            if slot.capacity() > SHRINK_ABOVE {
                *slot = Vec::new();
            }
        }
        self.now = self.now.max(to);
    }

    pub fn now(&self) -> u64 {
        self.now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(key: usize, at: u32) -> Entry {
        Entry {
            key,
            generation: 0,
            at,
        }
    }

    #[test]
    fn fires_at_the_tick_and_not_before() {
        let mut w = Wheel::new(100);
        w.schedule(e(1, 103));
        w.schedule(e(2, 101));
        let mut due = vec![];
        w.advance(101, &mut due);
        assert_eq!(due, [e(2, 101)]);
        due.clear();
        w.advance(102, &mut due);
        assert!(due.is_empty());
        w.advance(105, &mut due);
        assert_eq!(due, [e(1, 103)]);
    }

    #[test]
    fn far_deadlines_come_back_after_a_lap_and_stalls_are_caught_up() {
        let mut w = Wheel::new(0);
        w.schedule(e(7, 1000));
        let mut due = vec![];
        w.advance(SLOTS as u64 - 1, &mut due);
        assert!(due.is_empty());
        w.advance(SLOTS as u64, &mut due);
        assert_eq!(
            due,
            [e(7, 1000)],
            "comes out after one lap so the caller can re-check it"
        );
        due.clear();
        let at = w.now() as u32 + 3;
        w.schedule(e(8, at));
        w.advance(10_000, &mut due);
        assert_eq!(due, [e(8, at)]);
        w.schedule(e(9, 0));
        due.clear();
        w.advance(10_001, &mut due);
        assert_eq!(due, [e(9, 0)], "past deadlines fire on the next tick");
    }
}
