//! Prometheus metrics: one registry per gateway, built here with typed
//! handles, so tests get a fresh registry and nothing is a hidden global.
//! Names and label sets are part of the product contract (SPEC §6).

use std::collections::BTreeMap;
use std::sync::Arc;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::state::State;
use crate::tls::{CertInfo, CrlInfo, HandshakeFailure};
use crate::upstream::UpstreamError;

pub struct Metrics {
    registry: Registry,
    pub connections_active: IntGauge,
    pub connections_total: IntCounter,
    handshakes: IntCounterVec,
    pub handshake_duration: Histogram,
    requests: IntCounterVec,
    pub request_duration: Histogram,
    pub authz_denied: IntCounter,
    pub stream_idle_timeouts: IntCounter,
    role_grants: IntCounterVec,
    upstream_errors: IntCounterVec,
    reloads: IntCounterVec,
    pub config_generation: IntGauge,
    pub last_reload_success: IntGauge,
    last_reload_successful: IntGauge,
    cert_expiry: IntGaugeVec,
    crl_next_update: IntGaugeVec,
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

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let r = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            register(
                &r,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let gauge =
            |name: &str, help: &str| register(&r, IntGauge::new(name, help).expect("valid metric"));
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            register(
                &r,
                IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            register(
                &r,
                Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                    .expect("valid metric"),
            )
        };
        let fast_buckets = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];

        let build_info = gauge_vec(
            "certgate_build_info",
            "Always 1; the version label says which certgate is running.",
            &["version"],
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);

        // process_resident_memory_bytes, process_open_fds, process_cpu_seconds_total...:
        // what an operator checks first when connections pile up.
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("process metrics register once");

        let m = Metrics {
            connections_active: gauge(
                "certgate_connections_active",
                "Client TCP connections currently open on the mTLS listener.",
            ),
            connections_total: register(
                &r,
                IntCounter::new(
                    "certgate_connections_total",
                    "Client TCP connections accepted on the mTLS listener.",
                )
                .expect("valid metric"),
            ),
            handshakes: counter_vec(
                "certgate_tls_handshakes_total",
                "TLS handshakes by result: ok, or the reason the client was refused.",
                &["result"],
            ),
            handshake_duration: histogram(
                "certgate_tls_handshake_duration_seconds",
                "Time from TCP accept to a completed TLS handshake.",
                fast_buckets.clone(),
            ),
            requests: counter_vec(
                "certgate_requests_total",
                "HTTP requests answered on the mTLS listener, by status code.",
                &["code"],
            ),
            request_duration: histogram(
                "certgate_request_duration_seconds",
                "Time from request head received to response head sent.",
                fast_buckets,
            ),
            authz_denied: register(
                &r,
                IntCounter::new(
                    "certgate_authz_denied_total",
                    "Requests refused with 403 by the authorization rules.",
                )
                .expect("valid metric"),
            ),
            stream_idle_timeouts: register(
                &r,
                IntCounter::new(
                    "certgate_stream_idle_timeouts_total",
                    "Exchanges (HTTP/1.1 requests, HTTP/2 streams) ended because no byte moved for listener.stream_idle_timeout.",
                )
                .expect("valid metric"),
            ),
            role_grants: counter_vec(
                "certgate_role_grants_total",
                "Roles granted to verified clients, once per connection and configuration generation.",
                &["role"],
            ),
            upstream_errors: counter_vec(
                "certgate_upstream_errors_total",
                "Failed upstream exchanges by kind: connect, timeout, protocol.",
                &["kind"],
            ),
            reloads: counter_vec(
                "certgate_reloads_total",
                "Configuration and certificate reloads by result.",
                &["result"],
            ),
            config_generation: gauge(
                "certgate_config_generation",
                "Generation number of the state now serving; 1 at start, +1 per successful reload.",
            ),
            last_reload_success: gauge(
                "certgate_config_last_reload_success_timestamp_seconds",
                "Unix time of the last successful load of the state.",
            ),
            last_reload_successful: gauge(
                "certgate_config_last_reload_successful",
                "1 if the last load of the configuration and its files succeeded, 0 if it failed (the previous state keeps serving).",
            ),
            cert_expiry: gauge_vec(
                "certgate_certificate_expiry_timestamp_seconds",
                "notAfter of each loaded server certificate and trusted client CA, as Unix time.",
                &["kind", "subject"],
            ),
            crl_next_update: gauge_vec(
                "certgate_crl_next_update_timestamp_seconds",
                "nextUpdate of each loaded CRL, as Unix time.",
                &["issuer"],
            ),
            registry: r,
        };
        // Every label value is present from the start, so rate() and alerts
        // see a zero before the first event rather than a missing series.
        m.handshakes.with_label_values(&["ok"]);
        for f in HandshakeFailure::ALL {
            m.handshakes.with_label_values(&[f.label()]);
        }
        for k in UpstreamError::ALL {
            m.upstream_errors.with_label_values(&[k.label()]);
        }
        m.reloads.with_label_values(&["success"]);
        m.reloads.with_label_values(&["failure"]);
        Arc::new(m)
    }

    pub fn handshake_ok(&self, seconds: f64) {
        self.handshakes.with_label_values(&["ok"]).inc();
        self.handshake_duration.observe(seconds);
    }

    pub fn handshake_failed(&self, reason: HandshakeFailure) {
        self.handshakes.with_label_values(&[reason.label()]).inc();
    }

    pub fn handshakes(&self, result: &str) -> u64 {
        self.handshakes.with_label_values(&[result]).get()
    }

    pub fn request_done(&self, status: http::StatusCode, seconds: f64) {
        self.requests.with_label_values(&[status.as_str()]).inc();
        self.request_duration.observe(seconds);
    }

    pub fn role_granted(&self, role: &str) {
        self.role_grants.with_label_values(&[role]).inc();
    }

    pub fn upstream_error(&self, kind: UpstreamError) {
        self.upstream_errors
            .with_label_values(&[kind.label()])
            .inc();
    }

    pub fn reload(&self, success: bool) {
        self.reloads
            .with_label_values(&[if success { "success" } else { "failure" }])
            .inc();
        self.last_reload_successful.set(i64::from(success));
    }

    /// Publishes the gauges that describe a newly installed state.
    pub fn state_installed(&self, state: &State) {
        self.config_generation.set(state.generation as i64);
        self.last_reload_success.set(state.loaded_at_unix);
        self.last_reload_successful.set(1);
        self.publish_expiry(&state.certs, &state.crls);
        // Roles only appear as labels once configured (bounded cardinality).
        for role in state.roles.known_roles() {
            self.role_grants.with_label_values(&[role]);
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
    fn publish_expiry(&self, certs: &[CertInfo], crls: &[CrlInfo]) {
        self.cert_expiry.reset();
        let mut soonest: BTreeMap<(&str, &str), i64> = BTreeMap::new();
        for c in certs {
            // SPEC labels SNI certificates as `server` too: they are served.
            let kind = if c.kind == "client_ca" {
                "client_ca"
            } else {
                "server"
            };
            soonest
                .entry((kind, c.subject.as_str()))
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

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(buf).expect("the text format is UTF-8")
    }
}

/// Counts a connection as active for as long as it lives.
pub struct ActiveConnection(Arc<Metrics>);

impl ActiveConnection {
    pub fn open(metrics: &Arc<Metrics>) -> ActiveConnection {
        metrics.connections_total.inc();
        metrics.connections_active.inc();
        ActiveConnection(metrics.clone())
    }
}

impl Drop for ActiveConnection {
    fn drop(&mut self) {
        self.0.connections_active.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::proto::MetricType;

    fn cert(kind: &'static str, subject: &str, not_after_unix: i64) -> CertInfo {
        CertInfo {
            kind,
            server_name: None,
            file: "x.pem".into(),
            subject: subject.into(),
            dns_names: vec![],
            key_type: "ECDSA P-256".into(),
            not_after: String::new(),
            not_after_unix,
        }
    }

    fn crl(issuer: &str, next_update_unix: Option<i64>) -> CrlInfo {
        CrlInfo {
            file: "x.crl".into(),
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
        m.request_done(http::StatusCode::OK, 0.01);
        m.role_granted("ROLE_USER");
        m.publish_expiry(
            &[cert("server", "CN=s", 1), cert("client_ca", "CN=ca", 2)],
            &[crl("CN=ca", Some(3))],
        );
        let spec: &[(&str, MetricType, &[&str])] = &[
            ("certgate_build_info", GAUGE, &["version"]),
            ("certgate_connections_active", GAUGE, &[]),
            ("certgate_connections_total", COUNTER, &[]),
            ("certgate_tls_handshakes_total", COUNTER, &["result"]),
            ("certgate_tls_handshake_duration_seconds", HISTOGRAM, &[]),
            ("certgate_requests_total", COUNTER, &["code"]),
            ("certgate_request_duration_seconds", HISTOGRAM, &[]),
            ("certgate_authz_denied_total", COUNTER, &[]),
            ("certgate_role_grants_total", COUNTER, &["role"]),
            ("certgate_upstream_errors_total", COUNTER, &["kind"]),
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
    fn result_and_kind_labels_exist_before_the_first_event() {
        let m = Metrics::new();
        let text = m.render();
        for result in std::iter::once("ok").chain(HandshakeFailure::ALL.iter().map(|f| f.label())) {
            let sample = format!("certgate_tls_handshakes_total{{result=\"{result}\"}} 0");
            assert!(text.contains(&sample), "missing {sample}");
        }
        for kind in ["connect", "timeout", "protocol"] {
            let sample = format!("certgate_upstream_errors_total{{kind=\"{kind}\"}} 0");
            assert!(text.contains(&sample), "missing {sample}");
        }
    }

    #[test]
    fn expiry_gauges_keep_the_soonest_certificate_and_the_latest_crl() {
        let m = Metrics::new();
        m.publish_expiry(
            &[
                cert("client_ca", "CN=ca", 300),
                cert("client_ca", "CN=ca", 100),
                cert("sni", "CN=api", 50),
                cert("server", "CN=api", 70),
            ],
            &[
                crl("CN=ca", Some(10)),
                crl("CN=ca", Some(20)),
                crl("CN=other", None),
            ],
        );
        let cert_gauge = |kind, subject| m.cert_expiry.with_label_values(&[kind, subject]).get();
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
        assert_eq!(m.crl_next_update.with_label_values(&["CN=ca"]).get(), 20);
        assert!(
            !m.render().contains("CN=other"),
            "a CRL without nextUpdate has no gauge"
        );

        m.publish_expiry(&[cert("server", "CN=new", 1)], &[]);
        let text = m.render();
        assert!(
            !text.contains("CN=ca") && !text.contains("CN=api"),
            "dropped files leave no stale series:\n{text}"
        );
    }

    #[test]
    fn last_reload_successful_follows_the_latest_attempt() {
        let m = Metrics::new();
        m.reload(false);
        assert_eq!(m.last_reload_successful.get(), 0);
        assert_eq!(m.reloads.with_label_values(&["failure"]).get(), 1);
        m.reload(true);
        assert_eq!(m.last_reload_successful.get(), 1);
        assert_eq!(m.reloads.with_label_values(&["success"]).get(), 1);
    }
}
