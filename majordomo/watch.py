"""`majordomo watch`: build, then rebuild on every change, with the federation kept up in between.

Changes come from watchfiles (inotify). A burst of saves is one rebuild: watchfiles yields once
no new change has arrived for `quiet_ms`. inotify can overflow without saying so, so a periodic
rescan (a build that is a cheap no-op when nothing changed) backs it up. Files this tool writes
(final outputs, their temp files, `.majordomo/`) never trigger a rebuild.

A rebuild starts from what the last successful one left (majordomo/carryover.py, as the resident
build server's do) and looks only at the files watchfiles named, when they cannot have changed the
project's shape: contents of files the graph knows (others are left alone). The recipe file, a
file added or deleted (a pattern rule or glob may now match differently), a rescan, a failed
build, or another process writing the state database send the rebuild down the full path: recipes
loaded, every source's stat checked. A tool upgraded during a watch is noticed by the next rescan.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from majordomo.carryover import Carryover
from majordomo.engine import Build, BuildError, BuildOptions, BuildReport
from majordomo.recipes import Project
from majordomo.server_memory import ServerMemory

if TYPE_CHECKING:
    from artefacts.metrics import MetricsServer
    from majordomo.federation import Federation
    from majordomo.metrics import MajordomoMetrics


@dataclass
class WatchOptions:
    build: BuildOptions
    # A change is acted on once no other arrived for this long. An editor's save (write, rename,
    # chmod) is over within a millisecond; each ms here is a ms of every rebuild's latency.
    quiet_ms: int = 5
    max_batch_ms: int = 1000  # ... but never later than this after the first
    rescan_s: float = 30.0  # rebuild check even without events (inotify overflows are silent)


class OutputFilter:
    """watchfiles filter: react to the user's files, not to what builds write."""

    def __init__(self, root: Path) -> None:
        self.root = str(root)
        self.state_dir = os.path.join(self.root, ".majordomo")
        self.produced: set[str] = set()

    def refresh(self, paths: Iterable[str]) -> None:
        """Paths (project-relative) a build writes: every declared output, and what we wrote."""
        self.produced = {os.path.join(self.root, p) for p in paths}

    def __call__(self, _change: object, path: str) -> bool:
        if path == self.state_dir or path.startswith(self.state_dir + os.sep):
            return False
        name = os.path.basename(path)
        if name.startswith(".") and name.endswith(".part"):
            return False  # an output being fetched
        if "/.git/" in path or path.endswith("/.git") or name.endswith(("~", ".swp", ".swx")):
            return False
        return path not in self.produced


async def watch(
    root: Path,
    load: Callable[[], Project],
    options: WatchOptions,
    out: TextIO,
    on_report: Callable[[BuildReport], None],
    on_step: Callable[..., None] | None = None,
    stop: asyncio.Event | None = None,
    on_event: Callable[..., None] | None = None,
    metrics: MajordomoMetrics | None = None,
    metrics_server: tuple[MetricsServer | None, tuple[str, int] | None] = (None, None),
) -> None:
    """Run until `stop` is set or the task is cancelled (Ctrl-C); always stops the federation."""
    import watchfiles

    from majordomo.federation import Federation

    memory = ServerMemory()  # the state, and the last successful build's carry-over
    bopts = options.build
    # One federation for the whole watch, started by the first build that needs it.
    fed = Federation(root, "", bopts.nats_url, bopts.federation,
                     sftp_listen=bopts.sftp_listen, advertise_host=bopts.advertise_host, resident=False)
    stop = stop or asyncio.Event()
    output_filter = OutputFilter(root)
    output_filter.refresh(memory.state(root)[0].load_produced())  # before the watcher starts
    waiting: asyncio.Future[set[tuple[object, str]] | None] = asyncio.get_running_loop().create_future()
    # One watcher for the whole session, made before the first build: a save during a build, or
    # between a build and the next wait, is kept for the next wait instead of being lost.
    changes_stream = watchfiles.awatch(
        root, watch_filter=output_filter, step=options.quiet_ms, debounce=options.max_batch_ms,
        rust_timeout=int(options.rescan_s * 1000), yield_on_timeout=True, stop_event=stop,
    )
    server, address = metrics_server
    if server and address:
        await server.start(*address)  # one endpoint for the whole watch, scraped between builds
    changes: set[tuple[object, str]] | None = None  # None: the first build
    try:
        while not stop.is_set():
            # Already waiting while the build runs, so nothing saved meanwhile is missed.
            waiting = asyncio.ensure_future(anext(changes_stream, None))
            report = await _one_build(root, load, bopts, memory, changes, fed, out, on_step, output_filter,
                                      on_event, metrics)
            if report is not None:
                on_report(report)
            print("watching for changes (Ctrl-C stops)", file=out, flush=True)
            changes = await waiting
            if changes is None:
                break
            if changes:  # empty after a rescan timeout: the next build checks everything anyway
                shown = sorted(os.path.relpath(p, root) for _, p in changes)
                print(f"changed: {', '.join(shown[:5])}{' ...' if len(shown) > 5 else ''}", file=out, flush=True)
    finally:
        if not waiting.done():
            waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await waiting
        await changes_stream.aclose()
        await fed.stop()
        if server:
            await server.stop()
        memory.close()


def carried_changes(carry: Carryover | None, changes: set[tuple[object, str]] | None) -> list[str] | None:
    """The project-relative files a rebuild carried over from `carry` must look at, or None when
    these changes may have changed the project's shape (or there is nothing to carry over)."""
    import watchfiles

    if carry is None or not changes:
        return None
    kinds: dict[str, set[object]] = {}
    for kind, path in changes:
        kinds.setdefault(path, set()).add(kind)
    recipe = os.fspath(carry.project.recipe_file)
    changed = []
    for path, seen in kinds.items():
        rel = os.path.relpath(path, carry.root)
        if path == recipe or rel == ".." or rel.startswith("../"):
            return None
        known = bool(carry.readers(rel)) or carry.graph.producer(rel) is not None
        if seen != {watchfiles.Change.modified}:
            # Added or deleted: what a pattern rule or glob matches may differ now. Unless it is a
            # file the graph knows and that is there (an editor that saves by rename).
            if not (known and os.path.isfile(path)):
                return None
        if known:  # new contents of a file no step reads (or a directory's mode) change nothing
            changed.append(rel)
    return changed


async def _one_build(root: Path, load: Callable[[], Project], options: BuildOptions, memory: ServerMemory,
                     changes: set[tuple[object, str]] | None, fed: Federation, out: TextIO,
                     on_step: Callable[..., None] | None, output_filter: OutputFilter,
                     on_event: Callable[..., None] | None = None,
                     metrics: MajordomoMetrics | None = None) -> BuildReport | None:
    from majordomo.recipes import RecipeError

    state, same = await asyncio.to_thread(memory.state, root)
    carry, memory.carry = memory.carry, None  # consumed: only a successful build leaves one
    changed = carried_changes(carry if same else None, changes)
    if changed is None:
        carry = None
        try:
            project = load()
        except RecipeError as exc:  # the user is mid-edit: say so and wait for the next save
            print(f"majordomo: {exc}", file=out, flush=True)
            return None
        produced = await state.run(state.load_produced)
        output_filter.refresh([*produced, *(o for step in project.steps for o in step.outputs)])
    else:
        assert carry is not None
        project = carry.project  # same recipe, same files: same outputs for the filter too
    build = Build(project, state, options, on_step=on_step, shared=fed, on_event=on_event, metrics=metrics,
                  carry=carry, changed=changed, durations=memory.durations)
    fed.pod_id = build.pod_id
    try:
        report = await build.run()
    except BuildError as exc:
        print(f"majordomo: {exc}", file=out, flush=True)
        return None
    if report.ok and memory.still_ours():
        memory.carry = Carryover.of(build, "", carry)
    return report
