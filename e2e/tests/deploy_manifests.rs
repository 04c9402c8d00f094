//! `deploy/` must say only what the binaries understand: every flag, `NIO_`
//! environment variable, port and probe path in the Kubernetes manifests
//! (as rendered by kustomize), the compose file and the Dockerfile is
//! checked against the real binaries' `--help` and against each other.
#![allow(clippy::unwrap_used)]

use anyhow::{bail, Context, Result};
use nio_e2e::bin;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn help(binary: &str) -> String {
    let out = Command::new(bin(binary)).arg("--help").output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// Which binary an image runs.
fn binary_of(image: &str) -> Option<&'static str> {
    if image.contains("control-plane") {
        Some("nio-control-plane")
    } else if image.contains("data-plane") {
        Some("nio-data-plane")
    } else if image.contains("demo-backend") {
        Some("nio-demo-backend")
    } else {
        None
    }
}

fn port_of(listen: &str) -> u16 {
    listen.rsplit(':').next().unwrap().parse().unwrap()
}

/// Checks one container's settings against its binary; returns env by name.
fn check_settings(
    what: &str,
    binary: &str,
    env: &BTreeMap<String, String>,
    args: &[String],
    helps: &mut HashMap<String, String>,
) -> Result<()> {
    let help = helps
        .entry(binary.to_string())
        .or_insert_with(|| help(binary));
    for name in env.keys().filter(|k| k.starts_with("NIO_")) {
        if !help.contains(name.as_str()) {
            bail!("{what}: {binary} does not read environment variable {name}");
        }
    }
    for flag in args.iter().filter(|a| a.starts_with("--")) {
        let flag = flag.split('=').next().unwrap();
        if !help.contains(&format!("{flag} ")) && !help.contains(&format!("{flag}\n")) {
            bail!("{what}: {binary} has no flag {flag}");
        }
    }
    for (name, value) in env {
        if name.ends_with("_LISTEN") && !value.starts_with("0.0.0.0:") {
            bail!("{what}: {name}={value} is not reachable from outside the container; listen on 0.0.0.0");
        }
    }
    Ok(())
}

fn kustomize(dir: &Path) -> Result<Vec<Value>> {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .context(
            "running `kubectl kustomize` (scripts/test installs kubectl when it is missing)",
        )?;
    if !out.status.success() {
        bail!("kustomize failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8(out.stdout)?;
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v: Value = <Value as serde::Deserialize>::deserialize(doc)
            .context("rendered output is not YAML")?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    Ok(docs)
}

/// Whether `path` is a file of a volume mounted in container `c` from
/// Secret `secret` (the whole Secret, or an item with that file name).
fn mounted_from_secret(pod: &Value, c: &Value, path: &str, secret: &str) -> bool {
    let (dir, file) = path.rsplit_once('/').unwrap();
    c["volumeMounts"].as_array().into_iter().flatten().any(|m| {
        m["mountPath"] == dir
            && pod["spec"]["volumes"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|v| {
                    let s = &v["secret"];
                    v["name"] == m["name"]
                        && s["secretName"] == secret
                        && s["items"]
                            .as_array()
                            .is_none_or(|items| items.iter().any(|i| i["path"] == file))
                })
    })
}

#[test]
fn kubernetes_manifests_match_the_binaries() -> Result<()> {
    let docs = kustomize(&repo().join("deploy/k8s/overlays/example"))?;
    fn of_kind<'a>(docs: &'a [Value], k: &'a str) -> impl Iterator<Item = &'a Value> {
        docs.iter().filter(move |d| d["kind"] == k)
    }
    let by_kind = |k: &'static str| of_kind(&docs, k);
    for kind in [
        "StatefulSet",
        "Deployment",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Namespace",
    ] {
        assert!(
            by_kind(kind).count() >= 1,
            "no {kind} in the rendered output"
        );
    }
    let services: HashMap<String, &Value> = by_kind("Service")
        .map(|s| (s["metadata"]["name"].as_str().unwrap().to_string(), s))
        .collect();
    let mut helps = HashMap::new();
    let mut seen = Vec::new();
    let (mut dp_hosts, mut cp_names) = (Vec::new(), Vec::new());
    for workload in by_kind("StatefulSet").chain(by_kind("Deployment")) {
        let name = workload["metadata"]["name"].as_str().unwrap();
        let pod = &workload["spec"]["template"];
        let labels = &pod["metadata"]["labels"];
        for c in pod["spec"]["containers"].as_array().unwrap() {
            let image = c["image"].as_str().unwrap();
            let binary =
                binary_of(image).with_context(|| format!("{name}: unknown image {image}"))?;
            seen.push(binary);
            let mut env = BTreeMap::new();
            for e in c["env"].as_array().into_iter().flatten() {
                let key = e["name"].as_str().unwrap().to_string();
                if key.ends_with("_TOKEN") {
                    assert!(
                        e["valueFrom"]["secretKeyRef"].is_object(),
                        "{name}: {key} must come from a Secret, never a literal"
                    );
                }
                env.insert(
                    key,
                    e["value"]
                        .as_str()
                        .unwrap_or("<from secret or field>")
                        .to_string(),
                );
            }
            let args: Vec<String> = c["args"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|a| a.as_str().unwrap().to_string())
                .collect();
            check_settings(name, binary, &env, &args, &mut helps)?;
            if let Some(names) = env.get("NIO_GRPC_TLS_NAMES") {
                cp_names.extend(names.split(',').map(str::to_string));
                for file in ["NIO_CA_CERT", "NIO_CA_KEY"] {
                    let path = &env[file];
                    assert!(
                        mounted_from_secret(pod, c, path, "nio-ca"),
                        "{name}: {file} {path} is not mounted from the nio-ca Secret"
                    );
                }
            }

            // Named ports are the ports the process listens on.
            let ports: HashMap<&str, u16> = c["ports"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    (
                        p["name"].as_str().unwrap(),
                        p["containerPort"].as_u64().unwrap() as u16,
                    )
                })
                .collect();
            let listens: Vec<u16> = env
                .iter()
                .filter(|(k, _)| k.ends_with("_LISTEN"))
                .map(|(_, v)| port_of(v))
                .collect();
            for (pname, port) in &ports {
                assert!(
                    listens.contains(port),
                    "{name}: port {pname}={port} matches no *_LISTEN setting {listens:?}"
                );
            }
            // Probes hit real endpoints on the right listener.
            let (probe_port, paths): (u16, &[&str]) = match binary {
                "nio-data-plane" => (port_of(&env["NIO_OPS_LISTEN"]), &["/readyz", "/healthz"]),
                _ => (port_of(&env["NIO_ADMIN_LISTEN"]), &["/healthz"]),
            };
            for (probe, want) in [
                ("readinessProbe", paths[0]),
                ("livenessProbe", *paths.last().unwrap()),
            ] {
                let get = &c[probe]["httpGet"];
                assert_eq!(get["path"], want, "{name}: {probe} path");
                let port = get["port"]
                    .as_str()
                    .map(|n| ports[n])
                    .or(get["port"].as_u64().map(|p| p as u16));
                assert_eq!(port, Some(probe_port), "{name}: {probe} port");
            }
            if binary == "nio-data-plane" {
                let grace = pod["spec"]["terminationGracePeriodSeconds"]
                    .as_u64()
                    .unwrap();
                let pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
                    .as_u64()
                    .unwrap_or(0);
                let drain: u64 = env["NIO_DRAIN_TIMEOUT"].parse()?;
                let delay: u64 = env.get("NIO_DRAIN_DELAY").map_or(Ok(0), |d| d.parse())?;
                assert!(grace > pre_stop + delay + drain, "{name}: terminationGracePeriodSeconds {grace} must exceed preStop {pre_stop} + drain delay {delay} + drain timeout {drain}");
                // The control plane URL names a real Service and port.
                let url = &env["NIO_CONTROL_PLANE"];
                let hostport = url.strip_prefix("https://").with_context(|| {
                    format!("{name}: NIO_CONTROL_PLANE {url} must be https:// (mutual TLS)")
                })?;
                let (host, port) = hostport.split_once(':').unwrap();
                dp_hosts.push(host.to_string());
                // The CA file is on a volume mounted from the nio-ca Secret.
                let ca = &env["NIO_CONTROL_PLANE_CA"];
                assert!(
                    mounted_from_secret(pod, c, ca, "nio-ca"),
                    "{name}: {ca} is not mounted from the nio-ca Secret"
                );
                let svc = services.get(host).with_context(|| {
                    format!("{name}: NIO_CONTROL_PLANE names no Service {host}")
                })?;
                assert!(
                    svc["spec"]["ports"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|p| p["port"].as_u64() == port.parse().ok()),
                    "{name}: Service {host} has no port {port}"
                );
            }
            // Every Service selecting this pod targets a port it has.
            for svc in services.values() {
                let selector = svc["spec"]["selector"].as_object().unwrap();
                if selector.iter().all(|(k, v)| &labels[k] == v) {
                    for p in svc["spec"]["ports"].as_array().unwrap() {
                        let target = p["targetPort"].as_str().unwrap();
                        assert!(
                            ports.contains_key(target),
                            "Service {} targets port {target} that {name} lacks",
                            svc["metadata"]["name"]
                        );
                    }
                }
            }
        }
    }
    assert!(seen.contains(&"nio-control-plane") && seen.contains(&"nio-data-plane"));
    // The control plane's gRPC certificate names the host data planes use.
    for host in &dp_hosts {
        assert!(
            cp_names.contains(host),
            "NIO_GRPC_TLS_NAMES {cp_names:?} lacks {host}"
        );
    }
    // The HPA and PDB point at the data-plane Deployment.
    let hpa = by_kind("HorizontalPodAutoscaler").next().unwrap();
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "nio-data-plane");
    Ok(())
}

#[test]
fn compose_file_matches_the_binaries() -> Result<()> {
    let text = std::fs::read_to_string(repo().join("deploy/docker-compose.yml"))?;
    let compose: Value = serde_yaml::from_str(&text)?;
    let services = compose["services"].as_object().unwrap();
    let mut helps = HashMap::new();
    for (name, svc) in services {
        let binary = binary_of(svc["build"]["target"].as_str().unwrap()).unwrap();
        let env: BTreeMap<String, String> = svc["environment"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string()),
                )
            })
            .collect();
        for (k, v) in &env {
            if k.ends_with("_TOKEN") {
                assert!(
                    v.starts_with("${") && v.contains(":?"),
                    "{name}: {k} must be required from the environment, not a literal"
                );
            }
        }
        check_settings(name, binary, &env, &[], &mut helps)?;
        for mapping in svc["ports"].as_array().into_iter().flatten() {
            let container_port: u16 = mapping
                .as_str()
                .unwrap()
                .rsplit(':')
                .next()
                .unwrap()
                .parse()?;
            assert!(
                env.values()
                    .any(|v| v.ends_with(&format!(":{container_port}"))),
                "{name}: published port {container_port} is not a listen port"
            );
        }
        if binary == "nio-data-plane" {
            let grace: u64 = svc["stop_grace_period"]
                .as_str()
                .unwrap()
                .trim_end_matches('s')
                .parse()?;
            let drain: u64 = env["NIO_DRAIN_TIMEOUT"].parse()?;
            let delay: u64 = env["NIO_DRAIN_DELAY"].parse()?;
            assert!(
                grace > drain + delay,
                "{name}: stop_grace_period {grace}s must exceed drain delay + timeout"
            );
            let cp = env["NIO_CONTROL_PLANE"]
                .strip_prefix("https://")
                .with_context(|| format!("{name}: NIO_CONTROL_PLANE must be https://"))?
                .split(':')
                .next()
                .unwrap()
                .to_string();
            assert!(
                services.contains_key(&cp),
                "{name}: NIO_CONTROL_PLANE names no service {cp}"
            );
            // The gRPC certificate names that host, and the CA file the data
            // plane reads is the one init-ca writes, on a shared volume.
            let cp_env = &services[&cp]["environment"];
            let names = cp_env["NIO_GRPC_TLS_NAMES"].as_str().unwrap_or_default();
            assert!(
                names.split(',').any(|n| n == cp),
                "{cp}: NIO_GRPC_TLS_NAMES lacks {cp}"
            );
            let ca = &env["NIO_CONTROL_PLANE_CA"];
            assert_eq!(cp_env["NIO_CA_CERT"].as_str(), Some(ca.as_str()));
            let init = services["pki-init"]["command"].as_array().unwrap();
            assert!(
                init.iter().any(|a| a == ca.as_str()),
                "pki-init does not write {ca}"
            );
        }
    }
    Ok(())
}

#[test]
fn dockerfile_matches_the_build_script_and_binaries() -> Result<()> {
    let text = std::fs::read_to_string(repo().join("deploy/Dockerfile"))?;
    assert!(
        text.contains("RUN deploy/build.sh /out"),
        "the image must build with deploy/build.sh, the script CI runs"
    );
    let script = std::fs::read_to_string(repo().join("deploy/build.sh"))?;
    let mut helps = HashMap::new();
    let mut stage = String::new();
    let mut env = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("FROM ") {
            stage = rest.rsplit(' ').next().unwrap().to_string();
            env.clear();
        } else if let Some(rest) = line
            .strip_prefix("ENV ")
            .or_else(|| line.strip_prefix("NIO_"))
        {
            let rest = if line.starts_with("NIO_") { line } else { rest };
            for kv in rest.trim_end_matches('\\').split_whitespace() {
                if let Some((k, v)) = kv.split_once('=') {
                    env.insert(k.to_string(), v.to_string());
                }
            }
        } else if let Some(rest) = line.strip_prefix("EXPOSE ") {
            for port in rest.split_whitespace() {
                if stage != "demo-backend" {
                    assert!(
                        env.values().any(|v| v.ends_with(&format!(":{port}"))),
                        "{stage}: EXPOSE {port} is no listen port"
                    );
                }
            }
        } else if let Some(rest) = line.strip_prefix("ENTRYPOINT ") {
            let entry: Vec<String> = serde_json::from_str(rest)?;
            let binary = entry[0].rsplit('/').next().unwrap();
            assert!(
                script.contains(binary),
                "{stage}: {binary} is not built by deploy/build.sh"
            );
            assert_eq!(
                binary_of(&stage),
                Some(binary_of(binary).unwrap()),
                "stage {stage} runs {binary}"
            );
            check_settings(&stage, binary, &env, &entry[1..], &mut helps)?;
        }
    }
    Ok(())
}
