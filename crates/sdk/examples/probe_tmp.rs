use flowplane_sdk::{
    client::*,
    proto::data::v1::{data_buffer::Payload, *},
    *,
};
use std::time::Instant;
struct Pass;
impl Processor for Pass {
    fn capability() -> Capability {
        Capability::new("passthrough", "p")
            .input("data", [DataTypeHint::Any], "")
            .output("data", [DataTypeHint::Any], "")
            .stateless()
    }
    fn create(_: &Params) -> std::result::Result<Self, ParamError> {
        Ok(Pass)
    }
    fn process(&mut self, i: Input<'_>) -> std::result::Result<Vec<Output>, ProcessError> {
        Ok(vec![Output::new("data", i.payload)])
    }
}
#[tokio::main]
async fn main() {
    let host = ProcessorHost::builder("p")
        .processor::<Pass>()
        .build()
        .unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(serve(
        host,
        ServeOptions::default(),
        l,
        std::future::pending(),
    ));
    let ch = flowplane_grpc::client::connect(&addr.to_string(), &Default::default())
        .await
        .unwrap();
    for (size, n) in [(100usize, 50_000u64), (65536, 10_000)] {
        let (s, _) = ProcessStream::open(
            ch.clone(),
            init("passthrough", "n", serde_json::Value::Null),
        )
        .await
        .unwrap();
        let (tx, mut rx) = s.split();
        let tx = tx.unwrap();
        let data = bytes::Bytes::from(vec![1u8; size]);
        let t = Instant::now();
        let send = tokio::spawn(async move {
            for i in 0..n {
                tx.send(chunk(
                    i,
                    "",
                    Payload::Binary(BinaryData {
                        data: data.clone(),
                        mime_type: String::new(),
                    }),
                ))
                .await
                .unwrap();
            }
        });
        for _ in 0..n {
            rx.result().await.unwrap().unwrap();
        }
        send.await.unwrap();
        let e = t.elapsed().as_secs_f64();
        println!(
            "{size} B pipelined: {:.0} chunks/s, {:.1} MB/s",
            n as f64 / e,
            (n as f64 * size as f64) / e / 1e6
        );
    }
    let (mut s, _) = ProcessStream::open(
        ch.clone(),
        init("passthrough", "n", serde_json::Value::Null),
    )
    .await
    .unwrap();
    let t = Instant::now();
    for i in 0..5000u64 {
        s.send(chunk(
            i,
            "",
            Payload::Binary(BinaryData {
                data: bytes::Bytes::from_static(&[0u8; 100]),
                mime_type: String::new(),
            }),
        ))
        .await
        .unwrap();
        s.result().await.unwrap().unwrap();
    }
    println!(
        "100 B one in flight: {:.0} chunks/s",
        5000.0 / t.elapsed().as_secs_f64()
    );
}
