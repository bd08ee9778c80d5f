"""A chef's Prometheus endpoint: GET /metrics on its own port, text exposition format 0.0.4."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from artefacts.metrics import Histogram, LabelKey, labels, render_prometheus

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ChefMetrics:
    """Counters a chef keeps; rendered on demand."""

    def __init__(self, chef_id: str) -> None:
        self.pod = chef_id
        self.steps: dict[LabelKey, int] = {}
        self.durations = Histogram()
        self.bytes_pulled = 0
        self.bytes_served: Callable[[], int] = lambda: 0
        self.store_bytes = 0

    def step_finished(self, outcome: str, duration_s: float) -> None:
        key = labels(outcome=outcome, pod=self.pod)
        self.steps[key] = self.steps.get(key, 0) + 1
        self.durations.observe(duration_s)

    def render(self) -> str:
        pod = labels(pod=self.pod)
        return render_prometheus(
            {
                "computepods_steps_total": dict(self.steps),
                "computepods_bytes_pulled_total": {pod: self.bytes_pulled},
                "computepods_bytes_served_total": {pod: self.bytes_served()},
                "computepods_store_bytes": {pod: self.store_bytes},
                "computepods_lease_losses_total": {pod: 0},  # leases are lost on the MajorDomo's side
            },
            {"computepods_step_duration_seconds": {pod: self.durations}},
        )


class MetricsServer:
    """A tiny HTTP/1.0 responder: one page, no framework needed."""

    def __init__(self, metrics: ChefMetrics, refresh: Callable[[], Awaitable[None]] | None = None) -> None:
        self.metrics = metrics
        self.refresh = refresh  # brings slow gauges (the store's size) up to date before a scrape
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._serve, host, port)
        bound = self._server.sockets[0].getsockname()
        return bound[0], bound[1]

    async def stop(self) -> None:
        if self._server:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)).strip():
                pass  # headers: nothing in them matters here
            parts = request.decode("latin-1").split()
            if len(parts) >= 2 and parts[0] == "GET" and parts[1].split("?")[0] == "/metrics":
                if self.refresh:
                    with contextlib.suppress(OSError):
                        await self.refresh()
                status, body, ctype = "200 OK", self.metrics.render().encode(), CONTENT_TYPE
            else:
                status, body, ctype = "404 Not Found", b"try /metrics\n", "text/plain"
            writer.write(f"HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                         f"Connection: close\r\n\r\n".encode() + body)
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
