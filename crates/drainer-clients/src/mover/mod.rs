//! `drainer mover`: streams a volume to the drainer over HTTP. It runs the same snapshot
//! engine as `drainer copy`, but its store and its checkpoints are the drainer's, reached
//! through the drain's API: the mover holds no storage credentials and no database, and may
//! write only its own drain's snapshot. A killed mover that starts again resumes from what the
//! drainer has recorded (large files part by part); requests that fail because the drainer is
//! restarting, or a replica behind its Service died, are sent again for a while.
//!
//! Client side only; the drainer's endpoints live in `http::mover_protocol`, the wire types they share
//! in [`drainer_core::protocol`]. The parts: `relay` (the store), `direct` (large files' parts
//! straight into the store, where the drainer signs URLs for them), `batch` (small objects in
//! batches), `checkpoint` (progress in the drainer's ledger).

mod batch;
mod checkpoint;
mod direct;
mod relay;

use crate::args::MoverArgs;
use crate::client::Api;
use drainer_core::protocol::{DrainInfo, StoreInfo};
use drainer_core::snapshot::{self, Progress};
use drainer_core::store::{Store, StoreOptions};
use drainer_core::volume::VolumeId;
use object_store::ObjectStore;
use object_store::multipart::MultipartStore;
use std::sync::Arc;
use std::time::Duration;

/// How long a mover keeps sending a request again while the drainer cannot take it.
pub(crate) const RETRY_FOR: Duration = Duration::from_secs(120);

/// The drain, once it is being copied: a drain `queued` again (its drainer stopped and
/// released it) is waited for, for up to [`RETRY_FOR`], until a drainer claims it again.
async fn copying_drain(api: &Api, drain: &str) -> anyhow::Result<DrainInfo> {
    let deadline = tokio::time::Instant::now() + RETRY_FOR;
    loop {
        let info: DrainInfo = api.json(|http| http.get(api.base())).await?;
        match info.state.as_str() {
            "copying" => return Ok(info),
            "queued" if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            state => anyhow::bail!("drain {drain} is {state}, not copying: nothing to stream"),
        }
    }
}

/// The compression a mover uses: its own `--compression` if given, else its drainer's (off
/// for a drainer that does not say). A setting the mover cannot read is an error naming it.
fn compression(
    own: Option<snapshot::Compression>,
    store_info: &StoreInfo,
) -> anyhow::Result<snapshot::Compression> {
    if let Some(own) = own {
        return Ok(own);
    }
    let Some(text) = &store_info.compression else {
        return Ok(snapshot::Compression::Off);
    };
    let drainers = text
        .parse()
        .map_err(|e| anyhow::anyhow!("the drainer's compression setting: {e}"))?;
    tracing::info!(compression = %drainers, "using the drainer's compression setting");
    Ok(drainers)
}

/// Runs `drainer mover`.
pub async fn run(args: MoverArgs) -> anyhow::Result<()> {
    snapshot::check_source(&args.source)?;
    let token = args.drainer.token()?;
    let base = format!(
        "{}/v1/drains/{}",
        args.drainer.url.trim_end_matches('/'),
        args.drain
    );
    let roots = args.drainer.trust.roots()?;
    let mut api = Api::new(&base, token, args.engine.store_timeout, RETRY_FOR, roots)?.with_header(
        drainer_core::protocol::OWNER_HEADER,
        drainer_core::ledger::process_owner(),
    );
    if args.drainer.token.is_none() {
        api = api.with_token_file(args.drainer.token_path());
    }
    let info = copying_drain(&api, &args.drain).await?;
    let volume: VolumeId = info.volume.parse()?;
    // Parts are written at their index in the drainer's store: they must have its part size.
    let store_url = api.url("/store");
    let store_info: StoreInfo = api.json(|http| http.get(&store_url)).await?;
    if !snapshot::part_hash::is_valid_part_size(store_info.part_size) {
        anyhow::bail!(
            "the drainer writes parts of {} bytes, which a mover cannot hash part by part",
            store_info.part_size
        );
    }
    let mut options = args.engine.copy_options(false);
    options.concurrency = args
        .engine
        .concurrency
        .unwrap_or(drainer_core::args::DEFAULT_MOVER_CONCURRENCY)
        .into();
    options.compression = compression(args.engine.compression, &store_info)?;
    if options.part_size != store_info.part_size {
        tracing::info!(
            part_size = store_info.part_size,
            "using the drainer's part size for large files"
        );
        options.part_size = store_info.part_size;
    }
    let store_options = StoreOptions {
        timeout: args.engine.store_timeout,
        create: false,
        part_size: store_info.part_size,
    };
    let direct = match store_info.direct_parts {
        Some(true) => Some(Arc::new(direct::DirectParts::new(
            args.engine.store_timeout,
            store_info.direct_batches == Some(true),
        )?)),
        _ => None,
    };
    tracing::info!(
        direct_parts = direct.is_some(),
        "large files' parts go {}",
        if direct.is_some() {
            "straight into the store"
        } else {
            "through the drainer"
        }
    );
    let parts_with_progress = store_info.parts_with_progress == Some(true);
    let barrier = relay::RelayedBarrier {
        api: api.clone(),
        direct: direct.clone(),
    };
    let direct_for_checkpoint = direct.clone();
    let relay = Arc::new(relay::RelayedStore {
        api: api.clone(),
        batches: batch::PutBatches::start(api.clone()),
        direct,
    });
    let store = Store::relayed(
        Arc::clone(&relay) as Arc<dyn ObjectStore>,
        relay as Arc<dyn MultipartStore>,
        Arc::new(barrier),
        format!("drainer+{base}"),
        &store_options,
    );
    let progress = Arc::new(Progress::default());
    let checkpoint = checkpoint::RemoteCheckpoint {
        api,
        progress: Arc::clone(&progress),
        totals_told: Default::default(),
        direct: direct_for_checkpoint,
        parts_with_progress,
    };
    let summary = snapshot::copy(
        &args.source,
        &store,
        &volume,
        &checkpoint,
        &options,
        progress,
    )
    .await?;
    println!("mover: {summary}");
    Ok(())
}
