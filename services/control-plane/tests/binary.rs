//! The real `flowplane-control-plane` binary: invalid settings exit non-zero naming the
//! flag, before any port is bound.

use flowplane_test_support::binary::{assert_help_lists, assert_rejects_before_binding};

const BINARY: &str = env!("CARGO_BIN_EXE_flowplane-control-plane");

#[test]
fn invalid_settings_exit_non_zero_naming_the_flag() {
    let bad_tokens = flowplane_test_support::binary::malformed_token_file();
    let tokens = bad_tokens.path();
    let line = flowplane_test_support::binary::MALFORMED_TOKEN_LINE;
    // Read, never parsed, before the client CA: a bad client CA is what fails.
    let pem = flowplane_test_support::binary::TempFile::new("pem");
    let readable = pem.path();
    assert_rejects_before_binding(
        BINARY,
        &[
            (&["--lease-ttl", "soon"], &[], "--lease-ttl"),
            (&["--lease-ttl", "5parsecs"], &[], "--lease-ttl"),
            (&["--lease-ttl", "1ms"], &[], "--lease-ttl"),
            (&[], &[("FLOWPLANE_LEASE_TTL", "never")], "--lease-ttl"),
            (&["--max-components", "0"], &[], "--max-components"),
            (&["--join-token", "has space"], &[], "--join-token"),
            (
                &[
                    "--tls-cert",
                    "/nonexistent/cert.pem",
                    "--tls-key",
                    "/nonexistent/key.pem",
                ],
                &[],
                "--tls-cert",
            ),
            (&["--tls-cert", "/nonexistent/cert.pem"], &[], "--tls-key"),
            (
                &["--tls-client-ca", "/nonexistent/ca.pem"],
                &[],
                "--tls-client-ca",
            ),
            (
                &[],
                &[("FLOWPLANE_TLS_CLIENT_CA", "/nonexistent/ca.pem")],
                "--tls-client-ca",
            ),
            (
                &[
                    "--tls-cert",
                    readable,
                    "--tls-key",
                    readable,
                    "--tls-client-ca",
                    "/nonexistent/ca.pem",
                ],
                &[],
                "--tls-client-ca",
            ),
            (&["--token-file", tokens], &[], line),
            (&[], &[("FLOWPLANE_TOKEN_FILE", tokens)], line),
            (
                &["--token-file", "/nonexistent/tokens"],
                &[],
                "--token-file",
            ),
            (&["--listen", "not-an-address"], &[], "--listen"),
            (&["--registry", "redis://127.0.0.1:6379"], &[], "--registry"),
            (&[], &[("FLOWPLANE_REGISTRY", "etcd://")], "--registry"),
            (
                &["--registry", "etcd://127.0.0.1:2379,nohost"],
                &[],
                "--registry",
            ),
            (
                &[
                    "--registry",
                    "etcd://127.0.0.1:2379",
                    "--etcd-prefix",
                    "no-slash",
                ],
                &[],
                "--etcd-prefix",
            ),
            (
                &[
                    "--registry",
                    "etcd://127.0.0.1:2379",
                    "--lease-ttl",
                    "1500ms",
                ],
                &[],
                "--lease-ttl",
            ),
            (&["--etcd-ca", readable], &[], "--etcd-ca"),
            (
                &[
                    "--registry",
                    "etcd://127.0.0.1:2379",
                    "--etcd-cert",
                    readable,
                    "--etcd-key",
                    readable,
                ],
                &[],
                "--etcd-ca",
            ),
            (
                &[
                    "--registry",
                    "etcd://127.0.0.1:2379",
                    "--etcd-ca",
                    "/nonexistent/ca.pem",
                ],
                &[],
                "--etcd-ca",
            ),
            (
                &["--registry", "etcd://127.0.0.1:2379", "--etcd-user", "root"],
                &[],
                "--etcd-password-file",
            ),
            (
                &[
                    "--registry",
                    "etcd://127.0.0.1:2379",
                    "--etcd-user",
                    "root",
                    "--etcd-password-file",
                    "/nonexistent/password",
                ],
                &[],
                "--etcd-password-file",
            ),
        ],
    );
}

#[test]
fn help_lists_the_settings_and_their_environment_variables() {
    assert_help_lists(
        BINARY,
        &[
            "--lease-ttl",
            "FLOWPLANE_LEASE_TTL",
            "--registry",
            "FLOWPLANE_REGISTRY",
            "--etcd-prefix",
            "FLOWPLANE_ETCD_PREFIX",
            "--etcd-password-file",
            "FLOWPLANE_ETCD_PASSWORD_FILE",
            "--join-token",
            "FLOWPLANE_JOIN_TOKEN",
            "--listen",
            "--tls-client-ca",
            "FLOWPLANE_TLS_CLIENT_CA",
            "--token-file",
            "FLOWPLANE_TOKEN_FILE",
            "--reflection",
            "FLOWPLANE_REFLECTION",
            "--tls-cert",
        ],
    );
}
