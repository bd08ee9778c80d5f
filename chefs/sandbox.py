"""Run a step's command isolated: bubblewrap where it exists, the plain task dir otherwise.

In the sandbox the step sees its task dir at /work (declared inputs read-only, the rest writable
for outputs), the system's tool directories read-only, no network, no other project file, and no
capabilities.

Inputs are kept read-only one of two ways:
- *By owner* (a chef running as root, the usual container case): the inputs' store inodes belong
  to `nobody` and are mode 0444. A step has no capabilities, and inside bwrap's user namespace
  `nobody` is not even mapped, so it can neither write them nor chmod them. This costs nothing per
  input.
- *By mount* (a chef that cannot give files away, i.e. not root): each input is a read-only bind
  mount. bwrap's binds cost ~0.05-0.1 ms each (it rereads the mount table per bind); in a jail
  its pid 1 makes them with two syscalls each (chefs/jail_init.py).
"""

from __future__ import annotations

import contextlib
import functools
import os
import pwd
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from chefs.command import command_argv

SANDBOX_ROOT = "/work"
_SYSTEM_DIRS = ("/usr", "/etc", "/opt", "/var/lib/texmf", "/var/cache/fontconfig")
JAIL_INIT = "/.jail-init.py"  # where a jail's pid 1 program is bound (chefs/jail.py runs it)
NOBODY = 65534  # the kernel's overflow id: what an unmapped owner looks like inside a user namespace


def bwrap_path() -> str | None:
    return shutil.which("bwrap")


def input_owner() -> tuple[int, int]:
    """(uid, gid) that protected inputs belong to: the system's `nobody`, else 65534."""
    try:
        entry = pwd.getpwnam("nobody")
        return entry.pw_uid, entry.pw_gid
    except KeyError:
        return NOBODY, NOBODY


def can_protect_by_owner(scratch_dir: Path) -> bool:
    """Whether this process may give a file to `nobody` (root with CAP_CHOWN): tried, not guessed."""
    if os.geteuid() != 0:
        return False
    scratch_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=scratch_dir) as probe:
        try:
            os.chown(probe.name, *input_owner())
        except OSError:  # EPERM without CAP_CHOWN; EINVAL where `nobody` is not mapped (a user namespace)
            return False
    return True


def _home_dirs() -> frozenset[str]:
    """People's home directories (root's, this process's, login users'), not system accounts'."""
    homes = {os.path.expanduser("~"), "/root"}
    with contextlib.suppress(OSError):
        homes.update(e.pw_dir for e in pwd.getpwall() if 1000 <= e.pw_uid < NOBODY)
    return frozenset(os.path.realpath(h) for h in homes if h and h != "/")


def _tool_root(directory: str, homes: frozenset[str]) -> str | None:
    """The dot-directory right under a home that holds `directory` (`~/.pyenv`, `~/.cargo`), if any.

    Only such tool installations are merged into one bind: never a home itself, and never a
    directory a project could live in (`~/thesis/.venv` is not right under a home)."""
    parent = os.path.dirname(directory)
    while parent != directory:
        if os.path.basename(directory).startswith(".") and parent in homes:
            return directory
        directory, parent = parent, os.path.dirname(parent)
    return None


@functools.cache
def _tool_dirs() -> tuple[str, ...]:
    """Read-only directories a step's tools may live in: the system's, PATH's, this Python's.

    PATH directories under one tool installation in a home (pyenv puts a dozen on PATH) become one
    bind of that installation: every bind costs ~0.1 ms of every step."""
    dirs: dict[str, None] = {d: None for d in _SYSTEM_DIRS if os.path.isdir(d)}

    def covered(path: str) -> bool:
        return any(path == s or path.startswith(s + "/") for s in dirs)

    extra = [*os.environ.get("PATH", "").split(os.pathsep), sys.base_prefix, sys.prefix]
    wanted = list(dict.fromkeys(d for d in extra if d and os.path.isdir(d)))
    homes = _home_dirs()
    reals = [os.path.realpath(d) for d in wanted]
    roots = {real: _tool_root(real, homes) for real in reals}
    counts = Counter(roots.values())
    for d, real in zip(wanted, reals, strict=True):
        root = roots[real]
        if root is not None and counts[root] > 1:
            real = root
        if covered(real) or real == "/" or real in homes:
            continue  # already bound, or too wide: a PATH entry never exposes a whole home
        dirs = {k: None for k in dirs if not k.startswith(real + "/")}  # a wider bind replaces narrower ones
        dirs[real] = None
        if real != d and not covered(d):
            dirs[d] = None  # PATH names it through a symlink: the step sees the same name
    return tuple(dirs)


def sandbox_argv(bwrap: str, task_dir: Path, read_only_binds: Iterable[str], command: str) -> list[str]:
    """bwrap's argv; `read_only_binds` are task-dir paths to protect by mount (empty when the
    inputs are protected by owner)."""
    argv = [bwrap, *_isolation(), "--bind", str(task_dir), SANDBOX_ROOT]
    for rel in read_only_binds:
        argv += ["--ro-bind", str(task_dir / rel), f"{SANDBOX_ROOT}/{rel}"]
    argv += ["--chdir", SANDBOX_ROOT, *command_argv(command)]
    return argv


def jail_argv(bwrap: str, work_dir: Path, program: Path, init: list[str], *,
              protect_by_mount: bool = False) -> list[str]:
    """bwrap's argv for a jail (chefs/jail.py): a step's sandbox around `work_dir`, with `init` as
    its pid 1 and `program` read-only at JAIL_INIT for it to run. /, /dev and /proc (its
    namespaces' sysctls) are read-only, so that steps leave nothing but what pid 1 empties (/tmp,
    /dev/shm, /dev/mqueue) and the work dir the chef empties.

    `protect_by_mount`: pid 1 is uid 0 of the jail's user namespace with CAP_SYS_ADMIN (to bind
    each step's inputs read-only) and CAP_SETFCAP (which the kernel asks of a process whose new
    user namespace maps its parent's uid 0); it runs each command in a user namespace of its own,
    without them (chefs/jail_init.py)."""
    powers = ["--uid", "0", "--gid", "0", "--cap-add", "CAP_SYS_ADMIN", "--cap-add", "CAP_SETFCAP"] \
        if protect_by_mount else []
    return [bwrap, "--as-pid-1", *_isolation(), *powers, "--bind", str(work_dir), SANDBOX_ROOT,
            "--mqueue", "/dev/mqueue", "--remount-ro", "/dev", "--tmpfs", "/dev/shm", "--remount-ro", "/proc",
            "--ro-bind", str(program), JAIL_INIT, "--remount-ro", "/", "--chdir", SANDBOX_ROOT, *init]


def _isolation() -> list[str]:
    """What every sandbox shares: new namespaces (no network), no capabilities, fresh /proc, /dev
    and /tmp, and the tool directories read-only."""
    argv = [
        "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
        "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
    ]
    for d in _tool_dirs():
        argv += ["--ro-bind", d, d]
    for link, target in (("/bin", "usr/bin"), ("/lib", "usr/lib"), ("/lib64", "usr/lib64"), ("/sbin", "usr/sbin")):
        if os.path.islink(link):
            argv += ["--symlink", target, link]
        elif os.path.isdir(link):
            argv += ["--ro-bind", link, link]
    return argv


def plain_argv(command: str) -> list[str]:
    return command_argv(command)
