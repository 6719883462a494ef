//! The CLI end to end against an in-process control plane on 127.0.0.1: `components
//! list|get|watch` through the library, and `health` and `components list` through the
//! real `flowplane` binary.

use std::{
    io::Write,
    sync::{Arc, Mutex},
};

use clap::Parser;
use flowplane_cli::{Cli, Error};
use flowplane_proto::{
    common::v1::HealthStatus,
    controlplane::v1::{self as pb, control_plane_service_client::ControlPlaneServiceClient},
    data::v1::DataTypeHint,
    processor::v1::ProcessorCapability,
};
use flowplane_test_support::wait_until;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

struct Platform {
    url: String,
    addr: String,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<flowplane_control_plane::Result<()>>,
    client: ControlPlaneServiceClient<Channel>,
}

async fn platform() -> Platform {
    platform_with(flowplane_control_plane::Config::default()).await
}

async fn platform_with(config: flowplane_control_plane::Config) -> Platform {
    let listener = flowplane_test_support::local_listener().await;
    let addr = listener.local_addr().unwrap().to_string();
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    let task = tokio::spawn(flowplane_control_plane::run(config, listener, async move {
        signal.cancelled().await
    }));
    let url = format!("http://{addr}");
    let channel = flowplane_grpc::client::connect(&url, &Default::default())
        .await
        .unwrap();
    Platform {
        url,
        addr,
        shutdown,
        task,
        client: ControlPlaneServiceClient::new(channel),
    }
}

impl Platform {
    async fn register(&mut self, id: &str, capabilities: &[&str], status: HealthStatus) {
        let lease = self
            .client
            .register_processor(pb::RegisterProcessorRequest {
                processor_id: id.into(),
                endpoint: "127.0.0.1:7000".into(),
                capabilities: capabilities
                    .iter()
                    .map(|c| ProcessorCapability {
                        name: c.to_string(),
                        ..Default::default()
                    })
                    .collect(),
                metadata: [("zone".to_string(), "a".to_string())].into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        self.client
            .processor_heartbeat(pb::ProcessorHeartbeatRequest {
                processor_id: id.into(),
                lease_token: lease.lease_token,
                status: status as i32,
                ..Default::default()
            })
            .await
            .unwrap();
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}

async fn run(platform: &Platform, args: &[&str]) -> Result<String, Error> {
    let cli = Cli::try_parse_from(
        ["flowplane", "--control-plane", platform.url.as_str()]
            .into_iter()
            .chain(args.iter().copied()),
    )
    .unwrap();
    let mut out = Vec::new();
    flowplane_cli::run(cli, &mut out).await?;
    Ok(String::from_utf8(out).unwrap())
}

#[tokio::test]
async fn components_list_and_get_against_a_live_control_plane() {
    let mut platform = platform().await;
    platform
        .register("proc-echo", &["echo", "upper"], HealthStatus::Healthy)
        .await;
    platform
        .register("proc-busy", &["echo"], HealthStatus::Degraded)
        .await;
    platform
        .register("proc-draining", &["echo"], HealthStatus::Stopping)
        .await;
    platform
        .client
        .register_source(pb::RegisterSourceRequest {
            source_id: "mic".into(),
            endpoint: "127.0.0.1:9000".into(),
            data_types: vec![DataTypeHint::Audio as i32],
            ..Default::default()
        })
        .await
        .unwrap();

    let table = run(&platform, &["components", "list"]).await.unwrap();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 5, "{table}");
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("LAST HEARTBEAT"),
        "{table}"
    );
    let ids: Vec<&str> = lines[1..]
        .iter()
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(ids, ["mic", "proc-busy", "proc-draining", "proc-echo"]);
    let status_column = lines[0].find("STATUS").unwrap();
    assert!(lines[4][status_column..].starts_with("healthy"), "{table}");
    assert!(lines[4].contains("echo,upper"), "{table}");
    assert!(lines[1].contains("audio"), "{table}");

    // Discovery through the CLI: healthy and degraded hosts of a processor.
    let discovered = run(
        &platform,
        &["components", "list", "--capability", "echo", "-o", "json"],
    )
    .await
    .unwrap();
    let value: serde_json::Value = serde_json::from_str(&discovered).unwrap();
    let ids: Vec<&str> = value
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["proc-busy", "proc-echo"]);
    let stopping = run(&platform, &["components", "list", "--status", "stopping"])
        .await
        .unwrap();
    assert!(
        stopping.contains("proc-draining") && !stopping.contains("proc-echo"),
        "{stopping}"
    );
    let sources = run(
        &platform,
        &[
            "components",
            "list",
            "--kind",
            "source",
            "--label",
            "zone=a",
        ],
    )
    .await
    .unwrap();
    assert_eq!(sources, "no components\n");

    let details = run(&platform, &["components", "get", "proc-echo"])
        .await
        .unwrap();
    for expected in [
        "proc-echo",
        "processor",
        "healthy",
        "zone=a",
        "echo",
        "upper",
    ] {
        assert!(details.contains(expected), "{expected} missing:\n{details}");
    }
    let json = run(
        &platform,
        &["components", "get", "proc-echo", "--output", "json"],
    )
    .await
    .unwrap();
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(value["status"], "healthy");

    // The same -o choices everywhere: YAML parses to what JSON says, wide does not shorten.
    let yaml = run(&platform, &["components", "list", "-o", "yaml"])
        .await
        .unwrap();
    let value: serde_json::Value = serde_yaml::from_str(&yaml).unwrap();
    assert_eq!(value.as_array().map(Vec::len), Some(4), "{yaml}");
    assert_eq!(value[3]["id"], "proc-echo", "{yaml}");
    let got = run(&platform, &["components", "get", "proc-echo", "-o", "yaml"])
        .await
        .unwrap();
    let value: serde_json::Value = serde_yaml::from_str(&got).unwrap();
    assert_eq!(value["capabilities"][1]["name"], "upper", "{got}");
    let many: Vec<String> = (0..20).map(|i| format!("processor-number-{i}")).collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    platform
        .register("proc-many", &refs, HealthStatus::Healthy)
        .await;
    let table = run(&platform, &["components", "list", "--kind", "processor"])
        .await
        .unwrap();
    let wide = run(
        &platform,
        &["components", "list", "--kind", "processor", "-o", "wide"],
    )
    .await
    .unwrap();
    assert!(
        table.contains('…') && !table.contains("processor-number-19"),
        "{table}"
    );
    assert!(
        !wide.contains('…') && wide.contains("processor-number-19"),
        "{wide}"
    );

    match run(&platform, &["components", "get", "ghost"]).await {
        Err(Error::Rpc { status, .. }) => assert_eq!(status.code(), tonic::Code::NotFound),
        other => panic!("expected NOT_FOUND, got {other:?}"),
    }
    platform.stop().await;
}

/// A writer both the command and the test can see.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Shared {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

#[tokio::test]
async fn components_watch_prints_the_snapshot_then_changes_until_the_server_stops() {
    let mut platform = platform().await;
    platform
        .register("before", &["echo"], HealthStatus::Healthy)
        .await;
    let cli = Cli::try_parse_from([
        "flowplane",
        "--control-plane",
        &platform.url,
        "components",
        "watch",
        "-o",
        "json",
    ])
    .unwrap();
    let output = Shared::default();
    let mut writer = output.clone();
    let watching = tokio::spawn(async move { flowplane_cli::run(cli, &mut writer).await });

    wait_until("the watch prints its snapshot", || {
        let text = output.text();
        async move { text.contains("\"snapshot\"") }
    })
    .await;
    platform
        .register("after", &["echo"], HealthStatus::Healthy)
        .await;
    wait_until("the watch prints the update", || {
        let text = output.text();
        async move { text.contains("\"updated\"") }
    })
    .await;
    platform.stop().await;
    watching
        .await
        .unwrap()
        .expect("the watch ends cleanly when the server stops");

    let events: Vec<serde_json::Value> = output
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["snapshot", "added", "updated"]);
    assert_eq!(events[0]["components"][0]["id"], "before");
    assert_eq!(events[1]["component"]["id"], "after");
    assert_eq!(events[2]["component"]["status"], "healthy");
}

async fn flowplane(args: &[&str], control_plane: &str) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_flowplane"))
        .args(args)
        .env("FLOWPLANE_CONTROL_PLANE", control_plane)
        .env_remove("FLOWPLANE_TOKEN")
        .env_remove("FLOWPLANE_CLIENT_TOKEN_FILE")
        .env_remove("FLOWPLANE_TLS_CA")
        .env_remove("FLOWPLANE_TLS_CLIENT_CERT")
        .env_remove("FLOWPLANE_TLS_CLIENT_KEY")
        .kill_on_drop(true)
        .output()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_binary_checks_health_and_lists_components() {
    let mut platform = platform().await;
    platform
        .register("proc-1", &["echo"], HealthStatus::Healthy)
        .await;

    let serving = flowplane(
        &[
            "health",
            &platform.addr,
            "--service",
            flowplane_control_plane::SERVICE_NAME,
        ],
        "",
    )
    .await;
    assert!(serving.status.success(), "{serving:?}");
    assert_eq!(String::from_utf8_lossy(&serving.stdout).trim(), "SERVING");
    let whole = flowplane(&["health", &platform.url], "").await;
    assert!(whole.status.success(), "{whole:?}");
    let yaml = flowplane(&["health", &platform.url, "-o", "yaml"], "").await;
    assert!(yaml.status.success(), "{yaml:?}");
    let value: serde_json::Value = serde_yaml::from_slice(&yaml.stdout).unwrap();
    assert_eq!(value["status"], "SERVING", "{yaml:?}");

    let unknown = flowplane(
        &["health", &platform.addr, "--service", "no.such.Service"],
        "",
    )
    .await;
    assert!(!unknown.status.success());
    assert!(
        String::from_utf8_lossy(&unknown.stderr).starts_with("flowplane: "),
        "{unknown:?}"
    );

    let listed = flowplane(&["components", "list"], &platform.url).await;
    assert!(listed.status.success(), "{listed:?}");
    assert!(String::from_utf8_lossy(&listed.stdout).contains("proc-1"));

    let addr = platform.addr.clone();
    platform.stop().await;
    // Nothing listens any more: health fails, and so does list.
    let down = flowplane(&["health", &addr, "--timeout", "3"], "").await;
    assert!(!down.status.success(), "{down:?}");
    let unreachable = flowplane(&["components", "list"], &format!("http://{addr}")).await;
    assert!(!unreachable.status.success());
    assert!(
        String::from_utf8_lossy(&unreachable.stderr).contains("cannot reach"),
        "{unreachable:?}"
    );
}

#[tokio::test]
async fn the_cli_presents_the_token_from_its_token_file() {
    let tokens = flowplane_grpc::auth::Tokens::parse(
        "reader-token read\nregistrar-token register\n",
        std::path::Path::new("cli.tokens"),
    )
    .unwrap();
    let platform = platform_with(flowplane_control_plane::Config {
        tokens: Some(tokens),
        ..Default::default()
    })
    .await;
    let code = |result: Result<String, Error>| match result {
        Ok(_) => tonic::Code::Ok,
        Err(Error::Rpc { status, .. }) => status.code(),
        Err(other) => panic!("not an rpc error: {other}"),
    };
    let reader = flowplane_test_support::binary::TempFile::new("reader-token\n");
    let registrar = flowplane_test_support::binary::TempFile::new("  registrar-token  ");
    let list = |file| ["--client-token-file", file, "components", "list"];

    assert_eq!(
        code(run(&platform, &list(reader.path())).await),
        tonic::Code::Ok
    );
    assert_eq!(
        code(
            run(
                &platform,
                &["--token", "reader-token", "components", "list"]
            )
            .await
        ),
        tonic::Code::Ok
    );
    let denied = run(&platform, &list(registrar.path())).await.unwrap_err();
    assert!(
        denied
            .to_string()
            .contains("this call needs a token with role read"),
        "{denied}"
    );
    assert_eq!(
        code(run(&platform, &["components", "list"]).await),
        tonic::Code::Unauthenticated
    );
    let missing = run(&platform, &list("/nonexistent/token"))
        .await
        .unwrap_err();
    assert!(
        missing.to_string().contains("--client-token-file"),
        "{missing}"
    );
    platform.stop().await;
}

#[tokio::test]
async fn the_binary_presents_its_client_certificate_to_a_mutual_tls_control_plane() {
    let pki = flowplane_test_support::pki::Pki::new();
    let server = pki.leaf("control-plane");
    let client = pki.leaf("client");
    let listener = flowplane_test_support::local_listener().await;
    let url = format!("https://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    let config = flowplane_control_plane::Config {
        tls: Some(pki.server(&server)),
        ..Default::default()
    };
    let task = tokio::spawn(flowplane_control_plane::run(config, listener, async move {
        signal.cancelled().await
    }));
    let path = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let (ca, cert, key) = (path(&pki.ca_pem), path(&client.cert), path(&client.key));
    let (stranger_cert, stranger_key) = (path(&pki.stranger.cert), path(&pki.stranger.key));

    let listed = flowplane(
        &[
            "--tls-ca",
            &ca,
            "--tls-client-cert",
            &cert,
            "--tls-client-key",
            &key,
            "components",
            "list",
        ],
        &url,
    )
    .await;
    assert!(listed.status.success(), "{listed:?}");

    // No client certificate, or one from another CA: the handshake is refused.
    let anonymous = flowplane(&["--tls-ca", &ca, "components", "list"], &url).await;
    assert!(!anonymous.status.success(), "{anonymous:?}");
    let stranger = flowplane(
        &[
            "--tls-ca",
            &ca,
            "--tls-client-cert",
            &stranger_cert,
            "--tls-client-key",
            &stranger_key,
            "components",
            "list",
        ],
        &url,
    )
    .await;
    assert!(!stranger.status.success(), "{stranger:?}");

    // Half a client identity, or an unreadable one, is a usage error naming the flag.
    let half = flowplane(&["--tls-client-cert", &cert, "components", "list"], &url).await;
    assert!(!half.status.success());
    assert!(
        String::from_utf8_lossy(&half.stderr).contains("--tls-client-key"),
        "{half:?}"
    );
    let unreadable = flowplane(
        &[
            "--tls-client-cert",
            "/nonexistent/client.pem",
            "--tls-client-key",
            &key,
            "components",
            "list",
        ],
        &url,
    )
    .await;
    assert!(!unreadable.status.success());
    assert!(
        String::from_utf8_lossy(&unreadable.stderr).contains("--tls-client-cert"),
        "{unreadable:?}"
    );
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

/// A port on 127.0.0.1 nothing listens on: bound, then released.
fn closed_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    url
}

#[tokio::test]
async fn commands_move_past_control_plane_replicas_that_are_down() {
    // Separate registries, so the listing shows which replica answered.
    let mut a = platform().await;
    let mut b = platform().await;
    a.register("on-a", &["echo"], HealthStatus::Healthy).await;
    b.register("on-b", &["echo"], HealthStatus::Healthy).await;
    let both = format!("{},{}", a.url, b.url);
    let stdout = |o: &std::process::Output| String::from_utf8_lossy(&o.stdout).to_string();

    let listed = flowplane(&["components", "list"], &both).await;
    assert!(listed.status.success(), "{listed:?}");
    assert!(stdout(&listed).contains("on-a"), "A, first and up, answers");

    let a_url = a.url.clone();
    a.stop().await;
    let listed = flowplane(&["components", "list", "--control-plane", &both], "").await;
    assert!(listed.status.success(), "{listed:?}");
    assert!(stdout(&listed).contains("on-b"), "{listed:?}");
    let got = flowplane(&["components", "get", "on-b"], &both).await;
    assert!(got.status.success(), "{got:?}");

    // A closed port first, then a live replica.
    let closed_first = format!("{},{}", closed_url(), b.url);
    let listed = flowplane(&["components", "list"], &closed_first).await;
    assert!(listed.status.success(), "{listed:?}");
    assert!(stdout(&listed).contains("on-b"), "{listed:?}");

    // None up: one round, then a failure naming the list.
    let none = format!("{a_url},{}", closed_url());
    let down = flowplane(&["components", "list"], &none).await;
    assert!(!down.status.success(), "{down:?}");
    let stderr = String::from_utf8_lossy(&down.stderr);
    assert!(stderr.contains("cannot reach"), "{stderr}");
    assert!(stderr.contains(&a_url), "{stderr}");
    b.stop().await;
}

#[tokio::test]
async fn a_bad_control_plane_list_is_refused_naming_the_entry() {
    for (list, named) in [
        (
            "http://127.0.0.1:1,,http://127.0.0.1:2",
            "invalid entry \"\"",
        ),
        (
            "http://127.0.0.1:1,ftp://127.0.0.1:2",
            "invalid entry \"ftp://127.0.0.1:2\"",
        ),
        (
            "http://127.0.0.1:1, not a url",
            "invalid entry \"not a url\"",
        ),
    ] {
        let refused = flowplane(&["components", "list", "--control-plane", list], "").await;
        assert!(!refused.status.success(), "{list}: {refused:?}");
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(stderr.contains("--control-plane"), "{list}: {stderr}");
        assert!(stderr.contains(named), "{list}: {stderr}");
    }
    let help = tokio::process::Command::new(env!("CARGO_BIN_EXE_flowplane"))
        .arg("--help")
        .output()
        .await
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("comma-separated list of replicas"), "{help}");
}

/// A processor declaring ports and params, as a built-in does.
fn transform(version: &str) -> ProcessorCapability {
    use flowplane_proto::processor::v1::{ParamSpec, PortSpec};
    ProcessorCapability {
        name: "text.transform".into(),
        version: version.into(),
        description: "upper-cases, lower-cases or reverses text".into(),
        stateless: true,
        inputs: vec![PortSpec {
            name: "text".into(),
            types: vec![DataTypeHint::Text as i32],
            description: "text to transform".into(),
        }],
        outputs: vec![PortSpec {
            name: "text".into(),
            types: vec![DataTypeHint::Text as i32],
            description: "the transformed text".into(),
        }],
        params: vec![ParamSpec {
            name: "mode".into(),
            description: "upper, lower or reverse".into(),
            r#type: "string".into(),
            required: true,
            default_value: None,
            allowed_values: ["upper", "lower", "reverse"]
                .map(|v| flowplane_proto::json_to_value(&v.into()))
                .to_vec(),
        }],
    }
}

#[tokio::test]
async fn processors_lists_the_catalog_of_live_hosts_with_ports_params_and_hosts() {
    let mut platform = platform().await;
    for (id, status) in [
        ("host-b", HealthStatus::Healthy),
        ("host-a", HealthStatus::Degraded),
        ("host-gone", HealthStatus::Unhealthy),
    ] {
        let lease = platform
            .client
            .register_processor(pb::RegisterProcessorRequest {
                processor_id: id.into(),
                endpoint: format!("127.0.0.1:70{}", id.len()),
                capabilities: vec![transform("0.1.0")],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        platform
            .client
            .processor_heartbeat(pb::ProcessorHeartbeatRequest {
                processor_id: id.into(),
                lease_token: lease.lease_token,
                status: status as i32,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    platform
        .register("host-echo", &["echo"], HealthStatus::Healthy)
        .await;

    let table = run(&platform, &["processors"]).await.unwrap();
    assert!(table.starts_with("echo\n"), "{table}");
    for needle in [
        "text.transform 0.1.0 - upper-cases, lower-cases or reverses text\n",
        "  hosts: host-a (degraded, 127.0.0.1:706), host-b (healthy, 127.0.0.1:706)\n",
        "  input   text  text ",
        " text to transform\n",
        "  param   mode  string, required, one of \"upper\"|\"lower\"|\"reverse\"  upper, lower or reverse\n",
    ] {
        assert!(table.contains(needle), "{needle:?} not in\n{table}");
    }
    assert!(!table.contains("host-gone"), "{table}");

    let all = run(&platform, &["processors", "--all", "-o", "json"])
        .await
        .unwrap();
    let catalog: serde_json::Value = serde_json::from_str(&all).unwrap();
    let names: Vec<&str> = catalog
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["echo", "text.transform"]);
    let hosts: Vec<&str> = catalog[1]["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].as_str().unwrap())
        .collect();
    assert_eq!(hosts, ["host-a", "host-b", "host-gone"]);
    assert_eq!(catalog[1]["params"][0]["allowed_values"][2], "reverse");
    assert_eq!(catalog[1]["outputs"][0]["types"][0], "text");

    let one = run(&platform, &["processors", "text.transform", "-o", "yaml"])
        .await
        .unwrap();
    assert!(
        one.contains("\n  name: text.transform\n") && !one.contains("echo"),
        "{one}"
    );
    let missing = run(&platform, &["processors", "text.transfrom"])
        .await
        .unwrap_err();
    assert_eq!(
        missing.to_string(),
        "no live host serves processor \"text.transfrom\"; did you mean \"text.transform\"?"
    );
    assert_eq!(missing.exit_code(), 1);

    // components get shows the same declaration.
    let details = run(&platform, &["components", "get", "host-b"])
        .await
        .unwrap();
    assert!(
        details.contains("text.transform 0.1.0 - upper-cases")
            && details.contains("param   mode  string, required, one of"),
        "{details}"
    );
    let json = run(&platform, &["components", "get", "host-b", "-o", "json"])
        .await
        .unwrap();
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(value["capabilities"][0]["params"][0]["required"], true);
    assert_eq!(value["capabilities"][0]["inputs"][0]["name"], "text");

    // The saved catalog lets validate --offline check ports and params with no server.
    let dir = tempfile::tempdir().unwrap();
    let catalog = dir.path().join("catalog.json");
    std::fs::write(&catalog, &all).unwrap();
    let manifest = dir.path().join("shout.yaml");
    std::fs::write(
        &manifest,
        "nodes: [{ id: t, processor: text.transform, params: { mode: shout } }]\n\
         inputs: [{ name: in, targets: [{ node: t, port: txt }] }]\n\
         outputs: [{ name: out, source: { node: t } }]\n",
    )
    .unwrap();
    let args = [
        "flowplane",
        "validate",
        manifest.to_str().unwrap(),
        "--offline",
        "--catalog",
        catalog.to_str().unwrap(),
        "-o",
        "json",
    ];
    let mut out = Vec::new();
    flowplane_cli::run(Cli::try_parse_from(args).unwrap(), &mut out)
        .await
        .unwrap_err();
    let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let reasons: Vec<&str> = value["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        reasons,
        ["PARAM_NOT_ALLOWED", "UNKNOWN_PORT", "INPUT_NOT_FED"],
        "{value}"
    );
    assert!(
        value["problems"][1]["message"]
            .as_str()
            .unwrap()
            .ends_with("did you mean \"text\"?"),
        "{value}"
    );
    platform.stop().await;
}

#[tokio::test]
async fn validate_offline_reports_structural_problems_without_any_server() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cyclic.yaml");
    std::fs::write(
        &path,
        "nodes: [{ id: a, processor: x }, { id: b, processor: y }]\n\
         edges: [{ from_node: a, to_node: b }, { from_node: b, to_node: a }]\n\
         inputs: [{ name: in, targets: [{ node: a }] }]\n\
         outputs: [{ name: out, source: { node: bb } }]\n",
    )
    .unwrap();
    let path = path.to_str().unwrap();
    // No pipeline service anywhere: port 1 on 127.0.0.1 refuses.
    let validate = |extra: &[&str]| {
        let args: Vec<&str> = ["flowplane", "validate", path, "--offline", "--pipeline"]
            .into_iter()
            .chain(["http://127.0.0.1:1"])
            .chain(extra.iter().copied())
            .collect();
        Cli::try_parse_from(args).unwrap()
    };
    let mut out = Vec::new();
    let error = flowplane_cli::run(validate(&[]), &mut out)
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::InvalidPipeline { problems: 2, .. }),
        "{error}"
    );
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.contains("edges form a cycle through nodes a, b"),
        "{text}"
    );
    assert!(
        text.contains("refers to unknown node \"bb\"; did you mean \"b\"?"),
        "{text}"
    );
    let mut out = Vec::new();
    flowplane_cli::run(validate(&["-o", "json"]), &mut out)
        .await
        .unwrap_err();
    let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(
        (&value["valid"], &value["offline"]),
        (&false.into(), &true.into())
    );
    let reasons: Vec<&str> = value["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, ["UNKNOWN_NODE", "CYCLE"]);
}

fn example(name: &str) -> String {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name)
        .display()
        .to_string()
}

/// `flowplane pipelines ...` against the control plane's StandingPipelineService: apply
/// (created, then updated), list, get, the reset the server refuses while running, pause,
/// offsets reset and show, resume, a runner's claim seen by list, delete.
#[tokio::test]
async fn pipelines_apply_list_get_pause_reset_resume_and_delete() {
    let platform = platform().await;
    let manifest = example("standing/generator-calculator.yaml");
    let name = "generator-calculator";

    let created = run(&platform, &["pipelines", "apply", &manifest])
        .await
        .unwrap();
    assert_eq!(created, format!("pipeline {name} created (generation 1)\n"));
    let again = run(&platform, &["pipelines", "apply", &manifest])
        .await
        .unwrap();
    assert_eq!(again, format!("pipeline {name} unchanged (generation 1)\n"));
    let dir = tempfile::tempdir().unwrap();
    let changed = dir.path().join("changed.yaml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&changed, text.replace("count: 1000", "count: 2000")).unwrap();
    let changed = changed.display().to_string();
    let updated = run(&platform, &["pipelines", "apply", &changed, "-o", "json"])
        .await
        .unwrap();
    let value: serde_json::Value = serde_json::from_str(&updated).unwrap();
    assert_eq!(value["action"], "updated", "{updated}");
    assert_eq!(value["created"], false, "{updated}");
    assert_eq!(value["generation"], 2, "{updated}");
    assert_eq!(
        value["pipeline"]["spec"]["source"]["capability"],
        "generator"
    );
    assert_eq!(
        value["pipeline"]["spec"]["source"]["params"]["count"],
        2000.0
    );

    let table = run(&platform, &["pipelines", "list"]).await.unwrap();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "{table}");
    assert!(
        lines[0].starts_with("NAME") && lines[0].ends_with("LAG"),
        "{table}"
    );
    let cells: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(cells, [name, "idle", "-", "2", "-", "0"], "{table}");

    let details = run(&platform, &["pipelines", "get", name]).await.unwrap();
    for expected in [
        "capability generator {\"count\":2000,\"partitions\":2,\"payload\":\"json\"}",
        "calc (json.calculator)",
        "result -> capability file {\"path\":\"/tmp/flowplane-demo/{output}.jsonl\"}",
        "capability log",
        "max attempts 5, retry backoff 200ms, max in flight 256",
        "paused:",
    ] {
        assert!(details.contains(expected), "{expected} missing:\n{details}");
    }

    // The server refuses a reset while the pipeline may run; the CLI shows its message
    // and the field its error detail names.
    match run(
        &platform,
        &["pipelines", "offsets", "reset", name, "--earliest"],
    )
    .await
    {
        Err(error @ Error::Rpc { .. }) => {
            let Error::Rpc { status, .. } = &error else {
                unreachable!()
            };
            assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{error}");
            let text = error.to_string();
            assert!(
                text.starts_with("ResetPipelineOffsets failed: ")
                    && text.contains(status.message())
                    && text.contains("paused")
                    && text.contains(", field "),
                "{text}"
            );
            assert_eq!(error.exit_code(), 1);
        }
        other => panic!("expected FAILED_PRECONDITION, got {other:?}"),
    }

    let paused = run(&platform, &["pipelines", "pause", name]).await.unwrap();
    assert!(
        paused.starts_with(&format!("pipeline {name} paused")),
        "{paused}"
    );
    let reset = run(
        &platform,
        &[
            "pipelines",
            "offsets",
            "reset",
            name,
            "--to",
            "0=5",
            "--to",
            "1=7",
        ],
    )
    .await
    .unwrap();
    assert!(
        reset.starts_with(&format!("pipeline {name} offsets reset")),
        "{reset}"
    );
    let offsets = run(&platform, &["pipelines", "offsets", name])
        .await
        .unwrap();
    let rows: Vec<Vec<&str>> = offsets
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        [
            vec!["PARTITION", "NEXT", "OFFSET"],
            vec!["0", "5"],
            vec!["1", "7"]
        ],
        "{offsets}"
    );
    let got = run(&platform, &["pipelines", "get", name, "-o", "yaml"])
        .await
        .unwrap();
    let value: serde_json::Value = serde_yaml::from_str(&got).unwrap();
    assert_eq!(value["state"], "paused", "{got}");
    assert_eq!(value["offsets"]["1"], 7, "{got}");
    let earliest = run(
        &platform,
        &[
            "pipelines",
            "offsets",
            "reset",
            name,
            "--earliest",
            "-o",
            "json",
        ],
    )
    .await
    .unwrap();
    let value: serde_json::Value = serde_json::from_str(&earliest).unwrap();
    // Every partition it had offsets for starts over.
    assert_eq!(
        value["offsets"],
        serde_json::json!({"0": 0, "1": 0}),
        "{earliest}"
    );

    let resumed = run(&platform, &["pipelines", "resume", name])
        .await
        .unwrap();
    assert!(
        resumed.starts_with(&format!("pipeline {name} resumed")),
        "{resumed}"
    );

    // A runner's claim makes it running, with the runner shown.
    let channel = flowplane_grpc::client::connect(&platform.url, &Default::default())
        .await
        .unwrap();
    let mut standing =
        pb::standing_pipeline_service_client::StandingPipelineServiceClient::new(channel);
    standing
        .claim_pipeline(pb::ClaimPipelineRequest {
            name: name.into(),
            runner_id: "runner-test".into(),
            ttl: Some(prost_types::Duration {
                seconds: 60,
                nanos: 0,
            }),
        })
        .await
        .unwrap();
    let listed = run(&platform, &["pipelines", "list", "-o", "json"])
        .await
        .unwrap();
    let value: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(value[0]["state"], "running", "{listed}");
    assert_eq!(value[0]["runner"]["id"], "runner-test", "{listed}");
    let details = run(&platform, &["pipelines", "get", name]).await.unwrap();
    assert!(details.contains("runner-test (epoch "), "{details}");

    let deleted = run(&platform, &["pipelines", "delete", name])
        .await
        .unwrap();
    assert_eq!(deleted, format!("pipeline {name} deleted\n"));
    match run(&platform, &["pipelines", "get", name]).await {
        Err(Error::Rpc { status, .. }) => assert_eq!(status.code(), tonic::Code::NotFound),
        other => panic!("expected NOT_FOUND, got {other:?}"),
    }
    assert_eq!(
        run(&platform, &["pipelines", "list"]).await.unwrap(),
        "no standing pipelines\n"
    );

    // Through the binary: a session manifest is refused before any request, naming what
    // it is; a usage error exits 2.
    let session = flowplane(
        &["pipelines", "apply", &example("pipelines/calculator.yaml")],
        &platform.url,
    )
    .await;
    assert_eq!(session.status.code(), Some(1), "{session:?}");
    let stderr = String::from_utf8_lossy(&session.stderr);
    assert!(
        stderr.starts_with("flowplane: manifest ")
            && stderr.contains("is not a StandingPipeline manifest: it is a session pipeline"),
        "{stderr}"
    );
    let usage = flowplane(
        &[
            "pipelines",
            "offsets",
            "reset",
            name,
            "--to",
            "0=1",
            "--to",
            "0=2",
        ],
        &platform.url,
    )
    .await;
    assert_eq!(usage.status.code(), Some(2), "{usage:?}");
    let applied = flowplane(&["pipelines", "apply", &manifest], &platform.url).await;
    assert!(applied.status.success(), "{applied:?}");
    assert_eq!(
        String::from_utf8_lossy(&applied.stdout),
        format!("pipeline {name} created (generation 1)\n")
    );
    platform.stop().await;
}
