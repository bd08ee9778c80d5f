"""The recipe file (`majordomo.toml`) and its loader: from what users write to concrete steps.

`load_project` reads the file, checks it, expands pattern rules, globs and variables, and returns a
`Project`: every step with its command fully expanded and its paths project-relative. Every
mistake is a `RecipeError` whose one line names the file, the line and the recipe. The user's
reference is docs/recipes.md.

Cycles are legal: a step may read its own output and steps may feed each other (LaTeX `.aux`);
the engine iterates such components to a fixpoint, so the loader does not reject them.
"""

from __future__ import annotations

import difflib
import gc
import os
import posixpath
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple, NoReturn

from majordomo.recipe_expand import Auto, ExpansionError, Renderer, Template, Variables
from majordomo.recipe_globs import (
    GlobError,
    PathIndex,
    compile_glob,
    is_glob,
    match_stem,
    patterns_overlap,
    split_pattern,
)
from majordomo.recipe_schema import RecipeSpec, read_recipe
from majordomo.recipe_source import RecipeError, SourceMap, parse_toml, read_text
from protocol.digests import InvalidArtefactPath, normalise_artefact_path

__all__ = ["Project", "RecipeError", "Step", "list_project_files", "load_project"]

_NO_OVERRIDES: Mapping[str, str] = MappingProxyType({})
_TOP_LEVEL = ("project", "vars", "rule", "step")
_PROJECT_FIELDS = ("default",)
_PRIVATE_DIRS = (".majordomo", ".git")
_GLOB_ESCAPES = str.maketrans({"*": "[*]", "?": "[?]", "[": "[[]"})


@dataclass(frozen=True, slots=True)
class Step:
    """One concrete execution of a recipe."""

    id: str  # "<recipe name>" or "<recipe name>[<stem>]"
    recipe: str
    kind: str
    command: str  # fully expanded, paths shell-quoted
    inputs: tuple[str, ...]  # declared order, globs expanded, duplicates dropped
    outputs: tuple[str, ...]
    env: tuple[tuple[str, str], ...]  # sorted by name
    tools: tuple[str, ...]  # sorted, unique
    depfile: str  # "" if none
    recorder: bool
    normalise: tuple[tuple[str, str], ...]  # (output glob, "name" or "regex:<pattern>"), declared order
    max_passes: int
    timeout_s: float
    keep: bool
    origin: str  # "majordomo.toml:14": the recipe's header line
    description: str = ""
    # Files put in the task dir that count in the action key only once the step reports
    # reading them (depfile, .fls): a header change recompiles exactly its includers.
    may_read: tuple[str, ...] = ()


@dataclass(frozen=True)
class Project:
    """A loaded recipe file: the steps, the default targets and the source files they read."""

    root: Path
    recipe_file: Path
    steps: tuple[Step, ...]
    defaults: tuple[str, ...]  # output paths or recipe names; never empty when there are steps
    sources: tuple[str, ...]  # inputs of some step that no step produces, sorted
    _producers: dict[str, Step] = field(init=False, repr=False, compare=False)
    _by_id: dict[str, Step] = field(init=False, repr=False, compare=False)
    _by_recipe: dict[str, tuple[Step, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_recipe: dict[str, list[Step]] = {}
        for step in self.steps:
            by_recipe.setdefault(step.recipe, []).append(step)
        object.__setattr__(self, "_producers", {out: s for s in self.steps for out in s.outputs})
        object.__setattr__(self, "_by_id", {s.id: s for s in self.steps})
        object.__setattr__(self, "_by_recipe", {k: tuple(v) for k, v in by_recipe.items()})

    def producer_of(self, path: str) -> Step | None:
        """The step that makes `path` (a project-relative path), or None for a source or unknown file."""
        return self._producers.get(path)

    def step(self, step_id: str) -> Step:
        return self._by_id[step_id]

    def steps_for(self, target: str) -> tuple[Step, ...]:
        """The steps a target names: a recipe name (all its steps), a step id, or an output path."""
        if target in self._by_recipe:
            return self._by_recipe[target]
        if target in self._by_id:
            return (self._by_id[target],)
        try:
            producer = self._producers.get(normalise_artefact_path(target))
        except InvalidArtefactPath:
            producer = None
        if producer is None:
            raise KeyError(f"no recipe, step or output is called {target!r}")
        return (producer,)


def list_project_files(root: Path, dir_stats: dict[str, os.stat_result] | None = None) -> list[str]:
    """Every file under `root` as a sorted relative posix path, skipping dot-directories.

    Dot-directories hold state (.majordomo/, .git/), not sources. Symlinks to files count as
    files; symlinked directories are not followed, so a link loop cannot hang the walk.
    `dir_stats`, if given, receives each directory's stat ("" for the root), taken just before it
    is listed: a file added after the listing changes its directory's stat after that one.
    """
    found: list[str] = []
    pending = [("", os.fspath(root))]
    while pending:
        prefix, directory = pending.pop()
        if dir_stats is not None:
            dir_stats[prefix[:-1]] = os.stat(directory)
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    if not entry.name.startswith("."):
                        pending.append((prefix + entry.name + "/", entry.path))
                elif entry.is_file():
                    found.append(prefix + entry.name)
    found.sort()
    return found


def load_project(
    root: Path,
    *,
    recipe_file: str = "majordomo.toml",
    overrides: Mapping[str, str] = _NO_OVERRIDES,
    list_files: Callable[[], Iterable[str]] | None = None,
) -> Project:
    """Load and check the recipe file under `root`; raise RecipeError on the first mistake.

    `overrides` are `--var NAME=VALUE` settings that replace or add [vars]. `list_files` returns the
    project's files as relative posix paths (default: walk `root`); an engine that knows which
    files are stale outputs of recipes since removed should leave them out, so that globs and
    pattern rules do not pick them up.
    """
    root = Path(root)
    path = root / recipe_file
    text = read_text(path, recipe_file)
    document = parse_toml(text, recipe_file)
    if list_files is not None:
        files = list_files()
    else:
        try:
            files = list_project_files(root)
        except OSError as exc:
            raise RecipeError(str(root), None, f"cannot list the project's files: {exc}") from None
    with _collector_paused():
        steps, defaults, sources = _Loader(recipe_file, text, document, overrides).load(files)
    return Project(root=root, recipe_file=path, steps=steps, defaults=defaults, sources=sources)


class _Instance(NamedTuple):
    """One future step of a recipe: its id, stem (None for a [[step]]), outputs and depfile."""

    id: str
    stem: str | None
    outputs: list[str]
    depfile: str
    driving: str  # the path that matched a rule's '%' input, reused rather than rebuilt


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while tens of thousands of acyclic objects are made.

    Each allocation burst otherwise triggers collections that rescan every young object; the
    loader makes no cycles, so pausing loses nothing and saves about a tenth of the load time.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@dataclass(slots=True, eq=False)  # compared by identity: two recipes are never the same recipe
class _Recipe:
    """A recipe with its paths expanded and normalised, and its instances once stems are known."""

    spec: RecipeSpec
    inputs: list[str]
    outputs: list[str]
    depfile: str
    exclude: list[str]
    normalise: list[tuple[str, str]]
    env: tuple[tuple[str, str], ...]
    tools: tuple[str, ...]
    command: Template
    globbed: list[bool] = field(default_factory=list)  # per input: is it a glob (decided once, not per stem)
    may_read: list[str] = field(default_factory=list)
    driver: tuple[str, str] | None = None  # (prefix, suffix) of the input that supplies the stems
    instances: list[_Instance] = field(default_factory=list)

    @property
    def is_rule(self) -> bool:
        return self.driver is not None


def _is_clean(path: str) -> bool:
    """A cheap test that `normalise_artefact_path` would return `path` unchanged."""
    return not (
        "//" in path
        or "/./" in path
        or "/../" in path
        or path.startswith(("/", "./", "../"))
        or path.endswith(("/", "/.", "/.."))
        or path in ("", ".", "..")
    )


def _substitute(pattern: str, stem: str | None) -> str:
    """`pattern` with its '%' replaced by `stem`, normalised; raises InvalidArtefactPath on escape."""
    if stem is None or "%" not in pattern:
        return pattern
    path = pattern.replace("%", stem)
    # The pattern and the path the stem came from are both clean, so the join almost always is.
    return path if _is_clean(path) else normalise_artefact_path(path)


def _dedup(items: Iterable[str]) -> tuple[str, ...]:
    """Unique items in first-seen order."""
    return tuple(dict.fromkeys(items))


class _Loader:
    """One load of one recipe file; holds what error messages need to name lines."""

    def __init__(self, display: str, text: str, document: dict[str, Any], overrides: Mapping[str, str]) -> None:
        self.display = display
        self.document = document
        self.overrides = overrides
        self.source = SourceMap(text)
        # Tables whose [[headers]] line up with their recipes; inline arrays have none to count.
        self.exact: set[str] = set()

    # -- errors ---------------------------------------------------------------------------------

    def fail(self, line: int | None, message: str, recipe: str | None = None) -> NoReturn:
        raise RecipeError(self.display, line, message, recipe=recipe)

    def field_line(self, spec: RecipeSpec, field_name: str | None) -> int:
        if field_name is None or spec.table not in self.exact:
            return spec.line
        return self.source.field_line(spec.table, spec.index, field_name) or spec.line

    def fail_at(self, spec: RecipeSpec, field_name: str | None, message: str, who: str | None = None) -> NoReturn:
        self.fail(self.field_line(spec, field_name), message, who or spec.name)

    # -- the whole load ---------------------------------------------------------------------------

    def load(self, files: Iterable[str]) -> tuple[tuple[Step, ...], tuple[str, ...], tuple[str, ...]]:
        self.check_top_level()
        variables = self.variables()
        specs = self.specs()
        recipes = [self.prepare(spec, variables) for spec in specs]
        file_list = list(files)
        self.instantiate(recipes, file_list)
        universe = self.claim_and_index(recipes, file_list)
        steps = tuple(step for recipe in recipes for step in self.steps_of(recipe, universe))
        outputs = {out for step in steps for out in step.outputs}
        inputs = {path for step in steps for path in step.inputs}
        defaults = self.defaults(variables, recipes, steps, outputs, inputs)
        return steps, defaults, tuple(sorted(inputs - outputs))

    def check_top_level(self) -> None:
        for key, value in self.document.items():
            line = self.source.table_line(key)
            if key not in _TOP_LEVEL:
                close = difflib.get_close_matches(key, _TOP_LEVEL, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                self.fail(line, f"unknown table '{key}'{hint}; the file has [project], [vars], [[rule]], [[step]]")
            if key in ("rule", "step") and not (
                isinstance(value, list) and all(isinstance(item, dict) for item in value)
            ):
                self.fail(line, f"write each {key} as a [[{key}]] header (an array of tables), not [{key}]")
            if key in ("project", "vars") and not isinstance(value, dict):
                self.fail(line, f"'{key}' must be a table: write [{key}]")
        for key in self.document.get("project", {}):
            if key not in _PROJECT_FIELDS:
                line = self.source.key_line("project", key) or self.source.table_line("project")
                self.fail(line, f"unknown field '{key}' in [project]; it has: {', '.join(_PROJECT_FIELDS)}")

    def variables(self) -> Variables:
        raw: dict[str, str] = {}
        for name, value in self.document.get("vars", {}).items():
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                line = self.source.key_line("vars", name) or self.source.table_line("vars")
                self.fail(line, f"variable '{name}' must be a string or a number, not {type(value).__name__}")
            raw[name] = str(value)
        raw.update(self.overrides)
        try:
            return Variables(raw)
        except ExpansionError as exc:
            if exc.variable in self.overrides:
                raise RecipeError(f"--var {exc.variable}", None, str(exc)) from None
            line = self.source.key_line("vars", exc.variable or "") or self.source.table_line("vars")
            self.fail(line, str(exc))

    def specs(self) -> list[RecipeSpec]:
        """Every recipe, checked for shape, in the order it appears in the file."""
        specs: list[RecipeSpec] = []
        for table in ("rule", "step"):
            items = self.document.get(table, [])
            header_lines = self.source.array_lines(table)
            exact = len(header_lines) == len(items)
            if exact:
                self.exact.add(table)
            for index, item in enumerate(items):
                line = header_lines[index] if exact else self.source.table_line(table)
                specs.append(self.read_spec(table, index, line, item, exact))
        specs.sort(key=lambda spec: spec.line)
        seen: dict[str, RecipeSpec] = {}
        for spec in specs:
            if spec.name in seen:
                self.fail(
                    spec.line, f"duplicate recipe name: also used at {self.display}:{seen[spec.name].line}", spec.name
                )
            seen[spec.name] = spec
        return specs

    def read_spec(self, table: str, index: int, line: int, item: dict[str, Any], exact: bool) -> RecipeSpec:
        name = item.get("name") if isinstance(item.get("name"), str) else None

        def fail(field_name: str | None, message: str) -> NoReturn:
            found = self.source.field_line(table, index, field_name) if field_name and exact else None
            self.fail(found or line, message, name)

        return read_recipe(item, table, index, line, fail)

    # -- one recipe's paths, variables and command --------------------------------------------------

    def path(self, spec: RecipeSpec, field_name: str, raw: str, variables: Variables) -> str:
        """Expand [vars] in a path and make it project-relative, or fail naming the field."""
        try:
            path = normalise_artefact_path(variables.text(raw))
        except (ExpansionError, InvalidArtefactPath) as exc:
            self.fail_at(spec, field_name, f"{field_name}: {exc}")
        if path.split("/", 1)[0] in _PRIVATE_DIRS:
            self.fail_at(
                spec,
                field_name,
                f"{field_name}: {path!r} is inside {path.split('/', 1)[0]}/, which belongs to the build system",
            )
        percents = path.count("%")
        if percents and spec.table == "step":
            self.fail_at(
                spec,
                field_name,
                f"{field_name}: {path!r} has '%', which only means a stem in a [[rule]]; write this recipe as [[rule]]",
            )
        if percents > 1:
            self.fail_at(spec, field_name, f"{field_name}: {path!r} has more than one '%'")
        return path

    def prepare(self, spec: RecipeSpec, variables: Variables) -> _Recipe:
        inputs = [self.path(spec, "inputs", p, variables) for p in spec.inputs]
        outputs = list(_dedup(self.path(spec, "outputs", p, variables) for p in spec.outputs))
        depfile = self.path(spec, "depfile", spec.depfile, variables) if spec.depfile else ""
        recipe = _Recipe(
            spec=spec,
            inputs=inputs,
            outputs=outputs,
            depfile=depfile,
            exclude=[self.path(spec, "exclude", p, variables) for p in spec.exclude],
            normalise=[(self.path(spec, "normalise", g, variables), n) for g, n in spec.normalise],
            env=tuple(sorted((k, self.env_value(spec, v, variables)) for k, v in spec.env.items())),
            tools=tuple(sorted(set(spec.tools))),
            command=self.command(spec, variables),
            globbed=[is_glob(p) for p in inputs],
            may_read=[self.path(spec, "may_read", p, variables) for p in spec.may_read],
        )
        self.check_outputs(recipe)
        if spec.table == "rule":
            recipe.driver = self.driver(recipe)
        elif spec.exclude:
            self.fail_at(spec, "exclude", "'exclude' filters the stems of a [[rule]]; a [[step]] has none")
        self.check_automatic(recipe)
        return recipe

    def env_value(self, spec: RecipeSpec, value: str, variables: Variables) -> str:
        try:
            return variables.text(value)
        except ExpansionError as exc:
            self.fail_at(spec, "env", f"env: {exc}")

    def command(self, spec: RecipeSpec, variables: Variables) -> Template:
        try:
            return variables.template(spec.command)
        except ExpansionError as exc:
            self.fail_at(spec, "command", str(exc))

    def check_outputs(self, recipe: _Recipe) -> None:
        spec = recipe.spec
        for out in recipe.outputs:
            if is_glob(out):
                self.fail_at(spec, "outputs", f"output {out!r} is a glob; outputs must name files")
            if spec.table == "rule" and "%" not in out:
                self.fail_at(
                    spec,
                    "outputs",
                    f"output {out!r} of a [[rule]] has no '%': every stem would "
                    "make it; write it as a [[step]], or put '%' in it",
                )
        if spec.table == "rule" and recipe.depfile and "%" not in recipe.depfile:
            self.fail_at(spec, "depfile", f"depfile {recipe.depfile!r} of a [[rule]] needs a '%'")

    def driver(self, recipe: _Recipe) -> tuple[str, str]:
        """The first input with '%': matching it against the project's paths yields the stems."""
        spec = recipe.spec
        for path in recipe.inputs:
            if "%" in path:
                if is_glob(path):
                    self.fail_at(spec, "inputs", f"input {path!r} supplies the stems and cannot also be a glob")
                return split_pattern(path)
        self.fail_at(
            spec,
            "inputs" if spec.inputs else None,
            "a [[rule]] has '%' in its outputs but no input with '%' to supply the stems",
        )

    def check_automatic(self, recipe: _Recipe) -> None:
        """Automatic variables the recipe can never fill are mistakes in the file, not in one step."""
        spec = recipe.spec
        used = {part.name for part in recipe.command if isinstance(part, Auto)}
        if "*" in used and not recipe.is_rule:
            self.fail_at(spec, "command", "'$*' (the stem) is only defined in a [[rule]]")
        if "depfile" in used and not recipe.depfile:
            self.fail_at(spec, "command", "'$depfile' is used but the recipe declares no depfile")
        if used & {"<", "<D", "<F"} and not recipe.inputs:
            self.fail_at(spec, "command", "'$<' is used but the recipe declares no inputs")

    # -- stems ------------------------------------------------------------------------------------

    def instantiate(self, recipes: list[_Recipe], files: list[str]) -> None:
        """Give every recipe its instances: one for a [[step]], one per stem for a [[rule]]."""
        explicit_depfiles: set[str] = set()
        explicit_outputs: list[str] = []
        for recipe in recipes:
            if not recipe.is_rule:
                recipe.instances.append(_Instance(recipe.spec.name, None, recipe.outputs, recipe.depfile, ""))
                explicit_outputs.extend(recipe.outputs)
                explicit_depfiles.add(recipe.depfile)
        base = PathIndex([*(f for f in files if f not in explicit_depfiles), *explicit_outputs])
        for rule, feeders in self.rule_order([r for r in recipes if r.is_rule]):
            self.stems(rule, feeders, base)

    def rule_order(self, rules: list[_Recipe]) -> list[tuple[_Recipe, list[_Recipe]]]:
        """Rules ordered so that a rule comes after every rule whose outputs can match its stems."""
        feeders: dict[_Recipe, list[_Recipe]] = {}
        for rule in rules:
            assert rule.driver is not None
            wanted = "%".join(rule.driver)
            feeders[rule] = [r for r in rules if any(patterns_overlap(o, wanted) for o in r.outputs)]
            if rule in feeders[rule]:
                out = next(o for o in rule.outputs if patterns_overlap(o, wanted))
                self.fail_at(
                    rule.spec,
                    "outputs",
                    f"output {out!r} can match the rule's own input {wanted!r}, so the rule would feed itself forever",
                )
        ordered: list[tuple[_Recipe, list[_Recipe]]] = []
        done: set[_Recipe] = set()
        visiting: list[_Recipe] = []

        def visit(rule: _Recipe) -> None:
            if rule in done:
                return
            if rule in visiting:
                cycle = " -> ".join(r.spec.name for r in [*visiting[visiting.index(rule) :], rule])
                self.fail_at(rule.spec, None, f"pattern rules feed each other in a loop: {cycle}")
            visiting.append(rule)
            for feeder in feeders[rule]:
                visit(feeder)
            visiting.pop()
            done.add(rule)
            ordered.append((rule, feeders[rule]))

        for rule in rules:
            visit(rule)
        return ordered

    def stems(self, rule: _Recipe, feeders: list[_Recipe], base: PathIndex) -> None:
        assert rule.driver is not None
        prefix, suffix = rule.driver
        found = dict(base.stems(prefix, suffix))
        for feeder in feeders:
            for instance in feeder.instances:
                for out in instance.outputs:
                    stem = match_stem(out, prefix, suffix)
                    if stem is not None:
                        found[out] = stem
        excluded = [compile_glob(pattern).fullmatch for pattern in rule.exclude]
        name, patterns, depfile_pattern = rule.spec.name, rule.outputs, rule.depfile
        for path in sorted(found) if feeders else found:  # base.stems is already sorted
            if excluded and any(match(path) for match in excluded):
                continue
            stem = found[path]
            step_id = f"{name}[{stem}]"
            try:
                outputs = [_substitute(out, stem) for out in patterns]
                depfile = _substitute(depfile_pattern, stem) if depfile_pattern else ""
            except InvalidArtefactPath as exc:
                self.fail_at(rule.spec, "outputs", f"stem {stem!r}: {exc}", step_id)
            rule.instances.append(_Instance(step_id, stem, outputs, depfile, path))

    # -- ownership of outputs, and the universe globs see -------------------------------------------

    def claim_and_index(self, recipes: list[_Recipe], files: list[str]) -> PathIndex:
        """Check that no file is made twice; return the paths inputs may name (files and outputs)."""
        claims: dict[str, str] = {}  # path -> step id
        lines: dict[str, int] = {}  # step id -> line, for the message only
        outputs: list[str] = []
        depfiles: set[str] = set()
        for recipe in recipes:
            for step_id, _, outs, depfile, _ in recipe.instances:
                for path in [*outs, depfile] if depfile else outs:
                    previous = claims.setdefault(path, step_id)
                    if previous != step_id:
                        self.fail_at(
                            recipe.spec,
                            "depfile" if path == depfile else "outputs",
                            f"output {path!r} is also made by recipe {previous!r} ({self.display}:{lines[previous]})",
                            step_id,
                        )
                lines[step_id] = recipe.spec.line
                outputs.extend(outs)
                if depfile:
                    depfiles.add(depfile)
        for recipe in recipes:
            owner = claims.get(recipe.spec.name)
            if owner is not None and owner.partition("[")[0] != recipe.spec.name:
                self.fail_at(
                    recipe.spec,
                    "name",
                    f"recipe name {recipe.spec.name!r} is also an output of recipe {owner!r}, "
                    "so a target of that name would be ambiguous",
                )
        # A depfile on disk is a by-product of a build, never something a glob should pick up.
        return PathIndex([*(f for f in files if f not in depfiles), *outputs])

    # -- steps ------------------------------------------------------------------------------------

    def steps_of(self, recipe: _Recipe, universe: PathIndex) -> list[Step]:
        spec = recipe.spec
        inputs_of = self.input_planner(recipe, universe)
        may_read_of = None
        if recipe.may_read:
            # The same expansion as inputs (stems, globs, existence), minus the stem-driving part.
            may_read_of = self.input_planner(
                replace(recipe, inputs=recipe.may_read, globbed=[is_glob(p) for p in recipe.may_read], driver=None),
                universe,
            )
        render = Renderer(recipe.command)
        # Everything that is the same for every stem, bound once: this loop runs per stem.
        make = partial(
            Step,
            recipe=spec.name,
            kind=spec.kind,
            env=recipe.env,
            tools=recipe.tools,
            recorder=spec.recorder,
            max_passes=spec.max_passes,
            timeout_s=spec.timeout_s,
            keep=spec.keep,
            origin=f"{self.display}:{spec.line}",
            description=spec.description,
        )
        normalise_patterns = recipe.normalise
        steps = []
        for step_id, stem, outputs, depfile, driving in recipe.instances:
            inputs = inputs_of(step_id, stem, outputs, driving)
            normalise: tuple[tuple[str, str], ...] = ()
            if normalise_patterns:
                normalise = tuple((_substitute(glob, stem), name) for glob, name in normalise_patterns)
                if not steps:  # every stem has the same shape, so checking one instance suffices
                    self.check_normalise(recipe, normalise, outputs)
            try:
                command = render(inputs, outputs, stem, depfile)
            except ExpansionError as exc:
                self.fail_at(spec, "command", str(exc), step_id)
            may_read: tuple[str, ...] = ()
            if may_read_of is not None:
                declared = set(inputs)
                may_read = tuple(p for p in may_read_of(step_id, stem, outputs, driving) if p not in declared)
            steps.append(
                make(
                    id=step_id,
                    command=command,
                    inputs=inputs,
                    outputs=tuple(outputs),
                    depfile=depfile,
                    normalise=normalise,
                    may_read=may_read,
                )
            )
        return steps

    def input_planner(
        self, recipe: _Recipe, universe: PathIndex
    ) -> Callable[[str, str | None, list[str], str], tuple[str, ...]]:
        """A function giving one step's inputs: stems substituted, globs expanded, files checked.

        What does not depend on the stem (plain paths, globs without '%') is worked out once here,
        not once per stem.
        """
        spec = recipe.spec
        driving_pattern = "%".join(recipe.driver) if recipe.driver else None
        globs: dict[str, list[str]] = {}
        # per input: 0 = fixed path, 1 = the driving input, 2 = path with a stem, 3 = glob
        plan: list[tuple[int, str]] = []
        for pattern, globbed in zip(recipe.inputs, recipe.globbed, strict=True):
            if globbed:
                plan.append((3, pattern))
            elif pattern == driving_pattern:
                plan.append((1, pattern))
            elif "%" in pattern:
                plan.append((2, pattern))
            else:
                self.check_exists(spec, pattern, universe, spec.name)
                plan.append((0, pattern))

        def inputs_of(step_id: str, stem: str | None, outputs: list[str], driving: str) -> tuple[str, ...]:
            found: list[str] = []
            for how, pattern in plan:
                if how == 0:
                    found.append(pattern)
                elif how == 1:
                    found.append(driving)  # matched against the project's paths already
                elif how == 2:
                    found.append(self.stem_input(spec, pattern, stem, universe, step_id))
                else:
                    found.extend(self.glob(spec, pattern, stem, outputs, universe, globs))
            return tuple(dict.fromkeys(found)) if len(found) > 1 else tuple(found)

        return inputs_of

    def stem_input(self, spec: RecipeSpec, pattern: str, stem: str | None, universe: PathIndex, who: str) -> str:
        try:
            path = _substitute(pattern, stem)
        except InvalidArtefactPath as exc:
            self.fail_at(spec, "inputs", f"stem {stem!r}: {exc}", who)
        self.check_exists(spec, path, universe, who)
        return path

    def check_exists(self, spec: RecipeSpec, path: str, universe: PathIndex, who: str) -> None:
        if path not in universe:
            self.fail_at(
                spec,
                "inputs",
                f"missing input file {path!r}: no such file in the project and no recipe makes it"
                f"{_close_file(path, universe)}",
                who,
            )

    def glob(
        self,
        spec: RecipeSpec,
        pattern: str,
        stem: str | None,
        outputs: Sequence[str],
        universe: PathIndex,
        cache: dict[str, list[str]],
    ) -> list[str]:
        """Matches of one glob input; a step's own outputs are left out (name them to read them)."""
        if stem is not None and "%" in pattern:
            pattern = pattern.replace("%", stem.translate(_GLOB_ESCAPES))
        if pattern not in cache:
            try:
                cache[pattern] = universe.glob(pattern)
            except GlobError as exc:
                self.fail_at(spec, "inputs", str(exc))
        matches = cache[pattern]
        fullmatch = compile_glob(pattern).fullmatch
        own = {out for out in outputs if fullmatch(out)}
        return [m for m in matches if m not in own] if own else matches

    def check_normalise(self, recipe: _Recipe, normalise: Sequence[tuple[str, str]], outputs: list[str]) -> None:
        for glob, _ in normalise:
            try:
                fullmatch = compile_glob(glob).fullmatch
            except GlobError as exc:
                self.fail_at(recipe.spec, "normalise", str(exc))
            if not any(fullmatch(out) for out in outputs):
                self.fail_at(recipe.spec, "normalise", f"normalise pattern {glob!r} matches none of the outputs")

    # -- default targets --------------------------------------------------------------------------

    def defaults(
        self,
        variables: Variables,
        recipes: list[_Recipe],
        steps: tuple[Step, ...],
        outputs: set[str],
        inputs: set[str],
    ) -> tuple[str, ...]:
        """[project] default, checked; when absent, every final output (one no step reads)."""
        raw = self.document.get("project", {}).get("default", [])
        line = self.source.key_line("project", "default") or self.source.table_line("project")
        if not isinstance(raw, list) or not all(isinstance(item, str) for item in raw):
            self.fail(line, "'default' must be a list of output paths or recipe names")
        names = {recipe.spec.name for recipe in recipes} | {step.id for step in steps}
        targets = [self.target(variables, item, names, outputs, line) for item in raw]
        if targets:
            return _dedup(targets)
        final = [out for step in steps for out in step.outputs if out not in inputs]
        return tuple(final) if final else tuple(out for step in steps for out in step.outputs)

    def target(self, variables: Variables, item: str, names: set[str], outputs: set[str], line: int) -> str:
        if item in names:
            return item
        try:
            path = normalise_artefact_path(variables.text(item))
        except (ExpansionError, InvalidArtefactPath) as exc:
            self.fail(line, f"default target {item!r}: {exc}")
        if path not in outputs and path not in names:
            self.fail(line, f"default target {item!r} is neither an output nor a recipe name")
        return path


def _close_file(path: str, universe: PathIndex) -> str:
    """` (did you mean 'src/main.c'?)`, looking only in the same directory to stay cheap."""
    directory = posixpath.dirname(path)
    siblings = universe.with_prefix(directory + "/" if directory else "")
    close = difflib.get_close_matches(path, siblings[:2000], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
