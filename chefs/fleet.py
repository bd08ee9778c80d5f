"""`python -m chefs.fleet`: several chefs of one machine, started from one interpreter.

The embedded federation runs two chefs beside the user's build. As two `python -m chefs.cli`
processes they imported the same modules (~65 ms of CPU each: nats-py, msgspec, asyncio) at the
same time, on the two cores a first build then waits for. The fleet imports them once and forks
one process per chef, which then runs exactly as `chef` does (`chefs.cli.main`): its own event
loop, NATS connection, SFTP server, store and jails. Nothing runs in the fleet process after the
forks but a wait for its chefs.

    python -m chefs.fleet --homes DIR --ids ID[,ID...] [--nats-from-stdin] -- CHEF-ARGUMENTS...

With `--nats-from-stdin` the fleet reads the NATS URL as one line on stdin once it has imported the
chef code: the embedded federation starts the fleet first and its nats-server meanwhile, so the
fleet's imports do not wait for the server's port.

Each chef gets `--id ID --home DIR/ID`, writes its log to DIR/ID/chef.log, and says `chef ID ready`
on the shared stdout. The fleet ends when its chefs have: when one of them ends, it stops the
others (the embedded federation restarts them all), and SIGTERM, SIGINT or SIGHUP is passed on to
them. Each chef gets SIGTERM if the fleet dies, as the fleet does if its parent dies.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from pathlib import Path

import chefs.cli  # the imports every chef needs, done once before the forks

_PR_SET_NAME = 15
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m chefs.fleet", description="Run several chefs from one interpreter.")
    p.add_argument("--homes", type=Path, required=True, help="directory of the chefs' homes (one per id)")
    p.add_argument("--ids", required=True, help="comma-separated chef ids")
    p.add_argument("--nats-from-stdin", action="store_true",
                   help="read the NATS URL every chef gets (--nats) as one line on stdin")
    p.add_argument("chef_args", nargs=argparse.REMAINDER, help="-- then the arguments every chef gets")
    args = p.parse_args(argv)
    args.ids = [i for i in args.ids.split(",") if i]
    if args.chef_args[:1] == ["--"]:
        args.chef_args = args.chef_args[1:]
    if not args.ids or len(set(args.ids)) != len(args.ids):
        p.error(f"--ids needs distinct ids, got {args.ids!r}")
    return args


def chef_argv(args: argparse.Namespace, chef_id: str) -> list[str]:
    return [*args.chef_args, "--id", chef_id, "--home", str(args.homes / chef_id)]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.nats_from_stdin:
        url = sys.stdin.readline().strip()
        if not url:
            print("chefs.fleet: no NATS URL on stdin (--nats-from-stdin)", file=sys.stderr, flush=True)
            return 2
        args.chef_args += ["--nats", url]
        null = os.open(os.devnull, os.O_RDONLY)  # the chefs do not keep the pipe open
        os.dup2(null, 0)
        os.close(null)
    if any(not (args.homes / chef_id / "host_key").exists() for chef_id in args.ids):
        # Each new chef makes its host key with cryptography (~8 ms to import): once, before the forks.
        import cryptography.hazmat.primitives.asymmetric.ed25519
        import cryptography.hazmat.primitives.serialization  # noqa: F401
    for chef_id in args.ids:
        chefs.cli.parse_args(chef_argv(args, chef_id))  # a usage error stops the fleet here, once
    fleet = os.getpid()
    children: dict[int, str] = {}
    for chef_id in args.ids:
        pid = os.fork()
        if pid == 0:
            os._exit(_run_chef(args, chef_id, fleet))
        children[pid] = chef_id
    return _wait(children)


def _run_chef(args: argparse.Namespace, chef_id: str, fleet: int) -> int:
    """In the forked child: become chef `chef_id`. Never returns to the fleet's code."""
    try:
        from artefacts.lifeline import die_with_parent

        arm = die_with_parent()
        if arm is not None:
            arm()
        if os.getppid() != fleet:  # the fleet died before we asked to follow it
            return 1
        home = args.homes / chef_id
        home.mkdir(parents=True, exist_ok=True)
        log = os.open(home / "chef.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        os.dup2(log, 2)
        os.close(log)
        _name_process(f"chef {chef_id}")
        code = chefs.cli.main(chef_argv(args, chef_id))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed pipe: nothing left to tell anyone
            stream.flush()
    return code


def _name_process(name: str) -> None:
    """What `ps -o comm`, `top` and `pgrep` show for this chef (15 bytes at most), instead of the
    fleet's `python`: an operator tells the chefs apart."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)


def _wait(children: dict[int, str]) -> int:
    """Until every chef has ended; the first one to end (or a stop signal) stops the others.
    Returns the first failing chef's exit code, else 0."""
    live = dict(children)
    stopping = False

    def stop_all(_signum: int = 0, _frame: object = None) -> None:
        nonlocal stopping
        stopping = True
        for pid in live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    for sig in _STOP_SIGNALS:
        signal.signal(sig, stop_all)
    code = 0
    while live:
        pid, status = os.wait()  # retried after a signal's handler has run (PEP 475)
        chef_id = live.pop(pid, None)
        if chef_id is None:
            continue
        ended = os.waitstatus_to_exitcode(status)
        if ended != 0 and not stopping:  # the first to end on its own; the others we stopped
            print(f"chefs.fleet: chef {chef_id} ended with {ended}", file=sys.stderr, flush=True)
            code = ended if ended > 0 else 128 - ended
        stop_all()
    return code


if __name__ == "__main__":
    sys.exit(main())
