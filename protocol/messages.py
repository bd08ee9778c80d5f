"""Messages on the wire: msgspec Structs, msgpack-encoded (JSON on human-facing event subjects).

Rules that keep old and new pods talking: every new field gets a default, a field's type never
changes, unknown fields are ignored (msgspec's default for Structs).
"""

from __future__ import annotations

import msgspec

from protocol import PROTOCOL_VERSION
from protocol.errors import ErrorCode

VERSION_HEADER = "CP-Protocol"


def headers() -> dict[str, str]:
    """Headers every message carries."""
    return {VERSION_HEADER: str(PROTOCOL_VERSION)}


LAYOUT_STORE = "store"  # <root>/<algo>/<ab>/<cd>/<hex>: a content store
LAYOUT_WORKSPACE = "workspace"  # <root>/<InputRef.path>: a MajorDomo's project, files the user may edit


class LocalAccess(msgspec.Struct, frozen=True):
    """How a puller on the same host may read an owner's files directly instead of over SFTP."""

    host: str  # same-host identity: equal only for processes that see the same files
    root: str  # absolute, canonical directory the layout is relative to
    layout: str = LAYOUT_STORE
    linkable: bool = False  # immutable store entries that a puller on the same filesystem may hardlink


class SftpEndpoint(msgspec.Struct, frozen=True):
    """Where a pod serves its artefacts read-only, and the host key a client must pin."""

    host: str
    port: int
    host_key: str  # OpenSSH public key line of the server's host key
    fingerprint: str = ""  # SHA256 fingerprint, for humans
    local: LocalAccess | None = None  # the same-host shortcut; None: only SFTP


class Pod(msgspec.Struct, frozen=True):
    """A pod that may own artefacts."""

    id: str
    sftp: SftpEndpoint


class InputRef(msgspec.Struct, frozen=True):
    """One input a step needs: where it goes in the task dir, its bytes, and who has them."""

    path: str
    digest: str
    size: int
    owners: list[str] = []  # pod ids, in order of preference
    executable: bool = False  # the store keeps bytes only; the mode bit travels here


class OutputRef(msgspec.Struct, frozen=True):
    path: str
    digest: str
    size: int
    executable: bool = False
    cutoff: str = ""  # digest of the normalised bytes, when a normaliser applies


class StepRequest(msgspec.Struct, frozen=True, tag="step"):
    """Run one step. Sent by request/reply to one chosen chef; the reply is a StepResult."""

    step_id: str
    action_key: str
    kind: str
    command: str  # run by `sh -c` in the task dir
    inputs: list[InputRef]
    outputs: list[str]
    pods: list[Pod]  # endpoints of every owner named in inputs
    env: dict[str, str] = {}
    tools: list[str] = []  # tools the step needs beyond its kind's own
    depfile: str = ""  # a Makefile-syntax depfile the command writes, read for discovered inputs
    recorder: bool = False  # read LaTeX `-recorder` .fls files for discovered inputs
    normalise: dict[str, str] = {}  # output path -> normaliser spec; its digest decides early cutoff
    timeout_s: float = 3600.0
    build_id: str = ""
    attempt: int = 1


class StepResult(msgspec.Struct, frozen=True, tag="result"):
    step_id: str
    action_key: str
    chef_id: str
    code: ErrorCode
    exit_status: int = 0
    outputs: list[OutputRef] = []
    discovered: list[str] = []  # project-relative paths the step read beyond its declared inputs
    log: str = ""  # combined stdout/stderr, tail-truncated
    message: str = ""  # one sentence for the user when code is not ok
    duration_s: float = 0.0
    bytes_pulled: int = 0  # over SFTP
    files_pulled: int = 0
    attempt: int = 1
    missing: list[str] = []  # digests no owner could serve (code input_unavailable)
    bad_owners: dict[str, list[str]] = {}  # digest -> pods that served wrong bytes for it
    files_local: int = 0  # inputs taken from a same-host owner's files (hardlinked or copied), not the network
    bytes_local: int = 0

    @property
    def ok(self) -> bool:
        return self.code == ErrorCode.OK


class ChefInfo(msgspec.Struct, frozen=True):
    """What a chef advertises in the chefs bucket and in its micro-service metadata."""

    id: str
    kinds: list[str]
    tools: dict[str, str]  # tool name -> version identity
    sftp: SftpEndpoint
    slots: int
    host: str = ""
    started_at: float = 0.0
    heartbeat_at: float = 0.0
    running: int = 0
    store_bytes: int = 0
    sandbox: str = ""  # "bwrap" or "none"
    protocol: int = PROTOCOL_VERSION


class PullRequest(msgspec.Struct, frozen=True, tag="pull"):
    """Ask a chef to make sure it holds these artefacts (used to pass ownership on)."""

    inputs: list[InputRef]
    pods: list[Pod]


class PullResult(msgspec.Struct, frozen=True, tag="pulled"):
    chef_id: str
    held: list[str]  # digests now in the chef's store
    failed: dict[str, str] = {}  # digest -> reason


class VerifyRequest(msgspec.Struct, frozen=True, tag="verify"):
    """Someone received wrong bytes from this chef for these digests: check its copies."""

    digests: list[str]


class VerifyResult(msgspec.Struct, frozen=True, tag="verified"):
    chef_id: str
    dropped: list[str] = []  # digests whose stored bytes were wrong, now quarantined


class Ownership(msgspec.Struct, frozen=True):
    """Who holds one digest; stored in the owners bucket and updated by compare-and-swap."""

    size: int
    owners: list[str]


class Event(msgspec.Struct, frozen=True):
    """A state change anyone can watch, published as JSON on `<fed>.events.<kind>`."""

    kind: str  # step.queued, step.placed, step.running, step.done, step.failed, step.cached, chef.joined, ...
    at: float
    source: str  # who published it: a chef id or "majordomo:<pod>"
    build_id: str = ""
    step_id: str = ""
    chef_id: str = ""
    detail: dict[str, object] = {}


_msgpack_encoder = msgspec.msgpack.Encoder()
_json_encoder = msgspec.json.Encoder()


def encode(message: msgspec.Struct) -> bytes:
    return _msgpack_encoder.encode(message)


def encode_json(message: msgspec.Struct) -> bytes:
    return _json_encoder.encode(message)


def decoder(kind: type) -> msgspec.msgpack.Decoder:
    return msgspec.msgpack.Decoder(kind)
