//! The real `flowplane-control-plane` binary: invalid settings exit non-zero naming the
//! flag, before any port is bound; a data dir another control plane holds is one of them.

use flowplane_test_support::binary::{
    Case, SERVER_HELP, SharedSettings, assert_help_lists, assert_rejects_before_binding,
};

const BINARY: &str = env!("CARGO_BIN_EXE_flowplane-control-plane");

#[test]
fn invalid_settings_exit_non_zero_naming_the_flag() {
    let shared = SharedSettings::new();
    let readable = flowplane_test_support::binary::TempFile::new("pem");
    let readable = readable.path();
    let etcd = "etcd://127.0.0.1:2379";
    let mut cases = shared.server();
    cases.extend([
        Case::flags(&["--lease-ttl", "soon"], "--lease-ttl"),
        Case::flags(&["--lease-ttl", "5parsecs"], "--lease-ttl"),
        Case::flags(&["--lease-ttl", "1ms"], "--lease-ttl"),
        Case::env(&[("FLOWPLANE_LEASE_TTL", "never")], "--lease-ttl"),
        Case::flags(&["--max-components", "0"], "--max-components"),
        Case::flags(&["--join-token", "has space"], "--join-token"),
        Case::flags(&["--registry", "redis://127.0.0.1:6379"], "--registry"),
        Case::env(&[("FLOWPLANE_REGISTRY", "etcd://")], "--registry"),
        Case::flags(
            &["--registry", "etcd://127.0.0.1:2379,nohost"],
            "--registry",
        ),
        Case::flags(
            &["--registry", etcd, "--etcd-prefix", "no-slash"],
            "--etcd-prefix",
        ),
        Case::flags(
            &["--registry", etcd, "--lease-ttl", "1500ms"],
            "--lease-ttl",
        ),
        Case::flags(&["--etcd-ca", readable], "--etcd-ca"),
        Case::flags(
            &[
                "--registry",
                etcd,
                "--etcd-cert",
                readable,
                "--etcd-key",
                readable,
            ],
            "--etcd-ca",
        ),
        Case::flags(
            &["--registry", etcd, "--etcd-ca", "/nonexistent/ca.pem"],
            "--etcd-ca",
        ),
        Case::flags(
            &["--registry", etcd, "--etcd-user", "root"],
            "--etcd-password-file",
        ),
        Case::flags(
            &[
                "--registry",
                etcd,
                "--etcd-user",
                "root",
                "--etcd-password-file",
                "/nonexistent/password",
            ],
            "--etcd-password-file",
        ),
        // A file where the directory should be, and a data dir with an etcd registry.
        Case::flags(&["--data-dir", readable], "--data-dir"),
        Case::env(&[("FLOWPLANE_DATA_DIR", readable)], "--data-dir"),
        Case::flags(&["--registry", etcd, "--data-dir", "/tmp/x"], "--data-dir"),
    ]);
    assert_rejects_before_binding(BINARY, &cases);
}

#[test]
fn a_data_dir_another_control_plane_holds_is_refused_before_binding() {
    let dir = tempfile::tempdir().unwrap();
    let held = flowplane_control_plane::standing::EmbeddedStore::open(dir.path()).unwrap();
    let dir_flag = dir.path().to_str().unwrap();
    assert_rejects_before_binding(
        BINARY,
        &[Case::flags(
            &["--data-dir", dir_flag],
            &format!("--data-dir {dir_flag}"),
        )],
    );
    drop(held);
}

#[test]
fn help_lists_the_settings_and_their_environment_variables() {
    let own = [
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
        "--data-dir",
        "FLOWPLANE_DATA_DIR",
    ];
    assert_help_lists(BINARY, &[SERVER_HELP, &own].concat());
}
