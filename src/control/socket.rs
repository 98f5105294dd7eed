//! One admin connection's socket as hyper sees it, on the control thread: every byte read is
//! shown to the framing scanner, a write that makes no progress for [`WRITE_STALL`] fails the
//! connection, and closing lingers so that the client reads our last response.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{sleep, Sleep};

use super::framing::HeadScan;
use super::metrics::AdminStats;
use crate::stats::bump;

/// How long a response write may wait for the client to take bytes before the connection is
/// dropped: a client that pipelines requests and never reads would otherwise hold an admin
/// slot forever. Responses are a few KiB and normally go straight into the kernel's buffer.
pub const WRITE_STALL: Duration = Duration::from_secs(10);
/// After the last response, how long closing waits for the client's FIN while it discards
/// what the client still sends (an unread body). Closing a socket with unread input makes
/// the kernel send a reset, which can destroy the response before the client reads it.
pub const LINGER: Duration = Duration::from_secs(1);
/// The most input discarded while lingering, enough for any refused body of a sane client.
pub const LINGER_BYTES: usize = 1 << 20;

/// The closing side of the socket.
#[derive(Debug)]
enum Closing {
    /// Not closing.
    Open,
    /// FIN sent; discarding input until the client's FIN, `left` bytes or the deadline.
    Draining {
        left: usize,
        deadline: Pin<Box<Sleep>>,
    },
    /// Done lingering.
    Closed,
}

/// The socket of one admin connection.
#[derive(Debug)]
pub struct AdminSocket {
    sock: TcpStream,
    scan: HeadScan,
    /// Mirrors `scan.both_lengths()` for the service, which runs beside this socket.
    both_lengths: Arc<AtomicBool>,
    /// Armed while a write waits for the client.
    stall: Option<Pin<Box<Sleep>>>,
    closing: Closing,
    stats: Arc<AdminStats>,
}

impl AdminSocket {
    /// Wraps `sock`; the service reads `both_lengths` to see what hyper hides.
    pub fn new(sock: TcpStream, both_lengths: Arc<AtomicBool>, stats: Arc<AdminStats>) -> Self {
        AdminSocket {
            sock,
            scan: HeadScan::default(),
            both_lengths,
            stall: None,
            closing: Closing::Open,
            stats,
        }
    }

    /// Called when a write is not ready: arms the stall timer, and fails once it fires.
    fn poll_stall(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let stall = self
            .stall
            .get_or_insert_with(|| Box::pin(sleep(WRITE_STALL)));
        ready!(stall.as_mut().poll(cx));
        self.stall = None;
        bump(&self.stats.request_timeouts, 1);
        Poll::Ready(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client took no response bytes for the write stall bound",
        ))
    }

    /// Discards input until the client closes, [`LINGER_BYTES`] or [`LINGER`].
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let Closing::Draining { left, deadline } = &mut self.closing else {
                return Poll::Ready(());
            };
            if deadline.as_mut().poll(cx).is_ready() {
                self.closing = Closing::Closed;
                return Poll::Ready(());
            }
            let mut scratch = [0u8; 4096];
            let mut buf = ReadBuf::new(&mut scratch);
            match ready!(Pin::new(&mut self.sock).poll_read(cx, &mut buf)) {
                Ok(()) if !buf.filled().is_empty() => {
                    *left = left.saturating_sub(buf.filled().len());
                    if *left == 0 {
                        self.closing = Closing::Closed;
                    }
                }
                // EOF or an error: the client is gone either way.
                _ => self.closing = Closing::Closed,
            }
        }
    }
}

impl AsyncRead for AdminSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.sock).poll_read(cx, buf))?;
        this.scan.feed(&buf.filled()[before..]);
        if this.scan.both_lengths() {
            this.both_lengths.store(true, Ordering::Relaxed);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for AdminSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.sock).poll_write(cx, buf) {
            Poll::Pending => this.poll_stall(cx).map(Err),
            done => {
                this.stall = None;
                done
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.sock).poll_write_vectored(cx, bufs) {
            Poll::Pending => this.poll_stall(cx).map(Err),
            done => {
                this.stall = None;
                done
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.sock.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A TCP stream has no user-space buffer: nothing to wait for.
        Pin::new(&mut self.get_mut().sock).poll_flush(cx)
    }

    /// Sends FIN, then lingers (see [`LINGER`]); hyper calls this when it closes a
    /// connection after a response, not when it drops one for a timeout.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Closing::Open = this.closing {
            // A failed FIN means the peer is gone: nothing left to linger for.
            if ready!(Pin::new(&mut this.sock).poll_shutdown(cx)).is_err() {
                this.closing = Closing::Closed;
                return Poll::Ready(Ok(()));
            }
            this.closing = Closing::Draining {
                left: LINGER_BYTES,
                deadline: Box::pin(sleep(LINGER)),
            };
        }
        ready!(this.poll_drain(cx));
        Poll::Ready(Ok(()))
    }
}
