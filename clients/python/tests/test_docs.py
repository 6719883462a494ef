"""The README quickstart and the examples in examples/python run against the real
platform and print what they claim."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

from conftest import EXAMPLES, REPO, Stack

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def run(args: list[str], stack: Stack) -> subprocess.CompletedProcess[str]:
    env = {
        "FLOWPLANE_PIPELINE": stack.pipeline,
        "FLOWPLANE_CONTROL_PLANE": stack.control_plane,
        "PATH": "/usr/bin:/bin",
    }
    return subprocess.run(
        [sys.executable, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=60
    )


def test_the_quickstart_is_at_most_ten_lines_and_streams_the_calculator(stack: Stack) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    quickstart = blocks[0]
    assert len(quickstart.strip().splitlines()) <= 10, quickstart
    done = run(["-c", quickstart.replace("127.0.0.1:50071", stack.pipeline)], stack)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:2] == ["0 {'result': 2.0}", "1 {'result': 42.0}"], done.stdout
    assert lines[2].startswith("2 INVALID_ARGUMENT DIVISION_BY_ZERO: "), done.stdout
    assert len(lines) == 3


def test_validate_example(stack: Stack) -> None:
    ok = run([str(EXAMPLES / "python" / "validate.py"), "examples/pipelines/mixed.yaml"], stack)
    assert (ok.returncode, ok.stdout) == (0, "examples/pipelines/mixed.yaml: valid\n"), ok.stderr


def test_components_example_lists_and_watches(stack: Stack) -> None:
    listed = run([str(EXAMPLES / "python" / "components.py"), "--kind", "processor"], stack)
    assert listed.returncode == 0, listed.stderr
    assert [line.split()[0] for line in listed.stdout.splitlines()] == [
        "py-processor-0",
        "py-processor-1",
    ]
    watched = run([str(EXAMPLES / "python" / "components.py"), "--watch", "--events", "0"], stack)
    assert watched.returncode == 0, watched.stderr
    assert [line.split()[:2] for line in watched.stdout.splitlines()] == [
        ["SNAPSHOT", "py-processor-0"],
        ["SNAPSHOT", "py-processor-1"],
    ]


def test_audio_levels_example(stack: Stack) -> None:
    done = run([str(EXAMPLES / "python" / "audio_levels.py")], stack)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 20, done.stdout
    # The resampler's first chunk is short: its output lags by half the filter.
    assert lines[:2] == ["#0 audio 234 frames, peak 0.251", "#0 level -14.99 dBFS"], lines
