"""The session shapes, sync and async, against the real pipeline: send/finish/iterate,
FLUSH metrics, ready's node assignments, 100 concurrent sessions on one client, and a
cancel mid-stream that the pipeline releases (its own metrics say so)."""

from __future__ import annotations

import asyncio
import contextlib
import threading

import pytest

import flowplane
from conftest import EXAMPLES, Stack, wait_until

CALCULATOR = EXAMPLES / "pipelines" / "calculator.yaml"
UPPER = {
    "name": "upper",
    "nodes": [{"id": "up", "processor": "text.transform", "params": {"mode": "upper"}}],
    "inputs": [{"name": "text", "targets": [{"node": "up"}]}],
    "outputs": [{"name": "out", "source": {"node": "up"}}],
}


def add(*operands: float) -> flowplane.Json:
    return flowplane.Json({"op": "add", "operands": list(operands)})


def test_sync_session_send_finish_iterate(stack: Stack) -> None:
    with stack.client() as client, client.session(CALCULATOR, metadata={"test": "sync"}) as s:
        assert s.session_id and [n.node for n in s.nodes] == ["calc"]
        assert s.nodes[0].processor == "json.calculator" and s.nodes[0].instance.startswith("py-")
        sequences = [s.send(add(i, 1), input="requests") for i in range(5)]
        s.flush()
        s.finish()
        results = list(s)
    assert sequences == [0, 1, 2, 3, 4]
    assert [(r.sequence, r.output, r.value) for r in results] == [
        (i, "results", {"result": i + 1}) for i in range(5)
    ]
    assert s.closed and s.metrics is not None
    assert (s.metrics.chunks_in, s.metrics.results_out, s.metrics.errors) == (5, 5, 0)


def test_the_default_input_and_text_payloads(stack: Stack) -> None:
    with stack.client() as client:
        outcome = client.run(
            UPPER, [("", flowplane.Text("quiet")), ("text", flowplane.Text("calm"))]
        )
    assert [r.value for r in outcome.results] == ["QUIET", "CALM"]


def test_sending_after_finish_is_refused(stack: Stack) -> None:
    with stack.client() as client, client.session(CALCULATOR) as s:
        s.finish()
        with pytest.raises(flowplane.FlowplaneError) as raised:
            s.send(add(1), input="requests")
        assert raised.value.reason == "SESSION_OVER"
        assert list(s) == []


def test_a_bad_payload_while_feeding_is_raised_not_lost(stack: Stack) -> None:
    def inputs() -> object:
        yield "requests", add(1)
        raise RuntimeError("the input source broke")

    with stack.client() as client, pytest.raises(RuntimeError, match="input source broke"):
        client.run(CALCULATOR, inputs())  # type: ignore[arg-type]


async def test_async_session_send_finish_iterate(stack: Stack) -> None:
    async with stack.aio_client() as client, client.session(CALCULATOR) as s:
        assert [n.node for n in s.nodes] == ["calc"]
        for i in range(3):
            await s.send(add(i, i), input="requests")
        await s.flush()
        await s.finish()
        results = [r async for r in s]
    assert [r.value for r in results] == [{"result": 0}, {"result": 2}, {"result": 4}]
    assert s.closed and s.metrics is not None and s.metrics.results_out == 3


async def test_async_stream_yields_results_and_errors_in_order(stack: Stack) -> None:
    chunks = [add(1), flowplane.Json({"op": "div", "operands": [1, 0]}), add(2)]
    async with stack.aio_client() as client:
        items = [i async for i in client.stream(CALCULATOR, {"requests": chunks})]
    assert [type(i).__name__ for i in items] == ["Result", "ChunkError", "Result"]
    assert [i.sequence for i in items] == [0, 1, 2]


async def test_a_hundred_concurrent_sessions_on_one_client(stack: Stack) -> None:
    async with stack.aio_client() as client:

        async def one(n: int) -> list[object]:
            async with client.session(CALCULATOR) as s:
                for i in range(5):
                    await s.send(add(n, i), input="requests")
                await s.finish()
                return [r.value["result"] async for r in s]

        answers = await asyncio.wait_for(asyncio.gather(*(one(n) for n in range(100))), 120)
    assert answers == [[n + i for i in range(5)] for n in range(100)]


def test_concurrent_sync_sessions_from_threads_on_one_client(stack: Stack) -> None:
    answers: dict[int, list[object]] = {}
    failures: list[BaseException] = []
    with stack.client() as client:

        def one(n: int) -> None:
            try:
                out = client.run(CALCULATOR, {"requests": [add(n, i) for i in range(5)]})
                answers[n] = [r.value["result"] for r in out.results]
            except BaseException as error:
                failures.append(error)

        threads = [threading.Thread(target=one, args=(n,)) for n in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert not failures, failures
    assert answers == {n: [n + i for i in range(5)] for n in range(20)}


def released(stack: Stack, cancelled_before: float) -> bool:
    active = stack.metric("flowplane_pipeline_sessions_active")
    cancelled = stack.metric("flowplane_pipeline_sessions_total", 'code="CANCELLED"')
    return active == 0 and cancelled > cancelled_before


def test_leaving_a_sync_session_mid_stream_releases_it(stack: Stack) -> None:
    wait_until("no open session", lambda: stack.metric("flowplane_pipeline_sessions_active") == 0)
    before = stack.metric("flowplane_pipeline_sessions_total", 'code="CANCELLED"')
    with stack.client() as client:
        with client.session(CALCULATOR) as s:
            s.send(add(1), input="requests")
            assert next(s).value == {"result": 1}
            s.send(add(2), input="requests")
            assert stack.metric("flowplane_pipeline_sessions_active") == 1
        with pytest.raises(flowplane.FlowplaneError) as raised:
            s.send(add(3), input="requests")
        assert raised.value.reason == "SESSION_OVER"
        wait_until("the pipeline to release the cancelled session", lambda: released(stack, before))


async def test_leaving_an_async_session_mid_stream_releases_it(stack: Stack) -> None:
    wait_until("no open session", lambda: stack.metric("flowplane_pipeline_sessions_active") == 0)
    before = stack.metric("flowplane_pipeline_sessions_total", 'code="CANCELLED"')
    async with stack.aio_client() as client:
        with contextlib.suppress(KeyError):
            async with client.session(CALCULATOR) as s:
                await s.send(add(1), input="requests")
                async for r in s:
                    assert r.value == {"result": 1}
                    raise KeyError("leave mid-stream by an exception")
        for _ in range(100):  # bounded: the release is asynchronous on the server
            if released(stack, before):
                break
            await asyncio.sleep(0.05)
        assert released(stack, before)


def test_options_are_checked_before_connecting() -> None:
    with pytest.raises(ValueError, match=r"^token:"):
        flowplane.Client("127.0.0.1:1", token="two words")
    with pytest.raises(ValueError, match="tls_client_cert, tls_client_key"):
        flowplane.Client("https://127.0.0.1:1", tls_client_cert="c.pem")
    with pytest.raises(ValueError, match=r"^tls_ca: cannot read"):
        flowplane.Client("https://127.0.0.1:1", tls_ca="/nonexistent/ca.pem")
    with pytest.raises(ValueError, match="plaintext"):
        flowplane.Client("http://127.0.0.1:1", tls_ca="ca.pem")
    with pytest.raises(ValueError, match="scheme"):
        flowplane.Client("grpc://127.0.0.1:1")


BIG = flowplane.Text("a" * (1 << 20))  # 1 MiB in, 1 MiB out: windows fill after a few dozen


def test_a_send_nobody_makes_room_for_times_out_instead_of_buffering(stack: Stack) -> None:
    sent = 0
    with stack.client(send_timeout=1) as client, client.session(UPPER, queue_size=4) as s:
        with pytest.raises(flowplane.FlowplaneError) as raised:
            for sent in range(300):  # noqa: B007 (read after the loop)
                s.send(BIG, input="text")
        assert raised.value.reason == "SEND_TIMEOUT"
    # The pipeline's window (32 MiB) and the HTTP/2 windows bound what was taken.
    assert 8 < sent < 150, sent


async def test_an_async_send_nobody_makes_room_for_times_out(stack: Stack) -> None:
    sent = 0
    async with stack.aio_client(send_timeout=1) as client, client.session(UPPER) as s:
        with pytest.raises(flowplane.FlowplaneError) as raised:
            for sent in range(300):  # noqa: B007 (read after the loop)
                await s.send(BIG, input="text")
        assert raised.value.reason == "SEND_TIMEOUT"
    assert 8 < sent < 150, sent
