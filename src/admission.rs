//! Connection limits: the global cap, the per-IP cap and the per-IP rate of new
//! connections, checked by the acceptor; the caps are released by workers when connections
//! end.
//!
//! The acceptor alone decides admission, so the per-IP tables are plain maps it owns. Workers
//! report closed connections' addresses over a channel that the acceptor drains before each
//! decision; the global count is one atomic shared by all.
//!
//! The rate is a token bucket per address ([`Buckets`]): a bucket holds `burst` tokens, gains
//! `per_second` of them a second, and each new connection takes one. It exists so that TLS
//! handshakes and token checks, which cost a worker far more than an accept, cannot be
//! bought at the acceptor's pace from one address.
//!
//! Addresses travel as one-word [`Peer`] keys, so that a connection carries 8 bytes for its
//! address instead of an `IpAddr`'s 17.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

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
    /// `--max-connection-rate-per-ip`: this address's bucket is empty: HTTP 429.
    Rate,
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
    pub refused_rate: AtomicU64,
    pub refused_memory: AtomicU64,
    pub refused_descriptors: AtomicU64,
    /// Connections admitted without a rate bucket: the table was at [`MAX_RATE_ADDRESSES`]
    /// with no full bucket to drop.
    pub rate_untracked: AtomicU64,
    /// Addresses in the rate table after the last admission decision (written by the
    /// acceptor alone, for the metrics).
    pub rate_addresses: AtomicUsize,
}

/// The acceptor's side: the per-IP tables.
#[derive(Debug)]
pub struct Gate {
    per_ip: HashMap<Peer, u32>,
    released: Receiver<Peer>,
    /// `None`: no rate limit.
    rate: Option<Buckets>,
}

pub fn new(max_total: usize, max_per_ip: usize, rate: Option<Rate>) -> (Shared, Gate) {
    let (tx, rx) = crossbeam_channel::unbounded();
    (
        Shared {
            open: AtomicUsize::new(0),
            max_total,
            max_per_ip,
            released: tx,
            refused_full: AtomicU64::new(0),
            refused_per_ip: AtomicU64::new(0),
            refused_rate: AtomicU64::new(0),
            refused_memory: AtomicU64::new(0),
            refused_descriptors: AtomicU64::new(0),
            rate_untracked: AtomicU64::new(0),
            rate_addresses: AtomicUsize::new(0),
        },
        Gate {
            per_ip: HashMap::new(),
            released: rx,
            rate: rate.map(|r| Buckets::new(r, MAX_RATE_ADDRESSES, Instant::now())),
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
    /// Admits a new connection from `peer` arriving at `now`, or says why not. An admitted
    /// connection must be released exactly once. Only an admitted connection takes a token:
    /// one refused for a cap costs its address nothing.
    pub fn admit(&mut self, shared: &Shared, peer: Peer, now: Instant) -> Result<(), Refusal> {
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
        if shared.max_per_ip > 0
            && self
                .per_ip
                .get(&peer)
                .is_some_and(|&n| n as usize >= shared.max_per_ip)
        {
            shared.refused_per_ip.fetch_add(1, Relaxed);
            return Err(Refusal::PerIp);
        }
        if let Some(buckets) = &mut self.rate {
            let took = buckets.take(peer, now);
            shared.rate_addresses.store(buckets.len(), Relaxed);
            match took {
                Take::Taken => {}
                Take::Untracked => {
                    shared.rate_untracked.fetch_add(1, Relaxed);
                }
                Take::Empty => {
                    shared.refused_rate.fetch_add(1, Relaxed);
                    return Err(Refusal::Rate);
                }
            }
        }
        if shared.max_per_ip > 0 {
            *self.per_ip.entry(peer).or_insert(0) += 1;
        }
        shared.open.fetch_add(1, Relaxed);
        Ok(())
    }
}

/// `--max-connection-rate-per-ip` and `--connection-rate-burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Tokens a bucket gains per second: the sustained rate of new connections from one
    /// address. At least 1.
    pub per_second: u32,
    /// Tokens a full bucket holds: how many connections one address may open at once after
    /// a quiet spell. At least 1.
    pub burst: u32,
}

/// Addresses the rate table holds at most. An entry is 16 bytes (a [`Peer`] and an instant)
/// in a hash table of at most 131,072 slots: about 2.1 MiB, whatever a client sprays. An
/// address only needs an entry while its bucket is not full, at most `burst / per_second`
/// seconds after its last connection; 65,536 of them at once is a flood from that many
/// addresses, against which a per-address limit is no defence anyway.
pub const MAX_RATE_ADDRESSES: usize = 65_536;

/// At the cap, full buckets are swept out at most this often: a sweep visits every entry,
/// and a flood that keeps the table at the cap must not make every accept pay for one.
pub const RATE_SWEEP_EVERY: Duration = Duration::from_millis(100);

/// What [`Buckets::take`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// A token was taken: admit.
    Taken,
    /// The bucket is empty: refuse, and take nothing.
    Empty,
    /// The table is at its cap and holds no full bucket to drop: admit without a bucket.
    /// The limit fails open for an address it has not seen, rather than locking every new
    /// address out while a flood fills the table; the addresses it tracks stay limited.
    Untracked,
}

/// A token bucket per address, the acceptor's own.
///
/// A bucket is kept as one instant, the one at which it will be full again (GCRA's
/// "theoretical arrival time"): at `now` it holds `burst - (full_at - now) / interval`
/// tokens, or `burst` once `full_at` has passed. A connection is admitted when a whole token
/// is there, `full_at - now <= (burst - 1) * interval`, and takes it by moving `full_at` to
/// `max(full_at, now) + interval`. A full bucket says nothing a missing one does not: such
/// entries are dropped when the table reaches its cap.
#[derive(Debug)]
pub struct Buckets {
    /// Per address, when its bucket is full again, in nanoseconds since `epoch`. A past
    /// instant means full, as does no entry.
    full_at: HashMap<Peer, u64>,
    /// Nanoseconds a bucket takes to gain one token: 1 s / `per_second`, at least 1.
    interval: u64,
    /// How far `full_at` may lie ahead of now with a whole token left:
    /// `(burst - 1) * interval`.
    tolerance: u64,
    /// Entries `full_at` holds at most.
    cap: usize,
    epoch: Instant,
    /// No sweep before this (nanoseconds since `epoch`).
    next_sweep: u64,
}

impl Buckets {
    pub fn new(rate: Rate, cap: usize, epoch: Instant) -> Buckets {
        let per_second = u64::from(rate.per_second.max(1));
        let interval = (1_000_000_000 / per_second).max(1);
        Buckets {
            full_at: HashMap::new(),
            interval,
            // At most (2^32 - 1) * 10^9 ns: far from overflowing.
            tolerance: u64::from(rate.burst.max(1) - 1) * interval,
            cap,
            epoch,
            next_sweep: 0,
        }
    }

    /// Takes a token from `peer`'s bucket at `now`, if it has one: one hash lookup, plus a
    /// sweep of the table when a new address finds it at its cap.
    pub fn take(&mut self, peer: Peer, now: Instant) -> Take {
        // 2^64 ns is 584 years of uptime.
        let t = now.saturating_duration_since(self.epoch).as_nanos() as u64;
        let len = self.full_at.len();
        match self.full_at.entry(peer) {
            Entry::Occupied(mut e) => {
                let from = (*e.get()).max(t);
                if from - t > self.tolerance {
                    return Take::Empty;
                }
                e.insert(from + self.interval);
                return Take::Taken;
            }
            // A new address: its bucket is full.
            Entry::Vacant(e) if len < self.cap => {
                e.insert(t + self.interval);
                return Take::Taken;
            }
            Entry::Vacant(_) => {}
        }
        self.sweep(t);
        if self.full_at.len() >= self.cap {
            return Take::Untracked;
        }
        self.full_at.insert(peer, t + self.interval);
        Take::Taken
    }

    /// Drops the full buckets, unless the last sweep was under [`RATE_SWEEP_EVERY`] ago.
    fn sweep(&mut self, t: u64) {
        if t < self.next_sweep {
            return;
        }
        self.full_at.retain(|_, full_at| *full_at > t);
        self.next_sweep = t + RATE_SWEEP_EVERY.as_nanos() as u64;
    }

    /// Addresses in the table, full buckets not yet swept included.
    pub fn len(&self) -> usize {
        self.full_at.len()
    }

    pub fn is_empty(&self) -> bool {
        self.full_at.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_and_per_ip_limits_and_release() {
        let (shared, mut gate) = new(3, 2, None);
        let a = Peer::of("127.0.0.1".parse().unwrap());
        let b = Peer::of("127.0.0.2".parse().unwrap());
        assert_eq!(gate.admit(&shared, a, Instant::now()), Ok(()));
        assert_eq!(gate.admit(&shared, a, Instant::now()), Ok(()));
        assert_eq!(gate.admit(&shared, a, Instant::now()), Err(Refusal::PerIp));
        assert_eq!(gate.admit(&shared, b, Instant::now()), Ok(()));
        assert_eq!(gate.admit(&shared, b, Instant::now()), Err(Refusal::Full));
        shared.release(a);
        assert_eq!(shared.open(), 2);
        assert_eq!(
            gate.admit(&shared, a, Instant::now()),
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
        let (shared, mut gate) = new(10, 1, None);
        assert_eq!(
            gate.admit(&shared, p("2001:db8::1"), Instant::now()),
            Ok(())
        );
        assert_eq!(
            gate.admit(&shared, p("2001:db8::2"), Instant::now()),
            Ok(())
        );
        assert_eq!(
            gate.admit(&shared, p("2001:db8::1"), Instant::now()),
            Err(Refusal::PerIp)
        );
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn peer(n: u32) -> Peer {
        Peer::of(IpAddr::from(n.to_be_bytes()))
    }

    fn buckets(per_second: u32, burst: u32, cap: usize) -> (Buckets, Instant) {
        let t0 = Instant::now();
        (Buckets::new(Rate { per_second, burst }, cap, t0), t0)
    }

    #[test]
    fn a_bucket_admits_its_burst_at_once_then_one_per_interval() {
        let (mut b, t0) = buckets(2, 3, 16);
        let a = peer(1);
        for _ in 0..3 {
            assert_eq!(b.take(a, t0), Take::Taken);
        }
        assert_eq!(b.take(a, t0), Take::Empty);
        assert_eq!(b.take(a, t0 + ms(499)), Take::Empty);
        // A token every 500 ms, one at a time.
        assert_eq!(b.take(a, t0 + ms(500)), Take::Taken);
        assert_eq!(b.take(a, t0 + ms(500)), Take::Empty);
        assert_eq!(b.take(a, t0 + ms(999)), Take::Empty);
        assert_eq!(b.take(a, t0 + ms(1000)), Take::Taken);
        assert_eq!(b.take(a, t0 + ms(1000)), Take::Empty);
        // Two intervals later, two tokens.
        assert_eq!(b.take(a, t0 + ms(2000)), Take::Taken);
        assert_eq!(b.take(a, t0 + ms(2000)), Take::Taken);
        assert_eq!(b.take(a, t0 + ms(2000)), Take::Empty);
    }

    #[test]
    fn a_quiet_bucket_refills_to_its_burst_and_no_further() {
        let (mut b, t0) = buckets(10, 4, 16);
        let a = peer(1);
        for _ in 0..4 {
            assert_eq!(b.take(a, t0), Take::Taken);
        }
        assert_eq!(b.take(a, t0), Take::Empty);
        // A minute of silence is worth 600 tokens at this rate; the bucket holds 4.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..4 {
            assert_eq!(b.take(a, later), Take::Taken);
        }
        assert_eq!(b.take(a, later), Take::Empty);
    }

    #[test]
    fn refused_attempts_take_nothing_and_addresses_are_apart() {
        let (mut b, t0) = buckets(1, 1, 16);
        let (a, c) = (peer(1), peer(2));
        assert_eq!(b.take(a, t0), Take::Taken);
        // Hammering an empty bucket does not push its refill back.
        for i in 1..1000 {
            assert_eq!(b.take(a, t0 + ms(i)), Take::Empty);
        }
        assert_eq!(b.take(c, t0 + ms(999)), Take::Taken, "another address");
        assert_eq!(b.take(a, t0 + ms(1000)), Take::Taken);
        // 1 s / 3 is rounded down to the nanosecond: three tokens a second, not two.
        let (mut b, t0) = buckets(3, 1, 16);
        assert_eq!(b.take(a, t0), Take::Taken);
        assert_eq!(
            b.take(a, t0 + Duration::from_nanos(333_333_332)),
            Take::Empty
        );
        assert_eq!(
            b.take(a, t0 + Duration::from_nanos(333_333_333)),
            Take::Taken
        );
    }

    #[test]
    fn at_the_cap_full_buckets_are_swept_and_new_addresses_go_untracked() {
        let (mut b, t0) = buckets(1, 2, 4);
        for n in 1..=4 {
            assert_eq!(b.take(peer(n), t0), Take::Taken);
        }
        assert_eq!(b.len(), 4);
        // Every bucket has a token out: none can be dropped, so the newcomer goes untracked
        // and the table stays at its cap.
        assert_eq!(b.take(peer(5), t0), Take::Untracked);
        assert_eq!(b.len(), 4);
        // The addresses in the table stay limited.
        assert_eq!(b.take(peer(1), t0), Take::Taken);
        assert_eq!(b.take(peer(1), t0), Take::Empty);
        // 1.5 s on, peers 2 to 4 are full again (and dropped); peer 1 has 1.5 tokens.
        let later = t0 + ms(1500);
        assert_eq!(b.take(peer(5), later), Take::Taken);
        assert_eq!(b.len(), 2);
        assert_eq!(b.take(peer(1), later), Take::Taken);
        assert_eq!(
            b.take(peer(1), later),
            Take::Empty,
            "peer 1 kept its bucket"
        );
        // A dropped address starts again with a full bucket.
        assert_eq!(b.take(peer(2), later), Take::Taken);
        assert_eq!(b.take(peer(2), later), Take::Taken);
        assert_eq!(b.take(peer(2), later), Take::Empty);
    }

    #[test]
    fn at_the_cap_a_sweep_happens_at_most_every_100_ms() {
        // A token every millisecond, burst 1: a bucket is full 1 ms after its last take.
        let (mut b, t0) = buckets(1000, 1, 2);
        assert_eq!(b.take(peer(1), t0), Take::Taken);
        assert_eq!(b.take(peer(2), t0), Take::Taken);
        assert_eq!(b.take(peer(3), t0), Take::Untracked, "swept, nothing full");
        // Both buckets are full by now, but the last sweep was 50 ms ago.
        assert_eq!(b.take(peer(3), t0 + ms(50)), Take::Untracked);
        assert_eq!(b.len(), 2);
        assert_eq!(b.take(peer(3), t0 + RATE_SWEEP_EVERY), Take::Taken);
        assert_eq!(b.len(), 1);
    }

    #[test]
    fn the_gate_takes_tokens_only_for_admitted_connections_and_counts_refusals() {
        let rate = Some(Rate {
            per_second: 1,
            burst: 2,
        });
        let (shared, mut gate) = new(100, 1, rate);
        let t0 = Instant::now();
        let (a, c) = (peer(1), peer(2));
        assert_eq!(gate.admit(&shared, a, t0), Ok(()));
        // At its per-IP cap: refused for that, and no token is taken.
        assert_eq!(gate.admit(&shared, a, t0), Err(Refusal::PerIp));
        shared.release(a);
        assert_eq!(gate.admit(&shared, a, t0), Ok(()), "its second token");
        shared.release(a);
        assert_eq!(gate.admit(&shared, a, t0), Err(Refusal::Rate));
        // A refusal for the rate leaves no per-IP entry behind.
        assert!(!gate.per_ip.contains_key(&a));
        assert_eq!(gate.admit(&shared, c, t0), Ok(()));
        assert_eq!(gate.admit(&shared, a, t0 + ms(1000)), Ok(()));
        assert_eq!(shared.refused_rate.load(Relaxed), 1);
        assert_eq!(shared.refused_per_ip.load(Relaxed), 1);
        assert_eq!(shared.rate_untracked.load(Relaxed), 0);
        assert_eq!(shared.rate_addresses.load(Relaxed), 2);
        assert_eq!(shared.open(), 2);

        // Refused for the global cap: no token taken either.
        let (shared, mut gate) = new(1, 0, rate);
        assert_eq!(gate.admit(&shared, a, t0), Ok(()));
        assert_eq!(gate.admit(&shared, a, t0), Err(Refusal::Full));
        shared.release(a);
        assert_eq!(gate.admit(&shared, a, t0), Ok(()));
    }
}
