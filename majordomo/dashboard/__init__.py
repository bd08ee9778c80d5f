"""`majordomo dashboard`: a live web page of the federation, fed by the same events as everything else.

In-process use (`build --dashboard`, `watch`): `server = await serve_dashboard(url)`, then
`server.url`, and `await server.stop()` at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from typing import Any

from majordomo.dashboard.server import DashboardServer, serve_dashboard
from protocol import subjects

DEFAULT_PORT = 8470
EXIT_OK, EXIT_USAGE, EXIT_INTERRUPTED = 0, 2, 130

__all__ = ["DEFAULT_PORT", "DashboardServer", "add_parser", "run", "serve_dashboard"]


def add_parser(subparsers: Any) -> None:
    """Add `dashboard` to the `majordomo` subcommands."""
    p = subparsers.add_parser("dashboard", help="serve a live web page of the federation on 127.0.0.1")
    p.add_argument("--nats", default=None, help="NATS URL of the federation (default: MAJORDOMO_NATS or config)")
    p.add_argument("--federation", default=subjects.DEFAULT_FEDERATION, help="subject prefix (default cp)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help=f"port on 127.0.0.1 (default {DEFAULT_PORT}; 0 picks a free one)")


async def _serve(url: str, federation: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server = await serve_dashboard(url, federation, "127.0.0.1", port)
    try:
        # The first line of stdout is the address, so scripts and tests can wait on it.
        print(f"dashboard: {server.url} (federation {federation} at {url}; Ctrl-C stops it)", flush=True)
        await stop.wait()
    finally:
        await server.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)


def run(args: argparse.Namespace) -> int:
    from artefacts.natsutil import NatsUnreachable
    from majordomo.status import default_nats

    try:
        url = args.nats or default_nats()
    except Exception as exc:  # the config file is unreadable: one line
        print(f"majordomo: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not url:
        print("majordomo: no federation to show: pass --nats URL or set MAJORDOMO_NATS", file=sys.stderr)
        return EXIT_USAGE
    if not 0 <= args.port <= 65535:
        print(f"majordomo: --port must be 0..65535, got {args.port}", file=sys.stderr)
        return EXIT_USAGE
    try:
        asyncio.run(_serve(url, args.federation, args.port))
    except NatsUnreachable as exc:
        print(f"majordomo: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:  # the port is taken, most likely
        print(f"majordomo: cannot serve the dashboard on 127.0.0.1:{args.port}: {exc.strerror or exc}",
              file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return EXIT_OK
