//! The drains of many claims at once, for sweeps: a claim is found by the lineage fact its
//! drains record (the claim's UID), or by its volume for drains that recorded none. What
//! sweeps remember between runs is Kubernetes mode's own (`drainer_kube::sweep_records`);
//! this module only reads drains, in bulk statements.

use super::drains::{BULK_ROWS, COLUMNS, Drain};
use super::facts::fact_sql;
use super::{Ledger, Result, on_pool, query_error};
use sqlx::QueryBuilder;

/// A claim whose drains a sweep looks up: by UID, or by name for drains that recorded none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimKey {
    /// The claim's UID.
    pub uid: String,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub pvc: String,
}

impl Ledger {
    /// Every drain of the claims `claims`: those whose lineage records the claim's UID, and
    /// those of the same namespace and name that record none.
    pub async fn drains_of_claims(&self, claims: &[ClaimKey]) -> Result<Vec<Drain>> {
        let [claim_fact, ..] = crate::snapshot::DrainOrigin::LINEAGE;
        let mut drains = Vec::new();
        for chunk in claims.chunks(BULK_ROWS / 2) {
            on_pool!(self, |pool, DB| {
                let claim_uid = fact_sql::<DB>(claim_fact)?;
                let mut find = QueryBuilder::<DB>::new(format!(
                    "SELECT {COLUMNS} FROM drains WHERE {claim_uid} IN ("
                ));
                let mut uids = find.separated(", ");
                for claim in chunk {
                    uids.push_bind(claim.uid.as_str());
                }
                find.push(format!(") OR ({claim_uid} IS NULL AND ("));
                let mut names = find.separated(" OR ");
                for claim in chunk {
                    names
                        .push("(namespace = ")
                        .push_bind_unseparated(claim.namespace.as_str())
                        .push_unseparated(" AND pvc = ")
                        .push_bind_unseparated(claim.pvc.as_str())
                        .push_unseparated(")");
                }
                find.push("))");
                let found: Vec<Drain> = find
                    .build_query_as()
                    .fetch_all(pool)
                    .await
                    .map_err(query_error("read drains of claims"))?;
                drains.extend(found);
            });
        }
        Ok(drains)
    }
}
