"""The thin side of `majordomo build`: hand the build to the project's resident build server.

Only the standard library and the light part of majordomo/resident.py are imported here, so the
command costs a Python start-up and a socket round trip; see majordomo/build_server.py for the
server and the wire format. Whenever the server cannot be used (it failed to start, it went away
before taking the request) the caller builds in-process as before: the server is a speed-up,
never a requirement.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
from pathlib import Path
from typing import BinaryIO, NoReturn

RETRY = -1
EXIT_SERVER_LOST = 1
EXIT_USAGE = 2  # majordomo/cli.py's: bad input, nothing was built
SOCKET_NAME = "build.sock"  # in .majordomo/, where the resident build server listens
CANCEL_GRACE_S = 5.0  # after Ctrl-C, how long the server's last words are waited for


def build_in_resident(root: Path, argv: list[str]) -> int | None:
    """Run `majordomo ARGV` (a build) in the resident build server and return its exit code,
    printing its output here; None when none runs (or it could not take the build).

    A server is never started from here: the in-process build checks the recipes first and starts
    the resident federation only when a step must run, so a broken recipe starts nothing."""
    from majordomo.resident import running

    state_dir = root / ".majordomo"
    key = str(Path(os.environ.get("MAJORDOMO_KEY") or state_dir / "keys" / "federation"))
    for _attempt in range(2):  # a server shutting down for idleness says "retry"
        info = running(state_dir, key) if state_dir.is_dir() else None
        if info is None or not isinstance(info.get("socket"), str):
            return None
        try:
            sock = _connect(state_dir, info["socket"])
        except OSError:
            return None
        with sock:
            code, _federation_failed = _converse(sock, argv, state_dir)
        if code != RETRY:
            return code
    return None


def build_in_new_resident(root: Path, argv: list[str]) -> int | None:
    """A first build (nothing built yet, so every step will run): start the project's resident
    federation and hand it the build, as `build_in_resident` does; None if that cannot be done.

    Its build server takes the request as soon as it listens, while its chefs still start: the
    recipes are read (~40 ms) during their start-up, by the process that runs the next builds
    too, and this one imports nothing more. A build that fails on its input (exit code 2: a recipe
    error, an unknown target) leaves nothing behind: the federation is stopped, and `.majordomo`
    is removed if this call made it. One whose federation could not start keeps its logs there."""
    from majordomo.resident import embedded_key, idle_seconds, join_or_start, withdraw

    state_dir = root / ".majordomo"
    made = not state_dir.exists()
    state_dir.mkdir(exist_ok=True)
    try:
        join_or_start(state_dir, embedded_key(state_dir), idle_seconds(), serving=True)
        sock = _connect(state_dir, SOCKET_NAME)
    except (OSError, RuntimeError, TimeoutError):
        return None  # the in-process build tries again, and says why it cannot
    with sock:
        code, federation_failed = _converse(sock, argv, state_dir)
    if code == RETRY:
        return None
    if code == EXIT_USAGE:
        withdraw(state_dir, made and not federation_failed)
    return code


def exit_now(code: int) -> NoReturn:
    """End the thin client once the server's answer is out: it holds nothing to finalise (no
    thread, no file of its own), and the interpreter's teardown was ~4 ms of every build."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a reader that went away: nothing more to tell it
            stream.flush()
    os._exit(code)


def socket_address(state_dir: Path, name: str) -> tuple[str, int]:
    """An address for socket `name` in `state_dir` that fits AF_UNIX's 108 bytes whatever the
    project's path: through a directory descriptor (Linux), which the caller closes after use."""
    fd = os.open(state_dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    return f"/proc/self/fd/{fd}/{os.path.basename(name)}", fd


def _connect(state_dir: Path, name: str) -> socket.socket:
    path, fd = socket_address(state_dir, name)
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.connect(path)
        except OSError:
            sock.close()
            raise
        return sock
    finally:
        os.close(fd)


def _converse(sock: socket.socket, argv: list[str], state_dir: Path) -> tuple[int, bool]:
    """The build's exit code (RETRY: the server is closing), and whether the federation's chefs
    could not start."""
    request = {"argv": argv, "cwd": os.getcwd(), "out_tty": _live(sys.stdout), "err_tty": _live(sys.stderr),
               "columns": _columns()}
    # The socket stays open both ways: the server takes the end of our side (Ctrl-C, a killed
    # client) as "cancel the build".
    sock.sendall(json.dumps(request).encode() + b"\n")
    with sock.makefile("rb") as frames:
        try:
            answer = _relay(frames)
        except KeyboardInterrupt:
            # Cancel, and show what the server writes while it cancels (its live progress area
            # erased), for a moment at most; a second Ctrl-C leaves at once.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
                sock.settimeout(CANCEL_GRACE_S)
                _relay(frames)
            raise
    if answer is not None:
        return answer
    print(f"majordomo: the resident build server stopped during the build; see {state_dir / 'resident.log'}",
          file=sys.stderr)
    return EXIT_SERVER_LOST, False


def _relay(frames: BinaryIO) -> tuple[int, bool] | None:
    """Print the server's frames until its answer; None if the connection ends first."""
    for line in frames:
        try:
            frame = json.loads(line)
        except ValueError:
            continue
        if "o" in frame:
            _emit(sys.stdout, frame["o"])
        elif "e" in frame:
            _emit(sys.stderr, frame["e"])
        elif "exit" in frame:
            return int(frame["exit"]), bool(frame.get("federation_failed"))
        elif frame.get("retry"):
            return RETRY, False
    return None


def _emit(stream: object, text: object) -> None:
    with contextlib.suppress(BrokenPipeError, ValueError):  # our reader has gone: the build still finishes
        stream.write(str(text))  # type: ignore[attr-defined]
        stream.flush()  # type: ignore[attr-defined]


def _live(stream: object) -> bool:
    if os.environ.get("TERM", "dumb") in ("", "dumb"):
        return False
    try:
        return bool(stream.isatty())  # type: ignore[attr-defined]
    except (AttributeError, ValueError):
        return False


def _columns() -> int:
    try:
        return os.get_terminal_size(sys.stdout.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return 80
