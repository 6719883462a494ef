//! Testing a processor the way a pipeline meets it: [`LocalHost`] serves a host on
//! 127.0.0.1 with a port the OS picks (so tests never race for ports), through the same
//! [`crate::serve`] as production, and opens `Process` streams to it with
//! [`crate::client::ProcessStream`]. It never listens anywhere but loopback.

use std::net::SocketAddr;

use flowplane_proto::processor::v1::ProcessReady;
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tonic::{Status, transport::Channel};

use crate::{Error, ProcessorHost, Result, ServeOptions, client::ProcessStream};

/// A host served on 127.0.0.1 until [`LocalHost::stop`] (or drop, which stops it without
/// waiting).
#[derive(Debug)]
pub struct LocalHost {
    addr: SocketAddr,
    stop: CancellationToken,
    task: Option<JoinHandle<Result<()>>>,
}

impl LocalHost {
    /// Serves `host` with the default options (no registration, no tokens, plaintext).
    pub async fn start(host: ProcessorHost) -> Result<Self> {
        Self::start_with(host, ServeOptions::default()).await
    }

    /// Serves `host` with `options`, for tests of tokens, TLS or registration.
    pub async fn start_with(host: ProcessorHost, options: ServeOptions) -> Result<Self> {
        let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let task = tokio::spawn(crate::serve(
            host,
            options,
            listener,
            stop.clone().cancelled_owned(),
        ));
        Ok(Self {
            addr,
            stop,
            task: Some(task),
        })
    }

    /// The address the host is bound to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A channel to the host, with the shared client stack's limits.
    pub async fn channel(&self) -> Result<Channel> {
        Ok(flowplane_grpc::client::connect(&self.addr.to_string(), &Default::default()).await?)
    }

    /// Opens a `Process` stream to `processor` as node `node` with `params` (JSON, `null`
    /// for none) and waits for `ready`; a refused init comes back as the host's status.
    pub async fn open(
        &self,
        processor: &str,
        node: &str,
        params: serde_json::Value,
    ) -> std::result::Result<(ProcessStream, ProcessReady), Status> {
        let channel = self
            .channel()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        ProcessStream::open(channel, crate::client::init(processor, node, params)).await
    }

    /// Shuts the host down (the production drain) and returns what `serve` returned.
    pub async fn stop(mut self) -> Result<()> {
        self.stop.cancel();
        match self.task.take() {
            Some(task) => task
                .await
                .map_err(|e| Error::Io(std::io::Error::other(format!("host task failed: {e}"))))?,
            None => Ok(()),
        }
    }
}

impl Drop for LocalHost {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
