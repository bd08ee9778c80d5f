"""Multi-host test kit: the `net` fixture (hosts as network namespaces, from deploy/netns.py) and
helpers that start real nats-servers, chefs and MajorDomos on those hosts and watch them.

Every wait here is on an event (a line a process prints, a pidfd, an exit) with a bound.

Run as a script inside a host, it is a small NATS observer (`watch`, `stats`, `kv-info`, `kv-create`,
`kv-keys`): the test process lives in the root namespace and cannot reach 198.18.0.0/24 itself.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest
from conftest import require

REPO = Path(__file__).resolve().parent.parent
NATS_PORT = 4222  # every host has its own port space: fixed ports cannot collide
CLUSTER_PORT = 6222  # as in the template
CLUSTER_TEMPLATE = REPO / "deploy" / "nats-cluster.conf.template"
FEDERATION = "cp"


def _load_harness() -> Any:
    # deploy/ is scripts, not a package; load it by path under a name that cannot clash with this module.
    name = "computepods_deploy_netns"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "deploy" / "netns.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


harness = _load_harness()
Network = harness.Network
Net = Any  # a deploy/netns.py Network: loaded by path, so type checkers cannot follow it


class Watched:
    """A process on a host whose stdout and stderr are read by threads into lines (and a log file),
    so a test can wait for a line with a bound instead of sleeping."""

    def __init__(self, net: Net, host: int, argv: Sequence[str], log: Path, *,
                 env: dict[str, str] | None = None, name: str = "") -> None:
        self.name = name or Path(argv[0]).name
        self.host = host
        self.log = log
        self.lines: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self._cond = threading.Condition()
        self._open = 2
        log.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(log, "a", buffering=1)  # closed by the last reader thread
        self.proc: subprocess.Popen[str] = net.run(
            host, list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
            env={**os.environ, **(env or {})},
        )
        self._net = net
        self._threads = [threading.Thread(target=self._read, args=(stream, self.proc.stdout if stream == "stdout"
                                                                   else self.proc.stderr), daemon=True)
                         for stream in ("stdout", "stderr")]
        for t in self._threads:
            t.start()

    def _read(self, stream: str, pipe: IO[str] | None) -> None:
        assert pipe is not None
        try:
            for line in pipe:
                with self._cond:
                    self.lines[stream].append(line.rstrip("\n"))
                    self._log_file.write(f"{stream[3:]}: {line}")
                    self._cond.notify_all()
        except (OSError, ValueError):
            pass  # the pipe went away with a killed process
        finally:
            pipe.close()
            with self._cond:
                self._open -= 1
                if self._open == 0:
                    self._log_file.close()
                self._cond.notify_all()

    def wait_for(self, match: Callable[[str], Any], timeout: float, stream: str = "stdout", what: str = "") -> Any:
        """Return match(line) for the first line (already read or yet to come) where it is truthy."""
        seen = 0

        def found() -> Any:
            nonlocal seen
            lines = self.lines[stream]
            while seen < len(lines):
                if (hit := match(lines[seen])):
                    return hit
                seen += 1
            return None

        with self._cond:
            # Both pipes at EOF means no line can come any more (a dead process's last lines are read first).
            self._cond.wait_for(lambda: found() or self._open == 0, timeout)
            hit = found()
        if not hit:
            state = f"exited {self.proc.returncode}" if self.proc.poll() is not None else f"no match in {timeout:g}s"
            raise AssertionError(f"{self.name} on host {self.host}: waiting for {what or 'a line'} on {stream}: "
                                 f"{state}; tail:\n{self.tail()}")
        return hit

    def expect(self, pattern: str, timeout: float, stream: str = "stdout") -> re.Match[str]:
        rx = re.compile(pattern)
        return self.wait_for(rx.search, timeout, stream, what=repr(pattern))  # type: ignore[no-any-return]

    def tail(self, n: int = 25) -> str:
        with self._cond:
            lines = [f"{s[3:]}: {ln}" for s in ("stdout", "stderr") for ln in self.lines[s]]
        return "\n".join(lines[-n:])

    def finish(self, timeout: float) -> int:
        """Wait for exit (bounded); on timeout kill it and fail, naming what it last said."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._net.stop(self.proc, signal.SIGKILL)
            raise AssertionError(f"{self.name} on host {self.host} still running after {timeout:g}s; tail:\n"
                                 f"{self.tail()}") from None
        for t in self._threads:
            t.join(10)  # the pipes are at EOF once the process and its children are gone
        return code

    def kill(self, sig: int = signal.SIGKILL) -> None:
        self._net.stop(self.proc, sig)
        for t in self._threads:
            t.join(10)

    @property
    def stdout(self) -> str:
        return "\n".join(self.lines["stdout"])

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines["stderr"])


# -- NATS -----------------------------------------------------------------------------------------------

def nats_url(net: Net, host: int) -> str:
    return f"nats://{net.addr(host)}:{NATS_PORT}"


def start_nats(net: Net, host: int, state: Path, *, cluster_hosts: Sequence[int] = (),
               jetstream: bool = True) -> Watched:
    """A real nats-server on host's address only, with JetStream unless told otherwise; a cluster node
    (from deploy/nats-cluster.conf.template, routes to the other cluster_hosts) when they are given."""
    from artefacts.natsutil import nats_server_binary

    addr = net.addr(host)
    store = state / f"n{host}"
    if cluster_hosts:
        state.mkdir(parents=True, exist_ok=True)
        conf = state / f"n{host}.conf"
        routes = ", ".join(f'"nats://{net.addr(h)}:{CLUSTER_PORT}"' for h in cluster_hosts if h != host)
        text = CLUSTER_TEMPLATE.read_text()
        for name, value in (("NAME", f"n{host}"), ("ADDR", addr), ("JETSTREAM", str(jetstream).lower()),
                            ("STORE", str(store)), ("ROUTES", routes)):
            text = text.replace(f"@{name}@", value)
        conf.write_text(text)
        argv = [nats_server_binary(), "-c", str(conf)]
    else:
        argv = [nats_server_binary(), "--addr", addr, "--port", str(NATS_PORT), "--server_name", f"n{host}"]
        if jetstream:
            argv += ["--jetstream", "--store_dir", str(store)]
    server = Watched(net, host, argv, state / f"nats-n{host}.log", name=f"nats-server n{host}")
    server.expect(r"Server is ready", 15, stream="stderr")
    return server


def start_nats_cluster(net: Net, hosts: Sequence[int], state: Path, *,
                       without_jetstream: Sequence[int] = ()) -> dict[int, Watched]:
    """A cluster of nats-servers, one per host; those in without_jetstream hold no stream (mixed mode)."""
    servers: dict[int, Watched] = {}
    for host in hosts:
        servers[host] = start_nats(net, host, state, cluster_hosts=hosts, jetstream=host not in without_jetstream)
    # JetStream answers API calls only once the cluster has elected its metadata leader.
    for host, server in servers.items():
        if host not in without_jetstream:
            server.expect(r"JetStream cluster new metadata leader|Self is new JetStream cluster metadata leader",
                          30, stream="stderr")
    return servers


# -- federation members ------------------------------------------------------------------------------

def make_key(directory: Path) -> Path:
    from artefacts.keys import load_or_create_key

    directory.mkdir(parents=True, exist_ok=True)
    key = directory / "federation"
    load_or_create_key(key)
    return key


def start_chefs(net: Net, hosts: Sequence[int], url: str, key: Path, state: Path, *extra: str) -> dict[int, Watched]:
    """One real chef process per host, its SFTP server on the host's address only; started in parallel."""
    chefs = {}
    for host in hosts:
        addr = net.addr(host)
        argv = [sys.executable, "-m", "chefs.cli", "--nats", url, "--id", f"chef-{host}",
                "--home", str(state / f"chef-{host}"), "--sftp-listen", f"{addr}:0", "--advertise", addr,
                "--key", str(key), "--authorized-keys", f"{key}.pub", "--kind", "shell", *extra]
        chefs[host] = Watched(net, host, argv, state / f"chef-{host}.log", name=f"chef-{host}")
    for chef in chefs.values():
        chef.expect(r"ready", 45)
    return chefs


def start_majordomo(net: Net, host: int, project: Path, url: str, key: Path, *args: str,
                    log: Path | None = None) -> Watched:
    addr = net.addr(host)
    argv = [sys.executable, "-m", "majordomo.cli", "build", "-C", str(project), "--json", "--nats", url,
            "--sftp-listen", f"{addr}:0", "--advertise", addr, *args]
    return Watched(net, host, argv, log or project.parent / "majordomo.log", name="majordomo",
                   env={"MAJORDOMO_KEY": str(key)})


@dataclass
class BuildRun:
    code: int
    stdout: str
    stderr: str

    @property
    def summary(self) -> dict[str, Any]:
        lines = self.stdout.strip().splitlines()
        assert lines, f"no --json summary; stderr:\n{self.stderr[-2000:]}"
        return json.loads(lines[-1])  # type: ignore[no-any-return]


def finish_build(md: Watched, timeout: float) -> BuildRun:
    code = md.finish(timeout)
    return BuildRun(code, md.stdout, md.stderr)


def nats_tool(net: Net, host: int, *args: str, timeout: float = 30) -> Any:
    """Run this file's observer inside a host and return its JSON answer."""
    proc = subprocess.run(net.exec_argv(host, [sys.executable, str(Path(__file__).resolve()), *args]),
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"observer {' '.join(args)} on host {host} failed: {proc.stderr.strip()[-600:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


class Events:
    """A live subscription to the federation's events, from inside a host (`watch`)."""

    def __init__(self, net: Net, host: int, url: str, log: Path) -> None:
        self.proc = Watched(net, host, [sys.executable, str(Path(__file__).resolve()), "watch", url, FEDERATION],
                            log, name="event watcher")
        self.proc.expect(r"^watching$", 20)  # subscribed (and flushed): no event can slip past from now on

    def wait(self, timeout: float, what: str = "an event", **want: str) -> dict[str, Any]:
        def match(line: str) -> dict[str, Any] | None:
            if not line.startswith("{"):
                return None
            event = json.loads(line)
            return event if all(event.get(k) == v for k, v in want.items()) else None

        return self.proc.wait_for(match, timeout, what=f"{what} {want}")  # type: ignore[no-any-return]

    def all(self) -> list[dict[str, Any]]:
        return [json.loads(ln) for ln in list(self.proc.lines["stdout"]) if ln.startswith("{")]


def store_files(store: Path) -> dict[str, Path]:
    """digest -> path of every file in a content store (`<algo>/<ab>/<cd>/<hex>`)."""
    found = {}
    for path in store.glob("*/??/??/*"):
        if path.is_file() and not path.name.startswith("."):
            found[f"{path.parts[-4]}:{path.name}"] = path
    return found


# -- the fixture ------------------------------------------------------------------------------------------

@pytest.fixture(name="net")
def net_fixture() -> Iterator[Any]:
    """Seven hosts 198.18.0.1..7 on one bridge; every process and namespace is gone afterwards."""
    reason = harness.unsupported_reason()
    require(reason is None, reason or "")
    harness.sweep()  # leftovers of a crashed earlier run (never a run another live process owns)
    network = Network(7).up()
    try:
        yield network
    finally:
        network.down()
        leftovers = harness.runs().get(network.run_id)
        assert not leftovers, f"namespaces left behind: {leftovers}"


# -- the observer, run inside a host -------------------------------------------------------------------

async def _observer(argv: list[str]) -> None:
    import nats

    cmd, url = argv[0], argv[1]
    nc = await nats.connect(servers=url.split(","), name=f"test-observer:{cmd}", connect_timeout=2,
                            max_reconnect_attempts=60, reconnect_time_wait=0.25)
    try:
        if cmd == "watch":
            done = asyncio.Event()

            async def on_event(msg: Any) -> None:
                print(msg.data.decode(), flush=True)

            await nc.subscribe(f"{argv[2]}.events.>", cb=on_event)
            await nc.flush()
            print("watching", flush=True)
            await done.wait()  # until the test stops us
        elif cmd == "stats":
            inbox = nc.new_inbox()
            sub = await nc.subscribe(inbox)
            await nc.publish("$SRV.STATS.computepods-chef", b"", reply=inbox)
            want, found = int(argv[2]), {}
            while len(found) < want:
                msg = await sub.next_msg(timeout=10)
                body = json.loads(msg.data)
                found[body["metadata"]["chef_id"]] = {e["name"]: e.get("data") for e in body["endpoints"]}
            print(json.dumps(found))
        elif cmd == "kv-info":
            js = nc.jetstream()
            info = await js.stream_info(f"KV_{argv[2]}")
            cluster = info.cluster
            print(json.dumps({"replicas": info.config.num_replicas, "leader": cluster.leader if cluster else None,
                              "peers": [r.name for r in (cluster.replicas or [])] if cluster else []}))
        elif cmd == "kv-create":
            js = nc.jetstream()
            kv = await js.create_key_value(bucket=argv[2], ttl=float(argv[3]) or None, replicas=int(argv[4]))
            print(json.dumps({"bucket": kv._name}))
        elif cmd == "kv-keys":
            from artefacts.natsutil import kv_keys, retrying

            async def read() -> dict[str, str]:
                kv = await nc.jetstream().key_value(argv[2])
                entries = {}
                for key in await kv_keys(nc, argv[2]):
                    entry = await kv.get(key)
                    entries[key] = entry.value.hex() if entry.value else ""
                return entries

            # Right after a node dies its streams elect new leaders: retry, bounded, like the product.
            print(json.dumps(await retrying(read, for_s=15)))
        else:
            raise SystemExit(f"unknown command {cmd!r}")
    finally:
        await nc.close()


if __name__ == "__main__":
    # This checkout's packages, whatever (or wherever) is installed: the observer runs as a script.
    sys.path.insert(1, str(Path(__file__).resolve().parent.parent))
    asyncio.run(_observer(sys.argv[1:]))
