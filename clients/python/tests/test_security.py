"""Tokens and mutual TLS as the servers enforce them: a platform with role tokens and
mTLS on every link (certificates from deploy/scripts/certs.sh, into a temp dir), reached by
the client with its CA, client certificate and token; and every refusal decoded."""

from __future__ import annotations

import os
import pathlib
import subprocess
from collections.abc import Iterator

import grpc
import pytest

import flowplane
from conftest import EXAMPLES, REPO, Stack, start_stack

CALCULATOR = EXAMPLES / "pipelines" / "calculator.yaml"
TOKENS = {
    "register": "py-register-secret",
    "pipeline": "py-pipeline-secret",
    "client": "py-client-secret",
    "reader": "py-reader-secret",
}


def certs(out: pathlib.Path) -> pathlib.Path:
    env = {**os.environ, "CERTS_DIR": str(out)}
    subprocess.run(
        ["bash", str(REPO / "deploy" / "scripts" / "certs.sh")], env=env, check=True, timeout=60
    )
    return out


@pytest.fixture(scope="module")
def pki(logs: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """Our CA and certificates, and another CA's (for the refusals)."""
    return certs(logs / "certs"), certs(logs / "other-certs")


@pytest.fixture(scope="module")
def secured(logs: pathlib.Path, pki: tuple[pathlib.Path, pathlib.Path]) -> Iterator[Stack]:
    c, _ = pki
    (logs / "secured").mkdir()
    token_file = logs / "secured" / "tokens"
    token_file.write_text(
        "# role tokens for the secured test platform\n"
        f"{TOKENS['register']} register\n{TOKENS['pipeline']} read,process\n"
        f"{TOKENS['client']} data\n{TOKENS['reader']} read\n"
    )
    for role in ("register", "pipeline", "client"):
        (logs / "secured" / f"{role}.token").write_text(TOKENS[role] + "\n")
    identity = ["--tls-ca", str(c / "ca.pem")]
    identity += [
        "--tls-client-cert",
        str(c / "processor.pem"),
        "--tls-client-key",
        str(c / "processor.key"),
    ]
    stack = start_stack(
        logs / "secured",
        processors=1,
        scheme="https",
        server_args=[
            "--token-file",
            str(token_file),
            "--tls-cert",
            str(c / "processor.pem"),
            "--tls-key",
            str(c / "processor.key"),
            "--tls-client-ca",
            str(c / "ca.pem"),
        ],
        processor_client_args=[
            *identity,
            "--client-token-file",
            str(logs / "secured" / "register.token"),
        ],
        pipeline_client_args=[
            *identity,
            "--client-token-file",
            str(logs / "secured" / "pipeline.token"),
        ],
        client_options=mtls(c) | {"token_file": logs / "secured" / "client.token"},
        reader_options=mtls(c) | {"token": TOKENS["reader"]},
    )
    yield stack
    stack.stop()


def mtls(c: pathlib.Path) -> dict[str, object]:
    return {
        "tls_ca": c / "ca.pem",
        "tls_client_cert": c / "client.pem",
        "tls_client_key": c / "client.key",
    }


def test_a_session_over_mtls_with_a_token_file(secured: Stack) -> None:
    with secured.client() as client:
        outcome = client.run(
            CALCULATOR, {"requests": [flowplane.Json({"op": "mul", "operands": [6, 7]})]}
        )
    assert [r.value for r in outcome.results] == [{"result": 42}]


async def test_the_async_client_over_mtls_with_a_token(secured: Stack) -> None:
    async with secured.aio_client(token_file=None, token=TOKENS["client"]) as client:
        assert await client.validate(CALCULATOR) == []


def test_no_token_is_unauthenticated(secured: Stack) -> None:
    with (
        secured.client(token_file=None) as client,
        pytest.raises(flowplane.FlowplaneError) as raised,
    ):
        client.validate(CALCULATOR)
    assert (raised.value.code, raised.value.reason) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "UNAUTHENTICATED",
    )


def test_a_token_without_the_role_is_permission_denied(secured: Stack) -> None:
    with (
        secured.client(token_file=None, token=TOKENS["reader"]) as client,
        pytest.raises(flowplane.FlowplaneError) as raised,
    ):
        client.session(CALCULATOR)
    assert (raised.value.code, raised.value.reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "ROLE_REQUIRED",
    )
    assert "data" in raised.value.message


def registry(stack: Stack, c: pathlib.Path, token: str) -> flowplane.ControlPlane:
    return flowplane.ControlPlane(
        stack.control_plane_url,
        token=token,
        tls_ca=c / "ca.pem",
        tls_client_cert=c / "client.pem",
        tls_client_key=c / "client.key",
    )


def test_the_registry_needs_the_read_role(
    secured: Stack, pki: tuple[pathlib.Path, pathlib.Path]
) -> None:
    c, _ = pki
    with registry(secured, c, TOKENS["reader"]) as reader:
        assert [h.id for h in reader.components(kind="processor")] == ["py-processor-0"]
    with (
        registry(secured, c, TOKENS["client"]) as other,
        pytest.raises(flowplane.FlowplaneError) as raised,
    ):
        other.components()
    assert (raised.value.code, raised.value.reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "ROLE_REQUIRED",
    )


@pytest.mark.parametrize(
    "case", ["no client certificate", "a certificate from another CA", "an untrusted server"]
)
def test_the_handshake_refuses(
    secured: Stack, pki: tuple[pathlib.Path, pathlib.Path], case: str
) -> None:
    c, other = pki
    options: dict[str, object] = {
        "no client certificate": {
            "tls_ca": c / "ca.pem",
            "tls_client_cert": None,
            "tls_client_key": None,
        },
        "a certificate from another CA": mtls(c)
        | {"tls_client_cert": other / "client.pem", "tls_client_key": other / "client.key"},
        "an untrusted server": mtls(c) | {"tls_ca": other / "ca.pem"},
    }[case]  # type: ignore[assignment]
    with (
        secured.client(timeout=10, **options) as client,
        pytest.raises(flowplane.FlowplaneError) as raised,
    ):
        client.validate(CALCULATOR)
    assert raised.value.code == grpc.StatusCode.UNAVAILABLE, raised.value


def test_plaintext_to_a_tls_server_fails(secured: Stack) -> None:
    with (
        flowplane.Client(secured.pipeline, token=TOKENS["client"], timeout=10) as client,
        pytest.raises(flowplane.FlowplaneError) as raised,
    ):
        client.validate(CALCULATOR)
    assert raised.value.code == grpc.StatusCode.UNAVAILABLE
