"""The step graph of one build: which steps are wanted, in what order, and what each depends on."""

from __future__ import annotations

from collections.abc import Iterable

from majordomo.recipes import Project, Step
from majordomo.state import StepRecord


class GraphError(Exception):
    """A target that names nothing, or a dependency cycle the engine cannot run."""


class BuildGraph:
    def __init__(self, project: Project, records: dict[str, StepRecord]) -> None:
        self.project = project
        self._records = records
        self._producer: dict[str, Step] = {}
        for step in project.steps:
            for out in step.outputs:
                self._producer[out] = step
        self._by_id = {s.id: s for s in project.steps}
        self._by_recipe: dict[str, list[Step]] = {}
        for step in project.steps:
            self._by_recipe.setdefault(step.recipe, []).append(step)
        self._consumed: set[str] = {p for s in project.steps for p in s.inputs}
        self._targets: set[str] = set()
        self._discovered: dict[str, tuple[str, ...]] = {
            sid: tuple(p for p in rec.discovered) for sid, rec in records.items() if sid in self._by_id
        }
        self._deps: dict[str, list[Step]] = {}

    def producer(self, path: str) -> Step | None:
        return self._producer.get(path)

    def discovered(self, step: Step) -> tuple[str, ...]:
        return self._discovered.get(step.id, ())

    def accept_discovered(self, step: Step, found: Iterable[str]) -> tuple[str, ...]:
        """Keep discoveries beyond the declared inputs (the key already covers those)."""
        declared = set(step.inputs) | set(step.outputs)
        kept = tuple(sorted({p for p in found if p not in declared}))
        self._discovered[step.id] = kept
        return kept

    def select(self, targets: list[str]) -> list[Step]:
        """The steps the targets name (output paths, recipe names or step ids); all final ones if none."""
        if not targets:
            targets = list(self.project.defaults)
        if not targets:
            return list(self.project.steps)
        chosen: list[Step] = []
        for target in targets:
            clean = target.rstrip("/")
            if clean in self._producer:
                chosen.append(self._producer[clean])
                self._targets.add(clean)
            elif clean in self._by_id:
                chosen.append(self._by_id[clean])
            elif clean in self._by_recipe:
                chosen.extend(self._by_recipe[clean])
            else:
                under = [s for p, s in self._producer.items() if p.startswith(clean + "/")]
                if not under:
                    raise GraphError(f"unknown target {target!r}: not an output, recipe or step of "
                                     f"{self.project.recipe_file.name}")
                chosen.extend(under)
        for step in chosen:
            self._targets.update(step.outputs)
        return chosen

    def deps(self, step: Step) -> list[Step]:
        found = self._deps.get(step.id)
        if found is None:
            seen: dict[str, Step] = {}
            for path in (*step.inputs, *self.discovered(step)):
                producer = self._producer.get(path)
                if producer is not None and producer.id != step.id:
                    seen.setdefault(producer.id, producer)
            found = self._deps[step.id] = list(seen.values())
        return found

    def order(self, roots: list[Step]) -> list[Step]:
        """Every step the roots need, dependencies first (iterative DFS; cycles are named)."""
        order: list[Step] = []
        state: dict[str, int] = {}  # 1: on the stack, 2: done
        for root in roots:
            if state.get(root.id) == 2:
                continue
            stack: list[tuple[Step, int]] = [(root, 0)]
            state[root.id] = 1
            while stack:
                step, idx = stack[-1]
                deps = self.deps(step)
                if idx < len(deps):
                    stack[-1] = (step, idx + 1)
                    dep = deps[idx]
                    mark = state.get(dep.id)
                    if mark == 1:
                        cycle = [s.id for s, _ in stack[[s.id for s, _ in stack].index(dep.id):]]
                        raise GraphError("dependency cycle: " + " -> ".join([*cycle, dep.id]))
                    if mark is None:
                        state[dep.id] = 1
                        stack.append((dep, 0))
                else:
                    stack.pop()
                    state[step.id] = 2
                    order.append(step)
        return order

    def sources_of(self, steps: list[Step]) -> list[str]:
        """Files the steps read that no step makes (declared and discovered)."""
        found: dict[str, None] = {}
        for step in steps:
            for path in (*step.inputs, *self.discovered(step)):
                if path not in self._producer:
                    found.setdefault(path, None)
        return list(found)

    def is_declared_source(self, path: str, steps: list[Step]) -> bool:
        return any(path in s.inputs for s in steps)

    def users_of(self, path: str, steps: list[Step]) -> list[str]:
        return [s.id for s in steps if path in s.inputs]

    def is_final(self, path: str) -> bool:
        """Outputs that belong in the workspace: targets, nobody's input, or from a `keep` recipe."""
        if path in self._targets or path not in self._consumed:
            return True
        producer = self._producer.get(path)
        return bool(producer and producer.keep)
