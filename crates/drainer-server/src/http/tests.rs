//! Every route of the API with every kind of caller, through the real router served on
//! loopback: what the policy allows succeeds (for a mover, a real `drainer mover` run), the
//! rest is refused with `403 forbidden`, and no route is left out. Operators (users of the
//! cluster without a pod) get what a fake RBAC grants them: everything (`olga`), reading in
//! namespace `shop` (`vic`), nothing (`sam`).

use super::{AppState, RouteSpec, Shared, route_table, router};
use crate::auth::{
    self, Action, Authority, Caller, Denied, Permission, PodIdentity, Subject, Workload,
};
use drainer_core::ledger::{AttemptOutcome, Ledger};
use drainer_core::lifecycle::AfterFailure;
use drainer_core::store::{Store, StoreOptions};
use drainer_core::volume::VolumeId;
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const JOB_USER: &str = "system:serviceaccount:shop:drain-job";

/// Tokens named after the caller they stand for.
#[derive(Debug, Default)]
struct Callers {
    mover_drain: Mutex<String>,
}

#[async_trait::async_trait]
impl Authority for Callers {
    async fn authenticate(&self, token: &str) -> Result<Caller, Denied> {
        let shop = |user: &str, pod: Option<PodIdentity>| {
            Caller::Workload(Workload {
                namespace: "shop".into(),
                user: user.into(),
                groups: vec![],
                pod,
            })
        };
        Ok(match token {
            "admin" => Caller::Admin,
            "pod" => shop(
                "system:serviceaccount:shop:web",
                Some(PodIdentity {
                    name: "web-4".into(),
                    uid: "uid-web-4".into(),
                    mounts: vec!["data-web-4".into()],
                }),
            ),
            "job" => shop(JOB_USER, None),
            "olga" | "vic" | "sam" | "rita" => Caller::User(Subject {
                user: token.into(),
                groups: vec!["system:authenticated".into()],
            }),
            "mover" => Caller::Mover {
                drain: self.mover_drain.lock().unwrap().clone(),
            },
            "stranger" => Caller::Mover {
                drain: "d-00000000000000000-00000000".into(),
            },
            _ => return Err(Denied::Invalid),
        })
    }

    /// The Job's ServiceAccount has an RBAC grant to hand off in `shop`.
    async fn may_hand_off(&self, workload: &Workload, volumes: &[VolumeId]) -> Result<(), Denied> {
        if workload.pod.is_none() && workload.user == JOB_USER {
            return auth::in_namespace(workload, volumes);
        }
        auth::own_mounts(workload, volumes)
    }

    /// A fake RBAC: `olga` may do anything anywhere; `vic` may `list` and `get` drainer's
    /// resources in `shop`; `rita` may `create` restores in `shop`; nobody else anything.
    async fn granted(&self, subject: &Subject, permission: &Permission) -> Result<bool, Denied> {
        Ok(match subject.user.as_str() {
            "olga" => true,
            "rita" => {
                (permission.verb, permission.resource) == ("create", "restores")
                    && permission.namespace.as_deref() == Some("shop")
            }
            "vic" => {
                matches!(permission.verb, "list" | "get")
                    && permission.namespace.as_deref() == Some("shop")
            }
            _ => false,
        })
    }

    /// The Job's ServiceAccount has an RBAC grant to restore in `shop`.
    async fn may_restore(&self, workload: &Workload, volume: &VolumeId) -> Result<(), Denied> {
        if workload.pod.is_none() && workload.user == JOB_USER {
            return auth::in_namespace(workload, std::slice::from_ref(volume));
        }
        auth::restore_own_mount(workload, volume)
    }
}

struct Api {
    url: String,
    client: reqwest::Client,
}

impl Api {
    async fn call(
        &self,
        token: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .client
            .request(method, format!("{}/v1{path}", self.url))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn handoff(&self, token: &str, pvc: &str) -> (u16, Value) {
        let body = json!({"namespace": "shop", "pvcs": [pvc]});
        self.call(token, Method::POST, "/handoffs", Some(body))
            .await
    }
}

fn drain_id(answer: &Value) -> String {
    answer["drains"][0]["id"].as_str().unwrap().to_owned()
}

struct World {
    api: Api,
    ledger: Ledger,
    store_dir: std::path::PathBuf,
    callers: Arc<Callers>,
    health: drainer_core::health::Health,
    _dir: tempfile::TempDir,
}

async fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(None, &dir.path().join("data")).await.unwrap();
    let store_dir = dir.path().join("store");
    let options = StoreOptions {
        timeout: Duration::from_secs(30),
        create: true,
        part_size: 8 << 20,
    };
    let store = Store::open(&format!("file://{}", store_dir.display()), &options).unwrap();
    let callers = Arc::new(Callers::default());
    let health = drainer_core::health::Health::default();
    let state = AppState::new(Shared {
        ledger: ledger.clone(),
        store: store.clone(),
        auth: Arc::clone(&callers) as Arc<dyn Authority>,
        intake: Arc::new(crate::intake::Local),
        notifier: Arc::new(crate::notify::Log),
        metrics: Default::default(),
        board: Default::default(),
        sweeper: Arc::new(crate::sweep::LocalSweeper {
            ledger: ledger.clone(),
            store: store.clone(),
            root: dir.path().join("volumes"),
            max_attempts: 3,
        }),
        max_attempts: 3,
        compression: Default::default(),
        ready: AtomicBool::new(true),
        health: health.clone(),
        per_caller: Default::default(),
        body_budget: super::body_budget::BodyBudget::for_movers(super::body_budget::DEFAULT_BUDGET),
        kept: Default::default(),
        lives: Default::default(),
        copying: Default::default(),
        direct_parts: false,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(axum::serve(listener, router(state)).into_future());
    World {
        api: Api {
            url,
            client: reqwest::Client::new(),
        },
        ledger,
        store_dir,
        callers,
        health,
        _dir: dir,
    }
}

/// The drains the matrix works on: `failed` (for retries), `mine` (the pod's, being copied by
/// the mover), `job` (the Job's) and `queued` (an operator's, for cancels).
struct Drains {
    failed: String,
    mine: String,
    queued: String,
}

async fn drains(w: &World) -> Drains {
    let (s, failed) = w.api.handoff("admin", "failed-vol").await;
    assert_eq!(s, 202, "{failed}");
    let failed = drain_id(&failed);
    let claimed = w
        .ledger
        .claim_drain("test", Duration::from_secs(600))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claimed.id, failed);
    let gave_up = AttemptOutcome::Failed {
        error: "broken".into(),
        after: AfterFailure::GiveUp,
    };
    assert!(
        w.ledger
            .end_attempt(&failed, "test", &gave_up)
            .await
            .unwrap()
    );
    let (s, mine) = w.api.handoff("pod", "data-web-4").await;
    assert_eq!(s, 202, "{mine}");
    let mine = drain_id(&mine);
    let claimed = w
        .ledger
        .claim_drain("test", Duration::from_secs(600))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claimed.id, mine);
    *w.callers.mover_drain.lock().unwrap() = mine.clone();
    let (s, job) = w.api.handoff("job", "data-job").await;
    assert_eq!(s, 202, "{job}");
    let (s, queued) = w.api.handoff("admin", "admin-vol").await;
    assert_eq!(s, 202, "{queued}");
    Drains {
        failed,
        mine,
        queued: drain_id(&queued),
    }
}

/// The path of `route` with its parameters filled in for `drains`.
fn path_of(route: &RouteSpec, drains: &Drains) -> String {
    let id = match route.action {
        Action::RetryDrain => &drains.failed,
        Action::CancelDrain | Action::AbandonDrain => &drains.queued,
        _ => &drains.mine,
    };
    route
        .path
        .replace("{id}", id)
        .replace("{run}", "r-0")
        .replace("{upload}", "u-0")
        .replace("{part}", "0")
        .replace("{snapshot}", "s-none")
        .replace("{namespace}", "shop")
        .replace("{pvc}", "data-web-4")
}

fn method_of(route: &RouteSpec) -> Method {
    route.method.to_uppercase().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_refuses_every_caller_the_policy_does_not_allow() {
    let w = world().await;
    let d = drains(&w).await;
    let table = route_table_for_test().await;
    let mut probed = HashSet::new();
    for route in &table {
        for (token, kind) in [
            ("pod", auth::CallerKind::Workload),
            ("job", auth::CallerKind::Workload),
            ("mover", auth::CallerKind::Mover),
            ("stranger", auth::CallerKind::Mover),
        ] {
            let (status, body) = w
                .api
                .call(token, method_of(route), &path_of(route, &d), None)
                .await;
            let reach = route.action.allows(kind);
            let own = matches!(
                (route.action, token),
                (Action::ReadDrain, "pod" | "mover")
                    | (Action::Stream, "mover")
                    | (
                        Action::Handoff
                            | Action::ListDrains
                            | Action::Restore
                            | Action::ListSnapshots,
                        "pod" | "job"
                    )
            );
            let route_name = format!("{} {} as {token}", route.method, route.path);
            if reach == auth::Reach::None || !own {
                assert_eq!(
                    (status, body["error"]["code"].as_str()),
                    (403, Some("forbidden")),
                    "{route_name}: {body}"
                );
            } else {
                assert_ne!(status, 403, "{route_name} is allowed: {body}");
                assert_ne!(status, 401, "{route_name}: {body}");
            }
        }
        for (token, granted) in [
            ("olga", true),
            // Reading in shop: the pod's drain and its volume's snapshots; listings of every
            // namespace are not granted to vic.
            (
                "vic",
                matches!(route.action, Action::ReadDrain | Action::ListSnapshots),
            ),
            ("sam", false),
        ] {
            let (status, body) = w
                .api
                .call(token, method_of(route), &path_of(route, &d), None)
                .await;
            let route_name = format!("{} {} as {token}", route.method, route.path);
            let reach = route.action.allows(auth::CallerKind::User);
            if reach == auth::Reach::None {
                assert_eq!(status, 403, "{route_name}: {body}");
                assert!(body["error"]["missing"].is_null(), "{route_name}: {body}");
            } else if granted {
                assert!(
                    ![401, 403, 500].contains(&status),
                    "{route_name}: {status} {body}"
                );
            } else {
                let (verb, resource) = route.action.permission().unwrap();
                assert_eq!(status, 403, "{route_name}: {body}");
                let missing = &body["error"]["missing"];
                assert_eq!(
                    (missing["verb"].as_str(), missing["resource"].as_str()),
                    (Some(verb), Some(resource)),
                    "{route_name}: {body}"
                );
                assert_eq!(missing["group"], "drainer.io", "{route_name}");
            }
        }
        let (status, body) = w
            .api
            .call("admin", method_of(route), &path_of(route, &d), None)
            .await;
        assert!(
            ![401, 403, 500].contains(&status),
            "{} {} as admin: {status} {body}",
            route.method,
            route.path
        );
        probed.insert((route.method, route.path));
    }
    assert_eq!(probed.len(), table.len(), "every route was called");
}

/// The table, as the router has it.
async fn route_table_for_test() -> Vec<RouteSpec> {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(None, &dir.path().join("table")).await.unwrap();
    let options = StoreOptions {
        timeout: Duration::from_secs(5),
        create: true,
        part_size: 8 << 20,
    };
    let store = Store::open(
        &format!("file://{}", dir.path().join("s").display()),
        &options,
    )
    .unwrap();
    let state = AppState::new(Shared {
        ledger: ledger.clone(),
        store: store.clone(),
        auth: Arc::new(Callers::default()),
        intake: Arc::new(crate::intake::Local),
        notifier: Arc::new(crate::notify::Log),
        metrics: Default::default(),
        board: Default::default(),
        sweeper: Arc::new(crate::sweep::LocalSweeper {
            ledger: ledger.clone(),
            store: store.clone(),
            root: dir.path().join("v"),
            max_attempts: 1,
        }),
        max_attempts: 1,
        compression: Default::default(),
        ready: AtomicBool::new(true),
        health: Default::default(),
        per_caller: Default::default(),
        body_budget: super::body_budget::BodyBudget::for_movers(super::body_budget::DEFAULT_BUDGET),
        kept: Default::default(),
        lives: Default::default(),
        copying: Default::default(),
        direct_parts: false,
    });
    route_table(&state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_act_within_what_rbac_grants_and_are_named_in_the_history() {
    let w = world().await;
    let d = drains(&w).await;
    let missing = |body: &Value| body["error"]["missing"].clone();
    // vic reads shop: its listing, one drain; no other namespace, not every one.
    let (s, b) = w
        .api
        .call("vic", Method::GET, "/drains?namespace=shop", None)
        .await;
    assert_eq!(
        (s, b["drains"].as_array().map(Vec::len)),
        (200, Some(4)),
        "{b}"
    );
    for (query, namespace) in [
        ("?namespace=other", json!("other")),
        ("?namespace=shop&volume=other/data", json!("other")),
        ("", Value::Null),
        ("?state=queued", Value::Null),
    ] {
        let (s, b) = w
            .api
            .call("vic", Method::GET, &format!("/drains{query}"), None)
            .await;
        assert_eq!(s, 403, "{query}: {b}");
        assert_eq!(
            missing(&b),
            json!({"group": "drainer.io", "verb": "list", "resource": "drains",
                   "namespace": namespace, "name": null}),
            "{query}"
        );
    }
    // Orphans: shop's, not every namespace's.
    let (s, b) = w
        .api
        .call("vic", Method::GET, "/orphans?namespace=shop", None)
        .await;
    assert_ne!(s, 403, "{b}");
    let (s, b) = w.api.call("vic", Method::GET, "/orphans", None).await;
    assert_eq!(
        (s, missing(&b)["resource"].as_str()),
        (403, Some("orphans"))
    );
    // Reclaims likewise: shop's, not every namespace's.
    let (s, b) = w
        .api
        .call("vic", Method::GET, "/reclaims?namespace=shop", None)
        .await;
    assert_eq!((s, b["reclaims"].is_array()), (200, true), "{b}");
    let (s, b) = w.api.call("vic", Method::GET, "/reclaims", None).await;
    assert_eq!(
        (
            s,
            missing(&b)["verb"].as_str(),
            missing(&b)["resource"].as_str()
        ),
        (403, Some("list"), Some("reclaims"))
    );
    // vic may not retry: the refusal names the verb, the drain and its namespace.
    let retry = format!("/drains/{}/retry", d.failed);
    let (s, b) = w.api.call("vic", Method::POST, &retry, None).await;
    assert_eq!(s, 403, "{b}");
    assert_eq!(
        missing(&b),
        json!({"group": "drainer.io", "verb": "retry", "resource": "drains",
               "namespace": "shop", "name": d.failed})
    );
    let unchanged = w.ledger.drain(&d.failed).await.unwrap().unwrap();
    assert_eq!(unchanged.state, drainer_core::lifecycle::DrainState::Failed);
    // An unknown drain: 403 to vic, whether or not it exists; 404 to olga (granted
    // cluster-wide).
    let unknown = "/drains/d-99999999999999999-00000000";
    let (s, b) = w.api.call("vic", Method::GET, unknown, None).await;
    assert_eq!((s, missing(&b)["namespace"].clone()), (403, Value::Null));
    assert_eq!(w.api.call("olga", Method::GET, unknown, None).await.0, 404);
    // olga retries and cancels; the history names her, not "admin".
    let (s, b) = w.api.call("olga", Method::POST, &retry, None).await;
    assert_eq!(s, 200, "{b}");
    let cancel = format!("/drains/{}/cancel", d.queued);
    let (s, b) = w.api.call("olga", Method::POST, &cancel, None).await;
    assert_eq!(s, 200, "{b}");
    for (id, what) in [
        (&d.failed, "retried by user:olga"),
        (&d.queued, "cancelled by user:olga"),
    ] {
        let (_, b) = w
            .api
            .call("vic", Method::GET, &format!("/drains/{id}"), None)
            .await;
        let history = b["history"].as_array().unwrap();
        assert!(history.iter().any(|e| e["message"] == what), "{what}: {b}");
    }
    // sam, authenticated but granted nothing, gets nothing.
    for (method, path) in [
        (Method::GET, "/drains?namespace=shop".to_owned()),
        (Method::GET, format!("/drains/{}", d.mine)),
        (Method::POST, "/sweeps".to_owned()),
    ] {
        assert_eq!(
            w.api.call("sam", method, &path, None).await.0,
            403,
            "{path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_each_caller_may_do_succeeds() {
    let w = world().await;
    let d = drains(&w).await;
    // Handoffs: a pod only what it mounts, in its namespace; a Job with its grant.
    assert_eq!(w.api.handoff("pod", "data-web-3").await.0, 403);
    let elsewhere = json!({"namespace": "other", "pvcs": ["data-web-4"]});
    let (s, b) = w
        .api
        .call("pod", Method::POST, "/handoffs", Some(elsewhere))
        .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{b}"
    );
    assert_eq!(w.api.handoff("pod", "data-web-4").await.0, 200, "a repeat");
    assert_eq!(w.api.handoff("job", "data-web-3").await.0, 202);
    // Listings show a workload the drains it asked for, and nothing else.
    let listed = |body: &Value| -> HashSet<String> {
        body["drains"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["volume"].as_str().unwrap().to_owned())
            .collect()
    };
    let (s, pods) = w.api.call("pod", Method::GET, "/drains", None).await;
    assert_eq!(
        (s, listed(&pods)),
        (200, HashSet::from(["shop/data-web-4".to_owned()]))
    );
    let (_, jobs) = w.api.call("job", Method::GET, "/drains", None).await;
    assert_eq!(
        listed(&jobs),
        HashSet::from(["shop/data-job".to_owned(), "shop/data-web-3".to_owned()])
    );
    let (_, all) = w.api.call("admin", Method::GET, "/drains", None).await;
    assert_eq!(listed(&all).len(), 5);
    // Reading: the pod and the mover read the pod's drain; nobody else's.
    for token in ["pod", "mover", "admin"] {
        let (s, b) = w
            .api
            .call(token, Method::GET, &format!("/drains/{}", d.mine), None)
            .await;
        assert_eq!(s, 200, "{token}: {b}");
    }
    for token in ["pod", "mover", "job"] {
        let (s, _) = w
            .api
            .call(token, Method::GET, &format!("/drains/{}", d.queued), None)
            .await;
        assert_eq!(s, 403, "{token}");
        let (s, _) = w
            .api
            .call(
                token,
                Method::GET,
                "/drains/d-99999999999999999-00000000",
                None,
            )
            .await;
        assert_eq!(
            s, 403,
            "{token}: an unknown drain looks like someone else's"
        );
    }
    // The mover streams its drain: a real `drainer mover`, small files and a large one.
    let source = tempfile::tempdir().unwrap();
    std::fs::write(source.path().join("small"), b"hello").unwrap();
    let large: Vec<u8> = (0..20 << 20).map(|i: u32| (i % 251) as u8).collect();
    std::fs::write(source.path().join("large"), &large).unwrap();
    /// `drainer mover`'s flags, as its command line gives them.
    #[derive(clap::Parser)]
    struct Mover {
        #[command(flatten)]
        args: drainer_clients::args::MoverArgs,
    }
    let mover = <Mover as clap::Parser>::try_parse_from([
        "mover",
        "--drainer",
        &w.api.url,
        "--drain",
        &d.mine,
        "--token",
        "mover",
        "--source",
        source.path().to_str().unwrap(),
    ])
    .unwrap();
    drainer_clients::mover::run(mover.args).await.unwrap();
    let volume = VolumeId::new("shop", "data-web-4").unwrap();
    let store = Store::open(
        &format!("file://{}", w.store_dir.display()),
        &StoreOptions {
            timeout: Duration::from_secs(30),
            create: false,
            part_size: 8 << 20,
        },
    )
    .unwrap();
    let restored = tempfile::tempdir().unwrap();
    let target = restored.path().join("r");
    drainer_core::snapshot::restore(
        &store,
        &volume,
        &drainer_core::snapshot::SnapshotSelector::Latest,
        &target,
        &drainer_core::snapshot::RestoreOptions {
            concurrency: 4,
            force: false,
            part_size: 8 << 20,
            buffer_bytes: 48 << 20,
        },
    )
    .await
    .unwrap();
    assert_eq!(std::fs::read(target.join("large")).unwrap(), large);
    assert_eq!(std::fs::read(target.join("small")).unwrap(), b"hello");
    // The stranger (a mover of another drain) may not read what this one wrote.
    let (s, _) = w
        .api
        .call(
            "stranger",
            Method::POST,
            &format!("/drains/{}/run", d.mine),
            None,
        )
        .await;
    assert_eq!(s, 403);
    // Operators: retry, cancel, sweep, snapshots.
    let retry = format!("/drains/{}/retry", d.failed);
    assert_eq!(w.api.call("admin", Method::POST, &retry, None).await.0, 200);
    let cancel = format!("/drains/{}/cancel", d.queued);
    assert_eq!(
        w.api.call("admin", Method::POST, &cancel, None).await.0,
        200
    );
    assert_eq!(
        w.api.call("admin", Method::POST, "/sweeps", None).await.0,
        200
    );
    let (s, b) = w
        .api
        .call("admin", Method::POST, "/sweeps?dry_run=true", None)
        .await;
    assert_eq!(
        (s, &b["dry_run"], &b["drains"]),
        (200, &json!(true), &json!([])),
        "{b}"
    );
    let (s, b) = w.api.call("admin", Method::GET, "/orphans", None).await;
    assert_eq!((s, b["orphans"].is_array()), (200, true), "{b}");
    let (s, b) = w.api.call("admin", Method::GET, "/reclaims", None).await;
    assert_eq!((s, b["reclaims"].is_array()), (200, true), "{b}");
    let (s, b) = w
        .api
        .call(
            "admin",
            Method::GET,
            "/volumes/shop/data-web-4/snapshots",
            None,
        )
        .await;
    assert_eq!(
        (s, b["snapshots"].as_array().map(Vec::len)),
        (200, Some(1)),
        "{b}"
    );
    assert_eq!(b["latest"], b["snapshots"][0]["snapshot"], "{b}");
    assert_eq!(
        b["snapshots"][0]["drain"]["id"].as_str(),
        Some(d.mine.as_str()),
        "the snapshot names the drain that made it: {b}"
    );
    // Restores through the API: the pod restores the claim it mounts, and nothing else.
    restores_through_the_api(&w, &large).await;
}

/// `drainer restore --drainer` as the pod: what the mover stored comes back exactly; another
/// claim, another namespace and a mover are refused before anything is written.
async fn restores_through_the_api(w: &World, large: &[u8]) {
    let restore = |token: &str, volume: &str, dest: &std::path::Path| {
        let client = drainer_clients::args::ClientArgs {
            url: w.api.url.clone(),
            token_file: "/nonexistent".into(),
            token: Some(token.to_owned()),
            trust: Default::default(),
        };
        let volume: VolumeId = volume.parse().unwrap();
        let dest = dest.to_owned();
        async move {
            let options = drainer_core::snapshot::RestoreOptions {
                concurrency: drainer_clients::remote::RESTORE_CONCURRENCY,
                force: false,
                part_size: 8 << 20,
                buffer_bytes: 48 << 20,
            };
            let timeout = std::time::Duration::from_secs(30);
            let remote = drainer_clients::remote::RemoteVolume::new(&client, &volume, timeout)?;
            let progress = drainer_core::snapshot::Progress::default();
            drainer_clients::remote::restore_with_progress(
                &remote,
                &drainer_core::snapshot::SnapshotSelector::Latest,
                &dest,
                &options,
                std::time::Duration::from_secs(30),
                &progress,
            )
            .await
            .map(|_| progress.view())
        }
    };
    let dir = tempfile::tempdir().unwrap();
    // The pod restores the claim it mounts; operators what RBAC grants them. Every file in
    // place is counted, against the snapshot's totals.
    for token in ["pod", "olga", "rita"] {
        let dest = dir.path().join(format!("through-api-{token}"));
        let progress = restore(token, "shop/data-web-4", &dest).await.unwrap();
        let bytes = large.len() as u64 + 5;
        assert_eq!(
            (progress.files_done, progress.bytes_done),
            (2, bytes),
            "{progress:?}"
        );
        assert_eq!(
            (progress.files_total, progress.bytes_total),
            (Some(2), Some(bytes)),
            "{progress:?}"
        );
        assert_eq!(std::fs::read(dest.join("large")).unwrap(), large);
        assert_eq!(std::fs::read(dest.join("small")).unwrap(), b"hello");
    }
    for (token, volume) in [
        ("pod", "shop/data-web-3"),
        ("pod", "other/data-web-4"),
        ("mover", "shop/data-web-4"),
        ("nobody", "shop/data-web-4"),
        ("vic", "shop/data-web-4"),
        ("rita", "other/data-web-4"),
    ] {
        let refused = dir
            .path()
            .join(format!("refused-{token}-{}", volume.replace('/', "-")));
        let err = restore(token, volume, &refused).await.expect_err(volume);
        let line = format!("{err:#}");
        assert!(
            line.contains("403") || line.contains("401"),
            "{token} {volume}: {line}"
        );
        assert!(!refused.exists(), "{token} {volume}: nothing written");
    }
    restores_are_reported(w).await;
    earlier_reads_need_their_own_grant(w).await;
    // Ranged reads answer 206 with the object's size; a range outside it 416.
    let key = {
        let (_, b) = w
            .api
            .call(
                "pod",
                Method::GET,
                "/volumes/shop/data-web-4/snapshots",
                None,
            )
            .await;
        format!("snapshots/{}/files/large", b["latest"].as_str().unwrap())
    };
    let url = format!("{}/v1/volumes/shop/data-web-4/objects", w.api.url);
    let ranged = w
        .api
        .client
        .get(&url)
        .query(&[("key", &key)])
        .bearer_auth("pod")
        .header("Range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(ranged.status().as_u16(), 206);
    assert_eq!(
        ranged.headers()["content-range"].to_str().unwrap(),
        format!("bytes 10-19/{}", large.len())
    );
    assert_eq!(ranged.bytes().await.unwrap(), &large[10..20]);
    let outside = w
        .api
        .client
        .get(&url)
        .query(&[("key", &key)])
        .bearer_auth("pod")
        .header("Range", format!("bytes={}-", large.len() + 10))
        .send()
        .await
        .unwrap();
    assert_eq!(outside.status().as_u16(), 416);
    for (bad, status) in [("../data-web-3/latest", 400), ("volumes/shop/x", 403)] {
        let answer = w
            .api
            .client
            .get(&url)
            .query(&[("key", bad)])
            .bearer_auth("pod")
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status().as_u16(), status, "{bad}");
    }
    batch_reads(w, &key, large).await;
}

/// A restore reported done: recorded as one into the claim for the pod that mounts it
/// (again: the same answer), not for an operator (`rita`, restoring elsewhere), `404` for a
/// snapshot the volume does not have, `403` for a claim the pod does not mount.
async fn restores_are_reported(w: &World) {
    let (_, listing) = w
        .api
        .call(
            "pod",
            Method::GET,
            "/volumes/shop/data-web-4/snapshots",
            None,
        )
        .await;
    let latest = listing["latest"].as_str().unwrap();
    let report = |token: &'static str, volume: &'static str, snapshot: String| async move {
        let path = format!("/volumes/{volume}/snapshots/{snapshot}/restored");
        w.api.call(token, Method::POST, &path, None).await
    };
    for _ in 0..2 {
        let (s, b) = report("pod", "shop/data-web-4", latest.to_owned()).await;
        assert_eq!((s, &b), (200, &json!({"recorded": true})));
    }
    let (s, b) = report("rita", "shop/data-web-4", latest.to_owned()).await;
    assert_eq!((s, &b["recorded"]), (200, &json!(false)), "{b}");
    assert!(
        b["why"].as_str().unwrap().contains("mounts the claim"),
        "{b}"
    );
    let missing = "s-20000101T000000Z-00000000".to_owned();
    let (s, b) = report("pod", "shop/data-web-4", missing).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (404, Some("snapshot_not_found")),
        "{b}"
    );
    let (s, _) = report("pod", "shop/data-web-3", latest.to_owned()).await;
    assert_eq!(s, 403);
}

/// `earlier=true` (reading an earlier life of the namespace) takes RBAC's `read-earlier` on
/// the claim's snapshots besides `create` on restores: `rita` (restores only) is refused,
/// naming it, and `olga` (everything) reads; a pod never may.
async fn earlier_reads_need_their_own_grant(w: &World) {
    let (_, listed) = w
        .api
        .call(
            "pod",
            Method::GET,
            "/volumes/shop/data-web-4/snapshots",
            None,
        )
        .await;
    let key = format!(
        "snapshots/{}/files/small",
        listed["latest"].as_str().unwrap()
    );
    let url = format!("{}/v1/volumes/shop/data-web-4/objects", w.api.url);
    let earlier = |token: &'static str| {
        w.api
            .client
            .get(&url)
            .query(&[("key", key.as_str()), ("earlier", "true")])
            .bearer_auth(token)
            .send()
    };
    let refused: Value = {
        let answer = earlier("rita").await.unwrap();
        assert_eq!(answer.status().as_u16(), 403);
        answer.json().await.unwrap()
    };
    let missing = &refused["error"]["missing"];
    assert_eq!(
        (missing["verb"].as_str(), missing["resource"].as_str()),
        (Some("read-earlier"), Some("snapshots")),
        "{refused}"
    );
    let read = earlier("olga").await.unwrap();
    assert_eq!(read.status().as_u16(), 200);
    assert_eq!(read.bytes().await.unwrap(), &b"hello"[..]);
    assert_eq!(earlier("pod").await.unwrap().status().as_u16(), 403);
}

/// `POST …/objects/batch`: each read answered in order (bytes and object size, or why not);
/// a batch with one key outside the volume, a range too long or too many reads is refused
/// whole; other callers are refused.
async fn batch_reads(w: &World, key: &str, large: &[u8]) {
    use drainer_core::protocol::batch::{ReadOutcome, decode_reads};
    let url = format!("{}/v1/volumes/shop/data-web-4/objects/batch", w.api.url);
    let send = |token: &'static str, body: Value| {
        w.api
            .client
            .post(&url)
            .bearer_auth(token)
            .json(&body)
            .send()
    };
    let missing = key.replace("files/large", "files/nothing");
    let dir = key.replace("files/large", "files");
    let size = large.len() as u64;
    let reads = json!({"reads": [
        {"key": key, "start": 5, "end": 9},
        {"key": missing, "start": 0, "end": 3},
        {"key": key, "start": 0, "end": 0},
        {"key": key, "start": size - 3, "end": size + 5},
        {"key": key, "start": size + 1, "end": size + 4},
        {"key": dir, "start": 0, "end": 3},
    ]});
    let answer = send("pod", reads.clone()).await.unwrap();
    assert_eq!(answer.status().as_u16(), 200);
    let outcomes = decode_reads(answer.bytes().await.unwrap(), 6).unwrap();
    let data = |outcome: &ReadOutcome| match outcome {
        ReadOutcome::Data { size, bytes } => Some((*size, bytes.len(), bytes.to_vec())),
        _ => None,
    };
    assert_eq!(data(&outcomes[0]), Some((size, 4, large[5..9].to_vec())));
    assert!(matches!(&outcomes[1], ReadOutcome::NotFound(why) if why.contains("nothing")));
    assert_eq!(
        data(&outcomes[2]),
        Some((size, 0, vec![])),
        "no bytes asked for"
    );
    let tail = large[large.len() - 3..].to_vec();
    assert_eq!(data(&outcomes[3]), Some((size, 3, tail)), "cut at the end");
    assert!(
        matches!(&outcomes[4], ReadOutcome::Failed(why) if why.contains("past")),
        "{:?}",
        outcomes[4]
    );
    assert!(
        matches!(&outcomes[5], ReadOutcome::NotFound(_)),
        "a directory"
    );
    let read = |key: &str, end: usize| json!({"key": key, "start": 0, "end": end});
    let refused = [
        (
            json!({"reads": [read(key, 4), read("volumes/shop/x", 4)]}),
            403,
        ),
        (json!({"reads": [read("../data-web-3/latest", 4)]}), 400),
        (json!({"reads": [read(key, 256 * 1024 + 1)]}), 400),
        (json!({"reads": [{"key": key, "start": 9, "end": 5}]}), 400),
        (json!({"reads": vec![read(key, 1); 65]}), 400),
        (json!({"reads": [], "extra": 1}), 400),
    ];
    for (body, status) in refused {
        let answer = send("pod", body.clone()).await.unwrap();
        assert_eq!(answer.status().as_u16(), status, "{body}");
        let error: Value = answer.json().await.unwrap();
        assert!(error["error"]["message"].is_string(), "{body}: {error}");
    }
    for token in ["mover", "nobody"] {
        let status = send(token, reads.clone()).await.unwrap().status().as_u16();
        assert!(status == 401 || status == 403, "{token}: {status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_every_route() {
    let document: Value = serde_json::from_str(include_str!("openapi.json")).unwrap();
    for route in route_table_for_test().await {
        let path = format!("/v1{}", route.path);
        let described = &document["paths"][&path][route.method];
        assert!(
            described.is_object(),
            "{} {path} is missing from openapi.json",
            route.method
        );
        assert!(
            described["responses"]["403"].is_object(),
            "{} {path}: the refusal is not documented",
            route.method
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_paths_queries_and_bodies_get_json_errors() {
    let w = world().await;
    let d = drains(&w).await;
    let cases = [
        (
            Method::PUT,
            format!("/drains/{}/uploads/u-1/not-a-number", d.mine),
            None,
            "invalid_request",
        ),
        (
            Method::GET,
            format!("/drains/{}/objects?nokey=1", d.mine),
            None,
            "invalid_request",
        ),
        (
            Method::GET,
            "/drains?limit=0".to_owned(),
            None,
            "invalid_request",
        ),
        (
            Method::GET,
            "/drains?limit=abc".to_owned(),
            None,
            "invalid_request",
        ),
        (
            Method::GET,
            "/drains?limit=1001".to_owned(),
            None,
            "invalid_request",
        ),
        (
            Method::POST,
            format!("/drains/{}/run/r-0/record", d.mine),
            Some(json!({"not": "a list"})),
            "invalid_json",
        ),
        (
            Method::POST,
            "/sweeps?dry_run=perhaps".to_owned(),
            None,
            "invalid_request",
        ),
    ];
    for (method, path, body, code) in cases {
        let (status, answer) = w.api.call("admin", method.clone(), &path, body).await;
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (400, Some(code)),
            "{method} {path}: {answer}"
        );
    }
    // Paging: a cursor continues where the page ended, and says when there is no more.
    let (_, first) = w
        .api
        .call("admin", Method::GET, "/drains?limit=2", None)
        .await;
    let next = first["next"].as_str().expect("a next page").to_owned();
    let (_, second) = w
        .api
        .call(
            "admin",
            Method::GET,
            &format!("/drains?limit=2&after={next}"),
            None,
        )
        .await;
    let ids = |page: &Value| -> Vec<String> {
        page["drains"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let (a, b) = (ids(&first), ids(&second));
    assert_eq!(a.len(), 2);
    assert!(
        !b.is_empty() && b.iter().all(|id| !a.contains(id)),
        "{a:?} then {b:?}"
    );
    let (_, all) = w
        .api
        .call("admin", Method::GET, "/drains?limit=1000", None)
        .await;
    assert!(all["next"].is_null(), "{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mover_may_wait_for_a_queued_drain_only() {
    let w = world().await;
    let d = drains(&w).await;
    // A queued drain is copying again once claimed; a failed one never is.
    for (id, code) in [
        (&d.queued, "drain_queued"),
        (&d.failed, "drain_not_copying"),
    ] {
        let (status, body) = w
            .api
            .call("admin", Method::GET, &format!("/drains/{id}/store"), None)
            .await;
        assert_eq!(status, 409, "{body}");
        assert_eq!(body["error"]["code"], code, "{body}");
    }
    let (status, body) = w
        .api
        .call(
            "admin",
            Method::GET,
            &format!("/drains/{}/store", d.mine),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

/// `GET` of a public endpoint: status and JSON body.
async fn public(w: &World, path: &str) -> (u16, Value) {
    let response = w
        .api
        .client
        .get(format!("{}{path}", w.api.url))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

/// The condition `name` of a `/readyz` body.
fn condition<'a>(body: &'a Value, name: &str) -> &'a Value {
    body["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no condition {name}: {body}"))
}

#[tokio::test]
async fn readyz_and_healthz_answer_from_the_services_state() {
    let w = world().await;
    let (status, body) = public(&w, "/readyz").await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("ready")),
        "{body}"
    );
    assert_eq!(condition(&body, "ledger")["ok"], true);
    // A watch not synced: not ready, and the answer says which.
    let pods = w.health.watch("pods/shop");
    let (status, body) = public(&w, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "not_ready");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("pods/shop not listed yet"), "{body}");
    pods.synced();
    pods.failing("pods is forbidden");
    let (status, body) = public(&w, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["watches"][0]["error"], "pods is forbidden", "{body}");
    pods.synced();
    // The store down: still ready, the condition says so.
    w.health.store_probed(Err("connection refused".into()));
    let (status, body) = public(&w, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    let store = condition(&body, "store");
    assert_eq!(
        (&store["ok"], &store["required"]),
        (&json!(false), &json!(false))
    );
    assert!(
        store["message"]
            .as_str()
            .unwrap()
            .contains("connection refused"),
        "{body}"
    );
    // A task down: not ready until it runs again; restarted too often: not healthy.
    let task = w.health.add_task("sweeps");
    w.health.task_down(&task, "panicked: boom");
    let (status, body) = public(&w, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("sweeps (panicked: boom)")
    );
    let (status, body) = public(&w, "/healthz").await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("ok")),
        "{body}"
    );
    for _ in 0..=drainer_core::health::RESTARTS_TOLERATED {
        w.health.task_restarted(&task, std::time::Instant::now());
    }
    let (status, _) = public(&w, "/readyz").await;
    assert_eq!(status, 200, "running again");
    let (status, body) = public(&w, "/healthz").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "unhealthy");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("task sweeps was restarted 6 times"),
        "{body}"
    );
}

/// A body with a field the route does not read, for every route that reads a JSON body (the
/// raw-byte bodies of parts, objects and object batches have no fields).
fn body_with_unknown_field(route: &RouteSpec) -> Option<Value> {
    let summary = json!({
        "snapshot": "20261201T120000123Z-abcd", "volume": "shop/data-web-4", "parent": null,
        "created": "2026-12-01T12:00:00Z", "completed": "2026-12-01T12:00:01Z",
        "entries": 1, "files": 0, "bytes": 0, "skipped": 0, "uploaded_files": 0,
        "uploaded_bytes": 0, "manifest_blake3": "ab", "manifest_size": 1, "unread_field": true,
    });
    Some(match (route.method, route.path) {
        ("post", "/handoffs") => {
            json!({"namespace": "shop", "pvcs": ["data-web-4"], "unread_field": true})
        }
        ("post", "/sweeps") => json!({"dry_run": true, "unread_field": true}),
        ("post", "/drains/{id}/run/{run}/record") => json!([{"unread_field": true}]),
        ("post", "/drains/{id}/run/{run}/finish") => summary,
        ("post", "/drains/{id}/run/{run}/interrupted") => {
            json!({"error": "x", "unread_field": true})
        }
        ("put", "/drains/{id}/run/{run}/partial") => json!({"unread_field": true}),
        ("put", "/drains/{id}/run/{run}/totals") => {
            json!({"files": 1, "bytes": 1, "unread_field": true})
        }
        ("post", "/volumes/{namespace}/{pvc}/objects/batch") => {
            json!({"reads": [{"key": "latest", "start": 0, "end": 1, "unread_field": true}]})
        }
        _ => return None,
    })
}

/// What a request could have changed: every drain with its history, and every file of the
/// store.
async fn everything(w: &World) -> (Vec<String>, Vec<String>) {
    let drains = w
        .ledger
        .drains(&drainer_core::ledger::DrainFilter::default(), 1000)
        .await
        .unwrap();
    let mut recorded = Vec::new();
    for drain in drains {
        let history = w.ledger.drain_events(&drain.id).await.unwrap();
        recorded.push(format!("{drain:?} {history:?}"));
    }
    let mut files: Vec<String> = walkdir::WalkDir::new(&w.store_dir)
        .into_iter()
        .filter_map(Result::ok)
        .map(|e| {
            format!(
                "{} {:?}",
                e.path().display(),
                e.metadata().ok().map(|m| m.len())
            )
        })
        .collect();
    files.sort();
    (recorded, files)
}

/// Nothing a client sends is ignored: on every route, a query parameter the route does not
/// read, a body sent to a route that reads none, and a JSON field the route does not know are
/// each refused with `400` and a JSON error naming them, and change nothing. A dry run asked
/// in the body is a dry run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_refuses_what_it_does_not_read_and_changes_nothing() {
    let w = world().await;
    let d = drains(&w).await;
    let before = everything(&w).await;
    let table = route_table_for_test().await;
    let url = |path: &str| format!("{}/v1{path}", w.api.url);
    let refused = |what: String, answer: reqwest::Response, named: &'static str| async move {
        let status = answer.status().as_u16();
        let body: Value = answer.json().await.unwrap_or(Value::Null);
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert_eq!(status, 400, "{what}: {body}");
        assert!(
            message.contains(named),
            "{what}: the error names {named}: {body}"
        );
    };
    for route in &table {
        let path = path_of(route, &d);
        let name = format!("{} {}", route.method, route.path);
        let separator = if path.contains('?') { '&' } else { '?' };
        for query in ["unread_param=1", "dry_run=true&unread_param=1"] {
            let with_query = format!("{path}{separator}{query}");
            let answer = w
                .api
                .client
                .request(method_of(route), url(&with_query))
                .bearer_auth("admin")
                .send()
                .await
                .unwrap();
            refused(format!("{name} ?{query}"), answer, "unread_param").await;
        }
        if !route.input.body {
            let answer = w
                .api
                .client
                .request(method_of(route), url(&path))
                .bearer_auth("admin")
                .json(&json!({"dry_run": true}))
                .send()
                .await
                .unwrap();
            refused(
                format!("{name} with a body"),
                answer,
                "takes no request body",
            )
            .await;
        } else if let Some(body) = body_with_unknown_field(route) {
            let answer = w
                .api
                .client
                .request(method_of(route), url(&path))
                .bearer_auth("admin")
                .json(&body)
                .send()
                .await
                .unwrap();
            refused(format!("{name} {body}"), answer, "unread_field").await;
        }
    }
    // The public endpoints too.
    for path in ["/healthz", "/readyz", "/metrics", "/v1/openapi.json"] {
        let answer = w
            .api
            .client
            .get(format!("{}{path}?unread_param=1", w.api.url))
            .send()
            .await
            .unwrap();
        refused(path.to_owned(), answer, "unread_param").await;
    }
    assert_eq!(
        everything(&w).await,
        before,
        "a refused request changed something"
    );

    // A dry run said in the body is one; said two ways that disagree, it is refused.
    std::fs::create_dir_all(w.store_dir.parent().unwrap().join("volumes/shop/new-vol")).unwrap();
    std::fs::write(
        w.store_dir.parent().unwrap().join("volumes/shop/new-vol/f"),
        b"x",
    )
    .unwrap();
    let (s, b) = w
        .api
        .call(
            "admin",
            Method::POST,
            "/sweeps",
            Some(json!({"dry_run": true})),
        )
        .await;
    assert_eq!((s, &b["dry_run"]), (200, &json!(true)), "{b}");
    assert!(
        b["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["drain"] == true),
        "the volume needs a drain: {b}"
    );
    assert_eq!(b["drains"], json!([]), "{b}");
    let (s, b) = w
        .api
        .call(
            "admin",
            Method::POST,
            "/sweeps?dry_run=false",
            Some(json!({"dry_run": true})),
        )
        .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("invalid_request")),
        "{b}"
    );
    let plain_text = w
        .api
        .client
        .post(url("/sweeps"))
        .bearer_auth("admin")
        .body(r#"{"dry_run": true}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(plain_text.status().as_u16(), 415);
    assert_eq!(everything(&w).await, before, "a dry run changed something");
    let (s, b) = w
        .api
        .call(
            "admin",
            Method::POST,
            "/sweeps",
            Some(json!({"dry_run": false})),
        )
        .await;
    assert_eq!(
        (s, b["drains"].as_array().map(Vec::len)),
        (200, Some(1)),
        "{b}"
    );
}

/// The OpenAPI document says what each route reads: its query parameters exactly, and a
/// request body where the route reads one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_lists_what_each_route_reads() {
    let document: Value = serde_json::from_str(include_str!("openapi.json")).unwrap();
    let resolve = |p: &Value| -> Value {
        match p["$ref"].as_str() {
            Some(r) => {
                let name = r.trim_start_matches("#/components/parameters/");
                document["components"]["parameters"][name].clone()
            }
            None => p.clone(),
        }
    };
    for route in route_table_for_test().await {
        let path = format!("/v1{}", route.path);
        let described = &document["paths"][&path][route.method];
        let shared = &document["paths"][&path]["parameters"];
        let mut query: Vec<String> = described["parameters"]
            .as_array()
            .into_iter()
            .chain(shared.as_array())
            .flatten()
            .map(resolve)
            .filter(|p| p["in"] == "query")
            .map(|p| p["name"].as_str().unwrap().to_owned())
            .collect();
        query.sort();
        let mut declared: Vec<String> = route.input.query.iter().map(|s| s.to_string()).collect();
        declared.sort();
        let name = format!("{} {path}", route.method);
        assert_eq!(query, declared, "{name}: query parameters");
        assert_eq!(
            described["requestBody"].is_object(),
            route.input.body,
            "{name}: request body"
        );
    }
}

/// A write probe (`.drainer-probe-*` at the store's root, the only object a mover may write
/// outside its run) holds at most 64 bytes: a larger one, alone or in a batch, is refused
/// `413 probe_too_large` and not stored; a probe cannot be uploaded in parts (`403`); the
/// engine's own 5-byte probe is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_probes_are_small_and_never_uploaded_in_parts() {
    let w = world().await;
    let d = drains(&w).await;
    let put = |key: &str, body: Vec<u8>| {
        let url = format!("{}/v1/drains/{}/objects?key={key}", w.api.url, d.mine);
        w.api.client.put(url).bearer_auth("mover").body(body).send()
    };
    let large = put(".drainer-probe-large", vec![7; 65]).await.unwrap();
    assert_eq!(large.status(), 413);
    let body: Value = large.json().await.unwrap();
    assert_eq!(body["error"]["code"], "probe_too_large", "{body}");
    assert!(!w.store_dir.join(".drainer-probe-large").exists());
    let small = put(".drainer-probe-small", b"probe".to_vec())
        .await
        .unwrap();
    assert_eq!(small.status(), 204);
    assert_eq!(
        std::fs::read(w.store_dir.join(".drainer-probe-small")).unwrap(),
        b"probe"
    );
    let batch = drainer_core::protocol::batch::encode([
        (".drainer-probe-a", &b"probe"[..]),
        (".drainer-probe-b", &[0_u8; 1 << 20][..]),
    ]);
    let url = format!("{}/v1/drains/{}/objects/batch", w.api.url, d.mine);
    let answer = w
        .api
        .client
        .post(url)
        .bearer_auth("mover")
        .body(batch)
        .send();
    assert_eq!(answer.await.unwrap().status(), 413);
    assert!(
        !w.store_dir.join(".drainer-probe-a").exists(),
        "all or none"
    );
    let upload = format!("/drains/{}/uploads?key=.drainer-probe-parts", d.mine);
    let (s, b) = w.api.call("mover", Method::POST, &upload, None).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{b}"
    );
}
