"""Chef processes of the embedded federation, started on this machine.

Apart from majordomo/federation.py so that the resident supervisor can start its chefs before it
imports the federation stack (~80 ms, mostly nats-py, that the chefs' own start-up then overlaps).
Only the standard library and light project modules are imported here.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

from artefacts.childwatch import signal_child
from artefacts.lifeline import die_with_parent
from protocol.kinds import KNOWN_KINDS

EMBEDDED_CHEFS = 2
CHEF_START_TIMEOUT_S = 30.0


class FederationError(Exception):
    """The federation could not be joined or started; the message is for the user."""


class LocalChefs:
    """The chefs the embedded federation starts on this machine, and stops afterwards: one
    `python -m chefs.fleet` process, which imports the chef code once and forks the chefs."""

    def __init__(self, state_dir: Path, nats_url: str | None, key: Path, authorized: Path, *,
                 tied_to_parent: bool = False) -> None:
        self.tied_to_parent = tied_to_parent  # the chefs die with us, even if we are SIGKILLed
        self.state_dir = state_dir
        self.nats_url = nats_url  # None: given later, by `connect`
        self.key = key
        self.authorized = authorized
        self.fleet: asyncio.subprocess.Process | None = None
        self.ids: list[str] = []

    async def start(self, count: int) -> list[str]:
        ids = await self.spawn(count)
        await self.ready()
        return ids

    async def spawn(self, count: int) -> list[str]:
        """Start `count` chefs without waiting for them: a supervisor imports its build server
        meanwhile. `ready` waits for them. Without a NATS URL yet, the fleet imports the chef code
        while it waits for `connect` to give it one (the key files must exist by then)."""
        slots = max(1, os.cpu_count() or 1)
        self.ids = [f"local-{n}" for n in range(1, count + 1)]
        homes = self.state_dir / "chefs"
        homes.mkdir(parents=True, exist_ok=True)
        url_later = self.nats_url is None
        nats = ["--nats-from-stdin", "--"] if url_later else ["--", "--nats", str(self.nats_url)]
        argv = [sys.executable, "-m", "chefs.fleet", "--homes", str(homes), "--ids", ",".join(self.ids), *nats,
                "--key", str(self.key), "--authorized-keys", str(self.authorized),
                "--slots", str(slots),
                "--no-hand-over"]  # the local chefs stop together: nobody to hand over to
        for kind in KNOWN_KINDS:
            argv += ["--kind", kind]
        log = open(homes / "fleet.log", "ab")  # noqa: ASYNC230 - only handed to the child
        try:
            self.fleet = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.PIPE if url_later else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=log,
                start_new_session=True,  # Ctrl-C reaches only us; we stop the chefs in order
                preexec_fn=die_with_parent() if self.tied_to_parent else None,
            )
        finally:
            log.close()
        return self.ids

    async def connect(self, nats_url: str) -> None:
        """Give chefs spawned without a URL their NATS server's."""
        assert self.fleet and self.fleet.stdin and self.nats_url is None
        self.nats_url = nats_url
        self.fleet.stdin.write(f"{nats_url}\n".encode())
        with contextlib.suppress(ConnectionError):  # the fleet died already: `ready` says why
            await self.fleet.stdin.drain()
        self.fleet.stdin.close()

    async def ready(self) -> None:
        """Wait until every spawned chef says it is ready (registered in the federation)."""
        try:
            await asyncio.wait_for(self._ready(), CHEF_START_TIMEOUT_S)
        except TimeoutError:
            raise FederationError(f"local chefs did not start within {CHEF_START_TIMEOUT_S:g}s; "
                                  f"see {self.state_dir / 'chefs'}/*/chef.log") from None

    @property
    def running(self) -> bool:
        return self.fleet is not None and self.fleet.returncode is None

    async def _ready(self) -> None:
        assert self.fleet and self.fleet.stdout
        waiting = set(self.ids)
        while waiting:
            words = (await self.fleet.stdout.readline()).decode(errors="replace").split()
            if not words:  # the fleet ended: a chef failed to start
                await self.fleet.wait()
                raise FederationError(self._why_not_started(sorted(waiting)))
            if words[0] == "chef" and words[-1] == "ready":
                waiting.discard(words[1])

    def _why_not_started(self, waiting: list[str]) -> str:
        """The first chef log that says why, else the fleet's (a chef that failed before it had a log)."""
        homes = self.state_dir / "chefs"
        for chef_id in waiting:
            tail = _tail(homes / chef_id / "chef.log")
            if tail:
                return f"local chef {chef_id} failed to start: {tail}"
        return f"the local chefs did not start: {_tail(homes / 'fleet.log')}"

    async def stop(self) -> None:
        fleet, self.fleet = self.fleet, None
        if fleet is None:
            return
        signal_child(fleet, signal.SIGTERM)  # passed on to each chef
        try:
            await asyncio.wait_for(fleet.wait(), 10)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(fleet.pid, signal.SIGKILL)  # the fleet, its chefs and their steps: one group
            await fleet.wait()


def _tail(log: Path) -> str:
    """The last lines of a log, on one line."""
    try:
        return " ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
    except OSError:
        return ""
