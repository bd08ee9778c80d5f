"""Jails: long-lived bwrap sandboxes, each running a chef's steps one after another.

A bwrap per step costs ~1.8 ms of CPU (a user, mount, pid and network namespace made and torn
down, a dozen mounts, each parsing /proc/self/mountinfo): ~70 ms of a 38-step C build, on cores
the compiler wants. A jail pays that once. It is a bwrap sandbox like a step's (chefs/sandbox.py:
the system's tool directories read-only, no network, no capabilities) whose /work is one fixed
directory, its *work dir*, and whose pid 1 is a small program (chefs/jail_init.py) that starts
each step's command in it. Between two steps that program undoes what the first could leave
(processes, scratch files, IPC objects, keys; chefs/jail_init.py says which) or retires the jail,
and the chef empties the work dir before making the next step's task dir in it; /, /dev and /proc
are read-only. So a step sees what it saw in its own bwrap: its task dir at /work and the tools,
nothing of the step before.

A chef that protects inputs by owner (root) needs nothing per step; one that protects them by mount
starts jails whose pid 1 binds each step's inputs read-only and runs the command in a user
namespace of its own, without the capability that made the binds (chefs/jail_init.py).

A jail that misbehaves (a step timed out or was cancelled, its scratch could not be emptied, its
program died) is killed, and the pool starts another when needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from chefs.jail_init import HEADER
from chefs.sandbox import JAIL_INIT, jail_argv
from chefs.taskdir import remove_tree

log = logging.getLogger(__name__)
T = TypeVar("T")

START_TIMEOUT_S = 20.0
FAILURES_TO_GIVE_UP = 3  # jails that fail to start in a row before a chef stops trying
_INIT_PROGRAM = Path(__file__).with_name("jail_init.py")  # bound read-only at JAIL_INIT


class JailError(Exception):
    """A jail could not start, or broke while running a step."""


class Jail:
    def __init__(self, work_dir: Path, proc: asyncio.subprocess.Process, sock: socket.socket) -> None:
        self.work_dir = work_dir
        self._proc = proc
        self._sock = sock
        self._buffer = b""
        self.healthy = True  # false once killed, or left unclean by a step: never reused

    @classmethod
    async def start(cls, bwrap: str, work_dir: Path, *, protect_by_mount: bool = False) -> Jail:
        """Start a jail whose /work is `work_dir` (made here, empty); with `protect_by_mount`, one
        that binds each step's inputs read-only (`send(protect=...)`, chefs/jail_init.py).

        Cancelled, it still lets bwrap finish setting up and then ends the jail as an idle one is
        ended (its socket closed): bwrap killed while it sets up leaves its child blocked for ever
        on an eventfd its parent was to write, holding our stderr pipe, so that even `wait` hung."""
        await _to_thread_to_the_end(work_dir.mkdir, parents=True)
        ours, theirs = socket.socketpair()
        cancelled = False
        try:
            # Run by path, not `-c <its text>`: `ps` shows a short command line for each jail.
            init = [sys.executable, "-I", "-S", JAIL_INIT, str(theirs.fileno())]
            if protect_by_mount:  # the ids each command runs as, in its own user namespace
                init += [str(os.getuid()), str(os.getgid())]
            argv = jail_argv(bwrap, work_dir, _INIT_PROGRAM, init, protect_by_mount=protect_by_mount)
            spawning = asyncio.ensure_future(asyncio.create_subprocess_exec(
                *argv, pass_fds=(theirs.fileno(),), stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
                process_group=0))  # `kill` reaches bwrap's child too until it makes its own session
            try:
                proc = await asyncio.shield(spawning)  # not asyncio's cancel path, which kills it
            except asyncio.CancelledError:
                await asyncio.wait([spawning])
                proc = spawning.result()
                cancelled = True
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        jail = cls(work_dir, proc, ours)
        if cancelled:
            await asyncio.shield(jail.close())
            raise asyncio.CancelledError
        try:
            ready = await asyncio.wait_for(jail._line(), START_TIMEOUT_S)
        except (JailError, TimeoutError) as exc:
            why = await jail._stderr_tail()
            await jail.kill()  # its whole process group: bwrap's child too, if it is stuck in set-up
            raise JailError(f"the jail did not start ({exc or 'timed out'}): {why}") from None
        except BaseException:  # cancelled while it started: ended as an idle jail is, not killed
            await asyncio.shield(jail.close())
            raise
        if ready != b"ready":
            await jail.kill()
            raise JailError(f"the jail said {ready!r} instead of ready")
        return jail

    async def send(self, argv: Sequence[str], env: Mapping[str, str], out_fd: int,
                   protect: Sequence[str] = ()) -> None:
        """Start one command in the jail, its stdout and stderr on `out_fd`, which this closes once
        sent (the jail holds its own copy); `wait` gives its exit code. `protect`: work-dir paths
        bound read-only while it runs (a jail started with `protect_by_mount`)."""
        try:
            if any("=" in name or not name for name in env):
                raise ValueError(f"illegal environment variable name in {sorted(env)}")
            fields = [os.fsencode(a) for a in argv] + [os.fsencode(p) for p in protect] \
                + [os.fsencode(f"{k}={v}") for k, v in env.items()]
            if any(b"\0" in field for field in fields):  # what exec refuses, and our separator
                raise ValueError("embedded null byte in a command's argument or environment")
            payload = b"\0".join([str(len(argv)).encode(), str(len(protect)).encode(), *fields])
            try:
                # 8 bytes into an idle socket's empty buffer: never blocks, so a plain sendmsg carries the fd.
                socket.send_fds(self._sock, [HEADER.pack(len(payload))], [out_fd])
                await asyncio.get_running_loop().sock_sendall(self._sock, payload)
            except OSError as exc:
                raise JailError(f"the jail hung up: {exc}") from None
            except BaseException:  # cancelled half-way: pid 1 would read the next request askew
                self.healthy = False
                raise
        finally:
            os.close(out_fd)

    async def wait(self) -> int:
        """The exit status of the command `send` started (128 + N: killed by signal N). A jail that
        could not be made as before after it is no longer `healthy`."""
        code, clean = (await self._line()).split()
        if clean != b"1":
            self.healthy = False
        return int(code)

    async def kill(self) -> None:
        """End the jail now, whatever runs in it: its pid 1 dies with bwrap (--die-with-parent),
        and every process of its pid namespace with that."""
        self.healthy = False
        self._sock.close()
        if self._proc.returncode is None:  # not reaped: its pid, and so its group, are still its own
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
        await self._proc.wait()

    async def close(self) -> None:
        """End an idle jail: its pid 1 sees the socket close and exits."""
        self.healthy = False
        self._sock.close()
        try:
            await asyncio.wait_for(self._proc.wait(), 5.0)
        except TimeoutError:
            await self.kill()

    async def _line(self) -> bytes:
        loop = asyncio.get_running_loop()
        while b"\n" not in self._buffer:
            try:
                chunk = await loop.sock_recv(self._sock, 4096)
            except OSError:  # ECONNRESET: pid 1 died with our request unread, which is an end too
                chunk = b""
            if not chunk:
                raise JailError(f"the jail's pid 1 is gone (bwrap exit status {await self._exit_status()})")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    async def _exit_status(self) -> int | None:
        with contextlib.suppress(TimeoutError):
            return await asyncio.wait_for(self._proc.wait(), 1.0)
        return None

    async def _stderr_tail(self) -> str:
        if self._proc.stderr is None:
            return ""
        with contextlib.suppress(TimeoutError):
            data = await asyncio.wait_for(self._proc.stderr.read(), 1.0)
            return data.decode(errors="replace").strip()[-2000:]
        return ""


class JailPool:
    """The jails of one chef: one per step running at once, reused, started when first needed or
    beforehand (`prestart`).

    A step waits for a jail being tidied (its work dir emptied, ~0.2 ms) or started beforehand
    rather than start a new one (~12 ms of CPU); a new one starts only when every jail runs a step
    or is already spoken for by a step waiting before it."""

    def __init__(self, bwrap: str, parent: Path, *, protect_by_mount: bool = False) -> None:
        self.bwrap = bwrap
        self.parent = parent  # the chef's tasks dir: a killed chef's work dirs go as its task dirs do
        self.protect_by_mount = protect_by_mount  # jails bind each step's inputs read-only
        self._free: list[Jail] = []
        self._tidying = 0
        self._prestarts: set[asyncio.Task[None]] = set()  # jails starting in the background
        self._waiting = 0  # steps waiting for one of those or a tidied one
        self._changed = asyncio.Event()  # a jail tidied or pre-started (or not): waiting steps look again
        self._all: set[Jail] = set()
        self._made = 0
        self._failures = 0  # starts failed in a row
        self._closing = False
        self.started = 0  # jails started so far
        self.broken: str | None = None  # why jails cannot start here: steps get a bwrap each

    async def acquire(self) -> Jail | None:
        """A clean jail; None when one could not start (this step gets a bwrap of its own, and after
        FAILURES_TO_GIVE_UP failures in a row every step does: said in the log)."""
        # Wait while a jail on its way (being tidied or started) is not already some waiting step's.
        while not self._free and self.broken is None and self._waiting < self._tidying + len(self._prestarts):
            self._waiting += 1
            self._changed.clear()
            try:
                await self._changed.wait()
            finally:
                self._waiting -= 1
        if self._free:
            return self._free.pop()
        if self.broken is not None:
            return None
        return await self._start()

    def prestart(self, n: int) -> None:
        """Start jails in the background until `n` are idle or starting: a new chef's first steps
        then find one ready rather than each wait for a start (20-40 ms under load). Each joins the
        free list when ready; one that fails counts as any failed start."""
        if self._closing or self.broken is not None:
            return
        for _ in range(n - len(self._free) - len(self._prestarts)):
            task = asyncio.create_task(self._prestart())
            self._prestarts.add(task)
            task.add_done_callback(self._prestarted_one)

    async def prestarted(self) -> None:
        """Wait until the jails `prestart` started are ready or failed."""
        while self._prestarts:
            await asyncio.wait(set(self._prestarts))

    async def _prestart(self) -> None:
        jail = await self._start()  # raises nothing but a cancel (close)
        if jail is not None:
            self._free.append(jail)

    def _prestarted_one(self, task: asyncio.Task[None]) -> None:
        # A done callback, not a `finally`: a task cancelled before its first step runs none of its body.
        self._prestarts.discard(task)
        self._changed.set()

    async def _start(self) -> Jail | None:
        """A new jail; None when it could not start, for whatever reason (counted towards
        `broken`, and said): a step then gets a bwrap of its own, and a start in the background
        raises nothing out of its task."""
        self._made += 1
        work_dir = self.parent / f"{os.getpid()}-jail-{self._made}"
        try:
            jail = await Jail.start(self.bwrap, work_dir, protect_by_mount=self.protect_by_mount)
        except Exception as exc:
            self._failures += 1
            unforeseen = not isinstance(exc, JailError | OSError)  # a bug: its traceback too
            if self._failures >= FAILURES_TO_GIVE_UP:
                self.broken = str(exc) or repr(exc)
                log.warning("jails cannot start here, so every step gets its own bwrap (slower): %s", exc,
                            exc_info=unforeseen)
            else:
                log.warning("a jail did not start, so a step gets its own bwrap: %s", exc, exc_info=unforeseen)
            await asyncio.to_thread(shutil.rmtree, work_dir, True)
            return None
        except BaseException:  # cancelled: leave no work dir behind
            await asyncio.shield(asyncio.to_thread(shutil.rmtree, work_dir, True))
            raise
        self._failures = 0
        self._all.add(jail)
        self.started += 1
        return jail

    def tidying(self) -> None:
        """A step is done with its jail, whose work dir is being emptied: `release` follows."""
        self._tidying += 1

    async def release(self, jail: Jail, *, reusable: bool) -> None:
        """Give a jail back after `tidying`: to the free list, or killed and its work dir removed."""
        try:
            if reusable and not self._closing:
                self._free.append(jail)
            else:
                await self.discard(jail)
        finally:
            self._tidying -= 1
            self._changed.set()

    async def discard(self, jail: Jail) -> None:
        self._all.discard(jail)
        await jail.kill()
        await asyncio.to_thread(remove_tree, jail.work_dir)

    async def close(self) -> None:
        """End the idle jails and those starting; one still running a step ends when the step gives
        it back."""
        self._closing = True
        for task in self._prestarts:
            task.cancel()  # a jail cancelled while it starts is killed, its work dir removed (_start)
        await self.prestarted()  # and one that got ready first is in the free list
        idle, self._free = self._free, []
        for jail in idle:
            self._all.discard(jail)
            await jail.close()
            await asyncio.to_thread(remove_tree, jail.work_dir)


async def _to_thread_to_the_end(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`func` in a thread. Cancelled, this still waits for it (the thread runs on regardless), so
    that what the caller undoes on a cancel (a work dir made) is undone after it, not before."""
    work = asyncio.ensure_future(asyncio.to_thread(func, *args, **kwargs))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        await asyncio.wait([work])
        if not work.cancelled():
            work.exception()  # retrieved, whatever it is: the caller hears of the cancel
        raise
