//! `kubectl drainer status`: drainer at a glance. From the API server: its Deployment and pods
//! (labels `app.kubernetes.io/name=drainer,app.kubernetes.io/component=server` in
//! `--drainer-namespace`), the holder of its sweeper Lease (`drainer-sweeper`), the Drain
//! objects counted by state (every namespace, or `-n`'s) and the failing ones listed. From
//! drainer when it answers (a port-forward or `--drainer-url`; `/readyz` needs no token): its
//! readiness conditions (ledger, store, watches). drainer not answering is reported, not an
//! error: the rest still stands.

use super::connect::{self, Cluster, SERVER_LABELS, Scope};
use super::drains::{self, Row};
use super::output::{cell, document, table};
use super::{KubectlArgs, Output};
use anyhow::Context;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// The name of drainer's sweeper Lease.
const SWEEPER_LEASE: &str = "drainer-sweeper";
/// The states of drains that need someone to look.
const FAILING: [&str; 2] = ["failing", "failed"];

/// What `status` found.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Report {
    /// drainer's namespace.
    pub namespace: String,
    /// Its Deployment, if one selects its pods.
    pub deployment: Option<Replicas>,
    /// Its server pods.
    pub pods: Vec<PodView>,
    /// The replica holding the sweeper Lease, if any.
    pub sweeper: Option<String>,
    /// Drain objects by state.
    pub drains: BTreeMap<String, usize>,
    /// The failing and failed drains.
    pub failing: Vec<Failing>,
    /// drainer's `/readyz` answer, when it answered.
    pub readiness: Option<Value>,
    /// Why drainer's readiness is not known, when it did not answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub readiness_error: Option<String>,
}

/// A Deployment's replicas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Replicas {
    /// Its name.
    pub name: String,
    /// Wanted.
    pub desired: i32,
    /// Ready.
    pub ready: i32,
}

/// A drainer pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct PodView {
    /// Its name.
    pub name: String,
    /// Whether it is Ready.
    pub ready: bool,
    /// Its phase.
    pub phase: String,
    /// Restarts of its containers.
    pub restarts: i32,
}

/// A drain that needs someone to look.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Failing {
    /// `namespace/id`.
    pub drain: String,
    /// Its claim.
    pub claim: Option<String>,
    /// `failing` or `failed`.
    pub state: String,
    /// Its last error.
    pub last_error: Option<String>,
}

/// `kubectl drainer status`.
pub(crate) async fn run(cluster: &Cluster, args: &KubectlArgs) -> anyhow::Result<()> {
    let scope = match &args.namespace {
        Some(ns) => Scope::Namespace(ns.clone()),
        None => Scope::All,
    };
    let now = chrono::Utc::now().timestamp();
    let rows: Vec<Row> = drains::list(cluster, &scope)
        .await?
        .iter()
        .map(|o| Row::of(o, now))
        .collect();
    let mut report = replicas_report(cluster, &args.drainer_namespace).await?;
    report.drains = counts(&rows);
    report.failing = failing(&rows);
    match readiness(cluster, args).await {
        Ok(answer) => report.readiness = Some(answer),
        Err(e) => report.readiness_error = Some(format!("{e:#}").replace('\n', " ")),
    }
    let text = match args.output {
        Output::Table => render(&report),
        format => document(&report, format)?,
    };
    print!("{text}");
    Ok(())
}

/// drainer's Deployment, pods and sweeper in namespace `ns`, from the API server.
async fn replicas_report(cluster: &Cluster, ns: &str) -> anyhow::Result<Report> {
    let failed = |what: String| move |e| connect::api_error(what, e);
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), ns);
    let pods = pods
        .list(&ListParams::default().labels(SERVER_LABELS))
        .await
        .map_err(failed(format!("listing drainer's pods in namespace {ns}")))?;
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), ns);
    let deployments = deployments
        .list(&ListParams::default())
        .await
        .map_err(failed(format!("listing Deployments in namespace {ns}")))?;
    let leases: Api<Lease> = Api::namespaced(cluster.client.clone(), ns);
    let lease = leases
        .get_opt(SWEEPER_LEASE)
        .await
        .map_err(failed(format!("reading Lease {ns}/{SWEEPER_LEASE}")))?;
    Ok(Report {
        namespace: ns.to_owned(),
        deployment: server_deployment(&deployments.items).map(replicas),
        pods: pods.items.iter().map(pod_view).collect(),
        sweeper: lease.and_then(|l| l.spec?.holder_identity),
        ..Report::default()
    })
}

/// drainer's `/readyz` answer (a `503` carries the same body).
async fn readiness(cluster: &Cluster, args: &KubectlArgs) -> anyhow::Result<Value> {
    let drainer = connect::drainer(cluster, args).await?;
    let url = format!("{}/readyz", drainer.url);
    let response = drainer
        .http(args.request_timeout)?
        .get(&url)
        .send()
        .await
        .map_err(|e| crate::client::transport_error(&url, e))?;
    response
        .json()
        .await
        .with_context(|| format!("reading {url}"))
}

/// The Deployment whose selector picks drainer's server pods.
pub(crate) fn server_deployment(deployments: &[Deployment]) -> Option<&Deployment> {
    deployments.iter().find(|d| {
        let wanted = d.spec.selector.match_labels.as_ref();
        wanted.is_some_and(|labels| {
            SERVER_LABELS.split(',').all(|pair| {
                pair.split_once('=')
                    .is_some_and(|(k, v)| labels.get(k).map(String::as_str) == Some(v))
            })
        })
    })
}

fn replicas(deployment: &Deployment) -> Replicas {
    Replicas {
        name: deployment.metadata.name.clone().unwrap_or_default(),
        desired: deployment.spec.replicas.unwrap_or(1),
        ready: deployment
            .status
            .as_ref()
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0),
    }
}

fn pod_view(pod: &Pod) -> PodView {
    let status = pod.status.as_ref();
    PodView {
        name: pod.metadata.name.clone().unwrap_or_default(),
        ready: connect::is_ready(pod),
        phase: status
            .and_then(|s| s.phase.clone())
            .unwrap_or_else(|| "Unknown".into()),
        restarts: status
            .and_then(|s| s.container_statuses.as_ref())
            .map_or(0, |c| c.iter().map(|c| c.restart_count).sum()),
    }
}

/// Drain objects by state (`unknown` for one without a state yet).
pub(crate) fn counts(rows: &[Row]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for row in rows {
        let state = row.state.clone().unwrap_or_else(|| "unknown".into());
        *counts.entry(state).or_default() += 1;
    }
    counts
}

/// The failing and failed drains, oldest first.
pub(crate) fn failing(rows: &[Row]) -> Vec<Failing> {
    let mut rows: Vec<&Row> = rows
        .iter()
        .filter(|r| r.state.as_deref().is_some_and(|s| FAILING.contains(&s)))
        .collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.age_seconds));
    rows.into_iter()
        .map(|r| Failing {
            drain: format!("{}/{}", r.namespace, r.name),
            claim: r.claim.clone(),
            state: r.state.clone().unwrap_or_default(),
            last_error: r.last_error.clone(),
        })
        .collect()
}

/// The report for people.
pub(crate) fn render(report: &Report) -> String {
    let mut out = match &report.deployment {
        Some(d) => format!(
            "drainer in namespace {}: Deployment {} {}/{} ready\n",
            report.namespace, d.name, d.ready, d.desired
        ),
        None => format!(
            "drainer in namespace {}: no Deployment selects its pods\n",
            report.namespace
        ),
    };
    let pods: Vec<Vec<String>> = report
        .pods
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                p.ready.to_string(),
                p.phase.clone(),
                p.restarts.to_string(),
            ]
        })
        .collect();
    out.push_str(&table(&["POD", "READY", "STATUS", "RESTARTS"], &pods));
    out.push_str(&format!("sweeper: {}\n", cell(report.sweeper.as_deref())));
    out.push_str(&format!("drains: {}\n", drain_counts(&report.drains)));
    if !report.failing.is_empty() {
        out.push_str(&failing_table(&report.failing));
    }
    out.push_str(&readiness_text(
        report.readiness.as_ref(),
        report.readiness_error.as_deref(),
    ));
    out
}

fn drain_counts(counts: &BTreeMap<String, usize>) -> String {
    if counts.is_empty() {
        return "none".into();
    }
    let parts: Vec<String> = counts.iter().map(|(s, n)| format!("{s} {n}")).collect();
    parts.join(", ")
}

fn failing_table(failing: &[Failing]) -> String {
    let rows: Vec<Vec<String>> = failing
        .iter()
        .map(|f| {
            vec![
                f.drain.clone(),
                cell(f.claim.as_deref()),
                f.state.clone(),
                cell(f.last_error.as_deref()).replace('\n', " "),
            ]
        })
        .collect();
    table(&["FAILING DRAIN", "CLAIM", "STATE", "LAST ERROR"], &rows)
}

fn readiness_text(readiness: Option<&Value>, error: Option<&str>) -> String {
    let Some(answer) = readiness else {
        return format!("readiness: unknown ({})\n", error.unwrap_or("not asked"));
    };
    let status = answer["status"].as_str().unwrap_or("unknown");
    let rows: Vec<Vec<String>> = answer["conditions"]
        .as_array()
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .map(|c| {
            vec![
                cell(c["name"].as_str()),
                c["ok"].as_bool().unwrap_or(false).to_string(),
                c["required"].as_bool().unwrap_or(false).to_string(),
                cell(c["message"].as_str()),
            ]
        })
        .collect();
    format!(
        "readiness: {status}\n{}",
        table(&["CONDITION", "OK", "REQUIRED", "MESSAGE"], &rows)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(ns: &str, name: &str, state: Option<&str>, age: i64) -> Row {
        Row {
            namespace: ns.into(),
            name: name.into(),
            claim: Some("data-0".into()),
            state: state.map(Into::into),
            progress: None,
            snapshot: None,
            last_error: state
                .filter(|s| s.starts_with("fail"))
                .map(|_| "store down".into()),
            age_seconds: Some(age),
        }
    }

    #[test]
    fn drains_are_counted_by_state_and_the_failing_listed_oldest_first() {
        let rows = [
            row("a", "d-1", Some("completed"), 10),
            row("a", "d-2", Some("failed"), 5),
            row("b", "d-3", Some("failing"), 50),
            row("b", "d-4", None, 1),
            row("b", "d-5", Some("completed"), 1),
        ];
        let counts = counts(&rows);
        assert_eq!(
            counts.into_iter().collect::<Vec<_>>(),
            [
                ("completed".to_owned(), 2),
                ("failed".to_owned(), 1),
                ("failing".to_owned(), 1),
                ("unknown".to_owned(), 1)
            ]
        );
        let failing = failing(&rows);
        let names: Vec<&str> = failing.iter().map(|f| f.drain.as_str()).collect();
        assert_eq!(names, ["b/d-3", "a/d-2"]);
        assert_eq!(failing[0].last_error.as_deref(), Some("store down"));
    }

    #[test]
    fn the_deployment_is_the_one_selecting_the_server_pods() {
        let deployment = |name: &str, labels: Value| -> Deployment {
            serde_json::from_value(json!({"metadata": {"name": name},
                "spec": {"selector": {"matchLabels": labels}, "template": {}}}))
            .unwrap()
        };
        let list = [
            deployment("other", json!({"app.kubernetes.io/name": "drainer"})),
            deployment(
                "drainer",
                json!({"app.kubernetes.io/name": "drainer", "app.kubernetes.io/component": "server"}),
            ),
        ];
        assert_eq!(
            server_deployment(&list).and_then(|d| d.metadata.name.as_deref()),
            Some("drainer")
        );
        assert!(server_deployment(&list[..1]).is_none());
    }

    #[test]
    fn the_report_reads_as_a_page() {
        let report = Report {
            namespace: "drainer-system".into(),
            deployment: Some(Replicas {
                name: "drainer".into(),
                desired: 1,
                ready: 1,
            }),
            pods: vec![PodView {
                name: "drainer-abc".into(),
                ready: true,
                phase: "Running".into(),
                restarts: 0,
            }],
            sweeper: Some("drainer-abc".into()),
            drains: [("completed".to_owned(), 2)].into(),
            failing: vec![],
            readiness: Some(json!({"status": "ready", "conditions": [
                {"name": "ledger", "ok": true, "required": true, "message": "commits"}]})),
            readiness_error: None,
        };
        assert_eq!(
            render(&report),
            "drainer in namespace drainer-system: Deployment drainer 1/1 ready\n\
             POD           READY   STATUS    RESTARTS\n\
             drainer-abc   true    Running   0\n\
             sweeper: drainer-abc\n\
             drains: completed 2\n\
             readiness: ready\n\
             CONDITION   OK     REQUIRED   MESSAGE\n\
             ledger      true   true       commits\n"
        );
        let unknown = readiness_text(None, Some("no ready drainer pod"));
        assert_eq!(unknown, "readiness: unknown (no ready drainer pod)\n");
    }
}
