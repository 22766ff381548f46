//! Direct parts in batches: a mover asks drainer for several parts' URLs per request
//! (`POST …/uploads/{upload}/urls`) and reports the parts it stored in batches (`POST
//! …/parts/stored`) before each durability barrier, so drainer answers about one request per
//! few parts rather than two per part. The batch routes check each part as the single ones do
//! (the drain's own upload, its run's key, the store's part size and limit) and record a batch
//! all or none; a relaying drainer refuses them; a mover using them sends no part through
//! drainer and its snapshot restores exactly.

use crate::support::by_hand::{begin_run, copying, create_upload, serve};
use crate::support::s3::S3Server;
use crate::support::serve::{Serve, TOKEN};
use crate::support::tree::{bytes, differences};
use crate::support::{drainer, run_ok};
use reqwest::Method;
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;

const MIB: usize = 1024 * 1024;
/// The drainer's part size (its default).
const PART: usize = 8 * MIB;

/// `POST …/uploads/{upload}/urls` for parts `first .. first + count`.
async fn sign(
    serve: &Serve,
    id: &str,
    upload: &str,
    key: &str,
    first: usize,
    count: usize,
) -> (u16, Value) {
    let path =
        format!("/v1/drains/{id}/uploads/{upload}/urls?key={key}&first={first}&count={count}");
    serve.call(Method::POST, &path, None).await
}

/// `PUT`s part `part`'s bytes (`len` of them) to `url`; the store's ETag.
async fn put(url: &str, part: usize, len: usize) -> String {
    let response = reqwest::Client::new()
        .put(url)
        .body(bytes(part as u64, len))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{response:?}");
    response.headers()["etag"].to_str().unwrap().to_owned()
}

/// `POST …/parts/stored` for drain `id`.
async fn report(serve: &Serve, id: &str, parts: Value) -> (u16, Value) {
    let path = format!("/v1/drains/{id}/parts/stored");
    serve
        .call(Method::POST, &path, Some(json!({ "parts": parts })))
        .await
}

/// The parts the ledger holds for `upload`, as (index, length).
async fn recorded(data: &Path, upload: &str) -> Vec<(u64, u64)> {
    let ledger = drainer::Ledger::open(None, data).await.unwrap();
    let parts = ledger.relay_parts(upload).await.unwrap();
    parts.into_iter().map(|p| (p.idx, p.len)).collect()
}

/// Signed in batches, part URLs are still the drain's own upload's and its run's key's only
/// (`403`, `404`), 1 to 64 a request within the store's limit (`400`), one per part, each
/// `PUT` storing its part; a batch of reports with one part that is not the drain's records
/// none of them, a good batch records them all, and the upload completes with the parts'
/// bytes; a relaying drainer refuses to sign (`409 direct_parts_not_offered`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_part_urls_and_reports_are_checked_part_by_part_and_recorded_all_or_none() {
    let server = S3Server::start().await;
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let serve = serve(&server, &data, "s3://bucket/batches", &[]).await;
    let a = copying(&serve, "data-web-4").await;
    let b = copying(&serve, "data-web-5").await;
    let (status, info) = serve
        .call(Method::GET, &format!("/v1/drains/{a}/store"), None)
        .await;
    assert_eq!(
        (status, &info["direct_batches"]),
        (200, &json!(true)),
        "{info}"
    );
    let snapshot_a = begin_run(&serve, &a).await;
    let snapshot_b = begin_run(&serve, &b).await;
    let own = |snapshot: &str, pvc: &str, name: &str| {
        format!("volumes/shop/{pvc}/snapshots/{snapshot}/files/{name}")
    };
    let key = own(&snapshot_a, "data-web-4", "large");
    let upload = create_upload(&serve, &a, &key).await;
    let key_b = own(&snapshot_b, "data-web-5", "large");
    let upload_b = create_upload(&serve, &b, &key_b).await;

    let other_run = own("20200101T000000000Z-0000", "data-web-4", "large");
    let (status, refusal) = sign(&serve, &a, &upload, &other_run, 0, 2).await;
    assert_eq!(
        (status, &refusal["error"]["code"]),
        (403, &json!("forbidden")),
        "{refusal}"
    );
    let (status, refusal) = sign(&serve, &b, &upload, &key_b, 0, 2).await;
    assert_eq!(
        (status, &refusal["error"]["code"]),
        (404, &json!("upload_not_found")),
        "another drain's upload: {refusal}"
    );
    for (first, count) in [(0, 0), (0, 65), (9_999, 2)] {
        let (status, refusal) = sign(&serve, &a, &upload, &key, first, count).await;
        assert_eq!(status, 400, "first {first} count {count}: {refusal}");
        assert!(refusal["error"]["code"].is_string(), "{refusal}");
    }

    let (status, signed) = sign(&serve, &a, &upload, &key, 0, 3).await;
    assert_eq!(status, 200, "{signed}");
    assert_eq!(
        (signed["first"].clone(), signed["expires_in_s"].clone()),
        (json!(0), json!(300))
    );
    let urls: Vec<String> = signed["urls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(urls.len(), 3, "{signed}");
    for (i, url) in urls.iter().enumerate() {
        assert!(url.contains("X-Amz-Signature="), "{url}");
        assert!(url.contains(&format!("partNumber={}", i + 1)), "{url}");
    }
    let parts = [(0, PART), (1, MIB + 17)];
    let mut reports = Vec::new();
    for (part, len) in parts {
        let etag = put(&urls[part], part, len).await;
        reports.push(json!({"upload": upload, "key": key, "part": part, "etag": etag, "len": len}));
    }

    // One part of another drain's upload in the batch: none is recorded.
    let mut mixed = reports.clone();
    mixed.push(json!({"upload": upload_b, "key": key, "part": 0, "etag": "\"e\"", "len": MIB}));
    let (status, refusal) = report(&serve, &a, json!(mixed)).await;
    assert_eq!(status, 404, "{refusal}");
    let mut too_long = reports.clone();
    too_long[1]["len"] = json!(PART + 1);
    let (status, refusal) = report(&serve, &a, json!(too_long)).await;
    assert_eq!(
        (status, &refusal["error"]["code"]),
        (400, &json!("bad_part_size")),
        "{refusal}"
    );
    let (status, refusal) = report(&serve, &a, json!([])).await;
    assert_eq!(status, 400, "an empty batch: {refusal}");
    assert_eq!(recorded(&data, &upload).await, Vec::<(u64, u64)>::new());

    let (status, answer) = report(&serve, &a, json!(reports)).await;
    assert_eq!(status, 204, "{answer}");
    let expected: Vec<(u64, u64)> = parts.iter().map(|&(i, l)| (i as u64, l as u64)).collect();
    assert_eq!(recorded(&data, &upload).await, expected);
    let complete = format!("/v1/drains/{a}/uploads/{upload}/complete?key={key}");
    let (status, answer) = serve.call(Method::POST, &complete, None).await;
    assert_eq!(status, 204, "{answer}");
    let mut whole = bytes(0, PART);
    whole.extend(bytes(1, MIB + 17));
    assert_eq!(server.get(&format!("batches/{key}")).await, whole);

    let relaying = serve_relay(&server, &work.path().join("relay")).await;
    let c = copying(&relaying, "data-web-6").await;
    let snapshot_c = begin_run(&relaying, &c).await;
    let key_c = own(&snapshot_c, "data-web-6", "large");
    let upload_c = create_upload(&relaying, &c, &key_c).await;
    let (status, refusal) = sign(&relaying, &c, &upload_c, &key_c, 0, 2).await;
    assert_eq!(
        (status, &refusal["error"]["code"]),
        (409, &json!("direct_parts_not_offered")),
        "{refusal}"
    );
}

/// `POST …/parts/stored` for drain `id` with `parts` and the progress `progress`.
async fn report_with(serve: &Serve, id: &str, parts: Value, progress: Value) -> (u16, Value) {
    let path = format!("/v1/drains/{id}/parts/stored");
    let body = json!({ "parts": parts, "progress": progress });
    serve.call(Method::POST, &path, Some(body)).await
}

/// `POST …/run` for drain `id`: the run's id and the snapshot it writes.
async fn begin(serve: &Serve, id: &str) -> (String, String) {
    let (status, run) = serve
        .call(Method::POST, &format!("/v1/drains/{id}/run"), None)
        .await;
    assert_eq!(status, 200, "{run}");
    let field = |name: &str| run[name].as_str().unwrap().to_owned();
    (field("id"), field("snapshot"))
}

/// The progress of the upload `upload` of file `large` in run `run`, with parts 0 to
/// `parts - 1` stored, as a mover records it.
fn progress(run: &str, upload: &str, parts: usize) -> Value {
    let stored: Vec<Value> = (0..parts)
        .map(|i| json!([i.to_string(), format!("{i:064x}")]))
        .collect();
    json!({
        "run": run,
        "upload": {
            "path_b64": "bGFyZ2U=", "upload_id": upload, "part_size": PART, "size": 3 * PART,
            "mtime_ns": 1, "ctime_ns": 1, "ino": 7, "parts": stored,
        },
    })
}

/// Parts reported with the progress that counts on them (where `GET …/store` says
/// `parts_with_progress`) are recorded with it in one transaction: a progress of a run that
/// is not running (`409`) or of another drain's upload (`404`) records none of the parts; a
/// good one records both; progress alone needs no part, on a relaying drainer too, where
/// parts are still refused (`409 direct_parts_not_offered`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_reported_with_parts_is_checked_and_recorded_with_them_all_or_none() {
    let server = S3Server::start().await;
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let serve = serve(&server, &data, "s3://bucket/progress", &[]).await;
    let a = copying(&serve, "data-web-4").await;
    let b = copying(&serve, "data-web-5").await;
    let (status, info) = serve
        .call(Method::GET, &format!("/v1/drains/{a}/store"), None)
        .await;
    assert_eq!(
        (status, &info["parts_with_progress"]),
        (200, &json!(true)),
        "{info}"
    );
    let (run, snapshot_a) = begin(&serve, &a).await;
    let snapshot_b = begin_run(&serve, &b).await;
    let ledger = drainer::Ledger::open(None, &data).await.unwrap();
    let key = format!("volumes/shop/data-web-4/snapshots/{snapshot_a}/files/large");
    let upload = create_upload(&serve, &a, &key).await;
    let key_b = format!("volumes/shop/data-web-5/snapshots/{snapshot_b}/files/large");
    let upload_b = create_upload(&serve, &b, &key_b).await;
    let (status, signed) = sign(&serve, &a, &upload, &key, 0, 2).await;
    assert_eq!(status, 200, "{signed}");
    let mut reports = Vec::new();
    for part in 0..2 {
        let url = signed["urls"][part].as_str().unwrap();
        let etag = put(url, part, PART).await;
        reports
            .push(json!({"upload": upload, "key": key, "part": part, "etag": etag, "len": PART}));
    }

    let not_running = progress("r-not-running", &upload, 2);
    let (status, refusal) = report_with(&serve, &a, json!(reports), not_running).await;
    assert_eq!(
        (status, &refusal["error"]["code"]),
        (409, &json!("run_not_running")),
        "{refusal}"
    );
    let others = progress(&run, &upload_b, 2);
    let (status, refusal) = report_with(&serve, &a, json!(reports), others).await;
    assert_eq!(
        (status, &refusal["error"]["code"]),
        (404, &json!("upload_not_found")),
        "{refusal}"
    );
    assert_eq!(recorded(&data, &upload).await, Vec::<(u64, u64)>::new());
    assert_eq!(ledger.recorded_partial_parts(&run).await.unwrap(), 0);

    let (status, answer) =
        report_with(&serve, &a, json!(reports), progress(&run, &upload, 2)).await;
    assert_eq!(status, 204, "{answer}");
    let part = PART as u64;
    assert_eq!(recorded(&data, &upload).await, vec![(0, part), (1, part)]);
    assert_eq!(ledger.recorded_partial_parts(&run).await.unwrap(), 2);
    let (status, answer) = report_with(&serve, &a, json!([]), progress(&run, &upload, 1)).await;
    assert_eq!(status, 204, "progress alone: {answer}");
    assert_eq!(ledger.recorded_partial_parts(&run).await.unwrap(), 1);

    let relaying = serve_relay(&server, &work.path().join("relay")).await;
    let c = copying(&relaying, "data-web-6").await;
    let (run_c, snapshot_c) = begin(&relaying, &c).await;
    let relay_ledger = drainer::Ledger::open(None, &work.path().join("relay"))
        .await
        .unwrap();
    let key_c = format!("volumes/shop/data-web-6/snapshots/{snapshot_c}/files/large");
    let upload_c = create_upload(&relaying, &c, &key_c).await;
    let (status, answer) =
        report_with(&relaying, &c, json!([]), progress(&run_c, &upload_c, 0)).await;
    assert_eq!(
        status, 204,
        "progress alone on a relaying drainer: {answer}"
    );
    let direct =
        json!([{"upload": upload_c, "key": key_c, "part": 0, "etag": "\"e\"", "len": PART}]);
    let (status, refusal) =
        report_with(&relaying, &c, direct, progress(&run_c, &upload_c, 1)).await;
    assert_eq!(
        (status, &refusal["error"]["code"]),
        (409, &json!("direct_parts_not_offered")),
        "{refusal}"
    );
    assert_eq!(
        relay_ledger.recorded_partial_parts(&run_c).await.unwrap(),
        0
    );
}

/// A drainer that relays every part, on the same moto.
async fn serve_relay(server: &S3Server, data: &Path) -> Serve {
    serve(
        server,
        data,
        "s3://bucket/relayed",
        &["--mover-data-path", "relay"],
    )
    .await
}

/// How many requests drainer answered on `route` (its `http_request_duration_seconds`
/// histogram's count, every method and status).
async fn requests(serve: &Serve, route: &str) -> u64 {
    let scrape = reqwest::get(format!("{}/metrics", serve.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let label = format!("route=\"{route}\"");
    scrape
        .lines()
        .filter(|l| l.starts_with("drainer_http_request_duration_seconds_count{"))
        .filter(|l| l.contains(&label))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
        .sum()
}

/// A mover copying large files into S3 signs their parts ahead in batches and reports them in
/// batches: drainer answers no per-part URL or report request, fewer batch requests than half
/// the parts for each, counts every part as direct, and the snapshot restores exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mover_signs_parts_ahead_and_reports_them_in_batches() {
    let server = S3Server::start().await;
    let work = tempfile::tempdir().unwrap();
    let mount = work.path().join("mount");
    std::fs::create_dir_all(&mount).unwrap();
    let sizes = [12 * PART + 3, 5 * PART];
    for (i, len) in sizes.iter().enumerate() {
        std::fs::write(mount.join(format!("large-{i}")), bytes(i as u64 + 40, *len)).unwrap();
    }
    std::fs::write(mount.join("small"), b"small").unwrap();
    let parts: u64 = sizes.iter().map(|l| l.div_ceil(PART) as u64).sum();
    let serve = serve(&server, &work.path().join("data"), "s3://bucket/ahead", &[]).await;
    let id = copying(&serve, "data-web-4").await;
    let mut mover = drainer();
    mover
        .args(["mover", "--drainer", &serve.url, "--drain", &id, "--source"])
        .arg(&mount)
        .env("DRAINER_TOKEN", TOKEN);
    run_ok(&mut mover).await;
    serve
        .wait_state(&id, "completed", Duration::from_secs(60))
        .await;

    let single_urls = requests(&serve, "/v1/drains/{id}/uploads/{upload}/{part}/url").await;
    let single_reports = requests(&serve, "/v1/drains/{id}/uploads/{upload}/{part}/stored").await;
    let relayed = requests(&serve, "/v1/drains/{id}/uploads/{upload}/{part}").await;
    assert_eq!(
        (single_urls, single_reports, relayed),
        (0, 0, 0),
        "per-part requests"
    );
    let progress_records = requests(&serve, "/v1/drains/{id}/run/{run}/partial").await;
    assert!(
        progress_records <= 3 * sizes.len() as u64,
        "{progress_records} requests on …/partial for {} large files: the progress after each \
         barrier travels with the barrier's report",
        sizes.len()
    );
    let signs = requests(&serve, "/v1/drains/{id}/uploads/{upload}/urls").await;
    let reports = requests(&serve, "/v1/drains/{id}/parts/stored").await;
    assert!(
        signs >= 2 && signs * 2 <= parts,
        "{signs} sign requests for {parts} parts of two files"
    );
    assert!(
        reports >= 2 && reports * 2 <= parts,
        "{reports} report requests for {parts} parts of two files"
    );
    let restored = work.path().join("restored");
    serve.restore_as_admin("shop/data-web-4", &restored).await;
    assert_eq!(differences(&mount, &restored), Vec::<String>::new());
}
