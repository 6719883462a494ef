//! B9: one session driven exactly like the comparison with an in-process streaming peer
//! (issue 18): `BinaryData` chunks of 100 B and 64 KiB, lockstep, 8, 64, 256 and all in
//! flight, a fixed number of chunks, chunks/s and p50/p99 per chunk. Every pattern runs
//! on the raw bidi echo and on `[passthrough]` in each placement, interleaved round by
//! round (the order rotates), and each figure is the median of the rounds.

use std::time::Duration;

use serde_json::json;

use crate::{
    Result,
    load::{self, ChunkKind, Target, WindowOutcome, WindowSpec},
    platform::{self, InProcess},
    report::Row,
    scenarios::Profile,
};

/// What is driven in one B9 round.
#[derive(Clone, Debug)]
struct Driven {
    /// Row id suffix and JSON key: `raw`, `remote`, `local`.
    name: &'static str,
    target: Target,
}

/// The in-flight patterns: `None` is every chunk at once.
const WINDOWS: [Option<usize>; 5] = [Some(1), Some(8), Some(64), Some(256), None];

fn window_label(window: Option<usize>) -> String {
    match window {
        Some(1) => "lockstep".into(),
        Some(n) => format!("w{n}"),
        None => "all".into(),
    }
}

/// The median outcome by rate (the middle round), so its latency belongs to it.
fn median_round(mut rounds: Vec<WindowOutcome>) -> WindowOutcome {
    rounds.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
    rounds.swap_remove(rounds.len() / 2)
}

/// B9: every (size, window) pattern on the raw echo and on each placement of
/// `[passthrough]` (remote: a processor host over 127.0.0.1; local: the host embedded
/// in the pipeline process).
pub async fn b9(profile: &Profile) -> Result<Vec<Row>> {
    let (count, rounds, max_time) = profile.b9;
    let platform = InProcess::start(1_000).await?;
    let echo = platform::echo_in_process().await?;
    let mut driven = vec![Driven {
        name: "raw",
        target: Target::Echo { addr: echo.addr },
    }];
    for (name, manifest) in [
        ("remote", load::one_node_manifest("passthrough", json!({}))),
        ("local", load::local_manifest("passthrough")),
    ] {
        platform::wait_runnable(platform.pipeline.addr, &manifest).await?;
        driven.push(Driven {
            name,
            target: Target::Pipeline {
                addr: platform.pipeline.addr,
                manifest,
            },
        });
    }
    let mut rows = Vec::new();
    for size in [100usize, 64 * 1024] {
        let kind = ChunkKind::binary(size);
        for window in WINDOWS {
            let spec = |target: &Target, count: u64| WindowSpec {
                target: target.clone(),
                kind: kind.clone(),
                window: window.map_or(count as usize, |w| w),
                count,
                max_time,
            };
            // Warm-up: the connection, the allocator and the processor's first stream.
            for d in &driven {
                load::windowed(&spec(&d.target, (count / 20).max(50))).await?;
            }
            let mut outcomes: Vec<Vec<WindowOutcome>> = vec![Vec::new(); driven.len()];
            for round in 0..rounds {
                for k in 0..driven.len() {
                    let i = (k + round) % driven.len();
                    outcomes[i].push(load::windowed(&spec(&driven[i].target, count)).await?);
                }
            }
            let medians: Vec<WindowOutcome> = outcomes.into_iter().map(median_round).collect();
            let raw = &medians[0];
            let label = window_label(window);
            for (d, fp) in driven.iter().zip(&medians).skip(1) {
                let mut row = Row::new(
                    &format!("B9-{}-{label}-{}", size_label(size), d.name),
                    &format!(
                        "one session, {size} B binary chunks, [passthrough] {} placement, {} in flight, {count} chunks, median of {rounds}",
                        d.name,
                        window.map_or_else(|| "all".to_string(), |w| w.to_string()),
                    ),
                    "in-process",
                    "chunks/s",
                )
                .values(fp.rate(), "raw bidi echo", raw.rate());
                row.goal = "(reported)".into();
                row.latency = Some(fp.latency.summary());
                row.baseline_latency = Some(raw.latency.summary());
                row.errors = fp.errors;
                row.details = json!({
                    "flowplane": outcome_json(fp),
                    "raw_echo": outcome_json(raw),
                    "p50_ratio": fp.latency.summary().p50_ms / raw.latency.summary().p50_ms.max(1e-9),
                });
                rows.push(row);
            }
        }
    }
    echo.stop().await;
    platform.stop().await;
    Ok(rows)
}

fn size_label(size: usize) -> String {
    if size >= 1024 {
        format!("{}KiB", size / 1024)
    } else {
        format!("{size}B")
    }
}

fn outcome_json(o: &WindowOutcome) -> serde_json::Value {
    let latency = o.latency.summary();
    json!({
        "results": o.results,
        "errors": o.errors,
        "seconds": o.elapsed.as_secs_f64(),
        "chunks_per_s": o.rate(),
        "p50_ms": latency.p50_ms,
        "p99_ms": latency.p99_ms,
        "failure": o.failure,
    })
}

/// B9's limits: chunks per run, rounds, and time per run at most.
pub const FULL: (u64, usize, Duration) = (10_000, 3, Duration::from_secs(30));
/// B9's smoke limits.
pub const QUICK: (u64, usize, Duration) = (500, 1, Duration::from_secs(5));
