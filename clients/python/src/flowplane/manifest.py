"""Pipeline manifests from what a Python caller has at hand: a YAML or JSON file, a dict of
the same shape (`examples/pipelines/*.yaml`), or the `PipelineManifest` proto itself. Field
names are the proto's; an unknown one is an error naming it, never silently dropped.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping
from typing import Any, Union

import yaml
from google.protobuf import json_format

from flowplane.errors import ManifestError
from flowplane.streaming.v1 import streaming_pb2

__all__ = ["ManifestLike", "load_manifest"]

ManifestLike = Union[str, "os.PathLike[str]", Mapping[str, Any], streaming_pb2.PipelineManifest]
"""A path to a YAML/JSON manifest, a dict of its contents, or the proto."""


def load_manifest(manifest: ManifestLike) -> streaming_pb2.PipelineManifest:
    """The `PipelineManifest` for `manifest`; a `str` is a path, not YAML text."""
    if isinstance(manifest, streaming_pb2.PipelineManifest):
        return manifest
    if isinstance(manifest, Mapping):
        return _from_dict(manifest, "manifest")
    if isinstance(manifest, (str, os.PathLike)):
        path = pathlib.Path(manifest)
        try:
            text = path.read_text()
        except OSError as failure:
            raise ManifestError(f"cannot read manifest {path}: {failure.strerror}") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as bad:
            raise ManifestError(f"manifest {path} is not valid yaml or json: {bad}") from None
        if not isinstance(data, Mapping):
            raise ManifestError(f"manifest {path}: the top level is not a mapping")
        return _from_dict(data, f"manifest {path}")
    raise TypeError(
        f"manifest: {type(manifest).__name__} is not a path, a dict or a PipelineManifest"
    )


_PLACEMENTS = {"remote": "PLACEMENT_REMOTE", "local": "PLACEMENT_LOCAL", "auto": "PLACEMENT_AUTO"}


def _with_placements(data: Mapping[str, Any]) -> dict[str, Any]:
    """`placement: local` as manifests write it, `PLACEMENT_LOCAL` as the proto's JSON does."""
    data = dict(data)
    nodes = data.get("nodes")
    if isinstance(nodes, list):
        data["nodes"] = [
            {**node, "placement": _PLACEMENTS[node["placement"]]}
            if isinstance(node, Mapping) and node.get("placement") in _PLACEMENTS
            else node
            for node in nodes
        ]
    return data


def _from_dict(data: Mapping[str, Any], what: str) -> streaming_pb2.PipelineManifest:
    try:
        return json_format.ParseDict(_with_placements(data), streaming_pb2.PipelineManifest())
    except json_format.ParseError as bad:
        raise ManifestError(f"{what}: {bad}") from None
