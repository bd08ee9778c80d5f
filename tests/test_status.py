"""`majordomo status` against a real federation, and the Prometheus text `render_prometheus` writes."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import msgspec
import nats
import pytest
from conftest import ONE_STEP, REPO, majordomo, write_project

from majordomo.observe import Histogram, labels, read_chefs, render_prometheus
from majordomo.status import ChefStatus, ServerStatus, Status, federation_status, render_status
from protocol import subjects
from protocol.messages import ChefInfo, Ownership, SftpEndpoint, encode


def status_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "majordomo.cli", "status", *args],
                          capture_output=True, text=True, cwd=REPO, timeout=60)


async def test_status_shows_chefs_counters_and_server(tmp_path: Path, federation) -> None:
    project = write_project(tmp_path / "p", ONE_STEP, {"a.txt": "x\n"})
    run = majordomo(project, "build", "--json", "--nats", federation.url, env=federation.env)
    assert run.code == 0, run.stderr
    cooked_by = run.summary["chefs"][0]["id"]

    status = await federation_status(federation.url)
    assert [c.id for c in status.chefs] == sorted(federation.ids)
    assert status.server.url == federation.url and status.server.version and status.server.jetstream
    assert status.server.name == "majordomo-embedded"
    for chef in status.chefs:
        assert set(chef.kinds) == {"shell", "cc"} and chef.slots == 1 and "sh" in chef.tools
        assert chef.uptime_s >= 0 and chef.requests is not None  # every chef answered $SRV.STATS
        assert chef.running == 0 and chef.errors == 0
    by_id = {c.id: c for c in status.chefs}
    assert by_id[cooked_by].counters["steps_ok"] == 1 and by_id[cooked_by].requests == 1

    text = render_status(status)
    assert f"NATS {federation.url}" in text and "JetStream" in text
    assert "federation cp: 2 chef(s), 0/2 slots busy" in text
    assert all(f"{c}  on " in text for c in federation.ids)
    assert "steps 1 ok, 0 failed" in text

    cli = status_cli("--nats", federation.url, "--json")
    assert cli.returncode == 0, cli.stderr
    as_json = json.loads(cli.stdout)
    assert sorted(c["id"] for c in as_json["chefs"]) == sorted(federation.ids)


async def test_status_of_another_federation_sees_none_and_creates_nothing(nats_url: str) -> None:
    status = await federation_status(nats_url, "elsewhere")
    assert status.chefs == [] and status.federation == "elsewhere"
    assert "no chefs registered" in render_status(status)
    nc = await nats.connect(nats_url)
    try:
        names = [s.config.name for s in await nc.jetstream().streams_info()]
        assert not any("elsewhere" in n for n in names)  # looking never creates buckets
    finally:
        await nc.close()


async def test_status_reads_owned_bytes_from_the_ownership_bucket(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        chefs = await js.create_key_value(bucket=subjects.chefs_bucket("own"), ttl=10)
        info = ChefInfo(id="c1", kinds=["shell"], tools={}, sftp=SftpEndpoint("127.0.0.1", 1, "key"), slots=2,
                        store_bytes=5000, running=1)
        await chefs.put("c1", encode(info))
        owners = await js.create_key_value(bucket=subjects.owners_bucket("own"))
        await owners.put(subjects.kv_key("sha256:" + "a" * 64), encode(Ownership(size=300, owners=["c1", "p"])))
        await owners.put(subjects.kv_key("sha256:" + "b" * 64), encode(Ownership(size=40, owners=["c1"])))
        assert [c.id for c in await read_chefs(nc, "own")] == ["c1"]
    finally:
        await nc.close()
    status = await federation_status(nats_url, "own")
    (chef,) = status.chefs
    assert (chef.owned_bytes, chef.store_bytes, chef.running) == (340, 5000, 1)
    assert chef.requests is None  # no such micro service answers: said, not waited for forever
    text = render_status(status)
    assert "store 4.9 KiB, owns 340 B" in text and "load 1/2" in text and "no $SRV.STATS answer" in text


def test_render_status_running_steps_and_cluster() -> None:
    chef = ChefStatus(id="c1", host="h1", kinds=["latex"], tools={"pdflatex": "pdfTeX 3.14"}, slots=4, running=2,
                      store_bytes=3 * 1024 * 1024, owned_bytes=1024, uptime_s=3723, heartbeat_age_s=12,
                      sandbox="bwrap", sftp="10.0.0.1:2222", protocol=1, running_steps=["tex[a]", "tex[b]"],
                      counters={"steps_ok": 7}, requests=9, errors=1, avg_processing_s=0.5)
    status = Status(federation="cp", chefs=[chef], server=ServerStatus(
        url="nats://n1:4222", name="n1", version="2.10.0", cluster="pods", jetstream=True,
        known_servers=["nats://n1:4222", "nats://n2:4222"]))
    text = render_status(status, verbose=True)
    assert "cluster pods" in text and "also known: nats://n2:4222" in text
    assert "load 2/4  running: tex[a], tex[b]" in text
    assert "up 1h02m" in text and "store 3.0 MiB, owns 1.0 KiB" in text
    assert "tool pdflatex: pdfTeX 3.14" in text and "last heartbeat 12s ago" in text


def test_status_unreachable_nats_is_one_line() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cli = status_cli("--nats", f"nats://127.0.0.1:{port}")
    assert cli.returncode == 2
    assert cli.stderr.startswith(f"majordomo: cannot reach NATS at nats://127.0.0.1:{port}")
    assert len(cli.stderr.strip().splitlines()) == 1 and "Traceback" not in cli.stderr


def test_status_without_a_url_says_how_to_give_one(tmp_path: Path) -> None:
    cli = subprocess.run([sys.executable, "-m", "majordomo.cli", "status"], capture_output=True, text=True,
                         cwd=REPO, timeout=60, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert cli.returncode == 2 and "pass --nats URL" in cli.stderr


# -- Prometheus text exposition -------------------------------------------------------------------

def test_render_prometheus_parses_with_the_reference_parser() -> None:
    parser = pytest.importorskip("prometheus_client.parser")
    hist = Histogram(buckets=(0.1, 1.0, 10.0))
    for value in (0.05, 0.5, 0.7, 3.0, 42.0):
        hist.observe(value)
    text = render_prometheus(
        {
            "computepods_steps_total": {labels(outcome="ok"): 3, labels(outcome="failed"): 1},
            "computepods_bytes_pulled_total": 1 << 40,
            "computepods_bytes_served_total": 0,
            "computepods_store_bytes": {labels(pod='chef "a"\\x\n'): 123456},
            "computepods_lease_losses_total": 0,
        },
        {"computepods_step_duration_seconds": {labels(kind="cc"): hist}},
    )
    families = {f.name: f for f in parser.text_string_to_metric_families(text)}
    assert families["computepods_steps"].type == "counter"  # the parser strips `_total`
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert samples[("computepods_steps_total", (("outcome", "ok"),))] == 3
    assert samples[("computepods_bytes_pulled_total", ())] == float(1 << 40)
    assert families["computepods_store_bytes"].type == "gauge"
    assert samples[("computepods_store_bytes", (("pod", 'chef "a"\\x\n'),))] == 123456  # escaping round-trips
    assert families["computepods_step_duration_seconds"].type == "histogram"
    cumulative = {s.labels["le"]: s.value for s in families["computepods_step_duration_seconds"].samples
                  if s.name.endswith("_bucket")}
    assert cumulative == {"0.1": 1, "1.0": 3, "10.0": 4, "+Inf": 5}
    assert samples[("computepods_step_duration_seconds_sum", (("kind", "cc"),))] == pytest.approx(46.25)
    assert samples[("computepods_step_duration_seconds_count", (("kind", "cc"),))] == 5
    assert "# HELP computepods_steps_total Steps finished" in text


def test_render_prometheus_rejects_bad_names_and_renders_nothing_for_nothing() -> None:
    assert render_prometheus({}, {}) == ""
    with pytest.raises(ValueError):
        render_prometheus({"bad-name": 1}, {})
    with pytest.raises(ValueError):
        render_prometheus({"x_total": {(("__reserved", "v"),): 1}}, {})
    with pytest.raises(ValueError):
        render_prometheus({}, {"h": {labels(le="1"): Histogram()}})
    # Gauges and counters without METRICS entries get their type from the name.
    text = render_prometheus({"my_things_total": 2, "my_level": 0.5}, {})
    assert "# TYPE my_things_total counter" in text and "# TYPE my_level gauge" in text
    assert "my_level 0.5\n" in text


def test_chef_info_still_has_what_status_reads() -> None:
    # status renders these ChefInfo fields; a rename in protocol/ must show up here, not in the field.
    fields = {f.name for f in msgspec.structs.fields(ChefInfo)}
    assert {"kinds", "tools", "slots", "running", "store_bytes", "started_at", "heartbeat_at", "host"} <= fields
