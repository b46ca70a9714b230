//! The command line: `run`, `check`, `explain`, and with the `dev-tools`
//! feature `dev-pki`, `demo`, `echo`.
//! Exit codes: 0 success, 1 runtime failure (or a refused/denied `explain`),
//! 2 invalid configuration or usage.

#[cfg(feature = "dev-tools")]
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::daemon::{self, EXIT_CONFIG, EXIT_RUNTIME};
use crate::{config, inspect};

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
    /// Every problem is reported in one pass. Exit 0 if valid, 2 (naming
    /// each file or key and the reason) if not.
    Check {
        /// Config file [default: $CERTGATE_CONFIG, then /etc/certgate/certgate.toml]
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Also exit 2 for a served certificate that is expired, not yet
        /// valid or expiring within 7 days, and for a CRL past its nextUpdate.
        #[arg(long)]
        strict: bool,
        /// Fetch the CRLs of client_auth.crl_urls now (else their cached copies are shown).
        #[arg(long)]
        online: bool,
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
    #[cfg(feature = "dev-tools")]
    DevPki {
        #[arg(long)]
        out: PathBuf,
    },
    /// Run the gateway on a development PKI (certs/dev) with a built-in echo upstream
    /// (on a free port, in place of the config's upstream.url).
    #[cfg(feature = "dev-tools")]
    Demo {
        #[arg(long, default_value = "certs/dev")]
        dir: PathBuf,
        /// Port of the mTLS listener [default: the one in DIR/certgate.toml, 8443]
        #[arg(long)]
        port: Option<u16>,
    },
    /// Serve the echo upstream alone (for tests and benchmarks).
    #[cfg(feature = "dev-tools")]
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
        Command::Check {
            config,
            strict,
            online,
        } => check(&config::resolve_path(config.as_deref()), strict, online),
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
        #[cfg(feature = "dev-tools")]
        Command::DevPki { out } => crate::devtools::dev_pki(&out),
        #[cfg(feature = "dev-tools")]
        Command::Demo { dir, port } => crate::devtools::demo(&dir, port),
        #[cfg(feature = "dev-tools")]
        Command::Echo { listen } => crate::devtools::echo(listen),
    }
}

fn check(path: &Path, strict: bool, online: bool) -> ExitCode {
    let checked = if online {
        inspect::load_online(path).map(|(state, fetches)| (inspect::Checked::new(state), fetches))
    } else {
        inspect::check(path).map(|checked| (checked, String::new()))
    };
    match checked {
        Ok((checked, fetches)) => {
            print!("{fetches}{}", inspect::summary(&checked.state));
            print!("{}", inspect::warnings_report(&checked.warnings));
            if strict && !checked.warnings.is_empty() {
                eprintln!(
                    "certgate: --strict: {} problem(s) need attention",
                    checked.warnings.len()
                );
                return ExitCode::from(EXIT_CONFIG);
            }
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
