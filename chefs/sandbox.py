"""Run a step's command isolated: bubblewrap where it exists, the plain task dir otherwise.

In the sandbox the step sees its task dir at /work (declared inputs bound read-only, the rest
writable for outputs), the system's tool directories read-only, no network, no other project
file, and no capabilities (so even root cannot write through a 0444 input).
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path

SANDBOX_ROOT = "/work"
_SYSTEM_DIRS = ("/usr", "/etc", "/opt", "/var/lib/texmf", "/var/cache/fontconfig")


def bwrap_path() -> str | None:
    return shutil.which("bwrap")


@functools.cache
def _tool_dirs() -> tuple[str, ...]:
    """Read-only directories a step's tools may live in: the system's, PATH's, this Python's."""
    dirs: dict[str, None] = {d: None for d in _SYSTEM_DIRS if os.path.isdir(d)}
    extra = [*os.environ.get("PATH", "").split(os.pathsep), sys.base_prefix, sys.prefix]
    for d in extra:
        if not d or not os.path.isdir(d):
            continue
        real = os.path.realpath(d)
        if not any(real == s or real.startswith(s + "/") for s in dirs):
            dirs[real] = None
            if real != d and not any(d == s or d.startswith(s + "/") for s in dirs):
                dirs[d] = None
    return tuple(dirs)


def sandbox_argv(bwrap: str, task_dir: Path, inputs: Iterable[str], command: str) -> list[str]:
    argv = [
        bwrap, "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
        "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
    ]
    for d in _tool_dirs():
        argv += ["--ro-bind", d, d]
    for link, target in (("/bin", "usr/bin"), ("/lib", "usr/lib"), ("/lib64", "usr/lib64"), ("/sbin", "usr/sbin")):
        if os.path.islink(link):
            argv += ["--symlink", target, link]
        elif os.path.isdir(link):
            argv += ["--ro-bind", link, link]
    argv += ["--bind", str(task_dir), SANDBOX_ROOT]
    for rel in inputs:
        argv += ["--ro-bind", str(task_dir / rel), f"{SANDBOX_ROOT}/{rel}"]
    argv += ["--chdir", SANDBOX_ROOT, "/bin/sh", "-c", command]
    return argv


def plain_argv(command: str) -> list[str]:
    return ["/bin/sh", "-c", command]
