//! A host binary's settings as one value, and [`run`], which serves a host with them:
//! what [`crate::main`] builds from the flags, what the built-in `flowplane-processor`
//! runs and what tests fill in by hand, so all three take one code path. Checks name the
//! flag of the bad setting; none of this binds a port.

use std::{collections::HashMap, future::Future, time::Duration};

use flowplane_grpc::{auth::Tokens, config::ClientArgs};
use tokio::net::TcpListener;
use tonic::transport::ServerTlsConfig;

use crate::{
    ConnectorHost, ConnectorHostBuilder, DEFAULT_MAX_CONCURRENT_CALLS, Error, HostBuilder,
    ProcessorHost, RegistrationConfig, Result, ServeOptions,
};

/// Everything a processor host needs to run, besides its processors.
#[derive(Clone, Debug)]
pub struct HostConfig {
    /// Processors to serve (`--processors`), or on a connector host the connectors
    /// (`--connectors`); empty serves every one the host has.
    pub processors: Vec<String>,
    /// Control plane to register with (`--control-plane`), or a comma-separated list of
    /// replicas; `None` serves without registering.
    pub control_plane: Option<String>,
    /// TLS trust and client certificate for an `https://` control plane.
    pub client: ClientArgs,
    /// Wanted component id (`--id`); `None` lets the control plane assign one.
    pub id: Option<String>,
    /// Join token presented to the control plane (`--join-token`).
    pub join_token: Option<String>,
    /// Labels registered with the host (`--label`).
    pub labels: HashMap<String, String>,
    /// Address registered with the control plane (`--advertise`); `None` uses the bound one.
    pub advertise: Option<String>,
    /// TLS identity; `None` serves plaintext.
    pub tls: Option<ServerTlsConfig>,
    /// How long open streams may go on after shutdown (`--grace-period`).
    pub grace_period: Duration,
    /// Open streams above which the host reports DEGRADED (`--max-streams`).
    pub max_streams: usize,
    /// Processor calls run at once over all streams (`--max-concurrent-calls`).
    pub max_concurrent_calls: usize,
    /// Tokens by role (`--token-file`); when set, `Process` and `GetCapabilities` need a
    /// `process` token. `None` serves every caller.
    pub tokens: Option<Tokens>,
    /// Serve reflection (`--reflection`), listing the host service, health and reflection.
    pub reflection: bool,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
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
            max_concurrent_calls: DEFAULT_MAX_CONCURRENT_CALLS,
            tokens: None,
            reflection: true,
        }
    }
}

fn invalid(setting: &'static str, message: &str) -> Error {
    Error::InvalidConfig {
        setting,
        message: message.to_string(),
    }
}

impl HostConfig {
    /// Checks the settings, naming the flag of the first bad one. The processor names
    /// are checked against a host's processors by [`HostConfig::host`].
    pub fn validate(&self) -> Result<()> {
        if self.max_streams == 0 {
            return Err(invalid("--max-streams", "must be at least 1"));
        }
        if self.max_concurrent_calls == 0 {
            return Err(invalid("--max-concurrent-calls", "must be at least 1"));
        }
        if self.id.as_deref().is_some_and(str::is_empty) {
            return Err(invalid("--id", "must not be empty"));
        }
        if let Some(control_plane) = &self.control_plane {
            flowplane_grpc::replicas::check(control_plane, "--control-plane", &self.client)?;
        }
        if let Some(token) = &self.join_token
            && token.chars().any(|c| !c.is_ascii_graphic())
        {
            return Err(invalid(
                "--join-token",
                "must be printable ascii without spaces",
            ));
        }
        Ok(())
    }

    /// `builder` with these settings: the selected processors, stream and call limits and
    /// the component id, built. Fails on an unknown processor name or a bad capability.
    pub fn host(&self, builder: HostBuilder) -> Result<ProcessorHost> {
        let mut builder = builder
            .only(&self.processors)?
            .max_streams(self.max_streams)
            .max_concurrent_calls(self.max_concurrent_calls);
        if let Some(id) = &self.id {
            builder = builder.host_id(id);
        }
        builder.build()
    }

    /// A connector host from `builder` with these settings: the connectors selected by
    /// `processors` (`--connectors` on a connector host's command line), the stream limit
    /// and the host id. Fails on an unknown connector name or a bad spec.
    pub fn connector_host(&self, builder: ConnectorHostBuilder) -> Result<ConnectorHost> {
        let mut builder = builder
            .only(&self.processors)?
            .max_streams(self.max_streams);
        if let Some(id) = &self.id {
            builder = builder.host_id(id);
        }
        builder.build()
    }

    /// How [`crate::serve`] serves a host with these settings.
    pub fn serve_options(self) -> ServeOptions {
        let registration = self.control_plane.map(|control_plane| {
            let mut registration = RegistrationConfig::new(control_plane);
            registration.client = self.client;
            registration.join_token = self.join_token;
            registration.processor_id = self.id;
            registration.metadata = self.labels;
            registration
        });
        ServeOptions {
            tls: self.tls,
            advertise: self.advertise,
            registration,
            grace_period: self.grace_period,
            tokens: self.tokens,
            reflection: self.reflection,
        }
    }
}

/// Serves the processors of `builder` on `listener` with `config` until `shutdown`
/// resolves, registered with the control plane when one is configured. On shutdown:
/// NOT_SERVING, STOPPING, deregistered, open streams drained within the grace period.
pub async fn run(
    builder: HostBuilder,
    config: HostConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    config.validate()?;
    let host = config.host(builder)?;
    crate::serve(host, config.serve_options(), listener, shutdown).await
}

/// Serves the connectors of `builder` on `listener` with `config` until `shutdown`
/// resolves, each registered with the control plane when one is configured. On
/// shutdown: NOT_SERVING, STOPPING, deregistered, open streams drained within the grace
/// period.
pub async fn run_connectors(
    builder: ConnectorHostBuilder,
    config: HostConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    config.validate()?;
    let host = config.connector_host(builder)?;
    crate::serve_connectors(host, config.serve_options(), listener, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Capability, Input, Output, ParamError, Params, ProcessError, Processor};

    macro_rules! named {
        ($ty:ident, $name:literal) => {
            struct $ty;
            impl Processor for $ty {
                fn capability() -> Capability {
                    Capability::new($name, "test").input(
                        "data",
                        [flowplane_proto::data::v1::DataTypeHint::Any],
                        "anything",
                    )
                }
                fn create(_: &Params) -> Result<Self, ParamError> {
                    Ok($ty)
                }
                fn process(&mut self, _: Input<'_>) -> Result<Vec<Output>, ProcessError> {
                    Ok(Vec::new())
                }
            }
        };
    }
    named!(First, "first");
    named!(Second, "second");

    fn builder() -> HostBuilder {
        HostBuilder::new("test")
            .processor::<First>()
            .processor::<Second>()
    }

    fn names(host: &ProcessorHost) -> Vec<String> {
        host.capabilities().into_iter().map(|c| c.name).collect()
    }

    #[test]
    fn a_subset_of_processors_is_served_in_the_builders_order() {
        let all = HostConfig::default().host(builder()).unwrap();
        assert_eq!(names(&all), ["first", "second"]);
        let config = HostConfig {
            processors: vec!["second".into()],
            ..HostConfig::default()
        };
        assert_eq!(names(&config.host(builder()).unwrap()), ["second"]);
        let unknown = HostConfig {
            processors: vec!["frist".into()],
            ..HostConfig::default()
        };
        let message = unknown.host(builder()).unwrap_err().to_string();
        assert!(
            message.contains(
                "--processors: unknown processor \"frist\"; this host serves: first, second"
            ),
            "{message}"
        );
    }

    #[test]
    fn invalid_settings_name_their_flag() {
        let cases = [
            (
                HostConfig {
                    max_streams: 0,
                    ..HostConfig::default()
                },
                "--max-streams",
            ),
            (
                HostConfig {
                    max_concurrent_calls: 0,
                    ..HostConfig::default()
                },
                "--max-concurrent-calls",
            ),
            (
                HostConfig {
                    id: Some(String::new()),
                    ..HostConfig::default()
                },
                "--id",
            ),
            (
                HostConfig {
                    control_plane: Some("http://127.0.0.1:1,https://127.0.0.1:2/v1".into()),
                    ..HostConfig::default()
                },
                "--control-plane: invalid entry \"https://127.0.0.1:2/v1\"",
            ),
            (
                HostConfig {
                    join_token: Some("has space".into()),
                    ..HostConfig::default()
                },
                "--join-token",
            ),
        ];
        for (config, flag) in cases {
            let message = config.validate().unwrap_err().to_string();
            assert!(message.contains(flag), "{flag}: {message}");
        }
        HostConfig::default().validate().unwrap();
    }

    #[test]
    fn registration_carries_the_identity_settings() {
        let config = HostConfig {
            control_plane: Some("127.0.0.1:50051".into()),
            id: Some("proc-a".into()),
            join_token: Some("join".into()),
            labels: HashMap::from([("zone".into(), "a".into())]),
            advertise: Some("10.0.0.1:50061".into()),
            ..HostConfig::default()
        };
        let options = config.serve_options();
        assert_eq!(options.advertise.as_deref(), Some("10.0.0.1:50061"));
        let registration = options.registration.unwrap();
        assert_eq!(registration.control_plane, "127.0.0.1:50051");
        assert_eq!(registration.processor_id.as_deref(), Some("proc-a"));
        assert_eq!(registration.join_token.as_deref(), Some("join"));
        assert_eq!(registration.metadata["zone"], "a");
        assert!(HostConfig::default().serve_options().registration.is_none());
    }
}
