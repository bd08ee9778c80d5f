"""Differential test of the promise: an incremental build gives byte for byte what a clean build gives,
and runs exactly the steps whose action key has no recorded result.

For each random project (see `differential_gen.py`: pattern rules, chains, diamonds, globs, fan-out,
multi-output steps, `keep`, commands that often lose information so early cutoff happens), build it,
then apply random edits: modify a source, touch it, chmod it, delete a source a glob or a pattern
reads, add one a glob or pattern sees (or none does), change a command (to a harmless variant or
another one), add a comment to the recipe file, add a [[step]] that reads a final output, damage a
final output, and revert to an earlier state. A round is one to three edits, then:
- the project is built incrementally (its own `.majordomo/` from the previous builds), and
- a fresh copy holding only the recipe file and the sources is built from scratch, with every output
  named as a target so that intermediates are fetched too and can be compared;
both against one nats-server shared by the whole module, with two real chef processes in each of two
federations: `cp` for incremental builds and `clean` for clean builds, whose shared action cache is
emptied before each clean build, so a clean build can reuse bytes (stores are content-addressed) but
never a recorded result. A few more projects (CP_DIFF_EMBEDDED_ROUNDS, default 15 rounds) build
incrementally on the embedded federation instead, the only path with the no-op stamp.

Checked, per round:
1. the clean build ran every step, and every output's bytes equal the model's (which expands the
   recipes and runs each command with `sh` itself, independently of the engine);
2. every final output of the incremental build equals the clean build's, byte for byte, and the
   workspace holds nothing stale: outputs of steps that no longer exist are gone (the engine deletes
   them), and an output that is no longer final is gone or holds its current bytes;
3. minimality: the steps the incremental build ran (parsed from its `[i/n] ran <id> on <chef>`
   lines) are exactly the steps whose model key (expanded command, output names, path + sha256 +
   executable bit of every input, intermediates taken from the clean build's actual bytes) was never
   seen before: by this project on the embedded federation, by any project of the module on `cp`
   (its action cache is shared). Results persist under their action key, so a revert reruns nothing,
   and early cutoff follows from comparing the bytes.

"200 edit sequences" is read as 200 edit+verify rounds: CP_DIFF_ROUNDS (default 200) rounds, in
projects of CP_DIFF_EDITS (default 5) rounds each. Project k uses seed CP_DIFF_SEED + k (default: a
random base, printed on failure); a failure names the seed and the command line that replays it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import subprocess
import textwrap
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import Federation, Run, majordomo, start_chef, stop_procs, write_project
from differential_gen import (
    ModelKey,
    ModelRunner,
    ModelStep,
    Snapshot,
    Spec,
    apply_edits,
    files_under,
    final_outputs,
    generate,
    model_key,
    remove_tree,
)

ROUNDS = int(os.environ.get("CP_DIFF_ROUNDS", "200"))
EDITS = max(1, int(os.environ.get("CP_DIFF_EDITS", "5")))
BASE_SEED = (int(os.environ["CP_DIFF_SEED"]) if os.environ.get("CP_DIFF_SEED")
             else random.SystemRandom().randrange(1, 10**9))
PROJECTS = max(1, -(-ROUNDS // EDITS))
# Rounds whose incremental builds use the embedded federation instead (`majordomo build` without
# --nats: it starts its own nats-server and chefs when a step must run, about 2 s, and it alone has
# the no-op stamp fast path, which decides "nothing changed" from file stats before loading anything).
EMBEDDED_ROUNDS = int(os.environ.get("CP_DIFF_EMBEDDED_ROUNDS", "15"))
BUILD_TIMEOUT_S = 60  # a round's build takes a few seconds; a hang fails the round
RAN_RE = re.compile(r"^\[\s*\d+/\d+\] ran\s+(.+?) on (\S+) \(", re.MULTILINE)

STATS: Counter[str] = Counter()  # what the rounds exercised, printed at the end (pytest -s)
CLEAN_FEDERATION = "clean"
# With --nats, a result any MajorDomo recorded in the federation's shared action cache counts as
# cached: so the keys every incremental build of this module has seen are one history.
FEDERATION_KEYS: set[ModelKey] = set()


@dataclass
class DiffFederation(Federation):
    """Two federations on one nats-server: `cp` for incremental builds, `clean` for clean builds."""

    reset_clean_cache: Callable[[], None] = lambda: None


@pytest.fixture(scope="module")
def shared_federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DiffFederation]:
    """One nats-server for the whole module, with two chefs (two slots each) in each federation."""
    import nats
    import nats.js.errors

    from artefacts.keys import load_or_create_key
    from artefacts.natsutil import EmbeddedNats
    from protocol import subjects

    base = tmp_path_factory.mktemp("difffed")
    server = EmbeddedNats(base / "nats")
    loop = asyncio.new_event_loop()
    url = loop.run_until_complete(server.start())
    nc = loop.run_until_complete(nats.connect(url, name="test-differential"))
    key = base / "fedkey" / "federation"
    key.parent.mkdir()
    load_or_create_key(key)
    homes = base / "chefs"
    homes.mkdir()

    def reset_clean_cache() -> None:
        """Forget every result the clean federation's shared action cache holds."""
        with contextlib.suppress(nats.js.errors.NotFoundError):
            loop.run_until_complete(nc.jetstream().delete_key_value(subjects.actions_bucket(CLEAN_FEDERATION)))

    procs = []
    try:
        for chef_id in ("diff-chef-a", "diff-chef-b"):
            procs.append(start_chef(url, homes / chef_id, chef_id, key, "--slots", "2"))
        for chef_id in ("clean-chef-a", "clean-chef-b"):
            procs.append(start_chef(url, homes / chef_id, chef_id, key, "--slots", "2",
                                    "--federation", CLEAN_FEDERATION))
        yield DiffFederation(url, key, procs, ["diff-chef-a", "diff-chef-b"], reset_clean_cache)
    finally:
        stop_procs(procs)
        loop.run_until_complete(nc.close())
        loop.run_until_complete(server.stop())
        loop.close()
        print(f"\ndifferential: base seed {BASE_SEED}, {dict(STATS)}")


@dataclass
class Differential:
    seed: int
    edits: int
    tmp: Path
    fed: DiffFederation
    embedded: bool = False  # incremental builds on the embedded federation (no --nats)
    history: list[str] = field(default_factory=list)
    ever_outputs: set[str] = field(default_factory=set)
    runner: ModelRunner = field(default_factory=ModelRunner)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.spec: Spec = generate(self.rng)
        self.project = self.tmp / "project"
        self.spec.write_clean_copy(self.project)
        self.snapshots: list[Snapshot] = [self.spec.snapshot()]
        # Keys with a recorded result this project's builds can use: the embedded federation has no
        # shared cache, so only the project's own; the external one shares every MajorDomo's.
        self.seen_keys: set[ModelKey] = set() if self.embedded else FEDERATION_KEYS

    def build_incremental(self) -> Run:
        if self.embedded:
            return self._majordomo(self.project, "--json", env={"MAJORDOMO_NATS": ""})
        return self._majordomo(self.project, "--json", "--nats", self.fed.url, env=self.fed.env)

    def build_clean(self, root: Path, targets: list[str]) -> Run:
        """A build from nothing: a fresh state database and an emptied shared action cache."""
        return self._majordomo(root, "--json", "--nats", self.fed.url, "--federation", CLEAN_FEDERATION,
                               *targets, env=self.fed.env)

    @staticmethod
    def _majordomo(root: Path, *args: str, env: dict[str, str]) -> Run:
        """`majordomo build`; one that hangs is a failing build (reported with the seed), not a crash."""
        try:
            return majordomo(root, "build", *args, env=env, timeout=BUILD_TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:
            err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
            return Run(-9, "{}", f"{err}\n(killed: the build did not finish in {BUILD_TIMEOUT_S} s)")

    def run(self) -> None:
        steps = self.spec.steps()
        first = self.build_incremental()
        model = self.runner.run(steps, self.spec.sources, self.spec.executable)
        files = {**self.spec.sources, **model}
        self.check_ok(first, "first build", first)
        expected = {s.id for s in steps if model_key(s, files, self.spec.executable) not in self.seen_keys}
        self.expect_equal(self.ran(first), expected, "the first build must run every step no build has run", first)
        for path in sorted(final_outputs(steps)):
            self.expect_bytes(self.project / path, model[path], path, "first build vs model", first)
        self.remember(steps, files)

        for round_no in range(1, self.edits + 1):
            edits = apply_edits(self.rng, self.spec, self.project, self.snapshots)
            self.history += [f"[round {round_no}] {e}" for e in edits]
            STATS.update(e.split()[0] for e in edits)
            self.verify_round(round_no)

    def verify_round(self, round_no: int) -> None:
        steps = self.spec.steps()
        outputs = [o for s in steps for o in s.outputs]
        clean = self.tmp / f"clean-{round_no}"
        self.spec.write_clean_copy(clean)
        self.fed.reset_clean_cache()
        with ThreadPoolExecutor(2) as pool:
            incremental_f = pool.submit(self.build_incremental)
            clean_f = pool.submit(self.build_clean, clean, outputs)
            inc, cln = incremental_f.result(), clean_f.result()
        self.check_ok(cln, "clean build", inc, cln)
        self.check_ok(inc, "incremental build", inc, cln)

        # 1. The clean build ran everything and agrees with the model, intermediates included.
        self.expect_equal(self.ran(cln), {s.id for s in steps}, "the clean build must run every step", inc, cln)
        model = self.runner.run(steps, self.spec.sources, self.spec.executable)
        for path in outputs:
            self.expect_bytes(clean / path, model[path], path, "clean build vs model", inc, cln)
        self.expect_equal(files_under(clean) - set(self.spec.sources), set(outputs),
                          "clean workspace must hold exactly the sources and the requested outputs", inc, cln)
        built = {**self.spec.sources, **{p: (clean / p).read_bytes() for p in outputs}}

        # 2. The incremental build's final outputs are the clean build's, byte for byte.
        finals = final_outputs(steps)
        for path in sorted(finals):
            self.expect_bytes(self.project / path, built[path], path, "incremental vs clean", inc, cln)
        # An intermediate output may stay in the workspace only with its current bytes (a formerly final
        # output kept up to date); anything else a clean build does not leave is stale.
        problems = []
        for path in sorted(files_under(self.project) - set(self.spec.sources) - finals):
            held = (self.project / path).read_bytes()
            if path in built and held != built[path]:
                problems.append(f"  {path}: an intermediate now (no longer final), left with stale bytes {held!r}; "
                                f"current {built[path]!r}")
            elif path not in built:
                why = "output of a step that no longer exists" if path in self.ever_outputs else "unexpected file"
                problems.append(f"  {path}: {why}; holds {held!r}")
        if problems:
            self.fail("the incremental workspace has stale files a clean build does not leave:\n"
                      + "\n".join(problems), inc, cln)

        # 3. Minimality: exactly the steps whose key was never recorded ran.
        expected = {s.id for s in steps if model_key(s, built, self.spec.executable) not in self.seen_keys}
        ran = self.ran(inc)
        STATS["rounds"] += 1
        STATS["steps run"] += len(ran)
        STATS["steps cached"] += len(steps) - len(ran)
        STATS["rounds with early cutoff"] += any(
            s.id not in ran and any(self.producer(steps, p) in ran for p in s.inputs) for s in steps)
        self.expect_equal(ran, expected, "the incremental build must run exactly the steps whose key is new",
                          inc, cln)
        self.expect_equal(inc.summary["steps_run"], len(ran), "steps_run must count the `ran` lines", inc, cln)
        self.remember(steps, built)
        remove_tree(clean)

    # -- helpers ---------------------------------------------------------------------------------------

    @staticmethod
    def producer(steps: list[ModelStep], path: str) -> str | None:
        return next((s.id for s in steps if path in s.outputs), None)

    def remember(self, steps: list[ModelStep], files: dict[str, bytes]) -> None:
        self.seen_keys |= {model_key(s, files, self.spec.executable) for s in steps}
        self.ever_outputs |= {o for s in steps for o in s.outputs}

    @staticmethod
    def ran(run: Run) -> set[str]:
        return {m.group(1) for m in RAN_RE.finditer(run.stderr)}

    def check_ok(self, run: Run, what: str, *runs: Run) -> None:
        if run.code != 0 or not run.summary.get("ok"):
            self.fail(f"{what} failed (exit {run.code})", *runs)

    def expect_equal(self, actual: object, expected: object, what: str, *runs: Run) -> None:
        if actual != expected:
            detail = ""
            if isinstance(actual, set) and isinstance(expected, set):
                detail = f"\n  missing: {sorted(expected - actual)}\n  unexpected: {sorted(actual - expected)}"
            self.fail(f"{what}\n  expected: {sorted(expected) if isinstance(expected, set) else expected}\n"
                      f"  actual:   {sorted(actual) if isinstance(actual, set) else actual}{detail}", *runs)

    def expect_bytes(self, path: Path, expected: bytes, rel: str, what: str, *runs: Run) -> None:
        actual = path.read_bytes() if path.is_file() else None
        if actual != expected:
            self.fail(f"{what}: {rel} differs\n  expected: {expected!r}\n  actual:   {actual!r}", *runs)

    def fail(self, message: str, *runs: Run) -> None:
        steps = self.spec.steps()
        lines = [
            f"DIFFERENTIAL FAILURE (seed {self.seed}, after {len(self.history)} edits): {message}",
            # (embedded project k has seed CP_DIFF_SEED + PROJECTS + k, and PROJECTS is 1 here)
            f"replay: CP_DIFF_SEED={self.seed - 1} CP_DIFF_ROUNDS=1 CP_DIFF_EDITS={self.edits} "
            f"CP_DIFF_EMBEDDED_ROUNDS={self.edits} python -m pytest -x tests/test_differential.py -k embedded"
            if self.embedded else
            f"replay: CP_DIFF_SEED={self.seed} CP_DIFF_ROUNDS={self.edits} CP_DIFF_EDITS={self.edits} "
            "python -m pytest -x tests/test_differential.py -k 'incremental_equals_clean and not embedded'",
            "--- majordomo.toml", self.spec.toml(),
            "--- sources", *(f"  {p}: {d!r}" for p, d in sorted(self.spec.sources.items())),
            "--- edit history", *(f"  {i}. {e}" for i, e in enumerate(self.history, 1)),
            "--- steps (model)", *(f"  {s.id}: {s.command}" for s in steps),
        ]
        for name, run in zip(("incremental", "clean"), runs, strict=False):
            lines += [f"--- {name} build: exit {run.code}", run.stderr.rstrip(), run.stdout.rstrip()]
        raise AssertionError("\n".join(lines))


@pytest.mark.parametrize("index", range(PROJECTS))
def test_incremental_equals_clean(index: int, shared_federation: DiffFederation, tmp_path: Path) -> None:
    rounds = min(EDITS, ROUNDS - index * EDITS)
    started = time.monotonic()
    Differential(BASE_SEED + index, rounds, tmp_path, shared_federation).run()
    print(f"seed {BASE_SEED + index}: {rounds} rounds in {time.monotonic() - started:.1f}s")


@pytest.mark.parametrize("index", range(-(-EMBEDDED_ROUNDS // EDITS)))
def test_incremental_equals_clean_embedded(index: int, shared_federation: DiffFederation, tmp_path: Path) -> None:
    rounds = min(EDITS, EMBEDDED_ROUNDS - index * EDITS)
    seed = BASE_SEED + PROJECTS + index  # not the seeds of the projects above
    Differential(seed, rounds, tmp_path, shared_federation, embedded=True).run()


# Seeds that failed against the engine at e834e27, replayed every run as regressions. A seed means the
# same project and edits only with this differential_gen.py: if the generator changes, find fresh
# ones by running a long CP_DIFF_ROUNDS against that commit (a git worktree).
FAILING_SEEDS: dict[int, tuple[bool, str]] = {  # seed -> (embedded federation?, what went wrong)
    500054: (False, "A: a kept output of a deleted stem was still globbed: final/summary.txt wrong"),
    500064: (True, "A: the same, out/join1.txt wrong"),
    500028: (False, "A: the same stale kept output still fed a pattern rule; its output r0/a.y stayed"),
    500023: (False, "B: final/summary.txt gained a consumer and stayed in the workspace, stale"),
    500062: (True, "C: chmod +x of a source passed the no-op stamp: split1 did not run"),
    500063: (True, "E: a source touched 10 minutes ahead made the build sleep until then"),
}


@pytest.mark.parametrize("seed", sorted(FAILING_SEEDS))
def test_replay_seed_that_failed(seed: int, shared_federation: DiffFederation, tmp_path: Path) -> None:
    embedded, _what = FAILING_SEEDS[seed]
    Differential(seed, 5, tmp_path, shared_federation, embedded=embedded).run()  # found with 5 rounds each


# -- minimal reproductions of what the differential test found -------------------------------------------
# Each is the smallest recipe + edit that shows one bug (A-F, see the commit message), so a fix has a
# crisp target and the bug cannot come back unseen.

def _build(fed: DiffFederation, project: Path) -> Run:
    run = majordomo(project, "build", "--json", "--nats", fed.url, env=fed.env)
    assert run.code == 0, run.stderr
    return run


def test_kept_output_of_a_removed_stem_is_not_read_by_a_glob(shared_federation: DiffFederation, tmp_path: Path) -> None:
    """Deleting a stem's source must shrink a glob over the rule's kept outputs in the same build."""
    recipe = """
    [[rule]]
    name = "up"
    inputs = ["src/%.txt"]
    outputs = ["gen/%.o"]
    command = "tr a-z A-Z < $< > $@"
    keep = true

    [[step]]
    name = "all"
    inputs = ["gen/*.o"]
    outputs = ["out/all.txt"]
    command = "cat $^ > $@"
    """
    project = write_project(tmp_path / "p", recipe, {"src/a.txt": "alpha\n", "src/b.txt": "beta\n"})
    _build(shared_federation, project)
    assert (project / "out/all.txt").read_text() == "ALPHA\nBETA\n"
    (project / "src/b.txt").unlink()
    run = _build(shared_federation, project)
    assert not (project / "gen/b.o").exists()
    assert (project / "out/all.txt").read_text() == "ALPHA\n", (
        "the glob still matched the stale gen/b.o: the recipe file was loaded before stale outputs were "
        "removed\n" + run.stderr)


def test_output_that_gains_a_consumer_is_not_left_stale(shared_federation: DiffFederation, tmp_path: Path) -> None:
    """A final output that becomes an intermediate must not stay in the workspace with old bytes."""
    first = """
    [[step]]
    name = "first"
    inputs = ["in.txt"]
    outputs = ["out/first.txt"]
    command = "tr a-z A-Z < $< > $@"
    """
    project = write_project(tmp_path / "p", first, {"in.txt": "one\n"})
    _build(shared_federation, project)
    assert (project / "out/first.txt").read_text() == "ONE\n"
    (project / "majordomo.toml").write_text(textwrap.dedent(first) + textwrap.dedent("""
    [[step]]
    name = "second"
    inputs = ["out/first.txt"]
    outputs = ["out/second.txt"]
    command = "wc -c < $< > $@"
    """))
    (project / "in.txt").write_text("two two\n")
    run = _build(shared_federation, project)
    assert (project / "out/second.txt").read_text() == "8\n"
    held = (project / "out/first.txt").read_text() if (project / "out/first.txt").exists() else None
    assert held in (None, "TWO TWO\n"), f"out/first.txt holds stale bytes {held!r}\n{run.stderr}"


def test_intermediate_built_as_a_target_is_not_left_stale(shared_federation: DiffFederation, tmp_path: Path) -> None:
    """`majordomo build build/a.up` puts an intermediate in the workspace; a later build must not leave it stale."""
    recipe = """
    [[rule]]
    name = "upper"
    inputs = ["src/%.txt"]
    outputs = ["build/%.up"]
    command = "tr a-z A-Z < $< > $@"

    [[step]]
    name = "join"
    inputs = ["build/*.up"]
    outputs = ["build/all.txt"]
    command = "cat $^ > $@"
    """
    project = write_project(tmp_path / "p", recipe, {"src/a.txt": "alpha\n", "src/b.txt": "beta\n"})
    run = majordomo(project, "build", "--json", "--nats", shared_federation.url, "build/a.up",
                    env=shared_federation.env)
    assert run.code == 0, run.stderr
    assert (project / "build/a.up").read_text() == "ALPHA\n"
    (project / "src/a.txt").write_text("apple\n")
    run = _build(shared_federation, project)
    assert (project / "build/all.txt").read_text() == "APPLE\nBETA\n"
    held = (project / "build/a.up").read_text() if (project / "build/a.up").exists() else None
    assert held in (None, "APPLE\n"), f"build/a.up holds stale bytes {held!r}\n{run.stderr}"


def test_chmod_of_a_source_is_not_a_noop(tmp_path: Path) -> None:
    """The executable bit is part of the action key, so `chmod +x` must not pass the no-op stamp.

    Embedded federation: the no-op stamp is used only without --nats."""
    recipe = """
    [[step]]
    name = "mode"
    inputs = ["tool.sh"]
    outputs = ["out/mode.txt"]
    command = "if [ -x tool.sh ]; then echo executable; else echo plain; fi > $@"
    """
    project = write_project(tmp_path / "p", recipe, {"tool.sh": "echo hi\n"})
    run = majordomo(project, "build", "--json", env={"MAJORDOMO_NATS": ""})
    assert run.code == 0, run.stderr
    assert (project / "out/mode.txt").read_text() == "plain\n"
    os.chmod(project / "tool.sh", 0o755)
    run = majordomo(project, "build", "--json", env={"MAJORDOMO_NATS": ""})
    assert run.code == 0, run.stderr
    assert (project / "out/mode.txt").read_text() == "executable\n", (
        "the no-op stamp took a mode change for a touch with the same bytes\n" + run.stderr)


def test_a_source_dated_in_the_future_does_not_stall_the_build(tmp_path: Path) -> None:
    """A file with an mtime ahead of the clock (clock skew, `touch -d`, an unpacked archive) must not
    make `majordomo build` wait for that time to come (the no-op stamp, embedded federation only)."""
    recipe = """
    [[step]]
    name = "copy"
    inputs = ["in.txt"]
    outputs = ["out/copy.txt"]
    command = "cat $< > $@"
    """
    project = write_project(tmp_path / "p", recipe, {"in.txt": "x\n"})
    ahead = time.time_ns() + 600 * 10**9
    os.utime(project / "in.txt", ns=(ahead, ahead))
    started = time.monotonic()
    try:
        run = majordomo(project, "build", "--json", env={"MAJORDOMO_NATS": ""}, timeout=30)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"the build did not finish in 30 s (it waits for in.txt's mtime, 600 s ahead); "
                             f"its output so far: {exc.stderr!r}") from None
    assert run.code == 0, run.stderr
    assert (project / "out/copy.txt").read_text() == "x\n"
    assert time.monotonic() - started < 30


async def test_reading_the_chef_registry_is_complete_and_leaks_nothing(
        federation: Federation, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each build reads the chef registry once. Found by the differential runs: after about 1000
    builds within five minutes on one federation, every build failed with `BadRequestError`
    (`maximum consumers limit reached`), and now and then a build said "no chefs are registered"
    while both chefs were heartbeating. Own federation: a leak must not poison the module's."""
    from majordomo.federation import Federation as Joined

    monkeypatch.setenv("MAJORDOMO_KEY", str(federation.key))
    (tmp_path / "p").mkdir()
    joined = Joined(tmp_path / "p", "probe", federation.url, "cp", resolve=lambda _digest: None)
    await joined.start()
    seen: Counter[int] = Counter()
    try:
        for call in range(1, 1101):
            try:
                seen[len(await joined.chefs())] += 1
            except Exception as exc:
                raise AssertionError(
                    f"read {call} of the chef registry failed: {exc!r}; each read leaves a consumer on the "
                    f"KV stream for 5 minutes (nats-py's KV watcher default), and the server allows 1000; "
                    f"reads so far saw {dict(seen)} chefs") from None
    finally:
        await joined.stop()
    assert seen == {2: 1100}, f"some reads saw a partial registry (chefs seen per read: {dict(seen)})"
