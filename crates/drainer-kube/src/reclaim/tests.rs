//! The reclaim decision, as a table: which claims are deleted, when, and why the others stay.

use super::*;
use serde_json::{Value, json};

const MINUTE: i64 = 60_000;
const DONE: i64 = 1_000 * MINUTE;

fn set(replicas: i32, annotation: Option<&str>) -> StatefulSet {
    let mut set = plain_set(replicas, annotation);
    set.spec.template = serde_json::from_value(json!({"spec": {"containers": [],
        "initContainers": [{"name": "restore", "image": "drainer",
            "args": ["restore", "--drainer", "http://drainer", "--volume",
                     "$(POD_NAMESPACE)/data-$(POD_NAME)", "--if-empty", "/data"]}]}}))
    .unwrap();
    set
}

/// A StatefulSet whose pods restore nothing.
fn plain_set(replicas: i32, annotation: Option<&str>) -> StatefulSet {
    let mut meta = json!({"name": "web", "namespace": "shop", "uid": "uid-web"});
    if let Some(a) = annotation {
        meta["annotations"] = json!({RECLAIM_AFTER: a});
    }
    serde_json::from_value(json!({
        "metadata": meta,
        "spec": {"replicas": replicas, "selector": {}, "serviceName": "web", "template": {},
                 "volumeClaimTemplates": [{"metadata": {"name": "data"}}]},
    }))
    .unwrap()
}

fn claim(ordinal: u32, extra: Value) -> PersistentVolumeClaim {
    let mut meta = json!({"name": format!("data-web-{ordinal}"), "namespace": "shop",
        "uid": format!("uid-{ordinal}")});
    if let (Some(meta), Some(extra)) = (meta.as_object_mut(), extra.as_object()) {
        meta.extend(extra.clone());
    }
    serde_json::from_value(json!({ "metadata": meta })).unwrap()
}

fn pod(name: &str, claim: &str, labels: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "shop", "labels": labels},
        "spec": {"containers": [], "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": claim}}]}
    }))
    .unwrap()
}

fn drained() -> Result<Drained, String> {
    Ok(Drained {
        drain: "d-1".into(),
        snapshot: "s-1".into(),
        finished_ms: DONE,
    })
}

/// One row: what is listed, the flag, the time, and what must be decided.
struct Row {
    name: &'static str,
    set: StatefulSet,
    claim: PersistentVolumeClaim,
    pods: Vec<Pod>,
    drained: Result<Drained, String>,
    default: ReclaimAfter,
    now: i64,
    expected: Decision,
}

fn row(name: &'static str, expected: Decision) -> Row {
    Row {
        name,
        set: set(1, Some("30s")),
        claim: claim(2, json!({})),
        pods: Vec::new(),
        drained: drained(),
        default: ReclaimAfter(None),
        now: DONE + MINUTE,
        expected,
    }
}

fn keep(why: &str) -> Decision {
    Decision::Keep(why.to_owned())
}

fn reclaim() -> Decision {
    Decision::Reclaim {
        set: "web".into(),
        drained: drained().unwrap(),
    }
}

#[test]
fn claims_are_reclaimed_only_when_every_condition_holds() {
    let flag = |d: &str| d.parse::<ReclaimAfter>().unwrap();
    let rows = vec![
        row("scaled away, drained, delay passed", reclaim()),
        Row {
            now: DONE + 29_000,
            ..row(
                "within the delay",
                Decision::Wait {
                    until_ms: DONE + 30_000,
                },
            )
        },
        Row {
            now: DONE + 30_000,
            ..row("the delay just passed", reclaim())
        },
        Row {
            set: set(3, Some("30s")),
            ..row("ordinal live again (scaled back up)", Decision::NotMine)
        },
        Row {
            set: set(1, None),
            ..row("not opted in, no flag", Decision::NotMine)
        },
        Row {
            set: set(1, None),
            default: flag("30s"),
            ..row("the flag opts every StatefulSet in", reclaim())
        },
        Row {
            set: set(1, Some("off")),
            default: flag("30s"),
            ..row(
                "the annotation opts out whatever the flag",
                Decision::NotMine,
            )
        },
        Row {
            set: set(1, Some("0")),
            default: flag("1s"),
            ..row("0 opts out too", Decision::NotMine)
        },
        Row {
            set: set(1, Some("1h")),
            default: flag("30s"),
            ..row(
                "the annotation wins over the flag",
                Decision::Wait {
                    until_ms: DONE + 60 * MINUTE,
                },
            )
        },
        Row {
            set: set(1, Some("soon")),
            ..row(
                "a bad annotation keeps the claim",
                keep(
                    "drainer.io/reclaim-after=\"soon\" on StatefulSet: \"soon\" is not a duration: write a number and a unit (s, m, h, d, w), e.g. 30d, 12h, 1w3d",
                ),
            )
        },
        Row {
            set: plain_set(1, Some("30s")),
            ..row(
                "its pods restore nothing",
                keep(
                    "StatefulSet web's pods restore nothing (no init container runs `drainer restore`, deploy/examples/restore-init.yaml): the ordinal would come back empty",
                ),
            )
        },
        Row {
            pods: vec![pod("debug", "data-web-2", json!({}))],
            ..row("a pod mounts it", keep("pod debug mounts it"))
        },
        Row {
            pods: vec![pod(
                "mover",
                "data-web-2",
                json!({"app.kubernetes.io/managed-by": "drainer"}),
            )],
            ..row("only drainer's own mover pod mounts it", reclaim())
        },
        Row {
            pods: vec![pod("web-0", "data-web-0", json!({}))],
            ..row("another claim is mounted", reclaim())
        },
        Row {
            drained: Err("drain d-2 is copying".into()),
            ..row("not drained (yet)", keep("drain d-2 is copying"))
        },
        Row {
            claim: claim(2, json!({"deletionTimestamp": "2026-12-07T00:00:00Z"})),
            ..row("being deleted", keep("the claim is being deleted"))
        },
        Row {
            claim: claim(2, json!({"annotations": {"drainer.io/drain": "false"}})),
            ..row(
                "opted out of drains",
                keep("opted out of drains (drainer.io/drain: \"false\")"),
            )
        },
        Row {
            claim: claim(
                2,
                json!({"ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap",
                "name": "drainer-hold-d-1", "uid": "u"}]}),
            ),
            ..row(
                "still held",
                keep("still held by drainer (ConfigMap drainer-hold-d-1)"),
            )
        },
        Row {
            claim: claim(0, json!({})),
            ..row("the live ordinal", Decision::NotMine)
        },
    ];
    for r in rows {
        let sets = [&r.set];
        let pods: Vec<&Pod> = r.pods.iter().collect();
        let facts = Facts {
            claim: &r.claim,
            sets: &sets,
            pods: &pods,
            drained: &r.drained,
            default: r.default,
        };
        assert_eq!(decide(facts, r.now), r.expected, "{}", r.name);
    }
}

#[test]
fn a_statefulset_being_deleted_is_not_reclaimed_from() {
    let mut deleting = set(1, Some("30s"));
    deleting.metadata.deletion_timestamp =
        claim(2, json!({"deletionTimestamp": "2026-12-07T00:00:00Z"}))
            .metadata
            .deletion_timestamp;
    assert_eq!(
        candidate(&claim(2, json!({})), &[&deleting], ReclaimAfter(None)),
        None
    );
}

#[test]
fn delays_read_as_durations_or_off() {
    let parse = |t: &str| t.parse::<ReclaimAfter>();
    assert_eq!(parse("off"), Ok(ReclaimAfter(None)));
    assert_eq!(parse("0"), Ok(ReclaimAfter(None)));
    assert_eq!(
        parse("30s"),
        Ok(ReclaimAfter(Some(Duration::from_secs(30))))
    );
    assert_eq!(
        parse("1w1d"),
        Ok(ReclaimAfter(Some(Duration::from_secs(8 * 86_400))))
    );
    assert!(parse("").is_err());
    assert!(parse("-1s").is_err());
}

fn ledger_drain(id: &str, state: DrainState, ended: i64) -> Drain {
    let completed = state == DrainState::Completed;
    Drain {
        id: id.into(),
        namespace: "shop".into(),
        pvc: "data-web-2".into(),
        pod: None,
        reason: "test".into(),
        state,
        attempts: 1,
        max_attempts: 3,
        not_before_ms: 0,
        lease_owner: None,
        lease_expires_ms: None,
        snapshot: completed.then(|| format!("s-{id}")),
        last_error: None,
        created_ms: 0,
        updated_ms: ended,
        finished_ms: (!state.is_active()).then_some(ended),
        facts: drainer_core::ledger::Facts::default().with(crate::facts::PVC_UID, Some("uid-2")),
    }
}

#[test]
fn the_drain_relied_on_is_the_one_completed_since_the_claim_was_last_mounted() {
    use DrainState::*;
    let drains = [
        ledger_drain("old", Completed, 10),
        ledger_drain("new", Completed, 30),
    ];
    let found = drained_of(&drains, "uid-2", Some(0), Some(20)).unwrap();
    assert_eq!(
        found,
        Drained {
            drain: "new".into(),
            snapshot: "s-new".into(),
            finished_ms: 30
        }
    );
    assert!(
        drained_of(&drains, "uid-2", Some(0), Some(40)).is_err(),
        "mounted since"
    );
    assert!(
        drained_of(&drains, "uid-other", Some(0), None).is_err(),
        "another claim's"
    );
    let active = [
        ledger_drain("a", Completed, 10),
        ledger_drain("b", Copying, 50),
    ];
    assert_eq!(
        drained_of(&active, "uid-2", Some(0), None),
        Err("drain b is copying".into())
    );
}

mod acting {
    //! The reclaimer's calls, against the mock API server: read again, mark with the read
    //! `resourceVersion` as precondition, an Event, delete with the UID and the marked
    //! `resourceVersion` as preconditions, an Event; and what a refused delete undoes.

    use super::*;
    use crate::mock::{Exchange, Scenario, cluster, status};
    use http::Method;

    const CLAIM: &str = "/api/v1/namespaces/shop/persistentvolumeclaims/data-web-2";
    const SET: &str = "/apis/apps/v1/namespaces/shop/statefulsets/web";
    const PODS: &str = "/api/v1/namespaces/shop/pods";
    const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/shop/events";

    fn stored_claim(rv: &str) -> Value {
        let mut c = serde_json::to_value(claim(2, json!({}))).unwrap();
        c["metadata"]["resourceVersion"] = json!(rv);
        c
    }

    fn event(reason: &'static str, kind: &'static str) -> Exchange {
        let created = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "e.1", "namespace": "shop"}});
        Exchange::new(Method::POST, EVENTS, 201, created).checking(move |body| {
            assert_eq!(body["reason"], reason, "{body}");
            assert_eq!(body["regarding"]["kind"], kind, "{body}");
            assert!(body["note"].as_str().unwrap().contains("s-1"), "{body}");
        })
    }

    /// Reads again: the claim (resourceVersion 10), its StatefulSet, the namespace's pods.
    fn reads() -> Vec<Exchange> {
        let pods = json!({"apiVersion": "v1", "kind": "PodList", "metadata": {},
            "items": [serde_json::to_value(pod("web-0", "data-web-0", json!({}))).unwrap()]});
        vec![
            Exchange::new(Method::GET, CLAIM, 200, stored_claim("10")),
            Exchange::new(
                Method::GET,
                SET,
                200,
                serde_json::to_value(set(1, Some("30s"))).unwrap(),
            ),
            Exchange::new(Method::GET, PODS, 200, pods),
            Exchange::new(Method::PATCH, CLAIM, 200, {
                let mut marked = stored_claim("11");
                marked["metadata"]["annotations"] = json!({MARK: "s-1"});
                marked
            })
            .checking(|body| {
                assert_eq!(body["metadata"]["resourceVersion"], "10", "{body}");
                assert_eq!(body["metadata"]["uid"], "uid-2", "{body}");
                assert_eq!(body["metadata"]["annotations"][MARK], "s-1", "{body}");
            }),
            event("Reclaiming", "PersistentVolumeClaim"),
        ]
    }

    fn delete(code: u16, answer: Value) -> Exchange {
        Exchange::new(Method::DELETE, CLAIM, code, answer).checking(|body| {
            assert_eq!(
                body["preconditions"],
                json!({"uid": "uid-2", "resourceVersion": "11"}),
                "{body}"
            );
        })
    }

    async fn reclaimer(client: kube::Client, dir: &std::path::Path) -> Reclaimer {
        let cluster = cluster(client);
        let store_url = format!("file://{}", dir.join("store").display());
        let options = drainer_core::store::StoreOptions {
            timeout: Duration::from_secs(5),
            create: true,
            part_size: 8 << 20,
        };
        Reclaimer {
            events: Arc::new(KubeEvents::new(cluster.clone(), "r1")),
            cluster,
            ledger: Ledger::open(None, &dir.join("data")).await.unwrap(),
            store: Store::open(&store_url, &options).unwrap(),
            lease: None,
            default: ReclaimAfter(None),
            replica: "r1".into(),
            // Verified already: these tests are about the API calls.
            verified: {
                let verified = Verifications::default();
                verified.remember("d-1", Ok(()));
                Arc::new(verified)
            },
        }
    }

    fn chosen() -> Chosen {
        Chosen {
            namespace: "shop".into(),
            pvc: "data-web-2".into(),
            uid: "uid-2".into(),
            set: "web".into(),
            drained: drained().unwrap(),
        }
    }

    #[tokio::test]
    async fn a_due_claim_is_read_again_marked_and_deleted_under_preconditions_and_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let mut expected = reads();
        expected.push(delete(200, stored_claim("12")));
        expected.push(event("Reclaimed", "StatefulSet"));
        let (client, server) = Scenario(expected).serve(Duration::from_secs(5));
        let r = reclaimer(client, dir.path()).await;
        r.reclaim(&chosen()).await.unwrap();
        server.await.unwrap();
        let recorded = r.ledger.reclaims().await.unwrap();
        assert_eq!(recorded.len(), 1, "{recorded:?}");
        let row = &recorded[0];
        assert_eq!(
            (
                row.pvc_uid.as_str(),
                row.snapshot.as_str(),
                row.drain_id.as_str()
            ),
            ("uid-2", "s-1", "d-1")
        );
        assert!(row.deleted.is_some_and(|d| d >= row.decided), "{row:?}");
    }

    #[tokio::test]
    async fn a_refused_delete_takes_the_mark_and_the_pin_off() {
        let dir = tempfile::tempdir().unwrap();
        let mut expected = reads();
        expected.push(delete(409, status(409, "Conflict")));
        expected.push(
            Exchange::new(Method::PATCH, CLAIM, 200, stored_claim("13")).checking(|body| {
                assert_eq!(body["metadata"]["annotations"][MARK], Value::Null, "{body}");
                assert_eq!(body["metadata"]["uid"], "uid-2", "{body}");
            }),
        );
        let (client, server) = Scenario(expected).serve(Duration::from_secs(5));
        let r = reclaimer(client, dir.path()).await;
        assert!(r.reclaim(&chosen()).await.is_err());
        server.await.unwrap();
        assert!(r.ledger.reclaims().await.unwrap().is_empty());
    }

    /// A snapshot whose object was changed in the store is not whole: the claim is neither
    /// read again nor touched, and the next pass does not read the snapshot again.
    #[tokio::test]
    async fn a_damaged_snapshot_keeps_its_claim() {
        let dir = tempfile::tempdir().unwrap();
        let (client, server) = Scenario(Vec::new()).serve(Duration::from_secs(5));
        let mut r = reclaimer(client, dir.path()).await;
        r.verified = Arc::default();
        let source = dir.path().join("source");
        std::fs::create_dir_all(&source).unwrap();
        std::fs::write(source.join("db"), "the data of ordinal 2").unwrap();
        let volume = VolumeId::new("shop", "data-web-2").unwrap();
        let copy = snapshot::CopyOptions {
            concurrency: 1,
            part_size: 8 << 20,
            buffer_bytes: 8 << 20,
            check_hash: true,
            origin: None,
            compression: Default::default(),
        };
        let done = snapshot::copy(&source, &r.store, &volume, &r.ledger, &copy, Arc::default())
            .await
            .unwrap();
        let stored = walk(&dir.path().join("store"))
            .into_iter()
            .find(|p| std::fs::read(p).is_ok_and(|b| b == b"the data of ordinal 2"))
            .expect("the file's object");
        std::fs::write(&stored, "the data of ordinal 3").unwrap();
        let mut c = chosen();
        c.drained.snapshot = done.snapshot.snapshot.clone();
        for _ in 0..2 {
            let e = r.reclaim(&c).await.unwrap_err();
            assert!(e.to_string().contains("not whole"), "{e}");
        }
        server.await.unwrap();
        assert!(r.ledger.reclaims().await.unwrap().is_empty());
    }

    fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                found.extend(walk(&path));
            } else {
                found.push(path);
            }
        }
        found
    }

    #[tokio::test]
    async fn a_claim_mounted_again_when_read_again_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let pods = json!({"apiVersion": "v1", "kind": "PodList", "metadata": {},
            "items": [serde_json::to_value(pod("debug", "data-web-2", json!({}))).unwrap()]});
        let (client, server) = Scenario(vec![
            Exchange::new(Method::GET, CLAIM, 200, stored_claim("10")),
            Exchange::new(
                Method::GET,
                SET,
                200,
                serde_json::to_value(set(1, Some("30s"))).unwrap(),
            ),
            Exchange::new(Method::GET, PODS, 200, pods),
        ])
        .serve(Duration::from_secs(5));
        let r = reclaimer(client, dir.path()).await;
        r.reclaim(&chosen()).await.unwrap();
        server.await.unwrap();
        assert!(r.ledger.reclaims().await.unwrap().is_empty());
    }
}
