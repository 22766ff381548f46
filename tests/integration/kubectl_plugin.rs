//! `kubectl drainer` on kube-env: the binary under test installed as `kubectl-drainer` by
//! `drainer install --kubectl-plugin DIR` (so it behaves as the plugin) and run with kube-env's admin kubeconfig (a client certificate) against
//! drainer installed from `deploy/overlays/kube-env`, as the deploy tests install it (and
//! under their lock), after the example StatefulSet web scaled from 3 to 2 had `data-web-2`
//! drained. From the API server: `drains -A -o json` and the table, `watch` (the completed
//! drain: exit 0; a missing one: exit 1), `status`. Through drainer,
//! as operators with tokens from `kubectl create token --audience drainer`: `snapshots` and
//! `retry` (drainer answers a completed drain's retry `409`: exit 1, one line), and a token
//! without RBAC rights refused (exit 1, one line naming 403); `restore` of `data-web-2` into a
//! local directory, compared exactly with the claim's data, and refused in one line for a
//! token without `drainer-restore` or a snapshot that does not exist. The admin kubeconfig's
//! certificate cannot be shown to drainer: exit 2 naming --token.
//!
//! drainer serves TLS, as the overlay installs it (a certificate for its Service's name made
//! in the test, `support::install::Tls`). Calls through drainer go through a port-forward to
//! drainer's pod made for the call (kube-env's kubelet API serves port forwarding as a kubelet
//! does), in HTTPS to the Service's name, with the CA the plugin reads from the ConfigMap
//! drainer-ca of drainer's namespace (which any signed-in user may read, and nothing else
//! there); and once with `--drainer-url https://drainer.drainer-system.svc:8080 --cacert`,
//! the name resolved to the Service's ClusterIP (which this machine reaches) by a hosts file
//! mounted over /etc/hosts for that run only, as a resolver in the cluster would. A CA that
//! did not sign drainer's certificate (`--cacert`) is refused in one line naming the
//! certificate, and `status` reports drainer's readiness unknown for that reason. With no
//! drainer pod in the namespace given, the call fails in one line naming it.
//!
//! Installed without TLS (the same overlay but for `components/tls`), the plugin speaks plain
//! HTTP through the port-forward: no ConfigMap drainer-ca is looked for, no `--cacert` asked.

use crate::support::cluster::scale;
use crate::support::drainer;
use crate::support::install::{
    APPS, DrainerApi, LOCK, SERVICE_HOST, SYSTEM, Tls, clean_up, deploy, ensure_namespace, kubectl,
    release_image, start_example_web, test_image,
};
use crate::support::kube::{
    KubeEnv, admin_kubeconfig, client, create_namespace, delete_namespace, eventually, from_json,
    wait_for_bound_claim, with_timeout,
};
use crate::support::tls::Ca;
use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::PostParams;
use kube::{Api, Client};
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;

/// The image name of the kube-env overlay.
const OVERLAY_IMAGE: &str = "drainer:kube-env";
/// The kube-env overlay's admin token (used only to wait for the drain, never by the plugin).
const ADMIN_TOKEN: &str = "kube-env-admin-token-0123456789abcdef";

/// What `kubectl-drainer ARGS` did.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs the plugin (`dir/kubectl-drainer`, a link to the binary under test) with the admin
/// kubeconfig and `args`.
async fn plugin(dir: &Path, args: &[&str]) -> Result<Run> {
    run_plugin(
        tokio::process::Command::new(dir.join("kubectl-drainer")),
        args,
    )
    .await
}

/// [`plugin`], with `hosts` mounted over /etc/hosts for this run only (in a mount namespace
/// of its own).
async fn plugin_with_hosts(dir: &Path, hosts: &Path, args: &[&str]) -> Result<Run> {
    let mut cmd = tokio::process::Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount --bind \"$0\" /etc/hosts && exec \"$@\"")
        .arg(hosts)
        .arg(dir.join("kubectl-drainer"));
    run_plugin(cmd, args).await
}

async fn run_plugin(mut cmd: tokio::process::Command, args: &[&str]) -> Result<Run> {
    for (key, _) in std::env::vars() {
        if key.starts_with("DRAINER_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("KUBECONFIG", admin_kubeconfig()?)
        .env("DRAINER_LOG", "warn")
        .args(args)
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .context("kubectl-drainer: no result within 60 s")??;
    Ok(Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

impl Run {
    fn ok(self, what: &str) -> Result<String> {
        ensure!(
            self.code == 0,
            "{what}: exit {}\n{}\n{}",
            self.code,
            self.stdout,
            self.stderr
        );
        Ok(self.stdout)
    }

    /// Failed with `code` and one line on stderr containing every one of `words`.
    fn refused(&self, code: i32, words: &[&str]) -> Result<()> {
        let lines: Vec<&str> = self.stderr.lines().collect();
        ensure!(
            self.code == code && lines.len() == 1 && words.iter().all(|w| lines[0].contains(w)),
            "expected exit {code} with one line saying {words:?}; got exit {}:\n{}\n{}",
            self.code,
            self.stdout,
            self.stderr
        );
        Ok(())
    }
}

/// A ServiceAccount of `ns` and its token for drainer.
async fn user(env: &KubeEnv, client: &Client, ns: &str, name: &str) -> Result<String> {
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    sas.create(
        &PostParams::default(),
        &from_json(json!({"metadata": {"name": name}})),
    )
    .await?;
    let token = kubectl(
        env,
        &[
            "create",
            "token",
            name,
            "-n",
            ns,
            "--audience",
            "drainer",
            "--duration",
            "15m",
        ],
    )
    .await?;
    Ok(token.trim().to_owned())
}

/// Binds ServiceAccount `ns`/`name` to ClusterRole `role` in the examples' namespace.
async fn bind(client: &Client, ns: &str, name: &str, role: &str) -> Result<()> {
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), APPS);
    bindings
        .create(
            &PostParams::default(),
            &from_json(json!({
                "metadata": {"name": format!("kubectl-plugin-{name}-{role}")},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ns}]
            })),
        )
        .await?;
    Ok(())
}

#[tokio::test]
async fn kubectl_drainer_reads_the_cluster_and_asks_drainer_as_the_caller() -> Result<()> {
    let _serial = LOCK.lock().await;
    let image = test_image().await?;
    let env = KubeEnv::load()?;
    let client = client().await?;
    let ops = create_namespace(&client, "kubectl-plugin-ops").await?;
    let result = with_timeout(Duration::from_secs(900), body(&env, &client, &image, &ops)).await;
    if std::env::var_os("DRAINER_TEST_KEEP").is_none() {
        let cleaned = clean_up(&env, &client, false).await;
        delete_namespace(&client, &ops).await?;
        result?;
        cleaned
    } else {
        result
    }
}

async fn body(env: &KubeEnv, client: &Client, image: &Path, ops: &str) -> Result<()> {
    clean_up(env, client, true).await?;
    env.register_image(OVERLAY_IMAGE, image).await?;
    env.register_image(&release_image(), image).await?;
    ensure_namespace(client, APPS).await?;
    let tls = Tls::install(env, client).await?;
    kubectl(env, &["apply", "-k", &deploy("overlays/kube-env")]).await?;
    crate::support::install::drainer_pod(client, env).await?;
    let web = start_example_web(env, client).await?;
    scale(client, APPS, "web", 2).await?;
    let api = DrainerApi::new(client, ADMIN_TOKEN, APPS, Some(&tls)).await?;
    let drain = api
        .wait_completed("data-web-2", 0, Duration::from_secs(240))
        .await?;
    let id = drain["id"].as_str().context("drain id")?.to_owned();
    let snapshot = drain["snapshot"].as_str().context("snapshot")?.to_owned();

    let bin = tempfile::tempdir()?;
    let dir = bin.path();
    let installed = crate::support::install::output(
        drainer().args(["install", "--kubectl-plugin"]).arg(dir),
        "drainer install --kubectl-plugin",
    )
    .await?;
    ensure!(
        installed.contains("kubectl drainer installed"),
        "{installed}"
    );
    ensure!(std::fs::read_link(dir.join("kubectl-drainer"))?.ends_with("drainer"));

    // From the API server, with the kubeconfig's identity.
    let listed = eventually(
        "the Drain object completed",
        Duration::from_secs(60),
        || async {
            let text = plugin(dir, &["drains", "-A", "-o", "json"])
                .await?
                .ok("drains -A -o json")?;
            let list: Value = serde_json::from_str(&text)?;
            let item = list["items"]
                .as_array()
                .and_then(|items| items.iter().find(|i| i["metadata"]["name"] == id.as_str()))
                .cloned()
                .context("no Drain object yet")?;
            ensure!(item["status"]["state"] == "completed", "{item}");
            Ok(item)
        },
    )
    .await?;
    ensure!(listed["metadata"]["namespace"] == APPS && listed["spec"]["claim"] == "data-web-2");
    ensure!(
        listed["status"]["snapshot"] == snapshot.as_str(),
        "{listed}"
    );
    let table = plugin(dir, &["drains", "-n", APPS])
        .await?
        .ok("drains -n")?;
    ensure!(table.starts_with("NAME "), "{table}");
    let line = table
        .lines()
        .find(|l| l.starts_with(&id))
        .context("no row")?;
    ensure!(
        line.contains("data-web-2") && line.contains("completed") && line.contains(&snapshot),
        "{table}"
    );

    let watched = plugin(dir, &["watch", &format!("{APPS}/{id}")])
        .await?
        .ok("watch")?;
    ensure!(
        watched.trim_end().ends_with(&format!(
            "completed, {}snapshot {snapshot}",
            progress_of(&listed)
        )),
        "{watched}"
    );
    plugin(dir, &["watch", "-n", APPS, "d-20000101000000000-00000000"])
        .await?
        .refused(1, &["404"])?;

    // Readiness comes through a port-forward to drainer's pod (over TLS, with the CA of the
    // ConfigMap drainer-ca), or from --drainer-url (its Service's name, with --cacert).
    let status = plugin(dir, &["status"]).await?.ok("status")?;
    for word in ["Deployment drainer 1/1 ready", "completed", "ledger"] {
        ensure!(status.contains(word), "status lacks {word:?}:\n{status}");
    }
    let hosts = tempfile::NamedTempFile::new()?;
    std::fs::write(
        hosts.path(),
        format!(
            "127.0.0.1 localhost\n{} {SERVICE_HOST}\n",
            service_ip(client).await?
        ),
    )?;
    let url = format!("https://{SERVICE_HOST}:8080");
    let ca = tls.file("ca.crt");
    for through_url in [false, true] {
        let args = [
            "status",
            "-o",
            "yaml",
            "--drainer-url",
            &url,
            "--cacert",
            &ca,
        ];
        let run = if through_url {
            plugin_with_hosts(dir, hosts.path(), &args).await?
        } else {
            plugin(dir, &args[..3]).await?
        };
        let status = run.ok("status -o yaml")?;
        ensure!(
            status.contains("status: ready") && status.contains("name: ledger"),
            "--drainer-url {through_url}: {status}"
        );
    }
    ca_is_public(env).await?;

    // Through drainer, as operators.
    let operator = user(env, client, ops, "operator").await?;
    let nobody = user(env, client, ops, "nobody").await?;
    bind(client, ops, "operator", "drainer-operate").await?;
    let volume = format!("{APPS}/data-web-2");
    // Through a port-forward made for each call (the plugin's default).
    let through = |token: &str| ["--token".to_owned(), token.to_owned()];
    let operator_args = through(&operator);
    let with = |extra: &[&str], base: &[String]| -> Vec<String> {
        extra
            .iter()
            .map(|s| (*s).to_owned())
            .chain(base.iter().cloned())
            .collect()
    };
    let snapshots = eventually(
        "the operator lists the snapshots",
        Duration::from_secs(30),
        || async {
            let args = with(&["snapshots", &volume, "-o", "json"], &operator_args);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            plugin(dir, &args).await?.ok("snapshots")
        },
    )
    .await?;
    let listing: Value = serde_json::from_str(&snapshots)?;
    ensure!(
        listing["snapshots"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["snapshot"] == snapshot.as_str())),
        "{listing}"
    );
    let args = with(&["retry", &format!("{APPS}/{id}")], &operator_args);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    plugin(dir, &args).await?.refused(1, &["409", &id])?;
    let args = with(&["cancel", &id], &operator_args);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    plugin(dir, &args).await?.refused(1, &["409", &id])?;
    refuses_another_ca(env, &tls, dir, &volume, &operator).await?;

    let refused_tokens = [nobody.as_str(), operator.as_str()];
    restores(
        dir,
        env,
        client,
        &volume,
        &snapshot,
        &web[2],
        refused_tokens,
    )
    .await?;

    // Refused: no RBAC rights; the kubeconfig's certificate; no drainer where it is looked for.
    let args = with(&["snapshots", &volume], &through(&nobody));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    plugin(dir, &args).await?.refused(1, &["403"])?;
    plugin(dir, &["orphans", "--drainer-url", &url, "--cacert", &ca])
        .await?
        .refused(2, &["client certificate", "--token"])?;
    plugin(
        dir,
        &[
            "orphans",
            "--token",
            &operator,
            "--drainer-namespace",
            "default",
        ],
    )
    .await?
    .refused(1, &["default"])?;
    Ok(())
}

/// `kubectl drainer restore` as a ServiceAccount of the examples' namespace bound to
/// `drainer-restore` there (drainer lets ServiceAccounts restore in their own namespace only):
/// the drained claim's latest snapshot comes back into a local directory exactly as the
/// application wrote it (`claim`, its directory on this machine); again over it with `--force
/// -o json`, every file found in place and nothing but the document printed. Refused in one
/// line, exit 1, writing nothing: tokens without the right (403, naming the role: `nobody`,
/// and the operator of `ops`, who may operate drains there but not restore), a snapshot that
/// does not exist; no directory given is bad usage (exit 2).
async fn restores(
    dir: &Path,
    env: &KubeEnv,
    client: &Client,
    volume: &str,
    snapshot: &str,
    claim: &Path,
    refused_tokens: [&str; 2],
) -> Result<()> {
    let restorer = user(env, client, APPS, "restorer").await?;
    bind(client, APPS, "restorer", "drainer-restore").await?;
    let out = tempfile::tempdir()?;
    let dest = out.path().join("data-web-2");
    let to = dest.to_str().context("path")?;
    let restore = |token: &str, extra: &[&str]| {
        let mut args = vec!["restore", volume, "--to", to, "--token", token];
        args.extend_from_slice(extra);
        args.into_iter().map(str::to_owned).collect::<Vec<String>>()
    };
    let args = restore(&restorer, &[]);
    let restored = eventually(
        "the restorer restores the claim's snapshot",
        Duration::from_secs(30),
        || async {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            plugin(dir, &args).await?.ok("restore")
        },
    )
    .await?;
    ensure!(
        restored.starts_with(&format!(
            "restored snapshot {snapshot} of {volume} into {to}: "
        )),
        "{restored}"
    );
    let diffs = crate::support::tree::differences(claim, &dest);
    ensure!(
        diffs.is_empty(),
        "restored {snapshot} differs from {}: {diffs:#?}",
        claim.display()
    );
    ensure!(
        crate::support::tree::relative_paths(claim).len() > 2,
        "data-web-2 holds the application's data"
    );

    let args = restore(&restorer, &["--force", "-o", "json"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = plugin(dir, &args).await?;
    ensure!(run.stderr.is_empty(), "-o json: stderr {:?}", run.stderr);
    let document: Value = serde_json::from_str(&run.ok("restore -o json")?)?;
    ensure!(
        document["snapshot"] == snapshot
            && document["volume"] == volume
            && document["files"].as_u64().is_some_and(|f| f > 0)
            && document["kept"] == document["files"],
        "{document}"
    );
    ensure!(crate::support::tree::differences(claim, &dest).is_empty());

    let refused = out.path().join("refused");
    let refused_to = refused.to_str().context("path")?;
    for token in refused_tokens {
        let args = ["restore", volume, "--to", refused_to, "--token", token];
        plugin(dir, &args).await?.refused(
            1,
            &["403", volume, "restores.drainer.io", "drainer-restore"],
        )?;
    }
    let missing = "29991231T000000000Z-00000000";
    let args = [
        "restore",
        volume,
        "--to",
        refused_to,
        "--token",
        &restorer,
        "--snapshot",
        missing,
    ];
    plugin(dir, &args).await?.refused(1, &[missing])?;
    ensure!(
        !refused.exists(),
        "a refused restore wrote {}",
        refused.display()
    );
    let run = plugin(dir, &["restore", volume, "--token", &restorer]).await?;
    ensure!(
        run.code == 2 && run.stderr.contains("--to"),
        "{}",
        run.stderr
    );
    restores_into_a_claim(dir, client, volume, snapshot, claim).await
}

/// `kubectl drainer restore … --into-claim`: a new claim of the examples' namespace gets the
/// snapshot, by a Job whose pod runs as the `restorer` ServiceAccount (bound to
/// `drainer-restore`, as it restores another claim's snapshot than the one it mounts) and
/// reads through drainer over TLS.
async fn restores_into_a_claim(
    dir: &Path,
    client: &Client,
    volume: &str,
    snapshot: &str,
    claim: &Path,
) -> Result<()> {
    let target = "restored-web-2";
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), APPS);
    claims
        .create(
            &PostParams::default(),
            &from_json(json!({
                "metadata": {"name": target},
                "spec": {"accessModes": ["ReadWriteOnce"],
                         "resources": {"requests": {"storage": "64Mi"}}}
            })),
        )
        .await?;
    let args = [
        "restore",
        volume,
        "--into-claim",
        target,
        "--service-account",
        "restorer",
        "--job-timeout",
        "180",
    ];
    let said = plugin(dir, &args).await?.ok("restore --into-claim")?;
    eprintln!("kubectl drainer restore --into-claim: {said}");
    ensure!(
        said.starts_with(&format!(
            "restored {volume} into claim {target} (Job drainer-restore-{target}-"
        )) && said.contains(&format!("restored snapshot {snapshot}")),
        "{said}"
    );
    let restored = wait_for_bound_claim(client, APPS, target, Duration::from_secs(60)).await?;
    let diffs = crate::support::tree::differences(claim, &restored);
    ensure!(diffs.is_empty(), "claim {target} differs: {diffs:#?}");
    Ok(())
}

/// deploy/krew/drainer.yaml is a krew Plugin for this version, every platform installing the
/// binary as the plugin.
#[test]
fn the_krew_manifest_installs_this_drainer() -> Result<()> {
    let text = std::fs::read_to_string(deploy("krew/drainer.yaml"))?;
    let manifest: Value = serde_saphyr::from_str(&text)?;
    ensure!(manifest["apiVersion"] == "krew.googlecontainertools.github.com/v1alpha2");
    ensure!(manifest["kind"] == "Plugin" && manifest["metadata"]["name"] == "drainer");
    let version = format!("v{}", env!("CARGO_PKG_VERSION"));
    ensure!(
        manifest["spec"]["version"] == version.as_str(),
        "{manifest}"
    );
    let platforms = manifest["spec"]["platforms"]
        .as_array()
        .context("platforms")?;
    ensure!(!platforms.is_empty());
    for platform in platforms {
        ensure!(platform["bin"] == "drainer", "{platform}");
        ensure!(
            platform["selector"]["matchLabels"]["os"] == "linux",
            "{platform}"
        );
        let uri = platform["uri"].as_str().context("uri")?;
        ensure!(
            uri.contains(&version) && uri.starts_with("https://"),
            "{uri}"
        );
        let sha = platform["sha256"].as_str().context("sha256")?;
        ensure!(
            sha.len() == 64 && sha.chars().all(|c| c.is_ascii_hexdigit()),
            "{sha}"
        );
        ensure!(platform["files"][0]["from"] == "drainer", "{platform}");
    }
    Ok(())
}

/// The progress summary of a Drain object as `watch` prints it before the snapshot.
fn progress_of(object: &Value) -> String {
    object["status"]["progress"]["summary"]
        .as_str()
        .map_or_else(String::new, |p| format!("{p}, "))
}

/// drainer's Service's ClusterIP (this machine reaches ClusterIPs).
async fn service_ip(client: &Client) -> Result<String> {
    let services: Api<Service> = Api::namespaced(client.clone(), SYSTEM);
    services
        .get("drainer")
        .await?
        .spec
        .and_then(|s| s.cluster_ip)
        .context("the drainer Service has no ClusterIP")
}

/// A CA that did not sign drainer's certificate, given with `--cacert`, is refused: a call
/// through drainer fails in one line naming the certificate (exit 1); `status` says why
/// drainer's readiness is unknown. Without the ConfigMap drainer-ca (and no `--cacert`) a
/// call through drainer fails in one line naming the ConfigMap and `--cacert`; with it back,
/// the call goes through.
async fn refuses_another_ca(
    env: &KubeEnv,
    tls: &Tls,
    dir: &Path,
    volume: &str,
    token: &str,
) -> Result<()> {
    let other = tempfile::tempdir()?;
    let wrong = Ca::new("not drainer's CA").write(other.path(), "ca.crt");
    let wrong = wrong.to_str().context("path")?;
    let args = ["snapshots", volume, "--token", token, "--cacert", wrong];
    let run = plugin(dir, &args).await?;
    eprintln!("kubectl_plugin: another CA: {}", run.stderr.trim());
    run.refused(1, &["certificate is not trusted", SERVICE_HOST])?;
    let status = plugin(dir, &["status", "--cacert", wrong])
        .await?
        .ok("status with another CA")?;
    ensure!(
        status.contains("readiness: unknown (") && status.contains("certificate is not trusted"),
        "{status}"
    );
    kubectl(env, &["-n", SYSTEM, "delete", "configmap", "drainer-ca"]).await?;
    let without = plugin(dir, &["snapshots", volume, "--token", token]).await;
    let from_file = format!("--from-file=ca.crt={}", tls.file("ca.crt"));
    kubectl(
        env,
        &[
            "-n",
            SYSTEM,
            "create",
            "configmap",
            "drainer-ca",
            &from_file,
        ],
    )
    .await?;
    let without = without?;
    eprintln!(
        "kubectl_plugin: no ConfigMap drainer-ca: {}",
        without.stderr.trim()
    );
    without.refused(
        1,
        &[&format!("ConfigMap {SYSTEM}/drainer-ca"), "404", "--cacert"],
    )?;
    plugin(dir, &["snapshots", volume, "--token", token])
        .await?
        .ok("snapshots with the ConfigMap drainer-ca back")?;
    Ok(())
}

/// Any signed-in user may read the ConfigMap drainer-ca of drainer's namespace (what `kubectl
/// drainer` checks drainer's certificate with), and no other ConfigMap there.
async fn ca_is_public(env: &KubeEnv) -> Result<()> {
    let as_anyone = "--as=system:serviceaccount:default:nobody-in-particular";
    let may = |what: &'static str| {
        let args = ["auth", "can-i", "get", what, "-n", SYSTEM, as_anyone];
        async move {
            let out = env.kubectl().args(args).output().await?;
            anyhow::Ok(String::from_utf8_lossy(&out.stdout).trim() == "yes")
        }
    };
    ensure!(
        may("configmap/drainer-ca").await?,
        "a signed-in user may not read drainer's CA"
    );
    ensure!(
        !may("configmap/drainer-movers").await?,
        "a signed-in user may read other ConfigMaps of drainer's namespace"
    );
    Ok(())
}

/// `kubectl drainer` against a plain-HTTP install (the kube-env overlay without
/// `components/tls`, as an operator who does not serve TLS would install it): the plugin
/// sees that drainer's pod is given no certificate, so it neither looks for the ConfigMap
/// drainer-ca (there is none) nor asks for `--cacert`, and speaks plain HTTP through the
/// port-forward it makes: `status` reports drainer ready with its ledger, an operator's
/// `snapshots` (none yet) and `orphans` are answered, a token without rights is refused in one line
/// naming 403.
#[tokio::test]
async fn kubectl_drainer_speaks_plain_http_to_an_install_without_tls() -> Result<()> {
    let _serial = LOCK.lock().await;
    let image = test_image().await?;
    let env = KubeEnv::load()?;
    let client = client().await?;
    let ops = create_namespace(&client, "kubectl-plugin-plain").await?;
    let result = with_timeout(
        Duration::from_secs(600),
        plain_http(&env, &client, &image, &ops),
    )
    .await;
    let cleaned = clean_up(&env, &client, false).await;
    delete_namespace(&client, &ops).await?;
    result?;
    cleaned
}

async fn plain_http(env: &KubeEnv, client: &Client, image: &Path, ops: &str) -> Result<()> {
    clean_up(env, client, true).await?;
    env.register_image(OVERLAY_IMAGE, image).await?;
    ensure_namespace(client, APPS).await?;
    let overlay = overlay_without_tls()?;
    kubectl(env, &["apply", "-k", &overlay.path().display().to_string()]).await?;
    let pod = crate::support::install::drainer_pod(client, env).await?;
    let env_names: Vec<String> = pod
        .spec
        .iter()
        .flat_map(|s| &s.containers)
        .flat_map(|c| c.env.iter().flatten())
        .map(|e| e.name.clone())
        .collect();
    ensure!(
        !env_names.iter().any(|n| n.starts_with("DRAINER_TLS")),
        "the install without TLS gives drainer a certificate: {env_names:?}"
    );
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), SYSTEM);
    ensure!(configmaps.get_opt("drainer-ca").await?.is_none());

    let bin = tempfile::tempdir()?;
    let dir = bin.path();
    std::os::unix::fs::symlink(crate::support::drainer_bin(), dir.join("kubectl-drainer"))?;
    let status = eventually(
        "status through the port-forward",
        Duration::from_secs(60),
        || async {
            let status = plugin(dir, &["status", "-o", "yaml"])
                .await?
                .ok("status -o yaml")?;
            ensure!(
                status.contains("status: ready") && status.contains("name: ledger"),
                "{status}"
            );
            Ok(status)
        },
    )
    .await?;
    eprintln!("kubectl_plugin: plain HTTP status:\n{status}");

    let operator = user(env, client, ops, "operator").await?;
    let nobody = user(env, client, ops, "nobody").await?;
    bind(client, ops, "operator", "drainer-operate").await?;
    let volume = format!("{APPS}/data-web-0");
    let listing = plugin(
        dir,
        &["snapshots", &volume, "-o", "json", "--token", &operator],
    )
    .await?
    .ok("snapshots over plain HTTP")?;
    let listing: Value = serde_json::from_str(&listing)?;
    ensure!(
        listing["snapshots"].as_array().is_some_and(Vec::is_empty),
        "{listing}"
    );
    plugin(dir, &["orphans", "-n", APPS, "--token", &operator])
        .await?
        .ok("orphans over plain HTTP")?;
    plugin(dir, &["snapshots", &volume, "--token", &nobody])
        .await?
        .refused(1, &["403"])?;
    Ok(())
}

/// A kustomization in a temporary directory: `deploy/overlays/kube-env` as it is, but for
/// its `components/tls` (its resources found by a relative path, as kustomize requires).
fn overlay_without_tls() -> Result<tempfile::TempDir> {
    let original = std::fs::read_to_string(deploy("overlays/kube-env/kustomization.yaml"))?;
    let dir = tempfile::tempdir()?;
    let here = dir.path().canonicalize()?;
    let base = Path::new(&deploy("base")).canonicalize()?;
    let up = "../".repeat(here.components().count() - 1);
    let base = format!("{up}{}", base.strip_prefix("/")?.display());
    let mut without = String::new();
    let mut lines = original.lines().peekable();
    while let Some(line) = lines.next() {
        match line {
            "components:" => {
                ensure!(
                    lines.next() == Some("  - ../../components/tls"),
                    "{original}"
                );
            }
            "  - ../../base" => without.push_str(&format!("  - {base:?}\n")),
            _ => {
                without.push_str(line);
                without.push('\n');
            }
        }
    }
    ensure!(
        !without.contains("../../components") && without.contains(&base),
        "{without}"
    );
    std::fs::write(dir.path().join("kustomization.yaml"), without)?;
    Ok(dir)
}
