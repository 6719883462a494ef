//! Command-line and environment settings every flowplane server shares, so that people,
//! scripts and containers start any service the same way. Each binary flattens these
//! into its own `clap` parser; precedence is default -> `FLOWPLANE_*` env -> flag.
//! Without the `cli` feature the same structs exist for code to fill in, with no parser.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::{Error, Result, auth::Tokens};

/// Where a server listens, what it advertises, and its TLS identity.
#[derive(Clone, Debug)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct ServeArgs {
    /// gRPC listen address, HOST:PORT.
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "FLOWPLANE_LISTEN", value_name = "HOST:PORT")
    )]
    pub listen: Option<SocketAddr>,

    /// Prometheus /metrics listen address, HOST:PORT; unset disables the endpoint.
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "FLOWPLANE_METRICS_LISTEN", value_name = "HOST:PORT")
    )]
    pub metrics_listen: Option<SocketAddr>,

    /// Address others use to reach this server, HOST:PORT; defaults to the listen address.
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "FLOWPLANE_ADVERTISE", value_name = "HOST:PORT")
    )]
    pub advertise: Option<String>,

    /// PEM certificate chain for TLS; needs --tls-key. Unset serves plaintext.
    #[cfg_attr(
        feature = "cli",
        arg(
            long,
            env = "FLOWPLANE_TLS_CERT",
            value_name = "FILE",
            requires = "tls_key"
        )
    )]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for TLS; needs --tls-cert.
    #[cfg_attr(
        feature = "cli",
        arg(
            long,
            env = "FLOWPLANE_TLS_KEY",
            value_name = "FILE",
            requires = "tls_cert"
        )
    )]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificate(s) for mutual TLS: clients must present a certificate signed by
    /// one of them or the handshake fails. Needs --tls-cert and --tls-key.
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "FLOWPLANE_TLS_CLIENT_CA", value_name = "FILE")
    )]
    pub tls_client_ca: Option<PathBuf>,

    /// Token file that turns on auth by role: lines of `TOKEN ROLE[,ROLE...]`, roles
    /// register, read, data, process; `#` starts a comment line. Unset: no role tokens.
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "FLOWPLANE_TOKEN_FILE", value_name = "FILE")
    )]
    pub token_file: Option<PathBuf>,

    /// Roles for client certificates (mutual TLS, needs --tls-client-ca): lines of
    /// `DNS-NAME ROLE[,ROLE...]`; a call gets the roles of the DNS names in its verified
    /// client certificate, added to its token's if it sends one (e.g. the pipeline's
    /// certificate gets `process` on processor hosts).
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "FLOWPLANE_TLS_CLIENT_ROLES", value_name = "FILE")
    )]
    pub tls_client_roles: Option<PathBuf>,

    /// Serve gRPC reflection (v1 and v1alpha), listing only this server's own services,
    /// health and reflection; --reflection=false serves none.
    #[cfg_attr(feature = "cli", arg(
        long,
        env = "FLOWPLANE_REFLECTION",
        value_name = "BOOL",
        default_value_t = true,
        action = clap::ArgAction::Set
    ))]
    pub reflection: bool,

    /// Plaintext listen address, HOST:PORT, serving only grpc.health.v1.Health with the
    /// main server's statuses: for kubelet's gRPC probes, which speak no TLS. Unset: none.
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "FLOWPLANE_HEALTH_LISTEN", value_name = "HOST:PORT")
    )]
    pub health_listen: Option<SocketAddr>,

    /// Age after which a connection is sent GOAWAY: its calls go on, new ones reconnect,
    /// so clients behind a Service spread over new pods. 5m, 30s or plain seconds; unset: no limit.
    #[cfg_attr(feature = "cli", arg(long, env = "FLOWPLANE_MAX_CONNECTION_AGE", value_name = "DURATION", value_parser = parse_duration))]
    pub max_connection_age: Option<Duration>,

    /// How long calls may outlive --max-connection-age before their connection is closed;
    /// unset waits for them to end. Needs --max-connection-age.
    #[cfg_attr(feature = "cli", arg(
        long,
        env = "FLOWPLANE_MAX_CONNECTION_AGE_GRACE",
        value_name = "DURATION",
        value_parser = parse_duration,
        requires = "max_connection_age"
    ))]
    pub max_connection_age_grace: Option<Duration>,
}

impl Default for ServeArgs {
    /// What the flags give when none is set.
    fn default() -> Self {
        Self {
            listen: None,
            metrics_listen: None,
            advertise: None,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            token_file: None,
            tls_client_roles: None,
            reflection: true,
            health_listen: None,
            max_connection_age: None,
            max_connection_age_grace: None,
        }
    }
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

    /// Reads the TLS identity, and the client CA for mutual TLS, when configured. Fails
    /// naming the flag when a file cannot be read or the flags do not go together.
    pub fn server_tls(&self) -> Result<Option<ServerTlsConfig>> {
        let (cert, key) = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => (cert, key),
            (None, None) if self.tls_client_ca.is_some() => {
                return Err(Error::TlsFlags(
                    "--tls-client-ca needs --tls-cert and --tls-key: mutual tls is tls first",
                ));
            }
            (None, None) => return Ok(None),
            (Some(_), None) => return Err(Error::TlsFlags("--tls-cert needs --tls-key")),
            (None, Some(_)) => return Err(Error::TlsFlags("--tls-key needs --tls-cert")),
        };
        let cert_pem = read(cert, "tls certificate (--tls-cert)")?;
        let key_pem = read(key, "tls key (--tls-key)")?;
        let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(cert_pem, key_pem));
        if let Some(ca) = &self.tls_client_ca {
            let ca_pem = read(ca, "tls client ca (--tls-client-ca)")?;
            tls = tls.client_ca_root(Certificate::from_pem(ca_pem));
        }
        Ok(Some(tls))
    }

    /// Reads and checks the token file when one is configured; a malformed line fails
    /// naming the file and the line, so the binary exits before it binds.
    /// Client certificate roles (`--tls-client-roles`) join the same credentials.
    pub fn tokens(&self) -> Result<Option<Tokens>> {
        let tokens = self.token_file.as_deref().map(Tokens::load).transpose()?;
        let Some(roles) = &self.tls_client_roles else {
            return Ok(tokens);
        };
        if self.tls_client_ca.is_none() {
            return Err(Error::TlsFlags(
                "--tls-client-roles needs --tls-client-ca: only a verified client certificate has an identity",
            ));
        }
        let mut tokens = tokens.unwrap_or_default();
        tokens.load_identities(roles)?;
        Ok(Some(tokens))
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

/// How a client reaches a flowplane server: TLS trust, the client certificate for mutual
/// TLS, and the bearer token to present.
#[derive(Clone, Default)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct ClientArgs {
    /// PEM CA certificate to trust for https:// endpoints (system roots are not used).
    /// With it (or a client certificate) a peer found in the registry is dialled over TLS.
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "FLOWPLANE_TLS_CA", value_name = "FILE")
    )]
    pub tls_ca: Option<PathBuf>,

    /// PEM client certificate chain presented to https:// servers that require mutual
    /// TLS; needs --tls-client-key.
    #[cfg_attr(
        feature = "cli",
        arg(
            long,
            env = "FLOWPLANE_TLS_CLIENT_CERT",
            value_name = "FILE",
            requires = "tls_client_key"
        )
    )]
    pub tls_client_cert: Option<PathBuf>,

    /// PEM private key of --tls-client-cert; needs --tls-client-cert.
    #[cfg_attr(
        feature = "cli",
        arg(
            long,
            env = "FLOWPLANE_TLS_CLIENT_KEY",
            value_name = "FILE",
            requires = "tls_client_cert"
        )
    )]
    pub tls_client_key: Option<PathBuf>,

    /// Bearer token sent to servers that require one. Prefer --client-token-file: a
    /// token on the command line shows in `ps` and shell history.
    #[cfg_attr(
        feature = "cli",
        arg(
            long,
            env = "FLOWPLANE_TOKEN",
            value_name = "TOKEN",
            hide_env_values = true
        )
    )]
    pub token: Option<String>,

    /// File holding the bearer token to send (surrounding whitespace trimmed); the
    /// preferred way to give a client its token.
    #[cfg_attr(
        feature = "cli",
        arg(
            long,
            env = "FLOWPLANE_CLIENT_TOKEN_FILE",
            value_name = "FILE",
            conflicts_with = "token"
        )
    )]
    pub client_token_file: Option<PathBuf>,
}

impl std::fmt::Debug for ClientArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientArgs")
            .field("tls_ca", &self.tls_ca)
            .field("tls_client_cert", &self.tls_client_cert)
            .field("tls_client_key", &self.tls_client_key)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("client_token_file", &self.client_token_file)
            .finish()
    }
}

impl ClientArgs {
    /// What a binary does with its client flags before it binds: reads the token file
    /// and every TLS file, so a bad setting fails now, naming its flag, not at first dial.
    pub fn load(&mut self) -> Result<()> {
        self.load_token_file()?;
        self.tls().map(drop)
    }

    /// Whether TLS settings were given (a CA to trust or a client certificate): then a
    /// discovered `host:port` is dialled over TLS (see [`crate::client::peer_address`]).
    pub fn has_tls(&self) -> bool {
        self.tls_ca.is_some() || self.tls_client_cert.is_some()
    }

    /// The TLS settings for an `https://` endpoint: the CA to trust and, for mutual TLS,
    /// the client identity. Fails naming the flag when a file cannot be read or only
    /// half of the client certificate and key was given.
    pub fn tls(&self) -> Result<ClientTlsConfig> {
        let mut tls = ClientTlsConfig::new();
        if let Some(ca) = &self.tls_ca {
            let pem = read(ca, "tls ca certificate (--tls-ca)")?;
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        match (&self.tls_client_cert, &self.tls_client_key) {
            (Some(cert), Some(key)) => {
                let cert_pem = read(cert, "tls client certificate (--tls-client-cert)")?;
                let key_pem = read(key, "tls client key (--tls-client-key)")?;
                tls = tls.identity(Identity::from_pem(cert_pem, key_pem));
            }
            (None, None) => {}
            (Some(_), None) => {
                return Err(Error::TlsFlags("--tls-client-cert needs --tls-client-key"));
            }
            (None, Some(_)) => {
                return Err(Error::TlsFlags("--tls-client-key needs --tls-client-cert"));
            }
        }
        Ok(tls)
    }

    /// Reads `--client-token-file`, when given, into `token`. Fails naming the flag when
    /// the file cannot be read or holds no usable token (the token is never shown).
    pub fn load_token_file(&mut self) -> Result<()> {
        let Some(path) = &self.client_token_file else {
            return Ok(());
        };
        let text = std::fs::read_to_string(path).map_err(|source| Error::ReadFile {
            what: "client token (--client-token-file)",
            path: path.clone(),
            source,
        })?;
        let token = text.trim();
        let reason = if token.is_empty() {
            Some("the file is empty")
        } else if !crate::auth::is_valid_token(token) {
            Some("the token must be one line of printable ascii without spaces")
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(Error::ClientToken {
                path: path.clone(),
                reason,
            });
        }
        self.token = Some(token.to_string());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[cfg(feature = "cli")]
    #[test]
    fn reflection_is_on_unless_turned_off() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            serve: ServeArgs,
        }
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("server").chain(args.iter().copied()))
                .map(|cli| cli.serve.reflection)
        };
        assert!(parse(&[]).unwrap());
        assert!(!parse(&["--reflection=false"]).unwrap());
        assert!(parse(&["--reflection", "true"]).unwrap());
        assert!(parse(&["--reflection=maybe"]).is_err());
    }

    #[test]
    fn a_client_token_file_is_read_and_trimmed() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "  s3cret-token\t").unwrap();
        let mut args = ClientArgs {
            client_token_file: Some(file.path().to_path_buf()),
            ..ClientArgs::default()
        };
        args.load_token_file().unwrap();
        assert_eq!(args.token.as_deref(), Some("s3cret-token"));
        assert!(!format!("{args:?}").contains("s3cret"));

        for bad in ["", "  \n", "two words\n", "one\ntwo\n"] {
            let mut file = tempfile::NamedTempFile::new().unwrap();
            file.write_all(bad.as_bytes()).unwrap();
            let mut args = ClientArgs {
                client_token_file: Some(file.path().to_path_buf()),
                ..ClientArgs::default()
            };
            let message = args.load_token_file().unwrap_err().to_string();
            assert!(
                message.contains("--client-token-file"),
                "{bad:?}: {message}"
            );
            assert!(args.token.is_none());
        }
    }

    #[cfg(feature = "cli")]
    #[test]
    fn orchestrator_settings_parse_and_the_grace_needs_an_age() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            serve: ServeArgs,
        }
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("server").chain(args.iter().copied()))
                .map(|cli| cli.serve)
        };
        let none = parse(&[]).unwrap();
        assert_eq!(
            (
                none.health_listen,
                none.max_connection_age,
                none.max_connection_age_grace
            ),
            (None, None, None)
        );
        let set = parse(&[
            "--health-listen",
            "127.0.0.1:8086",
            "--max-connection-age",
            "5m",
            "--max-connection-age-grace",
            "30s",
        ])
        .unwrap();
        assert_eq!(set.health_listen, Some("127.0.0.1:8086".parse().unwrap()));
        assert_eq!(set.max_connection_age, Some(Duration::from_secs(300)));
        assert_eq!(set.max_connection_age_grace, Some(Duration::from_secs(30)));
        let error = parse(&["--max-connection-age-grace", "30s"])
            .expect_err("a grace without an age is refused")
            .to_string();
        assert!(error.contains("--max-connection-age"), "{error}");
        assert!(parse(&["--max-connection-age", "soon"]).is_err());
        assert!(parse(&["--health-listen", "localhost"]).is_err());
    }

    #[test]
    fn a_client_ca_without_a_server_identity_is_refused_naming_the_flags() {
        let serve = ServeArgs {
            tls_client_ca: Some("ca.pem".into()),
            ..ServeArgs::default()
        };
        let message = serve.server_tls().unwrap_err().to_string();
        assert!(message.contains("--tls-client-ca"), "{message}");
        assert!(message.contains("--tls-cert"), "{message}");

        let cert = tempfile::NamedTempFile::new().unwrap();
        let unreadable = ServeArgs {
            tls_cert: Some(cert.path().to_path_buf()),
            tls_key: Some(cert.path().to_path_buf()),
            tls_client_ca: Some("/nonexistent/ca.pem".into()),
            ..serve
        };
        let message = unreadable.server_tls().unwrap_err().to_string();
        assert!(message.contains("--tls-client-ca"), "{message}");
    }

    #[test]
    fn client_roles_need_mutual_tls_and_a_readable_file() {
        let roles = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(roles.path(), "pipeline process\n").unwrap();
        let without_ca = ServeArgs {
            tls_client_roles: Some(roles.path().to_path_buf()),
            ..ServeArgs::default()
        };
        let message = without_ca.tokens().unwrap_err().to_string();
        assert!(
            message.contains("--tls-client-roles needs --tls-client-ca"),
            "{message}"
        );

        let with_ca = ServeArgs {
            tls_client_ca: Some("ca.pem".into()),
            ..without_ca
        };
        assert!(with_ca.tokens().unwrap().is_some());
        let missing = ServeArgs {
            tls_client_roles: Some("/nonexistent/client-roles".into()),
            ..with_ca
        };
        let message = missing.tokens().unwrap_err().to_string();
        assert!(message.contains("--tls-client-roles"), "{message}");
    }

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
