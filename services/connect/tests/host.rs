//! `flowplane-connect` in process against a real control plane on 127.0.0.1: every
//! built-in registers as its own component (kind, capability label, data types), a
//! `Read` stream sends exactly the records it has credit for from the start offset, a
//! `Deliver` stream to the file consumer acknowledges a redelivery without writing it
//! twice, bad params and protocol errors end streams with statuses naming the field,
//! and shutdown deregisters every component.

use std::{collections::HashMap, time::Duration};

use flowplane_proto::{
    common::v1::ComponentKind,
    connect::v1::{
        AckOutcome, DeliverOpen, DeliverRequest, DeliverResponse, Delivery, Lineage, ReadAck,
        ReadCredit, ReadOpen, ReadRequest, ReadResponse,
        consumer_service_client::ConsumerServiceClient, deliver_request, deliver_response,
        read_request, read_response, source_service_client::SourceServiceClient,
    },
    controlplane::v1::{
        Component, ListComponentsRequest, control_plane_service_client::ControlPlaneServiceClient,
    },
    data::v1::{DataBuffer, DataTypeHint, JsonData, data_buffer::Payload},
};
use flowplane_sdk::CAPABILITY_LABEL;
use flowplane_test_support::{local_listener, wait_for, wait_until};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status, Streaming, transport::Channel};
use tonic_types::StatusExt;

/// Longest wait for one message of a stream.
const MESSAGE_DEADLINE: Duration = Duration::from_secs(20);

struct Running {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    addr: String,
}

async fn control_plane() -> Running {
    let listener = local_listener().await;
    let addr = listener.local_addr().unwrap().to_string();
    let stop = CancellationToken::new();
    let config = flowplane_control_plane::Config::default();
    let task = tokio::spawn({
        let stop = stop.clone();
        async move {
            flowplane_control_plane::run(config, listener, stop.cancelled_owned())
                .await
                .unwrap()
        }
    });
    Running { stop, task, addr }
}

async fn connect_host(control_plane: &str) -> Running {
    let listener = local_listener().await;
    let addr = listener.local_addr().unwrap().to_string();
    let stop = CancellationToken::new();
    let config = flowplane_connect::Config {
        control_plane: Some(control_plane.to_string()),
        id: Some("connect-a".into()),
        grace_period: Duration::from_secs(5),
        ..Default::default()
    };
    let task = tokio::spawn({
        let stop = stop.clone();
        async move {
            flowplane_connect::run(config, listener, stop.cancelled_owned())
                .await
                .unwrap()
        }
    });
    Running { stop, task, addr }
}

async fn channel(addr: &str) -> Channel {
    flowplane_grpc::client::connect(addr, &Default::default())
        .await
        .unwrap()
}

async fn components(cp: &str, kind: ComponentKind) -> Vec<Component> {
    let mut client = ControlPlaneServiceClient::new(channel(cp).await);
    client
        .list_components(ListComponentsRequest {
            kind: kind as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .components
}

fn read_open(source_id: &str, params: Value, start: &[(u32, u64)]) -> ReadOpen {
    ReadOpen {
        pipeline: "pipe".into(),
        start_offsets: start.iter().copied().collect(),
        params: Some(flowplane_proto::json_to_struct(params.as_object().unwrap())),
        source_id: source_id.into(),
    }
}

fn deliver_open(consumer_id: &str, params: Value) -> DeliverOpen {
    DeliverOpen {
        pipeline: "pipe".into(),
        output: "results".into(),
        params: Some(flowplane_proto::json_to_struct(params.as_object().unwrap())),
        consumer_id: consumer_id.into(),
    }
}

/// One `Read` stream: requests in, responses out.
struct Reader {
    tx: mpsc::Sender<ReadRequest>,
    rx: Streaming<ReadResponse>,
}

impl Reader {
    async fn open(addr: &str, open: ReadOpen) -> Result<Self, Status> {
        let (tx, requests) = mpsc::channel(16);
        tx.send(ReadRequest {
            request: Some(read_request::Request::Open(open)),
        })
        .await
        .unwrap();
        let rx = SourceServiceClient::new(channel(addr).await)
            .read(ReceiverStream::new(requests))
            .await?
            .into_inner();
        Ok(Self { tx, rx })
    }

    async fn send(&self, request: read_request::Request) {
        self.tx
            .send(ReadRequest {
                request: Some(request),
            })
            .await
            .unwrap();
    }

    async fn credit(&self, records: u32) {
        self.send(read_request::Request::Credit(ReadCredit { records }))
            .await;
    }

    async fn next(&mut self) -> Result<read_response::Response, Status> {
        let message = tokio::time::timeout(MESSAGE_DEADLINE, self.rx.message())
            .await
            .expect("a read response within the deadline")?;
        Ok(message
            .expect("the stream goes on")
            .response
            .expect("a response"))
    }

    /// The status the stream ends with.
    async fn status(&mut self) -> Status {
        loop {
            match tokio::time::timeout(MESSAGE_DEADLINE, self.rx.message())
                .await
                .expect("the stream ends within the deadline")
            {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the stream ended OK"),
                Err(status) => return status,
            }
        }
    }
}

fn field_of(status: &Status) -> String {
    let details = status.check_error_details().expect("standard details");
    details
        .bad_request()
        .map(|b| b.field_violations[0].field.clone())
        .unwrap_or_default()
}

fn reason_of(status: &Status) -> String {
    status
        .check_error_details()
        .expect("standard details")
        .error_info()
        .expect("error info")
        .reason
        .clone()
}

/// One `Deliver` stream.
struct Deliverer {
    tx: mpsc::Sender<DeliverRequest>,
    rx: Streaming<DeliverResponse>,
}

impl Deliverer {
    async fn open(addr: &str, open: DeliverOpen) -> Result<Self, Status> {
        let (tx, requests) = mpsc::channel(16);
        tx.send(DeliverRequest {
            request: Some(deliver_request::Request::Open(open)),
        })
        .await
        .unwrap();
        let mut rx = ConsumerServiceClient::new(channel(addr).await)
            .deliver(ReceiverStream::new(requests))
            .await?
            .into_inner();
        let first = tokio::time::timeout(MESSAGE_DEADLINE, rx.message())
            .await
            .expect("opened within the deadline")?;
        assert!(matches!(
            first.and_then(|m| m.response),
            Some(deliver_response::Response::Opened(_))
        ));
        Ok(Self { tx, rx })
    }

    async fn deliver(&mut self, delivery_id: u64, offset: u64, json: &str) -> (AckOutcome, String) {
        let delivery = Delivery {
            delivery_id,
            lineage: Some(Lineage {
                pipeline: "pipe".into(),
                source_id: "connect-a-source-generator".into(),
                partition: 0,
                offset,
                output: "results".into(),
                output_index: 0,
            }),
            buffer: Some(DataBuffer {
                payload: Some(Payload::Json(JsonData {
                    json: json.into(),
                    schema_hint: String::new(),
                })),
                metadata: HashMap::new(),
            }),
            attempt: 1,
            error: None,
        };
        self.tx
            .send(DeliverRequest {
                request: Some(deliver_request::Request::Delivery(delivery)),
            })
            .await
            .unwrap();
        let message = tokio::time::timeout(MESSAGE_DEADLINE, self.rx.message())
            .await
            .expect("an ack within the deadline")
            .unwrap()
            .unwrap();
        let Some(deliver_response::Response::Ack(ack)) = message.response else {
            panic!("not an ack: {message:?}")
        };
        assert_eq!(ack.delivery_id, delivery_id);
        (ack.outcome(), ack.message)
    }
}

/// Offsets of `n` records, after checking that each is one and of partition 0.
async fn records(reader: &mut Reader, n: usize) -> Vec<u64> {
    let mut offsets = Vec::new();
    for _ in 0..n {
        match reader.next().await.unwrap() {
            read_response::Response::Record(record) => {
                assert_eq!(record.partition, 0);
                let Some(Payload::Json(json)) = record.buffer.and_then(|b| b.payload) else {
                    panic!("a json record")
                };
                let value: Value = serde_json::from_str(&json.json).unwrap();
                assert_eq!(value["offset"], record.offset);
                offsets.push(record.offset);
            }
            other => panic!("expected a record, got {other:?}"),
        }
    }
    offsets
}

async fn pending(reader: &mut Reader) -> (HashMap<u32, u64>, bool) {
    match reader.next().await.unwrap() {
        read_response::Response::Pending(p) => (p.records, p.exhausted),
        other => panic!("expected pending, got {other:?}"),
    }
}

#[tokio::test]
async fn connectors_register_read_with_credit_deliver_once_and_deregister() {
    let cp = control_plane().await;
    let host = connect_host(&cp.addr).await;

    // Every built-in is its own component, found by its capability label.
    let sources = wait_for("both sources registered", || async {
        let found = components(&cp.addr, ComponentKind::Source).await;
        (found.len() == 2).then_some(found)
    })
    .await;
    let consumers = wait_for("both consumers registered", || async {
        let found = components(&cp.addr, ComponentKind::Consumer).await;
        (found.len() == 2).then_some(found)
    })
    .await;
    let ids = |cs: &[Component]| cs.iter().map(|c| c.id.clone()).collect::<Vec<_>>();
    assert_eq!(
        ids(&sources),
        ["connect-a-source-file", "connect-a-source-generator"]
    );
    assert_eq!(
        ids(&consumers),
        ["connect-a-consumer-file", "connect-a-consumer-log"]
    );
    for c in sources.iter().chain(&consumers) {
        let name = c.id.rsplit('-').next().unwrap();
        assert_eq!(c.metadata[CAPABILITY_LABEL], name, "{c:?}");
        assert_eq!(c.endpoint, host.addr);
    }
    let generator = &sources[1];
    assert_eq!(generator.kind(), ComponentKind::Source);
    assert!(generator.data_types.contains(&(DataTypeHint::Json as i32)));
    assert_eq!(consumers[0].kind(), ComponentKind::Consumer);

    // Exactly the credit granted, from the start offset.
    let mut reader = Reader::open(
        &host.addr,
        read_open("connect-a-source-generator", json!({}), &[(0, 5)]),
    )
    .await
    .unwrap();
    match reader.next().await.unwrap() {
        read_response::Response::Opened(opened) => {
            assert_eq!(opened.partitions, [0]);
            assert_eq!(opened.data_type(), DataTypeHint::Json);
        }
        other => panic!("{other:?}"),
    }
    assert!(!pending(&mut reader).await.1);
    reader.credit(10).await;
    assert_eq!(records(&mut reader, 10).await, (5..15).collect::<Vec<_>>());
    // Credit spent: the backlog report comes next, and no record before more credit.
    assert!(!pending(&mut reader).await.1);
    reader
        .send(read_request::Request::Ack(ReadAck {
            partition: 0,
            next_offset: 12,
        }))
        .await;
    reader.credit(3).await;
    assert_eq!(records(&mut reader, 3).await, [15, 16, 17]);
    assert!(!pending(&mut reader).await.1);
    // An ack beyond what was sent is a protocol error naming the field.
    reader
        .send(read_request::Request::Ack(ReadAck {
            partition: 0,
            next_offset: 99,
        }))
        .await;
    let status = reader.status().await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(field_of(&status), "ack.next_offset");

    // A finite source reports exhaustion after its last record; routed by bare name too.
    let mut finite = Reader::open(&host.addr, read_open("generator", json!({"count": 2}), &[]))
        .await
        .unwrap();
    finite.next().await.unwrap();
    pending(&mut finite).await;
    finite.credit(5).await;
    assert_eq!(records(&mut finite, 2).await, [0, 1]);
    assert_eq!(pending(&mut finite).await, (HashMap::from([(0, 0)]), true));

    // Refusals name what was wrong.
    let mut unknown = Reader::open(&host.addr, read_open("nope", json!({}), &[]))
        .await
        .unwrap();
    let status = unknown.status().await;
    assert_eq!(status.code(), Code::NotFound);
    assert!(
        status.message().contains("\"nope\""),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("generator"),
        "{}",
        status.message()
    );
    assert_eq!(field_of(&status), "open.source_id");
    let mut bad = Reader::open(
        &host.addr,
        read_open("connect-a-source-generator", json!({"partitions": 0}), &[]),
    )
    .await
    .unwrap();
    let status = bad.status().await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(field_of(&status), "open.params.partitions");
    assert!(
        status.message().contains("partitions"),
        "{}",
        status.message()
    );
    let mut zero = Reader::open(&host.addr, read_open("generator", json!({}), &[]))
        .await
        .unwrap();
    zero.credit(0).await;
    let status = zero.status().await;
    assert_eq!(
        (status.code(), reason_of(&status).as_str()),
        (Code::InvalidArgument, "ZERO_CREDIT")
    );
    let (tx, requests) = mpsc::channel(1);
    tx.send(ReadRequest {
        request: Some(read_request::Request::Credit(ReadCredit { records: 1 })),
    })
    .await
    .unwrap();
    let mut no_open = SourceServiceClient::new(channel(&host.addr).await)
        .read(ReceiverStream::new(requests))
        .await
        .unwrap()
        .into_inner();
    let status = no_open.message().await.unwrap_err();
    assert_eq!(
        (status.code(), reason_of(&status).as_str()),
        (Code::FailedPrecondition, "MISSING_OPEN")
    );

    // The file consumer writes a result once, however often it is delivered.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("{output}.jsonl");
    let consumer_params = json!({"path": path.to_str().unwrap()});
    let mut deliverer = Deliverer::open(
        &host.addr,
        deliver_open("connect-a-consumer-file", consumer_params.clone()),
    )
    .await
    .unwrap();
    assert_eq!(
        deliverer.deliver(1, 7, "{\"result\":8}").await.0,
        AckOutcome::Success
    );
    assert_eq!(
        deliverer.deliver(2, 7, "{\"result\":8}").await.0,
        AckOutcome::Success
    );
    drop(deliverer);
    let mut again = Deliverer::open(
        &host.addr,
        deliver_open("connect-a-consumer-file", consumer_params),
    )
    .await
    .unwrap();
    assert_eq!(
        again.deliver(1, 7, "{\"result\":8}").await.0,
        AckOutcome::Success
    );
    assert_eq!(
        again.deliver(2, 8, "{\"result\":9}").await.0,
        AckOutcome::Success
    );
    let written = std::fs::read_to_string(dir.path().join("results.jsonl")).unwrap();
    let offsets: Vec<u64> = written
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["lineage"]["offset"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(offsets, [7, 8]);
    let status = Deliverer::open(
        &host.addr,
        deliver_open("connect-a-consumer-file", json!({})),
    )
    .await
    .err()
    .expect("refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(field_of(&status), "open.params.path");
    drop((again, reader, finite, zero, no_open, tx));

    // Shutdown deregisters every connector.
    host.stop.cancel();
    tokio::time::timeout(Duration::from_secs(30), host.task)
        .await
        .expect("the host stops within the deadline")
        .unwrap();
    wait_until("every connector deregistered", || async {
        components(&cp.addr, ComponentKind::Source).await.is_empty()
            && components(&cp.addr, ComponentKind::Consumer)
                .await
                .is_empty()
    })
    .await;
    cp.stop.cancel();
    cp.task.await.unwrap();
}
