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
//!   With `--distinct-certs`, every connection presents its own client
//!   certificate (same subject, own key and serial), issued at start-up by
//!   the CA whose key `--ca-key` names: the case where the gateway can share
//!   nothing between connections.
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
        /// A client certificate of its own for every connection.
        #[arg(long, requires = "ca_key")]
        distinct_certs: bool,
        /// The private key of the CA in `--ca` (PEM), to issue them.
        #[arg(long)]
        ca_key: Option<PathBuf>,
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
                distinct_certs,
                ca_key,
            } => {
                let client = match ca_key.filter(|_| distinct_certs) {
                    Some(ca_key) => Client::with_distinct_certs(target, &ca_key, connections)?,
                    None => Client::new(target)?,
                };
                idle(client, connections, concurrency).await
            }
        }
    })
}

#[derive(Clone)]
struct Client {
    /// One per client certificate; connection `i` uses `connectors[i % len]`.
    connectors: Arc<[TlsConnector]>,
    addr: SocketAddr,
    path: Arc<str>,
}

type Sender = SendRequest<Empty<Bytes>>;

impl Client {
    fn new(t: Target) -> anyhow::Result<Client> {
        let chain = CertificateDer::pem_file_iter(&t.cert)?.collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_file(&t.key)?;
        let connector = connector(&t, chain, key)?;
        Ok(Client {
            connectors: Arc::new([connector]),
            addr: t.addr,
            path: t.path.into(),
        })
    }

    /// `n` clients with the subject of `--cert`, each with its own key and
    /// serial, issued by the CA in `--ca` with `ca_key`.
    fn with_distinct_certs(
        t: Target,
        ca_key: &std::path::Path,
        n: usize,
    ) -> anyhow::Result<Client> {
        let template = CertificateDer::from_pem_file(&t.cert)?;
        let subject =
            distinguished_name(x509_parser::parse_x509_certificate(&template)?.1.subject())?;
        let ca = CertificateDer::from_pem_file(&t.ca)?;
        let mut ca_params = rcgen::CertificateParams::default();
        ca_params.distinguished_name =
            distinguished_name(x509_parser::parse_x509_certificate(&ca)?.1.subject())?;
        let issuer_key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(ca_key)?)?;
        let issuer = rcgen::Issuer::new(ca_params, issuer_key);
        let connectors = (0..n)
            .map(|i| {
                let mut params = rcgen::CertificateParams::default();
                params.distinguished_name = subject.clone();
                params.serial_number = Some(rcgen::SerialNumber::from(0x4000_0000_u64 + i as u64));
                params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
                params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
                params.use_authority_key_identifier_extension = true;
                let key = rcgen::KeyPair::generate()?;
                let cert = params.signed_by(&key, &issuer)?;
                let key =
                    PrivateKeyDer::try_from(key.serialize_der()).map_err(anyhow::Error::msg)?;
                connector(&t, vec![cert.der().clone()], key)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Client {
            connectors: connectors.into(),
            addr: t.addr,
            path: t.path.into(),
        })
    }

    /// TCP connect, full handshake with the `i`th client certificate, and
    /// an HTTP/1.1 connection whose driver runs in its own task.
    async fn connect(&self, i: usize) -> anyhow::Result<(Sender, tokio::task::JoinHandle<()>)> {
        let tcp = tokio::net::TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        let tls = self.connectors[i % self.connectors.len()]
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
        let (mut sender, driver) = self.connect(0).await?;
        let status = self.get(&mut sender, true).await?;
        drop(sender);
        // The server closes after `Connection: close`; wait for it so that
        // TIME_WAIT lands on the server side, not on our ephemeral ports.
        let _ = driver.await;
        Ok(status)
    }
}

fn distinguished_name(
    name: &x509_parser::x509::X509Name<'_>,
) -> anyhow::Result<rcgen::DistinguishedName> {
    let mut dn = rcgen::DistinguishedName::new();
    for attr in name.iter_attributes() {
        let oid: Vec<u64> = attr
            .attr_type()
            .iter()
            .map(|arcs| arcs.collect())
            .unwrap_or_default();
        dn.push(rcgen::DnType::from_oid(&oid), attr.as_str()?);
    }
    Ok(dn)
}

/// A TLS client for `t` presenting `chain`: X25519 only, no resumption.
fn connector(
    t: &Target,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> anyhow::Result<TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    for der in CertificateDer::pem_file_iter(&t.ca)? {
        roots.add(der?)?;
    }
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    // nginx is pinned with `ssl_ecdh_curve X25519`; certgate follows the client's order.
    provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    config.resumption = rustls::client::Resumption::disabled();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
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
        .map(|i| {
            let client = client.clone();
            let permits = permits.clone();
            tokio::spawn(async move {
                let _permit = permits.acquire_owned().await?;
                let (mut sender, driver) = client.connect(i).await?;
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
