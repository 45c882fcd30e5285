//! Static checks of the docker-compose stack (issue #7). No Docker engine runs here or in CI, so
//! this validates what can be checked without one: `docker-compose.yml` parses (YAML merge keys
//! applied) and uses only known keys; the services are all there and each has a health check;
//! the services reach each other by service name on the ports they listen on (tollgate → redis
//! and mock, Prometheus → tollgate, Grafana → Prometheus); every file the stack reads exists in
//! the repo (and reaches the image build); no secret is written into the file; published ports
//! bind to loopback; Redis persists; and `promtool` accepts the Prometheus config.
//!
//! Ports of the images we do not build are their documented defaults ([`IMAGE_PORTS`]); for our
//! own image they come from the service's `--listen`, its `TOLLGATE_LISTEN`, or the Dockerfile's
//! `ENV TOLLGATE_LISTEN`, in that order, as the binary resolves them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The services the stack must have (the README and the compose comments refer to them).
const REQUIRED_SERVICES: &[&str] = &["tollgate", "mock", "redis", "prometheus", "grafana"];

/// Listen ports of the off-the-shelf images (their defaults; none is overridden here).
const IMAGE_PORTS: &[(&str, u16)] = &[
    ("redis", 6379),
    ("prom/prometheus", 9090),
    ("grafana/grafana", 3000),
    ("ghcr.io/open-webui/open-webui", 8080),
];

/// Top-level keys of the Compose specification (plus `x-*` extensions).
const TOP_LEVEL_KEYS: &[&str] = &[
    "name", "services", "networks", "volumes", "configs", "secrets",
];

/// Service keys of the Compose specification that a stack like this one might use. A key not
/// listed is most likely a typo, which compose rejects only when someone runs it; add a real one.
const SERVICE_KEYS: &[&str] = &[
    "build",
    "cap_add",
    "cap_drop",
    "command",
    "configs",
    "container_name",
    "cpus",
    "depends_on",
    "deploy",
    "entrypoint",
    "env_file",
    "environment",
    "expose",
    "extra_hosts",
    "healthcheck",
    "hostname",
    "image",
    "init",
    "labels",
    "logging",
    "mem_limit",
    "networks",
    "platform",
    "ports",
    "profiles",
    "pull_policy",
    "read_only",
    "restart",
    "secrets",
    "security_opt",
    "shm_size",
    "stop_grace_period",
    "stop_signal",
    "sysctls",
    "tmpfs",
    "ulimits",
    "user",
    "volumes",
    "working_dir",
];

const HEALTHCHECK_KEYS: &[&str] = &[
    "test",
    "interval",
    "timeout",
    "retries",
    "start_period",
    "start_interval",
    "disable",
];

/// Parts of a variable name that mark its value as a secret.
const SECRET_NAME_PARTS: &[&str] = &[
    "SECRET",
    "PASSWORD",
    "PASSWD",
    "API_KEY",
    "APIKEY",
    "TOKEN",
    "PRIVATE_KEY",
    "CREDENTIAL",
];

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(repo().join(relative))
        .unwrap_or_else(|e| panic!("read {relative}: {e}"))
}

/// `docker-compose.yml` with its merge keys (`<<: *tollgate-image`) applied, as JSON.
fn compose() -> Value {
    let mut yaml: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&read("docker-compose.yml")).expect("docker-compose.yml is YAML");
    yaml.apply_merge().expect("docker-compose.yml merge keys");
    serde_json::to_value(yaml).expect("docker-compose.yml has string keys only")
}

fn services(compose: &Value) -> &Map<String, Value> {
    compose["services"]
        .as_object()
        .expect("`services` is a mapping")
}

fn service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    services(compose)
        .get(name)
        .unwrap_or_else(|| panic!("no service `{name}`"))
}

/// A scalar as compose reads it (numbers and booleans are strings to it).
fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The service's `environment` in either form; `None` values are passed through from the shell
/// or the `.env` file (a bare `NAME` in list form, a null value in mapping form).
fn environment(service: &Value) -> BTreeMap<String, Option<String>> {
    match &service["environment"] {
        Value::Null => BTreeMap::new(),
        Value::Object(map) => map.iter().map(|(k, v)| (k.clone(), scalar(v))).collect(),
        Value::Array(items) => items
            .iter()
            .map(|item| {
                let item = item.as_str().expect("environment list items are strings");
                match item.split_once('=') {
                    Some((k, v)) => (k.to_string(), Some(v.to_string())),
                    None => (item.to_string(), None),
                }
            })
            .collect(),
        other => panic!("environment is neither a mapping nor a list: {other}"),
    }
}

/// A string or a list of strings (`command`, `entrypoint`, `healthcheck.test`) as words.
fn words(value: &Value) -> Vec<String> {
    match value {
        Value::Null => Vec::new(),
        Value::String(s) => s.split_whitespace().map(str::to_string).collect(),
        Value::Array(items) => items.iter().map(|v| scalar(v).unwrap()).collect(),
        other => panic!("expected a string or a list: {other}"),
    }
}

/// The port of a `HOST:PORT` listen address.
fn port_of(addr: &str) -> u16 {
    addr.rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or_else(|| panic!("no port in listen address {addr:?}"))
}

/// `ENV NAME=value` lines of the Dockerfile.
fn dockerfile_env() -> BTreeMap<String, String> {
    read("Dockerfile")
        .lines()
        .filter_map(|l| l.trim().strip_prefix("ENV "))
        .filter_map(|rest| rest.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        .collect()
}

/// The port `name` listens on inside its container (see the module docs).
fn listen_port(compose: &Value, name: &str) -> u16 {
    let svc = service(compose, name);
    if svc.get("build").is_some() {
        let command = words(&svc["command"]);
        if let Some(i) = command.iter().position(|w| w == "--listen") {
            return port_of(&command[i + 1]);
        }
        if let Some(Some(listen)) = environment(svc).get("TOLLGATE_LISTEN") {
            return port_of(listen);
        }
        let env = dockerfile_env();
        return port_of(
            env.get("TOLLGATE_LISTEN")
                .expect("Dockerfile sets TOLLGATE_LISTEN"),
        );
    }
    let image = svc["image"]
        .as_str()
        .expect("a service without build has an image");
    let repository = image.split(':').next().unwrap();
    IMAGE_PORTS
        .iter()
        .find(|(known, _)| *known == repository)
        .map(|(_, port)| *port)
        .unwrap_or_else(|| panic!("add the listen port of image {image} to IMAGE_PORTS"))
}

/// Asserts that `url` reaches service `target` on the port it listens on.
fn assert_reaches(compose: &Value, what: &str, url: &str, target: &str) {
    let parsed = url::Url::parse(url).unwrap_or_else(|e| panic!("{what} = {url:?}: {e}"));
    assert_eq!(
        parsed.host_str(),
        Some(target),
        "{what} = {url:?} must name the `{target}` service"
    );
    assert_eq!(
        parsed.port_or_known_default(),
        Some(listen_port(compose, target)),
        "{what} = {url:?} must use the port `{target}` listens on"
    );
}

/// One `ports` entry: (host IP, container port).
fn published_ports(service: &Value) -> Vec<(Option<String>, String)> {
    let Some(items) = service["ports"].as_array() else {
        return Vec::new();
    };
    items
        .iter()
        .map(|item| match item {
            Value::Object(long) => (
                long.get("host_ip").and_then(scalar),
                scalar(&long["target"]).expect("a long-form port has a target"),
            ),
            short => {
                let short = scalar(short).unwrap();
                let short = short.split('/').next().unwrap().to_string(); // drop "/tcp"
                                                                          // [IP:][HOST:]CONTAINER, with an IPv6 host in brackets.
                let (ip, rest) = match short.strip_prefix('[') {
                    Some(v6) => {
                        let (ip, rest) = v6.split_once("]:").expect("[IPv6]:HOST:CONTAINER");
                        (Some(ip.to_string()), rest.to_string())
                    }
                    None => match short.matches(':').count() {
                        2 => {
                            let (ip, rest) = short.split_once(':').unwrap();
                            (Some(ip.to_string()), rest.to_string())
                        }
                        _ => (None, short.clone()),
                    },
                };
                let container = rest.rsplit(':').next().unwrap().to_string();
                (ip, container)
            }
        })
        .collect()
}

/// Mounts as (source, target, is a bind mount).
fn mounts(service: &Value) -> Vec<(String, String, bool)> {
    let Some(items) = service["volumes"].as_array() else {
        return Vec::new();
    };
    items
        .iter()
        .map(|item| match item {
            Value::String(short) => {
                let mut parts = short.split(':');
                let source = parts.next().unwrap().to_string();
                let target = parts.next().expect("SOURCE:TARGET").to_string();
                let bind = source.starts_with(['.', '/', '~']);
                (source, target, bind)
            }
            Value::Object(long) => (
                long.get("source").and_then(scalar).unwrap_or_default(),
                long["target"].as_str().expect("a mount target").to_string(),
                long.get("type").and_then(Value::as_str) == Some("bind"),
            ),
            other => panic!("a volume is neither a string nor a mapping: {other}"),
        })
        .collect()
}

/// Every string value in the file (not the keys, not the comments).
fn string_values(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|v| string_values(v, out)),
        Value::Object(map) => map.values().for_each(|v| string_values(v, out)),
        _ => {}
    }
}

/// Names of the variables a compose string interpolates (`${NAME…}` or `$NAME`; `$$` escapes).
fn interpolated(s: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        rest = &rest[i + 1..];
        if let Some(escaped) = rest.strip_prefix('$') {
            rest = escaped;
            continue;
        }
        let body = rest.strip_prefix('{').unwrap_or(rest);
        let name: String = body
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            names.push(name);
        }
    }
    names
}

fn is_secret_name(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    SECRET_NAME_PARTS.iter().any(|part| upper.contains(part))
}

/// Whether `value` is exactly one `${NAME}` interpolation with no literal fallback: `${NAME}`,
/// `${NAME:-}`, `${NAME-}`, `${NAME:?message}` or `${NAME?message}`.
fn is_bare_interpolation(value: &str) -> bool {
    let Some(inner) = value.strip_prefix("${").and_then(|v| v.strip_suffix('}')) else {
        return false;
    };
    let name_len = inner
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(inner.len());
    let modifier = &inner[name_len..];
    name_len > 0
        && !modifier.contains(['{', '}', '$'])
        && (matches!(modifier, "" | ":-" | "-")
            || modifier.starts_with(":?")
            || modifier.starts_with('?'))
}

/// `NAME=value` lines of `.env.example`.
fn env_example() -> BTreeMap<String, String> {
    read(".env.example")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .expect(".env.example lines are NAME=value");
            (k.to_string(), v.to_string())
        })
        .collect()
}

#[test]
fn the_compose_file_parses_with_known_keys_and_every_service() {
    let compose = compose();
    for key in compose.as_object().unwrap().keys() {
        assert!(
            key.starts_with("x-") || TOP_LEVEL_KEYS.contains(&key.as_str()),
            "unknown top-level key `{key}`"
        );
    }
    let services = services(&compose);
    for name in REQUIRED_SERVICES {
        assert!(services.contains_key(*name), "no `{name}` service");
    }
    for (name, svc) in services {
        for key in svc.as_object().unwrap().keys() {
            assert!(
                SERVICE_KEYS.contains(&key.as_str()),
                "service `{name}`: unknown key `{key}` (typo? else add it to SERVICE_KEYS)"
            );
        }
        assert!(
            svc.get("image").is_some() || svc.get("build").is_some(),
            "service `{name}` has neither image nor build"
        );
        assert!(
            svc.get("network_mode").is_none(),
            "service `{name}`: network_mode would bypass the loopback-only ports"
        );
    }
}

#[test]
fn every_service_has_a_health_check() {
    let compose = compose();
    for (name, svc) in services(&compose) {
        let check = svc["healthcheck"]
            .as_object()
            .unwrap_or_else(|| panic!("service `{name}` has no healthcheck"));
        for key in check.keys() {
            assert!(
                HEALTHCHECK_KEYS.contains(&key.as_str()),
                "service `{name}`: unknown healthcheck key `{key}`"
            );
        }
        assert_ne!(check.get("disable"), Some(&Value::Bool(true)), "{name}");
        let test = words(&svc["healthcheck"]["test"]);
        match test.first().map(String::as_str) {
            Some("CMD") | Some("CMD-SHELL") => assert!(test.len() > 1, "{name}: empty test"),
            Some("NONE") | None => panic!("service `{name}`: the healthcheck tests nothing"),
            // A plain string runs through the shell, like CMD-SHELL.
            Some(_) => {}
        }
        // A probe of a loopback port must probe the port the service listens on.
        let joined = test.join(" ");
        let port = listen_port(&compose, name).to_string();
        for probe in joined.split("127.0.0.1").skip(1) {
            let probed: String = probe
                .trim_start_matches([':', '/'])
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            assert_eq!(
                probed, port,
                "service `{name}`'s healthcheck probes {probed}"
            );
        }
    }
}

#[test]
fn dependencies_name_services_and_wait_only_for_checked_health() {
    let compose = compose();
    for (name, svc) in services(&compose) {
        let Some(deps) = svc["depends_on"].as_object() else {
            continue;
        };
        for (dep, how) in deps {
            let target = services(&compose)
                .get(dep)
                .unwrap_or_else(|| panic!("`{name}` depends on unknown service `{dep}`"));
            if how["condition"] == "service_healthy" {
                assert!(
                    target.get("healthcheck").is_some(),
                    "`{name}` waits for `{dep}` to be healthy, which has no healthcheck"
                );
            }
        }
    }
    let tollgate = services(&compose)["tollgate"]["depends_on"]
        .as_object()
        .unwrap();
    for dep in ["redis", "mock"] {
        assert_eq!(
            tollgate[dep]["condition"], "service_healthy",
            "tollgate must start once `{dep}` is healthy"
        );
    }
}

#[test]
fn services_reach_each_other_by_name_on_their_listen_ports() {
    let compose = compose();
    let env = environment(service(&compose, "tollgate"));
    let redis_url = env["TOLLGATE_REDIS_URL"].as_deref().unwrap();
    assert!(redis_url.starts_with("redis://"), "{redis_url}");
    assert_reaches(&compose, "TOLLGATE_REDIS_URL", redis_url, "redis");
    let upstream = env["TOLLGATE_UPSTREAM_URL"].as_deref().unwrap();
    assert_reaches(&compose, "TOLLGATE_UPSTREAM_URL", upstream, "mock");

    // Grafana's provisioned datasource.
    let datasources: Value = serde_yaml_ng::from_str(&read(
        "config/grafana/provisioning/datasources/prometheus.yml",
    ))
    .unwrap();
    let url = datasources["datasources"][0]["url"].as_str().unwrap();
    assert_reaches(&compose, "the Grafana datasource url", url, "prometheus");

    // The chat UI (profile `ui`) calls tollgate's OpenAI-compatible API.
    let ui = environment(service(&compose, "open-webui"));
    let base = ui["OPENAI_API_BASE_URL"].as_deref().unwrap();
    assert_reaches(&compose, "OPENAI_API_BASE_URL", base, "tollgate");
    assert!(base.ends_with("/v1"), "{base}");
}

#[test]
fn the_ui_profile_wires_open_webui_as_a_trusted_front_end_with_per_user_forwarding() {
    let compose = compose();
    let ui = service(&compose, "open-webui");
    assert_eq!(ui["profiles"], serde_json::json!(["ui"]));
    let ui_env = environment(ui);
    assert_eq!(
        ui_env["ENABLE_FORWARD_USER_INFO_HEADERS"].as_deref(),
        Some("true")
    );
    let tollgate = environment(service(&compose, "tollgate"));
    let key = |field: &str| {
        tollgate[&format!("TOLLGATE__AUTH__SERVICE_KEYS__OPENWEBUI__{field}")]
            .clone()
            .unwrap_or_default()
    };
    // The header Open WebUI names its users in (checked against Open WebUI 0.12.4).
    assert_eq!(key("USER_HEADER"), "x-openwebui-user-id");
    assert_eq!(key("ROLE_HEADER"), "x-openwebui-user-role");
    assert_eq!(key("SESSION_HEADER"), "x-openwebui-chat-id");
    // The key Open WebUI sends and the hash tollgate checks come from the same .env pair.
    assert_eq!(
        interpolated(ui_env["OPENAI_API_KEY"].as_deref().unwrap()),
        ["TOLLGATE_OPENWEBUI_KEY"]
    );
    assert_eq!(
        interpolated(&key("KEY_SHA256")),
        ["TOLLGATE_OPENWEBUI_KEY_SHA256"]
    );
    // What tollgate makes of these settings (with a real hash) is a valid config.
    let hash = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let mut env: BTreeMap<String, String> = tollgate
        .iter()
        .filter(|(name, _)| name.starts_with("TOLLGATE__"))
        .filter_map(|(name, value)| Some((name.clone(), value.clone()?)))
        .collect();
    for key in [
        "TOLLGATE__AUTH__SERVICE_KEYS__OPENWEBUI__KEY_SHA256",
        "TOLLGATE__ADMIN__KEY_SHA256",
    ] {
        env.insert(key.into(), hash.into());
    }
    let config = tollgate::config::load(&tollgate::config::ConfigSource { file: None, env })
        .unwrap_or_else(|e| panic!("the compose file's tollgate settings: {e}"));
    let front_end = &config.auth.service_keys["openwebui"];
    assert_eq!(front_end.role_plans["admin"], "enterprise");
    assert_eq!(front_end.max_message_chars, Some(32_000));
}

#[test]
fn prometheus_scrapes_tollgate_on_its_metrics_port() {
    let compose = compose();
    let mounted = mounts(service(&compose, "prometheus"));
    assert!(
        mounted.iter().any(|(source, target, _)| {
            source == "./config/prometheus.yml" && target == "/etc/prometheus/prometheus.yml"
        }),
        "config/prometheus.yml must be mounted where the image reads it: {mounted:?}"
    );
    // Metrics are served where server.metrics_listen says (the main listener when it is "").
    let tollgate_env = environment(service(&compose, "tollgate"));
    let metrics_port = match tollgate_env.get("TOLLGATE__SERVER__METRICS_LISTEN") {
        Some(Some(listen)) if !listen.is_empty() => port_of(listen),
        _ => listen_port(&compose, "tollgate"),
    };
    let config: Value = serde_yaml_ng::from_str(&read("config/prometheus.yml")).unwrap();
    let job = config["scrape_configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|job| job["job_name"] == "tollgate")
        .expect("a `tollgate` scrape job");
    let path = job["metrics_path"].as_str().unwrap_or("/metrics");
    assert_eq!(path, "/metrics");
    let targets: Vec<&str> = job["static_configs"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["targets"].as_array().unwrap())
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(targets, [format!("tollgate:{metrics_port}")]);
}

#[test]
fn promtool_accepts_the_prometheus_config() {
    tollgate_testkit::promtool::check_config(repo(), "config/prometheus.yml");
}

#[test]
fn every_file_the_stack_reads_exists_in_the_repo() {
    let compose = compose();
    let declared_volumes: BTreeSet<&String> = compose["volumes"]
        .as_object()
        .map(|v| v.keys().collect())
        .unwrap_or_default();
    for (name, svc) in services(&compose) {
        // Build context and Dockerfile.
        if let Some(build) = svc.get("build") {
            let (context, dockerfile) = match build {
                Value::String(context) => (context.clone(), "Dockerfile".to_string()),
                long => (
                    long["context"].as_str().unwrap_or(".").to_string(),
                    long["dockerfile"]
                        .as_str()
                        .unwrap_or("Dockerfile")
                        .to_string(),
                ),
            };
            let context = repo().join(context);
            assert!(context.is_dir(), "`{name}`: no build context {context:?}");
            assert!(
                context.join(&dockerfile).is_file(),
                "`{name}`: no {dockerfile} in {context:?}"
            );
            assert_copy_sources_reach_the_build(&context, &dockerfile);
        }
        // Bind mounts exist; named volumes are declared.
        let mut bound: Vec<(PathBuf, String)> = Vec::new();
        for (source, target, bind) in mounts(svc) {
            if bind {
                let path = repo().join(&source);
                assert!(path.exists(), "`{name}` mounts missing {source}");
                bound.push((path, target));
            } else {
                assert!(
                    declared_volumes.contains(&source),
                    "`{name}` uses volume `{source}`, not declared under top-level volumes"
                );
            }
        }
        // Container paths named in the environment resolve through a bind mount to a real file
        // (e.g. Grafana's home dashboard).
        for (key, value) in environment(svc) {
            let Some(value) = value.filter(|v| v.starts_with('/')) else {
                continue;
            };
            for (source, target) in &bound {
                if let Some(rest) = value.strip_prefix(&format!("{target}/")) {
                    assert!(
                        source.join(rest).exists(),
                        "`{name}` {key}={value}: no {rest} in {source:?}"
                    );
                }
            }
        }
        // env_file entries (unless marked `required: false`).
        let env_files = match &svc["env_file"] {
            Value::Null => Vec::new(),
            Value::Array(items) => items.clone(),
            one => vec![one.clone()],
        };
        for entry in env_files {
            let (path, required) = match &entry {
                Value::String(path) => (path.clone(), true),
                long => (
                    long["path"].as_str().unwrap().to_string(),
                    long["required"].as_bool().unwrap_or(true),
                ),
            };
            if required {
                assert!(repo().join(&path).is_file(), "`{name}`: no env_file {path}");
            }
        }
    }
    for kind in ["configs", "secrets"] {
        for (name, def) in compose[kind].as_object().into_iter().flatten() {
            if let Some(file) = def["file"].as_str() {
                assert!(repo().join(file).is_file(), "{kind}.{name}: no {file}");
            }
        }
    }
}

/// Every local `COPY`/`ADD` source of the Dockerfile exists in the build context and is not cut
/// from it by `.dockerignore` (checked for its plain entries: names and directory prefixes).
fn assert_copy_sources_reach_the_build(context: &Path, dockerfile: &str) {
    let ignored: Vec<String> = std::fs::read_to_string(context.join(".dockerignore"))
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('!'))
        .map(|l| l.trim_matches('/').to_string())
        .collect();
    let text = std::fs::read_to_string(context.join(dockerfile)).unwrap();
    for line in text.lines() {
        let Some(args) = line
            .strip_prefix("COPY ")
            .or_else(|| line.strip_prefix("ADD "))
        else {
            continue;
        };
        let args: Vec<&str> = args.split_whitespace().collect();
        if args.iter().any(|a| a.starts_with("--from")) {
            continue;
        }
        let paths: Vec<&str> = args.into_iter().filter(|a| !a.starts_with("--")).collect();
        let sources = &paths[..paths.len().saturating_sub(1)]; // the last one is the destination
        for source in sources {
            let source = source.trim_start_matches("./").trim_end_matches('/');
            assert!(
                context.join(source).exists(),
                "{dockerfile} copies missing `{source}`"
            );
            for pattern in &ignored {
                let cut = source == pattern || source.starts_with(&format!("{pattern}/"));
                assert!(
                    !cut,
                    ".dockerignore `{pattern}` removes `{source}`, which {dockerfile} copies"
                );
            }
        }
    }
}

#[test]
fn no_secret_is_written_into_the_compose_file() {
    let compose = compose();
    for (name, svc) in services(&compose) {
        for (key, value) in environment(svc) {
            // A passed-through variable (no value) comes from the shell or .env: fine.
            let Some(value) = value else { continue };
            if is_secret_name(&key) {
                assert!(
                    is_bare_interpolation(&value),
                    "`{name}` {key}: a secret must come from the environment (`{key}:` with no \
                     value, or ${{VAR}} without a fallback), not {value:?}"
                );
            }
            // Credentials inside a URL: the password part must be interpolated too.
            if let Some((_, after_scheme)) = value.split_once("://") {
                if let Some((userinfo, _)) = after_scheme.split_once('@') {
                    if let Some((_, password)) = userinfo.split_once(':') {
                        assert!(
                            password.is_empty() || is_bare_interpolation(password),
                            "`{name}` {key}: a password is written into the URL"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn env_example_lists_every_variable_the_stack_reads_with_secrets_left_empty() {
    let compose = compose();
    let mut strings = Vec::new();
    string_values(&compose, &mut strings);
    let mut read_from_env: BTreeSet<String> =
        strings.iter().flat_map(|s| interpolated(s)).collect();
    for svc in services(&compose).values() {
        for (key, value) in environment(svc) {
            if value.is_none() {
                read_from_env.insert(key);
            }
        }
    }
    let example = env_example();
    for name in &read_from_env {
        let value = example
            .get(name)
            .unwrap_or_else(|| panic!(".env.example does not list {name}, which the stack reads"));
        if is_secret_name(name) {
            assert!(
                value.is_empty(),
                ".env.example must not hold a value for {name}"
            );
        }
    }
    let gitignore = read(".gitignore");
    assert!(
        gitignore.lines().any(|l| l.trim() == ".env"),
        ".gitignore must keep a filled-in .env out of the repo"
    );
}

#[test]
fn published_ports_bind_to_loopback_only() {
    let compose = compose();
    for (name, svc) in services(&compose) {
        for (ip, container) in published_ports(svc) {
            let ip = ip.unwrap_or_else(|| {
                panic!("`{name}` publishes {container} on every interface; prefix 127.0.0.1:")
            });
            let loopback: std::net::IpAddr = ip
                .parse()
                .unwrap_or_else(|e| panic!("`{name}`: host IP {ip:?}: {e}"));
            assert!(
                loopback.is_loopback(),
                "`{name}` publishes {container} on {ip}"
            );
            let mut listens = vec![listen_port(&compose, name).to_string()];
            // The gateway's admin API on its own listener (docs/operations.md).
            if let Some(Some(admin)) = environment(svc).get("TOLLGATE__ADMIN__LISTEN") {
                listens.push(port_of(admin).to_string());
            }
            assert!(
                listens.contains(&container),
                "`{name}` publishes {container}, a port it does not listen on ({listens:?})"
            );
        }
    }
    assert!(
        !published_ports(service(&compose, "tollgate")).is_empty(),
        "the gateway itself must be reachable from the host"
    );
}

#[test]
fn redis_keeps_its_data_in_an_append_only_file_on_a_volume() {
    let compose = compose();
    let redis = service(&compose, "redis");
    // Persistence is switched on by the command line (a mounted redis.conf would need a parser).
    let command = words(&redis["command"]);
    let flag = command
        .iter()
        .position(|w| w == "--appendonly")
        .expect("redis must run with --appendonly yes");
    assert_eq!(
        command.get(flag + 1).map(String::as_str),
        Some("yes"),
        "redis must run with --appendonly yes"
    );
    assert!(
        !command.windows(2).any(|w| w[0] == "--dir"),
        "the append-only file must stay in /data, the mounted volume"
    );
    // The image's working directory, /data, must outlive the container.
    assert!(
        mounts(redis).iter().any(|(_, target, _)| target == "/data"),
        "redis' /data must be a volume"
    );
}

#[test]
fn the_secret_check_tells_interpolation_from_literals() {
    // The rule above must be able to fail.
    assert!(is_bare_interpolation("${TOLLGATE_JWT_SECRET}"));
    assert!(is_bare_interpolation("${GRAFANA_ADMIN_PASSWORD:-}"));
    assert!(is_bare_interpolation(
        "${TOLLGATE_JWT_SECRET:?set it in .env}"
    ));
    assert!(!is_bare_interpolation(
        "${TOLLGATE_JWT_SECRET:-PLACEHOLDER}"
    ));
    assert!(!is_bare_interpolation("hunter2"));
    assert!(!is_bare_interpolation("prefix-${TOLLGATE_JWT_SECRET}"));
    assert!(!is_bare_interpolation("${A}${B}"));
    assert!(is_secret_name("TOLLGATE_UPSTREAM_API_KEY"));
    assert!(is_secret_name("TOLLGATE__AUTH__JWT_SECRET"));
    assert!(!is_secret_name("TOLLGATE_REDIS_URL"));
    assert_eq!(interpolated("a ${X:-y} $Y $$Z $${W}"), ["X", "Y"]);
}
