//! Tools for development, demos, tests and benchmarks, apart from the
//! daemon and behind the default `dev-tools` feature, so that a production
//! build (`--no-default-features`) carries no certificate generator and no
//! echo server: `dev-pki` (a throwaway PKI), `echo` (an upstream that
//! answers with what it received) and `demo` (both, with the gateway).

pub mod echo;
pub mod pki;

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use crate::config;
use crate::daemon::{self, EXIT_CONFIG, EXIT_RUNTIME};

pub fn dev_pki(out: &Path) -> ExitCode {
    crate::tls::install_provider();
    match pki::generate(out) {
        Ok(()) => {
            println!(
                "wrote a development PKI and certgate.toml to {}",
                out.display()
            );
            println!("  CA: ca.pem / ca.key; CRL: crl.pem; server: server.pem / server.key");
            println!("  PKCS#12: server.p12 (password in server.p12.password), ca-truststore.p12 (no password)");
            for (name, what) in pki::CLIENTS {
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

/// `certgate demo`: the gateway on the development PKI in `dir` (made if
/// missing), on `port` when given, with the echo upstream on a port the
/// system picks (in place of the config's `upstream.url`), so that a busy
/// 8080 cannot stop it.
pub fn demo(dir: &Path, port: Option<u16>) -> ExitCode {
    crate::tls::install_provider();
    let config_file = dir.join("certgate.toml");
    if !config_file.exists() {
        if let Err(e) = pki::generate(dir) {
            eprintln!("certgate: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
        println!("created a development PKI in {}", dir.display());
    }
    let mut config = match config::Config::load(&config_file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("certgate: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Some(port) = port {
        config.listener.address.set_port(port);
    }
    crate::logging::init(&config.log);
    let Some(rt) = runtime() else {
        return ExitCode::from(EXIT_RUNTIME);
    };
    let code = rt.block_on(async move {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        match echo::bind(loopback).await {
            Ok((addr, server)) => {
                tokio::spawn(server);
                config.upstream.url = format!("http://{addr}")
                    .parse()
                    .expect("an IP:port makes a valid URL");
            }
            Err(e) => {
                eprintln!("certgate: cannot start the echo upstream on {loopback}: {e}");
                return EXIT_RUNTIME;
            }
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let dir_shown = config_file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        tokio::spawn(async move {
            if let Ok(bound) = rx.await {
                print_demo_commands(&dir_shown, bound);
            }
        });
        daemon::serve(config, Some(tx)).await
    });
    ExitCode::from(code)
}

fn print_demo_commands(dir: &Path, bound: daemon::Bound) {
    let d = dir.display();
    let url = format!("https://localhost:{}", bound.listener.port());
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
    match bound.admin {
        Some(admin) => println!("  curl http://{admin}/metrics\n"),
        None => println!("  (the admin listener is disabled: admin.address = \"\")\n"),
    }
}

pub fn echo(listen: SocketAddr) -> ExitCode {
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
