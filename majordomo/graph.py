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

    def last_key(self, step: Step) -> str | None:
        """The action key of the step's last successful run, in an earlier build."""
        record = self._records.get(step.id)
        return record.action_key if record else None

    def discovered(self, step: Step) -> tuple[str, ...]:
        return self._discovered.get(step.id, ())

    def accept_discovered(self, step: Step, found: Iterable[str]) -> tuple[str, ...]:
        """Keep the `may_read` files the step reported reading: from now on they are in its key.

        Declared inputs are in the key anyway; in the sandbox nothing else can be read."""
        allowed = set(step.may_read)
        kept = tuple(sorted({p for p in found if p in allowed}))
        self._discovered[step.id] = kept
        return kept

    def note_result(self, step: Step, key: str) -> None:
        """The step's newest recorded key (a graph carried to the next build must not lag the state)."""
        self._records[step.id] = StepRecord(key, self.discovered(step))

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
            for path in (*step.inputs, *step.may_read, *self.discovered(step)):
                producer = self._producer.get(path)
                if producer is not None and producer.id != step.id:
                    seen.setdefault(producer.id, producer)
            found = self._deps[step.id] = list(seen.values())
        return found

    def closure(self, roots: list[Step]) -> list[Step]:
        """Every step the roots need, each once."""
        seen: dict[str, Step] = {}
        stack = list(roots)
        while stack:
            step = stack.pop()
            if step.id in seen:
                continue
            seen[step.id] = step
            stack.extend(d for d in self.deps(step) if d.id not in seen)
        return list(seen.values())

    def units(self, roots: list[Step]) -> list[list[Step]]:
        """The needed steps grouped into strongly connected components, dependencies first.

        A component of one step that does not read its own output is a plain step; any other
        component (LaTeX and BibTeX feeding each other through .aux and .bbl, or a step that
        reads its own .aux) is a cycle, run to a fixpoint by the engine. Members keep the order
        of the recipe file, so the step that can start from nothing is written first.
        Tarjan's algorithm, iterative; it emits components in reverse topological order of the
        condensation, i.e. dependencies first.
        """
        steps = self.closure(roots)
        position = {s.id: n for n, s in enumerate(self.project.steps)}
        index: dict[str, int] = {}
        low: dict[str, int] = {}
        on_stack: set[str] = set()
        stack: list[Step] = []
        out: list[list[Step]] = []
        counter = 0
        for root in sorted(steps, key=lambda s: position[s.id]):
            if root.id in index:
                continue
            work: list[tuple[Step, int]] = [(root, 0)]
            while work:
                step, i = work[-1]
                if i == 0:
                    index[step.id] = low[step.id] = counter
                    counter += 1
                    stack.append(step)
                    on_stack.add(step.id)
                deps = self.deps(step)
                if i < len(deps):
                    work[-1] = (step, i + 1)
                    dep = deps[i]
                    if dep.id not in index:
                        work.append((dep, 0))
                    elif dep.id in on_stack:
                        low[step.id] = min(low[step.id], index[dep.id])
                    continue
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent.id] = min(low[parent.id], low[step.id])
                if low[step.id] == index[step.id]:
                    component: list[Step] = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member.id)
                        component.append(member)
                        if member.id == step.id:
                            break
                    out.append(sorted(component, key=lambda s: position[s.id]))
        return out

    def is_cycle(self, unit: list[Step]) -> bool:
        return len(unit) > 1 or bool(set(unit[0].inputs) & set(unit[0].outputs))

    def unit_deps(self, unit: list[Step]) -> list[Step]:
        members = {s.id for s in unit}
        seen: dict[str, Step] = {}
        for step in unit:
            for dep in self.deps(step):
                if dep.id not in members:
                    seen.setdefault(dep.id, dep)
        return list(seen.values())

    def sources_of(self, steps: list[Step]) -> list[str]:
        """Files the steps read that no step makes (declared and discovered)."""
        found: dict[str, None] = {}
        for step in steps:
            for path in (*step.inputs, *step.may_read, *self.discovered(step)):
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
