//! Debug builds check, at the end of every loop turn, what the rest of the worker relies on.

use std::sync::atomic::Ordering::Relaxed;

use super::Worker;

impl Worker {
    /// The dirty list matches the dirty flags, every connection with unsent output will be
    /// flushed or is waiting for WRITABLE, and the gauges equal the sums they stand for.
    pub(super) fn check_invariants(&self) {
        let (mut queued, mut outbound, mut inbound, mut held) = (0i64, 0i64, 0i64, 0i64);
        let mut tls = 0i64;
        for (key, c) in self.conns.iter() {
            let pending = !c.out.is_empty() || c.transport.has_pending();
            assert_eq!(c.dirty, self.dirty.contains(&key), "conn {key} dirty flag");
            assert_eq!(c.staged, 0, "conn {key} has staged frames after the flush");
            assert!(
                !c.write_interest || pending,
                "conn {key} WRITABLE for nothing"
            );
            assert!(
                !pending || c.write_interest || c.dirty,
                "conn {key} has output nobody will flush"
            );
            assert!(
                !c.shut || !pending,
                "conn {key} shut its write side with output queued"
            );
            tls += c.transport.cost() as i64;
            queued += c.out.len() as i64;
            outbound += c.out.cost() as i64;
            inbound += c.inbound_cost() as i64;
            held += c.is_held() as i64;
        }
        assert!(self.staged.is_empty(), "staged list not emptied");
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
        assert_eq!(s.open.load(Relaxed), self.conns.len() as i64, "open gauge");
        let upgraded = self.conns.iter().filter(|(_, c)| c.upgraded).count();
        assert_eq!(
            s.websockets.load(Relaxed),
            upgraded as i64,
            "websockets gauge"
        );
    }
}
