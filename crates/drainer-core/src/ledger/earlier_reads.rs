//! Reads of a namespace's earlier life: an operator who reads a snapshot made in an earlier
//! instance of a namespace (deleted and created again, perhaps by another team) does so
//! explicitly, and the ledger keeps who, when, which snapshot, and both namespace UIDs. The
//! HTTP layer decides what is an earlier life and when to record; this module only stores
//! and reads.

use super::{Ledger, Result, on_pool, query_error};

/// One operator's read of a snapshot of an earlier life of its namespace, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct EarlierRead {
    /// When (ms since the epoch).
    pub at: i64,
    /// Who read (`admin`, `user:NAME`).
    pub principal: String,
    /// The volume's namespace.
    pub namespace: String,
    /// The volume's claim name.
    pub pvc: String,
    /// The snapshot read.
    pub snapshot: String,
    /// The UID of the namespace the snapshot was made in; `None` for a snapshot that
    /// records none (made before drainer recorded it).
    pub snapshot_namespace_uid: Option<String>,
    /// The UID of the namespace of that name when it was read; `None` when there was none.
    pub current_namespace_uid: Option<String>,
}

impl Ledger {
    /// Records an operator's read of a snapshot of an earlier life of its namespace.
    pub async fn record_earlier_read(&self, read: &EarlierRead) -> Result<()> {
        const SQL: &str = "INSERT INTO earlier_reads (at, principal, namespace, pvc, snapshot, \
                           snapshot_namespace_uid, current_namespace_uid) \
                           VALUES ($1, $2, $3, $4, $5, $6, $7)";
        let r = read.clone();
        self.write(move |l| async move {
            on_pool!(l, |pool, DB| sqlx::query(SQL)
                .bind(r.at)
                .bind(&r.principal)
                .bind(&r.namespace)
                .bind(&r.pvc)
                .bind(&r.snapshot)
                .bind(&r.snapshot_namespace_uid)
                .bind(&r.current_namespace_uid)
                .execute(pool)
                .await
                .map(drop)
                .map_err(query_error("record a read of an earlier namespace")))
        })
        .await
    }

    /// The recorded reads of earlier lives of volume `namespace/pvc`, oldest first.
    pub async fn earlier_reads(&self, namespace: &str, pvc: &str) -> Result<Vec<EarlierRead>> {
        const SQL: &str = "SELECT at, principal, namespace, pvc, snapshot, \
                           snapshot_namespace_uid, current_namespace_uid FROM earlier_reads \
                           WHERE namespace = $1 AND pvc = $2 ORDER BY at, id";
        on_pool!(self, |pool, DB| sqlx::query_as(SQL)
            .bind(namespace)
            .bind(pvc)
            .fetch_all(pool)
            .await
            .map_err(query_error("read the reads of earlier namespaces")))
    }
}
