//! Command-line and environment settings every flowplane server shares, so that people,
//! scripts and containers start any service the same way. Each binary flattens these
//! into its own `clap` parser; precedence is default -> `FLOWPLANE_*` env -> flag.

use std::{net::SocketAddr, path::PathBuf};

use tonic::transport::{Identity, ServerTlsConfig};

use crate::{Error, Result};

/// Where a server listens, what it advertises, and its TLS identity.
#[derive(Clone, Debug, clap::Args)]
pub struct ServeArgs {
    /// gRPC listen address, HOST:PORT.
    #[arg(long, env = "FLOWPLANE_LISTEN", value_name = "HOST:PORT")]
    pub listen: Option<SocketAddr>,

    /// Prometheus /metrics listen address, HOST:PORT; unset disables the endpoint.
    #[arg(long, env = "FLOWPLANE_METRICS_LISTEN", value_name = "HOST:PORT")]
    pub metrics_listen: Option<SocketAddr>,

    /// Address others use to reach this server, HOST:PORT; defaults to the listen address.
    #[arg(long, env = "FLOWPLANE_ADVERTISE", value_name = "HOST:PORT")]
    pub advertise: Option<String>,

    /// PEM certificate chain for TLS; needs --tls-key. Unset serves plaintext.
    #[arg(
        long,
        env = "FLOWPLANE_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for TLS; needs --tls-cert.
    #[arg(
        long,
        env = "FLOWPLANE_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
}

impl ServeArgs {
    /// The listen address, or `default` when none was given.
    pub fn listen_or(&self, default: SocketAddr) -> SocketAddr {
        self.listen.unwrap_or(default)
    }

    /// The address to advertise: `--advertise`, else the bound address.
    pub fn advertise_or(&self, bound: SocketAddr) -> String {
        self.advertise.clone().unwrap_or_else(|| bound.to_string())
    }

    /// Reads the TLS identity when one is configured. Fails naming the file.
    pub fn server_tls(&self) -> Result<Option<ServerTlsConfig>> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                let cert_pem = read(cert, "tls certificate (--tls-cert)")?;
                let key_pem = read(key, "tls key (--tls-key)")?;
                Ok(Some(
                    ServerTlsConfig::new().identity(Identity::from_pem(cert_pem, key_pem)),
                ))
            }
            _ => Ok(None),
        }
    }
}

pub(crate) fn read(path: &std::path::Path, what: &'static str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::ReadFile {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// How a client reaches a flowplane server: TLS trust and the bearer token to present.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ClientArgs {
    /// PEM CA certificate to trust for https:// endpoints (system roots are not used).
    #[arg(long, env = "FLOWPLANE_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,

    /// Bearer token sent to servers that require one.
    #[arg(
        long,
        env = "FLOWPLANE_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
}
