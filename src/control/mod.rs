//! The control plane: everything off the workers, on ONE thread, `corecast-control`, that
//! runs a current-thread tokio runtime. It hosts the admin HTTP endpoint (`admin`,
//! `endpoints`), the periodic stats line (`stats_line`), the memory guard's sampler, the
//! Redis backplane (`crate::backplane`) and the JWKS URL's fetches (`crate::auth::jwks`). It
//! reaches the workers only through their queues (`WorkerHandle::send`), which never block,
//! and no worker ever waits on it.

pub mod admin;
pub mod endpoints;
pub mod framing;
pub mod metrics;
pub mod socket;
pub mod stats_line;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::Sender as ReplySender;
use tokio::sync::{mpsc, watch};

use crate::console::Console;
use crate::exit::{self, Exit};
use crate::shared::Shared;
use crate::stop::{stopped, Stopping};
use endpoints::Endpoints;
use metrics::{AdminStats, Metrics};

/// How long [`Control::stop_publishing`] waits for the control thread's answer. The thread
/// runs only non-blocking code, so the answer takes microseconds; the bound is for a thread
/// that has died in a way that kept its queue open.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// How often resident memory is sampled for the memory guard: fast enough to refuse the
/// connections of a burst, cheap enough (one short read of /proc) to be free.
const MEMORY_SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// Samples the process's memory for the guard (`--max-memory`) until stopped.
async fn watch_memory(shared: Arc<Shared>, mut stopping: Stopping) {
    let mut ticks = tokio::time::interval(MEMORY_SAMPLE_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stopped(&mut stopping) => return,
            _ = ticks.tick() => shared.memory.sample(),
        }
    }
}

/// What other threads ask of the control thread.
#[derive(Debug)]
enum Command {
    /// Refuse admin publishes from now on; answer once no publish can be queued any more.
    StopPublishing(ReplySender<()>),
    /// Stop every task and end the thread.
    Stop,
}

/// The running control thread.
pub struct Control {
    admin_addr: Option<SocketAddr>,
    commands: mpsc::UnboundedSender<Command>,
    thread: Option<JoinHandle<()>>,
}

impl Control {
    /// Starts the thread with the admin endpoint on `admin` (if any), the stats line (if
    /// `--stats-interval` is set), the console's sampler into `console` (unless
    /// `--no-console`) and the backplane (with `--redis`). The thread reports how it ended
    /// on `exits`.
    pub fn start(
        admin: Option<std::net::TcpListener>,
        shared: Arc<Shared>,
        console: Arc<Console>,
        backplane: Option<(crate::backplane::Options, crate::backplane::Receivers)>,
        exits: crossbeam_channel::Sender<Exit>,
    ) -> io::Result<Control> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        let (stop_tx, stopping) = watch::channel(false);
        let (commands, mut inbox) = mpsc::unbounded_channel();

        let mut admin_task = None;
        let mut admin_addr = None;
        let mut endpoints = None;
        if let Some(l) = admin {
            admin_addr = Some(l.local_addr()?);
            // Connections over the cap wait there (see `admin`); std binds with 128.
            socket2::SockRef::from(&l).listen(admin::BACKLOG)?;
            l.set_nonblocking(true)?;
            let listener = {
                let _in_runtime = rt.enter();
                tokio::net::TcpListener::from_std(l)?
            };
            let stats = Arc::new(AdminStats::default());
            let ep = Arc::new(Endpoints {
                metrics: Metrics::new(shared.clone(), stats.clone()),
                shared: shared.clone(),
                stats,
                publishing: AtomicBool::new(true),
            });
            endpoints = Some(ep.clone());
            admin_task = Some(rt.spawn(admin::serve(listener, ep, stopping.clone())));
        }
        if let Some(every) = shared.cfg.stats_interval {
            rt.spawn(stats_line::run(shared.clone(), every, stopping.clone()));
        }
        rt.spawn(watch_memory(shared.clone(), stopping.clone()));
        if shared.cfg.console {
            rt.spawn(crate::console::run(
                shared.clone(),
                console,
                stopping.clone(),
            ));
        }
        // A JWKS URL's keys: fetched here, off the workers (they only read the result).
        if let Some(auth) = shared.auth.as_ref().filter(|a| a.jwks_url().is_some()) {
            rt.spawn(crate::auth::jwks::run(auth.clone(), stopping.clone()));
        }
        let mut backplane_task = None;
        if let (Some((opts, rx)), Some(link)) = (backplane, shared.bus.backplane_link()) {
            backplane_task = Some(rt.spawn(crate::backplane::run(
                opts,
                link,
                rx,
                shared.bus.clone(),
                stopping.clone(),
            )));
        }

        let thread = std::thread::Builder::new()
            .name("corecast-control".into())
            .spawn(move || {
                let result = exit::guarded(|| {
                    rt.block_on(async {
                        while let Some(cmd) = inbox.recv().await {
                            match cmd {
                                Command::StopPublishing(done) => {
                                    // This runs on the thread every publish handler runs on,
                                    // between tasks: any handler that saw the flag set has
                                    // already queued its message, and every later one sees
                                    // it cleared.
                                    if let Some(ep) = &endpoints {
                                        ep.publishing.store(false, Ordering::Relaxed);
                                    }
                                    let _ = done.send(());
                                }
                                Command::Stop => break,
                            }
                        }
                        // Every task sees this; the admin server then closes its port and
                        // gives connections a short grace.
                        let _ = stop_tx.send(true);
                        if let Some(t) = admin_task {
                            let _ = t.await;
                        }
                        if let Some(t) = backplane_task {
                            let _ = t.await;
                        }
                    });
                    // Dropping the runtime drops every task left, and with them their
                    // sockets: nothing here waits on a client.
                    drop(rt);
                    Ok(())
                });
                if let Err(e) = &result {
                    log::error!("control thread stopped: {e}");
                }
                let _ = exits.send(Exit::Control { result });
            })?;
        Ok(Control {
            admin_addr,
            commands,
            thread: Some(thread),
        })
    }

    /// Where the admin endpoint listens, if enabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Returns once no further admin publish will be queued to the workers; from then on
    /// `POST /publish` answers 503. Every publish answered 202 before this returns is in the
    /// workers' queues, so a `Msg::Shutdown` sent afterwards is queued behind it.
    pub fn stop_publishing(&self) {
        let (done, answer) = crossbeam_channel::bounded(1);
        if self.commands.send(Command::StopPublishing(done)).is_err() {
            return; // the thread has ended: nothing publishes any more
        }
        match answer.recv_timeout(REPLY_TIMEOUT) {
            // A dropped reply also means the runtime, and every handler, is gone.
            Ok(()) | Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {}
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                log::error!("the control thread did not stop publishing within {REPLY_TIMEOUT:?}");
            }
        }
    }

    /// Stops every control-plane task and joins the thread. Never waits on a client: the
    /// admin port is closed at once and connections get [`admin::STOP_GRACE`] at most.
    pub fn stop(mut self) {
        let _ = self.commands.send(Command::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
