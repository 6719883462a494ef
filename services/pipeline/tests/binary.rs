//! The real `flowplane-pipeline` binary: invalid settings exit non-zero naming the flag
//! before any port is bound, and `--help` documents every setting with its variable.

use flowplane_test_support::binary::{
    CLIENT_HELP, Case, SERVER_HELP, SharedSettings, assert_help_lists,
    assert_rejects_before_binding,
};

const BINARY: &str = env!("CARGO_BIN_EXE_flowplane-pipeline");

#[test]
fn invalid_settings_exit_non_zero_naming_the_flag() {
    let shared = SharedSettings::new();
    let mut cases = shared.server();
    cases.extend(shared.client());
    cases.extend(shared.control_plane());
    cases.extend([
        Case::flags(&["--max-sessions", "0"], "--max-sessions"),
        Case::flags(&["--session-window", "none"], "--session-window"),
        Case::flags(&["--session-window-mib", "1"], "--session-window-mib"),
        Case::flags(&["--idle-timeout-secs", "0"], "--idle-timeout-secs"),
        Case::flags(&["--node-timeout", "soon"], "--node-timeout"),
        Case::flags(&["--node-timeout", "0s"], "--node-timeout"),
        Case::flags(&["--memory-budget-mib", "1"], "--memory-budget-mib"),
    ]);
    assert_rejects_before_binding(BINARY, &cases);
}

#[test]
fn help_lists_the_settings_and_their_environment_variables() {
    let own = [
        "--control-plane",
        "a comma-separated list names replicas",
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
    ];
    assert_help_lists(BINARY, &[SERVER_HELP, CLIENT_HELP, &own].concat());
}
