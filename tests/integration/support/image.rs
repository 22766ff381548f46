//! The programs under test as kube-env's pods run them: from OCI images built from them, as
//! a cluster runs drainer, never from a path of this machine.
//!
//! A pod of an image kube-env does not know runs on this machine's root filesystem, but with
//! its own `/tmp` and `/run`, and a mover's `emptyDir` on `/tmp`: a checkout (or a target
//! directory, or a `$HOME`) under `/tmp` is not there. So no test puts a path of this machine
//! into a pod: drainer runs in pods from [`drainer_image`] (built by `scripts/image` from the
//! binary under test, as the release image is built, and registered with the running kube-env
//! under a name tagged with its hash), mover Jobs with that image and the default command, applications'
//! hooks through `drainer install` into an `emptyDir` ([`with_drainer_installed`], as
//! `deploy/examples/prestop-handoff.yaml` does), and the in-cluster test client of
//! `examples/kube-in-pod.rs` from [`kube_in_pod_image`]. The tests then pass wherever the
//! project is cloned, whatever `CARGO_TARGET_DIR` and `$HOME` are, spaces in paths included.
//! `.ci/run` proves it by running from a copy of the checkout at a path with a space in it
//! under `$TMPDIR`.

use super::kube::KubeEnv;
use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, OnceCell};

/// The name pods use for the image of the binary under test (registered by
/// [`drainer_image`]): `drainer.test/drainer:` and the start of the binary's BLAKE3, so that
/// test runs of different builds sharing one kube-env never run each other's image.
pub fn drainer_image_name() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| tagged("drainer.test/drainer", Path::new(super::drainer_bin())))
}

/// The name pods use for the image of `examples/kube-in-pod.rs` ([`kube_in_pod_image`]),
/// tagged by the program's hash as [`drainer_image_name`] is.
pub fn kube_in_pod_image_name() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| tagged("drainer.test/kube-in-pod", &kube_in_pod_program()))
}

/// `repository:` and the first 16 hex digits of `program`'s BLAKE3.
fn tagged(repository: &str, program: &Path) -> String {
    let mut hasher = blake3::Hasher::new();
    let file = std::fs::File::open(program)
        .unwrap_or_else(|e| panic!("reading {} to name its image: {e}", program.display()));
    hasher
        .update_reader(file)
        .unwrap_or_else(|e| panic!("reading {} to name its image: {e}", program.display()));
    format!("{repository}:{}", &hasher.finalize().to_hex()[..16])
}

/// `TARGET/PROFILE/examples/kube-in-pod`, beside the binary under test.
fn kube_in_pod_program() -> PathBuf {
    Path::new(super::drainer_bin())
        .with_file_name("examples")
        .join("kube-in-pod")
}

/// Where [`with_drainer_installed`] puts drainer in the application's container.
pub const INSTALLED: &str = "/opt/drainer";

static DRAINER_FILE: OnceCell<PathBuf> = OnceCell::const_new();
/// The (instance data directory, image name) pairs registered so far: once per instance, as a
/// test may run on a kube-env of its own ([`super::kube::PrivateKubeEnv`]) beside the shared
/// one, and an instance that does not know an image simulates the pods that use it.
static REGISTERED: Mutex<BTreeSet<(PathBuf, &'static str)>> = Mutex::const_new(BTreeSet::new());

/// Registers the image `name` with `env` unless it already is; `build` gives the image's
/// path (a tar or a layout) and whatever must live until it is registered.
async fn register_once<F, Fut, Keep>(env: &KubeEnv, name: &'static str, build: F) -> Result<()>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<(PathBuf, Keep)>>,
{
    let mut registered = REGISTERED.lock().await;
    let key = (env.data_dir.clone(), name);
    if registered.contains(&key) {
        return Ok(());
    }
    let (path, _keep) = build().await?;
    env.register_image(name, &path).await?;
    registered.insert(key);
    Ok(())
}

/// The target directory the binary under test was built in (`CARGO_TARGET_DIR`, wherever it
/// is): `TARGET/PROFILE/drainer`.
pub fn target_dir() -> Result<PathBuf> {
    Path::new(super::drainer_bin())
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .context("the binary under test is not in TARGET/PROFILE/")
}

/// The OCI image (a tar) of the binary under test, built once per test process by
/// `scripts/image --fast` into `TARGET/image/drainer-test.oci.tar`.
pub async fn drainer_image_file() -> Result<PathBuf> {
    DRAINER_FILE
        .get_or_try_init(|| async {
            let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
            let output = target_dir()?.join("image/drainer-test.oci.tar");
            let started = Instant::now();
            let out = tokio::process::Command::new(repo.join("scripts/image"))
                .arg("--binary")
                .arg(super::drainer_bin())
                .args(["--fast", "--tag", "drainer:test", "--output"])
                .arg(&output)
                .kill_on_drop(true)
                .output();
            let out = tokio::time::timeout(Duration::from_secs(300), out)
                .await
                .context("scripts/image did not finish within 5 minutes")??;
            ensure!(
                out.status.success(),
                "scripts/image failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            eprintln!(
                "test image built in {:.1} s: {}",
                started.elapsed().as_secs_f64(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
            Ok(output)
        })
        .await
        .cloned()
}

/// The image of the binary under test, registered with the running kube-env (once per test
/// process) as [`drainer_image_name`]: the name to give pods and `--mover-image`.
pub async fn drainer_image(env: &KubeEnv) -> Result<&'static str> {
    let name = drainer_image_name();
    register_once(env, name, || async {
        Ok((drainer_image_file().await?, ()))
    })
    .await?;
    Ok(name)
}

/// `pod_spec` (a PodSpec as JSON) with drainer installed for its containers as a cluster
/// installs it (`deploy/examples/prestop-handoff.yaml`): an init container of
/// [`drainer_image_name`] runs `drainer install` into an `emptyDir` that every container mounts
/// read-only at [`INSTALLED`]; run it with [`installed_drainer`].
pub fn with_drainer_installed(mut pod_spec: Value) -> Value {
    let volume = "drainer-bin";
    let install = json!({
        "name": "drainer-install",
        "image": drainer_image_name(),
        "args": ["install", INSTALLED],
        "volumeMounts": [{ "name": volume, "mountPath": INSTALLED }]
    });
    let mut init = vec![install];
    if let Some(Value::Array(others)) = pod_spec.get_mut("initContainers").map(Value::take) {
        init.extend(others);
    }
    pod_spec["initContainers"] = Value::Array(init);
    let mount = json!({ "name": volume, "mountPath": INSTALLED, "readOnly": true });
    if let Some(Value::Array(containers)) = pod_spec.get_mut("containers") {
        for container in containers {
            push(container, "volumeMounts", mount.clone());
        }
    }
    push(
        &mut pod_spec,
        "volumes",
        json!({ "name": volume, "emptyDir": {} }),
    );
    pod_spec
}

/// Appends `item` to the array `object[key]`, creating it if missing.
fn push(object: &mut Value, key: &str, item: Value) {
    match object.get_mut(key) {
        Some(Value::Array(items)) => items.push(item),
        _ => object[key] = json!([item]),
    }
}

/// The command that runs `drainer ARGS` in a container of a pod [`with_drainer_installed`]
/// (through the loader it installed, whatever the container's image holds).
pub fn installed_drainer(args: &[&str]) -> Vec<String> {
    let dir = INSTALLED;
    [
        format!("{dir}/ld.so"),
        "--library-path".to_owned(),
        dir.to_owned(),
        format!("{dir}/drainer"),
    ]
    .into_iter()
    .chain(args.iter().map(|a| (*a).to_owned()))
    .collect()
}

/// The image of the in-cluster test client `examples/kube-in-pod.rs` (which `cargo test`
/// builds with the other examples), registered with the running kube-env once per test
/// process as [`kube_in_pod_image_name`]; its entrypoint is the client (give pods `args`).
pub async fn kube_in_pod_image(env: &KubeEnv) -> Result<&'static str> {
    let program = kube_in_pod_program();
    ensure!(
        program.is_file(),
        "{} is missing: build it with `cargo build --example kube-in-pod` (cargo test does)",
        program.display()
    );
    let name = kube_in_pod_image_name();
    register_once(env, name, || async {
            let work = tempfile::tempdir()?;
            let tree = work.path().join("tree");
            copy_with_libraries(&program, &tree, Some("usr/local/bin/kube-in-pod"))?;
            let layout = work.path().join("layout");
            oci_layout(
                &tree,
                &layout,
                json!({
                    "architecture": "amd64", "os": "linux",
                    "config": { "Entrypoint": ["/usr/local/bin/kube-in-pod"], "Env": ["PATH=/usr/local/bin"] }
                }),
            )?;
            Ok((layout, work))
        })
        .await?;
    Ok(name)
}

/// Writes an OCI image layout into `dir` whose one layer is `tree`, with the given image
/// config (its `rootfs` is filled in).
pub fn oci_layout(tree: &Path, dir: &Path, config: Value) -> Result<()> {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    let sha256 = |p: &Path| -> Result<(String, u64)> {
        let out = std::process::Command::new("sha256sum").arg(p).output()?;
        ensure!(out.status.success(), "sha256sum failed");
        let hex = String::from_utf8(out.stdout)?
            .split_whitespace()
            .next()
            .context("no digest")?
            .to_owned();
        Ok((hex, std::fs::metadata(p)?.len()))
    };
    let blob = |p: &Path| -> Result<(String, u64)> {
        let (hex, size) = sha256(p)?;
        std::fs::copy(p, blobs.join(&hex))?;
        Ok((format!("sha256:{hex}"), size))
    };
    let layer = dir.join("layer.tar");
    let status = std::process::Command::new("tar")
        .arg("-C")
        .arg(tree)
        .arg("-cf")
        .arg(&layer)
        .arg(".")
        .status()?;
    ensure!(status.success(), "tar failed");
    let (layer_digest, layer_size) = blob(&layer)?;
    std::fs::remove_file(&layer)?;
    let mut config = config;
    config["rootfs"] = json!({ "type": "layers", "diff_ids": [layer_digest] });
    let write_json = |name: &str, v: &Value| -> Result<(String, u64)> {
        let p = dir.join(name);
        std::fs::write(&p, serde_json::to_vec(v)?)?;
        let b = blob(&p)?;
        std::fs::remove_file(&p)?;
        Ok(b)
    };
    let (config_digest, config_size) = write_json("config.json", &config)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer_size }]
    });
    let (manifest_digest, manifest_size) = write_json("manifest.json", &manifest)?;
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "manifests": [{ "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest, "size": manifest_size }]
        }))?,
    )?;
    Ok(())
}

/// Copies a dynamically linked program of this machine, with the loader and libraries it
/// needs (at their own paths), into `tree`, as an image built from a glibc binary carries
/// them; the program goes to `at` (relative to `tree`), or to its own path.
pub fn copy_with_libraries(program: &Path, tree: &Path, at: Option<&str>) -> Result<()> {
    let out = std::process::Command::new("ldd").arg(program).output()?;
    ensure!(out.status.success(), "ldd {} failed", program.display());
    let own = program.strip_prefix("/").unwrap_or(program);
    let mut files = vec![(program.to_path_buf(), tree.join(at.map_or(own, Path::new)))];
    for line in String::from_utf8(out.stdout)?.lines() {
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            files.push((PathBuf::from(p), tree.join(p.trim_start_matches('/'))));
        }
    }
    for (from, to) in files {
        std::fs::create_dir_all(to.parent().context("no parent")?)?;
        std::fs::copy(&from, &to).with_context(|| format!("copy {}", from.display()))?;
    }
    Ok(())
}
