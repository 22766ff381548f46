//! Bad tokens cost the API server a bounded number of TokenReviews, on kube-env: a real
//! `drainer serve --kubernetes` is sent 2,000 distinct bad tokens as fast as 64 attackers
//! can send them, then one bad token 500 times. What is asserted comes from drainer's own
//! `drainer_token_reviews_total{result}` (reviews sent: `accepted`, `refused`, `error`;
//! answered without one: `throttled`, `cached_refusal`), checked against every answer the
//! attackers got and against the API server's `apiserver_request_total` for TokenReviews:
//! the reviews sent stay within the gate's burst plus its rate over the attack's duration,
//! every bad token is answered `401` or `429` with a JSON error, and a pod handing off with a
//! fresh token of its own (reviewed like any unknown token) is answered `2xx` during the
//! attack. And a pod of the cluster holds 5,000 connections half-open: drainer closes each,
//! and the pod's handoffs are answered meanwhile. And a pod, with its own projected token, runs
//! 40 batch reads of full batches (64 × 256 KiB) of snapshots of the claims it mounts and reads
//! the answers a few bytes at a time: each further batch of that caller is answered `429` with
//! `Retry-After`, drainer's peak resident memory (`VmHWM`) stays under the memory limit of
//! `deploy/base/deployment.yaml`, and handoffs are answered meanwhile. Handoff latencies with
//! and without the attacks are printed (`eprintln`), never asserted.

use crate::support::cluster::TestNamespace;
use crate::support::forward::Forward;
use crate::support::kube::{KubeEnv, from_json, wait_for_pod_phase, with_timeout};
use crate::support::serve::Serve;
use anyhow::{Context, Result, ensure};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::PostParams;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Bound of one test (a guard against a hung test, not a timing target).
const LIMIT: Duration = Duration::from_secs(300);
const WAIT: Duration = Duration::from_secs(90);
/// `--token-reviews-per-second` the tests give drainer; its bursts are twice as many.
const PER_SECOND: u32 = 50;
/// Distinct bad tokens of the flood.
const BAD_TOKENS: usize = 2_000;
/// Requests of the attack in flight at once.
const ATTACKERS: usize = 64;
/// Times the one bad token is sent.
const REPEATS: usize = 500;
/// How long drainer remembers a refused token (`review_gate::REFUSED_TTL`).
const REFUSED_TTL: Duration = Duration::from_secs(5);
/// TokenReviews other tests sharing kube-env may ask for during an attack.
const OTHERS: u64 = 100;
/// Handoffs of the baseline, without an attack.
const BASELINE: usize = 30;

/// A namespace with a pod `web` mounting claim `data`, and a drainer in Kubernetes mode.
struct Target {
    namespace: TestNamespace,
    pod: Pod,
    serve: Serve,
    http: reqwest::Client,
}

impl std::ops::Deref for Target {
    type Target = TestNamespace;

    fn deref(&self) -> &TestNamespace {
        &self.namespace
    }
}

impl Target {
    async fn new(prefix: &str) -> Result<Self> {
        Self::with_args(prefix, &[]).await
    }

    /// [`Target::new`], with `extra` arguments for drainer.
    async fn with_args(prefix: &str, extra: &[&str]) -> Result<Self> {
        let namespace = TestNamespace::with_web_account(prefix).await?;
        let post = PostParams::default();
        namespace.create_claim("data", "16Mi").await?;
        namespace
            .api::<Pod>()
            .create(&post, &from_json(web_pod()))
            .await?;
        let pod = namespace.running_pod("web", WAIT).await?;
        let rate = PER_SECOND.to_string();
        let serve = namespace
            .kube_drainer()
            .lease(5)
            .args(&["--token-reviews-per-second", rate.as_str()])
            .args(extra)
            .start(&namespace.work.join("data"))
            .await?;
        Ok(Self {
            namespace,
            pod,
            serve,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
        })
    }

    /// A fresh token of ServiceAccount `web`, bound to pod `web`, for drainer's audience:
    /// unknown to drainer, so its first use is reviewed.
    async fn fresh_token(&self) -> Result<String> {
        self.token("web", &["drainer"], Some(&self.pod)).await
    }

    /// The pod's handoff with a fresh token, sent again on `429` until answered: the time
    /// until it was answered `2xx`, and how many `429`s it got first.
    async fn handoff(&self) -> Result<(Duration, u64)> {
        let token = self.fresh_token().await?;
        let (started, mut throttled) = (Instant::now(), 0);
        loop {
            let response = self
                .http
                .post(format!("{}/v1/handoffs", self.serve.url))
                .bearer_auth(&token)
                .json(&json!({"namespace": self.ns, "pvcs": ["data"]}))
                .send()
                .await?;
            let status = response.status();
            if status.is_success() {
                return Ok((started.elapsed(), throttled));
            }
            let body = response.text().await.unwrap_or_default();
            ensure!(
                status == 429,
                "the pod's handoff was answered {status}: {body}"
            );
            ensure!(
                started.elapsed() < WAIT,
                "no handoff answered within {WAIT:?}"
            );
            throttled += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// drainer's `drainer_token_reviews_total`, by result.
    async fn reviews(&self) -> Result<Reviews> {
        let text = self
            .http
            .get(format!("{}/metrics", self.serve.url))
            .send()
            .await?
            .text()
            .await?;
        let by_result: BTreeMap<String, u64> = text
            .lines()
            .filter_map(|l| l.strip_prefix("drainer_token_reviews_total{result=\""))
            .filter_map(|l| l.split_once("\"} "))
            .filter_map(|(result, n)| Some((result.to_owned(), n.trim().parse().ok()?)))
            .collect();
        ensure!(by_result.len() == 5, "not every result exported: {text}");
        Ok(Reviews(by_result))
    }

    async fn finish(self) -> Result<()> {
        self.namespace.finish().await
    }
}

/// The pod: ServiceAccount `web`, claim `data` mounted (kube-env simulates the image).
fn web_pod() -> Value {
    json!({
        "metadata": {"name": "web"},
        "spec": {
            "serviceAccountName": "web",
            "containers": [{"name": "app", "image": "registry.invalid/web:1",
                            "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]
        }
    })
}

/// `drainer_token_reviews_total` by result, as scraped.
#[derive(Debug, Clone)]
struct Reviews(BTreeMap<String, u64>);

impl Reviews {
    fn get(&self, result: &str) -> u64 {
        self.0.get(result).copied().unwrap_or_default()
    }

    /// What happened between `before` and this scrape.
    fn since(&self, before: &Reviews) -> Reviews {
        Reviews(
            self.0
                .iter()
                .map(|(r, n)| (r.clone(), n - before.get(r)))
                .collect(),
        )
    }

    /// TokenReviews sent to the API server.
    fn sent(&self) -> u64 {
        self.get("accepted") + self.get("refused") + self.get("error")
    }
}

/// TokenReviews the API server has answered since it started (`apiserver_request_total` of
/// resource `tokenreviews`, every code), from its own `/metrics`.
async fn apiserver_token_reviews(client: &Client) -> Result<u64> {
    let request = http::Request::get("/metrics").body(Vec::new())?;
    let text = client.request_text(request).await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter(|l| l.contains(r#"resource="tokenreviews""#))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum::<f64>() as u64)
}

/// Sends a handoff with each of `tokens`, [`ATTACKERS`] at a time: the status of each answer
/// and its body (`Value::Null` when it was not JSON), or why none came.
async fn attack(url: String, ns: String, tokens: Vec<String>) -> Vec<Result<(u16, Value)>> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("a client");
    let handoff = json!({"namespace": ns, "pvcs": ["data"]});
    futures::stream::iter(tokens)
        .map(|token| {
            let sent = http
                .post(format!("{url}/v1/handoffs"))
                .bearer_auth(token)
                .json(&handoff)
                .send();
            async move {
                let response = sent.await?;
                let status = response.status().as_u16();
                let retry_after = response.headers().contains_key("retry-after");
                let body: Value = response.json().await.unwrap_or_default();
                ensure!(status != 429 || retry_after, "429 without Retry-After");
                Ok((status, body))
            }
        })
        .buffer_unordered(ATTACKERS)
        .collect()
        .await
}

/// How many of `answers` were `401` and how many `429`; fails on any other answer, or one
/// without a JSON error of the matching code.
fn tally(answers: &[Result<(u16, Value)>]) -> Result<(u64, u64)> {
    let (mut refused, mut throttled) = (0, 0);
    for answer in answers {
        let (status, body) = answer.as_ref().map_err(|e| anyhow::anyhow!("{e:#}"))?;
        let code = body["error"]["code"].as_str();
        match (status, code) {
            (401, Some("unauthorized")) => refused += 1,
            (429, Some("too_many_requests")) => throttled += 1,
            _ => anyhow::bail!("a bad token was answered {status}: {body}"),
        }
    }
    Ok((refused, throttled))
}

/// p50, p99 and the largest of `latencies`, in milliseconds, as one line.
fn percentiles(latencies: &mut [Duration]) -> String {
    latencies.sort();
    let at = |q: f64| {
        let i = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i].as_secs_f64() * 1000.0
    };
    format!(
        "{} handoffs, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        latencies.len(),
        at(0.50),
        at(0.99),
        at(1.0)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_bad_tokens_cost_a_bounded_number_of_token_reviews() -> Result<()> {
    with_timeout(LIMIT, async {
        let t = Target::new("kube-abuse-flood").await?;
        let mut quiet = Vec::new();
        for _ in 0..BASELINE {
            quiet.push(t.handoff().await?.0);
        }
        let bad: Vec<String> = (0..BAD_TOKENS)
            .map(|i| format!("bad-{i}-{:016x}", rand::random::<u64>()))
            .collect();
        let (before, api_before) = (t.reviews().await?, apiserver_token_reviews(&t.client).await?);
        let started = Instant::now();
        let flood = tokio::spawn(attack(t.serve.url.clone(), t.ns.clone(), bad));
        // The pod hands off, each time with a token drainer has not seen, until the flood
        // ends: at least once while it is under way.
        let (mut during, mut pod_throttled) = (Vec::new(), 0);
        while during.is_empty() || !flood.is_finished() {
            let (latency, throttled) = t.handoff().await?;
            during.push(latency);
            pod_throttled += throttled;
        }
        let answers = flood.await?;
        let flood_seconds = started.elapsed().as_secs_f64();
        let (after, api_after) = (t.reviews().await?, apiserver_token_reviews(&t.client).await?);
        let elapsed = started.elapsed().as_secs_f64();
        let (refused, throttled) = tally(&answers)?;
        let counted = after.since(&before);
        // The bucket's own bound, no slack needed: the window measured here holds every review
        // of the attack and of the pod's handoffs, and the bucket held at most its burst.
        let bound = u64::from(2 * PER_SECOND) + (f64::from(PER_SECOND) * elapsed).ceil() as u64;
        let api = api_after - api_before;
        eprintln!(
            "kube_abuse figures: {BAD_TOKENS} distinct bad tokens ({ATTACKERS} at a time) in {flood_seconds:.2} s: \
             {refused} answered 401, {throttled} 429; drainer sent {} TokenReviews ({} refused, {} accepted: the pod's), \
             bound {bound} (burst {} + {PER_SECOND}/s × {elapsed:.2} s); the API server answered {api} TokenReviews meanwhile",
            counted.sent(),
            counted.get("refused"),
            counted.get("accepted"),
            2 * PER_SECOND,
        );
        eprintln!("kube_abuse figures: the pod's handoffs, fresh token each, without the attack: {}", percentiles(&mut quiet));
        eprintln!(
            "kube_abuse figures: the pod's handoffs, fresh token each, during the attack: {} ({pod_throttled} 429s retried)",
            percentiles(&mut during)
        );
        ensure!(
            counted.sent() <= bound,
            "{} TokenReviews sent, more than the bound {bound}: {counted:?}",
            counted.sent()
        );
        ensure!(refused + throttled == BAD_TOKENS as u64);
        ensure!(counted.get("refused") == refused, "every 401 is a review's refusal: {counted:?}");
        ensure!(
            counted.get("throttled") == throttled + pod_throttled,
            "every 429 is counted: {counted:?}"
        );
        ensure!(
            counted.get("accepted") == during.len() as u64,
            "each of the pod's handoffs is one review accepted: {counted:?}"
        );
        ensure!(counted.get("error") == 0 && counted.get("cached_refusal") == 0, "{counted:?}");
        ensure!(
            api >= counted.sent(),
            "the API server answered {api} TokenReviews, fewer than drainer counted: {counted:?}"
        );
        ensure!(
            api <= bound + OTHERS,
            "the API server answered {api} TokenReviews (bound {bound}, other tests {OTHERS})"
        );
        t.finish().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bad_token_sent_five_hundred_times_costs_one_review() -> Result<()> {
    with_timeout(LIMIT, async {
        let t = Target::new("kube-abuse-repeat").await?;
        let before = t.reviews().await?;
        let started = Instant::now();
        let token = format!("bad-{:016x}", rand::random::<u64>());
        let answers = attack(t.serve.url.clone(), t.ns.clone(), vec![token; REPEATS]).await;
        let elapsed = started.elapsed();
        let (refused, throttled) = tally(&answers)?;
        let counted = t.reviews().await?.since(&before);
        // One review, and one more each time the refusal is forgotten.
        let bound = 1 + (elapsed.as_secs_f64() / REFUSED_TTL.as_secs_f64()) as u64;
        eprintln!(
            "kube_abuse figures: one bad token sent {REPEATS} times ({ATTACKERS} at a time) in {:.2} s: \
             {} TokenReviews, {} refused from the cache",
            elapsed.as_secs_f64(),
            counted.sent(),
            counted.get("cached_refusal")
        );
        ensure!(refused == REPEATS as u64 && throttled == 0, "{refused} 401s, {throttled} 429s");
        ensure!(counted.sent() <= bound, "{} reviews, bound {bound}: {counted:?}", counted.sent());
        ensure!(
            counted.get("cached_refusal") + counted.get("refused") == REPEATS as u64,
            "{counted:?}"
        );
        t.finish().await
    })
    .await
}

/// What the attacker pod runs (`python3 -c SCRIPT N HOST PORT`): opens N connections to drainer
/// one after another, sends part of a request head on four in five (nothing on the fifth) and
/// never the rest, prints `opened O never-connected C`, then waits until each is closed (a
/// response, e.g. a `408`, is read on until the close), at most 90 s, and prints `closed X
/// still-open S` (exit 0 if none is).
const HALF_OPEN: &str = r#"
import resource, selectors, socket, sys, time
n, host, port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 1024), hard))
partial = b"POST /v1/handoffs HTTP/1.1\r\nHost: drainer\r\nContent-Ty"
held, never = [], 0
for i in range(n):
    try:
        s = socket.create_connection((host, port), timeout=10)
        if i % 5:
            s.sendall(partial)
    except OSError:
        never += 1
        continue
    s.setblocking(False)
    held.append(s)
print(f"opened {len(held)} never-connected {never}", flush=True)
sel = selectors.DefaultSelector()
for s in held:
    sel.register(s, selectors.EVENT_READ)
still, deadline = len(held), time.time() + 90
while still and time.time() < deadline:
    for key, _ in sel.select(timeout=1):
        try:
            data = key.fileobj.recv(4096)
        except OSError:
            data = b""
        if not data:
            sel.unregister(key.fileobj)
            key.fileobj.close()
            still -= 1
print(f"closed {len(held) - still} still-open {still}", flush=True)
sys.exit(0 if still == 0 else 1)
"#;

/// Connections the attacker pod holds half-open.
const HALF_OPEN_CONNECTIONS: usize = 5_000;

/// Connections drainer's side holds on `port` (ESTABLISHED in this machine's
/// `/proc/net/tcp`, where drainer and the forwarder to it run).
fn held_by_drainer(port: u16) -> Result<usize> {
    let table = std::fs::read_to_string("/proc/net/tcp")?;
    Ok(table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local = fields.get(1).and_then(|a| a.rsplit_once(':'));
            fields.get(3) == Some(&"01")
                && local.and_then(|(_, p)| u16::from_str_radix(p, 16).ok()) == Some(port)
        })
        .count())
}

/// Connections of drainer's the pod `web`'s handoffs may hold at once (keep-alive).
const OWN_CONNECTIONS: usize = 16;

/// A pod of the cluster opens 5,000 connections to drainer (through this machine's address on
/// the pod network, relayed to drainer's port) that send part of a request head, or nothing,
/// and stall: once they are open, drainer's side holds none of them within a few header
/// timeouts (those over its connection limit are closed at once, the others within the
/// timeout), and the pod `web` hands off with a fresh token, answered `2xx`, during the attack
/// and after it. What the attacker saw and the handoff latencies are printed, never asserted
/// (an idle connection whose handshake a full accept queue dropped looks open to its client
/// forever, though no server holds it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_connections_from_a_pod_are_dropped_and_handoffs_still_answered() -> Result<()> {
    with_timeout(LIMIT, async {
        let t = Target::with_args(
            "kube-abuse-half-open",
            &["--header-timeout", "2", "--body-timeout", "2"],
        )
        .await?;
        let env = KubeEnv::load()?;
        let upstream = t.serve.url.trim_start_matches("http://").to_owned();
        let port: u16 = upstream.rsplit_once(':').context("no port")?.1.parse()?;
        let forward = Forward::start(&env.host_ip, &upstream).await?;
        let mut quiet = Vec::new();
        for _ in 0..10 {
            quiet.push(t.handoff().await?.0);
        }
        let (host, forward_port) = forward.address.rsplit_once(':').context("no port")?;
        let attacker: Pod = from_json(json!({
            "metadata": {"name": "attacker"},
            "spec": {
                "restartPolicy": "Never",
                "containers": [{
                    "name": "attack", "image": "registry.invalid/attack:1",
                    "command": ["python3", "-c", HALF_OPEN,
                                HALF_OPEN_CONNECTIONS.to_string(), host, forward_port]
                }]
            }
        }));
        let pods = t.api::<Pod>();
        pods.create(&PostParams::default(), &attacker).await?;
        let pod = wait_for_pod_phase(&pods, "attacker", &["Running", "Succeeded", "Failed"], WAIT).await?;
        // The pod's handoffs while it opens its connections, then until drainer holds none.
        let (mut during, mut most_held) = (Vec::new(), 0);
        let started = Instant::now();
        while !env.container_log(&pod, "attack")?.contains("opened") {
            during.push(t.handoff().await?.0);
            most_held = most_held.max(held_by_drainer(port)?);
            ensure!(started.elapsed() < LIMIT / 2, "the attacker never opened its connections");
        }
        let opened_at = Instant::now();
        let released = loop {
            during.push(t.handoff().await?.0);
            let held = held_by_drainer(port)?;
            most_held = most_held.max(held);
            if held <= OWN_CONNECTIONS {
                break opened_at.elapsed();
            }
            ensure!(
                opened_at.elapsed() < Duration::from_secs(30),
                "drainer still holds {held} connections 30 s after the attacker opened its own"
            );
        };
        let ended = wait_for_pod_phase(&pods, "attacker", &["Succeeded", "Failed"], WAIT).await?;
        let mut after = Vec::new();
        for _ in 0..10 {
            after.push(t.handoff().await?.0);
        }
        // Its last line, once the log has it.
        let mut tally = env.container_log(&ended, "attack")?;
        for _ in 0..50 {
            if tally.contains("still-open") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            tally = env.container_log(&ended, "attack")?;
        }
        let phase = ended.status.as_ref().and_then(|s| s.phase.clone());
        eprintln!(
            "kube_abuse figures: the attacker pod ({}): {}",
            phase.unwrap_or_default(),
            tally.trim().replace('\n', "; ")
        );
        eprintln!(
            "kube_abuse figures: drainer held at most {most_held} connections, and {OWN_CONNECTIONS} or fewer {released:?} after the attacker had opened all of its"
        );
        eprintln!("kube_abuse figures: the pod's handoffs without the attack: {}", percentiles(&mut quiet));
        eprintln!("kube_abuse figures: the pod's handoffs during {HALF_OPEN_CONNECTIONS} half-open connections: {}", percentiles(&mut during));
        eprintln!("kube_abuse figures: the pod's handoffs after the attack: {}", percentiles(&mut after));
        let opened = tally
            .split_whitespace()
            .skip_while(|w| *w != "opened")
            .nth(1)
            .and_then(|n| n.parse::<usize>().ok());
        ensure!(
            opened.is_some_and(|o| o >= HALF_OPEN_CONNECTIONS * 4 / 5),
            "most of the attacker's connections connected: {tally}"
        );
        ensure!(most_held > OWN_CONNECTIONS, "the attack reached drainer: {most_held} connections at most");
        t.finish().await
    })
    .await
}

/// What the reader pod runs (`python3 -c SCRIPT HOST PORT NS SECONDS N PVC=KEY…`), with its
/// projected token: for each claim, N batch reads of 64 × 256 KiB of
/// object `KEY` sent at once, each answer's head read a few bytes at a time (prints
/// `{"readers": [STATUS…]}`); then one more batch of each claim, read whole (prints
/// `{"refused": [{"status", "retry_after", "code"}…]}`); then, for SECONDS, 16 bytes of each
/// reader's answer every quarter second (prints `{"done": {"read": BYTES, "ended": N}}`, N
/// answers that ended meanwhile). On an error it prints `{"error": …}` and exits 1.
const SLOW_READERS: &str = r#"
import json, socket, sys, time
host, port, ns, seconds = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
per_claim, volumes = int(sys.argv[5]), [a.split("=", 1) for a in sys.argv[6:]]
token = open("/var/run/secrets/drainer/token").read().strip()

def send(pvc, key):
    body = json.dumps({"reads": [{"key": key, "start": 0, "end": 262144}] * 64}).encode()
    head = (f"POST /v1/volumes/{ns}/{pvc}/objects/batch HTTP/1.1\r\nHost: drainer\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    s = socket.create_connection((host, port), timeout=30)
    s.sendall(head + body)
    return s

def head(s):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(16)
        if not chunk:
            raise EOFError(f"closed after {data!r}")
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    fields = dict(l.lower().split(": ", 1) for l in lines[1:])
    return int(lines[0].split()[1]), fields, rest

def whole(s):
    status, fields, body = head(s)
    while len(body) < int(fields.get("content-length", "0")):
        body += s.recv(4096)
    code = json.loads(body)["error"]["code"] if body else None
    return {"status": status, "retry_after": fields.get("retry-after"), "code": code}

try:
    readers = [send(pvc, key) for pvc, key in volumes for _ in range(per_claim)]
    print(json.dumps({"readers": [head(s)[0] for s in readers]}), flush=True)
    extra = [send(pvc, key) for pvc, key in volumes]
    print(json.dumps({"refused": [whole(s) for s in extra]}), flush=True)
    read, ended, live, deadline = 0, 0, list(readers), time.time() + seconds
    while time.time() < deadline:
        for s in list(live):
            chunk = s.recv(16)
            if not chunk:
                live.remove(s)
                ended += 1
            read += len(chunk)
        time.sleep(0.25)
    print(json.dumps({"done": {"read": read, "ended": ended}}), flush=True)
except Exception as e:
    print(json.dumps({"error": repr(e)}), flush=True)
    sys.exit(1)
"#;

/// Claims the reader pod mounts, each with a snapshot it reads.
const READ_CLAIMS: usize = 5;
/// Batch reads one caller may have in flight per volume (`--batch-reads-per-caller`'s
/// default, `inflight::BATCH_READS`): five claims hold the pod's 40 slow readers.
const BATCH_READS_PER_CALLER: usize = 8;
/// How long the reader pod reads its answers slowly once all are under way.
const SLOW_SECONDS: u64 = 20;

/// drainer's memory limit in `deploy/base/deployment.yaml` (the `memory:` under `limits:`),
/// in bytes.
fn deployment_memory_limit() -> Result<u64> {
    let manifest = include_str!("../../deploy/base/deployment.yaml");
    let value = manifest
        .lines()
        .skip_while(|l| l.trim() != "limits:")
        .find_map(|l| l.trim().strip_prefix("memory:"))
        .context("no memory limit in deploy/base/deployment.yaml")?
        .trim();
    let (number, unit) = value.split_at(
        value
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(value.len()),
    );
    let scale: u64 = match unit {
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        _ => anyhow::bail!("memory limit {value:?}: not in Mi or Gi"),
    };
    Ok(number.parse::<u64>()? * scale)
}

/// The most memory process `pid` has held resident (`VmHWM` of `/proc/PID/status`), in
/// bytes.
fn peak_resident(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .context("no VmHWM in /proc/PID/status")?;
    Ok(kib * 1024)
}

/// Makes claim `pvc` with a 1 MiB file and a snapshot of it (the admin's handoff, the
/// test's mover): `PVC=KEY`, KEY the file's object, relative to the volume.
async fn claim_with_snapshot(t: &Target, pvc: &str, seed: u64) -> Result<String> {
    t.create_claim(pvc, "16Mi").await?;
    let dir = t.bound_claim_dir(pvc, WAIT).await?;
    std::fs::write(dir.join("blob"), crate::support::tree::bytes(seed, 1 << 20))?;
    let drain = t.serve.drain_with_mover(&t.ns, pvc, &dir).await;
    let snapshot = t.serve.drain(&drain).await["snapshot"]
        .as_str()
        .context("the drain has no snapshot")?
        .to_owned();
    let key = format!("snapshots/{snapshot}/files/blob");
    let stored = t.work.join(format!("store/volumes/{}/{pvc}/{key}", t.ns));
    let size = std::fs::metadata(&stored)
        .with_context(|| format!("{}", stored.display()))?
        .len();
    ensure!(
        size >= 256 * 1024,
        "{key} is {size} bytes: a read of 256 KiB would be short"
    );
    Ok(format!("{pvc}={key}"))
}

/// Pod `reader` of ServiceAccount `web`, mounting `claims` and its projected token for
/// drainer, running [`SLOW_READERS`] with `args`.
fn reader_pod(claims: &[String], args: &[String]) -> Pod {
    let token =
        json!({"name": "drainer-token", "mountPath": "/var/run/secrets/drainer", "readOnly": true});
    let mounts = claims
        .iter()
        .map(|c| json!({"name": c, "mountPath": format!("/{c}")}))
        .chain([token]);
    let volumes = claims
        .iter()
        .map(|c| json!({"name": c, "persistentVolumeClaim": {"claimName": c}}))
        .chain([json!({"name": "drainer-token", "projected": {"sources": [
            {"serviceAccountToken": {"audience": "drainer", "expirationSeconds": 3600, "path": "token"}}
        ]}})]);
    let command: Vec<String> = ["python3", "-c", SLOW_READERS]
        .into_iter()
        .map(str::to_owned)
        .chain(args.iter().cloned())
        .collect();
    from_json(json!({
        "metadata": {"name": "reader"},
        "spec": {
            "serviceAccountName": "web",
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "read", "image": "registry.invalid/attack:1",
                            "command": command, "volumeMounts": mounts.collect::<Vec<_>>()}],
            "volumes": volumes.collect::<Vec<_>>()
        }
    }))
}

/// The value of the first line of `log` that is a JSON object with `field`.
fn logged(log: &str, field: &str) -> Option<Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find_map(|v| v.get(field).cloned())
}

/// A pod of the cluster, with its own projected token, runs 40 batch reads of full batches
/// (64 × 256 KiB) of snapshots of five claims it mounts ([`BATCH_READS_PER_CALLER`] per
/// claim, the most one caller may have in flight), every answer `200`, and reads them a few
/// bytes at a time for [`SLOW_SECONDS`]: one more batch of each claim is answered `429`
/// with `Retry-After` and a JSON error; drainer's peak resident memory (`VmHWM`) stays under
/// the Deployment's memory limit; none of the 40 answers is cut off; and pod `web` hands off
/// with a fresh token, answered `2xx`, throughout. Handoff latencies and memory are printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_slow_readers_in_a_pod_stay_under_the_memory_limit_and_handoffs_still_answered()
-> Result<()> {
    with_timeout(LIMIT, async {
        let t = Target::new("kube-abuse-slow").await?;
        let env = KubeEnv::load()?;
        let limit = deployment_memory_limit()?;
        let mut claims = Vec::new();
        let mut reads = Vec::new();
        for i in 0..READ_CLAIMS {
            let pvc = format!("read-{i}");
            reads.push(claim_with_snapshot(&t, &pvc, i as u64).await?);
            claims.push(pvc);
        }
        let upstream = t.serve.url.trim_start_matches("http://").to_owned();
        let forward = Forward::start(&env.host_ip, &upstream).await?;
        let (host, port) = forward.address.rsplit_once(':').context("no port")?;
        let mut quiet = Vec::new();
        for _ in 0..10 {
            quiet.push(t.handoff().await?.0);
        }
        let pid = t.serve.pid().context("drainer's pid")?;
        let before = peak_resident(pid)?;
        let args: Vec<String> = [host, port, &t.ns, &SLOW_SECONDS.to_string(), &BATCH_READS_PER_CALLER.to_string()]
            .into_iter()
            .map(str::to_owned)
            .chain(reads)
            .collect();
        let pods = t.api::<Pod>();
        pods.create(&PostParams::default(), &reader_pod(&claims, &args)).await?;
        let pod = wait_for_pod_phase(&pods, "reader", &["Running", "Succeeded", "Failed"], WAIT).await?;
        // The pod's handoffs from when every reader has its answer's head until the end.
        let (mut during, started) = (Vec::new(), Instant::now());
        let log = loop {
            let log = env.container_log(&pod, "read")?;
            if log.contains("\"done\"") || log.contains("\"error\"") {
                break log;
            }
            if log.contains("\"readers\"") {
                during.push(t.handoff().await?.0);
            } else {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            ensure!(started.elapsed() < LIMIT / 2, "the reader pod never finished: {log}");
        };
        let peak = peak_resident(pid)?;
        let mib = |b: u64| b as f64 / f64::from(1 << 20);
        let readers = READ_CLAIMS * BATCH_READS_PER_CALLER;
        eprintln!(
            "kube_abuse figures: {readers} slow readers of full batches in a pod: drainer's peak resident memory \
             (VmHWM) {:.0} MiB before, {:.0} MiB after (Deployment limit {:.0} MiB); the pod's last line: {}",
            mib(before),
            mib(peak),
            mib(limit),
            log.lines().last().unwrap_or_default()
        );
        eprintln!("kube_abuse figures: the pod's handoffs without the attack: {}", percentiles(&mut quiet));
        eprintln!(
            "kube_abuse figures: the pod's handoffs during {readers} slow readers: {}",
            percentiles(&mut during)
        );
        let statuses = logged(&log, "readers").with_context(|| format!("no readers: {log}"))?;
        ensure!(
            statuses == json!(vec![200; readers]),
            "every slow reader was answered 200: {statuses}"
        );
        let refused = logged(&log, "refused").with_context(|| format!("no refusals: {log}"))?;
        let one = json!({"status": 429, "retry_after": "1", "code": "too_many_requests"});
        ensure!(
            refused == json!(vec![one; READ_CLAIMS]),
            "the 41st and later batches were refused with Retry-After: {refused}"
        );
        let done = logged(&log, "done").with_context(|| format!("the pod did not finish: {log}"))?;
        ensure!(done["ended"] == 0, "answers were cut off while read slowly: {done}");
        ensure!(!during.is_empty(), "no handoff during the attack");
        ensure!(peak < limit, "drainer peaked at {:.0} MiB, over its limit {:.0} MiB", mib(peak), mib(limit));
        t.finish().await
    })
    .await
}
