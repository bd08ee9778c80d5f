"""The federation's shared maps in JetStream KV: who owns each digest, and the action cache.

Owners are updated with compare-and-swap (create with revision 0, update with the revision read),
so two pods adding themselves to one digest at the same moment both end up listed: the loser of
the race reads again and retries. A restarted MajorDomo, or a second one on another checkout,
sees the same truth.
"""

from __future__ import annotations

import contextlib
from typing import Any

import msgspec
import nats.js.errors
from nats.aio.client import Client as NATS

from artefacts.natsutil import RETRY_FOR_S, kv_bucket
from artefacts.natsutil import retrying as _retrying
from protocol import subjects
from protocol.messages import OutputRef, Ownership

CAS_TRIES = 16
_own_enc = msgspec.msgpack.Encoder()
_own_dec = msgspec.msgpack.Decoder(Ownership)
_outputs_dec = msgspec.msgpack.Decoder(list[OutputRef])


class FederationMaps:
    def __init__(self, nc: NATS, federation: str = subjects.DEFAULT_FEDERATION) -> None:
        self.nc = nc
        self.federation = federation
        self._owners: Any = None
        self._actions: Any = None

    async def open(self) -> FederationMaps:
        self._owners = await kv_bucket(self.nc, subjects.owners_bucket(self.federation))
        self._actions = await kv_bucket(self.nc, subjects.actions_bucket(self.federation))
        return self

    # -- ownership --------------------------------------------------------------------------------

    async def owners(self, digest: str) -> Ownership | None:
        try:
            entry = await _retrying(lambda: self._owners.get(subjects.kv_key(digest)))
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None
        return _own_dec.decode(entry.value) if entry.value else None

    async def add_owner(self, digest: str, size: int, pod: str, *, retry_for_s: float = RETRY_FOR_S) -> None:
        await _retrying(lambda: self._change(digest, size, lambda owners: owners if pod in owners else [*owners, pod]),
                        for_s=retry_for_s)

    async def remove_owner(self, digest: str, pod: str) -> None:
        await _retrying(lambda: self._change(digest, 0, lambda owners: [o for o in owners if o != pod],
                                             create=False))

    async def _change(self, digest: str, size: int, change: Any, *, create: bool = True) -> None:
        key = subjects.kv_key(digest)
        for _ in range(CAS_TRIES):
            try:
                entry = await self._owners.get(key)
                current = _own_dec.decode(entry.value) if entry.value else Ownership(size=size, owners=[])
                revision = entry.revision
            except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
                if not create:
                    return
                current, revision = Ownership(size=size, owners=[]), 0
            owners = change(list(current.owners))
            if owners == current.owners and revision:
                return
            value = _own_enc.encode(Ownership(size=current.size or size, owners=owners))
            try:
                if revision:
                    await self._owners.update(key, value, last=revision)
                else:
                    await self._owners.create(key, value)
                return
            except nats.js.errors.KeyWrongLastSequenceError:
                continue  # someone else changed it in between: read again
        raise RuntimeError(f"ownership of {digest}: gave up after {CAS_TRIES} concurrent updates")

    # -- shared action cache ----------------------------------------------------------------------

    async def put_action(self, action_key: str, outputs: list[OutputRef], *,
                         retry_for_s: float = RETRY_FOR_S) -> None:
        with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError):
            await _retrying(lambda: self._actions.put(subjects.kv_key(action_key), _own_enc.encode(outputs)),
                            for_s=retry_for_s)

    async def get_action(self, action_key: str) -> list[OutputRef] | None:
        try:
            entry = await _retrying(lambda: self._actions.get(subjects.kv_key(action_key)))
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None
        return _outputs_dec.decode(entry.value) if entry.value else None
