"""What one build in the resident build server leaves for the next: rebuild from what changed.

A build's fixed cost is reading the project's whole record (steps, stat cache, results), building
the graph and computing an action key per step: ~0.3 s for 10,000 steps, for an edit that
concerns three. The resident build server keeps, after a successful build, the graph, the order,
every artefact's digest and the no-op stamp it wrote (majordomo/noop.py). The next request
compares that stamp's stats with the disk, as a no-op check does, and gets the files that
changed; if nothing structural changed (recipe file, directories, tools, arguments) and no other
process wrote the state database since (SQLite's `PRAGMA data_version`, majordomo/server_memory.py),
the build visits only
the steps downstream of those files. Everything else was up to date after the last build and
nothing it depends on moved, so it still is. Early cutoff still applies inside that set: a step
whose outputs come out the same leaves its dependants' keys, and so their results, unchanged.

Any doubt sends the build down the full path, which rebuilds this memory from the disk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from majordomo.graph import BuildGraph
from majordomo.noop import stamp_index
from majordomo.recipes import Project, Step
from protocol.messages import OutputRef

if TYPE_CHECKING:
    from majordomo.engine import Build


@dataclass
class ArtefactFacts:
    """What a build knows of every artefact path, handed from one build to the next."""

    digests: dict[str, str] = field(default_factory=dict)  # path -> digest
    sizes: dict[str, int] = field(default_factory=dict)
    executable: set[str] = field(default_factory=set)
    cutoff: dict[str, str] = field(default_factory=dict)  # path -> normalised digest
    vouched: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)  # path -> stat at digest time
    latest: dict[str, tuple[list[OutputRef], str | None]] = field(default_factory=dict)  # step id -> outputs
    served: dict[str, Path] = field(default_factory=dict)  # digest -> workspace file this pod serves
    serving: dict[Path, str] = field(default_factory=dict)  # workspace file -> the digest it serves
    # digest -> pods known to hold it: the state's owners table as far as it was read, kept current
    owners: dict[str, set[str]] | None = None


@dataclass(eq=False)
class Carryover:
    """A successful build's memory, valid while the project, its files and its state are as it left them."""

    root: Path
    args_key: str
    project: Project
    graph: BuildGraph
    units: list[list[Step]]
    facts: ArtefactFacts
    stamp: tuple[object, ...] | None = None  # the no-op stamp written after the build; None: not yet or none
    stamp_id: tuple[int, int, int] | None = None  # that stamp file's inode, mtime_ns and size
    _readers: dict[str, list[Step]] | None = None
    _dependants: dict[str, list[Step]] | None = None
    _unit_of: dict[str, int] | None = None  # step id -> position of its unit in `units`
    _stamp_index: dict[str, int] | None = None  # the stamp's path -> position

    @classmethod
    def of(cls, build: Build, args_key: str, previous: Carryover | None) -> Carryover:
        """What a successful `build` leaves for the next one; a build carried over from `previous`
        has the same graph, so it keeps its reverse index."""
        kept = cls(build.root, args_key, build.project, build.graph, build.units, build.facts())
        if previous is not None:
            kept.inherit_index(previous)
        return kept

    def stamp_index(self) -> dict[str, int] | None:
        """Each file of the stamp -> its position in it (noop.refresh_stamp patches by position)."""
        if self._stamp_index is None and self.stamp is not None:
            self._stamp_index = stamp_index(self.stamp)
        return self._stamp_index

    def set_stamp_index(self, index: dict[str, int] | None) -> None:
        """A refreshed stamp keeps its files in place: the previous index still holds."""
        self._stamp_index = index

    @property
    def steps(self) -> int:
        self.index()
        assert self._unit_of is not None
        return len(self._unit_of)

    def units_of(self, step_ids: set[str]) -> list[list[Step]]:
        """The units holding these steps, in build order: O(steps asked), not O(units)."""
        self.index()
        assert self._unit_of is not None
        return [self.units[i] for i in sorted({self._unit_of[s] for s in step_ids})]

    def readers(self, path: str) -> list[Step]:
        """Steps of this build that read `path` (declared, may_read or discovered)."""
        self.index()
        assert self._readers is not None
        return self._readers.get(path, [])

    def downstream(self, dirty: list[Step]) -> set[str]:
        """Ids of the dirty steps and of every step that depends on one of them, transitively."""
        self.index()
        assert self._dependants is not None
        seen: set[str] = set()
        stack = list(dirty)
        while stack:
            step = stack.pop()
            if step.id in seen:
                continue
            seen.add(step.id)
            stack.extend(d for d in self._dependants.get(step.id, ()) if d.id not in seen)
        return seen

    def inherit_index(self, previous: Carryover) -> None:
        """Reuse the previous carry-over's reverse index: same graph, same edges."""
        if previous.graph is self.graph and previous.units is self.units:
            self._readers, self._dependants = previous._readers, previous._dependants
            self._unit_of = previous._unit_of

    def index(self) -> None:
        """Build the reverse index (who reads a path, who depends on a step): once per graph; and
        the stamp's, once per stamp."""
        self.stamp_index()
        if self._readers is not None and self._dependants is not None and self._unit_of is not None:
            return
        readers: dict[str, list[Step]] = {}
        dependants: dict[str, list[Step]] = {}
        unit_of: dict[str, int] = {}
        for position, unit in enumerate(self.units):
            for step in unit:
                unit_of[step.id] = position
                for path in {*step.inputs, *step.may_read, *self.graph.discovered(step)}:
                    readers.setdefault(path, []).append(step)
                for dep in self.graph.deps(step):
                    dependants.setdefault(dep.id, []).append(step)
        self._readers, self._dependants, self._unit_of = readers, dependants, unit_of
