"""Chefs expose Prometheus metrics with real counters."""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

import pytest
from conftest import majordomo, start_chef, stop_procs, write_project
from prometheus_client.parser import text_string_to_metric_families


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("same_host", [True, False], ids=["same-host", "sftp"])
def test_chef_metrics_count_steps_bytes_and_store(tmp_path: Path, nats_url: str, same_host: bool,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from artefacts.keys import load_or_create_key

    # The chef and the MajorDomo share this host: the input is copied from the workspace unless the
    # shortcut is off (the chef process inherits the switch), and then it travels over SFTP.
    monkeypatch.setenv("CP_SAME_HOST", "1" if same_host else "0")

    key = tmp_path / "key" / "federation"
    key.parent.mkdir()
    load_or_create_key(key)
    port = _free_port()
    (tmp_path / "chefs").mkdir()
    chef = start_chef(nats_url, tmp_path / "chefs" / "m1", "m1", key, "--metrics-listen", f"127.0.0.1:{port}")
    try:
        project = write_project(tmp_path / "p", """
[[step]]
name = "good"
inputs = ["in.txt"]
outputs = ["out/good.txt"]
command = "cp $< $@"

[[step]]
name = "bad"
inputs = ["in.txt"]
outputs = ["out/bad.txt"]
command = "exit 4"
""", {"in.txt": "x" * 5000})
        run = majordomo(project, "build", "--json", "--nats", nats_url, env={"MAJORDOMO_KEY": str(key)})
        assert run.code == 1
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text = response.read().decode()
    finally:
        stop_procs([chef])
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("computepods_steps_total", (("outcome", "ok"), ("pod", "m1")))] == 1
    assert samples[("computepods_steps_total", (("outcome", "command_failed"), ("pod", "m1")))] == 1
    network, local = (0, 5000) if same_host else (5000, 0)
    assert samples[("computepods_bytes_pulled_total", (("pod", "m1"),))] == network
    assert samples[("computepods_bytes_local_total", (("pod", "m1"),))] == local
    # The output is a copy of the input: one digest, stored once.
    assert samples[("computepods_store_bytes", (("pod", "m1"),))] == 5000
    assert samples[("computepods_step_duration_seconds_count", (("pod", "m1"),))] == 2
