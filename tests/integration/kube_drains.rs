//! Drains asked for through the API server: a `Drain` object a user creates requests a drain
//! of its claim (authorised by RBAC `create` on drains.drainer.io, refused by the API server
//! without it), becomes that drain's object and follows it to `completed` with its snapshot
//! and history; a request drainer cannot take says why in its status and records nothing;
//! the `drainer.io/action` annotation retries, cancels and abandons, with the HTTP API's rules
//! (a drain holding its claim is not cancelled), recorded in the drain's history; after a
//! drainer restart the ledger and the objects agree. drainer runs in Kubernetes mode against
//! kube-env with movers external (the test is the mover, or none comes).

use crate::support::cluster::{
    TestNamespace, WebSet, drain_objects, drain_resource, install_drain_crd, run_mover,
};
use crate::support::kube::{KubeEnv, client_with_token, eventually, from_json, with_timeout};
use crate::support::serve::Serve;
use crate::support::{drainer, run_ok};
use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::Duration;

/// A guard against a hung test, not a timing target.
const LIMIT: Duration = Duration::from_secs(480);
const WAIT: Duration = Duration::from_secs(90);

/// A namespace with drainer serving it in Kubernetes mode.
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
    /// The CRD installed, a namespace, and drainer started with `extra` arguments.
    async fn new(prefix: &str, extra: &[&str]) -> Result<Self> {
        install_drain_crd().await?;
        let namespace = TestNamespace::with_web_account(prefix).await?;
        let serve = namespace
            .kube_drainer()
            .lease(5)
            .args(extra)
            .start(&namespace.work.join("data"))
            .await?;
        Ok(Self { namespace, serve })
    }

    async fn finish(self) -> Result<()> {
        self.namespace.finish().await
    }

    fn objects(&self) -> Api<DynamicObject> {
        drain_objects(&self.client, &self.ns)
    }

    /// A claim `name` (no StatefulSet) with `files` in its volume; its directory.
    async fn claim(&self, name: &str, files: &[(&str, &[u8])]) -> Result<PathBuf> {
        self.create_claim(name, "16Mi").await?;
        let dir = self.bound_claim_dir(name, WAIT).await?;
        for (file, content) in files {
            std::fs::write(dir.join(file), content)?;
        }
        Ok(dir)
    }

    /// Creates Drain `name` with `spec` as the test's admin.
    async fn request(&self, name: &str, spec: Value) -> Result<()> {
        let object: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "drainer.io/v1alpha1", "kind": "Drain",
            "metadata": {"name": name}, "spec": spec,
        }))?;
        self.objects()
            .create(&PostParams::default(), &object)
            .await?;
        Ok(())
    }

    /// Drain `name` once `check` accepts it (as JSON).
    async fn object_until(
        &self,
        name: &str,
        what: &str,
        check: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let objects = self.objects();
        eventually(format!("Drain {name} {what}"), WAIT, || async {
            let object = objects.get_opt(name).await?.context("no object")?;
            let object = serde_json::to_value(&object)?;
            ensure!(check(&object), "{object}");
            Ok(object)
        })
        .await
    }

    /// The drain that Drain `name` was linked to.
    async fn linked(&self, name: &str) -> Result<String> {
        let object = self
            .object_until(name, "linked to its drain", |o| {
                o["metadata"]["labels"]["drainer.io/drain"].is_string()
            })
            .await?;
        Ok(object["metadata"]["labels"]["drainer.io/drain"]
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// Annotates Drain `name` with `annotations`.
    async fn annotate(&self, name: &str, annotations: Value) -> Result<()> {
        let patch = Patch::Merge(json!({"metadata": {"annotations": annotations}}));
        self.objects()
            .patch(name, &PatchParams::default(), &patch)
            .await?;
        Ok(())
    }

    /// Drain `name` once drainer answered its action (the annotation gone, ActionApplied
    /// `status` for `reason`).
    async fn answered(&self, name: &str, status: &str, reason: &str) -> Result<Value> {
        self.object_until(name, &format!("answered {status} {reason}"), |o| {
            o["metadata"]["annotations"]["drainer.io/action"].is_null()
                && condition(o, "ActionApplied")
                    .is_some_and(|c| c["status"] == status && c["reason"] == reason)
        })
        .await
    }

    async fn drain_state(&self, id: &str, state: &str) -> Result<Value> {
        Ok(self.serve.wait_state(id, state, WAIT).await)
    }

    /// Whether drainer's history of drain `id` has an entry containing `text`.
    async fn history_says(&self, id: &str, text: &str) -> Result<()> {
        let drain = self.serve.drain(id).await;
        let history = drain["history"].to_string();
        ensure!(history.contains(text), "no {text:?} in {history}");
        Ok(())
    }

    /// Every drain of the namespace in the ledger has exactly one object, which says its
    /// state and snapshot; every linked object shows a drain of the ledger.
    async fn ledger_and_objects_agree(&self) -> Result<()> {
        eventually("the ledger and the objects agree", WAIT, || async {
            let drains = self.serve.drains(&format!("namespace={}", self.ns)).await;
            let objects = self.objects().list(&ListParams::default()).await?.items;
            let objects: Vec<Value> = objects
                .iter()
                .map(serde_json::to_value)
                .collect::<Result<_, _>>()?;
            for drain in &drains {
                let id = drain["id"].as_str().unwrap_or_default();
                let shown: Vec<&Value> = objects
                    .iter()
                    .filter(|o| o["metadata"]["labels"]["drainer.io/drain"] == id)
                    .collect();
                ensure!(shown.len() == 1, "drain {id} has {} objects", shown.len());
                let status = &shown[0]["status"];
                ensure!(
                    status["state"] == drain["state"] && status["snapshot"] == drain["snapshot"],
                    "drain {drain} shown as {status}"
                );
            }
            for object in objects
                .iter()
                .filter(|o| o["status"]["state"] != "rejected")
            {
                let id = &object["metadata"]["labels"]["drainer.io/drain"];
                ensure!(
                    drains.iter().any(|d| &d["id"] == id),
                    "an object of no drain: {object}"
                );
            }
            Ok(())
        })
        .await
    }
}

/// The condition `type_` of an object, if it has one.
fn condition<'a>(object: &'a Value, type_: &str) -> Option<&'a Value> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

/// A token for the API server of a new ServiceAccount `sa` of the world's namespace.
async fn api_token(w: &World, sa: &str) -> Result<String> {
    w.api::<ServiceAccount>()
        .create(
            &PostParams::default(),
            &from_json(json!({"metadata": {"name": sa}})),
        )
        .await?;
    w.token(sa, &[], None).await
}

/// Grants ServiceAccount `sa` of `ns` `verbs` on Drain objects there.
async fn grant_drains(client: &Client, ns: &str, sa: &str, verbs: &[&str]) -> Result<()> {
    let roles: Api<Role> = Api::namespaced(client.clone(), ns);
    roles
        .create(
            &PostParams::default(),
            &from_json(json!({
                "metadata": {"name": sa},
                "rules": [{"apiGroups": ["drainer.io"], "resources": ["drains"], "verbs": verbs}]
            })),
        )
        .await?;
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), ns);
    bindings
        .create(
            &PostParams::default(),
            &from_json(json!({
                "metadata": {"name": sa},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": sa},
                "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ns}]
            })),
        )
        .await?;
    Ok(())
}

/// A Drain created for a claim is a drain: recorded with the object as its requester, linked
/// to the object (no second object), copied, `completed` with its snapshot and history in the
/// object's status (`kubectl describe` shows it). Requests drainer cannot take say why and
/// record nothing; the spec is immutable; a ServiceAccount without `create` on drains is
/// refused by the API server (and nothing is drained), one with it drains as a Job would.
/// After a restart, with an object deleted and a request made while drainer was down, the
/// ledger and the objects agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_object_requests_a_drain_that_completes_with_its_snapshot() -> Result<()> {
    // The CRD is cluster-wide and part of deploy/base: the tests that install and uninstall
    // deploy/ (or the chart) delete it when they finish, so this one waits for them.
    let _serial = crate::support::install::LOCK.lock().await;
    with_timeout(LIMIT, async {
        let mut w = World::new("kube-drains-request", &[]).await?;
        let payload = crate::support::tree::bytes(7, 200_000);
        let dir = w
            .claim("notes", &[("notes.txt", b"hello\n"), ("payload", &payload)])
            .await?;
        w.request(
            "before-upgrade",
            json!({"claim": "notes", "reason": "before the upgrade"}),
        )
        .await?;
        let id = w.linked("before-upgrade").await?;
        let object = w
            .object_until("before-upgrade", "accepted", |o| {
                condition(o, "Accepted").is_some_and(|c| c["status"] == "True")
            })
            .await?;
        ensure!(
            condition(&object, "Accepted").is_some_and(|c| c["reason"] == "Requested"),
            "{object}"
        );
        ensure!(
            object["metadata"]["labels"]["drainer.io/claim"] == "notes",
            "{object}"
        );
        let drain = w.drain_state(&id, "copying").await?;
        ensure!(drain["reason"] == "before the upgrade", "{drain}");
        run_mover(&w.serve, &id, &dir).await;
        let done = w.drain_state(&id, "completed").await?;
        let snapshot = done["snapshot"].as_str().context("no snapshot")?.to_owned();
        let object = w
            .object_until("before-upgrade", "completed", |o| {
                o["status"]["state"] == "completed"
            })
            .await?;
        ensure!(
            object["status"]["snapshot"] == snapshot.as_str(),
            "{object}"
        );
        ensure!(
            condition(&object, "Succeeded").is_some_and(|c| c["status"] == "True"),
            "{object}"
        );
        ensure!(
            condition(&object, "Accepted").is_some_and(|c| c["status"] == "True"),
            "the request's condition was kept: {object}"
        );
        let history = object["status"]["history"]
            .as_array()
            .context("no history")?;
        ensure!(
            history.last().is_some_and(|e| e["state"] == "completed")
                && history.iter().any(|e| e["state"] == "copying"),
            "{object}"
        );
        // One object for the drain: the request, not one of drainer's own beside it.
        let names: Vec<String> = w
            .objects()
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter_map(|o| o.metadata.name)
            .collect();
        ensure!(names == ["before-upgrade"], "{names:?}");
        // kubectl describe shows the history.
        let env = KubeEnv::load()?;
        let described = crate::support::install::kubectl(
            &env,
            &["describe", "drain", "-n", &w.ns, "before-upgrade"],
        )
        .await?;
        ensure!(
            described.contains("History") && described.contains("completed"),
            "{described}"
        );
        // The data is in the store.
        let dest = w.work.join("restored");
        run_ok(
            drainer()
                .arg("restore")
                .arg(w.store())
                .args(["--volume", &format!("{}/notes", w.ns)])
                .arg(&dest),
        )
        .await;
        ensure!(
            std::fs::read(dest.join("payload"))? == payload,
            "payload differs"
        );

        // Requests drainer does not take: nothing recorded, the status says why.
        w.request("missing", json!({"claim": "no-such-claim"}))
            .await?;
        w.request(
            "forged",
            json!({"claim": "notes", "requestedBy": "user:someone-else"}),
        )
        .await?;
        for (name, reason) in [("missing", "ClaimNotFound"), ("forged", "InvalidSpec")] {
            let object = w
                .object_until(name, "rejected", |o| o["status"]["state"] == "rejected")
                .await?;
            ensure!(
                condition(&object, "Accepted")
                    .is_some_and(|c| c["status"] == "False" && c["reason"] == reason),
                "{object}"
            );
            ensure!(
                object["metadata"]["labels"]["drainer.io/drain"].is_null(),
                "{object}"
            );
        }
        let recorded = w
            .serve
            .drains(&format!("volume={}/no-such-claim", w.ns))
            .await;
        ensure!(recorded.is_empty(), "{recorded:?}");
        let notes = w.serve.drains(&format!("volume={}/notes", w.ns)).await;
        ensure!(
            notes.len() == 1,
            "the forged request recorded a drain: {notes:?}"
        );
        // The spec is immutable: the API server refuses a change.
        let change = Patch::Merge(json!({"spec": {"claim": "notes"}}));
        let changed = w
            .objects()
            .patch("missing", &PatchParams::default(), &change)
            .await;
        ensure!(
            matches!(&changed, Err(kube::Error::Api(s)) if s.code == 422),
            "{changed:?}"
        );

        // RBAC: without `create` on drains the API server refuses (403), and nothing is
        // drained; with it (a Job's ServiceAccount), the request is taken.
        let _other = w.claim("other", &[("a", b"a")]).await?;
        let nobody = client_with_token(&api_token(&w, "nobody").await?).await?;
        let object: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "drainer.io/v1alpha1", "kind": "Drain",
            "metadata": {"name": "not-allowed"}, "spec": {"claim": "other"},
        }))?;
        let refused = Api::<DynamicObject>::namespaced_with(nobody, &w.ns, &drain_resource())
            .create(&PostParams::default(), &object)
            .await;
        ensure!(
            matches!(&refused, Err(kube::Error::Api(s)) if s.code == 403),
            "{refused:?}"
        );
        grant_drains(&w.client, &w.ns, "job", &["create", "get"]).await?;
        let job = client_with_token(&api_token(&w, "job").await?).await?;
        let jobs = Api::<DynamicObject>::namespaced_with(job, &w.ns, &drain_resource());
        let object: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "drainer.io/v1alpha1", "kind": "Drain",
            "metadata": {"name": "from-a-job"}, "spec": {"claim": "other"},
        }))?;
        eventually("the Job's grant takes effect", WAIT, || async {
            jobs.create(&PostParams::default(), &object).await?;
            Ok(())
        })
        .await?;
        let other = w.linked("from-a-job").await?;
        let drains = w.serve.drains(&format!("volume={}/other", w.ns)).await;
        ensure!(
            drains.len() == 1 && drains[0]["id"] == other.as_str(),
            "only the Job's request drains `other`: {drains:?}"
        );

        // drainer dies; meanwhile the completed drain's object is deleted and a request made;
        // after the restart the request is taken and every drain has its one object again.
        let objects = w.objects();
        w.claim("third", &[("b", b"b")]).await?;
        let meanwhile = async {
            objects
                .delete("before-upgrade", &DeleteParams::default())
                .await
                .expect("deleting an object");
            let request: DynamicObject = serde_json::from_value(json!({
                "apiVersion": "drainer.io/v1alpha1", "kind": "Drain",
                "metadata": {"name": "while-down"}, "spec": {"claim": "third"},
            }))
            .expect("a Drain");
            objects
                .create(&PostParams::default(), &request)
                .await
                .expect("a request while drainer is down");
        };
        w.serve.kill9_and_restart(meanwhile).await;
        let third_id = w.linked("while-down").await?;
        // drainer's own object of the completed drain names the request as who asked.
        let requester = format!("drain:{}/before-upgrade", w.ns);
        w.object_until(&id, "made again for the completed drain", |o| {
            o["status"]["state"] == "completed"
                && o["status"]["snapshot"] == snapshot.as_str()
                && o["spec"]["requestedBy"] == requester.as_str()
        })
        .await?;
        ensure!(third_id != id && third_id != other, "{third_id}");
        w.ledger_and_objects_agree().await?;
        w.finish().await
    })
    .await
}

/// A StatefulSet `web` (simulated pods) whose scaled-away claims the collector would delete.
fn web(replicas: u32) -> WebSet {
    WebSet::new(replicas)
        .when_scaled("Delete")
        .termination_delay("1s")
        .web_account()
        .claims(&["data"], "16Mi")
}

/// `drainer.io/action` on a Drain: a failing drain retried, then cancelled, each recorded in
/// its history by the object and answered in condition ActionApplied; a drain holding its
/// claim from the garbage collector is not cancelled (ClaimHeld, said in the history too),
/// an abandon needs a reason, and with one abandons the drain and lets the claim go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_cancel_and_abandon_are_annotations_of_the_object() -> Result<()> {
    let _serial = crate::support::install::LOCK.lock().await;
    with_timeout(LIMIT, async {
        // One attempt, and a mover that never comes fails it after 2 s: drains end up failing.
        let w = World::new(
            "kube-drains-actions",
            &["--max-attempts", "1", "--mover-timeout", "2"],
        )
        .await?;
        w.claim("scratch", &[("a", b"a")]).await?;
        w.request("scratch-copy", json!({"claim": "scratch"})).await?;
        let id = w.linked("scratch-copy").await?;
        w.drain_state(&id, "failing").await?;
        w.object_until("scratch-copy", "failing", |o| o["status"]["state"] == "failing")
            .await?;
        let by = format!("drain:{}/scratch-copy", w.ns);

        // Retry: the drain is queued again (and, its mover never coming, fails again).
        w.annotate("scratch-copy", json!({"drainer.io/action": "retry"}))
            .await?;
        let object = w.answered("scratch-copy", "True", "Retried").await?;
        ensure!(
            condition(&object, "ActionApplied")
                .is_some_and(|c| c["message"] == format!("retried by {by}").as_str()),
            "{object}"
        );
        w.history_says(&id, &format!("retried by {by}")).await?;

        // Cancel, with a reason: recorded with it.
        w.annotate(
            "scratch-copy",
            json!({"drainer.io/action": "cancel", "drainer.io/action-reason": "not needed after all"}),
        )
        .await?;
        w.answered("scratch-copy", "True", "Cancelled").await?;
        w.drain_state(&id, "cancelled").await?;
        w.history_says(&id, &format!("cancelled by {by}: not needed after all"))
            .await?;
        let object = w
            .object_until("scratch-copy", "cancelled", |o| {
                o["status"]["state"] == "cancelled"
            })
            .await?;
        ensure!(
            object["metadata"]["annotations"]["drainer.io/action-reason"].is_null(),
            "{object}"
        );
        // An action the lifecycle does not allow: refused, said, recorded.
        w.annotate("scratch-copy", json!({"drainer.io/action": "retry"}))
            .await?;
        w.answered("scratch-copy", "False", "NotAllowed").await?;
        w.history_says(&id, &format!("retry asked by {by}, refused")).await?;

        // A scaled-away claim the collector would delete is held by its drain (drainer's own
        // object, named by the drain id): cancelling it is refused, abandoning it takes a reason.
        web(2).create(&w).await?;
        w.bound_claim_dir("data-web-1", WAIT).await?;
        w.running_pod("web-1", WAIT).await?;
        w.scale("web", 1).await?;
        let held = eventually("a drain holding data-web-1", WAIT, || async {
            let drains = w.serve.drains(&format!("volume={}/data-web-1", w.ns)).await;
            let drain = drains.first().context("no drain yet")?;
            ensure!(drain["hold"].is_string(), "{drain}");
            Ok(drain["id"].as_str().unwrap_or_default().to_owned())
        })
        .await?;
        w.object_until(&held, "made", |o| o["status"]["state"].is_string())
            .await?;
        let own = format!("drain:{}/{held}", w.ns);
        w.annotate(&held, json!({"drainer.io/action": "cancel"})).await?;
        let object = w.answered(&held, "False", "ClaimHeld").await?;
        ensure!(
            condition(&object, "ActionApplied").is_some_and(|c| c["message"]
                .as_str()
                .is_some_and(|m| m.contains("abandon"))),
            "{object}"
        );
        w.history_says(&held, &format!("cancel asked by {own}, refused")).await?;
        let drain = w.serve.drain(&held).await;
        ensure!(
            drain["state"] != "cancelled" && drain["hold"].is_string(),
            "{drain}"
        );
        w.annotate(&held, json!({"drainer.io/action": "abandon"})).await?;
        w.answered(&held, "False", "InvalidReason").await?;
        w.annotate(
            &held,
            json!({"drainer.io/action": "abandon", "drainer.io/action-reason": "the team keeps no data of web-1"}),
        )
        .await?;
        w.answered(&held, "True", "Abandoned").await?;
        w.drain_state(&held, "abandoned").await?;
        w.history_says(&held, &format!("abandoned by {own}: the team keeps no data of web-1"))
            .await?;
        // Let go: the collector deletes the claim as its StatefulSet asked.
        let claims = w.api::<PersistentVolumeClaim>();
        eventually("data-web-1 deleted once abandoned", WAIT, || async {
            ensure!(claims.get_opt("data-web-1").await?.is_none(), "still there");
            Ok(())
        })
        .await?;
        w.ledger_and_objects_agree().await?;
        w.finish().await
    })
    .await
}
