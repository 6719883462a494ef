//! The load generator against the real services and the raw echo, with tiny counts: every
//! chunk sent is answered and counted, sessions open and close, nothing hangs. Speed is
//! never asserted here; `make bench` reports it.

use std::time::Duration;

use flowplane_bench::{
    echo::EchoClient,
    load::{self, ChunkKind, PacedSpec, Target, UnarySpec, WindowSpec},
    platform::{self, InProcess},
};
use flowplane_proto::controlplane::v1::ProcessorHeartbeatRequest;

const LIMIT: Duration = Duration::from_secs(60);

fn window(target: &Target, kind: ChunkKind, window: usize, count: u64) -> WindowSpec {
    WindowSpec {
        target: target.clone(),
        kind,
        window,
        count,
        max_time: LIMIT,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_chunk_through_the_raw_echo_is_answered() {
    let echo = platform::echo_in_process().await.unwrap();
    let target = Target::Echo { addr: echo.addr };
    let out = load::windowed(&window(&target, ChunkKind::json(100), 8, 300))
        .await
        .unwrap();
    assert_eq!(
        (out.sent, out.results, out.errors),
        (300, 300, 0),
        "{out:?}"
    );
    assert_eq!(out.latency.count(), 300);
    assert_eq!(out.bytes, 300 * 100);

    let paced = load::paced(&PacedSpec {
        target: target.clone(),
        sessions: 4,
        chunks: 5,
        open_concurrency: 4,
        // Four sessions over two shared connections (B3-mux).
        connections: 2,
    })
    .await;
    assert_eq!(paced.opened, 4, "{paced:?}");
    assert_eq!((paced.expected, paced.results, paced.errors), (20, 20, 0));
    assert_eq!(paced.send_lag.count(), 20);

    let channel = platform::connect(echo.addr).await.unwrap();
    let calls = load::unary(
        &UnarySpec {
            in_flight: 4,
            count: 50,
            max_time: LIMIT,
        },
        move |_, i| {
            let mut client = EchoClient::new(channel.clone());
            async move {
                let back = client
                    .unary(ProcessorHeartbeatRequest {
                        processor_id: format!("p-{i}"),
                        ..Default::default()
                    })
                    .await?;
                assert_eq!(back.processor_id, format!("p-{i}"));
                Ok(())
            }
        },
    )
    .await;
    assert_eq!((calls.ok, calls.errors), (50, 0), "{calls:?}");
    echo.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_through_the_pipeline_are_all_answered_legacy_audio_too() {
    let platform = InProcess::start(100).await.unwrap();
    let manifest = load::one_node_manifest("passthrough", serde_json::json!({}));
    platform::wait_runnable(platform.pipeline.addr, &manifest)
        .await
        .unwrap();
    let target = Target::Pipeline {
        addr: platform.pipeline.addr,
        manifest,
    };
    for kind in [
        ChunkKind::json(100),
        ChunkKind::binary(64 * 1024),
        ChunkKind::audio(false),
        ChunkKind::audio(true),
    ] {
        let out = load::windowed(&window(&target, kind.clone(), 4, 40))
            .await
            .unwrap();
        assert_eq!(
            (out.sent, out.results, out.errors, out.failure.as_deref()),
            (40, 40, 0, None),
            "{kind:?}"
        );
    }

    let idle = load::idle(&target, 6, 3, 6).await;
    assert_eq!(
        (idle.opened, idle.failures),
        (6, 0),
        "{:?}",
        idle.first_failure
    );
    idle.close().await;

    let gain = load::one_node_manifest("audio.gain", serde_json::json!({ "gain_db": -6.0 }));
    platform::wait_runnable(platform.pipeline.addr, &gain)
        .await
        .unwrap();
    let paced = load::paced(&PacedSpec {
        target: Target::Pipeline {
            addr: platform.pipeline.addr,
            manifest: gain,
        },
        sessions: 3,
        chunks: 4,
        open_concurrency: 3,
        connections: 0,
    })
    .await;
    assert_eq!(
        (paced.opened, paced.results, paced.errors),
        (3, 12, 0),
        "{:?}",
        paced.first_failure
    );
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_cannot_open_is_counted_not_hung() {
    let platform = InProcess::start(100).await.unwrap();
    // No processor serves this name: the pipeline refuses the session at init.
    let target = Target::Pipeline {
        addr: platform.pipeline.addr,
        manifest: load::one_node_manifest("no.such.processor", serde_json::json!({})),
    };
    let error = load::windowed(&window(&target, ChunkKind::json(100), 1, 5))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("StreamPipeline"), "{error}");
    let idle = load::idle(&target, 2, 2, 2).await;
    assert_eq!((idle.opened, idle.failures), (0, 2));
    idle.close().await;
    platform.stop().await;
}
