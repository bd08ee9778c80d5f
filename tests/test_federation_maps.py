"""The federation shares one truth: the ownership map and the action cache in JetStream KV."""

from __future__ import annotations

import shutil
from pathlib import Path

from conftest import UPPER_JOIN, majordomo, write_project

RECIPE = UPPER_JOIN


def test_second_checkout_gets_cache_hits_and_only_pulls_outputs(tmp_path: Path, federation) -> None:
    first = write_project(tmp_path / "alice", RECIPE, {"src/a.txt": "a\n", "src/b.txt": "b\n"})
    second = tmp_path / "bob"
    shutil.copytree(first, second)
    args = ("build", "--json", "--nats", federation.url)
    ran = majordomo(first, *args, env=federation.env)
    assert ran.code == 0 and ran.summary["steps_run"] == 3, ran.stderr

    hit = majordomo(second, *args, env=federation.env)
    assert hit.code == 0, hit.stderr
    assert hit.summary["steps_run"] == 0 and hit.summary["steps_cached"] == 3
    # Only the final output travels (copied from the same-host chef's store: no SFTP).
    assert (hit.summary["files_pulled"], hit.summary["files_local"]) == (0, 1), hit.summary
    assert (second / "build/all.txt").read_text() == "A\nB\n"

    # Ownership is in the federation's map: the chef that made it, and both MajorDomos' pods.
    owners = majordomo(second, "owners", "build/all.txt", "--nats", federation.url)
    assert owners.code == 0, owners.stderr
    listed = {ln.strip() for ln in owners.stdout.splitlines()[1:]}
    assert listed & set(federation.ids)
    assert len({p for p in listed if p.startswith("majordomo-")}) == 2

    # A changed source in the second checkout is its own business: it runs, the first's is untouched.
    (second / "src/b.txt").write_text("bee\n")
    changed = majordomo(second, *args, env=federation.env)
    assert changed.summary["steps_run"] == 2
    assert (first / "build/all.txt").read_text() == "A\nB\n"
