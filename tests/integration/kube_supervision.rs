//! drainer's own health on kube-env with pods that run: `/readyz` means
//! "can take handoffs". It turns false while a watch of the cluster is not synced (drainer's
//! right to list pods taken away; the API server restarted) and true again once it has listed
//! again, and no handoff acknowledged meanwhile is lost: every drain completes and restores
//! exactly. A store that does not answer is reported (`/readyz`'s store condition,
//! `drainer_store_up`) but leaves drainer ready, so the handoffs of a scale-down reach it.
//!
//! The worlds, StatefulSet `web` (pods that write their data and hand off from `preStop`) and
//! mover Jobs are `support::world`'s, as `kube_e2e`'s are.

use crate::support::cluster::{assert_restores_exactly, history};
use crate::support::forward::Switch;
use crate::support::kube::{KubeEnv, PrivateKubeEnv, eventually, wait_for_pod_gone, with_timeout};
use crate::support::s3::S3Server;
use crate::support::serve::Serve;
use crate::support::tree::differences;
use crate::support::world::{START, WAIT, World, claims_of};
use crate::support::{drainer, run_ok};
use anyhow::{Context, Result, ensure};
use drainer_kube::watch::WATCH_TIMEOUT;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// Bound of one test.
const LIMIT: Duration = Duration::from_secs(600);

/// `/readyz`: status and body.
async fn readyz(serve: &Serve) -> Result<(u16, Value)> {
    let response = reqwest::get(format!("{}/readyz", serve.url)).await?;
    Ok((response.status().as_u16(), response.json().await?))
}

/// Waits until `/readyz` answers 200; returns its body.
async fn ready(serve: &Serve, within: Duration) -> Result<Value> {
    eventually("drainer ready", within, || async {
        let (status, body) = readyz(serve).await?;
        ensure!(status == 200, "{status}: {body}");
        Ok(body)
    })
    .await
}

/// Waits until `/readyz` answers `503 not_ready` for a reason that contains `why`; returns
/// its body.
async fn not_ready(serve: &Serve, why: &str, within: Duration) -> Result<Value> {
    eventually(format!("drainer not ready ({why})"), within, || async {
        let (status, body) = readyz(serve).await?;
        let message = body["error"]["message"].as_str().unwrap_or_default();
        ensure!(
            status == 503 && body["error"]["code"] == "not_ready",
            "{status}: {body}"
        );
        ensure!(message.contains(why), "{message}");
        Ok(body)
    })
    .await
}

/// The value of the metric line that starts with `series` (name and labels), if there is one.
async fn metric(serve: &Serve, series: &str) -> Result<Option<f64>> {
    let text = reqwest::get(format!("{}/metrics", serve.url))
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok()))
}

/// The watch `name` in a `/readyz` body.
fn watch<'a>(body: &'a Value, name: &str) -> Result<&'a Value> {
    body["watches"]
        .as_array()
        .and_then(|ws| ws.iter().find(|w| w["name"] == name))
        .with_context(|| format!("no watch {name}: {body}"))
}

/// The condition `name` in a `/readyz` body.
fn condition<'a>(body: &'a Value, name: &str) -> Result<&'a Value> {
    body["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .with_context(|| format!("no condition {name}: {body}"))
}

/// The claims of the ordinals a scale 3 → 1 takes away, with their directories as they are
/// now (a copy, to compare the restores with) and the drain of each once it exists.
struct ScaledAway {
    kept: BTreeMap<String, PathBuf>,
}

impl ScaledAway {
    /// Copies the claims of ordinals 6 and 7 as their pods left them.
    async fn keep(w: &World) -> Result<Self> {
        let mut dirs = BTreeMap::new();
        for (_, pvc) in claims_of(START + 1..START + 3) {
            dirs.insert(pvc.clone(), w.claim_dir(&pvc).await?);
        }
        Ok(Self {
            kept: w.keep(&dirs)?,
        })
    }

    /// The drain of each claim (waits until each has one: its handoff was acknowledged).
    async fn drains(&self, w: &World, serve: &Serve) -> Result<BTreeMap<String, String>> {
        let mut ids = BTreeMap::new();
        for pvc in self.kept.keys() {
            ids.insert(pvc.clone(), w.drain_of(serve, pvc).await?);
        }
        Ok(ids)
    }

    /// Every drain completed, and each snapshot restores to the claim's data exactly (from the
    /// world's file store, or from `s3`).
    async fn completed(
        &self,
        w: &World,
        serve: &Serve,
        ids: &BTreeMap<String, String>,
        s3: Option<(&S3Server, &str)>,
    ) -> Result<()> {
        for (pvc, id) in ids {
            let drain = eventually(format!("drain {id} of {pvc} completed"), WAIT, || async {
                let drain = serve.drain(id).await;
                let state = drain["state"].as_str().unwrap_or_default();
                ensure!(
                    !["failed", "cancelled", "not_needed"].contains(&state),
                    "drain of {pvc} ended {state}: {}",
                    history(&drain)
                );
                ensure!(state == "completed", "{state}");
                Ok(drain)
            })
            .await?;
            eprintln!("{pvc}: {}\n{}", drain["state"], history(&drain));
            let Some((s3, store)) = s3 else {
                assert_restores_exactly(&w.store(), &w.ns, pvc, &self.kept[pvc], &w.work).await;
                continue;
            };
            let dest = w.work.join(format!("restored-{pvc}"));
            let mut restore = drainer();
            restore
                .arg("restore")
                .arg(store)
                .args(["--volume", &format!("{}/{pvc}", w.ns)])
                .arg(&dest);
            s3.configure(&mut restore);
            run_ok(&mut restore).await;
            let diffs = differences(&self.kept[pvc], &dest);
            ensure!(diffs.is_empty(), "{pvc} differs after restore: {diffs:#?}");
        }
        Ok(())
    }
}

/// drainer's own identity for a test: ServiceAccount `drainer` in the test's namespace bound
/// (ClusterRoleBinding) to a copy of the ClusterRole `drainer` of `deploy/base/rbac.yaml`, and
/// a kubeconfig with a token of it. The test takes rights away from that copy and gives them
/// back.
struct Identity {
    role: String,
    rules: Vec<PolicyRule>,
    kubeconfig: PathBuf,
}

impl Identity {
    async fn create(w: &World, env: &KubeEnv) -> Result<Self> {
        let role = format!("drainer-test-{}", w.ns);
        // The deployed ClusterRole, as kubectl reads deploy/base/rbac.yaml.
        let rbac = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/base/rbac.yaml");
        let out = env
            .kubectl()
            .args(["create", "--dry-run=client", "-o", "json", "-f", rbac])
            .output()
            .await?;
        ensure!(
            out.status.success(),
            "kubectl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // One JSON object per document.
        let objects = serde_json::Deserializer::from_slice(&out.stdout)
            .into_iter::<Value>()
            .collect::<Result<Vec<_>, _>>()?;
        let deployed = objects
            .into_iter()
            .find(|o| o["kind"] == "ClusterRole" && o["metadata"]["name"] == "drainer")
            .context("no ClusterRole drainer in deploy/base/rbac.yaml")?;
        let mut copy: ClusterRole = serde_json::from_value(deployed)?;
        copy.metadata = kube::api::ObjectMeta {
            name: Some(role.clone()),
            ..Default::default()
        };
        let rules = copy.rules.clone().unwrap_or_default();
        Api::<ClusterRole>::all(w.client.clone())
            .create(&PostParams::default(), &copy)
            .await?;
        let binding: ClusterRoleBinding = serde_json::from_value(json!({
            "metadata": { "name": role },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role },
            "subjects": [{ "kind": "ServiceAccount", "name": "drainer", "namespace": w.ns }]
        }))?;
        Api::<ClusterRoleBinding>::all(w.client.clone())
            .create(&PostParams::default(), &binding)
            .await?;
        let accounts: Api<ServiceAccount> = w.api();
        accounts
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": "drainer"}}))?,
            )
            .await?;
        let request: TokenRequest =
            serde_json::from_value(json!({"spec": {"expirationSeconds": 7200}}))?;
        let token = accounts
            .create_token_request("drainer", &PostParams::default(), &request)
            .await?
            .status
            .map(|s| s.token)
            .context("no token")?;
        // The admin's cluster (server, CA), with the ServiceAccount's token as the user.
        let admin = kube::config::Kubeconfig::read_from(env.data_dir.join("kubeconfig"))?;
        let cluster = admin
            .clusters
            .first()
            .and_then(|c| c.cluster.clone())
            .context("the admin kubeconfig has no cluster")?;
        let kubeconfig = w.work.join("drainer.kubeconfig");
        std::fs::write(
            &kubeconfig,
            serde_json::to_vec(&json!({
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{ "name": "kube-env", "cluster": {
                    "server": cluster.server,
                    "certificate-authority-data": cluster.certificate_authority_data,
                } }],
                "users": [{ "name": "drainer", "user": { "token": token } }],
                "contexts": [{ "name": "drainer", "context": { "cluster": "kube-env", "user": "drainer" } }],
                "current-context": "drainer"
            }))?,
        )?;
        Ok(Self {
            role,
            rules,
            kubeconfig,
        })
    }

    /// Sets the copy's rules.
    async fn set_rules(&self, client: &Client, rules: &[PolicyRule]) -> Result<()> {
        let patch = Patch::Merge(json!({ "rules": rules }));
        Api::<ClusterRole>::all(client.clone())
            .patch(&self.role, &PatchParams::default(), &patch)
            .await?;
        Ok(())
    }

    /// Takes away the right to list and watch pods (drainer may still read one).
    async fn revoke_pod_listing(&self, client: &Client) -> Result<()> {
        let mut rules = self.rules.clone();
        let pods = rules
            .iter_mut()
            .find(|r| r.resources.as_ref().is_some_and(|rs| rs == &["pods"]))
            .context("no rule for pods")?;
        pods.verbs = vec!["get".into()];
        self.set_rules(client, &rules).await
    }

    /// Gives every right back.
    async fn restore(&self, client: &Client) -> Result<()> {
        self.set_rules(client, &self.rules).await
    }

    async fn delete(&self, client: &Client) -> Result<()> {
        let gone = DeleteParams::default();
        Api::<ClusterRoleBinding>::all(client.clone())
            .delete(&self.role, &gone)
            .await?;
        Api::<ClusterRole>::all(client.clone())
            .delete(&self.role, &gone)
            .await?;
        Ok(())
    }
}

/// drainer runs as a ServiceAccount of its own. Its right to list pods is taken away: once its
/// pod watch is renewed (within a minute) it fails, and `/readyz` answers 503 naming that
/// watch. A scale 3 → 1 meanwhile: the pods hand their claims off from `preStop`, drainer
/// acknowledges them (it still reads pods one by one), and the pods go while drainer cannot
/// see it. The right comes back: the watch lists again, `/readyz` is 200, and every drain
/// completes and restores exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_while_the_pod_watch_has_no_rights_and_every_drain_completes() -> Result<()>
{
    with_timeout(LIMIT, async {
        let w = World::new("sup-rbac").await?;
        let env = KubeEnv::load()?;
        let identity = Identity::create(&w, &env).await?;
        let kubeconfig = identity.kubeconfig.display().to_string();
        let serve = w
            .start(
                "data",
                &w.store(),
                &["--max-attempts", "10"],
                &[("KUBECONFIG", kubeconfig.as_str())],
            )
            .await?;
        w.gate.forward_to(&serve.url);
        let pods = format!("pods/{}", w.ns);
        let body = ready(&serve, WAIT).await?;
        ensure!(watch(&body, &pods)?["synced"] == true, "{body}");
        w.start_web(3, "Retain").await?;
        let scaled = ScaledAway::keep(&w).await?;

        identity.revoke_pod_listing(&w.client).await?;
        let body = not_ready(&serve, &pods, WATCH_TIMEOUT + Duration::from_secs(60)).await?;
        let failing = watch(&body, &pods)?;
        ensure!(
            failing["synced"] == false
                && failing["error"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("forbidden"),
            "{body}"
        );
        ensure!(condition(&body, "ledger")?["ok"] == true, "{body}");
        w.scale("web", 1).await?;
        let ids = scaled.drains(&w, &serve).await?;
        // The pods go while drainer cannot see it: the outage spans the drains' releases.
        let pods_api: Api<Pod> = w.api();
        for o in START + 1..START + 3 {
            wait_for_pod_gone(&pods_api, &format!("web-{o}"), WAIT).await?;
        }
        let (status, body) = readyz(&serve).await?;
        ensure!(
            status == 503,
            "ready again without the right to list pods: {body}"
        );
        for (pvc, id) in &ids {
            let drain = serve.drain(id).await;
            ensure!(
                drain["state"] != "failed",
                "{pvc} failed: {}",
                history(&drain)
            );
        }

        identity.restore(&w.client).await?;
        let body = ready(&serve, Duration::from_secs(90)).await?;
        ensure!(watch(&body, &pods)?["synced"] == true, "{body}");
        scaled.completed(&w, &serve, &ids, None).await?;
        serve.terminate(Duration::from_secs(20)).await;
        identity.delete(&w.client).await?;
        w.finish().await
    })
    .await
}

/// The API server of a kube-env of the test's own is stopped during a scale-down's drains and
/// started again 5 s later (same port, certificates and etcd): drainer's watches fail and
/// `/readyz` answers 503, then they list again and it is 200; every handoff acknowledged
/// before completes, and restores exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_an_api_server_restart_and_every_drain_completes() -> Result<()> {
    let cluster = PrivateKubeEnv::start().await?;
    with_timeout(LIMIT, async {
        let w = World::on("sup-api", &cluster.kubeconfig).await?;
        let serve = w
            .start("data", &w.store(), &["--max-attempts", "10"], &[])
            .await?;
        w.gate.forward_to(&serve.url);
        ready(&serve, WAIT).await?;
        w.start_web(3, "Retain").await?;
        let scaled = ScaledAway::keep(&w).await?;
        w.scale("web", 1).await?;
        let ids = scaled.drains(&w, &serve).await?;

        let restart = {
            let env = cluster.env.clone();
            tokio::spawn(async move { env.restart("kube-apiserver", Duration::from_secs(5)).await })
        };
        let body = not_ready(&serve, "watches not synced", Duration::from_secs(60)).await?;
        ensure!(condition(&body, "ledger")?["ok"] == true, "{body}");
        restart.await??;
        let body = ready(&serve, Duration::from_secs(90)).await?;
        let unsynced: Vec<_> = body["watches"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|w| w["synced"] != true)
            .collect();
        ensure!(unsynced.is_empty(), "{body}");
        scaled.completed(&w, &serve, &ids, None).await?;
        serve.terminate(Duration::from_secs(20)).await;
        w.finish().await
    })
    .await
}

/// The store (an S3 server) stops answering: `/readyz` stays 200 throughout, its store
/// condition and `drainer_store_up` say the store is down, and the handoffs of a scale 3 → 1
/// made meanwhile are acknowledged. The store answers again: the condition and the metric say
/// so, and every drain completes and restores exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_does_not_answer_is_reported_and_drainer_stays_ready() -> Result<()> {
    with_timeout(LIMIT, async {
        let w = World::new("sup-store").await?;
        let s3 = S3Server::start().await;
        let switch = Switch::start(&s3.endpoint).await?;
        let store = "s3://bucket/supervision";
        let aws = [
            ("AWS_ENDPOINT", switch.endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", crate::support::s3::KEY),
            ("AWS_SECRET_ACCESS_KEY", crate::support::s3::SECRET),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "false"),
        ];
        let serve = w
            .start(
                "data",
                store,
                &["--max-attempts", "10", "--store-timeout", "3"],
                &aws,
            )
            .await?;
        w.gate.forward_to(&serve.url);
        // The first probe runs at start.
        let body = eventually("the store probed", WAIT, || async {
            let (status, body) = readyz(&serve).await?;
            ensure!(status == 200, "{body}");
            ensure!(condition(&body, "store")?["ok"] == true, "{body}");
            Ok(body)
        })
        .await?;
        ensure!(condition(&body, "store")?["required"] == false, "{body}");
        ensure!(metric(&serve, "drainer_store_up").await? == Some(1.0));
        w.start_web(3, "Retain").await?;
        let scaled = ScaledAway::keep(&w).await?;

        switch.set(false);
        // Probed every 10 s: the outage shows within that and the store's timeout.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let body = loop {
            let (status, body) = readyz(&serve).await?;
            ensure!(
                status == 200,
                "not ready while only the store is down: {body}"
            );
            if condition(&body, "store")?["ok"] == false {
                break body;
            }
            ensure!(
                tokio::time::Instant::now() < deadline,
                "the store was not reported down within 60 s: {body}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let message = condition(&body, "store")?["message"]
            .as_str()
            .unwrap_or_default();
        ensure!(message.contains("does not answer"), "{body}");
        ensure!(metric(&serve, "drainer_store_up").await? == Some(0.0));
        w.scale("web", 1).await?;
        let ids = scaled.drains(&w, &serve).await?;
        let (status, body) = readyz(&serve).await?;
        ensure!(status == 200, "{body}");
        ensure!(condition(&body, "store")?["ok"] == false, "{body}");

        switch.set(true);
        eventually("the store reported up", Duration::from_secs(60), || async {
            ensure!(metric(&serve, "drainer_store_up").await? == Some(1.0));
            let body = ready(&serve, WAIT).await?;
            ensure!(condition(&body, "store")?["ok"] == true, "{body}");
            Ok(())
        })
        .await?;
        scaled
            .completed(&w, &serve, &ids, Some((&s3, store)))
            .await?;
        serve.terminate(Duration::from_secs(20)).await;
        drop(switch);
        w.finish().await
    })
    .await
}
