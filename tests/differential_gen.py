"""Random small projects, random edits, and an independent model of what a build must produce and run.

Used by `test_differential.py`. Nothing here imports the engine or the recipe loader: the model
expands the recipes itself (pattern stems, globs, automatic variables) and runs each command with
`sh` in a scratch directory, so it is a second opinion on every part of a build.

A project is a few *modules*, each a typical shape:
- `pattern`: a [[rule]] `src<i>/%.txt -> ...`, sometimes chained into a second rule, sometimes with
  a fixed extra input (fan-out), sometimes joined by a [[step]] that globs the rule's outputs;
- `glob`: a [[step]] over `d<i>/*.csv` (or `d<i>/**/*.csv`), then a post-processing [[step]];
- `diamond`: top -> left, right -> bottom, explicit [[step]]s;
- `mixed`: one [[step]] with an explicit input and a glob (`$<` and `$^` both used);
- `final`: a [[step]] globbing `out/*.txt`, the outputs of the other modules.

Commands are shell only, and many lose information (`head -c1`, `wc -l`, `sort -u`, `tr a-z A-Z`)
so that a changed input often gives an unchanged output: early cutoff happens all the time.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from random import Random

# One input ($<) to one output ($@).
TRANSFORMS = (
    "tr a-z A-Z < $< > $@",
    "head -c1 $< > $@",
    "wc -l < $< > $@",
    "sort -u $< > $@",
    "head -n1 $< > $@",
    "tail -n2 $< > $@",
    "cut -c1-3 $< > $@",
    "cat $< > $@",
    "tac $< > $@",
    "sort $< | uniq -c > $@",
    "tr -d aeiou < $< > $@",
    "wc -c < $< > $@",
    "if [ -x $< ]; then echo executable; fi > $@ && head -n1 $< >> $@",  # the mode matters too
)
# Every input ($^) to one output; they must also work with no inputs (an empty glob).
COMBINERS = (
    "cat $^ > $@",
    "sort $^ > $@",
    "sort -u $^ > $@",
    "cat $^ | wc -l > $@",
    "cat $^ | head -c1 > $@",
    "cat $^ | tr a-z A-Z | sort -u > $@",
    "wc -l $^ > $@",
    "cat $^ | cut -c1 | sort | uniq -c > $@",
)
# Both `$<` (the explicit first input) and `$^`.
MIXED = (
    "head -n1 $< > $@ && cat $^ | wc -l >> $@",
    "cat $^ | sort -u > $@",
    "cut -c1 $< > $@ && sort $^ | head -n2 >> $@",
)
WORDS = ("alpha", "beta", "gamma", "delta", "Echo", "fox", "alpha", "zeta", "eta")
NAMES = ("a", "b", "c", "d", "e", "f", "g", "h")
SH_ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}  # what a chef gives a step: C locale


def harmless(command: str) -> str:
    """The same output by another command: the step must run, its dependants need not."""
    return command + " && true"


def random_text(rng: Random) -> bytes:
    if rng.random() < 0.05:
        return b""
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3))) for _ in range(rng.randint(1, 6))]
    return ("\n".join(lines) + "\n").encode()


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Recipe:
    table: str  # "rule" or "step"
    name: str
    inputs: list[str]
    outputs: list[str]
    commands: list[str]  # alternatives the command may be edited to; [0] is the original
    keep: bool = False


@dataclass(frozen=True)
class ModelStep:
    id: str
    command: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    keep: bool


@dataclass
class Snapshot:
    sources: dict[str, bytes]
    choice: dict[str, int]
    executable: set[str]
    comments: int
    extras: list[Recipe]


@dataclass
class Spec:
    """A project: recipes, the current command of each, and the source files."""

    recipes: list[Recipe]
    sources: dict[str, bytes]
    choice: dict[str, int] = field(default_factory=dict)  # recipe name -> index in its commands
    glob_dirs: list[tuple[str, str]] = field(default_factory=list)  # (dir, extension): only globs read them
    driver_dirs: list[tuple[str, str]] = field(default_factory=list)  # (dir, extension): rule stems
    executable: set[str] = field(default_factory=set)  # sources with mode 0755 (others 0644)
    comments: int = 0  # comment lines at the end of the recipe file: edits that change no step
    extras: list[Recipe] = field(default_factory=list)  # [[step]]s added by edits (a revert removes them)
    added: int = 0

    def command(self, recipe: Recipe) -> str:
        return recipe.commands[self.choice.get(recipe.name, 0)]

    def snapshot(self) -> Snapshot:
        return Snapshot(dict(self.sources), dict(self.choice), set(self.executable), self.comments, list(self.extras))

    @property
    def all_recipes(self) -> list[Recipe]:
        return self.recipes + self.extras

    def explicit_inputs(self) -> set[str]:
        """Inputs named as plain paths: deleting one would be a recipe error, not an edit to test."""
        return {p for r in self.all_recipes for p in r.inputs if not re.search(r"[*?\[%]", p)}

    # -- the recipe file ---------------------------------------------------------------------------

    def toml(self) -> str:
        parts: list[str] = []
        for r in self.all_recipes:
            lines = [f"[[{r.table}]]", f"name = {json.dumps(r.name)}",
                     f"inputs = {json.dumps(r.inputs)}", f"outputs = {json.dumps(r.outputs)}",
                     f"command = {json.dumps(self.command(r))}"]
            if r.keep:
                lines.append("keep = true")
            parts.append("\n".join(lines) + "\n")
        parts += [f"# note {i}\n" for i in range(self.comments)]
        return "\n".join(parts)

    def write_recipe(self, root: Path) -> None:
        (root / "majordomo.toml").write_text(self.toml())

    def write_clean_copy(self, root: Path) -> None:
        """The project as a fresh checkout has it: the recipe file and the sources, nothing else."""
        root.mkdir(parents=True)
        self.write_recipe(root)
        for rel, data in self.sources.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
            os.chmod(root / rel, 0o755 if rel in self.executable else 0o644)

    # -- expansion, independently of majordomo.recipes ----------------------------------------------

    def steps(self) -> list[ModelStep]:
        """Every concrete step, in recipe order (which the generator keeps topological)."""
        rule_outputs: list[str] = []
        step_outputs = [o for r in self.all_recipes if r.table == "step" for o in r.outputs]
        instances: list[tuple[Recipe, str | None, str, list[str]]] = []  # recipe, stem, driving, outputs
        for r in self.all_recipes:
            if r.table == "step":
                instances.append((r, None, "", list(r.outputs)))
                continue
            prefix, _, suffix = next(p for p in r.inputs if "%" in p).partition("%")
            base = sorted(set(self.sources) | set(step_outputs) | set(rule_outputs))
            for path in base:
                if len(path) > len(prefix) + len(suffix) and path.startswith(prefix) and path.endswith(suffix):
                    stem = path[len(prefix):len(path) - len(suffix)]
                    outs = [o.replace("%", stem) for o in r.outputs]
                    instances.append((r, stem, path, outs))
                    rule_outputs.extend(outs)
        universe = set(self.sources) | {o for _, _, _, outs in instances for o in outs}
        steps: list[ModelStep] = []
        for r, stem, driving, outs in instances:
            inputs: list[str] = []
            for pattern in r.inputs:
                if stem is not None and "%" in pattern:
                    pattern = pattern.replace("%", stem)
                if pattern == driving or not re.search(r"[*?\[]", pattern):
                    inputs.append(pattern)
                else:
                    rx = glob_regex(pattern)
                    inputs.extend(p for p in sorted(universe) if rx.fullmatch(p) and p not in outs)
            inputs = list(dict.fromkeys(inputs))
            cmd = self.command(r).replace("$<", inputs[0] if inputs else "").replace("$^", " ".join(inputs))
            cmd = cmd.replace("$@", outs[0])
            steps.append(ModelStep(r.name if stem is None else f"{r.name}[{stem}]", cmd, tuple(inputs),
                                   tuple(outs), r.keep))
        return steps


def glob_regex(pattern: str) -> re.Pattern[str]:
    parts = []
    segments = pattern.split("/")
    for i, seg in enumerate(segments):
        if seg == "**":
            parts.append("(?:[^/]+/)*")
            continue
        parts.append(re.escape(seg).replace(r"\*", "[^/]*").replace(r"\?", "[^/]") + ("/" if i < len(segments) - 1
                                                                                       else ""))
    return re.compile("".join(parts))


def final_outputs(steps: list[ModelStep]) -> set[str]:
    """What a build leaves in the workspace: outputs no step reads, and outputs of `keep` recipes."""
    consumed = {p for s in steps for p in s.inputs}
    return {o for s in steps for o in s.outputs if o not in consumed or s.keep}


ModelKey = tuple[str, tuple[tuple[str, str, bool], ...], tuple[str, ...]]


def model_key(step: ModelStep, files: dict[str, bytes], executable: set[str]) -> ModelKey:
    """What determines a step's outputs: its command, its outputs' names, and each input's path,
    contents and executable bit (a step sees the mode of what it reads)."""
    return (step.command, tuple(sorted((p, digest(files[p]), p in executable) for p in step.inputs)), step.outputs)


# -- running the model --------------------------------------------------------------------------------

class ModelRunner:
    """Runs each step's command with `sh` in a scratch directory; memoised by what the step sees."""

    def __init__(self) -> None:
        self.memo: dict[ModelKey, dict[str, bytes]] = {}

    def run(self, steps: list[ModelStep], sources: dict[str, bytes], executable: set[str]) -> dict[str, bytes]:
        """Every output's bytes; only sources can be executable (no command here sets a mode)."""
        files = dict(sources)
        for step in steps:
            key = model_key(step, files, executable)
            outs = self.memo.get(key)
            if outs is None:
                outs = self.memo[key] = self._execute(step, files, executable)
            files.update(outs)
        return {o: files[o] for s in steps for o in s.outputs}

    @staticmethod
    def _execute(step: ModelStep, files: dict[str, bytes], executable: set[str]) -> dict[str, bytes]:
        with tempfile.TemporaryDirectory(prefix="cp-model-") as tmp:
            root = Path(tmp)
            for rel in step.inputs:
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                (root / rel).write_bytes(files[rel])
                os.chmod(root / rel, 0o555 if rel in executable else 0o444)
            for rel in step.outputs:
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
            proc = subprocess.run(["sh", "-c", step.command], cwd=root, env=SH_ENV, capture_output=True,
                                  stdin=subprocess.DEVNULL, timeout=30)
            if proc.returncode != 0:
                raise AssertionError(f"model: {step.id}: {step.command!r} failed: {proc.stderr!r}")
            return {rel: (root / rel).read_bytes() for rel in step.outputs}


# -- projects ----------------------------------------------------------------------------------------

def generate(rng: Random, max_steps: int = 15) -> Spec:
    """A random project of about 5-15 steps."""
    for _ in range(100):
        spec = _generate_once(rng)
        n = len(spec.steps())
        if 5 <= n <= max_steps:
            return spec
    raise AssertionError("generator could not make a project of the right size")


def _alternatives(rng: Random, original: str, pool: tuple[str, ...]) -> list[str]:
    others = [c for c in pool if c != original]
    return [original, harmless(original), rng.choice(others)]


def _generate_once(rng: Random) -> Spec:
    spec = Spec(recipes=[], sources={})
    kinds = ["pattern", "glob", "diamond", "mixed", "split"]
    modules = [rng.choice(kinds) for _ in range(rng.randint(1, 3))]
    for i, kind in enumerate(modules):
        getattr(_Modules, kind)(rng, spec, i)
    if any(o.startswith("out/") for r in spec.recipes for o in r.outputs) and rng.random() < 0.5:
        c = rng.choice(COMBINERS)
        spec.recipes.append(Recipe("step", "summary", ["out/*.txt"], ["final/summary.txt"],
                                   _alternatives(rng, c, COMBINERS)))
    return spec


class _Modules:
    @staticmethod
    def pattern(rng: Random, spec: Spec, i: int) -> None:
        src, ext = f"src{i}", ".txt"
        for name in rng.sample(NAMES, rng.randint(1, 3)):
            spec.sources[f"{src}/{name}{ext}"] = random_text(rng)
        if rng.random() < 0.3:
            spec.sources[f"{src}/sub/{rng.choice(NAMES)}{ext}"] = random_text(rng)
        spec.driver_dirs.append((src, ext))
        inputs = [f"{src}/%{ext}"]
        if rng.random() < 0.3:  # fan-out: one shared input for every stem
            spec.sources[f"s{i}/common.txt"] = random_text(rng)
            inputs.append(f"s{i}/common.txt")
            c1 = rng.choice(MIXED)
            first = Recipe("rule", f"first{i}", inputs, [f"b{i}/%.x"], _alternatives(rng, c1, MIXED))
        else:
            c1 = rng.choice(TRANSFORMS)
            first = Recipe("rule", f"first{i}", inputs, [f"b{i}/%.x"], _alternatives(rng, c1, TRANSFORMS))
        first.keep = rng.random() < 0.25
        spec.recipes.append(first)
        last_ext = ".x"
        if rng.random() < 0.5:
            c2 = rng.choice(TRANSFORMS)
            spec.recipes.append(Recipe("rule", f"second{i}", [f"b{i}/%.x"], [f"b{i}/%.y"],
                                       _alternatives(rng, c2, TRANSFORMS), keep=rng.random() < 0.25))
            last_ext = ".y"
        if rng.random() < 0.6:
            c3 = rng.choice(COMBINERS)
            spec.recipes.append(Recipe("step", f"join{i}", [f"b{i}/**/*{last_ext}"], [f"out/join{i}.txt"],
                                       _alternatives(rng, c3, COMBINERS), keep=rng.random() < 0.2))
        else:  # the last rule's outputs are final
            spec.recipes[-1].outputs = [f"r{i}/%{last_ext}"]
        if spec.recipes[-1].table == "step" or last_ext == ".y":
            spec.driver_dirs.append((f"b{i}", ".x"))  # a hand-made b<i>/*.x is a stem or a glob match

    @staticmethod
    def glob(rng: Random, spec: Spec, i: int) -> None:
        d, ext = f"d{i}", ".csv"
        deep = rng.random() < 0.3
        for name in rng.sample(NAMES, rng.randint(1, 4)):
            sub = "sub/" if deep and rng.random() < 0.4 else ""
            spec.sources[f"{d}/{sub}{name}{ext}"] = random_text(rng)
        spec.glob_dirs.append((d + ("/sub" if deep else ""), ext))
        spec.glob_dirs.append((d, ext))
        c = rng.choice(COMBINERS)
        spec.recipes.append(Recipe("step", f"agg{i}", [f"{d}/**/*{ext}" if deep else f"{d}/*{ext}"],
                                   [f"b{i}/agg"], _alternatives(rng, c, COMBINERS), keep=rng.random() < 0.3))
        t = rng.choice(TRANSFORMS)
        spec.recipes.append(Recipe("step", f"post{i}", [f"b{i}/agg"], [f"out/post{i}.txt"],
                                   _alternatives(rng, t, TRANSFORMS)))

    @staticmethod
    def diamond(rng: Random, spec: Spec, i: int) -> None:
        spec.sources[f"s{i}/root.txt"] = random_text(rng)
        for name, ins, out in (("top", [f"s{i}/root.txt"], "top"), ("left", [f"b{i}/top"], "left"),
                               ("right", [f"b{i}/top"], "right")):
            t = rng.choice(TRANSFORMS)
            spec.recipes.append(Recipe("step", f"{name}{i}", ins, [f"b{i}/{out}"], _alternatives(rng, t, TRANSFORMS),
                                       keep=rng.random() < 0.2))
        c = rng.choice(COMBINERS)
        spec.recipes.append(Recipe("step", f"bottom{i}", [f"b{i}/left", f"b{i}/right"], [f"out/bottom{i}.txt"],
                                   _alternatives(rng, c, COMBINERS)))

    @staticmethod
    def mixed(rng: Random, spec: Spec, i: int) -> None:
        spec.sources[f"s{i}/head.txt"] = random_text(rng)
        for name in rng.sample(NAMES, rng.randint(0, 3)):
            spec.sources[f"e{i}/{name}.dat"] = random_text(rng)
        spec.glob_dirs.append((f"e{i}", ".dat"))
        c = rng.choice(MIXED)
        spec.recipes.append(Recipe("step", f"mixed{i}", [f"s{i}/head.txt", f"e{i}/*.dat"], [f"out/mixed{i}.txt"],
                                   _alternatives(rng, c, MIXED)))


    @staticmethod
    def split(rng: Random, spec: Spec, i: int) -> None:
        """A [[step]] with two outputs, whose outputs are the stems of a [[rule]]."""
        spec.sources[f"s{i}/whole.txt"] = random_text(rng)
        one, two = f"b{i}/one.part", f"b{i}/two.part"
        commands = [f"head -n1 $< > {one} && tail -n +2 $< > {two}",
                    f"sort $< | head -n1 > {one} && sort $< | tail -n +2 > {two}"]
        rng.shuffle(commands)
        spec.recipes.append(Recipe("step", f"split{i}", [f"s{i}/whole.txt"], [one, two],
                                   [commands[0], harmless(commands[0]), commands[1]], keep=rng.random() < 0.2))
        t = rng.choice(TRANSFORMS)
        spec.recipes.append(Recipe("rule", f"piece{i}", [f"b{i}/%.part"], [f"out/%{i}.txt"],
                                   _alternatives(rng, t, TRANSFORMS)))


# -- edits -------------------------------------------------------------------------------------------

def _modified(rng: Random, old: bytes) -> bytes:
    lines = old.decode().splitlines(keepends=True)
    how = rng.choice(("new", "append", "later-line", "shuffle", "duplicate", "case"))
    if how == "append" or not lines:
        lines.append(rng.choice(WORDS) + "\n")
    elif how == "later-line" and len(lines) > 1:
        lines[rng.randrange(1, len(lines))] = rng.choice(WORDS) + " " + rng.choice(WORDS) + "\n"
    elif how == "shuffle":
        rng.shuffle(lines)
    elif how == "duplicate":
        lines.insert(rng.randrange(len(lines) + 1), rng.choice(lines))
    elif how == "case":
        i = rng.randrange(len(lines))
        lines[i] = lines[i].swapcase()
    else:
        return random_text(rng)
    return "".join(lines).encode()


def apply_edits(rng: Random, spec: Spec, root: Path, snapshots: list[Snapshot]) -> list[str]:
    """One round's edits: usually one, sometimes two or three before the next build.

    Damaging an output ends the round, so that the next build sees the damage as the user left it."""
    count = 1 if rng.random() < 0.7 else rng.randint(2, 3)
    done: list[str] = []
    while len(done) < count and not (done and done[-1].startswith(("delete output", "overwrite output"))):
        done.append(apply_edit(rng, spec, root, snapshots))
        snapshots.append(spec.snapshot())
    return done


def apply_edit(rng: Random, spec: Spec, root: Path, snapshots: list[Snapshot]) -> str:
    """Change the project on disk and in `spec` at random; return a description for the history."""
    # Every source may have been deleted (globs then match nothing, rules have no stems). The order of
    # the choices is part of what a seed means: keep it.
    has = bool(spec.sources)
    weights = {"modify": 6 * has, "touch": 2 * has, "command": 3, "add": 2, "chmod": 1 * has, "comment": 1}
    deletable = sorted(set(spec.sources) - spec.explicit_inputs())  # glob matches and pattern stems
    if deletable:
        weights["delete"] = 2
    if len(snapshots) > 1:
        weights["revert"] = 3
    # Outputs of the generated [[step]]s: those steps never go away, so a build must restore them.
    stable = {o for r in spec.recipes if r.table == "step" for o in r.outputs}
    outputs = sorted(p for p in final_outputs(spec.steps()) if p in stable and (root / p).is_file())
    if outputs:
        weights["output"] = 1
        weights["consumer"] = 1
    what = rng.choices(list(weights), list(weights.values()))[0]
    if what == "modify":
        rel = rng.choice(sorted(spec.sources))
        spec.sources[rel] = _modified(rng, spec.sources[rel])
        (root / rel).write_bytes(spec.sources[rel])
        return f"modify {rel} -> {spec.sources[rel]!r}"
    if what == "touch":
        rel = rng.choice(sorted(spec.sources))
        st = os.stat(root / rel)
        t = st.st_mtime_ns + rng.choice((-1, 1)) * rng.randint(1, 10**12)
        os.utime(root / rel, ns=(t, t))
        return f"touch {rel} (mtime {st.st_mtime_ns} -> {t})"
    if what == "chmod":
        rel = rng.choice(sorted(spec.sources))
        spec.executable ^= {rel}
        os.chmod(root / rel, 0o755 if rel in spec.executable else 0o644)
        return f"chmod {'+x' if rel in spec.executable else '-x'} {rel}"
    if what == "delete":
        rel = rng.choice(deletable)
        del spec.sources[rel]
        spec.executable.discard(rel)
        (root / rel).unlink()
        return f"delete {rel}"
    if what == "add":
        spec.added += 1
        dirs = spec.glob_dirs + spec.driver_dirs
        d, ext = rng.choice(dirs) if dirs else ("notes", ".unmatched")
        if rng.random() < 0.15:
            ext = ".unmatched"  # a new file no glob or pattern sees: nothing may run
        rel = f"{d}/n{spec.added}{ext}"
        spec.sources[rel] = random_text(rng)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(spec.sources[rel])
        return f"add {rel} = {spec.sources[rel]!r}"
    if what == "command":
        recipe = rng.choice(spec.recipes)
        current = spec.choice.get(recipe.name, 0)
        spec.choice[recipe.name] = rng.choice([i for i in range(len(recipe.commands)) if i != current])
        spec.write_recipe(root)
        return f"command of {recipe.name}: {recipe.commands[current]!r} -> {spec.command(recipe)!r}"
    if what == "comment":
        spec.comments += 1
        spec.write_recipe(root)
        return "add a comment line to majordomo.toml"
    if what == "consumer":  # a new [[step]] reads a final output, which becomes an intermediate
        spec.added += 1
        rel = rng.choice(outputs)
        t = rng.choice(TRANSFORMS)
        spec.extras.append(Recipe("step", f"extra{spec.added}", [rel], [f"x/extra{spec.added}.txt"], [t]))
        spec.write_recipe(root)
        return f"add [[step]] extra{spec.added}: {rel} -> x/extra{spec.added}.txt by {t!r}"
    if what == "output":  # the user damages a final output: the build must restore it, running nothing
        rel = rng.choice(outputs)
        if rng.random() < 0.5:
            (root / rel).unlink()
            return f"delete output {rel}"
        (root / rel).write_bytes(b"tampered\n")
        return f"overwrite output {rel} with b'tampered\\n'"
    # revert: back to the state before the last edit, or now and then to an older one
    back = 2 if rng.random() < 0.7 else rng.randint(2, len(snapshots))
    target = snapshots[-back]
    for rel in sorted(set(spec.sources) - set(target.sources)):
        (root / rel).unlink()
    for rel, data in sorted(target.sources.items()):
        if spec.sources.get(rel) != data or not (root / rel).exists():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
        os.chmod(root / rel, 0o755 if rel in target.executable else 0o644)
    spec.sources = dict(target.sources)
    spec.choice = dict(target.choice)
    spec.executable = set(target.executable)
    spec.comments = target.comments
    spec.extras = list(target.extras)
    spec.write_recipe(root)
    return f"revert to the state after edit #{len(snapshots) - back} (0 = as generated)"


def files_under(root: Path) -> set[str]:
    """Every file of a project but its state and recipe file."""
    found = set()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            rel = os.path.relpath(os.path.join(dirpath, name), root)
            if rel != "majordomo.toml":
                found.add(rel)
    return found


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
