//! Fleet-sync benchmark: a real control plane with N routes, real data
//! planes and simulated ones, all in one run.
//!
//! Measures, for `--writes` single-route writes: the time from the admin
//! write's 2xx until every real data plane serves the new revision and
//! until every simulated one has acknowledged it (median, p99); the control
//! plane's CPU time and peak memory; the snapshot size on the wire; a
//! reconnect storm after a control-plane restart; and how fast a data plane
//! starts serving from a cache of N routes with the control plane down.
//!
//! Run it with `scripts/bench/fleet-sync` (release build).

use anyhow::{bail, Context, Result};
use clap::Parser;
use nio_e2e::sim::{self, Holding, Received, SimOptions};
use nio_e2e::*;
use prost::Message;
use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

#[derive(Parser, Debug)]
#[command(about = "Benchmark configuration sync to a fleet")]
struct Args {
    #[arg(long, default_value_t = 10_000)]
    routes: usize,
    /// Real nio-data-plane processes.
    #[arg(long, default_value_t = 10)]
    real: usize,
    /// Simulated data planes (protocol-complete streams).
    #[arg(long, default_value_t = 1000)]
    sims: usize,
    /// Streams per HTTP/2 connection for the simulated data planes.
    #[arg(long, default_value_t = 10)]
    sims_per_connection: usize,
    #[arg(long, default_value_t = 50)]
    writes: usize,
}

/// The newest revision each sim reported, and per revision how many sims
/// reported it and when the last one did.
#[derive(Default)]
struct Tally {
    latest: HashMap<String, u64>,
    per_revision: HashMap<u64, (usize, Instant)>,
}

fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .context("stat")?
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok(ticks / 100.0)
}

fn peak_rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .context("VmHWM")?
        .parse()?;
    Ok(kb / 1024.0)
}

fn pct(samples: &mut [Duration], p: f64) -> String {
    samples.sort();
    format!("{:.1} ms", percentile(samples, p).as_secs_f64() * 1000.0)
}

async fn wait_tally(
    tally: &Mutex<Tally>,
    revision: u64,
    sims: usize,
    timeout: Duration,
) -> Result<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some((n, at)) = tally
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .per_revision
            .get(&revision)
        {
            if *n >= sims {
                return Ok(*at);
            }
        }
        if Instant::now() > deadline {
            bail!("simulated data planes did not all reach revision {revision}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn wait_real(http: &reqwest::Client, dps: &[DataPlane], revision: u64) -> Result<Instant> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut pending: Vec<&DataPlane> = dps.iter().collect();
    while !pending.is_empty() {
        let mut still = Vec::new();
        for dp in pending {
            if dp.readiness(http).await?.unwrap_or(0) < revision {
                still.push(dp);
            }
        }
        pending = still;
        if Instant::now() > deadline {
            bail!("real data planes did not all reach revision {revision}");
        }
    }
    Ok(Instant::now())
}

type Samples = Vec<Duration>;

/// `count` single-route writes, each waited for on every data plane.
#[allow(clippy::too_many_arguments)]
async fn writes(
    admin: &Admin,
    http: &reqwest::Client,
    dps: &[DataPlane],
    sims: Option<(&Mutex<Tally>, usize)>,
    count: usize,
    routes: usize,
    offset: usize,
    cp_pid: u32,
) -> Result<(Samples, Samples, Samples, f64)> {
    let cpu_before = cpu_seconds(cp_pid)?;
    let (mut real_times, mut sim_times, mut write_times) = (Vec::new(), Vec::new(), Vec::new());
    for w in offset..offset + count {
        let i = (w * 7919) % routes;
        let t0 = Instant::now();
        let written = admin
            .replace(route(
                &format!("r{i}"),
                &[&format!("h{}.bench", i % 100)],
                &[&format!("/p{i}/w{w}")],
                "app",
            ))
            .await?;
        let acked = Instant::now();
        write_times.push(acked - t0);
        let rev: u64 = written["metadata"]["resourceVersion"]
            .as_str()
            .context("rv")?
            .parse()?;
        let sims_done = async {
            match sims {
                Some((tally, n)) => wait_tally(tally, rev, n, Duration::from_secs(30))
                    .await
                    .map(Some),
                None => Ok(None),
            }
        };
        let (real_done, sim_done) = tokio::join!(wait_real(http, dps, rev), sims_done);
        real_times.push(real_done?.duration_since(acked));
        if let Some(at) = sim_done? {
            sim_times.push(at.saturating_duration_since(acked));
        }
    }
    Ok((
        real_times,
        sim_times,
        write_times,
        cpu_seconds(cp_pid)? - cpu_before,
    ))
}

fn report_writes(
    line: &mut impl FnMut(String),
    args: &Args,
    mut real: Samples,
    sims: Option<Samples>,
    mut writes: Samples,
    cpu: f64,
    rss: f64,
) {
    let phase = if sims.is_some() {
        "with the simulated fleet"
    } else {
        "real data planes only"
    };
    line(format!(
        "[{phase}] admin write (validate, commit, flush) until 2xx: median {}, p99 {}",
        pct(&mut writes, 0.5),
        pct(&mut writes, 0.99)
    ));
    line(format!(
        "[{phase}] write 2xx → all {} real data planes serve it: median {}, p99 {}",
        args.real,
        pct(&mut real, 0.5),
        pct(&mut real, 0.99)
    ));
    if let Some(mut sims) = sims {
        line(format!(
            "[{phase}] write 2xx → all {} simulated data planes ACK: median {}, p99 {}",
            args.sims,
            pct(&mut sims, 0.5),
            pct(&mut sims, 0.99)
        ));
    }
    line(format!("[{phase}] control plane CPU for {} writes: {:.2} s ({:.1} ms per write); peak RSS so far {:.0} MiB", args.writes, cpu, cpu * 1000.0 / args.writes as f64, rss));
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let app = TestBackend::start("bench").await?;
    // Plaintext gRPC: the simulated data planes speak the sync protocol
    // with the join token; TLS handshakes are not part of these figures.
    let mut cp = ControlPlane::start_plaintext(&dir.path().join("cp")).await?;
    let admin = cp.admin();
    let http = reqwest::Client::new();
    let mut out = String::new();
    let mut line = |s: String| {
        println!("{s}");
        out.push_str(&s);
        out.push('\n');
    };

    // Load the routes (8 writers; the store serialises and flushes each).
    let t = Instant::now();
    admin.create(backend("app", &[app.url()])).await?;
    let mut writers = JoinSet::new();
    for w in 0..8 {
        let admin = admin.clone();
        let n = args.routes;
        writers.spawn(async move {
            for i in (w..n).step_by(8) {
                admin
                    .create(route(
                        &format!("r{i}"),
                        &[&format!("h{}.bench", i % 100)],
                        &[&format!("/p{i}")],
                        "app",
                    ))
                    .await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = writers.join_next().await {
        r??;
    }
    let load = t.elapsed();
    let revision = admin.revision().await?;
    line(format!(
        "loaded {} routes in {:.1} s ({:.0} durable writes/s)",
        args.routes,
        load.as_secs_f64(),
        args.routes as f64 / load.as_secs_f64()
    ));

    // Real data planes.
    let mut dps = Vec::new();
    let t = Instant::now();
    for i in 0..args.real {
        dps.push(
            DataPlane::start(
                &cp,
                &format!("real-{i}"),
                &dir.path().join(format!("real-{i}")),
            )
            .await?,
        );
    }
    let ids: Vec<String> = dps.iter().map(|d| d.id.clone()).collect();
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    admin
        .wait_applied(&id_refs, revision, Duration::from_secs(120))
        .await?;
    line(format!(
        "{} real data planes started and applied {} routes in {:.1} s",
        args.real,
        args.routes,
        t.elapsed().as_secs_f64()
    ));

    // Phase A: the 10 real data planes alone.
    let (real_times, _, write_times, cpu) = writes(
        &admin,
        &http,
        &dps,
        None,
        args.writes,
        args.routes,
        0,
        cp.proc.pid(),
    )
    .await?;
    report_writes(
        &mut line,
        &args,
        real_times,
        None,
        write_times,
        cpu,
        peak_rss_mib(cp.proc.pid())?,
    );

    // What one data plane spends applying a one-route delta.
    let mut apply: Vec<Duration> = dps[0]
        .proc
        .log_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["fields"]["message"] == "configuration applied")
        .filter_map(|v| v["fields"]["apply_us"].as_u64())
        .skip(1)
        .map(Duration::from_micros)
        .collect();
    line(format!("one data plane applying a one-route delta to {} routes (verify, decode, validate, compile, swap): median {}, p99 {}", args.routes, pct(&mut apply, 0.5), pct(&mut apply, 0.99)));

    // Simulated data planes.
    let revision = admin.revision().await?;
    let token = cp.join_token()?;
    let tally = Arc::new(Mutex::new(Tally::default()));
    let (report_tx, mut report_rx) = tokio::sync::mpsc::unbounded_channel::<Received>();
    {
        let tally = tally.clone();
        tokio::spawn(async move {
            while let Some(r) = report_rx.recv().await {
                let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
                t.latest.insert(r.id, r.revision);
                let e = t.per_revision.entry(r.revision).or_insert((0, r.at));
                e.0 += 1;
                e.1 = e.1.max(r.at);
            }
        });
    }
    let t = Instant::now();
    let mut sims = JoinSet::new();
    let url = cp.grpc_url();
    for c in 0..args.sims.div_ceil(args.sims_per_connection) {
        let channel = sim::connect(&url).await?;
        for s in 0..args.sims_per_connection {
            let n = c * args.sims_per_connection + s;
            if n >= args.sims {
                break;
            }
            let opts = SimOptions::new(format!("sim-{n}"), token.clone());
            let (channel, report) = (channel.clone(), report_tx.clone());
            sims.spawn(async move {
                // Reconnect with jittered backoff, like a real data plane.
                let holding = Arc::new(Mutex::new(Holding::default()));
                let mut backoff = Duration::from_millis(100);
                loop {
                    let started = Instant::now();
                    let _ = sim::run(
                        channel.clone(),
                        opts.clone(),
                        holding.clone(),
                        report.clone(),
                    )
                    .await;
                    if started.elapsed() > Duration::from_secs(5) {
                        backoff = Duration::from_millis(100);
                    }
                    let wait = backoff / 2 + backoff.mul_f64(rand_fraction(n) / 2.0);
                    tokio::time::sleep(wait).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            });
        }
    }
    wait_tally(&tally, revision, args.sims, Duration::from_secs(300)).await?;
    line(format!(
        "{} simulated data planes connected and acknowledged in {:.1} s",
        args.sims,
        t.elapsed().as_secs_f64()
    ));

    // Snapshot size, from a verifying sim's full snapshot.
    let (holding, mut rx, probe) = sim::start_one(
        &url,
        SimOptions {
            verify: true,
            ..SimOptions::new("probe", token.clone())
        },
    )
    .await?;
    rx.recv().await.context("probe snapshot")?;
    let snapshot = {
        let h = holding.lock().unwrap_or_else(|p| p.into_inner());
        h.set.as_ref().context("probe set")?.to_snapshot(h.revision)
    };
    probe.abort();
    let raw = snapshot.encode_to_vec();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&raw)?;
    let gz = gz.finish()?;
    line(format!(
        "full snapshot of {} resources: {:.2} MiB protobuf, {:.2} MiB gzip on the wire",
        snapshot.resources.len(),
        raw.len() as f64 / 1048576.0,
        gz.len() as f64 / 1048576.0
    ));

    // Phase B: the same writes with the 1,000 simulated data planes as well.
    let (real_times, sim_times, write_times, cpu) = writes(
        &admin,
        &http,
        &dps,
        Some((&tally, args.sims)),
        args.writes,
        args.routes,
        args.writes,
        cp.proc.pid(),
    )
    .await?;
    report_writes(
        &mut line,
        &args,
        real_times,
        Some(sim_times),
        write_times,
        cpu,
        peak_rss_mib(cp.proc.pid())?,
    );

    // Reconnect storm: SIGKILL and restart the control plane.
    let latest = admin.revision().await?;
    tally
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .latest
        .clear();
    let t = Instant::now();
    cp.restart().await?;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let back = tally
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .latest
            .values()
            .filter(|r| **r == latest)
            .count();
        if back >= args.sims {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "only {back} of {} simulated data planes came back",
                args.sims
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let storm = t.elapsed();
    let admin = cp.admin();
    admin
        .wait_applied(&id_refs, latest, Duration::from_secs(120))
        .await?;
    let all_back = t.elapsed();
    line(format!(
        "reconnect storm after SIGKILL + restart: {} simulated data planes back on revision {latest} in {:.2} s, all {} real ones in {:.2} s; control plane peak RSS {:.0} MiB",
        args.sims,
        storm.as_secs_f64(),
        args.real,
        all_back.as_secs_f64(),
        peak_rss_mib(cp.proc.pid())?
    ));
    sims.abort_all();

    // Cold start from the cache with the control plane down.
    cp.proc.kill9();
    let cache = dir.path().join("cold");
    std::fs::create_dir_all(&cache)?;
    std::fs::copy(
        dps[0].cache_dir.join("snapshot.pb"),
        cache.join("snapshot.pb"),
    )?;
    let t = Instant::now();
    let cold =
        DataPlane::start_with(&cp.grpc_url(), &cp.join_token_file(), "cold", &cache, &[]).await?;
    let probe_path = "/p5";
    loop {
        let r = http
            .get(cold.url(probe_path))
            .header("host", "h5.bench")
            .send()
            .await;
        if r.is_ok_and(|r| r.status() == 200) {
            break;
        }
        if t.elapsed() > Duration::from_secs(30) {
            bail!("the cold data plane never served");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    line(format!(
        "data plane with {} routes in its cache, control plane down: serving {:.0} ms after start",
        args.routes,
        t.elapsed().as_secs_f64() * 1000.0
    ));
    Ok(())
}

/// A cheap per-sim jitter in [0, 1) without a shared RNG.
fn rand_fraction(n: usize) -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0) as usize;
    ((n.wrapping_mul(2654435761) ^ nanos) % 1000) as f64 / 1000.0
}
