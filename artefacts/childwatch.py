"""Wait for child processes through pidfds, not a thread per child.

Python 3.11's default asyncio child watcher starts a thread for every subprocess: ~0.3 ms of a
chef's ~2.5 ms per tiny step. Linux (5.3+) gives a process file descriptor that the event loop can
poll instead; Python 3.12 uses it by itself. Where pidfd_open is missing or refused (an old
kernel, a seccomp filter), the default stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import warnings


def use_pidfd_child_watcher() -> bool:
    """Install the pidfd child watcher before the loop starts; whether it is in use."""
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with contextlib.suppress(Exception):
            asyncio.set_child_watcher(asyncio.PidfdChildWatcher())
            return True
    return False


def signal_child(proc: asyncio.subprocess.Process, sig: int) -> None:
    """Send `sig` to an asyncio child that the event loop has not reaped yet.

    Not `Process.kill()` / `send_signal()`: they call `Popen.poll()` first, which reaps a child
    that has just exited on its own before the loop's child watcher does; the watcher then never
    reports it, and `await proc.wait()` hangs for ever (CPython gh-87744, gh-119710; a jail whose
    pid 1 exited as its socket closed hung a chef's stop so). While `returncode` is None nobody has
    reaped the pid, so it cannot have been reused: a zombie takes the signal harmlessly."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
