//! How a server thread ends, and the guard that turns a panic into a reported failure, so
//! that no thread dies silently. Used by every thread the server starts.

use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Why a server thread stopped.
#[derive(Debug, thiserror::Error)]
pub enum ThreadError {
    #[error("panicked: {0}")]
    Panicked(String),
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}

/// A thread of the server that ended.
#[derive(Debug)]
pub enum Exit {
    /// Worker `index` returned; `Err` carries a panic message or an I/O error.
    Worker {
        index: usize,
        result: Result<(), ThreadError>,
    },
    Acceptor {
        result: Result<(), ThreadError>,
    },
    /// The control thread (admin endpoint, stats line, memory sampler) ended.
    Control {
        result: Result<(), ThreadError>,
    },
}

impl Exit {
    pub fn result(self) -> Result<(), ThreadError> {
        match self {
            Exit::Worker { result, .. } | Exit::Acceptor { result } | Exit::Control { result } => {
                result
            }
        }
    }
}

/// Runs a thread body, turning a panic into an error so that it is reported.
pub fn guarded(f: impl FnOnce() -> io::Result<()>) -> Result<(), ThreadError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => Ok(result?),
        Err(panic) => Err(ThreadError::Panicked(
            panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_thread_body_is_reported_not_lost() {
        let quiet = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let r = guarded(|| panic!("worker blew up"));
        let r2 = guarded(|| panic!("{} formatted", 42));
        std::panic::set_hook(quiet);
        assert_eq!(r.unwrap_err().to_string(), "panicked: worker blew up");
        assert_eq!(r2.unwrap_err().to_string(), "panicked: 42 formatted");
        let io = guarded(|| Err(io::Error::other("poll failed")));
        assert!(matches!(io, Err(ThreadError::Io(_))));
        assert!(guarded(|| Ok(())).is_ok());
    }
}
