"""Cook one step: task dir from the store, run the command (sandboxed), store the outputs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from artefacts.normalise import NormaliserError, normalised_digest
from artefacts.store import Store
from chefs.command import SHELL, command_argv
from chefs.discovery import parse_depfile, parse_fls, project_relative
from chefs.jail import Jail, JailError, JailPool
from chefs.latexlog import summarise_latex_log
from chefs.sandbox import bwrap_path, can_protect_by_owner, input_owner, plain_argv, sandbox_argv
from chefs.taskdir import TaskDir
from protocol.errors import ErrorCode
from protocol.messages import OutputRef, StepRequest

log = logging.getLogger(__name__)

LOG_LIMIT = 64 * 1024  # keep the tail: that is where compilers and TeX say what went wrong
LOG_FLUSH_S = 0.25
BASE_ENV = {"LANG": "C.UTF-8", "TZ": "UTC"}
TOUCH_EVERY_S = 60.0  # resolution of the store's LRU clock per entry
TOUCHED_MAX = 200_000  # entries remembered as recently touched before old ones are forgotten


@dataclass
class Outcome:
    code: ErrorCode
    exit_status: int = 0
    outputs: list[OutputRef] = field(default_factory=list)
    discovered: list[str] = field(default_factory=list)
    log: str = ""
    message: str = ""


class Cook:
    def __init__(self, store: Store, tasks_dir: Path, tools: dict[str, str], *, sandbox: bool = True,
                 on_output: Callable[[StepRequest, str], None] | None = None,
                 protect_by_owner: bool | None = None, jails: bool = True) -> None:
        self.store = store
        self.tasks_dir = tasks_dir
        self.tools = tools
        self.bwrap = bwrap_path() if sandbox else None
        # Sandboxed inputs are read-only by owner where we may give them to `nobody` (no mount per
        # input), else by a read-only bind each. None: find out.
        if protect_by_owner is None:
            protect_by_owner = self.bwrap is not None and can_protect_by_owner(store.tmp)
        self.protect_by_owner = protect_by_owner and self.bwrap is not None
        # Steps run in reused sandboxes (chefs/jail.py), whose pid 1 binds the inputs read-only
        # per step where they cannot be given to `nobody`.
        self.jails = JailPool(self.bwrap, tasks_dir, protect_by_mount=not self.protect_by_owner) \
            if jails and self.bwrap else None
        self._input_owner = input_owner()
        self.on_output = on_output  # a running step's output as it comes
        self._in_use: Counter[str] = Counter()  # digests linked into running steps' task dirs
        self._touched: dict[str, float] = {}  # digest -> when this process last moved its LRU clock
        self._tidying: set[asyncio.Task[None]] = set()  # task dirs being removed

    def in_use(self) -> frozenset[str]:
        """Digests some running step's task dir uses: not to be evicted (a link count cannot tell, once
        same-host stores share inodes)."""
        return frozenset(self._in_use)

    def prestart_jails(self, n: int) -> None:
        """Start up to `n` jails in the background, so that the first steps need not each wait for
        one (chefs/jail.py); nothing where steps get a bwrap each."""
        if self.jails is not None:
            self.jails.prestart(n)

    @property
    def sandboxed(self) -> bool:
        return self.bwrap is not None

    async def run(self, step: StepRequest, *, tidy_after: asyncio.Future[None] | None = None) -> Outcome:
        """Cook `step`. Its task dir is removed in the background, once `tidy_after` is done if
        given: a chef passes its answer's sending, since unlinking a hundred inputs in a thread
        while the answer waits for the event loop delayed it by ~0.3 ms."""
        inputs = [(i.path, i.digest) for i in step.inputs]
        jail = await self.jails.acquire() if self.jails else None
        task = TaskDir(self.tasks_dir, step.step_id, in_place=jail.work_dir if jail else None)
        self._in_use.update(d for _, d in inputs)
        try:
            executables = frozenset(i.path for i in step.inputs if i.executable)
            linked = [(p, d) for p, d in inputs if p not in executables and p not in step.outputs]
            store_stat = await asyncio.to_thread(self._prepare, task, step, inputs, executables)
            binds = [] if self.protect_by_owner else [p for p, _ in linked]
            status, log, timed_out = await self._execute(step, task.path, binds, jail)
            if timed_out:
                return Outcome(ErrorCode.TIMEOUT, status, log=log,
                               message=f"step {step.step_id} ran longer than {step.timeout_s:g}s")
            # bwrap binds inputs read-only; without it (and as root, which ignores 0444) check.
            changed = None if self.sandboxed else task.input_changed(linked, store_stat)
            if changed:
                await asyncio.to_thread(self._quarantine, dict(linked)[changed])
                return Outcome(ErrorCode.COMMAND_FAILED, status, log=log,
                               message=f"step {step.step_id} modified its input {changed}, which is read-only")
            if status != 0:
                return Outcome(ErrorCode.COMMAND_FAILED, status, log=log, message=self._failure(step, status, log))
            modes = _regular_file_modes(str(task.path), step.outputs)
            missing = [o for o, mode in zip(step.outputs, modes, strict=True) if mode is None]
            if missing:
                return Outcome(ErrorCode.OUTPUT_MISSING, status, log=log,
                               message=f"step {step.step_id} did not make {', '.join(missing)}")
            discovered = await asyncio.to_thread(self._discover, step, task.path)
            stored = await self.store.ingest_outputs([task.path / o for o in step.outputs])
            cutoffs = await asyncio.gather(*(self._cutoff(step.normalise.get(o), d) for o, (d, _) in
                                             zip(step.outputs, stored, strict=True)))
            outputs = [OutputRef(path=o, digest=d, size=s, executable=bool(m & 0o111), cutoff=cut)
                       for o, (d, s), m, cut in zip(step.outputs, stored, modes, cutoffs, strict=True)]
            return Outcome(ErrorCode.OK, status, outputs=outputs, discovered=discovered, log=log)
        finally:
            # The answer does not wait for the task dir to go: it is tidied in the background.
            if jail is not None and self.jails is not None:
                self.jails.tidying()  # now, so that the next step waits for this jail, not starts one
            self._in_background(self._tidy(task, [d for _, d in inputs], tidy_after, jail))

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tidying.add(task)
        task.add_done_callback(self._tidying.discard)

    async def _tidy(self, task: TaskDir, digests: list[str], after: asyncio.Future[None] | None,
                    jail: Jail | None) -> None:
        try:
            if after is not None:
                with contextlib.suppress(asyncio.CancelledError):  # stopping: remove it now
                    await asyncio.shield(after)
            if jail is None or self.jails is None:
                await task.remove()
                return
            reusable = False
            try:
                if jail.healthy:
                    await task.remove()  # emptied in place: the jail's /work
                    reusable = True
            except Exception as exc:  # any failure: this jail's work dir is not known empty
                log.warning("could not empty jail work dir %s: %s", task.path, exc)
            finally:
                await self.jails.release(jail, reusable=reusable)
        finally:
            self._in_use.subtract(digests)
            self._in_use = +self._in_use  # drop the zeros

    async def drain(self) -> None:
        """Wait for finished steps' task dirs to be removed, and end the jails (a chef stopping)."""
        while self._tidying:
            await asyncio.gather(*self._tidying, return_exceptions=True)
        if self.jails is not None:
            await self.jails.close()

    def _prepare(self, task: TaskDir, step: StepRequest, inputs: list[tuple[str, str]],
                 executables: frozenset[str]) -> dict[str, os.stat_result]:
        """Make the task dir, mark its inputs used, protect them: one thread hop. Returns the linked
        store entries' stats (taken before the step runs, to catch an unsandboxed step writing to
        one).

        The LRU clock (an entry's atime) moves at most every TOUCH_EVERY_S per entry: a utime per
        input per step was a tenth of a 100-input step's overhead. Protection by owner gives an
        entry to `nobody` once (a chown per inode; it moves only the ctime, which no check
        compares); `make` has just stat'ed each one, so checking costs nothing."""
        linked = task.make(self.store, inputs, step.outputs, executables)
        now = time.monotonic()
        if len(self._touched) > TOUCHED_MAX:
            self._touched = {d: t for d, t in self._touched.items() if now - t < TOUCH_EVERY_S}
        for _, digest in inputs:
            if now - self._touched.get(digest, -TOUCH_EVERY_S) >= TOUCH_EVERY_S:
                info = linked.get(digest)
                self.store.touch(digest, info.st_mtime_ns if info else None)
                self._touched[digest] = now
        if self.protect_by_owner:
            uid, gid = self._input_owner
            for digest, info in linked.items():
                if (info.st_uid, info.st_gid) != (uid, gid):
                    os.chown(self.store.entry(digest), uid, gid)
        return linked

    async def _execute(self, step: StepRequest, cwd: Path, binds: list[str],
                       jail: Jail | None = None) -> tuple[int, str, bool]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/tmp" if self.bwrap else str(cwd),
               **BASE_ENV, **step.env}
        if jail is not None:
            try:
                return await self._execute_in_jail(step, jail, env, binds)
            except _JailUnusable as exc:  # nothing ran: a bwrap of its own, around the same task dir
                log.warning("step %s: %s; running it in a sandbox of its own", step.step_id, exc)
        argv = sandbox_argv(self.bwrap, cwd, binds, step.command) if self.bwrap else plain_argv(step.command)
        try:
            proc = await self._spawn(argv, cwd, env)
        except OSError:
            if self.bwrap or argv[0] == SHELL:
                raise
            # Exec'd directly and not startable (not found, not executable, a script without #!):
            # the shell says why in its own words, and runs a #!-less script as sh would.
            proc = await self._spawn([SHELL, "-c", step.command], cwd, env)
        timed_out = False
        output = _TailBuffer(LOG_LIMIT)

        async def run() -> None:
            assert proc.stdout
            await self._stream(step, proc.stdout, output)
            await proc.wait()

        try:
            await asyncio.wait_for(run(), step.timeout_s)
        except TimeoutError:
            timed_out = True
            _kill_group(proc.pid)
            await proc.wait()
        except asyncio.CancelledError:
            _kill_group(proc.pid)
            await proc.wait()
            raise
        return proc.returncode if proc.returncode is not None else -1, output.text(), timed_out

    async def _execute_in_jail(self, step: StepRequest, jail: Jail, env: dict[str, str],
                               binds: list[str]) -> tuple[int, str, bool]:
        """Run the command in a jail: its output through a pipe made here, its status from the
        jail's pid 1. A timeout or a cancel kills the jail and all that runs in it."""
        loop = asyncio.get_running_loop()
        read_end, write_end = os.pipe()
        reader = asyncio.StreamReader()
        try:
            transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                                        os.fdopen(read_end, "rb", buffering=0))
        except BaseException:
            os.close(write_end)
            raise
        try:
            try:
                await jail.send(command_argv(step.command), env, write_end, binds)
            except JailError as exc:
                await jail.kill()
                raise _JailUnusable(str(exc)) from None
            output = _TailBuffer(LOG_LIMIT)

            async def run() -> int:
                await self._stream(step, reader, output)
                return await jail.wait()

            try:
                return await asyncio.wait_for(run(), step.timeout_s), output.text(), False
            except TimeoutError:
                await jail.kill()
                return -9, output.text(), True
            except JailError as exc:  # its pid 1 died under the step (killed from outside, out of memory)
                await jail.kill()
                return -1, output.text() + f"\n[the step's sandbox ended under it: {exc}]\n", False
            except asyncio.CancelledError:
                await jail.kill()
                raise
        finally:
            transport.close()

    @staticmethod
    async def _spawn(argv: list[str], cwd: Path, env: dict[str, str]) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            *argv, cwd=cwd, env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # so a timeout can kill the whole process group
        )

    async def _stream(self, step: StepRequest, stream: asyncio.StreamReader, output: _TailBuffer) -> None:
        """Keep the output's tail for the result, and pass it on as it comes, at most every
        LOG_FLUSH_S (watchers see a long LaTeX run or test suite progress)."""
        pending: list[bytes] = []
        last = time.monotonic()
        while chunk := await stream.read(65536):
            output.add(chunk)
            if self.on_output is not None:
                pending.append(chunk)
                if time.monotonic() - last >= LOG_FLUSH_S:
                    self.on_output(step, b"".join(pending).decode(errors="replace"))
                    pending.clear()
                    last = time.monotonic()
        if pending and self.on_output is not None:
            self.on_output(step, b"".join(pending).decode(errors="replace"))

    def _failure(self, step: StepRequest, status: int, log: str) -> str:
        """One sentence first: for LaTeX, the error and the source line it points to, not 2,000
        lines of log; otherwise the exit status (the log tail follows in the report)."""
        default = f"step {step.step_id} failed with exit status {status}"
        if step.kind != "latex":
            return default
        summary = summarise_latex_log(log, {i.path for i in step.inputs})
        return f"{summary}\n({default})" if summary else default

    async def _cutoff(self, spec: str | None, digest: str) -> str:
        """The normalised digest that decides early cutoff; "" where no normaliser applies."""
        if not spec or spec == "none":
            return ""
        try:
            return await asyncio.to_thread(normalised_digest, self.store.path_for(digest), spec)
        except NormaliserError:
            return ""  # the MajorDomo checks specs at load; an unknown one only costs cutoff, never correctness

    def _discover(self, step: StepRequest, task_dir: Path) -> list[str]:
        found: list[str] = []
        if step.depfile and (task_dir / step.depfile).is_file():
            found += parse_depfile((task_dir / step.depfile).read_text(errors="replace"))
        if step.recorder:
            for fls in task_dir.rglob("*.fls"):
                found += parse_fls(fls.read_text(errors="replace"))
        if not found:
            return []
        # Paths inside the sandbox are under /work; map them back onto the task dir.
        mapped = [str(task_dir / p[len("/work/"):]) if p.startswith("/work/") else p for p in found]
        outputs = set(step.outputs)
        return sorted(p for p in project_relative(mapped, task_dir) if p not in outputs)

    def _quarantine(self, digest: str) -> None:
        """A stored file whose bytes a step may have changed can no longer be trusted: drop it."""
        with contextlib.suppress(FileNotFoundError):
            os.chmod(self.store.path_for(digest), 0o644)
        self.store.delete(digest)


class _JailUnusable(Exception):
    """The jail broke before the step started: nothing ran."""


def _regular_file_modes(task_dir: str, outputs: list[str]) -> list[int | None]:
    """Each output's mode, None where the step left no regular file."""
    modes: list[int | None] = []
    for rel in outputs:
        try:
            mode = os.stat(f"{task_dir}/{rel}").st_mode
        except OSError:
            mode = None
        modes.append(mode if mode is not None and stat.S_ISREG(mode) else None)
    return modes


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, 9)
    except ProcessLookupError:
        pass


class _TailBuffer:
    """The last `limit` bytes of a stream, and whether anything before them was cut."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.cut = False

    def add(self, chunk: bytes) -> None:
        self.data += chunk
        if len(self.data) > 2 * self.limit:  # trim in bulk, not per chunk
            del self.data[:-self.limit]
            self.cut = True

    def text(self) -> str:
        text = self.data.decode(errors="replace")
        if self.cut or len(text) > self.limit:
            return "[... earlier output cut ...]\n" + text[-self.limit:]
        return text
