"""Errors as exceptions: every failed call or session, and every per-chunk error a session
reports, becomes a `FlowplaneError` carrying the gRPC code and what the server's standard
status details say (reason, node, sequence, field). Decoding never hides the original
message: whatever the details hold, `message` is the server's own text.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, cast

import grpc
import grpc_status.rpc_status
from google.rpc import error_details_pb2, status_pb2

from flowplane.common.v1 import common_pb2

__all__ = ["ChunkError", "FlowplaneError", "ManifestError", "code_from_number"]

_CODES: dict[int, grpc.StatusCode] = {code.value[0]: code for code in grpc.StatusCode}


def code_from_number(number: int) -> grpc.StatusCode:
    """The `grpc.StatusCode` of a numeric google.rpc.Code (UNKNOWN for numbers it lacks)."""
    return _CODES.get(number, grpc.StatusCode.UNKNOWN)


class FlowplaneError(Exception):
    """A failed call or session.

    `code` is the gRPC status code; `reason` the machine-readable cause (UPPER_SNAKE_CASE,
    empty when the failure came from the transport rather than a flowplane server);
    `node`, `sequence` and `field` name the pipeline node, chunk and request field the
    error concerns, or are None.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str = "",
        node: str | None = None,
        sequence: int | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.node = node
        self.sequence = sequence
        self.field = field

    def __str__(self) -> str:
        cause = f"{self.code.name} {self.reason}" if self.reason else self.code.name
        return f"{cause}: {self.message}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code.name}, reason={self.reason!r}, "
            f"node={self.node!r}, sequence={self.sequence!r}, field={self.field!r}, "
            f"message={self.message!r})"
        )

    @classmethod
    def from_detail(cls, detail: common_pb2.ErrorDetail) -> FlowplaneError:
        """The error a `flowplane.common.v1.ErrorDetail` describes (stream error arms)."""
        return cls(
            code_from_number(detail.code),
            detail.message,
            reason=detail.reason,
            node=detail.node_id or None,
            sequence=detail.sequence if detail.HasField("sequence") else None,
            field=detail.field or None,
        )


class ChunkError(FlowplaneError):
    """One input chunk failed; the session goes on. Raised from a session's iterator,
    which can be iterated again to get the results after it."""


class ManifestError(ValueError):
    """A manifest that cannot be read or does not fit the PipelineManifest model."""


class _StatusCall(Protocol):
    """What a failed sync call, and `grpc.aio.AioRpcError`, both offer."""

    def code(self) -> grpc.StatusCode: ...
    def details(self) -> str | None: ...
    def trailing_metadata(self) -> Any: ...


def from_rpc_error(error: BaseException) -> FlowplaneError:
    """The `FlowplaneError` for a `grpc.RpcError` (sync or aio), from its standard details:
    `google.rpc.ErrorInfo`, `google.rpc.BadRequest` and `flowplane.common.v1.ErrorDetail`,
    the last one winning where they overlap."""
    call = cast(_StatusCall, error)
    code = call.code()
    message = call.details() or ""
    try:
        # grpc_status reads grpc-status-details-bin and checks it against the call's code.
        status: status_pb2.Status | None = grpc_status.rpc_status.from_call(cast(grpc.Call, call))
    except ValueError:
        status = None
    reason = ""
    node: str | None = None
    sequence: int | None = None
    field: str | None = None
    if status is not None:
        info = error_details_pb2.ErrorInfo()
        bad = error_details_pb2.BadRequest()
        detail = common_pb2.ErrorDetail()
        for packed in status.details:
            if packed.Is(info.DESCRIPTOR):
                packed.Unpack(info)
                reason = info.reason
                node, sequence, field = _from_metadata(info.metadata, node, sequence, field)
            elif packed.Is(bad.DESCRIPTOR):
                packed.Unpack(bad)
                if bad.field_violations:
                    field = bad.field_violations[0].field or field
            elif packed.Is(detail.DESCRIPTOR):
                packed.Unpack(detail)
                reason = detail.reason or reason
                node = detail.node_id or node
                if detail.HasField("sequence"):
                    sequence = detail.sequence
                field = detail.field or field
    return FlowplaneError(code, message, reason=reason, node=node, sequence=sequence, field=field)


def _from_metadata(
    metadata: Mapping[str, str], node: str | None, sequence: int | None, field: str | None
) -> tuple[str | None, int | None, str | None]:
    raw = metadata.get("sequence")
    if raw is not None and raw.isdigit():
        sequence = int(raw)
    return metadata.get("node_id") or node, sequence, metadata.get("field") or field
