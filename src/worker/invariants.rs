//! What the rest of the worker relies on, checked at the end of every loop turn in builds
//! with debug assertions (CI's test run is one: see the `test-release` profile).

use std::collections::HashSet;
use std::sync::atomic::Ordering::Relaxed;

use super::Worker;

impl Worker {
    /// After the turn's flush: the output door holds nothing corked, staged or dirty, and
    /// its tally has reached the counters; every connection with unsent output waits for
    /// WRITABLE; no closed write side has output behind it; a held connection's hold is
    /// explained (its output over half its bound, or a publisher waiting for the queues);
    /// a connection below its bound with nothing held back is not left held; every byte
    /// budget and gauge equals the sum it stands for; only connections still open have bytes
    /// in the other workers' queues charged to them, each the sum of its runs there.
    /// O(connections + runs in flight) per turn.
    pub(super) fn check_invariants(&self) {
        let c = &self.conns;
        assert!(
            c.out.is_idle(),
            "the output door holds corked, staged or dirty output after the flush"
        );
        assert_eq!(
            c.out.tally(),
            Default::default(),
            "output changes not applied to the counters"
        );
        let held_publishers: HashSet<usize> = self.reader.held_publishers().collect();
        let (mut queued, mut outbound, mut inbound, mut held) = (0i64, 0i64, 0i64, 0i64);
        let mut tls = 0i64;
        for (key, conn) in c.slab.iter() {
            let out = &conn.out;
            let pending = out.has_queue() || conn.transport.has_pending();
            assert!(!out.is_dirty(), "conn {key} dirty after the flush");
            assert!(
                !out.has_staged(),
                "conn {key} has staged frames after the flush"
            );
            assert!(
                !out.wants_write() || pending,
                "conn {key} WRITABLE for nothing"
            );
            assert!(
                !pending || out.wants_write(),
                "conn {key} has output nobody will flush"
            );
            assert!(
                !out.is_shut() || !pending,
                "conn {key} shut its write side with output queued"
            );
            match conn.machine.input {
                crate::conn::InputState::Held(crate::conn::Hold::Queues) => assert!(
                    held_publishers.contains(&key),
                    "conn {key} held for the queues but not on the publishers' lists"
                ),
                crate::conn::InputState::Held(crate::conn::Hold::Rate) => {
                    assert!(conn.machine.is_open(), "conn {key} held while not open");
                    assert!(
                        conn.session.as_ref().is_some_and(|s| s.has_rate()),
                        "conn {key} held for its rate without rate buckets"
                    );
                }
                crate::conn::InputState::Held(_) => {
                    assert!(conn.machine.is_open(), "conn {key} held while not open");
                    let left = out.queue_cost() + conn.transport.cost();
                    assert!(
                        left > c.cfg.max_outbound_bytes / 2,
                        "conn {key} held for its output at {left} bytes, under half its bound"
                    );
                }
                _ => {}
            }
            if conn.is_held() {
                assert_ne!(
                    conn.deadline,
                    crate::conn::NEVER,
                    "conn {key} held without a deadline"
                );
            }
            tls += conn.transport.cost() as i64;
            queued += out.queued() as i64;
            outbound += out.queue_cost() as i64;
            inbound += conn.inbound_cost() as i64;
            held += conn.is_held() as i64;
        }
        for key in c.shares.check() {
            assert!(
                c.slab.contains(key),
                "conn {key} is gone but has bytes in flight charged to it"
            );
        }
        let s = &self.stats;
        assert_eq!(s.queued_bytes.load(Relaxed), queued, "queued-bytes gauge");
        assert_eq!(
            s.outbound_memory.load(Relaxed),
            outbound,
            "outbound-memory gauge"
        );
        assert_eq!(
            s.inbound_memory.load(Relaxed),
            inbound,
            "inbound-memory gauge"
        );
        assert_eq!(s.held.load(Relaxed), held, "held gauge");
        assert_eq!(s.tls_memory.load(Relaxed), tls, "TLS memory gauge");
        assert_eq!(s.open.load(Relaxed), c.slab.len() as i64, "open gauge");
        let upgraded = c.slab.iter().filter(|(_, c)| c.machine.upgraded()).count();
        assert_eq!(
            s.websockets.load(Relaxed),
            upgraded as i64,
            "websockets gauge"
        );
    }
}
