//! Snapshots belong to one life of a namespace, on kube-env: a claim of a StatefulSet's
//! template is drained (its snapshot records the namespace's, the StatefulSet's and the claim's
//! UIDs); a new claim of the same name in the same namespace restores it (the scale-up
//! restore); the namespace is deleted and created again with a claim of the same name and a pod
//! mounting it, whose token restores nothing (`drainer restore --drainer` finds no snapshot,
//! the snapshot named by id is not found, its objects answer `403 earlier_namespace`, and
//! asking for `earlier=true` is refused); an operator of the new namespace granted `create` on
//! its restores is refused the earlier life too, naming `read-earlier`, and granted that as
//! well reads it; the admin's explicit read (`--earlier-namespace`) restores it; both reads
//! are recorded in the ledger. A ServiceAccount of another namespace restores the claim only
//! once RBAC in the claim's namespace grants it.

use crate::support::cluster::{TestNamespace, WebSet, run_mover};
use crate::support::kube::{delete_namespace, eventually, from_json, with_timeout};
use crate::support::serve::{Serve, TOKEN};
use crate::support::tree::{bytes, differences};
use crate::support::{drainer, run, run_ok};
use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim, Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(420);
const WAIT: Duration = Duration::from_secs(120);
const PVC: &str = "data-web-0";

/// A namespace and a drainer serving it with movers external (the test runs the claim's
/// mover itself, as a mover Job would).
struct World {
    namespace: TestNamespace,
    serve: Serve,
}

impl std::ops::Deref for World {
    type Target = TestNamespace;

    fn deref(&self) -> &TestNamespace {
        &self.namespace
    }
}

impl World {
    async fn new() -> Result<Self> {
        let namespace = TestNamespace::new("ns-life").await?;
        let serve = namespace
            .kube_drainer()
            .start(&namespace.work.join("data"))
            .await?;
        Ok(Self { namespace, serve })
    }

    async fn namespace_uid(&self) -> Result<String> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        api.get(&self.ns).await?.metadata.uid.context("no UID")
    }

    /// A StatefulSet `web` of no replicas whose claim template `data` names claim `data-web-0`.
    async fn statefulset(&self) -> Result<String> {
        let set = WebSet::new(0).unmounted().create(self).await?;
        set.metadata.uid.context("no UID")
    }

    /// A new claim `data-web-0`, bound; its directory and UID.
    async fn claim(&self) -> Result<(PathBuf, String)> {
        let claim = self.create_claim(PVC, "64Mi").await?;
        let dir = self.bound_claim_dir(PVC, WAIT).await?;
        Ok((dir, claim.metadata.uid.context("no UID")?))
    }

    /// Deletes the claim (and pod `web-0`, if any) and waits until both are gone.
    async fn delete_claim_and_pod(&self) -> Result<()> {
        let now = DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        };
        let _ = self.api::<Pod>().delete("web-0", &now).await;
        let _ = self
            .api::<PersistentVolumeClaim>()
            .delete(PVC, &DeleteParams::default())
            .await;
        eventually("web-0 and its claim gone", WAIT, || async {
            ensure!(self.api::<Pod>().get_opt("web-0").await?.is_none(), "pod");
            let claims = self.api::<PersistentVolumeClaim>();
            ensure!(claims.get_opt(PVC).await?.is_none(), "claim");
            Ok(())
        })
        .await
    }

    /// Pod `web-0` mounting the claim, running; a token of it for drainer.
    async fn pod_token(&self) -> Result<String> {
        let pod: Pod = from_json(json!({
            "metadata": {"name": "web-0"},
            "spec": {
                "terminationGracePeriodSeconds": 1,
                "containers": [{
                    "name": "app", "image": "registry.invalid/web:1",
                    "command": ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"],
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}]
                }],
                "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": PVC}}]
            }
        }));
        let pods = self.api::<Pod>();
        pods.create(&PostParams::default(), &pod).await?;
        let pod = self.running_pod("web-0", WAIT).await?;
        let sas = self.api::<ServiceAccount>();
        let sa = eventually("ServiceAccount default", WAIT, || async {
            sas.get_opt("default").await?.context("not yet")
        });
        sa.await?;
        self.token("default", &["drainer"], Some(&pod)).await
    }

    /// Drains the claim (the admin's handoff, the test's mover on `dir`); the snapshot's id.
    async fn drain(&self, dir: &Path) -> Result<String> {
        let (_, drains) = self.serve.handoff(&self.ns, &[PVC]).await;
        let id = drains[0]["id"].as_str().context("no drain")?.to_owned();
        self.serve.wait_state(&id, "copying", WAIT).await;
        run_mover(&self.serve, &id, dir).await;
        let drain = self.serve.wait_state(&id, "completed", WAIT).await;
        Ok(drain["snapshot"]
            .as_str()
            .context("no snapshot")?
            .to_owned())
    }

    /// `drainer restore --drainer` of the claim with `token` into a new directory `name`,
    /// with `extra` arguments; the directory and the command's output.
    async fn restore(
        &self,
        token: &str,
        name: &str,
        extra: &[&str],
    ) -> (PathBuf, std::process::Output) {
        let dest = self.work.join(name);
        let volume = format!("{}/{PVC}", self.ns);
        let out = run(drainer()
            .args(["restore", "--drainer", &self.serve.url, "--volume", &volume])
            .args(extra)
            .arg(&dest)
            .env("DRAINER_TOKEN", token))
        .await;
        (dest, out)
    }

    /// `GET` of `path` under the claim's routes with `token`.
    async fn get(&self, token: &str, path: &str) -> (u16, Value) {
        let path = format!("/v1/volumes/{}/{PVC}/{path}", self.ns);
        self.serve
            .call_as(token, reqwest::Method::GET, &path, None)
            .await
    }

    /// ServiceAccount `restorer` of the namespace, bound to a Role granting `verbs` on the
    /// claim's `restores` (`create`) and `snapshots` (`read-earlier`) of `drainer.io`; its
    /// token for drainer.
    async fn restorer(&self, verbs: &[&str]) -> Result<String> {
        let sa: ServiceAccount = from_json(json!({"metadata": {"name": "restorer"}}));
        let _ = self
            .api::<ServiceAccount>()
            .create(&PostParams::default(), &sa)
            .await;
        let mut rules = vec![];
        for (verb, resource) in [("create", "restores"), ("read-earlier", "snapshots")] {
            if verbs.contains(&verb) {
                rules.push(json!({
                    "apiGroups": ["drainer.io"], "resources": [resource],
                    "resourceNames": [PVC], "verbs": [verb]
                }));
            }
        }
        let role: Role = from_json(json!({"metadata": {"name": "restorer"}, "rules": rules}));
        let binding: RoleBinding = from_json(json!({
            "metadata": {"name": "restorer"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "restorer"},
            "subjects": [{"kind": "ServiceAccount", "name": "restorer", "namespace": self.ns}]
        }));
        let apply = PatchParams::apply("drainer-tests").force();
        self.api::<Role>()
            .patch("restorer", &apply, &Patch::Apply(&role))
            .await?;
        self.api::<RoleBinding>()
            .patch("restorer", &apply, &Patch::Apply(&binding))
            .await?;
        self.token("restorer", &["drainer"], None).await
    }

    /// ServiceAccount `backup` of namespace `other` (a backup team's), granted `create` on the
    /// claim's `restores` in this namespace by a RoleBinding here if `granted`; its token for
    /// drainer.
    async fn outsider(&self, other: &TestNamespace, granted: bool) -> Result<String> {
        let sa: ServiceAccount = from_json(json!({"metadata": {"name": "backup"}}));
        let _ = other
            .api::<ServiceAccount>()
            .create(&PostParams::default(), &sa)
            .await;
        if granted {
            let role: Role = from_json(json!({
                "metadata": {"name": "backup-restore"},
                "rules": [{
                    "apiGroups": ["drainer.io"], "resources": ["restores"],
                    "resourceNames": [PVC], "verbs": ["create"]
                }]
            }));
            let binding: RoleBinding = from_json(json!({
                "metadata": {"name": "backup-restore"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "backup-restore"},
                "subjects": [{"kind": "ServiceAccount", "name": "backup", "namespace": other.ns}]
            }));
            let apply = PatchParams::apply("drainer-tests").force();
            self.api::<Role>()
                .patch("backup-restore", &apply, &Patch::Apply(&role))
                .await?;
            self.api::<RoleBinding>()
                .patch("backup-restore", &apply, &Patch::Apply(&binding))
                .await?;
        }
        other.token("backup", &["drainer"], None).await
    }

    /// Deletes the namespace, waits until it is gone, and creates it again; its new UID.
    async fn make_namespace_again(&self) -> Result<String> {
        delete_namespace(&self.client, &self.ns).await?;
        let api: Api<Namespace> = Api::all(self.client.clone());
        eventually(format!("namespace {} gone", self.ns), WAIT, || async {
            ensure!(api.get_opt(&self.ns).await?.is_none(), "still there");
            Ok(())
        })
        .await?;
        let ns: Namespace = from_json(json!({"metadata": {"name": self.ns}}));
        api.create(&PostParams::default(), &ns).await?;
        self.namespace_uid().await
    }
}

/// What the first life writes into its claim.
fn fill(dir: &Path) -> Result<()> {
    std::fs::write(dir.join("owner.txt"), "team-a\n")?;
    std::fs::create_dir_all(dir.join("db"))?;
    std::fs::write(dir.join("db/data"), bytes(7, 3 << 20))?;
    Ok(())
}

fn failed_saying(out: &std::process::Output, words: &str) -> Result<()> {
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("refused: {}", stderr.trim());
    ensure!(!out.status.success(), "succeeded: {stderr}");
    ensure!(stderr.contains(words), "not {words:?}: {stderr}");
    Ok(())
}

/// Nothing was restored into `dest` (it is missing, or an empty directory).
fn nothing_in(dest: &Path) -> Result<()> {
    let entries = match std::fs::read_dir(dest) {
        Ok(entries) => entries.count(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e.into()),
    };
    ensure!(entries == 0, "{} holds {entries} entries", dest.display());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_made_again_restores_nothing_of_the_earlier_one() -> Result<()> {
    with_timeout(LIMIT, async {
        let w = World::new().await?;
        let first_uid = w.namespace_uid().await?;
        let set_uid = w.statefulset().await?;
        let (dir, claim_uid) = w.claim().await?;
        fill(&dir)?;
        let kept = w.work.join("had");
        run_ok(
            tokio::process::Command::new("cp")
                .arg("-a")
                .arg(&dir)
                .arg(&kept),
        )
        .await;
        let snapshot = w.drain(&dir).await?;

        // The snapshot records the life it was made in.
        let (status, listing) = w.get(TOKEN, "snapshots").await;
        ensure!(status == 200, "{listing}");
        let origin = &listing["snapshots"][0]["drain"];
        ensure!(origin["namespace_uid"] == first_uid.as_str(), "{listing}");
        ensure!(origin["statefulset_uid"] == set_uid.as_str(), "{listing}");
        ensure!(origin["claim_uid"] == claim_uid.as_str(), "{listing}");

        // The scale-up restore: a new claim of that name, same namespace, its pod's token.
        w.delete_claim_and_pod().await?;
        let (_, new_claim_uid) = w.claim().await?;
        ensure!(new_claim_uid != claim_uid, "a new claim");
        let token = w.pod_token().await?;
        let (dest, out) = w.restore(&token, "scale-up", &[]).await;
        ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let diffs = differences(&kept, &dest);
        ensure!(diffs.is_empty(), "the scale-up restore differs: {diffs:#?}");

        // A ServiceAccount of another namespace (a backup team's) is refused, naming the grant
        // it lacks; granted `create` on the claim's restores here, it restores exactly.
        let ops = TestNamespace::new("ns-life-ops").await?;
        let outsider = w.outsider(&ops, false).await?;
        let (dest, out) = w.restore(&outsider, "outsider-refused", &[]).await;
        failed_saying(&out, "or create restores.drainer.io")?;
        nothing_in(&dest)?;
        w.outsider(&ops, true).await?;
        let dest = eventually("the granted outsider restores", WAIT, || async {
            let (dest, out) = w.restore(&outsider, "outsider", &[]).await;
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            ensure!(out.status.success(), "{stderr}");
            Ok(dest)
        })
        .await?;
        let diffs = differences(&kept, &dest);
        ensure!(
            diffs.is_empty(),
            "the outsider's restore differs: {diffs:#?}"
        );

        // Another team's namespace of the same name, claim and pod.
        w.delete_claim_and_pod().await?;
        let second_uid = w.make_namespace_again().await?;
        ensure!(
            second_uid != first_uid,
            "the namespace made again has a new UID"
        );
        w.claim().await?;
        let token = w.pod_token().await?;
        let (dest, out) = w.restore(&token, "latest", &[]).await;
        failed_saying(&out, "has no snapshot")?;
        nothing_in(&dest)?;
        let (dest, out) = w.restore(&token, "by-id", &["--snapshot", &snapshot]).await;
        failed_saying(
            &out,
            &format!(
                "snapshot {snapshot} of {}/{PVC} belongs to an earlier namespace",
                w.ns
            ),
        )?;
        nothing_in(&dest)?;
        let (status, listing) = w.get(&token, "snapshots").await;
        ensure!(
            status == 200 && listing["snapshots"] == json!([]),
            "{listing}"
        );
        ensure!(listing["latest"].is_null(), "{listing}");
        let key = format!("objects?key=snapshots/{snapshot}/snapshot.json");
        let (status, refusal) = w.get(&token, &key).await;
        ensure!(status == 403, "{status} {refusal}");
        ensure!(refusal["error"]["code"] == "earlier_namespace", "{refusal}");
        let (status, refusal) = w.get(&token, &format!("{key}&earlier=true")).await;
        ensure!(
            status == 403 && refusal["error"]["code"] == "forbidden",
            "{refusal}"
        );
        let (status, refusal) = w.get(&token, "snapshots?earlier=true").await;
        ensure!(status == 403, "{status} {refusal}");
        let (status, listing) = w.get(TOKEN, "snapshots").await;
        ensure!(
            status == 200 && listing["snapshots"] == json!([]),
            "the admin without the flag: {listing}"
        );

        // An operator of the namespace as it is now, granted `create` on restores only, is
        // refused the earlier life, naming `read-earlier`; granted it too, it reads it.
        let by_id = ["--snapshot", snapshot.as_str(), "--earlier-namespace"];
        let restorer = w.restorer(&["create"]).await?;
        let (dest, out) = w.restore(&restorer, "restorer-refused", &by_id).await;
        failed_saying(&out, "read-earlier")?;
        nothing_in(&dest)?;
        w.restorer(&["create", "read-earlier"]).await?;
        let dest = eventually(
            "the granted operator reads the earlier life",
            WAIT,
            || async {
                let (dest, out) = w.restore(&restorer, "restorer", &by_id).await;
                let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
                ensure!(out.status.success(), "{stderr}");
                Ok(dest)
            },
        )
        .await?;
        let diffs = differences(&kept, &dest);
        ensure!(
            diffs.is_empty(),
            "the granted operator's restore differs: {diffs:#?}"
        );

        // The admin reads the earlier life explicitly; it is recorded.
        let (dest, out) = w.restore(TOKEN, "operator", &by_id).await;
        ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let diffs = differences(&kept, &dest);
        ensure!(
            diffs.is_empty(),
            "the operator's restore differs: {diffs:#?}"
        );
        let log = std::fs::read_to_string(w.serve.log_path())?;
        ensure!(
            log.contains("an operator reads a snapshot of an earlier namespace"),
            "not logged"
        );

        let World { serve, namespace } = w;
        serve.terminate(Duration::from_secs(20)).await;
        let ledger = drainer_core::Ledger::open(None, &namespace.work.join("data")).await?;
        let reads = ledger.earlier_reads(&namespace.ns, PVC).await?;
        ensure!(reads.len() == 2, "{reads:?}");
        let operator = format!("user:system:serviceaccount:{}:restorer", namespace.ns);
        ensure!(
            reads
                .iter()
                .any(|r| r.principal == operator && r.snapshot == snapshot),
            "{reads:?}"
        );
        let read = reads
            .iter()
            .find(|r| r.principal == "admin")
            .context("admin's read")?;
        ensure!(
            read.principal == "admin" && read.snapshot == snapshot,
            "{read:?}"
        );
        ensure!(
            read.snapshot_namespace_uid.as_deref() == Some(first_uid.as_str()),
            "{read:?}"
        );
        ensure!(
            read.current_namespace_uid.as_deref() == Some(second_uid.as_str()),
            "{read:?}"
        );
        namespace.finish().await
    })
    .await
}
