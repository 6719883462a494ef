#!/usr/bin/env python3
"""numpy audio through the audio-chain pipeline with the asyncio client: a 440 Hz tone
in 20 ms chunks goes in as float32 arrays, the gained audio comes back as arrays and the
levels as JSON, printed per chunk. Needs `pip install 'flowplane[numpy]'`.

Usage: audio_levels.py            (service: FLOWPLANE_PIPELINE, default 127.0.0.1:50071)
"""

from __future__ import annotations

import asyncio
import os
import pathlib

import numpy as np

import flowplane

MANIFEST = pathlib.Path(__file__).resolve().parents[1] / "pipelines" / "audio-chain.yaml"
RATE = 48000


async def main() -> None:
    t = np.arange(RATE // 5) / RATE
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    chunks = np.split(tone, 10)
    target = os.environ.get("FLOWPLANE_PIPELINE", "127.0.0.1:50071")
    async with flowplane.aio.Client(target) as client, client.session(MANIFEST) as s:

        async def send() -> None:
            for chunk in chunks:
                await s.send(flowplane.Audio.from_numpy(chunk, RATE), input="audio")
            await s.finish()

        sending = asyncio.create_task(send())
        async for result in s:
            if isinstance(result.payload, flowplane.Audio):
                samples = result.payload.to_numpy()
                peak = abs(samples).max()
                print(f"#{result.sequence} audio {samples.shape[0]} frames, peak {peak:.3f}")
            else:
                print(f"#{result.sequence} level {result.value['rms_dbfs']:.2f} dBFS")
        await sending


if __name__ == "__main__":
    asyncio.run(main())
