//! The client side of drainer's HTTP API, shared by `drainer handoff` and `drainer mover`:
//! one request at a time, with the bearer token, decoded into a type or into the API's JSON
//! error, and retried while the failure may pass (the drainer restarting, a replica behind a
//! Service dying, a `503`).
//!
//! Every request has a timeout and every retry is bounded by the caller's deadline
//! ([`drainer_core::retry`]). Only requests that are safe to repeat go through [`Api::call`].

use drainer_core::retry;
use std::time::Duration;

/// A failed call to the drainer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The drainer could not be reached (or the connection broke).
    #[error("cannot reach the drainer at {url}: {source}")]
    Transport {
        /// The URL called.
        url: String,
        /// The client error.
        #[source]
        source: reqwest::Error,
    },
    /// The TLS handshake with the drainer failed: its certificate is not trusted, or it does
    /// not speak TLS. Sending again would fail the same way.
    #[error("no TLS connection to the drainer at {url}: {reason}")]
    Tls {
        /// The URL called.
        url: String,
        /// What failed, and what to do about it.
        reason: String,
    },
    /// The drainer answered with an error.
    #[error("the drainer answered {status} to {url}: {message}")]
    Status {
        /// The URL called.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The API's stable error code, if the body had one.
        code: Option<String>,
        /// The error message.
        message: String,
    },
}

impl CallError {
    /// Whether the call may succeed if repeated: the drainer unreachable, overloaded or
    /// restarting (`5xx`, `429`), or a mover's drain queued at this moment (`409
    /// drain_queued`: a drain released when its drainer stopped is copying again once the
    /// next claim adopts its mover). Other client errors are permanent.
    pub fn is_transient(&self) -> bool {
        match self {
            CallError::Transport { .. } => true,
            CallError::Tls { .. } => false,
            CallError::Status { status, code, .. } => {
                *status >= 500
                    || *status == 429
                    || (*status == 409 && code.as_deref() == Some("drain_queued"))
            }
        }
    }

    /// The HTTP status, for answers.
    pub fn status(&self) -> Option<u16> {
        match self {
            CallError::Status { status, .. } => Some(*status),
            CallError::Transport { .. } | CallError::Tls { .. } => None,
        }
    }
}

/// How often a token read from a file is read again: a projected ServiceAccount token is
/// rotated by the kubelet (after 80% of its lifetime, an hour by default), and a mover may run
/// for hours.
const TOKEN_REREAD: Duration = Duration::from_secs(60);

/// The bearer token: fixed, or read again from its file every [`TOKEN_REREAD`].
#[derive(Debug)]
struct Token {
    file: Option<std::path::PathBuf>,
    current: std::sync::Mutex<(String, std::time::Instant)>,
}

impl Token {
    fn get(&self) -> String {
        let Ok(mut current) = self.current.lock() else {
            return String::new();
        };
        if let Some(file) = &self.file
            && current.1.elapsed() >= TOKEN_REREAD
        {
            // A file that cannot be read now keeps the token read last.
            if let Ok(text) = std::fs::read_to_string(file)
                && !text.trim().is_empty()
            {
                current.0 = text.trim().to_owned();
            }
            current.1 = std::time::Instant::now();
        }
        current.0.clone()
    }
}

/// A drainer's API at `base` (e.g. `http://drainer:8080/v1/drains/d-1`), called with `token`.
#[derive(Debug, Clone)]
pub struct Api {
    client: reqwest::Client,
    base: String,
    token: std::sync::Arc<Token>,
    retry_for: Duration,
    /// A header sent with every request (a mover names itself as its run's owner).
    identity: Option<(&'static str, String)>,
}

impl Api {
    /// An API client; each request times out after `timeout`, and failures that may pass are
    /// retried for up to `retry_for`. An https base is trusted if the system's roots or
    /// `roots` (`--cacert`) sign its certificate.
    pub fn new(
        base: &str,
        token: String,
        timeout: Duration,
        retry_for: Duration,
        roots: Vec<reqwest::Certificate>,
    ) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(timeout)
            .tls_certs_merge(roots)
            .build()?;
        Ok(Self::with_client(client, base, token, retry_for))
    }

    /// An API client sending its requests through `client` (made by the caller, e.g. to
    /// reach drainer's name at a port-forward's local address); failures that may pass are
    /// retried for up to `retry_for`.
    pub(crate) fn with_client(
        client: reqwest::Client,
        base: &str,
        token: String,
        retry_for: Duration,
    ) -> Self {
        Self {
            client,
            base: base.trim_end_matches('/').to_owned(),
            token: std::sync::Arc::new(Token {
                file: None,
                current: std::sync::Mutex::new((token, std::time::Instant::now())),
            }),
            retry_for,
            identity: None,
        }
    }

    /// The same client, reading its token again from `file` every minute (the token given to
    /// [`Api::new`] was read from it): a rotated token is picked up.
    pub(crate) fn with_token_file(mut self, file: std::path::PathBuf) -> Self {
        let current = self.token.get();
        self.token = std::sync::Arc::new(Token {
            file: Some(file),
            current: std::sync::Mutex::new((current, std::time::Instant::now())),
        });
        self
    }

    /// The same client, sending header `name: value` with every request.
    pub(crate) fn with_header(mut self, name: &'static str, value: String) -> Self {
        self.identity = Some((name, value));
        self
    }

    /// The HTTP client, to build requests for [`Api::send_once`].
    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.client
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The URL of `path` under the base.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends the request `build` makes, once, and checks the status.
    pub(crate) async fn send_once(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, CallError> {
        let request = match &self.identity {
            Some((name, value)) => request.header(*name, value),
            None => request,
        };
        let request = request
            .bearer_auth(self.token.get())
            .build()
            .map_err(|source| CallError::Transport {
                url: self.base.clone(),
                source,
            })?;
        let url = request.url().to_string();
        let response = self
            .client
            .execute(request)
            .await
            .map_err(|source| transport_error(&url, source))?;
        checked(url, response).await
    }

    /// Sends the request `build` makes, again while the failure may pass, for up to the
    /// client's retry time; `build` is called for every try. Only for requests that are safe
    /// to repeat.
    pub async fn call(
        &self,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, CallError> {
        retry::with_retries(
            retry::client_policy(self.retry_for),
            CallError::is_transient,
            || self.send_once(build(&self.client)),
        )
        .await
    }

    /// [`Api::call`], decoding a JSON answer (read inside the retries).
    pub async fn json<T: serde::de::DeserializeOwned>(
        &self,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<T, CallError> {
        self.read_answer(build, |r| r.json::<T>()).await
    }

    /// [`Api::call`], reading the whole answer inside the retries: an answer cut off midway is
    /// asked for again.
    pub async fn bytes(
        &self,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<bytes::Bytes, CallError> {
        self.read_answer(build, |r| r.bytes()).await
    }

    async fn read_answer<T, Read>(
        &self,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
        read: impl Fn(reqwest::Response) -> Read,
    ) -> Result<T, CallError>
    where
        Read: std::future::Future<Output = reqwest::Result<T>>,
    {
        retry::with_retries(
            retry::client_policy(self.retry_for),
            CallError::is_transient,
            || async {
                let response = self.send_once(build(&self.client)).await?;
                let url = response.url().to_string();
                read(response)
                    .await
                    .map_err(|source| CallError::Transport { url, source })
            },
        )
        .await
    }
}

/// A failed request as a [`CallError`]: [`CallError::Tls`] when TLS failed, saying what to do.
pub(crate) fn transport_error(url: &str, source: reqwest::Error) -> CallError {
    let Some(tls) = tls_error(&source) else {
        return CallError::Transport {
            url: url.to_owned(),
            source,
        };
    };
    let reason = match tls {
        rustls::Error::InvalidCertificate(_) => format!(
            "its certificate is not trusted ({tls}): give the CA bundle that signs it with \
             --cacert or DRAINER_CACERT"
        ),
        rustls::Error::InvalidMessage(_) => {
            format!("it does not speak TLS ({tls}): is the URL's scheme right?")
        }
        other => other.to_string(),
    };
    CallError::Tls {
        url: url.to_owned(),
        reason,
    }
}

/// The rustls error among the causes of `error`, if TLS failed. An `io::Error` hides the error
/// it wraps from `source()` (it answers that error's own source), so it is looked into.
fn tls_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        cause = match error.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => error.source(),
        };
    }
    None
}

/// The response if it succeeded, else its JSON error.
async fn checked(url: String, response: reqwest::Response) -> Result<reqwest::Response, CallError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let text = response.text().await.unwrap_or_default();
    let body = serde_json::from_str::<serde_json::Value>(&text).ok();
    let field = |name: &str| {
        body.as_ref()
            .and_then(|v| v["error"][name].as_str())
            .map(str::to_owned)
    };
    Err(CallError::Status {
        url,
        status: status.as_u16(),
        code: field("code"),
        message: field("message").unwrap_or(text),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn token(file: Option<std::path::PathBuf>, read: Instant) -> Token {
        Token {
            file,
            current: std::sync::Mutex::new(("old".to_owned(), read)),
        }
    }

    #[test]
    fn a_token_file_is_read_again_every_minute() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "new\n").unwrap();
        let long_ago = Instant::now().checked_sub(TOKEN_REREAD).unwrap();
        assert_eq!(token(Some(file.clone()), Instant::now()).get(), "old");
        assert_eq!(token(Some(file.clone()), long_ago).get(), "new");
        assert_eq!(token(None, long_ago).get(), "old");
        // A file that cannot be read (or is empty) keeps the token read last.
        assert_eq!(token(Some(dir.path().join("gone")), long_ago).get(), "old");
        std::fs::write(&file, "").unwrap();
        assert_eq!(token(Some(file), long_ago).get(), "old");
    }

    #[test]
    fn a_queued_drain_is_worth_waiting_for() {
        let status = |status: u16, code: Option<&str>| CallError::Status {
            url: "u".into(),
            status,
            code: code.map(str::to_owned),
            message: "m".into(),
        };
        assert!(status(409, Some("drain_queued")).is_transient());
        assert!(!status(409, Some("drain_not_copying")).is_transient());
        assert!(!status(409, Some("run_busy")).is_transient());
        assert!(!status(403, Some("forbidden")).is_transient());
        assert!(status(503, None).is_transient());
    }
}
