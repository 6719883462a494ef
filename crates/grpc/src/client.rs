//! Client channels with the same limits and timeouts as the servers, TLS when the
//! endpoint is `https://` (presenting the client certificate, if given, for mutual TLS),
//! lazy connection so a client can start before its server, and traced variants that
//! carry the caller's trace to the server.

use std::{borrow::Cow, time::Duration};

use tonic::transport::{Channel, Endpoint};

use crate::{
    Error, Result,
    config::ClientArgs,
    server::{CONNECTION_WINDOW, MAX_FRAME_SIZE, STREAM_WINDOW},
};

/// Timeout for establishing a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Turns `host:port` or a URI into an endpoint with flowplane's client settings.
pub fn endpoint(address: &str, args: &ClientArgs) -> Result<Endpoint> {
    let uri = if address.contains("://") {
        address.to_string()
    } else {
        format!("http://{address}")
    };
    let mut endpoint = plain_endpoint(uri.clone(), address)?;
    if uri.starts_with("https://") {
        endpoint = endpoint.tls_config(args.tls()?)?;
    }
    Ok(endpoint)
}

/// `uri` with flowplane's client settings and no TLS yet; errors name `address`.
pub(crate) fn plain_endpoint(uri: String, address: &str) -> Result<Endpoint> {
    let invalid = |reason: String| Error::InvalidEndpoint {
        endpoint: address.to_string(),
        reason,
    };
    Ok(Endpoint::from_shared(uri)
        .map_err(|e| invalid(e.to_string()))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        // The server's fixed windows, for the same reason (see `crate::server`): the
        // adaptive window starts at 64 KiB and with it h2's small-frame budget, which a
        // channel reading responses of 1,000 sessions would exhaust.
        .http2_adaptive_window(false)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .initial_stream_window_size(STREAM_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE))
}

/// The address to dial for an endpoint a peer advertised in the registry (`host:port`,
/// no scheme): `https://host:port` when `args` carry TLS settings, else as advertised.
/// An operator who gives a service a CA or a client certificate means its links to
/// discovered peers to be TLS too; a plaintext fallback would silently undo that. An
/// endpoint that names its scheme keeps it.
pub fn peer_address<'a>(endpoint: &'a str, args: &ClientArgs) -> Cow<'a, str> {
    if args.has_tls() && !endpoint.contains("://") {
        Cow::Owned(format!("https://{endpoint}"))
    } else {
        Cow::Borrowed(endpoint)
    }
}

/// A channel that connects on first use and reconnects after failures.
pub fn lazy_channel(address: &str, args: &ClientArgs) -> Result<Channel> {
    Ok(endpoint(address, args)?.connect_lazy())
}

/// A channel connected now; fails if the server cannot be reached.
pub async fn connect(address: &str, args: &ClientArgs) -> Result<Channel> {
    Ok(endpoint(address, args)?.connect().await?)
}

/// A channel whose calls carry the caller's trace context (W3C `traceparent`) and get a
/// CLIENT span; generated clients take it like a `Channel`: `FooClient::new(traced(ch))`.
pub type TracedChannel = flowplane_telemetry::grpc::TracedChannel;

/// Traces every call made through `channel`.
pub fn traced(channel: Channel) -> TracedChannel {
    flowplane_telemetry::grpc::traced(channel)
}

/// [`lazy_channel`], traced.
pub fn lazy_traced_channel(address: &str, args: &ClientArgs) -> Result<TracedChannel> {
    Ok(traced(lazy_channel(address, args)?))
}

/// [`connect`], traced.
pub async fn connect_traced(address: &str, args: &ClientArgs) -> Result<TracedChannel> {
    Ok(traced(connect(address, args).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_host_port_becomes_http() {
        let e = endpoint("127.0.0.1:50051", &ClientArgs::default()).unwrap();
        assert_eq!(e.uri().to_string(), "http://127.0.0.1:50051/");
    }

    #[test]
    fn discovered_peers_are_dialled_over_tls_when_tls_is_configured() {
        let plain = ClientArgs::default();
        assert_eq!(peer_address("10.0.0.1:50061", &plain), "10.0.0.1:50061");
        let with_ca = ClientArgs {
            tls_ca: Some("ca.pem".into()),
            ..ClientArgs::default()
        };
        assert_eq!(
            peer_address("10.0.0.1:50061", &with_ca),
            "https://10.0.0.1:50061"
        );
        let with_cert = ClientArgs {
            tls_client_cert: Some("client.pem".into()),
            tls_client_key: Some("client.key".into()),
            ..ClientArgs::default()
        };
        assert_eq!(peer_address("host:1", &with_cert), "https://host:1");
        // A scheme the peer advertised wins.
        assert_eq!(peer_address("http://host:1", &with_ca), "http://host:1");
        assert_eq!(peer_address("https://host:1", &plain), "https://host:1");
    }

    #[test]
    fn half_a_client_identity_is_refused_naming_the_missing_flag() {
        let cert_only = ClientArgs {
            tls_client_cert: Some("client.pem".into()),
            ..ClientArgs::default()
        };
        let err = endpoint("https://host:1", &cert_only).unwrap_err();
        assert!(err.to_string().contains("--tls-client-key"), "{err}");
        let missing = ClientArgs {
            tls_client_cert: Some("/nonexistent/client.pem".into()),
            tls_client_key: Some("/nonexistent/client.key".into()),
            ..ClientArgs::default()
        };
        let err = missing.clone().load().unwrap_err();
        assert!(err.to_string().contains("--tls-client-cert"), "{err}");
        // Plaintext endpoints never read the TLS files.
        endpoint("127.0.0.1:1", &missing).unwrap();
    }

    #[test]
    fn garbage_is_rejected_naming_the_endpoint() {
        let err = endpoint("not a uri", &ClientArgs::default()).unwrap_err();
        assert!(err.to_string().contains("not a uri"), "{err}");
    }
}
