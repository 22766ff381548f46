//! Encryption at rest on kube-env: a `drainer serve --kubernetes` given a key file
//! (`--encryption-keys`, as `deploy/components/encryption` mounts the Secret) drains a claim
//! through a real mover Job (a pod of the binary under test's image), which never sees the
//! keys: drainer seals what the mover streams. The store then holds none of the claim's file
//! names or contents; the claim restores exactly through drainer, and straight from the store
//! only with the key file (without it: one line, nothing written).

use crate::support::cluster::TestNamespace;
use crate::support::gate::Gate;
use crate::support::image::drainer_image;
use crate::support::kube::{KubeEnv, with_timeout};
use crate::support::tree::{awkward, differences};
use crate::support::{drainer, fails, run_ok};
use anyhow::{Result, ensure};
use std::path::Path;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(300);
const WAIT: Duration = Duration::from_secs(120);
const PVC: &str = "data-web-4";
/// Bytes written into the claim that must not reach the store.
const MARKER: &[u8] = b"KUBE-ENV-SECRET-PAYROLL-";
const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// Every file the store holds, with its path.
fn stored(store: &Path) -> Vec<(String, Vec<u8>)> {
    walkdir::WalkDir::new(store)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            let bytes = std::fs::read(e.path()).unwrap_or_default();
            (e.path().display().to_string(), bytes)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mover_job_copies_into_an_encrypted_store_that_shows_nothing_of_the_claim() -> Result<()>
{
    with_timeout(LIMIT, async {
        let kenv = KubeEnv::load()?;
        let ns = TestNamespace::new("encrypted").await?;
        ns.create_claim(PVC, "1Gi").await?;
        let source = ns.bound_claim_dir(PVC, WAIT).await?;
        awkward(&source, 9 * 1024 * 1024);
        std::fs::write(source.join("payroll.csv"), MARKER.repeat(100))?;
        let keys = ns.work.join("keys");
        std::fs::write(&keys, format!("k1 {KEY}\n"))?;
        let gate = Gate::start(&kenv.host_ip).await?;
        let image = drainer_image(&kenv).await?;
        let data = ns.work.join("data");
        let keys_arg = keys.display().to_string();
        let serve = ns
            .kube_drainer()
            .mover_jobs(&gate.url, image)
            .args(&["--encryption-keys", &keys_arg])
            .start(&data)
            .await?;
        gate.forward_to(&serve.url);
        let (_, drains) = serve.handoff(&ns.ns, &[PVC]).await;
        let id = drains[0]["id"].as_str().unwrap_or_default().to_owned();
        serve.wait_state(&id, "completed", WAIT).await;
        let store = ns.work.join("store");
        let objects = stored(&store);
        ensure!(objects.len() > 5, "{} objects", objects.len());
        for (path, bytes) in &objects {
            ensure!(!path.contains("payroll"), "the store shows a name: {path}");
            ensure!(
                !bytes.windows(MARKER.len()).any(|w| w == MARKER),
                "{path} shows the claim's bytes"
            );
        }

        let through = ns.work.join("through-drainer");
        let volume = format!("{}/{PVC}", ns.ns);
        serve.restore_as_admin(&volume, &through).await;
        ensure!(differences(&source, &through).is_empty(), "through drainer");
        let store_url = ns.store();
        let direct = ns.work.join("direct");
        let restore = || {
            let mut cmd = drainer();
            cmd.args(["restore", &store_url, "--volume", &volume]);
            cmd
        };
        let mut with_keys = restore();
        with_keys.arg("--encryption-keys").arg(&keys).arg(&direct);
        run_ok(&mut with_keys).await;
        ensure!(
            differences(&source, &direct).is_empty(),
            "with the key file"
        );
        let refused = ns.work.join("refused");
        let mut without = restore();
        without.arg(&refused);
        let line = fails(&mut without, 1).await;
        ensure!(line.contains("--encryption-keys"), "{line}");
        ensure!(!refused.exists(), "nothing written without the key");
        serve.terminate(Duration::from_secs(20)).await;
        let ledger = drainer_core::Ledger::open(None, &data).await?;
        let copied = ledger.drain(&id).await?.and_then(|d| {
            d.facts
                .get(drainer_kube::facts::MOVER_JOB)
                .map(str::to_owned)
        });
        ensure!(copied.is_some(), "drain {id} was copied by a mover Job");
        ns.finish().await
    })
    .await
}
