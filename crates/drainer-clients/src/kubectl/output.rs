//! How `kubectl drainer` prints: tables aligned as kubectl aligns them (columns three spaces
//! apart, upper-case headers), ages as kubectl writes them, and JSON or YAML documents.
//! Pure text; printing is the callers' one line.

use super::Output;
use serde::Serialize;

/// Columns aligned as kubectl aligns them: each as wide as its widest cell, three spaces
/// apart, the last one not padded.
pub(crate) fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let headers: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&headers).chain(rows) {
        let last = row.len().saturating_sub(1);
        for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}   "));
            }
        }
        out.push('\n');
    }
    out
}

/// An age as kubectl writes it: `45s`, `5m`, `3h`, `12d` (the largest unit that fits twice).
pub(crate) fn age(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        s if s < 120 => format!("{s}s"),
        s if s < 120 * 60 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// `value` as a JSON or YAML document (a table is the caller's to make).
pub(crate) fn document(value: &impl Serialize, format: Output) -> anyhow::Result<String> {
    Ok(match format {
        Output::Yaml => serde_saphyr::to_string(value)?,
        Output::Json | Output::Table => format!("{}\n", serde_json::to_string_pretty(value)?),
    })
}

/// A cell for a value that may be missing: `<none>`, as kubectl prints it.
pub(crate) fn cell(value: Option<&str>) -> String {
    value
        .filter(|v| !v.is_empty())
        .unwrap_or("<none>")
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_is_aligned_as_kubectl_aligns_it() {
        let rows = vec![
            vec!["shop".to_owned(), "d-1".to_owned(), "completed".to_owned()],
            vec!["a".to_owned(), "d-long-name".to_owned(), "q".to_owned()],
        ];
        assert_eq!(
            table(&["NAMESPACE", "NAME", "STATE"], &rows),
            "NAMESPACE   NAME          STATE\n\
             shop        d-1           completed\n\
             a           d-long-name   q\n"
        );
        assert_eq!(table(&["NAME"], &[]), "NAME\n");
    }

    #[test]
    fn ages_are_written_as_kubectl_writes_them() {
        let cases = [
            (-5, "0s"),
            (0, "0s"),
            (119, "119s"),
            (120, "2m"),
            (7199, "119m"),
            (7200, "2h"),
            (48 * 3600 - 1, "47h"),
            (48 * 3600, "2d"),
            (30 * 86400, "30d"),
        ];
        for (seconds, expected) in cases {
            assert_eq!(age(seconds), expected, "{seconds}");
        }
    }

    #[test]
    fn documents_are_json_or_yaml() {
        let value = serde_json::json!({"state": "failed", "count": 2});
        assert_eq!(
            document(&value, Output::Json).unwrap(),
            "{\n  \"count\": 2,\n  \"state\": \"failed\"\n}\n"
        );
        let yaml = document(&value, Output::Yaml).unwrap();
        assert!(
            yaml.contains("state: failed") && yaml.contains("count: 2"),
            "{yaml}"
        );
        assert_eq!(cell(None), "<none>");
        assert_eq!(cell(Some("")), "<none>");
        assert_eq!(cell(Some("x")), "x");
    }
}
