//! Real binaries as child processes for tests that need a process of their own (its
//! own metrics registry, its own RSS): start on 127.0.0.1 ports, kill on drop, scrape
//! `/metrics`.

use std::{collections::BTreeMap, process::Stdio};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The path of workspace binary `name`, next to the test executable.
pub fn binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().and_then(|d| d.parent()).unwrap().join(name);
    assert!(
        bin.exists(),
        "{} is missing: build the binaries first (`cargo build --workspace --bins`, which `make test` does)",
        bin.display()
    );
    bin
}

/// A free port on 127.0.0.1 for a child to bind: see [`flowplane_test_support::ports`].
pub use flowplane_test_support::ports::free_port;

/// A child process, killed when dropped.
pub struct Process(pub std::process::Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts workspace binary `name` with `args`, logging warnings only.
pub fn start(name: &str, args: &[String]) -> Process {
    Process(
        flowplane_test_support::binary::command(binary(name).to_str().expect("utf-8 path"))
            .args(args)
            .env("FLOWPLANE_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}")),
    )
}

/// GET /metrics; `None` until the endpoint answers.
pub async fn scrape(port: u16) -> Option<String> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await.ok()?;
    let ok = body.starts_with("HTTP/1.0 200") || body.starts_with("HTTP/1.1 200");
    ok.then_some(body)
}

/// Every sample of the exposition: series (name plus sorted labels) -> value.
pub fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| l.starts_with("flowplane_"))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// The value of the series named `name` whose labels include all of `labels`.
pub fn value(samples: &BTreeMap<String, f64>, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .filter(|(series, _)| {
            series.split('{').next() == Some(name)
                && labels
                    .iter()
                    .all(|(k, v)| series.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|(_, v)| *v)
        .reduce(|a, b| a + b)
}
