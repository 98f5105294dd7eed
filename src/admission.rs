//! Connection limits: the global cap and the per-IP cap, checked by the acceptor and
//! released by workers when connections end.
//!
//! The acceptor alone decides admission, so the per-IP table is a plain map it owns. Workers
//! report closed connections' addresses over a channel that the acceptor drains before each
//! decision; the global count is one atomic shared by all.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

use crossbeam_channel::{Receiver, Sender};

/// Why a connection was refused at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `--max-connections` reached: HTTP 503.
    Full,
    /// `--max-connections-per-ip` reached for this address: HTTP 429.
    PerIp,
    /// The server is shutting down: HTTP 503.
    Draining,
    /// Resident memory is over `--max-memory`: HTTP 503.
    Memory,
    /// `accept` ran out of descriptors; answered through the spare one: HTTP 503.
    Descriptors,
}

/// The part every thread shares.
#[derive(Debug)]
pub struct Shared {
    open: AtomicUsize,
    max_total: usize,
    /// 0 = no per-IP limit (then no addresses are reported back at all).
    max_per_ip: usize,
    released: Sender<IpAddr>,
    pub refused_full: AtomicU64,
    pub refused_per_ip: AtomicU64,
    pub refused_memory: AtomicU64,
    pub refused_descriptors: AtomicU64,
}

/// The acceptor's side: the per-IP table.
#[derive(Debug)]
pub struct Gate {
    per_ip: HashMap<IpAddr, u32>,
    released: Receiver<IpAddr>,
}

pub fn new(max_total: usize, max_per_ip: usize) -> (Shared, Gate) {
    let (tx, rx) = crossbeam_channel::unbounded();
    (
        Shared {
            open: AtomicUsize::new(0),
            max_total,
            max_per_ip,
            released: tx,
            refused_full: AtomicU64::new(0),
            refused_per_ip: AtomicU64::new(0),
            refused_memory: AtomicU64::new(0),
            refused_descriptors: AtomicU64::new(0),
        },
        Gate {
            per_ip: HashMap::new(),
            released: rx,
        },
    )
}

impl Shared {
    /// Called by a worker when a connection it was handed ends, whatever its state.
    pub fn release(&self, ip: IpAddr) {
        self.open.fetch_sub(1, Relaxed);
        if self.max_per_ip > 0 {
            let _ = self.released.send(ip);
        }
    }

    pub fn open(&self) -> usize {
        self.open.load(Relaxed)
    }

    /// The effective global cap.
    pub fn max_total(&self) -> usize {
        self.max_total
    }
}

impl Gate {
    /// Admits a new connection from `ip`, or says why not. An admitted connection must be
    /// released exactly once.
    pub fn admit(&mut self, shared: &Shared, ip: IpAddr) -> Result<(), Refusal> {
        while let Ok(gone) = self.released.try_recv() {
            if let Some(n) = self.per_ip.get_mut(&gone) {
                *n -= 1;
                if *n == 0 {
                    self.per_ip.remove(&gone);
                }
            }
        }
        if shared.open.load(Relaxed) >= shared.max_total {
            shared.refused_full.fetch_add(1, Relaxed);
            return Err(Refusal::Full);
        }
        if shared.max_per_ip > 0 {
            let n = self.per_ip.entry(ip).or_insert(0);
            if *n as usize >= shared.max_per_ip {
                shared.refused_per_ip.fetch_add(1, Relaxed);
                return Err(Refusal::PerIp);
            }
            *n += 1;
        }
        shared.open.fetch_add(1, Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_and_per_ip_limits_and_release() {
        let (shared, mut gate) = new(3, 2);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        assert_eq!(gate.admit(&shared, a), Ok(()));
        assert_eq!(gate.admit(&shared, a), Ok(()));
        assert_eq!(gate.admit(&shared, a), Err(Refusal::PerIp));
        assert_eq!(gate.admit(&shared, b), Ok(()));
        assert_eq!(gate.admit(&shared, b), Err(Refusal::Full));
        shared.release(a);
        assert_eq!(shared.open(), 2);
        assert_eq!(
            gate.admit(&shared, a),
            Ok(()),
            "a released slot is reusable"
        );
        assert_eq!(shared.refused_full.load(Relaxed), 1);
        assert_eq!(shared.refused_per_ip.load(Relaxed), 1);
    }
}
