"""Linux inotify through ctypes: the few calls the resident build server's tree watch needs.

watchfiles (used by `majordomo watch`) does not report the kernel's queue overflow
(samuelcolvin/watchfiles#348), and a watch that silently lost events would vouch for files that
changed. Here every event reaches the caller, IN_Q_OVERFLOW and IN_IGNORED included.
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct

IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_UNMOUNT = 0x2000
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_EXCL_UNLINK = 0x04000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len (struct inotify_event)
Event = tuple[int, int, str]  # wd, mask, name ("" for the watched directory itself)

# Filesystems whose files can change without a local system call (another host writes them), so
# no event would say so: NFS, SMB/CIFS, FUSE (sshfs...), 9p, Ceph, AFS, Coda, Lustre, GFS2, OCFS2, GPFS.
REMOTE_FILESYSTEMS = frozenset({0x6969, 0xFF534D42, 0xFE534D42, 0x517B, 0x65735546, 0x01021997, 0x00C36400,
                                0x5346414F, 0x6B414653, 0x73757245, 0x0BD00BD0, 0x01161970, 0x7461636F, 0x47504653})

_libc: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)  # the C library this interpreter is linked with
        _libc.inotify_add_watch.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32)
        _libc.statfs.argtypes = (ctypes.c_char_p, ctypes.c_void_p)
    return _libc


def _check(result: int, what: str) -> int:
    if result < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")
    return result


class Inotify:
    """One non-blocking inotify instance."""

    def __init__(self) -> None:
        self.fd = _check(_lib().inotify_init1(IN_NONBLOCK | IN_CLOEXEC), "inotify_init1")

    def add_watch(self, path: str, mask: int) -> int:
        return _check(_lib().inotify_add_watch(self.fd, os.fsencode(path), mask), f"inotify_add_watch {path}")

    def remove_watch(self, wd: int) -> None:
        _lib().inotify_rm_watch(self.fd, wd)  # fails only for a watch already gone: nothing to do

    def read(self) -> list[Event]:
        """Every event queued now (none: an empty list; never blocks)."""
        events: list[Event] = []
        while True:
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return events
            offset = 0
            while offset < len(data):
                wd, mask, _cookie, size = _HEADER.unpack_from(data, offset)
                offset += _HEADER.size
                name = data[offset:offset + size].rstrip(b"\0")
                offset += size
                events.append((wd, mask, os.fsdecode(name)))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def filesystem_type(path: str) -> int:
    """statfs(2)'s f_type for `path`: the first field of struct statfs, a C long (`__fsword_t`)
    on Linux except s390x, where it is an unsigned int."""
    buffer = ctypes.create_string_buffer(256)  # larger than struct statfs on every Linux ABI
    _check(_lib().statfs(os.fsencode(path), buffer), f"statfs {path}")
    field = ctypes.c_uint if platform.machine() == "s390x" else ctypes.c_long
    return field.from_buffer(buffer).value & 0xFFFFFFFF
