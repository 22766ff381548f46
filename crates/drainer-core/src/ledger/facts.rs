//! Platform facts of drains: what the platform that requested and executes a drain records on
//! it, as names and text, without the ledger knowing what they mean.
//!
//! A drain's facts are one JSON object in its row (column `facts`): recorded with the drain in
//! the intake's insert, read with every drain, changed with [`Ledger::patch_facts`] (a merge:
//! a `None` removes the fact), and searched by name ([`Ledger::active_having`],
//! [`Ledger::ended_having`]) or by value ([`Ledger::drain_with_fact`], which an index on the
//! fact's expression serves for the facts a platform looks drains up by, see the migration
//! `drain_facts`). Facts named as a snapshot origin's lineage fields are copied into the origin
//! ([`crate::snapshot::DrainOrigin::with_lineage`]). This module never interprets a fact.

use super::{Drain, Ledger, Result, on_pool, query_error};
use crate::lifecycle::DrainState;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A drain's platform facts: name → value (names are ASCII letters, digits and `_`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Facts(BTreeMap<String, String>);

impl Facts {
    /// The value of fact `name`, if recorded.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// These facts with fact `name` set to `value` (nothing changes for `None`).
    pub fn with(mut self, name: &str, value: Option<impl Into<String>>) -> Self {
        if let Some(value) = value {
            self.0.insert(name.to_owned(), value.into());
        }
        self
    }

    /// The facts as the column stores them (a JSON object).
    pub(super) fn to_json(&self) -> String {
        serde_json::to_string(&self.0).unwrap_or_else(|_| "{}".to_owned())
    }
}

impl TryFrom<String> for Facts {
    type Error = serde_json::Error;

    fn try_from(column: String) -> std::result::Result<Self, Self::Error> {
        serde_json::from_str(&column)
    }
}

/// Whether `name` may name a fact (it is written into SQL as a literal path).
fn is_fact_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The SQL expression of fact `name` in dialect `DB` (the form the fact indexes are made on).
pub(super) fn fact_sql<DB: super::Dialect>(name: &str) -> Result<String> {
    fact_of::<DB>("facts", name)
}

/// [`fact_sql`] in facts column `column` (e.g. `d.facts`).
pub(super) fn fact_of<DB: super::Dialect>(column: &str, name: &str) -> Result<String> {
    if !is_fact_name(name) {
        return Err(query_error("read facts")(sqlx::Error::Protocol(format!(
            "{name:?} cannot name a fact (ASCII letters, digits and `_` only)"
        ))));
    }
    Ok(DB::fact(column, name))
}

/// The states `states` as an SQL list.
fn states_sql(states: impl Iterator<Item = DrainState>) -> String {
    let names: Vec<String> = states.map(|s| format!("'{s}'")).collect();
    format!("({})", names.join(", "))
}

impl Ledger {
    /// Changes drain `id`'s facts: each `(name, Some(value))` is set, each `(name, None)`
    /// removed; the others stay as they are (one statement, so concurrent changes of other
    /// facts are not lost).
    pub async fn patch_facts(&self, id: &str, changes: &[(&str, Option<&str>)]) -> Result<()> {
        if let Some((bad, _)) = changes.iter().find(|(name, _)| !is_fact_name(name)) {
            fact_sql::<sqlx::Sqlite>(bad)?;
        }
        let patch: BTreeMap<&str, Option<&str>> = changes.iter().copied().collect();
        let patch = serde_json::to_string(&patch).unwrap_or_else(|_| "{}".to_owned());
        let id = id.to_owned();
        self.write(move |l| async move {
            on_pool!(l, |pool, DB| sqlx::query(
                <DB as super::Dialect>::PATCH_FACTS
            )
            .bind(&id)
            .bind(&patch)
            .execute(pool)
            .await
            .map(drop)
            .map_err(query_error("record facts")))
        })
        .await
    }

    /// Active drains that have fact `name`, least recently changed first.
    pub async fn active_having(&self, name: &str, limit: u32) -> Result<Vec<Drain>> {
        let active = crate::lifecycle::ALL_STATES
            .into_iter()
            .filter(|s| s.is_active());
        self.having(name, &states_sql(active), limit).await
    }

    /// Ended drains that still have fact `name`, least recently changed first.
    pub async fn ended_having(&self, name: &str, limit: u32) -> Result<Vec<Drain>> {
        let ended = crate::lifecycle::ALL_STATES
            .into_iter()
            .filter(|s| s.is_final());
        self.having(name, &states_sql(ended), limit).await
    }

    async fn having(&self, name: &str, states: &str, limit: u32) -> Result<Vec<Drain>> {
        on_pool!(self, |pool, DB| {
            let sql = format!(
                "SELECT {} FROM drains WHERE {} IS NOT NULL AND state IN {states} \
                 ORDER BY updated_at LIMIT $1",
                super::drains::COLUMNS,
                fact_sql::<DB>(name)?
            );
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await
                .map_err(query_error("list drains by fact"))
        })
    }

    /// The drain in one of `states` whose fact `name` is `value`, if any (the first, should
    /// the platform have recorded the value on several).
    pub async fn drain_with_fact(
        &self,
        name: &str,
        value: &str,
        states: &[DrainState],
    ) -> Result<Option<Drain>> {
        on_pool!(self, |pool, DB| {
            let sql = with_fact_sql::<DB>(name, states)?;
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(value)
                .fetch_optional(pool)
                .await
                .map_err(query_error("find a drain by fact"))
        })
    }
}

/// The query of [`Ledger::drain_with_fact`] (the value is `$1`).
fn with_fact_sql<DB: super::Dialect>(name: &str, states: &[DrainState]) -> Result<String> {
    Ok(format!(
        "SELECT {} FROM drains WHERE {} = $1 AND state IN {} ORDER BY created_at, id LIMIT 1",
        super::drains::COLUMNS,
        fact_sql::<DB>(name)?,
        states_sql(states.iter().copied())
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_round_trip_through_their_column_and_refuse_junk_names() {
        let facts = Facts::default()
            .with("claim", Some("u-1"))
            .with("gone", None::<String>);
        assert_eq!(facts.to_json(), r#"{"claim":"u-1"}"#);
        assert_eq!(Facts::try_from(facts.to_json()).unwrap(), facts);
        assert_eq!(facts.get("claim"), Some("u-1"));
        assert_eq!(facts.get("gone"), None);
        for bad in ["", "a'b", "a.b", "a b", "é"] {
            assert!(fact_sql::<sqlx::Sqlite>(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            fact_sql::<sqlx::Sqlite>("a_1").unwrap(),
            "(facts ->> 'a_1')"
        );
        assert_eq!(
            fact_sql::<sqlx::Postgres>("a_1").unwrap(),
            "(facts::jsonb ->> 'a_1')"
        );
    }

    /// The facts the migration indexes serve their lookups: the query's expression is the
    /// index's.
    #[tokio::test]
    async fn a_lookup_by_an_indexed_fact_uses_its_index() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(None, dir.path()).await.unwrap();
        let super::super::Pool::Sqlite(pool) = &ledger.pool else {
            unreachable!("a ledger without a URL is SQLite")
        };
        let sql = with_fact_sql::<sqlx::Sqlite>("mover_job_uid", &[DrainState::Copying]).unwrap();
        let plan: Vec<(i64, i64, i64, String)> =
            sqlx::query_as(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")))
                .bind("uid")
                .fetch_all(pool)
                .await
                .unwrap();
        assert!(
            plan.iter()
                .any(|row| row.3.contains("drains_by_mover_job_uid")),
            "{plan:?}"
        );
    }
}
