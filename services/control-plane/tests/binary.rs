//! The real `flowplane-control-plane` binary: invalid settings exit non-zero naming the
//! flag, before any port is bound.

use std::process::Command;

fn control_plane() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_flowplane-control-plane"));
    for var in [
        "FLOWPLANE_LEASE_TTL",
        "FLOWPLANE_JOIN_TOKEN",
        "FLOWPLANE_LISTEN",
        "FLOWPLANE_TLS_CERT",
        "FLOWPLANE_TLS_KEY",
    ] {
        command.env_remove(var);
    }
    command
}

/// Extra environment for one case.
type Env = Vec<(&'static str, &'static str)>;

#[test]
fn invalid_settings_exit_non_zero_naming_the_flag() {
    // A port this test holds: were the binary to get as far as binding, it would fail
    // naming --listen instead of the bad setting.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = held.local_addr().unwrap().to_string();
    let cases: Vec<(Vec<&str>, Env, &str)> = vec![
        (vec!["--lease-ttl", "soon"], vec![], "--lease-ttl"),
        (vec!["--lease-ttl", "5parsecs"], vec![], "--lease-ttl"),
        (vec!["--lease-ttl", "1ms"], vec![], "--lease-ttl"),
        (
            vec![],
            vec![("FLOWPLANE_LEASE_TTL", "never")],
            "--lease-ttl",
        ),
        (vec!["--max-components", "0"], vec![], "--max-components"),
        (vec!["--join-token", "has space"], vec![], "--join-token"),
        (
            vec![
                "--tls-cert",
                "/nonexistent/cert.pem",
                "--tls-key",
                "/nonexistent/key.pem",
            ],
            vec![],
            "--tls-cert",
        ),
        (
            vec!["--tls-cert", "/nonexistent/cert.pem"],
            vec![],
            "--tls-key",
        ),
        (vec!["--listen", "not-an-address"], vec![], "--listen"),
    ];
    for (args, env, flag) in cases {
        let output = control_plane()
            .args(["--listen", &listen])
            .args(&args)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} {env:?} should fail");
        assert!(
            stderr.contains(flag),
            "{args:?} {env:?}: stderr does not name {flag}:\n{stderr}"
        );
    }
    drop(held);
}

#[test]
fn help_lists_the_settings_and_their_environment_variables() {
    let output = control_plane().arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for expected in [
        "--lease-ttl",
        "FLOWPLANE_LEASE_TTL",
        "--join-token",
        "FLOWPLANE_JOIN_TOKEN",
        "--listen",
        "--tls-cert",
    ] {
        assert!(help.contains(expected), "--help lacks {expected}");
    }
}
