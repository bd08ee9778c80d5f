"""The web dashboard: its model, its HTTP/SSE server, and the page in real headless Chromium.

Browser tests drive Debian's chromium through chromedriver (Selenium). Every wait is bounded
polling of the DOM or a readline on a process's first line; none is a sleep.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest
from conftest import REPO, require, start_chef, stop_procs, write_project

from majordomo.dashboard import serve_dashboard
from majordomo.dashboard.model import DashboardModel
from protocol import subjects
from protocol.messages import ChefInfo, Event, SftpEndpoint

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
DOM_TIMEOUT_S = 30.0


def ev(kind: str, step: str = "", *, build: str = "b1", chef: str = "", source: str = "majordomo:pod-1",
       at: float | None = None, **detail: Any) -> Event:
    return Event(kind=kind, at=time.time() if at is None else at, source=source, build_id=build, step_id=step,
                 chef_id=chef, detail=detail)


# -- the model, without a network -----------------------------------------------------------------

def test_model_orders_states_and_tracks_running_chefs() -> None:
    m = DashboardModel("cp")
    m.set_chefs([ChefInfo(id="chef-a", kinds=["shell"], tools={"sh": "1"}, sftp=SftpEndpoint("h", 1, "k"),
                          slots=2, started_at=1.0, heartbeat_at=2.0)])
    m.take_patch()
    m.apply(ev("build.started", total=2, targets=["out"]))
    m.apply(ev("step.queued", "s1"))
    m.apply(ev("step.running", "s1", chef="chef-a", source="chef-a"))
    patch = m.take_patch()
    assert patch and patch["steps"]["b1/s1"]["state"] == "running"
    assert patch["chefs"]["chef-a"]["running_steps"] == ["b1/s1"]
    # The placement event arrives late (another publisher): its reason is kept, the state is not rewound.
    m.apply(ev("step.placed", "s1", chef="chef-a", reason="owns most input bytes", candidates=[{"chef": "chef-a"}]))
    m.apply(ev("step.done", "s1", chef="chef-a", source="chef-a", code="ok", duration_s=0.25, outputs=["o/x"],
               message=""))
    patch = m.take_patch()
    assert patch
    step = patch["steps"]["b1/s1"]
    assert (step["state"], step["reason"], step["duration_s"]) == ("done", "owns most input bytes", 0.25)
    assert [t[0] for t in step["timeline"]] == ["queued", "running", "done"]
    assert patch["chefs"]["chef-a"]["running"] == 0
    assert patch["owners"]["o/x"]["pods"] == ["chef-a"]
    assert patch["builds"]["b1"]["counts"]["done"] == 1 and patch["builds"]["b1"]["total"] == 2
    assert m.take_patch() is None  # nothing changed since


def test_model_new_pass_retry_history_and_departures() -> None:
    m = DashboardModel("cp")
    m.apply(ev("step.queued", "tex"))
    m.apply(ev("step.done", "tex", chef="c1", source="c1", outputs=["doc.aux"]))
    m.apply(ev("step.queued", "tex"))  # the MajorDomo starts the next pass of a cycle
    assert m.snapshot()["steps"]["b1/tex"]["state"] == "queued"
    assert m.snapshot()["steps"]["b1/tex"]["pass"] == 2
    m.apply(ev("step.failed", "tex", chef="c1", source="c1", message="input unavailable"))
    m.apply(ev("step.running", "tex", chef="c2", source="c2"))  # a retry on another chef
    assert m.snapshot()["steps"]["b1/tex"]["chef_id"] == "c2"
    m.apply(ev("step.log", "tex", source="c2", text="line 1\n"))
    m.apply(ev("step.log", "tex", source="c2", text="line 2\n"))
    assert m.snapshot()["steps"]["b1/tex"]["log"] == "line 1\nline 2\n"
    m.apply(ev("step.queued", "cc", attempt=1))
    m.apply(ev("step.running", "cc", chef="c3", source="c3"))
    m.apply(ev("chef.lease_lost", chef="c3", reason="no heartbeat for 10s"))
    m.apply(ev("step.queued", "cc", attempt=2))  # re-dispatched while it was still "running"
    assert (m.snapshot()["steps"]["b1/cc"]["state"], m.snapshot()["steps"]["b1/cc"]["attempt"]) == ("queued", 2)
    m.apply(ev("step.done", "cc", chef="c1", source="c1"))
    m.apply(ev("step.recovered", "cc", chef="c1", history=["attempt 1 on c3: lease lost"]))
    assert m.snapshot()["steps"]["b1/cc"]["recovered"] == ["attempt 1 on c3: lease lost"]
    m.apply(ev("build.finished", ok=True, steps_run=1, duration_s=3.5))
    assert [(b["id"], b["duration_s"], b["ok"]) for b in m.history()] == [("b1", 3.5, True)]
    m.apply(ev("artefact.owned", source="majordomo:pod-1", path="doc.pdf", pod="pod-1", size=10))
    m.apply(ev("artefact.owned", source="c1", path="doc.pdf", pod="c1"))
    assert m.snapshot()["owners"]["doc.pdf"]["pods"] == ["pod-1", "c1"]
    m.apply(ev("chef.joined", source="c9", chef="c9", kinds=["cc"]))
    assert m.snapshot()["chefs"]["c9"]["kinds"] == ["cc"]
    m.take_patch()
    m.apply(ev("chef.left", source="c9", chef="c9"))
    assert m.take_patch() == {"chefs": {"c9": None}, "now": pytest.approx(time.time(), abs=60)}
    before = time.monotonic()
    m.apply(ev("chef.joined", source="c8", chef="c8"))
    m.set_chefs([], read_started=before)  # a registry read that began before c8 joined misses it
    assert "c8" in m.snapshot()["chefs"]
    m.set_chefs([], read_started=time.monotonic())
    assert "c8" not in m.snapshot()["chefs"]
    m.apply(ev("something.new", source="x"))  # unknown kinds are ignored
    m.apply(ev("step.weird", "tex"))


def test_model_keeps_steps_of_recent_builds_only() -> None:
    from majordomo.dashboard import model

    m = DashboardModel("cp")
    for n in range(model.MAX_BUILDS_WITH_STEPS + 2):
        m.apply(ev("step.done", "s", build=f"b{n}", chef="c", source="c"))
    steps = m.snapshot()["steps"]
    assert sorted(steps) == sorted(f"b{n}/s" for n in range(2, model.MAX_BUILDS_WITH_STEPS + 2))
    assert len(m.snapshot()["builds"]) == model.MAX_BUILDS_WITH_STEPS + 2  # history outlives the rows


# -- the server over HTTP -------------------------------------------------------------------------

def _get(url: str, host: str | None = None) -> tuple[int, str, bytes]:
    req = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read()


async def test_server_serves_page_snapshot_and_event_stream(nats_url: str) -> None:
    server = await serve_dashboard(nats_url, "srv", port=0)
    nc = await nats.connect(nats_url, name="test-publisher")
    try:
        status, ctype, body = await asyncio.to_thread(_get, server.url)
        assert status == 200 and ctype.startswith("text/html") and b"ComputePods" in body
        status, _, _ = await asyncio.to_thread(_get, server.url, "evil.example:80")
        assert status == 403  # DNS rebinding guard
        status, _, _ = await asyncio.to_thread(_get, server.url + "nope")
        assert status == 404

        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert b"text/event-stream" in head

        async def next_message() -> tuple[str, dict]:
            while True:
                block = (await asyncio.wait_for(reader.readuntil(b"\n\n"), 10)).decode()
                fields = dict(line.split(": ", 1) for line in block.strip().splitlines() if ": " in line)
                if "event" in fields:
                    return fields["event"], json.loads(fields["data"])

        kind, snap = await next_message()
        assert kind == "snapshot" and snap["federation"] == "srv" and snap["steps"] == {}
        assert snap["server"]["version"] and snap["server"]["url"].startswith("nats://")
        await nc.publish(subjects.events("srv", "step.running"),
                         msgspec.json.encode(ev("step.running", "one", chef="c1", source="c1")))
        await nc.publish(subjects.events("srv", "step.done"), b"{not json")  # ignored, not fatal
        kind, patch = await next_message()
        assert kind == "patch" and patch["steps"]["b1/one"]["state"] == "running"
        writer.close()

        status, _, body = await asyncio.to_thread(_get, server.url + "api/state")
        assert status == 200 and json.loads(body)["steps"]["b1/one"]["chef_id"] == "c1"
    finally:
        await nc.close()
        await server.stop()


def test_dashboard_command_prints_its_url_and_stops_on_sigterm(nats_url: str) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "majordomo.cli", "dashboard", "--nats", nats_url, "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert proc.stdout
        line = proc.stdout.readline()  # the address is the first line: an event, not a sleep
        assert line.startswith("dashboard: http://127.0.0.1:"), line + (proc.stderr.read() if proc.stderr else "")
        url = line.split()[1]
        status, _, body = _get(url + "api/state")
        assert status == 200 and json.loads(body)["federation"] == "cp"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_dashboard_command_unreachable_nats_is_one_line(free_port: int) -> None:
    run = subprocess.run([sys.executable, "-m", "majordomo.cli", "dashboard", "--nats", f"nats://127.0.0.1:{free_port}",
                          "--port", "0"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert run.returncode == 2
    assert run.stderr.startswith("majordomo: cannot reach NATS at") and len(run.stderr.strip().splitlines()) == 1
    assert "Traceback" not in run.stderr


@pytest.fixture
def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the page in headless Chromium ----------------------------------------------------------------

def _browser_missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            return f"{path} is missing (bash deploy/setup-debian.sh installs chromium and chromium-driver)"
    return None


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    missing = _browser_missing()
    require(missing is None, missing or "")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never try to download a browser or driver
    profile = tmp_path_factory.mktemp("chromium-profile")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1400,1100"):
        options.add_argument(flag)
    service = Service(executable_path=CHROMEDRIVER, log_output=str(profile.parent / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()


async def wait_dom(driver: Any, script: str, what: str) -> Any:
    """Poll a JS expression in the page (in a thread: the dashboard shares this loop) until truthy."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    def poll() -> Any:
        return WebDriverWait(driver, DOM_TIMEOUT_S, poll_frequency=0.05).until(
            lambda d: d.execute_script(f"return ({script});"))

    try:
        return await asyncio.to_thread(poll)
    except TimeoutException:
        body = await asyncio.to_thread(driver.execute_script, "return document.body.innerText;")
        raise AssertionError(f"page never showed {what}; it shows:\n{body[:3000]}") from None


def row_state(step: str) -> str:
    return (f"Array.from(document.querySelectorAll('#steps tbody tr')).find((tr) => tr.dataset.step === {json.dumps(step)})"
            "?.dataset.state")


async def test_page_follows_events_live(nats_url: str, browser: Any, tmp_path: Path) -> None:
    server = await serve_dashboard(nats_url, "live", port=0)
    nc = await nats.connect(nats_url, name="test-publisher")

    async def publish(event: Event) -> None:
        await nc.publish(subjects.events("live", event.kind), msgspec.json.encode(event))
        await nc.flush()

    try:
        await asyncio.to_thread(browser.get, server.url)
        await wait_dom(browser, "document.getElementById('conn').dataset.state === 'live'", "a live stream")
        nasty = '<img src=x onerror="window.pwned=1">'
        await publish(ev("build.started", build="b1", total=3, targets=["app"]))
        for step in ("compile[a]", "link", nasty):
            await publish(ev("step.queued", step, build="b1"))
        await wait_dom(browser, f"{row_state('compile[a]')} === 'queued'", "compile[a] queued")
        await publish(ev("step.placed", "compile[a]", chef="chef-x", reason="owns most input bytes",
                         candidates=[{"chef": "chef-x", "score": 3}]))
        await wait_dom(browser, f"{row_state('compile[a]')} === 'placed'", "compile[a] placed")
        await publish(ev("step.running", "compile[a]", chef="chef-x", source="chef-x"))
        await wait_dom(browser, "!!document.querySelector('#running li[data-step=\"compile[a]\"]')",
                       "compile[a] among the running steps")
        await publish(ev("step.log", "compile[a]", source="chef-x", text="cc -c a.c\nwarning: unused x\n"))
        await wait_dom(browser, "document.querySelector('#running li[data-step=\"compile[a]\"] pre')"
                       ".textContent.includes('warning: unused x')", "the running step's log")
        await publish(ev("step.done", "compile[a]", chef="chef-x", source="chef-x", code="ok", duration_s=0.5,
                         outputs=["obj/a.o"], message=""))
        await publish(ev("step.failed", "link", chef="chef-y", source="chef-y", code="command_failed",
                         message="ld: undefined reference to main", log="ld: undefined reference to main\n"))
        await publish(ev("step.cached", nasty))
        await publish(ev("build.finished", ok=False, steps_run=1, steps_cached=1, steps_failed=1, duration_s=2.5))
        await wait_dom(browser, "document.querySelector('#history tr[data-build=\"b1\"]')?.dataset.result"
                       " === 'failed'", "the finished build in the history")
        assert await wait_dom(browser, f"{row_state('compile[a]')} === 'done'", "compile[a] done")
        assert await wait_dom(browser, f"{row_state('link')} === 'failed'", "link failed")
        assert await wait_dom(browser, "document.querySelector('#artefacts tr[data-path=\"obj/a.o\"]')"
                              "?.dataset.owners === 'chef-x'", "obj/a.o owned by chef-x")
        assert await wait_dom(browser, "document.getElementById('no-running').hidden === false", "nothing running")
        # Text from the federation is text: the would-be tag shows as a step name and never runs.
        assert await wait_dom(browser, f"{row_state(nasty)} === 'cached'", "the oddly named step")
        assert await asyncio.to_thread(browser.execute_script,
                                       "return !window.pwned && !document.querySelector('#steps img');")
        # Clicking a failed step shows its log.
        await asyncio.to_thread(browser.execute_script,
                                "document.querySelector('#steps tr[data-step=\"link\"]').click();")
        await wait_dom(browser, "document.getElementById('log').textContent.includes('undefined reference')",
                       "the failed step's log")
        shot = tmp_path / "dashboard-synthetic.png"
        await asyncio.to_thread(browser.save_screenshot, str(shot))
        print(f"screenshot: {shot}")
    finally:
        await nc.close()
        await server.stop()


async def test_page_shows_a_real_build(federation: Any, browser: Any, tmp_path: Path) -> None:
    sources = {f"src/{n}.txt": f"{n}\n" for n in "abcd"}
    project = write_project(tmp_path / "proj", """
    [[rule]]
    name = "upper"
    inputs = ["src/%.txt"]
    outputs = ["out/%.up"]
    command = "tr a-z A-Z < $< > $@"

    [[step]]
    name = "bundle"
    inputs = ["out/*.up"]
    outputs = ["bundle.txt"]
    command = "cat $^ > $@"
    """, sources)
    server = await serve_dashboard(federation.url, port=0)
    try:
        await asyncio.to_thread(browser.get, server.url)
        chef_rows = " && ".join(f"!!document.querySelector('#chefs tr[data-chef=\"{c}\"]')" for c in federation.ids)
        await wait_dom(browser, chef_rows, "both chefs")
        before = tmp_path / "dashboard-before.png"
        await asyncio.to_thread(browser.save_screenshot, str(before))

        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "majordomo.cli", "build", "--json", "--nats", federation.url, "-C", str(project),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=REPO,
            env={**os.environ, **federation.env})
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 0, err.decode()
        summary = json.loads(out.decode().strip().splitlines()[-1])
        assert summary["steps_run"] == 5

        done = "document.querySelectorAll('#steps tr[data-state=\"done\"]').length"
        await wait_dom(browser, f"{done} === 5", "five steps done")
        rows: list[dict[str, str]] = await asyncio.to_thread(browser.execute_script, """
            return Array.from(document.querySelectorAll('#steps tbody tr')).map((tr) => ({
              step: tr.dataset.step, state: tr.dataset.state, chef: tr.dataset.chef, timeline: tr.dataset.timeline}));""")
        assert {r["step"] for r in rows} == {"bundle", *(f"upper[{n}]" for n in "abcd")}
        for row in rows:
            assert row["chef"] in federation.ids, row
            assert "running" in row["timeline"].split(","), row  # the page saw each step run
        owners = await wait_dom(browser, "(() => { const tr = document.querySelector("
                                "'#artefacts tr[data-path=\"bundle.txt\"]'); return tr && tr.dataset.owners; })()",
                                "bundle.txt and its owner")
        # The chef that made it, and the MajorDomo's pod once it fetched it into the workspace.
        pods = set(owners.split(","))
        assert len(pods & set(federation.ids)) == 1 and all(
            p in federation.ids or p.startswith("majordomo-") for p in pods), owners
        # The MajorDomo's build.finished puts the build in the history, with its duration.
        build_id = await asyncio.to_thread(browser.execute_script, "return document.body.dataset.build;")
        await wait_dom(browser, f"document.querySelector('#history tr[data-build=\"{build_id}\"]')?.dataset.result"
                       " === 'ok'", "the build in the history")
        # The chefs' own counters ($SRV.STATS) reach the page within a few registry rounds.
        total_ok: Callable[[], str] = lambda: (  # noqa: E731
            "Array.from(document.querySelectorAll('#chefs tbody tr')).map((tr) => parseInt(tr.children[6].textContent)"
            " || 0).reduce((a, b) => a + b, 0)")
        await wait_dom(browser, f"{total_ok()} === 5", "the chefs' step counters")
        shot = tmp_path / "dashboard-real-build.png"
        await asyncio.to_thread(browser.save_screenshot, str(shot))
        assert shot.stat().st_size > 10_000
        print(f"screenshots: {before} {shot}")

        # A chef joining and leaving shows up and goes away, live.
        home = tmp_path / "late" / "chef-late"
        home.parent.mkdir()
        late = await asyncio.to_thread(start_chef, federation.url, home, "chef-late", federation.key)
        try:
            await wait_dom(browser, "!!document.querySelector('#chefs tr[data-chef=\"chef-late\"]')", "chef-late")
        finally:
            await asyncio.to_thread(stop_procs, [late])
        await wait_dom(browser, "!document.querySelector('#chefs tr[data-chef=\"chef-late\"]')", "chef-late gone")
    finally:
        await server.stop()


# -- the Grafana dashboard for the Prometheus metrics ---------------------------------------------

def test_grafana_dashboard_uses_exactly_the_exposed_metrics() -> None:
    import re

    from majordomo.observe import METRICS

    dash = json.loads((REPO / "deploy" / "grafana-dashboard.json").read_text())
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    panels = dash["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    boxes: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        cells = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & boxes, f"panel {p['title']!r} overlaps another"
        boxes |= cells
    exprs = [t["expr"] for p in panels if p["type"] != "row" for t in p["targets"]]
    assert all(p["datasource"]["uid"] == "${datasource}" for p in panels if p["type"] != "row")
    allowed = set()
    for name, (kind, _help) in METRICS.items():
        allowed |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"} if kind == "histogram" else {name}
    used = {m for e in exprs for m in re.findall(r"computepods_[a-z_]+", e)}
    assert used <= allowed, f"unknown metrics in the dashboard: {used - allowed}"
    for name in METRICS:
        assert any(u == name or u.startswith(name + "_") for u in used), f"{name} has no panel"
    for e in exprs:
        for open_, close in ("()", "{}", "[]"):
            assert e.count(open_) == e.count(close), e
