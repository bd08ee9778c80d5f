"""`majordomo explain` says why; outputs of recipes that are gone are removed, user files never."""

from __future__ import annotations

from pathlib import Path

from conftest import majordomo, write_project

RECIPE = """
[[step]]
name = "shout"
inputs = ["in.txt"]
outputs = ["out/shout.txt"]
command = "tr a-z A-Z < $< > $@"

[[step]]
name = "count"
inputs = ["out/shout.txt"]
outputs = ["out/count.txt"]
command = "wc -c < $< > $@"
"""


def test_explain_names_the_changed_input_and_the_command(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p", RECIPE, {"in.txt": "hi\n"})
    assert majordomo(project, "explain").stdout.splitlines()[0].startswith("RUN  shout: never built")
    assert majordomo(project, "build").code == 0
    up_to_date = majordomo(project, "explain").stdout
    assert "ok   shout: up to date" in up_to_date and "ok   count: up to date" in up_to_date

    (project / "in.txt").write_text("ho\n")
    out = majordomo(project, "explain").stdout
    assert "RUN  shout: input in.txt changed:" in out
    assert "RUN  count: input out/shout.txt will be rebuilt first" in out

    recipe = (project / "majordomo.toml").read_text().replace("wc -c", "wc -l")
    (project / "majordomo.toml").write_text(recipe)
    assert majordomo(project, "build").code == 0
    (project / "majordomo.toml").write_text(recipe.replace("wc -l", "wc -w"))
    out = majordomo(project, "explain").stdout
    assert "ok   shout: up to date" in out
    assert "RUN  count: command changed: 'wc -l < out/shout.txt > out/count.txt' -> 'wc -w" in out
    # explain ran nothing: the output still holds the line count of the previous build.
    assert (project / "out/count.txt").read_text().strip() == "1"


def test_outputs_of_removed_recipes_are_deleted_but_edited_ones_kept(tmp_path: Path) -> None:
    recipe = RECIPE + """
[[step]]
name = "copy"
inputs = ["in.txt"]
outputs = ["out/copy.txt"]
command = "cp $< $@"
"""
    project = write_project(tmp_path / "p", recipe, {"in.txt": "hi\n"})
    assert majordomo(project, "build").code == 0
    assert (project / "out/copy.txt").exists() and (project / "out/count.txt").exists()
    (project / "out/count.txt").write_text("my own notes\n")  # the user now owns this file
    (project / "majordomo.toml").write_text(RECIPE.split("[[step]]\nname = \"count\"")[0])
    run = majordomo(project, "build")
    assert run.code == 0, run.stderr
    assert "removed out/count.txt" not in run.stdout
    assert (project / "out/count.txt").read_text() == "my own notes\n"
    assert "removed out/copy.txt" in run.stdout and not (project / "out/copy.txt").exists()
    (project / "majordomo.toml").write_text(RECIPE)
    assert majordomo(project, "build").code == 0
    (project / "majordomo.toml").write_text(RECIPE.split("[[step]]\nname = \"count\"")[0])
    run = majordomo(project, "build")
    assert "removed out/count.txt: no longer a final output" in run.stdout
    assert not (project / "out/count.txt").exists()
    assert (project / "out/shout.txt").exists()


def test_stale_output_is_not_picked_up_by_a_glob(tmp_path: Path) -> None:
    recipe = """
[[rule]]
name = "up"
inputs = ["src/%.txt"]
outputs = ["build/%.up"]
keep = true
command = "tr a-z A-Z < $< > $@"

[[step]]
name = "join"
inputs = ["build/*.up"]
outputs = ["build/all.txt"]
command = "cat $^ > $@"
"""
    project = write_project(tmp_path / "p", recipe, {"src/a.txt": "a\n", "src/b.txt": "b\n"})
    assert majordomo(project, "build").code == 0
    assert (project / "build/b.up").exists()  # kept in the workspace
    (project / "src/b.txt").unlink()
    run = majordomo(project, "build")
    assert run.code == 0, run.stderr
    # The stale build/b.up is neither an input of join nor left behind: as a clean build.
    assert (project / "build/all.txt").read_text() == "A\n"
    assert not (project / "build/b.up").exists()


def test_explain_shows_where_steps_were_and_would_be_placed(tmp_path: Path, federation) -> None:
    project = write_project(tmp_path / "p", RECIPE, {"in.txt": "hi\n"})
    nats = ("--nats", federation.url)
    run = majordomo(project, "build", "--json", *nats, env=federation.env)
    assert run.code == 0, run.stderr
    out = majordomo(project, "explain", *nats, env=federation.env).stdout
    # Each step's last decision, with its reason and both candidates' scores.
    placed = {line.split()[3].rstrip(":") for line in out.splitlines() if "last placed on" in line}
    assert placed <= set(federation.ids) and placed, out
    assert out.count("(candidates: chef-a owns") + out.count("(candidates: chef-b owns") == 2, out

    # shout.txt's maker owns it in the federation's map: when count must run again, it would go there.
    maker = next(line.split()[3].rstrip(":") for line in out.splitlines()[1:3] if "last placed on" in line)
    (project / "majordomo.toml").write_text(RECIPE.replace("wc -c", "wc -l"))
    lines = majordomo(project, "explain", *nats, env=federation.env).stdout.splitlines()
    count_at = next(i for i, line in enumerate(lines) if line.startswith("RUN  count: command changed"))
    would = next(line for line in lines[count_at:] if "would go to" in line)
    assert f"would go to {maker}: owns the most input bytes (3)" in would, lines
