//! `deploy/` tied to the code, no cluster needed. Both kustomize overlays are rendered with
//! `kubectl kustomize` and validated against the Kubernetes API schemas
//! (`kubernetes-validate --strict`, installed by `just setup`); then the rendered objects are
//! checked against the workspace and the configuration each overlay ships: the image builds
//! and carries every binary, each worker and the gateway runs in a Deployment of its own, the
//! probes and the API hit the ports the configuration uses, the grace period covers the drain,
//! the configuration mounted is the overlay's, each ScaledObject names a stream and durable
//! consumer of the topology (and every consumer has one), and the NATS Helm values run the
//! 3-node JetStream cluster the production overlay expects.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use fleet_config::{Config, ConfigSource};
use fleet_runtime::Topology;
use serde_json::Value;

const OVERLAYS: [&str; 2] = ["dev", "prod"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The binaries of `workers/`: each package's `[[bin]]` names, or the package's own name when
/// it has a `src/main.rs` and no `[[bin]]` (fleetctl).
fn binaries() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for entry in std::fs::read_dir(root().join("workers")).unwrap() {
        let folder = entry.unwrap().path();
        let Ok(text) = std::fs::read_to_string(folder.join("Cargo.toml")) else {
            continue;
        };
        let (mut section, mut package, mut bins) = (String::new(), None, Vec::new());
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('[') {
                section = line.to_owned();
            } else if let Some(name) = line.strip_prefix("name = ") {
                let name = name.trim_matches('"').to_owned();
                match section.as_str() {
                    "[package]" => package = Some(name),
                    "[[bin]]" => bins.push(name),
                    _ => {}
                }
            }
        }
        if bins.is_empty() && folder.join("src/main.rs").exists() {
            bins.extend(package);
        }
        out.extend(bins);
    }
    out
}

/// `kubectl kustomize` of an overlay, as the objects it renders: rendered and validated once
/// per overlay for all the tests of this file.
fn render(overlay: &str) -> Vec<Value> {
    static RENDERED: std::sync::OnceLock<Vec<(String, Vec<Value>)>> = std::sync::OnceLock::new();
    RENDERED
        .get_or_init(|| {
            OVERLAYS
                .iter()
                .map(|o| ((*o).to_owned(), render_now(o)))
                .collect()
        })
        .iter()
        .find(|(o, _)| o == overlay)
        .map(|(_, objects)| objects.clone())
        .unwrap_or_else(|| panic!("no overlay {overlay}"))
}

fn render_now(overlay: &str) -> Vec<Value> {
    let dir = root().join("deploy/k8s/overlays").join(overlay);
    let output = Command::new("kubectl")
        .arg("kustomize")
        .arg(&dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("kubectl (with its built-in kustomize) is needed to render deploy/k8s: {e}")
        });
    assert!(
        output.status.success(),
        "kubectl kustomize {overlay}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    validate(overlay, &text);
    use serde::Deserialize;
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|document| Value::deserialize(document).unwrap())
        .collect()
}

/// `kubernetes-validate --strict` (from `just setup`, in `$FLEET_HOME/venv`): every object of
/// a known kind against the API's OpenAPI schema, unknown fields refused. ScaledObjects (a
/// KEDA CRD it has no schema for) are checked below instead.
fn validate(overlay: &str, rendered: &str) {
    let home = std::env::var_os("FLEET_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".fleet"));
    let validator = home.join("venv/bin/kubernetes-validate");
    assert!(
        validator.exists(),
        "{} is missing: run `just setup`",
        validator.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(format!("{overlay}.yaml"));
    std::fs::write(&file, rendered).unwrap();
    let output = Command::new(&validator)
        .args(["--strict", "--quiet"])
        .arg(&file)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && !report.contains("ERROR"),
        "{overlay} does not validate:\n{report}"
    );
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

fn named<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// The configuration a pod of `overlay` loads: the image's default.toml, then the overlay's
/// fleet.toml as kubernetes.toml, then what the fleet-secrets Secret gives as FLEET_*
/// variables (stood in for here).
fn configuration(overlay: &str) -> Config {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("default.toml"), read("config/default.toml")).unwrap();
    let text = read(&format!("deploy/k8s/overlays/{overlay}/fleet.toml"));
    let text = text
        .replacen(
            "[tenantdb.turso]\n",
            "[tenantdb.turso]\napi_token = \"stand-in\"\n",
            1,
        )
        .replacen(
            "[router]\n",
            "[router]\ntoken_secret = \"a stand-in of thirty-two bytes or more\"\n",
            1,
        )
        .replacen("[nats.auth]\n", "[nats.auth]\npassword = \"stand-in\"\n", 1)
        + "\n[secrets]\nactive_key = \"k1\"\nkeys = { k1 = \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\" }\n";
    std::fs::write(dir.path().join("kubernetes.toml"), text).unwrap();
    Config::load_from(&ConfigSource {
        dir: dir.path().to_path_buf(),
        env: "kubernetes".into(),
    })
    .unwrap_or_else(|e| panic!("{overlay}'s configuration does not load: {e}"))
}

fn port(address: &str) -> u64 {
    address.rsplit(':').next().unwrap().parse().unwrap()
}

fn container(deployment: &Value) -> &Value {
    &deployment["spec"]["template"]["spec"]["containers"][0]
}

fn container_port(container: &Value, name: &str) -> Option<u64> {
    container["ports"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
}

#[test]
fn the_image_builds_and_carries_every_binary_and_each_runs_in_its_deployment() {
    let binaries = binaries();
    assert!(
        ["fleetctl", "gateway", "provisioner"]
            .iter()
            .all(|b| binaries.contains(*b)),
        "{binaries:?}"
    );
    let dockerfile = read("deploy/Dockerfile");
    let copy = dockerfile
        .lines()
        .find(|l| l.starts_with("COPY --from=build"))
        .expect("the runtime stage copies the binaries");
    for binary in &binaries {
        // Built in the dependency layer and in the final build, then copied.
        assert_eq!(
            dockerfile.matches(&format!("-p {binary} ")).count()
                + dockerfile.matches(&format!("-p {binary}\n")).count(),
            2,
            "the image does not build {binary} in both cargo steps"
        );
        assert!(
            copy.contains(&format!("/src/target/release/{binary} ")),
            "the image does not carry {binary}"
        );
    }
    for overlay in OVERLAYS {
        let objects = render(overlay);
        for binary in binaries.iter().filter(|b| *b != "fleetctl") {
            let deployment = named(&objects, "Deployment", binary);
            assert_eq!(
                container(deployment)["command"],
                serde_json::json!([format!("/usr/local/bin/{binary}")]),
                "{overlay}: the {binary} Deployment does not run {binary}"
            );
        }
        // fleetctl (the image's entrypoint) creates the topology before anything needs it.
        let job = named(&objects, "Job", "fleet-streams-init");
        assert_eq!(
            job["spec"]["template"]["spec"]["containers"][0]["args"],
            serde_json::json!(["streams", "init"])
        );
        assert_eq!(
            of_kind(&objects, "Deployment").len(),
            binaries.len() - 1,
            "{overlay}: a Deployment for no binary"
        );
    }
}

#[test]
fn probes_ports_grace_and_configuration_match_each_overlay() {
    for overlay in OVERLAYS {
        let objects = render(overlay);
        let config = configuration(overlay);
        let config_map = of_kind(&objects, "ConfigMap");
        assert_eq!(config_map.len(), 1, "{overlay}: one fleet-config ConfigMap");
        let config_map = config_map[0];
        assert_eq!(
            config_map["data"]["kubernetes.toml"].as_str(),
            Some(read(&format!("deploy/k8s/overlays/{overlay}/fleet.toml")).as_str()),
            "{overlay}: the ConfigMap holds the overlay's fleet.toml as kubernetes.toml"
        );
        let probes = port(&config.worker.health_addr);
        let api = port(&config.gateway.listen);
        for deployment in of_kind(&objects, "Deployment") {
            let name = deployment["metadata"]["name"].as_str().unwrap();
            let pod = &deployment["spec"]["template"]["spec"];
            let c = container(deployment);
            assert_eq!(
                container_port(c, "probes"),
                Some(probes),
                "{overlay}/{name}: the probes port is not worker.health_addr's {probes}"
            );
            for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
                assert_eq!(c[probe]["httpGet"]["path"], path, "{overlay}/{name}");
                assert_eq!(c[probe]["httpGet"]["port"], "probes", "{overlay}/{name}");
            }
            // The grace covers a preStop sleep and then the drain.
            let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
            let pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
                .as_u64()
                .unwrap_or(0);
            assert!(
                grace * 1000 > pre_stop * 1000 + config.worker.shutdown_grace_ms,
                "{overlay}/{name}: {grace} s is not above the preStop sleep ({pre_stop} s) and the drain grace of {} ms",
                config.worker.shutdown_grace_ms
            );
            // The autoscaler owns the count.
            assert!(
                deployment["spec"].get("replicas").is_none(),
                "{overlay}/{name}: replicas set on an autoscaled Deployment"
            );
            // The overlay's configuration, under the name FLEET_ENV loads.
            let env = c["env"].as_array().unwrap();
            assert!(
                env.iter()
                    .any(|e| e["name"] == "FLEET_ENV" && e["value"] == "kubernetes"),
                "{overlay}/{name}: FLEET_ENV"
            );
            let mount = c["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["subPath"] == "kubernetes.toml")
                .unwrap_or_else(|| panic!("{overlay}/{name}: kubernetes.toml is not mounted"));
            assert_eq!(mount["mountPath"], "/etc/fleet/config/kubernetes.toml");
            let volume = pod["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == mount["name"])
                .unwrap();
            assert_eq!(
                volume["configMap"]["name"], config_map["metadata"]["name"],
                "{overlay}/{name}: mounts another ConfigMap than the overlay's"
            );
            assert!(
                c["envFrom"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|e| e["secretRef"]["name"] == "fleet-secrets"),
                "{overlay}/{name}: secrets come from fleet-secrets"
            );
            assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
            if name == "gateway" {
                assert_eq!(
                    container_port(c, "http"),
                    Some(api),
                    "{overlay}: the gateway's API port is not gateway.listen's {api}"
                );
            }
        }
        // The gateway: a Service on its API port and an HPA on CPU.
        let service = named(&objects, "Service", "gateway");
        assert_eq!(service["spec"]["ports"][0]["targetPort"], "http");
        // Traffic leaves a stopping gateway before it stops accepting.
        let gateway = container(named(&objects, "Deployment", "gateway"));
        assert!(gateway["lifecycle"]["preStop"]["sleep"]["seconds"].as_u64() > Some(0));
        let hpa = named(&objects, "HorizontalPodAutoscaler", "gateway");
        assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "gateway");
        assert_eq!(hpa["spec"]["metrics"][0]["resource"]["name"], "cpu");
    }
}

#[test]
fn every_scaled_object_names_a_stream_and_consumer_of_the_topology() {
    for overlay in OVERLAYS {
        let objects = render(overlay);
        let config = configuration(overlay);
        let topology = Topology::from_config(&config);
        let scaled = of_kind(&objects, "ScaledObject");
        for object in &scaled {
            let name = object["metadata"]["name"].as_str().unwrap();
            let trigger = &object["spec"]["triggers"][0];
            assert_eq!(trigger["type"], "nats-jetstream", "{overlay}/{name}");
            let stream = trigger["metadata"]["stream"].as_str().unwrap();
            let consumer = trigger["metadata"]["consumer"].as_str().unwrap();
            assert!(
                topology
                    .consumers
                    .iter()
                    .any(|c| c.stream == stream && c.durable == consumer),
                "{overlay}/{name}: {stream}/{consumer} is not a consumer of the topology"
            );
            // It scales the Deployment of the worker that consumes it.
            assert_eq!(object["spec"]["scaleTargetRef"]["name"], consumer);
            named(&objects, "Deployment", consumer);
            let endpoint = trigger["metadata"]["natsServerMonitoringEndpoint"]
                .as_str()
                .unwrap();
            assert_eq!(
                port(endpoint),
                8222,
                "{overlay}/{name}: NATS monitoring is on 8222"
            );
            // A replica's share of the lag is what it takes at once.
            assert_eq!(
                trigger["metadata"]["lagThreshold"],
                config.worker.concurrency.to_string(),
                "{overlay}/{name}: lagThreshold is not worker.concurrency"
            );
            let min = object["spec"]["minReplicaCount"].as_u64().unwrap();
            let max = object["spec"]["maxReplicaCount"].as_u64().unwrap();
            assert!(1 <= min && min <= max, "{overlay}/{name}: {min}..{max}");
        }
        // Every durable consumer of the topology scales its worker.
        assert_eq!(scaled.len(), topology.consumers.len(), "{overlay}");
    }
}

#[test]
fn production_runs_three_replicas_on_the_three_node_cluster_of_the_helm_values() {
    assert_eq!(configuration("prod").nats.replicas, 3);
    assert_eq!(configuration("dev").nats.replicas, 1);
    let values: Value = serde_yaml_ng::from_str(&read("deploy/nats/values.yaml")).unwrap();
    let config = &values["config"];
    assert_eq!(config["cluster"]["enabled"], true);
    assert_eq!(config["cluster"]["replicas"], 3);
    assert_eq!(config["jetstream"]["enabled"], true);
    assert_eq!(config["jetstream"]["fileStore"]["enabled"], true);
    assert_eq!(config["jetstream"]["fileStore"]["pvc"]["enabled"], true);
    assert_eq!(config["monitor"]["enabled"], true);
    assert_eq!(config["monitor"]["port"], 8222);
    assert_eq!(values["service"]["ports"]["monitor"]["enabled"], true);
    // The server version the fleet is tested with (the justfile pins it).
    let pinned = read("justfile")
        .lines()
        .find_map(|l| l.strip_prefix("nats_version := "))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .unwrap();
    let tag = values["container"]["image"]["tag"].as_str().unwrap();
    assert!(
        tag.starts_with(&pinned),
        "{tag} is not nats-server {pinned}"
    );
    // The prod overlay's NATS URL is the chart's Service.
    let url = configuration("prod").nats.url;
    assert!(url.contains("nats.nats.svc"), "{url}");
    // Clients authenticate: the overlay's user is the one the servers know, whose password
    // the servers read from the environment, set from a Secret (not written in the values).
    let user = configuration("prod").nats.auth.user;
    let users = config["merge"]["authorization"]["users"]
        .as_array()
        .expect("an authorization block with users");
    assert_eq!(users.len(), 1, "{users:?}");
    assert_eq!(users[0]["user"].as_str(), Some(user.as_str()));
    let password = users[0]["password"].as_str().unwrap();
    let variable = password
        .strip_prefix("<< $")
        .and_then(|v| v.strip_suffix(" >>"))
        .unwrap_or_else(|| panic!("the password is not read from the environment: {password}"));
    let env = &values["container"]["env"][variable]["valueFrom"]["secretKeyRef"];
    assert!(
        env["name"].as_str().is_some() && env["key"].as_str().is_some(),
        "{variable} is not set from a Secret"
    );
}
