//! Criterion micro-benchmarks of the work certgate does per connection and
//! per request, on certificates made at start-up with the integration-test
//! PKI: identity extraction from the leaf, role mapping (10 and 1,000
//! rules), path normalization plus authorization, and the server side of a
//! full in-memory mTLS handshake built with certgate's own verifier and
//! `ServerConfig` builders (only the server's CPU time is counted).
//!
//! `cargo bench --bench micro` runs them; `benches/harness.sh` measures the
//! whole daemon against nginx.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use certgate::config::{ClientAuthConfig, CrlScope, RevocationFallback, TlsVersion};
use certgate::identity::{CertField, Identity};
use certgate::policy::{
    normalize_path, Authorizer, AuthzDefault, Glob, PathParameters, RoleMapper, RoleRule, Route,
};
use certgate::tls::{build_client_verifier, build_server_config, load, ServerCerts};
use common::{KeyKind, Leaf, LeafSpec, TestCa};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection};

/// A client certificate shaped like a production one: O, OU, CN, DNS, SPIFFE URI, email.
fn client_spec(key: KeyKind) -> LeafSpec {
    LeafSpec {
        ou: vec!["payments".into()],
        dns: vec!["billing.internal".into()],
        uris: vec!["spiffe://acme.org/ns/pay/sa/billing".into()],
        emails: vec!["billing@acme.org".into()],
        key,
        ..LeafSpec::client("billing-api")
    }
}

fn identity_extraction(c: &mut Criterion) {
    let leaf = TestCa::root("bench CA").issue(&client_spec(KeyKind::P256));
    c.bench_function("identity/from_der", |b| {
        b.iter(|| Identity::from_der(std::hint::black_box(&leaf.der)).expect("identity"));
    });
}

/// `n` rules that each test CN and OU; only the last one matches the client.
fn role_rules(n: usize) -> Vec<RoleRule> {
    (0..n)
        .map(|i| {
            let (cn, roles) = if i + 1 == n {
                ("billing-*".to_owned(), vec!["ROLE_USER".to_owned()])
            } else {
                (format!("service-{i}-*"), vec![format!("ROLE_{i}")])
            };
            RoleRule::new(roles)
                .with(CertField::Cn, vec![Glob::new(&cn, false)])
                .with(CertField::Ou, vec![Glob::new("payments", false)])
        })
        .collect()
}

fn role_mapping(c: &mut Criterion) {
    let leaf = TestCa::root("bench CA").issue(&client_spec(KeyKind::P256));
    let id = Identity::from_der(&leaf.der).expect("identity");
    let mut group = c.benchmark_group("roles/roles_for");
    for n in [10, 1000] {
        let mapper = RoleMapper::new(&[], role_rules(n));
        assert_eq!(
            mapper.roles_for(&id).joined(),
            "ROLE_USER",
            "the last rule must match"
        );
        group.bench_with_input(BenchmarkId::from_parameter(n), &mapper, |b, mapper| {
            b.iter(|| mapper.roles_for(std::hint::black_box(&id)));
        });
    }
    group.finish();
}

fn authorization(c: &mut Criterion) {
    let routes = (1..=10)
        .map(|v| {
            Route::new(
                &format!("/api/v{v}"),
                Some(vec!["GET".into()]),
                vec!["ROLE_USER".into()],
            )
        })
        .chain([Route::new("/api/v3/admin", None, vec!["ROLE_ADMIN".into()])])
        .collect::<Result<Vec<_>, _>>()
        .expect("routes");
    let authz = Authorizer::new(AuthzDefault::Deny, routes);
    let leaf = TestCa::root("bench CA").issue(&client_spec(KeyKind::P256));
    let id = Identity::from_der(&leaf.der).expect("identity");
    let roles = RoleMapper::new(&[], role_rules(10)).roles_for(&id);
    let mut group = c.benchmark_group("path+authz");
    for (name, path) in [
        ("plain", "/api/v3/orders/42"),
        ("messy", "/api//v3/./x/../orders/%34%32"),
    ] {
        let normalized = normalize_path(path, PathParameters::Reject).expect("normalizes");
        assert!(
            authz
                .authorize(&normalized.path, "GET", &roles)
                .is_allowed(),
            "{name}"
        );
        group.bench_function(name, |b| {
            b.iter(|| {
                let p = normalize_path(std::hint::black_box(path), PathParameters::Reject)
                    .expect("normalizes");
                authz.authorize(&p.path, "GET", &roles)
            });
        });
    }
    group.finish();
}

fn chain_of(leaf: &Leaf) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let chain = CertificateDer::pem_slice_iter(leaf.chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("chain PEM");
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("key PEM");
    (chain, key)
}

/// certgate's server config (verifier with a CRL, SNI resolver, session
/// cache) and a client that offers only X25519 and never resumes, so every
/// handshake is a full one.
fn handshake_configs(kind: KeyKind) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    let ca = TestCa::root_with("bench CA", kind);
    let server = ca.issue(&LeafSpec {
        key: kind,
        ..LeafSpec::server()
    });
    let client = ca.issue(&client_spec(kind));
    let crl =
        CertificateRevocationListDer::from_pem_slice(ca.crl(&[]).as_bytes()).expect("CRL PEM");
    let policy = ClientAuthConfig {
        trusted_cas: vec![],
        trusted_cas_password_file: None,
        crls: vec![],
        unknown_revocation: RevocationFallback::Allow,
        crl_scope: CrlScope::Chain,
        expired_crl: RevocationFallback::Allow,
        crl_urls: vec![],
        crl_refresh: Duration::from_secs(3600),
        crl_cache_dir: None,
        ocsp: certgate::config::OcspMode::Off,
    };
    let verifier =
        build_client_verifier(std::slice::from_ref(&ca.der), vec![crl], &policy).expect("verifier");
    let (chain, key) = chain_of(&server);
    let default = load::certified_key(chain, key, Path::new("server.pem"), Path::new("server.key"))
        .expect("server key");
    let certs = Arc::new(ServerCerts {
        default,
        by_name: HashMap::new(),
    });
    let server_config =
        build_server_config(certs, verifier, TlsVersion::V1_2, None).expect("server config");

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der.clone()).expect("root");
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
    let (chain, key) = chain_of(&client);
    let mut client_config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("client key");
    client_config.resumption = rustls::client::Resumption::disabled();
    (server_config, Arc::new(client_config))
}

/// Drains what `from` has to send into `buf`; true when there was anything.
fn transfer(
    from: &mut impl std::ops::DerefMut<Target = rustls::ConnectionCommon<impl Sized>>,
    buf: &mut Vec<u8>,
) -> bool {
    buf.clear();
    while from.wants_write() {
        from.write_tls(buf).expect("write_tls");
    }
    !buf.is_empty()
}

/// Feeds `data` to `to` and processes it as it arrives.
fn receive(
    to: &mut impl std::ops::DerefMut<Target = rustls::ConnectionCommon<impl Sized>>,
    mut data: &[u8],
) {
    while !data.is_empty() {
        to.read_tls(&mut data).expect("read_tls");
        to.process_new_packets().expect("handshake step");
    }
}

/// One full handshake in memory; returns the time spent in server calls only.
fn server_handshake_time(
    server_config: &Arc<ServerConfig>,
    client_config: &Arc<ClientConfig>,
) -> Duration {
    let mut client =
        ClientConnection::new(client_config.clone(), "localhost".try_into().expect("name"))
            .expect("client");
    let started = Instant::now();
    let mut server = ServerConnection::new(server_config.clone()).expect("server");
    let mut server_time = started.elapsed();
    let mut buf = Vec::with_capacity(16 * 1024);
    loop {
        let client_sent = transfer(&mut client, &mut buf);
        if client_sent {
            let t = Instant::now();
            receive(&mut server, &buf);
            server_time += t.elapsed();
        }
        let t = Instant::now();
        let server_sent = transfer(&mut server, &mut buf);
        server_time += t.elapsed();
        if server_sent {
            receive(&mut client, &buf);
        }
        if !client_sent && !server_sent && !client.is_handshaking() && !server.is_handshaking() {
            break;
        }
    }
    assert!(
        server.peer_certificates().is_some_and(|c| !c.is_empty()),
        "client certificate verified"
    );
    server_time
}

fn mtls_handshake(c: &mut Criterion) {
    let mut group = c.benchmark_group("handshake/server_cpu");
    for (name, kind) in [
        ("ecdsa_p256", KeyKind::P256),
        ("rsa_2048", KeyKind::Rsa2048),
    ] {
        let (server, client) = handshake_configs(kind);
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| server_handshake_time(&server, &client))
                    .sum()
            });
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    identity_extraction,
    role_mapping,
    authorization,
    mtls_handshake
);
criterion_main!(benches);
