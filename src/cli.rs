//! The command line: `run`, `check`, `explain`, `dev-pki`, `demo`, `echo`.
//! Exit codes: 0 success, 1 runtime failure (or a refused/denied `explain`),
//! 2 invalid configuration or usage.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::daemon::{self, EXIT_CONFIG, EXIT_RUNTIME};
use crate::{config, devpki, echo, inspect};

#[derive(Debug, Parser)]
#[command(
    name = "certgate",
    version,
    about = "mTLS gateway: verified client certificates in, identity headers out"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway.
    Run {
        /// Config file [default: $CERTGATE_CONFIG, then /etc/certgate/certgate.toml]
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Validate the config and every file it names; print what would be loaded.
    ///
    /// Exit 0 if valid, 2 (naming the file and the reason) if not.
    Check {
        /// Config file [default: $CERTGATE_CONFIG, then /etc/certgate/certgate.toml]
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Verify a client certificate as the gateway would and explain the decision.
    ///
    /// Exit 0 allowed, 1 refused or denied, 2 bad input.
    Explain {
        /// Config file [default: $CERTGATE_CONFIG, then /etc/certgate/certgate.toml]
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// PEM file with the client certificate (and any intermediates after it).
        #[arg(long)]
        cert: PathBuf,
        /// Request path to decide for (normalized as the gateway does).
        #[arg(long, default_value = "/")]
        path: String,
        /// Request method to decide for.
        #[arg(long, default_value = "GET")]
        method: String,
    },
    /// Write a development PKI and a ready certgate.toml into DIR.
    DevPki {
        #[arg(long)]
        out: PathBuf,
    },
    /// Run the gateway on a development PKI (certs/dev) with a built-in echo upstream.
    Demo {
        #[arg(long, default_value = "certs/dev")]
        dir: PathBuf,
    },
    /// Serve the echo upstream alone (for tests and benchmarks).
    Echo {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.command {
        Command::Run { config } => daemon::run(&config::resolve_path(config.as_deref())),
        Command::Check { config } => check(&config::resolve_path(config.as_deref())),
        Command::Explain {
            config,
            cert,
            path,
            method,
        } => explain(
            &config::resolve_path(config.as_deref()),
            &cert,
            &path,
            &method,
        ),
        Command::DevPki { out } => dev_pki(&out),
        Command::Demo { dir } => demo(&dir),
        Command::Echo { listen } => echo_only(listen),
    }
}

fn check(path: &Path) -> ExitCode {
    match inspect::load(path) {
        Ok(state) => {
            print!("{}", inspect::summary(&state));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

fn explain(path: &Path, cert: &Path, req_path: &str, method: &str) -> ExitCode {
    let state = match inspect::load(path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match inspect::explain(&state, cert, req_path, method) {
        Ok(x) => {
            print!("{}", x.report);
            if x.allowed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_RUNTIME)
            }
        }
        Err(e) => {
            eprintln!("certgate: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

fn dev_pki(out: &Path) -> ExitCode {
    crate::tls::install_provider();
    match devpki::generate(out) {
        Ok(()) => {
            println!(
                "wrote a development PKI and certgate.toml to {}",
                out.display()
            );
            println!("  CA: ca.pem / ca.key; CRL: crl.pem; server: server.pem / server.key");
            println!("  PKCS#12: server.p12 (password in server.p12.password), ca-truststore.p12 (no password)");
            for (name, what) in devpki::CLIENTS {
                println!("  client {name}: {name}.pem / {name}.key ({what})");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("certgate: {e}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

fn runtime() -> Option<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| eprintln!("certgate: cannot start the async runtime: {e}"))
        .ok()
}

fn demo(dir: &Path) -> ExitCode {
    crate::tls::install_provider();
    let config_file = dir.join("certgate.toml");
    if !config_file.exists() {
        if let Err(e) = devpki::generate(dir) {
            eprintln!("certgate: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
        println!("created a development PKI in {}", dir.display());
    }
    let config = match config::Config::load(&config_file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("certgate: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    crate::logging::init(&config.log);
    let Some(rt) = runtime() else {
        return ExitCode::from(EXIT_RUNTIME);
    };
    let upstream = config
        .upstream
        .url
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_default();
    let code = rt.block_on(async move {
        let addr: SocketAddr = match upstream.parse() {
            Ok(a) => a,
            Err(_) => {
                eprintln!("certgate: demo needs upstream.url with an IP:port, got {upstream}");
                return EXIT_CONFIG;
            }
        };
        match echo::bind(addr).await {
            Ok((_, server)) => {
                tokio::spawn(server);
            }
            Err(e) => {
                eprintln!("certgate: cannot start the echo upstream on {addr}: {e}");
                return EXIT_RUNTIME;
            }
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let dir_shown = config_file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        tokio::spawn(async move {
            if let Ok(addr) = rx.await {
                print_demo_commands(&dir_shown, addr);
            }
        });
        daemon::serve(config, Some(tx)).await
    });
    ExitCode::from(code)
}

fn print_demo_commands(dir: &Path, addr: SocketAddr) {
    let d = dir.display();
    let url = format!("https://localhost:{}", addr.port());
    let curl =
        |who: &str| format!("curl --cacert {d}/ca.pem --cert {d}/{who}.pem --key {d}/{who}.key");
    println!("\ncertgate demo is listening on {url} (Ctrl-C to stop). Try:\n");
    println!("  {} {url}/.certgate/whoami", curl("user"));
    println!(
        "  {} {url}/api/orders                 # 200: ROLE_USER may GET /api",
        curl("user")
    );
    println!(
        "  {} -X POST {url}/api/orders         # 403: POST needs ROLE_ADMIN",
        curl("user")
    );
    println!("  {} -X POST {url}/api/orders        # 200", curl("admin"));
    println!(
        "  {} {url}/api/orders             # 403: no roles",
        curl("unmapped")
    );
    println!(
        "  {} {url}/api/orders              # handshake refused: revoked",
        curl("revoked")
    );
    println!("  curl --cacert {d}/ca.pem {url}/api/orders                                  # handshake refused: no certificate");
    println!("  curl http://127.0.0.1:9464/metrics\n");
}

fn echo_only(listen: SocketAddr) -> ExitCode {
    let Some(rt) = runtime() else {
        return ExitCode::from(EXIT_RUNTIME);
    };
    rt.block_on(async move {
        match echo::bind(listen).await {
            Ok((addr, server)) => {
                println!("echo upstream listening on http://{addr}");
                server.await;
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("certgate: cannot listen on {listen}: {e}");
                ExitCode::from(EXIT_RUNTIME)
            }
        }
    })
}
