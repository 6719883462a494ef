"""Every field of FlowplaneError filled from what the real servers send: code and reason
from the status, node from a manifest problem and a per-chunk error, sequence from a
per-chunk error, field from the standard BadRequest/ErrorDetail; a transport failure with
no details; and the decoder's fallbacks when only ErrorInfo/BadRequest are present."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2

import flowplane
from conftest import EXAMPLES, Stack, free_port
from flowplane.errors import from_rpc_error

CALCULATOR = EXAMPLES / "pipelines" / "calculator.yaml"
UNKNOWN_PROCESSOR = {
    "name": "ghost",
    "nodes": [{"id": "ghost-node", "processor": "no.such.processor"}],
    "inputs": [{"name": "in", "targets": [{"node": "ghost-node"}]}],
    "outputs": [{"name": "out", "source": {"node": "ghost-node"}}],
}


def test_a_per_chunk_error_names_code_reason_node_and_sequence(stack: Stack) -> None:
    with stack.client() as client, client.session(CALCULATOR) as s:
        s.send(flowplane.Json({"op": "div", "operands": [1, 0]}), input="requests")
        s.send(flowplane.Json({"op": "add", "operands": [2, 2]}), input="requests")
        s.finish()
        with pytest.raises(flowplane.ChunkError) as raised:
            next(s)
        error = raised.value
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT
        assert error.reason == "DIVISION_BY_ZERO"
        assert error.node == "calc"
        assert error.sequence == 0
        assert "division by zero" in error.message
        # The session goes on: the next result comes from iterating again.
        assert [(r.sequence, r.value) for r in s] == [(1, {"result": 4})]
        assert s.closed


def test_a_per_chunk_error_names_the_field(stack: Stack) -> None:
    with stack.client() as client, client.session(CALCULATOR) as s:
        s.send(flowplane.Json({"op": "add", "operands": [1]}), input="no-such-input")
        s.finish()
        items = list(s.items())
    assert len(items) == 1 and isinstance(items[0], flowplane.ChunkError), items
    assert (items[0].field, items[0].sequence) == ("chunk.input", 0)
    assert items[0].node is None


def test_a_session_status_names_reason_and_field(stack: Stack) -> None:
    with stack.client() as client, client.session(CALCULATOR) as s:
        s.send(flowplane.Json({"op": "add", "operands": [1]}), input="requests", sequence=5)
        s.send(flowplane.Json({"op": "add", "operands": [1]}), input="requests", sequence=5)
        with pytest.raises(flowplane.FlowplaneError) as raised:
            list(s.items())
    error = raised.value
    assert not isinstance(error, flowplane.ChunkError)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.reason, error.field) == ("SEQUENCE_NOT_INCREASING", "chunk.sequence")
    assert "5" in error.message


def test_an_unrunnable_manifest_fails_at_open_naming_the_node(stack: Stack) -> None:
    with stack.client() as client, pytest.raises(flowplane.FlowplaneError) as raised:
        client.session(UNKNOWN_PROCESSOR)
    assert raised.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert raised.value.node == "ghost-node"
    assert raised.value.reason


async def test_the_async_session_raises_the_same_errors(stack: Stack) -> None:
    async with stack.aio_client() as client:
        with pytest.raises(flowplane.FlowplaneError) as raised:
            async with client.session(UNKNOWN_PROCESSOR):
                pass
        assert (raised.value.code, raised.value.node) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "ghost-node",
        )
        async with client.session(CALCULATOR) as s:
            await s.send(flowplane.Json({"op": "div", "operands": [1, 0]}), input="requests")
            await s.finish()
            with pytest.raises(flowplane.ChunkError) as chunk:
                async for _ in s:
                    pass
            assert (chunk.value.sequence, chunk.value.node) == (0, "calc")


def test_validate_returns_the_problems_naming_node_and_field(stack: Stack) -> None:
    broken = {
        "nodes": [{"id": "a", "processor": "json.calculator"}],
        "edges": [{"from_node": "a", "to_node": "missing"}],
        "inputs": [{"name": "in", "targets": [{"node": "a"}]}],
        "outputs": [{"name": "out", "source": {"node": "a"}}],
    }
    with stack.client() as client:
        problems = client.validate(broken)
        assert client.validate(CALCULATOR) == []
    assert problems, "an edge to an unknown node is a problem"
    assert any("missing" in p.message for p in problems), problems
    assert all(p.reason and p.code != grpc.StatusCode.OK for p in problems), problems
    assert any(p.field for p in problems), problems


def test_an_unreachable_service_is_unavailable_without_a_reason() -> None:
    with (
        flowplane.Client(f"127.0.0.1:{free_port()}", timeout=5) as client,
        pytest.raises(flowplane.FlowplaneError) as raised,
    ):
        client.validate(CALCULATOR)
    assert raised.value.code == grpc.StatusCode.UNAVAILABLE
    assert (raised.value.reason, raised.value.node, raised.value.sequence) == ("", None, None)


class FakeCall:
    """What a failed call offers the decoder: a code, a message and trailing metadata."""

    def __init__(self, status: status_pb2.Status) -> None:
        self._status = status

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.INVALID_ARGUMENT

    def details(self) -> str:
        return str(self._status.message)

    def trailing_metadata(self) -> Any:
        return (("grpc-status-details-bin", self._status.SerializeToString()),)


def test_the_decoder_reads_error_info_and_bad_request_alone() -> None:
    status = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message="bad chunk")
    info = error_details_pb2.ErrorInfo(
        reason="INVALID_JSON", domain="flowplane.dev", metadata={"node_id": "n1", "sequence": "7"}
    )
    bad = error_details_pb2.BadRequest(
        field_violations=[error_details_pb2.BadRequest.FieldViolation(field="chunk.buffer.json")]
    )
    status.details.add().Pack(info)
    status.details.add().Pack(bad)
    error = from_rpc_error(FakeCall(status))  # type: ignore[arg-type]
    assert (error.code, error.reason, error.node, error.sequence, error.field) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_JSON",
        "n1",
        7,
        "chunk.buffer.json",
    )
    assert str(error) == "INVALID_ARGUMENT INVALID_JSON: bad chunk"
