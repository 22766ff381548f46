//! A mock API server for unit tests of the code that calls the API (controller-rs'
//! `fixtures.rs` is the model): a [`kube::Client`] whose requests reach a [`Scenario`] that
//! expects them one by one, checks each (method, path, body) and answers it as the API server
//! would, and fails the test on a request it did not expect or on one that never came.

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::Value;
use std::time::Duration;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// One request the code under test must make, and the API server's answer to it.
pub(crate) struct Exchange {
    /// The method expected.
    pub method: Method,
    /// The path expected (without the query).
    pub path: String,
    /// Checks the request's JSON body (none for a body-less request).
    pub check: Box<dyn Fn(&Value) + Send>,
    /// The status answered.
    pub status: StatusCode,
    /// The body answered.
    pub answer: Value,
}

impl Exchange {
    /// `method path`, answered `status` with `answer`, the request's body not checked.
    pub fn new(method: Method, path: &str, status: u16, answer: Value) -> Self {
        Self {
            method,
            path: path.to_owned(),
            check: Box::new(|_| {}),
            status: StatusCode::from_u16(status).unwrap(),
            answer,
        }
    }

    /// The same, with the request's body checked by `check`.
    pub(crate) fn checking(mut self, check: impl Fn(&Value) + Send + 'static) -> Self {
        self.check = Box::new(check);
        self
    }
}

/// A `Status` answer of the API server (`404 NotFound`, `409 Conflict`, …).
pub fn status(code: u16, reason: &str) -> Value {
    serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "status": "Failure",
        "code": code, "reason": reason, "message": format!("{reason} (mock)"),
    })
}

/// The exchanges a test expects, in order.
pub(crate) struct Scenario(pub Vec<Exchange>);

impl Scenario {
    /// A client whose requests this scenario answers, and the task that answers them; await
    /// the task to check that every expected request came (it fails after `patience`).
    pub fn serve(self, patience: Duration) -> (kube::Client, tokio::task::JoinHandle<()>) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(service, "default");
        let task = tokio::spawn(async move {
            tokio::time::timeout(patience, self.run(handle))
                .await
                .expect("the code under test did not make every expected request in time");
        });
        (client, task)
    }

    async fn run(self, mut handle: Handle) {
        for (n, expected) in self.0.into_iter().enumerate() {
            let (request, reply) = handle.next_request().await.unwrap_or_else(|| {
                panic!(
                    "request {n} never came: {} {}",
                    expected.method, expected.path
                )
            });
            assert_eq!(
                request.method(),
                expected.method,
                "request {n}: {}",
                request.uri()
            );
            assert_eq!(request.uri().path(), expected.path, "request {n}");
            let bytes = request.into_body().collect_bytes().await.unwrap();
            if !bytes.is_empty() {
                let body: Value = serde_json::from_slice(&bytes).unwrap();
                (expected.check)(&body);
            }
            let answer = serde_json::to_vec(&expected.answer).unwrap();
            reply.send_response(
                Response::builder()
                    .status(expected.status)
                    .header("content-type", "application/json")
                    .body(Body::from(answer))
                    .unwrap(),
            );
        }
    }
}
