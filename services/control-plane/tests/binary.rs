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
