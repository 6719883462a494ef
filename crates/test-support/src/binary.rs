//! Checks every server binary must pass the same way: invalid settings (flags or
//! `FLOWPLANE_*` variables) exit with EX_USAGE naming the flag before any port is bound,
//! and `--help` documents each setting with its environment variable.

use std::process::Command;

/// Exit code for invalid settings a binary checks itself (EX_USAGE).
pub const EXIT_USAGE: i32 = 64;

/// Exit code clap uses for flags it cannot parse.
pub const EXIT_CLAP_USAGE: i32 = 2;

/// One invalid setting: extra arguments, extra environment, what stderr must name.
#[derive(Clone, Debug)]
pub struct Case {
    args: Vec<String>,
    env: Vec<(String, String)>,
    names: String,
}

impl Case {
    /// Flags `args`; stderr must contain `names`.
    pub fn flags(args: &[&str], names: &str) -> Self {
        Self {
            args: args.iter().map(|a| a.to_string()).collect(),
            env: Vec::new(),
            names: names.to_string(),
        }
    }

    /// Environment `env`; stderr must contain `names`.
    pub fn env(env: &[(&str, &str)], names: &str) -> Self {
        Self {
            args: Vec::new(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            names: names.to_string(),
        }
    }
}

/// A command for `binary` with no `FLOWPLANE_*` variables inherited from the test's shell.
pub fn command(binary: &str) -> Command {
    let mut command = Command::new(binary);
    for (var, _) in std::env::vars() {
        if var.starts_with("FLOWPLANE_") {
            command.env_remove(var);
        }
    }
    command
}

/// Runs each case with `--listen` on a port this function holds, so a binary that got as
/// far as binding would fail naming `--listen` instead of the bad setting.
pub fn assert_rejects_before_binding(binary: &str, cases: &[Case]) {
    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("hold a port");
    let listen = held.local_addr().expect("held address").to_string();
    for Case {
        args,
        env,
        names: flag,
    } in cases
    {
        let output = command(binary)
            .args(["--listen", &listen])
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("run the binary");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            matches!(output.status.code(), Some(EXIT_USAGE | EXIT_CLAP_USAGE)),
            "{args:?} {env:?} should exit with a usage error, got {:?}:\n{stderr}",
            output.status.code()
        );
        assert!(
            stderr.contains(flag),
            "{args:?} {env:?}: stderr does not name {flag}:\n{stderr}"
        );
        assert!(
            !stderr.contains("cannot listen"),
            "{args:?}: it got as far as binding"
        );
    }
}

/// `--help` succeeds and mentions every one of `expected` (flags and variables).
pub fn assert_help_lists(binary: &str, expected: &[&str]) {
    let output = command(binary).arg("--help").output().expect("run --help");
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for item in expected {
        assert!(help.contains(item), "--help lacks {item}:\n{help}");
    }
}

/// A file in the temp directory with the given contents, removed on drop: token files
/// and the like for the binaries to read.
pub struct TempFile {
    path: std::path::PathBuf,
}

impl TempFile {
    /// Writes `contents` to a fresh file.
    pub fn new(contents: &str) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "flowplane-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        std::fs::write(&path, contents).expect("write a temp file");
        Self { path }
    }

    /// The file's path as a string, for command lines and variables.
    pub fn path(&self) -> &str {
        self.path.to_str().expect("temp paths are utf-8")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A token file whose line 3 is malformed (a token without roles).
pub fn malformed_token_file() -> TempFile {
    TempFile::new("# tokens\nfine-token read,process\nno-roles-here\n")
}

/// What stderr shows for [`malformed_token_file`]: the line and what is wrong with it.
pub const MALFORMED_TOKEN_LINE: &str = "line 3: expected `TOKEN ROLE[,ROLE...]`";

/// The invalid settings every server shares (`ServeArgs`: TLS, token file, client roles),
/// with the files they need; each binary's test adds its own cases to [`Self::server`].
pub struct SharedSettings {
    tokens: TempFile,
    pem: TempFile,
}

impl Default for SharedSettings {
    fn default() -> Self {
        Self::new()
    }
}

impl SharedSettings {
    /// Makes the malformed token file and a readable (unparsed) PEM stand-in.
    pub fn new() -> Self {
        Self {
            tokens: malformed_token_file(),
            pem: TempFile::new("pem"),
        }
    }

    /// Server settings: TLS identity and client CA, token file, client roles, listen.
    pub fn server(&self) -> Vec<Case> {
        let tokens = self.tokens.path();
        // Read, never parsed, before the client CA: a bad client CA is what fails.
        let readable = self.pem.path();
        let missing_ca = "/nonexistent/ca.pem";
        vec![
            Case::flags(
                &[
                    "--tls-cert",
                    "/nonexistent/cert.pem",
                    "--tls-key",
                    "/nonexistent/key.pem",
                ],
                "--tls-cert",
            ),
            Case::flags(&["--tls-cert", "/nonexistent/cert.pem"], "--tls-key"),
            Case::flags(&["--tls-client-ca", missing_ca], "--tls-client-ca"),
            Case::env(
                &[("FLOWPLANE_TLS_CLIENT_CA", missing_ca)],
                "--tls-client-ca",
            ),
            Case::flags(
                &[
                    "--tls-cert",
                    readable,
                    "--tls-key",
                    readable,
                    "--tls-client-ca",
                    missing_ca,
                ],
                "--tls-client-ca",
            ),
            Case::flags(&["--token-file", tokens], MALFORMED_TOKEN_LINE),
            Case::env(&[("FLOWPLANE_TOKEN_FILE", tokens)], MALFORMED_TOKEN_LINE),
            Case::flags(&["--token-file", "/nonexistent/tokens"], "--token-file"),
            Case::flags(
                &["--tls-client-roles", readable],
                "--tls-client-roles needs --tls-client-ca",
            ),
            Case::env(
                &[("FLOWPLANE_TLS_CLIENT_ROLES", readable)],
                "--tls-client-roles needs --tls-client-ca",
            ),
            Case::flags(&["--listen", "not-an-address"], "--listen"),
        ]
    }

    /// `--control-plane` of a binary that dials the control plane: one URL or a replica
    /// list, each entry checked, from the flag and from `FLOWPLANE_CONTROL_PLANE`.
    pub fn control_plane(&self) -> Vec<Case> {
        vec![
            Case::flags(&["--control-plane", "not a uri"], "--control-plane"),
            Case::env(&[("FLOWPLANE_CONTROL_PLANE", "::bad::")], "--control-plane"),
            Case::flags(
                &["--control-plane", "http://127.0.0.1:1,,http://127.0.0.1:2"],
                "--control-plane: invalid entry \"\": empty entry",
            ),
            Case::env(
                &[(
                    "FLOWPLANE_CONTROL_PLANE",
                    "http://127.0.0.1:1,http://127.0.0.1:99999",
                )],
                "invalid entry \"http://127.0.0.1:99999\"",
            ),
            Case::env(
                &[(
                    "FLOWPLANE_CONTROL_PLANE",
                    "http://127.0.0.1:1,ftp://127.0.0.1:2",
                )],
                "invalid entry \"ftp://127.0.0.1:2\"",
            ),
        ]
    }

    /// Client settings of a server that also dials others (`ClientArgs`): TLS trust,
    /// client certificate, client token file.
    pub fn client(&self) -> Vec<Case> {
        let tokens = self.tokens.path();
        vec![
            Case::flags(
                &["--tls-client-cert", "/nonexistent/client.pem"],
                "--tls-client-key",
            ),
            Case::env(
                &[("FLOWPLANE_TLS_CLIENT_KEY", "/nonexistent/client.key")],
                "--tls-client-cert",
            ),
            Case::flags(
                &[
                    "--tls-client-cert",
                    "/nonexistent/client.pem",
                    "--tls-client-key",
                    "/nonexistent/client.key",
                ],
                "--tls-client-cert",
            ),
            Case::flags(&["--tls-ca", "/nonexistent/ca.pem"], "--tls-ca"),
            Case::flags(
                &["--client-token-file", "/nonexistent/token"],
                "--client-token-file",
            ),
            Case::flags(
                &["--token", "t", "--client-token-file", tokens],
                "--client-token-file",
            ),
        ]
    }
}

/// What `--help` of every server lists (`ServeArgs`).
pub const SERVER_HELP: &[&str] = &[
    "--listen",
    "FLOWPLANE_LISTEN",
    "--metrics-listen",
    "--tls-cert",
    "--tls-client-ca",
    "FLOWPLANE_TLS_CLIENT_CA",
    "--token-file",
    "FLOWPLANE_TOKEN_FILE",
    "--tls-client-roles",
    "FLOWPLANE_TLS_CLIENT_ROLES",
    "--reflection",
    "FLOWPLANE_REFLECTION",
];

/// What `--help` of a server that dials others also lists (`ClientArgs`).
pub const CLIENT_HELP: &[&str] = &[
    "--tls-ca",
    "--tls-client-cert",
    "FLOWPLANE_TLS_CLIENT_CERT",
    "--tls-client-key",
    "FLOWPLANE_TLS_CLIENT_KEY",
    "--client-token-file",
    "FLOWPLANE_CLIENT_TOKEN_FILE",
];
