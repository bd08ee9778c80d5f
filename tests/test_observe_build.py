"""While `watch` runs: the MajorDomo's Prometheus metrics and the live dashboard, on request."""

from __future__ import annotations

import signal
import socket
import urllib.request
from pathlib import Path

from conftest import UPPER_JOIN, write_project
from prometheus_client.parser import text_string_to_metric_families
from test_watch import Watcher


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _steps(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {s.labels["outcome"]: s.value for f in text_string_to_metric_families(text)
            for s in f.samples if s.name == "computepods_steps_total"}


def test_watch_serves_metrics_and_dashboard(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p", UPPER_JOIN, {"src/a.txt": "a\n", "src/b.txt": "b\n"})
    port = _free_port()
    w = Watcher(project, "--metrics-listen", f"127.0.0.1:{port}", "--dashboard")
    try:
        first = w.until(lambda ln: ln.startswith("watching for changes"))
        url = next(ln.split(" ", 1)[1] for ln in first if ln.startswith("dashboard: "))
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200 and "<html" in response.read().decode().lower()
        assert _steps(port) == {"run": 3.0}

        (project / "src/a.txt").write_text("again\n")
        w.until(lambda ln: ln.startswith("watching for changes"))
        assert _steps(port) == {"run": 5.0, "cached": 1.0}  # counted across the watch's builds
    finally:
        w.proc.send_signal(signal.SIGINT)
        assert w.proc.wait(30) == 0
