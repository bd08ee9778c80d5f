# ruff: noqa: E501  -- this module is an HTML/CSS/JS document; its line length is not Python style
"""The dashboard page: one self-contained HTML document (no external assets, so it works offline).

The script keeps the model the server streams (a snapshot, then patches merged by key) and updates
the DOM in place, row by row, so an open log or a scroll position survives updates. Text from the
federation (step ids, logs, messages) only ever goes into `textContent`, never into HTML.
Elements carry `data-*` attributes (`data-chef`, `data-step`, `data-state`, `data-build`) for tests.
"""

PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ComputePods federation</title>
<style>
:root { --bg:#f6f7f9; --card:#fff; --ink:#1d2430; --muted:#6b7480; --line:#e3e6ea;
  --queued:#9aa3ad; --placed:#7c8cf8; --pulling:#b48ef0; --running:#2f80ed; --done:#27ae60;
  --cached:#8fd3a8; --failed:#e5484d; --skipped:#f2a33a; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; background:var(--bg); color:var(--ink); }
header { display:flex; gap:16px; align-items:baseline; flex-wrap:wrap; padding:12px 20px; background:#1d2430; color:#fff; }
header h1 { font-size:18px; margin:0; }
header .muted { color:#b8c0cc; }
#conn { padding:2px 8px; border-radius:10px; font-size:12px; background:#6b7480; }
#conn[data-state=live] { background:var(--done); }
#conn[data-state=reconnecting] { background:var(--failed); }
main { display:grid; grid-template-columns: minmax(0,3fr) minmax(0,2fr); gap:16px; padding:16px 20px; }
section { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:12px 14px; min-width:0; }
section.wide { grid-column: 1 / -1; }
h2 { font-size:15px; margin:0 0 8px; display:flex; gap:8px; align-items:baseline; }
h2 small { font-weight:normal; color:var(--muted); }
table { border-collapse:collapse; width:100%; }
th, td { text-align:left; padding:4px 6px; border-bottom:1px solid var(--line); vertical-align:top; }
th { font-weight:600; color:var(--muted); font-size:12px; }
td.num, th.num { text-align:right; font-variant-numeric: tabular-nums; }
tbody tr { cursor:default; }
#steps tbody tr, #history tbody tr, #running li { cursor:pointer; }
tr.selected td { background:#eef4ff; }
.empty { color:var(--muted); margin:4px 0; }
.badge { display:inline-block; min-width:62px; text-align:center; padding:1px 6px; border-radius:9px; color:#fff; font-size:12px; background:var(--queued); }
.badge[data-state=placed] { background:var(--placed); }
.badge[data-state=pulling] { background:var(--pulling); }
.badge[data-state=running] { background:var(--running); }
.badge[data-state=done] { background:var(--done); }
.badge[data-state=cached] { background:var(--cached); color:#1d2430; }
.badge[data-state=failed] { background:var(--failed); }
.badge[data-state=skipped] { background:var(--skipped); }
.load { display:inline-block; width:80px; height:10px; background:var(--line); border-radius:5px; overflow:hidden; vertical-align:middle; margin-right:6px; }
.load > div { height:100%; background:var(--running); }
.bar { display:flex; height:12px; background:var(--line); border-radius:6px; overflow:hidden; margin:6px 0; }
.bar > div { height:100%; }
#map { display:flex; flex-wrap:wrap; gap:3px; margin:8px 0; }
#map .cell { width:12px; height:12px; border-radius:2px; background:var(--queued); cursor:pointer; }
#map .cell[data-state=placed] { background:var(--placed); }
#map .cell[data-state=pulling] { background:var(--pulling); }
#map .cell[data-state=running] { background:var(--running); animation: pulse 1s ease-in-out infinite alternate; }
#map .cell[data-state=done] { background:var(--done); }
#map .cell[data-state=cached] { background:var(--cached); }
#map .cell[data-state=failed] { background:var(--failed); }
#map .cell[data-state=skipped] { background:var(--skipped); }
@keyframes pulse { from { opacity:1; } to { opacity:.45; } }
pre { background:#10151d; color:#d8dee9; padding:8px 10px; border-radius:6px; max-height:360px; overflow:auto; white-space:pre-wrap; word-break:break-word; font-size:12px; margin:6px 0 0; }
#running { list-style:none; padding:0; margin:0; }
#running li { padding:6px 0; border-bottom:1px solid var(--line); }
#running li pre { max-height:140px; }
.mono { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size:12px; }
.muted { color:var(--muted); }
.scroll { max-height:420px; overflow:auto; }
.ok { color:var(--done); font-weight:600; } .bad { color:var(--failed); font-weight:600; }
a.link { color:var(--running); cursor:pointer; text-decoration:underline; }
@media (max-width: 900px) { main { grid-template-columns: 1fr; } }
</style>
</head>
<body>
<header>
  <h1>ComputePods <span class="muted" id="federation"></span></h1>
  <span id="conn" data-state="connecting">connecting</span>
  <span class="muted" id="server"></span>
</header>
<main>
  <section id="chefs-section" class="wide">
    <h2>Chefs <small id="chefs-summary"></small></h2>
    <table id="chefs">
      <thead><tr><th>chef</th><th>host</th><th>kinds</th><th>load</th><th>running</th><th class="num">store</th>
        <th class="num">ok / failed</th><th class="num">pulled</th><th class="num">up</th></tr></thead>
      <tbody></tbody>
    </table>
    <p class="empty" id="no-chefs">No chefs registered.</p>
  </section>
  <section id="build-section">
    <h2>Build <small id="build-title">none yet</small> <a class="link" id="follow" hidden>follow latest</a></h2>
    <div class="bar" id="progress"></div>
    <div id="progress-text" class="muted"></div>
    <div id="map" aria-label="steps of the build"></div>
    <div class="scroll">
      <table id="steps">
        <thead><tr><th>step</th><th>state</th><th>chef</th><th class="num">time</th><th>note</th></tr></thead>
        <tbody></tbody>
      </table>
    </div>
  </section>
  <section id="side">
    <h2>Running now <small id="running-count"></small></h2>
    <ul id="running"></ul>
    <p class="empty" id="no-running">Nothing running.</p>
    <h2 style="margin-top:14px">Log <small id="log-title">click a step</small></h2>
    <pre id="log" class="mono" hidden></pre>
  </section>
  <section id="artefacts-section">
    <h2>Artefacts and owners <small id="artefacts-count"></small></h2>
    <div class="scroll">
      <table id="artefacts">
        <thead><tr><th>artefact</th><th>owned by</th><th>made by</th></tr></thead>
        <tbody></tbody>
      </table>
    </div>
    <p class="empty" id="no-artefacts">No artefacts made yet.</p>
  </section>
  <section id="history-section">
    <h2>Recent builds</h2>
    <table id="history">
      <thead><tr><th>build</th><th>started</th><th class="num">duration</th><th>result</th>
        <th class="num">run</th><th class="num">cached</th><th class="num">failed</th></tr></thead>
      <tbody></tbody>
    </table>
    <p class="empty" id="no-history">No builds seen yet.</p>
  </section>
</main>
<script>
"use strict";
const STATES = ["queued", "placed", "pulling", "running", "done", "cached", "failed", "skipped"];
const SECTIONS = ["chefs", "builds", "steps", "owners"];
const S = { federation: "", server: {}, chefs: {}, builds: {}, steps: {}, owners: {} };
let clockOffset = 0;  // server time minus ours, so elapsed times agree with the federation's clock
let pinnedBuild = null;  // null: follow the latest build
let selectedStep = null;
let renderTimer = null;

const $ = (id) => document.getElementById(id);
const now = () => Date.now() / 1000 + clockOffset;
function setText(node, text) { text = String(text); if (node.textContent !== text) node.textContent = text; }
function setAttr(node, name, value) { value = String(value); if (node.getAttribute(name) !== value) node.setAttribute(name, value); }
function bytes(n) {
  if (n === null || n === undefined) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"]; let i = 0;
  while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return i === 0 ? n + " B" : n.toFixed(1) + " " + units[i];
}
function dur(s) {
  if (s === null || s === undefined || isNaN(s)) return "";
  if (s < 10) return s.toFixed(2) + "s";
  if (s < 60) return s.toFixed(1) + "s";
  s = Math.floor(s);
  if (s < 3600) return Math.floor(s / 60) + "m" + String(s % 60).padStart(2, "0") + "s";
  if (s < 86400) return Math.floor(s / 3600) + "h" + String(Math.floor(s % 3600 / 60)).padStart(2, "0") + "m";
  return Math.floor(s / 86400) + "d" + String(Math.floor(s % 86400 / 3600)).padStart(2, "0") + "h";
}
function clock(t) { return t ? new Date(t * 1000).toLocaleTimeString() : ""; }
function cells(tr, n) { while (tr.children.length < n) tr.appendChild(document.createElement("td")); return tr.children; }

// Keep a container's children in the order of `keys`, reusing the node made for each key.
function sync(container, keys, attr, make, update) {
  const existing = new Map();
  for (const child of Array.from(container.children)) existing.set(child.getAttribute(attr), child);
  keys.forEach((key, i) => {
    let node = existing.get(key);
    if (!node) { node = make(key); node.setAttribute(attr, key); }
    existing.delete(key);
    update(node, key);
    if (container.children[i] !== node) container.insertBefore(node, container.children[i] || null);
  });
  for (const stale of existing.values()) stale.remove();
}

function currentBuild() {
  if (pinnedBuild && S.builds[pinnedBuild]) return S.builds[pinnedBuild];
  let latest = null;
  for (const b of Object.values(S.builds)) if (!latest || b.seq > latest.seq) latest = b;
  return latest;
}
function stepsOf(buildId) {
  return Object.values(S.steps).filter((s) => s.build_id === buildId).sort((a, b) => a.seq - b.seq);
}

function renderHeader() {
  setText($("federation"), S.federation ? "federation " + S.federation : "");
  const s = S.server || {};
  const bits = [s.url, s.name && "server " + s.name, s.version && "v" + s.version, s.cluster && "cluster " + s.cluster,
    s.jetstream ? "JetStream" : ""].filter(Boolean);
  setText($("server"), bits.join(" · "));
}

function renderChefs() {
  const ids = Object.keys(S.chefs).sort();
  $("no-chefs").hidden = ids.length > 0;
  let busy = 0, slots = 0;
  sync($("chefs").tBodies[0], ids, "data-chef", () => document.createElement("tr"), (tr, id) => {
    const c = S.chefs[id]; const st = c.stats || {};
    const running = Math.max(c.running || 0, 0);
    busy += running; slots += c.slots || 0;
    setAttr(tr, "data-running", running);
    setAttr(tr, "title", Object.entries(c.tools || {}).map(([t, v]) => t + ": " + v).join("\n"));
    const td = cells(tr, 9);
    setAttr(tr, "data-lease-lost", c.lease_lost || "");
    setText(td[0], c.id + (c.lease_lost ? " (lease lost: " + c.lease_lost + ")" : "")); td[0].className = c.lease_lost ? "mono bad" : "mono";
    setText(td[1], c.host || "");
    setText(td[2], (c.kinds || []).join(", "));
    if (!td[3].firstChild) { td[3].innerHTML = '<span class="load"><div></div></span><span></span>'; }
    const frac = c.slots ? Math.min(1, running / c.slots) : 0;
    td[3].firstChild.firstChild.style.width = Math.round(frac * 100) + "%";
    setText(td[3].lastChild, running + "/" + (c.slots || "?"));
    setText(td[4], (c.running_steps || []).map((k) => (S.steps[k] || {}).step_id || k.split("/").slice(1).join("/")).join(", "));
    td[4].className = "mono";
    setText(td[5], c.store_bytes ? bytes(c.store_bytes) : ""); td[5].className = "num";
    setText(td[6], st.steps_ok !== undefined ? st.steps_ok + " / " + (st.steps_failed || 0) : ""); td[6].className = "num";
    setText(td[7], st.bytes_pulled ? bytes(st.bytes_pulled) : ""); td[7].className = "num";
    setText(td[8], c.started_at ? dur(now() - c.started_at) : ""); td[8].className = "num";
  });
  setText($("chefs-summary"), ids.length ? ids.length + " chef(s), " + busy + "/" + slots + " slots busy" : "");
}

function stepNote(s) {
  if (s.state === "failed") return s.message || s.code || "failed";
  if (s.state === "placed" && s.reason) return s.reason;
  if ((s.state === "done" || s.state === "cached") && s.outputs && s.outputs.length) return "→ " + s.outputs.join(", ");
  if (s.attempt > 1) return "attempt " + s.attempt + (s.reason ? ": " + s.reason : "");
  if (s.pass > 1) return "pass " + s.pass;
  return s.reason || "";
}
function stepTime(s) {
  if (s.duration_s !== null && s.duration_s !== undefined) return dur(s.duration_s);
  if (s.state === "running" && s.started_at) return dur(Math.max(0, now() - s.started_at));
  return "";
}

function renderBuild() {
  const b = currentBuild();
  $("follow").hidden = !pinnedBuild;
  document.body.setAttribute("data-build", b ? b.id : "");
  if (!b) { setText($("build-title"), "none yet"); return; }
  const steps = stepsOf(b.id);
  const counts = {}; for (const st of STATES) counts[st] = 0;
  for (const s of steps) counts[s.state] = (counts[s.state] || 0) + 1;
  const total = Math.max(b.total || 0, steps.length);
  const finished = counts.done + counts.cached + counts.failed + counts.skipped;
  let verdict = "running";
  if (b.finished_at) verdict = b.ok === false ? "FAILED" : "ok";
  const took = b.duration_s !== null && b.duration_s !== undefined ? dur(b.duration_s) : dur(Math.max(0, (b.finished_at || now()) - b.started_at));
  setText($("build-title"), b.id + (b.source ? " from " + b.source : "") + " · " + verdict + " · " + took);
  setAttr($("build-section"), "data-verdict", verdict);
  const bar = $("progress");
  sync(bar, ["done", "cached", "failed", "skipped", "running"], "data-part", () => document.createElement("div"), (div, st) => {
    div.style.width = total ? (100 * counts[st] / total) + "%" : "0";
    div.style.background = "var(--" + st + ")";
  });
  const parts = [finished + "/" + total + " finished"];
  for (const st of ["running", "done", "cached", "failed", "skipped", "queued", "placed"]) if (counts[st]) parts.push(counts[st] + " " + st);
  if (b.targets && b.targets.length) parts.push("targets: " + b.targets.join(", "));
  setText($("progress-text"), parts.join(" · "));
  const keys = steps.map((s) => s.key);
  sync($("map"), keys, "data-key", () => { const d = document.createElement("div"); d.className = "cell"; return d; }, (d, key) => {
    const s = S.steps[key];
    setAttr(d, "data-state", s.state);
    setAttr(d, "title", s.step_id + ": " + s.state + (s.chef_id ? " on " + s.chef_id : ""));
    d.onclick = () => selectStep(key);
  });
  sync($("steps").tBodies[0], keys, "data-key", () => document.createElement("tr"), (tr, key) => {
    const s = S.steps[key];
    setAttr(tr, "data-step", s.step_id);
    setAttr(tr, "data-state", s.state);
    setAttr(tr, "data-chef", s.chef_id || "");
    setAttr(tr, "data-timeline", (s.timeline || []).map((t) => t[0]).join(","));
    tr.className = key === selectedStep ? "selected" : "";
    setAttr(tr, "title", s.reason ? "placed: " + s.reason : "");
    const td = cells(tr, 5);
    setText(td[0], s.step_id); td[0].className = "mono";
    if (!td[1].firstChild) td[1].innerHTML = '<span class="badge"></span>';
    setAttr(td[1].firstChild, "data-state", s.state); setText(td[1].firstChild, s.state);
    setText(td[2], s.chef_id || ""); td[2].className = "mono";
    setText(td[3], stepTime(s)); td[3].className = "num";
    setText(td[4], stepNote(s));
    tr.onclick = () => selectStep(key);
  });
}

function renderRunning() {
  const running = Object.values(S.steps).filter((s) => s.state === "running" || s.state === "pulling")
    .sort((a, b) => (a.started_at || 0) - (b.started_at || 0));
  $("no-running").hidden = running.length > 0;
  setText($("running-count"), running.length ? String(running.length) : "");
  sync($("running"), running.map((s) => s.key), "data-key", () => {
    const li = document.createElement("li");
    li.innerHTML = '<span class="badge"></span> <span class="mono name"></span> <span class="muted where"></span><pre hidden></pre>';
    return li;
  }, (li, key) => {
    const s = S.steps[key];
    setAttr(li, "data-step", s.step_id);
    const badge = li.querySelector(".badge"); setAttr(badge, "data-state", s.state); setText(badge, s.state);
    setText(li.querySelector(".name"), s.step_id);
    setText(li.querySelector(".where"), "on " + (s.chef_id || "?") + " for " + stepTime(s));
    const pre = li.querySelector("pre");
    pre.hidden = !s.log;
    if (s.log) { setText(pre, s.log); pre.scrollTop = pre.scrollHeight; }
    li.onclick = () => selectStep(key);
  });
}

function renderLog() {
  const s = selectedStep && S.steps[selectedStep];
  const pre = $("log");
  pre.hidden = !s;
  if (!s) { setText($("log-title"), "click a step"); setText(pre, ""); pre.removeAttribute("data-step"); return; }
  setAttr(pre, "data-step", s.step_id);
  setText($("log-title"), s.step_id + " · " + s.state + (s.chef_id ? " on " + s.chef_id : ""));
  let text = s.log || "";
  if (!text) {
    if (s.message) text = s.message;
    else if (s.state === "running" || s.state === "pulling") text = "(running; output arrives when the step ends)";
    else text = "(no log in the events; `majordomo log " + s.step_id + "` shows the stored one)";
  }
  if (s.recovered && s.recovered.length) text += "\n\nrecovered after:\n" + s.recovered.map((h) => "  " + h).join("\n");
  if (s.candidates && s.candidates.length) text += "\n\nplacement: " + (s.reason || "") + "\n" + s.candidates.map((c) => "  " + JSON.stringify(c)).join("\n");
  const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
  setText(pre, text);
  if (atBottom) pre.scrollTop = pre.scrollHeight;  // follow a growing log, unless scrolled up
}

function renderArtefacts() {
  const paths = Object.keys(S.owners).sort().slice(0, 2000);
  $("no-artefacts").hidden = paths.length > 0;
  setText($("artefacts-count"), paths.length ? String(Object.keys(S.owners).length) : "");
  sync($("artefacts").tBodies[0], paths, "data-path", () => document.createElement("tr"), (tr, path) => {
    const o = S.owners[path];
    setAttr(tr, "data-owners", (o.pods || []).join(","));
    const td = cells(tr, 3);
    setText(td[0], path + (o.size ? " (" + bytes(o.size) + ")" : "")); td[0].className = "mono";
    setText(td[1], (o.pods || []).join(", ")); td[1].className = "mono";
    setText(td[2], o.step_id || ""); td[2].className = "mono muted";
  });
}

function renderHistory() {
  const builds = Object.values(S.builds).sort((a, b) => b.seq - a.seq);
  $("no-history").hidden = builds.length > 0;
  const shown = currentBuild();
  sync($("history").tBodies[0], builds.map((b) => b.id), "data-build", () => document.createElement("tr"), (tr, id) => {
    const b = S.builds[id]; const sum = b.summary || {}; const c = b.counts || {};
    const verdict = b.finished_at ? (b.ok === false ? "failed" : "ok") : "running";
    setAttr(tr, "data-result", verdict);
    tr.className = shown && shown.id === id ? "selected" : "";
    const td = cells(tr, 7);
    setText(td[0], id); td[0].className = "mono";
    setText(td[1], clock(b.started_at));
    const took = b.duration_s !== null && b.duration_s !== undefined ? b.duration_s : (b.finished_at || b.last_at) - b.started_at;
    setText(td[2], (b.finished_at ? "" : "≥ ") + dur(took)); td[2].className = "num";
    setText(td[3], verdict); td[3].className = verdict === "ok" ? "ok" : verdict === "failed" ? "bad" : "muted";
    setText(td[4], sum.steps_run !== undefined ? sum.steps_run : (c.done || 0)); td[4].className = "num";
    setText(td[5], sum.steps_cached !== undefined ? sum.steps_cached : (c.cached || 0)); td[5].className = "num";
    setText(td[6], sum.steps_failed !== undefined ? sum.steps_failed : (c.failed || 0)); td[6].className = "num";
    tr.onclick = () => { pinnedBuild = id; scheduleRender(); };
  });
}

function render() {
  renderTimer = null;
  renderHeader(); renderChefs(); renderBuild(); renderRunning(); renderLog(); renderArtefacts(); renderHistory();
}
// Coalesce bursts of patches into one DOM update (setTimeout, not rAF: rAF stops in background tabs).
function scheduleRender() { if (renderTimer === null) renderTimer = setTimeout(render, 30); }
function selectStep(key) { selectedStep = key; scheduleRender(); }
$("follow").onclick = () => { pinnedBuild = null; scheduleRender(); };

function merge(p) {
  for (const sec of SECTIONS) {
    const part = p[sec]; if (!part) continue;
    for (const [k, v] of Object.entries(part)) { if (v === null) delete S[sec][k]; else S[sec][k] = v; }
  }
  if (p.server) S.server = p.server;
  if (p.now) clockOffset = p.now - Date.now() / 1000;
}

function connect() {
  const es = new EventSource("events");
  es.addEventListener("snapshot", (e) => {
    const snap = JSON.parse(e.data);
    for (const sec of SECTIONS) S[sec] = snap[sec] || {};
    S.federation = snap.federation; S.server = snap.server || {};
    clockOffset = snap.now - Date.now() / 1000;
    setAttr($("conn"), "data-state", "live"); setText($("conn"), "live");
    scheduleRender();
  });
  es.addEventListener("patch", (e) => { merge(JSON.parse(e.data)); scheduleRender(); });
  es.onerror = () => { setAttr($("conn"), "data-state", "reconnecting"); setText($("conn"), "reconnecting"); };
}
connect();
setInterval(() => { renderChefs(); renderRunning(); renderBuild(); }, 1000);  // elapsed times tick
</script>
</body>
</html>
"""
