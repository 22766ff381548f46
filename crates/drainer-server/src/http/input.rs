//! What each route reads of a request besides its path, declared with the route (the
//! `routes!` table in `http`), and the check that refuses the rest before the handler runs: a
//! query parameter the route does not know, or a body sent to a route that reads none, is a
//! `400 invalid_request` naming it. Nothing a client sends is silently ignored — a
//! `{"dry_run": true}` that nobody reads would turn a dry run into a real sweep. Unknown
//! fields of the JSON bodies routes do read are refused by their types
//! (`#[serde(deny_unknown_fields)]`); this module only sees names and emptiness, never values.

use super::Error;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// What a route reads besides its path: the query parameters it knows, and whether it reads a
/// body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Input {
    /// The names of the query parameters it reads (none: it takes no query string).
    pub query: &'static [&'static str],
    /// Whether it reads a request body.
    pub body: bool,
}

impl Input {
    /// Nothing but the path.
    pub const NOTHING: Input = Input {
        query: &[],
        body: false,
    };
    /// A body, and no query parameter.
    pub(crate) const BODY: Input = Input {
        query: &[],
        body: true,
    };

    /// The query parameters `names`, and no body.
    pub const fn query(names: &'static [&'static str]) -> Input {
        Input {
            query: names,
            body: false,
        }
    }

    /// The query parameters `names`, and a body.
    pub const fn query_and_body(names: &'static [&'static str]) -> Input {
        Input {
            query: names,
            body: true,
        }
    }

    /// The query parameters of `query` (a raw query string) that this route does not read,
    /// decoded, each once, in the order they came.
    pub(crate) fn unknown_parameters(&self, query: &str) -> Vec<String> {
        let mut unknown: Vec<String> = Vec::new();
        for (name, _) in url::form_urlencoded::parse(query.as_bytes()) {
            if !self.query.contains(&name.as_ref()) && !unknown.iter().any(|u| *u == name) {
                unknown.push(name.into_owned());
            }
        }
        unknown
    }
}

/// The refusal of parameters a route does not read.
fn unknown_parameters(input: &Input, unknown: &[String]) -> Error {
    let named: Vec<String> = unknown.iter().map(|n| format!("`{n}`")).collect();
    let known = if input.query.is_empty() {
        "this route takes no query parameters".to_owned()
    } else {
        format!("this route reads only {}", input.query.join(", "))
    };
    Error::invalid(format!(
        "unknown query parameter {}: {known}",
        named.join(", ")
    ))
}

/// Refuses what the route does not read: unknown query parameters, and a non-empty body sent to
/// a route that reads none (its first byte is enough to refuse it; an empty body passes).
pub(super) async fn refuse_unread(
    State(input): State<Input>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(query) = request.uri().query() {
        let unknown = input.unknown_parameters(query);
        if !unknown.is_empty() {
            return unknown_parameters(&input, &unknown).into_response();
        }
    }
    if input.body {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    match axum::body::to_bytes(body, 0).await {
        Ok(empty) => next.run(Request::from_parts(parts, empty.into())).await,
        Err(_) => Error::invalid(format!(
            "{} {} takes no request body; send none (what it reads goes in the path{})",
            parts.method,
            parts.uri.path(),
            if input.query.is_empty() {
                String::new()
            } else {
                format!(" or the query: {}", input.query.join(", "))
            }
        ))
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_declared_parameters_pass() {
        let sweeps = Input::query_and_body(&["dry_run"]);
        let cases: [(&Input, &str, &[&str]); 8] = [
            (&sweeps, "dry_run=true", &[]),
            (&sweeps, "", &[]),
            (&sweeps, "dry_run=true&dryrun=1", &["dryrun"]),
            (&sweeps, "dry%5Frun=true", &[]),
            (&sweeps, "x=1&x=2&y", &["x", "y"]),
            (&Input::NOTHING, "anything", &["anything"]),
            (&Input::NOTHING, "&", &[]),
            (&Input::query(&["key"]), "key=a%26b&reason=x", &["reason"]),
        ];
        for (input, query, expected) in cases {
            assert_eq!(input.unknown_parameters(query), expected, "{query}");
        }
    }

    #[test]
    fn a_refusal_names_the_parameter_and_what_the_route_reads() {
        let input = Input::query(&["state", "limit"]);
        let refusal = unknown_parameters(&input, &["stat".to_owned()]);
        assert_eq!(refusal.status, axum::http::StatusCode::BAD_REQUEST);
        assert!(refusal.message.contains("`stat`"), "{}", refusal.message);
        assert!(
            refusal.message.contains("state, limit"),
            "{}",
            refusal.message
        );
        let none = unknown_parameters(&Input::NOTHING, &["dry_run".to_owned()]);
        assert!(none.message.contains("takes no query parameters"));
    }
}
