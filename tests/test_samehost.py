"""The same-host shortcut: owners on this host are read from the filesystem, verified, instead of over SFTP.

Real parts throughout: stores, a real SFTP server each owner also runs (so a fallback is a real transfer),
real chef processes on a real nats-server, and `majordomo build` on the embedded federation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import asyncssh
import msgspec
import nats
import pytest
from conftest import REPO, UPPER_JOIN, majordomo, put, require, write_project

from artefacts.hashing import hash_bytes
from artefacts.keys import public_key_line
from artefacts.resolver import store_resolver
from artefacts.samehost import ENV_SWITCH, host_identity, local_path, store_access, workspace_access
from artefacts.sftp_client import DigestMismatch, Puller
from artefacts.sftp_server import ArtefactServer
from artefacts.store import Store
from protocol import subjects
from protocol.messages import (
    ChefInfo,
    InputRef,
    LocalAccess,
    Pod,
    PullRequest,
    PullResult,
    SftpEndpoint,
    decoder,
    encode,
)

MiB = 1024 * 1024
SOURCES = {"src/a.txt": "alpha\n", "src/b.txt": "beta\n", "src/c.txt": "gamma\n", "src/d.txt": "delta\n"}



@pytest.fixture(autouse=True)
def shortcut_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_SWITCH, raising=False)  # whatever the caller's environment says



@contextlib.asynccontextmanager
async def owner(resolve: Callable[[str], Path | None], host_key: asyncssh.SSHKey, client_key: asyncssh.SSHKey,
                local: LocalAccess | None) -> AsyncIterator[tuple[ArtefactServer, SftpEndpoint]]:
    """An owner pod: a real SFTP server, advertising `local` in its endpoint as chefs and MajorDomos do."""
    server = ArtefactServer(resolve, host_key, [public_key_line(client_key)])
    await server.start("127.0.0.1", 0)
    try:
        yield server, server.endpoint("127.0.0.1", local=local)
    finally:
        await server.stop()


def inode(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_dev, st.st_ino


# -- the puller ------------------------------------------------------------------------------------------

async def test_store_entry_on_this_host_is_hardlinked_once(tmp_path: Path, host_key, client_key) -> None:
    src, dst = Store(tmp_path / "owner"), Store(tmp_path / "mine")
    data = os.urandom(3 * MiB + 5)
    digest = put(src, data)
    local = store_access(src.root, linkable=True)
    assert local is not None and local.host == host_identity() != ""
    async with owner(store_resolver(src.root), host_key, client_key, local) as (server, ep), \
            Puller(client_key, dst) as puller:
        paths = await asyncio.gather(*(puller.pull(digest, len(data), ep) for _ in range(10)))
        assert set(paths) == {dst.path_for(digest)}
        # One link, shared by all ten callers; the owner's entry and ours are one inode, still read-only.
        assert inode(dst.path_for(digest)) == inode(src.path_for(digest))
        assert stat.S_IMODE(dst.path_for(digest).stat().st_mode) == 0o444
        assert (puller.files_linked, puller.bytes_linked, puller.files_copied) == (1, len(data), 0)
        # Nothing went over the network, and the network counters say so.
        assert (puller.files_pulled, puller.bytes_pulled) == (0, 0)
        assert server.files_opened == 0 and server.bytes_served == 0
    assert os.listdir(dst.tmp) == []


async def test_opt_out_and_another_host_use_sftp(tmp_path: Path, host_key, client_key,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    src = Store(tmp_path / "owner")
    data = os.urandom(MiB)
    digest = put(src, data)
    here = store_access(src.root, linkable=True)
    assert here is not None
    elsewhere = msgspec.structs.replace(here, host="another-host")
    cases: list[tuple[str, LocalAccess, bool | None, str]] = [
        ("another host", elsewhere, None, "1"), ("Puller(same_host=False)", here, False, "1"),
        (f"{ENV_SWITCH}=0", here, None, "0")]
    for n, (why, local, same_host, switch) in enumerate(cases):
        dst = Store(tmp_path / f"mine-{n}")
        monkeypatch.setenv(ENV_SWITCH, switch)
        async with owner(store_resolver(src.root), host_key, client_key, local) as (server, ep), \
                Puller(client_key, dst, same_host=same_host) as puller:
            assert not puller.is_local(ep), why
            path = await puller.pull(digest, len(data), ep)
            assert path.read_bytes() == data, why
            assert inode(path) != inode(src.path_for(digest)), why
            assert (puller.files_pulled, puller.bytes_pulled) == (1, len(data)), why
            assert puller.files_linked + puller.files_copied == 0, why
            assert server.bytes_served == len(data), why


async def test_rotten_entry_is_not_linked_and_is_pinned_on_its_owner(tmp_path: Path, host_key, client_key) -> None:
    src, dst = Store(tmp_path / "owner"), Store(tmp_path / "mine")
    data = b"the right bytes\n" * 1000
    digest = put(src, data)
    entry = src.path_for(digest)
    entry.chmod(0o644)
    entry.write_bytes(b"x" * len(data))  # rot: same size, other bytes, still looks like an entry
    entry.chmod(0o444)
    async with owner(store_resolver(src.root), host_key, client_key,
                     store_access(src.root, linkable=True)) as (server, ep), Puller(client_key, dst) as puller:
        # The link is refused after hashing; SFTP, trying next, gets the same bytes and names the owner.
        with pytest.raises(DigestMismatch):
            await puller.pull(digest, len(data), ep)
        assert (puller.local_fallbacks, puller.files_linked, puller.mismatches) == (1, 0, 1)
        assert server.files_opened == 1
    assert not dst.has(digest) and os.listdir(dst.tmp) == []
    assert entry.stat().st_nlink == 1  # our refused link is gone again


async def test_workspace_source_is_copied_verified_never_linked(tmp_path: Path, host_key, client_key) -> None:
    workspace = tmp_path / "project"
    source = workspace / "src" / "a.txt"
    source.parent.mkdir(parents=True)
    data = b"a source the user may edit\n" * 500
    source.write_bytes(data)
    source.chmod(0o644)
    digest = hash_bytes(data)
    served = {digest: source}  # what a MajorDomo serves: its scanned sources, by digest
    dst = Store(tmp_path / "mine")
    async with owner(lambda d: served.get(d), host_key, client_key, workspace_access(workspace)) as (server, ep), \
            Puller(client_key, dst) as puller:
        path = await puller.pull(digest, len(data), ep, path="src/a.txt")
        assert path.read_bytes() == data
        # A copy, not a link: the user's file keeps its own inode and its mode.
        assert inode(path) != inode(source)
        assert stat.S_IMODE(source.stat().st_mode) == 0o644 and source.stat().st_nlink == 1
        assert (puller.files_copied, puller.bytes_copied, puller.files_linked) == (1, len(data), 0)
        assert server.files_opened == 0

        # Hashed by the MajorDomo, then edited (same size): the copy is refused, then what SFTP serves too.
        hashed = b"hashed before the edit\n" * 300
        edited_file = workspace / "src" / "c.txt"
        edited_file.write_bytes(hashed)
        wanted = hash_bytes(hashed)
        served[wanted] = edited_file
        edited_file.write_bytes(hashed.upper())
        with pytest.raises(DigestMismatch):
            await puller.pull(wanted, len(hashed), ep, path="src/c.txt")
        assert not dst.has(wanted) and puller.local_fallbacks == 1 and puller.files_copied == 1

        # The MajorDomo serves that digest from another file with those bytes: the stale path falls back to
        # SFTP, which delivers them.
        twin = workspace / "src" / "d.txt"
        twin.write_bytes(hashed)
        served[wanted] = twin
        got = await puller.pull(wanted, len(hashed), ep, path="src/c.txt")
        assert got.read_bytes() == hashed and inode(got) != inode(twin)
        assert puller.local_fallbacks == 2 and (puller.files_pulled, puller.bytes_pulled) == (1, len(hashed))
    assert os.listdir(dst.tmp) == []


async def test_many_same_host_files_are_taken_in_one_batch(tmp_path: Path, host_key, client_key) -> None:
    """A fresh chef's first compile lacks its source and every header: they are taken together (store
    entries linked, workspace files copied, each verified), and only what the batch could not take is
    left to the per-file pull, which tries SFTP."""
    src, dst = Store(tmp_path / "owner"), Store(tmp_path / "mine")
    entries = {put(src, data): len(data) for data in (f"entry {n}\n".encode() * 100 for n in range(5))}
    workspace = tmp_path / "project"
    (workspace / "src").mkdir(parents=True)
    copied: dict[str, tuple[str, int]] = {}
    for n in range(5):
        data = f"source {n}\n".encode() * 50
        (workspace / "src" / f"{n}.c").write_bytes(data)
        copied[hash_bytes(data)] = (f"src/{n}.c", len(data))
    edited_data = b"hashed, then edited\n" * 40
    edited = hash_bytes(edited_data)
    (workspace / "src" / "edited.c").write_bytes(edited_data.upper())  # same size, other bytes
    held = put(dst, b"already here\n")
    store_ep = SftpEndpoint(host="127.0.0.1", port=1, host_key="", local=store_access(src.root, linkable=True))
    ws_ep = SftpEndpoint(host="127.0.0.1", port=1, host_key="", local=workspace_access(workspace))
    far_ep = SftpEndpoint(host="127.0.0.1", port=1, host_key="",
                          local=msgspec.structs.replace(workspace_access(workspace), host="another-host"))
    wanted = [(d, size, store_ep, "") for d, size in entries.items()]
    wanted += [(d, size, ws_ep, path) for d, (path, size) in copied.items()]
    wanted += [(edited, len(edited_data), ws_ep, "src/edited.c"), (held, 13, ws_ep, "nowhere"),
               (hash_bytes(b"far\n"), 4, far_ep, "src/far.c")]
    async with Puller(client_key, dst) as puller:
        got = await puller.take_local_many(wanted)
        assert {d for d, p in got.items() if p.via == "link"} == set(entries)
        assert {d for d, p in got.items() if p.via == "copy"} == set(copied)
        assert got[held].via == "held"
        assert edited not in got and hash_bytes(b"far\n") not in got  # left to the per-file pull
        assert (puller.files_linked, puller.files_copied, puller.local_fallbacks) == (5, 5, 1)
        assert puller.bytes_copied == sum(size for _path, size in copied.values())
    for digest in entries:
        assert inode(dst.path_for(digest)) == inode(src.path_for(digest))
    for digest, (path, _size) in copied.items():
        entry = dst.path_for(digest)
        assert hash_bytes(entry.read_bytes()) == digest and inode(entry) != inode(workspace / path)
        assert stat.S_IMODE(entry.stat().st_mode) == 0o444
    assert not dst.has(edited) and os.listdir(dst.tmp) == []


def test_workspace_hints_stay_inside_the_workspace(tmp_path: Path) -> None:
    workspace = tmp_path / "project"
    (workspace / "src").mkdir(parents=True)
    (tmp_path / "secret").write_text("not the project's\n")
    (workspace / "src" / "escape").symlink_to(tmp_path / "secret")
    (workspace / "src" / "inside").symlink_to(workspace / "src" / "a.txt")
    access = workspace_access(workspace)
    assert access is not None
    digest = hash_bytes(b"")
    real = Path(os.path.realpath(workspace))
    assert local_path(access, digest, "src/a.txt") == real / "src" / "a.txt"
    assert local_path(access, digest, "src/inside") == real / "src" / "a.txt"
    for bad in ("", "../secret", "/etc/passwd", "src/../../secret", "src/escape"):
        assert local_path(access, digest, bad) is None, bad


async def test_fetch_to_copies_from_a_store_on_this_host(tmp_path: Path, host_key, client_key) -> None:
    src, mine = Store(tmp_path / "chef"), Store(tmp_path / "md-store")
    data = os.urandom(MiB + 7)
    digest = put(src, data)
    dest = tmp_path / "project" / "out" / "report.bin"
    dest.parent.mkdir(parents=True)
    async with owner(store_resolver(src.root), host_key, client_key,
                     store_access(src.root, linkable=True)) as (server, ep), Puller(client_key, mine) as puller:
        assert await puller.fetch_to(digest, len(data), [ep], dest) == (dest, ep)
        assert dest.read_bytes() == data and stat.S_IMODE(dest.stat().st_mode) == 0o644
        assert inode(dest) != inode(src.path_for(digest))  # a copy: the workspace file is the user's
        assert (puller.files_copied, puller.files_linked, puller.files_pulled) == (1, 0, 0)
        assert server.files_opened == 0 and os.listdir(dest.parent) == ["report.bin"]
    fd = os.open(dest, os.O_WRONLY)  # the user edits the output in place: the store entry is untouched
    os.pwrite(fd, b"edited", 0)
    os.close(fd)
    assert src.path_for(digest).read_bytes() == data


def test_another_network_namespace_is_another_host(tmp_path: Path) -> None:
    """The multi-host tests run hosts as network namespaces sharing one filesystem: their inputs must
    travel over the network, so each namespace has its own identity."""
    unshare = shutil.which("unshare")
    require(os.geteuid() == 0 and unshare is not None, "unshare --net needs root and util-linux")
    code = "from artefacts.samehost import host_identity; print(host_identity())"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    same = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert same.stdout.strip() == host_identity() != ""
    other = subprocess.run([unshare, "--net", sys.executable, "-c", code], capture_output=True, text=True,
                           env=env, check=True)
    assert other.stdout.strip() not in ("", host_identity())


# -- real chefs and real builds ------------------------------------------------------------------------------

def _store_inodes(root: Path) -> dict[str, tuple[int, int]]:
    found = {}
    for algo in ("sha256", "blake3"):
        for path in (root / algo).rglob("*") if (root / algo).exists() else ():
            if path.is_file():
                found[f"{algo}:{path.name}"] = inode(path)
    return found


async def _chef_stats(url: str, ids: list[str]) -> dict[str, dict]:
    """Each chef's counters, from `$SRV.STATS` (replies gathered with a bounded wait each)."""
    nc = await nats.connect(url, name="test-samehost")
    try:
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        await nc.publish("$SRV.STATS.computepods-chef", b"", reply=inbox)
        stats: dict[str, dict] = {}
        while len(stats) < len(ids):
            reply = json.loads((await sub.next_msg(timeout=10)).data)
            run = next(e for e in reply["endpoints"] if e["name"] == "run")
            stats[reply["metadata"]["chef_id"]] = run["data"]
        return stats
    finally:
        await nc.close()


async def test_chef_links_a_peer_chefs_entry(tmp_path: Path, federation) -> None:
    """Chef processes on one host: what one made, the other takes as a hardlink to the same inode."""
    recipe = """
[[step]]
name = "make"
inputs = ["in.txt"]
outputs = ["out/data.txt"]
command = "tr a-z A-Z < $< > $@"
"""
    project = write_project(tmp_path / "p", recipe, {"in.txt": "hello\n"})
    run = await asyncio.to_thread(majordomo, project, "build", "--json", "--nats", federation.url,
                                  env=federation.env)
    assert run.code == 0, run.stderr
    assert (run.summary["files_pulled"], run.summary["bytes_pulled"]) == (0, 0), run.summary
    assert run.summary["files_local"] == 2, run.summary  # the source to the chef, the output back
    digest, size = hash_bytes(b"HELLO\n"), 6
    stores = {c: tmp_path / "chefs" / c / "store" for c in federation.ids}
    maker = run.summary["chefs"][0]["id"]
    taker = next(c for c in federation.ids if c != maker)
    assert digest in _store_inodes(stores[maker]) and digest not in _store_inodes(stores[taker])
    before = (await _chef_stats(federation.url, federation.ids))[taker]

    nc = await nats.connect(federation.url)
    try:
        kv = await nc.jetstream().key_value(subjects.chefs_bucket("cp"))
        info = decoder(ChefInfo).decode((await kv.get(maker)).value)
        assert info.sftp.local is not None and info.sftp.local.linkable  # the registry carries it
        ask = PullRequest(inputs=[InputRef(path="out/data.txt", digest=digest, size=size, owners=[maker])],
                          pods=[Pod(id=maker, sftp=info.sftp)])
        reply = decoder(PullResult).decode((await nc.request(subjects.chef_pull("cp", taker), encode(ask),
                                                             timeout=30)).data)
        assert reply.held == [digest], reply
    finally:
        await nc.close()
    assert _store_inodes(stores[taker])[digest] == _store_inodes(stores[maker])[digest]
    after = (await _chef_stats(federation.url, federation.ids))[taker]
    assert after["files_pulled"] == before["files_pulled"]  # nothing over the network
    assert after["files_local"] == before["files_local"] + 1


def test_embedded_build_moves_no_sftp_bytes_and_opting_out_still_works(tmp_path: Path) -> None:
    fast = write_project(tmp_path / "fast", UPPER_JOIN, SOURCES)
    run = majordomo(fast, "build", "--json")
    assert run.code == 0, run.stderr
    s = run.summary
    assert (fast / "build/all.txt").read_text() == "ALPHA\nBETA\nGAMMA\nDELTA\n"
    assert (s["files_pulled"], s["bytes_pulled"]) == (0, 0), s
    # Four sources to the chefs and the final output back, at least; any .up the joining chef lacked too.
    assert s["files_local"] >= len(SOURCES) + 1, s
    stores = {}
    for home in (fast / ".majordomo" / "chefs").iterdir():
        stores.update({(home.name, d): ino for d, ino in _store_inodes(home / "store").items()})
    # Sources were copied into the stores, never linked: the user's files keep their inodes and modes.
    for rel in SOURCES:
        assert inode(fast / rel) not in stores.values(), rel
        assert stat.S_IMODE((fast / rel).stat().st_mode) == 0o644 and (fast / rel).stat().st_nlink == 1
        assert any(d == hash_bytes((fast / rel).read_bytes()) for _, d in stores), rel
    assert inode(fast / "build/all.txt") not in stores.values()  # the final output is a copy too

    # The same build with the shortcut off goes over SFTP, as between hosts, and gives the same bytes.
    slow = write_project(tmp_path / "slow", UPPER_JOIN, SOURCES)
    off = majordomo(slow, "build", "--json", env={ENV_SWITCH: "0"})
    assert off.code == 0, off.stderr
    assert (off.summary["files_local"], off.summary["bytes_local"]) == (0, 0), off.summary
    assert off.summary["files_pulled"] >= len(SOURCES) + 1, off.summary
    assert (slow / "build/all.txt").read_bytes() == (fast / "build/all.txt").read_bytes()
