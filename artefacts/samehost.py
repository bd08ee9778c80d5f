"""The same-host shortcut: take an owner's bytes from the filesystem when puller and owner share a host.

An owner advertises a `LocalAccess` (host identity, root, layout) in its `SftpEndpoint`. A puller whose own
host identity is the same may read the owner's files directly: it hardlinks immutable store entries (no bytes
are written) and copies anything else, hashing either as it reads, and keeps the result only when size and
digest match, the check an SFTP receipt passes. Whatever does not work out this way goes over SFTP as before,
which also pins wrong bytes on their owner (an entry that rotted on disk, a source edited since it was hashed).

Sync functions touch the disk: async callers run them with `asyncio.to_thread`.
"""

from __future__ import annotations

import functools
import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from artefacts.hashing import StreamHasher
from protocol.digests import parse_digest, store_relpath
from protocol.messages import LAYOUT_STORE, LAYOUT_WORKSPACE, LocalAccess

ENV_SWITCH = "CP_SAME_HOST"  # "0" turns the shortcut off for pullers started with that environment
COPY_BLOCK = 1024 * 1024


def enabled_by_env() -> bool:
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


def _first_line(*paths: str) -> str:
    for path in paths:
        try:
            with open(path) as f:
                line = f.readline().strip()
        except OSError:
            continue
        if line:
            return line
    return ""


def _namespace(kind: str) -> str:
    st = os.stat(f"/proc/self/ns/{kind}")
    return f"{kind}:{st.st_dev}:{st.st_ino}"


@functools.cache
def host_identity() -> str:
    """Equal for two processes only when they see the same files; "" when that cannot be told.

    The kernel's boot id tells apart machines (even clones sharing a machine id) and reboots; the network
    namespace tells apart the "hosts" that tests and containers make on one kernel (their inputs must travel
    over the network); the mount namespace makes sure an advertised path means the same file to both.
    Whether two files share a filesystem is decided per file (a hardlink fails with EXDEV, then we copy).
    """
    boot = _first_line("/proc/sys/kernel/random/boot_id")
    if not boot:
        return ""
    machine = _first_line("/etc/machine-id", "/var/lib/dbus/machine-id")
    try:
        spaces = f"{_namespace('net')}/{_namespace('mnt')}"
    except OSError:
        return ""
    return hashlib.sha256(f"{machine}/{boot}/{spaces}".encode()).hexdigest()[:32]


def store_access(root: Path, *, linkable: bool) -> LocalAccess | None:
    """What a store owner advertises. `linkable`: its entries are never written through a link (its steps
    run sandboxed), so a peer may share their inodes."""
    host = host_identity()
    return LocalAccess(host=host, root=os.path.realpath(root), layout=LAYOUT_STORE, linkable=linkable) if host \
        else None


def workspace_access(root: Path) -> LocalAccess | None:
    """What a MajorDomo advertises for the sources it serves from the workspace: readable, never linkable
    (a link would let the store's chmod reach the user's file, and the user's edits reach the store)."""
    host = host_identity()
    return LocalAccess(host=host, root=os.path.realpath(root), layout=LAYOUT_WORKSPACE) if host else None


def _plain_relative(path: str) -> bool:
    pure = PurePosixPath(path)
    return bool(path) and not pure.is_absolute() and ".." not in pure.parts and "\\" not in path


def local_path(access: LocalAccess, digest: str, hint: str = "") -> Path | None:
    """Where the owner's file for `digest` should be, or None when its layout names none.

    A workspace is addressed by the input's project path (`hint`), which may hold other bytes by now: only a
    copy whose digest matches is ever kept, so a stale hint costs a fallback to SFTP, never a wrong file.
    """
    root = Path(access.root)
    if not root.is_absolute():
        return None
    if access.layout == LAYOUT_STORE:
        return root / store_relpath(digest)
    if access.layout == LAYOUT_WORKSPACE and _plain_relative(hint):
        real = os.path.realpath(root / hint)
        # A symlink leading out of the workspace is not followed here (the SFTP server serves it).
        return Path(real) if os.path.commonpath([access.root, real]) == access.root else None
    return None


class LocalMismatch(Exception):
    """A same-host owner's file does not hold the bytes asked for."""


def link_entry(source: Path, temp: Path, digest: str, size: int) -> bool:
    """Hardlink another store's entry to `temp` and check its bytes; False when it cannot be linked here.

    An entry is a regular, read-only file; a store's entries are verified when stored, but one can rot on
    disk (the quarantine exists for that), and a shared inode would pass rot on silently, so the linked
    bytes are hashed once (from the page cache, ~2 GB/s, against an SFTP transfer's ~0.5). Raises
    LocalMismatch (the link removed) for wrong bytes, OSError when the link fails (EXDEV: another filesystem).
    """
    st = os.lstat(source)
    if not stat.S_ISREG(st.st_mode) or st.st_mode & 0o222:
        return False
    if st.st_size != size:
        raise LocalMismatch(f"{source} has {st.st_size} bytes, not {size}")
    os.link(source, temp, follow_symlinks=False)
    try:
        fd = os.open(temp, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            linked = os.fstat(fd)
            if (linked.st_dev, linked.st_ino) != (st.st_dev, st.st_ino):
                raise LocalMismatch(f"{source} was replaced while being linked")
            hasher = StreamHasher(parse_digest(digest)[0])
            for block in _blocks(fd, size + 1):
                hasher.update(block)
        finally:
            os.close(fd)
        if hasher.size != size or hasher.digest() != digest:
            raise LocalMismatch(f"{source} holds {hasher.digest()} ({hasher.size} bytes)")
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return True


def _blocks(fd: int, limit: int) -> Iterator[memoryview]:
    """Read `fd` up to `limit` bytes or its end, one reused buffer (valid until the next block)."""
    buf = bytearray(min(COPY_BLOCK, max(1, limit)))
    while limit > 0:
        n = os.readv(fd, [memoryview(buf)[:min(len(buf), limit)]])
        if not n:
            return
        yield memoryview(buf)[:n]
        limit -= n


def copy_verified(source: Path, dest_fd: int, digest: str, size: int) -> bool:
    """Copy `source` into `dest_fd`, hashing as it goes; True when exactly `size` bytes with `digest` came.

    Never reads more than size + 1 bytes, so a file that grew is refused without reading it all. The source
    may be a file the user is editing: the digest of the bytes actually copied is what is checked.
    """
    algo, _ = parse_digest(digest)
    hasher = StreamHasher(algo)
    # O_NONBLOCK: a FIFO swapped in must not hang the thread; O_NOFOLLOW: paths given here are canonical.
    fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size != size:
            return False
        for block in _blocks(fd, size + 1):
            hasher.update(block)
            _write_all(dest_fd, block)
    finally:
        os.close(fd)
    return hasher.size == size and hasher.digest() == digest


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data):]
