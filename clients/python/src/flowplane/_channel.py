"""How both clients reach a server: the target's scheme decides TLS (`https://` is TLS,
`http://` or a bare HOST:PORT plaintext, as in every flowplane binary), the token travels
as `authorization: Bearer ...` call metadata, and message limits match the servers'.
Options are checked before any connection is made, and errors name the option.
"""

from __future__ import annotations

import os
import pathlib
from dataclasses import dataclass
from typing import Union

import grpc

# The servers' limits (crates/grpc): 4 MiB payload per chunk, 8 MiB per message.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024

PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class Endpoint:
    """A checked target: where to dial, whether with TLS, and the call metadata."""

    address: str
    credentials: grpc.ChannelCredentials | None
    metadata: tuple[tuple[str, str], ...]
    options: tuple[tuple[str, int | str], ...]


def _read(path: PathLike, option: str) -> bytes:
    try:
        return pathlib.Path(path).read_bytes()
    except OSError as failure:
        raise ValueError(f"{option}: cannot read {path}: {failure.strerror}") from None


def _valid_token(token: str, option: str) -> str:
    if not token or not all(33 <= ord(c) <= 126 for c in token):
        raise ValueError(f"{option}: a token is non-empty printable ascii without spaces")
    return token


def endpoint(
    target: str,
    *,
    token: str | None = None,
    token_file: PathLike | None = None,
    tls_ca: PathLike | None = None,
    tls_client_cert: PathLike | None = None,
    tls_client_key: PathLike | None = None,
) -> Endpoint:
    """Checks the connection options and turns them into what grpc needs."""
    if not target:
        raise ValueError("target: empty; give HOST:PORT, http://HOST:PORT or https://HOST:PORT")
    tls = target.startswith("https://")
    address = target.split("://", 1)[1] if "://" in target else target
    scheme = target.split("://", 1)[0] if "://" in target else ""
    if scheme not in ("", "http", "https"):
        raise ValueError(f"target: scheme {scheme!r} is not http or https")
    address = address.rstrip("/")
    if token is not None and token_file is not None:
        raise ValueError("token, token_file: give one or the other")
    if token_file is not None:
        token = _read(token_file, "token_file").decode("ascii", "replace").strip()
        token = _valid_token(token, f"token_file {token_file}")
    elif token is not None:
        token = _valid_token(token, "token")
    if (tls_client_cert is None) != (tls_client_key is None):
        raise ValueError("tls_client_cert, tls_client_key: give both or neither")
    credentials = None
    if tls:
        root = _read(tls_ca, "tls_ca") if tls_ca is not None else None
        chain = _read(tls_client_cert, "tls_client_cert") if tls_client_cert else None
        key = _read(tls_client_key, "tls_client_key") if tls_client_key else None
        credentials = grpc.ssl_channel_credentials(root, key, chain)
    elif tls_ca is not None or tls_client_cert is not None:
        raise ValueError(f"tls_ca, tls_client_cert: {target} is plaintext; use https://")
    metadata = (("authorization", f"Bearer {token}"),) if token is not None else ()
    options: tuple[tuple[str, int | str], ...] = (
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    )
    return Endpoint(address, credentials, metadata, options)


def sync_channel(e: Endpoint) -> grpc.Channel:
    if e.credentials is not None:
        return grpc.secure_channel(e.address, e.credentials, options=e.options)
    return grpc.insecure_channel(e.address, options=e.options)


def aio_channel(e: Endpoint) -> grpc.aio.Channel:
    if e.credentials is not None:
        return grpc.aio.secure_channel(e.address, e.credentials, options=e.options)
    return grpc.aio.insecure_channel(e.address, options=e.options)
