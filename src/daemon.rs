//! `certgate run`: load, bind, serve, reload, drain. Configuration errors
//! exit 2 before anything is bound; runtime failures exit 1.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::gateway::Gateway;
use crate::metrics::Metrics;
use crate::revocation::{self, Sources};
use crate::state::State;
use crate::{admin, logging, proxy, refresh, reload, systemd, tls};

pub const EXIT_RUNTIME: u8 = 1;
pub const EXIT_CONFIG: u8 = 2;

/// Runs the daemon with the config at `path` until SIGTERM/SIGINT.
pub fn run(path: &Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("certgate: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    logging::init(&config.log);
    tls::install_provider();
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("certgate: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let code = runtime.block_on(serve(config, None));
    // Connections that outlived the drain are abandoned, not awaited.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    ExitCode::from(code)
}

/// The async runtime: a worker thread per core, or as many as
/// `TOKIO_WORKER_THREADS` says. One thread gets tokio's current-thread
/// scheduler: with a single worker, work stealing has nothing to gain, and
/// it measured 10-15% more CPU per keep-alive request (benches/harness.sh).
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let one_thread = std::env::var("TOKIO_WORKER_THREADS").is_ok_and(|n| n.trim() == "1");
    let mut builder = match one_thread {
        true => tokio::runtime::Builder::new_current_thread(),
        false => tokio::runtime::Builder::new_multi_thread(),
    };
    builder.enable_all().build()
}

/// The addresses the daemon is serving on, once it serves.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub listener: SocketAddr,
    pub admin: Option<SocketAddr>,
}

/// The daemon body; `ready` (for `demo`) is told the bound addresses.
pub async fn serve(config: Config, ready: Option<tokio::sync::oneshot::Sender<Bound>>) -> u8 {
    // Handlers first: until they are installed, SIGHUP or SIGTERM would
    // kill the process outright.
    let (sighup, mut shutdown) = match install_signal_handlers() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("certgate: cannot install signal handlers: {e}");
            return EXIT_RUNTIME;
        }
    };
    let config_path = config.path.clone();
    let metrics = Metrics::new();
    let sources = Arc::new(Sources::default());
    // The HTTP client reads the system's root certificates once: here,
    // before serving, rather than on a worker in the first OCSP check.
    sources.http();
    match revocation::crl::start(&sources, &config.client_auth).await {
        Ok(outcomes) => {
            refresh::count(&metrics, &outcomes);
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot start without the CRLs of client_auth.crl_urls");
            eprintln!("certgate: {e}");
            return EXIT_CONFIG;
        }
    }
    let state = match State::build_with(Arc::new(config), 1, sources, None) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot load the files the configuration names");
            eprintln!("certgate: {e}");
            return EXIT_CONFIG;
        }
    };
    state.log_warnings();
    let cfg = state.config.clone();

    let (listener, admin_listener) = match bind(&cfg).await {
        Ok(l) => l,
        Err(msg) => {
            tracing::error!(error = %msg, "cannot bind");
            eprintln!("certgate: {msg}");
            return EXIT_RUNTIME;
        }
    };
    let bound = listener.local_addr().ok();
    let admin_bound = admin_listener.as_ref().and_then(|l| l.local_addr().ok());
    let gw = Gateway::new(state, metrics);

    let (hup_tx, hup_rx) = mpsc::channel(1);
    let (sources_tx, sources_rx) = mpsc::channel(1);
    tokio::spawn(forward_sighup(sighup, gw.clone(), hup_tx));
    tokio::spawn(reload::run(gw.clone(), config_path, hup_rx, sources_rx));
    tokio::spawn(refresh::run(gw.clone(), sources_tx));
    let verified_clients = Arc::new(proxy::VerifiedClients::default());
    if let Some(admin_listener) = admin_listener {
        tracing::info!(address = %admin_bound.map(|a| a.to_string()).unwrap_or_default(), "admin listener ready");
        tokio::spawn(admin::serve(
            admin_listener,
            gw.clone(),
            verified_clients.clone(),
        ));
    }
    let tracker = TaskTracker::new();
    let accept_loop = tokio::spawn(proxy::serve(
        listener,
        gw.clone(),
        verified_clients,
        tracker.clone(),
    ));

    tracing::info!(
        address = %bound.map(|a| a.to_string()).unwrap_or_default(),
        upstream = %cfg.upstream.url,
        status = %systemd::status_line(&gw.state()),
        "certgate listening"
    );
    systemd::ready(&gw.state());
    systemd::spawn_watchdog();
    if let (Some(tx), Some(listener)) = (ready, bound) {
        let _ = tx.send(Bound {
            listener,
            admin: admin_bound,
        });
    }

    let signal = shutdown.recv().await;
    tracing::info!(signal, "draining");
    drain(&gw, tracker, accept_loop, &mut shutdown).await
}

/// SIGTERM and SIGINT: the first starts the drain, a second one ends it
/// at once (an operator pressing Ctrl-C twice).
struct Shutdown {
    term: Signal,
    int: Signal,
}

impl Shutdown {
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

fn install_signal_handlers() -> std::io::Result<(Signal, Shutdown)> {
    Ok((
        signal(SignalKind::hangup())?,
        Shutdown {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        },
    ))
}

/// Turns SIGHUP into a reload trigger. The handler stays installed for the
/// life of the process, so a SIGHUP during the drain is logged and ignored
/// rather than killing the process (no new connection would use a reload).
async fn forward_sighup(mut sighup: Signal, gw: Arc<Gateway>, reload: mpsc::Sender<()>) {
    while sighup.recv().await.is_some() {
        if gw.is_draining() {
            tracing::info!(signal = "SIGHUP", "reload skipped: draining");
        } else {
            // A full channel already holds a pending reload.
            let _ = reload.try_send(());
        }
    }
}

/// Stops accepting (the listener is closed, so new connections are
/// refused), turns `/readyz` to 503, asks every connection to finish
/// (HTTP/1 closes once idle, HTTP/2 gets GOAWAY), and waits for them up to
/// `listener.shutdown_timeout`. Exit code 0 when all finished, else 1.
async fn drain(
    gw: &Gateway,
    tracker: TaskTracker,
    accept_loop: tokio::task::JoinHandle<()>,
    shutdown: &mut Shutdown,
) -> u8 {
    let timeout = gw.state().config.listener.shutdown_timeout;
    systemd::stopping(timeout);
    gw.start_draining();
    let _ = accept_loop.await;
    tracker.close();
    tokio::select! {
        finished = tokio::time::timeout(timeout, tracker.wait()) => match finished {
            Ok(()) => {
                tracing::info!("drained; exiting");
                0
            }
            Err(_) => {
                let open = gw.metrics.connections.active.get();
                tracing::error!(open_connections = open, shutdown_timeout_ms = timeout.as_millis() as u64, "connections still open after listener.shutdown_timeout; closing them");
                EXIT_RUNTIME
            }
        },
        signal = shutdown.recv() => {
            let open = gw.metrics.connections.active.get();
            tracing::warn!(signal, open_connections = open, "second signal during the drain; closing the remaining connections now");
            EXIT_RUNTIME
        }
    }
}

/// Why the listeners could not be set up.
#[derive(Debug, thiserror::Error)]
enum BindError {
    #[error("cannot use sockets passed by systemd: {0}")]
    Activation(std::io::Error),
    #[error("{which} socket from systemd: {error}")]
    ActivatedSocket {
        which: &'static str,
        error: std::io::Error,
    },
    #[error("cannot listen on {addr} ({key}): {error}")]
    Listen {
        addr: SocketAddr,
        key: &'static str,
        error: std::io::Error,
    },
}

/// The mTLS and admin listeners: from systemd socket activation when
/// `LISTEN_FDS` is set, else bound to the configured addresses.
async fn bind(cfg: &Config) -> Result<(TcpListener, Option<TcpListener>), BindError> {
    let activated = systemd::activated_listeners().map_err(BindError::Activation)?;
    let mut activated = activated.into_iter();
    let from_systemd = |socket, which| {
        TcpListener::from_std(socket).map_err(|error| BindError::ActivatedSocket { which, error })
    };
    let listener = match activated.next() {
        Some(l) => from_systemd(l, "mTLS")?,
        None => bind_addr(cfg.listener.address, "listener.address").await?,
    };
    let admin = match (activated.next(), cfg.admin.address) {
        (Some(l), _) => Some(from_systemd(l, "admin")?),
        (None, Some(addr)) => Some(bind_addr(addr, "admin.address").await?),
        (None, None) => None,
    };
    Ok((listener, admin))
}

async fn bind_addr(addr: SocketAddr, key: &'static str) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|error| BindError::Listen { addr, key, error })
}
