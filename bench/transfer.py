"""Artefact pull throughput over SFTP on loopback, against `cp` of the same file, measured in one run.

    python -m bench.transfer [--size-mib 256] [--rounds 3] [--dir DIR]

Two pods: a server pod (a separate process, as on a real federation, with its own store holding a
random artefact) and a puller pod (this process, pulling into another store with `Puller`). Every
pull includes the SSH handshake, hashing while receiving, fsync and rename into the store. The peers:
`cp` of the same file (warm page cache), also followed by an fsync for an equal footing, and asyncssh
with its defaults (`SFTPServer` + `SFTPClient.get`, default ciphers, window and packet sizes). Best of
`--rounds` for each. Target: at least 400 MiB/s for the tuned pull.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncssh

from artefacts.hashing import StreamHasher
from artefacts.keys import known_hosts_for, load_or_create_key, public_key_line
from artefacts.resolver import store_resolver
from artefacts.sftp_client import Puller
from artefacts.sftp_server import ArtefactServer
from artefacts.store import Store
from protocol.digests import store_relpath
from protocol.messages import SftpEndpoint

TARGET_MIB_S = 400.0
MiB = 1024 * 1024


# ---- the server pods (child processes) -------------------------------------------------------------

MODES = ("tuned", "untuned", "plain")
"""tuned: ArtefactServer as shipped. untuned: ArtefactServer with asyncssh's default transport (cipher
list, 2 MiB window, 32 KiB packets). plain: asyncssh's own chrooted SFTPServer, nothing changed."""


def asyncssh_default_transport() -> dict[str, object]:
    from asyncssh.encryption import get_default_encryption_algs

    return {"encryption_algs": [alg.decode() for alg in get_default_encryption_algs()],
            "window": 2 * MiB, "max_pktsize": 32 * 1024}


async def serve(root: Path, key_path: Path, authorized: str, mode: str) -> None:
    host_key = load_or_create_key(key_path)
    server: ArtefactServer | None = None
    if mode == "plain":
        acceptor = await asyncssh.listen(
            "127.0.0.1", 0, server_host_keys=[host_key],
            authorized_client_keys=asyncssh.import_authorized_keys(authorized + "\n"),
            sftp_factory=lambda chan: asyncssh.SFTPServer(chan, chroot=str(root).encode()))
        port = acceptor.get_port()
    else:
        extra = asyncssh_default_transport() if mode == "untuned" else {}
        server = ArtefactServer(store_resolver(root), host_key, [authorized], **extra)  # type: ignore[arg-type]
        _, port = await server.start("127.0.0.1", 0)
    print(json.dumps({"port": port, "host_key": public_key_line(host_key)}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent closes stdin
    if server is not None:
        await server.stop()
    else:
        acceptor.close()


class ServerPod:
    """A server pod in a child process; its CPU time is read from /proc for the report."""

    def __init__(self, root: Path, key_path: Path, authorized: str, mode: str) -> None:
        argv = [sys.executable, "-m", "bench.transfer", "--serve", str(root), "--key", str(key_path),
                "--authorized", authorized, "--mode", mode]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.stop()
            raise RuntimeError("server pod failed to start")
        info = json.loads(line)
        self.endpoint = SftpEndpoint("127.0.0.1", info["port"], info["host_key"])

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ---- measurements ----------------------------------------------------------------------------------

def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # all threads: loop and disk writer
    return usage.ru_utime + usage.ru_stime


class Best:
    """The fastest round of one contender, with the CPU it used."""

    def __init__(self, name: str, size: int, note: str = "") -> None:
        self.name, self.size, self.note = name, size, note
        self.seconds = float("inf")
        self.client_cpu = self.server_cpu = 0.0

    @property
    def mib_s(self) -> float:
        return self.size / MiB / self.seconds

    async def round(self, run: Callable[[], Awaitable[None]], after: Callable[[], None],
                    pod: ServerPod | None = None) -> None:
        server_cpu = pod.cpu_seconds() if pod else 0.0
        client_cpu = own_cpu_seconds()
        start = time.perf_counter()
        await run()
        elapsed = time.perf_counter() - start
        if elapsed < self.seconds:
            self.seconds = elapsed
            self.client_cpu = own_cpu_seconds() - client_cpu
            self.server_cpu = (pod.cpu_seconds() - server_cpu) if pod else 0.0
        after()

    def line(self) -> str:
        cpu = f"  cpu: puller {self.client_cpu:.2f}s, server {self.server_cpu:.2f}s" if self.server_cpu else ""
        return f"  {self.name:<40} {self.mib_s:>7.0f} MiB/s  ({self.seconds:.3f} s){cpu}{self.note}"


def make_artefact(store: Store, size: int) -> str:
    """A random artefact committed through the store's own path; returns its digest."""
    temp = store.new_temp()
    hasher = StreamHasher("sha256")
    with open(temp, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(left, 8 * MiB))
            hasher.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    digest = hasher.digest()
    store.commit(temp, digest)
    return digest


def cp_once(src: Path, dest: Path, fsync: bool) -> None:
    subprocess.run(["cp", str(src), str(dest)], check=True)
    if fsync:
        fd = os.open(dest, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


async def bench(work: Path, size: int, rounds: int) -> bool:
    src = Store(work / "src")
    dst = Store(work / "dst")
    print(f"making a {size // MiB} MiB random artefact in {src.root} ...", flush=True)
    digest = await asyncio.to_thread(make_artefact, src, size)
    src_path = src.path_for(digest)
    client_key = await asyncio.to_thread(load_or_create_key, work / "client_key")
    authorized = public_key_line(client_key)
    pods: dict[str, ServerPod] = {}
    try:
        for mode in MODES:
            pods[mode] = ServerPod(src.root, work / "server_key", authorized, mode)

        def drop_pulled() -> None:
            dst.path_for(digest).unlink()

        async def pull(mode: str) -> None:
            extra = {} if mode == "tuned" else {"parallel": 16, **asyncssh_default_transport()}
            async with Puller(client_key, dst, **extra) as puller:  # type: ignore[arg-type]  # fresh connection
                await puller.pull(digest, size, pods[mode].endpoint)

        plain_dest = work / "plain_get"

        async def plain_get() -> None:
            ep = pods["plain"].endpoint
            async with asyncssh.connect(ep.host, ep.port, config=None, known_hosts=known_hosts_for([ep.host_key]),
                                        client_keys=[client_key], agent_path=None, username="bench") as conn:
                async with conn.start_sftp_client() as sftp:
                    await sftp.get(store_relpath(digest), str(plain_dest))

        cp_dest = work / "cp_copy"
        await asyncio.to_thread(cp_once, src_path, cp_dest, False)  # warm-up: every contender reads a hot cache
        cp_dest.unlink()

        tuned = Best("pull, tuned (as shipped)", size, "  [handshake+hash+fsync]")
        untuned = Best("pull, asyncssh default transport", size, "  [handshake+hash+fsync]")
        plain = Best("asyncssh defaults: SFTPServer + get()", size, "  [no hash, no fsync]")
        cp_plain = Best("cp", size)
        cp_sync = Best("cp + fsync", size)
        # Rounds interleave the contenders, so that load from elsewhere on the machine hits all alike.
        for _ in range(rounds):
            await tuned.round(lambda: pull("tuned"), drop_pulled, pods["tuned"])
            await untuned.round(lambda: pull("untuned"), drop_pulled, pods["untuned"])
            await plain.round(plain_get, plain_dest.unlink, pods["plain"])
            await cp_plain.round(lambda: asyncio.to_thread(cp_once, src_path, cp_dest, False), cp_dest.unlink)
            await cp_sync.round(lambda: asyncio.to_thread(cp_once, src_path, cp_dest, True), cp_dest.unlink)
    finally:
        for pod in pods.values():
            pod.stop()

    print(f"\nloopback artefact pull of {size // MiB} MiB, best of {rounds}, {os.cpu_count()} cores")
    for best in (tuned, untuned, plain, cp_plain, cp_sync):
        print(best.line())
    print(f"\n  pull / cp                  = {tuned.mib_s / cp_plain.mib_s:.2f}")
    print(f"  pull / (cp + fsync)        = {tuned.mib_s / cp_sync.mib_s:.2f}")
    print(f"  pull / default transport   = {tuned.mib_s / untuned.mib_s:.2f}")
    print(f"  pull / asyncssh defaults   = {tuned.mib_s / plain.mib_s:.2f}")
    ok = tuned.mib_s >= TARGET_MIB_S
    print(f"  target: pull >= {TARGET_MIB_S:.0f} MiB/s: {'met' if ok else 'NOT met'} ({tuned.mib_s:.0f} MiB/s)")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="where to make the temporary pods")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--key", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--authorized", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=MODES, default="tuned", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve, args.key, args.authorized, args.mode))
        return
    work = Path(tempfile.mkdtemp(prefix="cp-bench-transfer-", dir=args.dir))
    try:
        asyncio.run(bench(work, args.size_mib * MiB, args.rounds))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
