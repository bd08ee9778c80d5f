"""`majordomo explain`: why each step would run, or that it is up to date — without running anything.

It also says where: each step's last placement (chef, reason, candidates with their scores), and,
given a view of an external federation (`--nats`), where a step that would run would go now.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from majordomo.engine import ABSENT, Build
from majordomo.placement import Decision, place, toolchain_from_chefs
from majordomo.recipes import Step
from protocol.kinds import step_tools
from protocol.messages import ChefInfo


@dataclass(frozen=True)
class FederationView:
    """What an external federation looks like now: its chefs, and owners keyed by digest."""

    chefs: Sequence[ChefInfo]
    owners: Mapping[str, frozenset[str]]


@dataclass
class Explanation:
    step: Step
    runs: bool
    reasons: list[str]
    placement: list[str] = field(default_factory=list)


def _short(digest: str) -> str:
    if digest.startswith(ABSENT) or not digest:
        return "absent"
    return digest.split(":", 1)[-1][:12] + ("+x" if digest.endswith("+x") else "")


async def explain(build: Build, view: FederationView | None = None) -> list[Explanation]:
    """Walk the graph as a build would, deciding with what is known now.

    A step downstream of one that will run cannot be decided before that output exists; it is
    reported as waiting on it (early cutoff may still spare it)."""
    units = await build.prepare()
    will_change: set[str] = set()  # outputs of steps that will run
    found: list[Explanation] = []
    for unit in units:
        cycle = build.graph.is_cycle(unit)
        for step in unit:
            waiting = sorted(p for p in (*step.inputs, *build.graph.discovered(step))
                             if p in will_change and p not in step.outputs)
            if waiting:
                found.append(Explanation(step, True, [f"input {p} will be rebuilt first (an identical result "
                                                      f"would spare this step)" for p in waiting[:5]],
                                         _placement(build, step, view, True)))
                will_change.update(step.outputs)
                continue
            reasons = await _reasons(build, step, view)
            if cycle and reasons:
                reasons.append(f"part of a cycle ({' <-> '.join(s.id for s in unit)}): runs until it settles")
            found.append(Explanation(step, bool(reasons), reasons or ["up to date"],
                                     _placement(build, step, view, bool(reasons))))
            if reasons:
                will_change.update(step.outputs)
    return found


async def _toolchain(build: Build, step: Step, view: FederationView | None) -> dict[str, str]:
    """The identities the step's key uses: the federation's chefs', or this machine's (embedded)."""
    tools = step_tools(step.kind, step.command, step.tools)
    if view is not None:
        return toolchain_from_chefs(step.kind, tools, view.chefs) or {}
    return await build._probe.identities(list(tools))


async def _reasons(build: Build, step: Step, view: FederationView | None) -> list[str]:
    toolchain = await _toolchain(build, step, view)
    inputs = build._inputs_of(step)
    key = build._key(step, inputs, toolchain)
    outputs = build.state.result(key)
    if outputs is not None:
        missing = [o.path for o in outputs if build.graph.is_final(o.path) and not build._workspace_has(o)]
        for out in outputs:
            build.digests[out.path] = out.digest
            build.sizes[out.path] = out.size
        return [f"output {p} is missing or was changed in the workspace (it will be fetched or rebuilt)"
                for p in missing]
    detail = build.state.key_detail(step.id)
    if detail is None:
        return ["never built"]
    reasons: list[str] = []
    if detail.command != step.command:
        reasons.append(f"command changed: {detail.command!r} -> {step.command!r}")
    for tool in sorted(set(detail.toolchain) | set(toolchain)):
        old, new = detail.toolchain.get(tool), toolchain.get(tool)
        if old != new:
            reasons.append(f"toolchain changed: {tool} {old or 'absent'} -> {new or 'absent'}")
    if dict(detail.env) != dict(step.env):
        reasons.append(f"environment changed: {dict(detail.env)} -> {dict(step.env)}")
    now = {p: build._marked(p, d) for p, d in inputs.items()}
    for path in sorted(set(detail.inputs) | set(now)):
        old, new = detail.inputs.get(path), now.get(path)
        if old == new:
            continue
        if old is None:
            reasons.append(f"new input {path}")
        elif new is None:
            reasons.append(f"input {path} is no longer read")
        else:
            reasons.append(f"input {path} changed: {_short(old)} -> {_short(new)}")
    return reasons or ["no recorded result for its current inputs"]


def _placement(build: Build, step: Step, view: FederationView | None, runs: bool) -> list[str]:
    lines: list[str] = []
    if runs and view is not None:
        lines.append("would go to " + _describe(_predict(build, step, view)))
    last = build.state.placement(step.id)
    if last:
        recorded = json.loads(last)
        lines.append(f"last placed on {recorded['chef'] or 'no chef'}: {recorded['reason']}"
                     + _candidates(recorded["candidates"]))
    return lines


def _predict(build: Build, step: Step, view: FederationView) -> Decision:
    """Where the step would be placed now, by the build's own rule, from the inputs known now (an
    input that an earlier step will make has no digest yet, so it counts for no chef)."""
    tools = step_tools(step.kind, step.command, step.tools)
    toolchain = toolchain_from_chefs(step.kind, tools, view.chefs) or dict.fromkeys(tools, "?")
    inputs = [(d, build.sizes.get(p, 0)) for p, d in build._inputs_of(step).items()
              if d and not d.startswith(ABSENT)]
    return place(step.kind, toolchain, inputs, view.chefs, view.owners, {})


def _describe(decision: Decision) -> str:
    if decision.chef is None:
        return f"no chef: {decision.reason}"
    detail = decision.as_detail()
    return f"{decision.chef.id}: {decision.reason}" + _candidates(detail["candidates"])  # type: ignore[arg-type]


def _candidates(candidates: list[dict]) -> str:
    if len(candidates) < 2:
        return ""
    return " (candidates: " + ", ".join(
        f"{c['chef']} owns {c['owned_bytes']} B, load {c['load']:g}" for c in candidates[:5]) + ")"
