"""SSH keys for the artefact transfer: pod identity keys, and the trust objects built from public key lines.

Every pod has one ed25519 key: it is the host key of its artefact server and the client key it pulls with.
Public keys travel as OpenSSH lines (`ssh-ed25519 AAAA... comment`), e.g. in `SftpEndpoint.host_key`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from artefacts.lazymodule import LazyModule

if TYPE_CHECKING:
    import asyncssh
else:
    asyncssh = LazyModule("asyncssh")  # only loading a key for SSH, or trust objects, need it


def load_or_create_key(path: Path, comment: str = "computepods") -> asyncssh.SSHKey:
    """Load the private key at `path`, or make a new ed25519 key there first (`ensure_key`)."""
    fields = ensure_key(path, comment).split(maxsplit=2)
    key = asyncssh.read_private_key(str(path))
    key.set_comment(fields[2] if len(fields) > 2 else None)  # the .pub line's: cryptography writes none in the file
    return key


def ensure_key(path: Path, comment: str = "computepods") -> str:
    """The OpenSSH public key line of the key at `path`, made (mode 0600, `<path>.pub` beside it)
    if missing. Blocking: call it at start-up or in a thread.

    No asyncssh: a process that never speaks SFTP does not need its ~90 ms import. The key is made
    and read with `cryptography` (asyncssh's own backend, ~15 ms), and the line comes from
    `<path>.pub` when it exists; whoever loads the private key for SSH later checks that it
    matches (`matches_public_line`). Writes are atomic (temp file + rename), so a crash never
    leaves a truncated key that would change the pod's identity on the next start. Two processes
    making it at once (a first build and the resident federation it starts) end up with one key:
    the first to link it in place wins, the other reads the winner's."""
    path = Path(path)
    pub = Path(f"{path}.pub")
    if not path.exists():
        private, line = _new_key(comment)
        path.parent.mkdir(parents=True, exist_ok=True)
        if _atomic_write(path, private, 0o600, replace=False):
            _atomic_write(pub, line.encode() + b"\n", 0o644)
            return line
    if pub.exists():
        line = pub.read_text().strip()
        check_public_key_line(line, str(pub))
        return line
    line = _public_line_of(path, comment)  # a key given without its .pub, or a race's winner still writing it
    _atomic_write(pub, line.encode() + b"\n", 0o644)
    return line


def _new_key(comment: str) -> tuple[bytes, str]:
    """A new ed25519 key: (OpenSSH private key file bytes, public key line)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    return private, _openssh_line(key.public_key(), comment)


def _public_line_of(path: Path, comment: str) -> str:
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:  # not an OpenSSH private key, or one with a passphrase
        raise ValueError(f"{path}: not a usable OpenSSH private key ({exc})") from None
    return _openssh_line(key.public_key(), comment)


def _openssh_line(public_key: Any, comment: str) -> str:
    """`type base64 comment` of a `cryptography` public key."""
    from cryptography.hazmat.primitives import serialization

    blob = public_key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return f"{blob.decode()} {comment}"


def _atomic_write(path: Path, data: bytes, mode: int, *, replace: bool = True) -> bool:
    """Write `path` whole or not at all; with `replace=False`, only if it does not exist yet (a
    hard link, which fails if the name is taken). Returns whether this call wrote it."""
    # mkstemp creates the file 0600, so the private key is never readable by others, not even briefly.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        if replace:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        Path(tmp).unlink(missing_ok=True)


def public_key_line(key: asyncssh.SSHKey) -> str:
    """The OpenSSH public key line of a key (private or public), without trailing newline."""
    return key.export_public_key("openssh").decode().strip()


def fingerprint(key: asyncssh.SSHKey | str) -> str:
    """`SHA256:...` fingerprint of a key or of an OpenSSH public key line, as `ssh-keygen -l` shows it."""
    if isinstance(key, str):
        blob = check_public_key_line(key)
        return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return key.get_fingerprint("sha256")


def check_public_key_line(line: str, where: str = "") -> bytes:
    """The key blob of an OpenSSH public key line (`type base64 [comment]`); ValueError naming
    `where` if the line is not one. The blob's own type must be the line's: a checked line is
    one asyncssh parses later, without importing it now."""
    fields = line.split()
    context = f"{where}: " if where else ""
    try:
        if len(fields) < 2:
            raise ValueError
        blob = base64.b64decode(fields[1], validate=True)
        size = int.from_bytes(blob[:4], "big")
        if blob[4:4 + size].decode("ascii") != fields[0] or len(blob) <= 4 + size:
            raise ValueError
    except (ValueError, binascii.Error, UnicodeDecodeError):
        shown = line if len(line) <= 60 else line[:57] + "..."
        raise ValueError(f"{context}not an OpenSSH public key line: {shown!r}") from None
    return blob


def matches_public_line(key: asyncssh.SSHKey, line: str) -> bool:
    """Whether `line` (e.g. what a `.pub` file said) is the public key of `key`."""
    return public_key_line(key).split()[:2] == line.split()[:2]


def import_public_key(line: str) -> asyncssh.SSHKey:
    """Parse one OpenSSH public key line; raises ValueError (asyncssh.KeyImportError) if it is not one."""
    return asyncssh.import_public_key(line.strip())


def known_hosts_for(host_keys: Iterable[str]) -> tuple[list[asyncssh.SSHKey], list, list]:
    """A `known_hosts=` value for `asyncssh.connect` that trusts exactly these host keys, whatever the address.

    Gotcha: asyncssh reads a *list of str* as a list of known_hosts FILE NAMES, so key lines must be
    parsed first; the (trusted host keys, trusted CA keys, revoked keys) tuple form skips host matching.
    """
    keys = [import_public_key(line) for line in host_keys]
    if not keys:
        raise ValueError("no host key to pin")
    return (keys, [], [])


def authorized_keys_for(lines: Iterable[str]) -> asyncssh.SSHAuthorizedKeys:
    """An `authorized_client_keys=` value from OpenSSH public key lines.

    Gotcha: asyncssh reads a *list of str* here as authorized_keys FILE NAMES, hence this helper.
    """
    lines = [line.strip() for line in lines if line.strip()]
    for line in lines:
        import_public_key(line)  # refuse garbage early, with a clear error, rather than at login time
    return asyncssh.import_authorized_keys("\n".join(lines) + "\n")
