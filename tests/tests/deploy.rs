//! `deploy/` checked without a cluster, a container engine or a running systemd: the
//! Kubernetes manifests against the API schemas (`kubernetes-validate`, schemas bundled)
//! and against each other, the pod's two containers run here as two processes wired the
//! way the manifests wire them, the systemd units (`systemd-analyze verify` and `security`),
//! both configurations (`streamgate check-config`), every shell script (`shellcheck`), and
//! what the container build takes from the repository. Each checker is also shown a broken
//! copy, to prove it fails.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use streamgate_tests::gateway::{Gateway, GatewayOptions, assert_problem, curl};
use streamgate_tests::redis::RedisServer;
use streamgate_tests::*;

/// Kubernetes versions the manifests must be valid for: the first that has native sidecars
/// and `preStop.sleep` on by default, and the newest the pinned validator knows.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.30", "1.37"];
/// `systemd-analyze security` exposure (×10) no unit may exceed: 2.0, "OK".
const UNIT_EXPOSURE_MAX: &str = "20";

fn deploy() -> PathBuf {
    repo_root().join("deploy")
}

fn venv_bin(name: &str) -> PathBuf {
    let path = repo_root().join(".venv/bin").join(name);
    assert!(
        path.is_file(),
        "{} is missing: run scripts/setup",
        path.display()
    );
    path
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e} (scripts/setup installs it)"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every YAML document of `path`, as JSON (PyYAML, which kubernetes-validate brings).
fn yaml(path: &Path) -> Vec<Value> {
    let out = run(Command::new(venv_bin("python")).args([
        "-c",
        "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
    ])
    .arg(path));
    assert!(
        out.status.success(),
        "{}: {}",
        path.display(),
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON from PyYAML")
}

/// The manifests `kustomization.yaml` lists, after checking that it lists every one.
fn manifests() -> Vec<PathBuf> {
    let dir = deploy().join("kubernetes");
    let kustomization = yaml(&dir.join("kustomization.yaml")).remove(0);
    let listed: BTreeSet<String> = kustomization["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| r.as_str().expect("a file name").to_owned())
        .collect();
    let present: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    assert_eq!(listed, present, "kustomization.yaml lists every manifest");
    listed.iter().map(|n| dir.join(n)).collect()
}

/// Every object of every manifest.
fn objects() -> Vec<Value> {
    manifests().iter().flat_map(|m| yaml(m)).collect()
}

fn object<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// `kubernetes-validate --strict` for every Kubernetes version above; its output if any fails.
fn kubernetes_validate(files: &[PathBuf]) -> Result<(), String> {
    for version in KUBERNETES_VERSIONS {
        let out = run(Command::new(venv_bin("kubernetes-validate"))
            .args(["--strict", "--quiet", "-k", version])
            .args(files));
        if !out.status.success() {
            return Err(format!("{}{}", text(&out.stdout), text(&out.stderr)));
        }
    }
    Ok(())
}

#[test]
fn kubernetes_manifests_validate_against_the_api_schemas() {
    let files = manifests();
    kubernetes_validate(&files).unwrap_or_else(|e| panic!("invalid manifests:\n{e}"));

    // The same check on broken copies: a misspelled field, and a wrong type.
    let dir = tempfile::tempdir().unwrap();
    let deployment = read(&deploy().join("kubernetes/deployment.yaml"));
    for (from, to, says) in [
        (
            "readOnlyRootFilesystem: true",
            "readOnlyRootFileSystem: true",
            "'readOnlyRootFileSystem' was unexpected",
        ),
        (
            "containerPort: 8080",
            "containerPort: http",
            "'http' is not of type 'integer'",
        ),
    ] {
        assert!(deployment.contains(from), "deployment.yaml has {from}");
        let broken = dir.path().join("deployment.yaml");
        std::fs::write(&broken, deployment.replacen(from, to, 1)).unwrap();
        let err = kubernetes_validate(&[broken]).expect_err("a broken copy must not validate");
        assert!(err.contains(says), "{says}: {err}");
    }
}

/// Both containers' specs, the init (native sidecar) ones first.
fn containers(pod: &Value) -> Vec<&Value> {
    let all = ["initContainers", "containers"];
    all.iter()
        .flat_map(|k| pod[*k].as_array().into_iter().flatten())
        .collect()
}

fn container<'a>(pod: &'a Value, name: &str) -> &'a Value {
    containers(pod)
        .into_iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// Whether every `matchLabels` entry is among `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let selector = selector.as_object().expect("labels");
    !selector.is_empty() && selector.iter().all(|(k, v)| labels[k] == *v)
}

/// The value of `key = "…"` in a TOML text (the first such line).
fn toml_string(toml: &str, key: &str) -> String {
    toml.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{key} = \"")))
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no {key} in the config"))
        .to_owned()
}

fn config_map_toml(objects: &[Value]) -> String {
    let map = object(objects, "ConfigMap", "streamgate-config");
    map["data"]["streamgate.toml"]
        .as_str()
        .expect("streamgate.toml")
        .to_owned()
}

#[test]
fn kubernetes_pods_are_locked_down_and_their_objects_agree() {
    let objects = objects();
    // Every pod: non-root, RuntimeDefault seccomp, no service-account token; every
    // container: read-only root, no privilege escalation, no capabilities, bounded memory.
    for deployment in objects.iter().filter(|o| o["kind"] == "Deployment") {
        let name = &deployment["metadata"]["name"];
        let pod = &deployment["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
            "{name}"
        );
        assert_eq!(pod["automountServiceAccountToken"], false, "{name}");
        for c in containers(pod) {
            let what = format!("{name}/{}", c["name"]);
            let sc = &c["securityContext"];
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{what}");
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{what}");
            assert_eq!(
                sc["capabilities"]["drop"],
                serde_json::json!(["ALL"]),
                "{what}"
            );
            assert!(c["resources"]["limits"]["memory"].is_string(), "{what}");
            assert!(c["resources"]["requests"]["cpu"].is_string(), "{what}");
        }
    }

    let deployment = object(&objects, "Deployment", "streamgate");
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let pod = &deployment["spec"]["template"]["spec"];
    let gateway = container(pod, "gateway");
    let sidecar = container(pod, "sidecar");
    assert_eq!(
        sidecar["restartPolicy"], "Always",
        "a native sidecar: started before the gateway, stopped after it"
    );
    assert_eq!(gateway["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(gateway["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(gateway["ports"][0]["name"], "http");

    // The pod's references resolve to the objects shipped beside it.
    let secret = object(&objects, "Secret", "streamgate-keys");
    assert_eq!(
        gateway["envFrom"][0]["secretRef"]["name"],
        secret["metadata"]["name"]
    );
    let config_volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["configMap"].is_object())
        .expect("a configMap volume");
    assert_eq!(config_volume["configMap"]["name"], "streamgate-config");

    // Every selector picks the gateway pods, every target is this Deployment.
    let service = object(&objects, "Service", "streamgate");
    assert!(
        selects(&service["spec"]["selector"], labels),
        "Service selector"
    );
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "http");
    let pdb = object(&objects, "PodDisruptionBudget", "streamgate");
    assert!(
        selects(&pdb["spec"]["selector"]["matchLabels"], labels),
        "PDB selector"
    );
    let hpa = object(&objects, "HorizontalPodAutoscaler", "streamgate");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "Deployment");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "streamgate");
    assert!(
        hpa["spec"]["minReplicas"].as_u64().unwrap() >= 2,
        "survives one pod's loss"
    );
    let egress = object(&objects, "NetworkPolicy", "streamgate-egress");
    assert!(
        selects(&egress["spec"]["podSelector"]["matchLabels"], labels),
        "the egress policy confines the gateway pods"
    );

    // The config's Redis is the Service shipped here, and only the gateway pods reach it.
    let toml = config_map_toml(&objects);
    // The admin listener's port: the container's `admin` port, the one Prometheus is told
    // to scrape, not behind the Service, and open to the monitoring namespace only.
    let admin: u64 = toml_string(&toml, "admin_listen")
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("admin_listen ADDR:PORT");
    let ports = gateway["ports"].as_array().unwrap();
    assert!(
        ports
            .iter()
            .any(|p| p["name"] == "admin" && p["containerPort"] == admin)
    );
    let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/port"], admin.to_string());
    assert_eq!(service["spec"]["ports"].as_array().unwrap().len(), 1);
    let ingress = object(&objects, "NetworkPolicy", "streamgate-ingress");
    assert!(selects(
        &ingress["spec"]["podSelector"]["matchLabels"],
        labels
    ));
    let admin_rule = &ingress["spec"]["ingress"][1];
    assert_eq!(admin_rule["ports"][0]["port"], admin);
    assert!(admin_rule["from"][0]["namespaceSelector"].is_object());
    let redis = object(&objects, "Service", "streamgate-redis");
    let redis_url = format!(
        "redis://{}:{}/",
        redis["metadata"]["name"].as_str().unwrap(),
        redis["spec"]["ports"][0]["port"]
    );
    assert!(
        toml_string(&toml, "redis_url").starts_with(&redis_url),
        "redis_url is {redis_url}…"
    );
    let redis_pods = &object(&objects, "Deployment", "streamgate-redis")["spec"]["template"]["metadata"]
        ["labels"];
    let redis_policy = object(&objects, "NetworkPolicy", "streamgate-redis");
    assert!(selects(
        &redis_policy["spec"]["podSelector"]["matchLabels"],
        redis_pods
    ));
    assert!(selects(
        &redis_policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"],
        labels
    ));

    // Room to drain: the preStop pause and drain_secs fit in the grace period.
    let drain: u64 = toml
        .lines()
        .find_map(|l| l.trim().strip_prefix("drain_secs = "))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("drain_secs");
    let pause = gateway["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .unwrap();
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(pause + drain + 2 < grace, "{pause} + {drain} + 2 < {grace}");
}

/// `streamgate keygen`: one fresh token-xchacha key-ring entry.
fn keygen() -> String {
    let out = run(Command::new(release_bin("streamgate")).arg("keygen"));
    assert!(out.status.success());
    text(&out.stdout).trim().to_owned()
}

/// Values for the Secret's entries: generated keys (the placeholders can seal nothing).
fn secret_env(objects: &[Value]) -> Vec<(String, String)> {
    let secret = object(objects, "Secret", "streamgate-keys");
    let data = secret["stringData"].as_object().expect("stringData");
    assert!(!data.is_empty());
    data.keys()
        .map(|k| {
            let v = match k.ends_with("_TOKEN_KEYS") {
                true => keygen(),
                false => format!("api-key-{}", std::process::id()),
            };
            (k.clone(), v)
        })
        .collect()
}

/// `streamgate check-config FILE` with `env` (and nothing inherited of it).
fn check_config(file: &Path, env: &[(String, String)]) -> Output {
    run(Command::new(release_bin("streamgate"))
        .arg("check-config")
        .arg(file)
        .envs(env.iter().map(|(k, v)| (k, v))))
}

fn mint(config: &Path, tenant: &str, url: &str, env: &[(String, String)]) -> Output {
    run(Command::new(release_bin("streamgate"))
        .args(["mint", "--config"])
        .arg(config)
        .args(["--tenant", tenant, "--url", url])
        .envs(env.iter().map(|(k, v)| (k, v))))
}

#[test]
fn kubernetes_config_passes_check_config_with_the_secrets_keys() {
    let objects = objects();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("streamgate.toml");
    let toml = config_map_toml(&objects);
    std::fs::write(&config, &toml).unwrap();

    // Exactly the Secret's entries, with real keys: every `{ env }` of the config is one.
    let env = secret_env(&objects);
    let out = check_config(&config, &env);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).trim(),
        format!("{}: ok (2 tenants: media, partner)", config.display())
    );
    let out = mint(&config, "media", "https://media.example.com/a.mp4", &env);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // One entry fewer: refused, naming the variable.
    let out = check_config(&config, &env[1..]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains(&format!("{} is not set", env[0].0)));

    // The shipped placeholders seal nothing (check-config does not look at keys).
    let secret = object(&objects, "Secret", "streamgate-keys");
    let placeholders: Vec<(String, String)> = secret["stringData"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect();
    for tenant in ["media", "partner"] {
        let out = mint(
            &config,
            tenant,
            "https://media.example.com/a.mp4",
            &placeholders,
        );
        assert!(
            !out.status.success(),
            "{tenant}: a placeholder key sealed a link"
        );
        assert!(
            text(&out.stderr).contains("cannot seal"),
            "{}",
            text(&out.stderr)
        );
    }

    // A broken copy is refused.
    std::fs::write(&config, toml.replacen("drain_secs", "drain_sec", 1)).unwrap();
    let out = check_config(&config, &env);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("unknown field `drain_sec`"),
        "{}",
        text(&out.stderr)
    );
}

/// The files the container build copies from the repository (not from another stage):
/// `(source, destination)`, flags such as `--chmod` left out.
fn containerfile_copies() -> Vec<(String, String)> {
    read(&deploy().join("Containerfile"))
        .lines()
        .filter_map(|l| l.strip_prefix("COPY "))
        .filter(|l| !l.split_whitespace().any(|w| w.starts_with("--from=")))
        .map(|l| {
            let parts: Vec<&str> = l
                .split_whitespace()
                .filter(|w| !w.starts_with("--"))
                .collect();
            (parts[0].to_owned(), parts[parts.len() - 1].to_owned())
        })
        .collect()
}

/// A pod volume's stand-in: one directory per volume name under `root`.
struct Volumes<'a> {
    root: &'a Path,
}

impl Volumes<'_> {
    fn dir(&self, volume: &str) -> PathBuf {
        let dir = self.root.join(volume);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Where `path`, as `container` sees it, is here: through the container's mounts.
    fn map(&self, container: &Value, path: &str) -> PathBuf {
        let mounts = container["volumeMounts"].as_array().expect("volumeMounts");
        mounts
            .iter()
            .find_map(|m| {
                let rest = path.strip_prefix(m["mountPath"].as_str()?)?;
                Some(
                    self.dir(m["name"].as_str()?)
                        .join(rest.trim_start_matches('/')),
                )
            })
            .unwrap_or_else(|| panic!("{path} is on no volume of {}", container["name"]))
    }
}

/// The pod, run here as two processes the way deployment.yaml wires them: the sidecar
/// started by the image's command for it (deploy/sidecar-start.sh) with the manifest's
/// arguments, the gateway on the ConfigMap's config with the Secret's variables, and every
/// path mapped through each container's volume mounts: the socket only meets if both
/// containers' mounts and the config agree. Redis is a local one; the egress is the
/// tenants' strict default, so the jobs here are refused by it, which proves they got to
/// the sidecar.
#[tokio::test]
async fn kubernetes_pod_runs_as_two_processes_sharing_the_socket_volume() {
    let objects = objects();
    let pod = &object(&objects, "Deployment", "streamgate")["spec"]["template"]["spec"];
    let (gateway_spec, sidecar_spec) = (container(pod, "gateway"), container(pod, "sidecar"));
    let dir = tempfile::tempdir().unwrap();
    let volumes = Volumes { root: dir.path() };

    // The sidecar container: its command is what the image installs from deploy/.
    let command = sidecar_spec["command"][0].as_str().unwrap();
    let (script, _) = containerfile_copies()
        .into_iter()
        .find(|(_, to)| Path::new(to).file_name().is_some_and(|n| n == command))
        .unwrap_or_else(|| panic!("the image installs no {command}"));
    let args: Vec<String> = sidecar_spec["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let a = a.as_str().unwrap();
            match a.strip_prefix("--socket=") {
                Some(path) => format!("--socket={}", volumes.map(sidecar_spec, path).display()),
                None => a.to_owned(),
            }
        })
        .collect();
    let env = sidecar_spec["env"].as_array().unwrap();
    let work_dir = env
        .iter()
        .find(|e| e["name"] == "STREAMGATE_WORK_DIR")
        .and_then(|e| e["value"].as_str())
        .expect("STREAMGATE_WORK_DIR");
    let work_dir = volumes.map(sidecar_spec, work_dir);
    // What a killed predecessor leaves on the volume, which outlives a container restart.
    std::fs::create_dir_all(work_dir.join("job-left")).unwrap();
    std::fs::write(work_dir.join("job-left/partial"), b"x").unwrap();
    let sidecar_bin = release_bin("streamgate-sidecar");
    // The sidecar alone refuses such a work dir: what the start script is for.
    let alone = run(Command::new(&sidecar_bin)
        .args(&args)
        .arg("--work-dir")
        .arg(&work_dir)
        .arg("--yt-dlp")
        .arg(yt_dlp()));
    assert!(!alone.status.success());
    assert!(
        text(&alone.stderr).contains("not empty"),
        "{}",
        text(&alone.stderr)
    );

    let path = format!(
        "{}:{}",
        sidecar_bin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new(repo_root().join(&script));
    cmd.args(&args)
        .env("PATH", path)
        .env("STREAMGATE_WORK_DIR", &work_dir)
        .env("STREAMGATE_YT_DLP", yt_dlp())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut sidecar = ChildGuard::spawn(cmd, "sidecar-start").unwrap();

    // The gateway container: its config from the ConfigMap volume, Redis a local one.
    let redis = RedisServer::start();
    let toml = config_map_toml(&objects);
    let connect = toml_string(&toml, "connect");
    let toml = toml
        .replace(
            &connect,
            &volumes.map(gateway_spec, &connect).display().to_string(),
        )
        .replace(&toml_string(&toml, "redis_url"), &redis.url());
    let config_arg = gateway_spec["args"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|a| a.as_str()?.strip_prefix("--config="))
        .expect("--config=");
    let config = volumes.map(gateway_spec, config_arg);
    std::fs::write(&config, toml).unwrap();
    let secrets = secret_env(&objects);
    let gw = Gateway::start(GatewayOptions {
        config: Some(config.clone()),
        allow_private_urls: false,
        env: secrets.clone(),
        ..GatewayOptions::default()
    })
    .await;
    assert!(
        sidecar.is_running(),
        "the sidecar runs, in the work dir the script emptied"
    );
    assert!(!work_dir.join("job-left").exists());

    let ready = gw.readiness().await;
    assert_eq!(
        ready["egress"], "proxy",
        "--no-netns, as the manifest says: {ready}"
    );
    let pinned = read(&repo_root().join("scripts/yt-dlp.version"));
    assert_eq!(ready["yt_dlp"], pinned.trim(), "{ready}");

    // Tenants by Host; a job reaches the sidecar, whose strict egress refuses port 8080.
    let media = "http://198.51.100.7:8080/clip.mp4";
    let out = mint(&config, "media", media, &secrets);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let link = gw.stream_url(text(&out.stdout).trim());
    let r = curl(&["-H", "Host: media.example.com"], &link);
    assert_problem(&r, 403, "egress_denied", "media tenant, a job on port 8080");
    let r = curl(&["-H", "Host: elsewhere.example"], &link);
    assert_problem(&r, 404, "unknown_host", "no tenant, no default_tenant");

    // The partner's resolve needs its API key; with it, it is counted in Redis.
    let api_key = &secrets
        .iter()
        .find(|(k, _)| k == "PARTNER_API_KEY")
        .unwrap()
        .1;
    let body = format!(r#"{{"url":"{media}"}}"#);
    let post = [
        "-H",
        "Host: api.example.com",
        "-H",
        "Content-Type: application/json",
    ];
    let r = curl(
        &[&post[..], &["--data", &body]].concat(),
        &gw.url("/v1/resolve"),
    );
    assert_problem(&r, 401, "policy_denied", "partner resolve without its key");
    let key_header = format!("x-api-key: {api_key}");
    let with_key = [&post[..], &["-H", &key_header, "--data", &body]].concat();
    let r = curl(&with_key, &gw.url("/v1/resolve"));
    assert_problem(&r, 403, "egress_denied", "partner resolve with its key");
    let count = redis
        .command("GET streamgate:{partner}:resolves")
        .unwrap_or_default();
    assert_eq!(count, "$1\r\n1\r\n", "the resolve was counted in Redis");
}

/// The units with `/usr/local/bin/` pointed at the release binaries, in a temp dir.
fn unit_copies(dir: &Path) -> Vec<PathBuf> {
    let bin = release_bin("streamgate");
    release_bin("streamgate-sidecar");
    let bin_dir = format!("{}/", bin.parent().unwrap().display());
    ["streamgate.service", "streamgate-sidecar.service"]
        .iter()
        .map(|unit| {
            let copy = dir.join(unit);
            let text = read(&deploy().join("systemd").join(unit));
            std::fs::write(&copy, text.replace("/usr/local/bin/", &bin_dir)).unwrap();
            copy
        })
        .collect()
}

/// `systemd-analyze verify`, which reports many mistakes (unknown keys, bad values) on
/// stderr with exit status 0: any output is a failure.
fn verify(units: &[PathBuf]) -> Result<(), String> {
    let out = run(Command::new("systemd-analyze").arg("verify").args(units));
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    match out.status.success() && said.trim().is_empty() {
        true => Ok(()),
        false => Err(said),
    }
}

fn exposure_ok(unit: &Path) -> Result<(), String> {
    let out = run(Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(format!("--threshold={UNIT_EXPOSURE_MAX}"))
        .arg(unit));
    match out.status.success() {
        true => Ok(()),
        false => Err(text(&out.stdout)),
    }
}

#[test]
fn systemd_units_verify_and_are_sandboxed() {
    let dir = tempfile::tempdir().unwrap();
    let units = unit_copies(dir.path());
    verify(&units).unwrap_or_else(|e| panic!("systemd-analyze verify:\n{e}"));
    for unit in &units {
        exposure_ok(unit).unwrap_or_else(|e| panic!("{}:\n{e}", unit.display()));
    }

    // Broken copies: a misspelled option; a binary that is not there; no sandbox.
    let gateway = read(&units[0]);
    let broken = dir.path().join("broken");
    std::fs::create_dir(&broken).unwrap();
    let copy = broken.join("streamgate.service");
    std::fs::copy(&units[1], broken.join("streamgate-sidecar.service")).unwrap();
    let cases = [
        (
            "ProtectSystem=strict",
            "ProtectSystme=strict",
            "Unknown key",
        ),
        (
            "streamgate serve",
            "streamgate-missing serve",
            "is not executable",
        ),
    ];
    for (from, to, says) in cases {
        assert!(gateway.contains(from));
        std::fs::write(&copy, gateway.replacen(from, to, 1)).unwrap();
        let err = verify(&[copy.clone()]).expect_err("a broken unit must not verify");
        assert!(err.contains(says), "{says}: {err}");
    }
    let unsandboxed: String = gateway
        .lines()
        .filter(|l| !l.starts_with("Protect") && !l.starts_with("Private"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&copy, unsandboxed).unwrap();
    assert!(
        exposure_ok(&copy).is_err(),
        "without Protect*/Private* the exposure rises"
    );
}

#[test]
fn systemd_config_passes_check_config_with_the_units_credentials() {
    const CREDENTIALS: &str = "/run/credentials/streamgate.service/";
    let unit = read(&deploy().join("systemd/streamgate.service"));
    let sidecar = read(&deploy().join("systemd/streamgate-sidecar.service"));
    let toml = read(&deploy().join("systemd/streamgate.toml"));

    // The credentials the unit loads are the files the config reads.
    let loaded: BTreeSet<&str> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("LoadCredential="))
        .map(|l| l.split(':').next().unwrap())
        .collect();
    let read_by_config: BTreeSet<&str> = toml
        .match_indices(CREDENTIALS)
        .map(|(i, _)| toml[i + CREDENTIALS.len()..].split('"').next().unwrap())
        .collect();
    assert!(!loaded.is_empty());
    assert_eq!(loaded, read_by_config);
    // The gateway connects where the sidecar listens, with the config the unit names.
    let connect = toml_string(&toml, "connect");
    assert!(
        sidecar.contains(&format!("--socket={connect}")),
        "{connect}"
    );
    assert!(unit.contains("--config=/etc/streamgate/streamgate.toml"));

    // check-config with the credentials as files of a temp dir.
    let dir = tempfile::tempdir().unwrap();
    for name in &loaded {
        let value = match name.ends_with("token-keys") {
            true => keygen(),
            false => "an-api-key".to_owned(),
        };
        std::fs::write(dir.path().join(name), format!("{value}\n")).unwrap();
    }
    let config = dir.path().join("streamgate.toml");
    let here = format!("{}/", dir.path().display());
    std::fs::write(&config, toml.replace(CREDENTIALS, &here)).unwrap();
    let out = check_config(&config, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("ok (2 tenants: media, partner)"));
    // Without one of them: refused.
    std::fs::remove_file(dir.path().join(loaded.first().unwrap())).unwrap();
    assert!(!check_config(&config, &[]).status.success());
}

/// The two units run here with their own command lines and the config they share: the
/// paths systemd provides (`RuntimeDirectory`, `PrivateTmp`, the credentials) and the ones
/// the install steps make (the virtualenv) mapped to a temp dir. The sidecar comes up in
/// netns mode as `--require-netns` asks (the tests run as root), the gateway reaches it at
/// the config's `connect`, and a keyed resolve is refused by the strict egress.
#[tokio::test]
async fn systemd_units_run_together_in_netns_mode() {
    const CREDENTIALS: &str = "/run/credentials/streamgate.service/";
    let dir = tempfile::tempdir().unwrap();
    let (run_dir, tmp_dir) = (dir.path().join("run"), dir.path().join("tmp"));
    let credentials = dir.path().join("credentials");
    for d in [&run_dir.join("streamgate"), &tmp_dir, &credentials] {
        std::fs::create_dir_all(d).unwrap();
    }
    let yt_dlp = yt_dlp().display().to_string();
    let host = |word: &str| {
        // /tmp first: the temp dir that replaces /run/ is itself under /tmp/.
        word.replace("=/tmp/", &format!("={}/", tmp_dir.display()))
            .replace("/run/", &format!("{}/", run_dir.display()))
            .replace("/opt/streamgate/yt-dlp/bin/yt-dlp", &yt_dlp)
    };

    let unit = read(&deploy().join("systemd/streamgate-sidecar.service"));
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart=");
    let mut words = exec.split_whitespace();
    assert_eq!(words.next(), Some("/usr/local/bin/streamgate-sidecar"));
    let mut cmd = Command::new(release_bin("streamgate-sidecar"));
    cmd.args(words.map(host))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("sidecar.log")).unwrap());
    let _sidecar = ChildGuard::spawn(cmd, "streamgate-sidecar").unwrap();

    let redis = RedisServer::start();
    let toml = read(&deploy().join("systemd/streamgate.toml"));
    let toml = toml
        .replace(&toml_string(&toml, "redis_url"), &redis.url())
        .replace(CREDENTIALS, &format!("{}/", credentials.display()));
    let toml = host(&toml);
    let api_key = "a-partner-key";
    for (name, value) in [
        ("media-token-keys", keygen()),
        ("partner-token-keys", keygen()),
        ("partner-api-key", api_key.to_owned()),
    ] {
        std::fs::write(credentials.join(name), format!("{value}\n")).unwrap();
    }
    let config = dir.path().join("streamgate.toml");
    std::fs::write(&config, toml).unwrap();
    let gw = Gateway::start(GatewayOptions {
        config: Some(config),
        allow_private_urls: false,
        ..GatewayOptions::default()
    })
    .await;

    let ready = gw.readiness().await;
    assert_eq!(ready["egress"], "netns", "--require-netns: {ready}");
    let body = r#"{"url":"http://198.51.100.7:8080/clip.mp4"}"#;
    let key_header = format!("x-api-key: {api_key}");
    let args = [
        "-H",
        "Host: api.example.com",
        "-H",
        "Content-Type: application/json",
        "-H",
        &key_header,
        "--data",
        body,
    ];
    let r = curl(&args, &gw.url("/v1/resolve"));
    assert_problem(&r, 403, "egress_denied", "partner resolve with its key");
    let count = redis
        .command("GET streamgate:{partner}:resolves")
        .unwrap_or_default();
    assert_eq!(count, "$1\r\n1\r\n", "the resolve was counted in Redis");
}

/// Every shell script of the repository: scripts/*, .ci/run, deploy/*.sh.
fn shell_scripts() -> Vec<PathBuf> {
    let root = repo_root();
    let mut scripts: Vec<PathBuf> = std::fs::read_dir(root.join("scripts"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| std::fs::read(p).is_ok_and(|b| b.starts_with(b"#!")))
        .collect();
    scripts.push(root.join(".ci/run"));
    scripts.extend(
        std::fs::read_dir(deploy())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "sh")),
    );
    scripts.sort();
    scripts
}

fn shellcheck(scripts: &[PathBuf]) -> Result<(), String> {
    let out = run(Command::new("shellcheck").args(scripts));
    match out.status.success() {
        true => Ok(()),
        false => Err(text(&out.stdout)),
    }
}

#[test]
fn shell_scripts_pass_shellcheck() {
    let scripts = shell_scripts();
    for expected in [
        "scripts/setup",
        "scripts/test",
        ".ci/run",
        "deploy/sidecar-start.sh",
    ] {
        assert!(
            scripts.contains(&repo_root().join(expected)),
            "{expected} is checked"
        );
    }
    shellcheck(&scripts).unwrap_or_else(|e| panic!("shellcheck:\n{e}"));

    // A broken copy: the work dir unquoted.
    let start = read(&deploy().join("sidecar-start.sh"));
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("sidecar-start.sh");
    std::fs::write(
        &copy,
        start.replacen("rm -rf -- \"$work_dir\"", "rm -rf -- $work_dir", 1),
    )
    .unwrap();
    let err = shellcheck(&[copy]).expect_err("an unquoted expansion must not pass");
    assert!(err.contains("SC2086"), "{err}");
}

#[test]
fn container_build_takes_its_pins_and_files_from_the_repository() {
    let containerfile = read(&deploy().join("Containerfile"));
    for (from, _) in containerfile_copies() {
        if from != "." {
            assert!(
                repo_root().join(&from).is_file(),
                "COPY {from}: no such file"
            );
        }
    }
    // yt-dlp's version has one home, read by scripts/setup and by the build.
    let pinned = read(&repo_root().join("scripts/yt-dlp.version"));
    let pinned = pinned.trim();
    assert!(!pinned.is_empty());
    for user in ["deploy/Containerfile", "scripts/setup"] {
        let text = read(&repo_root().join(user));
        assert!(
            text.contains("scripts/yt-dlp.version"),
            "{user} reads the pin"
        );
        assert!(
            !text.contains(pinned),
            "{user} repeats the version {pinned}"
        );
    }
    // The builder's Rust is the workspace's rust-version.
    let manifest = read(&repo_root().join("Cargo.toml"));
    let rust = toml_string(&manifest, "rust-version");
    assert!(
        containerfile.contains(&format!("rust:{rust}-")),
        "the build image is Rust {rust}"
    );
    // The build context leaves out what is big or secret.
    let ignore = read(&deploy().join("Containerfile.dockerignore"));
    for left_out in ["target", ".venv", ".git", ".streamgate"] {
        assert!(
            ignore.lines().any(|l| l == left_out),
            "{left_out} is ignored"
        );
    }
    // Both binaries run as the unprivileged user the manifests name.
    assert!(containerfile.contains("USER 10001:10001"));
    let objects = objects();
    let pod = &object(&objects, "Deployment", "streamgate")["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsUser"], 10001);
}
