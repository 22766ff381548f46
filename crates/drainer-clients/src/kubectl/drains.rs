//! `kubectl drainer drains`: the `Drain` objects (`drains.drainer.io/v1alpha1`, one per drain
//! in its claim's namespace, written by drainer from its ledger) read from the API server with
//! the kubeconfig's identity, as a table like `kubectl get drains` or as a JSON or YAML List.

use super::connect::{self, Cluster, Scope};
use super::output::{age, cell, document, table};
use super::{KubectlArgs, Output};
use kube::api::{Api, ApiResource, DynamicObject, ListParams};

/// The `Drain` resource (group `drainer.io`, version `v1alpha1`).
pub(crate) fn resource() -> ApiResource {
    ApiResource {
        group: "drainer.io".into(),
        version: "v1alpha1".into(),
        api_version: "drainer.io/v1alpha1".into(),
        kind: "Drain".into(),
        plural: "drains".into(),
    }
}

/// Objects listed a page at a time.
const PAGE: u32 = 500;

/// Every Drain object in `scope`, page after page.
pub(crate) async fn list(cluster: &Cluster, scope: &Scope) -> anyhow::Result<Vec<DynamicObject>> {
    let api: Api<DynamicObject> = match scope {
        Scope::All => Api::all_with(cluster.client.clone(), &resource()),
        Scope::Namespace(ns) => Api::namespaced_with(cluster.client.clone(), ns, &resource()),
    };
    let mut objects = Vec::new();
    let mut params = ListParams::default().limit(PAGE);
    loop {
        let page = api.list(&params).await.map_err(|e| list_error(scope, e))?;
        objects.extend(page.items);
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(objects),
        }
    }
}

/// Why the Drain objects could not be listed (a 404: the CRD is not installed).
fn list_error(scope: &Scope, error: kube::Error) -> anyhow::Error {
    if let kube::Error::Api(status) = &error
        && status.code == 404
    {
        return anyhow::anyhow!(
            "the API server does not serve drains.drainer.io: is drainer installed (its CRD, \
             deploy/base/crd.yaml)?"
        );
    }
    let what = match scope {
        Scope::All => "listing Drain objects in every namespace".to_owned(),
        Scope::Namespace(ns) => format!("listing Drain objects in namespace {ns}"),
    };
    connect::api_error(what, error)
}

/// `kubectl drainer drains`.
pub(crate) async fn run(cluster: &Cluster, args: &KubectlArgs) -> anyhow::Result<()> {
    let scope = cluster.scope(args)?;
    let mut objects = list(cluster, &scope).await?;
    objects.sort_by(|a, b| {
        (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name))
    });
    let text = match args.output {
        Output::Table => {
            let now = chrono::Utc::now().timestamp();
            let rows: Vec<Row> = objects.iter().map(|o| Row::of(o, now)).collect();
            render(&rows, scope == Scope::All)
        }
        format => document(&as_list(objects), format)?,
    };
    print!("{text}");
    if args.output == Output::Table && text.lines().count() == 1 {
        eprintln!("No Drain objects found{}.", in_scope(&scope));
    }
    Ok(())
}

fn in_scope(scope: &Scope) -> String {
    match scope {
        Scope::All => String::new(),
        Scope::Namespace(ns) => format!(" in namespace {ns}"),
    }
}

/// The objects as a `List`, as `kubectl get -o json` prints them (without managed fields).
fn as_list(mut objects: Vec<DynamicObject>) -> serde_json::Value {
    for object in &mut objects {
        object.metadata.managed_fields = None;
    }
    serde_json::json!({"apiVersion": "v1", "kind": "List", "items": objects})
}

/// One line of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Row {
    /// The object's namespace (the claim's).
    pub namespace: String,
    /// The drain id.
    pub name: String,
    /// `spec.claim`.
    pub claim: Option<String>,
    /// `status.state`.
    pub state: Option<String>,
    /// `status.progress.summary`.
    pub progress: Option<String>,
    /// `status.snapshot`.
    pub snapshot: Option<String>,
    /// `status.lastError`.
    pub last_error: Option<String>,
    /// Seconds since the object was made.
    pub age_seconds: Option<i64>,
}

impl Row {
    /// The row of a Drain object, at `now` (Unix seconds).
    pub fn of(object: &DynamicObject, now: i64) -> Self {
        let text = |pointer: &str| {
            object
                .data
                .pointer(pointer)
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        Self {
            namespace: object.metadata.namespace.clone().unwrap_or_default(),
            name: object.metadata.name.clone().unwrap_or_default(),
            claim: text("/spec/claim"),
            state: text("/status/state"),
            progress: text("/status/progress/summary"),
            snapshot: text("/status/snapshot"),
            last_error: text("/status/lastError"),
            age_seconds: object
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| now - t.0.as_second()),
        }
    }
}

/// The table of `kubectl get drains` (with the NAMESPACE column for every namespace).
pub(crate) fn render(rows: &[Row], all_namespaces: bool) -> String {
    let mut headers = vec!["NAME", "CLAIM", "STATE", "PROGRESS", "SNAPSHOT", "AGE"];
    if all_namespaces {
        headers.insert(0, "NAMESPACE");
    }
    let lines: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut line = vec![
                r.name.clone(),
                cell(r.claim.as_deref()),
                cell(r.state.as_deref()),
                cell(r.progress.as_deref()),
                cell(r.snapshot.as_deref()),
                r.age_seconds.map_or_else(|| "<unknown>".to_owned(), age),
            ];
            if all_namespaces {
                line.insert(0, r.namespace.clone());
            }
            line
        })
        .collect();
    table(&headers, &lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn drain(ns: &str, name: &str, status: serde_json::Value) -> DynamicObject {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "drainer.io/v1alpha1", "kind": "Drain",
            "metadata": {"namespace": ns, "name": name, "creationTimestamp": "2026-12-07T10:00:00Z"},
            "spec": {"claim": "data-web-2", "reason": "handoff"},
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn a_drain_object_is_a_row_of_the_table() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-12-07T10:02:30Z")
            .unwrap()
            .timestamp();
        let done = drain(
            "shop",
            "d-1",
            serde_json::json!({"state": "completed", "snapshot": "20261207T1000Z-ab",
                "progress": {"files": 3, "summary": "3 files, 0.6 MiB"}}),
        );
        let new = drain("a", "d-2", serde_json::json!({}));
        let rows = [Row::of(&done, now), Row::of(&new, now)];
        assert_eq!(rows[0].age_seconds, Some(150));
        assert_eq!(
            render(&rows, true),
            "NAMESPACE   NAME   CLAIM        STATE       PROGRESS           SNAPSHOT            AGE\n\
             shop        d-1    data-web-2   completed   3 files, 0.6 MiB   20261207T1000Z-ab   2m\n\
             a           d-2    data-web-2   <none>      <none>             <none>              2m\n"
        );
        assert!(render(&rows, false).starts_with("NAME   CLAIM"));
    }

    #[test]
    fn json_is_a_list_of_the_objects() {
        let list = as_list(vec![drain(
            "shop",
            "d-1",
            serde_json::json!({"state": "queued"}),
        )]);
        assert_eq!(list["kind"], "List");
        assert_eq!(list["items"][0]["status"]["state"], "queued");
        assert_eq!(list["items"][0]["metadata"]["name"], "d-1");
    }
}
