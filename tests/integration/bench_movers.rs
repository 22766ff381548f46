//! Issue 23.2's figures on kube-env: several mover Jobs copying at once, their large files'
//! parts going straight into the store (`--mover-data-path direct`) or through drainer
//! (`relay`), into an S3 server (moto) on this machine. Per round: the aggregate MB/s from
//! the handoff until every drain completed, drainer's CPU seconds per GiB moved (utime +
//! stime of the `drainer serve` process, also net of its idle CPU measured just before),
//! its peak RSS, and the bytes it counted as relayed and direct. Figures only: nothing here
//! passes or fails on a timing; a round fails only if a drain does not complete.
//!
//! Ignored by default (it moves gigabytes): `scripts/bench-movers` builds the release binary
//! and runs it with `DRAINER_TEST_BIN` pointing there, so drainer, its movers (from an image
//! of that binary, registered under a name of its own so no other test's pods run it) and
//! the figures are the release build's. drainer and moto listen on this machine's address
//! on the pod network, so pods reach both without a forwarder in between.

use crate::support::image::drainer_image_file;
use crate::support::kube::{KubeEnv, eventually, with_timeout};
use crate::support::{cluster::TestNamespace, drainer, s3, serve::TOKEN};
use anyhow::{Context, Result, bail, ensure};
use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt;

/// The mover image of this benchmark: the binary under test's, under a name no test uses.
const BENCH_IMAGE: &str = "drainer.test/drainer:bench-movers";
/// drainer's own CPU while idle is measured this long before each round.
const IDLE: Duration = Duration::from_secs(5);
const MIB: u64 = 1024 * 1024;

/// What the benchmark is asked for: `DRAINER_BENCH_MOVERS` (mover counts, default `4,8`),
/// `DRAINER_BENCH_MIB` (MiB per claim, default 128), `DRAINER_BENCH_ROUNDS` (default 1).
struct Plan {
    movers: Vec<usize>,
    mib: u64,
    rounds: usize,
}

impl Plan {
    fn from_env() -> Result<Self> {
        let var = |name: &str, default: &str| std::env::var(name).unwrap_or(default.into());
        let movers = var("DRAINER_BENCH_MOVERS", "4,8")
            .split(',')
            .map(|n| n.trim().parse::<usize>())
            .collect::<Result<Vec<_>, _>>()
            .context("DRAINER_BENCH_MOVERS: counts separated by commas")?;
        let mib = var("DRAINER_BENCH_MIB", "128")
            .parse()
            .context("DRAINER_BENCH_MIB")?;
        let rounds = var("DRAINER_BENCH_ROUNDS", "1")
            .parse()
            .context("DRAINER_BENCH_ROUNDS")?;
        Ok(Self {
            movers,
            mib,
            rounds,
        })
    }
}

/// One round's figures.
#[derive(Debug, Clone, Copy)]
struct Figures {
    seconds: f64,
    bytes: u64,
    cpu: f64,
    net_cpu: f64,
    rss_mib: f64,
    relayed: u64,
    direct: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark that moves gigabytes: scripts/bench-movers runs it"]
async fn movers_at_once_direct_and_relay() -> Result<()> {
    with_timeout(Duration::from_secs(3600), async {
        let plan = Plan::from_env()?;
        let env = KubeEnv::load()?;
        env.register_image(BENCH_IMAGE, &drainer_image_file().await?)
            .await?;
        let ns = TestNamespace::new("bench-movers").await?;
        let mut results: Vec<(usize, &str, Figures)> = Vec::new();
        for round in 0..plan.rounds {
            for &movers in &plan.movers {
                let order = if (round + movers) % 2 == 0 {
                    ["relay", "direct"]
                } else {
                    ["direct", "relay"]
                };
                for path in order {
                    let tag = format!("{path}-{movers}-{round}");
                    let figures = one_round(&ns, &env, &plan, &tag, path, movers).await?;
                    eprintln!("[bench-movers] {tag}: {figures:?}");
                    results.push((movers, path, figures));
                }
            }
        }
        print_table(&plan, &results);
        ns.finish().await
    })
    .await
}

/// Creates `count` claims named `TAG-N`, each with one file of `mib` MiB of random bytes.
async fn claims_with_data(
    ns: &TestNamespace,
    tag: &str,
    count: usize,
    mib: u64,
) -> Result<Vec<String>> {
    let mut claims = Vec::new();
    for n in 0..count {
        let pvc = format!("{tag}-{n}");
        ns.create_claim(&pvc, "1Gi").await?;
        claims.push(pvc);
    }
    let mut block = vec![0_u8; MIB as usize];
    for pvc in &claims {
        let dir = ns.bound_claim_dir(pvc, Duration::from_secs(60)).await?;
        let mut file = std::fs::File::create(dir.join("large"))?;
        for _ in 0..mib {
            rand::fill(&mut block[..]);
            file.write_all(&block)?;
        }
        file.sync_all()?;
    }
    Ok(claims)
}

/// moto on `ip`, with its bucket; stops when dropped.
async fn moto_on(ip: &str) -> Result<(tokio::process::Child, String)> {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/integration/support/s3_server.py"
    );
    let mut child = tokio::process::Command::new("python3")
        .arg(script)
        .arg(ip)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("python3 runs the S3 test server (scripts/test installs moto)")?;
    let stdout = child.stdout.take().context("piped stdout")?;
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(stdout);
    let read = reader.read_line(&mut line);
    tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .context("moto did not start within a minute")??;
    let endpoint = line.trim().to_owned();
    ensure!(endpoint.starts_with("http://"), "moto said {endpoint:?}");
    Ok((child, endpoint))
}

fn free_port(ip: &str) -> Result<u16> {
    Ok(std::net::TcpListener::bind((ip, 0))?.local_addr()?.port())
}

/// `drainer serve --kubernetes` on `HOST_IP:PORT`, its mover Jobs reaching it there.
async fn start_drainer(
    ns: &TestNamespace,
    env: &KubeEnv,
    store: &str,
    endpoint: &str,
    path: &str,
    movers: usize,
) -> Result<(tokio::process::Child, String)> {
    let url = format!("http://{}:{}", env.host_ip, free_port(&env.host_ip)?);
    let listen = url.trim_start_matches("http://").to_owned();
    let data = ns
        .work
        .join(format!("data-{store}").replace(['/', ':'], "_"));
    let log = std::fs::File::create(data.with_extension("log"))?;
    let concurrent = movers.to_string();
    let child = drainer()
        .arg("serve")
        .args(["--kubernetes", "--listen", &listen, "--data-dir"])
        .arg(&data)
        .args(["--service-url", &url, "--mover-image", BENCH_IMAGE])
        .args(["--watch-namespace", &ns.ns, "--store", store])
        .args(["--sweep-interval", "0", "--concurrent-drains", &concurrent])
        .args(["--mover-data-path", path])
        .env("KUBECONFIG", &ns.kubeconfig)
        .env("DRAINER_TOKEN", TOKEN)
        .env("AWS_ENDPOINT", endpoint)
        .env("AWS_ACCESS_KEY_ID", s3::KEY)
        .env("AWS_SECRET_ACCESS_KEY", s3::SECRET)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "false")
        .stderr(log)
        .spawn()?;
    let http = reqwest::Client::new();
    eventually("drainer ready", Duration::from_secs(60), || async {
        let ready = http.get(format!("{url}/readyz")).send().await?;
        ensure!(ready.status().is_success(), "{}", ready.status());
        Ok(())
    })
    .await?;
    Ok((child, url))
}

/// One round: `movers` claims drained at once by mover Jobs, their parts going `path`.
async fn one_round(
    ns: &TestNamespace,
    env: &KubeEnv,
    plan: &Plan,
    tag: &str,
    path: &str,
    movers: usize,
) -> Result<Figures> {
    let claims = claims_with_data(ns, tag, movers, plan.mib).await?;
    let (_moto, endpoint) = moto_on(&env.host_ip).await?;
    let store = format!("s3://bucket/{tag}");
    let (mut serve, url) = start_drainer(ns, env, &store, &endpoint, path, movers).await?;
    let pid = serve.id().context("drainer's pid")?;
    let idle_from = cpu_seconds(pid)?;
    tokio::time::sleep(IDLE).await;
    let idle_rate = (cpu_seconds(pid)? - idle_from) / IDLE.as_secs_f64();
    let http = reqwest::Client::new();
    let cpu_before = cpu_seconds(pid)?;
    let started = Instant::now();
    let handoff: serde_json::Value = http
        .post(format!("{url}/v1/handoffs"))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"namespace": ns.ns, "pvcs": claims}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let ids: Vec<String> = handoff["drains"]
        .as_array()
        .context("handoff answer")?
        .iter()
        .filter_map(|d| d["id"].as_str().map(str::to_owned))
        .collect();
    ensure!(ids.len() == movers, "handoff: {handoff}");
    wait_completed(&http, &url, &ids).await?;
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid)? - cpu_before;
    let (relayed, direct) = part_bytes(&http, &url).await?;
    let rss_mib = peak_rss_kib(pid)? as f64 / 1024.0;
    let _ = serve.start_kill();
    let _ = serve.wait().await;
    Ok(Figures {
        seconds,
        bytes: plan.mib * MIB * movers as u64,
        cpu,
        net_cpu: (cpu - idle_rate * seconds).max(0.0),
        rss_mib,
        relayed,
        direct,
    })
}

/// Waits (at most 30 minutes) until every drain of `ids` completed; any other end fails.
async fn wait_completed(http: &reqwest::Client, url: &str, ids: &[String]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(1800);
    let mut pending: Vec<&String> = ids.iter().collect();
    while !pending.is_empty() {
        ensure!(
            Instant::now() < deadline,
            "drains not completed: {pending:?}"
        );
        let mut still = Vec::new();
        for id in pending {
            let drain: serde_json::Value = http
                .get(format!("{url}/v1/drains/{id}"))
                .bearer_auth(TOKEN)
                .send()
                .await?
                .json()
                .await?;
            match drain["state"].as_str().unwrap_or_default() {
                "completed" => {}
                "failed" | "cancelled" | "not_needed" | "failing" => {
                    bail!("drain {id} ended {}: {drain}", drain["state"])
                }
                _ => still.push(id),
            }
        }
        pending = still;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// utime + stime of process `pid`, in seconds.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("/proc/PID/stat")?
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // Clock ticks of USER_HZ, 100 on Linux whatever the kernel's HZ.
    Ok(ticks as f64 / 100.0)
}

/// Peak resident set (VmHWM) of process `pid`, in KiB.
fn peak_rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("VmHWM")
}

/// The bytes of parts drainer counted as relayed and as stored directly.
async fn part_bytes(http: &reqwest::Client, url: &str) -> Result<(u64, u64)> {
    let text = http
        .get(format!("{url}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let count = |via: &str| {
        let prefix = format!("drainer_mover_part_bytes_total{{via=\"{via}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(0, |v| v as u64)
    };
    Ok((count("relay"), count("direct")))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn print_table(plan: &Plan, results: &[(usize, &str, Figures)]) {
    println!(
        "\n{} MiB per claim, one file each; moto on this machine; medians of {} round(s)\n",
        plan.mib, plan.rounds
    );
    println!(
        "| movers | path | seconds | aggregate MB/s | drainer CPU s | drainer CPU s/GiB | net of idle s/GiB | drainer peak RSS MiB | relayed MiB | direct MiB |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &movers in &plan.movers {
        for path in ["relay", "direct"] {
            let runs: Vec<Figures> = results
                .iter()
                .filter(|(m, p, _)| *m == movers && *p == path)
                .map(|(_, _, f)| *f)
                .collect();
            let m = |f: fn(&Figures) -> f64| median(runs.iter().map(f).collect());
            let gib = runs[0].bytes as f64 / (1024.0 * MIB as f64);
            println!(
                "| {movers} | {path} | {:.1} | {:.1} | {:.2} | {:.2} | {:.2} | {:.0} | {:.0} | {:.0} |",
                m(|f| f.seconds),
                runs[0].bytes as f64 / 1e6 / m(|f| f.seconds),
                m(|f| f.cpu),
                m(|f| f.cpu) / gib,
                m(|f| f.net_cpu) / gib,
                m(|f| f.rss_mib),
                m(|f| f.relayed as f64) / MIB as f64,
                m(|f| f.direct as f64) / MIB as f64,
            );
        }
    }
}
