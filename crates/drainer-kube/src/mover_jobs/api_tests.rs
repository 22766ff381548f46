//! The mover Jobs' calls to the API, against a mock API server ([`crate::mock`]): the exact
//! Job an attempt creates, what each answer to that makes of the attempt (a refusal is
//! permanent, an outage transient, a Job in the way is deleted first), how an attempt adopts
//! the Job the ledger records and stops the drain's others, and how the Job of a dropped
//! attempt is deleted. Following a Job to its end is left to the kube-env tests.

use super::fixtures::{self, ID, URL};
use super::*;
use crate::mock::{Exchange, Scenario, caches, cluster, query_param, status};
use crate::watch::MANAGED_BY;
use drainer_core::store::StoreOptions;
use http::Method;
use serde_json::{Value, json};

const JOBS: &str = "/apis/batch/v1/namespaces/shop/jobs";
const NAMESPACE: &str = "/api/v1/namespaces/shop";
const ATTACHMENTS: &str = "/apis/storage.k8s.io/v1/volumeattachments";
const IMAGE: &str = "registry.example/drainer:1.2";

/// The executor, calling the API through `client`, whose watches hold `claim` and its
/// volume `pv-1` (with the directory of its ledger and store).
async fn movers(
    client: kube::Client,
    claim: PersistentVolumeClaim,
) -> (JobMovers, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(None, dir.path()).await.unwrap();
    let options = StoreOptions {
        timeout: Duration::from_secs(10),
        create: true,
        part_size: 8 << 20,
    };
    let url = format!("file://{}", dir.path().join("store").display());
    let store = Store::open(&url, &options).unwrap();
    let cluster = Cluster {
        claims: caches([claim]),
        volumes: caches([serde_json::from_value(json!({"metadata": {"name": "pv-1"}})).unwrap()]),
        ..cluster(client)
    };
    let flags = [
        "--service-url",
        URL,
        "--mover-image",
        IMAGE,
        "--mover-service-account",
        "drainer-mover",
    ];
    let args = fixtures::kube_args(&flags);
    let movers = JobMovers::new(cluster, ledger, store, &args, Duration::from_secs(60)).unwrap();
    (movers, dir)
}

/// A claim any node can mount (no VolumeAttachments to read).
fn shared_claim() -> PersistentVolumeClaim {
    fixtures::claim(&["ReadWriteMany"])
}

fn name() -> String {
    job_name(ID, 2)
}

/// A namespace labelled `labels`.
fn namespace(labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": labels}})
}

/// Mover Job `name` with UID `uid`, suspended or not, with `status`.
fn job(name: &str, uid: &str, suspend: bool, status: Value) -> Value {
    json!({"apiVersion": "batch/v1", "kind": "Job",
           "metadata": {"name": name, "namespace": "shop", "uid": uid,
                        "labels": {MANAGED_BY.0: MANAGED_BY.1, DRAIN_LABEL: ID}},
           "spec": {"suspend": suspend, "template": {}},
           "status": status})
}

fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": kind, "metadata": {}, "items": items})
}

/// The request creating this attempt's Job, answered `code` (a created Job, suspended, with
/// UID `new-uid`, or a `Status`).
fn creating(code: u16) -> Exchange {
    let answer = match code {
        201 => job(&name(), "new-uid", true, json!({})),
        _ => status(code, "Refused"),
    };
    Exchange::new(Method::POST, JOBS, code, answer)
}

/// The request listing the drain's mover Jobs, answered with `jobs`.
fn listing_jobs(jobs: Vec<Value>) -> Exchange {
    Exchange::new(Method::GET, JOBS, 200, list("JobList", jobs)).checking_query(|query| {
        assert_eq!(
            query_param(query, "labelSelector").as_deref(),
            Some(format!("app.kubernetes.io/managed-by=drainer,{DRAIN_LABEL}={ID}").as_str()),
        );
    })
}

/// The request resuming Job `name`.
fn resuming(name: &str) -> Exchange {
    Exchange::new(
        Method::PATCH,
        &format!("{JOBS}/{name}"),
        200,
        job(name, "any", false, json!({})),
    )
    .checking(|body| assert_eq!(body, &json!({"spec": {"suspend": false}})))
}

/// The request deleting Job `name`, only if its UID is still `uid`.
fn deleting(name: &str, uid: &'static str, code: u16) -> Exchange {
    Exchange::new(
        Method::DELETE,
        &format!("{JOBS}/{name}"),
        code,
        status(code, "Deleted"),
    )
    .checking(move |body| {
        assert_eq!(body["preconditions"]["uid"], uid, "{body}");
        assert_eq!(body["propagationPolicy"], "Background", "{body}");
    })
}

#[tokio::test]
async fn a_new_attempts_job_mounts_the_claim_read_only_runs_as_the_namespace_allows_and_is_pinned_where_its_volume_is_attached()
 {
    let attached = json!({"metadata": {"name": "csi-1"},
        "spec": {"attacher": "csi.example", "nodeName": "node-3",
                 "source": {"persistentVolumeName": "pv-1"}},
        "status": {"attached": true}});
    let (client, server) = Scenario(vec![
        Exchange::new(
            Method::GET,
            ATTACHMENTS,
            200,
            list("VolumeAttachmentList", vec![attached]),
        ),
        Exchange::new(
            Method::GET,
            NAMESPACE,
            200,
            namespace(json!({ENFORCE_LABEL: "restricted"})),
        ),
        creating(201).checking(|job| {
            let meta = &job["metadata"];
            assert_eq!(meta["name"], name());
            assert_eq!(meta["namespace"], "shop");
            assert_eq!(
                meta["labels"],
                json!({MANAGED_BY.0: MANAGED_BY.1, DRAIN_LABEL: ID, ATTEMPT_LABEL: "2"})
            );
            let spec = &job["spec"];
            assert_eq!(spec["suspend"], true, "no pod before its UID is recorded");
            assert_eq!(spec["backoffLimit"], 0);
            let template = &spec["template"];
            assert_eq!(
                template["metadata"]["labels"],
                json!({MANAGED_BY.0: MANAGED_BY.1, DRAIN_LABEL: ID})
            );
            let pod = &template["spec"];
            assert_eq!(pod["serviceAccountName"], "drainer-mover");
            assert_eq!(pod["automountServiceAccountToken"], false);
            assert_eq!(pod["restartPolicy"], "Never");
            assert_eq!(
                pod["volumes"][0],
                json!({"name": "data",
                       "persistentVolumeClaim": {"claimName": "data-web-4", "readOnly": true}})
            );
            let token = &pod["volumes"][1]["projected"]["sources"][0]["serviceAccountToken"];
            assert_eq!(token["audience"], "drainer");
            assert_eq!(
                pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
                    ["nodeSelectorTerms"],
                json!([{"matchFields": [
                    {"key": "metadata.name", "operator": "In", "values": ["node-3"]}
                ]}]),
                "where the volume is attached, not where its last pod ran"
            );
            assert_eq!(
                pod["securityContext"]["runAsNonRoot"], true,
                "the namespace enforces restricted"
            );
            let container = &pod["containers"][0];
            assert_eq!(container["image"], IMAGE);
            assert_eq!(
                container["args"],
                json!(["mover", "--drainer", URL, "--drain", ID, "--source", DATA_DIR,
                       "--token-file", format!("{TOKEN_DIR}/token")])
            );
            assert_eq!(
                container["env"],
                json!([{"name": "TMPDIR", "value": "/tmp"}, {"name": "DRAINER_LOG", "value": "info"}])
            );
            assert_eq!(
                container["volumeMounts"][0],
                json!({"name": "data", "mountPath": DATA_DIR, "readOnly": true})
            );
        }),
    ])
    .serve(Duration::from_secs(5));
    let claim = fixtures::claim(&["ReadWriteOnce"]);
    let (movers, _dir) = movers(client, claim).await;
    let (job, chosen) = movers.create(&fixtures::drain(), &name()).await.unwrap();
    assert_eq!(job.metadata.uid.as_deref(), Some("new-uid"));
    assert!(chosen.security.non_root(), "{:?}", chosen.security);
    server.await.unwrap();
}

#[tokio::test]
async fn a_mover_job_in_the_way_of_the_attempts_name_is_deleted_by_its_uid_and_waited_for_then_the_attempts_created_once()
 {
    let path = format!("{JOBS}/{}", name());
    let (client, server) = Scenario(vec![
        Exchange::new(Method::GET, NAMESPACE, 200, namespace(json!({}))),
        creating(409),
        Exchange::new(
            Method::GET,
            &path,
            200,
            job(&name(), "old-uid", false, json!({})),
        ),
        Exchange::new(Method::DELETE, &path, 200, status(200, "Success")).checking(|body| {
            assert_eq!(body["propagationPolicy"], "Background", "{body}");
            assert_eq!(body["preconditions"]["uid"], "old-uid", "{body}");
        }),
        Exchange::new(Method::GET, &path, 404, status(404, "NotFound")),
        creating(201),
    ])
    .serve(Duration::from_secs(5));
    let (movers, _dir) = movers(client, shared_claim()).await;
    let (job, _) = movers.create(&fixtures::drain(), &name()).await.unwrap();
    assert_eq!(job.metadata.uid.as_deref(), Some("new-uid"));
    server.await.unwrap();
}

#[tokio::test]
async fn a_job_in_the_way_that_is_not_drainers_is_left_alone_and_fails_the_attempt_for_good() {
    let path = format!("{JOBS}/{}", name());
    let theirs = json!({"apiVersion": "batch/v1", "kind": "Job",
                        "metadata": {"name": name(), "namespace": "shop", "uid": "their-uid",
                                     "labels": {"app": "backup"}},
                        "spec": {"template": {}}});
    let (client, server) = Scenario(vec![
        Exchange::new(Method::GET, NAMESPACE, 200, namespace(json!({}))),
        creating(409),
        Exchange::new(Method::GET, &path, 200, theirs),
    ])
    .serve(Duration::from_secs(5));
    let (movers, _dir) = movers(client, shared_claim()).await;
    let error = movers
        .create(&fixtures::drain(), &name())
        .await
        .map(drop)
        .unwrap_err();
    assert!(!error.is_transient(), "{error}");
    assert!(error.to_string().contains("is not drainer's"), "{error}");
    server.await.unwrap();
}

#[tokio::test]
async fn a_name_that_keeps_being_taken_fails_the_attempt_for_now_after_three_creates() {
    let path = format!("{JOBS}/{}", name());
    let mut exchanges = vec![Exchange::new(
        Method::GET,
        NAMESPACE,
        200,
        namespace(json!({})),
    )];
    for _ in 0..3 {
        exchanges.extend([
            creating(409),
            Exchange::new(Method::GET, &path, 404, status(404, "NotFound")),
        ]);
    }
    let (client, server) = Scenario(exchanges).serve(Duration::from_secs(5));
    let (movers, _dir) = movers(client, shared_claim()).await;
    let error = movers
        .create(&fixtures::drain(), &name())
        .await
        .map(drop)
        .unwrap_err();
    assert!(error.is_transient(), "{error}");
    assert!(error.to_string().contains("keeps existing"), "{error}");
    server.await.unwrap();
}

#[tokio::test]
async fn a_job_the_api_refuses_fails_the_attempt_for_good_and_an_api_outage_for_now() {
    for (code, transient) in [(403, false), (422, false), (429, true), (500, true)] {
        let (client, server) = Scenario(vec![
            Exchange::new(Method::GET, NAMESPACE, 200, namespace(json!({}))),
            creating(code),
        ])
        .serve(Duration::from_secs(5));
        let (movers, _dir) = movers(client, shared_claim()).await;
        let error = movers
            .create(&fixtures::drain(), &name())
            .await
            .map(drop)
            .unwrap_err();
        match &error {
            snapshot::Error::Executor {
                drain,
                reason,
                transient: is,
            } => {
                assert_eq!(drain, ID);
                assert_eq!(*is, transient, "HTTP {code}: {error}");
                let what = format!("create mover Job shop/{}", name());
                assert!(reason.contains(&what), "{reason}");
            }
            other => panic!("HTTP {code}: {other:?}"),
        }
        assert_eq!(error.is_transient(), transient, "HTTP {code}: {error}");
        server.await.unwrap();
    }
}

#[tokio::test]
async fn an_attempt_adopts_the_job_the_ledger_records_and_resumes_it_if_still_suspended() {
    let (client, server) = Scenario(vec![
        listing_jobs(vec![job(&name(), "recorded-uid", true, json!({}))]),
        resuming(&name()),
    ])
    .serve(Duration::from_secs(5));
    let (movers, _dir) = movers(client, shared_claim()).await;
    let drain = recorded(name(), "recorded-uid");
    let (mover, mut guard, chosen) = movers.start(&drain).await.unwrap();
    guard.disarm();
    assert_eq!((mover.name, mover.uid), (name(), "recorded-uid".to_owned()));
    assert!(
        chosen.is_none(),
        "an adopted Job's identity was chosen before"
    );
    server.await.unwrap();
}

#[tokio::test]
async fn a_job_merely_labelled_as_the_drains_is_stopped_before_the_attempt_creates_its_own() {
    let stray = job_name(ID, 1);
    let (client, server) = Scenario(vec![
        listing_jobs(vec![job(&stray, "stray-uid", false, json!({"active": 1}))]),
        deleting(&stray, "stray-uid", 200),
        Exchange::new(
            Method::GET,
            "/api/v1/namespaces/shop/pods",
            200,
            list("PodList", vec![]),
        )
        .checking_query(|query| {
            assert_eq!(
                query_param(query, "labelSelector").as_deref(),
                Some("batch.kubernetes.io/controller-uid=stray-uid")
            );
        }),
        Exchange::new(Method::GET, NAMESPACE, 200, namespace(json!({}))),
        creating(201),
        resuming(&name()),
    ])
    .serve(Duration::from_secs(5));
    let (movers, _dir) = movers(client, shared_claim()).await;
    // The ledger records a Job of that name, but not with that UID.
    let drain = recorded(stray.clone(), "recorded-uid");
    let (mover, mut guard, chosen) = movers.start(&drain).await.unwrap();
    guard.disarm();
    assert_eq!((mover.name, mover.uid), (name(), "new-uid".to_owned()));
    assert!(chosen.is_some());
    server.await.unwrap();
}

/// The clean-up of an attempt dropped while it ran Job `uid` (if known) of a drain the
/// ledger no longer has.
async fn settle(client: kube::Client, uid: Option<&str>) -> Settle {
    let dir = tempfile::tempdir().unwrap();
    Settle {
        client,
        ledger: Ledger::open(None, dir.path()).await.unwrap(),
        drain: ID.into(),
        owner: Some("replica-a".into()),
        namespace: "shop".into(),
        name: name(),
        uid: uid.map(str::to_owned),
    }
}

#[tokio::test]
async fn the_job_of_an_attempt_dropped_after_its_drain_ended_is_deleted_by_its_uid() {
    let (client, server) =
        Scenario(vec![deleting(&name(), "new-uid", 200)]).serve(Duration::from_secs(5));
    settle(client, Some("new-uid")).await.run().await;
    server.await.unwrap();
}

#[tokio::test]
async fn an_attempt_dropped_before_its_job_came_back_deletes_the_job_of_its_name_only_if_it_is_the_drains()
 {
    let (client, server) = Scenario(vec![
        Exchange::new(
            Method::GET,
            &format!("{JOBS}/{}", name()),
            200,
            job(&name(), "new-uid", true, json!({})),
        ),
        deleting(&name(), "new-uid", 200),
    ])
    .serve(Duration::from_secs(5));
    settle(client, None).await.run().await;
    server.await.unwrap();
    let someone_elses = json!({"metadata": {"name": name(), "namespace": "shop", "uid": "other-uid",
                                            "labels": {DRAIN_LABEL: "d-other"}},
                               "spec": {"template": {}}});
    let (client, server) = Scenario(vec![Exchange::new(
        Method::GET,
        &format!("{JOBS}/{}", name()),
        200,
        someone_elses,
    )])
    .serve(Duration::from_secs(5));
    settle(client, None).await.run().await;
    server.await.unwrap();
}

#[tokio::test]
async fn a_job_gone_or_replaced_before_its_deletion_is_left_alone_and_an_outage_reported() {
    for (code, ok) in [
        (200, true),
        (404, true),
        (409, true),
        (500, false),
        (403, false),
    ] {
        let (client, server) =
            Scenario(vec![deleting(&name(), "new-uid", code)]).serve(Duration::from_secs(5));
        let mover = Mover {
            namespace: "shop".into(),
            name: name(),
            uid: "new-uid".into(),
        };
        let deleted = delete_job(&client, &mover).await;
        assert_eq!(deleted.is_ok(), ok, "HTTP {code}: {deleted:?}");
        server.await.unwrap();
    }
}

/// The fixtures' drain with mover Job `name` (UID `uid`) recorded for its attempt.
fn recorded(name: String, uid: &str) -> Drain {
    let drain = fixtures::drain();
    let facts = drain
        .facts
        .clone()
        .with(crate::facts::MOVER_JOB, Some(name));
    Drain {
        facts: facts.with(crate::facts::MOVER_JOB_UID, Some(uid)),
        ..drain
    }
}
