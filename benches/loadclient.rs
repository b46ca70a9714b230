//! The mTLS load client that `benches/harness.sh` uses where oha cannot be
//! told what to do: oha's rustls client offers X25519MLKEM768 first and
//! resumes TLS sessions, so it cannot drive *full* handshakes with a pinned
//! key-exchange group. This client offers only X25519 and never resumes.
//!
//! - `handshakes`: workers that each loop connect → full mTLS handshake →
//!   one `GET` with `Connection: close` → read the reply, for a duration;
//!   prints one JSON line (counts, rate, latency percentiles).
//! - `idle`: opens N connections, each completing one keep-alive `GET`, prints
//!   one JSON line, then holds them open until killed (for idle memory).
//!
//! Built by `cargo bench --no-run`; run by the harness, not by `cargo bench`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use http::{header, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::sync::Semaphore;
use tokio_rustls::TlsConnector;

#[derive(Debug, Parser)]
struct Cli {
    #[command(subcommand)]
    mode: Option<Mode>,
    /// Passed by `cargo bench`; this binary has no benchmarks of its own.
    #[arg(long, hide = true)]
    bench: bool,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Full handshakes: a new connection per request, for a duration.
    Handshakes {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
    },
    /// Open and hold completed keep-alive connections.
    Idle {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Connections being set up at once.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
    },
}

#[derive(Debug, Args)]
struct Target {
    #[arg(long)]
    addr: SocketAddr,
    /// CA bundle that signed the server certificate.
    #[arg(long)]
    ca: PathBuf,
    #[arg(long)]
    cert: PathBuf,
    #[arg(long)]
    key: PathBuf,
    #[arg(long, default_value = "/api/bench")]
    path: String,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let Some(mode) = cli.mode else {
        eprintln!("loadclient: driven by benches/harness.sh (modes: handshakes, idle)");
        return Ok(());
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match mode {
            Mode::Handshakes {
                target,
                concurrency,
                seconds,
            } => {
                handshakes(
                    Client::new(target)?,
                    concurrency,
                    Duration::from_secs_f64(seconds),
                )
                .await
            }
            Mode::Idle {
                target,
                connections,
                concurrency,
            } => idle(Client::new(target)?, connections, concurrency).await,
        }
    })
}

#[derive(Clone)]
struct Client {
    connector: TlsConnector,
    addr: SocketAddr,
    path: Arc<str>,
}

type Sender = SendRequest<Empty<Bytes>>;

impl Client {
    fn new(t: Target) -> anyhow::Result<Client> {
        let mut roots = rustls::RootCertStore::empty();
        for der in CertificateDer::pem_file_iter(&t.ca)? {
            roots.add(der?)?;
        }
        let chain = CertificateDer::pem_file_iter(&t.cert)?.collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_file(&t.key)?;
        let mut provider = rustls::crypto::aws_lc_rs::default_provider();
        // nginx is pinned with `ssl_ecdh_curve X25519`; certgate follows the client's order.
        provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?;
        config.resumption = rustls::client::Resumption::disabled();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Client {
            connector: TlsConnector::from(Arc::new(config)),
            addr: t.addr,
            path: t.path.into(),
        })
    }

    /// TCP connect, full handshake, and an HTTP/1.1 connection whose driver runs in its own task.
    async fn connect(&self) -> anyhow::Result<(Sender, tokio::task::JoinHandle<()>)> {
        let tcp = tokio::net::TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        let tls = self
            .connector
            .connect(ServerName::try_from("localhost")?, tcp)
            .await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok((sender, driver))
    }

    async fn get(&self, sender: &mut Sender, close: bool) -> anyhow::Result<StatusCode> {
        let mut req = Request::get(&*self.path).header(header::HOST, "localhost");
        if close {
            req = req.header(header::CONNECTION, "close");
        }
        sender.ready().await?;
        let resp = sender.send_request(req.body(Empty::new())?).await?;
        let status = resp.status();
        resp.into_body().collect().await?;
        Ok(status)
    }

    async fn one_shot(&self) -> anyhow::Result<StatusCode> {
        let (mut sender, driver) = self.connect().await?;
        let status = self.get(&mut sender, true).await?;
        drop(sender);
        // The server closes after `Connection: close`; wait for it so that
        // TIME_WAIT lands on the server side, not on our ephemeral ports.
        let _ = driver.await;
        Ok(status)
    }
}

#[derive(Default)]
struct Tally {
    ok: u64,
    failed: u64,
    first_error: Option<String>,
    latencies: Vec<Duration>,
}

impl Tally {
    fn record(&mut self, started: Instant, result: anyhow::Result<StatusCode>) {
        match result {
            Ok(StatusCode::OK) => {
                self.ok += 1;
                self.latencies.push(started.elapsed());
            }
            Ok(status) => self.fail(format!("status {status}")),
            Err(e) => self.fail(format!("{e:#}")),
        }
    }

    fn fail(&mut self, error: String) {
        self.failed += 1;
        self.first_error.get_or_insert(error);
    }

    fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        self.failed += other.failed;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.latencies.extend(other.latencies);
    }
}

fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

async fn handshakes(client: Client, concurrency: usize, duration: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    let deadline = started + duration;
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut tally = Tally::default();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    tally.record(t, client.one_shot().await);
                }
                tally
            })
        })
        .collect();
    let mut total = Tally::default();
    for w in workers {
        total.merge(w.await?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    total.latencies.sort_unstable();
    let report = serde_json::json!({
        "ok": total.ok,
        "failed": total.failed,
        "seconds": elapsed,
        "rps": total.ok as f64 / elapsed,
        "p50_ms": percentile_ms(&total.latencies, 0.50),
        "p99_ms": percentile_ms(&total.latencies, 0.99),
        "first_error": total.first_error,
    });
    println!("{report}");
    Ok(())
}

async fn idle(client: Client, connections: usize, concurrency: usize) -> anyhow::Result<()> {
    let started = Instant::now();
    let permits = Arc::new(Semaphore::new(concurrency));
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let client = client.clone();
            let permits = permits.clone();
            tokio::spawn(async move {
                let _permit = permits.acquire_owned().await?;
                let (mut sender, driver) = client.connect().await?;
                match client.get(&mut sender, false).await? {
                    StatusCode::OK => Ok((sender, driver)),
                    status => anyhow::bail!("status {status}"),
                }
            })
        })
        .collect();
    let mut held = Vec::with_capacity(connections);
    let mut tally = Tally::default();
    for t in tasks {
        match t.await? {
            Ok(conn) => held.push(conn),
            Err(e) => tally.fail(format!("{e:#}")),
        }
    }
    let report = serde_json::json!({
        "connected": held.len(),
        "failed": tally.failed,
        "seconds": started.elapsed().as_secs_f64(),
        "first_error": tally.first_error,
    });
    println!("{report}");
    // Hold every connection (sender and driver) until the harness kills us.
    std::future::pending::<()>().await;
    drop(held);
    Ok(())
}
