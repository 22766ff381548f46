//! Which snapshot a command means: the volume's latest, one by id, or the newest completed
//! before a point in time; the time forms `--before` accepts; and the choice itself from a
//! listing, a pure function shared by reads of a store and reads through a drainer's API.
//!
//! Times (`--before TIME`), all UTC unless they say otherwise:
//! - RFC 3339: `2026-12-01T12:00:00Z`, `2026-12-01T13:00:00+01:00`;
//! - a date, meaning its midnight: `2026-12-01`;
//! - a date and time without a zone: `2026-12-01 12:00`, `2026-12-01T12:00:30`;
//! - `now`, `today` (midnight), `yesterday` (midnight of the day before);
//! - an age: `90s ago`, `30m ago`, `2h ago`, `3d ago`, `1w ago`.

use super::catalog::{Listed, SnapshotSummary};
use super::{Error, Result};
use chrono::{DateTime, Days, NaiveDate, NaiveDateTime, TimeZone, Utc};

/// Parses a `--before` time (see the module doc), relative to `now`.
pub fn parse_time(text: &str, now: DateTime<Utc>) -> std::result::Result<DateTime<Utc>, String> {
    let text = text.trim();
    let midnight = |date: NaiveDate| Utc.from_utc_datetime(&date.and_time(Default::default()));
    let today = now.date_naive();
    match text {
        "now" => return Ok(now),
        "today" => return Ok(midnight(today)),
        "yesterday" => {
            return today
                .checked_sub_days(Days::new(1))
                .map(midnight)
                .ok_or_else(|| "yesterday is out of range".to_owned());
        }
        _ => {}
    }
    if let Some(age) = text.strip_suffix(" ago") {
        return parse_age(age.trim()).map(|age| now - age);
    }
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Ok(time.with_timezone(&Utc));
    }
    for format in [
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(time) = NaiveDateTime::parse_from_str(text, format) {
            return Ok(Utc.from_utc_datetime(&time));
        }
    }
    if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(midnight(date));
    }
    Err(format!(
        "{text:?} is not a time: use RFC 3339 (2026-12-01T12:00:00Z), a date (2026-12-01), \
         a UTC date and time (2026-12-01 12:00), now, today, yesterday, or an age (2h ago)"
    ))
}

/// `90s`, `30m`, `2h`, `3d`, `1w`.
fn parse_age(text: &str) -> std::result::Result<chrono::Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: i64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not an age such as 2h"))?;
    let seconds = match unit.trim() {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        other => return Err(format!("unknown unit {other:?} (s, m, h, d or w)")),
    };
    number
        .checked_mul(seconds)
        .and_then(chrono::Duration::try_seconds)
        .ok_or_else(|| format!("{text:?} is too long ago"))
}

/// The newest complete snapshot of `listed` that was completed before `before`: `None` when
/// there is none.
pub(crate) fn newest_before(listed: &[Listed], before: DateTime<Utc>) -> Option<&SnapshotSummary> {
    listed
        .iter()
        .filter_map(Listed::complete)
        .filter_map(|s| {
            let done = DateTime::parse_from_rfc3339(&s.completed).ok()?;
            Some((done.with_timezone(&Utc), s))
        })
        .filter(|(done, _)| *done < before)
        .max_by(|(a_done, a), (b_done, b)| {
            a_done.cmp(b_done).then_with(|| a.snapshot.cmp(&b.snapshot))
        })
        .map(|(_, s)| s)
}

/// The snapshot `before` names among `listed` (a volume's listing), or why there is none.
pub fn before(
    volume: &str,
    store: &str,
    listed: &[Listed],
    before: DateTime<Utc>,
) -> Result<SnapshotSummary> {
    if let Some(found) = newest_before(listed, before) {
        return Ok(found.clone());
    }
    if listed.iter().all(|l| l.complete().is_none()) {
        return Err(Error::NoSnapshot {
            volume: volume.to_owned(),
            store: store.to_owned(),
        });
    }
    Err(Error::NoneBefore {
        volume: volume.to_owned(),
        before: before.to_rfc3339(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn times_in_every_documented_form() {
        let now = at("2026-12-02T15:30:00Z");
        for (text, expected) in [
            ("2026-12-01T12:00:00Z", "2026-12-01T12:00:00Z"),
            ("2026-12-01T13:00:00+01:00", "2026-12-01T12:00:00Z"),
            ("2026-12-01", "2026-12-01T00:00:00Z"),
            ("2026-12-01 12:00", "2026-12-01T12:00:00Z"),
            ("2026-12-01T12:00:30", "2026-12-01T12:00:30Z"),
            ("now", "2026-12-02T15:30:00Z"),
            ("today", "2026-12-02T00:00:00Z"),
            ("yesterday", "2026-12-01T00:00:00Z"),
            ("90s ago", "2026-12-02T15:28:30Z"),
            ("2h ago", "2026-12-02T13:30:00Z"),
            ("3d ago", "2026-11-29T15:30:00Z"),
            ("1w ago", "2026-11-25T15:30:00Z"),
        ] {
            assert_eq!(parse_time(text, now), Ok(at(expected)), "{text}");
        }
        for bad in ["", "tomorrow", "2h", "2y ago", "12/01/2026", "x ago"] {
            assert!(parse_time(bad, now).is_err(), "{bad:?}");
        }
    }

    fn complete(id: &str, completed: &str) -> Listed {
        crate::snapshot::catalog::complete_at(id, completed)
    }

    #[test]
    fn before_picks_the_newest_completed_before_the_time() {
        let listed = vec![
            complete("s1", "2026-12-01T10:00:00Z"),
            complete("s2", "2026-12-01T11:00:00Z"),
            Listed::Damaged {
                snapshot: "s3".into(),
                volume: "a/b".into(),
                damaged: "bad".into(),
            },
            complete("s4", "2026-12-01T12:00:00Z"),
        ];
        let pick = |t| before("a/b", "file:///s", &listed, at(t)).map(|s| s.snapshot);
        assert_eq!(pick("2026-12-01T11:30:00Z").unwrap(), "s2");
        assert_eq!(
            pick("2026-12-01T12:00:00Z").unwrap(),
            "s2",
            "strictly before"
        );
        assert_eq!(pick("2027-01-01T00:00:00Z").unwrap(), "s4");
        let none = pick("2026-12-01T09:00:00Z").unwrap_err().to_string();
        assert!(none.contains("completed before"), "{none}");
        let empty = before("a/b", "file:///s", &[], at("2027-01-01T00:00:00Z")).unwrap_err();
        assert!(matches!(empty, Error::NoSnapshot { .. }), "{empty}");
    }
}
