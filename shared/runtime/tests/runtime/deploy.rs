//! `deploy/` tied to the code (no cluster needed): every binary the workspace builds is in the
//! image, every worker and the gateway has its Deployment listed by the kustomization, the
//! probes and the API hit the ports the production configuration uses, the grace period covers
//! the drain, and each ScaledObject names a stream and durable consumer the topology declares.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use fleet_config::{Config, ConfigSource};
use fleet_runtime::Topology;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The `[[bin]]` names of the workspace's workers.
fn binaries() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for entry in std::fs::read_dir(root().join("workers")).unwrap() {
        let manifest = entry.unwrap().path().join("Cargo.toml");
        let Ok(text) = std::fs::read_to_string(&manifest) else {
            continue;
        };
        let mut in_bin = false;
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('[') {
                in_bin = line == "[[bin]]";
            } else if in_bin && let Some(name) = line.strip_prefix("name = ") {
                out.insert(name.trim_matches('"').to_owned());
            }
        }
    }
    out
}

/// The production configuration: defaults → config/default.toml → production.toml.
fn production() -> Config {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("default.toml"), read("config/default.toml")).unwrap();
    // What the fleet-secrets Secret gives the pods as FLEET_* variables, stood in for here.
    let text = read("deploy/kubernetes/production.toml").replacen(
        "[tenantdb.turso]\n",
        "[tenantdb.turso]\napi_token = \"stand-in\"\n",
        1,
    ) + "\n[secrets]\nactive_key = \"k1\"\nkeys = { k1 = \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\" }\n";
    std::fs::write(dir.path().join("production.toml"), text).unwrap();
    Config::load_from(&ConfigSource {
        dir: dir.path().to_path_buf(),
        env: "production".into(),
    })
    .expect("the production configuration loads and validates")
}

fn port(address: &str) -> u16 {
    address.rsplit(':').next().unwrap().parse().unwrap()
}

/// The value after `key:` on the first line holding it, in a YAML text.
fn value<'a>(yaml: &'a str, key: &str) -> Option<&'a str> {
    yaml.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{key}:")))
        .map(|v| v.trim().trim_matches('"'))
}

#[test]
fn the_image_and_the_manifests_cover_every_binary() {
    let binaries = binaries();
    assert!(
        binaries.contains("gateway") && binaries.contains("provisioner"),
        "{binaries:?}"
    );
    let dockerfile = read("deploy/Dockerfile");
    let kustomization = read("deploy/kubernetes/kustomization.yaml");
    for binary in &binaries {
        assert!(
            dockerfile.contains(&format!("/src/target/release/{binary} ")),
            "the image does not carry {binary}"
        );
        if binary == "fleetctl" {
            continue;
        }
        let manifest = read(&format!("deploy/kubernetes/{binary}.yaml"));
        assert!(
            manifest.contains(&format!("command: [\"/usr/local/bin/{binary}\"]")),
            "{binary}.yaml does not run {binary}"
        );
        assert!(
            kustomization.contains(&format!("- {binary}.yaml")),
            "the kustomization does not list {binary}.yaml"
        );
    }
}

#[test]
fn probes_ports_and_grace_match_the_production_configuration() {
    let config = production();
    let probes = port(&config.worker.health_addr);
    let api = port(&config.gateway.listen);
    for binary in binaries().iter().filter(|b| *b != "fleetctl") {
        let manifest = read(&format!("deploy/kubernetes/{binary}.yaml"));
        assert!(
            manifest.contains(&format!("{{ name: probes, containerPort: {probes} }}")),
            "{binary}: the probes port is not worker.health_addr's {probes}"
        );
        assert!(
            manifest.contains("httpGet: { path: /healthz, port: probes }"),
            "{binary}"
        );
        assert!(
            manifest.contains("httpGet: { path: /readyz, port: probes }"),
            "{binary}"
        );
        let grace: u64 = value(&manifest, "terminationGracePeriodSeconds")
            .unwrap_or_else(|| panic!("{binary}: no terminationGracePeriodSeconds"))
            .parse()
            .unwrap();
        assert!(
            grace * 1000 > config.worker.shutdown_grace_ms,
            "{binary}: {grace} s is not above the drain grace of {} ms",
            config.worker.shutdown_grace_ms
        );
        if binary == "gateway" {
            assert!(
                manifest.contains(&format!("{{ name: http, containerPort: {api} }}")),
                "the gateway's API port is not gateway.listen's {api}"
            );
            assert!(manifest.contains("kind: HorizontalPodAutoscaler"));
        }
    }
}

#[test]
fn every_scaled_object_names_a_stream_and_consumer_of_the_topology() {
    let topology = Topology::from_config(&production());
    let mut scaled = 0;
    for binary in binaries() {
        let path = format!("deploy/kubernetes/{binary}-scaledobject.yaml");
        let Ok(yaml) = std::fs::read_to_string(root().join(&path)) else {
            continue;
        };
        scaled += 1;
        let stream = value(&yaml, "stream").unwrap_or_else(|| panic!("{path}: no stream"));
        let consumer = value(&yaml, "consumer").unwrap_or_else(|| panic!("{path}: no consumer"));
        assert!(
            topology
                .consumers
                .iter()
                .any(|c| c.stream == stream && c.durable == consumer),
            "{path}: {stream}/{consumer} is not a consumer of the topology"
        );
        assert_eq!(
            value(&yaml, "scaleTargetRef"),
            Some(format!("{{ name: {binary} }}").as_str())
        );
    }
    // Every durable consumer of the topology scales its worker.
    assert_eq!(scaled, topology.consumers.len());
}
