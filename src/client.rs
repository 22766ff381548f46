//! The client side of drainer's HTTP API, shared by `drainer handoff` and `drainer mover`:
//! one request at a time, with the bearer token, decoded into a type or into the API's JSON
//! error, and retried while the failure may pass (the drainer restarting, a replica behind a
//! Service dying, a `503`).
//!
//! Every request has a timeout and every retry is bounded by the caller's deadline
//! ([`crate::retry`]). Only requests that are safe to repeat go through [`Api::call`].

use crate::retry;
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
    /// restarting (`5xx`, `429`). Client errors are permanent.
    pub fn is_transient(&self) -> bool {
        match self {
            CallError::Transport { .. } => true,
            CallError::Status { status, .. } => *status >= 500 || *status == 429,
        }
    }

    /// The HTTP status, for answers.
    pub fn status(&self) -> Option<u16> {
        match self {
            CallError::Status { status, .. } => Some(*status),
            CallError::Transport { .. } => None,
        }
    }

    /// The API's error code, for answers with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            CallError::Status { code, .. } => code.as_deref(),
            CallError::Transport { .. } => None,
        }
    }
}

/// A drainer's API at `base` (e.g. `http://drainer:8080/v1/drains/d-1`), called with `token`.
#[derive(Debug, Clone)]
pub struct Api {
    client: reqwest::Client,
    base: String,
    token: String,
    retry_for: Duration,
    /// A header sent with every request (a mover names itself as its run's owner).
    identity: Option<(&'static str, String)>,
}

impl Api {
    /// An API client; each request times out after `timeout`, and failures that may pass are
    /// retried for up to `retry_for`.
    pub fn new(
        base: &str,
        token: String,
        timeout: Duration,
        retry_for: Duration,
    ) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(timeout)
            .build()?;
        Ok(Self {
            client,
            base: base.trim_end_matches('/').to_owned(),
            token,
            retry_for,
            identity: None,
        })
    }

    /// The same client, sending header `name: value` with every request.
    pub fn with_header(mut self, name: &'static str, value: String) -> Self {
        self.identity = Some((name, value));
        self
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The URL of `path` under the base.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The underlying HTTP client, to build requests with.
    pub fn http(&self) -> &reqwest::Client {
        &self.client
    }

    /// Sends the request `build` makes, once, and checks the status.
    pub async fn send_once(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, CallError> {
        let request =
            request
                .bearer_auth(&self.token)
                .build()
                .map_err(|source| CallError::Transport {
                    url: self.base.clone(),
                    source,
                })?;
        let url = request.url().to_string();
        let response =
            self.client
                .execute(request)
                .await
                .map_err(|source| CallError::Transport {
                    url: url.clone(),
                    source,
                })?;
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

    /// [`Api::call`], decoding a JSON answer.
    pub async fn json<T: serde::de::DeserializeOwned>(
        &self,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<T, CallError> {
        retry::with_retries(
            retry::client_policy(self.retry_for),
            CallError::is_transient,
            || async {
                let response = self.send_once(build(&self.client)).await?;
                let url = response.url().to_string();
                response
                    .json::<T>()
                    .await
                    .map_err(|source| CallError::Transport { url, source })
            },
        )
        .await
    }
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
