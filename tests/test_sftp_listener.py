"""The artefact server that starts SSH at its first peer: real sockets, real asyncssh, real pulls.

Processes that never speak SFTP (same-host federations) must not pay asyncssh's import; a peer
that does connect must be served as by an eagerly started server."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import majordomo, put, write_project

from artefacts.keys import ensure_key, load_or_create_key
from artefacts.resolver import store_resolver
from artefacts.sftp_client import Puller, PullError
from artefacts.sftp_listener import LazyArtefactServer
from artefacts.store import Store

REPO = Path(__file__).resolve().parent.parent


def _run_fresh(code: str, tmp_path: Path) -> str:
    """Run `code` in a new interpreter (this one has imported asyncssh already); its stdout."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_no_asyncssh_until_a_peer_connects_then_a_real_pull(tmp_path: Path) -> None:
    src = Store(tmp_path / "src")
    data = os.urandom(300_000)
    digest = put(src, data)
    out = _run_fresh(f"""
        import asyncio, sys
        from pathlib import Path
        from artefacts.keys import ensure_key
        from artefacts.resolver import store_resolver
        from artefacts.sftp_client import Puller
        from artefacts.sftp_listener import LazyArtefactServer
        from artefacts.store import Store

        async def main():
            tmp = Path({str(tmp_path)!r})
            # Both keys are made here, as on a fresh clone: without asyncssh too.
            server = LazyArtefactServer(store_resolver(tmp / "src"), tmp / "host", ensure_key(tmp / "host"),
                                        [ensure_key(tmp / "client")])
            await server.start("127.0.0.1", 0)
            ep = server.endpoint("127.0.0.1")
            print("before", "asyncssh" in sys.modules, server.ssh_started)
            async with Puller(tmp / "client", Store(tmp / "dst"), same_host=False) as puller:
                pulled = await puller.pull_via({digest!r}, {len(data)}, ep)
            print("after", "asyncssh" in sys.modules, server.ssh_started, pulled.via, server.files_opened)
            await server.stop()

        asyncio.run(main())
    """, tmp_path)
    assert "before False False" in out
    assert "after True True sftp 1" in out
    assert Store(tmp_path / "dst").path_for(digest).read_bytes() == data


async def test_the_advertised_host_key_is_the_one_served(tmp_path: Path) -> None:
    host, client = load_or_create_key(tmp_path / "host"), load_or_create_key(tmp_path / "client")
    src = Store(tmp_path / "src")
    digest = put(src, b"artefact\n")
    server = LazyArtefactServer(store_resolver(src.root), tmp_path / "host", ensure_key(tmp_path / "host"),
                                [ensure_key(tmp_path / "client")])
    async with server:
        ep = server.endpoint("127.0.0.1")
        assert ep.fingerprint == host.get_fingerprint("sha256")
        async with Puller(client, Store(tmp_path / "dst"), same_host=False) as puller:
            assert (await puller.pull(digest, 9, ep)).read_bytes() == b"artefact\n"


async def test_a_private_key_that_is_not_its_pub_line_is_not_served(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    load_or_create_key(tmp_path / "host")
    line = ensure_key(tmp_path / "host")
    os.unlink(tmp_path / "host")
    load_or_create_key(tmp_path / "host")  # a new private key, and the old .pub back: what peers were told
    (tmp_path / "host.pub").write_text(line + "\n")
    assert ensure_key(tmp_path / "host") == line
    client = load_or_create_key(tmp_path / "client")
    src = Store(tmp_path / "src")
    digest = put(src, b"artefact\n")
    server = LazyArtefactServer(store_resolver(src.root), tmp_path / "host", line, [ensure_key(tmp_path / "client")])
    with caplog.at_level(logging.ERROR, logger="artefacts.sftp_listener"):
        async with server, Puller(client, Store(tmp_path / "dst"), same_host=False, connect_timeout=2) as puller:
            with pytest.raises((PullError, OSError)):  # as from an owner that is gone
                await puller.pull(digest, 9, server.endpoint("127.0.0.1"))
    assert "is not the key of" in caplog.text
    assert not server.ssh_started


def test_a_bad_authorized_key_is_refused_at_once(tmp_path: Path) -> None:
    load_or_create_key(tmp_path / "host")
    with pytest.raises(ValueError, match="authorized key: not an OpenSSH public key line"):
        LazyArtefactServer(store_resolver(tmp_path), tmp_path / "host", ensure_key(tmp_path / "host"),
                           ["ssh-ed25519 not-base64!"])


def test_processes_start_without_asyncssh(tmp_path: Path) -> None:
    out = _run_fresh("""
        import sys
        import chefs.cli, chefs.runtime, majordomo.cli, majordomo.engine, majordomo.federation, majordomo.build_server
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("asyncssh", "artefacts")))
    """, tmp_path)
    assert "asyncssh" not in out
    assert "'artefacts.sftp_server'" not in out  # its classes subclass asyncssh's
    assert "'artefacts.sftp_listener'" in out


def test_a_chef_given_a_bad_authorized_keys_file_says_which_line_and_starts_nothing(tmp_path: Path) -> None:
    keys = tmp_path / "authorized"
    keys.write_text("# pods allowed to pull\n\nssh-ed25519 garbage!\n")
    home = tmp_path / "home"
    done = subprocess.run([sys.executable, "-m", "chefs.cli", "--nats", "nats://127.0.0.1:1", "--id", "c1",
                           "--home", str(home), "--authorized-keys", str(keys), "--kind", "shell"],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 2
    assert done.stderr.strip() == f"chef: {keys}, line 3: not an OpenSSH public key line: 'ssh-ed25519 garbage!'"
    assert not home.exists()


def test_a_bad_extra_authorized_key_fails_the_build_naming_its_line(tmp_path: Path) -> None:
    extra = tmp_path / "authorized"
    extra.write_text("ssh-rsa nope\n")
    project = write_project(tmp_path / "p", """
        [[step]]
        name = "copy"
        inputs = ["a"]
        outputs = ["b"]
        command = "cp a b"
        """, {"a": "x\n"})
    run = majordomo(project, "build", env={"MAJORDOMO_AUTHORIZED_KEYS": str(extra)})
    assert run.code == 2
    assert run.stderr.strip() == (f"majordomo: MAJORDOMO_AUTHORIZED_KEYS ({extra}), line 1: "
                                  "not an OpenSSH public key line: 'ssh-rsa nope'")
    assert not (project / "b").exists()
