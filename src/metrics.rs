//! Prometheus metrics: one registry per gateway, built here with typed
//! handles, so tests get a fresh registry and nothing is a hidden global.
//! Names and label sets are part of the product contract (SPEC §6).

use std::collections::BTreeMap;
use std::sync::Arc;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::revocation::{FetchResult, OcspStatus};
use crate::state::{StapleInfo, State};
use crate::tls::{CertInfo, CrlInfo, HandshakeFailure};
use crate::upstream::{UpstreamError, Upstreams};

/// Every metric of one gateway, grouped by what it describes. Each group
/// registers its own metrics in its constructor.
pub struct Metrics {
    registry: Registry,
    pub connections: ConnectionMetrics,
    pub handshakes: HandshakeMetrics,
    pub requests: RequestMetrics,
    pub reloads: ReloadMetrics,
    pub expiry: ExpiryMetrics,
    pub revocation: RevocationMetrics,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: T) -> T {
    registry
        .register(Box::new(c.clone()))
        .expect("metric names are unique and valid");
    c
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    register(r, IntCounter::new(name, help).expect("valid metric"))
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(
        r,
        IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    register(r, IntGauge::new(name, help).expect("valid metric"))
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(
        r,
        IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

/// Latency buckets from 0.5 ms to 10 s.
fn latency_histogram(r: &Registry, name: &str, help: &str) -> Histogram {
    let buckets = vec![
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ];
    register(
        r,
        Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
            .expect("valid metric"),
    )
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let r = Registry::new();
        gauge_vec(
            &r,
            "certgate_build_info",
            "Always 1; the version label says which certgate is running.",
            &["version"],
        )
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1);
        // process_resident_memory_bytes, process_open_fds, process_cpu_seconds_total...:
        // what an operator checks first when connections pile up.
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("process metrics register once");
        Arc::new(Metrics {
            connections: ConnectionMetrics::register(&r),
            handshakes: HandshakeMetrics::register(&r),
            requests: RequestMetrics::register(&r),
            reloads: ReloadMetrics::register(&r),
            expiry: ExpiryMetrics::register(&r),
            revocation: RevocationMetrics::register(&r),
            registry: r,
        })
    }

    /// Publishes the gauges that describe a newly installed state.
    pub fn state_installed(&self, state: &State) {
        self.reloads.installed(state);
        self.expiry.publish(&state.certs, &state.crls);
        self.requests.upstreams_installed(&state.upstreams);
        self.revocation.publish_staples(&state.staples);
        // Roles only appear as labels once configured (bounded cardinality).
        for role in state.roles.known_roles() {
            self.requests.role_grants.with_label_values(&[role]);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(buf).expect("the text format is UTF-8")
    }
}

// Every label value is created in the constructors, so rate() and alerts
// see a zero before the first event rather than a missing series.

/// Client connections on the mTLS listener.
pub struct ConnectionMetrics {
    pub active: IntGauge,
    pub total: IntCounter,
    /// Upgraded connections (WebSocket) open now, over HTTP/1.1 or HTTP/2.
    pub tunnels_active: IntGauge,
    /// Open connections and tunnels ended because a reload's state refused
    /// their certificate.
    pub refused_by_reload: IntCounter,
    proxy_protocol: IntCounterVec,
}

/// What became of a connection's PROXY protocol header, as the `result`
/// label of `certgate_proxy_protocol_total` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyHeaderResult {
    /// A valid header from a trusted peer: its address is the client's.
    Ok,
    /// The peer is not in `listener.proxy_protocol_from`.
    Untrusted,
    /// A trusted peer sent no header (TLS at once, or nothing in time).
    Missing,
    /// A malformed or unfinished header, or the version the listener does not take.
    Invalid,
}

impl ProxyHeaderResult {
    pub const ALL: [ProxyHeaderResult; 4] = [
        ProxyHeaderResult::Ok,
        ProxyHeaderResult::Untrusted,
        ProxyHeaderResult::Missing,
        ProxyHeaderResult::Invalid,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ProxyHeaderResult::Ok => "ok",
            ProxyHeaderResult::Untrusted => "untrusted",
            ProxyHeaderResult::Missing => "missing",
            ProxyHeaderResult::Invalid => "invalid",
        }
    }
}

impl ConnectionMetrics {
    fn register(r: &Registry) -> ConnectionMetrics {
        ConnectionMetrics {
            active: gauge(
                r,
                "certgate_connections_active",
                "Client TCP connections currently open on the mTLS listener.",
            ),
            total: counter(
                r,
                "certgate_connections_total",
                "Client TCP connections accepted on the mTLS listener.",
            ),
            tunnels_active: gauge(
                r,
                "certgate_tunnels_active",
                "Upgraded connections (WebSocket, over HTTP/1.1 or HTTP/2) open now.",
            ),
            refused_by_reload: counter(
                r,
                "certgate_reload_refused_connections_total",
                "Open client connections and tunnels closed because a reload refused their certificate.",
            ),
            proxy_protocol: {
                let results = counter_vec(
                    r,
                    "certgate_proxy_protocol_total",
                    "PROXY protocol headers read before TLS, by result (listener.proxy_protocol).",
                    &["result"],
                );
                for result in ProxyHeaderResult::ALL {
                    results.with_label_values(&[result.label()]);
                }
                results
            },
        }
    }

    pub fn proxy_header(&self, result: ProxyHeaderResult) {
        self.proxy_protocol
            .with_label_values(&[result.label()])
            .inc();
    }
}

/// TLS handshakes by result.
pub struct HandshakeMetrics {
    results: IntCounterVec,
    duration: Histogram,
}

impl HandshakeMetrics {
    fn register(r: &Registry) -> HandshakeMetrics {
        let results = counter_vec(
            r,
            "certgate_tls_handshakes_total",
            "TLS handshakes by result: ok, or the reason the client was refused.",
            &["result"],
        );
        results.with_label_values(&["ok"]);
        for f in HandshakeFailure::ALL {
            results.with_label_values(&[f.label()]);
        }
        HandshakeMetrics {
            results,
            duration: latency_histogram(
                r,
                "certgate_tls_handshake_duration_seconds",
                "Time from TCP accept to a completed TLS handshake.",
            ),
        }
    }

    pub fn ok(&self, seconds: f64) {
        self.results.with_label_values(&["ok"]).inc();
        self.duration.observe(seconds);
    }

    pub fn failed(&self, reason: HandshakeFailure) {
        self.results.with_label_values(&[reason.label()]).inc();
    }
}

/// Requests on the mTLS listener and what became of them.
pub struct RequestMetrics {
    by_code: IntCounterVec,
    duration: Histogram,
    pub authz_denied: IntCounter,
    pub stream_idle_timeouts: IntCounter,
    role_grants: IntCounterVec,
    upstream_errors: IntCounterVec,
    upstream_requests: IntCounterVec,
    endpoint_up: IntGaugeVec,
}

impl RequestMetrics {
    fn register(r: &Registry) -> RequestMetrics {
        let upstream_errors = counter_vec(
            r,
            "certgate_upstream_errors_total",
            "Failed upstream exchanges by upstream and kind: connect, timeout, protocol, no_healthy_upstream.",
            &["upstream", "kind"],
        );
        RequestMetrics {
            by_code: counter_vec(
                r,
                "certgate_requests_total",
                "HTTP requests answered on the mTLS listener, by status code.",
                &["code"],
            ),
            duration: latency_histogram(
                r,
                "certgate_request_duration_seconds",
                "Time from request head received to response head sent.",
            ),
            authz_denied: counter(
                r,
                "certgate_authz_denied_total",
                "Requests refused with 403 by the authorization rules.",
            ),
            stream_idle_timeouts: counter(
                r,
                "certgate_stream_idle_timeouts_total",
                "Exchanges (HTTP/1.1 requests, HTTP/2 streams) ended because no byte moved for listener.stream_idle_timeout.",
            ),
            role_grants: counter_vec(
                r,
                "certgate_role_grants_total",
                "Roles granted to verified clients, once per connection and configuration generation.",
                &["role"],
            ),
            upstream_errors,
            upstream_requests: counter_vec(
                r,
                "certgate_upstream_requests_total",
                "Requests sent to each upstream, by the status it answered.",
                &["upstream", "code"],
            ),
            endpoint_up: gauge_vec(
                r,
                "certgate_upstream_endpoint_up",
                "1 while an upstream endpoint takes requests, 0 while it rests after failing.",
                &["upstream", "endpoint"],
            ),
        }
    }

    pub fn done(&self, status: http::StatusCode, seconds: f64) {
        self.by_code.with_label_values(&[status.as_str()]).inc();
        self.duration.observe(seconds);
    }

    pub fn role_granted(&self, role: &str) {
        self.role_grants.with_label_values(&[role]).inc();
    }

    pub fn upstream_error(&self, upstream: &str, kind: UpstreamError) {
        self.upstream_errors
            .with_label_values(&[upstream, kind.label()])
            .inc();
    }

    pub fn upstream_answered(&self, upstream: &str, status: http::StatusCode) {
        self.upstream_requests
            .with_label_values(&[upstream, status.as_str()])
            .inc();
    }

    /// The series of a newly installed state's upstreams, each kind at 0
    /// before its first error; upstreams a reload removed lose theirs.
    fn upstreams_installed(&self, upstreams: &Upstreams) {
        self.endpoint_up.reset();
        for upstream in upstreams.all() {
            for kind in UpstreamError::ALL {
                self.upstream_errors
                    .with_label_values(&[upstream.name(), kind.label()]);
            }
        }
        self.publish_endpoints(upstreams);
    }

    /// Endpoint health as of now, published before each scrape.
    pub fn publish_endpoints(&self, upstreams: &Upstreams) {
        for upstream in upstreams.all() {
            for (endpoint, up) in upstream.endpoint_health() {
                self.endpoint_up
                    .with_label_values(&[upstream.name(), endpoint])
                    .set(i64::from(up));
            }
        }
    }
}

/// The `result` label of `certgate_reloads_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadResult {
    Success,
    Failure,
}

impl ReloadResult {
    const ALL: [ReloadResult; 2] = [ReloadResult::Success, ReloadResult::Failure];

    fn label(self) -> &'static str {
        match self {
            ReloadResult::Success => "success",
            ReloadResult::Failure => "failure",
        }
    }
}

/// Reloads and the state now serving.
pub struct ReloadMetrics {
    results: IntCounterVec,
    generation: IntGauge,
    last_success: IntGauge,
    last_successful: IntGauge,
}

impl ReloadMetrics {
    fn register(r: &Registry) -> ReloadMetrics {
        let results = counter_vec(
            r,
            "certgate_reloads_total",
            "Configuration and certificate reloads by result.",
            &["result"],
        );
        for result in ReloadResult::ALL {
            results.with_label_values(&[result.label()]);
        }
        ReloadMetrics {
            results,
            generation: gauge(
                r,
                "certgate_config_generation",
                "Generation number of the state now serving; 1 at start, +1 per successful reload.",
            ),
            last_success: gauge(
                r,
                "certgate_config_last_reload_success_timestamp_seconds",
                "Unix time of the last successful load of the state.",
            ),
            last_successful: gauge(
                r,
                "certgate_config_last_reload_successful",
                "1 if the last load of the configuration and its files succeeded, 0 if it failed (the previous state keeps serving).",
            ),
        }
    }

    pub fn attempted(&self, result: ReloadResult) {
        self.results.with_label_values(&[result.label()]).inc();
        self.last_successful
            .set(i64::from(result == ReloadResult::Success));
    }

    fn installed(&self, state: &State) {
        self.generation.set(state.generation as i64);
        self.last_success.set(state.loaded_at_unix);
        self.last_successful.set(1);
    }
}

/// Revocation data the gateway fetches: CRL downloads, OCSP answers about
/// clients, and the stapled responses.
pub struct RevocationMetrics {
    crl_fetches: IntCounterVec,
    ocsp_checks: IntCounterVec,
    staple_next_update: IntGaugeVec,
}

impl RevocationMetrics {
    fn register(r: &Registry) -> RevocationMetrics {
        let m = RevocationMetrics {
            crl_fetches: counter_vec(
                r,
                "certgate_crl_fetches_total",
                "Downloads of client_auth.crl_urls, by result (ok, not_modified, error).",
                &["result"],
            ),
            ocsp_checks: counter_vec(
                r,
                "certgate_ocsp_checks_total",
                "OCSP responder answers about client certificates, by result (good, revoked, unknown, error).",
                &["result"],
            ),
            staple_next_update: gauge_vec(
                r,
                "certgate_ocsp_staple_next_update_timestamp_seconds",
                "nextUpdate of the OCSP response stapled to each served certificate, as Unix time.",
                &["subject"],
            ),
        };
        for result in FetchResult::ALL {
            m.crl_fetches.with_label_values(&[result.label()]);
        }
        for status in OcspStatus::ALL {
            m.ocsp_checks.with_label_values(&[status.label()]);
        }
        m.ocsp_checks.with_label_values(&[OCSP_ERROR]);
        m
    }

    pub fn crl_fetched(&self, result: FetchResult) {
        self.crl_fetches.with_label_values(&[result.label()]).inc();
    }

    /// One question to a responder about a client: its answer, or `None`
    /// when there was no usable one.
    pub fn ocsp_checked(&self, status: Option<OcspStatus>) {
        let label = status.map_or(OCSP_ERROR, OcspStatus::label);
        self.ocsp_checks.with_label_values(&[label]).inc();
    }

    /// Replaces the staple gauges: a certificate stapled with nothing has
    /// no series.
    fn publish_staples(&self, staples: &[StapleInfo]) {
        self.staple_next_update.reset();
        for staple in staples {
            self.staple_next_update
                .with_label_values(&[staple.subject.as_str()])
                .set(staple.valid_until_unix);
        }
    }
}

const OCSP_ERROR: &str = "error";

/// When the loaded certificates and CRLs run out.
pub struct ExpiryMetrics {
    cert_expiry: IntGaugeVec,
    crl_next_update: IntGaugeVec,
}

impl ExpiryMetrics {
    fn register(r: &Registry) -> ExpiryMetrics {
        ExpiryMetrics {
            cert_expiry: gauge_vec(
                r,
                "certgate_certificate_expiry_timestamp_seconds",
                "notAfter of each loaded server certificate and trusted client CA, as Unix time.",
                &["kind", "subject"],
            ),
            crl_next_update: gauge_vec(
                r,
                "certgate_crl_next_update_timestamp_seconds",
                "nextUpdate of each loaded CRL, as Unix time.",
                &["issuer"],
            ),
        }
    }

    /// Replaces the expiry gauges. Certificates and CRLs that a reload
    /// dropped disappear with the reset.
    ///
    /// Two certificates can share a subject (a CA re-issued with a new key
    /// during a rollover, an SNI certificate for the default's name): the
    /// gauge keeps the soonest notAfter, the one an expiry alert is for.
    /// Two CRLs from one issuer (old and new during a CRL roll): the latest
    /// nextUpdate, since either CRL answers for that issuer.
    fn publish(&self, certs: &[CertInfo], crls: &[CrlInfo]) {
        self.cert_expiry.reset();
        let mut soonest: BTreeMap<(&str, &str), i64> = BTreeMap::new();
        for c in certs {
            soonest
                .entry((c.kind.metric_label(), c.subject.as_str()))
                .and_modify(|t| *t = (*t).min(c.not_after_unix))
                .or_insert(c.not_after_unix);
        }
        for ((kind, subject), not_after) in soonest {
            self.cert_expiry
                .with_label_values(&[kind, subject])
                .set(not_after);
        }

        self.crl_next_update.reset();
        let mut latest: BTreeMap<&str, i64> = BTreeMap::new();
        for crl in crls {
            if let Some(next) = crl.next_update_unix {
                latest
                    .entry(crl.issuer.as_str())
                    .and_modify(|t| *t = (*t).max(next))
                    .or_insert(next);
            }
        }
        for (issuer, next) in latest {
            self.crl_next_update.with_label_values(&[issuer]).set(next);
        }
    }
}

/// Counts a connection as active for as long as it lives.
pub struct ActiveConnection(Arc<Metrics>);

impl ActiveConnection {
    pub fn open(metrics: &Arc<Metrics>) -> ActiveConnection {
        metrics.connections.total.inc();
        metrics.connections.active.inc();
        ActiveConnection(metrics.clone())
    }
}

impl Drop for ActiveConnection {
    fn drop(&mut self) {
        self.0.connections.active.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::CertKind;
    use prometheus::proto::MetricType;

    fn cert(kind: CertKind, subject: &str, not_after_unix: i64) -> CertInfo {
        CertInfo {
            kind,
            server_name: None,
            file: "x.pem".into(),
            subject: subject.into(),
            dns_names: vec![],
            ip_addresses: vec![],
            serial: "1".into(),
            fingerprint_sha256: String::new(),
            key_type: "ECDSA P-256".into(),
            not_before: String::new(),
            not_before_unix: 0,
            not_after: String::new(),
            not_after_unix,
        }
    }

    fn crl(issuer: &str, next_update_unix: Option<i64>) -> CrlInfo {
        CrlInfo {
            file: "x.crl".into(),
            url: None,
            this_update: String::new(),
            issuer: issuer.into(),
            revoked: 0,
            next_update: None,
            next_update_unix,
        }
    }

    /// (name, type, label names) of every sample the registry exposes.
    fn exposed(m: &Metrics) -> Vec<(String, MetricType, Vec<String>)> {
        let mut out = Vec::new();
        for family in m.registry.gather() {
            for metric in family.get_metric() {
                let labels = metric
                    .get_label()
                    .iter()
                    .map(|l| l.name().to_owned())
                    .collect();
                out.push((family.name().to_owned(), family.get_field_type(), labels));
            }
        }
        out
    }

    #[test]
    fn every_spec_metric_is_exposed_with_its_type_and_labels() {
        use MetricType::{COUNTER, GAUGE, HISTOGRAM};
        let m = Metrics::new();
        // Labelled series that only exist once something happened.
        m.requests.done(http::StatusCode::OK, 0.01);
        m.requests.role_granted("ROLE_USER");
        m.requests
            .upstream_answered("default", http::StatusCode::OK);
        m.requests.upstream_error("default", UpstreamError::Connect);
        m.expiry.publish(
            &[
                cert(CertKind::Server, "CN=s", 1),
                cert(CertKind::ClientCa, "CN=ca", 2),
            ],
            &[crl("CN=ca", Some(3))],
        );
        let spec: &[(&str, MetricType, &[&str])] = &[
            ("certgate_build_info", GAUGE, &["version"]),
            ("certgate_connections_active", GAUGE, &[]),
            ("certgate_connections_total", COUNTER, &[]),
            ("certgate_tunnels_active", GAUGE, &[]),
            ("certgate_reload_refused_connections_total", COUNTER, &[]),
            ("certgate_proxy_protocol_total", COUNTER, &["result"]),
            ("certgate_tls_handshakes_total", COUNTER, &["result"]),
            ("certgate_tls_handshake_duration_seconds", HISTOGRAM, &[]),
            ("certgate_requests_total", COUNTER, &["code"]),
            ("certgate_request_duration_seconds", HISTOGRAM, &[]),
            ("certgate_authz_denied_total", COUNTER, &[]),
            ("certgate_role_grants_total", COUNTER, &["role"]),
            (
                "certgate_upstream_errors_total",
                COUNTER,
                &["kind", "upstream"],
            ),
            ("certgate_reloads_total", COUNTER, &["result"]),
            ("certgate_config_generation", GAUGE, &[]),
            (
                "certgate_config_last_reload_success_timestamp_seconds",
                GAUGE,
                &[],
            ),
            (
                "certgate_certificate_expiry_timestamp_seconds",
                GAUGE,
                &["kind", "subject"],
            ),
            (
                "certgate_crl_next_update_timestamp_seconds",
                GAUGE,
                &["issuer"],
            ),
        ];
        let exposed = exposed(&m);
        for (name, kind, labels) in spec {
            let series: Vec<_> = exposed.iter().filter(|(n, _, _)| n == name).collect();
            assert!(!series.is_empty(), "{name} is not exposed");
            for (_, k, l) in series {
                assert_eq!(k, kind, "{name}: type");
                assert_eq!(l, labels, "{name}: label names");
            }
        }
    }

    #[test]
    fn result_labels_exist_before_the_first_event() {
        // The upstream error kinds exist per upstream once a state is
        // installed (tests/observability.rs sees them at 0).
        let m = Metrics::new();
        let text = m.render();
        for result in std::iter::once("ok").chain(HandshakeFailure::ALL.iter().map(|f| f.label())) {
            let sample = format!("certgate_tls_handshakes_total{{result=\"{result}\"}} 0");
            assert!(text.contains(&sample), "missing {sample}");
        }
        for result in ["ok", "untrusted", "missing", "invalid"] {
            let sample = format!("certgate_proxy_protocol_total{{result=\"{result}\"}} 0");
            assert!(text.contains(&sample), "missing {sample}");
        }
    }

    #[test]
    fn expiry_gauges_keep_the_soonest_certificate_and_the_latest_crl() {
        let m = Metrics::new();
        m.expiry.publish(
            &[
                cert(CertKind::ClientCa, "CN=ca", 300),
                cert(CertKind::ClientCa, "CN=ca", 100),
                cert(CertKind::Sni, "CN=api", 50),
                cert(CertKind::Server, "CN=api", 70),
            ],
            &[
                crl("CN=ca", Some(10)),
                crl("CN=ca", Some(20)),
                crl("CN=other", None),
            ],
        );
        let cert_gauge = |kind, subject| {
            m.expiry
                .cert_expiry
                .with_label_values(&[kind, subject])
                .get()
        };
        assert_eq!(
            cert_gauge("client_ca", "CN=ca"),
            100,
            "CA rollover: soonest wins"
        );
        assert_eq!(
            cert_gauge("server", "CN=api"),
            50,
            "SNI is labelled server; soonest wins"
        );
        assert_eq!(
            m.expiry.crl_next_update.with_label_values(&["CN=ca"]).get(),
            20
        );
        assert!(
            !m.render().contains("CN=other"),
            "a CRL without nextUpdate has no gauge"
        );

        m.expiry
            .publish(&[cert(CertKind::Server, "CN=new", 1)], &[]);
        let text = m.render();
        assert!(
            !text.contains("CN=ca") && !text.contains("CN=api"),
            "dropped files leave no stale series:\n{text}"
        );
    }

    #[test]
    fn last_reload_successful_follows_the_latest_attempt() {
        let m = Metrics::new();
        m.reloads.attempted(ReloadResult::Failure);
        assert_eq!(m.reloads.last_successful.get(), 0);
        assert_eq!(m.reloads.results.with_label_values(&["failure"]).get(), 1);
        m.reloads.attempted(ReloadResult::Success);
        assert_eq!(m.reloads.last_successful.get(), 1);
        assert_eq!(m.reloads.results.with_label_values(&["success"]).get(), 1);
    }
}
