//! The command line: `run`, `check`, `explain`, and with the `dev-tools`
//! feature `dev-pki`, `demo`, `echo`; the man pages and shell completions
//! generated from it (hidden `generate`), so they describe exactly the
//! commands of the binary that writes them.
//! Exit codes: 0 success, 1 runtime failure (or a refused/denied `explain`),
//! 2 invalid configuration or usage.

#[cfg(feature = "dev-tools")]
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

use crate::daemon::{self, EXIT_CONFIG, EXIT_RUNTIME};
use crate::{config, inspect};

/// The notes after the commands in `certgate --help`, and the man page's
/// sections of the same names: a `Heading:` line, then items indented by
/// two spaces (continued by four), blank lines between notes.
const NOTES: &str = "\
Exit status:
  0 success.
  1 runtime failure, or a client that explain refuses or denies.
  2 invalid configuration or usage.

Environment:
  CERTGATE_CONFIG names the config file when -c is not given.
  CERTGATE_LOG overrides log.level, for example debug or
    info,certgate::access=off.
  CERTGATE_<SECTION>__<KEY> overrides one config key, for example
    CERTGATE_LISTENER__ADDRESS=0.0.0.0:443.
  TOKIO_WORKER_THREADS sets the worker threads of run (default: one per
    core); 1 runs everything on one thread.

Files:
  /etc/certgate/certgate.toml: the config file when neither -c nor
    CERTGATE_CONFIG is given.
  /etc/certgate/certgate.toml.example: every key with its default (Debian
    package).

See also:
  systemctl(8), journalctl(1); /usr/share/doc/certgate and the docs/ pages
    of the source.";

#[derive(Debug, Parser)]
#[command(
    name = "certgate",
    version,
    about = "mTLS gateway: verified client certificates in, identity headers out",
    after_long_help = NOTES
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

/// `certgate generate man|completions DIR`: writes the man pages or shell
/// completions of [`Cli`] (used to build packages). Added to the parsed
/// command line only, hidden, so that neither the pages nor the
/// completions list it.
#[derive(Debug, Parser)]
struct Generate {
    what: Generated,
    dir: PathBuf,
}

/// What `certgate generate` writes.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Generated {
    /// `certgate.1` and a `certgate-COMMAND.1` per command.
    Man,
    /// `certgate.bash`, `_certgate` (zsh) and `certgate.fish`.
    Completions,
}

pub fn main() -> ExitCode {
    let parsed = Cli::command()
        .subcommand(Generate::command().name("generate").hide(true))
        .try_get_matches()
        .and_then(|matches| match matches.subcommand() {
            Some(("generate", args)) => Generate::from_arg_matches(args).map(Err),
            _ => Cli::from_arg_matches(&matches).map(Ok),
        });
    let cli = match parsed {
        Ok(Ok(cli)) => cli,
        Ok(Err(generate)) => return generate.run(),
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

impl Generate {
    fn run(&self) -> ExitCode {
        let written = match self.what {
            Generated::Man => write_man_pages(&self.dir),
            Generated::Completions => write_completions(&self.dir),
        };
        match written {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("certgate: cannot write into {}: {e}", self.dir.display());
                ExitCode::from(EXIT_RUNTIME)
            }
        }
    }
}

/// `certgate.1`, whose sections after the commands come from [`NOTES`],
/// and one page per visible command, as clap_mangen renders them.
fn write_man_pages(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut cmd = Cli::command().disable_help_subcommand(true);
    // Gives each command its display name (`certgate-run`) for its page.
    cmd.build();
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        clap_mangen::Man::new(sub.clone()).generate_to(dir)?;
    }
    let man = clap_mangen::Man::new(cmd.clone());
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    man.render_options_section(&mut page)?;
    man.render_subcommands_section(&mut page)?;
    page.extend(notes_roff().as_bytes());
    man.render_version_section(&mut page)?;
    std::fs::write(dir.join(man.get_filename()), page)
}

/// [`NOTES`] as man page sections (`Exit status:` becomes `.SH "EXIT
/// STATUS"`), one paragraph per item.
fn notes_roff() -> String {
    let mut roff = roff::Roff::new();
    for note in NOTES.split("\n\n") {
        let mut lines = note.lines();
        let heading = lines.next().unwrap_or_default().trim_end_matches(':');
        roff.control("SH", [heading.to_uppercase().as_str()]);
        let mut items: Vec<String> = Vec::new();
        for line in lines {
            match (line.strip_prefix("    "), items.last_mut()) {
                (Some(more), Some(item)) => {
                    item.push(' ');
                    item.push_str(more.trim());
                }
                _ => items.push(line.trim().to_owned()),
            }
        }
        for item in items {
            roff.control("PP", []);
            roff.text([roff::roman(item)]);
        }
    }
    roff.to_roff()
}

/// Completions for bash, zsh and fish, as clap_complete writes them.
fn write_completions(dir: &Path) -> std::io::Result<()> {
    use clap_complete::Shell;
    std::fs::create_dir_all(dir)?;
    let mut cmd = Cli::command();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd, "certgate", dir)?;
    }
    Ok(())
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
