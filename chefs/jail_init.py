"""The program a jail runs as its pid 1: it starts each step's command in the jail, one at a time.

Runs inside bwrap as `python -I -S /.jail-init.py FD` (this file, bound read-only there by
chefs/sandbox.py), so it imports nothing but the standard library and reads no site configuration
(~12 ms to start, once per jail). FD is its end of a unix socket to the chef (chefs/jail.py). Per
step the chef sends one request: an 8-byte length (with the step's output fd attached, SCM_RIGHTS),
then that many bytes, `argc\\0protc\\0argv...\\0paths...\\0NAME=value...` NUL-separated (`paths`:
inputs to protect, see below). This program answers one line:
the exit status (128 + N for a command killed by signal N, as bwrap and the shell say) and 1 (0 when
the jail could not be made as it was before the step: the chef then retires it), after

- killing every other process left in the jail (a step's background jobs must not outlive it,
  nor see the next step), and reaping them (orphans are re-parented to it, pid 1);
- emptying the jail's writable scratch places (/tmp, /dev/shm, /dev/mqueue), removing the SysV
  IPC objects left in its IPC namespace and clearing its user keyrings;
- checking that the step did not change this process's own settings, which the next step's
  command would inherit (priority, CPU affinity, scheduling policy, I/O priority, rlimits): a
  step runs as the same user, so it may lower them.

/proc is read-only in a jail (no sysctl of its namespaces, no /proc/1/oom_score_adj), and / and
/dev are too. As pid 1 of its pid namespace this program receives no signal a step sends it (it
keeps no handler), and it is not dumpable, so a step can neither ptrace it nor open its /proc
files (its socket, its memory).

*Protection by mount* (`FD UID GID`: a chef that cannot give its inputs to `nobody`, i.e. not
root). bwrap makes this program uid 0 of the jail's user namespace and leaves it CAP_SYS_ADMIN
and CAP_SETFCAP (chefs/sandbox.py). Per step it binds each input in /work read-only onto itself,
runs the command in a user namespace of its own that maps only UID and GID (the chef's own ids, as
a bwrap per step shows them) and holds no capability over the jail's mounts, and afterwards
unmounts the binds before it answers. So a step can neither write nor chmod an input, nor undo a
bind (they are locked to its namespace), as in a sandbox of its own, without a bwrap per step.
The maps are written through a proc instance mounted at start and detached at once: the jail's
/proc is read-only, and this one is reachable only through a descriptor no command inherits. At
start it tries the whole sequence once and exits (the chef then uses a bwrap per step) if the
kernel refuses any part.

A command that cannot start gets the shell's status (127 not found, 126 not executable) and a
line on its output naming it; one that is not a binary and has no `#!` runs under /bin/sh, as
`execvp` does.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import resource
import signal
import socket
import struct
import sys

SCRATCH = ("/tmp", "/dev/shm", "/dev/mqueue")
PR_SET_DUMPABLE = 4
IPC_RMID = 0
KEYCTL_CLEAR = 7
KEYRINGS = (-3, -4, -5)  # the session, user and user-session keyrings
IOPRIO_WHO_PROCESS = 1
# keyctl and ioprio_get have no glibc wrapper: their numbers, where jails are supported.
_SYSCALLS = {"x86_64": {"keyctl": 250, "ioprio_get": 252}, "aarch64": {"keyctl": 219, "ioprio_get": 31}}
HEADER = struct.Struct("=Q")  # a request's length (chefs/jail.py sends it)
_LIBC = ctypes.CDLL(None, use_errno=True)
MS_RDONLY, MS_REMOUNT, MS_BIND, MNT_DETACH = 1, 32, 4096, 2
CLONE_NEWUSER = 0x10000000
_PROC_MOUNT = "/tmp/.jail-proc"


class Protection:
    """Protection by mount: read-only binds per step, and the step's own user namespace."""

    def __init__(self, uid: int, gid: int) -> None:
        self.uid, self.gid = uid, gid
        os.mkdir(_PROC_MOUNT)
        _check(_LIBC.mount(b"proc", _PROC_MOUNT.encode(), b"proc", 0, None), "mount proc")
        self.proc = os.open(_PROC_MOUNT, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        _check(_LIBC.umount2(_PROC_MOUNT.encode(), MNT_DETACH), "detach proc")
        os.rmdir(_PROC_MOUNT)

    def bind(self, paths: list[bytes]) -> list[bytes]:
        """Bind each /work path read-only onto itself; the ones bound (all, or it raises)."""
        done: list[bytes] = []
        try:
            for path in paths:
                _check(_LIBC.mount(path, path, None, MS_BIND, None), f"bind {path!r}")
                done.append(path)
                _check(_LIBC.mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY, None), f"protect {path!r}")
        except OSError:
            self.unbind(done)
            raise
        return done

    def unbind(self, paths: list[bytes]) -> bool:
        """Unmount every bind (each tried, whatever the others did); whether all went."""
        results = [_LIBC.umount2(path, MNT_DETACH) for path in reversed(paths)]
        return all(result == 0 for result in results)

    def enter_own_userns(self) -> None:
        """In a forked child: a user namespace that maps only the chef's ids, so that the command
        runs as them and, once exec'd, with no capability (and never any over the jail's mounts)."""
        _check(_LIBC.unshare(CLONE_NEWUSER), "unshare")
        for name, line in (("self/setgroups", "deny"), ("self/uid_map", f"{self.uid} 0 1"),
                           ("self/gid_map", f"{self.gid} 0 1")):
            fd = os.open(name, os.O_WRONLY | os.O_CLOEXEC, dir_fd=self.proc)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)

    def check(self) -> None:
        """The whole sequence once, at start: a bind of a scratch file and a child in its own user
        namespace; raises if the kernel refuses any part."""
        probe = b"/tmp/.jail-probe"
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
        self.unbind(self.bind([probe]))
        os.unlink(probe)
        pid = os.fork()
        if pid == 0:
            try:
                self.enter_own_userns()
                os._exit(0 if os.getuid() == self.uid else 1)
            except BaseException:
                os._exit(1)
        _pid, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise OSError(errno.EPERM, "a user namespace of its own for the command")


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"jail: {what}: {os.strerror(err)}")


def main(fd: int, ids: list[str]) -> None:
    syscalls = _SYSCALLS.get(os.uname().machine)
    if syscalls is None:
        sys.exit(f"jail: no support for {os.uname().machine}")
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # Python's handler would let a step end us with SIGINT
    _LIBC.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    os.set_inheritable(fd, False)
    chef = socket.socket(fileno=fd)
    protection = None
    if ids:
        try:
            protection = Protection(int(ids[0]), int(ids[1]))
            protection.check()
        except OSError as exc:
            sys.exit(f"jail: cannot protect inputs by mount here: {exc}")
    settings = _settings(syscalls)
    chef.sendall(b"ready\n")
    while True:
        request = _receive(chef)
        if request is None:
            return  # the chef closed its end: the jail goes away
        argv, protect, env, out = request
        bound: list[bytes] = []
        try:
            if protect and protection is None:
                raise OSError(errno.EINVAL, "jail: inputs to protect, in a jail started without protection")
            if protection is not None:
                bound = protection.bind([b"/work/" + path for path in protect])
            status = _run(argv, env, out, protection)
        except OSError as exc:  # the inputs could not be protected: nothing ran
            os.write(out, f"{exc}\n".encode(errors="replace"))
            status = 126
        finally:
            os.close(out)
        clean = _end_leftovers(syscalls) and _settings(syscalls) == settings
        if protection is not None and not protection.unbind(bound):
            clean = False
        chef.sendall(b"%d %d\n" % (status, clean))


def _receive(chef: socket.socket) -> tuple[list[bytes], list[bytes], dict[bytes, bytes], int] | None:
    header, fds, _flags, _addr = socket.recv_fds(chef, HEADER.size, 1)
    if not header:
        return None
    if len(fds) != 1:
        raise RuntimeError(f"jail: expected one output fd, got {len(fds)}")
    os.set_inheritable(fds[0], False)
    (size,) = HEADER.unpack(header + _read_exactly(chef, HEADER.size - len(header)))
    fields = _read_exactly(chef, size).split(b"\0")
    argc, protc = int(fields[0]), int(fields[1])
    argv, protect = fields[2:2 + argc], fields[2 + argc:2 + argc + protc]
    env = dict(item.split(b"=", 1) for item in fields[2 + argc + protc:])
    return argv, protect, env, fds[0]


def _read_exactly(chef: socket.socket, size: int) -> bytes:
    chunks = []
    while size:
        chunk = chef.recv(min(size, 1 << 20))
        if not chunk:
            raise EOFError("jail: the chef hung up inside a request")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _run(argv: list[bytes], env: dict[bytes, bytes], out: int, protection: Protection | None) -> int:
    """Fork, exec the command in the child, wait for it; return its status as a shell says it."""
    program = _resolve(argv[0], env)
    pid = os.fork()
    if pid == 0:  # the child: only exec, or say why not and leave
        try:
            os.setsid()
            if protection is not None:
                protection.enter_own_userns()
            for sig in (signal.SIGPIPE, signal.SIGXFSZ):  # Python ignores them; a command must not
                signal.signal(sig, signal.SIG_DFL)
            null = os.open("/dev/null", os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(out, 1)
            os.dup2(out, 2)
            _exec(program, argv, env)
        except BaseException as exc:  # nothing may run on after this, in a fork
            code = 127 if isinstance(exc, OSError) and exc.errno in (errno.ENOENT, errno.ENOTDIR) else 126
            with open(2, "w", closefd=False) as err:
                err.write(f"jail: cannot run {argv[0].decode(errors='replace')}: "
                          f"{exc.strerror if isinstance(exc, OSError) else exc}\n")
            os._exit(code)
    _pid, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def _exec(program: bytes | None, argv: list[bytes], env: dict[bytes, bytes]) -> None:
    if program is None:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT))
    try:
        os.execve(program, argv, env)
    except OSError as exc:
        if exc.errno != errno.ENOEXEC:
            raise
        os.execve(b"/bin/sh", [b"sh", program, *argv[1:]], env)  # as execvp does


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
    return denied  # exec'ing it says "Permission denied", as the shell would


def _end_leftovers(syscalls: dict[str, int]) -> bool:
    """Kill whatever the step left running, reap everything, empty what steps share; False when
    something could not be undone (the chef then retires this jail)."""
    with contextlib.suppress(ProcessLookupError):  # none left
        os.kill(-1, signal.SIGKILL)  # from pid 1: every process in the jail but this one
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            break
    try:
        for place in SCRATCH:
            empty_dir(place)
        for keyring in KEYRINGS:
            _LIBC.syscall(syscalls["keyctl"], KEYCTL_CLEAR, keyring)  # fails for one never made: fine
        return _remove_sysv_ipc()
    except Exception:  # whatever it was, this jail is not known clean
        return False


def empty_dir(top: str) -> None:
    """Remove everything under `top`, keeping it: without recursion (a step may leave a tree
    thousands deep), making each directory below it readable and writable first (a step may have
    taken that away). Also what a chef empties a jail's work dir with (chefs/taskdir.py)."""
    stack = [top]
    dirs = []
    while stack:
        directory = stack.pop()
        if directory != top:
            os.chmod(directory, 0o700)  # a step may have made it unreadable
        dirs.append(directory)
        for entry in os.scandir(directory):
            if entry.is_dir(follow_symlinks=False):
                stack.append(entry.path)
            else:
                os.unlink(entry.path)
    for directory in reversed(dirs[1:]):  # deepest first
        os.rmdir(directory)


def _remove_sysv_ipc() -> bool:
    """Remove the message queues, semaphores and shared memory a step left in the jail's IPC
    namespace (its steps share it)."""
    removers = {"msg": lambda i: _LIBC.msgctl(i, IPC_RMID, None), "sem": lambda i: _LIBC.semctl(i, 0, IPC_RMID),
                "shm": lambda i: _LIBC.shmctl(i, IPC_RMID, None)}
    for kind, remove in removers.items():
        try:
            with open(f"/proc/sysvipc/{kind}") as table:
                ids = [int(row.split()[1]) for row in list(table)[1:]]
        except FileNotFoundError:
            continue  # a kernel without SysV IPC
        if any(remove(i) != 0 for i in ids):
            return False
    return True


def _settings(syscalls: dict[str, int]) -> tuple[object, ...]:
    """What of this process a step could change and the next step's command would inherit."""
    limits = tuple(resource.getrlimit(getattr(resource, name)) for name in sorted(dir(resource))
                   if name.startswith("RLIMIT_"))
    return (os.getpriority(os.PRIO_PROCESS, 0), os.sched_getaffinity(0), os.sched_getscheduler(0),
            _LIBC.syscall(syscalls["ioprio_get"], IOPRIO_WHO_PROCESS, 0), limits)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2:4])
