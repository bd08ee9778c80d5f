"""What a chef adds to each step's command: `Cook.run` of one step against `sh -c` of the same command.

    python -m bench.sandbox [--inputs 1,100] [--runs 40]

For each input count N, one step `cat in* > out` over N small stored inputs is cooked R times by
`chefs.cooking.Cook` (task dir of hardlinks, the command, outputs hashed into the store, task dir
removed), in three ways:
- sandboxed in a jail, inputs read-only by owner (what a root chef does: one chown per inode, no
  mount per input, and a bwrap reused from step to step, chefs/jail.py; its start is in the median's
  sample, once);
- sandboxed by a bwrap per step, inputs read-only by owner (a root chef before jails);
- sandboxed, inputs read-only by a bind mount each (what a chef that cannot chown does);
- unsandboxed;
and the peer, `sh -c` of the same command in a directory holding the same files, is run R times
too, by `subprocess.run` from this process. Medians are printed with the ratio to the peer. The
by-owner row needs root (it is skipped, and says so, without).

No target: the figure says what isolation costs per step (issues 4 and 5 hinge on it).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from artefacts.store import Store
from chefs.cooking import Cook
from chefs.sandbox import bwrap_path, can_protect_by_owner
from protocol.errors import ErrorCode
from protocol.messages import InputRef, StepRequest

COMMAND = "cat in* > out"


async def cook_median(store: Store, tasks: Path, inputs: list[InputRef], runs: int, *, sandbox: bool,
                      by_owner: bool, jails: bool = False) -> float:
    cook = Cook(store, tasks, {}, sandbox=sandbox, protect_by_owner=by_owner, jails=jails)
    times = []
    for run in range(runs):
        step = StepRequest(step_id=f"bench-{run}", action_key="bench", kind="shell", command=COMMAND,
                           inputs=inputs, outputs=["out"], pods=[])
        started = time.perf_counter()
        outcome = await cook.run(step)
        times.append(time.perf_counter() - started)
        if outcome.code != ErrorCode.OK:
            raise SystemExit(f"the step failed: {outcome.message}\n{outcome.log}")
    await cook.drain()
    return statistics.median(times)


def shell_median(directory: Path, runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(["/bin/sh", "-c", COMMAND], cwd=directory, check=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


async def main(counts: list[int], runs: int) -> None:
    if bwrap_path() is None:
        raise SystemExit("bwrap is not installed: nothing to measure (deploy/setup-debian.sh installs it)")
    print(f"median of {runs} runs of `{COMMAND}`, ms; ratio to `sh -c` of the same command")
    print(f"{'inputs':>6}  {'way':40} {'ms':>7} {'vs sh':>7}")
    with tempfile.TemporaryDirectory(prefix="cp-bench-sandbox-") as scratch:
        base = Path(scratch)
        store = Store(base / "store")
        owner_ok = can_protect_by_owner(base / "probe")
        for count in counts:
            plain = base / f"plain-{count}"
            plain.mkdir()
            sources = []
            for i in range(count):
                (plain / f"in{i:04d}").write_text(f"input {i}\n")
                sources.append(plain / f"in{i:04d}")
            stored = await store.ingest(sources)
            inputs = [InputRef(path=f"in{i:04d}", digest=d, size=s) for i, (d, s) in enumerate(stored)]
            peer = shell_median(plain, runs)
            rows = [("sh -c (peer)", peer)]
            if owner_ok:
                rows.append(("Cook, jail, inputs read-only by owner",
                             await cook_median(store, base / "tasks", inputs, runs, sandbox=True, by_owner=True,
                                               jails=True)))
                rows.append(("Cook, bwrap per step, read-only by owner",
                             await cook_median(store, base / "tasks", inputs, runs, sandbox=True, by_owner=True)))
            rows.append(("Cook, bwrap, inputs read-only by mount",
                         await cook_median(store, base / "tasks", inputs, runs, sandbox=True, by_owner=False)))
            rows.append(("Cook, no sandbox",
                         await cook_median(store, base / "tasks", inputs, runs, sandbox=False, by_owner=False)))
            for way, seconds in rows:
                print(f"{count:>6}  {way:40} {seconds * 1e3:7.2f} {seconds / peer:6.1f}x")
            if not owner_ok:
                print(f"{count:>6}  (inputs by owner: not measured, it needs root)")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", default="1,100", help="comma-separated input counts (default 1,100)")
    parser.add_argument("--runs", type=int, default=40)
    args = parser.parse_args()
    asyncio.run(main([int(n) for n in args.inputs.split(",")], max(1, args.runs)))


if __name__ == "__main__":
    cli()
