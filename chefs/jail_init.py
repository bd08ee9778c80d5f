"""The program a jail runs as its pid 1: it starts each step's command in the jail, one at a time.

Runs inside bwrap as `python -I -S -c <this file's text> FD`, so it imports nothing but the
standard library and reads no site configuration (~12 ms to start, once per jail). FD is its end
of a unix socket to the chef (chefs/jail.py). Per step the chef sends one request: an 8-byte
length (with the step's output fd attached, SCM_RIGHTS), then that many bytes, `argc\\0argv...\\0
NAME=value...` NUL-separated. This program answers one line: the exit code (negative: the signal
that killed it) and 1 (0 when the jail could not be made clean again), after

- killing every other process left in the jail (a step's background jobs must not outlive it,
  nor see the next step),
- reaping them (orphans are re-parented to it, pid 1), and
- emptying the jail's writable scratch places (/tmp, /dev/shm) and removing the SysV IPC objects
  left in its IPC namespace.

As pid 1 of its pid namespace it receives no signal a step sends it, and it is not dumpable, so a
step can neither ptrace it nor open its /proc files (its socket, its memory).

A command that cannot start gets the shell's status (127 not found, 126 not executable) and a
line on its output naming it; one that is not a binary and has no `#!` runs under /bin/sh, as
`execvp` does.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import socket
import struct
import sys

SCRATCH = ("/tmp", "/dev/shm")
PR_SET_DUMPABLE = 4
IPC_RMID = 0
_HEADER = struct.Struct("=Q")
_LIBC = ctypes.CDLL(None, use_errno=True)


def main(fd: int) -> None:
    _LIBC.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    os.set_inheritable(fd, False)
    chef = socket.socket(fileno=fd)
    chef.sendall(b"ready\n")
    while True:
        request = _receive(chef)
        if request is None:
            return  # the chef closed its end: the jail goes away
        argv, env, out = request
        try:
            code = _run(argv, env, out)
        finally:
            os.close(out)
        clean = _end_leftovers()
        chef.sendall(b"%d %d\n" % (code, clean))


def _receive(chef: socket.socket) -> tuple[list[bytes], dict[bytes, bytes], int] | None:
    header, fds, _flags, _addr = socket.recv_fds(chef, _HEADER.size, 1)
    if not header:
        return None
    if len(fds) != 1:
        raise RuntimeError(f"jail: expected one output fd, got {len(fds)}")
    os.set_inheritable(fds[0], False)
    (size,) = _HEADER.unpack(header + _read_exactly(chef, _HEADER.size - len(header)))
    fields = _read_exactly(chef, size).split(b"\0")
    argc = int(fields[0])
    env = dict(item.split(b"=", 1) for item in fields[1 + argc:])
    return fields[1:1 + argc], env, fds[0]


def _read_exactly(chef: socket.socket, size: int) -> bytes:
    chunks = []
    while size:
        chunk = chef.recv(min(size, 1 << 20))
        if not chunk:
            raise EOFError("jail: the chef hung up inside a request")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _run(argv: list[bytes], env: dict[bytes, bytes], out: int) -> int:
    """Start the command (posix_spawn: no Python runs in the child), wait for it, return its code."""
    program = _resolve(argv[0], env)
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
        (os.POSIX_SPAWN_DUP2, out, 1),
        (os.POSIX_SPAWN_DUP2, out, 2),
    ]
    spawn = dict(file_actions=actions, setsid=True, setsigdef=(signal.SIGPIPE, signal.SIGXFSZ))
    try:
        if program is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT))
        try:
            pid = os.posix_spawn(program, argv, env, **spawn)
        except OSError as exc:
            if exc.errno != errno.ENOEXEC:
                raise
            pid = os.posix_spawn(b"/bin/sh", [b"sh", program, *argv[1:]], env, **spawn)  # as execvp does
    except OSError as exc:
        name = argv[0].decode(errors="replace")
        os.write(out, f"jail: cannot run {name}: {exc.strerror}\n".encode())
        return 127 if exc.errno in (errno.ENOENT, errno.ENOTDIR) else 126
    _pid, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _resolve(name: bytes, env: dict[bytes, bytes]) -> bytes | None:
    """`name` found as execvp finds it, on the step's own PATH."""
    if b"/" in name:
        return name
    path = env.get(b"PATH", b"/bin:/usr/bin")
    denied = None
    for directory in path.split(b":"):
        candidate = os.path.join(directory or b".", name)
        if os.path.isfile(candidate):
            if os.access(candidate, os.X_OK):
                return candidate
            denied = denied or candidate
    return denied  # spawning it says "Permission denied", as the shell would


def _end_leftovers() -> bool:
    """Kill whatever the step left running, reap everything, empty the scratch places; False when
    something could not be removed (the chef then retires this jail)."""
    try:
        os.kill(-1, signal.SIGKILL)  # from pid 1: every process in the jail but this one
    except ProcessLookupError:
        pass
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            break
    try:
        for place in SCRATCH:
            _empty(place)
    except OSError:
        return False
    return _remove_sysv_ipc()


def _remove_sysv_ipc() -> bool:
    """Remove the message queues, semaphores and shared memory a step left in the jail's IPC
    namespace (its steps share it)."""
    removers = {"msg": lambda i: _LIBC.msgctl(i, IPC_RMID, None), "sem": lambda i: _LIBC.semctl(i, 0, IPC_RMID),
                "shm": lambda i: _LIBC.shmctl(i, IPC_RMID, None)}
    for kind, remove in removers.items():
        try:
            with open(f"/proc/sysvipc/{kind}") as table:
                ids = [int(row.split()[1]) for row in list(table)[1:]]
        except OSError:
            continue
        if any(remove(i) != 0 for i in ids):
            return False
    return True


def _empty(directory: str) -> None:
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            os.chmod(entry.path, 0o700)  # a step may have made it unreadable
            _empty(entry.path)
            os.rmdir(entry.path)
        else:
            os.unlink(entry.path)


if __name__ == "__main__":
    main(int(sys.argv[1]))
