//! Operators without a shared secret, on kube-env. Users of the cluster are
//! ServiceAccounts of their own namespace with tokens from `kubectl create token --audience
//! drainer`; the ClusterRoles `drainer-view` and `drainer-operate` are those of
//! `deploy/base` (renamed per test, so tests of other engineers installing `deploy/base` at
//! the same time change nothing here; rules and aggregation labels as shipped), bound in
//! namespace team-a. drainer serves team-a and team-b in Kubernetes mode with the drains of
//! three claims, handed off with the admin token. A viewer lists and reads team-a's drains and
//! is refused (403 naming the missing permission) retrying or cancelling one, and listing
//! team-b's; an operator cancels and retries team-a's, and the history names them; a token
//! without a binding gets nothing; a Role naming one drain (`resourceNames`) grants that one;
//! the built-in `view` and `edit` roles include drainer's through aggregation; sweeps and
//! listings of every namespace take a ClusterRoleBinding.

use crate::support::cluster::KubeDrainer;
use crate::support::file_url;
use crate::support::install::{deploy, kubectl};
use crate::support::kube::{
    KubeEnv, client, create_namespace, delete_namespace, eventually, from_json, with_timeout,
};
use crate::support::serve::Serve;
use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, Role, RoleBinding};
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(300);
const WAIT: Duration = Duration::from_secs(90);

/// Two teams' namespaces, the operators' namespace, drainer serving the teams, and the
/// shipped operator roles installed under names of this test.
struct Teams {
    env: KubeEnv,
    client: Client,
    serve: Serve,
    /// team-a, team-b, and the namespace of the operators' ServiceAccounts.
    a: String,
    b: String,
    ops: String,
    /// The names the shipped `drainer-view` and `drainer-operate` are installed under.
    view: String,
    operate: String,
    /// Drains of team-a's claims `data-1` and `data-2`, and of team-b's `data-1`.
    a1: String,
    a2: String,
    b1: String,
    _work: tempfile::TempDir,
}

impl Teams {
    async fn new(prefix: &str) -> Result<Self> {
        let env = KubeEnv::load()?;
        let client = client().await?;
        let a = create_namespace(&client, &format!("{prefix}-a")).await?;
        let b = create_namespace(&client, &format!("{prefix}-b")).await?;
        let ops = create_namespace(&client, &format!("{prefix}-ops")).await?;
        let suffix = ops.rsplit('-').next().unwrap_or_default().to_owned();
        let (view, operate) = install_roles(&env, &suffix).await?;
        for (ns, claim) in [(&a, "data-1"), (&a, "data-2"), (&b, "data-1")] {
            create_claim(&client, ns, claim).await?;
        }
        let work = tempfile::tempdir()?;
        let store = file_url(&work.path().join("store"));
        // One attempt, and a mover that never comes fails it after 2 s: drains end up
        // failing (retried slowly), so an operator can retry one.
        let serve = KubeDrainer::new(&a, &store)
            .watching(&[&a, &b])
            .lease(5)
            .args(&["--max-attempts", "1", "--mover-timeout", "2"])
            .start(&work.path().join("data"))
            .await?;
        let mut ids = Vec::new();
        for (ns, claim) in [(&a, "data-1"), (&a, "data-2"), (&b, "data-1")] {
            let (status, drains) = serve.handoff(ns, &[claim]).await;
            ensure!(
                status == 202,
                "handoff of {ns}/{claim}: {status} {drains:?}"
            );
            let id = drains[0]["id"].as_str().context("no drain id")?.to_owned();
            ids.push(id);
        }
        let [a1, a2, b1] = <[String; 3]>::try_from(ids).expect("three drains");
        Ok(Self {
            env,
            client,
            serve,
            a,
            b,
            ops,
            view,
            operate,
            a1,
            a2,
            b1,
            _work: work,
        })
    }

    /// A ServiceAccount `name` of the operators' namespace, and its token from `kubectl
    /// create token` (audience drainer).
    async fn user(&self, name: &str) -> Result<String> {
        let sas: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &self.ops);
        sas.create(
            &PostParams::default(),
            &from_json(json!({"metadata": {"name": name}})),
        )
        .await?;
        let token = kubectl(
            &self.env,
            &[
                "create",
                "token",
                name,
                "-n",
                &self.ops,
                "--audience",
                "drainer",
                "--duration",
                "15m",
            ],
        )
        .await?;
        Ok(token.trim().to_owned())
    }

    /// The principal drainer records for ServiceAccount `name` of the operators' namespace.
    fn principal(&self, name: &str) -> String {
        format!("user:system:serviceaccount:{}:{name}", self.ops)
    }

    /// Binds ServiceAccount `user` to `kind` `role` in team-a.
    async fn bind_in_a(&self, user: &str, kind: &str, role: &str) -> Result<()> {
        let bindings: Api<RoleBinding> = Api::namespaced(self.client.clone(), &self.a);
        bindings
            .create(
                &PostParams::default(),
                &from_json(json!({
                    "metadata": {"name": user},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role},
                    "subjects": [{"kind": "ServiceAccount", "name": user, "namespace": self.ops}]
                })),
            )
            .await?;
        Ok(())
    }

    async fn call(&self, token: &str, method: Method, path: &str) -> (u16, Value) {
        let body = (method == Method::POST && path.ends_with("/abandon"))
            .then(|| json!({"reason": "the team moved the data elsewhere"}));
        self.serve.call_as(token, method, path, body).await
    }

    /// Calls until the answer has `status` (RBAC bindings and aggregation take a moment to
    /// reach the API server's authorizer, and drainer keeps answers for 5 s).
    async fn until(&self, token: &str, method: Method, path: &str, status: u16) -> Result<Value> {
        eventually(
            format!("{method} {path} answers {status}"),
            WAIT,
            || async {
                let (got, body) = self.call(token, method.clone(), path).await;
                ensure!(got == status, "{got} {body}");
                Ok(body)
            },
        )
        .await
    }

    /// Refused with `403` naming the permission: `verb` `resource` in `namespace`, `name`.
    async fn refused(
        &self,
        token: &str,
        method: Method,
        path: &str,
        missing: (&str, &str, Option<&str>, Option<&str>),
    ) -> Result<()> {
        let (status, body) = self.call(token, method.clone(), path).await;
        let (verb, resource, namespace, name) = missing;
        let expected = json!({"group": "drainer.io", "verb": verb, "resource": resource,
                              "namespace": namespace, "name": name});
        ensure!(
            status == 403 && body["error"]["missing"] == expected,
            "{method} {path}: {status} {body}, expected 403 missing {expected}"
        );
        Ok(())
    }

    async fn volumes_listed(&self, token: &str, query: &str) -> Result<BTreeSet<String>> {
        let body = self
            .until(token, Method::GET, &format!("/v1/drains{query}"), 200)
            .await?;
        Ok(body["drains"]
            .as_array()
            .context("no drains")?
            .iter()
            .filter_map(|d| d["volume"].as_str().map(str::to_owned))
            .collect())
    }

    async fn history_says(&self, id: &str, message: &str) -> Result<()> {
        let drain = self.serve.drain(id).await;
        let history = drain["history"].as_array().context("no history")?;
        ensure!(
            history.iter().any(|e| e["message"] == message),
            "drain {id} has no history entry {message:?}: {drain}"
        );
        Ok(())
    }

    async fn state(&self, id: &str) -> String {
        self.serve.drain(id).await["state"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    async fn finish(self) -> Result<()> {
        for ns in [&self.a, &self.b, &self.ops] {
            delete_namespace(&self.client, ns).await?;
        }
        kubectl(
            &self.env,
            &[
                "delete",
                "clusterrole",
                &self.view,
                &self.operate,
                "--ignore-not-found",
            ],
        )
        .await?;
        Ok(())
    }
}

/// Installs `deploy/base`'s ClusterRoles `drainer-view` and `drainer-operate` as
/// `drainer-view-SUFFIX` and `drainer-operate-SUFFIX`; returns those names.
async fn install_roles(env: &KubeEnv, suffix: &str) -> Result<(String, String)> {
    let rendered = kubectl(env, &["kustomize", &deploy("base")]).await?;
    let mut names = Vec::new();
    let mut docs = Vec::new();
    for role in ["drainer-view", "drainer-operate"] {
        let doc = rendered
            .split("\n---\n")
            .find(|d| d.contains("kind: ClusterRole\n") && d.contains(&format!("name: {role}\n")))
            .with_context(|| format!("deploy/base has no ClusterRole {role}"))?;
        let name = format!("{role}-{suffix}");
        docs.push(doc.replace(&format!("name: {role}\n"), &format!("name: {name}\n")));
        names.push(name);
    }
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), docs.join("\n---\n"))?;
    kubectl(env, &["apply", "-f", &file.path().display().to_string()]).await?;
    Ok((names[0].clone(), names[1].clone()))
}

async fn create_claim(client: &Client, ns: &str, name: &str) -> Result<()> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    claims
        .create(
            &PostParams::default(),
            &from_json(json!({
                "metadata": {"name": name},
                "spec": {"accessModes": ["ReadWriteOnce"],
                         "resources": {"requests": {"storage": "16Mi"}}}
            })),
        )
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_do_what_rbac_grants_them_and_are_named_in_the_history() -> Result<()> {
    with_timeout(LIMIT, async {
        let t = Teams::new("kube-ops").await?;
        let (a, b) = (t.a.clone(), t.b.clone());
        let viewer = t.user("viewer").await?;
        let operator = t.user("operator").await?;
        let nobody = t.user("nobody").await?;
        let one = t.user("one-drain").await?;
        t.bind_in_a("viewer", "ClusterRole", &t.view).await?;
        t.bind_in_a("operator", "ClusterRole", &t.operate).await?;
        // A Role naming one drain by its id (resourceNames).
        let roles: Api<Role> = Api::namespaced(t.client.clone(), &a);
        roles
            .create(
                &PostParams::default(),
                &from_json(json!({
                    "metadata": {"name": "one-drain"},
                    "rules": [{"apiGroups": ["drainer.io"], "resources": ["drains"],
                               "verbs": ["get"], "resourceNames": [t.a1]}]
                })),
            )
            .await?;
        t.bind_in_a("one-drain", "Role", "one-drain").await?;

        // The viewer lists and reads team-a's drains...
        let listed = t
            .volumes_listed(&viewer, &format!("?namespace={a}"))
            .await?;
        let team_a = BTreeSet::from([format!("{a}/data-1"), format!("{a}/data-2")]);
        ensure!(listed == team_a, "the viewer lists {listed:?}");
        let (status, body) = t
            .call(&viewer, Method::GET, &format!("/v1/drains/{}", t.a1))
            .await;
        ensure!(
            status == 200 && body["id"] == t.a1.as_str(),
            "{status} {body}"
        );
        let (status, body) = t
            .call(&viewer, Method::GET, &format!("/v1/orphans?namespace={a}"))
            .await;
        ensure!(status == 200, "team-a's orphans: {status} {body}");
        // ... and may change none of them, nor see team-b's, nor every namespace's.
        for verb in ["retry", "cancel", "abandon"] {
            let path = format!("/v1/drains/{}/{verb}", t.a1);
            t.refused(
                &viewer,
                Method::POST,
                &path,
                (verb, "drains", Some(&a), Some(&t.a1)),
            )
            .await?;
        }
        t.refused(
            &viewer,
            Method::GET,
            &format!("/v1/drains?namespace={b}"),
            ("list", "drains", Some(&b), None),
        )
        .await?;
        t.refused(
            &viewer,
            Method::GET,
            &format!("/v1/drains/{}", t.b1),
            ("get", "drains", Some(&b), Some(&t.b1)),
        )
        .await?;
        // Listing without a namespace, a workload granted nothing cluster-wide gets only the
        // drains it asked for itself (none): no other team's.
        let listed = t.volumes_listed(&viewer, "").await?;
        ensure!(
            listed.is_empty(),
            "the viewer lists every namespace's {listed:?}"
        );
        t.refused(
            &viewer,
            Method::POST,
            "/v1/sweeps?dry_run=true",
            ("create", "sweeps", None, None),
        )
        .await?;

        // A token the API server accepts but RBAC grants nothing: nothing.
        t.refused(
            &nobody,
            Method::GET,
            &format!("/v1/drains?namespace={a}"),
            ("list", "drains", Some(&a), None),
        )
        .await?;
        t.refused(
            &nobody,
            Method::GET,
            &format!("/v1/drains/{}", t.a1),
            ("get", "drains", Some(&a), Some(&t.a1)),
        )
        .await?;
        let (status, _) = t
            .call("not-a-token-of-this-cluster", Method::GET, "/v1/drains")
            .await;
        ensure!(status == 401, "an unknown token: {status}");

        // A Role naming one drain grants that one only.
        t.until(&one, Method::GET, &format!("/v1/drains/{}", t.a1), 200)
            .await?;
        t.refused(
            &one,
            Method::GET,
            &format!("/v1/drains/{}", t.a2),
            ("get", "drains", Some(&a), Some(&t.a2)),
        )
        .await?;

        // The operator cancels one of team-a's drains and retries the other (failing once its
        // mover did not come), but not team-b's; the history names the operator.
        let a1_was = t.state(&t.a1).await;
        t.until(
            &operator,
            Method::POST,
            &format!("/v1/drains/{}/cancel", t.a1),
            200,
        )
        .await?;
        t.history_says(&t.a1, &format!("cancelled by {}", t.principal("operator")))
            .await?;
        ensure!(a1_was != "cancelled", "a1 was {a1_was} before");
        t.serve.wait_state(&t.a2, "failing", WAIT).await;
        t.until(
            &operator,
            Method::POST,
            &format!("/v1/drains/{}/retry", t.a2),
            200,
        )
        .await?;
        t.history_says(&t.a2, &format!("retried by {}", t.principal("operator")))
            .await?;
        t.refused(
            &operator,
            Method::POST,
            &format!("/v1/drains/{}/cancel", t.b1),
            ("cancel", "drains", Some(&b), Some(&t.b1)),
        )
        .await?;
        ensure!(
            t.state(&t.b1).await != "cancelled",
            "team-b's drain unchanged"
        );
        // A sweep covers every namespace: a RoleBinding does not grant it.
        t.refused(
            &operator,
            Method::POST,
            "/v1/sweeps?dry_run=true",
            ("create", "sweeps", None, None),
        )
        .await?;

        // Cluster-wide, through a ClusterRoleBinding: every namespace's drains, and sweeps.
        let cluster = t.user("cluster-operator").await?;
        let bindings: Api<ClusterRoleBinding> = Api::all(t.client.clone());
        let binding = format!("{}-cluster-operator", t.ops);
        bindings
            .create(
                &PostParams::default(),
                &from_json(json!({
                    "metadata": {"name": binding},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                "name": t.operate},
                    "subjects": [{"kind": "ServiceAccount", "name": "cluster-operator",
                                  "namespace": t.ops}]
                })),
            )
            .await?;
        let everything = t.volumes_listed(&cluster, "").await?;
        ensure!(
            everything.contains(&format!("{b}/data-1")) && everything.is_superset(&team_a),
            "the cluster operator lists {everything:?}"
        );
        let swept = t
            .until(&cluster, Method::POST, "/v1/sweeps?dry_run=true", 200)
            .await?;
        ensure!(swept["dry_run"] == true, "{swept}");
        bindings.delete(&binding, &DeleteParams::default()).await?;
        t.finish().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_built_in_view_and_edit_roles_include_drainers() -> Result<()> {
    with_timeout(LIMIT, async {
        let t = Teams::new("kube-ops-agg").await?;
        let a = t.a.clone();
        let viewer = t.user("viewer").await?;
        let editor = t.user("editor").await?;
        t.bind_in_a("viewer", "ClusterRole", "view").await?;
        t.bind_in_a("editor", "ClusterRole", "edit").await?;
        // `view` reads team-a's drains (once the aggregation controller has added
        // drainer-view's rules), and changes none.
        let listed = t
            .volumes_listed(&viewer, &format!("?namespace={a}"))
            .await?;
        ensure!(listed.len() == 2, "view lists {listed:?}");
        t.refused(
            &viewer,
            Method::POST,
            &format!("/v1/drains/{}/cancel", t.a1),
            ("cancel", "drains", Some(&a), Some(&t.a1)),
        )
        .await?;
        // `edit` cancels and then abandons one (drainer-operate's rules), named in the history.
        t.until(
            &editor,
            Method::POST,
            &format!("/v1/drains/{}/cancel", t.a1),
            200,
        )
        .await?;
        t.until(
            &editor,
            Method::POST,
            &format!("/v1/drains/{}/abandon", t.a1),
            200,
        )
        .await?;
        let by = t.principal("editor");
        t.history_says(&t.a1, &format!("cancelled by {by}")).await?;
        t.history_says(
            &t.a1,
            &format!("abandoned by {by}: the team moved the data elsewhere"),
        )
        .await?;
        t.finish().await
    })
    .await
}
