//! `deploy/` for real: the container image that `scripts/image` builds from the binary under
//! test (unpacked and run chrooted: self-contained), every manifest rendered by kubectl's
//! kustomize and accepted by kube-env's API server, and the install of
//! `deploy/overlays/kube-env` with the examples applied unmodified (the image is registered
//! with kube-env under the names the manifests use), over TLS (a certificate for drainer's
//! Service name made in the test, given to the cluster with the commands the manifests' comments
//! tell a user to run; probes, mover Jobs, the examples' clients and the test's own calls all
//! speak HTTPS): drainer becomes Ready, scaled-down
//! StatefulSets are drained through preStop hooks, a SIGTERM handler's curl, a Job and the
//! orphan-sweep CronJob, the snapshots restore to the claims' data exactly, the RBAC is enough
//! (no 403) and no more than that, and `kubectl delete -k` removes what the install created
//! and leaves the users' claims alone.
//!
//! The tests that install share drainer-system, drainer's cluster-wide objects and the
//! examples' namespace, so they run one at a time (`support::install::LOCK`, shared with the
//! other tests that install).

use crate::support::cluster::scale;
use crate::support::install::{
    ADMIN_TOKEN, APPS, DrainerApi, LOCK, SERVICE_HOST, SYSTEM, Tls, clean_up, deploy, drainer_pod,
    ensure_namespace, example_claim_dir, kubectl, output, release_image, repo, restore_equals,
    start_example_web, test_image, wait_app,
};
use crate::support::kube::{
    KubeEnv, client, eventually, processes_with_env, wait_for_bound_claim, wait_for_pod_gone,
    with_timeout,
};
use crate::support::{file_url, tree};
use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The image name of the kube-env overlay.
const OVERLAY_IMAGE: &str = "drainer:kube-env";
const SERVICE_ACCOUNT: &str = "system:serviceaccount:drainer-system:drainer";

// ---------------------------------------------------------------------------------------
// The image
// ---------------------------------------------------------------------------------------

/// sha256 of a file, as `sha256:HEX`.
async fn sha256(path: &Path) -> Result<String> {
    let out = output(
        tokio::process::Command::new("sha256sum").arg(path),
        "sha256sum",
    )
    .await?;
    Ok(format!(
        "sha256:{}",
        out.split_whitespace().next().context("no digest")?
    ))
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

/// Reads a blob of an OCI layout by descriptor, checking its digest and size.
async fn blob(layout: &Path, descriptor: &Value) -> Result<PathBuf> {
    let digest = descriptor["digest"].as_str().context("no digest")?;
    let path = layout
        .join("blobs/sha256")
        .join(digest.strip_prefix("sha256:").context("not sha256")?);
    ensure!(
        sha256(&path).await? == digest,
        "blob {digest}: wrong digest"
    );
    ensure!(
        Some(std::fs::metadata(&path)?.len()) == descriptor["size"].as_u64(),
        "blob {digest}: wrong size"
    );
    Ok(path)
}

/// Runs `ARGS` chrooted in `root`, in new mount and PID namespaces with `/proc` mounted (as a
/// container runtime does), as `user` (`UID:GID`).
async fn in_root(root: &Path, user: &str, args: &[&str]) -> Result<String> {
    std::fs::create_dir_all(root.join("proc"))?;
    let mut cmd = tokio::process::Command::new("unshare");
    cmd.args(["--mount", "--pid", "--fork", "--propagation", "private"])
        .arg(format!("--mount-proc={}", root.join("proc").display()))
        .arg("chroot")
        .arg(format!("--userspec={user}"))
        .arg(root)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
        .env("DRAINER_LOG", "warn");
    output(
        &mut cmd,
        &format!("chroot {}: {}", root.display(), args.join(" ")),
    )
    .await
}

/// The image built from the binary under test holds exactly the files it needs, runs as
/// 65532 with drainer as its entrypoint, names its version, and works chrooted in its own
/// root: `--version`, a copy and restore round trip, and `drainer install`, whose output runs
/// in a root that holds nothing else.
#[tokio::test]
async fn image_is_self_contained() -> Result<()> {
    let image = test_image().await?;
    let work = tempfile::tempdir()?;
    let layout = work.path().join("layout");
    std::fs::create_dir(&layout)?;
    output(
        tokio::process::Command::new("tar")
            .arg("-xf")
            .arg(&image)
            .arg("-C")
            .arg(&layout),
        "untar the image",
    )
    .await?;
    ensure!(
        read_json(&layout.join("oci-layout"))?["imageLayoutVersion"] == "1.0.0",
        "not an OCI layout"
    );
    let index = read_json(&layout.join("index.json"))?;
    let manifests = index["manifests"]
        .as_array()
        .context("index lists nothing")?;
    ensure!(manifests.len() == 1, "one manifest: {index}");
    ensure!(
        manifests[0]["platform"]["os"] == "linux"
            && manifests[0]["platform"]["architecture"] == "amd64",
        "{index}"
    );
    let manifest = read_json(&blob(&layout, &manifests[0]).await?)?;
    let config = read_json(&blob(&layout, &manifest["config"]).await?)?;
    let layers = manifest["layers"].as_array().context("no layers")?;
    ensure!(layers.len() == 1, "one layer: {manifest}");
    ensure!(
        layers[0]["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip",
        "{manifest}"
    );

    let c = &config["config"];
    ensure!(c["User"] == "65532:65532", "non-root by default: {c}");
    ensure!(
        c["Entrypoint"] == serde_json::json!(["/usr/local/bin/drainer"]),
        "{c}"
    );
    let labels = &c["Labels"];
    ensure!(
        labels["org.opencontainers.image.version"] == env!("CARGO_PKG_VERSION"),
        "version label: {labels}"
    );
    for label in ["title", "revision", "created", "source", "licenses"] {
        ensure!(
            labels[format!("org.opencontainers.image.{label}")].is_string(),
            "label {label} missing: {labels}"
        );
    }

    // The layer: its diff_id, then exactly these files.
    let layer = blob(&layout, &layers[0]).await?;
    let tar = work.path().join("layer.tar");
    output(
        tokio::process::Command::new("sh")
            .arg("-c")
            .arg("gzip -dc \"$0\" > \"$1\"")
            .arg(&layer)
            .arg(&tar),
        "gunzip the layer",
    )
    .await?;
    ensure!(
        config["rootfs"]["diff_ids"][0] == sha256(&tar).await?.as_str(),
        "diff_id does not match the layer"
    );
    let root = work.path().join("root");
    std::fs::create_dir(&root)?;
    output(
        tokio::process::Command::new("tar")
            .args(["--numeric-owner", "-xf"])
            .arg(&tar)
            .arg("-C")
            .arg(&root),
        "unpack the layer",
    )
    .await?;
    let mut files: Vec<String> = tree::relative_paths(&root)
        .into_iter()
        .filter(|p| root.join(p).is_file())
        .map(|p| p.display().to_string())
        .collect();
    files.sort();
    let libraries: Vec<&str> = files
        .iter()
        .map(String::as_str)
        .filter(|f| f.starts_with("lib"))
        .collect();
    for wanted in [
        "libc.so.6",
        "libm.so.6",
        "libgcc_s.so.1",
        "ld-linux-x86-64.so.2",
    ] {
        ensure!(
            libraries.iter().any(|l| l.ends_with(wanted)),
            "{wanted} missing from the image: {files:?}"
        );
    }
    let others: Vec<&str> = files
        .iter()
        .map(String::as_str)
        .filter(|f| !f.starts_with("lib"))
        .collect();
    ensure!(
        others
            == [
                "etc/group",
                "etc/passwd",
                "etc/ssl/certs/ca-certificates.crt",
                "usr/local/bin/drainer"
            ],
        "the image holds other files: {others:?}"
    );
    ensure!(
        libraries.len() == 4,
        "only the libraries ldd names: {libraries:?}"
    );
    let passwd = std::fs::read_to_string(root.join("etc/passwd"))?;
    ensure!(passwd.contains("drainer:x:65532:65532:"), "{passwd}");
    use std::os::unix::fs::MetadataExt;
    let data_dir = std::fs::metadata(root.join("var/lib/drainer"))?;
    ensure!(
        data_dir.uid() == 65532 && data_dir.gid() == 65532,
        "/var/lib/drainer belongs to the image's user"
    );
    ensure!(
        std::fs::metadata(root.join("tmp"))?.mode() & 0o7777 == 0o1777,
        "/tmp is 1777"
    );
    // Stripped: no symbol table and no debug sections (the binary under test has both).
    let sections = |path: PathBuf| async move {
        output(
            tokio::process::Command::new("readelf")
                .arg("--section-headers")
                .arg(path),
            "readelf",
        )
        .await
    };
    let unstripped = |s: &str| s.contains(".symtab") || s.contains(".debug_line");
    ensure!(
        unstripped(&sections(PathBuf::from(crate::support::drainer_bin())).await?),
        "readelf shows no symbols in the binary under test: the check below would prove nothing"
    );
    let image_sections = sections(root.join("usr/local/bin/drainer")).await?;
    ensure!(
        !unstripped(&image_sections),
        "the image's binary is not stripped: {image_sections}"
    );

    // It runs in its own root, as its own user.
    let version = in_root(&root, "65532:65532", &["drainer", "--version"]).await?;
    ensure!(
        version.trim() == format!("drainer {}", env!("CARGO_PKG_VERSION")),
        "{version}"
    );
    let scratch = root.join("var/lib/drainer/work");
    // The awkward tree of the engine's tests, as the image's user would have it.
    tree::awkward(&scratch.join("src"), 9 * 1024 * 1024);
    output(
        tokio::process::Command::new("chown")
            .args(["-R", "-h", "65532:65532"])
            .arg(&scratch),
        "chown the tree",
    )
    .await?;
    let copied = in_root(
        &root,
        "65532:65532",
        &[
            "drainer",
            "copy",
            "/var/lib/drainer/work/src",
            "file:///var/lib/drainer/work/store",
            "--volume",
            "shop/data-web-4",
            "--data-dir",
            "/var/lib/drainer/work/ledger",
        ],
    )
    .await?;
    ensure!(copied.contains("snapshot "), "{copied}");
    in_root(
        &root,
        "65532:65532",
        &[
            "drainer",
            "restore",
            "file:///var/lib/drainer/work/store",
            "--volume",
            "shop/data-web-4",
            "/var/lib/drainer/work/restored",
        ],
    )
    .await?;
    let diffs = tree::differences(&scratch.join("src"), &scratch.join("restored"));
    ensure!(diffs.is_empty(), "restore differs: {diffs:#?}");

    // `drainer install` copies a client that runs where nothing else is.
    let installed = in_root(&root, "65532:65532", &["drainer", "install", "/tmp/client"]).await?;
    ensure!(installed.contains("--library-path"), "{installed}");
    let bare = work.path().join("bare");
    std::fs::create_dir_all(bare.join("opt"))?;
    output(
        tokio::process::Command::new("cp")
            .arg("-a")
            .arg(root.join("tmp/client"))
            .arg(bare.join("opt/drainer")),
        "copy the installed client",
    )
    .await?;
    let version = in_root(
        &bare,
        "65532:65532",
        &[
            "/opt/drainer/ld.so",
            "--library-path",
            "/opt/drainer",
            "/opt/drainer/drainer",
            "--version",
        ],
    )
    .await?;
    ensure!(
        version.trim() == format!("drainer {}", env!("CARGO_PKG_VERSION")),
        "{version}"
    );
    Ok(())
}

/// Every example and every overlay is one the tests validate.
#[test]
fn the_tests_know_every_manifest() {
    let names = |dir: &str| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(deploy(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let mut examples = EXAMPLES.to_vec();
    examples.sort();
    assert_eq!(
        names("examples"),
        examples,
        "deploy/examples and EXAMPLES differ"
    );
    let mut overlays: Vec<String> = KUSTOMIZATIONS
        .iter()
        .filter_map(|k| k.strip_prefix("overlays/"))
        .map(str::to_owned)
        .collect();
    overlays.sort();
    assert_eq!(
        names("overlays"),
        overlays,
        "deploy/overlays and KUSTOMIZATIONS differ"
    );
    assert_eq!(
        names("components"),
        // monitoring: rendered and checked by the monitoring and chart tests; tls: rendered by
        // the chart test (beside the chart's TLS values) and served by the kube_tls tests;
        // encryption: rendered by the chart test (beside `encryption.enabled`), the key file it
        // mounts read by the encryption tests.
        ["encryption", "monitoring", "network-policy", "tls"],
        "a component the tests do not render"
    );
}

/// What ships names this crate's version: the Dockerfile's label and the manifests' image.
#[test]
fn the_dockerfile_and_the_manifests_name_this_version() {
    let version = env!("CARGO_PKG_VERSION");
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    assert!(
        dockerfile.contains(&format!("ARG VERSION={version}\n")),
        "Dockerfile: ARG VERSION is not {version}"
    );
    for file in [
        "base/deployment.yaml",
        "base/movers.yaml",
        "examples/prestop-handoff.yaml",
        "examples/job-handoff.yaml",
        "examples/sweep-cronjob.yaml",
        "examples/restore-init.yaml",
    ] {
        let text = std::fs::read_to_string(deploy(file)).unwrap();
        let images: Vec<&str> = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("image: "))
            .filter(|i| i.contains("drainer/drainer"))
            .collect();
        assert!(!images.is_empty(), "{file} names no drainer image");
        assert!(
            images.iter().all(|i| *i == release_image()),
            "{file}: {images:?} is not {}",
            release_image()
        );
    }
}

// ---------------------------------------------------------------------------------------
// Manifests against the API server
// ---------------------------------------------------------------------------------------

const KUSTOMIZATIONS: [&str; 5] = [
    "base",
    "overlays/s3",
    "overlays/ha",
    "overlays/kube-env",
    "overlays/namespaced",
];
/// The namespaces `overlays/namespaced` watches (its example).
const NAMESPACED: [&str; 2] = ["shop", "billing"];
const EXAMPLES: [&str; 5] = [
    "prestop-handoff.yaml",
    "sigterm-curl.yaml",
    "job-handoff.yaml",
    "sweep-cronjob.yaml",
    "restore-init.yaml",
];

/// Every kustomization renders with kubectl's kustomize, and the API server accepts what it
/// renders (server-side dry run, unknown fields are errors), and so every example.
#[tokio::test]
async fn manifests_are_accepted_by_the_api_server() -> Result<()> {
    let _serial = LOCK.lock().await;
    with_timeout(Duration::from_secs(300), async {
        let env = KubeEnv::load()?;
        let client = client().await?;
        // A server-side dry run of a namespace does not create it, and the objects in it are
        // then refused: make drainer's exist (and remove it after, if it did not); the
        // examples go to a namespace of their own.
        let created = ensure_namespace(&client, SYSTEM).await?;
        let apps = crate::support::kube::create_namespace(&client, "deploy-dry-run").await?;
        let mut watched = Vec::new();
        for ns in NAMESPACED {
            if ensure_namespace(&client, ns).await? {
                watched.push(ns);
            }
        }
        let result = async {
            check_namespaced(&env).await?;
            for k in KUSTOMIZATIONS {
                let rendered = kubectl(&env, &["kustomize", &deploy(k)]).await?;
                ensure!(
                    rendered.contains("kind: Deployment"),
                    "{k} renders no Deployment"
                );
                kubectl(
                    &env,
                    &[
                        "apply",
                        "--dry-run=server",
                        "--validate=strict",
                        "-k",
                        &deploy(k),
                    ],
                )
                .await
                .with_context(|| format!("the API server refuses deploy/{k}"))?;
            }
            for example in EXAMPLES {
                let ns = if example == "sweep-cronjob.yaml" {
                    SYSTEM
                } else {
                    apps.as_str()
                };
                let file = deploy(&format!("examples/{example}"));
                kubectl(
                    &env,
                    &[
                        "apply",
                        "--dry-run=server",
                        "--validate=strict",
                        "-n",
                        ns,
                        "-f",
                        &file,
                    ],
                )
                .await
                .with_context(|| format!("the API server refuses examples/{example}"))?;
            }
            // The network policy is a component: render it into the base (kustomize wants
            // relative paths: the directory is two levels under the repository).
            std::fs::create_dir_all(repo().join("target"))?;
            let with_policy = tempfile::tempdir_in(repo().join("target"))?;
            std::fs::write(
                with_policy.path().join("kustomization.yaml"),
                "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
                 resources: [../../deploy/base]\ncomponents: [../../deploy/components/network-policy]\n",
            )?;
            let dir = with_policy.path().display().to_string();
            let rendered = kubectl(&env, &["kustomize", &dir]).await?;
            ensure!(rendered.contains("kind: NetworkPolicy"), "{rendered}");
            kubectl(
                &env,
                &["apply", "--dry-run=server", "--validate=strict", "-k", &dir],
            )
            .await
            .context("the API server refuses components/network-policy")?;
            Ok(())
        }
        .await;
        if created {
            kubectl(&env, &["delete", "namespace", SYSTEM, "--wait=false"]).await?;
        }
        for ns in watched {
            kubectl(&env, &["delete", "namespace", ns, "--wait=false"]).await?;
        }
        crate::support::kube::delete_namespace(&client, &apps).await?;
        result
    })
    .await
}

/// `overlays/namespaced` as the API server reads it (a server-side dry run): a RoleBinding of the
/// ClusterRole drainer in each namespace of DRAINER_WATCH_NAMESPACES and in no other, and
/// across the cluster nothing bound to drainer but reads (and the reviews, which store
/// nothing).
async fn check_namespaced(env: &KubeEnv) -> Result<()> {
    let dir = deploy("overlays/namespaced");
    let args = ["apply", "--dry-run=server", "-o", "json", "-k", &dir];
    let list: Value = serde_json::from_str(&kubectl(env, &args).await?)?;
    let items = list["items"].as_array().context("a List")?;
    let of_kind = |kind: &'static str| items.iter().filter(move |o| o["kind"] == kind);
    let watched: Vec<&str> = of_kind("Deployment")
        .flat_map(|d| d["spec"]["template"]["spec"]["containers"][0]["env"].as_array())
        .flatten()
        .filter(|e| e["name"] == "DRAINER_WATCH_NAMESPACES")
        .filter_map(|e| e["value"].as_str())
        .flat_map(|v| v.split(','))
        .collect();
    let mut bound: Vec<&str> = of_kind("RoleBinding")
        .filter(|b| b["roleRef"]["name"] == "drainer" && b["roleRef"]["kind"] == "ClusterRole")
        .filter_map(|b| b["metadata"]["namespace"].as_str())
        .collect();
    bound.sort();
    let mut expected = watched.clone();
    expected.sort();
    ensure!(
        !watched.is_empty() && bound == expected,
        "overlays/namespaced watches {watched:?} but binds the ClusterRole drainer in {bound:?}"
    );
    let reviews = ["tokenreviews", "subjectaccessreviews"];
    for binding in of_kind("ClusterRoleBinding") {
        let role = binding["roleRef"]["name"].as_str().unwrap_or_default();
        let to_drainer = binding["subjects"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s["name"] == "drainer" && s["kind"] == "ServiceAccount");
        if !to_drainer {
            continue;
        }
        let rules = of_kind("ClusterRole")
            .find(|r| r["metadata"]["name"] == role)
            .with_context(|| format!("ClusterRole {role} is not in the overlay"))?["rules"]
            .as_array()
            .context("rules")?;
        for rule in rules {
            for verb in rule["verbs"].as_array().into_iter().flatten() {
                let read = ["get", "list", "watch"].iter().any(|v| verb == v);
                let review = verb == "create"
                    && rule["resources"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .all(|r| reviews.iter().any(|v| r == v));
                ensure!(
                    read || review,
                    "overlays/namespaced grants drainer {verb} across the cluster: {rule}"
                );
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Install, drain, uninstall
// ---------------------------------------------------------------------------------------

/// One access drainer's ServiceAccount is asked about: verb, API group, resource (or
/// `resource/subresource`), namespace (`None`: cluster-wide) and object name (`""`: any).
type Access = (
    &'static str,
    &'static str,
    &'static str,
    Option<&'static str>,
    &'static str,
);

/// Whether the ServiceAccount of drainer may do `access` (a SubjectAccessReview).
async fn drainer_may(client: &Client, access: Access) -> Result<bool> {
    let (verb, group, resource, namespace, name) = access;
    let (resource, subresource) = match resource.split_once('/') {
        Some((r, s)) => (r, Some(s.to_owned())),
        None => (resource, None),
    };
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(SERVICE_ACCOUNT.to_owned()),
            groups: Some(vec![
                "system:serviceaccounts".to_owned(),
                format!("system:serviceaccounts:{SYSTEM}"),
                "system:authenticated".to_owned(),
            ]),
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.to_owned()),
                group: Some(group.to_owned()),
                resource: Some(resource.to_owned()),
                subresource,
                namespace: namespace.map(str::to_owned),
                name: (!name.is_empty()).then(|| name.to_owned()),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    };
    let api: Api<SubjectAccessReview> = Api::all(client.clone());
    let answer = api.create(&PostParams::default(), &review).await?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

/// The installed RBAC grants what drainer does and not what it must not: read Secrets (in
/// any namespace, its own included: it gets its settings from the kubelet, not the API),
/// delete or create pods, create claims (deleting them, to give a reclaimed ordinal's storage
/// back, is granted; the policy drainer-claims confines it to claims drainer marked), change
/// StatefulSets, write Leases other than its own.
async fn check_rbac_is_least(client: &Client) -> Result<()> {
    const LEASES: &str = "coordination.k8s.io";
    let needed: [Access; 17] = [
        ("list", "", "pods", None, ""),
        ("get", "", "namespaces", None, ""),
        ("watch", "", "persistentvolumeclaims", None, ""),
        ("patch", "", "persistentvolumeclaims", Some(APPS), ""),
        ("delete", "", "persistentvolumeclaims", Some(APPS), ""),
        ("create", "batch", "jobs", Some(APPS), ""),
        ("delete", "batch", "jobs", Some(APPS), ""),
        ("create", "", "configmaps", Some(APPS), ""),
        ("create", "events.k8s.io", "events", Some(APPS), ""),
        ("create", "authentication.k8s.io", "tokenreviews", None, ""),
        (
            "create",
            "authorization.k8s.io",
            "subjectaccessreviews",
            None,
            "",
        ),
        ("create", LEASES, "leases", Some(SYSTEM), ""),
        ("create", "drainer.io", "drains", Some(APPS), ""),
        ("delete", "drainer.io", "drains", Some(APPS), ""),
        ("patch", "drainer.io", "drains/status", Some(APPS), ""),
        ("get", LEASES, "leases", Some(SYSTEM), "drainer-sweeper"),
        ("update", LEASES, "leases", Some(SYSTEM), "drainer-sweeper"),
    ];
    for access in needed {
        ensure!(
            drainer_may(client, access).await?,
            "drainer's ServiceAccount may not {access:?}, which it needs"
        );
    }
    let not_needed: [Access; 16] = [
        ("list", "", "namespaces", None, ""),
        ("patch", "", "namespaces", None, ""),
        ("get", "", "secrets", Some("default"), ""),
        ("get", "", "secrets", Some(APPS), ""),
        ("list", "", "secrets", None, ""),
        ("get", "", "secrets", Some(SYSTEM), ""),
        ("delete", "", "pods", Some(APPS), ""),
        ("create", "", "pods", Some(APPS), ""),
        ("create", "", "pods/exec", Some(APPS), ""),
        ("create", "", "persistentvolumeclaims", Some(APPS), ""),
        ("update", "apps", "statefulsets", Some(APPS), ""),
        ("patch", "apps", "statefulsets", Some(APPS), ""),
        ("create", "", "serviceaccounts/token", Some(APPS), "default"),
        ("update", "", "configmaps", Some(APPS), ""),
        ("update", LEASES, "leases", Some(SYSTEM), "kube-scheduler"),
        ("create", LEASES, "leases", Some(APPS), ""),
    ];
    for access in not_needed {
        ensure!(
            !drainer_may(client, access).await?,
            "drainer's ServiceAccount may {access:?}: more than it needs"
        );
    }
    Ok(())
}

/// Waits until Job `name` in `ns` has succeeded; fails at once if it failed, with its pods'
/// logs.
async fn wait_job(
    client: &Client,
    env: &KubeEnv,
    ns: &str,
    name: &str,
    within: Duration,
) -> Result<()> {
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let logs = || async {
        let list = pods
            .list(&ListParams::default().labels(&format!("job-name={name}")))
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        list.iter()
            .map(|p| {
                let c = p
                    .spec
                    .as_ref()
                    .map(|s| s.containers[0].name.clone())
                    .unwrap_or_default();
                env.container_log(p, &c).unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let result = eventually(format!("Job {ns}/{name} complete"), within, || async {
        let job = jobs.get(name).await?;
        let status = job.status.unwrap_or_default();
        if status.succeeded.unwrap_or(0) >= 1 {
            return Ok(());
        }
        let failed = status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Failed" && c.status == "True");
        ensure!(!failed, "FAILED: {status:?}");
        bail!("running: {status:?}")
    })
    .await;
    match result {
        Ok(()) => Ok(()),
        Err(e) => Err(e.context(format!("the Job's log:\n{}", logs().await))),
    }
}

/// Lines of drainer's log recording a handoff of `pvc` by a caller whose name starts with
/// `by`.
fn handoffs_logged(log: &str, pvc: &str, by: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("handoff recorded"))
        .filter(|l| l.contains(&format!("\"pvc\":\"{pvc}\"")))
        .filter(|l| l.contains(&format!("\"by\":\"{by}")))
        .count()
}

/// The install of deploy/overlays/kube-env, as a user would do it, and the examples on it.
#[tokio::test]
async fn install_drain_and_uninstall() -> Result<()> {
    let _serial = LOCK.lock().await;
    let image = test_image().await?;
    let env = KubeEnv::load()?;
    let client = client().await?;
    let result = with_timeout(
        Duration::from_secs(900),
        install_drain_and_uninstall_body(&env, &client, &image),
    )
    .await;
    if std::env::var_os("DRAINER_TEST_KEEP").is_none() {
        let cleaned = clean_up(&env, &client, false).await;
        result?;
        cleaned?;
        Ok(())
    } else {
        result
    }
}

async fn install_drain_and_uninstall_body(
    env: &KubeEnv,
    client: &Client,
    image: &Path,
) -> Result<()> {
    let started = std::time::Instant::now();
    let step = |what: &str| eprintln!("deploy: {:>6.1} s {what}", started.elapsed().as_secs_f64());
    clean_up(env, client, true).await?;
    env.register_image(OVERLAY_IMAGE, image).await?;
    env.register_image(&release_image(), image).await?;
    // The users' namespace (not part of the install).
    ensure_namespace(client, APPS).await?;
    let tls = Tls::install(env, client).await?;

    step("kubectl apply -k deploy/overlays/kube-env");
    kubectl(env, &["apply", "-k", &deploy("overlays/kube-env")]).await?;
    let installed = kubectl(
        env,
        &["get", "-k", &deploy("overlays/kube-env"), "-o", "name"],
    )
    .await?;
    let pod = drainer_pod(client, env).await?;
    let image_id = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .map(|c| c.image_id.clone())
        .unwrap_or_default();
    ensure!(
        image_id.contains("drainer:kube-env@sha256:"),
        "drainer runs from the registered image: {image_id:?}"
    );
    step("drainer Ready");
    check_rbac_is_least(client).await?;
    let api = DrainerApi::new(client, ADMIN_TOKEN, APPS, Some(&tls)).await?;
    let movers = kubectl(
        env,
        &[
            "-n",
            SYSTEM,
            "get",
            "configmap",
            "drainer-movers",
            "-o",
            "jsonpath={.data.serviceURL}",
        ],
    )
    .await?;
    ensure!(
        movers == format!("https://{SERVICE_HOST}:8080"),
        "mover Jobs reach drainer at {movers:?}"
    );
    // The store of the base: a directory on drainer's own claim.
    let store = {
        let dir =
            wait_for_bound_claim(client, SYSTEM, "drainer-data", Duration::from_secs(10)).await?;
        file_url(&dir.join("store"))
    };

    // Example 1: preStop hooks hand off as web scales from 3 to 1.
    let web = start_example_web(env, client).await?;
    step("example 1: web has 3 replicas with data; scaling to 1");
    scale(client, APPS, "web", 1).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), APPS);
    for i in [2, 1] {
        wait_for_pod_gone(&pods, &format!("web-{i}"), Duration::from_secs(90)).await?;
    }
    let mut first = Vec::new();
    for i in [2, 1] {
        let drain = api
            .wait_completed(&format!("data-web-{i}"), 0, Duration::from_secs(240))
            .await?;
        restore_equals(&store, &drain, &web[i]).await?;
        first.push(drain);
    }
    ensure!(
        api.drains_of("data-web-0").await?.is_empty(),
        "web-0 is live: its claim is not drained"
    );
    let log = env.container_log(&pod, "drainer")?;
    for i in [2, 1] {
        ensure!(
            handoffs_logged(
                &log,
                &format!("data-web-{i}"),
                &format!("pod:{APPS}/web-{i}")
            ) >= 1,
            "no handoff of data-web-{i} from web-{i}'s preStop hook in drainer's log"
        );
    }
    step("example 1: both scaled-away claims drained, snapshots restore exactly");

    // Example 3: the ordinals come back (new data), go again, and a Job follows the drains.
    scale(client, APPS, "web", 3).await?;
    for (i, dir) in web.iter().enumerate().skip(1) {
        eventually(
            format!("web-{i} back with new data"),
            Duration::from_secs(120),
            || async {
                let runs = std::fs::read_dir(dir.join("runs"))?.count();
                ensure!(runs == 2, "{runs} runs");
                Ok(())
            },
        )
        .await?;
        wait_app(client, env, &format!("web-{i}"), "app", "ready").await?;
    }
    scale(client, APPS, "web", 1).await?;
    kubectl(
        env,
        &[
            "apply",
            "-n",
            APPS,
            "-f",
            &deploy("examples/job-handoff.yaml"),
        ],
    )
    .await?;
    wait_job(client, env, APPS, "drain-web", Duration::from_secs(300)).await?;
    for i in [2, 1] {
        let drain = api
            .wait_completed(&format!("data-web-{i}"), 1, Duration::from_secs(60))
            .await?;
        ensure!(
            drain["snapshot"] != first[2 - i]["snapshot"],
            "a new snapshot"
        );
        restore_equals(&store, &drain, &web[i]).await?;
    }
    let log = env.container_log(&pod, "drainer")?;
    // The Job's token is its pod's: a pod that mounts neither claim, allowed by RBAC.
    let job_user = format!("pod:{APPS}/drain-web-");
    for i in [2, 1] {
        ensure!(
            handoffs_logged(&log, &format!("data-web-{i}"), &job_user) >= 1,
            "no handoff of data-web-{i} from the Job in drainer's log"
        );
    }
    step("example 3: the Job followed both drains to completion");

    // Example 2: a SIGTERM handler's curl.
    kubectl(
        env,
        &[
            "apply",
            "-n",
            APPS,
            "-f",
            &deploy("examples/sigterm-curl.yaml"),
        ],
    )
    .await?;
    let mut notes = Vec::new();
    for i in 0..2 {
        notes.push(example_claim_dir(client, &format!("data-notes-{i}")).await?);
        wait_app(client, env, &format!("notes-{i}"), "app", "ready").await?;
    }
    scale(client, APPS, "notes", 1).await?;
    let drain = api
        .wait_completed("data-notes-1", 0, Duration::from_secs(240))
        .await?;
    restore_equals(&store, &drain, &notes[1]).await?;
    let log = env.container_log(&pod, "drainer")?;
    ensure!(
        handoffs_logged(&log, "data-notes-1", &format!("pod:{APPS}/notes-1")) >= 1,
        "no handoff of data-notes-1 from notes-1's SIGTERM handler in drainer's log"
    );
    step("example 2: the SIGTERM handler's curl handed off, drained");

    // Example 4: the sweep CronJob, run once now (it remembers the StatefulSet notes), then
    // again after notes went without anyone handing data-notes-0 off: the StatefulSet
    // deleted without its pod, the pod killed at once (no SIGTERM handler runs).
    kubectl(
        env,
        &[
            "apply",
            "-n",
            SYSTEM,
            "-f",
            &deploy("examples/sweep-cronjob.yaml"),
        ],
    )
    .await?;
    kubectl(
        env,
        &[
            "create",
            "job",
            "-n",
            SYSTEM,
            "--from=cronjob/drainer-sweep",
            "sweep-first",
        ],
    )
    .await?;
    wait_job(client, env, SYSTEM, "sweep-first", Duration::from_secs(120)).await?;
    ensure!(
        api.drains_of("data-notes-0").await?.is_empty(),
        "notes-0 is live: its claim is not drained"
    );
    kubectl(
        env,
        &[
            "delete",
            "-n",
            APPS,
            "statefulset/notes",
            "--cascade=orphan",
        ],
    )
    .await?;
    kubectl(
        env,
        &[
            "delete",
            "-n",
            APPS,
            "pod/notes-0",
            "--grace-period=0",
            "--force",
        ],
    )
    .await?;
    wait_for_pod_gone(&pods, "notes-0", Duration::from_secs(90)).await?;
    ensure!(
        api.drains_of("data-notes-0").await?.is_empty(),
        "nobody handed data-notes-0 off"
    );
    kubectl(
        env,
        &[
            "create",
            "job",
            "-n",
            SYSTEM,
            "--from=cronjob/drainer-sweep",
            "sweep-now",
        ],
    )
    .await?;
    wait_job(client, env, SYSTEM, "sweep-now", Duration::from_secs(120)).await?;
    let drain = api
        .wait_completed("data-notes-0", 0, Duration::from_secs(240))
        .await?;
    ensure!(
        drain["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("sweep")),
        "the sweep made this drain: {drain}"
    );
    restore_equals(&store, &drain, &notes[0]).await?;
    step("example 4: the sweep found the orphaned claim, drained");

    // Within its memory limit (kube-env does not enforce it): the figure deploy/README.md
    // quotes.
    let name = pod.metadata.name.clone().unwrap_or_default();
    let pids = processes_with_env(&[&format!("DRAINER_REPLICA_ID={name}")]);
    let [pid] = pids.as_slice() else {
        bail!("one drainer process, found {pids:?}");
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |key: &str| -> Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(key))
            .with_context(|| format!("no {key} in /proc/{pid}/status"))?;
        Ok(line
            .split_whitespace()
            .nth(1)
            .context(key.to_owned())?
            .parse()?)
    };
    let (peak, now) = (kib("VmHWM:")? / 1024, kib("VmRSS:")? / 1024);
    eprintln!("deploy: drainer's resident memory: {now} MiB now, {peak} MiB at most");
    ensure!(peak < 512, "drainer used {peak} MiB, over its 512Mi limit");
    // Enough RBAC, and the admission policies of deploy/base/admission.yaml admit what drainer
    // does: no request of drainer's was refused.
    let log = env.container_log(&pod, "drainer")?;
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.to_lowercase().contains("forbidden") || l.contains("AdmissionPolicy"))
        .collect();
    ensure!(refused.is_empty(), "drainer was refused: {refused:#?}");
    // Nothing of drainer's is left in the users' namespace: successful movers are deleted,
    // holds let go.
    let managed = ListParams::default().labels("app.kubernetes.io/managed-by=drainer");
    let jobs: Api<Job> = Api::namespaced(client.clone(), APPS);
    eventually("no mover Job left", Duration::from_secs(60), || async {
        let left: Vec<_> = jobs.list(&managed).await?.items;
        ensure!(left.is_empty(), "{} left", left.len());
        Ok(())
    })
    .await?;

    // Uninstall: every object of the install goes, the users' claims stay as they were.
    let claims_before: Vec<(PathBuf, Vec<PathBuf>)> = web
        .iter()
        .chain(&notes)
        .map(|d| (d.clone(), tree::relative_paths(d)))
        .collect();
    // The example's CronJob (its Jobs go with it), then the install.
    kubectl(
        env,
        &[
            "delete",
            "-n",
            SYSTEM,
            "cronjob/drainer-sweep",
            "--cascade=foreground",
        ],
    )
    .await?;
    step("kubectl delete -k deploy/overlays/kube-env");
    kubectl(
        env,
        &[
            "delete",
            "-k",
            &deploy("overlays/kube-env"),
            "--wait=true",
            "--timeout=180s",
        ],
    )
    .await?;
    let left = kubectl(
        env,
        &[
            "get",
            "-k",
            &deploy("overlays/kube-env"),
            "-o",
            "name",
            "--ignore-not-found",
        ],
    )
    .await?;
    ensure!(
        left.trim().is_empty(),
        "left after uninstall: {left}\n(installed: {installed})"
    );
    ensure!(installed.lines().count() >= 9, "installed: {installed}");
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), APPS);
    for name in [
        "data-web-0",
        "data-web-1",
        "data-web-2",
        "data-notes-0",
        "data-notes-1",
    ] {
        let claim = claims
            .get(name)
            .await
            .with_context(|| format!("claim {name} after uninstall"))?;
        ensure!(
            claim.metadata.deletion_timestamp.is_none(),
            "{name} is being deleted"
        );
    }
    for (dir, paths) in &claims_before {
        ensure!(
            &tree::relative_paths(dir) == paths,
            "{} changed after uninstall",
            dir.display()
        );
    }
    step("uninstalled: nothing left, the claims untouched");
    Ok(())
}
