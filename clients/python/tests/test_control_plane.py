"""The control-plane helpers against the real registry: components() with filters,
component() and its NOT_FOUND, and watch() (sync and async) seeing a snapshot, a host
joining and the same host leaving."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import grpc
import pytest

import flowplane
from conftest import Process, Stack, free_port, start


def test_components_lists_and_filters_the_processors(stack: Stack) -> None:
    with flowplane.ControlPlane(stack.control_plane) as registry:
        hosts = registry.components(kind="processor")
        assert [c.id for c in hosts] == ["py-processor-0", "py-processor-1"]
        assert all(c.kind == "processor" and c.status == "healthy" for c in hosts)
        assert "json.calculator" in hosts[0].capabilities and hosts[0].endpoint.startswith(
            "127.0.0.1:"
        )
        assert registry.components(capability="json.calculator") == hosts
        assert registry.components(capability="no.such.processor") == []
        assert registry.components(kind="source") == []
        assert registry.components(labels={"no": "such-label"}) == []
        assert [c.id for c in registry.components(kind="processor", page_size=1)] == [
            c.id for c in hosts
        ]
        assert registry.component("py-processor-1").id == "py-processor-1"
        with pytest.raises(flowplane.FlowplaneError) as raised:
            registry.component("nobody")
        assert raised.value.code == grpc.StatusCode.NOT_FOUND
        with pytest.raises(
            ValueError, match="kind: 'robot' is not one of processor, source, consumer"
        ):
            registry.components(kind="robot")


def extra_host(stack: Stack, name: str) -> Process:
    return start(
        name,
        "flowplane-processor",
        [
            "--listen",
            f"127.0.0.1:{free_port()}",
            "--control-plane",
            f"http://{stack.control_plane}",
            "--id",
            name,
            "--grace-period",
            "1s",
        ],
        stack.logs,
    )


def events_until_removed(watch: Iterator[flowplane.WatchEvent], name: str) -> list[str]:
    seen: list[str] = []
    for event in watch:
        if event.kind == "snapshot":
            seen.append("snapshot")
        elif any(c.id == name for c in event.components):
            seen.append(event.kind)
            if event.kind == "removed":
                return seen
    raise AssertionError(f"the watch ended before {name} was removed: {seen}")


def test_watch_sees_a_host_join_and_leave(stack: Stack) -> None:
    name = "py-watched-sync"
    with (
        flowplane.ControlPlane(stack.control_plane) as registry,
        registry.watch(kind="processor") as watch,
    ):
        first = next(watch)
        assert first.kind == "snapshot" and name not in [c.id for c in first.components]
        host = extra_host(stack, name)
        # A bounded watch: if the events never come, the timer ends the stream.
        timer = threading.Timer(30, watch.close)
        timer.start()
        try:
            added = next(e for e in watch if any(c.id == name for c in e.components))
            assert added.kind == "added", added
            host.stop()
            seen = events_until_removed(watch, name)
        finally:
            timer.cancel()
            host.stop()
    assert seen[-1] == "removed"


async def test_async_watch_sees_a_host_join_and_leave(stack: Stack) -> None:
    name = "py-watched-async"
    async with (
        flowplane.aio.ControlPlane(stack.control_plane) as registry,
        registry.watch(capability="json.calculator") as watch,
    ):
        assert len(await registry.components(kind="processor")) == 2
        # The host starts only once the snapshot is in, so its registration is an event.
        first = await anext(watch)
        assert first.kind == "snapshot" and name not in [c.id for c in first.components]
        kinds: list[str] = ["snapshot"]
        host = extra_host(stack, name)
        removed: flowplane.WatchEvent | None = None
        try:
            async with asyncio.timeout(30):
                async for event in watch:
                    if not any(c.id == name for c in event.components):
                        continue
                    kinds.append(event.kind)
                    if event.kind == "added":
                        host.popen.terminate()  # SIGTERM: it deregisters; no blocking wait here
                    if event.kind == "removed":
                        removed = event
                        break
        finally:
            host.stop()
    assert kinds[0] == "snapshot" and "added" in kinds and kinds[-1] == "removed", kinds
    assert removed is not None and removed.reason == "deregistered"
