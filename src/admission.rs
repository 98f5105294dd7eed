//! Connection limits: the global cap and the per-IP cap, checked by the acceptor and
//! released by workers when connections end.
//!
//! The acceptor alone decides admission, so the per-IP table is a plain map it owns. Workers
//! report closed connections' addresses over a channel that the acceptor drains before each
//! decision; the global count is one atomic shared by all.
//!
//! Addresses travel as one-word [`Peer`] keys, so that a connection carries 8 bytes for its
//! address instead of an `IpAddr`'s 17.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::OnceLock;

use crossbeam_channel::{Receiver, Sender};

/// The address the per-IP limit counts a connection against, in one word: an IPv4 address
/// itself (an IPv4-mapped IPv6 one included), an IPv6 address as a 63-bit hash keyed per
/// process. The top bit tells the two apart, so an IPv6 key can only equal another IPv6
/// key, with a chance of 2^-63 per pair that an outsider cannot steer (the key is random).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Peer(u64);

impl Peer {
    pub fn of(ip: IpAddr) -> Peer {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Peer(u32::from(v4) as u64),
            IpAddr::V6(v6) => {
                static KEY: OnceLock<RandomState> = OnceLock::new();
                let h = KEY.get_or_init(RandomState::new).hash_one(v6.octets());
                Peer(h | 1 << 63)
            }
        }
    }
}

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
    released: Sender<Peer>,
    pub refused_full: AtomicU64,
    pub refused_per_ip: AtomicU64,
    pub refused_memory: AtomicU64,
    pub refused_descriptors: AtomicU64,
}

/// The acceptor's side: the per-IP table.
#[derive(Debug)]
pub struct Gate {
    per_ip: HashMap<Peer, u32>,
    released: Receiver<Peer>,
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
    pub fn release(&self, peer: Peer) {
        self.open.fetch_sub(1, Relaxed);
        if self.max_per_ip > 0 {
            let _ = self.released.send(peer);
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
    /// Admits a new connection from `peer`, or says why not. An admitted connection must be
    /// released exactly once.
    pub fn admit(&mut self, shared: &Shared, peer: Peer) -> Result<(), Refusal> {
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
            let n = self.per_ip.entry(peer).or_insert(0);
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
        let a = Peer::of("127.0.0.1".parse().unwrap());
        let b = Peer::of("127.0.0.2".parse().unwrap());
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

    #[test]
    fn every_address_is_its_own_peer_and_mapped_ipv4_is_ipv4() {
        let p = |s: &str| Peer::of(s.parse().unwrap());
        assert_eq!(p("2001:db8:1:2::1"), p("2001:db8:1:2::1"));
        assert_ne!(p("2001:db8:1:2::1"), p("2001:db8:1:2::2"));
        assert_ne!(p("fe80::1"), p("fe80::2"));
        assert_eq!(p("::ffff:10.0.0.1"), p("10.0.0.1"));
        assert_ne!(p("10.0.0.1"), p("10.0.0.2"));
        assert_ne!(p("::1"), p("0.0.0.1"));
        assert_ne!(p("::"), p("0.0.0.0"));
        let (shared, mut gate) = new(10, 1);
        assert_eq!(gate.admit(&shared, p("2001:db8::1")), Ok(()));
        assert_eq!(gate.admit(&shared, p("2001:db8::2")), Ok(()));
        assert_eq!(gate.admit(&shared, p("2001:db8::1")), Err(Refusal::PerIp));
    }
}
