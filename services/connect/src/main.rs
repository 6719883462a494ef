//! `flowplane-connect`: the built-in sources and consumers behind the SDK's entry point,
//! so this binary and every custom connector host take the same flags and the same code
//! path (settings, telemetry, /metrics, bind, serve, register, drain). Invalid settings
//! exit non-zero, naming the flag, before any port is bound.

use std::process::ExitCode;

fn main() -> ExitCode {
    flowplane_sdk::Main::connectors(flowplane_connectors::built_ins())
        .about("Hosts flowplane's built-in sources (generator, file) and consumers (file, log).")
        .default_listen(flowplane_connect::DEFAULT_LISTEN)
        .run()
}
