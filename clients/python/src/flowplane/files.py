"""Input files as payloads, read the way `flowplane run` reads them, so the Python client
and the CLI send the same chunks for the same file: WAV audio in 20 ms chunks, PPM images,
raw .rgb frames, JSON lines, a JSON document, text lines, .npy tensors, and anything else
as 64 KiB binary chunks. Whole files are loaded: this is for examples and scripts.
"""

from __future__ import annotations

import ast
import os
import pathlib
import struct
from collections.abc import Sequence

from flowplane.payloads import (
    Audio,
    AudioFormat,
    Binary,
    Json,
    Payload,
    Tensor,
    TensorDtype,
    Text,
    Video,
)

__all__ = ["read_file"]


def read_file(
    path: str | os.PathLike[str],
    *,
    audio_chunk_ms: int = 20,
    binary_chunk_bytes: int = 64 * 1024,
    frame_size: tuple[int, int] | None = None,
) -> list[Payload]:
    """The payloads of `path`'s chunks, in order, by its extension. ValueError names the
    file and what is wrong with it."""
    p = pathlib.Path(path)
    data = p.read_bytes()
    ext = p.suffix.lower().lstrip(".")
    try:
        if ext == "wav":
            return _wav(data, audio_chunk_ms)
        if ext == "ppm":
            return _ppm(data)
        if ext == "rgb":
            return _raw_rgb(data, frame_size)
        if ext in ("jsonl", "ndjson"):
            return [Json.from_text(line) for line in _lines(data)]
        if ext == "json":
            return [Json.from_text(data.decode().strip())]
        if ext == "txt":
            return [Text(line) for line in _lines(data)]
        if ext == "npy":
            return [_npy(data)]
    except (ValueError, UnicodeDecodeError, struct.error) as bad:
        raise ValueError(f"{p}: not a valid .{ext} input: {bad}") from None
    step = max(binary_chunk_bytes, 1)
    starts = range(0, max(len(data), 1), step)
    return [Binary(data[at : at + step], "application/octet-stream") for at in starts]


def _lines(data: bytes) -> list[str]:
    return [line for line in data.decode().splitlines() if line.strip()]


def _wav(d: bytes, chunk_ms: int) -> list[Payload]:
    if len(d) < 12 or d[0:4] != b"RIFF" or d[8:12] != b"WAVE":
        raise ValueError("not a RIFF/WAVE file")
    at = 12
    fmt: tuple[AudioFormat, int, int, int] | None = None
    while at + 8 <= len(d):
        chunk_id = d[at : at + 4]
        (size,) = struct.unpack_from("<I", d, at + 4)
        body = at + 8
        if body + size > len(d):
            raise ValueError(f"chunk {chunk_id!r} runs past the end of the file")
        if chunk_id == b"fmt ":
            tag, channels, rate = struct.unpack_from("<HHI", d, body)
            (bits,) = struct.unpack_from("<H", d, body + 14)
            formats = {
                (1, 16): AudioFormat.I16LE,
                (1, 32): AudioFormat.I32LE,
                (3, 32): AudioFormat.F32LE,
            }
            if (tag, bits) not in formats:
                raise ValueError(f"unsupported wav encoding (format tag {tag}, {bits} bits)")
            fmt = (formats[(tag, bits)], channels, rate, bits // 8)
        elif chunk_id == b"data":
            if fmt is None:
                raise ValueError("data chunk before fmt chunk")
            audio_format, channels, rate, width = fmt
            frame = width * channels
            step = max(rate * chunk_ms // 1000, 1) * frame
            samples = d[body : body + size]
            return [
                Audio(samples[i : i + step], rate, channels, audio_format)
                for i in range(0, len(samples), step)
            ]
        at = body + size + (size & 1)
    raise ValueError("no data chunk")


def _ppm(d: bytes) -> list[Payload]:
    frames: list[Payload] = []
    at = 0
    while at < len(d):
        if d[at : at + 1].isspace():
            at += 1
            continue
        fields: list[str] = []
        while len(fields) < 4:
            while at < len(d) and d[at : at + 1].isspace():
                at += 1
            if d[at : at + 1] == b"#":
                while at < len(d) and d[at : at + 1] != b"\n":
                    at += 1
                continue
            start = at
            while at < len(d) and not d[at : at + 1].isspace():
                at += 1
            if start == at:
                raise ValueError(f"image {len(frames)} has a truncated header")
            fields.append(d[start:at].decode("latin-1"))
        at += 1
        magic, width, height, maxval = fields[0], int(fields[1]), int(fields[2]), fields[3]
        if magic != "P6" or maxval != "255":
            raise ValueError(f"image {len(frames)}: only binary P6 with maxval 255 is read")
        size = width * height * 3
        if at + size > len(d):
            raise ValueError(f"image {len(frames)} is truncated")
        frames.append(Video(d[at : at + size], width, height, frame_number=len(frames)))
        at += size
    if not frames:
        raise ValueError("no image in file")
    return frames


def _raw_rgb(d: bytes, size: tuple[int, int] | None) -> list[Payload]:
    if size is None:
        raise ValueError("raw .rgb video needs frame_size=(width, height)")
    width, height = size
    frame = width * height * 3
    if frame == 0 or len(d) % frame:
        raise ValueError(
            f"file size {len(d)} is not a whole number of {width}x{height} rgb24 frames"
        )
    return [
        Video(d[i : i + frame], width, height, frame_number=n)
        for n, i in enumerate(range(0, len(d), frame))
    ]


_NPY_DTYPES = {
    "<f4": TensorDtype.F32,
    "<f8": TensorDtype.F64,
    "<f2": TensorDtype.F16,
    "<i8": TensorDtype.I64,
    "<i4": TensorDtype.I32,
    "|i1": TensorDtype.I8,
    "|u1": TensorDtype.U8,
}


def _npy(d: bytes) -> Tensor:
    if len(d) <= 10 or d[0:6] != b"\x93NUMPY":
        raise ValueError("not a .npy file")
    if d[6] == 1:
        (header_len,) = struct.unpack_from("<H", d, 8)
        start = 10
    elif d[6] in (2, 3):
        (header_len,) = struct.unpack_from("<I", d, 8)
        start = 12
    else:
        raise ValueError(f"unsupported .npy version {d[6]}")
    header = ast.literal_eval(d[start : start + header_len].decode("latin-1"))
    if not isinstance(header, dict):
        raise ValueError("the .npy header is not a dict")
    descr = header.get("descr")
    if descr not in _NPY_DTYPES:
        raise ValueError(f"unsupported dtype {descr}")
    if header.get("fortran_order"):
        raise ValueError("fortran-order arrays are not supported")
    shape: Sequence[int] = header.get("shape", ())
    return Tensor(d[start + header_len :], tuple(int(s) for s in shape), _NPY_DTYPES[descr])
