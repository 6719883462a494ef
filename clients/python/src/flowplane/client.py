"""The blocking client: `Client` (pipeline service) and `ControlPlane` (registry), each a
context manager owning one channel that many sessions share. grpc's own thread pulls a
session's requests from a bounded queue, so `send` blocks (up to `send_timeout`) when the
pipeline's window is full; nothing is buffered without bound and no thread hides an error.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any, cast

import grpc

from flowplane import _protocol as proto
from flowplane._channel import PathLike, endpoint, sync_channel
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
from flowplane.controlplane.v1 import control_plane_pb2, control_plane_pb2_grpc
from flowplane.errors import ChunkError, FlowplaneError, from_rpc_error
from flowplane.manifest import ManifestLike, load_manifest
from flowplane.payloads import Payload
from flowplane.registry import Component, WatchEvent, kind_filter, list_request
from flowplane.streaming.v1 import streaming_pb2, streaming_pb2_grpc

__all__ = ["Client", "ControlPlane", "Session", "Watch"]

DEFAULT_PIPELINE = "127.0.0.1:50071"
DEFAULT_CONTROL_PLANE = "127.0.0.1:50051"

_END = object()  # ends a session's request stream (half-close)


class _Channel:
    def __init__(self, target: str, **options: Any) -> None:
        self._endpoint = endpoint(target, **options)
        self._channel = sync_channel(self._endpoint)
        self._metadata = self._endpoint.metadata

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Any:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Client(_Channel):
    """A client of the pipeline service.

    `target` is HOST:PORT or http://HOST:PORT (plaintext) or https://HOST:PORT (TLS,
    trusting `tls_ca`, presenting `tls_client_cert`/`tls_client_key` for mutual TLS). A
    `token` or `token_file` (its content, trimmed) is sent as `authorization: Bearer`.
    `timeout` bounds unary calls; sessions have `ready_timeout` and `send_timeout`.
    """

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

    def __enter__(self) -> Client:
        return self

    def session(
        self,
        manifest: ManifestLike,
        *,
        metadata: Mapping[str, str] | None = None,
        queue_size: int = 64,
    ) -> Session:
        """Opens a session: sends the init and waits for `ready` (an invalid manifest raises
        here). Use it as a context manager: leaving it cancels whatever is unfinished."""
        return Session(self, load_manifest(manifest), metadata, queue_size)

    def stream(self, manifest: ManifestLike, inputs: Inputs) -> Iterator[Result | ChunkError]:
        """Streams `inputs` through a session (sent from a helper thread as the pipeline
        takes them) and yields results and per-chunk errors as they arrive, until the
        session closed. Leaving the loop early cancels the session."""
        with self.session(manifest) as s:
            yield from _feed_and_read(s, inputs, self.send_timeout)

    def run(
        self, manifest: ManifestLike, inputs: Inputs, *, errors: ErrorMode = "raise"
    ) -> Outcome:
        """Streams every input through a session and returns every result once the session
        has closed. A per-chunk error raises `ChunkError` (after the session ended) unless
        `errors="collect"`, which returns them in `Outcome.errors`."""
        results: list[Result] = []
        chunk_errors: list[ChunkError] = []
        with self.session(manifest) as s:
            for item in _feed_and_read(s, inputs, self.send_timeout):
                if isinstance(item, ChunkError):
                    chunk_errors.append(item)
                else:
                    results.append(item)
            return proto.outcome_of(results, chunk_errors, s.metrics, errors)

    def validate(self, manifest: ManifestLike) -> list[Problem]:
        """Every problem the pipeline service finds in `manifest` (none means it would run)."""
        request = streaming_pb2.ValidatePipelineRequest(manifest=load_manifest(manifest))
        try:
            response = self._stub.ValidatePipeline(
                request, timeout=self.timeout, metadata=self._metadata
            )
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        return [Problem.from_proto(p) for p in response.problems]


class Session:
    """One StreamPipeline session. `send` chunks, `finish` (CLOSE and half-close), and
    iterate for results: iterating raises `ChunkError` for a failed chunk and can go on
    after it; `items()` yields those errors in line instead. The stream's own failure
    raises `FlowplaneError`; the iteration ends only once the server sent `closed`."""

    def __init__(
        self,
        client: Client,
        manifest: streaming_pb2.PipelineManifest,
        metadata: Mapping[str, str] | None,
        queue_size: int,
    ) -> None:
        if queue_size < 1:
            raise ValueError(f"queue_size: {queue_size}, at least 1")
        self._client = client
        self._state = proto.SessionState()
        self._requests: queue.Queue[object] = queue.Queue(maxsize=queue_size)
        self._lock = threading.Lock()
        self._writing = True
        self._ended = False
        self._requests.put(proto.init_request(manifest, metadata))
        self._call = client._stub.StreamPipeline(self._request_stream(), metadata=client._metadata)
        timer = threading.Timer(client.ready_timeout, self._call.cancel)
        timer.daemon = True
        timer.start()
        try:
            while not self._state.ready:
                response = self._next_response()
                if response is None:
                    raise proto.not_closed()
                item = self._state.handle(response)
                if item is not None:
                    raise FlowplaneError(
                        grpc.StatusCode.INTERNAL,
                        "the pipeline service sent a result before ready",
                        reason="PROTOCOL",
                    )
        except FlowplaneError as error:
            self.cancel()
            if not timer.is_alive() and error.code == grpc.StatusCode.CANCELLED:
                raise proto.no_ready(client.ready_timeout) from None
            raise
        finally:
            timer.cancel()

    def _request_stream(self) -> Iterator[streaming_pb2.StreamPipelineRequest]:
        while True:
            item = self._requests.get()
            if item is _END:
                return
            assert isinstance(item, streaming_pb2.StreamPipelineRequest)
            yield item

    def _next_response(self) -> streaming_pb2.StreamPipelineResponse | None:
        try:
            return next(self._call)
        except StopIteration:
            return None
        except grpc.RpcError as error:
            self._ended = True
            raise from_rpc_error(error) from None

    def _put(self, item: object, what: str) -> None:
        # The lock orders writers; the wait for room happens in short steps so a cancel
        # from another thread is seen at once rather than after send_timeout.
        with self._lock:
            if not self._writing:
                raise proto.session_over(what)
            if not self._call.is_active():
                self._writing = False
                raise self._failure(what)
            deadline = time.monotonic() + self._client.send_timeout
            while True:
                try:
                    self._requests.put(item, timeout=0.05)
                    break
                except queue.Full:
                    if not self._writing:
                        raise proto.session_over(what) from None
                    if time.monotonic() >= deadline:
                        raise proto.send_blocked(self._client.send_timeout) from None
            if item is _END:
                self._writing = False

    def _failure(self, what: str) -> FlowplaneError:
        try:
            code = self._call.code()
        except Exception:
            code = None
        if code is not None and code != grpc.StatusCode.OK:
            return from_rpc_error(self._call)  # type: ignore[arg-type]
        return proto.session_over(what)

    # -- the session's face -------------------------------------------------------------

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

    def send(
        self,
        payload: Payload,
        input: str = "",
        *,
        sequence: int | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> int:
        """Queues one chunk for `input` (empty: the pipeline's only input) and returns its
        sequence (one past the last unless given). Blocks while the queue is full, at most
        `send_timeout`."""
        seq = self._state.take_sequence(sequence)
        self._put(proto.chunk_request(seq, input, payload, metadata), "send")
        return seq

    def flush(self) -> None:
        """Asks for every result of every chunk sent so far; `metrics` updates after them."""
        self._put(proto.control_request(Command.FLUSH), "flush")

    def finish(self) -> None:
        """Sends CLOSE and half-closes: no more chunks; iterate to get the rest."""
        self._put(proto.control_request(Command.CLOSE), "finish")
        self._put(_END, "finish")

    def cancel(self) -> None:
        """Ends the session: sends CANCEL so the pipeline ends it as CANCELLED, waits for
        that at most a second, then resets the stream whatever happened. The pipeline
        releases the session either way. Safe to call again, from any thread."""
        was_writing, self._writing = self._writing, False
        if was_writing and self._call.is_active():
            try:
                self._requests.put_nowait(proto.control_request(Command.CANCEL))
                self._requests.put_nowait(_END)
                future = cast("grpc.Future[Any]", self._call)
                future.exception(timeout=proto.CANCEL_GRACE_SECONDS)
            except (queue.Full, grpc.FutureTimeoutError):
                pass  # no room or no answer in time: the reset below ends it
        self._call.cancel()
        # Wake grpc's request thread if it waits on the queue, so it never lingers.
        while True:
            try:
                self._requests.get_nowait()
            except queue.Empty:
                break
        with contextlib.suppress(queue.Full):
            self._requests.put_nowait(_END)

    def items(self) -> Iterator[Result | ChunkError]:
        """Results and per-chunk errors, in arrival order, until `closed`."""
        while not self._ended:
            response = self._next_response()
            if response is None:
                self._ended = True
                if not self._state.closed:
                    raise proto.not_closed()
                return
            item = self._state.handle(response)
            if item is not None:
                yield item

    def __iter__(self) -> Iterator[Result]:
        return self

    def __next__(self) -> Result:
        for item in self.items():
            if isinstance(item, ChunkError):
                raise item
            return item
        raise StopIteration

    def __enter__(self) -> Session:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._ended:
            self.cancel()
            self._ended = True


def _feed_and_read(
    s: Session, inputs: Inputs, send_timeout: float
) -> Iterator[Result | ChunkError]:
    """Sends `inputs` from a thread while the caller reads; a failure to feed (a bad payload,
    a send that timed out) cancels the session and is raised here, not lost in the thread."""
    failure: list[BaseException] = []

    def feed() -> None:
        try:
            for name, payload in proto.interleave(inputs):
                s.send(payload, input=name)
            s.finish()
        except BaseException as error:  # handed to the reader below
            failure.append(error)
            s.cancel()

    feeder = threading.Thread(target=feed, name="flowplane-feeder", daemon=True)
    feeder.start()
    try:
        yield from s.items()
    except FlowplaneError:
        if failure:
            raise failure[0] from None
        raise
    finally:
        s.cancel()
        feeder.join(send_timeout + 5)
    if failure:
        raise failure[0]


class ControlPlane(_Channel):
    """A read-only client of the control plane's registry; options as for `Client`."""

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

    def __enter__(self) -> ControlPlane:
        return self

    def components(
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
                page = self._stub.ListComponents(
                    request, timeout=self.timeout, metadata=self._metadata
                )
            except grpc.RpcError as error:
                raise from_rpc_error(error) from None
            found.extend(Component.from_proto(c) for c in page.components)
            token = page.page.next_page_token
            if not token:
                return found

    def component(self, component_id: str) -> Component:
        """One component by id; NOT_FOUND raises `FlowplaneError`."""
        request = control_plane_pb2.GetComponentRequest(component_id=component_id)
        try:
            got = self._stub.GetComponent(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        return Component.from_proto(got.component)

    def watch(self, *, kind: str | None = None, capability: str | None = None) -> Watch:
        """A snapshot of the matching components, then every change as it happens. Close
        the watch (or leave its `with` block) to stop it."""
        request = control_plane_pb2.WatchComponentsRequest(
            kind=kind_filter(kind), capability=capability or ""
        )
        return Watch(self._stub.WatchComponents(request, metadata=self._metadata))


class Watch:
    """An open WatchComponents stream: iterate for events; `close` cancels it."""

    def __init__(self, call: Any) -> None:
        self._call = call

    def __iter__(self) -> Iterator[WatchEvent]:
        return self

    def __next__(self) -> WatchEvent:
        try:
            message: control_plane_pb2.WatchComponentsResponse = next(self._call)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        return WatchEvent.from_proto(message)

    def close(self) -> None:
        self._call.cancel()

    def __enter__(self) -> Watch:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
