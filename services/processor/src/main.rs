//! `flowplane-processor`: the built-in processors behind the SDK's entry point, so this
//! binary and every custom processor host take the same flags and the same code path
//! (settings, telemetry, /metrics, bind, serve, drain). Invalid settings exit non-zero,
//! naming the flag, before any port is bound.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    process::ExitCode,
};

const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 50061);

fn main() -> ExitCode {
    flowplane_sdk::Main::new(flowplane_processor::built_ins())
        .about("Hosts flowplane's built-in processors behind ProcessorService.")
        .default_listen(DEFAULT_LISTEN)
        .run()
}
