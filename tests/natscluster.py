"""A real 3-node nats-server cluster with JetStream on loopback ports, for unit-level tests (and
experiments) that need a cluster without network namespaces: nodes can be killed and restarted.

Every wait is on a line a server prints (with a bound), never a sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import socket
from pathlib import Path

from artefacts.natsutil import nats_server_binary

READY = re.compile(r"Server is ready")
META_LEADER = re.compile(r"JetStream cluster new metadata leader|Self is new JetStream cluster metadata leader")


BIND_FAILED = re.compile(r"address already in use")


def free_port() -> int:
    """A loopback port free now, below the kernel's ephemeral range: a port the kernel hands out
    (bind to 0) can be taken by any client's outgoing connection before the server binds it."""
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        low = int(f.read().split()[0])
    for _ in range(100):
        port = random.randrange(10000, low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free loopback port below the ephemeral range")


class Node:
    """One nats-server of the cluster; its stderr is kept as lines (and in a log file) to wait on."""

    def __init__(self, name: str, port: int, cluster_port: int, state: Path) -> None:
        self.name = name
        self.port = port
        self.cluster_port = cluster_port
        self.state = state
        self.log = state / f"{name}.log"
        self.lines: list[str] = []
        self._changed = asyncio.Condition()
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    async def start(self, routes: list[int] | None, *, jetstream: bool = True) -> None:
        """Start (or start again: same ports, same store); routes None makes a standalone server."""
        conf = self.state / f"{self.name}.conf"
        # As deploy/nats-cluster.conf.template, on loopback ports.
        text = f"""server_name: {self.name}
listen: 127.0.0.1:{self.port}
ping_interval: "2s"
ping_max: 2
jetstream {{
  enabled: {str(jetstream).lower()}
  store_dir: "{self.state / self.name}"
}}
"""
        if routes is not None:
            route_urls = ", ".join(f'"nats://127.0.0.1:{p}"' for p in routes if p != self.cluster_port)
            text += f"""cluster {{
  name: cp
  listen: 127.0.0.1:{self.cluster_port}
  routes: [ {route_urls} ]
}}
"""
        conf.write_text(text)
        self.lines = []
        self.proc = await asyncio.create_subprocess_exec(
            nats_server_binary(), "-c", str(conf), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc and self.proc.stderr
        with open(self.log, "a") as log:  # noqa: ASYNC230 - a test helper's log lines
            while raw := await self.proc.stderr.readline():
                line = raw.decode(errors="replace").rstrip("\n")
                log.write(line + "\n")
                async with self._changed:
                    self.lines.append(line)
                    self._changed.notify_all()
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, pattern: re.Pattern[str], within_s: float, *, since: int = 0) -> str:
        """The first line (from index `since`) matching, waiting for it at most `within_s` seconds."""
        def hit() -> str | None:
            return next((ln for ln in self.lines[since:] if pattern.search(ln)), None)

        def done() -> bool:
            return hit() is not None or self._reader is None or self._reader.done()

        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait_for(done), within_s)
        found = hit()
        if found is None:
            tail = "\n".join(self.lines[-10:])
            raise AssertionError(f"nats-server {self.name}: no {pattern.pattern!r} in {within_s:g}s; tail:\n{tail}")
        return found

    async def kill(self) -> None:
        """SIGKILL: a node dying with no goodbye."""
        if self.proc and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        if self._reader:
            await self._reader

    async def stop(self) -> None:
        if self.proc and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._reader:
            await self._reader


async def standalone(state: Path, *, jetstream: bool = True, name: str = "solo") -> Node:
    """One nats-server (with JetStream unless told otherwise) on a loopback port, ready."""
    state.mkdir(parents=True, exist_ok=True)
    for attempt in range(3):  # a chosen port taken meanwhile: another one, bounded
        node = Node(name, free_port(), 0, state)
        await node.start(None, jetstream=jetstream)
        try:
            await node.wait_for(READY, 15)
            return node
        except AssertionError:
            await node.stop()
            if attempt == 2 or not any(BIND_FAILED.search(ln) for ln in node.lines):
                raise
    raise AssertionError("unreachable")


class LoopbackCluster:
    """Nodes n1..nN on 127.0.0.1, routed to one another (cluster name `cp`); those named in
    without_jetstream hold no stream (mixed mode, as deploy/nats-cluster.conf.template allows)."""

    def __init__(self, state: Path, size: int = 3, *, without_jetstream: tuple[str, ...] = ()) -> None:
        state.mkdir(parents=True, exist_ok=True)
        self.state = state
        self.size = size
        self.without_jetstream = without_jetstream
        self.nodes = self._new_nodes()

    def _new_nodes(self) -> list[Node]:
        return [Node(f"n{i + 1}", free_port(), free_port(), self.state) for i in range(self.size)]

    @property
    def urls(self) -> str:
        return ",".join(n.url for n in self.nodes)

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    async def start(self, *, meta_leader: bool = True, within_s: float = 30) -> LoopbackCluster:
        """Start every node; wait until each is ready (and, unless told not to, has a metadata leader)."""
        for attempt in range(3):  # another process may bind a chosen port first: new ports, bounded
            routes = [n.cluster_port for n in self.nodes]
            for node in self.nodes:
                await node.start(routes, jetstream=node.name not in self.without_jetstream)
            try:
                for node in self.nodes:
                    await node.wait_for(READY, within_s)
                break
            except AssertionError:
                if attempt == 2 or not any(BIND_FAILED.search(ln) for n in self.nodes for ln in n.lines):
                    raise
                await self.stop()
                self.nodes = self._new_nodes()
        if meta_leader:
            for node in self.nodes:
                if node.name not in self.without_jetstream:
                    await node.wait_for(META_LEADER, within_s)
        return self

    async def restart(self, node: Node, within_s: float = 30) -> None:
        """Start a killed node again (same ports, same store) and wait until it is ready."""
        await node.start([n.cluster_port for n in self.nodes], jetstream=node.name not in self.without_jetstream)
        await node.wait_for(READY, within_s)

    async def stop(self) -> None:
        for node in self.nodes:
            await node.stop()


async def restart(node: Node, within_s: float = 30) -> None:
    """Start a killed standalone server again (same port, same store) and wait until it is ready."""
    await node.start(None)
    await node.wait_for(READY, within_s)
