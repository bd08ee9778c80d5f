"""A module imported when it is first used, for heavy imports that most processes never need.

asyncssh costs ~90 ms of CPU to import (and asks `ldconfig`, `gcc` and `ld` for liboqs on Debian).
Chefs and the MajorDomo of the embedded federation reach each other's files on the same host
without SFTP, so they import it only when a peer really connects or a pull really needs SFTP.

    if TYPE_CHECKING:
        import asyncssh
    else:
        asyncssh = LazyModule("asyncssh")
"""

from __future__ import annotations

import importlib
from typing import Any


class LazyModule:
    """Stands for the module `name`; the first attribute read imports it (then reads are plain)."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        value = getattr(importlib.import_module(self._name), attr)
        setattr(self, attr, value)  # the next read finds it without __getattr__
        return value
