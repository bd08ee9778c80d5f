"""Ownership passes on: a chef stopping in order hands what only it holds to a peer, and an owner
caught serving wrong bytes is quarantined for that digest and checks its own copy."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import nats
from conftest import majordomo, write_project

from artefacts.ownership import FederationMaps
from artefacts.store import Store
from protocol import subjects
from protocol.messages import InputRef, Pod, PullRequest, PullResult, VerifyRequest, VerifyResult, decoder, encode

RECIPE = """
[[step]]
name = "make"
inputs = ["in.txt"]
outputs = ["mid/data.txt"]
command = "tr a-z A-Z < $< > $@; echo made >> $@"

[[step]]
name = "use"
inputs = ["mid/data.txt"]
outputs = ["out/final.txt"]
command = "tr A-Z a-z < $< > $@"
"""


async def _intermediate(federation, tmp_path: Path) -> tuple[str, int, str]:
    """Build, then find the intermediate's digest and the one chef that made it."""
    project = write_project(tmp_path / "p", RECIPE, {"in.txt": "hello\n"})
    run = await asyncio.to_thread(majordomo, project, "build", "--json", "--nats", federation.url,
                                  env=federation.env)
    assert run.code == 0, run.stderr
    data = b"HELLO\nmade\n"
    from artefacts.hashing import hash_bytes

    digest = hash_bytes(data)
    nc = await nats.connect(federation.url)
    try:
        owners = await (await FederationMaps(nc).open()).owners(digest)
    finally:
        await nc.close()
    assert owners is not None
    chefs = [o for o in owners.owners if o in federation.ids]
    assert len(chefs) == 1, owners
    return digest, len(data), chefs[0]


async def test_sigterm_hands_sole_artefacts_to_a_peer(tmp_path: Path, federation) -> None:
    digest, _size, maker = await _intermediate(federation, tmp_path)
    peer = next(c for c in federation.ids if c != maker)
    proc = federation.chefs[federation.ids.index(maker)]
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.wait, 60) == 0
    nc = await nats.connect(federation.url)
    try:
        owners = await (await FederationMaps(nc).open()).owners(digest)
    finally:
        await nc.close()
    assert owners is not None and peer in owners.owners and maker not in owners.owners
    assert Store(tmp_path / "chefs" / peer / "store").has(digest)


async def test_owner_serving_wrong_bytes_is_quarantined_and_verifies(tmp_path: Path, federation) -> None:
    digest, size, maker = await _intermediate(federation, tmp_path)
    other = next(c for c in federation.ids if c != maker)
    # The maker's stored copy rots (a disk error, tampering): same size, other bytes.
    path = Store(tmp_path / "chefs" / maker / "store").path_for(digest)
    path.chmod(0o644)
    path.write_bytes(b"x" * size)
    path.chmod(0o444)

    nc = await nats.connect(federation.url)
    try:
        kv = await nc.jetstream().key_value(subjects.chefs_bucket("cp"))
        maker_pod = Pod(id=maker, sftp=decoder(__import__("protocol.messages").messages.ChefInfo).decode(
            (await kv.get(maker)).value).sftp)
        ask = PullRequest(inputs=[InputRef(path="mid/data.txt", digest=digest, size=size, owners=[maker])],
                          pods=[maker_pod])
        reply = await nc.request(subjects.chef_pull("cp", other), encode(ask), timeout=30)
        pulled = decoder(PullResult).decode(reply.data)
        assert digest in pulled.failed  # refused, not stored
        assert not Store(tmp_path / "chefs" / other / "store").has(digest)
        owners = await (await FederationMaps(nc).open()).owners(digest)
        assert owners is not None and maker not in owners.owners  # quarantined for this digest

        reply = await nc.request(subjects.chef_verify("cp", maker), encode(VerifyRequest(digests=[digest])),
                                 timeout=30)
        assert decoder(VerifyResult).decode(reply.data).dropped == [digest]
        assert not Store(tmp_path / "chefs" / maker / "store").has(digest)
    finally:
        await nc.close()
