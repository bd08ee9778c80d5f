"""`majordomo watch`: build, then rebuild on every change, with the federation kept up in between.

Changes come from watchfiles (inotify). A burst of saves is one rebuild: watchfiles yields once
no new change has arrived for `quiet_ms`. inotify can overflow without saying so, so a periodic
rescan (a build that is a cheap no-op when nothing changed) backs it up. Files this tool writes
(final outputs, their temp files, `.majordomo/`) never trigger a rebuild.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from majordomo.engine import Build, BuildError, BuildOptions, BuildReport
from majordomo.recipes import Project
from majordomo.state import State

if TYPE_CHECKING:
    from artefacts.metrics import MetricsServer
    from majordomo.federation import Federation
    from majordomo.metrics import MajordomoMetrics


@dataclass
class WatchOptions:
    build: BuildOptions
    quiet_ms: int = 30  # a change is acted on once no other arrived for this long
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

    state = State(root)
    bopts = options.build
    # One federation for the whole watch, started by the first build that needs it.
    fed = Federation(root, "", bopts.nats_url, bopts.federation,
                     sftp_listen=bopts.sftp_listen, advertise_host=bopts.advertise_host, resident=False)
    stop = stop or asyncio.Event()
    output_filter = OutputFilter(root)
    output_filter.refresh(state.load_produced())
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
    try:
        while not stop.is_set():
            # Already waiting while the build runs, so nothing saved meanwhile is missed.
            waiting = asyncio.ensure_future(anext(changes_stream, None))
            report = await _one_build(load, bopts, state, fed, out, on_step, output_filter, on_event, metrics)
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
        state.close()


async def _one_build(load: Callable[[], Project], options: BuildOptions, state: State, fed: Federation,
                     out: TextIO, on_step: Callable[..., None] | None,
                     output_filter: OutputFilter,
                     on_event: Callable[..., None] | None = None,
                     metrics: MajordomoMetrics | None = None) -> BuildReport | None:
    from majordomo.recipes import RecipeError

    try:
        project = load()
    except RecipeError as exc:  # the user is mid-edit: say so and wait for the next save
        print(f"majordomo: {exc}", file=out, flush=True)
        return None
    produced = await state.run(state.load_produced)
    output_filter.refresh([*produced, *(o for step in project.steps for o in step.outputs)])
    build = Build(project, state, options, on_step=on_step, shared=fed, on_event=on_event, metrics=metrics)
    fed.pod_id = build.pod_id
    try:
        return await build.run()
    except BuildError as exc:
        print(f"majordomo: {exc}", file=out, flush=True)
        return None
