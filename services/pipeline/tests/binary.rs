//! The real `flowplane-pipeline` binary: invalid settings exit non-zero naming the flag
//! before any port is bound, and `--help` documents every setting with its variable.

use flowplane_test_support::binary::{assert_help_lists, assert_rejects_before_binding};

const BINARY: &str = env!("CARGO_BIN_EXE_flowplane-pipeline");

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
            (&["--control-plane", "not a uri"], &[], "--control-plane"),
            (
                &[],
                &[("FLOWPLANE_CONTROL_PLANE", "::bad::")],
                "--control-plane",
            ),
            (&["--max-sessions", "0"], &[], "--max-sessions"),
            (&["--session-window", "none"], &[], "--session-window"),
            (&["--session-window-mib", "1"], &[], "--session-window-mib"),
            (&["--idle-timeout-secs", "0"], &[], "--idle-timeout-secs"),
            (&["--node-timeout", "soon"], &[], "--node-timeout"),
            (&["--node-timeout", "0s"], &[], "--node-timeout"),
            (&["--memory-budget-mib", "1"], &[], "--memory-budget-mib"),
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
            (
                &["--tls-client-cert", "/nonexistent/client.pem"],
                &[],
                "--tls-client-key",
            ),
            (
                &[],
                &[("FLOWPLANE_TLS_CLIENT_KEY", "/nonexistent/client.key")],
                "--tls-client-cert",
            ),
            (
                &[
                    "--tls-client-cert",
                    "/nonexistent/client.pem",
                    "--tls-client-key",
                    "/nonexistent/client.key",
                ],
                &[],
                "--tls-client-cert",
            ),
            (&["--tls-ca", "/nonexistent/ca.pem"], &[], "--tls-ca"),
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
            (&["--token-file", tokens], &[], line),
            (&[], &[("FLOWPLANE_TOKEN_FILE", tokens)], line),
            (
                &["--token-file", "/nonexistent/tokens"],
                &[],
                "--token-file",
            ),
            (
                &["--client-token-file", "/nonexistent/token"],
                &[],
                "--client-token-file",
            ),
            (
                &["--token", "t", "--client-token-file", tokens],
                &[],
                "--client-token-file",
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
            "--listen",
            "--tls-client-ca",
            "FLOWPLANE_TLS_CLIENT_CA",
            "--tls-client-cert",
            "FLOWPLANE_TLS_CLIENT_CERT",
            "--tls-client-key",
            "FLOWPLANE_TLS_CLIENT_KEY",
            "--token-file",
            "FLOWPLANE_TOKEN_FILE",
            "--reflection",
            "FLOWPLANE_REFLECTION",
            "--client-token-file",
            "FLOWPLANE_CLIENT_TOKEN_FILE",
            "FLOWPLANE_LISTEN",
            "--metrics-listen",
            "--control-plane",
            "FLOWPLANE_CONTROL_PLANE",
            "--auth-token",
            "FLOWPLANE_AUTH_TOKEN",
            "--max-sessions",
            "--session-window",
            "--idle-timeout-secs",
            "--node-timeout",
            "FLOWPLANE_NODE_TIMEOUT",
            "--memory-budget-mib",
            "FLOWPLANE_MEMORY_BUDGET_MIB",
            "--chunk-span-every",
            "--grace-period-secs",
            "--log-format",
        ],
    );
}
