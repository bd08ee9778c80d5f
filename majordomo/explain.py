"""`majordomo explain`: why each step would run, or that it is up to date — without running anything."""

from __future__ import annotations

from dataclasses import dataclass

from majordomo.engine import ABSENT, Build
from majordomo.recipes import Step
from protocol.kinds import step_tools


@dataclass
class Explanation:
    step: Step
    runs: bool
    reasons: list[str]


def _short(digest: str) -> str:
    if digest.startswith(ABSENT) or not digest:
        return "absent"
    return digest.split(":", 1)[-1][:12] + ("+x" if digest.endswith("+x") else "")


async def explain(build: Build) -> list[Explanation]:
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
                                                      f"would spare this step)" for p in waiting[:5]]))
                will_change.update(step.outputs)
                continue
            reasons = await _reasons(build, step)
            if cycle and reasons:
                reasons.append(f"part of a cycle ({' <-> '.join(s.id for s in unit)}): runs until it settles")
            found.append(Explanation(step, bool(reasons), reasons or ["up to date"]))
            if reasons:
                will_change.update(step.outputs)
    return found


async def _reasons(build: Build, step: Step) -> list[str]:
    tools = step_tools(step.kind, step.command, step.tools)
    toolchain = await build._probe.identities(list(tools))
    inputs = build._inputs_of(step)
    key = build._key(step, inputs, toolchain)
    outputs = build.state.result(key)
    if outputs is not None:
        missing = [o.path for o in outputs if build.graph.is_final(o.path) and not build._workspace_has(o)]
        for out in outputs:
            build.digests[out.path] = out.digest
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
