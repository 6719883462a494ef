"""The asyncio client: `Client` (pipeline service) and `ControlPlane` (registry), each an
async context manager owning one channel that many concurrent sessions share. A session
writes straight into grpc's flow control, so `send` waits (up to `send_timeout`) while
the pipeline's window is full: backpressure without a queue of our own.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import Any

import grpc
import grpc.aio

from flowplane import _protocol as proto
from flowplane._channel import PathLike, aio_channel, endpoint
from flowplane._protocol import (
    Command,
    ErrorMode,
    Inputs,
    Metrics,
    NodeAssignment,
    Outcome,
    Problem,
    Result,
)
from flowplane.client import DEFAULT_CONTROL_PLANE, DEFAULT_PIPELINE
from flowplane.controlplane.v1 import control_plane_pb2, control_plane_pb2_grpc
from flowplane.errors import ChunkError, FlowplaneError, from_rpc_error
from flowplane.manifest import ManifestLike, load_manifest
from flowplane.payloads import Payload
from flowplane.registry import Component, WatchEvent, kind_filter, list_request
from flowplane.streaming.v1 import streaming_pb2, streaming_pb2_grpc

__all__ = ["Client", "ControlPlane", "Session", "Watch"]


class _Channel:
    def __init__(self, target: str, **options: Any) -> None:
        self._endpoint = endpoint(target, **options)
        self._channel = aio_channel(self._endpoint)
        self._metadata = self._endpoint.metadata

    async def close(self) -> None:
        await self._channel.close()

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class Client(_Channel):
    """An asyncio client of the pipeline service; options as for `flowplane.Client`."""

    def __init__(
        self,
        target: str = DEFAULT_PIPELINE,
        *,
        token: str | None = None,
        token_file: PathLike | None = None,
        tls_ca: PathLike | None = None,
        tls_client_cert: PathLike | None = None,
        tls_client_key: PathLike | None = None,
        timeout: float = 30.0,
        ready_timeout: float = 30.0,
        send_timeout: float = 60.0,
    ) -> None:
        super().__init__(
            target,
            token=token,
            token_file=token_file,
            tls_ca=tls_ca,
            tls_client_cert=tls_client_cert,
            tls_client_key=tls_client_key,
        )
        self._stub = streaming_pb2_grpc.StreamingPipelineServiceStub(self._channel)
        self.timeout = timeout
        self.ready_timeout = ready_timeout
        self.send_timeout = send_timeout

    async def __aenter__(self) -> Client:
        return self

    def session(
        self, manifest: ManifestLike, *, metadata: Mapping[str, str] | None = None
    ) -> Session:
        """A session, opened by `async with`: the init is sent and `ready` awaited there (an
        invalid manifest raises there); leaving the block cancels whatever is unfinished."""
        return Session(self, load_manifest(manifest), metadata)

    async def stream(
        self, manifest: ManifestLike, inputs: Inputs
    ) -> AsyncIterator[Result | ChunkError]:
        """Streams `inputs` through a session (sent from a helper task as the pipeline takes
        them) and yields results and per-chunk errors as they arrive, until the session
        closed. To leave early, iterate it under `contextlib.aclosing`: that cancels it."""
        async with self.session(manifest) as s:
            async for item in _feed_and_read(s, inputs):
                yield item

    async def run(
        self, manifest: ManifestLike, inputs: Inputs, *, errors: ErrorMode = "raise"
    ) -> Outcome:
        """Streams every input through a session and returns every result once it closed;
        per-chunk errors as for `flowplane.Client.run`."""
        results: list[Result] = []
        chunk_errors: list[ChunkError] = []
        async with self.session(manifest) as s:
            async for item in _feed_and_read(s, inputs):
                if isinstance(item, ChunkError):
                    chunk_errors.append(item)
                else:
                    results.append(item)
            return proto.outcome_of(results, chunk_errors, s.metrics, errors)

    async def validate(self, manifest: ManifestLike) -> list[Problem]:
        """Every problem the pipeline service finds in `manifest` (none means it would run)."""
        request = streaming_pb2.ValidatePipelineRequest(manifest=load_manifest(manifest))
        try:
            response = await self._stub.ValidatePipeline(
                request, timeout=self.timeout, metadata=self._metadata
            )
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from None
        return [Problem.from_proto(p) for p in response.problems]


class Session:
    """One StreamPipeline session, for `async with`: `await send(...)`, `await finish()`
    (CLOSE and half-close), `async for result in session`. Iterating raises `ChunkError`
    for a failed chunk and can go on after it; `items()` yields those errors in line."""

    def __init__(
        self,
        client: Client,
        manifest: streaming_pb2.PipelineManifest,
        metadata: Mapping[str, str] | None,
    ) -> None:
        self._client = client
        self._manifest = manifest
        self._session_metadata = metadata
        self._state = proto.SessionState()
        self._call: Any = None
        self._writing = True
        self._ended = False

    async def __aenter__(self) -> Session:
        client = self._client
        self._call = client._stub.StreamPipeline(metadata=client._metadata)
        try:
            await self._write(proto.init_request(self._manifest, self._session_metadata), "open")
            async with asyncio.timeout(client.ready_timeout):
                while not self._state.ready:
                    response = await self._read()
                    if response is None:
                        raise proto.not_closed()
                    if self._state.handle(response) is not None:
                        raise FlowplaneError(
                            grpc.StatusCode.INTERNAL,
                            "the pipeline service sent a result before ready",
                            reason="PROTOCOL",
                        )
        except TimeoutError:
            self.cancel()
            raise proto.no_ready(client.ready_timeout) from None
        except BaseException:
            self.cancel()
            raise
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._ended:
            await self._abort()

    async def _abort(self) -> None:
        """Leaving early: CANCEL first, so the pipeline ends the session as CANCELLED, then
        the reset, whatever the pipeline did within the grace time."""
        if self._writing and not self._call.done():
            self._writing = False
            with contextlib.suppress(Exception):
                async with asyncio.timeout(proto.CANCEL_GRACE_SECONDS):
                    await self._call.write(proto.control_request(Command.CANCEL))
                    await self._call.done_writing()
                    await self._call.code()
        self.cancel()

    async def _read(self) -> streaming_pb2.StreamPipelineResponse | None:
        try:
            message = await self._call.read()
        except grpc.aio.AioRpcError as error:
            self._ended = True
            raise from_rpc_error(error) from None
        if message is grpc.aio.EOF:
            return None
        assert isinstance(message, streaming_pb2.StreamPipelineResponse)
        return message

    async def _write(self, request: streaming_pb2.StreamPipelineRequest, what: str) -> None:
        if not self._writing:
            raise proto.session_over(what)
        try:
            async with asyncio.timeout(self._client.send_timeout):
                await self._call.write(request)
        except TimeoutError:
            raise proto.send_blocked(self._client.send_timeout) from None
        except grpc.aio.AioRpcError as error:
            self._writing = False
            raise from_rpc_error(error) from None
        except asyncio.InvalidStateError:
            # The RPC already ended: say how, if it failed.
            self._writing = False
            raise await self._failure(what) from None

    async def _failure(self, what: str) -> FlowplaneError:
        code = await self._call.code()
        if code != grpc.StatusCode.OK:
            details = await self._call.details()
            trailing = await self._call.trailing_metadata()
            error = grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details)
            return from_rpc_error(error)
        return proto.session_over(what)

    @property
    def session_id(self) -> str:
        return self._state.session_id

    @property
    def nodes(self) -> tuple[NodeAssignment, ...]:
        """The processor instance each node was given."""
        return self._state.nodes

    @property
    def metrics(self) -> Metrics | None:
        """The counters of the last FLUSH, or the final ones once closed."""
        return self._state.metrics

    @property
    def closed(self) -> bool:
        return self._state.closed

    async def send(
        self,
        payload: Payload,
        input: str = "",
        *,
        sequence: int | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> int:
        """Sends one chunk for `input` (empty: the pipeline's only input) and returns its
        sequence (one past the last unless given); waits for flow control, at most
        `send_timeout`."""
        seq = self._state.take_sequence(sequence)
        await self._write(proto.chunk_request(seq, input, payload, metadata), "send")
        return seq

    async def flush(self) -> None:
        """Asks for every result of every chunk sent so far; `metrics` updates after them."""
        await self._write(proto.control_request(Command.FLUSH), "flush")

    async def finish(self) -> None:
        """Sends CLOSE and half-closes: no more chunks; iterate to get the rest."""
        await self._write(proto.control_request(Command.CLOSE), "finish")
        self._writing = False
        await self._call.done_writing()

    def cancel(self) -> None:
        """Ends the session at once; the pipeline releases it. Safe to call again."""
        self._writing = False
        self._ended = True
        if self._call is not None:
            self._call.cancel()

    async def items(self) -> AsyncIterator[Result | ChunkError]:
        """Results and per-chunk errors, in arrival order, until `closed`."""
        while not self._ended:
            response = await self._read()
            if response is None:
                self._ended = True
                if not self._state.closed:
                    raise proto.not_closed()
                return
            item = self._state.handle(response)
            if item is not None:
                yield item

    def __aiter__(self) -> Session:
        return self

    async def __anext__(self) -> Result:
        while not self._ended:
            response = await self._read()
            if response is None:
                self._ended = True
                if not self._state.closed:
                    raise proto.not_closed()
                break
            item = self._state.handle(response)
            if isinstance(item, ChunkError):
                raise item
            if item is not None:
                return item
        raise StopAsyncIteration


async def _feed_and_read(s: Session, inputs: Inputs) -> AsyncIterator[Result | ChunkError]:
    """Sends `inputs` from a task while the caller reads; a failure to feed cancels the
    session and is raised here, not lost in the task."""

    async def feed() -> None:
        try:
            for name, payload in proto.interleave(inputs):
                await s.send(payload, input=name)
            await s.finish()
        except BaseException:
            s.cancel()
            raise

    feeder = asyncio.ensure_future(feed())
    try:
        async for item in s.items():
            yield item
    except FlowplaneError:
        if feeder.done() and not feeder.cancelled() and feeder.exception() is not None:
            await feeder  # raises the feeding failure, the cause of the cancelled session
        raise
    finally:
        if not feeder.done():
            feeder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feeder  # raises a feeding failure


class ControlPlane(_Channel):
    """An asyncio read-only client of the control plane's registry."""

    def __init__(
        self,
        target: str = DEFAULT_CONTROL_PLANE,
        *,
        token: str | None = None,
        token_file: PathLike | None = None,
        tls_ca: PathLike | None = None,
        tls_client_cert: PathLike | None = None,
        tls_client_key: PathLike | None = None,
        timeout: float = 30.0,
    ) -> None:
        super().__init__(
            target,
            token=token,
            token_file=token_file,
            tls_ca=tls_ca,
            tls_client_cert=tls_client_cert,
            tls_client_key=tls_client_key,
        )
        self._stub = control_plane_pb2_grpc.ControlPlaneServiceStub(self._channel)
        self.timeout = timeout

    async def __aenter__(self) -> ControlPlane:
        return self

    async def components(
        self,
        *,
        kind: str | None = None,
        status: str | None = None,
        capability: str | None = None,
        labels: Mapping[str, str] | None = None,
        page_size: int = 500,
    ) -> list[Component]:
        """Every matching component, in id order (follows pages to the end)."""
        found: list[Component] = []
        token = ""
        while True:
            request = list_request(kind, status, capability, labels, token, page_size)
            try:
                page = await self._stub.ListComponents(
                    request, timeout=self.timeout, metadata=self._metadata
                )
            except grpc.aio.AioRpcError as error:
                raise from_rpc_error(error) from None
            found.extend(Component.from_proto(c) for c in page.components)
            token = page.page.next_page_token
            if not token:
                return found

    async def component(self, component_id: str) -> Component:
        """One component by id; NOT_FOUND raises `FlowplaneError`."""
        request = control_plane_pb2.GetComponentRequest(component_id=component_id)
        try:
            got = await self._stub.GetComponent(
                request, timeout=self.timeout, metadata=self._metadata
            )
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from None
        return Component.from_proto(got.component)

    def watch(self, *, kind: str | None = None, capability: str | None = None) -> Watch:
        """A snapshot of the matching components, then every change: `async for` over it;
        `aclose()` (or leaving its `async with`) cancels it."""
        request = control_plane_pb2.WatchComponentsRequest(
            kind=kind_filter(kind), capability=capability or ""
        )
        return Watch(self._stub.WatchComponents(request, metadata=self._metadata))


class Watch:
    """An open WatchComponents stream."""

    def __init__(self, call: Any) -> None:
        self._call = call

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> WatchEvent:
        try:
            message = await self._call.read()
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from None
        if message is grpc.aio.EOF:
            raise StopAsyncIteration
        assert isinstance(message, control_plane_pb2.WatchComponentsResponse)
        return WatchEvent.from_proto(message)

    async def aclose(self) -> None:
        self._call.cancel()

    async def __aenter__(self) -> Watch:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
