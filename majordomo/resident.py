"""The resident embedded federation: a nats-server and the local chefs that outlive one build.

Starting the embedded federation (a nats-server, two Python chef processes) costs about half a
second, which is most of an edit-build cycle of a small project. So, like the servers of Bazel or
Gradle, it stays up after a build, owned by a small supervisor process (`python -m
majordomo.resident`), and the next build in the project joins it. The supervisor stops everything
once no MajorDomo has been connected for `idle_s` (it asks the server's /connz), when the
project's state directory goes away, when one of its processes dies (the next build starts a
fresh one), on SIGTERM (`majordomo stop`), or when the code it runs is not the code of the build
asking for it (an upgrade, an edit of this repository).

The supervisor also runs builds (majordomo/build_server.py): once it is up, `majordomo build` hands
its arguments to it over `build.sock` instead of importing the engine and the federation stack.

Files, in `.majordomo/`: `resident.json` (url, pid, code fingerprint, key, environment,
socket; written once everything is up, removed on the way down), `resident.lock` (held by the
supervisor for its whole life, and by a build while it starts one, so two builds never start two)
and `build.sock`.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from artefacts.lifeline import pid_alive

if TYPE_CHECKING:
    import asyncio

    from artefacts.embedded_nats import EmbeddedNats
    from majordomo.build_server import BuildServer
    from majordomo.local_chefs import LocalChefs

SERVING = "resident-serving"  # the build server listens; the chefs still start
READY = "resident-ready"  # and the chefs are registered
DEFAULT_IDLE_S = 600.0
CHECK_S = 2.0
STOP_TIMEOUT_S = 20.0
START_TIMEOUT_S = 40.0
_PACKAGES = ("artefacts", "chefs", "majordomo", "protocol")
# What the federation's processes take from the environment at start: a build whose values differ
# must not join them (another PATH finds other tools; the others change keys or transfers).
_ENV_EXACT = ("PATH", "MAJORDOMO_KEY", "MAJORDOMO_AUTHORIZED_KEYS")
_ENV_PREFIX = "CP_"


def idle_seconds() -> float:
    """MAJORDOMO_RESIDENT: 0 stops the embedded federation with each build; N keeps it N s idle."""
    raw = os.environ.get("MAJORDOMO_RESIDENT", "")
    try:
        return max(0.0, float(raw)) if raw else DEFAULT_IDLE_S
    except ValueError:
        return DEFAULT_IDLE_S


def fingerprint() -> str:
    """Which code a federation runs: the interpreter and every module's size and mtime. A build
    never joins chefs that run other code than its own. Kept whole, not digested: it is compared,
    never shown, and the thin client of every build would pay ~2 ms to import hashlib."""
    root = Path(__file__).resolve().parent.parent
    parts = [os.path.realpath(sys.executable)]  # `python` and `python3.11` are one interpreter
    for package in _PACKAGES:
        with contextlib.suppress(OSError):
            for entry in sorted(os.scandir(root / package), key=lambda e: e.name):
                if entry.name.endswith(".py"):
                    st = entry.stat()
                    parts.append(f"{package}/{entry.name}:{st.st_size}:{st.st_mtime_ns}")
    return "\n".join(parts)


def environment() -> str:
    """The part of the environment the resident processes depend on (see _ENV_EXACT), whole."""
    return repr(sorted((k, v) for k, v in os.environ.items() if k in _ENV_EXACT or k.startswith(_ENV_PREFIX)))


def info_path(state_dir: Path) -> Path:
    return state_dir / "resident.json"


def read_info(state_dir: Path) -> dict | None:
    try:
        info = json.loads(info_path(state_dir).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and {"url", "pid", "fingerprint"} <= info.keys() else None


@contextlib.contextmanager
def start_lock(state_dir: Path, timeout_s: float):  # type: ignore[no-untyped-def]
    """Exclusive use of the project's resident slot: a supervisor holds it for its life, a build
    while it starts one. Waits (bounded) for a supervisor that is shutting down."""
    fd = os.open(state_dir / "resident.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{state_dir / 'resident.lock'} is held") from None
                time.sleep(0.05)  # a lock has no event to wait on; bounded by the deadline
        yield fd
    finally:
        os.close(fd)


def lock_is_held(state_dir: Path) -> bool:
    try:
        fd = os.open(state_dir / "resident.lock", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def stop_resident(state_dir: Path, timeout_s: float = STOP_TIMEOUT_S) -> bool:
    """Ask the project's supervisor to stop, and wait until it has let go of everything."""
    info = read_info(state_dir)
    if info is None and not lock_is_held(state_dir):
        return False
    if info is not None:
        import signal

        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(int(info["pid"]), signal.SIGTERM)
    with start_lock(state_dir, timeout_s):  # released when the supervisor has exited
        info_path(state_dir).unlink(missing_ok=True)
    return True



def withdraw(state_dir: Path, made_state_dir: bool) -> None:
    """Undo a first build's start of the federation (the build failed on its input): stop it, and
    remove the state directory if that build made it. Blocking."""
    stop_resident(state_dir)
    if made_state_dir:
        import shutil

        shutil.rmtree(state_dir, ignore_errors=True)


def _spawn(state_dir: Path, lock_fd: int, idle_s: float, *, serving: bool) -> str:
    """Start the supervisor, detached (its own session, not killed with us), and wait for its ready
    line; with `serving`, only for its build server to listen (its chefs may still be starting)."""
    import subprocess

    log = open(state_dir / "resident.log", "ab")
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "majordomo.resident", "--state-dir", str(state_dir), "--idle", str(idle_s),
             "--lock-fd", str(lock_fd)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, pass_fds=(lock_fd,),
            start_new_session=True, cwd=Path(__file__).resolve().parent.parent)
    finally:
        log.close()
    assert proc.stdout
    with proc.stdout:
        line = proc.stdout.readline().decode(errors="replace").strip()  # bounded: the supervisor's own start-up
        if line.startswith(SERVING) and not serving:
            line = proc.stdout.readline().decode(errors="replace").strip()  # and its chefs' (bounded too)
    if not line.startswith((SERVING, READY) if serving else READY):
        proc.wait(STOP_TIMEOUT_S)
        tail = (state_dir / "resident.log").read_text(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError("the embedded federation did not start: " + " ".join(tail))
    return line.split()[1]


def running(state_dir: Path, key: str) -> dict | None:
    """The project's resident federation's info if one is up with our code, key and environment."""
    info = read_info(state_dir)
    if info is None or not pid_alive(int(info["pid"])) or not lock_is_held(state_dir):
        return None
    return info if _suits(info, key) else None


def _suits(info: dict, key: str) -> bool:
    return info["fingerprint"] == fingerprint() and info.get("key") == key and info.get("env") == environment()


def resident_idle_s(nats_url: str | None, *, resident: bool = True, attach_url: str | None = None) -> float:
    """How long a federation joined with these settings stays up idle; 0 unless it is the
    project's resident one (no `--nats`, not a watch's private one, not the supervisor's own)."""
    if nats_url is not None or attach_url or not resident:
        return 0.0
    return idle_seconds()


def embedded_key(state_dir: Path) -> str:
    """The federation key's path: MAJORDOMO_KEY, or the project's own (see embedded_keys)."""
    return str(Path(os.environ.get("MAJORDOMO_KEY") or state_dir / "keys" / "federation"))


def embedded_key_pair(state_dir: Path) -> tuple[Path, Path]:
    """The federation key's path and its .pub's, which chefs authorize (see embedded_keys)."""
    key = Path(embedded_key(state_dir))
    return key, key.with_name(key.name + ".pub")


async def embedded_keys(state_dir: Path) -> tuple[Path, Path]:
    """The federation key (and its .pub, which chefs authorize): MAJORDOMO_KEY, which an operator
    hands out to every pod, or the project's own for the embedded federation, made if missing.

    An existing pair is not read here (its users read it): the supervisor calls this before its
    chefs start. A missing one is made without asyncssh (`keys.ensure_key`)."""
    import asyncio

    key, public = embedded_key_pair(state_dir)
    if not (key.is_file() and public.is_file()):
        from artefacts.keys import ensure_key

        await asyncio.to_thread(ensure_key, key)
    return key, public


def join_or_start(state_dir: Path, key: str, idle_s: float, *, serving: bool = False) -> str:
    """The URL of the project's resident federation, started now if none runs with our code and key,
    once its chefs are registered; with `serving`, as soon as its build server takes builds.

    Blocking (locks, a child's start-up): call it in a thread."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        info = read_info(state_dir)
        held = lock_is_held(state_dir)
        if info is not None and held and pid_alive(int(info["pid"])):
            if not _suits(info, key):
                stop_resident(state_dir)  # other code, key or environment: it must not cook our steps
                continue
            if serving or info.get("chefs") == "ready":
                return str(info["url"])
            time.sleep(0.05)  # its chefs are starting (a process's start-up has no event to wait on here)
            continue
        if info is not None and not held:
            info_path(state_dir).unlink(missing_ok=True)  # its supervisor died without cleaning up
        fd = os.open(state_dir / "resident.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                time.sleep(0.05)  # another build is starting one: join it once it is ready
                continue
            return _spawn(state_dir, fd, idle_s, serving=serving)
        finally:
            os.close(fd)  # the supervisor keeps its own descriptor, and with it the lock
    raise TimeoutError(f"no resident federation became ready within {START_TIMEOUT_S:g}s; "
                       f"see {state_dir / 'resident.log'}")


# -- the supervisor ---------------------------------------------------------------------------------

def _majordomo_connected(monitor_url: str) -> bool:
    """Whether any MajorDomo (a build, a watch) holds a connection to the server now."""
    import urllib.request

    with urllib.request.urlopen(f"{monitor_url}/connz?limit=1024", timeout=5) as reply:
        conns = json.load(reply).get("connections") or []
    return any(str(c.get("name", "")).startswith("majordomo:") for c in conns)


async def supervise(state_dir: Path, idle_s: float) -> int:
    import asyncio
    import shutil
    import signal

    from artefacts.embedded_nats import EmbeddedNats
    from majordomo.local_chefs import EMBEDDED_CHEFS, FederationError, LocalChefs

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, stopping.set)
    run_dir = state_dir / "run"
    shutil.rmtree(run_dir, ignore_errors=True)  # a killed run's server state is not reused
    server = EmbeddedNats(run_dir / "nats", tied_to_parent=True)
    chefs: LocalChefs | None = None
    builds: BuildServer | None = None
    try:
        # nats-server and the chefs first, the build server's imports (~80 ms, mostly nats-py; asyncssh
        # only once SFTP is used) while the chefs start. The build server takes requests before
        # the chefs are ready: a first build reads its recipes meanwhile, and waits for them only
        # to join the federation (majordomo/federation.py, `chefs_ready`).
        # The chefs' fleet first: it imports the chef code while nats-server starts and the keys
        # are made, then gets the server's URL.
        chefs = LocalChefs(state_dir, None, *embedded_key_pair(state_dir), tied_to_parent=True)
        await chefs.spawn(EMBEDDED_CHEFS)
        url = await server.start()
        await embedded_keys(state_dir)
        await chefs.connect(url)
        from majordomo.build_server import BuildServer

        chefs_ready = asyncio.ensure_future(chefs.ready())
        builds = BuildServer(state_dir.parent, url, chefs_ready)
        await builds.start()
        info = {"url": url, "pid": os.getpid(), "fingerprint": fingerprint(), "idle_s": idle_s, "key": str(chefs.key),
                "env": environment(), "socket": builds.socket_name, "chefs": "starting"}
        _write_info(state_dir, info)
        _announce(f"{SERVING} {url}")
        try:
            await chefs_ready
        except FederationError as exc:
            _say(f"stopping: {exc}")
            await builds.idle(STOP_TIMEOUT_S)  # the builds waiting for the chefs tell their clients why
            return 1
        _write_info(state_dir, {**info, "chefs": "ready"})
        _announce(f"{READY} {url}")
        _say(f"up: nats {url}, {EMBEDDED_CHEFS} local chefs, builds on {builds.socket_name}")
        _say(f"stopping: {await _watch(state_dir, server, chefs, builds, idle_s, stopping)}")
        return 0
    finally:
        info_path(state_dir).unlink(missing_ok=True)
        if builds:
            await builds.stop()
        if chefs:
            await chefs.stop()
        await server.stop()


def _write_info(state_dir: Path, info: dict) -> None:
    """resident.json, replaced whole (a reader never sees half of it)."""
    tmp = info_path(state_dir).with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)  # PATH and CP_* in clear
    try:
        os.write(fd, json.dumps(info).encode())
    finally:
        os.close(fd)
    os.replace(tmp, info_path(state_dir))


def _announce(line: str) -> None:
    """A line for the build that started us; it may have stopped reading (it waits for SERVING only)."""
    with contextlib.suppress(OSError):
        os.write(sys.stdout.fileno(), f"{line}\n".encode())


async def _watch(state_dir: Path, server: EmbeddedNats, chefs: LocalChefs, builds: BuildServer, idle_s: float,
                 stopping: asyncio.Event) -> str:
    """Until told to stop: every CHECK_S, stop if idle too long, abandoned, or a process died.
    Returns why, for resident.log: an operator asks why the next build paid a cold start."""
    import asyncio

    last_used = time.monotonic()
    while not stopping.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), CHECK_S)  # a periodic check, or the stop signal
        if not info_path(state_dir).exists():
            return f"{info_path(state_dir)} is gone (`majordomo stop`, or the state directory was removed)"
        if not server.running:
            return "nats-server exited"
        if not chefs.running:
            return f"a local chef exited (see {state_dir / 'chefs'}/*/chef.log)"
        try:
            if builds.busy or await asyncio.to_thread(_majordomo_connected, server.monitor_url):
                last_used = time.monotonic()
        except OSError as exc:
            return f"nats-server's monitor did not answer ({exc})"  # nothing left to keep
        last_used = max(last_used, builds.last_used)
        if time.monotonic() - last_used > idle_s and await _close_if_still_idle(state_dir, server, builds):
            return f"no build for {idle_s:g} s (MAJORDOMO_RESIDENT)"
    return "asked to (a signal: `majordomo stop`, or the build that found other code or settings)"


def _say(line: str) -> None:
    """One time-stamped line in resident.log (our stderr)."""
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} majordomo.resident[{os.getpid()}]: {line}", file=sys.stderr,
          flush=True)


async def _close_if_still_idle(state_dir: Path, server: EmbeddedNats, builds: BuildServer) -> bool:
    """Withdraw resident.json and refuse new build requests (from now on no build joins), then look
    once more: a build that read it just before may have connected since, and then we stay."""
    import asyncio

    closing = info_path(state_dir).with_suffix(".closing")
    with contextlib.suppress(OSError):
        os.replace(info_path(state_dir), closing)
    builds.closing = True
    try:
        joined = builds.busy or await asyncio.to_thread(_majordomo_connected, server.monitor_url)
    except OSError:
        joined = False
    if joined:
        builds.closing = False
        os.replace(closing, info_path(state_dir))
        return False
    closing.unlink(missing_ok=True)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m majordomo.resident")
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--idle", type=float, default=DEFAULT_IDLE_S)
    parser.add_argument("--lock-fd", type=int, required=True,
                        help="the resident.lock descriptor, locked by the build that starts us; held for life")
    args = parser.parse_args(argv)
    os.set_inheritable(args.lock_fd, False)  # ours alone: the server and chefs must not keep the slot
    import asyncio

    from artefacts.childwatch import use_pidfd_child_watcher

    use_pidfd_child_watcher()
    return asyncio.run(supervise(args.state_dir, args.idle))


if __name__ == "__main__":
    sys.exit(main())
