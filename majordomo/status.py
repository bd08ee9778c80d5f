"""`majordomo status`: the federation now — chefs, their load and stores, and the NATS server we reached."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from protocol import subjects
from protocol.messages import ChefInfo, Event

STATS_TIMEOUT_S = 1.0  # bounds the wait for a registered chef that does not answer $SRV.STATS
MAJORDOMO_PING_S = 0.3  # MajorDomos are not registered anywhere, so their ping is waited out
EXIT_OK, EXIT_USAGE, EXIT_INTERRUPTED = 0, 2, 130


@dataclass
class ChefStatus:
    id: str
    host: str
    kinds: list[str]
    tools: dict[str, str]
    slots: int
    running: int  # from the registry heartbeat (at most a heartbeat old)
    store_bytes: int
    owned_bytes: int | None  # from the ownership bucket; None when the federation keeps none
    uptime_s: float
    heartbeat_age_s: float
    sandbox: str
    sftp: str
    protocol: int
    running_steps: list[str] = field(default_factory=list)  # seen running while status looked
    counters: dict[str, Any] = field(default_factory=dict)  # the chef's own counters ($SRV.STATS data)
    requests: int | None = None  # $SRV.STATS of the run endpoint; None when the chef did not answer
    errors: int | None = None
    avg_processing_s: float | None = None


@dataclass
class ServerStatus:
    url: str
    name: str
    version: str
    cluster: str
    jetstream: bool
    known_servers: list[str]


@dataclass
class Status:
    federation: str
    server: ServerStatus
    chefs: list[ChefStatus]
    majordomos: list[dict[str, Any]] = field(default_factory=list)  # $SRV.PING replies
    taken_at: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


class StatusError(Exception):
    """The federation could not be looked at; the message is for the user."""


def _chef_status(info: ChefInfo, now: float, owned: dict[str, int] | None, stats: dict[str, Any] | None,
                 running_steps: list[str]) -> ChefStatus:
    chef = ChefStatus(
        id=info.id, host=info.host, kinds=list(info.kinds), tools=dict(info.tools), slots=info.slots,
        running=info.running, store_bytes=info.store_bytes,
        owned_bytes=None if owned is None else owned.get(info.id, 0),
        uptime_s=max(0.0, now - info.started_at) if info.started_at else 0.0,
        heartbeat_age_s=max(0.0, now - info.heartbeat_at) if info.heartbeat_at else 0.0,
        sandbox=info.sandbox, sftp=f"{info.sftp.host}:{info.sftp.port}", protocol=info.protocol,
        running_steps=running_steps,
    )
    if stats:
        run = next((e for e in stats.get("endpoints") or [] if e.get("name") == "run"), None)
        if run:
            chef.requests = int(run.get("num_requests", 0))
            chef.errors = int(run.get("num_errors", 0))
            chef.avg_processing_s = float(run.get("average_processing_time", 0)) / 1e9  # nanoseconds
            if isinstance(run.get("data"), dict):
                chef.counters = dict(run["data"])
    return chef


async def federation_status(nats_url: str, federation: str = subjects.DEFAULT_FEDERATION) -> Status:
    """Look at a federation once: registry, ownership, micro stats, and what runs while we look."""
    from artefacts.natsutil import NatsUnreachable, connect
    from majordomo.observe import micro_gather, owned_bytes, read_chefs, server_info, subscribe_events

    try:
        nc = await connect(nats_url, "majordomo:status")
    except NatsUnreachable as exc:
        raise StatusError(str(exc)) from None
    try:
        running: dict[str, dict[str, str]] = {}  # chef id -> step key -> step id

        def on_event(event: Event) -> None:
            steps = running.setdefault(event.chef_id or event.source, {})
            key = f"{event.build_id}/{event.step_id}"
            if event.kind == "step.running":
                steps[key] = event.step_id
            elif event.kind in ("step.done", "step.failed"):
                steps.pop(key, None)

        sub = await subscribe_events(nc, federation, on_event, kind="step.*")
        try:
            chefs = await read_chefs(nc, federation)
            owned = await owned_bytes(nc, federation)
        except Exception as exc:  # JetStream off or unreachable mid-way: a sentence, not a traceback
            raise StatusError(f"cannot read the chef registry at {nats_url}: {exc or type(exc).__name__}") from None
        ours = {c.id for c in chefs}

        def is_ours(reply: dict[str, Any]) -> bool:
            meta = reply.get("metadata") or {}
            return meta.get("federation", federation) == federation and meta.get("chef_id") in ours

        stats, majordomos = await asyncio.gather(
            micro_gather(nc, "STATS", subjects.CHEF_SERVICE_NAME, expect=len(chefs), timeout_s=STATS_TIMEOUT_S,
                         keep=is_ours) if chefs else asyncio.sleep(0, result=[]),
            micro_gather(nc, "PING", subjects.MAJORDOMO_SERVICE_NAME, timeout_s=MAJORDOMO_PING_S,
                         keep=lambda r: (r.get("metadata") or {}).get("federation", federation) == federation),
        )
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        by_chef = {(s.get("metadata") or {}).get("chef_id"): s for s in stats}
        now = time.time()
        info = server_info(nc)
        return Status(
            federation=federation,
            server=ServerStatus(url=info.url, name=info.name, version=info.version, cluster=info.cluster,
                                jetstream=info.jetstream, known_servers=info.known_servers),
            chefs=[_chef_status(c, now, owned, by_chef.get(c.id), sorted(running.get(c.id, {}).values()))
                   for c in chefs],
            majordomos=majordomos,
            taken_at=now,
        )
    finally:
        with contextlib.suppress(Exception):
            await nc.close()


# -- rendering ------------------------------------------------------------------------------------

def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def human_duration(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def render_status(status: Status, *, verbose: bool = False) -> str:
    srv = status.server
    details = [f"v{srv.version}" if srv.version else "version unknown"]
    if srv.cluster:
        details.append(f"cluster {srv.cluster}")
    details.append("JetStream" if srv.jetstream else "no JetStream")
    lines = [f"NATS {srv.url}  server {srv.name or '?'} ({', '.join(details)})"]
    others = [u for u in srv.known_servers if u != srv.url]
    if others:
        lines.append(f"  also known: {', '.join(others)}")
    busy = sum(c.running for c in status.chefs)
    slots = sum(c.slots for c in status.chefs)
    lines.append(f"federation {status.federation}: {len(status.chefs)} chef(s), {busy}/{slots} slots busy"
                 + (f", {len(status.majordomos)} MajorDomo(s) answering" if status.majordomos else ""))
    if not status.chefs:
        lines.append("  no chefs registered (start one with `chef --nats URL --kind shell`)")
    for c in status.chefs:
        lines.append("")
        lines.append(f"{c.id}  on {c.host or '?'}  up {human_duration(c.uptime_s)}  kinds {', '.join(c.kinds)}"
                     f"  sandbox {c.sandbox or '?'}  sftp {c.sftp}")
        load = f"  load {c.running}/{c.slots}"
        if c.running_steps:
            load += f"  running: {', '.join(c.running_steps)}"
        lines.append(load)
        store = f"  store {human_bytes(c.store_bytes)}" if c.store_bytes else "  store size not reported"
        if c.owned_bytes is not None:
            store += f", owns {human_bytes(c.owned_bytes)}"
        lines.append(store)
        if c.requests is None:
            lines.append("  stats: no $SRV.STATS answer")
        else:
            k = c.counters
            lines.append(
                f"  steps {k.get('steps_ok', 0)} ok, {k.get('steps_failed', 0)} failed;"
                f" pulled {k.get('files_pulled', 0)} files / {human_bytes(int(k.get('bytes_pulled', 0)))},"
                f" {k.get('files_local', 0)} on this host;"
                f" run requests {c.requests}, errors {c.errors}, avg {c.avg_processing_s or 0:.3f}s")
        if verbose:
            for tool, ident in sorted(c.tools.items()):
                lines.append(f"  tool {tool}: {ident}")
        else:
            lines.append(f"  tools: {', '.join(sorted(c.tools)) or 'none'}")
        if c.heartbeat_age_s > 6:
            lines.append(f"  last heartbeat {human_duration(c.heartbeat_age_s)} ago")
    return "\n".join(lines) + "\n"


# -- command line ---------------------------------------------------------------------------------

def add_parser(subparsers: Any) -> None:
    """Add `status` to the `majordomo` subcommands."""
    p = subparsers.add_parser("status", help="show the federation now: chefs, load, stores, NATS server")
    p.add_argument("--nats", default=None, help="NATS URL of the federation (default: MAJORDOMO_NATS or config)")
    p.add_argument("--federation", default=subjects.DEFAULT_FEDERATION, help="subject prefix (default cp)")
    p.add_argument("--json", action="store_true", help="print the status as one JSON object")
    p.add_argument("-v", "--verbose", action="store_true", help="show every tool's identity")


def default_nats() -> str | None:
    """`--nats` falls back to what `majordomo build` uses (MAJORDOMO_NATS, then the config file)."""
    from majordomo.cli import _config_nats  # imported late: cli imports this module

    return _config_nats()


def run(args: argparse.Namespace) -> int:
    try:
        url = args.nats or default_nats()
    except Exception as exc:  # the config file is unreadable: cli's UserError, one line
        print(f"majordomo: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not url:
        print("majordomo: no federation to look at: pass --nats URL or set MAJORDOMO_NATS", file=sys.stderr)
        return EXIT_USAGE
    try:
        status = asyncio.run(federation_status(url, args.federation))
    except StatusError as exc:
        print(f"majordomo: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("majordomo: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    if args.json:
        print(json.dumps(status.as_json()), flush=True)
    else:
        sys.stdout.write(render_status(status, verbose=args.verbose))
    return EXIT_OK
