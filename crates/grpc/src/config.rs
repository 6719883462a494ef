//! Command-line and environment settings every flowplane server shares, so that people,
//! scripts and containers start any service the same way. Each binary flattens these
//! into its own `clap` parser; precedence is default -> `FLOWPLANE_*` env -> flag.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

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

/// Parses a duration like `15s`, `500ms`, `2m`, `1h` or plain seconds (`15`, `1.5`).
pub fn parse_duration(raw: &str) -> std::result::Result<Duration, String> {
    let raw = raw.trim();
    let split = raw
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(raw.len());
    let (number, unit) = raw.split_at(split);
    let value: f64 = number.parse().map_err(|_| {
        format!("{raw:?} is not a duration: use e.g. 15s, 500ms, 2m or plain seconds")
    })?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "unknown duration unit {other:?}: use ms, s, m or h"
            ));
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{raw:?}: {e}"))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_humanely() {
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("15"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["", "s", "fast", "10 parsecs", "-5s", "1.2.3s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
