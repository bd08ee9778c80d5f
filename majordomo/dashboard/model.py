"""What the dashboard knows: the federation folded from events, the chef registry and micro stats.

Pure and synchronous, so it is tested without a network and never blocks the loop. The page gets
one snapshot, then patches: `{section: {key: record or null}}` for the records that changed, which
the page merges by key. Records are plain JSON-able dicts.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from protocol.messages import ChefInfo, Event

# A step's states in the order they happen; a later event never moves a step back (events from
# different publishers may arrive out of order), except when a new pass or attempt starts.
RANK = {"queued": 0, "placed": 1, "pulling": 2, "running": 3, "done": 4, "failed": 4, "cached": 4, "skipped": 4}
TERMINAL = {s for s, r in RANK.items() if r == 4}
SECTIONS = ("chefs", "builds", "steps", "owners")

MAX_BUILDS = 30  # builds kept in the history
MAX_BUILDS_WITH_STEPS = 5  # builds whose steps are kept (a 2,000-step build is a lot of rows)
MAX_OWNED_PATHS = 5000
MAX_LOG_CHARS = 16 * 1024  # the tail is what a person reads; `majordomo log` has the whole
MAX_TIMELINE = 24


class DashboardModel:
    def __init__(self, federation: str) -> None:
        self.federation = federation
        self.server: dict[str, Any] = {}
        self._chefs: dict[str, dict[str, Any]] = {}  # id -> registry record
        self._stats: dict[str, dict[str, Any]] = {}  # id -> counters from $SRV.STATS
        self._running_on: dict[str, dict[str, str]] = {}  # chef id -> step key -> step id
        self._joined_at: dict[str, float] = {}  # chef id -> monotonic time of its chef.joined
        self._builds: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._steps: dict[str, dict[str, Any]] = {}
        self._owners: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._dirty: dict[str, set[str]] = {s: set() for s in SECTIONS}
        self._deleted: dict[str, set[str]] = {s: set() for s in SECTIONS}
        self._server_dirty = False
        self._seq = 0

    # -- inputs -----------------------------------------------------------------------------------

    def set_server(self, info: dict[str, Any]) -> None:
        if info != self.server:
            self.server = info
            self._server_dirty = True

    def set_chefs(self, chefs: Iterable[ChefInfo], read_started: float | None = None) -> None:
        """The registry as read now: chefs missing from it have left (or their entry expired).

        A chef that announced itself after the read began (`time.monotonic()`) is kept even if
        the read missed it, so it does not blink out until the next read.
        """
        seen: set[str] = set()
        for info in chefs:
            seen.add(info.id)
            record = {
                "id": info.id, "host": info.host, "kinds": list(info.kinds), "tools": dict(info.tools),
                "slots": info.slots, "registry_running": info.running, "store_bytes": info.store_bytes,
                "started_at": info.started_at, "heartbeat_at": info.heartbeat_at, "sandbox": info.sandbox,
                "sftp": f"{info.sftp.host}:{info.sftp.port}", "present": True,
            }
            old = self._chefs.get(info.id)
            if old is None or {k: v for k, v in old.items() if k != "heartbeat_at"} != {
                    k: v for k, v in record.items() if k != "heartbeat_at"}:
                self._touch("chefs", info.id)
            self._chefs[info.id] = record
        for gone in [c for c in self._chefs if c not in seen]:
            if read_started is None or self._joined_at.get(gone, float("-inf")) < read_started:
                self._forget_chef(gone)

    def set_stats(self, replies: Iterable[dict[str, Any]]) -> None:
        """`$SRV.STATS` replies of chefs: their run endpoint's counters."""
        for reply in replies:
            chef_id = (reply.get("metadata") or {}).get("chef_id")
            run = next((e for e in reply.get("endpoints") or [] if e.get("name") == "run"), None)
            if not chef_id or run is None:
                continue
            stats = {"requests": run.get("num_requests", 0), "errors": run.get("num_errors", 0),
                     **(run.get("data") if isinstance(run.get("data"), dict) else {})}
            if self._stats.get(chef_id) != stats:
                self._stats[chef_id] = stats
                if chef_id in self._chefs:
                    self._touch("chefs", chef_id)

    def apply(self, event: Event) -> None:
        """Fold one event in. Unknown kinds are ignored: a newer publisher must not break this page."""
        kind = event.kind
        if kind.startswith("step."):
            self._step_event(event, kind[5:])
        elif kind == "build.started":
            build = self._build(event)
            build["started_at"] = event.at
            detail = event.detail
            total = detail.get("total", detail.get("total_steps", detail.get("steps")))
            if isinstance(total, int):
                build["total"] = total
            if isinstance(detail.get("targets"), list):
                build["targets"] = [str(t) for t in detail["targets"]]
        elif kind == "build.finished":
            build = self._build(event)
            build["finished_at"] = event.at
            build["summary"] = dict(event.detail)
            if "ok" in event.detail:
                build["ok"] = bool(event.detail["ok"])
            duration = event.detail.get("duration_s")
            build["duration_s"] = float(duration) if isinstance(duration, int | float) else event.at - build[
                "started_at"]
        elif kind == "chef.joined":
            chef_id = event.chef_id or event.source
            self._joined_at[chef_id] = time.monotonic()
            if chef_id not in self._chefs:  # the registry read that follows fills in the rest
                kinds = event.detail.get("kinds")
                self._chefs[chef_id] = {"id": chef_id, "kinds": kinds if isinstance(kinds, list) else [],
                                        "present": True, "started_at": event.at, "slots": 0}
                self._touch("chefs", chef_id)
        elif kind == "chef.left":
            self._forget_chef(event.chef_id or event.source)
        elif kind == "chef.lease_lost":
            chef_id = event.chef_id or event.source
            # Its steps go elsewhere: the MajorDomo queues them again, so they stop counting here.
            for key in self._running_on.pop(chef_id, {}):
                self._touch("steps", key)
            if chef_id in self._chefs:
                self._chefs[chef_id]["lease_lost"] = str(event.detail.get("reason", "")) or "lease lost"
                self._touch("chefs", chef_id)
        elif kind in ("artefact.owned", "artefact.released"):
            self._ownership_event(event, owned=kind == "artefact.owned")

    # -- outputs ----------------------------------------------------------------------------------

    def history(self) -> list[dict[str, Any]]:
        """Finished builds kept in memory, newest first."""
        done = [self._build_record(b) for b, rec in self._builds.items() if rec["finished_at"] is not None]
        return sorted(done, key=lambda b: b["finished_at"], reverse=True)

    def snapshot(self) -> dict[str, Any]:
        """Everything, for a page that just connected; pending patches are folded in."""
        self.take_patch()
        return {
            "federation": self.federation, "server": self.server, "now": time.time(),
            "chefs": {k: self._chef_record(k) for k in self._chefs},
            "builds": {k: self._build_record(k) for k in self._builds},
            "steps": dict(self._steps),
            "owners": dict(self._owners),
        }

    def take_patch(self) -> dict[str, Any] | None:
        """The records changed since the last call, or None when nothing did."""
        patch: dict[str, Any] = {}
        for section in SECTIONS:
            part: dict[str, Any] = {key: None for key in self._deleted[section]}
            for key in self._dirty[section]:
                record = self._record(section, key)
                if record is not None:
                    part[key] = record
            if part:
                patch[section] = part
            self._dirty[section].clear()
            self._deleted[section].clear()
        if self._server_dirty:
            patch["server"] = self.server
            self._server_dirty = False
        if patch:
            patch["now"] = time.time()
        return patch or None

    # -- internals --------------------------------------------------------------------------------

    def _touch(self, section: str, key: str) -> None:
        self._dirty[section].add(key)
        self._deleted[section].discard(key)

    def _drop(self, section: str, key: str) -> None:
        self._dirty[section].discard(key)
        self._deleted[section].add(key)

    def _record(self, section: str, key: str) -> dict[str, Any] | None:
        if section == "chefs":
            return self._chef_record(key) if key in self._chefs else None
        if section == "builds":
            return self._build_record(key) if key in self._builds else None
        if section == "steps":
            return self._steps.get(key)
        return self._owners.get(key)

    def _chef_record(self, chef_id: str) -> dict[str, Any]:
        running = self._running_on.get(chef_id, {})
        record = dict(self._chefs[chef_id])
        # Events say which steps run now; the registry's count is up to a heartbeat old.
        record["running_steps"] = sorted(running)
        record["running"] = len(running)
        record["stats"] = self._stats.get(chef_id, {})
        return record

    def _build_record(self, build_id: str) -> dict[str, Any]:
        build = self._builds[build_id]
        return {**build, "counts": dict(build["counts"])}

    def _forget_chef(self, chef_id: str) -> None:
        if self._chefs.pop(chef_id, None) is not None:
            self._drop("chefs", chef_id)
        self._stats.pop(chef_id, None)
        self._running_on.pop(chef_id, None)
        self._joined_at.pop(chef_id, None)

    def _build(self, event: Event) -> dict[str, Any]:
        build_id = event.build_id or "-"
        build = self._builds.get(build_id)
        if build is None:
            self._seq += 1
            build = {"id": build_id, "source": event.source if event.source.startswith("majordomo") else "",
                     "started_at": event.at, "last_at": event.at, "finished_at": None, "duration_s": None,
                     "total": None, "targets": [], "ok": None, "summary": None, "counts": {}, "seq": self._seq}
            self._builds[build_id] = build
            self._trim_builds()
        if event.source.startswith("majordomo") and not build["source"]:
            build["source"] = event.source
        build["started_at"] = min(build["started_at"], event.at)
        build["last_at"] = max(build["last_at"], event.at)
        self._touch("builds", build_id)
        return build

    def _trim_builds(self) -> None:
        while len(self._builds) > MAX_BUILDS:
            old_id, _ = self._builds.popitem(last=False)
            self._drop("builds", old_id)
        for old_id in list(self._builds)[:-MAX_BUILDS_WITH_STEPS]:
            prefix = f"{old_id}/"
            for key in [k for k in self._steps if k.startswith(prefix)]:
                self._remove_step(key)

    def _remove_step(self, key: str) -> None:
        step = self._steps.pop(key)
        if step["state"] == "running":
            self._running_on.get(step["chef_id"], {}).pop(key, None)
            self._touch_chef(step["chef_id"])
        self._drop("steps", key)

    def _touch_chef(self, chef_id: str) -> None:
        if chef_id in self._chefs:
            self._touch("chefs", chef_id)

    def _step_event(self, event: Event, state: str) -> None:
        if not event.step_id:
            return
        key = f"{event.build_id}/{event.step_id}"
        if state == "recovered":  # it succeeded after attempts that ended without an answer
            step = self._steps.get(key)
            history = event.detail.get("history")
            if step is not None and isinstance(history, list):
                step["recovered"] = [str(h) for h in history]
                self._touch("steps", key)
            return
        if state == "log":  # streamed output of a running step: detail {"text": ...}
            step = self._steps.get(key)
            text = event.detail.get("text")
            if step is not None and isinstance(text, str):
                step["log"] = (step["log"] + text)[-MAX_LOG_CHARS:]
                self._touch("steps", key)
            return
        if state not in RANK:
            return
        build = self._build(event)
        step = self._steps.get(key)
        if step is None:
            self._seq += 1
            step = {"key": key, "build_id": event.build_id, "step_id": event.step_id, "state": None,
                    "chef_id": "", "seq": self._seq, "queued_at": None, "started_at": None, "finished_at": None,
                    "duration_s": None, "code": "", "message": "", "log": "", "outputs": [], "reason": "",
                    "candidates": [], "deps": [], "pass": 1, "attempt": 1, "recovered": [], "timeline": []}
            self._steps[key] = step
        current = step["state"]
        attempt = event.detail.get("attempt")
        if isinstance(attempt, int) and attempt > step["attempt"]:
            step["attempt"] = attempt
            restart = current is not None
        else:
            restart = current in TERMINAL and self._restarts(current, state, event)
        if restart:
            if not isinstance(attempt, int) or attempt <= 1:
                step["pass"] += 1  # a new pass of a cycle; a retry only bumps `attempt`
            if isinstance(attempt, int):
                step["attempt"] = attempt
            step.update(started_at=None, finished_at=None, duration_s=None, code="", message="")
        elif current is not None and RANK[state] < RANK[current]:
            self._merge_detail(step, state, event)  # late news (say, placement reasons) still counts
            self._touch("steps", key)
            return
        counts = build["counts"]
        if current is not None:
            counts[current] = counts.get(current, 0) - 1
        counts[state] = counts.get(state, 0) + 1
        # Which chef runs what: from events, so the page shows it the moment it changes.
        if current == "running" and step["chef_id"]:
            self._running_on.get(step["chef_id"], {}).pop(key, None)
            self._touch_chef(step["chef_id"])
        step["state"] = state
        self._merge_detail(step, state, event)
        if state == "running" and step["chef_id"]:
            self._running_on.setdefault(step["chef_id"], {})[key] = event.step_id
            self._touch_chef(step["chef_id"])
        step["timeline"].append([state, event.at, event.source])
        del step["timeline"][:-MAX_TIMELINE]
        self._touch("steps", key)

    @staticmethod
    def _restarts(current: str, state: str, event: Event) -> bool:
        """A finished step that starts again: a new pass of a cycle, or a retry after a failure."""
        if state in ("queued", "placed"):
            return event.source.startswith("majordomo")
        return state in ("pulling", "running") and current == "failed"

    def _merge_detail(self, step: dict[str, Any], state: str, event: Event) -> None:
        d = event.detail
        if event.chef_id and (state in ("placed", "pulling", "running", "done", "failed") or not step["chef_id"]):
            step["chef_id"] = event.chef_id
        if state == "queued":
            step["queued_at"] = step["queued_at"] or event.at
            if isinstance(d.get("deps"), list):
                step["deps"] = [str(x) for x in d["deps"]]
        elif state == "placed":
            step["reason"] = str(d.get("reason", ""))
            if isinstance(d.get("candidates"), list):
                step["candidates"] = d["candidates"]
        elif state in ("pulling", "running"):
            step["started_at"] = step["started_at"] or event.at
        if state in TERMINAL and RANK.get(step["state"] or "", 0) == 4:
            step["finished_at"] = event.at
            if isinstance(d.get("duration_s"), int | float):
                step["duration_s"] = float(d["duration_s"])
            elif step["started_at"]:
                step["duration_s"] = max(0.0, event.at - step["started_at"])
            step["code"] = str(d.get("code", ""))
            step["message"] = str(d.get("message", ""))
            if isinstance(d.get("log"), str):
                step["log"] = d["log"][-MAX_LOG_CHARS:]
            outputs = d.get("outputs")
            if isinstance(outputs, list):
                step["outputs"] = [o if isinstance(o, str) else str(o.get("path", "")) for o in outputs
                                   if isinstance(o, str | dict)]
                if state == "done" and step["chef_id"]:
                    self._produced(step, outputs, event)

    def _produced(self, step: dict[str, Any], outputs: list[Any], event: Event) -> None:
        """A chef that made an output owns it (a new run's bytes replace the old owners)."""
        for out in outputs:
            path = out if isinstance(out, str) else out.get("path") if isinstance(out, dict) else None
            if not path:
                continue
            record = {"path": path, "pods": [step["chef_id"]], "step_id": step["step_id"],
                      "build_id": step["build_id"], "at": event.at,
                      "digest": out.get("digest", "") if isinstance(out, dict) else "",
                      "size": out.get("size") if isinstance(out, dict) else None}
            self._set_owner(path, record)

    def _ownership_event(self, event: Event, *, owned: bool) -> None:
        d = event.detail
        path = str(d.get("path") or d.get("digest") or "")
        pod = str(d.get("pod") or event.chef_id or event.source)
        if not path:
            return
        record = self._owners.get(path) or {"path": path, "pods": [], "step_id": "", "build_id": event.build_id,
                                             "at": event.at, "digest": str(d.get("digest", "")),
                                             "size": d.get("size")}
        pods = [p for p in record["pods"] if p != pod] + ([pod] if owned else [])
        if not pods and not owned:
            if self._owners.pop(path, None) is not None:
                self._drop("owners", path)
            return
        self._set_owner(path, {**record, "pods": pods, "at": event.at})

    def _set_owner(self, path: str, record: dict[str, Any]) -> None:
        self._owners.pop(path, None)
        self._owners[path] = record  # most recent last, so trimming drops the stalest
        self._touch("owners", path)
        while len(self._owners) > MAX_OWNED_PATHS:
            old, _ = self._owners.popitem(last=False)
            self._drop("owners", old)
