"""A step's command is exec'd directly when the shell would add nothing, through `sh -c` otherwise,
and means the same either way. Real bwrap and /bin/sh (dash)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
from conftest import require

from artefacts.store import Store
from chefs.command import command_argv
from chefs.cooking import Cook, Outcome
from protocol.errors import ErrorCode
from protocol.messages import InputRef, StepRequest

SH = ["/bin/sh", "-c"]


@pytest.mark.parametrize("line", [
    "gcc -O2 -Wall -Iinclude -MD -MF build/a.d -c src/a.c -o build/a.o",
    "ar rcsD build/libkit.a build/lib/a.o build/lib/b.o",
    "./build/test_lib --seed=1,2 user@host:9 50%",
    "  cc\t-c a.c  ",
])
def test_a_plain_line_is_its_words(line: str) -> None:
    assert command_argv(line) == line.split()


@pytest.mark.parametrize("line", [
    "", "   ",
    "cp $< $@", "echo 'a b' x", 'cc -DNAME="x" a.c', "cat a > b", "cat < a", "a | b", "a && b", "a; b",
    "cp *.c dir", "cp a? dir", "cp [ab] dir", "ls ~", "ls ~/x", "a # comment", "a\\ b x", "a\nb",
    "(cd x)", "a &", "cp `x` y", "cp é x",
    "CFLAGS=-O2 make", "cd build", "exit 3", "echo hello", "test -f a", "[ -f a ]", "true", "if",
    "export A", "set -e", "ulimit -n 10", "umask 022",
])
def test_shell_syntax_and_builtins_keep_the_shell(line: str) -> None:
    assert command_argv(line) == [*SH, line]


def _cook(tmp_path: Path, command: str, *, sandbox: bool, script: str | None = None,
          env: dict[str, str] | None = None) -> Outcome:
    store = Store(tmp_path / "store")
    inputs = []
    if script is not None:
        source = tmp_path / "tool"
        source.write_text(script)
        [(digest, size)] = asyncio.run(store.ingest([source]))
        inputs.append(InputRef(path="tool", digest=digest, size=size, executable=True))
    cook = Cook(store, tmp_path / "tasks", {}, sandbox=sandbox)
    step = StepRequest(step_id="probe", action_key="k", kind="shell", pods=[], command=command,
                       inputs=inputs, outputs=[], env=env or {})

    async def run() -> Outcome:
        outcome = await cook.run(step)
        await cook.drain()
        return outcome

    return asyncio.run(run())


@pytest.fixture(params=[True, False], ids=["sandboxed", "plain"])
def sandbox(request: pytest.FixtureRequest) -> bool:
    if request.param:
        require(shutil.which("bwrap") is not None, "bwrap is not installed")
    return bool(request.param)


def test_a_plain_line_runs_without_a_shell(tmp_path: Path, sandbox: bool) -> None:
    # dash does not pass on a variable whose name is no shell name; a program exec'd without it gets it.
    marker = {"probe.marker": "here"}
    direct = _cook(tmp_path / "a", "env", sandbox=sandbox, env=marker)
    through_shell = _cook(tmp_path / "b", "env; true", sandbox=sandbox, env=marker)
    assert direct.code == through_shell.code == ErrorCode.OK
    assert "LANG=C.UTF-8" in direct.log and "LANG=C.UTF-8" in through_shell.log
    assert "probe.marker=here" in direct.log
    assert "probe.marker" not in through_shell.log


def test_a_missing_program_fails_naming_it(tmp_path: Path, sandbox: bool) -> None:
    outcome = _cook(tmp_path, "no-such-tool-xyz --version", sandbox=sandbox)
    assert outcome.code == ErrorCode.COMMAND_FAILED
    assert outcome.exit_status != 0
    assert "no-such-tool-xyz" in outcome.log
    if not sandbox:  # the shell's own words and status, as before
        assert outcome.exit_status == 127 and "not found" in outcome.log


def test_a_script_without_an_interpreter_line_runs_as_the_shell_would(tmp_path: Path, sandbox: bool) -> None:
    outcome = _cook(tmp_path, "./tool one two", sandbox=sandbox, script='echo "args: $1 $2"\n')
    assert outcome.code == ErrorCode.OK, outcome.log
    assert outcome.log == "args: one two\n"
