#!/usr/bin/env python3
"""Several "hosts" on this one machine: network namespaces joined by veth pairs to a bridge.

    python deploy/netns.py up 5        # hosts 1..5 at 198.18.0.1..5/24; prints the namespaces
    python deploy/netns.py status
    python deploy/netns.py down        # removes every run not owned by a live process

Layout of one run `cpnet-<id>`: a namespace `cpnet-<id>-br` holds the bridge `br0` and one veth
end per host (`h<N>`); host N is the namespace `cpnet-<id>-h<N>` with `lo` up and `eth0` at
198.18.0.N/24. The root namespace is never touched: no link, route or address is added there, so
nothing of a run can leak traffic outside 198.18.0.0/24.

A run made by a Python process (the pytest fixture) holds an flock on
/run/computepods-netns/<id>.lock for its lifetime; the kernel drops it when the process dies, which
is how `sweep()` tells a crashed run's leftovers from a run in progress elsewhere. Runs made by
`up` are marked persistent and are removed only by `down`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

PREFIX = "cpnet"
SUBNET = "198.18.0"  # /24 inside 198.18.0.0/15 (RFC 2544 benchmarking range): never routed anywhere real
STATE_DIR = Path("/run/computepods-netns")
MAX_HOSTS = 250
_NS_RE = re.compile(rf"^{PREFIX}-([0-9a-f]{{8}})-(br|h\d+)$")
TERM_GRACE_S = 3.0
TEARDOWN_GRACE_S = 1.0  # per process, one after the other: healthy ones exit in well under 0.1 s
KILL_WAIT_S = 5.0


class NetnsError(RuntimeError):
    """An `ip` command failed; the message carries its stderr."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {proc.stderr.strip() or proc.returncode}")
    return proc


def unsupported_reason() -> str | None:
    """Why namespaces cannot be made here (not root, no `ip`, no netns support), or None."""
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_SYS_ADMIN, CAP_NET_ADMIN)"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    probe = f"{PREFIX}-probe-{os.getpid()}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` is not supported here: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


def list_namespaces() -> list[str]:
    out = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _ns_pids(ns: str) -> list[int]:
    out = _ip("netns", "pids", ns, check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def _wait_gone(pids: Sequence[int], timeout_s: float) -> list[int]:
    """Wait (on pidfds, not by polling) until these non-child processes have exited; return survivors."""
    fds: dict[int, int] = {}
    for pid in pids:
        try:
            fds[os.pidfd_open(pid)] = pid
        except ProcessLookupError:
            continue
    try:
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        left = dict(fds)
        deadline = time.monotonic() + timeout_s
        while left and (remaining := deadline - time.monotonic()) > 0:
            for fd, _ev in poller.poll(remaining * 1000):
                poller.unregister(fd)
                left.pop(fd, None)
        return list(left.values())
    finally:
        for fd in fds:
            os.close(fd)


def _kill_pids(pids: Sequence[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    survivors = _wait_gone(pids, KILL_WAIT_S)
    if survivors:
        raise NetnsError(f"processes {survivors} did not die after SIGKILL")


def _delete_namespace(ns: str) -> None:
    """Kill whatever still runs inside, then remove the namespace (its veth ends go with it)."""
    _kill_pids(_ns_pids(ns))
    proc = _ip("netns", "del", ns, check=False)
    if proc.returncode != 0 and ns in list_namespaces():
        raise NetnsError(f"ip netns del {ns}: {proc.stderr.strip()}")


def _lock_path(run: str) -> Path:
    return STATE_DIR / f"{run}.lock"


def _persistent_path(run: str) -> Path:
    return STATE_DIR / f"{run}.json"


def _run_is_live(run: str) -> bool:
    """A run is live while its owner holds its lock, or while it is persistent (made by `up`)."""
    if _persistent_path(run).exists():
        return True
    try:
        fd = os.open(_lock_path(run), os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the lock we may just have taken
    return False


def runs() -> dict[str, list[str]]:
    """Every run of ours present now: run id -> its namespaces."""
    found: dict[str, list[str]] = {}
    for ns in list_namespaces():
        if m := _NS_RE.match(ns):
            found.setdefault(m.group(1), []).append(ns)
    return found


def remove_run(run: str, namespaces: Sequence[str] | None = None) -> None:
    if namespaces is None:
        namespaces = runs().get(run, [])
    # Hosts first: their processes die before the bridge they talk through goes.
    for ns in sorted(namespaces, key=lambda n: n.endswith("-br")):
        _delete_namespace(ns)
    for path in (_persistent_path(run), _lock_path(run)):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def sweep(*, include_persistent: bool = False) -> list[str]:
    """Remove runs left behind by dead owners (a crashed test run); return their ids."""
    removed = []
    for run, namespaces in runs().items():
        if include_persistent and _persistent_path(run).exists():
            _persistent_path(run).unlink()
        if not _run_is_live(run):
            remove_run(run, namespaces)
            removed.append(run)
    # Lock files whose namespaces are already gone.
    if STATE_DIR.exists():
        for lock in STATE_DIR.glob("*.lock"):
            run = lock.stem
            if run not in runs() and not _run_is_live(run):
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()
    return removed


@dataclass(frozen=True)
class Host:
    index: int
    ns: str
    addr: str
    port: str  # the veth end in the bridge namespace; downing it is pulling the host's cable


class Network:
    """N hosts on one bridge. Use as a context manager; `down()` is idempotent and always complete."""

    def __init__(self, n_hosts: int, *, persistent: bool = False) -> None:
        if not 1 <= n_hosts <= MAX_HOSTS:
            raise ValueError(f"hosts must be 1..{MAX_HOSTS}, got {n_hosts}")
        self.run_id = uuid.uuid4().hex[:8]
        self.name = f"{PREFIX}-{self.run_id}"
        self.bridge_ns = f"{self.name}-br"
        self.hosts = {i: Host(i, f"{self.name}-h{i}", f"{SUBNET}.{i}", f"h{i}") for i in range(1, n_hosts + 1)}
        self.persistent = persistent
        self._lock_fd: int | None = None
        self._procs: list[subprocess.Popen[Any]] = []
        self._made: list[str] = []

    # -- making and removing ----------------------------------------------------------------------

    def up(self) -> Network:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        # Take the lock before the first namespace exists, so no sweep can ever mistake us for debris;
        # lock a temp file and rename it into place, so the lock path never names an unlocked file.
        temp = STATE_DIR / f".{self.run_id}.{os.getpid()}.tmp"
        self._lock_fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        os.rename(temp, _lock_path(self.run_id))
        try:
            self._add_ns(self.bridge_ns)
            _ip("-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.bridge_ns, "link", "set", "br0", "up")
            for host in self.hosts.values():
                self._add_host(host)
            if self.persistent:
                _persistent_path(self.run_id).write_text(json.dumps(self.describe(), indent=1))
        except BaseException:
            self.down()
            raise
        return self

    def _add_ns(self, ns: str) -> None:
        _ip("netns", "add", ns)
        self._made.append(ns)
        _ip("-n", ns, "link", "set", "lo", "up")

    def _add_host(self, host: Host) -> None:
        self._add_ns(host.ns)
        _ip("-n", self.bridge_ns, "link", "add", host.port, "type", "veth", "peer", "name", "eth0", "netns", host.ns)
        _ip("-n", self.bridge_ns, "link", "set", host.port, "master", "br0", "up")
        # No IPv6 link-local address: no NDP/MLD chatter; the hosts speak IPv4 on 198.18.0.0/24 only.
        _ip("-n", host.ns, "link", "set", "eth0", "addrgenmode", "none")
        _ip("-n", host.ns, "addr", "add", f"{host.addr}/24", "dev", "eth0")
        _ip("-n", host.ns, "link", "set", "eth0", "up")

    def down(self) -> None:
        """Stop every process, delete every namespace of this run. Safe to call twice, or after a failed up()."""
        errors: list[BaseException] = []
        try:
            self.stop_all()
        except BaseException as exc:  # go on: the namespaces must go regardless
            errors.append(exc)
        namespaces = set(self._made) | set(runs().get(self.run_id, []))
        try:
            remove_run(self.run_id, sorted(namespaces))
        except BaseException as exc:
            errors.append(exc)
        self._made.clear()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
            with contextlib.suppress(FileNotFoundError):
                _lock_path(self.run_id).unlink()
        if errors:
            raise errors[0]

    def release(self) -> None:
        """Drop our lock without removing anything (a persistent run outlives this process)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> Network:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()

    # -- hosts ------------------------------------------------------------------------------------

    def host(self, i: int) -> Host:
        return self.hosts[i]

    def addr(self, i: int) -> str:
        return self.hosts[i].addr

    def exec_argv(self, i: int, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.hosts[i].ns, *argv]

    def run(self, i: int, argv: Sequence[str], **popen: Any) -> subprocess.Popen[Any]:
        """Start argv on host i, in its own process group; down() stops it if nobody else does."""
        popen.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(self.exec_argv(i, argv), start_new_session=True, **popen)
        self._procs.append(proc)
        return proc

    def check_output(self, i: int, argv: Sequence[str], *, timeout: float = 30) -> str:
        return subprocess.run(self.exec_argv(i, argv), capture_output=True, text=True, timeout=timeout,
                              check=True).stdout

    def link_down(self, i: int) -> None:
        """Pull host i's cable: its bridge port goes down, so packets vanish both ways with no error."""
        _ip("-n", self.bridge_ns, "link", "set", self.hosts[i].port, "down")

    def link_up(self, i: int) -> None:
        _ip("-n", self.bridge_ns, "link", "set", self.hosts[i].port, "up")

    def limit_rate(self, i: int, rate: str) -> None:
        """Cap the bandwidth towards host i (tc tbf on its bridge port, e.g. "8mbit"): its downloads
        then last long enough to be cut in the middle, while everyone else runs at full speed."""
        subprocess.run(["ip", "netns", "exec", self.bridge_ns, "tc", "qdisc", "replace", "dev", self.hosts[i].port,
                        "root", "tbf", "rate", rate, "burst", "32kbit", "latency", "1s"],
                       check=True, capture_output=True, timeout=30)

    def stop(self, proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, *, grace_s: float = TERM_GRACE_S) -> None:
        """Signal a process group started by run(); SIGKILL it if it outlives the grace period."""
        self.stop_many([proc], sig, grace_s=grace_s)

    def stop_many(self, procs: Sequence[subprocess.Popen[Any]], sig: int = signal.SIGTERM, *,
                  grace_s: float = TERM_GRACE_S) -> None:
        live = [p for p in procs if p.poll() is None]
        for proc in live:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
        deadline = time.monotonic() + grace_s
        for proc in live:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(KILL_WAIT_S)
        for proc in procs:
            # Children that outlived their leader (a step's shell) still carry the group id.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

    def stop_all(self) -> None:
        """Last started, first stopped: clients go while the servers they say goodbye to still run."""
        procs, self._procs = self._procs, []
        errors: list[BaseException] = []
        for proc in reversed(procs):
            try:
                self.stop(proc, grace_s=TEARDOWN_GRACE_S)
            except BaseException as exc:  # stop the others regardless
                errors.append(exc)
        if errors:
            raise errors[0]

    def describe(self) -> dict[str, Any]:
        return {"run": self.run_id, "bridge": self.bridge_ns,
                "hosts": {i: {"ns": h.ns, "addr": h.addr} for i, h in self.hosts.items()}}


def _print_status(out: IO[str]) -> None:
    found = runs()
    if not found:
        print("no namespaces of ours", file=out)
    for run, namespaces in sorted(found.items()):
        state = "persistent" if _persistent_path(run).exists() else ("live" if _run_is_live(run) else "stale")
        print(f"{PREFIX}-{run} ({state}):", file=out)
        for ns in sorted(namespaces):
            addrs = _ip("-n", ns, "-4", "-o", "addr", "show", "dev", "eth0", check=False).stdout.split()
            addr = addrs[3] if len(addrs) > 3 else "-"
            print(f"  {ns:<28} {addr}", file=out)


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="netns.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="make N hosts and leave them up until `down`")
    up.add_argument("hosts", type=int)
    down = sub.add_parser("down", help="remove runs (default: all that no live process owns)")
    down.add_argument("run", nargs="?", help="only this run id (8 hex digits)")
    sub.add_parser("status", help="list our namespaces")
    sub.add_parser("sweep", help="remove leftovers of crashed runs only")
    args = p.parse_args(argv)
    reason = unsupported_reason()
    if reason:
        print(f"netns: {reason}", file=sys.stderr)
        return 2
    if args.cmd == "up":
        sweep()
        net = Network(args.hosts, persistent=True).up()
        net.release()  # from now on the run is owned by its marker file, not by this process
        print(f"run {net.run_id}: bridge namespace {net.bridge_ns}")
        for h in net.hosts.values():
            print(f"  host {h.index}: {h.addr:<14} ip netns exec {h.ns} COMMAND...")
        return 0
    if args.cmd == "down":
        if args.run:
            remove_run(args.run.removeprefix(f"{PREFIX}-"))
            return 0
        for run in sweep(include_persistent=True):
            print(f"removed {PREFIX}-{run}")
        return 0
    if args.cmd == "sweep":
        for run in sweep():
            print(f"removed {PREFIX}-{run}")
        return 0
    _print_status(sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
