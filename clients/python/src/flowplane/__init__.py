"""flowplane: a typed client for streaming typed data through flowplane pipelines.

`flowplane.Client` blocks; `flowplane.aio.Client` is the asyncio twin. Both own a channel
that many sessions share, raise `FlowplaneError` (with code, reason, node, sequence and
field) for every failure, and never buffer without bound.
"""

from flowplane import aio
from flowplane._protocol import Inputs, Metrics, NodeAssignment, Outcome, Problem, Result
from flowplane.client import Client, ControlPlane, Session, Watch
from flowplane.errors import ChunkError, FlowplaneError, ManifestError
from flowplane.manifest import ManifestLike, load_manifest
from flowplane.payloads import (
    Audio,
    AudioFormat,
    Binary,
    Json,
    Payload,
    PixelFormat,
    Tensor,
    TensorDtype,
    Text,
    Video,
)
from flowplane.registry import Component, WatchEvent

__all__ = [
    "Audio",
    "AudioFormat",
    "Binary",
    "ChunkError",
    "Client",
    "Component",
    "ControlPlane",
    "FlowplaneError",
    "Inputs",
    "Json",
    "ManifestError",
    "ManifestLike",
    "Metrics",
    "NodeAssignment",
    "Outcome",
    "Payload",
    "PixelFormat",
    "Problem",
    "Result",
    "Session",
    "Tensor",
    "TensorDtype",
    "Text",
    "Video",
    "Watch",
    "WatchEvent",
    "aio",
    "load_manifest",
]
