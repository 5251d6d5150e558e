//! The deploy files in deploy/: the systemd units pass `systemd-analyze verify` against the
//! built binaries, and the numbers in every file hold against each other and against the
//! cluster (`grace`, the shutdown delay, the give-up exit code), so that changing one without
//! the others fails here.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cluster::Options;
use cluster::master::EXIT_RESTART_LIMIT;
use support::TempDir;

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(file)
}

fn read(file: &str) -> String {
    std::fs::read_to_string(deploy(file)).unwrap_or_else(|e| panic!("read deploy/{file}: {e}"))
}

/// A duration as the options write them (`15s`), through the options' own parser.
fn duration(text: &str) -> Duration {
    let mut options = Options::new();
    options
        .set_from_str("grace", text)
        .unwrap_or_else(|e| panic!("{text:?}: {e}"));
    options.grace()
}

/// The `Key=value` lines of a unit (every value of a key repeated), and its `Environment=`
/// assignments.
fn unit(text: &str) -> (BTreeMap<String, Vec<String>>, BTreeMap<String, String>) {
    let mut keys: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut env = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.starts_with('[') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if key == "Environment" {
            let value = value.trim_matches('"');
            if value.contains(", ") {
                // One quoted assignment whose value holds spaces.
                if let Some((k, v)) = value.split_once('=') {
                    env.insert(k.to_owned(), v.to_owned());
                }
            } else {
                for assignment in value.split_whitespace() {
                    if let Some((k, v)) = assignment.split_once('=') {
                        env.insert(k.to_owned(), v.to_owned());
                    }
                }
            }
        }
        keys.entry(key.to_owned())
            .or_default()
            .push(value.to_owned());
    }
    (keys, env)
}

fn one<'a>(keys: &'a BTreeMap<String, Vec<String>>, key: &str) -> &'a str {
    match keys.get(key).map(Vec::as_slice) {
        Some([value]) => value,
        other => panic!("{key}: want one value, have {other:?}"),
    }
}

/// The shutdown delay examples/http reads, and the grace it derives from it (its code sets
/// `grace(delay + 10s)`; an explicit CLUSTER_GRACE must say the same).
fn delay_and_grace(delay_ms: &str, grace: &str) -> (Duration, Duration) {
    let delay = Duration::from_millis(delay_ms.parse().expect("SHUTDOWN_DELAY_MS in ms"));
    let grace = duration(grace);
    assert_eq!(
        grace,
        delay + Duration::from_secs(10),
        "CLUSTER_GRACE is examples/http's own: the shutdown delay plus 10 s to drain"
    );
    (delay, grace)
}

#[test]
fn the_systemd_units_hold_the_clusters_numbers() {
    let (service, env) = unit(&read("systemd/cluster-http.service"));
    let (socket, _) = unit(&read("systemd/cluster-http.socket"));
    assert_eq!(one(&service, "Type"), "notify-reload");
    assert_eq!(one(&service, "KillMode"), "mixed");
    assert_eq!(one(&service, "KillSignal"), "SIGTERM");
    assert!(one(&service, "ExecReload").contains("reload --wait"));
    let prevent = &service["RestartPreventExitStatus"];
    assert!(
        prevent.contains(&EXIT_RESTART_LIMIT.to_string()),
        "{prevent:?}"
    );
    // A bad option: Cluster::run's exit code for it.
    assert!(prevent.contains(&"2".to_owned()), "{prevent:?}");
    let (_, grace) = delay_and_grace(&env["SHUTDOWN_DELAY_MS"], &env["CLUSTER_GRACE"]);
    let stop = duration(one(&service, "TimeoutStopSec"));
    assert!(
        stop > grace,
        "TimeoutStopSec {stop:?} must exceed grace {grace:?}"
    );
    assert!(duration(one(&service, "WatchdogSec")) > Duration::ZERO);
    assert_eq!(env["CLUSTER_USER"], "nobody");
    let mut options = Options::new();
    for (key, value) in &env {
        if let Some(option) = key.strip_prefix("CLUSTER_") {
            options
                .set_from_str(&option.to_ascii_lowercase(), value)
                .unwrap_or_else(|e| panic!("{key}={value}: {e}"));
        }
    }
    // The socket is where the workers listen: HOST:PORT.
    assert_eq!(
        one(&socket, "ListenStream"),
        format!("{}:{}", env["HOST"], env["PORT"])
    );
}

#[test]
fn systemd_analyze_verifies_the_units() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: no systemd-analyze (Debian package systemd; .ci/run installs it)");
        return;
    }
    // The units name /usr/local/bin; verify checks that the commands exist, so the copies
    // point at the binaries this build made.
    let dir = TempDir::new("units");
    let http = support::example("http");
    for unit in ["cluster-http.service", "cluster-http.socket"] {
        let text = read(&format!("systemd/{unit}"))
            .replace("/usr/local/bin/cluster-http", &http.display().to_string())
            .replace(
                "/usr/local/bin/clusterctl",
                env!("CARGO_BIN_EXE_clusterctl"),
            );
        std::fs::write(dir.0.join(unit), text).expect("write the unit");
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(dir.0.join("cluster-http.socket"))
        .arg(dir.0.join("cluster-http.service"))
        .output()
        .expect("run systemd-analyze");
    let version = Command::new("systemctl")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u32>().ok())
        })
        .unwrap_or(0);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Type=notify-reload and ReloadSignal= came with systemd 253; an older one warns about
    // them and nothing else.
    let unexpected: Vec<&str> = said
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| !(version < 253 && (l.contains("notify-reload") || l.contains("ReloadSignal"))))
        .collect();
    assert!(
        unexpected.is_empty(),
        "systemd-analyze verify (systemd {version}) says:\n{said}"
    );
    if version >= 253 {
        assert!(out.status.success(), "{said}");
    }
}

/// The documents of a YAML file, as JSON values, read by python3's yaml module (Debian
/// package python3-yaml; .ci/run installs it).
fn yaml_documents(path: &Path) -> Vec<serde_json::Value> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        ])
        .arg(path)
        .output()
        .expect("python3 (with its yaml module) reads the manifests");
    assert!(
        out.status.success(),
        "python3 yaml: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON from python3")
}

#[test]
fn the_kubernetes_manifests_hold_the_clusters_numbers() {
    let docs = yaml_documents(&deploy("k8s/cluster-http.yaml"));
    let kind = |k: &str| {
        docs.iter()
            .find(|d| d["kind"] == k)
            .unwrap_or_else(|| panic!("no {k} in the manifests"))
    };
    let deployment = kind("Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let env: BTreeMap<&str, &str> = container["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| {
            (
                e["name"].as_str().expect("name"),
                e["value"].as_str().expect("value"),
            )
        })
        .collect();
    let (delay, grace) = delay_and_grace(env["SHUTDOWN_DELAY_MS"], env["CLUSTER_GRACE"]);
    let termination = Duration::from_secs(
        pod["terminationGracePeriodSeconds"]
            .as_u64()
            .expect("terminationGracePeriodSeconds"),
    );
    assert!(
        termination > grace + delay,
        "terminationGracePeriodSeconds {termination:?} must exceed grace {grace:?} + shutdown delay {delay:?}"
    );
    assert!(
        container.get("lifecycle").is_none(),
        "no preStop hook: the shutdown delay does its work"
    );
    let port = |name: &str| {
        container["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .find(|p| p["name"] == name)
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("no port {name}"))
    };
    assert_eq!(port("http").to_string(), env["PORT"]);
    assert!(env["STATUS_PORT"].ends_with(&format!(":{}", port("status"))));
    let liveness = &container["livenessProbe"];
    assert_eq!(liveness["httpGet"]["path"], "/healthz");
    assert_eq!(liveness["httpGet"]["port"], "status");
    let readiness = &container["readinessProbe"];
    assert_eq!(readiness["httpGet"]["path"], "/readyz");
    assert_eq!(readiness["httpGet"]["port"], "http");
    // The probe must see the 503 of the shutdown delay before the delay is over.
    let noticed = Duration::from_secs(
        readiness["periodSeconds"].as_u64().expect("periodSeconds")
            * readiness["failureThreshold"]
                .as_u64()
                .expect("failureThreshold"),
    );
    assert!(
        noticed < delay,
        "readiness notices in {noticed:?}, within the shutdown delay {delay:?}"
    );
    // The pod runs as the image's own user (deploy/Dockerfile's `USER uid:gid`).
    let security = &pod["securityContext"];
    assert_eq!(security["runAsNonRoot"], true);
    let image_user = read("Dockerfile")
        .lines()
        .find_map(|l| l.strip_prefix("USER ").map(str::trim).map(str::to_owned))
        .expect("a USER line");
    assert_eq!(
        format!("{}:{}", security["runAsUser"], security["runAsGroup"]),
        image_user
    );
    let service = kind("Service");
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "http");
    let pdb = kind("PodDisruptionBudget");
    let replicas = deployment["spec"]["replicas"].as_u64().expect("replicas");
    let min = pdb["spec"]["minAvailable"].as_u64().expect("minAvailable");
    assert!(
        min < replicas,
        "a drain can take a pod: {min} of {replicas}"
    );
    let mut options = Options::new();
    for (key, value) in &env {
        if let Some(option) = key.strip_prefix("CLUSTER_") {
            options
                .set_from_str(&option.to_ascii_lowercase(), value)
                .unwrap_or_else(|e| panic!("{key}={value}: {e}"));
        }
    }
}

#[test]
fn the_dockerfile_builds_in_stages_runs_unprivileged_and_stops_on_sigterm() {
    let text = read("Dockerfile");
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .collect();
    let instruction = |name: &str| -> Vec<&str> {
        lines
            .iter()
            .filter_map(|l| l.strip_prefix(name).map(str::trim))
            .collect()
    };
    assert!(instruction("FROM ").len() >= 2, "multi-stage");
    assert!(instruction("COPY --from=build").len() == 1);
    assert!(text.contains("--example http"));
    let users = instruction("USER ");
    assert_eq!(users.len(), 1);
    assert!(
        !users[0].starts_with("root") && !users[0].starts_with("0"),
        "{users:?}"
    );
    assert_eq!(instruction("STOPSIGNAL "), ["SIGTERM"]);
    // Exec form, and nothing in front: the master is PID 1.
    let entry = instruction("ENTRYPOINT ");
    assert_eq!(entry, [r#"["/usr/local/bin/cluster-http"]"#]);
    assert!(!text.contains("tini") && !text.contains("dumb-init"));
    if Command::new("hadolint").arg("--version").output().is_ok() {
        let out = Command::new("hadolint")
            .arg(deploy("Dockerfile"))
            .output()
            .expect("run hadolint");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}
