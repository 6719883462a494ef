//! `flowplane-processor`: hosts the built-in processors behind
//! `flowplane.processor.v1.ProcessorService` with the SDK, and registers with the control
//! plane when one is configured. Several instances may run side by side, each its own
//! component. It never imports another service; everything shared lives in the SDK.
//!
//! | processor | inputs -> outputs | params | notes |
//! | --- | --- | --- | --- |
//! | `passthrough` | `data` ANY -> `data` ANY | | zero-copy |
//! | `json.calculator` | `json` JSON -> `json` JSON | | `{"op", "operands"}` -> `{"result"}` |
//! | `text.transform` | `text` TEXT -> `text` TEXT | `mode` (required): upper, lower, reverse | reverse by grapheme cluster |
//! | `audio.gain` | `audio` AUDIO -> `audio` AUDIO | `gain_db` (required, -120..120) | integers clip |
//! | `audio.resample` | `audio` AUDIO -> `audio` AUDIO | `target_rate` (required, 1..768000) | stateful linear interpolation |
//! | `audio.level` | `audio` AUDIO -> `level` JSON | | RMS and peak dBFS, null for silence |
//! | `audio.dynamic_gain` | `audio` AUDIO, `control` JSON -> `audio` AUDIO | `gain_db` (default 0) | stateful |
//! | `video.grayscale` | `video` VIDEO -> `video` VIDEO (GRAY8) | | BT.601 luma |
//! | `tensor.normalize` | `tensor` TENSOR (F32, F64) -> `tensor` TENSOR | | population variance |
//! | `binary.digest` | `data` BINARY -> `digest` TEXT | | SHA-256, lowercase hex |

pub mod processors;

use std::future::Future;

use flowplane_sdk::{HostBuilder, ProcessorHost};
use tokio::net::TcpListener;

/// Errors of the processor service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The SDK host failed: a setting (the message names the flag), bind, TLS,
    /// registration set-up.
    #[error(transparent)]
    Sdk(#[from] flowplane_sdk::Error),
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything the processor service needs to run: the SDK's host settings, the same
/// for this binary and every custom host. `processors` selects built-ins by name.
pub type Config = flowplane_sdk::HostConfig;

/// Every built-in processor on a host named `flowplane-processor`, in the order hosts
/// list them.
pub fn built_ins() -> HostBuilder {
    processors::BUILT_INS.iter().fold(
        HostBuilder::new("flowplane-processor").version(processors::VERSION),
        |builder, (_, register)| register(builder),
    )
}

/// The host serving the configured built-ins.
pub fn host(config: &Config) -> Result<ProcessorHost> {
    Ok(config.host(built_ins())?)
}

/// Serves the processors on `listener` until `shutdown` resolves; registers with the
/// control plane when configured. On shutdown: NOT_SERVING, STOPPING, deregistered, open
/// streams drained within the grace period.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    flowplane_sdk::run(built_ins(), config, listener, shutdown).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subset_of_processors_can_be_served() {
        let config = Config {
            processors: vec!["binary.digest".into(), "passthrough".into()],
            ..Config::default()
        };
        let names: Vec<String> = host(&config)
            .unwrap()
            .capabilities()
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(names, ["passthrough", "binary.digest"]);
        let all = host(&Config::default()).unwrap().capabilities();
        assert_eq!(all.len(), processors::BUILT_INS.len());
        assert_eq!(all.len(), 10);
    }

    #[test]
    fn an_unknown_processor_names_the_flag_and_the_built_ins() {
        let unknown = Config {
            processors: vec!["audio.gian".into()],
            ..Config::default()
        };
        let message = host(&unknown).unwrap_err().to_string();
        assert!(
            message.contains("--processors: unknown processor \"audio.gian\""),
            "{message}"
        );
        assert!(message.contains("audio.gain"), "{message}");
    }
}
