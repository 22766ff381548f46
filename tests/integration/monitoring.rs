//! `deploy/components/monitoring` checked with the real thing. Its PrometheusRule and
//! ServiceMonitor are decoded strictly (unknown or misspelt fields refused) into the Prometheus
//! Operator's own Go types, and the rules loaded as Prometheus loads a rules file (rulefmt and
//! the PromQL parser of github.com/prometheus/prometheus: expressions, durations, annotation
//! templates), by `scripts/monitoring-check`; the dashboard's expressions go through the same
//! parser; every metric that the rules and the dashboard use is exported by a running
//! `drainer serve` (Prometheus' own `up` aside). Rendered by kubectl's kustomize into
//! `deploy/base`, the component's objects land in drainer's namespace and the ServiceMonitor
//! selects the base's Service, on a port it has. Not covered: a running Prometheus Operator
//! and Grafana (kube-env has neither, nor their CRDs), so whether a cluster's Prometheus
//! selects these objects (its selectors) is the operator's to check.

use crate::support::install::repo;
use crate::support::kube::{KubeEnv, with_timeout};
use crate::support::manifests::{
    check_rendered_component, checked, component, monitoring_check, yaml_documents,
};
use crate::support::serve::Serve;
use anyhow::{Context, Result, ensure};
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// Series the rules may use that Prometheus makes itself, not drainer.
const PROMETHEUS_OWN: [&str; 1] = ["up"];

/// The metric names the expressions in `lines` select.
fn metrics_of(lines: &[Value]) -> BTreeSet<String> {
    lines
        .iter()
        .filter_map(|l| l["metrics"].as_array())
        .flatten()
        .filter_map(|m| m.as_str().map(str::to_owned))
        .collect()
}

/// The expressions of the dashboard's panels.
fn dashboard_expressions() -> Result<Vec<String>> {
    let text = std::fs::read_to_string(component("dashboard.json"))?;
    let dashboard: Value = serde_json::from_str(&text).context("dashboard.json")?;
    let panels = dashboard["panels"].as_array().context("no panels")?;
    Ok(panels
        .iter()
        .filter_map(|p| p["targets"].as_array())
        .flatten()
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect())
}

/// The series names a scrape exports: those of its samples, and those its `# TYPE` lines
/// declare (a counter's `_total`, a histogram's `_bucket`, `_sum` and `_count`), so that a
/// family with no sample yet (no failure so far) counts as exported.
fn exported(scrape: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in scrape.lines() {
        if let Some(declared) = line.strip_prefix("# TYPE ") {
            let mut words = declared.split_whitespace();
            let (Some(name), Some(kind)) = (words.next(), words.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &[""],
            };
            names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
        } else if !line.starts_with('#') {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_owned());
        }
    }
    names.remove("");
    names
}

/// What `drainer serve`'s `/metrics` is missing of `wanted`, scraped until nothing is (the
/// store probe's gauge comes with the first probe) or for 30 s at most.
async fn missing_from_scrapes(serve: &Serve, wanted: &BTreeSet<String>) -> Result<Vec<String>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    loop {
        let scrape = http
            .get(format!("{}/metrics", serve.url))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        let have = exported(&scrape);
        let missing: Vec<String> = wanted.difference(&have).cloned().collect();
        if missing.is_empty() || Instant::now() > deadline {
            return Ok(missing);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Every rule loads as Prometheus loads it, every dashboard expression parses, and every
/// metric they use is exported by a running drainer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_of_the_rules_and_the_dashboard_is_exported_by_drainer() -> Result<()> {
    let rule_file = component("prometheusrule.yaml").display().to_string();
    let rules = checked(&["objects", &rule_file], "").await?;
    let alerts = std::fs::read_to_string(&rule_file)?
        .matches("- alert: ")
        .count();
    let expressions = rules.iter().filter(|l| l.get("expr").is_some()).count();
    ensure!(
        alerts >= 8 && expressions == alerts,
        "{alerts} alerts, {expressions} expressions loaded: {rules:?}"
    );
    let panels = dashboard_expressions()?;
    ensure!(panels.len() >= 12, "{} dashboard expressions", panels.len());
    let dashboard = checked(&[], &(panels.join("\n") + "\n")).await?;
    ensure!(dashboard.len() == panels.len(), "{dashboard:?}");

    let mut used = metrics_of(&rules);
    used.extend(metrics_of(&dashboard));
    for own in PROMETHEUS_OWN {
        used.remove(own);
    }
    for needed in [
        "drainer_drains",
        "drainer_queue_depth",
        "drainer_ready",
        "drainer_held_claim_oldest_age_seconds",
        "drainer_orphaned_volumes_undrained",
        "drainer_drain_duration_seconds_bucket",
        "drainer_copied_bytes_total",
    ] {
        ensure!(used.contains(needed), "{needed} is used nowhere: {used:?}");
    }
    let work = tempfile::tempdir()?;
    let serve = Serve::start(&work.path().join("data"), &["--sweep-interval", "0"]).await;
    let missing = missing_from_scrapes(&serve, &used).await?;
    ensure!(
        missing.is_empty(),
        "used by the monitoring but not exported: {missing:?}"
    );
    println!(
        "{} rules, {} dashboard expressions, {} metrics, all exported",
        expressions,
        panels.len(),
        used.len()
    );
    Ok(())
}

/// The checks can fail: a broken expression, a misspelt field and a broken annotation
/// template are each refused.
#[tokio::test]
async fn the_monitoring_checks_refuse_what_prometheus_would_refuse() -> Result<()> {
    let (ok, lines, _) = monitoring_check(&[], "max(drainer_drains\nrate(x[5m])\n").await?;
    ensure!(!ok, "an unclosed parenthesis passed: {lines:?}");
    ensure!(
        lines[0]["error"].as_str().is_some() && lines[1]["error"].is_null(),
        "{lines:?}"
    );
    let rules = std::fs::read_to_string(component("prometheusrule.yaml"))?;
    let monitor = std::fs::read_to_string(component("servicemonitor.yaml"))?;
    let work = tempfile::tempdir()?;
    for (name, original, from, to) in [
        (
            "misspelt field",
            &monitor,
            "scrapeTimeout:",
            "scrapeTimout:",
        ),
        (
            "broken template",
            &rules,
            "{{ $value }} drain(s)",
            "{{ $value drain(s)",
        ),
        ("bad duration", &rules, "for: 15m", "for: 15 minutes"),
    ] {
        ensure!(original.contains(from), "{name}: {from} not found");
        let file = work.path().join("broken.yaml");
        std::fs::write(&file, original.replacen(from, to, 1))?;
        let (ok, _, err) = monitoring_check(&["objects", &file.display().to_string()], "").await?;
        ensure!(!ok, "{name} passed");
        println!("{name} refused: {}", err.trim());
    }
    Ok(())
}

/// Rendered into deploy/base, the component's objects are in drainer's namespace, the
/// ServiceMonitor selects drainer's Service on its metrics port, and the dashboard's
/// ConfigMap holds dashboard.json for Grafana's sidecar.
#[tokio::test]
async fn the_component_renders_into_the_base_and_selects_its_service() -> Result<()> {
    with_timeout(Duration::from_secs(300), async {
        let env = KubeEnv::load()?;
        std::fs::create_dir_all(repo().join("target"))?;
        let overlay = tempfile::tempdir_in(repo().join("target"))?;
        std::fs::write(
            overlay.path().join("kustomization.yaml"),
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
             namespace: drainer-system\nresources: [../../deploy/base]\n\
             components: [../../deploy/components/monitoring]\n",
        )?;
        let out = env
            .kubectl()
            .arg("kustomize")
            .arg(overlay.path())
            .output()
            .await?;
        ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rendered = overlay.path().join("rendered.yaml");
        std::fs::write(&rendered, &out.stdout)?;
        let checked_objects = checked(&["objects", &rendered.display().to_string()], "").await?;
        let kinds: BTreeSet<&str> = checked_objects
            .iter()
            .filter_map(|l| l["kind"].as_str())
            .collect();
        ensure!(
            kinds == BTreeSet::from(["PrometheusRule", "ServiceMonitor"]),
            "{kinds:?}"
        );
        let objects = yaml_documents(&rendered).await?;
        check_rendered_component(&objects)
    })
    .await
}
