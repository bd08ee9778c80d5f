"""The chef: a NATS micro service that pulls inputs by digest, runs steps in task dirs, stores outputs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import nats.micro
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.micro.request import Request

from artefacts.hashing import hash_files
from artefacts.keys import ensure_key
from artefacts.localtake import VIA_COPY, VIA_LINK, VIA_SFTP
from artefacts.mapwrites import FLUSH_S, MapWrites
from artefacts.natsutil import JETSTREAM_READY_S, connect, kv_bucket, kv_keys, when_jetstream_ready
from artefacts.ownership import FederationMaps
from artefacts.resolver import store_resolver
from artefacts.samehost import store_access
from artefacts.sftp_client import DigestMismatch, Puller, PullError
from artefacts.sftp_listener import LazyArtefactServer
from artefacts.store import Store
from artefacts.toolprobe import ToolProbe
from chefs.answers import Answers, AttemptKey, attempt_key
from chefs.cooking import Cook
from chefs.metrics import ChefMetrics, MetricsServer
from chefs.taskdir import remove_leftovers
from protocol import PROTOCOL_VERSION, subjects
from protocol.errors import ErrorCode
from protocol.kinds import KIND_TOOLS
from protocol.messages import (
    ChefInfo,
    Event,
    InputRef,
    Pod,
    PullRequest,
    PullResult,
    SftpEndpoint,
    StepRequest,
    StepResult,
    VerifyRequest,
    VerifyResult,
    decoder,
    encode,
    encode_json,
    headers,
)

log = logging.getLogger("chef")

SERVICE_STOP_S = 2.0  # unsubscribing from a live server takes milliseconds
HEARTBEAT_S = 2.0
SERVICE_VERSION = "0.1.0"
RECOUNT_BEATS = 150  # heartbeats between walks of the store to recount its bytes
PRESTART_JAILS = 4  # at most: each idle jail holds ~5 MB, and a big pod has dozens of slots


@dataclass
class ChefConfig:
    id: str
    nats_url: str
    kinds: list[str]
    home: Path  # tasks/, keys and (by default) store/ live here
    store: Path | None = None
    federation: str = subjects.DEFAULT_FEDERATION
    sftp_listen: tuple[str, int] = ("127.0.0.1", 0)
    advertise_host: str = ""  # address peers use to reach our SFTP server; defaults to the listen host
    slots: int = field(default_factory=lambda: os.cpu_count() or 1)
    client_key: Path | None = None  # the federation key this chef pulls with
    authorized_keys: list[str] = field(default_factory=list)  # public keys allowed to pull from us
    extra_tools: list[str] = field(default_factory=list)
    sandbox: bool = True
    heartbeat_s: float = HEARTBEAT_S
    store_max_bytes: int = 0  # evict least recently used entries above this; 0 keeps everything
    hand_over: bool = True  # on SIGTERM, make sure what only we hold has another owner
    metrics_listen: tuple[str, int] | None = None  # HOST:PORT for GET /metrics
    jetstream_wait_s: float = JETSTREAM_READY_S  # at start, how long JetStream may take to answer


class Chef:
    def __init__(self, config: ChefConfig) -> None:
        self.config = config
        self.store = Store(config.store or config.home / "store")
        self._slots = asyncio.Semaphore(config.slots)
        self._running: dict[str, asyncio.Task[None]] = {}
        self._stopping = asyncio.Event()
        self._deregistered = asyncio.Event()
        self._nc: NATS | None = None
        self._service: nats.micro.service.Service | None = None
        self._sftp: LazyArtefactServer | None = None
        self._puller: Puller | None = None
        self._info: ChefInfo | None = None
        self._kv = None
        self._maps: FederationMaps | None = None
        self._writes: MapWrites | None = None  # ownership adds a NATS failover must not lose
        self._heartbeat: asyncio.Task[None] | None = None
        self._inflight_pulls: dict[str, asyncio.Task[str]] = {}  # digest -> pull, answering how it came
        self._bad_owners: dict[str, set[str]] = {}  # digest -> pods that served wrong bytes
        self.counters: Counter[str] = Counter({"steps_ok": 0, "steps_failed": 0, "files_pulled": 0,
                                               "bytes_pulled": 0, "files_local": 0, "bytes_local": 0})
        self._decode_step = decoder(StepRequest)
        self._answers = Answers()
        self._decode_pull = decoder(PullRequest)
        self.metrics = ChefMetrics(config.id)
        self._metrics_server: MetricsServer | None = None

    # -- life cycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        cfg.home.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self.store.recover)
        # Public lines only: asyncssh is imported when SFTP is first used (artefacts/sftp_listener.py).
        host_key_line = await asyncio.to_thread(ensure_key, cfg.home / "host_key")
        client_key = cfg.client_key or cfg.home / "client_key"
        client_key_line = await asyncio.to_thread(ensure_key, client_key)
        authorized = cfg.authorized_keys or [client_key_line]
        probe = ToolProbe(cfg.home / "tools.json")
        wanted = sorted({t for k in cfg.kinds for t in KIND_TOOLS.get(k, ())} | set(cfg.extra_tools))
        tools = await probe.identities(wanted)
        probe.save()
        self.cook = Cook(self.store, cfg.home / "tasks", tools, sandbox=cfg.sandbox, on_output=self._on_output)
        leftovers = await asyncio.to_thread(remove_leftovers, cfg.home / "tasks")
        if leftovers:
            log.info("chef %s: removed %d task dirs a previous run left", cfg.id, leftovers)
        if cfg.sandbox and not self.cook.sandboxed:
            log.warning("chef %s: bwrap not found: steps run UNSANDBOXED in plain task dirs", cfg.id)

        self._sftp = LazyArtefactServer(store_resolver(self.store.root), cfg.home / "host_key", host_key_line,
                                        authorized)
        host, _port = await self._sftp.start(*cfg.sftp_listen)
        # Same-host pullers may hardlink our entries only if no step of ours can write through a link
        # (bwrap binds inputs read-only); for the same reason an unsandboxed chef copies instead of linking.
        sandboxed = self.cook.sandboxed
        endpoint = self._sftp.endpoint(cfg.advertise_host or host,
                                       local=store_access(self.store.root, linkable=sandboxed))
        self._puller = Puller(client_key, self.store, link=sandboxed)
        self.metrics.bytes_served = lambda: self._sftp.bytes_served if self._sftp else 0
        if cfg.metrics_listen:
            self._metrics_server = MetricsServer(self.metrics, refresh=self._measure_store)
            mhost, mport = await self._metrics_server.start(*cfg.metrics_listen)
            log.info("chef %s: Prometheus metrics on http://%s:%s/metrics", cfg.id, mhost, mport)

        self._nc = await connect(cfg.nats_url, f"chef:{cfg.id}", on_reconnect=self._on_reconnect)
        now = time.time()
        self._info = ChefInfo(
            id=cfg.id, kinds=list(cfg.kinds), tools=tools, sftp=endpoint, slots=cfg.slots,
            host=socket.gethostname(), started_at=now, heartbeat_at=now,
            sandbox="bwrap" if self.cook.sandboxed else "none",
        )
        self._service = await nats.micro.add_service(
            self._nc,
            name=subjects.CHEF_SERVICE_NAME,
            version=SERVICE_VERSION,
            description=f"ComputePods chef {cfg.id} ({', '.join(cfg.kinds)})",
            metadata={
                "chef_id": cfg.id, "kinds": ",".join(cfg.kinds), "federation": cfg.federation,
                "sftp": f"{endpoint.host}:{endpoint.port}", "host_key_fingerprint": endpoint.fingerprint,
                "protocol": str(PROTOCOL_VERSION), "sandbox": self._info.sandbox,
                "slots": str(cfg.slots),
                # metadata values are strings: tool identities travel as one JSON object
                "tools": msgspec.json.encode(tools).decode(),
            },
            stats_handler=lambda _endpoint: dict(self.counters),
        )
        await self._service.add_endpoint(
            name="run", subject=subjects.chef_run(cfg.federation, cfg.id), handler=self._on_run
        )
        await self._service.add_endpoint(
            name="pull", subject=subjects.chef_pull(cfg.federation, cfg.id), handler=self._on_pull
        )
        await self._service.add_endpoint(
            name="verify", subject=subjects.chef_verify(cfg.federation, cfg.id), handler=self._on_verify
        )
        self._cancels = await self._nc.subscribe(subjects.build_cancelled(cfg.federation), cb=self._on_cancelled)
        await when_jetstream_ready(cfg.nats_url, self._join_jetstream, for_s=cfg.jetstream_wait_s)
        self._heartbeat = asyncio.create_task(self._beat())
        self.cook.prestart_jails(min(cfg.slots, PRESTART_JAILS))
        await self._publish("chef.joined", detail={"kinds": cfg.kinds, "sftp": f"{endpoint.host}:{endpoint.port}"})
        log.info("chef %s ready: kinds=%s sftp=%s:%s", cfg.id, cfg.kinds, endpoint.host, endpoint.port)

    async def _join_jetstream(self) -> None:
        """Open the registry and the shared maps, and register. Called again until JetStream answers:
        a cluster that just formed opens buckets once it has a metadata leader, and takes the first
        write only once the registry's stream has elected a leader whose interest reached our node."""
        assert self._nc
        if self._kv is None:
            self._kv = await kv_bucket(self._nc, subjects.chefs_bucket(self.config.federation),
                                       ttl=subjects.REGISTRY_TTL_S)
        if self._maps is None:
            self._maps = await FederationMaps(self._nc, self.config.federation).open()
            self._writes = MapWrites(self._maps)
        await self._register()

    async def _on_reconnect(self) -> None:
        if self._writes:
            self._writes.nudge()

    async def _register(self) -> None:
        assert self._info and self._kv
        info = msgspec.structs.replace(
            self._info, heartbeat_at=time.time(), running=len(self._running),
            store_bytes=self.metrics.store_bytes,
        )
        await self._kv.put(self.config.id, encode(info))

    async def _measure_store(self, recount: bool = False) -> None:
        """The store's size, for heartbeats and metrics: the store's own count of what it added and
        deleted; a walk (in a thread) the first time and when `recount`ing."""
        self.metrics.store_bytes = await asyncio.to_thread(self.store.size_bytes, recount=recount)

    async def _beat(self) -> None:
        beats = 0
        while not self._deregistered.is_set():
            # Every ~5 min, walk the store again: another process sharing it adds entries unseen.
            with contextlib.suppress(OSError):
                await self._measure_store(recount=beats % RECOUNT_BEATS == 0)
            beats += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._deregistered.wait(), self.config.heartbeat_s)
            if self._deregistered.is_set():
                break
            if self.config.store_max_bytes:
                await self._evict()
            try:
                await self._register()
            except Exception as exc:  # NATS briefly away: the next beat tries again
                log.warning("heartbeat failed: %s", exc)
                continue
            if self._writes and self._writes.pending:  # JetStream answers again: replay without waiting
                self._writes.nudge()

    async def run_until_stopped(self) -> None:
        await self._stopping.wait()

    def request_stop(self) -> None:
        self._stopping.set()

    async def stop(self, *, drain_s: float = 30.0, hand_over_s: float = 60.0) -> None:
        """Stop in order: take no new steps, let running ones finish (still heartbeating, so no
        lease lapses), pass on the artefacts only we hold, give up ownership, deregister, close."""
        self._stopping.set()
        if self._service and self._connected():
            # Bounded: it drains each endpoint's subscription, which waits 10 s for a server that
            # is going away at the same moment (the embedded federation stopping as a whole).
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._service.stop(), SERVICE_STOP_S)
        if self._running:
            await asyncio.wait(list(self._running.values()), timeout=drain_s)
        if hasattr(self, "cook"):
            await self.cook.drain()
        if self._writes:  # before the hand-over removes our ownership: a late replay must not add it back
            unwritten = await self._writes.close(FLUSH_S if self._connected() else 0)
            if unwritten:
                log.warning("chef %s: %s", self.config.id, unwritten)
        if self.config.hand_over and self._maps and self._connected():
            try:
                await asyncio.wait_for(self._hand_over(), hand_over_s)
            except Exception as exc:  # best effort: producers rerun for whatever is lost
                log.warning("chef %s: hand-over incomplete: %s", self.config.id, exc)
        self._deregistered.set()
        if self._heartbeat:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        # Goodbyes only to a server that can hear them: with NATS gone (the embedded server stopped
        # with us), each would wait out its timeout, and a stop would take ~10 s instead of at once.
        if self._kv and self._connected():
            with contextlib.suppress(Exception):
                await self._kv.delete(self.config.id)
        if self._connected():
            with contextlib.suppress(Exception):
                await self._publish("chef.left")
        if self._nc:
            with contextlib.suppress(Exception):
                await (self._nc.drain() if self._connected() else self._nc.close())
        if self._puller:
            await self._puller.close()
        if self._sftp:
            await self._sftp.stop()
        if self._metrics_server:
            await self._metrics_server.stop()

    def _connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    # -- requests ---------------------------------------------------------------------------------

    async def _on_run(self, request: Request) -> None:
        # micro awaits handlers one at a time per endpoint; the step runs in its own task so a
        # long LaTeX run never holds up the next request.
        try:
            step = self._decode_step.decode(request.data)
        except msgspec.DecodeError as exc:
            await request.respond_error("400", f"bad step request: {exc}")
            return
        key = attempt_key(step)
        answer = self._answers.begin(key)
        if answer is None:
            self._track(f"run:{step.build_id}:{step.step_id}", self._run_and_reply(step, request, key))
        else:  # asked again (its answer may have been lost in a NATS failover): never cook twice
            self._track(f"repeat:{step.step_id}", self._answer_again(answer, request))

    async def _on_cancelled(self, msg: Msg) -> None:
        """A MajorDomo cancelled its build (Ctrl-C): stop its steps here (their process groups are
        killed) rather than cook results nobody waits for. Nothing of them is recorded."""
        prefix = f"run:{msg.data.decode(errors='replace')}:"
        for label, task in list(self._running.items()):
            if label.startswith(prefix):
                task.cancel()

    def _track(self, label: str, work: Coroutine[Any, Any, None]) -> None:
        """Keep a reference to background work (asyncio only holds weak ones) until it ends."""
        task = asyncio.create_task(work)
        key = f"{label}#{id(task)}"
        self._running[key] = task
        task.add_done_callback(lambda _t: self._running.pop(key, None))

    async def _answer_again(self, answer: asyncio.Future[bytes], request: Request) -> None:
        with contextlib.suppress(Exception):
            await request.respond(await asyncio.shield(answer), headers=headers())

    async def _run_and_reply(self, step: StepRequest, request: Request, key: AttemptKey) -> None:
        answered = asyncio.get_running_loop().create_future()  # the task dir goes once this is done
        try:
            await self._cook_and_reply(step, request, key, answered)
        finally:
            if not answered.done():
                answered.set_result(None)

    async def _cook_and_reply(self, step: StepRequest, request: Request, key: AttemptKey,
                              answered: asyncio.Future[None]) -> None:
        try:
            async with self._slots:
                await self._publish("step.running", step)
                try:
                    result = await self.cook_step(step, tidy_after=answered)
                except Exception as exc:  # a chef bug must still answer, or the MajorDomo waits in vain
                    log.exception("step %s crashed the chef's cooking", step.step_id)
                    result = self._result(step, ErrorCode.INTERNAL, message=f"chef {self.config.id}: {exc!r}")
        except asyncio.CancelledError:  # stopping: no answer, so the MajorDomo re-dispatches it
            self._answers.abandon(key)
            raise
        answer = encode(result)
        self._answers.finish(key, answer)
        self.counters["steps_ok" if result.ok else "steps_failed"] += 1
        self.metrics.step_finished("ok" if result.ok else str(result.code), result.duration_s)
        self.metrics.bytes_pulled = self.counters["bytes_pulled"]
        self.metrics.bytes_local = self.counters["bytes_local"]
        await self._publish("step.done" if result.ok else "step.failed", step, {
            "code": str(result.code), "duration_s": round(result.duration_s, 4),
            "outputs": [o.path for o in result.outputs], "message": result.message,
            "log": result.log[-4000:],  # the tail, for dashboards; `majordomo log` keeps it all
        })
        with contextlib.suppress(Exception):
            await request.respond(answer, headers=headers())

    async def _on_pull(self, request: Request) -> None:
        try:
            pull = self._decode_pull.decode(request.data)
        except msgspec.DecodeError as exc:
            await request.respond_error("400", f"bad pull request: {exc}")
            return

        async def work() -> None:
            failed = await self._pull_inputs(pull.inputs, pull.pods)
            held = [i.digest for i in pull.inputs if i.digest not in failed]
            await request.respond(encode(PullResult(chef_id=self.config.id, held=held, failed=failed)))

        self._track("pull", work())

    async def _evict(self) -> None:
        """Above the high-water mark, drop least recently used entries no task dir links, down to
        80% of it; ownership is released first, so nobody is sent to us for bytes we dropped."""
        high = self.config.store_max_bytes
        victims = await asyncio.to_thread(self.store.eviction_candidates, high, int(high * 0.8), self.cook.in_use())
        for digest, _size in victims:
            if self._writes:
                self._writes.forget_owner(digest, self.config.id)
            if self._maps:
                try:
                    await self._maps.remove_owner(digest, self.config.id)
                except Exception:
                    continue  # could not release it: keep the bytes, try again next time
            await asyncio.to_thread(self.store.delete, digest)
            await self._publish("artefact.released", detail={"digest": digest, "pod": self.config.id})
        if victims:
            log.info("chef %s: evicted %d entries", self.config.id, len(victims))
            await self._publish("artefacts.evicted", detail={"count": len(victims)})

    async def _hand_over(self) -> None:
        """Every artefact only we own goes to a peer chef (it pulls from us), then we stop owning
        anything: a stopped chef serves nothing."""
        assert self._maps and self._kv and self._nc and self._info
        held = await asyncio.to_thread(_stored_digests, self.store)
        peers = [c for c in await _registered_chefs(self._nc, self.config.federation, self._kv)
                 if c.id != self.config.id]
        live = {c.id for c in peers}  # a MajorDomo's pod serves only while its build runs: not counted
        sole: list[tuple[str, int]] = []
        for digest, size in held:
            found = await self._maps.owners(digest)
            if found is None or not (set(found.owners) & live):
                sole.append((digest, size))
        if sole and peers:
            me = Pod(id=self.config.id, sftp=self._info.sftp)
            for n, peer in enumerate(peers):  # each peer takes a share
                share = sole[n::len(peers)]
                if not share:
                    continue
                ask = PullRequest(inputs=[InputRef(path=d, digest=d, size=s, owners=[me.id]) for d, s in share],
                                  pods=[me])
                reply = await self._nc.request(subjects.chef_pull(self.config.federation, peer.id), encode(ask),
                                               timeout=55)
                done = decoder(PullResult).decode(reply.data)
                log.info("chef %s: handed %d artefacts to %s", self.config.id, len(done.held), peer.id)
        elif sole:
            log.warning("chef %s: no peer to take %d artefacts only it holds", self.config.id, len(sole))
        for digest, _size in held:
            with contextlib.suppress(Exception):
                await self._maps.remove_owner(digest, self.config.id)

    async def _on_verify(self, request: Request) -> None:
        try:
            asked = decoder(VerifyRequest).decode(request.data)
        except msgspec.DecodeError as exc:
            await request.respond_error("400", f"bad verify request: {exc}")
            return

        async def work() -> None:
            dropped = await self._verify(asked.digests)
            await request.respond(encode(VerifyResult(chef_id=self.config.id, dropped=dropped)))

        self._track("verify", work())

    async def _verify(self, digests: list[str]) -> list[str]:
        """Re-hash stored copies; a wrong one is quarantined and we stop owning that digest."""
        held = [d for d in dict.fromkeys(digests) if self.store.has(d)]
        if not held:
            return []
        actual = await hash_files([self.store.path_for(d) for d in held])
        dropped = [d for d, got in zip(held, actual, strict=True) if got != d]
        for digest in dropped:
            await asyncio.to_thread(self.store.quarantine, digest)
            log.warning("chef %s: stored copy of %s was corrupt; quarantined", self.config.id, digest)
            if self._writes:
                self._writes.forget_owner(digest, self.config.id)
            if self._maps:
                with contextlib.suppress(Exception):
                    await self._maps.remove_owner(digest, self.config.id)
        return dropped

    # -- cooking ----------------------------------------------------------------------------------

    def _result(self, step: StepRequest, code: ErrorCode, **kw: object) -> StepResult:
        return StepResult(
            step_id=step.step_id, action_key=step.action_key, chef_id=self.config.id, code=code,
            attempt=step.attempt, **kw,  # type: ignore[arg-type]
        )

    async def cook_step(self, step: StepRequest, *, tidy_after: asyncio.Future[None] | None = None) -> StepResult:
        started = time.monotonic()
        if step.kind not in self.config.kinds:
            return self._result(step, ErrorCode.KIND_UNSUPPORTED,
                                message=f"chef {self.config.id} does not cook kind {step.kind!r}")
        missing_tools = [t for t in step.tools if t not in self.cook.tools]
        if missing_tools:
            return self._result(step, ErrorCode.TOOL_MISSING,
                                message=f"chef {self.config.id} lacks tool(s): {', '.join(missing_tools)}")
        pulled: Counter[str] = Counter()
        lacking = [i for i in step.inputs if not self.store.has(i.digest)]
        if lacking:
            await self._publish("step.pulling", step, {"files": len(lacking), "bytes": sum(i.size for i in lacking)})
        failed = await self._pull_inputs(lacking, step.pods, pulled) if lacking else {}
        if failed:
            digest, reason = next(iter(failed.items()))
            path = next(i.path for i in step.inputs if i.digest == digest)
            return self._result(step, ErrorCode.INPUT_UNAVAILABLE, message=f"cannot get input {path}: {reason}",
                                duration_s=time.monotonic() - started, missing=sorted(failed),
                                bad_owners=self._bad_owners_of(step), **pulled)
        outcome = await self.cook.run(step, tidy_after=tidy_after)
        return self._result(
            step, outcome.code, exit_status=outcome.exit_status, outputs=outcome.outputs,
            discovered=outcome.discovered, log=outcome.log, message=outcome.message,
            duration_s=time.monotonic() - started, bad_owners=self._bad_owners_of(step), **pulled,
        )

    def _bad_owners_of(self, step: StepRequest) -> dict[str, list[str]]:
        return {i.digest: sorted(self._bad_owners[i.digest]) for i in step.inputs if i.digest in self._bad_owners}

    async def _pull_inputs(self, inputs: list[InputRef], pods: list[Pod],
                           tally: Counter[str] | None = None) -> dict[str, str]:
        """Pull every input the store lacks, each digest at most once however many steps want it.

        `tally` counts what this call pulled (a pull shared with another step counts for the step
        that started it), for the step's result: `files_pulled`, `bytes_pulled`, `files_local`, ..."""
        endpoints = {p.id: p.sftp for p in pods}
        wanted: dict[str, InputRef] = {}
        for ref in inputs:
            if ref.digest not in wanted and not self.store.has(ref.digest):
                wanted[ref.digest] = ref
        failures: dict[str, str] = {}
        # Those no other step is pulling already: the same-host ones are taken in one batch first.
        fresh = [ref for ref in wanted.values() if ref.digest not in self._inflight_pulls]
        batch = asyncio.ensure_future(self._take_same_host(fresh, endpoints)) if fresh else None
        for ref in fresh:
            task = asyncio.create_task(self._pull_one(ref, endpoints, batch))
            self._inflight_pulls[ref.digest] = task
            task.add_done_callback(lambda _t, d=ref.digest: self._inflight_pulls.pop(d, None))
        mine = {ref.digest for ref in fresh}
        pulls = {digest: self._inflight_pulls[digest] for digest in wanted}

        async def one(ref: InputRef) -> None:
            try:
                via = await asyncio.shield(pulls[ref.digest])  # a step cancelled leaves others' pulls alone
            except PullError as exc:
                failures[ref.digest] = str(exc)
                return
            if ref.digest in mine and tally is not None:
                tally.update(_pull_counts(via, ref.size))

        await asyncio.gather(*(one(ref) for ref in wanted.values()))
        return failures

    async def _take_same_host(self, refs: list[InputRef], endpoints: dict[str, SftpEndpoint]) -> dict[str, str]:
        """digest -> how it came, for the refs a same-host owner could give (one thread, one commit:
        a fresh chef's first compile lacks its source and every header). Never raises: what this
        did not take, `_pull_one` pulls from each owner in turn."""
        assert self._puller
        puller = self._puller
        wanted = []
        for ref in refs:
            local = next((endpoints[o] for o in ref.owners if o in endpoints and o != self.config.id
                          and puller.is_local(endpoints[o])), None)
            if local is not None:
                wanted.append((ref.digest, ref.size, local, ref.path))
        try:
            return {digest: got.via for digest, got in (await puller.take_local_many(wanted)).items()}
        except Exception as exc:  # the disk said no: the owners are asked one by one
            log.info("chef %s: same-host batch pull failed: %s", self.config.id, exc)
            return {}

    async def _pull_one(self, ref: InputRef, endpoints: dict[str, SftpEndpoint],
                        batch: asyncio.Future[dict[str, str]] | None) -> str:
        """Take `ref` from the same-host batch if it got it, else try the owners in order (same-host
        ones first: no network); an owner serving wrong bytes is quarantined for this digest."""
        # shielded: one step cancelled must not cancel the batch other steps' inputs wait for
        via = (await asyncio.shield(batch)).get(ref.digest) if batch is not None else None
        if via is None:
            via = await self._pull_from_owners(ref, endpoints)
        self.counters.update(_pull_counts(via, ref.size))
        # We hold it now: other pods may pull it from us. The map is advisory, so the step does not
        # wait for it: during a NATS failover a KV write can take seconds to time out.
        self._track("own", self._announce_owned(ref))
        return via

    async def _pull_from_owners(self, ref: InputRef, endpoints: dict[str, SftpEndpoint]) -> str:
        assert self._puller
        puller = self._puller
        owners = [(o, endpoints[o]) for o in ref.owners if o in endpoints and o != self.config.id]
        owners.sort(key=lambda owner: not puller.is_local(owner[1]))
        failures: list[tuple[SftpEndpoint, BaseException]] = []
        for pod, endpoint in owners:
            try:
                return (await puller.pull_via(ref.digest, ref.size, endpoint, path=ref.path)).via
            except DigestMismatch as exc:
                failures.append((endpoint, exc))
                self._bad_owners.setdefault(ref.digest, set()).add(pod)
                if self._maps:
                    with contextlib.suppress(Exception):
                        await self._maps.remove_owner(ref.digest, pod)
            except Exception as exc:
                failures.append((endpoint, exc))
        raise PullError(ref.digest, failures)

    async def _announce_owned(self, ref: InputRef) -> None:
        if self._writes:  # kept and replayed if the cluster cannot take it now (a failover)
            waiting = self._writes.pending
            why = await self._writes.write([self._writes.owner(ref.digest, ref.size, self.config.id)])
            if why and not waiting:  # once per outage, not once per artefact
                log.warning("chef %s: JetStream does not take ownership writes now (%s): kept to replay",
                            self.config.id, why)
        await self._publish("artefact.owned", detail={"path": ref.path, "digest": ref.digest, "size": ref.size,
                                                      "pod": self.config.id})

    def _on_output(self, step: StepRequest, text: str) -> None:
        """A running step's output, for watchers (the dashboard streams it)."""
        self._track("log", self._publish("step.log", step, {"text": text[-16384:]}))

    async def _publish(self, kind: str, step: StepRequest | None = None, detail: dict | None = None) -> None:
        if not self._nc or self._nc.is_closed:
            return
        event = Event(
            kind=kind, at=time.time(), source=self.config.id,
            build_id=step.build_id if step else "", step_id=step.step_id if step else "",
            chef_id=self.config.id, detail=detail or {},
        )
        with contextlib.suppress(Exception):
            await self._nc.publish(subjects.events(self.config.federation, kind), encode_json(event))


def _pull_counts(via: str, size: int) -> dict[str, int]:
    """Counters for one pull: network bytes and same-host ones apart; what the store held already, none."""
    if via == VIA_SFTP:
        return {"files_pulled": 1, "bytes_pulled": size}
    if via in (VIA_LINK, VIA_COPY):
        return {"files_local": 1, "bytes_local": size}
    return {}


def _stored_digests(store: Store) -> list[tuple[str, int]]:
    """(digest, size) of every entry in the store."""
    found: list[tuple[str, int]] = []
    for dirpath, _dirs, files in os.walk(store.root / store.algo):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                found.append((f"{store.algo}:{name}", os.lstat(os.path.join(dirpath, name)).st_size))
    return found


async def _registered_chefs(nc: NATS, federation: str, kv: Any) -> list[ChefInfo]:
    chefs: list[ChefInfo] = []
    for key in await kv_keys(nc, subjects.chefs_bucket(federation)):
        with contextlib.suppress(Exception):
            entry = await kv.get(key)
            if entry.value:
                chefs.append(decoder(ChefInfo).decode(entry.value))
    return chefs
