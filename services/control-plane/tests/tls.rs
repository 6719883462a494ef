//! TLS: a control plane with a certificate signed by a throwaway CA (rcgen); a client
//! that trusts that CA registers over https, and a plaintext client is refused.

mod common;

use std::io::Write;

use common::processor;
use flowplane_control_plane::Config;
use flowplane_grpc::config::ClientArgs;
use flowplane_proto::controlplane::v1 as pb;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use tonic::transport::{Identity, ServerTlsConfig};

struct Pki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "flowplane test ca");
    let ca = ca_params.self_signed(&ca_key).unwrap();

    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "control-plane");
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    Pki {
        ca_pem: ca.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

#[tokio::test]
async fn a_client_trusting_the_ca_registers_over_https() {
    let pki = pki();
    let tls = ServerTlsConfig::new().identity(Identity::from_pem(&pki.cert_pem, &pki.key_pem));
    let server = common::Server::start(Config {
        tls: Some(tls),
        ..Config::default()
    })
    .await;

    let mut ca_file = tempfile::NamedTempFile::new().unwrap();
    ca_file.write_all(pki.ca_pem.as_bytes()).unwrap();
    let args = ClientArgs {
        tls_ca: Some(ca_file.path().to_path_buf()),
        ..ClientArgs::default()
    };
    let url = format!("https://{}", server.addr);
    let mut client = common::connect(&url, &args, None).await;
    let lease = client
        .register_processor(processor("secure", &["echo"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(lease.processor_id, "secure");
    let listed = client
        .list_components(pb::ListComponentsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(common::ids(&listed.components), ["secure"]);

    // A plaintext client cannot talk to the TLS server.
    let channel =
        flowplane_grpc::client::lazy_channel(&server.url(), &ClientArgs::default()).unwrap();
    let mut plain = pb::control_plane_service_client::ControlPlaneServiceClient::new(channel);
    assert!(
        plain
            .list_components(pb::ListComponentsRequest::default())
            .await
            .is_err()
    );
    server.stop().await;
}
