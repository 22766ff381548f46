//! The `kubectl drainer` commands only drainer can answer, sent to its HTTP API (through a
//! port-forward or `--drainer-url`) with the caller's token, which drainer authorises by RBAC
//! on `drainer.io` resources: `orphans` (`GET /v1/orphans`), `reclaims` (`GET
//! /v1/reclaims`), `snapshots NS/PVC` (`GET
//! /v1/volumes/NS/PVC/snapshots`), `retry` and `cancel` (`POST /v1/drains/ID/retry|cancel`,
//! sent once: neither is repeated on its own).

use super::connect::{self, Cluster, Scope};
use super::output::{age, cell, document, table};
use super::{KubectlArgs, Output};
use crate::client::Api;
use drainer_core::args::Usage;
use drainer_core::volume::VolumeId;
use serde_json::Value;

/// drainer's API with the caller's token, and the port-forward it goes through.
pub(crate) struct Session {
    /// The API client.
    pub api: Api,
    _drainer: connect::Drainer,
}

impl Session {
    /// The token first (a usage error costs no port-forward), then drainer.
    pub async fn open(cluster: &Cluster, args: &KubectlArgs) -> anyhow::Result<Self> {
        let token = cluster.token(args)?;
        let drainer = connect::drainer(cluster, args).await?;
        let timeout = args.request_timeout;
        let api = Api::with_client(drainer.http(timeout)?, &drainer.url, token, timeout);
        Ok(Self {
            api,
            _drainer: drainer,
        })
    }
}

/// `kubectl drainer orphans`: of the namespace, or of every one with -A.
pub(crate) async fn orphans(cluster: &Cluster, args: &KubectlArgs) -> anyhow::Result<()> {
    let scope = cluster.scope(args)?;
    let session = Session::open(cluster, args).await?;
    let url = session.api.url(&listing_path("orphans", &scope));
    let answer: Value = session.api.json(|http| http.get(&url)).await?;
    print(&answer, args.output, orphans_table)
}

/// `kubectl drainer reclaims`: the claims drainer deleted to give their storage back, of the
/// namespace or of every one with -A.
pub(crate) async fn reclaims(cluster: &Cluster, args: &KubectlArgs) -> anyhow::Result<()> {
    let scope = cluster.scope(args)?;
    let session = Session::open(cluster, args).await?;
    let url = session.api.url(&listing_path("reclaims", &scope));
    let answer: Value = session.api.json(|http| http.get(&url)).await?;
    let now_ms = chrono::Utc::now().timestamp_millis();
    print(&answer, args.output, |answer| {
        reclaims_table(answer, now_ms)
    })
}

/// The path of listing `what` (`orphans`, `reclaims`) of `scope`.
pub(crate) fn listing_path(what: &str, scope: &Scope) -> String {
    match scope {
        Scope::All => format!("/v1/{what}"),
        Scope::Namespace(ns) => format!("/v1/{what}?namespace={ns}"),
    }
}

/// `kubectl drainer snapshots NS/PVC`.
pub(crate) async fn snapshots(
    cluster: &Cluster,
    args: &KubectlArgs,
    volume: &str,
) -> anyhow::Result<()> {
    let volume = volume_of(
        volume,
        args.namespace.as_deref(),
        &cluster.default_namespace,
    )?;
    let session = Session::open(cluster, args).await?;
    let url = session.api.url(&format!(
        "/v1/volumes/{}/{}/snapshots",
        volume.namespace, volume.name
    ));
    let answer: Value = session.api.json(|http| http.get(&url)).await?;
    print(&answer, args.output, snapshots_table)
}

/// What `retry` and `cancel` ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Act {
    /// `POST /v1/drains/ID/retry`.
    Retry,
    /// `POST /v1/drains/ID/cancel`.
    Cancel,
}

impl Act {
    fn verb(self) -> &'static str {
        match self {
            Act::Retry => "retry",
            Act::Cancel => "cancel",
        }
    }
}

/// `kubectl drainer retry|cancel [NS/]ID`: sent once, the drain as drainer answers it.
pub(crate) async fn act(
    cluster: &Cluster,
    args: &KubectlArgs,
    drain: &str,
    act: Act,
) -> anyhow::Result<()> {
    let id = drain_id(drain)?;
    let session = Session::open(cluster, args).await?;
    let url = session.api.url(&format!("/v1/drains/{id}/{}", act.verb()));
    let response = session.api.send_once(session.api.http().post(&url)).await?;
    let answer: Value = response.json().await?;
    print(&answer, args.output, |drain| acted_line(drain, act))
}

/// The drain id of `NS/ID` or `ID` (drain ids are unique across namespaces; the namespace is
/// for the reader).
pub(crate) fn drain_id(text: &str) -> Result<&str, Usage> {
    let (namespace, id) = text.split_once('/').unwrap_or(("default", text));
    let namespace_ok = !namespace.is_empty()
        && namespace
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    let id_ok = !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if namespace_ok && id_ok {
        Ok(id)
    } else {
        Err(Usage(format!(
            "{text:?} is not a drain: give NAMESPACE/ID or ID (see `kubectl drainer drains`)"
        )))
    }
}

/// The volume of `NS/PVC`, or of `PVC` in `-n` or the context's namespace.
pub(crate) fn volume_of(
    text: &str,
    namespace: Option<&str>,
    default: &str,
) -> Result<VolumeId, Usage> {
    let full = match text.contains('/') {
        true => text.to_owned(),
        false => format!("{}/{text}", namespace.unwrap_or(default)),
    };
    full.parse()
        .map_err(|e| Usage(format!("{text:?} is not a volume NAMESPACE/PVC: {e}")))
}

fn print(
    answer: &Value,
    format: Output,
    as_table: impl Fn(&Value) -> String,
) -> anyhow::Result<()> {
    let text = match format {
        Output::Table => as_table(answer),
        format => document(answer, format)?,
    };
    print!("{text}");
    Ok(())
}

fn text<'a>(value: &'a Value, pointer: &str) -> Option<&'a str> {
    value.pointer(pointer).and_then(Value::as_str)
}

fn number(value: &Value, pointer: &str) -> String {
    value
        .pointer(pointer)
        .map_or_else(|| "<none>".to_owned(), |v| v.to_string())
}

/// The orphans answer as a table.
pub(crate) fn orphans_table(answer: &Value) -> String {
    let rows: Vec<Vec<String>> = list(answer, "orphans")
        .iter()
        .map(|o| {
            let drain = match (text(o, "/drain/id"), text(o, "/drain/state")) {
                (Some(id), Some(state)) => format!("{id} {state}"),
                _ => "<none>".to_owned(),
            };
            vec![
                cell(text(o, "/volume")),
                cell(text(o, "/statefulset")),
                cell(text(o, "/size")),
                cell(text(o, "/verdict")),
                cell(text(o, "/last_snapshot/id")),
                drain,
            ]
        })
        .collect();
    table(
        &[
            "VOLUME",
            "STATEFULSET",
            "SIZE",
            "VERDICT",
            "LAST SNAPSHOT",
            "DRAIN",
        ],
        &rows,
    )
}

/// The reclaims answer as a table, ages as of `now_ms`: which claim, its snapshot, how long
/// ago it was deleted, and whether the snapshot is still pinned (or which drain released it).
pub(crate) fn reclaims_table(answer: &Value, now_ms: i64) -> String {
    let rows: Vec<Vec<String>> = list(answer, "reclaims")
        .iter()
        .map(|r| {
            let deleted = r.pointer("/deleted").and_then(Value::as_i64);
            let pin = match text(r, "/released_by") {
                Some(drain) => format!("released by {drain}"),
                None => "pinned".to_owned(),
            };
            vec![
                cell(text(r, "/volume")),
                cell(text(r, "/statefulset")),
                cell(text(r, "/snapshot")),
                deleted.map_or_else(|| "deleting".to_owned(), |at| age((now_ms - at) / 1000)),
                pin,
            ]
        })
        .collect();
    table(
        &["VOLUME", "STATEFULSET", "SNAPSHOT", "DELETED", "PIN"],
        &rows,
    )
}

/// A volume's snapshots as a table (damaged ones say why).
pub(crate) fn snapshots_table(answer: &Value) -> String {
    let rows: Vec<Vec<String>> = list(answer, "snapshots")
        .iter()
        .map(|s| match text(s, "/damaged") {
            Some(why) => vec![
                cell(text(s, "/snapshot")),
                "-".into(),
                "-".into(),
                format!("DAMAGED: {}", why.replace('\n', " ")),
                "-".into(),
            ],
            None => vec![
                cell(text(s, "/snapshot")),
                number(s, "/files"),
                number(s, "/bytes"),
                cell(text(s, "/completed")),
                cell(text(s, "/drain/id")),
            ],
        })
        .collect();
    table(&["SNAPSHOT", "FILES", "BYTES", "COMPLETED", "DRAIN"], &rows)
}

fn list<'a>(answer: &'a Value, field: &str) -> &'a [Value] {
    answer[field].as_array().map_or(&[], Vec::as_slice)
}

/// The line saying what `retry` or `cancel` did.
pub(crate) fn acted_line(drain: &Value, act: Act) -> String {
    let done = match act {
        Act::Retry => "retried",
        Act::Cancel => "cancelled",
    };
    format!(
        "drain {} of {} {done}: now {}\n",
        cell(text(drain, "/id")),
        cell(text(drain, "/volume")),
        cell(text(drain, "/state")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn drain_ids_come_with_or_without_their_namespace() {
        assert_eq!(drain_id("shop/d-2026-ab").unwrap(), "d-2026-ab");
        assert_eq!(drain_id("d-2026-ab").unwrap(), "d-2026-ab");
        for bad in ["", "shop/", "a/b/c", "d-1?x=y", "../d"] {
            assert!(drain_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn volumes_take_the_namespace_given_or_the_contexts() {
        assert_eq!(
            volume_of("shop/data-0", None, "def").unwrap().to_string(),
            "shop/data-0"
        );
        assert_eq!(
            volume_of("data-0", Some("ns"), "def").unwrap().to_string(),
            "ns/data-0"
        );
        assert_eq!(
            volume_of("data-0", None, "def").unwrap().to_string(),
            "def/data-0"
        );
        assert!(volume_of("shop/Bad_Name", None, "def").is_err());
    }

    #[test]
    fn orphans_are_listed_in_the_namespace_or_everywhere() {
        assert_eq!(listing_path("orphans", &Scope::All), "/v1/orphans");
        assert_eq!(
            listing_path("reclaims", &Scope::Namespace("shop".into())),
            "/v1/reclaims?namespace=shop"
        );
    }

    #[test]
    fn answers_become_tables() {
        let orphans = json!({"orphans": [{"volume": "shop/data-web-3", "statefulset": "web",
            "size": "1Gi", "verdict": "orphaned", "last_snapshot": {"id": "2026-s"},
            "drain": {"id": "d-1", "state": "completed"}}]});
        assert_eq!(
            orphans_table(&orphans),
            "VOLUME            STATEFULSET   SIZE   VERDICT    LAST SNAPSHOT   DRAIN\n\
             shop/data-web-3   web           1Gi    orphaned   2026-s          d-1 completed\n"
        );
        let snapshots = json!({"snapshots": [
            {"snapshot": "s-1", "files": 3, "bytes": 10, "completed": "2026-12-07T10:00:00Z", "drain": {"id": "d-1"}},
            {"snapshot": "s-2", "damaged": "no manifest"}]});
        assert_eq!(
            snapshots_table(&snapshots),
            "SNAPSHOT   FILES   BYTES   COMPLETED              DRAIN\n\
             s-1        3       10      2026-12-07T10:00:00Z   d-1\n\
             s-2        -       -       DAMAGED: no manifest   -\n"
        );
        let reclaims = json!({"reclaims": [
            {"volume": "shop/data-web-2", "statefulset": "web", "snapshot": "s-2",
             "deleted": 1_000_000 - 90_000, "released_by": null},
            {"volume": "shop/data-web-1", "statefulset": "web", "snapshot": "s-1",
             "deleted": 1_000_000 - 7_200_000, "released_by": "d-9"},
            {"volume": "shop/data-web-3", "statefulset": "web", "snapshot": "s-3",
             "deleted": null, "released_by": null}]});
        assert_eq!(
            reclaims_table(&reclaims, 1_000_000),
            "VOLUME            STATEFULSET   SNAPSHOT   DELETED    PIN\n\
             shop/data-web-2   web           s-2        90s        pinned\n\
             shop/data-web-1   web           s-1        2h         released by d-9\n\
             shop/data-web-3   web           s-3        deleting   pinned\n"
        );
        let drain = json!({"id": "d-1", "volume": "shop/data-0", "state": "queued"});
        assert_eq!(
            acted_line(&drain, Act::Retry),
            "drain d-1 of shop/data-0 retried: now queued\n"
        );
    }
}
