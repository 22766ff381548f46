//! A mock API server for unit tests of the code that calls the API (controller-rs'
//! `fixtures.rs` is the model): a [`kube::Client`] whose requests reach a [`Scenario`] that
//! expects them one by one, checks each (method, path, body) and answers it as the API server
//! would, and fails the test on a request it did not expect or on one that never came. Its
//! [`cluster`] and [`caches`] give the code a [`Cluster`] whose watches hold what a test says.

use crate::Cluster;
use crate::watch::Caches;
use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::Value;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// One request the code under test must make, and the API server's answer to it.
pub(crate) struct Exchange {
    /// The method expected.
    pub method: Method,
    /// The path expected (without the query); a path ending in `*` is a prefix (for names
    /// the code makes up, such as an Event's).
    pub path: String,
    /// Checks the request's query (`""` for none).
    pub query: Box<dyn Fn(&str) + Send>,
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
            query: Box::new(|_| {}),
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

    /// The same, with the request's query checked by `check`.
    pub(crate) fn checking_query(mut self, check: impl Fn(&str) + Send + 'static) -> Self {
        self.query = Box::new(check);
        self
    }

    fn expects(&self, n: usize, request: &Request<Body>) {
        let uri = request.uri();
        assert_eq!(request.method(), self.method, "request {n}: {uri}");
        match self.path.strip_suffix('*') {
            Some(prefix) => assert!(uri.path().starts_with(prefix), "request {n}: {uri}"),
            None => assert_eq!(uri.path(), self.path, "request {n}"),
        }
        (self.query)(uri.query().unwrap_or_default());
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

/// The API server of a [`Scenario`], answering in the background. Awaiting it ends the
/// scenario: it fails (an `Err` of the await) if an expected request did not come within the
/// patience given, if a request was not as expected, or if the code made a request after the
/// expected ones (each is answered `500` meanwhile, so that code that ignores failures goes
/// on, and named in the failure).
pub(crate) struct Server {
    task: tokio::task::JoinHandle<()>,
    done: CancellationToken,
}

impl std::future::IntoFuture for Server {
    type Output = Result<(), tokio::task::JoinError>;
    type IntoFuture = futures::future::BoxFuture<'static, Self::Output>;

    fn into_future(self) -> Self::IntoFuture {
        self.done.cancel();
        Box::pin(self.task)
    }
}

impl Scenario {
    /// A client whose requests this scenario answers, and its server (see [`Server`]): await
    /// it once the code under test is done, to check every expected request came in time
    /// (within `patience`) and no other did.
    pub fn serve(self, patience: Duration) -> (kube::Client, Server) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(service, "default");
        let done = CancellationToken::new();
        let task = tokio::spawn(self.run(handle, patience, done.clone()));
        (client, Server { task, done })
    }

    async fn run(self, mut handle: Handle, patience: Duration, done: CancellationToken) {
        tokio::time::timeout(patience, self.expected(&mut handle))
            .await
            .expect("the code under test did not make every expected request in time");
        let mut unexpected = Vec::new();
        loop {
            let request = tokio::select! {
                biased;
                request = handle.next_request() => request,
                () = done.cancelled() => None,
            };
            let Some((request, reply)) = request else {
                break;
            };
            unexpected.push(format!("{} {}", request.method(), request.uri()));
            reply.send_response(answer(500, &status(500, "UnexpectedRequest")));
        }
        assert!(
            unexpected.is_empty(),
            "requests after the expected ones: {unexpected:?}"
        );
    }

    async fn expected(self, handle: &mut Handle) {
        for (n, expected) in self.0.into_iter().enumerate() {
            let (request, reply) = handle.next_request().await.unwrap_or_else(|| {
                panic!(
                    "request {n} never came: {} {}",
                    expected.method, expected.path
                )
            });
            expected.expects(n, &request);
            let bytes = request.into_body().collect_bytes().await.unwrap();
            if !bytes.is_empty() {
                let body: Value = serde_json::from_slice(&bytes).unwrap();
                (expected.check)(&body);
            }
            reply.send_response(answer(expected.status.as_u16(), &expected.answer));
        }
    }
}

/// The value of parameter `key` in a request's `query`, decoded.
pub(crate) fn query_param(query: &str, key: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

fn answer(status: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

/// Caches holding `objects`, as a watch that listed them has them.
pub(crate) fn caches<K>(objects: impl IntoIterator<Item = K>) -> Caches<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    let (reader, mut writer) = kube::runtime::reflector::store();
    for object in objects {
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(object));
    }
    vec![reader].into()
}

/// A cluster reached through `client` whose watches hold nothing (fill them with [`caches`]:
/// `Cluster { pods: caches([pod]), ..cluster(client) }`).
pub(crate) fn cluster(client: kube::Client) -> Cluster {
    Cluster {
        client,
        namespaces: Vec::new(),
        pods: caches([]),
        claims: caches([]),
        volumes: caches([]),
        sets: caches([]),
        jobs: caches([]),
        holds: caches([]),
        terminations: Default::default(),
        changes: Default::default(),
        health: Default::default(),
        seen_sets: Default::default(),
    }
}
