//! What users ask through Drain objects, authorised by the API server's RBAC on
//! `drains.drainer.io` (drainer makes no check of its own): a Drain they create requests a
//! drain of its `spec.claim` ([`judge_request`]), and the annotation [`ACTION`] on a Drain
//! linked to a drain retries, cancels or abandons it ([`judge_action`]). Both take the HTTP
//! API's path ([`drainer_server::requests`]): the same intake (the claim must exist; a claim
//! the garbage collector could delete is held), the same ledger records and transitions, the
//! same refusals (cancelling a drain that holds its claim takes an abandon). The requester is
//! the object, `drain:NAMESPACE/NAME` ([`principal`]): the API server does not tell drainer who
//! made or annotated it (its audit log does). A request taken is linked to its drain (labels
//! [`super::DRAIN_LABEL`], [`super::MANAGED`]) and says so in condition `Accepted`; one refused
//! gets state `rejected` and nothing is recorded. An action is recorded in the drain's history
//! (applied or refused), its annotations are removed, and condition `ActionApplied` says how it
//! went. Decisions are pure; [`DrainObjects`] applies them.

use super::{DrainObjects, Linked, Listing, Pass, Seen, condition_now, ledger_error};
use crate::Error;
use chrono::DateTime;
use drainer_core::ledger::{Drain, DrainFilter, NewDrain, Refused};
use drainer_core::lifecycle::{DrainState, Event};
use drainer_core::volume::VolumeId;
use drainer_server::auth::Caller;
use drainer_server::intake::Refusal;
use kube::api::{DeleteParams, DynamicObject, Patch};
use serde_json::{Value, json};

/// The annotation asking for an action on a Drain's drain: `retry`, `cancel` or `abandon`.
pub(crate) const ACTION: &str = "drainer.io/action";
/// The annotation saying why (required to abandon; recorded with any action).
pub(crate) const ACTION_REASON: &str = "drainer.io/action-reason";
/// The status state of a request drainer did not take.
pub(crate) const REJECTED: &str = "rejected";
/// The condition saying whether a request was taken.
pub const ACCEPTED: &str = "Accepted";
/// The condition saying how the last action went.
pub(crate) const ACTION_APPLIED: &str = "ActionApplied";
/// Longest reason of a request (as a handoff's).
const MAX_REASON: usize = 200;
/// Longest reason of an action (as an abandon's through the HTTP API).
const MAX_ACTION_REASON: usize = 500;

/// The requester recorded for what a Drain object asks.
pub fn principal(namespace: &str, name: &str) -> String {
    format!("drain:{namespace}/{name}")
}

/// A Drain object a user made, not linked to a drain.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestObject {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// When it was made (ms since the epoch, whole seconds).
    pub created_ms: i64,
    /// Its spec as written.
    pub spec: Value,
    /// When drainer rejected it, if it did.
    pub rejected_ms: Option<i64>,
}

impl RequestObject {
    /// The request `object` (in `namespace`, named `name`) makes. Pure.
    pub fn of(object: &DynamicObject, namespace: &str, name: &str) -> Self {
        let status = object.data.get("status");
        let rejected = status.and_then(|s| s.get("state")) == Some(&json!(REJECTED));
        let created_ms = object
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(0, |t| t.0.as_millisecond());
        let rejected_at = status
            .and_then(|s| s.get("conditions"))
            .and_then(Value::as_array)
            .and_then(|cs| cs.iter().find(|c| c["type"] == ACCEPTED))
            .and_then(|c| c["lastTransitionTime"].as_str())
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map_or(created_ms, |t| t.timestamp_millis());
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            created_ms,
            spec: object.data.get("spec").cloned().unwrap_or(Value::Null),
            rejected_ms: rejected.then_some(rejected_at),
        }
    }
}

/// An action asked in a Drain's annotations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionAsked {
    /// The annotation [`ACTION`] as written.
    pub action: String,
    /// The annotation [`ACTION_REASON`], if any.
    pub reason: Option<String>,
}

impl ActionAsked {
    /// The action `object`'s annotations ask for, if any. Pure.
    pub fn of(object: &DynamicObject) -> Option<Self> {
        let annotations = object.metadata.annotations.as_ref()?;
        Some(Self {
            action: annotations.get(ACTION)?.trim().to_owned(),
            reason: annotations
                .get(ACTION_REASON)
                .map(|r| r.trim().to_owned())
                .filter(|r| !r.is_empty()),
        })
    }
}

/// What to do about a request object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judgement {
    /// Nothing: it was rejected, within the TTL.
    Nothing,
    /// Delete it: rejected longer than the TTL ago.
    Delete,
    /// Reject it, saying why (`reason` for the condition, `message` for people).
    Reject {
        /// `InvalidSpec`.
        reason: &'static str,
        /// What is wrong.
        message: String,
    },
    /// Request a drain of `claim`.
    Request {
        /// The claim.
        claim: VolumeId,
        /// Why, as recorded.
        reason: String,
    },
}

/// What to do about request object `asked` at `now_ms`, objects kept `ttl_ms`. Pure.
pub(crate) fn judge_request(asked: &RequestObject, now_ms: i64, ttl_ms: i64) -> Judgement {
    if let Some(at) = asked.rejected_ms {
        return if at.saturating_add(ttl_ms) <= now_ms {
            Judgement::Delete
        } else {
            Judgement::Nothing
        };
    }
    let invalid = |message: String| Judgement::Reject {
        reason: "InvalidSpec",
        message,
    };
    let spec = &asked.spec;
    if spec.get("requestedBy").is_some() {
        return invalid(format!(
            "spec.requestedBy is drainer's to write: the requester of this drain is the object, {}",
            principal(&asked.namespace, &asked.name)
        ));
    }
    let Some(claim) = spec.get("claim").and_then(Value::as_str) else {
        return invalid("spec.claim must name the PersistentVolumeClaim to drain".to_owned());
    };
    let claim = match VolumeId::new(&asked.namespace, claim) {
        Ok(claim) => claim,
        Err(e) => return invalid(format!("spec.claim: {e}")),
    };
    let reason = match spec.get("reason") {
        None | Some(Value::Null) => format!("Drain object {}", asked.name),
        Some(Value::String(r)) if printable(r, MAX_REASON) => r.clone(),
        Some(_) => {
            return invalid(format!(
                "spec.reason must be at most {MAX_REASON} printable characters"
            ));
        }
    };
    Judgement::Request { claim, reason }
}

fn printable(text: &str, max: usize) -> bool {
    !text.trim().is_empty() && text.chars().count() <= max && !text.chars().any(char::is_control)
}

/// What to do about an action asked on an object of a drain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ActionPlan {
    /// Refuse it, saying why.
    Refuse {
        /// For the condition: `UnknownAction`, `InvalidReason`, `ClaimHeld`.
        reason: &'static str,
        /// For people (and the drain's history).
        message: String,
    },
    /// Apply `event` to the drain, `why` recorded with it.
    Apply {
        /// `RetriedByHand`, `Cancelled` or `Abandoned`.
        event: Event,
        /// The reason given.
        why: Option<String>,
    },
}

/// What to do about `asked` on an object of `drain`: the HTTP API's rules. Pure.
pub(crate) fn judge_action(drain: &Drain, asked: &ActionAsked) -> ActionPlan {
    let refuse = |reason, message| ActionPlan::Refuse { reason, message };
    let event = match asked.action.as_str() {
        "retry" => Event::RetriedByHand,
        "cancel" => Event::Cancelled,
        "abandon" => Event::Abandoned,
        other => {
            return refuse(
                "UnknownAction",
                format!("{ACTION} is {other:?}; it must be retry, cancel or abandon"),
            );
        }
    };
    if let Some(why) = &asked.reason
        && !printable(why, MAX_ACTION_REASON)
    {
        return refuse(
            "InvalidReason",
            format!("{ACTION_REASON} must be at most {MAX_ACTION_REASON} printable characters"),
        );
    }
    if event == Event::Abandoned && asked.reason.is_none() {
        return refuse(
            "InvalidReason",
            format!("abandoning gives up the claim's data: say why in {ACTION_REASON}"),
        );
    }
    if event == Event::Cancelled {
        let how = format!("annotate {ACTION}=abandon and {ACTION_REASON}");
        if let Some(why) = crate::intake::CLAIM_HOLD.cancel_refused(drain, &how) {
            return refuse("ClaimHeld", why);
        }
    }
    ActionPlan::Apply {
        event,
        why: asked.reason.clone(),
    }
}

/// The condition [`ACTION_APPLIED`] after `event` asked by `by` was applied (`Ok`) or refused
/// by the ledger; a refusal because the drain is already where the event leads (a second
/// replica, or a pass after a crash, applying the same annotation again) counts as applied.
/// Pure.
pub(crate) fn action_outcome(
    event: Event,
    by: &str,
    result: &Result<Drain, Refused>,
    now_ms: i64,
) -> super::Condition {
    let done = match result {
        Ok(_) => true,
        Err(Refused::Conflict { state, .. }) => {
            matches!(
                (event, state),
                (Event::Cancelled, DrainState::Cancelled)
                    | (Event::Abandoned, DrainState::Abandoned)
            )
        }
        Err(_) => false,
    };
    let word = match event {
        Event::RetriedByHand => "Retried",
        Event::Cancelled => "Cancelled",
        _ => "Abandoned",
    };
    match result {
        Err(refused) if !done => {
            let reason = match refused {
                Refused::VolumeBusy { .. } => "VolumeBusy",
                Refused::NotFound(_) => "NotFound",
                _ => "NotAllowed",
            };
            condition_now(ACTION_APPLIED, false, reason, refused.to_string(), now_ms)
        }
        _ => condition_now(
            ACTION_APPLIED,
            true,
            word,
            format!("{} by {by}", word.to_lowercase()),
            now_ms,
        ),
    }
}

impl DrainObjects {
    /// Answers the requests of `listing`: rejects the bad ones, records the others and links
    /// them (moved to `listing.linked`, so the pass writes their status and makes no object of
    /// its own for their drains), deletes the rejected ones past the TTL. A request the
    /// cluster or the ledger cannot answer now is left for the next pass.
    pub(super) async fn answer_requests(
        &self,
        listing: &mut Listing,
        now_ms: i64,
        ttl_ms: i64,
        pass: &mut Pass,
    ) -> Result<(), Error> {
        for asked in std::mem::take(&mut listing.asked) {
            let (claim, reason) = match judge_request(&asked, now_ms, ttl_ms) {
                Judgement::Nothing => continue,
                Judgement::Delete => {
                    self.delete_request(&asked, pass).await?;
                    continue;
                }
                Judgement::Reject { reason, message } => {
                    self.reject(&asked, reason, message, now_ms, pass).await?;
                    continue;
                }
                Judgement::Request { claim, reason } => (claim, reason),
            };
            match self.request(&asked, claim, reason).await {
                Ok((drain, new)) => {
                    let linked = self.link(&asked, &drain, new, now_ms).await?;
                    pass.requested += 1;
                    listing
                        .linked
                        .entry((drain.namespace.clone(), drain.id.clone()))
                        .or_default()
                        .push(linked);
                }
                Err(drainer_server::requests::Error::Refused(Refusal::NotFound(why))) => {
                    self.reject(&asked, "ClaimNotFound", why, now_ms, pass)
                        .await?;
                }
                Err(e) => {
                    tracing::warn!(ns = %asked.namespace, name = %asked.name, error = %e, "cannot take a Drain request now; trying again next pass");
                }
            }
        }
        Ok(())
    }

    /// Records the drain `asked` requests, or finds the one it already did (a pass that died
    /// before linking the object); the drain and whether this request made it.
    async fn request(
        &self,
        asked: &RequestObject,
        claim: VolumeId,
        reason: String,
    ) -> Result<(Drain, bool), drainer_server::requests::Error> {
        let by = principal(&asked.namespace, &asked.name);
        let filter = DrainFilter {
            namespace: Some(claim.namespace.clone()),
            pvc: Some(claim.name.clone()),
            requested_by: Some(by.clone()),
            ..DrainFilter::default()
        };
        let earlier = self.ledger.drains(&filter, 1).await?.into_iter().next();
        if let Some(drain) = earlier.filter(|d| d.created_ms >= asked.created_ms) {
            return Ok((drain, false));
        }
        let mut wanted = [NewDrain {
            volume: claim,
            pod: None,
            reason,
            max_attempts: self.max_attempts,
            wait_for_release: false,
            requested_by: Some(by.clone()),
            facts: Default::default(),
        }];
        // Authorised by the API server's RBAC; the intake asks a caller only for its pod,
        // and an object has none.
        let recorded = self.requests.request(&Caller::Admin, &mut wanted).await?;
        let (drain, new) = recorded.into_iter().next().ok_or_else(|| {
            drainer_server::requests::Error::Refused(Refusal::Unavailable(
                "the ledger recorded nothing".to_owned(),
            ))
        })?;
        tracing::info!(drain = %drain.id, ns = %drain.namespace, pvc = %drain.pvc, new, by = %by, "Drain object request recorded");
        Ok((drain, new))
    }

    /// Labels `asked` as the object of `drain`; what the pass is to write of it.
    async fn link(
        &self,
        asked: &RequestObject,
        drain: &Drain,
        new: bool,
        now_ms: i64,
    ) -> Result<Linked, Error> {
        let patch = json!({"metadata": {"labels": {
            super::MANAGED.0: super::MANAGED.1,
            super::DRAIN_LABEL: drain.id,
            super::CLAIM_LABEL: drain.pvc,
        }}});
        crate::call(
            format!(
                "linking Drain {}/{} to its drain",
                asked.namespace, asked.name
            ),
            self.api(&asked.namespace).patch(
                &asked.name,
                &super::patch_params(),
                &Patch::Merge(patch),
            ),
        )
        .await?;
        let by = principal(&asked.namespace, &asked.name);
        let (reason, message) = if new {
            ("Requested", format!("drain {} requested by {by}", drain.id))
        } else {
            (
                "Joined",
                format!(
                    "drain {} was active for the claim; {by} recorded as one of its requesters",
                    drain.id
                ),
            )
        };
        let mut seen = Seen::default();
        seen.keep(condition_now(
            super::requests::ACCEPTED,
            true,
            reason,
            message,
            now_ms,
        ));
        Ok(Linked {
            name: asked.name.clone(),
            own: false,
            seen,
            action: None,
        })
    }

    /// Says in `asked`'s status why it was not taken.
    async fn reject(
        &self,
        asked: &RequestObject,
        reason: &str,
        message: String,
        now_ms: i64,
        pass: &mut Pass,
    ) -> Result<(), Error> {
        tracing::info!(ns = %asked.namespace, name = %asked.name, reason, message = %message, "Drain object request rejected");
        let condition = condition_now(ACCEPTED, false, reason, message, now_ms);
        let body = json!({"status": {"state": REJECTED, "conditions": [condition]}});
        let written = crate::call(
            format!("rejecting Drain {}/{}", asked.namespace, asked.name),
            self.api(&asked.namespace).patch_status(
                &asked.name,
                &super::patch_params(),
                &Patch::Merge(body),
            ),
        )
        .await;
        match written {
            Ok(_) => pass.rejected += 1,
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
        Ok(())
    }

    async fn delete_request(&self, asked: &RequestObject, pass: &mut Pass) -> Result<(), Error> {
        let deleted = crate::call(
            format!("deleting Drain {}/{}", asked.namespace, asked.name),
            self.api(&asked.namespace)
                .delete(&asked.name, &DeleteParams::default()),
        )
        .await;
        match deleted {
            Ok(_) => pass.deleted += 1,
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// Answers the actions asked on linked objects: applies or refuses each, records it in the
    /// drain's history, removes the annotations, and keeps condition [`ACTION_APPLIED`] for the
    /// status the pass writes next.
    pub(super) async fn answer_actions(
        &self,
        listing: &mut Listing,
        now_ms: i64,
        pass: &mut Pass,
    ) -> Result<(), Error> {
        for ((namespace, id), objects) in &mut listing.linked {
            for object in objects.iter_mut() {
                let Some(asked) = object.action.take() else {
                    continue;
                };
                let by = principal(namespace, &object.name);
                let condition = match self.ledger.drain(id).await.map_err(ledger_error)? {
                    Some(drain) if &drain.namespace == namespace => {
                        self.act(&drain, &asked, &by, now_ms).await?
                    }
                    _ => condition_now(
                        ACTION_APPLIED,
                        false,
                        "NotFound",
                        format!("drain {id} is not in this drainer's ledger"),
                        now_ms,
                    ),
                };
                self.clear_action(namespace, &object.name).await?;
                object.seen.keep(condition);
                pass.actions += 1;
            }
        }
        Ok(())
    }

    /// Applies or refuses `asked` on `drain` for `by`, recorded in its history either way.
    async fn act(
        &self,
        drain: &Drain,
        asked: &ActionAsked,
        by: &str,
        now_ms: i64,
    ) -> Result<super::Condition, Error> {
        let write_error =
            |e: drainer_core::ledger::Error| Error::Watch(format!("writing the ledger: {e}"));
        match judge_action(drain, asked) {
            ActionPlan::Refuse { reason, message } => {
                let note = format!("{} asked by {by}, refused: {message}", asked.action);
                self.ledger
                    .note(&drain.id, &note)
                    .await
                    .map_err(write_error)?;
                tracing::info!(drain = %drain.id, by, action = %asked.action, reason, "action on a Drain object refused");
                Ok(condition_now(
                    ACTION_APPLIED,
                    false,
                    reason,
                    message,
                    now_ms,
                ))
            }
            ActionPlan::Apply { event, why } => {
                let result = self
                    .requests
                    .change(&drain.id, event, by, why.as_deref())
                    .await
                    .map_err(write_error)?;
                let condition = action_outcome(event, by, &result, now_ms);
                if condition.status == "False" {
                    let note = format!(
                        "{} asked by {by}, refused: {}",
                        asked.action,
                        condition.message.as_deref().unwrap_or_default()
                    );
                    self.ledger
                        .note(&drain.id, &note)
                        .await
                        .map_err(write_error)?;
                }
                Ok(condition)
            }
        }
    }

    /// Removes the action annotations of `namespace/name` (done, or refused).
    async fn clear_action(&self, namespace: &str, name: &str) -> Result<(), Error> {
        let patch = json!({"metadata": {"annotations": {ACTION: null, ACTION_REASON: null}}});
        let cleared = crate::call(
            format!("clearing the action of Drain {namespace}/{name}"),
            self.api(namespace)
                .patch(name, &super::patch_params(), &Patch::Merge(patch)),
        )
        .await;
        match cleared {
            Err(e) if !e.is_not_found() => Err(e),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests;
