"""The action key: the digest of everything that determines a step's outputs."""

from __future__ import annotations

import hashlib

import msgspec

from protocol import PROTOCOL_VERSION

_enc = msgspec.msgpack.Encoder()
KEY_FORMAT = 1  # bump when the key's contents change, so old results are never reused by mistake


def action_key(
    *,
    kind: str,
    command: str,
    env: tuple[tuple[str, str], ...],
    toolchain: dict[str, str],
    inputs: dict[str, str],
    outputs: tuple[str, ...],
    normalise: dict[str, str] | None = None,
) -> str:
    """`sha256:<hex>` over the expanded command, kind, tool identities, environment, sorted
    (path, digest) inputs (discovered ones included) and the output paths."""
    blob = _enc.encode([
        KEY_FORMAT, PROTOCOL_VERSION, kind, command, sorted(env), sorted(toolchain.items()),
        sorted(inputs.items()), list(outputs), sorted((normalise or {}).items()),
    ])
    return "sha256:" + hashlib.sha256(blob).hexdigest()
