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

from artefacts.lifeline import die_with_parent
from protocol.kinds import KNOWN_KINDS

EMBEDDED_CHEFS = 2
CHEF_START_TIMEOUT_S = 30.0


class FederationError(Exception):
    """The federation could not be joined or started; the message is for the user."""


class LocalChefs:
    """Chef processes the embedded federation starts on this machine, and stops afterwards."""

    def __init__(self, state_dir: Path, nats_url: str, key: Path, authorized: Path, *,
                 tied_to_parent: bool = False) -> None:
        self.tied_to_parent = tied_to_parent  # the chefs die with us, even if we are SIGKILLed
        self.state_dir = state_dir
        self.nats_url = nats_url
        self.key = key
        self.authorized = authorized
        self.procs: list[asyncio.subprocess.Process] = []
        self.ids: list[str] = []

    async def start(self, count: int) -> list[str]:
        ids = await self.spawn(count)
        await self.ready()
        return ids

    async def spawn(self, count: int) -> list[str]:
        """Start `count` chef processes without waiting for them: a supervisor imports its build
        server meanwhile. `ready` waits for them."""
        slots = max(1, os.cpu_count() or 1)
        self.ids = [f"local-{n}" for n in range(1, count + 1)]
        for chef_id in self.ids:
            home = self.state_dir / "chefs" / chef_id
            home.mkdir(parents=True, exist_ok=True)
            log = open(home / "chef.log", "ab")  # noqa: ASYNC230 - only handed to the child
            argv = [sys.executable, "-m", "chefs.cli", "--nats", self.nats_url, "--id", chef_id,
                    "--home", str(home), "--key", str(self.key), "--authorized-keys", str(self.authorized),
                    "--slots", str(slots),
                    "--no-hand-over"]  # the local chefs stop together: nobody to hand over to
            for kind in KNOWN_KINDS:
                argv += ["--kind", kind]
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=log,
                start_new_session=True,  # Ctrl-C reaches only us; we stop the chefs in order
                preexec_fn=die_with_parent() if self.tied_to_parent else None,
            )
            log.close()
            self.procs.append(proc)
        return self.ids

    async def ready(self) -> None:
        """Wait until every spawned chef says it is ready (registered in the federation)."""
        try:
            ready = (self._ready(proc, chef_id) for proc, chef_id in zip(self.procs, self.ids, strict=True))
            await asyncio.wait_for(asyncio.gather(*ready), CHEF_START_TIMEOUT_S)
        except TimeoutError:
            raise FederationError(f"local chefs did not start within {CHEF_START_TIMEOUT_S:g}s; "
                                  f"see {self.state_dir / 'chefs'}/*/chef.log") from None

    @property
    def running(self) -> bool:
        return bool(self.procs) and all(p.returncode is None for p in self.procs)

    async def _ready(self, proc: asyncio.subprocess.Process, chef_id: str) -> None:
        assert proc.stdout
        line = await proc.stdout.readline()
        if b"ready" not in line:
            await proc.wait()
            log = self.state_dir / "chefs" / chef_id / "chef.log"
            tail = log.read_text(errors="replace").strip().splitlines()[-3:] if log.exists() else []
            raise FederationError(f"local chef {chef_id} failed to start: {' '.join(tail)}")

    async def stop(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        self.procs.clear()
