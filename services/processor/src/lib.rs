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
//! | `audio.resample` | `audio` AUDIO -> `audio` AUDIO | `target_rate` (required, 1..768000) | stateful band-limited sinc (rubato), over 70 dB anti-aliasing, up to 64 channels, lags half its filter |
//! | `audio.level` | `audio` AUDIO -> `level` JSON | | RMS and peak dBFS, null for silence |
//! | `audio.dynamic_gain` | `audio` AUDIO, `control` JSON -> `audio` AUDIO | `gain_db` (default 0), `ramp_ms` (default 10, 0..1000) | stateful; changes ramp linearly |
//! | `video.grayscale` | `video` VIDEO -> `video` VIDEO (GRAY8) | | BT.601 luma |
//! | `tensor.normalize` | `tensor` TENSOR (F32, F64) -> `tensor` TENSOR | | population variance |
//! | `binary.digest` | `data` BINARY -> `digest` TEXT | | SHA-256, lowercase hex |

pub mod processors;

use std::{collections::HashMap, future::Future, time::Duration};

use flowplane_grpc::{auth::Tokens, config::ClientArgs};
use flowplane_sdk::{HostBuilder, ProcessorHost, RegistrationConfig, ServeOptions};
use tokio::net::TcpListener;
use tonic::transport::ServerTlsConfig;

/// Errors of the processor service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is invalid; the message names the flag.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The SDK host failed (bind, TLS, registration set-up).
    #[error(transparent)]
    Sdk(#[from] flowplane_sdk::Error),
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything the processor service needs to run.
#[derive(Clone, Debug)]
pub struct Config {
    /// Host name shown by `GetCapabilities`.
    pub name: String,
    /// Processors to serve; empty serves every built-in.
    pub processors: Vec<String>,
    /// Control plane to register with; `None` serves without registering.
    pub control_plane: Option<String>,
    /// TLS trust for an `https://` control plane.
    pub client: ClientArgs,
    /// Wanted component id; `None` lets the control plane assign one.
    pub id: Option<String>,
    /// Join token presented to the control plane.
    pub join_token: Option<String>,
    /// Labels registered with the host.
    pub labels: HashMap<String, String>,
    /// Address registered with the control plane; `None` uses the bound address.
    pub advertise: Option<String>,
    /// TLS identity; `None` serves plaintext.
    pub tls: Option<ServerTlsConfig>,
    /// How long open streams may go on after shutdown.
    pub grace_period: Duration,
    /// Open streams above which the host reports DEGRADED.
    pub max_streams: usize,
    /// Processor calls run at once over all streams (the blocking pool's share).
    pub max_concurrent_calls: usize,
    /// Tokens by role (`--token-file`); when set, `Process` and `GetCapabilities` need a
    /// `process` token. `None` serves every caller.
    pub tokens: Option<Tokens>,
    /// Serve reflection (`--reflection`), listing the host service, health and reflection.
    pub reflection: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            name: "flowplane-processor".into(),
            processors: Vec::new(),
            control_plane: None,
            client: ClientArgs::default(),
            id: None,
            join_token: None,
            labels: HashMap::new(),
            advertise: None,
            tls: None,
            grace_period: Duration::from_secs(10),
            max_streams: 1024,
            max_concurrent_calls: 64,
            tokens: None,
            reflection: true,
        }
    }
}

impl Config {
    /// Checks the settings, naming the flag of the first bad one.
    pub fn validate(&self) -> Result<()> {
        let known = processors::names();
        for name in &self.processors {
            if !known.contains(&name.as_str()) {
                return Err(Error::Config(format!(
                    "--processors: unknown processor {name:?}; built-ins are: {}",
                    known.join(", ")
                )));
            }
        }
        if self.max_streams == 0 {
            return Err(Error::Config("--max-streams must be at least 1".into()));
        }
        if self.max_concurrent_calls == 0 {
            return Err(Error::Config(
                "--max-concurrent-calls must be at least 1".into(),
            ));
        }
        if self.id.as_deref().is_some_and(str::is_empty) {
            return Err(Error::Config("--id must not be empty".into()));
        }
        if let Some(control_plane) = &self.control_plane {
            flowplane_grpc::replicas::check(control_plane, "--control-plane", &self.client)
                .map_err(|e| Error::Config(e.to_string()))?;
        }
        if let Some(token) = &self.join_token
            && token.chars().any(|c| !c.is_ascii_graphic())
        {
            return Err(Error::Config(
                "--join-token must be printable ascii without spaces".into(),
            ));
        }
        Ok(())
    }

    /// The host serving the configured processors.
    pub fn host(&self) -> Result<ProcessorHost> {
        let mut builder = HostBuilder::new(&self.name)
            .version(env!("CARGO_PKG_VERSION"))
            .max_streams(self.max_streams)
            .max_concurrent_calls(self.max_concurrent_calls);
        if let Some(id) = &self.id {
            builder = builder.host_id(id);
        }
        for (name, register) in processors::BUILT_INS {
            if self.processors.is_empty() || self.processors.iter().any(|p| p == name) {
                builder = register(builder);
            }
        }
        Ok(builder.build()?)
    }
}

/// Serves the processors on `listener` until `shutdown` resolves; registers with the
/// control plane when configured. On shutdown: NOT_SERVING, STOPPING, deregistered, open
/// streams drained within the grace period.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    config.validate()?;
    let host = config.host()?;
    let registration = config.control_plane.as_ref().map(|control_plane| {
        let mut registration = RegistrationConfig::new(control_plane.clone());
        registration.client = config.client.clone();
        registration.join_token = config.join_token.clone();
        registration.processor_id = config.id.clone();
        registration.metadata = config.labels.clone();
        registration
    });
    let options = ServeOptions {
        tls: config.tls,
        advertise: config.advertise,
        registration,
        grace_period: config.grace_period,
        tokens: config.tokens,
        reflection: config.reflection,
    };
    flowplane_sdk::serve(host, options, listener, shutdown).await?;
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
        let names: Vec<String> = config
            .host()
            .unwrap()
            .capabilities()
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(names, ["passthrough", "binary.digest"]);
        assert_eq!(Config::default().host().unwrap().capabilities().len(), 10);
    }

    #[test]
    fn invalid_settings_name_their_flag() {
        let unknown = Config {
            processors: vec!["audio.gian".into()],
            ..Config::default()
        };
        let message = unknown.validate().unwrap_err().to_string();
        assert!(
            message.contains("--processors: unknown processor \"audio.gian\""),
            "{message}"
        );
        let bad_endpoint = Config {
            control_plane: Some("not a uri".into()),
            ..Config::default()
        };
        assert!(
            bad_endpoint
                .validate()
                .unwrap_err()
                .to_string()
                .contains("--control-plane")
        );
        let bad_entry = Config {
            control_plane: Some("http://127.0.0.1:1,https://127.0.0.1:2/v1".into()),
            ..Config::default()
        };
        let message = bad_entry.validate().unwrap_err().to_string();
        assert!(
            message.contains("--control-plane: invalid entry \"https://127.0.0.1:2/v1\""),
            "{message}"
        );
        let no_streams = Config {
            max_streams: 0,
            ..Config::default()
        };
        assert!(
            no_streams
                .validate()
                .unwrap_err()
                .to_string()
                .contains("--max-streams")
        );
    }
}
