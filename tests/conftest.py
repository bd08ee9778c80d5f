"""Shared fixtures: real nats-server, real chef processes, and a way to run `majordomo` as a user does."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent

# One step copying one file: the smallest real build.
ONE_STEP = """
[[step]]
name = "one"
inputs = ["a.txt"]
outputs = ["out/one.txt"]
command = "cp $< $@"
"""


def require(condition: bool, missing: str) -> None:
    """Skip a test whose real component is absent, except in CI: CI installs every one of them
    (deploy/setup-debian.sh), so an absence there is a broken set-up, which must fail loudly."""
    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{missing}, but CI installs it: the set-up is broken")
    pytest.skip(missing)


# The recipe many tests build: a pattern rule per source, and a glob joining what it made.
UPPER_JOIN = """
[[rule]]
name = "upper"
inputs = ["src/%.txt"]
outputs = ["build/%.up"]
command = "tr a-z A-Z < $< > $@"

[[step]]
name = "join"
inputs = ["build/*.up"]
outputs = ["build/all.txt"]
command = "cat $^ > $@"
"""


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    @property
    def summary(self) -> dict:
        """The `--json` summary: the last line of stdout."""
        return json.loads(self.stdout.strip().splitlines()[-1])


def majordomo(project: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> Run:
    proc = subprocess.run(
        [sys.executable, "-m", "majordomo.cli", *args, "-C", str(project)] if args and args[0] != "--" else
        [sys.executable, "-m", "majordomo.cli", *args[1:]],
        capture_output=True, text=True, timeout=timeout, cwd=REPO,
        env={**os.environ, **(env or {})},
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


# `majordomo build` as a client that fails (exit 99) if the build ran in its own process: the
# in-process path imports nats-py, the resident build server's thin client does not.
THIN = ("import sys, majordomo.cli as c; code = c.main(sys.argv[1:]); "
        "sys.exit(code if 'nats' not in sys.modules else 99)")


def thin_build(project: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", THIN, "build", "-C", str(project), *args], capture_output=True,
                          text=True, timeout=120, cwd=REPO, env={**os.environ, **(env or {})})


@pytest.fixture(autouse=True)
def stop_resident_federations(tmp_path: Path) -> Iterator[None]:
    """Every test leaves no resident federation behind: builds keep the embedded one up between
    runs (majordomo/resident.py), which is what tests exercise; afterwards it is stopped."""
    yield
    from majordomo.resident import stop_resident

    for info in tmp_path.rglob(".majordomo/resident.lock"):
        stop_resident(info.parent)


def write_project(root: Path, recipe: str, files: dict[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "majordomo.toml").write_text(textwrap.dedent(recipe))
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


@pytest.fixture
def nats_url(tmp_path: Path) -> Iterator[str]:
    """A real nats-server with JetStream on a free loopback port."""
    from artefacts.natsutil import EmbeddedNats

    server = EmbeddedNats(tmp_path / "nats")
    loop = asyncio.new_event_loop()
    url = loop.run_until_complete(server.start())
    try:
        yield url
    finally:
        loop.run_until_complete(server.stop())
        loop.close()


@dataclass
class Federation:
    url: str
    key: Path
    chefs: list[subprocess.Popen]
    ids: list[str]

    @property
    def env(self) -> dict[str, str]:
        return {"MAJORDOMO_KEY": str(self.key)}


def start_chef(url: str, home: Path, chef_id: str, key: Path, *extra: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "chefs.cli", "--nats", url, "--id", chef_id, "--home", str(home),
         "--key", str(key), "--authorized-keys", str(key) + ".pub",
         "--kind", "shell", "--kind", "cc", *extra],
        stdout=subprocess.PIPE, stderr=open(home.parent / f"{chef_id}.log", "wb"), text=True, cwd=REPO,
        start_new_session=True,
    )
    assert proc.stdout
    line = proc.stdout.readline()  # the chef prints one line once registered: an event, not a sleep
    if "ready" not in line:
        proc.wait(10)
        raise RuntimeError(f"chef {chef_id} did not start: {(home.parent / f'{chef_id}.log').read_text()[-800:]}")
    return proc


def stop_procs(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def federation(nats_url: str, tmp_path: Path) -> Iterator[Federation]:
    """An external federation: real NATS and two real chef processes with one slot each."""
    from artefacts.keys import load_or_create_key

    key = tmp_path / "fedkey" / "federation"
    key.parent.mkdir()
    load_or_create_key(key)
    homes = tmp_path / "chefs"
    homes.mkdir()
    procs: list[subprocess.Popen] = []
    try:
        for chef_id in ("chef-a", "chef-b"):
            procs.append(start_chef(nats_url, homes / chef_id, chef_id, key, "--slots", "1"))
        yield Federation(nats_url, key, procs, ["chef-a", "chef-b"])
    finally:
        stop_procs(procs)


async def srv_gather(nc: Any, subject: str, want: int) -> list[dict]:
    """Collect replies until `want` arrive (each wait bounded, none a sleep)."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    await nc.publish(subject, b"", reply=inbox)
    replies: list[dict] = []
    try:
        while len(replies) < want:
            msg = await sub.next_msg(timeout=10)
            replies.append(json.loads(msg.data))
    finally:
        await sub.unsubscribe()
    return replies


@pytest.fixture(scope="module")
def host_key():  # type: ignore[no-untyped-def]
    import asyncssh

    return asyncssh.generate_private_key("ssh-ed25519")


@pytest.fixture(scope="module")
def client_key():  # type: ignore[no-untyped-def]
    import asyncssh

    return asyncssh.generate_private_key("ssh-ed25519")


def put(store: Any, data: bytes) -> str:
    """Commit `data` to a store through the public temp + commit path, as a transfer would."""
    from artefacts.hashing import hash_bytes

    temp = store.new_temp()
    temp.write_bytes(data)
    digest = hash_bytes(data)
    store.commit(temp, digest)
    return digest


# -- processes, as /proc shows them (the exit of a process that is not our child has no event) ----

GONE_S = 30.0  # bound on a process ending once told to (or once its parent died)


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    """Whether the process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_gone(pids: list[int]) -> list[int]:
    """Processes still alive after GONE_S (polling /proc)."""
    deadline = time.monotonic() + GONE_S
    while (still := [p for p in pids if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return still
