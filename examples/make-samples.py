#!/usr/bin/env python3
"""Writes the small sample inputs the example pipelines run on (nothing is downloaded).

Usage: make-samples.py OUT_DIR

Every file is generated from a formula, so the same files (and the same pipeline
results) come out on every machine.
"""
import math
import pathlib
import struct
import sys


def wav_f32(path, rate, samples):
    data = struct.pack(f"<{len(samples)}f", *samples)
    fmt = struct.pack("<HHIIHH", 3, 1, rate, rate * 4, 4, 32)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


def main(out):
    out.mkdir(parents=True, exist_ok=True)
    rate = 48000
    # 200 ms of a 440 Hz sine at half scale: ten 20 ms chunks.
    tone = [0.5 * math.sin(2 * math.pi * 440 * i / rate) for i in range(rate // 5)]
    wav_f32(out / "tone.wav", rate, tone)
    # Gain changes for the dynamic gain control input, one per audio chunk.
    gains = [-6.0, 0.0, -12.0, -3.0, 0.0, -6.0, -20.0, 0.0, -1.0, -6.0]
    (out / "control.jsonl").write_text("".join(f'{{"gain_db": {g}}}\n' for g in gains))
    # Two 4x2 RGB frames: primaries and greys.
    frames = [
        [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255),
         (0, 0, 0), (128, 128, 128), (255, 255, 0), (0, 255, 255)],
        [(10, 20, 30), (40, 50, 60), (70, 80, 90), (100, 110, 120),
         (130, 140, 150), (160, 170, 180), (190, 200, 210), (220, 230, 240)],
    ]
    ppm = b"".join(b"P6\n4 2\n255\n" + bytes(c for px in f for c in px) for f in frames)
    (out / "frames.ppm").write_bytes(ppm)
    # Calculator requests, one of them a division by zero (a per-chunk error).
    calc = [
        '{"op": "add", "operands": [1, 2, 3.5]}',
        '{"op": "sub", "operands": [10, 4]}',
        '{"op": "mul", "operands": [2, 3, 7]}',
        '{"op": "div", "operands": [1, 0]}',
        '{"op": "div", "operands": [22, 7]}',
    ]
    (out / "calc.jsonl").write_text("\n".join(calc) + "\n")
    # A 2x3 float32 tensor in .npy format.
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"
    header += " " * ((64 - (10 + len(header) + 1) % 64) % 64) + "\n"
    npy = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode()
    npy += struct.pack("<6f", 1, 2, 3, 4, 5, 6)
    (out / "tensor.npy").write_bytes(npy)
    (out / "lines.txt").write_text("hello flowplane\nstreaming typed data\n")
    (out / "blob.bin").write_bytes(bytes((i * 31 + 7) % 256 for i in range(150_000)))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(pathlib.Path(sys.argv[1]))
