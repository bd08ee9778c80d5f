"""The recipe file and its loader: errors with file and line, expansion, globs, pattern rules."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from majordomo.recipe_globs import PathIndex, compile_glob
from majordomo.recipes import Project, RecipeError, Step, list_project_files, load_project


def make(root: Path, recipe: str, files: tuple[str, ...] = ()) -> Path:
    """A project directory with a recipe file and empty source files."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "majordomo.toml").write_text(recipe)
    for name in files:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
    return root


def load(tmp_path: Path, recipe: str, files: tuple[str, ...] = (), **kwargs: object) -> Project:
    return load_project(make(tmp_path / "p", recipe, files), **kwargs)  # type: ignore[arg-type]


def error(tmp_path: Path, recipe: str, files: tuple[str, ...] = (), **kwargs: object) -> str:
    with pytest.raises(RecipeError) as caught:
        load(tmp_path, recipe, files, **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    return message


def by_id(project: Project) -> dict[str, Step]:
    return {step.id: step for step in project.steps}


C_PROJECT = """\
[project]
default = ["build/app"]

[vars]
CC = "gcc"
CFLAGS = "-O2 -Wall"

[[rule]]
name = "compile"
kind = "cc"
inputs = ["src/%.c", "include/*.h"]
outputs = ["build/%.o"]
depfile = "build/%.d"
command = "$CC $CFLAGS -MD -MF $depfile -c $< -o $@"

[[step]]
name = "link"
kind = "cc"
inputs = ["build/*.o"]
outputs = ["build/app"]
command = "$CC $^ -o $@"
env = { LC_ALL = "C" }
tools = ["python3"]
"""
C_FILES = ("src/main.c", "src/util.c", "include/util.h")


# -- the happy path ---------------------------------------------------------------------------------


def test_c_project_expands_pattern_rule_glob_and_commands(tmp_path: Path) -> None:
    project = load(tmp_path, C_PROJECT, C_FILES)
    steps = by_id(project)
    assert list(steps) == ["compile[main]", "compile[util]", "link"]
    main = steps["compile[main]"]
    assert main.recipe == "compile" and main.kind == "cc"
    assert main.inputs == ("src/main.c", "include/util.h")
    assert main.outputs == ("build/main.o",)
    assert main.depfile == "build/main.d"
    assert main.command == "gcc -O2 -Wall -MD -MF build/main.d -c src/main.c -o build/main.o"
    assert main.origin == "majordomo.toml:8"
    link = steps["link"]
    # The glob sees the outputs of the pattern rule, not only files on disk.
    assert link.inputs == ("build/main.o", "build/util.o")
    assert link.command == "gcc build/main.o build/util.o -o build/app"
    assert link.env == (("LC_ALL", "C"),)
    assert link.tools == ("python3",)
    assert link.origin == "majordomo.toml:16"
    assert project.defaults == ("build/app",)
    assert project.sources == ("include/util.h", "src/main.c", "src/util.c")
    assert project.recipe_file == tmp_path / "p" / "majordomo.toml"


def test_defaults_and_field_defaults(tmp_path: Path) -> None:
    project = load(
        tmp_path,
        """
        [[step]]
        inputs = ["a.txt"]
        outputs = ["b.txt"]
        command = "cp $< $@"

        [[step]]
        name = "c"
        inputs = ["b.txt"]
        outputs = ["c.txt", "d.txt"]
        command = "touch $out"
        """,
        ("a.txt",),
    )
    first, second = project.steps
    assert first.id == first.recipe == "b.txt"  # unnamed: named after its first output, as in make
    assert (first.kind, first.depfile, first.recorder, first.keep) == ("shell", "", False, False)
    assert (first.max_passes, first.timeout_s, first.normalise, first.env) == (5, 3600.0, (), ())
    assert second.command == "touch c.txt d.txt"
    # No [project] default: every output no step reads.
    assert project.defaults == ("c.txt", "d.txt")


def test_optional_fields_are_stored(tmp_path: Path) -> None:
    project = load(
        tmp_path,
        """
        [[step]]
        name = "paper"
        kind = "latex"
        description = "the paper"
        inputs = ["paper.tex", "paper.aux"]
        outputs = ["paper.pdf", "paper.aux"]
        command = "pdflatex -recorder paper.tex"
        recorder = true
        keep = true
        max_passes = 7
        timeout = 90
        normalise = { "*.pdf" = "pdf", "paper.aux" = { regex = "^%%.*$" } }
        """,
        ("paper.tex",),
    )
    (step,) = project.steps
    assert (step.recorder, step.keep, step.max_passes, step.timeout_s) == (True, True, 7, 90.0)
    assert step.description == "the paper"
    assert step.normalise == (("*.pdf", "pdf"), ("paper.aux", "regex:^%%.*$"))
    # A step may read its own output (.aux): cycles are for the engine to iterate, not an error.
    assert step.inputs == ("paper.tex", "paper.aux")
    assert project.producer_of("paper.aux") is step
    assert project.sources == ("paper.tex",)


def test_cycles_across_steps_are_legal(tmp_path: Path) -> None:
    project = load(
        tmp_path,
        """
        [[step]]
        name = "a"
        inputs = ["b.out"]
        outputs = ["a.out"]
        command = "true"
        [[step]]
        name = "b"
        inputs = ["a.out"]
        outputs = ["b.out"]
        command = "true"
        """,
    )
    assert [s.id for s in project.steps] == ["a", "b"]
    assert project.sources == ()


def test_producer_of_and_steps_for(tmp_path: Path) -> None:
    project = load(tmp_path, C_PROJECT, C_FILES)
    steps = by_id(project)
    assert project.producer_of("build/util.o") is steps["compile[util]"]
    assert project.producer_of("src/util.c") is None
    assert project.producer_of("build/util.d") is None  # a depfile is a by-product, not an output
    assert project.steps_for("compile") == (steps["compile[main]"], steps["compile[util]"])
    assert project.steps_for("compile[util]") == (steps["compile[util]"],)
    assert project.steps_for("./build/app") == (steps["link"],)
    assert project.step("link") is steps["link"]
    with pytest.raises(KeyError, match="nothing"):
        project.steps_for("nothing")


# -- variables and quoting ------------------------------------------------------------------------


def test_every_automatic_variable(tmp_path: Path) -> None:
    project = load(
        tmp_path,
        """
        [[rule]]
        name = "r"
        inputs = ["in/%.x", "in/%.x", "common.h"]
        outputs = ["out/sub/%.y", "out/%.z"]
        depfile = "out/%.d"
        command = "@=$@ <=$< ^=$^ *=$* in=$in out=$out d=$depfile D=$(@D) F=${@F} <D=$(<D) <F=$(<F) $$HOME $${X}"
        """,
        ("in/a.x", "common.h"),
    )
    (step,) = project.steps
    assert step.inputs == ("in/a.x", "common.h")  # duplicates dropped, order kept
    assert step.command == (
        "@=out/sub/a.y <=in/a.x ^=in/a.x common.h *=a in=in/a.x common.h out=out/sub/a.y out/a.z "
        "d=out/a.d D=out/sub F=a.y <D=in <F=a.x $HOME ${X}"
    )


def test_paths_are_shell_quoted_but_variables_are_not(tmp_path: Path) -> None:
    project = load(
        tmp_path,
        """
        [vars]
        FLAGS = "-a -b"
        [[rule]]
        name = "r"
        inputs = ["src/%.txt"]
        outputs = ["out/%.txt"]
        command = "tool $FLAGS $< > $@ # $*"
        """,
        ("src/it's here.txt",),
    )
    (step,) = project.steps
    assert step.id == "r[it's here]"
    assert step.command == "tool -a -b 'src/it'\"'\"'s here.txt' > 'out/it'\"'\"'s here.txt' # 'it'\"'\"'s here'"


def test_vars_reference_vars_and_overrides_win(tmp_path: Path) -> None:
    recipe = """
    [vars]
    CC = "gcc"
    OPT = "-O2"
    CFLAGS = "${OPT} -Wall $(EXTRA)"
    EXTRA = "-g"
    OUT = "build"
    [[step]]
    name = "s"
    inputs = ["a.c"]
    outputs = ["$OUT/a.o"]
    env = { COMPILER = "$CC" }
    command = "$CC $CFLAGS -c $< -o $@"
    """
    (step,) = load(tmp_path, recipe, ("a.c",)).steps
    assert step.command == "gcc -O2 -Wall -g -c a.c -o build/a.o"
    assert step.outputs == ("build/a.o",)  # [vars] expand in paths
    assert step.env == (("COMPILER", "gcc"),)
    (step,) = load(tmp_path, recipe, ("a.c",), overrides={"OPT": "-O0 $DBG", "DBG": "-DDEBUG", "OUT": "o"}).steps
    assert step.command == "gcc -O0 -DDEBUG -Wall -g -c a.c -o o/a.o"


def test_unknown_variable_names_recipe_line_and_suggestion(tmp_path: Path) -> None:
    message = error(
        tmp_path,
        """
        [vars]
        CFLAGS = "-O2"
        [[step]]
        name = "s"
        outputs = ["x"]
        command = "cc $CFLAG -o $@"
        """,
    )
    assert message.startswith("majordomo.toml:7: recipe 's': unknown variable '$CFLAG'")
    assert "did you mean '$CFLAGS'" in message and "'$$CFLAG'" in message


@pytest.mark.parametrize(
    ("vars_", "expected"),
    [
        ('A = "$B"\nB = "$C"\nC = "$A"', "majordomo.toml:2: variable cycle: A -> B -> C -> A"),
        ('A = "x"\nB = "$NOPE"', "majordomo.toml:3: in variable 'B': unknown variable '$NOPE'"),
        ('in = "x"', "majordomo.toml:2: 'in' is an automatic variable and cannot be set"),
        ("A = true", "majordomo.toml:2: variable 'A' must be a string or a number, not bool"),
    ],
)
def test_bad_vars(tmp_path: Path, vars_: str, expected: str) -> None:
    message = error(tmp_path, f'[vars]\n{vars_}\n[[step]]\noutputs = ["x"]\ncommand = "true"\n')
    assert message.startswith(expected)


def test_bad_override_is_blamed_on_the_override(tmp_path: Path) -> None:
    message = error(tmp_path, '[[step]]\noutputs = ["x"]\ncommand = "true"\n', overrides={"A": "$B"})
    assert message.startswith("--var A: in variable 'A': unknown variable '$B'")
    message = error(tmp_path, '[[step]]\noutputs = ["x"]\ncommand = "true"\n', overrides={"1A": "x"})
    assert message.startswith("--var 1A: bad variable name")


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("echo $", "stray '$'"),
        ("echo $?", "stray '$?'"),
        ("echo $(shell date)", "'$(shell date)' is not a variable reference"),
        ("echo $*", "'$*' (the stem) is only defined in a [[rule]]"),
        ("echo $depfile", "'$depfile' is used but the recipe declares no depfile"),
        ("echo $<", "'$<' is used but the recipe declares no inputs"),
    ],
)
def test_bad_references_in_command(tmp_path: Path, command: str, expected: str) -> None:
    message = error(tmp_path, f'[[step]]\nname = "s"\noutputs = ["x"]\ncommand = "{command}"\n')
    assert message.startswith(f"majordomo.toml:4: recipe 's': {expected}")


def test_first_input_of_an_empty_glob_is_an_error_of_that_step(tmp_path: Path) -> None:
    message = error(tmp_path, '[[step]]\nname = "s"\ninputs = ["*.none"]\noutputs = ["x"]\ncommand = "cat $<"\n')
    assert message.startswith("majordomo.toml:5: recipe 's': '$<' is used but the step has no inputs")


def test_automatic_variables_are_refused_in_paths(tmp_path: Path) -> None:
    message = error(tmp_path, '[[step]]\nname = "s"\noutputs = ["$@.x"]\ncommand = "true"\n')
    assert message.startswith("majordomo.toml:3: recipe 's': outputs: automatic variable '$@' cannot be used here")


# -- globs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("glob", "matches"),
    [
        ("src/*.c", ["src/a.c", "src/b.c"]),
        ("src/?.c", ["src/a.c", "src/b.c"]),
        ("src/[a].c", ["src/a.c"]),
        ("src/[!a].c", ["src/b.c"]),
        ("src/**/*.c", ["src/a.c", "src/b.c", "src/deep/er/d.c", "src/sub/c.c"]),
        ("**/*.h", ["inc/x.h", "src/sub/y.h"]),
        ("src/**", ["src/a.c", "src/b.c", "src/deep/er/d.c", "src/sub/c.c", "src/sub/y.h"]),
        ("*", ["top"]),
        ("src/*/*.c", ["src/sub/c.c"]),
        ("nothing/*", []),
    ],
)
def test_glob_semantics(glob: str, matches: list[str]) -> None:
    index = PathIndex(["src/a.c", "src/b.c", "src/sub/c.c", "src/deep/er/d.c", "src/sub/y.h", "inc/x.h", "top"])
    assert index.glob(glob) == matches


def test_negated_class_does_not_cross_a_segment() -> None:
    assert compile_glob("a[!x]b").fullmatch("a/b") is None
    assert compile_glob("a[!x]b").fullmatch("ayb") is not None


def test_globs_are_sorted_exclude_own_outputs_and_ignore_depfiles_on_disk(tmp_path: Path) -> None:
    project = load(
        tmp_path,
        """
        [[rule]]
        name = "compile"
        inputs = ["src/%.c"]
        outputs = ["build/%.o"]
        depfile = "build/%.d"
        command = "cc -c $< -o $@"
        [[step]]
        name = "bundle"
        inputs = ["build/*"]
        outputs = ["build/bundle.tar"]
        command = "tar cf $@ $^"
        """,
        # An earlier build left a depfile and the bundle on disk; neither is an input of bundle.
        ("src/z.c", "src/a.c", "build/a.d", "build/bundle.tar"),
    )
    assert by_id(project)["bundle"].inputs == ("build/a.o", "build/z.o")


def test_glob_matching_nothing_is_allowed(tmp_path: Path) -> None:
    (step,) = load(tmp_path, '[[step]]\ninputs = ["*.none"]\noutputs = ["x"]\ncommand = "cat $^ > $@"\n').steps
    assert step.inputs == () and step.command == "cat  > x"


# -- pattern rules --------------------------------------------------------------------------------


def test_pattern_rules_chain_in_any_order_and_see_step_outputs(tmp_path: Path) -> None:
    project = load(
        tmp_path,
        """
        [[rule]]
        name = "compile"
        inputs = ["gen/%.c"]
        outputs = ["obj/%.o"]
        command = "cc -c $< -o $@"
        [[rule]]
        name = "yacc"
        inputs = ["grammar/%.y"]
        outputs = ["gen/%.c"]
        command = "yacc $< -o $@"
        [[step]]
        name = "table"
        outputs = ["gen/table.c"]
        command = "mktable > $@"
        """,
        ("grammar/parse.y", "gen/hand.c"),
    )
    assert [s.id for s in project.steps] == [
        "compile[hand]",
        "compile[parse]",
        "compile[table]",
        "yacc[parse]",
        "table",
    ]
    assert project.producer_of("obj/parse.o") is by_id(project)["compile[parse]"]


def test_stems_may_span_directories_and_exclude_filters_them(tmp_path: Path) -> None:
    project = load(
        tmp_path,
        """
        [[rule]]
        name = "c"
        inputs = ["src/%.c", "src/%.h"]
        exclude = ["src/vendor/**"]
        outputs = ["build/%.o"]
        command = "cc -c $< -o $@ # $*"
        """,
        ("src/lib/a.c", "src/lib/a.h", "src/vendor/v.c"),
    )
    (step,) = project.steps
    assert step.id == "c[lib/a]"
    assert step.inputs == ("src/lib/a.c", "src/lib/a.h")
    assert step.command.endswith("# lib/a")


def test_stem_inside_a_glob_is_taken_literally(tmp_path: Path) -> None:
    project = load(
        tmp_path,
        """
        [[rule]]
        name = "m"
        inputs = ["mod/%.txt", "mod/%/*.part"]
        outputs = ["out/%.txt"]
        command = "cat $^ > $@"
        """,
        ("mod/a[1].txt", "mod/a[1]/x.part", "mod/a1/y.part"),
    )
    (step,) = project.steps
    assert step.inputs == ("mod/a[1].txt", "mod/a[1]/x.part")


def test_missing_second_stem_input_names_the_step(tmp_path: Path) -> None:
    recipe = '[[rule]]\nname = "c"\ninputs = ["%.c", "%.h"]\noutputs = ["%.o"]\ncommand = "cc"\n'
    message = error(tmp_path, recipe, ("a.c", "a.h", "b.c"))
    assert message.startswith("majordomo.toml:3: recipe 'c[b]': missing input file 'b.h'")


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        (
            'inputs = ["src/a.c"]\noutputs = ["build/%.o"]',
            "majordomo.toml:3: recipe 'r': a [[rule]] has '%' in its outputs but no input with '%'",
        ),
        ('inputs = ["src/%.c"]\noutputs = ["build/app"]', "majordomo.toml:4: recipe 'r': output 'build/app' of a"),
        ('inputs = ["src/%*.c"]\noutputs = ["%.o"]', "majordomo.toml:3: recipe 'r': input 'src/%*.c' supplies"),
        ('inputs = ["src/%/%.c"]\noutputs = ["%.o"]', "majordomo.toml:3: recipe 'r': inputs: 'src/%/%.c' has more"),
        ('inputs = ["%.c"]\noutputs = ["%.o"]\ndepfile = "x.d"', "majordomo.toml:5: recipe 'r': depfile 'x.d' of a"),
        (
            'inputs = ["d/%"]\noutputs = ["d/%.x"]',
            "majordomo.toml:4: recipe 'r': output 'd/%.x' can match the rule's own",
        ),
        ('inputs = ["%.c"]\noutputs = ["build/*.o"]', "majordomo.toml:4: recipe 'r': output 'build/*.o' is a glob"),
    ],
)
def test_bad_rules(tmp_path: Path, rule: str, expected: str) -> None:
    message = error(tmp_path, f'[[rule]]\nname = "r"\n{rule}\ncommand = "true"\n', ("src/a.c",))
    assert message.startswith(expected), message


def test_pattern_rules_feeding_each_other_in_a_loop(tmp_path: Path) -> None:
    message = error(
        tmp_path,
        """[[rule]]
name = "up"
inputs = ["%.a"]
outputs = ["%.b"]
command = "true"
[[rule]]
name = "down"
inputs = ["%.b"]
outputs = ["%.a"]
command = "true"
""",
    )
    assert message.startswith("majordomo.toml:")
    assert "pattern rules feed each other in a loop: up -> down -> up" in message


# -- structural errors, each with its file and line ---------------------------------------------------


def test_toml_syntax_error_keeps_line_and_column(tmp_path: Path) -> None:
    message = error(tmp_path, '[[step]]\nname = "a"\noutputs = [x]\n')
    assert message.startswith("majordomo.toml:3:12: TOML syntax error: ")


def test_missing_recipe_file(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=r"^other\.toml: no recipe file here"):
        load_project(tmp_path, recipe_file="other.toml")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[project]\ndefault = []\n\n[[rules]]\nname = "a"\n',
            "majordomo.toml:4: unknown table 'rules' (did you mean 'rule'?)",
        ),
        ('[rule]\nname = "a"\n', "majordomo.toml:1: write each rule as a [[rule]] header"),
        ('[project]\ndefaults = ["x"]\n', "majordomo.toml:2: unknown field 'defaults' in [project]"),
        ("vars = 3\n", "majordomo.toml:1: 'vars' must be a table"),
    ],
)
def test_bad_top_level(tmp_path: Path, text: str, expected: str) -> None:
    assert error(tmp_path, text).startswith(expected)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (
            'outputs = ["x"]\ncommand = "true"\nouputs = ["y"]',
            "5: recipe 's': unknown field 'ouputs' (did you mean 'outputs'?)",
        ),
        (
            'outputs = ["x"]\ncommand = "true"\ndeps = ["y"]',
            "5: recipe 's': unknown field 'deps' (did you mean 'inputs'?)",
        ),
        (
            'outputs = ["x"]\ncommand = "true"\ninputs = "a.c"',
            "5: recipe 's': 'inputs' must be a list of strings: write",
        ),
        (
            'outputs = ["x"]\ncommand = "true"\ntools = [1]',
            "5: recipe 's': 'tools' must be a list of strings; it holds 1, int",
        ),
        ('outputs = ["x"]\ncommand = "true"\nmax_passes = 0', "5: recipe 's': 'max_passes' must be an integer >= 1"),
        ('outputs = ["x"]\ncommand = "true"\ntimeout = -1', "5: recipe 's': 'timeout' must be a number of seconds > 0"),
        ('outputs = ["x"]\ncommand = "true"\nrecorder = "yes"', "5: recipe 's': 'recorder' must be true or false"),
        ('outputs = ["x"]\ncommand = "true"\nenv = { A = 1 }', "5: recipe 's': 'env' must be a table of strings"),
        ('outputs = ["x"]\ncommand = "true"\nnormalise = { "x" = 3 }', "5: recipe 's': normalise['x'] must be"),
        (
            'outputs = ["x"]\ncommand = "true"\nnormalise = { "y" = "pdf" }',
            "5: recipe 's': normalise pattern 'y' matches none",
        ),
        (
            'outputs = ["x"]\ncommand = "true"\nnormalise = { "x" = { regex = "(" } }',
            "5: recipe 's': normalise['x']: bad regex",
        ),
        ('outputs = ["x"]\ncommand = "true"\nkind = "c c"', "5: recipe 's': bad chef kind 'c c'"),
        ('outputs = ["x"]', "1: recipe 's': no command"),
        ('command = "true"', "1: recipe 's': no outputs"),
        ('outputs = []\ncommand = "true"', "3: recipe 's': no outputs"),
        ('outputs = ["../x"]\ncommand = "true"', "3: recipe 's': outputs: path leaves the project: ../x"),
        ('outputs = ["/etc/x"]\ncommand = "true"', "3: recipe 's': outputs: absolute path not allowed"),
        (
            'outputs = [".majordomo/x"]\ncommand = "true"',
            "3: recipe 's': outputs: '.majordomo/x' is inside .majordomo/",
        ),
        ('outputs = ["%.o"]\ncommand = "true"', "3: recipe 's': outputs: '%.o' has '%', which only means a stem"),
        ('outputs = ["x"]\ncommand = "true"\nexclude = ["y"]', "5: recipe 's': 'exclude' filters the stems"),
        ('outputs = ["x"]\ninputs = ["nope.c"]\ncommand = "true"', "4: recipe 's': missing input file 'nope.c'"),
    ],
)
def test_bad_step_fields(tmp_path: Path, fields: str, expected: str) -> None:
    message = error(tmp_path, f'[[step]]\nname = "s"\n{fields}\n')
    assert message.startswith("majordomo.toml:" + expected), message


def test_missing_input_suggests_a_close_file(tmp_path: Path) -> None:
    message = error(
        tmp_path, '[[step]]\nname = "s"\ninputs = ["src/mian.c"]\noutputs = ["x"]\ncommand = "true"\n', ("src/main.c",)
    )
    assert "did you mean 'src/main.c'?" in message


def test_output_claimed_twice_names_both_recipes_and_lines(tmp_path: Path) -> None:
    message = error(
        tmp_path,
        """[[step]]
name = "a"
outputs = ["x"]
command = "true"

[[step]]
name = "b"
outputs = ["y", "x"]
command = "true"
""",
    )
    assert message == ("majordomo.toml:8: recipe 'b': output 'x' is also made by recipe 'a' (majordomo.toml:1)")


def test_pattern_output_colliding_with_a_step(tmp_path: Path) -> None:
    message = error(
        tmp_path,
        """[[step]]
name = "special"
outputs = ["build/a.o"]
command = "true"
[[rule]]
name = "compile"
inputs = ["src/%.c"]
outputs = ["build/%.o"]
command = "true"
""",
        ("src/a.c",),
    )
    assert message.startswith(
        "majordomo.toml:8: recipe 'compile[a]': output 'build/a.o' is also made by recipe 'special' (majordomo.toml:1)"
    )


def test_duplicate_recipe_names(tmp_path: Path) -> None:
    step = '[[step]]\nname = "a"\noutputs = ["{}"]\ncommand = "true"\n'
    text = step.format("x") + step.format("y")
    assert error(tmp_path, text) == "majordomo.toml:5: recipe 'a': duplicate recipe name: also used at majordomo.toml:1"


def test_unknown_default_target(tmp_path: Path) -> None:
    text = '[project]\ndefault = ["nope"]\n[[step]]\nname = "a"\noutputs = ["x"]\ncommand = "true"\n'
    assert error(tmp_path, text).startswith("majordomo.toml:2: default target 'nope' is neither an output nor")


def test_lines_ignore_headers_inside_multiline_strings_and_arrays(tmp_path: Path) -> None:
    message = error(
        tmp_path,
        '''[[step]]
name = "first"
outputs = ["a"]
command = """
cat <<EOF
[[step]]
EOF
"""
inputs = [
  "*.none",
]

  [[step]]
  name = "second"
  outputs = ["b"]
  command = "true"
  comand = "oops"
''',
    )
    assert message.startswith("majordomo.toml:17: recipe 'second': unknown field 'comand'")


def test_recipes_in_subtables_still_get_field_lines(tmp_path: Path) -> None:
    message = error(tmp_path, '[[step]]\nname = "s"\noutputs = ["x"]\ncommand = "true"\n[step.env]\nA = 1\n')
    assert message.startswith("majordomo.toml:5: recipe 's': 'env' must be a table of strings")


# -- files on disk, and scale -----------------------------------------------------------------------


def test_list_project_files_skips_state_and_dot_directories(tmp_path: Path) -> None:
    for name in ("b.txt", "src/a.c", ".clang-format", ".git/HEAD", ".majordomo/state.db", "x/.cache/y", "x/z"):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
    os.symlink(tmp_path / "src", tmp_path / "link-to-src")  # a directory link is not followed
    os.symlink(tmp_path / "b.txt", tmp_path / "link-to-b")  # a file link is a file
    assert list_project_files(tmp_path) == [".clang-format", "b.txt", "link-to-b", "src/a.c", "x/z"]


def test_list_files_hook_replaces_the_walk(tmp_path: Path) -> None:
    # An engine that knows build/old.o is a stale output hides it; the glob then cannot pick it up.
    root = make(
        tmp_path / "p",
        '[[step]]\ninputs = ["build/*.o"]\noutputs = ["app"]\ncommand = "ld $^"\n',
        ("build/old.o", "build/new.o"),
    )
    (step,) = load_project(root, list_files=lambda: ["build/new.o"]).steps
    assert step.inputs == ("build/new.o",)


def test_ten_thousand_steps_load_with_the_right_shape(tmp_path: Path) -> None:
    root = make(tmp_path / "p", C_PROJECT)
    files = [f"src/f{i:05}.c" for i in range(10_000)] + ["include/config.h"]
    project = load_project(root, list_files=lambda: files)
    assert len(project.steps) == 10_001
    link = project.steps[-1]
    assert len(link.inputs) == 10_000 and link.inputs[0] == "build/f00000.o"
    assert project.producer_of("build/f09999.o") is project.steps[9_999]
    assert len(project.sources) == 10_001


def test_inline_array_recipes_point_at_the_array(tmp_path: Path) -> None:
    message = error(tmp_path, '# comment\nstep = [\n  { name = "s", outputs = ["x"], command = "$NOPE" },\n]\n')
    assert message.startswith("majordomo.toml:2: recipe 's': unknown variable '$NOPE'")


def test_recipe_name_that_is_another_recipes_output(tmp_path: Path) -> None:
    message = error(
        tmp_path,
        '[[step]]\nname = "a"\noutputs = ["app"]\ncommand = "true"\n[[step]]\nname = "app"\noutputs = ["y"]\ncommand = "t"\n',
    )
    assert message.startswith("majordomo.toml:6: recipe 'app': recipe name 'app' is also an output of recipe 'a'")
    # A step named after its own output (the default name) is not ambiguous.
    (step,) = load(tmp_path, '[[step]]\nname = "app"\noutputs = ["app"]\ncommand = "true"\n').steps
    assert step.id == "app"
