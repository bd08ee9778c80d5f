"""Where a step runs: capable chefs, then the one owning the most input bytes, then the least loaded.

A pure function over in-memory maps, so a decision costs microseconds and can be published
with its reason (candidates and scores) for anyone watching.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from protocol.messages import ChefInfo


@dataclass(frozen=True, slots=True)
class Candidate:
    chef: str
    owned_bytes: int
    load: float  # running steps per slot


@dataclass(frozen=True, slots=True)
class Decision:
    chef: ChefInfo | None
    reason: str
    candidates: tuple[Candidate, ...] = field(default_factory=tuple)

    def as_detail(self) -> dict[str, object]:
        return {
            "reason": self.reason,
            "candidates": [{"chef": c.chef, "owned_bytes": c.owned_bytes, "load": round(c.load, 3)}
                           for c in self.candidates],
        }


def place(
    kind: str,
    toolchain: Mapping[str, str],
    inputs: Sequence[tuple[str, int]],  # (digest, size) of every input the task dir needs
    chefs: Sequence[ChefInfo],
    owners: Mapping[str, set[str] | frozenset[str]],
    load: Mapping[str, int],
) -> Decision:
    capable = [c for c in chefs if kind in c.kinds and all(c.tools.get(t) == v for t, v in toolchain.items())]
    if not capable:
        return Decision(None, f"no chef cooks kind {kind!r} with tools {', '.join(sorted(toolchain)) or '-'}")
    owned: dict[str, int] = {c.id: 0 for c in capable}
    for digest, size in inputs:
        for pod in owners.get(digest, ()):
            if pod in owned:
                owned[pod] += size
    candidates = tuple(sorted(
        (Candidate(c.id, owned[c.id], load.get(c.id, 0) / max(1, c.slots)) for c in capable),
        key=lambda c: (-c.owned_bytes, c.load, c.chef),
    ))
    best = candidates[0]
    if len(candidates) == 1:
        reason = "the only capable chef"
    elif best.owned_bytes > candidates[1].owned_bytes:
        reason = f"owns the most input bytes ({best.owned_bytes})"
    elif best.load < candidates[1].load:
        reason = "least loaded among equal owners"
    else:
        reason = "tie on ownership and load: first by id"
    chosen = next(c for c in capable if c.id == best.chef)
    return Decision(chosen, reason, candidates)


def toolchain_from_chefs(kind: str, tools: Sequence[str], chefs: Sequence[ChefInfo]) -> dict[str, str] | None:
    """The tool identities a step's key uses in an external federation: those of the first chef (by
    id) that cooks the kind and has every tool; None when no chef can."""
    for chef in sorted(chefs, key=lambda c: c.id):
        if kind in chef.kinds and all(t in chef.tools for t in tools):
            return {t: chef.tools[t] for t in tools}
    return None
