"""One build: decide what is out of date, dispatch it to chefs, record results, fetch final outputs.

The engine walks the step graph in dependency order. A step whose action key has a recorded
result is cached; its output digests feed its dependants' keys, so a rerun step whose outputs
come out identical stops the rebuild there (early cutoff). The federation is started only when
the first step really has to run or an output has to be fetched: a no-op build touches no network.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import posixpath
import shutil
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from artefacts.toolprobe import ToolProbe
from majordomo.actionkey import action_key
from majordomo.carryover import ArtefactFacts, Carryover
from majordomo.graph import BuildGraph, GraphError
from majordomo.noop import stat_tuple
from majordomo.recipes import Project, Step
from majordomo.scan import ScanResult, scan, stat_entry
from majordomo.schedule import Slots, critical_paths, estimate_s
from majordomo.state import KeyDetail, State
from protocol import subjects
from protocol.errors import ErrorCode
from protocol.kinds import step_tools
from protocol.messages import (
    ChefInfo,
    InputRef,
    OutputRef,
    Pod,
    StepRequest,
    StepResult,
    decoder,
    encode,
    headers,
)

if TYPE_CHECKING:  # the federation stack (nats-py; asyncssh once SFTP is used) is imported only when needed
    from nats.aio.client import Client as NATS

    from artefacts.mapwrites import Write
    from artefacts.ownership import FederationMaps
    from artefacts.sftp_client import Puller
    from majordomo.federation import Federation
    from majordomo.leases import Leases
    from majordomo.metrics import MajordomoMetrics

REASK_S = 2.0  # how often a step's answer is asked for again while its chef's lease holds
REASK_AFTER_FAILOVER_S = 1.0  # sooner while the chef is not back on NATS yet
# Cached steps published one by one on NATS, per build; past this, `build.finished` counts them
# (a dashboard does not need 10,000 "cached" lines, and publishing them cost a big no-op 0.1 s).
CACHED_EVENTS_MAX = 100
ABSENT = "absent:"  # digest placeholder of a discovered input that no longer exists: forces a rerun
_decode_result = decoder(StepResult)


class BuildError(Exception):
    """A problem that stops the build before any step runs; the message is for the user."""


@dataclass
class BuildOptions:
    targets: list[str] = field(default_factory=list)
    jobs: int = 0  # 0: as many as the chefs have slots
    nats_url: str | None = None
    federation: str = subjects.DEFAULT_FEDERATION
    keep_going: bool = True
    pod_id: str = ""
    sftp_listen: tuple[str, int] = ("127.0.0.1", 0)
    advertise_host: str = ""
    lease_s: float = 10.0  # a chef unheard-of this long loses its steps to others
    max_attempts: int = 3
    dashboard_port: int | None = None  # serve the live dashboard on 127.0.0.1 while the federation is up


@dataclass
class StepOutcome:
    step: Step
    state: str  # "run", "cached", "failed", "skipped"
    chef: str = ""
    duration_s: float = 0.0
    message: str = ""
    log: str = ""


@dataclass
class BuildReport:
    ok: bool = True
    steps_run: int = 0
    steps_cached: int = 0
    steps_failed: int = 0
    steps_skipped: int = 0
    # Steps this build looked at; the others it knew up to date without visiting them (the resident
    # build server's carry-over: majordomo/carryover.py). They count as cached.
    steps_visited: int = 0
    chefs: dict[str, int] = field(default_factory=dict)
    files_pulled: int = 0  # over SFTP
    bytes_pulled: int = 0
    files_local: int = 0  # from same-host owners' files (hardlinked or copied), no network
    bytes_local: int = 0
    duration_s: float = 0.0
    failures: list[StepOutcome] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)  # stale outputs of recipes that are gone

    def as_json(self) -> dict[str, object]:
        """The stable `--json` summary (documented in docs/cli.md)."""
        return {
            "ok": self.ok, "steps_run": self.steps_run, "steps_cached": self.steps_cached,
            "steps_failed": self.steps_failed, "steps_skipped": self.steps_skipped,
            "steps_visited": self.steps_visited,
            "chefs": [{"id": c, "steps": n} for c, n in sorted(self.chefs.items())],
            "files_pulled": self.files_pulled, "bytes_pulled": self.bytes_pulled,
            "files_local": self.files_local, "bytes_local": self.bytes_local,
            "duration_s": round(self.duration_s, 3),
        }


Listener = Callable[[StepOutcome, int, int], None]
EventListener = Callable[[str, str, str, dict[str, object]], None]


_INLINE_UNITS = 1000  # more units than this: the critical paths are computed in a thread


class Build:
    def __init__(self, project: Project, state: State, options: BuildOptions, on_step: Listener | None = None,
                 shared: Federation | None = None, on_event: EventListener | None = None,
                 metrics: MajordomoMetrics | None = None, carry: Carryover | None = None,
                 changed: list[str] | None = None, durations: dict[str, float] | None = None) -> None:
        """`carry` (the resident build server's memory of the last build, majordomo/carryover.py)
        with `changed` (the files whose stats moved since): visit only what they affect.
        `durations`: step id -> seconds its last run took, kept by the caller across builds (the
        resident build server's, which outlives a wiped state); this build adds to it."""
        self.project = project
        self.root = project.root
        self.state = state
        self.options = options
        self.on_step = on_step or (lambda *_: None)
        # Every event this build publishes, also handed to the caller in-process (live progress),
        # whether or not a federation is up: (kind, step id, chef id, detail).
        self.on_event = on_event
        self.metrics = metrics
        self.build_id = uuid.uuid4().hex[:12]
        self.pod_id = options.pod_id or f"majordomo-{uuid.uuid5(uuid.NAMESPACE_URL, str(self.root)).hex[:8]}"
        self.report = BuildReport()
        self._carry = carry
        self._changed = changed or []
        self._unchanged = 0  # steps a carried-over build knows are up to date without visiting them
        self.visited: list[Step] = []  # the steps this build looked at (a carried-over build: a few)
        # Workspace directories this build wrote in -> their stat right after its last write there:
        # what the no-op stamp may vouch for (a later change by the user must still show).
        self.written_dirs: dict[str, tuple[int, int, int, int, int]] = {}
        self.units: list[list[Step]] = []  # every unit of the selection, visited or not
        self._order: list[Step] | None = None  # those units' steps in order
        facts = carry.facts if carry is not None else ArtefactFacts()
        self.digests = facts.digests  # artefact path -> digest, as known in this build
        self.sizes = facts.sizes
        self.executable = facts.executable  # artefact paths whose executable bit is set
        self.cutoff = facts.cutoff  # path -> normalised digest, where a normaliser applies
        # path -> the workspace file's (size, mtime_ns, ino, ctime_ns) when this build took its digest:
        # the no-op stamp records these, so a file saved during the build is looked at again.
        self.vouched = facts.vouched
        self._latest = facts.latest  # step id -> outputs, producer
        self._fed: Federation | None = None
        self._shared = shared  # a federation that outlives this build (`watch`); not ours to stop
        self._pulled_base = (0, 0, 0, 0)
        self._leases: Leases | None = None
        self._maps: FederationMaps | None = None  # ownership and action cache shared by the federation
        self._fed_lock = asyncio.Lock()
        self._chefs: list[ChefInfo] = []
        self._load: dict[str, int] = {}
        self._placed: dict[str, str] = {}  # step id -> its last placement decision (JSON), kept with its result
        self._jobs: Slots | None = None
        self._durations = durations if durations is not None else {}
        self._priority: dict[str, float] = {}  # step id -> its critical path (majordomo/schedule.py)
        self._probe = ToolProbe(state.dir / "tools.json")
        self._toolchains: dict[tuple[str, str, tuple[str, ...]], dict[str, str] | None] = {}
        self._step_tools: dict[str, tuple[str, ...]] = {}
        self._probing: dict[tuple[str, str, tuple[str, ...]], asyncio.Future[dict[str, str]]] = {}
        self._normalise_memo: dict[str, dict[str, str]] = {}
        # Read from the state as asked for; a carried-over build keeps the last one's (~4 us a digest).
        self._owner_map: dict[str, set[str]] | None = facts.owners
        self._events: list[tuple[str, str, str, dict[str, object]]] = []  # until the federation is up
        self._publishing: set[asyncio.Task[None]] = set()
        self._sharing: set[asyncio.Task[None]] = set()  # writes to the shared maps under way
        self._outbox: deque[tuple[str, bytes]] = deque()  # events waiting for the publisher task
        self._served = facts.served  # digest -> workspace file this pod serves
        self._serving = facts.serving  # the reverse: workspace file -> the digest it serves
        self._regenerating: dict[str, asyncio.Task[None]] = {}
        self._done = 0

    # -- entry point ------------------------------------------------------------------------------

    async def run(self) -> BuildReport:
        started = time.monotonic()
        units = await self.prepare()
        self.visited = [s for unit in units for s in unit]
        self.report.steps_visited = len(self.visited)
        self.total = self.report.steps_visited + self._unchanged
        self._done = self.report.steps_cached = self._unchanged
        if self._carry is None:  # a carried-over graph is the one the last build cleaned up after
            await self._remove_stale_outputs()
        try:
            await self._execute(units)
        except asyncio.CancelledError:
            await self._cancel_on_chefs()
            raise
        finally:
            if self._sharing:
                await asyncio.wait(list(self._sharing))  # they never raise, nor wait for a failover
            self._probe.save()
            self.report.duration_s = time.monotonic() - started
            self._publish("build.finished", detail=self.report.as_json())
            if self._publishing:
                await asyncio.wait(list(self._publishing), timeout=2)
            if self._leases:
                await self._leases.stop()
            if self._fed:
                if self._fed.puller:  # a shared puller counts for several builds: take our share
                    self._count_fetched(self._fed.puller)
                if self._fed is not self._shared:
                    await self._fed.stop()
        self.report.duration_s = time.monotonic() - started
        self.report.ok = self.report.steps_failed == 0 and self.report.steps_skipped == 0
        if self.metrics:
            self.metrics.bytes_pulled += self.report.bytes_pulled
            self.metrics.bytes_local += self.report.bytes_local
        await self.state.run(lambda: self.state.record_build(
            self.build_id, time.time() - self.report.duration_s, self.report.duration_s, self.report.ok,
            self.report.steps_run, self.report.steps_cached, self.report.steps_failed))
        return self.report

    async def prepare(self) -> list[list[Step]]:
        """Select, order and scan: everything a build or an explanation needs before deciding."""
        if self._carry is not None:
            return await self._prepare_from(self._carry)
        try:
            graph = BuildGraph(self.project, self.state.load_steps())
            units = graph.units(graph.select(self.options.targets))
        except GraphError as exc:
            raise BuildError(str(exc)) from None
        self.graph = graph
        self.units = units
        self._order = [s for unit in units for s in unit]
        await self._scan_sources(graph, self._order)
        return units

    async def _prepare_from(self, carry: Carryover) -> list[list[Step]]:
        """The units a change can affect: readers of the sources whose digest (or executable bit)
        changed, producers of final outputs that changed in the workspace, and all downstream."""
        self.graph = carry.graph
        self.units = carry.units
        self._order = None  # the whole order, only if a full stamp is written: O(project)
        sources = [p for p in self._changed if self.graph.producer(p) is None]
        dirty: dict[str, Step] = {}
        if sources:
            before = {p: (self.digests.get(p), p in self.executable) for p in sources}
            entries = await self.state.run(lambda: self.state.stat_entries(sources))
            result = await scan(self.root, sources, entries)
            for path in result.missing:
                declared = [s.id for s in carry.readers(path) if path in s.inputs]
                if declared:
                    raise BuildError(f"missing input file {path} (needed by {', '.join(declared[:3])})")
            await self._absorb(result)
            for path in sources:
                if (self.digests.get(path), path in self.executable) != before[path]:
                    if self.digests.get(path) == ABSENT:
                        self._unserve(self.root / path)
                    for step in carry.readers(path):
                        dirty[step.id] = step
        for path in self._changed:
            producer = self.graph.producer(path)
            if producer is not None:
                dirty[producer.id] = producer  # a final output edited or deleted: fetch it again
        units = carry.units_of(carry.downstream(list(dirty.values())))
        self._unchanged = carry.steps - sum(len(unit) for unit in units)
        return units

    def facts(self) -> ArtefactFacts:
        """What this build knows of every artefact, for a carried-over next build."""
        return ArtefactFacts(self.digests, self.sizes, self.executable, self.cutoff, self.vouched, self._latest,
                             self._served, self._serving, self._owner_map)

    def stamp_inputs(self, steps: list[Step] | None = None) -> tuple[
            list[tuple[str, str, tuple[int, int, int, int] | None]], list[str]]:
        """What the no-op stamp must watch after a successful build of `steps` (default: all), with
        digests and the stats they were taken at: every file the steps read that no step makes,
        every output left in the workspace; and the tools in keys."""
        if steps is None and self._order is None:
            self._order = [s for unit in self.units for s in unit]
        order = self._order if steps is None else steps
        paths = self.graph.sources_of(order)
        paths += [o for s in order for o in s.outputs if self.graph.is_final(o)]
        files = [(p, d if (d := self.digests.get(p, "")).startswith("sha256:") else "", self.vouched.get(p))
                 for p in paths]
        tools = sorted({t for s in order for t in self._tools_of(s)})
        return files, tools

    async def _scan_sources(self, graph: BuildGraph, order: list[Step]) -> None:
        paths = graph.sources_of(order)
        result = await scan(self.root, paths, self.state.load_stat_cache())
        declared_missing = [p for p in result.missing if graph.is_declared_source(p, order)]
        if declared_missing:
            users = graph.users_of(declared_missing[0], order)
            raise BuildError(f"missing input file {declared_missing[0]} (needed by {', '.join(users[:3])})")
        await self._absorb(result)

    async def _absorb(self, result: ScanResult) -> None:
        """Take a scan's digests, and keep its new stat cache entries."""
        if result.updates:
            await self.state.run(lambda: self.state.save_stat_entries(result.updates))
        for rel in result.missing:
            self.digests[rel] = ABSENT
            self.executable.discard(rel)
        self.digests.update(result.digests)
        self.sizes.update(result.sizes)
        self.vouched.update(result.stats)
        for rel, digest in result.digests.items():
            if rel in result.executable:
                self.executable.add(rel)
            else:  # a carried-over build knew this file: a chmod -x counts too
                self.executable.discard(rel)
            self._serve(digest, self.root / rel)

    def _serve(self, digest: str, path: Path) -> None:
        """Our SFTP server serves `digest` from the workspace file `path`, which holds those bytes now."""
        self._unserve(path)
        self._served[digest] = path
        self._serving[path] = digest

    def _unserve(self, path: Path) -> None:
        """`path` no longer holds the bytes it was serving (a carried-over build learnt it changed):
        serve them from another workspace file that still does, or not at all."""
        old = self._serving.pop(path, None)
        if old is None or self._served.get(old) != path:
            return
        del self._served[old]
        other = next((p for p, d in self._serving.items() if d == old), None)
        if other is not None:
            self._served[old] = other

    async def _remove_stale_outputs(self) -> None:
        """Delete workspace files this tool wrote that a clean build would not leave there: outputs
        no recipe makes any more, and outputs that became intermediates (a new step consumes them).

        Only files still holding the bytes we wrote are removed: a file the user changed since
        is kept (and no longer tracked), never lost."""
        produced = self.state.load_produced()
        stale = [p for p in produced if self.graph.producer(p) is None or not self.graph.is_final(p)]
        if not stale:
            return
        current = await scan(self.root, stale, await self.state.run(lambda: self.state.stat_entries(stale)))
        for path in stale:
            if current.digests.get(path) == produced[path][0]:
                await asyncio.to_thread(os.unlink, self.root / path)
                self.report.removed.append(path)
                self._wrote_in(path, ())
            await self.state.run(lambda p=path: self.state.forget_produced(p))
        await self.state.run(lambda: self.state.forget_stat_entries(stale))

    # -- walking the graph ------------------------------------------------------------------------

    async def _execute(self, units: list[list[Step]]) -> None:
        loop = asyncio.get_running_loop()
        futures: dict[str, asyncio.Future[bool]] = {}  # one future per unit, under each member's id
        for unit in units:
            future = loop.create_future()
            for step in unit:
                futures[step.id] = future

        # A dependency without a future is a unit this build need not visit (a carried-over build's
        # unaffected steps): up to date, so settled.
        def settled_ok(deps: list[Step]) -> bool:
            return all(d.id not in futures or (futures[d.id].done() and futures[d.id].result()) for d in deps)

        async def settle(unit: list[Step]) -> None:
            deps = self.graph.unit_deps(unit)
            oks = [await futures[d.id] for d in deps if d.id in futures]
            future = futures[unit[0].id]
            if not all(oks):
                for step in unit:
                    self._finish(StepOutcome(step, "skipped", message="a step it needs failed"))
                future.set_result(False)
                return
            try:
                if self.graph.is_cycle(unit):
                    ok = await self._settle_cycle(unit)
                else:
                    ok = await self._settle_step(unit[0])
            except BuildError:
                raise
            except Exception as exc:  # a fault on our side fails these steps, never silently
                for step in unit:
                    self._finish(StepOutcome(step, "failed", message=f"internal error: {exc!r}"))
                ok = False
            future.set_result(ok)

        # Fast path: plain steps whose dependencies are settled and whose key is cached need no task.
        pending: list[list[Step]] = []
        for unit in units:
            if (not self.graph.is_cycle(unit) and settled_ok(self.graph.unit_deps(unit))
                    and self._try_cached(unit[0])):
                futures[unit[0].id].set_result(True)
                continue
            pending.append(unit)
        if pending:
            if len(pending) > 1:
                pending = await self._by_critical_path(pending)
            try:
                async with asyncio.TaskGroup() as group:
                    for unit in pending:
                        group.create_task(settle(unit))
            except* BuildError as errors:  # the federation could not be reached: stop everything
                raise errors.exceptions[0] from None

    async def _by_critical_path(self, pending: list[list[Step]]) -> list[list[Step]]:
        """Note each pending step's priority for a slot, and return the units longest chain first
        (tasks reach the slots roughly in the order they start). Durations not in memory are read
        from the state for these steps only."""
        unknown = [s.id for unit in pending for s in unit if s.id not in self._durations]
        recorded = await self.state.run(lambda: self.state.step_durations(unknown)) if unknown else {}
        index = {s.id: i for i, unit in enumerate(pending) for s in unit}

        def deps_of(unit: list[Step]) -> list[int]:
            return [index[d.id] for d in self.graph.unit_deps(unit) if d.id in index]

        def cost_of(unit: list[Step]) -> float:
            return sum(estimate_s(self._durations.get(s.id, recorded.get(s.id)),
                                  sum(self.sizes.get(p, 0) for p in s.inputs)) for s in unit)

        if len(pending) > _INLINE_UNITS:
            paths = await asyncio.to_thread(critical_paths, pending, deps_of, cost_of)  # ~15 ms per 10,000
        else:
            paths = critical_paths(pending, deps_of, cost_of)
        self._priority = {s.id: paths[i] for i, unit in enumerate(pending) for s in unit}
        order = sorted(range(len(pending)), key=lambda i: -paths[i])  # stable: ties keep dependency order
        return [pending[i] for i in order]

    async def _settle_cycle(self, unit: list[Step]) -> bool:
        """Run a cycle's steps in passes until no artefact in it changes (its fixpoint).

        Each pass starts from the previous pass's artefacts; the first from the last build's
        (or from nothing). A pass whose steps are all cached changes nothing, which is how an
        up-to-date cycle costs no run. Outputs reach the workspace once, at the fixpoint."""
        produced = [p for step in unit for p in step.outputs]
        for step in unit:
            key = self.graph.last_key(step)
            last = self.state.result(key) if key else None
            if last:
                self._note_outputs([o for o in last if o.path not in self.digests])
        max_passes = max(step.max_passes for step in unit)
        history: dict[str, list[str]] = {p: [self.digests.get(p, ABSENT)] for p in produced}
        for n in range(1, max_passes + 1):
            before = {p: self._cutoff_digest(p) for p in produced}
            for index, step in enumerate(unit):
                if not await self._settle_step(step, materialize=False):
                    for rest in unit[index + 1:]:  # every member is accounted for in the report
                        self._finish(StepOutcome(rest, "skipped", message=f"{step.id} failed in its cycle"))
                    return False
            after = {p: self._cutoff_digest(p) for p in produced}
            for p in produced:
                history[p].append(self.digests.get(p, ABSENT))
            if after == before:
                for step in unit:
                    outputs, chef = self._latest[step.id]
                    if not await self._materialize(step, outputs, chef):
                        self._finish(StepOutcome(step, "failed", message=f"could not fetch the outputs of {step.id}"))
                        return False
                return True
            if n < max_passes:
                self.total += len(unit)
        moving = [p for p in produced if before[p] != after[p]]
        names = " <-> ".join(s.id for s in unit)
        detail = "; ".join(f"{p}: " + " -> ".join(_short(d) for d in history[p][-4:]) for p in moving)
        for step in unit:
            self._finish(StepOutcome(step, "failed", message=(
                f"cycle {names} did not settle in {max_passes} passes; still changing: {detail}")))
        return False

    def _cutoff_digest(self, path: str) -> str:
        return self.cutoff.get(path) or self.digests.get(path, ABSENT)

    def _inputs_of(self, step: Step) -> dict[str, str]:
        recorded = self.graph.discovered(step)
        paths = [*step.inputs, *recorded]
        return {p: self.digests.get(p, ABSENT) for p in paths}

    def _key(self, step: Step, inputs: dict[str, str], toolchain: dict[str, str]) -> str:
        marked = {p: self._marked(p, d) for p, d in inputs.items()}
        return action_key(kind=step.kind, command=step.command, env=step.env, toolchain=toolchain,
                          inputs=marked, outputs=step.outputs, normalise=self._normalisers(step))

    def _marked(self, path: str, digest: str) -> str:
        """The digest as keys see it: the normalised one where a normaliser applies (early cutoff
        on consequential changes only), and the executable bit counts (`./build/test` must run)."""
        digest = self.cutoff.get(path) or digest
        return digest + "+x" if path in self.executable else digest

    def _normalisers(self, step: Step) -> dict[str, str]:
        """Output path -> normaliser spec, from the recipe's output globs."""
        if not step.normalise:
            return {}
        found = self._normalise_memo.get(step.id)
        if found is None:
            from majordomo.recipe_globs import compile_glob

            found = {}
            for glob, spec in step.normalise:
                match = compile_glob(glob).fullmatch
                for out in step.outputs:
                    if out not in found and match(out):
                        found[out] = spec
            self._normalise_memo[step.id] = found
        return found

    def _local_toolchain(self, step: Step) -> dict[str, str] | None:
        """Tool identities without the federation (the embedded chefs run on this machine)."""
        if self.options.nats_url is not None:
            return None
        tools = self._tools_of(step)
        memo = (step.kind, "local", tools)
        if memo not in self._toolchains:
            found: dict[str, str] | None = {}
            for tool in tools:
                ident = self._probe.cached_identity(tool)
                if ident is None:
                    found = None
                    break
                found[tool] = ident
            self._toolchains[memo] = found
        return self._toolchains[memo]

    def _tools_of(self, step: Step) -> tuple[str, ...]:
        """Tools in the step's key; one parse per step, and identities are looked up once per build."""
        tools = self._step_tools.get(step.id)
        if tools is None:
            tools = self._step_tools[step.id] = step_tools(step.kind, step.command, step.tools)
        return tools

    def _try_cached(self, step: Step) -> bool:
        """Synchronous cache check for the no-op fast path; False means 'decide asynchronously'."""
        toolchain = self._local_toolchain(step)
        if toolchain is None:
            return False
        inputs = self._inputs_of(step)
        key = self._key(step, inputs, toolchain)
        outputs = self.state.result(key)
        if outputs is None or not self._materialized(step, outputs):
            return False
        self._accept_cached(step, outputs)
        return True

    async def _settle_step(self, step: Step, *, materialize: bool = True) -> bool:
        toolchain = await self._toolchain(step)
        if toolchain is None:
            self._finish(StepOutcome(step, "failed", message=self._no_chef_message(step)))
            return False
        inputs = self._inputs_of(step)
        key = self._key(step, inputs, toolchain)
        outputs = self.state.result(key)
        if outputs is None and self.options.nats_url is not None:
            outputs = await self._shared_result(step, key)
        if outputs is not None:
            if materialize and not self._materialized(step, outputs) and not await self._materialize(
                    step, outputs, None):
                outputs = None  # no one holds the bytes any more: run it again
            else:
                self._accept_cached(step, outputs)
                return True
        return await self._run_step(step, key, inputs, toolchain, materialize=materialize)

    async def _shared_result(self, step: Step, key: str) -> list[OutputRef] | None:
        """A result another MajorDomo recorded in the federation's action cache, if its bytes are
        still held by a live pod (then this checkout only pulls outputs, runs nothing)."""
        await self._federation()
        if not self._maps:
            return None
        try:
            outputs = await self._maps.get_action(key)
        except Exception:  # the shared cache unreachable: run the step instead
            return None
        if outputs is None:
            return None
        for out in outputs:
            await self._learn_owners(out.digest)
            if not self._live_owners(out.digest):
                return None
        await self.state.run(lambda: self.state.record_result(
            step.id, key, outputs, list(self.graph.discovered(step)), "federation-cache", 0.0, ""))
        self.graph.note_result(step, key)
        return outputs

    def _accept_cached(self, step: Step, outputs: list[OutputRef]) -> None:
        self._note_outputs(outputs)
        self._latest[step.id] = (outputs, None)
        self._finish(StepOutcome(step, "cached"))

    # -- running a step on a chef -----------------------------------------------------------------

    async def _run_step(self, step: Step, key: str, inputs: dict[str, str], toolchain: dict[str, str],
                        attempt: int = 1, *, materialize: bool = True) -> bool:
        """Dispatch the step until a chef answers it, at most max_attempts times.

        An attempt ends without an answer when the chef loses its lease (killed, cut off) or has
        vanished from NATS; its late answer, should one come, is ignored. Only a successful
        answer is ever recorded."""
        fed = await self._federation()
        assert self._jobs
        # The task dir holds every file the step may read; the key only those it did read.
        staged = {**inputs, **{p: self.digests.get(p, ABSENT) for p in step.may_read if p not in inputs}}
        history: list[str] = []
        while True:
            self._publish("step.queued", step, detail={"attempt": attempt})
            async with self._jobs.slot(self._priority.get(step.id, 0.0)):
                await self._ensure_available(step, staged)
                chef = self._place(step, staged, toolchain)
                if chef is None:
                    message = self._no_chef_message(step)
                    if history:
                        message += "; attempts: " + "; ".join(history)
                    self._finish(StepOutcome(step, "failed", message=message))
                    return False
                request = StepRequest(
                    step_id=step.id, action_key=key, kind=step.kind, command=step.command,
                    inputs=self._input_refs(staged, chef.id), outputs=list(step.outputs), pods=self._pods(),
                    env=dict(step.env), tools=list(self._tools_of(step)),
                    depfile=step.depfile, recorder=step.recorder, timeout_s=step.timeout_s,
                    normalise=self._normalisers(step), build_id=self.build_id, attempt=attempt,
                )
                reply, lost = await self._dispatch(fed, chef, step, request)
            if reply is None:
                history.append(f"attempt {attempt} on {chef.id}: {lost}")
                if attempt >= self.options.max_attempts:
                    self._finish(StepOutcome(step, "failed", chef=chef.id, message=(
                        f"gave up after {attempt} attempts: " + "; ".join(history))))
                    return False
                attempt += 1
                continue
            try:
                result = _decode_result.decode(reply)
            except msgspec.DecodeError:
                self._finish(StepOutcome(step, "failed", chef=chef.id, message=f"chef {chef.id}: {reply[:200]!r}"))
                return False
            self.report.files_pulled += result.files_pulled
            self.report.bytes_pulled += result.bytes_pulled
            self.report.files_local += result.files_local
            self.report.bytes_local += result.bytes_local
            for digest, pods in result.bad_owners.items():  # they served wrong bytes: no owners now
                for pod in pods:
                    await self._drop_owner(digest, pod)
                    self._publish("artefact.quarantined", step, pod, {"digest": digest})
                    self._ask_to_verify(fed, pod, digest)
            if result.code == ErrorCode.INPUT_UNAVAILABLE and attempt < self.options.max_attempts:
                # The owners of those bytes could not serve them: forget them, and try again; with
                # no owner left, the producer runs again first (_ensure_available).
                history.append(f"attempt {attempt} on {chef.id}: {result.message}")
                for digest in result.missing:
                    for pod in list(self._owners().get(digest, ())):
                        if not self._pod_claims(pod, digest):
                            await self._drop_owner(digest, pod)
                attempt += 1
                continue
            break
        if not result.ok:
            await self.state.run(lambda: self.state.record_failure(step.id, key, chef.id, result.log,
                                                                   self._placed.get(step.id, "")))
            self._finish(StepOutcome(step, "failed", chef=chef.id, duration_s=result.duration_s,
                                     message=result.message, log=result.log))
            return False
        if history:
            self._publish("step.recovered", step, chef.id, {"history": history})
        return await self._accept_result(step, key, inputs, toolchain, result, materialize)

    async def _dispatch(self, fed: Federation, chef: ChefInfo, step: Step,
                        request: StepRequest) -> tuple[bytes | None, str]:
        """Send the step and wait for the answer or the chef's lost lease, whichever comes first.

        The answer is a core-NATS reply, lost if it is published while our connection fails over
        to another NATS node. So while the chef's lease holds we ask again, at once after a
        reconnect and otherwise every REASK_S: the chef never cooks one attempt twice, it joins
        the repeat to the running step or answers it from the answers it keeps (chefs/answers.py).
        """
        import nats.errors

        assert fed.nc and self._leases
        subject = subjects.chef_run(self.options.federation, chef.id)
        payload = encode(request)
        limit = step.timeout_s + 60
        deadline = time.monotonic() + limit
        self._load[chef.id] = self._load.get(chef.id, 0) + 1
        asking: set[asyncio.Future[Any]] = set()
        lost = self._leases.lost(chef.id).future  # shared by the chef's steps: never cancelled here
        sent, next_ask = 0, 0.0
        try:
            while True:
                now = time.monotonic()
                if now >= deadline:
                    return None, f"no answer within {limit:g}s"
                if now >= next_ask:
                    asking.add(asyncio.ensure_future(fed.nc.request(subject, payload, timeout=deadline - now,
                                                                    headers=headers())))
                    sent, next_ask = sent + 1, now + REASK_S
                came_back = fed.reconnected.future  # shared too
                await asyncio.wait({*asking, lost, came_back}, timeout=min(next_ask, deadline) - now,
                                   return_when=asyncio.FIRST_COMPLETED)
                if came_back.done():
                    next_ask = 0.0  # back from a failover: whatever the chef answered meanwhile is lost
                for done in [a for a in asking if a.done()]:
                    asking.discard(done)
                    try:
                        return done.result().data, ""
                    except nats.errors.NoRespondersError:
                        if sent == 1:
                            self._chef_lost(chef.id, "not on NATS any more")
                            return None, "no responder"
                        # a repeat during a failover, before the chef is back: soon again (its lease decides)
                        next_ask = min(next_ask, time.monotonic() + REASK_AFTER_FAILOVER_S)
                    except (nats.errors.TimeoutError, nats.errors.ConnectionClosedError):
                        pass  # this ask is over; the next one, the lease or the deadline decide
                if lost.done():
                    return None, "lease lost"
        finally:
            self._load[chef.id] -= 1
            for task in asking:
                if not task.done():
                    task.cancel()  # a late answer from a chef whose lease expired is ignored

    def _ask_to_verify(self, fed: Federation, pod: str, digest: str) -> None:
        """Let a chef that served wrong bytes re-hash its copy and drop it if it rotted, so that
        re-running the producer there stores good bytes again (best effort, in the background)."""
        if not fed.nc or all(c.id != pod for c in self._chefs):
            return
        from protocol.messages import VerifyRequest

        request = fed.nc.request(subjects.chef_verify(self.options.federation, pod),
                                 encode(VerifyRequest(digests=[digest])), timeout=30)
        task = asyncio.get_running_loop().create_task(_quiet(request))
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    def _chef_lost(self, chef_id: str, why: str) -> None:
        """A chef without a lease gets no more steps, and owns nothing we can reach."""
        if any(c.id == chef_id for c in self._chefs):
            self._chefs = [c for c in self._chefs if c.id != chef_id]
            self._publish("chef.lease_lost", chef=chef_id, detail={"reason": why})
            if self.metrics:
                self.metrics.lease_losses += 1
        if self._leases:
            self._leases.lost(chef_id).set()

    def _chef_back(self, registration: bytes) -> None:
        """A chef whose heartbeats resumed takes steps again (NATS failover, a healed link)."""
        from protocol.messages import ChefInfo

        try:
            chef = msgspec.msgpack.decode(registration, type=ChefInfo)
        except msgspec.DecodeError:
            return
        if all(c.id != chef.id for c in self._chefs):
            self._chefs.append(chef)
            self._publish("chef.lease_renewed", chef=chef.id)

    async def _accept_result(self, step: Step, key: str, inputs: dict[str, str], toolchain: dict[str, str],
                             result: StepResult, materialize: bool = True) -> bool:
        discovered = self.graph.accept_discovered(step, result.discovered)
        if discovered:
            await self._scan_extra(discovered)
        # Record under the key of what the step actually read, so the next run finds it.
        final_inputs = {p: self.digests.get(p, ABSENT) for p in (*step.inputs, *discovered)}
        final_key = self._key(step, final_inputs, toolchain) if discovered or final_inputs != inputs else key
        detail = KeyDetail(command=step.command, toolchain=toolchain, env=list(step.env),
                           inputs={p: self._marked(p, d) for p, d in final_inputs.items()})
        for out in result.outputs:
            self._owners().setdefault(out.digest, set()).add(result.chef_id)
            self._publish("artefact.owned", step, result.chef_id, {"path": out.path, "digest": out.digest,
                                                                   "size": out.size, "pod": result.chef_id})
        for digest in {r for r in inputs.values() if r != ABSENT}:
            self._owners().setdefault(digest, set()).add(result.chef_id)  # it pulled what it lacked
        if self._maps and self._fed:
            writes = self._fed.map_writes(self._maps)
            # Only under the key of what the step really read: the declared-inputs key alone would
            # let a checkout with other headers (other may_read files) reuse these outputs.
            self._share(step, result.chef_id,
                        [writes.owner(o.digest, o.size, result.chef_id) for o in result.outputs],
                        [writes.action(final_key, list(result.outputs))])
        await self.state.run(lambda: self.state.record_result(
            step.id, final_key, list(result.outputs), list(discovered), result.chef_id, result.duration_s, result.log,
            detail, self._placed.get(step.id, "")))
        self.graph.note_result(step, final_key)
        self._durations[step.id] = result.duration_s
        self._note_outputs(result.outputs)
        self._latest[step.id] = (list(result.outputs), result.chef_id)
        if materialize and not await self._materialize(step, list(result.outputs), result.chef_id):
            self._finish(StepOutcome(step, "failed", chef=result.chef_id,
                                     message=f"could not fetch the outputs of {step.id} from {result.chef_id}"))
            return False
        self.report.chefs[result.chef_id] = self.report.chefs.get(result.chef_id, 0) + 1
        self._finish(StepOutcome(step, "run", chef=result.chef_id, duration_s=result.duration_s, log=result.log))
        return True

    def _note_outputs(self, outputs: list[OutputRef]) -> None:
        for out in outputs:
            self.digests[out.path] = out.digest
            self.sizes[out.path] = out.size
            if out.cutoff:
                self.cutoff[out.path] = out.cutoff
            else:
                self.cutoff.pop(out.path, None)
            if out.executable:
                self.executable.add(out.path)
            else:
                self.executable.discard(out.path)

    async def _scan_extra(self, paths: list[str]) -> None:
        unknown = [p for p in paths if p not in self.digests]
        if not unknown:
            return
        entries = await self.state.run(lambda: self.state.stat_entries(unknown))
        await self._absorb(await scan(self.root, unknown, entries))

    # -- outputs in the workspace -----------------------------------------------------------------

    def _materialized(self, step: Step, outputs: list[OutputRef]) -> bool:
        """Do the outputs this build must leave in the workspace already hold the right bytes?"""
        for out in outputs:
            if not self.graph.is_final(out.path):
                continue
            if not self._workspace_has(out):
                return False
            self._serve(out.digest, self.root / out.path)
        return True

    async def _materialize(self, step: Step, outputs: list[OutputRef], producer: str | None) -> bool:
        """Fetch final outputs into the workspace atomically (temp file + rename)."""
        wanted = [o for o in outputs if self.graph.is_final(o.path) and not self._workspace_has(o)]
        if not wanted:
            return True
        fed = await self._federation()
        assert fed.puller
        for out in wanted:
            dest = self.root / out.path
            created = await asyncio.to_thread(_missing_dirs, self.root, out.path)
            why = await self._fetch(fed, out, producer, dest)
            if why:
                # Before running the step again, look once more: the registry and the federation's
                # ownership map may know an owner our picture of this build has lost.
                self._chefs = await fed.chefs() or self._chefs
                await self._learn_owners(out.digest)
                why = await self._fetch(fed, out, producer, dest)
            if why:
                self._publish("artefact.fetch_failed", step, detail={"path": out.path, "reason": why})
                return False
            if out.executable:
                os.chmod(dest, 0o755)
            st = os.stat(dest)
            self.vouched[out.path] = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
            self._wrote_in(out.path, created)
            await self.state.run(lambda o=out, s=st: self.state.record_produced(
                o.path, o.digest, step.id, stat_entry(s, o.digest)))
            await self._add_owner(out.digest, self.pod_id, out.size, out.path)
            self._serve(out.digest, dest)
        return True

    def _wrote_in(self, path: str, created: tuple[str, ...]) -> None:
        """Note the stats of the directories writing (or removing) `path` changed: its own, and the
        parent of each directory the write `created`."""
        for rel in {posixpath.dirname(path), *(posixpath.dirname(d) for d in created)}:
            with contextlib.suppress(OSError):
                self.written_dirs[rel] = stat_tuple(os.stat(self.root / rel if rel else self.root))

    async def _fetch(self, fed: Federation, out: OutputRef, producer: str | None, dest: Path) -> str:
        """Fetch one output from its owners into the workspace; why it failed, or "" on success."""
        from artefacts.sftp_client import PullFailure

        owners = [producer] if producer else []
        owners += [p for p in self._live_owners(out.digest) if p not in owners and p != self.pod_id]
        endpoints = [c.sftp for o in owners for c in self._chefs if c.id == o]
        if not endpoints:
            return f"no live owner among {sorted(self._owners().get(out.digest, ()))}"
        assert fed.puller
        try:
            await fed.puller.fetch_to(out.digest, out.size, endpoints, dest)
        except PullFailure as exc:
            return str(exc)
        return ""

    def _workspace_has(self, out: OutputRef) -> bool:
        entry = self.state.stat_entries((out.path,)).get(out.path)
        try:
            st = os.stat(self.root / out.path)
        except FileNotFoundError:
            return False
        now = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
        if entry is not None and entry.digest == out.digest and (
                entry.size, entry.mtime_ns, entry.ino, entry.ctime_ns) == now:
            self.vouched[out.path] = now
            return True
        return False

    # -- federation, placement, ownership ---------------------------------------------------------

    async def _federation(self) -> Federation:
        async with self._fed_lock:
            if self._fed is None:
                joining = self._join_resident_early()
                from artefacts.natsutil import NatsUnreachable
                from majordomo.federation import Federation, FederationError

                fed = self._shared or Federation(
                    self.root, self.pod_id, self.options.nats_url, self.options.federation,
                    sftp_listen=self.options.sftp_listen, advertise_host=self.options.advertise_host,
                    joining=joining)
                fed.resolve = self._resolve
                try:
                    if fed.nc is None:
                        await fed.start()
                    self._chefs = await fed.chefs()
                    if not self._chefs:
                        raise FederationError(f"no chefs are registered in federation {self.options.federation!r}")
                except (NatsUnreachable, FederationError) as exc:
                    await fed.stop()  # a shared one too: the next build of a watch starts afresh
                    raise BuildError(str(exc)) from None
                except BaseException:
                    await fed.stop()
                    raise
                self._fed = fed
                from majordomo.leases import Leases

                self._leases = Leases(fed.nc, subjects.chefs_bucket(self.options.federation),
                                      self.options.lease_s, on_lost=self._chef_lost, on_back=self._chef_back)
                await self._leases.start((c.id for c in self._chefs), fed.chefs_heard())
                self._maps = await fed.maps(self.options.federation)
                if fed.puller:
                    self._pulled_base = _fetch_counters(fed.puller)
                if self.options.dashboard_port is not None and fed.dashboard is None:
                    await fed.open_dashboard(self.options.dashboard_port)
                self._publish("build.started", detail={"targets": self.options.targets, "total": self.total,
                                                       "chefs": [c.id for c in self._chefs]})
                for entry in self._events:
                    self._send(fed, entry)
                self._events.clear()
                slots = sum(c.slots for c in self._chefs)
                self._jobs = Slots(self.options.jobs or max(1, slots))
            return self._fed

    def _join_resident_early(self) -> asyncio.Future[str] | None:
        """Start joining (or starting) the project's resident federation in a thread now, before
        importing the federation stack (~55 ms of nats-py and msgspec): a first build's start-up
        of the resident processes then overlaps that import instead of following it."""
        from majordomo.resident import embedded_key, join_or_start, resident_idle_s

        # The Federation made below joins the resident one exactly when this says so (same defaults).
        if self._shared is not None or (idle_s := resident_idle_s(self.options.nats_url)) <= 0:
            return None
        state_dir = self.root / ".majordomo"
        # run_in_executor hands the call to a thread now; `to_thread` would only once the loop
        # runs again, which is after the imports this is meant to overlap.
        return asyncio.get_running_loop().run_in_executor(None, join_or_start, state_dir, embedded_key(state_dir),
                                                          idle_s)

    async def _cancel_on_chefs(self) -> None:
        """Cancelled (Ctrl-C): tell the chefs to stop this build's steps. Resident chefs would
        otherwise cook them to the end for nobody."""
        nc = self._fed.nc if self._fed else None
        if nc is None or not nc.is_connected:
            return
        with contextlib.suppress(Exception):
            await nc.publish(subjects.build_cancelled(self.options.federation), self.build_id.encode())
            await asyncio.wait_for(nc.flush(), 2)

    def _count_fetched(self, puller: Puller) -> None:
        """What our own puller fetched in this build: over SFTP, and copied from same-host chefs."""
        now = _fetch_counters(puller)
        files, sent, local, local_bytes = (n - base for n, base in zip(now, self._pulled_base, strict=True))
        self.report.files_pulled += files
        self.report.bytes_pulled += sent
        self.report.files_local += local
        self.report.bytes_local += local_bytes

    def _resolve(self, digest: str) -> Path | None:
        """What our SFTP server serves: sources and fetched outputs, by digest.

        The server opens with O_NOFOLLOW and checks the opened name, so a source that is a
        symlink (or lives under one) is served by its real path."""
        path = self._served.get(digest)
        return Path(os.path.realpath(path)) if path is not None else None

    async def _toolchain(self, step: Step) -> dict[str, str] | None:
        tools = self._tools_of(step)
        if self.options.nats_url is None:
            memo = (step.kind, "probe", tools)
            if memo in self._toolchains:
                return self._toolchains[memo]
            # Steps start together: the first probes, the others wait for its answer.
            probing = self._probing.get(memo)
            if probing is None:
                probing = self._probing[memo] = asyncio.ensure_future(self._probe.identities(list(tools)))
            found = await asyncio.shield(probing)
            self._toolchains[memo] = found if len(found) == len(tools) else None
            return self._toolchains[memo]
        from majordomo.placement import toolchain_from_chefs

        await self._federation()
        return toolchain_from_chefs(step.kind, tools, self._chefs)

    def _no_chef_message(self, step: Step) -> str:
        tools = step_tools(step.kind, step.command, step.tools)
        if self.options.nats_url is None:
            missing = [t for t in tools if shutil.which(t) is None]
            if missing:
                return f"no chef has tool {', '.join(missing)} needed by {step.id} ({step.origin})"
        return f"no chef can cook {step.id}: kind {step.kind!r} with tools {', '.join(tools)}"

    def _place(self, step: Step, staged: dict[str, str], toolchain: dict[str, str]) -> ChefInfo | None:
        from majordomo.placement import place

        inputs = [(d, self.sizes.get(p, 0)) for p, d in staged.items() if d != ABSENT]
        decision = place(step.kind, toolchain, inputs, self._chefs, self._owners(), self._load)
        chosen = decision.chef.id if decision.chef else ""
        self._publish("step.placed", step, chosen, decision.as_detail())
        self._placed[step.id] = json.dumps({"chef": chosen, **decision.as_detail()})
        return decision.chef

    async def _add_owner(self, digest: str, pod: str, size: int, path: str = "") -> None:
        self._owners().setdefault(digest, set()).add(pod)
        self._publish("artefact.owned", detail={"path": path, "digest": digest, "size": size, "pod": pod})
        await self.state.run(lambda: self.state.add_owner(digest, pod, size))
        if self._maps and self._fed:
            writes = self._fed.map_writes(self._maps)
            self._share(None, pod, [writes.owner(digest, size, pod)])

    def _share(self, step: Step | None, pod: str, *groups: list[Write]) -> None:
        """Write to the federation's shared maps in the background, in order (owners before the
        action-cache entry that names them). Nothing this build does waits for them: its own
        state has the facts, and a step's inputs carry their owners. The build waits for them
        before it ends, so another MajorDomo asking next finds them; what a failover keeps the
        cluster from taking is replayed later (artefacts/mapwrites.py)."""
        assert self._maps and self._fed
        writes = self._fed.map_writes(self._maps)

        async def write() -> None:
            why = await writes.write(*groups)
            if why:  # advisory: the result itself is good
                self._publish("federation.degraded", step, pod, {"error": why})

        task = asyncio.get_running_loop().create_task(write())
        self._sharing.add(task)
        task.add_done_callback(self._sharing.discard)

    async def _drop_owner(self, digest: str, pod: str) -> None:
        self._owners().get(digest, set()).discard(pod)
        self._publish("artefact.released", detail={"digest": digest, "pod": pod})
        await self.state.run(lambda: self.state.drop_owner(digest, pod))
        if self._maps and self._fed:
            # An add of this owner still queued or under way must not land after the removal.
            self._fed.map_writes(self._maps).forget_owner(digest, pod)
            if self._sharing:
                await asyncio.wait(list(self._sharing))
            with contextlib.suppress(Exception):
                await self._maps.remove_owner(digest, pod)

    async def _learn_owners(self, digest: str) -> None:
        """Ask the federation's map who owns a digest we know no live owner of."""
        if self._maps:
            try:
                found = await self._maps.owners(digest)
            except Exception:  # the map unreachable: decide with what we know
                return
            if found:
                self._owners().setdefault(digest, set()).update(found.owners)

    def _owners(self) -> dict[str, set[str]]:
        """The ownership map in memory: each digest's owners read from the state when first asked
        for (a big project's whole table is not read for a few steps), then kept current."""
        if self._owner_map is None:
            self._owner_map = _OwnersFromState(self.state.owners_of)
        return self._owner_map

    def _live_owners(self, digest: str) -> list[str]:
        live = {c.id for c in self._chefs}
        owners = [p for p in sorted(self._owners().get(digest, ())) if p in live]
        if digest in self._served:
            owners.append(self.pod_id)
        return owners

    def _pod_claims(self, pod: str, digest: str) -> bool:
        return pod == self.pod_id and digest in self._served

    def _input_refs(self, inputs: dict[str, str], chef_id: str) -> list[InputRef]:
        refs = []
        for path, digest in sorted(inputs.items()):
            if digest == ABSENT:
                continue  # a discovered input that is gone: the step runs without it
            owners = self._live_owners(digest)
            owners.sort(key=lambda o: o != chef_id)
            refs.append(InputRef(path=path, digest=digest, size=self.sizes.get(path, 0), owners=owners,
                                 executable=path in self.executable))
        return refs

    def _pods(self) -> list[Pod]:
        pods = [Pod(id=c.id, sftp=c.sftp) for c in self._chefs]
        if self._fed and self._fed.pod:
            pods.append(self._fed.pod)
        return pods

    async def _ensure_available(self, step: Step, inputs: dict[str, str]) -> None:
        """An input nobody live holds is made again by its producer before the step is sent."""
        for path, digest in inputs.items():
            if digest == ABSENT or self._live_owners(digest):
                continue
            await self._learn_owners(digest)  # another pod of the federation may hold it
            if self._live_owners(digest):
                continue
            producer = self.graph.producer(path)
            if producer is None:
                continue  # a source: our pod serves it (it is in _served once scanned)
            task = self._regenerating.get(digest)
            if task is None:
                task = asyncio.create_task(self._regenerate(producer))
                self._regenerating[digest] = task
            await task

    async def _regenerate(self, step: Step) -> None:
        toolchain = await self._toolchain(step)
        if toolchain is None:
            return
        inputs = self._inputs_of(step)
        key = self._key(step, inputs, toolchain)
        assert self._jobs
        self._jobs.release()  # the waiting consumer holds a slot; let the producer use one
        try:
            await self._run_step(step, key, inputs, toolchain)
        finally:
            await self._jobs.acquire(self._priority.get(step.id, 0.0))

    # -- progress ---------------------------------------------------------------------------------

    def _finish(self, outcome: StepOutcome) -> None:
        self._done += 1
        r = self.report
        if outcome.state == "run":
            r.steps_run += 1
        elif outcome.state == "cached":
            r.steps_cached += 1
        elif outcome.state == "failed":
            r.steps_failed += 1
            r.failures.append(outcome)
        else:
            r.steps_skipped += 1
        self.on_step(outcome, self._done, self.total)
        if self.metrics:
            self.metrics.step(outcome.state, outcome.duration_s)
        if outcome.state == "cached":
            if r.steps_cached <= CACHED_EVENTS_MAX:
                self._publish("step.cached", outcome.step)
            elif self.on_event is not None:  # the live progress still sees every one
                self.on_event("step.cached", outcome.step.id, "", {})
        elif outcome.state == "skipped":
            self._publish("step.skipped", outcome.step, detail={"message": outcome.message})
        elif outcome.state == "failed" and not outcome.chef:  # chefs publish the failures they see
            self._publish("step.failed", outcome.step, detail={"message": outcome.message})

    # -- events -----------------------------------------------------------------------------------

    def _publish(self, kind: str, step: Step | None = None, chef: str = "",
                 detail: dict[str, object] | None = None) -> None:
        """Publish an event on `<fed>.events.<kind>`; before the federation is up, keep it for later
        (a no-op build never connects, and its buffered events are simply dropped)."""
        entry = (kind, step.id if step else "", chef, detail or {})
        if self.on_event is not None:
            self.on_event(*entry)
        fed = self._fed
        if fed is None or fed.nc is None:
            self._events.append(entry)
            return
        self._send(fed, entry)

    def _send(self, fed: Federation, entry: tuple[str, str, str, dict[str, object]]) -> None:
        from protocol.messages import Event, encode_json

        kind, step_id, chef, detail = entry
        event = Event(kind=kind, at=time.time(), source=f"majordomo:{self.pod_id}", build_id=self.build_id,
                      step_id=step_id, chef_id=chef, detail=detail)
        self._outbox.append((subjects.events(self.options.federation, kind), encode_json(event)))
        if len(self._outbox) == 1:  # no publisher running: start one (a task per event costs more than the event)
            assert fed.nc
            task = asyncio.get_running_loop().create_task(self._drain_outbox(fed.nc))
            self._publishing.add(task)  # asyncio keeps only weak references to tasks
            task.add_done_callback(self._publishing.discard)

    async def _drain_outbox(self, nc: NATS) -> None:
        """Publish queued events in order; best effort: a failed publish never fails the build."""
        while self._outbox:
            subject, payload = self._outbox[0]
            with contextlib.suppress(Exception):
                await nc.publish(subject, payload)
            self._outbox.popleft()


class _OwnersFromState(dict[str, set[str]]):
    """A digest -> owners dict that fills each entry from the state on first access."""

    def __init__(self, read: Callable[[str], set[str]]) -> None:
        super().__init__()
        self._read = read
        self._asked: set[str] = set()

    def _fill(self, digest: str) -> None:
        if digest not in self._asked:
            self._asked.add(digest)
            if found := self._read(digest):
                super().setdefault(digest, set()).update(found)

    def get(self, digest: str, default=None):  # type: ignore[no-untyped-def, override]
        self._fill(digest)
        return super().get(digest, default)

    def setdefault(self, digest: str, default: set[str]) -> set[str]:  # type: ignore[override]
        self._fill(digest)
        return super().setdefault(digest, default)

    def __getitem__(self, digest: str) -> set[str]:
        self._fill(digest)
        return super().__getitem__(digest)

    def __contains__(self, digest: object) -> bool:
        if isinstance(digest, str):
            self._fill(digest)
        return super().__contains__(digest)


def _short(digest: str) -> str:
    return "absent" if digest == ABSENT else digest.split(":", 1)[-1][:12]


async def _quiet(publishing: Awaitable[None]) -> None:
    """Events are best effort: a publish that fails must never fail the build."""
    with contextlib.suppress(Exception):
        await publishing


def _fetch_counters(puller: Puller) -> tuple[int, int, int, int]:
    """A puller's (files, bytes) over SFTP and (files, bytes) copied on this host, to take differences of."""
    return (puller.files_pulled, puller.bytes_pulled, puller.files_linked + puller.files_copied,
            puller.bytes_linked + puller.bytes_copied)


def _missing_dirs(root: Path, path: str) -> tuple[str, ...]:
    """The directories above `path` that do not exist yet (a fetch will create them)."""
    missing = []
    rel = posixpath.dirname(path)
    while rel and not (root / rel).is_dir():
        missing.append(rel)
        rel = posixpath.dirname(rel)
    return tuple(missing)
