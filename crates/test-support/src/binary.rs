//! Checks every server binary must pass the same way: invalid settings (flags or
//! `FLOWPLANE_*` variables) exit with EX_USAGE naming the flag before any port is bound,
//! and `--help` documents each setting with its environment variable.

use std::process::Command;

/// Exit code for invalid settings a binary checks itself (EX_USAGE).
pub const EXIT_USAGE: i32 = 64;

/// Exit code clap uses for flags it cannot parse.
pub const EXIT_CLAP_USAGE: i32 = 2;

/// One invalid setting: extra arguments, extra environment, the flag stderr must name.
pub type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

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
pub fn assert_rejects_before_binding(binary: &str, cases: &[Case<'_>]) {
    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("hold a port");
    let listen = held.local_addr().expect("held address").to_string();
    for (args, env, flag) in cases {
        let output = command(binary)
            .args(["--listen", &listen])
            .args(*args)
            .envs(env.iter().copied())
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
