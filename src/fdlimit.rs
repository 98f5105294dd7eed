//! The open-files limit and how many client connections it leaves room for. Runs once, on
//! the main thread, at start-up.
//!
//! Every client connection is one descriptor. Past the limit `accept` fails while the client
//! waits in the backlog, so the server derives its connection cap from the limit (as HAProxy
//! derives `maxconn` from `ulimit -n`) and refuses the excess with a 503 instead.

use std::io;

use crate::config::MAX_ADMIN_CONNECTIONS;

/// Descriptors kept for the server itself, beyond two per worker (its epoll and its waker):
/// the admin endpoint's connections at their cap, and 64 for the rest: standard streams,
/// listeners, the acceptor's poll, the control thread's runtime, the spare descriptor the
/// acceptor keeps for refusing, signal pipes, and files opened for `/proc` and certificates.
pub const BASE_RESERVE: u64 = 64 + MAX_ADMIN_CONNECTIONS as u64;

/// The descriptors the server keeps for itself with `workers` workers.
pub fn reserve(workers: usize) -> u64 {
    BASE_RESERVE + 2 * workers as u64
}

/// Raises the soft open-files limit to the hard limit (the soft default, often 1024, is far
/// below what a C10K server needs, and raising it needs no privilege) and returns the soft
/// limit now in effect.
pub fn raise_to_hard() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and reads nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        } else {
            log::warn!(
                "cannot raise the open-files limit from {} to {}: {}",
                lim.rlim_cur,
                lim.rlim_max,
                io::Error::last_os_error()
            );
        }
    }
    Ok(lim.rlim_cur)
}

/// Connections that fit under `nofile` descriptors with `workers` workers; at least 1.
pub fn connection_budget(nofile: u64, workers: usize) -> usize {
    nofile.saturating_sub(reserve(workers)).max(1) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_leaves_the_reserve_free() {
        assert_eq!(connection_budget(20_000, 2), 20_000 - 132);
        assert_eq!(connection_budget(1024, 8), 1024 - 144);
        assert_eq!(
            connection_budget(100, 2),
            1,
            "a tiny limit still admits one"
        );
        assert!(raise_to_hard().unwrap() >= 1);
    }
}
