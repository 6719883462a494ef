//! Graceful shutdown: the first SIGTERM or Ctrl-C cancels a token that servers and
//! background tasks watch; a second signal exits the process at once. Nothing here
//! decides how to drain: each component does that when the token fires.

use tokio_util::sync::CancellationToken;

/// Exit code used when a second signal cuts the grace period short (128 + SIGINT).
pub const EXIT_FORCED: i32 = 130;

/// A cancellation token cancelled by the first termination signal.
pub fn on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        termination_signal().await;
        tracing::info!("shutdown requested, draining; a second signal exits at once");
        trigger.cancel();
        termination_signal().await;
        tracing::warn!("second signal, exiting now");
        std::process::exit(EXIT_FORCED);
    });
    token
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn termination_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
