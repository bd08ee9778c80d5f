"""Chefs are NATS micro services: `$SRV.PING/INFO/STATS` see them, with endpoints and real counters."""

from __future__ import annotations

import json
from pathlib import Path

import nats
from conftest import ONE_STEP, majordomo, srv_gather, write_project


async def test_chefs_answer_srv_ping_info_stats(tmp_path: Path, federation) -> None:
    project = write_project(tmp_path / "p", ONE_STEP, {"a.txt": "x\n"})
    run = majordomo(project, "build", "--json", "--nats", federation.url, env=federation.env)
    assert run.code == 0, run.stderr
    cooked_by = run.summary["chefs"][0]["id"]

    nc = await nats.connect(federation.url, name="test-observer")
    try:
        pings = await srv_gather(nc, "$SRV.PING.computepods-chef", 2)
        assert sorted(p["metadata"]["chef_id"] for p in pings) == sorted(federation.ids)
        infos = await srv_gather(nc, "$SRV.INFO.computepods-chef", 2)
        for info in infos:
            subjects = {e["name"]: e["subject"] for e in info["endpoints"]}
            assert subjects["run"] == f"cp.chef.{info['metadata']['chef_id']}.run"
            assert info["metadata"]["host_key_fingerprint"].startswith("SHA256:")
            assert set(info["metadata"]["kinds"].split(",")) == {"shell", "cc"}
            assert json.loads(info["metadata"]["tools"])["sh"]  # tool identities are advertised
        stats = {s["metadata"]["chef_id"]: s for s in await srv_gather(nc, "$SRV.STATS.computepods-chef", 2)}
        run_ep = next(e for e in stats[cooked_by]["endpoints"] if e["name"] == "run")
        assert run_ep["num_requests"] == 1
        assert run_ep["data"]["steps_ok"] == 1
        other = next(c for c in federation.ids if c != cooked_by)
        assert next(e for e in stats[other]["endpoints"] if e["name"] == "run")["num_requests"] == 0
    finally:
        await nc.close()
