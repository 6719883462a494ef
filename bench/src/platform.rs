//! Starting what a scenario measures, on 127.0.0.1 only: the flowplane services in this
//! process through their `run` functions, the same services as real processes from the
//! release binaries, and the raw echo either way. Everything started here is stopped or
//! killed by the handle that started it; nothing else is ever touched.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use flowplane_proto::streaming::v1::{
    PipelineManifest, ValidatePipelineRequest,
    streaming_pipeline_service_client::StreamingPipelineServiceClient,
};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::{Error, Result, stats::Proc};

/// How long a service may take to come up before the scenario gives up.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A listener on 127.0.0.1 with a port chosen by the kernel.
pub async fn local_listener() -> Result<TcpListener> {
    TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| Error::io("bind 127.0.0.1:0", e))
}

/// A free port for a child process to bind (released before the child starts).
fn free_port() -> Result<SocketAddr> {
    let socket =
        std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| Error::io("bind 127.0.0.1:0", e))?;
    socket
        .local_addr()
        .map_err(|e| Error::io("local address", e))
}

/// A connected channel with flowplane's client settings (nodelay, keepalive, fixed h2 windows).
pub async fn connect(addr: SocketAddr) -> Result<Channel> {
    let url = format!("http://{addr}");
    let endpoint = flowplane_grpc::client::endpoint(&url, &Default::default()).map_err(|e| {
        Error::Connect {
            endpoint: url.clone(),
            message: e.to_string(),
        }
    })?;
    endpoint.connect().await.map_err(|e| Error::Connect {
        endpoint: url,
        message: e.to_string(),
    })
}

/// A client of the pipeline service with flowplane's message limits.
pub fn pipeline_client(channel: Channel) -> StreamingPipelineServiceClient<Channel> {
    StreamingPipelineServiceClient::new(channel)
        .max_decoding_message_size(flowplane_grpc::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(flowplane_grpc::MAX_MESSAGE_BYTES)
}

/// Waits until the pipeline service at `addr` can run `manifest`: its view of the
/// control plane has the processors the manifest names.
pub async fn wait_runnable(addr: SocketAddr, manifest: &PipelineManifest) -> Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    let mut last = String::from("not reachable");
    while Instant::now() < deadline {
        if let Ok(channel) = connect(addr).await {
            let answer = pipeline_client(channel)
                .validate_pipeline(ValidatePipelineRequest {
                    manifest: Some(manifest.clone()),
                })
                .await;
            match answer {
                Ok(r) if r.get_ref().problems.is_empty() => return Ok(()),
                Ok(r) => last = format!("{:?}", r.into_inner().problems),
                Err(status) => last = status.message().to_string(),
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(Error::Timeout(format!(
        "pipeline at {addr} cannot run the bench manifest after {START_TIMEOUT:?}: {last}"
    )))
}

/// A service running in this process.
pub struct Running {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Running {
    fn spawn<F>(
        listener: TcpListener,
        name: &'static str,
        run: impl FnOnce(TcpListener, CancellationToken) -> F,
    ) -> Result<Self>
    where
        F: Future<Output = std::result::Result<(), String>> + Send + 'static,
    {
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("local address", e))?;
        let stop = CancellationToken::new();
        let fut = run(listener, stop.clone());
        let task = tokio::spawn(async move {
            if let Err(error) = fut.await {
                tracing::error!(service = name, %error, "in-process service failed");
            }
        });
        Ok(Self { addr, stop, task })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Signals shutdown and waits (bounded) for `run` to return.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

/// The raw echo in this process.
pub async fn echo_in_process() -> Result<Running> {
    Running::spawn(
        local_listener().await?,
        "echo",
        |listener, stop| async move {
            crate::echo::serve(listener, stop.cancelled_owned())
                .await
                .map_err(|e| e.to_string())
        },
    )
}

/// A control plane in this process.
pub async fn control_plane_in_process(lease_ttl: Duration) -> Result<Running> {
    control_plane_with(flowplane_control_plane::Config {
        lease_ttl,
        ..Default::default()
    })
    .await
}

/// A control plane in this process with `config` (another registry backend, say).
pub async fn control_plane_with(config: flowplane_control_plane::Config) -> Result<Running> {
    Running::spawn(
        local_listener().await?,
        "control plane",
        |listener, stop| async move {
            flowplane_control_plane::run(config, listener, stop.cancelled_owned())
                .await
                .map_err(|e| e.to_string())
        },
    )
}

/// Control plane, one processor host with every built-in, and a pipeline service, all in
/// this process and talking over 127.0.0.1.
pub struct InProcess {
    /// The control plane.
    pub control_plane: Running,
    /// The processor host (`bench-proc-0`).
    pub processor: Running,
    /// The pipeline service.
    pub pipeline: Running,
}

impl InProcess {
    /// Starts the three services; `max_sessions` is raised for the concurrency scenarios.
    pub async fn start(max_sessions: usize) -> Result<Self> {
        let control_plane = control_plane_in_process(Duration::from_secs(15)).await?;
        let processor_config = flowplane_processor::Config {
            control_plane: Some(control_plane.url()),
            id: Some("bench-proc-0".into()),
            grace_period: Duration::from_secs(1),
            // Only the DEGRADED threshold: keep the host HEALTHY under thousands of streams.
            max_streams: 1_000_000,
            ..Default::default()
        };
        let processor = Running::spawn(
            local_listener().await?,
            "processor",
            |listener, stop| async move {
                flowplane_processor::run(processor_config, listener, stop.cancelled_owned())
                    .await
                    .map_err(|e| e.to_string())
            },
        )?;
        let mut pipeline_config = flowplane_pipeline::Config::new(control_plane.url());
        pipeline_config.limits.max_sessions = max_sessions;
        pipeline_config.grace_period = Duration::from_secs(1);
        // Every built-in can also run co-located (B9's and B1/B2's `local` rows).
        pipeline_config.local_processors = vec!["all".into()];
        let pipeline = Running::spawn(
            local_listener().await?,
            "pipeline",
            |listener, stop| async move {
                flowplane_pipeline::run(pipeline_config, listener, stop.cancelled_owned())
                    .await
                    .map_err(|e| e.to_string())
            },
        )?;
        Ok(Self {
            control_plane,
            processor,
            pipeline,
        })
    }

    /// Stops the pipeline, then the processor, then the control plane.
    pub async fn stop(self) {
        self.pipeline.stop().await;
        self.processor.stop().await;
        self.control_plane.stop().await;
    }
}

/// Where the release binaries are: next to this binary unless told otherwise.
#[derive(Clone, Debug)]
pub struct Binaries {
    dir: PathBuf,
    log_dir: PathBuf,
    log_filter: String,
}

impl Binaries {
    /// Uses `dir`, or the directory of the running executable; services log with
    /// `log_filter` into `log_dir`.
    pub fn locate(dir: Option<PathBuf>, log_dir: PathBuf, log_filter: String) -> Result<Self> {
        let dir = match dir {
            Some(dir) => dir,
            None => std::env::current_exe()
                .map_err(|e| Error::io("locate the bench executable", e))?
                .parent()
                .map(Path::to_path_buf)
                .ok_or_else(|| Error::Setup("the bench executable has no directory".into()))?,
        };
        Ok(Self {
            dir,
            log_dir,
            log_filter,
        })
    }

    fn path(&self, name: &str) -> Result<PathBuf> {
        let path = self.dir.join(name);
        if path.is_file() {
            Ok(path)
        } else {
            Err(Error::Setup(format!(
                "{} not found: build the services first (cargo build --release --bins -p flowplane-pipeline -p flowplane-processor -p flowplane-control-plane -p flowplane-bench)",
                path.display()
            )))
        }
    }

    /// Starts `name` with `args`, its log lines going to `<log_dir>/<log>.log`.
    pub fn spawn(&self, name: &str, log: &str, args: &[String]) -> Result<ChildProcess> {
        let path = if name == "self" {
            std::env::current_exe().map_err(|e| Error::io("locate the bench executable", e))?
        } else {
            self.path(name)?
        };
        std::fs::create_dir_all(&self.log_dir)
            .map_err(|e| Error::io(format!("create {}", self.log_dir.display()), e))?;
        let log_path = self.log_dir.join(format!("{log}.log"));
        let log_file = std::fs::File::create(&log_path)
            .map_err(|e| Error::io(format!("create {}", log_path.display()), e))?;
        let mut command = tokio::process::Command::new(&path);
        for (var, _) in std::env::vars() {
            if var.starts_with("FLOWPLANE_") || var.starts_with("OTEL_") {
                command.env_remove(var);
            }
        }
        let child = command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Error::io(format!("start {}", path.display()), e))?;
        Ok(ChildProcess {
            name: log.to_string(),
            child,
        })
    }

    /// Runs this bench binary again with `args` and returns what it printed on stdout;
    /// killed when it runs longer than `limit`.
    pub async fn run_self(&self, log: &str, args: &[String], limit: Duration) -> Result<String> {
        let path =
            std::env::current_exe().map_err(|e| Error::io("locate the bench executable", e))?;
        std::fs::create_dir_all(&self.log_dir)
            .map_err(|e| Error::io(format!("create {}", self.log_dir.display()), e))?;
        let log_path = self.log_dir.join(format!("{log}.log"));
        let log_file = std::fs::File::create(&log_path)
            .map_err(|e| Error::io(format!("create {}", log_path.display()), e))?;
        let child = tokio::process::Command::new(&path)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Error::io(format!("start {}", path.display()), e))?;
        let output = tokio::time::timeout(limit, child.wait_with_output())
            .await
            .map_err(|_| Error::Timeout(format!("{log} still running after {limit:?}")))?
            .map_err(|e| Error::io(format!("wait for {log}"), e))?;
        if !output.status.success() {
            return Err(Error::Setup(format!(
                "{log} exited with {} (see {})",
                output.status,
                log_path.display()
            )));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// A service binary (`self` for this one) started with `args` then `--listen` on a
    /// free port, and reachable (TCP) before this returns.
    pub async fn service(&self, binary: &str, log: &str, args: &[String]) -> Result<Service> {
        let addr = free_port()?;
        let mut all = args.to_vec();
        all.extend(["--listen".to_string(), addr.to_string()]);
        let process = self.spawn(binary, log, &all)?;
        wait_listening(addr, &process.name).await?;
        Ok(Service { addr, process })
    }
}

/// A child process the harness started.
pub struct ChildProcess {
    name: String,
    child: tokio::process::Child,
}

impl ChildProcess {
    /// Its pid, for /proc.
    pub fn proc(&self) -> Proc {
        Proc::Pid(self.child.id().unwrap_or(0))
    }

    /// Kills it (SIGKILL) and reaps it.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}

/// A service running as its own process.
pub struct Service {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The process.
    pub process: ChildProcess,
}

impl Service {
    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

async fn wait_listening(addr: SocketAddr, name: &str) -> Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(Error::Timeout(format!(
        "{name} did not listen on {addr} within {START_TIMEOUT:?} (see target/bench/logs/{name}.log)"
    )))
}

/// Control plane, processor host and pipeline service as real processes.
pub struct Processes {
    /// The control plane.
    pub control_plane: Service,
    /// The processor host.
    pub processor: Service,
    /// The pipeline service.
    pub pipeline: Service,
}

impl Processes {
    /// Starts the three release binaries, logging to `<scenario>-<service>.log`;
    /// `max_sessions` for the pipeline.
    pub async fn start(bins: &Binaries, scenario: &str, max_sessions: usize) -> Result<Self> {
        let quiet = ["--log-filter".to_string(), bins.log_filter.clone()];
        // Its own data directory: the default one is shared by every control plane started
        // in the same working directory.
        let mut cp_args = quiet.to_vec();
        cp_args.extend([
            "--data-dir".to_string(),
            bins.log_dir
                .join(format!("{scenario}-control-plane-data"))
                .display()
                .to_string(),
        ]);
        let control_plane = bins
            .service(
                "flowplane-control-plane",
                &format!("{scenario}-control-plane"),
                &cp_args,
            )
            .await?;
        let mut args = vec![
            "--control-plane".to_string(),
            control_plane.url(),
            "--id".into(),
            "bench-proc-0".into(),
            "--max-streams".into(),
            "1000000".into(),
            "--grace-period".into(),
            "1s".into(),
        ];
        args.extend_from_slice(&quiet);
        let processor = bins
            .service(
                "flowplane-processor",
                &format!("{scenario}-processor"),
                &args,
            )
            .await?;
        let mut args = vec![
            "--control-plane".to_string(),
            control_plane.url(),
            "--max-sessions".into(),
            max_sessions.to_string(),
            "--grace-period-secs".into(),
            "1".into(),
        ];
        args.extend_from_slice(&quiet);
        let pipeline = bins
            .service("flowplane-pipeline", &format!("{scenario}-pipeline"), &args)
            .await?;
        Ok(Self {
            control_plane,
            processor,
            pipeline,
        })
    }

    /// Kills all three.
    pub async fn kill(self) {
        self.pipeline.process.kill().await;
        self.processor.process.kill().await;
        self.control_plane.process.kill().await;
    }
}
