"""Typed payloads: what a chunk carries in and a result carries out, as Python values
instead of `DataBuffer` plumbing. numpy is optional: only `from_numpy`/`to_numpy` import
it, and they say how to install it when it is missing.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

from flowplane.data.v1 import data_pb2

if TYPE_CHECKING:
    import numpy.typing as npt

__all__ = [
    "Audio",
    "AudioFormat",
    "Binary",
    "Json",
    "Payload",
    "PixelFormat",
    "Tensor",
    "TensorDtype",
    "Text",
    "from_proto",
    "to_proto",
]


class AudioFormat(enum.IntEnum):
    """Sample encoding of audio (values of `flowplane.data.v1.AudioFormat`)."""

    F32LE = data_pb2.AUDIO_FORMAT_F32LE
    I16LE = data_pb2.AUDIO_FORMAT_I16LE
    I32LE = data_pb2.AUDIO_FORMAT_I32LE


class PixelFormat(enum.IntEnum):
    """Pixel layout of a video frame (values of `flowplane.data.v1.PixelFormat`)."""

    RGB24 = data_pb2.PIXEL_FORMAT_RGB24
    RGBA32 = data_pb2.PIXEL_FORMAT_RGBA32
    GRAY8 = data_pb2.PIXEL_FORMAT_GRAY8
    I420 = data_pb2.PIXEL_FORMAT_I420
    NV12 = data_pb2.PIXEL_FORMAT_NV12


class TensorDtype(enum.IntEnum):
    """Element type of a tensor (values of `flowplane.data.v1.TensorDtype`)."""

    F32 = data_pb2.TENSOR_DTYPE_F32
    F64 = data_pb2.TENSOR_DTYPE_F64
    F16 = data_pb2.TENSOR_DTYPE_F16
    I64 = data_pb2.TENSOR_DTYPE_I64
    I32 = data_pb2.TENSOR_DTYPE_I32
    I8 = data_pb2.TENSOR_DTYPE_I8
    U8 = data_pb2.TENSOR_DTYPE_U8


_SAMPLE_BYTES = {AudioFormat.F32LE: 4, AudioFormat.I16LE: 2, AudioFormat.I32LE: 4}
_AUDIO_NUMPY = {AudioFormat.F32LE: "<f4", AudioFormat.I16LE: "<i2", AudioFormat.I32LE: "<i4"}
_TENSOR_NUMPY = {
    TensorDtype.F32: "<f4",
    TensorDtype.F64: "<f8",
    TensorDtype.F16: "<f2",
    TensorDtype.I64: "<i8",
    TensorDtype.I32: "<i4",
    TensorDtype.I8: "|i1",
    TensorDtype.U8: "|u1",
}
_PIXEL_CHANNELS = {PixelFormat.RGB24: 3, PixelFormat.RGBA32: 4, PixelFormat.GRAY8: 1}


def _numpy() -> Any:
    try:
        import numpy
    except ImportError as missing:
        raise ImportError(
            "numpy is needed for from_numpy/to_numpy: pip install 'flowplane[numpy]'"
        ) from missing
    return numpy


def _enum_of(kind: type[enum.IntEnum], value: int, what: str) -> Any:
    try:
        return kind(value)
    except ValueError:
        raise ValueError(f"{what}: unknown or unset value {value}") from None


@dataclass(frozen=True)
class Json:
    """One JSON document. `text`, when given, is sent verbatim instead of `json.dumps(value)`
    (results keep the text they came with)."""

    value: Any
    schema_hint: str = ""
    text: str | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_text(cls, text: str, schema_hint: str = "") -> Json:
        """A document from its JSON text; raises ValueError naming the problem if invalid."""
        try:
            value = json.loads(text)
        except json.JSONDecodeError as bad:
            raise ValueError(f"not valid json: {bad}") from None
        return cls(value, schema_hint, text)

    def to_text(self) -> str:
        return self.text if self.text is not None else json.dumps(self.value)


@dataclass(frozen=True)
class Text:
    """UTF-8 text, with an optional BCP 47 language tag."""

    text: str
    language: str = ""


@dataclass(frozen=True)
class Binary:
    """Opaque bytes, with an optional media type."""

    data: bytes
    mime_type: str = ""


@dataclass(frozen=True)
class Audio:
    """Interleaved PCM samples."""

    samples: bytes
    sample_rate: int
    channels: int = 1
    format: AudioFormat = AudioFormat.F32LE

    @property
    def num_samples(self) -> int:
        """Samples per channel (frames)."""
        return len(self.samples) // (_SAMPLE_BYTES[self.format] * max(self.channels, 1))

    @classmethod
    def from_numpy(
        cls, samples: npt.NDArray[Any], sample_rate: int, channels: int | None = None
    ) -> Audio:
        """Audio from an int16, int32 or float32 array: 1-D (interleaved, `channels` of them,
        1 by default) or 2-D (frames, channels)."""
        np_ = _numpy()
        array = np_.asarray(samples)
        formats = {
            "int16": AudioFormat.I16LE,
            "int32": AudioFormat.I32LE,
            "float32": AudioFormat.F32LE,
        }
        fmt = formats.get(array.dtype.name)
        if fmt is None:
            raise ValueError(f"audio samples: dtype {array.dtype} is not int16, int32 or float32")
        if array.ndim == 2:
            if channels is not None and channels != array.shape[1]:
                raise ValueError(
                    f"audio channels: {channels} given, the array has {array.shape[1]}"
                )
            channels = int(array.shape[1])
        elif array.ndim != 1:
            raise ValueError(
                f"audio samples: {array.ndim}-D array, expected 1-D or 2-D (frames, channels)"
            )
        channels = channels or 1
        if array.size % channels:
            raise ValueError(
                f"audio samples: {array.size} samples do not divide into {channels} channels"
            )
        data = np_.ascontiguousarray(array, dtype=_AUDIO_NUMPY[fmt]).tobytes()
        return cls(data, sample_rate, channels, fmt)

    def to_numpy(self) -> npt.NDArray[Any]:
        """The samples as a (frames, channels) array of the matching dtype."""
        np_ = _numpy()
        flat = np_.frombuffer(self.samples, dtype=_AUDIO_NUMPY[self.format])
        result: npt.NDArray[Any] = flat.reshape(-1, max(self.channels, 1))
        return result


@dataclass(frozen=True)
class Video:
    """One raw picture, rows top to bottom, no padding."""

    pixels: bytes
    width: int
    height: int
    format: PixelFormat = PixelFormat.RGB24
    frame_number: int = 0

    @classmethod
    def from_numpy(cls, frame: npt.NDArray[Any], frame_number: int = 0) -> Video:
        """A frame from a uint8 array: (height, width) is GRAY8, (height, width, 3) RGB24,
        (height, width, 4) RGBA32."""
        np_ = _numpy()
        array = np_.asarray(frame)
        if array.dtype.name != "uint8":
            raise ValueError(f"video frame: dtype {array.dtype} is not uint8")
        if array.ndim == 2:
            fmt = PixelFormat.GRAY8
        elif array.ndim == 3 and array.shape[2] in (3, 4):
            fmt = PixelFormat.RGB24 if array.shape[2] == 3 else PixelFormat.RGBA32
        else:
            raise ValueError(
                f"video frame: shape {array.shape}, expected (h, w), (h, w, 3) or (h, w, 4)"
            )
        height, width = int(array.shape[0]), int(array.shape[1])
        return cls(np_.ascontiguousarray(array).tobytes(), width, height, fmt, frame_number)

    def to_numpy(self) -> npt.NDArray[Any]:
        """The pixels as (height, width) for GRAY8, (height, width, channels) for RGB24 and
        RGBA32; planar formats (I420, NV12) have no such shape and raise ValueError."""
        channels = _PIXEL_CHANNELS.get(self.format)
        if channels is None:
            raise ValueError(f"video frame: {self.format.name} is planar, read .pixels instead")
        np_ = _numpy()
        flat = np_.frombuffer(self.pixels, dtype="|u1")
        shape = (self.height, self.width) if channels == 1 else (self.height, self.width, channels)
        result: npt.NDArray[Any] = flat.reshape(shape)
        return result


@dataclass(frozen=True)
class Tensor:
    """A dense row-major little-endian tensor."""

    data: bytes
    shape: tuple[int, ...]
    dtype: TensorDtype = TensorDtype.F32

    @classmethod
    def from_numpy(cls, array: npt.NDArray[Any]) -> Tensor:
        """A tensor from an array of float16/32/64, int8/32/64 or uint8 (copied to C order,
        little endian)."""
        np_ = _numpy()
        a = np_.asarray(array)
        dtypes = {
            "float32": TensorDtype.F32,
            "float64": TensorDtype.F64,
            "float16": TensorDtype.F16,
            "int64": TensorDtype.I64,
            "int32": TensorDtype.I32,
            "int8": TensorDtype.I8,
            "uint8": TensorDtype.U8,
        }
        dtype = dtypes.get(a.dtype.name)
        if dtype is None:
            raise ValueError(f"tensor: dtype {a.dtype} has no flowplane TensorDtype")
        data = np_.ascontiguousarray(a, dtype=_TENSOR_NUMPY[dtype]).tobytes()
        return cls(data, tuple(int(d) for d in a.shape), dtype)

    def to_numpy(self) -> npt.NDArray[Any]:
        """The tensor as an array of its dtype and shape."""
        np_ = _numpy()
        flat = np_.frombuffer(self.data, dtype=_TENSOR_NUMPY[self.dtype])
        result: npt.NDArray[Any] = flat.reshape(self.shape)
        return result


Payload = Union[Json, Text, Binary, Audio, Video, Tensor]  # noqa: UP007 (a runtime alias)


def to_proto(payload: Payload, metadata: Mapping[str, str] | None = None) -> data_pb2.DataBuffer:
    """The `DataBuffer` carrying `payload`."""
    buffer = data_pb2.DataBuffer(metadata=dict(metadata or {}))
    if isinstance(payload, Json):
        buffer.json.CopyFrom(
            data_pb2.JsonData(json=payload.to_text(), schema_hint=payload.schema_hint)
        )
    elif isinstance(payload, Text):
        buffer.text.CopyFrom(data_pb2.TextData(text=payload.text, language=payload.language))
    elif isinstance(payload, Binary):
        buffer.binary.CopyFrom(data_pb2.BinaryData(data=payload.data, mime_type=payload.mime_type))
    elif isinstance(payload, Audio):
        buffer.audio.CopyFrom(
            data_pb2.AudioBuffer(
                samples=payload.samples,
                sample_rate=payload.sample_rate,
                channels=payload.channels,
                format=data_pb2.AudioFormat.ValueType(payload.format),
                num_samples=payload.num_samples,
            )
        )
    elif isinstance(payload, Video):
        buffer.video.CopyFrom(
            data_pb2.VideoFrame(
                pixels=payload.pixels,
                width=payload.width,
                height=payload.height,
                format=data_pb2.PixelFormat.ValueType(payload.format),
                frame_number=payload.frame_number,
            )
        )
    elif isinstance(payload, Tensor):
        buffer.tensor.CopyFrom(
            data_pb2.TensorBuffer(
                data=payload.data,
                shape=list(payload.shape),
                dtype=data_pb2.TensorDtype.ValueType(payload.dtype),
            )
        )
    else:
        raise TypeError(
            f"payload: {type(payload).__name__} is not Json, Text, Binary, Audio, Video or Tensor"
        )
    return buffer


def from_proto(buffer: data_pb2.DataBuffer) -> Payload:
    """The payload a `DataBuffer` carries; ValueError naming the field if it carries none."""
    kind = buffer.WhichOneof("payload")
    if kind == "json":
        text = buffer.json.json
        try:
            value: Any = json.loads(text)
        except json.JSONDecodeError:
            value = text  # kept as text, as the CLI shows it
        return Json(value, buffer.json.schema_hint, text)
    if kind == "text":
        return Text(buffer.text.text, buffer.text.language)
    if kind == "binary":
        return Binary(buffer.binary.data, buffer.binary.mime_type)
    if kind == "audio":
        a = buffer.audio
        fmt = _enum_of(AudioFormat, a.format, "buffer.audio.format")
        return Audio(a.samples, a.sample_rate, a.channels, fmt)
    if kind == "video":
        v = buffer.video
        fmt = _enum_of(PixelFormat, v.format, "buffer.video.format")
        return Video(v.pixels, v.width, v.height, fmt, v.frame_number)
    if kind == "tensor":
        t = buffer.tensor
        dtype = _enum_of(TensorDtype, t.dtype, "buffer.tensor.dtype")
        return Tensor(t.data, tuple(t.shape), dtype)
    raise ValueError("buffer.payload: no payload set")
