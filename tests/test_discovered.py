"""Discovered dependencies: a depfile narrows `may_read` to what each step really read."""

from __future__ import annotations

from pathlib import Path

from conftest import majordomo, write_project

RECIPE = """
[[rule]]
name = "cc"
kind = "cc"
inputs = ["src/%.c"]
may_read = ["include/*.h"]
outputs = ["build/%.o"]
depfile = "build/%.d"
command = "gcc -Iinclude -MD -MF $depfile -c $< -o $@"

[[step]]
name = "link"
kind = "cc"
inputs = ["build/*.o"]
outputs = ["build/app"]
command = "gcc $^ -o $@"
"""
FILES = {
    "include/a.h": "#define A 1\n",
    "include/b.h": "#define B 2\n",
    "src/fa.c": '#include "a.h"\nint fa(void) { return A; }\n',
    "src/fb.c": '#include "b.h"\nint fb(void) { return B; }\n',
    "src/main.c": "int fa(void); int fb(void);\nint main(void) { return fa() + fb() - 3; }\n",
}


def _ran(stderr: str) -> set[str]:
    return {ln.split()[2] for ln in stderr.splitlines() if " ran     " in ln}


def test_header_change_recompiles_exactly_its_includers(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p", RECIPE, FILES)
    assert majordomo(project, "build", "--json").summary["steps_run"] == 4

    (project / "include/b.h").write_text("#define B 2\n#define UNUSED 9\n")
    run = majordomo(project, "build", "--json")
    assert _ran(run.stderr) == {"cc[fb]"}  # link is cut off: fb.o came out identical

    (project / "include/a.h").write_text("#define A 5\n")
    run = majordomo(project, "build", "--json")
    assert _ran(run.stderr) == {"cc[fa]", "link"}

    # A header nobody includes changes nothing.
    (project / "include/c.h").write_text("#define C 3\n")
    assert majordomo(project, "build", "--json").summary["steps_run"] == 0


def test_vanished_discovered_header_reruns_and_fails_clearly(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p", RECIPE, FILES)
    assert majordomo(project, "build").code == 0
    (project / "include/b.h").unlink()
    run = majordomo(project, "build", "--json")
    assert run.code == 1 and "Traceback" not in run.stderr
    assert _ran(run.stderr) == set()
    assert "cc[fb]" in run.stderr and "b.h" in run.stderr  # the compiler's own message, shown
    # The same bytes back: the key of the earlier successful run matches again, so its result is
    # reused — exactly what a clean build would produce.
    (project / "include/b.h").write_text("#define B 2\n")
    run = majordomo(project, "build", "--json")
    assert run.code == 0 and _ran(run.stderr) == set()
    (project / "include/b.h").write_text("#define B 2 /* edited */\n")
    run = majordomo(project, "build", "--json")
    assert run.code == 0 and _ran(run.stderr) == {"cc[fb]"}
