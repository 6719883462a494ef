"""The real platform for the client tests: control plane, processor hosts and pipeline
service started from FLOWPLANE_BIN_DIR (default: the repository's target/debug) on free
127.0.0.1 ports, waited for by condition (registered, healthy, every example runnable),
and stopped with SIGTERM at the end. Every wait has a deadline.
"""

from __future__ import annotations

import functools
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import pytest

import flowplane
import flowplane.aio

REPO = pathlib.Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "examples"
BIN_DIR = pathlib.Path(os.environ.get("FLOWPLANE_BIN_DIR", REPO / "target" / "debug"))

T = TypeVar("T")


def wait_until(what: str, check: Callable[[], T | None], timeout: float = 30.0) -> T:
    """Polls `check` until it returns something truthy; fails naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as error:  # kept to say why the condition never held
            last_error = error
        time.sleep(0.05)
    raise AssertionError(
        f"timed out after {timeout:g} s waiting for {what}; last error: {last_error!r}"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Process:
    name: str
    args: list[str]
    log: pathlib.Path
    popen: subprocess.Popen[bytes]

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)

    def log_tail(self) -> str:
        lines = self.log.read_text(errors="replace").splitlines()[-20:]
        return f"--- {self.name} ({self.log})\n" + "\n".join(lines)


def start(name: str, binary: str, args: Sequence[str], logs: pathlib.Path) -> Process:
    path = BIN_DIR / binary
    if not path.exists():
        raise AssertionError(f"{path} is missing: build it with `cargo build --workspace --bins`")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOWPLANE_", "OTEL_"))}
    env["FLOWPLANE_LOG"] = "warn"
    log = logs / f"{name}.log"
    with log.open("wb") as out:
        popen = subprocess.Popen([str(path), *args], stdout=out, stderr=subprocess.STDOUT, env=env)
    return Process(name, list(args), log, popen)


@dataclass
class Stack:
    """One running platform: addresses and options a client needs to reach it."""

    control_plane: str
    pipeline: str
    pipeline_metrics: str
    processes: list[Process] = field(default_factory=list)
    client_options: dict[str, object] = field(default_factory=dict)
    logs: pathlib.Path = field(default_factory=pathlib.Path)
    scheme: str = "http"

    @property
    def pipeline_url(self) -> str:
        return f"{self.scheme}://{self.pipeline}"

    @property
    def control_plane_url(self) -> str:
        return f"{self.scheme}://{self.control_plane}"

    def client(self, **overrides: object) -> flowplane.Client:
        options = {**self.client_options, **overrides}
        return flowplane.Client(self.pipeline_url, **options)  # type: ignore[arg-type]

    def aio_client(self, **overrides: object) -> flowplane.aio.Client:
        options = {**self.client_options, **overrides}
        return flowplane.aio.Client(self.pipeline_url, **options)  # type: ignore[arg-type]

    def metric(self, name: str, label: str = "") -> float:
        """The sum of the samples of `name` (those whose labels hold `label`, e.g.
        'code="CANCELLED"') on the pipeline's Prometheus endpoint; 0 when there are none."""
        with urllib.request.urlopen(f"http://{self.pipeline_metrics}/metrics", timeout=5) as r:
            text = r.read().decode()
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name) or line[len(name) : len(name) + 1] not in (" ", "{"):
                continue
            if label in line.rsplit(" ", 1)[0]:
                total += float(line.rsplit(" ", 1)[1])
        return total

    def stop(self) -> None:
        for p in reversed(self.processes):
            p.stop()


def start_stack(
    logs: pathlib.Path,
    *,
    processors: int = 2,
    server_args: Sequence[str] = (),
    processor_client_args: Sequence[str] = (),
    pipeline_client_args: Sequence[str] = (),
    scheme: str = "http",
    client_options: dict[str, object] | None = None,
    reader_options: dict[str, object] | None = None,
) -> Stack:
    """Starts a platform; `client_options`/`reader_options` are what a pipeline client and
    a registry reader need to reach it (TLS files, tokens)."""
    cp_port, pipe_port, metrics_port = free_port(), free_port(), free_port()
    cp = f"{scheme}://127.0.0.1:{cp_port}"
    stack = Stack(
        f"127.0.0.1:{cp_port}",
        f"127.0.0.1:{pipe_port}",
        f"127.0.0.1:{metrics_port}",
        client_options=dict(client_options or {}),
        logs=logs,
        scheme=scheme,
    )
    try:
        stack.processes.append(
            start(
                "control-plane",
                "flowplane-control-plane",
                [
                    "--listen",
                    stack.control_plane,
                    "--lease-ttl",
                    "3s",
                    # Its own: two stacks must not share the default ./flowplane-data.
                    "--data-dir",
                    tempfile.mkdtemp(prefix="control-plane-data-", dir=logs),
                    *server_args,
                ],
                logs,
            )
        )
        for i in range(processors):
            port = free_port()
            stack.processes.append(
                start(
                    f"processor-{i}",
                    "flowplane-processor",
                    [
                        "--listen",
                        f"127.0.0.1:{port}",
                        "--control-plane",
                        cp,
                        "--id",
                        f"py-processor-{i}",
                        "--grace-period",
                        "1s",
                        *server_args,
                        *processor_client_args,
                    ],
                    logs,
                )
            )
        stack.processes.append(
            start(
                "pipeline",
                "flowplane-pipeline",
                [
                    "--listen",
                    stack.pipeline,
                    "--metrics-listen",
                    stack.pipeline_metrics,
                    "--control-plane",
                    cp,
                    "--grace-period-secs",
                    "1",
                    *server_args,
                    *pipeline_client_args,
                ],
                logs,
            )
        )
        with flowplane.ControlPlane(cp, **(reader_options or {})) as registry:  # type: ignore[arg-type]
            wait_until(
                f"{processors} healthy processors",
                lambda: len(registry.components(kind="processor", status="healthy")) == processors,
            )
        with stack.client() as client:
            for manifest in sorted((EXAMPLES / "pipelines").glob("*.yaml")):
                wait_until(
                    f"{manifest.name} runnable", functools.partial(runnable, client, manifest)
                )
    except BaseException:
        for p in stack.processes:
            if p.popen.poll() is not None:
                print(p.log_tail(), file=sys.stderr)
        stack.stop()
        raise
    return stack


def runnable(client: flowplane.Client, manifest: pathlib.Path) -> bool:
    return client.validate(manifest) == []


@pytest.fixture(scope="session")
def logs() -> Iterator[pathlib.Path]:
    with tempfile.TemporaryDirectory(prefix="flowplane-py-") as tmp:
        yield pathlib.Path(tmp)


@pytest.fixture(scope="session")
def stack(logs: pathlib.Path) -> Iterator[Stack]:
    """The plain platform: no tokens, no TLS."""
    (logs / "plain").mkdir()
    s = start_stack(logs / "plain")
    yield s
    s.stop()


@pytest.fixture(scope="session")
def samples(logs: pathlib.Path) -> pathlib.Path:
    """The example inputs, made by examples/make-samples.py as the demo makes them."""
    out = logs / "samples"
    subprocess.run([sys.executable, str(EXAMPLES / "make-samples.py"), str(out)], check=True)
    return out
