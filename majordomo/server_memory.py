"""What the resident build server keeps between builds of its project (majordomo/build_server.py).

The loaded project (reused while the recipe file and the file list are unchanged), one open
connection to the state database, and the last successful build's carry-over
(majordomo/carryover.py). Each is checked before use and dropped at the first doubt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from majordomo.carryover import Carryover
from majordomo.state import State
from majordomo.tree_watch import TreeWatch


class ServerMemory:
    def __init__(self) -> None:
        self.projects: dict[Any, Any] = {}  # the `_load` memo: (root, file, vars) -> (text, files, project)
        self.carry: Carryover | None = None
        # step id -> seconds its last run took: what orders the next build's steps (majordomo/schedule.py).
        # Kept whatever happens to the state: a hint, never a fact a build relies on.
        self.durations: dict[str, float] = {}
        self.tree: TreeWatch | None = None  # the build server's watch of the project's directories
        # With no carry-over: the stamp on disk that vouched for everything, and its file identity.
        self.disk_stamp: tuple[tuple[object, ...], tuple[int, int, int]] | None = None
        self._state: State | None = None
        self._version = -1  # the state's data_version when we last wrote or checked it

    def state(self, root: Path) -> tuple[State, bool]:
        """The project's state, and whether it is as we left it (no other process wrote it since,
        and it is still the file at its path). If not, the memories of it are forgotten."""
        state = self._state
        if state is not None and (state.dir.parent != root or not state.is_current_file()):
            state.close()
            state = None
        if state is None:
            state = self._state = State(root)
            self._version = -1
        version = state.data_version()
        same = version == self._version
        if not same:
            state.forget_memos()
            self.carry = None
        self._version = version
        return state, same

    def still_ours(self) -> bool:
        """No other process wrote the state since `state()` looked (our own commits do not move
        data_version): what a build just learnt may be carried over."""
        return self._state is not None and self._state.data_version() == self._version

    def close(self) -> None:
        if self.tree is not None:
            self.tree.close()
        if self._state is not None:
            self._state.close()
            self._state = None
        self.carry = None
        self.disk_stamp = None
