"""The StreamPipeline protocol, once for both clients: the messages a session sends (init,
chunks, FLUSH/CLOSE) and what each server message means. A session is OK only once it has
seen `closed`; anything that breaks the protocol is an error, never skipped.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import grpc

from flowplane.common.v1 import common_pb2
from flowplane.data.v1 import data_pb2
from flowplane.errors import ChunkError, FlowplaneError
from flowplane.payloads import Binary, Json, Payload, Text, from_proto, to_proto
from flowplane.streaming.v1 import streaming_pb2

Inputs = Mapping[str, Iterable[Payload]] | Iterable[tuple[str, Payload]]
"""What `run` streams: payloads per pipeline input (sent round robin across inputs, in
mapping order, as `flowplane run` does), or (input, payload) pairs in sending order."""

ErrorMode = Literal["raise", "collect"]


@dataclass(frozen=True)
class Result:
    """One output of one input chunk."""

    sequence: int
    """The sequence of the input chunk it answers."""
    output: str
    """The pipeline output it leaves by."""
    payload: Payload
    metadata: Mapping[str, str] = field(default_factory=dict)

    @property
    def value(self) -> Any:
        """The payload as a plain value: parsed JSON, the text, the bytes; other payloads
        (audio, video, tensors) as themselves."""
        p = self.payload
        if isinstance(p, Json):
            return p.value
        if isinstance(p, Text):
            return p.text
        if isinstance(p, Binary):
            return p.data
        return p


@dataclass(frozen=True)
class Metrics:
    """A session's counters."""

    chunks_in: int
    results_out: int
    errors: int
    bytes_in: int
    bytes_out: int
    elapsed_seconds: float
    failovers: int

    @classmethod
    def from_proto(cls, m: streaming_pb2.SessionMetrics) -> Metrics:
        elapsed = m.elapsed.seconds + m.elapsed.nanos / 1e9
        return cls(
            m.chunks_in, m.results_out, m.errors, m.bytes_in, m.bytes_out, elapsed, m.failovers
        )


@dataclass(frozen=True)
class NodeAssignment:
    """Which processor instance serves a node."""

    node: str
    processor: str
    instance: str
    endpoint: str


@dataclass
class Outcome:
    """Everything a `run` produced."""

    results: list[Result]
    errors: list[ChunkError]
    metrics: Metrics | None


@dataclass(frozen=True)
class Problem:
    """One problem `validate` found, naming its node or field."""

    code: grpc.StatusCode
    reason: str
    message: str
    node: str | None
    field: str | None

    @classmethod
    def from_proto(cls, d: common_pb2.ErrorDetail) -> Problem:
        e = FlowplaneError.from_detail(d)
        return cls(e.code, e.reason, e.message, e.node, e.field)


class Command(enum.IntEnum):
    FLUSH = streaming_pb2.CONTROL_COMMAND_FLUSH
    CLOSE = streaming_pb2.CONTROL_COMMAND_CLOSE
    CANCEL = streaming_pb2.CONTROL_COMMAND_CANCEL


def init_request(
    manifest: streaming_pb2.PipelineManifest, metadata: Mapping[str, str] | None
) -> streaming_pb2.StreamPipelineRequest:
    init = streaming_pb2.StreamInit(manifest=manifest, metadata=dict(metadata or {}))
    return streaming_pb2.StreamPipelineRequest(init=init)


def chunk_request(
    sequence: int, input: str, payload: Payload, metadata: Mapping[str, str] | None
) -> streaming_pb2.StreamPipelineRequest:
    chunk = data_pb2.DataChunk(
        sequence=sequence, input=input, buffer=to_proto(payload), metadata=dict(metadata or {})
    )
    return streaming_pb2.StreamPipelineRequest(chunk=chunk)


def control_request(command: Command) -> streaming_pb2.StreamPipelineRequest:
    control = streaming_pb2.StreamControl(command=streaming_pb2.ControlCommand.ValueType(command))
    return streaming_pb2.StreamPipelineRequest(control=control)


def interleave(inputs: Inputs) -> Iterator[tuple[str, Payload]]:
    """(input, payload) pairs in sending order."""
    if not isinstance(inputs, Mapping):
        yield from inputs
        return
    streams = [(name, iter(payloads)) for name, payloads in inputs.items()]
    while streams:
        still = []
        for name, payloads in streams:
            for payload in itertools.islice(payloads, 1):
                yield name, payload
                still.append((name, payloads))
        streams = still


class SessionState:
    """What a session has learnt from the server so far."""

    def __init__(self) -> None:
        self.session_id = ""
        self.nodes: tuple[NodeAssignment, ...] = ()
        self.ready = False
        self.closed = False
        self.metrics: Metrics | None = None
        self.next_sequence = 0

    def take_sequence(self, sequence: int | None) -> int:
        """The sequence for the next chunk: the one given, else one past the last sent."""
        chosen = self.next_sequence if sequence is None else sequence
        if chosen < 0:
            raise ValueError(f"sequence: {chosen} is negative")
        self.next_sequence = chosen + 1
        return chosen

    def handle(self, response: streaming_pb2.StreamPipelineResponse) -> Result | ChunkError | None:
        """A result or chunk error to hand to the caller, or None for bookkeeping messages."""
        kind = response.WhichOneof("response")
        if kind == "result":
            r = response.result
            return Result(r.input_sequence, r.output, from_proto(r.buffer), dict(r.buffer.metadata))
        if kind == "error":
            e = FlowplaneError.from_detail(response.error)
            return ChunkError(
                e.code, e.message, reason=e.reason, node=e.node, sequence=e.sequence, field=e.field
            )
        if kind == "ready":
            self.ready = True
            self.session_id = response.ready.session_id
            self.nodes = tuple(
                NodeAssignment(n.node_id, n.processor, n.instance_id, n.endpoint)
                for n in response.ready.nodes
            )
            return None
        if kind == "metrics":
            self.metrics = Metrics.from_proto(response.metrics)
            return None
        if kind == "closed":
            self.closed = True
            self.metrics = Metrics.from_proto(response.closed.metrics)
            return None
        raise FlowplaneError(
            grpc.StatusCode.INTERNAL,
            "the pipeline service sent a message with no response set",
            reason="UNKNOWN_RESPONSE",
            field="response",
        )


# How long leaving a session early waits for the pipeline to take its CANCEL before the
# stream is reset anyway: long enough for a live server, short enough for Ctrl-C.
CANCEL_GRACE_SECONDS = 1.0


def not_closed() -> FlowplaneError:
    return FlowplaneError(
        grpc.StatusCode.UNKNOWN,
        "the pipeline service ended the session without closing it",
        reason="NOT_CLOSED",
    )


def no_ready(seconds: float) -> FlowplaneError:
    return FlowplaneError(
        grpc.StatusCode.DEADLINE_EXCEEDED,
        f"the session sent no ready within {seconds:g} s (ready_timeout)",
        reason="READY_TIMEOUT",
    )


def send_blocked(seconds: float) -> FlowplaneError:
    return FlowplaneError(
        grpc.StatusCode.DEADLINE_EXCEEDED,
        f"a send waited {seconds:g} s for the pipeline to take it (send_timeout): "
        "read results while sending, from another thread or task, or use run()",
        reason="SEND_TIMEOUT",
    )


def session_over(what: str) -> FlowplaneError:
    return FlowplaneError(
        grpc.StatusCode.FAILED_PRECONDITION,
        f"cannot {what}: the session is finished or cancelled",
        reason="SESSION_OVER",
    )


def outcome_of(
    results: list[Result], errors: list[ChunkError], metrics: Metrics | None, mode: ErrorMode
) -> Outcome:
    if mode == "raise" and errors:
        raise errors[0]
    return Outcome(results, errors, metrics)
