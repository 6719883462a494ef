"""Payload helpers, manifests and input files without a server: numpy round trips for
audio, video and tensors, proto conversion both ways, and errors that name the field."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

import flowplane
from conftest import EXAMPLES
from flowplane.data.v1 import data_pb2
from flowplane.files import read_file
from flowplane.payloads import from_proto, to_proto
from flowplane.streaming.v1 import streaming_pb2


def test_audio_from_numpy_int16_and_float32() -> None:
    stereo = np.array([[1, -1], [2, -2], [3, -3]], dtype=np.int16)
    audio = flowplane.Audio.from_numpy(stereo, 16000)
    assert (audio.format, audio.channels, audio.num_samples) == (flowplane.AudioFormat.I16LE, 2, 3)
    assert audio.samples == stereo.astype("<i2").tobytes()
    back = from_proto(to_proto(audio))
    assert back == audio
    assert isinstance(back, flowplane.Audio)
    assert np.array_equal(back.to_numpy(), stereo)
    mono = flowplane.Audio.from_numpy(np.linspace(-1, 1, 8, dtype=np.float32), 48000)
    assert (mono.format, mono.channels, mono.num_samples) == (flowplane.AudioFormat.F32LE, 1, 8)
    wire = to_proto(mono).audio
    assert (wire.format, wire.num_samples, wire.sample_rate) == (
        data_pb2.AUDIO_FORMAT_F32LE,
        8,
        48000,
    )


def test_audio_rejects_what_it_cannot_encode() -> None:
    with pytest.raises(ValueError, match="dtype float64"):
        flowplane.Audio.from_numpy(np.zeros(4), 8000)
    with pytest.raises(ValueError, match="do not divide into 3 channels"):
        flowplane.Audio.from_numpy(np.zeros(4, dtype=np.int16), 8000, channels=3)


def test_video_from_numpy_rgb_and_gray() -> None:
    rgb = np.arange(2 * 4 * 3, dtype=np.uint8).reshape(2, 4, 3)
    frame = flowplane.Video.from_numpy(rgb, frame_number=7)
    assert (frame.width, frame.height, frame.format, frame.frame_number) == (
        4,
        2,
        flowplane.PixelFormat.RGB24,
        7,
    )
    back = from_proto(to_proto(frame))
    assert isinstance(back, flowplane.Video) and np.array_equal(back.to_numpy(), rgb)
    gray = flowplane.Video.from_numpy(np.zeros((3, 5), dtype=np.uint8))
    assert gray.format == flowplane.PixelFormat.GRAY8 and gray.to_numpy().shape == (3, 5)
    with pytest.raises(ValueError, match="planar"):
        flowplane.Video(b"\0" * 6, 2, 2, flowplane.PixelFormat.I420).to_numpy()


def test_tensor_round_trip_keeps_dtype_and_shape() -> None:
    for dtype in (np.float32, np.float64, np.int64, np.uint8):
        array = np.arange(6, dtype=dtype).reshape(2, 3)
        tensor = flowplane.Tensor.from_numpy(array)
        back = from_proto(to_proto(tensor))
        assert isinstance(back, flowplane.Tensor) and back.shape == (2, 3)
        assert back.to_numpy().dtype == array.dtype and np.array_equal(back.to_numpy(), array)
    big_endian = np.arange(3, dtype=">f4")
    assert np.array_equal(flowplane.Tensor.from_numpy(big_endian).to_numpy(), big_endian)
    with pytest.raises(ValueError, match="complex128"):
        flowplane.Tensor.from_numpy(np.zeros(2, dtype=np.complex128))


def test_json_text_binary_and_an_empty_buffer() -> None:
    assert from_proto(to_proto(flowplane.Json({"a": [1, 2.5]}))) == flowplane.Json({"a": [1, 2.5]})
    assert to_proto(flowplane.Json.from_text('{"a":  1}')).json.json == '{"a":  1}'
    assert from_proto(to_proto(flowplane.Text("hi", "en"))) == flowplane.Text("hi", "en")
    assert from_proto(to_proto(flowplane.Binary(b"\x00\x01", "x/y"))) == flowplane.Binary(
        b"\x00\x01", "x/y"
    )
    with pytest.raises(ValueError, match="not valid json"):
        flowplane.Json.from_text("{nope")
    with pytest.raises(ValueError, match=r"buffer\.payload"):
        from_proto(data_pb2.DataBuffer())
    with pytest.raises(ValueError, match=r"buffer\.audio\.format"):
        from_proto(data_pb2.DataBuffer(audio=data_pb2.AudioBuffer(samples=b"\0\0")))


def test_manifests_from_a_file_a_dict_or_the_proto() -> None:
    path = EXAMPLES / "pipelines" / "audio-chain.yaml"
    from_file = flowplane.load_manifest(path)
    assert [n.id for n in from_file.nodes] == ["resample", "gain", "level"]
    assert from_file.nodes[0].params["target_rate"] == 16000
    assert flowplane.load_manifest(str(path)) == from_file
    assert flowplane.load_manifest(from_file) is from_file
    from_dict = flowplane.load_manifest({"name": "x", "nodes": [{"id": "a", "processor": "p"}]})
    assert from_dict.nodes[0].processor == "p"


def test_placement_reads_as_manifests_write_it_and_as_the_proto_json_does() -> None:
    nodes = [
        {"id": "a", "processor": "p", "placement": "local"},
        {"id": "b", "processor": "p", "placement": "PLACEMENT_AUTO"},
        {"id": "c", "processor": "p"},
    ]
    placed = flowplane.load_manifest({"name": "x", "nodes": nodes})
    assert [n.placement for n in placed.nodes] == [
        streaming_pb2.PLACEMENT_LOCAL,
        streaming_pb2.PLACEMENT_AUTO,
        streaming_pb2.PLACEMENT_UNSPECIFIED,
    ]
    with pytest.raises(flowplane.ManifestError, match="nearby"):
        flowplane.load_manifest({"nodes": [{"id": "a", "processor": "p", "placement": "nearby"}]})


def test_manifest_errors_name_the_file_and_the_field(tmp_path: pathlib.Path) -> None:
    with pytest.raises(flowplane.ManifestError, match="nodez"):
        flowplane.load_manifest({"nodez": []})
    with pytest.raises(flowplane.ManifestError, match="cannot read manifest"):
        flowplane.load_manifest(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("nodes: [unclosed")
    with pytest.raises(flowplane.ManifestError, match=r"bad\.yaml is not valid yaml"):
        flowplane.load_manifest(bad)
    with pytest.raises(TypeError, match="manifest: int"):
        flowplane.load_manifest(3)  # type: ignore[arg-type]


def test_input_files_are_cut_like_the_cli_cuts_them(samples: pathlib.Path) -> None:
    tone = read_file(samples / "tone.wav")
    assert len(tone) == 10 and all(
        isinstance(a, flowplane.Audio) and a.num_samples == 960 for a in tone
    )
    frames = read_file(samples / "frames.ppm")
    assert [
        (f.width, f.height, f.frame_number) for f in frames if isinstance(f, flowplane.Video)
    ] == [
        (4, 2, 0),
        (4, 2, 1),
    ]
    blob = read_file(samples / "blob.bin")
    assert [len(b.data) for b in blob if isinstance(b, flowplane.Binary)] == [65536, 65536, 18928]
    (tensor,) = read_file(samples / "tensor.npy")
    assert isinstance(tensor, flowplane.Tensor)
    assert tensor.to_numpy().tolist() == [[1, 2, 3], [4, 5, 6]]
    assert [p.value for p in read_file(samples / "calc.jsonl") if isinstance(p, flowplane.Json)][
        3
    ] == {
        "op": "div",
        "operands": [1, 0],
    }


def test_a_broken_input_file_is_named(tmp_path: pathlib.Path) -> None:
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF0000WAVE")
    with pytest.raises(ValueError, match=r"broken\.wav: not a valid \.wav input: no data chunk"):
        read_file(broken)
