"""Artefact transfer over real SFTP on 127.0.0.1: the read-only server, the verifying puller, and keys."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import asyncssh
import pytest
from conftest import put

from artefacts.hashing import hash_bytes
from artefacts.keys import fingerprint, load_or_create_key, public_key_line
from artefacts.resolver import store_resolver
from artefacts.sftp_client import DigestMismatch, HostKeyMismatch, Puller, PullError
from artefacts.sftp_server import ArtefactServer
from artefacts.store import Store
from protocol.digests import store_relpath
from protocol.messages import SftpEndpoint

MiB = 1024 * 1024




def leftovers(store: Store) -> list[str]:
    return sorted(os.listdir(store.tmp))


@contextlib.asynccontextmanager
async def serving(resolve: Callable[[str], Path | None], host_key: asyncssh.SSHKey,
                  *clients: asyncssh.SSHKey) -> AsyncIterator[tuple[ArtefactServer, SftpEndpoint]]:
    server = ArtefactServer(resolve, host_key, [public_key_line(k) for k in clients])
    await server.start("127.0.0.1", 0)
    try:
        yield server, server.endpoint("127.0.0.1")
    finally:
        await server.stop()


@contextlib.asynccontextmanager
async def raw_sftp(ep: SftpEndpoint, key: asyncssh.SSHKey) -> AsyncIterator[asyncssh.SFTPClient]:
    """A plain asyncssh client, to try what a hostile (but authorized) peer could send."""
    async with asyncssh.connect(ep.host, ep.port, config=None, known_hosts=None, client_keys=[key],
                                agent_path=None, username="x") as conn:
        async with conn.start_sftp_client() as sftp:
            yield sftp


@pytest.fixture
def src(tmp_path: Path) -> Store:
    return Store(tmp_path / "src")


@pytest.fixture
def dst(tmp_path: Path) -> Store:
    return Store(tmp_path / "dst")


async def test_round_trip_multi_mib(src: Store, dst: Store, host_key, client_key) -> None:
    data = os.urandom(9 * MiB + 12345)  # not a multiple of the block size: the last block is short
    digest = put(src, data)
    async with serving(store_resolver(src.root), host_key, client_key) as (server, ep):
        async with Puller(client_key, dst) as puller:
            path = await puller.pull(digest, len(data), ep)
            assert path == dst.path_for(digest)
            assert path.read_bytes() == data
            assert stat.S_IMODE(path.stat().st_mode) == 0o444
            assert (puller.files_pulled, puller.bytes_pulled) == (1, len(data))
            # Already held: answered from the store, the server is not asked again.
            assert await puller.pull(digest, len(data), ep) == path
            assert puller.files_pulled == 1 and server.files_opened == 1
    assert server.bytes_served == len(data)
    assert leftovers(dst) == []


async def test_empty_artefact(src: Store, dst: Store, host_key, client_key) -> None:
    digest = put(src, b"")
    async with serving(store_resolver(src.root), host_key, client_key) as (_, ep), Puller(client_key, dst) as p:
        assert (await p.pull(digest, 0, ep)).read_bytes() == b""


async def test_unauthorized_client_key_is_refused(src: Store, dst: Store, host_key, client_key) -> None:
    digest = put(src, b"secret artefact")
    stranger = asyncssh.generate_private_key("ssh-ed25519")
    async with serving(store_resolver(src.root), host_key, client_key) as (server, ep):
        async with Puller(stranger, dst) as puller:
            with pytest.raises(asyncssh.PermissionDenied):
                await puller.pull(digest, 15, ep)
    assert not dst.has(digest) and leftovers(dst) == []
    assert server.files_opened == 0


async def test_host_key_is_pinned(src: Store, dst: Store, host_key, client_key) -> None:
    digest = put(src, b"payload")
    impostor = public_key_line(asyncssh.generate_private_key("ssh-ed25519"))
    async with serving(store_resolver(src.root), host_key, client_key) as (server, ep):
        wrong = SftpEndpoint(ep.host, ep.port, impostor, fingerprint(impostor))
        async with Puller(client_key, dst) as puller:
            with pytest.raises(HostKeyMismatch, match="does not match the pinned key"):
                await puller.pull(digest, 7, wrong)
            assert not dst.has(digest)
            assert server.files_opened == 0
            # The right key works on the same address: the pin is what failed, nothing else.
            await puller.pull(digest, 7, ep)
            assert dst.has(digest)


async def test_escape_attempts_are_refused(tmp_path: Path, src: Store, host_key, client_key) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.txt"
    secret.write_bytes(b"top secret")
    held = b"a legitimate artefact"
    held_digest = put(src, held)
    held_path = "/" + store_relpath(held_digest)

    # A symlink of store shape, planted inside the store, pointing outside it.
    link_digest = hash_bytes(b"top secret")
    planted = src.path_for(link_digest)
    planted.parent.mkdir(parents=True, exist_ok=True)
    planted.symlink_to(secret)
    # A directory of the layout replaced by a symlink to a directory outside.
    dir_digest = hash_bytes(b"other")
    hexd = dir_digest.split(":")[1]
    fake_dir = outside / "fake" / hexd[2:4]
    fake_dir.mkdir(parents=True)
    (fake_dir / hexd).write_bytes(b"other")
    assert not (src.root / "sha256" / hexd[:2]).exists()
    (src.root / "sha256" / hexd[:2]).symlink_to(outside / "fake")

    async with serving(store_resolver(src.root), host_key, client_key) as (server, ep):
        async with raw_sftp(ep, client_key) as sftp:
            # The legitimate path works, with or without the leading slash.
            for path in (held_path, held_path[1:]):
                async with await sftp.open(path, "rb") as f:
                    assert await f.read() == held
            assert (await sftp.stat(held_path)).size == len(held)

            bad_paths = [
                "../outside/secret.txt", "/../outside/secret.txt", str(secret), "/etc/passwd",
                f"{held_path}/..", "/sha256/../../outside/secret.txt",
                "/" + store_relpath(link_digest),  # the planted symlink
                "/" + store_relpath(dir_digest),  # through the symlinked directory
                held_path.upper(), held_path + "\x00",
            ]
            for path in bad_paths:
                with pytest.raises(asyncssh.SFTPError) as refused:
                    await sftp.open(path, "rb")
                assert isinstance(refused.value, asyncssh.SFTPNoSuchFile | asyncssh.SFTPPermissionDenied), path
                with pytest.raises(asyncssh.SFTPError):
                    await sftp.stat(path)

            for directory in ("/", ".", "sha256", "/sha256/" + held_digest.split(":")[1][:2]):
                with pytest.raises(asyncssh.SFTPPermissionDenied):
                    await sftp.listdir(directory)

            new_path = "/" + store_relpath(hash_bytes(b"new"))
            writes = [
                lambda: sftp.open(held_path, "wb"),
                lambda: sftp.open(held_path, "r+b"),
                lambda: sftp.open(held_path, "ab"),
                lambda: sftp.open(new_path, "wb"),
                lambda: sftp.open(new_path, "xb"),
                lambda: sftp.remove(held_path),
                lambda: sftp.rename(held_path, new_path),
                lambda: sftp.posix_rename(held_path, new_path),
                lambda: sftp.mkdir("/sha256/zz"),
                lambda: sftp.rmdir("/sha256"),
                lambda: sftp.chmod(held_path, 0o666),
                lambda: sftp.setstat(held_path, asyncssh.SFTPAttrs(permissions=0o666)),
                lambda: sftp.symlink(str(secret), new_path),
                lambda: sftp.link(held_path, new_path),
                lambda: sftp.readlink("/" + store_relpath(link_digest)),
                lambda: sftp.statvfs("/"),
            ]
            for attempt in writes:
                with pytest.raises(asyncssh.SFTPError):
                    await attempt()

    # AsyncSSH's own chroot follows a planted symlink out of the root: the reason we do not rely on it.
    chroot_server = await asyncssh.listen(
        "127.0.0.1", 0, server_host_keys=[host_key], authorized_client_keys=None,
        sftp_factory=lambda chan: asyncssh.SFTPServer(chan, chroot=str(src.root).encode()),
        server_factory=_NoAuth)
    try:
        chroot_ep = SftpEndpoint("127.0.0.1", chroot_server.get_port(), public_key_line(host_key))
        async with raw_sftp(chroot_ep, client_key) as sftp:
            async with await sftp.open("/" + store_relpath(link_digest), "rb") as f:
                assert await f.read() == b"top secret"
    finally:
        chroot_server.close()
        await chroot_server.wait_closed()

    # Nothing was changed in the store.
    assert src.path_for(held_digest).read_bytes() == held
    assert not src.path_for(hash_bytes(b"new")).exists()
    assert stat.S_IMODE(src.path_for(held_digest).stat().st_mode) == 0o444
    assert server.refused >= len(bad_paths) + len(writes)


async def test_server_refuses_paths_through_symlinked_directories(tmp_path: Path, dst: Store, host_key,
                                                                  client_key) -> None:
    # Whatever a resolver returns, the opened file must be that exact path: O_NOFOLLOW guards only the last
    # component, so the server checks the descriptor's real name (a directory swapped for a symlink).
    real_dir = tmp_path / "real"
    real_dir.mkdir()
    (real_dir / "f").write_bytes(b"bytes")
    (tmp_path / "via").symlink_to(real_dir)
    digest = hash_bytes(b"bytes")
    async with serving(lambda d: tmp_path / "via" / "f", host_key, client_key) as (_, ep):
        async with Puller(client_key, dst) as puller:
            with pytest.raises(asyncssh.SFTPPermissionDenied):
                await puller.pull(digest, 5, ep)
    canonical = Path(os.path.realpath(real_dir / "f"))
    async with serving(lambda d: canonical, host_key, client_key) as (_, ep):
        async with Puller(client_key, dst) as puller:
            assert (await puller.pull(digest, 5, ep)).read_bytes() == b"bytes"


class _NoAuth(asyncssh.SSHServer):
    def begin_auth(self, username: str) -> bool:
        return False


async def test_no_shell_exec_or_forwarding(src: Store, host_key, client_key) -> None:
    async with serving(store_resolver(src.root), host_key, client_key) as (_, ep):
        async with asyncssh.connect(ep.host, ep.port, config=None, known_hosts=None, client_keys=[client_key],
                                    agent_path=None, username="x") as conn:
            with pytest.raises(asyncssh.Error):
                await conn.run("echo pwned", check=True)
            with pytest.raises(asyncssh.ChannelOpenError):
                await conn.create_connection(asyncssh.SSHTCPSession, "127.0.0.1", ep.port)
            with pytest.raises(asyncssh.ChannelListenError):
                await conn.forward_remote_port("127.0.0.1", 0, "127.0.0.1", 9)


async def test_bad_bytes_are_refused_and_not_stored(tmp_path: Path, dst: Store, host_key, client_key) -> None:
    good = os.urandom(3 * MiB)
    digest = hash_bytes(good)
    liar = tmp_path / "liar"
    liar.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))  # same size, one bit off at the very end
    async with serving(lambda d: liar if d == digest else None, host_key, client_key) as (_, ep):
        async with Puller(client_key, dst) as puller:
            with pytest.raises(DigestMismatch) as mismatch:
                await puller.pull(digest, len(good), ep)
            assert mismatch.value.digest == digest
            assert mismatch.value.endpoint == ep
            assert mismatch.value.got == hash_bytes(liar.read_bytes())
            assert (puller.files_pulled, puller.mismatches) == (0, 1)
            # A short file is caught by its size.
            liar.write_bytes(good[: MiB])
            with pytest.raises(DigestMismatch, match=f"{MiB} bytes"):
                await puller.pull(digest, len(good), ep)
    assert not dst.has(digest)
    assert leftovers(dst) == []


def dead_endpoint(host_key: asyncssh.SSHKey) -> SftpEndpoint:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return SftpEndpoint("127.0.0.1", port, public_key_line(host_key))


async def test_pull_any_falls_back_to_the_next_owner(tmp_path: Path, src: Store, dst: Store, host_key,
                                                     client_key) -> None:
    data = os.urandom(2 * MiB + 7)
    digest = put(src, data)
    liar = tmp_path / "liar"
    liar.write_bytes(os.urandom(len(data)))
    other_key = asyncssh.generate_private_key("ssh-ed25519")
    async with serving(lambda d: liar, other_key, client_key) as (_, bad_ep), \
            serving(store_resolver(src.root), host_key, client_key) as (_, good_ep):
        down = dead_endpoint(host_key)
        async with Puller(client_key, dst) as puller:
            path, used = await puller.pull_any(digest, len(data), [down, bad_ep, good_ep])
            assert used == good_ep
            assert path.read_bytes() == data
            assert (puller.files_pulled, puller.mismatches) == (1, 1)

            other = hash_bytes(b"nobody has this")
            with pytest.raises(PullError) as failed:
                await puller.pull_any(other, 15, [down, bad_ep, good_ep])
            reasons = [type(exc) for _, exc in failed.value.failures]
            assert [ep for ep, _ in failed.value.failures] == [down, bad_ep, good_ep]
            assert issubclass(reasons[0], OSError)
            assert reasons[1] is DigestMismatch
            assert issubclass(reasons[2], asyncssh.SFTPNoSuchFile)
            assert str(good_ep.port) in str(failed.value)
    assert not dst.has(hash_bytes(b"nobody has this")) and leftovers(dst) == []


async def test_connect_timeout_moves_on(src: Store, dst: Store, host_key, client_key) -> None:
    data = b"x" * 1000
    digest = put(src, data)
    # A listener that accepts TCP but never speaks SSH: only the per-attempt timeout gets us past it.
    silent = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    silent_ep = SftpEndpoint("127.0.0.1", silent.sockets[0].getsockname()[1], public_key_line(host_key))
    try:
        async with serving(store_resolver(src.root), host_key, client_key) as (_, ep):
            async with Puller(client_key, dst, connect_timeout=1.0) as puller:
                path, used = await puller.pull_any(digest, len(data), [silent_ep, ep])
                assert used == ep and path.read_bytes() == data
    finally:
        silent.close()


async def test_concurrent_pulls_are_coalesced(src: Store, dst: Store, host_key, client_key) -> None:
    data = os.urandom(4 * MiB)
    digest = put(src, data)
    async with serving(store_resolver(src.root), host_key, client_key) as (server, ep):
        async with Puller(client_key, dst) as puller:
            paths = await asyncio.gather(*(puller.pull(digest, len(data), ep) for _ in range(10)))
            assert set(paths) == {dst.path_for(digest)}
            assert (puller.files_pulled, puller.bytes_pulled) == (1, len(data))
            assert server.files_opened == 1 and server.bytes_served == len(data)


async def test_cached_connection_survives_an_owner_restart(src: Store, dst: Store, host_key, client_key) -> None:
    first, second = put(src, b"first"), put(src, b"second")
    server = ArtefactServer(store_resolver(src.root), host_key, [public_key_line(client_key)])
    _, port = await server.start()
    ep = server.endpoint("127.0.0.1")
    async with Puller(client_key, dst) as puller:
        await puller.pull(first, 5, ep)
        await server.stop()  # closes the connection the puller has cached
        server = ArtefactServer(store_resolver(src.root), host_key, [public_key_line(client_key)])
        await server.start("127.0.0.1", port)
        try:
            assert (await puller.pull(second, 6, ep)).read_bytes() == b"second"
        finally:
            await server.stop()


async def test_fetch_to_writes_outputs_atomically(tmp_path: Path, src: Store, dst: Store, host_key,
                                                  client_key) -> None:
    data = os.urandom(MiB + 3)
    digest = put(src, data)
    workspace = tmp_path / "ws"
    dest = workspace / "out" / "report.pdf"
    liar = tmp_path / "liar"
    liar.write_bytes(os.urandom(len(data)))
    async with serving(lambda d: liar, host_key, client_key) as (_, bad_ep):
        async with serving(store_resolver(src.root), host_key, client_key) as (_, good_ep):
            async with Puller(client_key, dst) as puller:
                # Only a liar: the old output stays whole, no half-written file or temp is left.
                dest.parent.mkdir(parents=True)
                dest.write_bytes(b"old output")
                with pytest.raises(PullError):
                    await puller.fetch_to(digest, len(data), [bad_ep], dest)
                assert dest.read_bytes() == b"old output"
                assert os.listdir(dest.parent) == ["report.pdf"]

                got, used = await puller.fetch_to(digest, len(data), [bad_ep, good_ep], dest)
                assert (got, used) == (dest, good_ep)
                assert dest.read_bytes() == data
                assert stat.S_IMODE(dest.stat().st_mode) == 0o644
                assert os.listdir(dest.parent) == ["report.pdf"]
                assert not dst.has(digest)  # went straight to the workspace

                # Held locally: copied from the store, nothing transferred.
                await puller.pull(digest, len(data), good_ep)
                pulled = puller.files_pulled
                other = workspace / "copy.pdf"
                assert await puller.fetch_to(digest, len(data), [good_ep], other) == (other, None)
                assert other.read_bytes() == data and puller.files_pulled == pulled
                assert stat.S_IMODE(other.stat().st_mode) == 0o644


def test_keys_are_created_once_and_private(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "pod_ed25519"
    key = load_or_create_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    pub = Path(f"{path}.pub").read_text().strip()
    assert pub == public_key_line(key) and pub.startswith("ssh-ed25519 ")
    again = load_or_create_key(path)
    assert public_key_line(again) == pub
    assert fingerprint(again) == fingerprint(pub) == key.get_fingerprint("sha256")
    assert sorted(os.listdir(path.parent)) == ["pod_ed25519", "pod_ed25519.pub"]  # no temp leftovers


def test_server_refuses_bad_authorized_key_lines(host_key) -> None:
    with pytest.raises((ValueError, asyncssh.KeyImportError)):
        ArtefactServer(lambda d: None, host_key, ["not a key"])
