"""Prometheus text exposition (format 0.0.4) without a client library: chefs and the MajorDomo
both render their counters with it, so it lives in the layer both may import."""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

LabelKey = tuple[tuple[str, str], ...]
"""Labels of one series: sorted (name, value) pairs; `labels(outcome="ok")` makes one."""


def labels(**pairs: object) -> LabelKey:
    return tuple(sorted((k, str(v)) for k, v in pairs.items()))


DEFAULT_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

# The metrics the federation exposes, and their help text; other names render with a generic help.
METRICS: dict[str, tuple[str, str]] = {
    "computepods_steps_total": ("counter", "Steps finished, by outcome (ok, failed, cached, ...)."),
    "computepods_step_duration_seconds": ("histogram", "Wall time of steps, pulling inputs included."),
    "computepods_bytes_pulled_total": ("counter", "Artefact bytes pulled from other pods over SFTP."),
    "computepods_bytes_served_total": ("counter", "Artefact bytes served to other pods over SFTP."),
    "computepods_bytes_local_total": ("counter", "Artefact bytes taken from same-host pods' files, no network."),
    "computepods_store_bytes": ("gauge", "Bytes held in this pod's content store."),
    "computepods_lease_losses_total": ("counter", "Times this pod lost a lease it held."),
}


@dataclass
class Histogram:
    """A Prometheus histogram: per-bucket counts (not cumulative), their sum and count."""

    buckets: tuple[float, ...] = DEFAULT_BUCKETS
    counts: list[int] = field(default_factory=list)
    sum: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.buckets = tuple(sorted(self.buckets))
        if not self.counts:
            self.counts = [0] * len(self.buckets)

    def observe(self, value: float) -> None:
        self.sum += value
        self.count += 1
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
                return  # above the last bound it is counted only in +Inf, which is `count`


Number = int | float
Series = Number | Mapping[LabelKey, Number]
HistSeries = Histogram | Mapping[LabelKey, Histogram]

_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def _value(v: float) -> str:
    if isinstance(v, bool):
        return str(int(v))
    if isinstance(v, int):
        return str(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labelset(key: Iterable[tuple[str, str]], extra: tuple[str, str] | None = None) -> str:
    pairs = list(key) + ([extra] if extra else [])
    for name, _ in pairs:
        if not _LABEL_RE.match(name) or name.startswith("__"):
            raise ValueError(f"invalid label name {name!r}")
    if not pairs:
        return ""
    return "{" + ",".join(f'{n}="{_escape_label(v)}"' for n, v in pairs) + "}"


def _header(lines: list[str], name: str, kind: str, help_text: str) -> None:
    if not _NAME_RE.match(name):
        raise ValueError(f"invalid metric name {name!r}")
    lines.append(f"# HELP {name} {help_text.replace(chr(92), chr(92) * 2).replace(chr(10), chr(92) + 'n')}")
    lines.append(f"# TYPE {name} {kind}")


def render_prometheus(counters: Mapping[str, Series], histograms: Mapping[str, HistSeries],
                      help_texts: Mapping[str, str] | None = None) -> str:
    """Metrics in the Prometheus text exposition format (version 0.0.4), no client library needed.

    `counters` maps a metric name to a number or to {labels(...): number}. Its type comes from
    METRICS, else from the name: `*_total` is a counter, anything else a gauge (so store sizes go
    here too). `histograms` maps a name to a Histogram or to {labels(...): Histogram}.
    Serve it as `text/plain; version=0.0.4; charset=utf-8`.
    """
    help_texts = help_texts or {}
    lines: list[str] = []
    for name in sorted(counters):
        series = counters[name]
        kind = METRICS.get(name, ("counter" if name.endswith("_total") else "gauge", ""))[0]
        _header(lines, name, kind, help_texts.get(name) or METRICS.get(name, ("", name))[1] or name)
        items = series.items() if isinstance(series, Mapping) else [((), series)]
        for key, value in sorted(items):
            lines.append(f"{name}{_labelset(key)} {_value(value)}")
    for name in sorted(histograms):
        series = histograms[name]
        _header(lines, name, "histogram", help_texts.get(name) or METRICS.get(name, ("", name))[1] or name)
        hitems = series.items() if isinstance(series, Mapping) else [((), series)]
        for key, hist in sorted(hitems, key=lambda kv: kv[0]):
            if any(n == "le" for n, _ in key):
                raise ValueError(f"{name}: 'le' is reserved in histograms")
            cumulative = 0
            for bound, n in zip(hist.buckets, hist.counts, strict=True):
                cumulative += n
                lines.append(f"{name}_bucket{_labelset(key, ('le', _value(float(bound))))} {cumulative}")
            lines.append(f"{name}_bucket{_labelset(key, ('le', '+Inf'))} {hist.count}")
            lines.append(f"{name}_sum{_labelset(key)} {_value(hist.sum)}")
            lines.append(f"{name}_count{_labelset(key)} {hist.count}")
    return "\n".join(lines) + "\n" if lines else ""


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Renderable(Protocol):
    def render(self) -> str: ...


class MetricsServer:
    """A tiny HTTP/1.0 responder: one page, no framework needed."""

    def __init__(self, metrics: Renderable, refresh: Callable[[], Awaitable[None]] | None = None) -> None:
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
