"""Every example pipeline through the Python client, sync and async, gives exactly the
results in examples/expected/ (the CLI's JSON lines), from the inputs the demo uses.

A line that differs in text must still hold exactly the same values: Python and the CLI
may spell one float differently (`1e-05`, `1e-5`), never give a different one. (The CLI
parses with serde_json's `float_roundtrip`, so it prints the processor's own float.)
"""

from __future__ import annotations

import json
import math
import pathlib
import subprocess
import sys
from typing import Any

import pytest

import flowplane
from conftest import EXAMPLES, Stack
from flowplane.files import read_file
from flowplane.summary import outcome_lines

# The inputs examples/run-all.sh gives each pipeline, in its order.
INPUTS = {
    "audio-chain": [("audio", "tone.wav")],
    "mixed": [("audio", "tone.wav"), ("control", "control.jsonl")],
    "video-grayscale": [("video", "frames.ppm")],
    "calculator": [("requests", "calc.jsonl")],
    "tensor": [("tensor", "tensor.npy")],
    "fan-out-fan-in": [("audio", "tone.wav"), ("control", "control.jsonl")],
    "text-and-digest": [("text", "lines.txt"), ("data", "blob.bin")],
}


def test_every_example_pipeline_has_its_inputs_listed() -> None:
    assert sorted(INPUTS) == sorted(p.stem for p in (EXAMPLES / "pipelines").glob("*.yaml"))


def inputs_of(name: str, samples: pathlib.Path) -> dict[str, list[flowplane.Payload]]:
    return {inp: read_file(samples / file) for inp, file in INPUTS[name]}


def lines_of(outcome: flowplane.Outcome) -> str:
    """Results and errors by sequence, then the summary line, as the CLI prints them."""
    return outcome_lines(outcome)


def expected(name: str) -> str:
    return (EXAMPLES / "expected" / f"{name}.jsonl").read_text()


def same(actual: Any, wanted: Any, where: str) -> None:
    if isinstance(wanted, float) and isinstance(actual, float):
        assert actual == wanted, f"{where}: {actual!r} != {wanted!r}"
    elif isinstance(wanted, dict) and isinstance(actual, dict):
        assert sorted(actual) == sorted(wanted), (
            f"{where}: keys {sorted(actual)} != {sorted(wanted)}"
        )
        for key in wanted:
            same(actual[key], wanted[key], f"{where}.{key}")
    elif isinstance(wanted, list) and isinstance(actual, list):
        assert len(actual) == len(wanted), f"{where}: {len(actual)} items, expected {len(wanted)}"
        for i, (a, w) in enumerate(zip(actual, wanted, strict=True)):
            same(a, w, f"{where}[{i}]")
    else:
        assert type(actual) is type(wanted) and actual == wanted, (
            f"{where}: {actual!r} != {wanted!r}"
        )


def assert_lines(actual: str, name: str) -> None:
    """Same lines in the same order, holding exactly the same values (see above)."""
    got, want = actual.splitlines(), expected(name).splitlines()
    assert len(got) == len(want), f"{name}: {len(got)} lines, expected {len(want)}:\n{actual}"
    for number, (g, w) in enumerate(zip(got, want, strict=True), 1):
        if g != w:
            same(json.loads(g), json.loads(w), f"{name} line {number}")


def test_the_comparison_bites() -> None:
    line = expected("audio-chain").splitlines()[1]
    value = json.loads(line)
    value["payload"]["value"]["rms_dbfs"] += math.ulp(value["payload"]["value"]["rms_dbfs"])
    try:
        same(value, json.loads(line), "changed")
    except AssertionError:
        return
    raise AssertionError("a float one ulp off passed the comparison")


@pytest.mark.parametrize("name", sorted(INPUTS))
def test_example_sync(stack: Stack, samples: pathlib.Path, name: str) -> None:
    with stack.client() as client:
        outcome = client.run(
            EXAMPLES / "pipelines" / f"{name}.yaml", inputs_of(name, samples), errors="collect"
        )
    assert_lines(lines_of(outcome), name)
    assert [r.sequence for r in outcome.results] == sorted(r.sequence for r in outcome.results)
    assert outcome.metrics is not None and outcome.metrics.results_out == len(outcome.results)


@pytest.mark.parametrize("name", sorted(INPUTS))
async def test_example_async(stack: Stack, samples: pathlib.Path, name: str) -> None:
    async with stack.aio_client() as client:
        outcome = await client.run(
            EXAMPLES / "pipelines" / f"{name}.yaml", inputs_of(name, samples), errors="collect"
        )
    assert_lines(lines_of(outcome), name)


def test_run_raises_the_first_chunk_error_by_default(stack: Stack, samples: pathlib.Path) -> None:
    with stack.client() as client, pytest.raises(flowplane.ChunkError) as raised:
        client.run(EXAMPLES / "pipelines" / "calculator.yaml", inputs_of("calculator", samples))
    assert (raised.value.sequence, raised.value.reason) == (3, "DIVISION_BY_ZERO")


@pytest.mark.parametrize("name", ["calculator", "text-and-digest"])
def test_the_python_example_script_prints_what_the_cli_prints(
    stack: Stack, samples: pathlib.Path, name: str
) -> None:
    args = [f"{inp}={samples / file}" for inp, file in INPUTS[name]]
    script = EXAMPLES / "python" / "run.py"
    done = subprocess.run(
        [
            sys.executable,
            str(script),
            str(EXAMPLES / "pipelines" / f"{name}.yaml"),
            *args,
            "--json",
        ],
        env={"FLOWPLANE_PIPELINE": stack.pipeline, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert_lines(done.stdout, name)
