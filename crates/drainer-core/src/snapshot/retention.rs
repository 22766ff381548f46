//! Retention policies: which snapshots of a volume a policy keeps, and why. Pure: no store, no
//! clock, no I/O; `catalog::prune_by` lists and deletes, the service's retention pass
//! (`drainer::pruning`) chooses the policy of each volume.
//!
//! A [`Policy`] follows restic's `forget` (`--keep-last`, `--keep-within`, `--keep-hourly`,
//! `--keep-daily`, `--keep-weekly`, `--keep-monthly`, `--keep-yearly`):
//!
//! - `last=N` keeps the N newest snapshots;
//! - `within=DURATION` keeps every snapshot completed within DURATION before the volume's
//!   newest snapshot (not before now, as restic does too: a volume that stops being copied, or a
//!   drainer that was down for a while, does not see its history expire on the clock alone);
//! - `hourly=N`, `daily=N`, `weekly=N`, `monthly=N`, `yearly=N` keep the newest snapshot of
//!   each of the last N hours, days, ISO weeks (Monday to Sunday), months or years that have
//!   snapshots, in UTC (the day of `2026-12-01T23:30:00-02:00` is 2 December).
//!
//! A snapshot's time is when it was completed (the time `restore --before` compares). Rules
//! add up: a snapshot is kept when any rule keeps it, and every reason is listed. Whatever the
//! policy says, the latest snapshot (the one `latest` names) and the newest complete one stay,
//! every damaged snapshot stays (it is not counted by any rule), and so does a snapshot whose
//! time cannot be read; so a policy never deletes every snapshot of a volume. The empty policy
//! keeps everything. A snapshot pinned by the ledger (the one a claim drainer deleted to give
//! its storage back relies on, [`decide_pinned`]) stays too, whatever the policy.
//!
//! The same policy is written as flags (`--keep-last 3 --keep-daily 7`) or as text
//! (`last=3,within=30d,daily=7,weekly=4`, the `drainer.io/retention` annotation); `all` is the
//! explicit empty policy (keep everything).

use super::catalog::Listed;
use chrono::{DateTime, Datelike, Duration, Timelike, Utc};
use serde::Serialize;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::str::FromStr;

/// A retention policy (see the module doc). `Default` is the empty policy: keep everything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    /// Keep the N newest snapshots.
    pub last: Option<u32>,
    /// Keep every snapshot completed within this long before the newest one.
    pub within: Option<Span>,
    /// Keep the newest snapshot of each of the last N hours that have snapshots.
    pub hourly: Option<u32>,
    /// … of each of the last N days (UTC).
    pub daily: Option<u32>,
    /// … of each of the last N ISO weeks (UTC).
    pub weekly: Option<u32>,
    /// … of each of the last N months (UTC).
    pub monthly: Option<u32>,
    /// … of each of the last N years (UTC).
    pub yearly: Option<u32>,
}

/// A length of time written as `30d`, `12h`, `2w`, `1w3d`, `90m`, `45s` (no months or years:
/// write `365d`). Unlike restic, `m` is minutes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span(Duration);

impl Span {
    /// The span as a duration.
    pub fn duration(self) -> Duration {
        self.0
    }

    /// A span of `seconds`.
    pub fn from_secs(seconds: i64) -> Self {
        Self(Duration::seconds(seconds))
    }
}

impl FromStr for Span {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "{text:?} is not a duration: write a number and a unit (s, m, h, d, w), \
                 e.g. 30d, 12h, 1w3d"
            )
        };
        let mut total = 0i64;
        let mut rest = text.trim();
        if rest.is_empty() {
            return Err(bad());
        }
        while !rest.is_empty() {
            let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
            let number: i64 = rest[..digits].parse().map_err(|_| bad())?;
            let unit = rest[digits..].chars().next().ok_or_else(bad)?;
            let seconds = match unit {
                's' => 1,
                'm' => 60,
                'h' => 3600,
                'd' => 86_400,
                'w' => 604_800,
                _ => return Err(bad()),
            };
            total = number
                .checked_mul(seconds)
                .and_then(|s| total.checked_add(s))
                .filter(|s| *s <= 100 * 365 * 86_400)
                .ok_or_else(|| format!("{text:?} is longer than 100 years"))?;
            rest = &rest[digits + 1..];
        }
        if total == 0 {
            return Err(format!("{text:?} is zero: leave the rule out instead"));
        }
        Ok(Self(Duration::seconds(total)))
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut left = self.0.num_seconds();
        let mut wrote = false;
        for (unit, seconds) in [('w', 604_800), ('d', 86_400), ('h', 3600), ('m', 60)] {
            if left >= seconds {
                write!(f, "{}{unit}", left / seconds)?;
                left %= seconds;
                wrote = true;
            }
        }
        if left > 0 || !wrote {
            write!(f, "{left}s")?;
        }
        Ok(())
    }
}

/// The calendar buckets, in the order reasons list them.
const BUCKETS: [Bucket; 5] = [
    Bucket::Hourly,
    Bucket::Daily,
    Bucket::Weekly,
    Bucket::Monthly,
    Bucket::Yearly,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bucket {
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
}

impl Bucket {
    fn name(self) -> &'static str {
        match self {
            Bucket::Hourly => "hourly",
            Bucket::Daily => "daily",
            Bucket::Weekly => "weekly",
            Bucket::Monthly => "monthly",
            Bucket::Yearly => "yearly",
        }
    }

    /// The period `time` falls in, as text that names it (UTC; ISO weeks).
    fn period(self, time: DateTime<Utc>) -> String {
        match self {
            Bucket::Hourly => format!("{}T{:02}", time.format("%Y-%m-%d"), time.hour()),
            Bucket::Daily => time.format("%Y-%m-%d").to_string(),
            Bucket::Weekly => {
                let week = time.iso_week();
                format!("{}-W{:02}", week.year(), week.week())
            }
            Bucket::Monthly => time.format("%Y-%m").to_string(),
            Bucket::Yearly => time.year().to_string(),
        }
    }
}

impl Policy {
    /// Keep only the newest `n` snapshots (`--keep N`).
    pub fn last(n: u32) -> Self {
        Self {
            last: Some(n),
            ..Self::default()
        }
    }

    /// Whether the policy has no rule (it keeps everything).
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    fn count(&self, bucket: Bucket) -> Option<u32> {
        match bucket {
            Bucket::Hourly => self.hourly,
            Bucket::Daily => self.daily,
            Bucket::Weekly => self.weekly,
            Bucket::Monthly => self.monthly,
            Bucket::Yearly => self.yearly,
        }
    }

    fn slot(&mut self, key: &str) -> Option<&mut Option<u32>> {
        Some(match key {
            "last" => &mut self.last,
            "hourly" => &mut self.hourly,
            "daily" => &mut self.daily,
            "weekly" => &mut self.weekly,
            "monthly" => &mut self.monthly,
            "yearly" => &mut self.yearly,
            _ => return None,
        })
    }
}

impl FromStr for Policy {
    type Err = String;

    /// Parses `last=3,within=30d,daily=7,weekly=4` (any order, spaces allowed around each
    /// part), or `all` for the empty policy.
    fn from_str(text: &str) -> Result<Self, String> {
        const KEYS: &str = "last, within, hourly, daily, weekly, monthly, yearly";
        let text = text.trim();
        if text == "all" {
            return Ok(Self::default());
        }
        if text.is_empty() {
            return Err(format!(
                "empty retention policy: write rules such as last=3,daily=7 ({KEYS}), or all to keep everything"
            ));
        }
        let mut policy = Self::default();
        for part in text.split(',') {
            let part = part.trim();
            let (key, value) = part
                .split_once('=')
                .map(|(k, v)| (k.trim(), v.trim()))
                .ok_or_else(|| format!("{part:?} is not RULE=VALUE (rules: {KEYS})"))?;
            if key == "within" {
                if policy.within.is_some() {
                    return Err(format!("{key} is given twice"));
                }
                policy.within = Some(value.parse().map_err(|e| format!("within: {e}"))?);
                continue;
            }
            let slot = policy
                .slot(key)
                .ok_or_else(|| format!("unknown rule {key:?} (rules: {KEYS})"))?;
            if slot.is_some() {
                return Err(format!("{key} is given twice"));
            }
            *slot = Some(parse_count(value).map_err(|e| format!("{key}: {e}"))?);
        }
        Ok(policy)
    }
}

/// A rule's count: a whole number, at least 1.
pub fn parse_count(text: &str) -> Result<u32, String> {
    match text.parse::<u32>() {
        Ok(0) => Err("0 keeps nothing by this rule: leave the rule out instead".to_owned()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{text:?} is not a whole number of snapshots")),
    }
}

impl fmt::Display for Policy {
    /// The policy as text that parses back to it (`all` when empty).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("all");
        }
        let mut parts = Vec::new();
        if let Some(n) = self.last {
            parts.push(format!("last={n}"));
        }
        if let Some(span) = self.within {
            parts.push(format!("within={span}"));
        }
        for bucket in BUCKETS {
            if let Some(n) = self.count(bucket) {
                parts.push(format!("{}={n}", bucket.name()));
            }
        }
        f.write_str(&parts.join(","))
    }
}

/// What a policy decides for one snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// The snapshot id.
    pub snapshot: String,
    /// When it was completed (RFC 3339), if it is complete and says so.
    pub completed: Option<String>,
    /// Whether it stays.
    pub keep: bool,
    /// Why it stays (each rule that keeps it), or why it goes.
    pub reasons: Vec<String>,
}

/// What a policy decides for a volume's snapshots, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// One decision per snapshot, newest first.
    pub snapshots: Vec<Decision>,
}

impl Plan {
    /// The snapshots that go (a prune deletes them), by id (ids sort by age).
    pub fn deleted(&self) -> Vec<String> {
        self.ids(false)
    }

    /// The snapshots that stay, by id.
    pub fn kept(&self) -> Vec<String> {
        self.ids(true)
    }

    fn ids(&self, keep: bool) -> Vec<String> {
        let mut ids: Vec<String> = self
            .snapshots
            .iter()
            .filter(|d| d.keep == keep)
            .map(|d| d.snapshot.clone())
            .collect();
        ids.sort();
        ids
    }
}

/// Decides, for every snapshot of a volume (`listed`, in any order), whether `policy` keeps it
/// and why. `latest` is the snapshot the volume's `latest` pointer names (it always stays).
pub fn decide(listed: &[Listed], latest: Option<&str>, policy: &Policy) -> Plan {
    decide_pinned(listed, latest, &BTreeSet::new(), policy)
}

/// [`decide`], where every snapshot in `pinned` stays whatever the policy says (the reason
/// names the pin: a claim drainer deleted to give its storage back relies on it).
pub fn decide_pinned(
    listed: &[Listed],
    latest: Option<&str>,
    pinned: &BTreeSet<String>,
    policy: &Policy,
) -> Plan {
    let mut plan = decide_unpinned(listed, latest, policy);
    for decision in &mut plan.snapshots {
        if pinned.contains(&decision.snapshot) {
            if !decision.keep {
                decision.reasons.clear();
            }
            decision.keep = true;
            decision.reasons.push(PINNED.to_owned());
        }
    }
    plan
}

/// Why a pinned snapshot stays.
pub(crate) const PINNED: &str = "pinned (a reclaimed claim relies on it; never pruned)";

fn decide_unpinned(listed: &[Listed], latest: Option<&str>, policy: &Policy) -> Plan {
    let mut timed: Vec<(DateTime<Utc>, &str)> = Vec::new();
    let mut fixed: HashMap<&str, Vec<String>> = HashMap::new();
    for snapshot in listed {
        match snapshot.complete() {
            None => {
                fixed
                    .entry(snapshot.snapshot())
                    .or_default()
                    .push("damaged (never pruned)".into());
            }
            Some(summary) => match DateTime::parse_from_rfc3339(&summary.completed) {
                Ok(time) => timed.push((time.with_timezone(&Utc), &summary.snapshot)),
                Err(_) => fixed
                    .entry(&summary.snapshot)
                    .or_default()
                    .push("completion time unreadable (never pruned)".into()),
            },
        }
    }
    timed.sort_by(|a, b| b.cmp(a));
    let mut reasons = rule_reasons(&timed, policy);
    if let Some((_, newest)) = timed.first() {
        reasons[0].insert(0, "newest".into());
        if latest == Some(newest) {
            reasons[0][0] = "latest".into();
        }
    }
    let mut snapshots: Vec<Decision> = timed
        .iter()
        .zip(reasons)
        .map(|((time, id), mut why)| {
            if latest == Some(id) && !why.iter().any(|r| r == "latest") {
                why.insert(0, "latest".into());
            }
            if policy.is_empty() {
                why.push("no policy (keeps everything)".into());
            }
            Decision {
                snapshot: (*id).to_owned(),
                completed: Some(time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
                keep: !why.is_empty(),
                reasons: if why.is_empty() {
                    vec!["no rule keeps it".into()]
                } else {
                    why
                },
            }
        })
        .collect();
    let mut untimed: Vec<Decision> = fixed
        .into_iter()
        .map(|(id, why)| Decision {
            snapshot: id.to_owned(),
            completed: None,
            keep: true,
            reasons: why,
        })
        .collect();
    untimed.sort_by(|a, b| b.snapshot.cmp(&a.snapshot));
    snapshots.extend(untimed);
    Plan { snapshots }
}

/// For each of `timed` (newest first), the rules of `policy` that keep it.
fn rule_reasons(timed: &[(DateTime<Utc>, &str)], policy: &Policy) -> Vec<Vec<String>> {
    let mut reasons = vec![Vec::new(); timed.len()];
    if let Some(n) = policy.last {
        for (i, why) in reasons.iter_mut().enumerate().take(n as usize) {
            why.push(format!("last {}/{n}", i + 1));
        }
    }
    if let (Some(span), Some((newest, _))) = (policy.within, timed.first()) {
        let since = *newest - span.duration();
        for ((time, _), why) in timed.iter().zip(reasons.iter_mut()) {
            if *time >= since {
                why.push(format!("within {span} of the newest"));
            }
        }
    }
    for bucket in BUCKETS {
        let Some(n) = policy.count(bucket) else {
            continue;
        };
        let (mut left, mut last_period) = (n, None::<String>);
        for ((time, _), why) in timed.iter().zip(reasons.iter_mut()) {
            if left == 0 {
                break;
            }
            let period = bucket.period(*time);
            if last_period.as_ref() != Some(&period) {
                why.push(format!("{} {period}", bucket.name()));
                last_period = Some(period);
                left -= 1;
            }
        }
    }
    reasons
}

/// Which policy applies to a volume: its claim's annotation, else its StatefulSet's, else the
/// service's flags. A bad annotation is an error that names it (the caller keeps everything).
pub fn effective(
    flags: &Policy,
    statefulset: Option<&str>,
    claim: Option<&str>,
) -> Result<(Policy, &'static str), String> {
    let annotated = |text: &str, whose: &str| {
        text.parse::<Policy>()
            .map_err(|e| format!("{whose} annotation {ANNOTATION}={text:?}: {e}"))
    };
    match (claim, statefulset) {
        (Some(text), _) => annotated(text, "claim").map(|p| (p, "claim annotation")),
        (None, Some(text)) => annotated(text, "StatefulSet").map(|p| (p, "StatefulSet annotation")),
        (None, None) => Ok((*flags, "flags")),
    }
}

/// The annotation (on a claim or a StatefulSet) that sets a volume's retention policy.
pub const ANNOTATION: &str = "drainer.io/retention";

#[cfg(test)]
mod tests;
