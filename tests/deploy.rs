//! What a fleet deploys with: the Kubernetes manifests in `deploy/kubernetes/`
//! and the `Containerfile`.
//!
//! `.ci/run` validates the core kinds against the Kubernetes schemas
//! (`kubernetes-validate --strict`); its schemas have no custom resources,
//! so the cert-manager `Certificate` and the Prometheus Operator
//! `ServiceMonitor` are checked here, field by field. Here too: the names
//! that tie the files together agree (Secrets, labels, ports, paths), the
//! ConfigMap's `certgate.toml` is a config certgate's own parser accepts,
//! and the pod is as locked down as the systemd unit. The `Containerfile`
//! is read instruction by instruction: multi-stage, non-root, and with the
//! stages CI builds.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every document of every manifest, as JSON values.
fn manifests() -> Vec<(String, Value)> {
    let dir = repo().join("deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut docs = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let value = Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{name} is not YAML Kubernetes can read: {e}"));
            docs.push((name.clone(), value));
        }
    }
    docs
}

fn find<'a>(docs: &'a [(String, Value)], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .map(|(_, d)| d)
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn strs(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// `labels` has every key and value of `selector`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let selector = selector.as_object().expect("a label selector");
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn keys(v: &Value) -> BTreeSet<&str> {
    v.as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default()
}

#[test]
fn every_manifest_names_its_kind_and_is_labelled() {
    let docs = manifests();
    let kinds: BTreeSet<&str> = docs
        .iter()
        .filter_map(|(_, d)| d["kind"].as_str())
        .collect();
    for want in [
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "Certificate",
        "ServiceMonitor",
    ] {
        assert!(kinds.contains(want), "no {want} in deploy/kubernetes");
    }
    for (file, d) in &docs {
        assert!(d["apiVersion"].is_string(), "{file}: apiVersion");
        assert!(d["metadata"]["name"].is_string(), "{file}: metadata.name");
        assert_eq!(
            d["metadata"]["labels"]["app.kubernetes.io/name"], "certgate",
            "{file}: the app label"
        );
    }
}

#[test]
fn the_configmap_is_a_config_over_the_mounted_secrets() {
    let docs = manifests();
    let text = find(&docs, "ConfigMap", "certgate-config")["data"]["certgate.toml"]
        .as_str()
        .expect("data.certgate.toml");
    let deployment = find(&docs, "Deployment", "certgate");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let args = strs(&container["args"]);
    let config_path = Path::new(args.last().expect("args name the config"));
    assert_eq!(args[..2], ["run", "-c"]);
    let config = certgate::config::Config::from_toml(config_path, text, Vec::new())
        .unwrap_or_else(|e| panic!("the ConfigMap's certgate.toml is refused: {e}"));

    // Mount path -> the Secret or ConfigMap behind it.
    let volumes = pod["volumes"].as_array().unwrap();
    let source = |volume: &str| {
        let v = volumes.iter().find(|v| v["name"] == volume).unwrap();
        v["secret"]["secretName"]
            .as_str()
            .or(v["configMap"]["name"].as_str())
            .unwrap()
            .to_owned()
    };
    let mut mounted = Vec::new();
    for m in container["volumeMounts"].as_array().unwrap() {
        assert!(
            m.get("subPath").is_none(),
            "a subPath mount never updates: {m}"
        );
        assert_eq!(m["readOnly"], true, "{m}");
        let name = m["name"].as_str().unwrap();
        mounted.push((
            PathBuf::from(m["mountPath"].as_str().unwrap()),
            source(name),
        ));
    }
    let behind = |file: &Path| -> (String, String) {
        let (_, source) = mounted
            .iter()
            .find(|(dir, _)| file.parent() == Some(dir.as_path()))
            .unwrap_or_else(|| panic!("{} is on no mounted volume", file.display()));
        let key = file.file_name().unwrap().to_string_lossy().into_owned();
        (source.clone(), key)
    };
    assert_eq!(
        behind(config_path),
        ("certgate-config".into(), "certgate.toml".into())
    );
    let certificate = find(&docs, "Certificate", "certgate-server");
    let server_secret = certificate["spec"]["secretName"]
        .as_str()
        .unwrap()
        .to_owned();
    let certgate::config::CertSource::Pem { cert, key } = &config.server_tls.default else {
        panic!("the Kubernetes TLS Secret layout is PEM");
    };
    // The Kubernetes Secret layout: tls.crt and tls.key from cert-manager,
    // ca.crt and ca.crl for the clients, the ticket keys.
    assert_eq!(behind(cert), (server_secret.clone(), "tls.crt".into()));
    assert_eq!(behind(key), (server_secret, "tls.key".into()));
    let ca = &config.client_auth;
    assert_eq!(
        behind(&ca.trusted_cas[0]),
        ("certgate-client-ca".into(), "ca.crt".into())
    );
    assert_eq!(
        behind(&ca.crls[0]),
        ("certgate-client-ca".into(), "ca.crl".into())
    );
    let tickets = config
        .listener
        .session_ticket_keys
        .as_deref()
        .expect("shared ticket keys");
    assert_eq!(
        behind(tickets),
        ("certgate-ticket-keys".into(), "ticket.keys".into())
    );

    // docs/kubernetes.md shows this config; comments aside, the same.
    let page = std::fs::read_to_string(repo().join("docs/kubernetes.md")).unwrap();
    let shown = page
        .split_once("The ConfigMap's `certgate.toml`")
        .and_then(|(_, rest)| rest.split_once("```toml\n"))
        .and_then(|(_, rest)| rest.split_once("\n```"))
        .expect("docs/kubernetes.md shows the ConfigMap's config")
        .0;
    let settings = |text: &str| -> Vec<String> {
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(
        settings(shown),
        settings(text),
        "docs/kubernetes.md shows the ConfigMap's config"
    );

    // The admin port the probes and the ServiceMonitor use is the one the
    // config binds, and so is the mTLS port.
    let port = |name: &str| {
        container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("no container port {name}"))
    };
    assert_eq!(u64::from(config.listener.address.port()), port("mtls"));
    assert_eq!(
        config.admin.address.map(|a| u64::from(a.port())),
        Some(port("admin"))
    );
}

#[test]
fn the_deployment_is_a_replicated_locked_down_service() {
    let docs = manifests();
    let deployment = find(&docs, "Deployment", "certgate");
    assert!(
        deployment["spec"]["replicas"].as_u64().unwrap() >= 2,
        "2+ replicas"
    );
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    assert!(selects(
        &deployment["spec"]["selector"]["matchLabels"],
        pod_labels
    ));
    let pod = &deployment["spec"]["template"]["spec"];
    let c = &pod["containers"][0];

    for (probe, path) in [
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ] {
        assert_eq!(c[probe]["httpGet"]["path"], path, "{probe}");
        assert_eq!(c[probe]["httpGet"]["port"], "admin", "{probe}");
    }
    for resource in ["cpu", "memory"] {
        assert!(
            c["resources"]["requests"][resource].is_string(),
            "{resource} request"
        );
    }
    assert!(
        c["resources"]["limits"]["memory"].is_string(),
        "memory limit"
    );

    // As the systemd unit: no root, no new privileges, no capabilities, a
    // read-only system, a syscall filter, no service account token.
    let sc = &c["securityContext"];
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_ne!(sc["privileged"], true);
    assert_eq!(strs(&sc["capabilities"]["drop"]), ["ALL"]);
    assert!(sc["capabilities"].get("add").is_none());
    let psc = &pod["securityContext"];
    assert_eq!(psc["runAsNonRoot"], true);
    assert!(psc["runAsUser"].as_u64().unwrap() > 0);
    assert_eq!(psc["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(pod["automountServiceAccountToken"], false);
    for host in ["hostNetwork", "hostPID", "hostIPC"] {
        assert_ne!(pod[host], true, "{host}");
    }
    // The drain (listener.shutdown_timeout, 30 s by default) fits the grace period.
    assert!(pod["terminationGracePeriodSeconds"].as_u64().unwrap() > 30);

    let pdb = find(&docs, "PodDisruptionBudget", "certgate");
    assert!(selects(&pdb["spec"]["selector"]["matchLabels"], pod_labels));
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);

    let container_ports: Vec<&str> = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    for name in ["certgate", "certgate-admin"] {
        let service = find(&docs, "Service", name);
        assert!(
            selects(&service["spec"]["selector"], pod_labels),
            "{name} selects the pods"
        );
        for port in service["spec"]["ports"].as_array().unwrap() {
            let target = port["targetPort"].as_str().unwrap();
            assert!(
                container_ports.contains(&target),
                "{name}: targetPort {target}"
            );
        }
    }
    // The admin listener is plain HTTP: never behind the load balancer.
    let public = find(&docs, "Service", "certgate");
    assert!(public["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["targetPort"] == "mtls"));
    assert_eq!(
        find(&docs, "Service", "certgate-admin")["spec"]["type"],
        "ClusterIP"
    );
}

/// The custom resources, which no schema in `.ci/run` covers: every field
/// is one their CRDs define, with the values certgate needs.
#[test]
fn the_certificate_and_service_monitor_are_well_formed() {
    let docs = manifests();
    let certificate = find(&docs, "Certificate", "certgate-server");
    assert_eq!(certificate["apiVersion"], "cert-manager.io/v1");
    let spec = &certificate["spec"];
    // A subset of cert-manager v1's Certificate spec fields.
    let known: BTreeSet<&str> = [
        "secretName",
        "dnsNames",
        "ipAddresses",
        "uris",
        "commonName",
        "duration",
        "renewBefore",
        "privateKey",
        "usages",
        "issuerRef",
        "secretTemplate",
        "subject",
        "revisionHistoryLimit",
    ]
    .into();
    let unknown: Vec<&str> = keys(spec).difference(&known).copied().collect();
    assert!(
        unknown.is_empty(),
        "Certificate spec fields cert-manager lacks: {unknown:?}"
    );
    assert!(!strs(&spec["dnsNames"]).is_empty());
    assert!(spec["issuerRef"]["name"].is_string());
    assert!(["Issuer", "ClusterIssuer"].contains(&spec["issuerRef"]["kind"].as_str().unwrap()));
    assert!(
        ["RSA", "ECDSA", "Ed25519"].contains(&spec["privateKey"]["algorithm"].as_str().unwrap())
    );
    assert!(["PKCS1", "PKCS8"].contains(&spec["privateKey"]["encoding"].as_str().unwrap()));
    assert!(strs(&spec["usages"]).contains(&"server auth"));
    let deployment = find(&docs, "Deployment", "certgate");
    let mounted: Vec<&str> = deployment["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["secret"]["secretName"].as_str())
        .collect();
    assert!(
        mounted.contains(&spec["secretName"].as_str().unwrap()),
        "the Deployment mounts the Certificate's Secret"
    );

    let monitor = find(&docs, "ServiceMonitor", "certgate");
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    let known: BTreeSet<&str> = [
        "selector",
        "endpoints",
        "namespaceSelector",
        "jobLabel",
        "podTargetLabels",
        "targetLabels",
    ]
    .into();
    let unknown: Vec<&str> = keys(&monitor["spec"]).difference(&known).copied().collect();
    assert!(
        unknown.is_empty(),
        "ServiceMonitor spec fields: {unknown:?}"
    );
    let admin = find(&docs, "Service", "certgate-admin");
    assert!(selects(
        &monitor["spec"]["selector"]["matchLabels"],
        &admin["metadata"]["labels"]
    ));
    assert!(
        !selects(
            &monitor["spec"]["selector"]["matchLabels"],
            &find(&docs, "Service", "certgate")["metadata"]["labels"]
        ),
        "the ServiceMonitor selects only the admin Service"
    );
    let ports: Vec<&str> = admin["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    for endpoint in monitor["spec"]["endpoints"].as_array().unwrap() {
        assert!(
            ports.contains(&endpoint["port"].as_str().unwrap()),
            "{endpoint}"
        );
        assert_eq!(endpoint["path"], "/metrics");
    }
}

/// One instruction of the Containerfile: its keyword and the rest.
struct Instruction {
    keyword: String,
    args: String,
}

/// The instructions, continuation lines joined, comments dropped.
fn containerfile() -> Vec<Instruction> {
    let text = std::fs::read_to_string(repo().join("Containerfile")).unwrap();
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if current.is_empty() && (line.is_empty() || line.starts_with('#')) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(line);
                let (keyword, args) = current.split_once(' ').unwrap_or((&current, ""));
                out.push(Instruction {
                    keyword: keyword.to_ascii_uppercase(),
                    args: args.trim().to_owned(),
                });
                current.clear();
            }
        }
    }
    out
}

#[test]
fn the_containerfile_is_multi_stage_and_runs_as_non_root() {
    let instructions = containerfile();
    // Stage name -> its instructions.
    let mut stages: Vec<(String, String, Vec<&Instruction>)> = Vec::new();
    for i in &instructions {
        if i.keyword == "FROM" {
            let (base, name) = i.args.split_once(" AS ").expect("every stage is named");
            stages.push((name.trim().to_owned(), base.trim().to_owned(), Vec::new()));
        } else if let Some(stage) = stages.last_mut() {
            stage.2.push(i);
        } else {
            assert!(i.keyword == "ARG", "only ARG precedes the first FROM");
        }
    }
    let names: Vec<&str> = stages.iter().map(|s| s.0.as_str()).collect();
    assert_eq!(names, ["build", "runtime-base", "prebuilt", "runtime"]);
    let stage = |name: &str| &stages.iter().find(|s| s.0 == name).unwrap().2;
    let has = |name: &str, keyword: &str, needle: &str| {
        stage(name)
            .iter()
            .any(|i| i.keyword == keyword && i.args.contains(needle))
    };
    assert!(has(
        "build",
        "RUN",
        "cargo build --release --locked --no-default-features"
    ));
    // The runtime stages build on runtime-base, whose user is not root.
    for name in ["prebuilt", "runtime"] {
        assert_eq!(
            stages.iter().find(|s| s.0 == name).unwrap().1,
            "runtime-base"
        );
        assert!(
            stage(name).iter().all(|i| i.keyword != "USER"),
            "{name} keeps the user"
        );
    }
    let user = stage("runtime-base")
        .iter()
        .rev()
        .find(|i| i.keyword == "USER")
        .expect("a USER");
    let uid = user.args.split(':').next().unwrap();
    assert!(
        uid.parse::<u32>().is_ok_and(|u| u > 0),
        "non-root numeric user: {}",
        user.args
    );
    assert!(has(
        "runtime",
        "COPY",
        "--from=build /certgate /usr/local/bin/certgate"
    ));
    assert!(has("prebuilt", "COPY", "certgate /usr/local/bin/certgate"));
    assert!(has("runtime-base", "ENTRYPOINT", "/usr/local/bin/certgate"));
    // The image's ports are the Deployment's.
    assert!(has("runtime-base", "EXPOSE", "8443 9464"));
    // The sources only go into the build context, not 10 GB of target/.
    let ignore = std::fs::read_to_string(repo().join(".containerignore")).unwrap();
    assert!(ignore.lines().any(|l| l.trim() == "target"));
}
