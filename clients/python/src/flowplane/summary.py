"""Results as the one-line JSON envelopes `flowplane run --output json` prints (levels and
digests for audio and video, rounded values for tensors, the document for JSON, always
under `payload`), per-chunk errors, and the closing summary line, so a Python run can be
diffed against the CLI's and against examples/expected/.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from typing import Any

import grpc

from flowplane._protocol import Metrics, Outcome, Result
from flowplane.errors import ChunkError
from flowplane.payloads import Audio, AudioFormat, Binary, Json, Tensor, TensorDtype, Text, Video

__all__ = ["error_line", "outcome_lines", "result_line", "summarize", "summary_line"]

# tonic's Debug names of the codes, which the CLI prints.
_CODE_NAMES = {
    code: "".join(part.title() for part in code.name.split("_")) for code in grpc.StatusCode
}
_CODE_NAMES[grpc.StatusCode.OK] = "Ok"


def _round(value: float, places: int) -> float:
    """Half away from zero, like Rust's f64::round."""
    scale = 10.0**places
    scaled = value * scale
    return math.copysign(math.floor(abs(scaled) + 0.5), scaled) / scale


def _levels(audio: Audio) -> tuple[float, float]:
    width = {AudioFormat.F32LE: 4, AudioFormat.I16LE: 2, AudioFormat.I32LE: 4}[audio.format]
    count = len(audio.samples) // width
    code = {AudioFormat.F32LE: "f", AudioFormat.I16LE: "h", AudioFormat.I32LE: "i"}[audio.format]
    scale = {AudioFormat.F32LE: 1.0, AudioFormat.I16LE: 32768.0, AudioFormat.I32LE: 2147483648.0}[
        audio.format
    ]
    samples = [s / scale for s in struct.unpack_from(f"<{count}{code}", audio.samples)]
    if not samples:
        return -math.inf, -math.inf
    rms = math.sqrt(sum(s * s for s in samples) / len(samples))
    peak = max(abs(s) for s in samples)
    as_db = [20 * math.log10(v) if v > 0 else -math.inf for v in (rms, peak)]
    return as_db[0], as_db[1]


def _db(value: float) -> float:
    return _round(value, 2) if math.isfinite(value) else -999.0


def summarize(result: Result) -> dict[str, Any]:
    """The CLI's JSON object for one result: the envelope, the payload's fields under
    `payload`."""
    p = result.payload
    line: dict[str, Any] = {}
    if isinstance(p, Audio):
        rms, peak = _levels(p)
        line.update(
            type="audio",
            format=f"AUDIO_FORMAT_{p.format.name}",
            sample_rate=p.sample_rate,
            channels=p.channels,
            num_samples=p.num_samples,
            rms_dbfs=_db(rms),
            peak_dbfs=_db(peak),
            sha256=hashlib.sha256(p.samples).hexdigest(),
        )
    elif isinstance(p, Video):
        line.update(
            type="video",
            format=f"PIXEL_FORMAT_{p.format.name}",
            width=p.width,
            height=p.height,
            frame_number=p.frame_number,
            sha256=hashlib.sha256(p.pixels).hexdigest(),
        )
    elif isinstance(p, Tensor):
        values: list[float] = []
        if p.dtype in (TensorDtype.F32, TensorDtype.F64):
            code, width = ("f", 4) if p.dtype == TensorDtype.F32 else ("d", 8)
            raw = struct.unpack_from(f"<{len(p.data) // width}{code}", p.data)
            values = [_round(v, 4) for v in raw]
        line.update(
            type="tensor", dtype=f"TENSOR_DTYPE_{p.dtype.name}", shape=list(p.shape), values=values
        )
    elif isinstance(p, Json):
        line.update(type="json", value=p.value)
    elif isinstance(p, Text):
        line.update(type="text", value=p.text)
    elif isinstance(p, Binary):
        line.update(type="binary", bytes=len(p.data), sha256=hashlib.sha256(p.data).hexdigest())
    kind = line.pop("type", None)
    return {
        "event": "result",
        "sequence": result.sequence,
        "output": result.output,
        "type": kind,
        "payload": line,
    }


def _dumps(value: dict[str, Any]) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def result_line(result: Result) -> str:
    """One result as the CLI's JSON line."""
    return _dumps(summarize(result))


def error_line(error: ChunkError) -> str:
    """One per-chunk error as the CLI's JSON line."""
    detail = {
        "code": _CODE_NAMES[error.code],
        "reason": error.reason,
        "node_id": error.node or "",
        "message": error.message,
    }
    return _dumps({"event": "error", "sequence": error.sequence, "error": detail})


def summary_line(metrics: Metrics | None) -> str:
    """The closing line the CLI prints once the session closed (no files: the CLI lists
    what `--output-dir` wrote)."""
    m = metrics
    return _dumps(
        {
            "event": "summary",
            "chunks": m.chunks_in if m else 0,
            "results": m.results_out if m else 0,
            "errors": m.errors if m else 0,
            "failovers": m.failovers if m else 0,
            "files": [],
        }
    )


def outcome_lines(outcome: Outcome) -> str:
    """A whole run as the CLI prints it: results and errors by sequence (results of one
    sequence in arrival order), then the summary line."""
    items: list[tuple[int, int, str]] = [
        (r.sequence, i, result_line(r)) for i, r in enumerate(outcome.results)
    ]
    items += [(e.sequence or 0, -1, error_line(e)) for e in outcome.errors]
    lines = [line for _, _, line in sorted(items)] + [summary_line(outcome.metrics)]
    return "".join(line + "\n" for line in lines)
