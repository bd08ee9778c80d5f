"""The chef registry mirror (majordomo/chef_registry.py) against a real nats-server: it lists what
is registered, follows puts and deletes from their messages, ages out a silent entry as the
bucket's TTL would, and lists again after `relist`."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import nats
import pytest

from artefacts.natsutil import kv_bucket
from majordomo import chef_registry
from majordomo.chef_registry import ChefRegistry
from protocol import subjects
from protocol.messages import ChefInfo, SftpEndpoint, encode

FED = "regtest"


def _info(chef_id: str, slots: int = 1) -> bytes:
    return encode(ChefInfo(id=chef_id, kinds=["shell"], tools={}, sftp=SftpEndpoint("127.0.0.1", 1, "ssh-ed25519 AAAA"),
                           slots=slots))


async def _until(check: Callable[[], Awaitable[bool]]) -> None:
    """Wait for the mirror to have taken a message: each round trip to the server is a flush, so
    the subscription's callback has run once a later flush returns. Bounded."""
    for _ in range(200):
        if await check():
            return
        await asyncio.sleep(0)
    raise AssertionError("the registry never showed the change")


@pytest.fixture
async def registry(nats_url: str):  # type: ignore[no-untyped-def]
    nc = await nats.connect(nats_url)
    kv = await kv_bucket(nc, subjects.chefs_bucket(FED), ttl=subjects.REGISTRY_TTL_S)
    reg = ChefRegistry(nc, FED, kv)
    try:
        yield nc, kv, reg
    finally:
        await reg.close()
        await nc.close()


async def test_lists_then_follows_puts_and_deletes(registry) -> None:  # type: ignore[no-untyped-def]
    nc, kv, reg = registry
    await kv.put("chef-a", _info("chef-a"))
    assert [c.id for c in await reg.chefs()] == ["chef-a"]  # listed at first read

    await kv.put("chef-b", _info("chef-b", slots=3))

    async def has_b() -> bool:
        await nc.flush()
        return {c.id: c.slots for c in await reg.chefs()} == {"chef-a": 1, "chef-b": 3}

    await _until(has_b)

    await kv.delete("chef-a")  # a chef deregistering on its way out

    async def a_gone() -> bool:
        await nc.flush()
        return [c.id for c in await reg.chefs()] == ["chef-b"]

    await _until(a_gone)

    await kv.put("chef-b", _info("chef-b", slots=5))  # a heartbeat with new facts

    async def b_updated() -> bool:
        await nc.flush()
        return [c.slots for c in await reg.chefs()] == [5]

    await _until(b_updated)


async def test_a_silent_chef_ages_out_by_the_local_clock(  # type: ignore[no-untyped-def]
        registry, monkeypatch: pytest.MonkeyPatch) -> None:
    _nc, kv, reg = registry
    now = [1000.0]
    monkeypatch.setattr(chef_registry.time, "monotonic", lambda: now[0])
    await kv.put("chef-a", _info("chef-a"))
    assert [c.id for c in await reg.chefs()] == ["chef-a"]
    now[0] += subjects.REGISTRY_TTL_S - 0.5
    assert [c.id for c in await reg.chefs()] == ["chef-a"]
    now[0] += 1.0  # the bucket has dropped it by now, without a message
    assert await reg.chefs() == []


async def test_relist_reads_the_bucket_again(registry) -> None:  # type: ignore[no-untyped-def]
    nc, kv, reg = registry
    assert await reg.chefs() == []
    await reg.close()  # deaf, as during a failover: the put below is missed
    await kv.put("chef-a", _info("chef-a"))
    await nc.flush()
    assert await reg.chefs() == []  # subscribed again, but the mirror alone cannot know
    reg.relist()
    assert [c.id for c in await reg.chefs()] == ["chef-a"]


async def test_a_listed_entry_is_as_old_as_its_last_heartbeat(  # type: ignore[no-untyped-def]
        registry, monkeypatch: pytest.MonkeyPatch) -> None:
    """A chef that died just before a listing must age out with the bucket's copy, not a TTL later;
    an impossible age (clocks that disagree) counts as fresh."""
    import msgspec

    _nc, kv, reg = registry
    now, wall = [1000.0], [5000.0]
    monkeypatch.setattr(chef_registry.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(chef_registry.time, "time", lambda: wall[0])
    old = msgspec.msgpack.decode(_info("chef-old"), type=ChefInfo)
    skewed = msgspec.msgpack.decode(_info("chef-skewed"), type=ChefInfo)
    await kv.put("chef-old", encode(msgspec.structs.replace(old, heartbeat_at=wall[0] - (subjects.REGISTRY_TTL_S - 1))))
    await kv.put("chef-skewed", encode(msgspec.structs.replace(skewed, heartbeat_at=wall[0] + 30)))
    assert sorted(c.id for c in await reg.chefs()) == ["chef-old", "chef-skewed"]
    now[0] += 1.5
    assert [c.id for c in await reg.chefs()] == ["chef-skewed"]
    assert "chef-skewed" not in reg.heard()  # only listed: leases keep their own start time
