//! The manifests under `deploy/` as data, for the tests of the kustomize tree, the chart and
//! the monitoring component: YAML streams decoded by `scripts/monitoring-check` (the
//! Prometheus and Prometheus Operator Go code), objects found by kind and name, and the check
//! that a rendering carries the monitoring component whole and wired to drainer's Service.

use super::install::repo;
use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// The file `file` of `deploy/components/monitoring`.
pub fn component(file: &str) -> PathBuf {
    repo().join("deploy/components/monitoring").join(file)
}

/// Runs `cmd` with `stdin` (five minutes at most: the first run builds the Go tools);
/// whether it succeeded, its stdout and its stderr.
pub async fn run_tool(
    cmd: &mut tokio::process::Command,
    stdin: &str,
) -> Result<(bool, String, String)> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    let mut input = child.stdin.take().context("no stdin")?;
    input.write_all(stdin.as_bytes()).await?;
    drop(input);
    let out = tokio::time::timeout(Duration::from_secs(300), child.wait_with_output())
        .await
        .with_context(|| format!("{cmd:?}: no result within 5 minutes"))??;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// `scripts/monitoring-check ARGS` with `stdin`: whether it succeeded, its JSON lines, its
/// stderr.
pub async fn monitoring_check(args: &[&str], stdin: &str) -> Result<(bool, Vec<Value>, String)> {
    let (ok, out, err) = run_tool(
        tokio::process::Command::new(repo().join("scripts/monitoring-check")).args(args),
        stdin,
    )
    .await?;
    let lines = out
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<Vec<Value>, _>>()
        .with_context(|| format!("monitoring-check printed no JSON lines: {out}\n{err}"))?;
    Ok((ok, lines, err))
}

/// `scripts/monitoring-check ARGS` that must succeed: its JSON lines.
pub async fn checked(args: &[&str], stdin: &str) -> Result<Vec<Value>> {
    let (ok, lines, err) = monitoring_check(args, stdin).await?;
    ensure!(ok, "monitoring-check {args:?} refused:\n{err}\n{lines:?}");
    Ok(lines)
}

/// The documents of the YAML stream at `path`, as JSON (empty ones left out).
pub async fn yaml_documents(path: &Path) -> Result<Vec<Value>> {
    let path = path.display().to_string();
    let lines = checked(&["to-json", &path], "").await?;
    let docs = lines.into_iter().next().context("no JSON array")?;
    Ok(docs.as_array().context("not an array")?.clone())
}

/// The one object of `kind` named `name` in `objects`.
pub fn object<'a>(objects: &'a [Value], kind: &str, name: &str) -> Result<&'a Value> {
    let mut found = objects
        .iter()
        .filter(|o| o["kind"] == kind && o["metadata"]["name"] == name);
    match (found.next(), found.next()) {
        (Some(one), None) => Ok(one),
        (None, _) => bail!("no {kind} {name}"),
        _ => bail!("more than one {kind} {name}"),
    }
}

/// The component's objects in a rendering of drainer's objects (kustomize's or the chart's).
pub fn check_rendered_component(objects: &[Value]) -> Result<()> {
    let service = object(objects, "Service", "drainer")?;
    let monitor = object(objects, "ServiceMonitor", "drainer")?;
    let rule = object(objects, "PrometheusRule", "drainer")?;
    let dashboard = object(objects, "ConfigMap", "drainer-dashboard")?;
    let namespace = &service["metadata"]["namespace"];
    for o in [monitor, rule, dashboard] {
        ensure!(
            o["metadata"]["namespace"] == *namespace,
            "{} not in {namespace}",
            o["kind"]
        );
    }
    let selector = monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .context("no matchLabels")?;
    ensure!(
        !selector.is_empty(),
        "the ServiceMonitor selects everything"
    );
    for (key, value) in selector {
        ensure!(
            service["metadata"]["labels"][key] == *value,
            "the Service lacks {key}={value}: {service}"
        );
    }
    let ports: Vec<&Value> = service["spec"]["ports"]
        .as_array()
        .context("no ports")?
        .iter()
        .map(|p| &p["name"])
        .collect();
    for endpoint in monitor["spec"]["endpoints"]
        .as_array()
        .context("no endpoints")?
    {
        ensure!(
            ports.contains(&&endpoint["port"]),
            "{endpoint} vs {ports:?}"
        );
        ensure!(endpoint["path"] == "/metrics", "{endpoint}");
    }
    ensure!(
        dashboard["metadata"]["labels"]["grafana_dashboard"] == "1",
        "{dashboard}"
    );
    let json = dashboard["data"]["drainer.json"]
        .as_str()
        .context("no drainer.json")?;
    let shipped: Value =
        serde_json::from_str(&std::fs::read_to_string(component("dashboard.json"))?)?;
    ensure!(
        serde_json::from_str::<Value>(json)? == shipped,
        "the ConfigMap's dashboard differs from dashboard.json"
    );
    Ok(())
}
