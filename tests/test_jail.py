"""Jails: a root chef's steps run one after another in a reused bwrap sandbox (chefs/jail.py).
Each step must still see only its own task dir and the tools: nothing the step before left in
/tmp, /dev/shm, its work dir or its process table. Real bwrap; root (protection by owner)."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import time
from pathlib import Path

import pytest
from conftest import alive, children_of, require, wait_gone

from artefacts.store import Store
from chefs.cooking import Cook, Outcome
from chefs.jail import FAILURES_TO_GIVE_UP, Jail, JailPool
from chefs.sandbox import JAIL_INIT, can_protect_by_owner
from protocol.errors import ErrorCode
from protocol.messages import InputRef, StepRequest

WAIT_S = 20.0


@pytest.fixture
def cook(tmp_path: Path) -> Cook:
    require(shutil.which("bwrap") is not None, "bwrap is not installed")
    require(can_protect_by_owner(tmp_path / "probe"), "jails serve chefs that protect inputs by owner (root)")
    store = Store(tmp_path / "store")
    source = tmp_path / "in.txt"
    source.write_text("original\n")
    [(digest, size)] = asyncio.run(store.ingest([source]))
    _INPUT[store.root] = InputRef(path="in.txt", digest=digest, size=size)
    cook = Cook(store, tmp_path / "tasks", {})
    assert cook.jails is not None
    return cook


_INPUT: dict[Path, InputRef] = {}  # each test's one stored input, by store


def _step(cook: Cook, name: str, command: str, *, timeout_s: float = 60.0) -> StepRequest:
    return StepRequest(step_id=name, action_key=name, kind="shell", pods=[], command=command,
                       inputs=[_INPUT[cook.store.root]], outputs=["out.txt"], timeout_s=timeout_s)


def _cook_all(cook: Cook, steps: list[StepRequest]) -> list[Outcome]:
    async def run() -> list[Outcome]:
        outcomes = [await cook.run(step) for step in steps]
        await cook.drain()
        return outcomes

    return asyncio.run(run())


def _jails_started(cook: Cook) -> int:
    assert cook.jails is not None
    return cook.jails.started


def test_a_step_sees_nothing_the_step_before_it_left(cook: Cook) -> None:
    leaver = _step(cook, "leaver", "sleep 300 & touch /tmp/left /dev/shm/left left.txt; mkdir -p /tmp/d/e; "
                                   "chmod 0 /tmp/d; ipcmk -M 4096 && ipcmk -Q && cp in.txt out.txt")
    looker = _step(cook, "looker", "{ ls -A /tmp /dev/shm .; cat /proc/[0-9]*/comm; ipcs -m -q; } > out.txt")
    leaving, looking = _cook_all(cook, [leaver, looker])
    assert leaving.code == looking.code == ErrorCode.OK, leaving.log + looking.log
    assert _jails_started(cook) == 1  # the same jail ran both
    seen = cook.store.path_for(looking.outputs[0].digest).read_text()
    assert "left" not in seen and "\nd\n" not in seen  # scratch and work dir emptied
    assert "in.txt" in seen and "out.txt" in seen  # its own task dir
    assert "sleep" not in seen  # the first step's background job was killed
    assert "Shared Memory" in seen and "0x" not in seen  # its SysV IPC objects removed
    assert list(cook.tasks_dir.iterdir()) == []  # drained: jails ended, work dirs removed


def test_a_step_cannot_change_the_jail_for_the_next(cook: Cook) -> None:
    tamper = _step(cook, "tamper", "touch /escape; touch /dev/escape; cat /proc/1/environ; ls -l /proc/1/fd; "
                                   "kill -9 1; kill -INT 1; echo 1 > /proc/sys/kernel/msgmni; touch /dev/mqueue/q; "
                                   "python3 -c 'import os; os.setxattr(\".\", \"user.leak\", b\"x\")'; "
                                   "cp in.txt out.txt")
    after = _step(cook, "after", "ls -A / /dev /dev/mqueue > out.txt; "
                                 "python3 -c 'import os; print(os.listxattr(\".\"))' >> out.txt")
    tampered, later = _cook_all(cook, [tamper, after])
    assert tampered.code == ErrorCode.OK and later.code == ErrorCode.OK, tampered.log + later.log
    assert tampered.log.count("Read-only file system") == 3  # /, /dev, /proc/sys
    assert tampered.log.count("Permission denied") >= 2  # pid 1 is not dumpable: no environ, no fds
    assert _jails_started(cook) == 1  # neither `kill -9 1` nor `kill -INT 1` ended it
    seen = cook.store.path_for(later.outputs[0].digest).read_text()
    assert "escape" not in seen and "\nq\n" not in seen  # no file, no POSIX message queue left
    assert seen.endswith("\n[]\n")  # no extended attribute left on /work


def test_a_step_that_lowers_pid_1s_settings_gets_the_jail_retired(cook: Cook) -> None:
    lower = _step(cook, "lower", "renice -n 7 -p 1 && prlimit --pid 1 --fsize=1000000 && cp in.txt out.txt")
    look = _step(cook, "look", "{ nice; ulimit -f; } > out.txt")
    lowered, looked = _cook_all(cook, [lower, look])
    assert lowered.code == looked.code == ErrorCode.OK, lowered.log + looked.log
    assert cook.store.path_for(looked.outputs[0].digest).read_text() == "0\nunlimited\n"
    assert _jails_started(cook) == 2  # the changed one was not used again


def test_a_very_deep_tree_left_behind_is_removed(cook: Cook) -> None:
    deep = "/".join(["d"] * 1100)
    steps = [_step(cook, "deep", f"mkdir -p {deep} /tmp/{deep} && cp in.txt out.txt"),
             _step(cook, "next", "ls -A . /tmp > out.txt")]
    made, after = _cook_all(cook, steps)
    assert made.code == after.code == ErrorCode.OK, made.log + after.log
    assert cook.store.path_for(after.outputs[0].digest).read_text() == ".:\nin.txt\nout.txt\n\n/tmp:\n"
    assert _jails_started(cook) == 1


def test_the_command_gets_its_own_environment_and_status(cook: Cook) -> None:
    steps = [_step(cook, "env", "env > out.txt"), _step(cook, "fails", "cat no-such-file")]
    steps[0].env["STEP_VAR"] = "x y"
    env, fails = _cook_all(cook, steps)
    text = cook.store.path_for(env.outputs[0].digest).read_text()
    assert "STEP_VAR=x y\n" in text and "HOME=/tmp\n" in text
    assert fails.code == ErrorCode.COMMAND_FAILED and fails.exit_status == 1
    assert "no-such-file" in fails.log


def test_a_timed_out_step_ends_its_jail_and_the_next_step_gets_a_new_one(cook: Cook) -> None:
    started = time.monotonic()
    slow, quick = _cook_all(cook, [_step(cook, "slow", "sleep 300", timeout_s=1.0),
                                   _step(cook, "quick", "cp in.txt out.txt")])
    assert slow.code == ErrorCode.TIMEOUT
    assert time.monotonic() - started < WAIT_S
    assert quick.code == ErrorCode.OK, quick.log
    assert _jails_started(cook) == 2


def test_a_jail_killed_between_steps_is_replaced(cook: Cook) -> None:
    async def run() -> list[Outcome]:
        first = await cook.run(_step(cook, "first", "cp in.txt out.txt"))
        await _settled(cook)
        [jail] = cook.jails._free  # type: ignore[union-attr]
        jail._proc.kill()  # as the OOM killer or an operator would
        await jail._proc.wait()
        second = await cook.run(_step(cook, "second", "cp in.txt out.txt"))  # its own bwrap, then
        third = await cook.run(_step(cook, "third", "cp in.txt out.txt"))  # a new jail
        await cook.drain()
        return [first, second, third]

    outcomes = asyncio.run(run())
    assert [o.code for o in outcomes] == [ErrorCode.OK] * 3, [o.log for o in outcomes]
    assert _jails_started(cook) == 2


def test_a_jail_killed_under_a_step_fails_that_step_only(cook: Cook) -> None:
    async def run() -> list[Outcome]:
        victim = asyncio.ensure_future(cook.run(_step(cook, "victim", "touch started; sleep 300")))
        marker = await _wait_for_file(cook, "started")
        [jail] = [j for j in cook.jails._all if j.work_dir == marker.parent]  # type: ignore[union-attr]
        jail._proc.kill()
        killed = await asyncio.wait_for(victim, WAIT_S)
        after = await cook.run(_step(cook, "after", "cp in.txt out.txt"))
        await cook.drain()
        return [killed, after]

    killed, after = asyncio.run(run())
    assert killed.code == ErrorCode.COMMAND_FAILED
    assert "sandbox ended under it" in killed.log
    assert after.code == ErrorCode.OK, after.log


def test_a_jail_whose_pid_1_dies_with_the_request_unread_fails_that_step_only(cook: Cook) -> None:
    """pid 1 killed (the OOM killer, an operator) after the chef sent a step but before it read it:
    the chef's read gets ECONNRESET, not an end of file. That is the jail gone too: the step fails
    saying so, the jail is not given back, and the next step gets a new one."""
    import signal

    async def run() -> tuple[Outcome, bool, Outcome]:
        assert (await cook.run(_step(cook, "first", "cp in.txt out.txt"))).code == ErrorCode.OK
        await _settled(cook)
        [jail] = cook.jails._free  # type: ignore[union-attr]
        pid1 = _pid_1_of(jail._proc.pid)
        os.kill(pid1, signal.SIGSTOP)  # it must not read the next request before it dies
        real_send = jail.send

        async def send_then_kill(*args):  # type: ignore[no-untyped-def]
            await real_send(*args)  # the request fits in the socket's buffer: sent at once
            os.kill(pid1, signal.SIGKILL)

        jail.send = send_then_kill  # type: ignore[method-assign]
        victim = await cook.run(_step(cook, "victim", "cp in.txt out.txt"))
        await _settled(cook)
        reused = jail in cook.jails._free  # type: ignore[union-attr]
        after = await cook.run(_step(cook, "after", "cp in.txt out.txt"))
        await cook.drain()
        return victim, reused, after

    victim, reused, after = asyncio.run(run())
    assert victim.code == ErrorCode.COMMAND_FAILED and "sandbox ended under it" in victim.log, victim.log
    assert not reused
    assert after.code == ErrorCode.OK, after.log
    assert _jails_started(cook) == 2


def test_a_jails_pid_1_runs_its_program_by_path(cook: Cook) -> None:
    """An operator's `ps` shows each jail's pid 1 as a short command naming its program, not the
    program's whole text."""
    async def run() -> bytes:
        jail = await cook.jails.acquire()  # type: ignore[union-attr]
        assert jail is not None
        try:
            return Path(f"/proc/{_pid_1_of(jail._proc.pid)}/cmdline").read_bytes()
        finally:
            await cook.jails.discard(jail)  # type: ignore[union-attr]

    argv = asyncio.run(run()).split(b"\0")[:-1]
    assert len(b" ".join(argv)) < 300, argv
    assert argv[1:-1] == [b"-I", b"-S", JAIL_INIT.encode()] and argv[-1].isdigit(), argv  # and FD
    assert b"def _end_leftovers" not in b" ".join(argv)  # none of chefs/jail_init.py's text


def _pid_1_of(bwrap: int) -> int:
    """A jail's pid 1 (python), found among its bwrap's descendants."""
    todo = [bwrap]
    while todo:
        pid = todo.pop()
        if pid != bwrap and Path(f"/proc/{pid}/comm").read_text().startswith("python"):
            return pid
        for task in Path(f"/proc/{pid}/task").iterdir():
            todo += [int(child) for child in (task / "children").read_text().split()]
    raise LookupError(f"no pid 1 under bwrap {bwrap}")


def test_a_send_cancelled_half_way_retires_the_jail(cook: Cook) -> None:
    """pid 1 then holds a request's length and part of its bytes: in that jail the next request
    would be read askew, its first bytes taken for the rest of this one. It must run no other step.
    The loop's sock_sendall is stood in for once, so that the cancel lands half-way every time."""
    async def run() -> None:
        loop = asyncio.get_running_loop()
        real_sendall = loop.sock_sendall
        halfway = asyncio.Event()

        async def half_then_stall(sock: socket.socket, data: bytes) -> None:
            del loop.sock_sendall  # once: the next request goes whole
            await real_sendall(sock, data[:len(data) // 2])  # really sent: pid 1 reads it
            halfway.set()
            await loop.create_future()  # the rest waits, as for a pid 1 slow to read a long request

        loop.sock_sendall = half_then_stall  # type: ignore[method-assign]
        first = _step(cook, "first", 'printf %s "$STEP_VAR" > out.txt')
        first.env["STEP_VAR"] = "first"
        cancelled = asyncio.ensure_future(cook.run(first))
        await asyncio.wait_for(halfway.wait(), WAIT_S)
        [jail] = cook.jails._all  # type: ignore[union-attr]
        cancelled.cancel()
        await asyncio.wait([cancelled])
        assert cancelled.cancelled() and not jail.healthy
        second = _step(cook, "second", 'printf %s "$STEP_VAR" > out.txt')
        second.env["STEP_VAR"] = "second"
        after = await asyncio.wait_for(cook.run(second), WAIT_S)
        await _settled(cook)
        pooled = jail in cook.jails._all  # type: ignore[union-attr]
        # Killed (-9), or ended by itself first: kill() closes the socket before it signals.
        assert (jail._proc.returncode is not None, jail.work_dir.exists(), pooled) == (True, False, False)
        assert after.code == ErrorCode.OK, after.log
        assert cook.store.path_for(after.outputs[0].digest).read_text() == "second"  # its argv and env, whole
        assert _jails_started(cook) == 2  # a new jail ran it
        await cook.drain()

    asyncio.run(run())


def test_a_chef_stopping_ends_its_idle_jails_and_lets_a_running_step_finish(cook: Cook) -> None:
    """A chef's drain (JailPool.close) ends the idle jails; a jail running a step keeps running it,
    and is killed and its work dir removed when the step gives it back."""
    async def run() -> None:
        busy = asyncio.ensure_future(cook.run(_step(
            cook, "busy", 'mkfifo gate && touch started && read -r word < gate && echo "$word" > out.txt')))
        marker = await _wait_for_file(cook, "started")
        [busy_jail] = cook.jails._all  # type: ignore[union-attr]
        idle = await cook.run(_step(cook, "idle", "cp in.txt out.txt"))  # in a second jail
        await _settled(cook)
        [idle_jail] = cook.jails._free  # type: ignore[union-attr]
        assert idle.code == ErrorCode.OK, idle.log
        await asyncio.wait_for(cook.drain(), WAIT_S)  # the chef stops while "busy" runs
        assert (idle_jail._proc.returncode, idle_jail.work_dir.exists()) == (0, False)  # pid 1 saw the socket close
        assert (busy_jail._proc.returncode, busy_jail.healthy, busy.done()) == (None, True, False)  # still running
        gate = os.open(marker.parent / "gate", os.O_RDWR | os.O_NONBLOCK)  # opens without waiting for the reader
        try:
            os.write(gate, b"go\n")
            finished = await asyncio.wait_for(busy, WAIT_S)
        finally:
            os.close(gate)  # only now: `read` must find the line whenever it opens the fifo
        assert finished.code == ErrorCode.OK, finished.log
        assert cook.store.path_for(finished.outputs[0].digest).read_text() == "go\n"
        await _settled(cook)  # the busy step gave its jail back
        assert (busy_jail._proc.returncode is not None, busy_jail.work_dir.exists()) == (True, False)  # killed
        assert cook.jails._all == set() and cook.jails._free == []  # type: ignore[union-attr]

    asyncio.run(run())
    assert list(cook.tasks_dir.iterdir()) == []


def test_jails_started_beforehand_serve_the_first_steps(cook: Cook) -> None:
    async def run() -> tuple[tuple[int, int], list[Jail | None], int]:
        pool = _pool(cook)
        cook.prestart_jails(2)
        await asyncio.wait_for(pool.prestarted(), WAIT_S)
        ready = (pool.started, len(pool._free))
        jails = [await pool.acquire(), await pool.acquire()]
        for jail in jails:
            await pool.discard(jail)  # type: ignore[arg-type]
        await cook.drain()
        return ready, jails, pool.started

    ready, jails, started = asyncio.run(run())
    assert ready == (2, 2)  # both idle, before any step asked
    assert None not in jails and started == 2  # the steps started none of their own
    assert list(cook.tasks_dir.iterdir()) == []


def test_a_step_asking_while_jails_start_beforehand_waits_for_one(cook: Cook) -> None:
    async def run() -> tuple[list[Jail | None], int, int]:
        pool = _pool(cook)
        pool.prestart(2)
        assert len(pool._prestarts) == 2  # and nothing has run yet: both are still starting when the steps ask
        jails = await asyncio.wait_for(asyncio.gather(pool.acquire(), pool.acquire()), WAIT_S)
        await asyncio.wait_for(pool.prestarted(), WAIT_S)  # a start the steps did not wait for ends too
        started, idle = pool.started, len(pool._free)
        for jail in jails:
            await pool.discard(jail)  # type: ignore[arg-type]
        await cook.drain()
        return jails, started, idle

    jails, started, idle = asyncio.run(run())
    assert None not in jails and len(set(jails)) == 2
    assert (started, idle) == (2, 0)  # the steps got the two started beforehand, and started no third
    assert list(cook.tasks_dir.iterdir()) == []


def test_a_step_beyond_the_jails_starting_beforehand_gets_its_own(cook: Cook, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two jails start beforehand and three steps ask: the third is no one's to wait for."""
    held, go = _hold_starts(monkeypatch, 2)

    async def run() -> tuple[bool, list[Jail | None], int]:
        pool = _pool(cook)
        pool.prestart(2)
        first_two = asyncio.gather(pool.acquire(), pool.acquire())
        await asyncio.wait_for(held.wait(), WAIT_S)
        third = asyncio.ensure_future(pool.acquire())
        await asyncio.wait([third], timeout=WAIT_S)
        at_once = third.done()  # while those two were still held starting
        go.set()
        jails = await asyncio.wait_for(asyncio.gather(first_two, third), WAIT_S)
        jails = [*jails[0], jails[1]]
        for jail in jails:
            await pool.discard(jail)  # type: ignore[arg-type]
        await cook.drain()
        return at_once, jails, pool.started

    at_once, jails, started = asyncio.run(run())
    assert at_once, "the third step waited for a jail another step was waiting for"
    assert None not in jails and started == 3
    assert list(cook.tasks_dir.iterdir()) == []


def test_a_chef_stopping_while_jails_start_beforehand_leaves_none(cook: Cook, monkeypatch: pytest.MonkeyPatch) -> None:
    held, _go = _hold_starts(monkeypatch, 2)  # never set: both are still starting when the pool closes

    async def run() -> list[int]:
        pool = _pool(cook)
        pool.prestart(2)
        await asyncio.wait_for(held.wait(), WAIT_S)
        bwraps = [pid for pid in children_of(os.getpid())
                  if str(cook.tasks_dir).encode() in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert len(bwraps) == 2, bwraps
        processes = bwraps + [child for pid in bwraps for child in children_of(pid)]  # and their pid 1s
        await asyncio.wait_for(cook.drain(), WAIT_S)
        assert pool._prestarts == set() and pool._free == [] and pool.started == 0
        assert not [pid for pid in bwraps if alive(pid)]  # killed, not left to end
        return processes

    processes = asyncio.run(run())
    assert wait_gone(processes) == []  # pid 1 ends with its bwrap (--die-with-parent)
    assert list(cook.tasks_dir.iterdir()) == []


@pytest.mark.parametrize("bwrap", ["/bin/false", "/no/such/bwrap"])  # pid 1 gone at once; no bwrap to run
def test_jails_that_fail_to_start_beforehand_count_as_failed_starts(tmp_path: Path, bwrap: str) -> None:
    async def run() -> tuple[list[BaseException | None], str | None, Jail | None]:
        pool = JailPool(bwrap, tmp_path / "tasks")
        pool.prestart(FAILURES_TO_GIVE_UP)
        tasks = set(pool._prestarts)
        await asyncio.wait_for(pool.prestarted(), WAIT_S)
        return [t.exception() for t in tasks], pool.broken, await pool.acquire()

    errors, broken, jail = asyncio.run(run())
    assert errors == [None] * FAILURES_TO_GIVE_UP  # none raised out of its task
    assert broken is not None  # so the pool gave up, as after failed acquires
    assert jail is None
    assert list((tmp_path / "tasks").iterdir()) == []  # no work dir left


def _pool(cook: Cook) -> JailPool:
    assert cook.jails is not None
    return cook.jails


def _hold_starts(monkeypatch: pytest.MonkeyPatch, n: int) -> tuple[asyncio.Event, asyncio.Event]:
    """Hold the next `n` jail starts at their wait for pid 1's "ready" (their bwrap runs) until
    `go` is set; `held` is set once all `n` are held. Later starts go through."""
    real_line = Jail._line
    held, go = asyncio.Event(), asyncio.Event()
    holding = 0

    async def line(jail: Jail) -> bytes:
        nonlocal holding
        if holding < n:
            holding += 1
            if holding == n:
                held.set()
            await go.wait()
        return await real_line(jail)

    monkeypatch.setattr(Jail, "_line", line)
    return held, go


async def _settled(cook: Cook) -> None:
    """Wait until the finished steps' jails are back in the pool."""
    while cook._tidying:
        await asyncio.gather(*cook._tidying)


async def _wait_for_file(cook: Cook, name: str) -> Path:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        for work_dir in cook.tasks_dir.glob("*"):  # none until the first jail starts
            if (work_dir / name).exists():
                return work_dir / name
        await asyncio.sleep(0.01)
    raise AssertionError(f"no step made {name} in {WAIT_S}s: {os.listdir(cook.tasks_dir)}")


def _processes_naming(marker: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(int(pid))
        except OSError:
            continue
    return found


def test_a_jail_cancelled_at_any_moment_of_its_start_leaves_no_process(tmp_path: Path) -> None:
    """bwrap killed while it sets its sandbox up leaves its child blocked for ever (on an eventfd
    its parent was to write), holding the chef's stderr pipe, so the chef's wait for it hung and a
    chef stopping while its jails started never ended. The cancel points sweep bwrap's set-up."""
    bwrap = shutil.which("bwrap")
    require(bwrap is not None, "bwrap is not installed")
    assert bwrap

    async def run() -> None:
        for n in range(60):
            start = asyncio.ensure_future(Jail.start(bwrap, tmp_path / f"jail-{n}"))
            await asyncio.sleep(n * 0.0003)  # not a wait for anything: where in the start the cancel lands
            start.cancel()
            try:
                jail = await asyncio.wait_for(start, 30)
            except asyncio.CancelledError:
                continue
            await jail.close()  # it was ready before the cancel landed

    asyncio.run(run())
    assert wait_gone(_processes_naming(str(tmp_path))) == []


# -- protection by mount: chefs that cannot give their inputs to `nobody` (not root) ----------------

@pytest.fixture
def mount_cook(tmp_path: Path) -> Cook:
    require(shutil.which("bwrap") is not None, "bwrap is not installed")
    store = Store(tmp_path / "store")
    source = tmp_path / "in.txt"
    source.write_text("original\n")
    [(digest, size)] = asyncio.run(store.ingest([source]))
    _INPUT[store.root] = InputRef(path="in.txt", digest=digest, size=size)
    cook = Cook(store, tmp_path / "tasks", {}, protect_by_owner=False)
    assert cook.jails is not None and cook.jails.protect_by_mount
    return cook


def test_a_jail_protecting_by_mount_keeps_inputs_read_only_and_leaves_no_bind(mount_cook: Cook) -> None:
    """Its pid 1 binds the step's inputs read-only: writing, chmod, unmounting and a mount
    namespace of the step's own all fail; other files can be made; and the next step in that jail
    writes a file at that very path (pid 1 unmounts the binds; the chef's emptying of the work dir
    would detach them too)."""
    tamper = _step(mount_cook, "tamper", "echo x >> in.txt; chmod 644 in.txt; umount in.txt; "
                                         "unshare -rm sh -c 'umount in.txt; echo y >> in.txt'; "
                                         "echo made > made.txt && cp in.txt out.txt")
    reuser = StepRequest(step_id="reuser", action_key="reuser", kind="shell", pods=[],
                         command="echo mine > in.txt && cp in.txt out.txt", inputs=[], outputs=["out.txt", "in.txt"])
    tampering, reusing = _cook_all(mount_cook, [tamper, reuser])
    assert tampering.code == ErrorCode.OK, tampering.log
    assert _jails_started(mount_cook) == 1  # one jail ran both: no bwrap per step
    stored = mount_cook.store.path_for(_INPUT[mount_cook.store.root].digest)
    assert stored.read_text() == "original\n"
    assert mount_cook.store.path_for(tampering.outputs[0].digest).read_text() == "original\n"
    for refused in ("cannot create in.txt", "chmod: changing permissions", "umount"):
        assert refused in tampering.log, tampering.log
    assert reusing.code == ErrorCode.OK, reusing.log
    assert mount_cook.store.path_for(reusing.outputs[0].digest).read_text() == "mine\n"
    assert list(mount_cook.tasks_dir.iterdir()) == []


def test_a_step_in_a_jail_protecting_by_mount_runs_as_the_chef_in_a_namespace_of_its_own(mount_cook: Cook) -> None:
    """The command's user namespace maps only the chef's ids (what a bwrap per step shows), onto
    pid 1's uid 0 in the jail's namespace: a namespace of its own, not the one owning the mounts."""
    probe = _step(mount_cook, "probe", "{ id -u; id -g; cat /proc/self/uid_map /proc/self/gid_map; } > out.txt")
    [outcome] = _cook_all(mount_cook, [probe])
    assert outcome.code == ErrorCode.OK, outcome.log
    uid, gid, *maps = mount_cook.store.path_for(outcome.outputs[0].digest).read_text().split()
    assert (int(uid), int(gid)) == (os.getuid(), os.getgid())
    assert maps == [uid, "0", "1", gid, "0", "1"], maps
