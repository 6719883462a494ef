//! The connector host on 127.0.0.1 without a control plane: a source that yields a wrong
//! offset ends its stream INTERNAL, a delivery of a type the consumer does not accept is
//! rejected without reaching it, a reader whose peer goes away is dropped, with tokens
//! the Read RPC needs role `process`, and a draining host refuses new streams.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use flowplane_grpc::auth::{AttachBearer, Role, Tokens};
use flowplane_sdk::{
    Ack, ConnectorError, ConnectorHost, ConnectorSpec, Consumer, ConsumerOpen, ConsumerSink,
    Delivery, Record, ServeOptions, Source, SourceOpen, SourceReader, async_trait,
    proto::{
        connect::v1::{
            AckOutcome, DeliverOpen, DeliverRequest, Delivery as WireDelivery, Lineage, ReadCredit,
            ReadOpen, ReadRequest, consumer_service_client::ConsumerServiceClient, deliver_request,
            deliver_response, read_request, read_response,
            source_service_client::SourceServiceClient,
        },
        data::v1::{DataBuffer, DataTypeHint, TextData, data_buffer::Payload},
    },
    serve_connectors,
};
use flowplane_test_support::{local_listener, wait_until};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status, transport::Channel};
use tonic_types::StatusExt;

const DEADLINE: Duration = Duration::from_secs(20);

/// Yields text records; skips an offset after `skip_after` records when set. Counts
/// readers alive.
struct Counting {
    alive: Arc<AtomicU64>,
    skip_after: Option<u64>,
}

struct CountingReader {
    next: u64,
    sent: u64,
    skip_after: Option<u64>,
    alive: Arc<AtomicU64>,
}

impl Drop for CountingReader {
    fn drop(&mut self) {
        self.alive.fetch_sub(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl Source for Counting {
    fn spec(&self) -> ConnectorSpec {
        ConnectorSpec::new("counting", "counts").data_types([DataTypeHint::Text])
    }
    async fn open(&self, open: SourceOpen<'_>) -> Result<Box<dyn SourceReader>, ConnectorError> {
        self.alive.fetch_add(1, Ordering::SeqCst);
        Ok(Box::new(CountingReader {
            next: open.start(0),
            sent: 0,
            skip_after: self.skip_after,
            alive: self.alive.clone(),
        }))
    }
}

#[async_trait]
impl SourceReader for CountingReader {
    fn partitions(&self) -> Vec<u32> {
        vec![0]
    }
    fn data_type(&self) -> DataTypeHint {
        DataTypeHint::Text
    }
    async fn next(&mut self) -> Result<Option<Record>, ConnectorError> {
        if self.skip_after == Some(self.sent) {
            self.next += 1;
        }
        let text = TextData {
            text: self.next.to_string(),
            language: String::new(),
        };
        let record = Record::new(0, self.next, Payload::Text(text));
        self.next += 1;
        self.sent += 1;
        Ok(Some(record))
    }
}

/// Accepts JSON only; remembers whether it was ever called.
struct JsonOnly {
    called: Arc<AtomicBool>,
}

#[async_trait]
impl Consumer for JsonOnly {
    fn spec(&self) -> ConnectorSpec {
        ConnectorSpec::new("json-only", "json").data_types([DataTypeHint::Json])
    }
    async fn open(&self, _: ConsumerOpen<'_>) -> Result<Box<dyn ConsumerSink>, ConnectorError> {
        Ok(Box::new(JsonOnlySink(self.called.clone())))
    }
}

struct JsonOnlySink(Arc<AtomicBool>);

#[async_trait]
impl ConsumerSink for JsonOnlySink {
    async fn consume(&mut self, _: Delivery) -> Ack {
        self.0.store(true, Ordering::SeqCst);
        Ack::Success
    }
}

struct Served {
    addr: String,
    host: ConnectorHost,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<flowplane_sdk::Result<()>>,
}

async fn serve(host: ConnectorHost, options: ServeOptions) -> Served {
    let listener = local_listener().await;
    let addr = listener.local_addr().unwrap().to_string();
    let stop = CancellationToken::new();
    let task = tokio::spawn(serve_connectors(
        host.clone(),
        options,
        listener,
        stop.clone().cancelled_owned(),
    ));
    Served {
        addr,
        host,
        stop,
        task,
    }
}

async fn channel(addr: &str) -> Channel {
    flowplane_grpc::client::connect(addr, &Default::default())
        .await
        .unwrap()
}

fn open(source_id: &str) -> ReadRequest {
    ReadRequest {
        request: Some(read_request::Request::Open(ReadOpen {
            source_id: source_id.into(),
            ..Default::default()
        })),
    }
}

fn credit(records: u32) -> ReadRequest {
    ReadRequest {
        request: Some(read_request::Request::Credit(ReadCredit { records })),
    }
}

fn reason(status: &Status) -> String {
    status
        .check_error_details()
        .unwrap()
        .error_info()
        .unwrap()
        .reason
        .clone()
}

/// The status a stream ends with, skipping its messages.
async fn end<T>(stream: &mut tonic::Streaming<T>) -> Status {
    loop {
        match tokio::time::timeout(DEADLINE, stream.message())
            .await
            .unwrap()
        {
            Ok(Some(_)) => {}
            Ok(None) => panic!("ended OK"),
            Err(status) => return status,
        }
    }
}

#[tokio::test]
async fn a_source_that_skips_an_offset_ends_its_stream_internal() {
    let alive = Arc::new(AtomicU64::new(0));
    let host = ConnectorHost::builder("test")
        .source(Counting {
            alive: alive.clone(),
            skip_after: Some(2),
        })
        .build()
        .unwrap();
    let served = serve(host, ServeOptions::default()).await;
    let (tx, rx) = mpsc::channel(4);
    tx.send(open("counting")).await.unwrap();
    tx.send(credit(5)).await.unwrap();
    let mut stream = SourceServiceClient::new(channel(&served.addr).await)
        .read(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let status = end(&mut stream).await;
    assert_eq!(status.code(), Code::Internal);
    assert_eq!(reason(&status), "SOURCE_MISBEHAVED");
    assert!(
        status
            .message()
            .contains("offset 3 of partition 0 where offset 2 was due"),
        "{}",
        status.message()
    );
    wait_until("the reader dropped", || async {
        alive.load(Ordering::SeqCst) == 0
    })
    .await;
    served.stop.cancel();
    served.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_reader_whose_peer_goes_away_is_dropped() {
    let alive = Arc::new(AtomicU64::new(0));
    let host = ConnectorHost::builder("test")
        .source(Counting {
            alive: alive.clone(),
            skip_after: None,
        })
        .build()
        .unwrap();
    let served = serve(host, ServeOptions::default()).await;
    let (tx, rx) = mpsc::channel(4);
    tx.send(open("counting")).await.unwrap();
    // Far more credit than the queues hold: the host must stop at its bounds.
    tx.send(credit(1_000_000)).await.unwrap();
    let mut stream = SourceServiceClient::new(channel(&served.addr).await)
        .read(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(DEADLINE, stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(
        first.response,
        Some(read_response::Response::Opened(_))
    ));
    assert_eq!(alive.load(Ordering::SeqCst), 1);
    drop(stream);
    drop(tx);
    wait_until("the reader dropped", || async {
        alive.load(Ordering::SeqCst) == 0
    })
    .await;
    served.stop.cancel();
    served.task.await.unwrap().unwrap();
    assert_eq!(served.host.sources().len(), 1);
}

#[tokio::test]
async fn a_delivery_of_an_undeclared_type_is_rejected_without_reaching_the_consumer() {
    let called = Arc::new(AtomicBool::new(false));
    let host = ConnectorHost::builder("test")
        .consumer(JsonOnly {
            called: called.clone(),
        })
        .build()
        .unwrap();
    let served = serve(host, ServeOptions::default()).await;
    let (tx, rx) = mpsc::channel(4);
    tx.send(DeliverRequest {
        request: Some(deliver_request::Request::Open(DeliverOpen {
            consumer_id: "json-only".into(),
            output: "out".into(),
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    tx.send(DeliverRequest {
        request: Some(deliver_request::Request::Delivery(WireDelivery {
            delivery_id: 4,
            lineage: Some(Lineage::default()),
            buffer: Some(DataBuffer {
                payload: Some(Payload::Text(TextData::default())),
                metadata: HashMap::new(),
            }),
            attempt: 1,
            error: None,
        })),
    })
    .await
    .unwrap();
    let mut stream = ConsumerServiceClient::new(channel(&served.addr).await)
        .deliver(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let opened = stream.message().await.unwrap().unwrap();
    assert!(matches!(
        opened.response,
        Some(deliver_response::Response::Opened(_))
    ));
    let ack = stream.message().await.unwrap().unwrap();
    let Some(deliver_response::Response::Ack(ack)) = ack.response else {
        panic!("{ack:?}")
    };
    assert_eq!((ack.delivery_id, ack.outcome()), (4, AckOutcome::Reject));
    assert!(
        ack.message.contains("accepts json, not text"),
        "{}",
        ack.message
    );
    assert!(!called.load(Ordering::SeqCst));
    drop(tx);
    served.stop.cancel();
    served.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn with_tokens_read_needs_the_process_role_and_drain_refuses_new_streams() {
    let alive = Arc::new(AtomicU64::new(0));
    let host = ConnectorHost::builder("test")
        .source(Counting {
            alive,
            skip_after: None,
        })
        .build()
        .unwrap();
    let mut tokens = Tokens::single("proc-token", Role::Process);
    tokens.add("read-token", Role::Read);
    let options = ServeOptions {
        tokens: Some(tokens),
        grace_period: Duration::from_secs(20),
        ..Default::default()
    };
    let served = serve(host, options).await;
    let read = |token: Option<&'static str>| {
        let addr = served.addr.clone();
        async move {
            let (tx, rx) = mpsc::channel(4);
            tx.send(open("counting")).await.unwrap();
            let client = SourceServiceClient::with_interceptor(
                channel(&addr).await,
                AttachBearer::new(token).unwrap(),
            );
            let mut client = client;
            let stream = client.read(ReceiverStream::new(rx)).await;
            (tx, stream)
        }
    };
    let (_tx, refused) = read(None).await;
    assert_eq!(refused.unwrap_err().code(), Code::Unauthenticated);
    let (_tx, refused) = read(Some("read-token")).await;
    assert_eq!(refused.unwrap_err().code(), Code::PermissionDenied);
    let (open_tx, accepted) = read(Some("proc-token")).await;
    let mut accepted = accepted.unwrap().into_inner();
    let opened = accepted.message().await.unwrap().unwrap();
    assert!(matches!(
        opened.response,
        Some(read_response::Response::Opened(_))
    ));
    // Draining: the open stream carries on, a new one is refused DRAINING.
    served.stop.cancel();
    let refused = async {
        loop {
            let (_tx, attempt) = read(Some("proc-token")).await;
            match attempt {
                Err(status) => break status,
                // Admitted before the drain began: try again.
                Ok(mut stream) => match stream.get_mut().message().await {
                    Err(status) => break status,
                    Ok(_) => tokio::task::yield_now().await,
                },
            }
        }
    };
    let status = tokio::time::timeout(DEADLINE, refused)
        .await
        .expect("a refusal within the deadline");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(reason(&status), "DRAINING");
    drop((open_tx, accepted));
    served.task.await.unwrap().unwrap();
}
