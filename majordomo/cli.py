"""`majordomo`: the command line. Heavy modules (NATS, SSH) are imported only by commands that use them."""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from majordomo.carryover import Carryover
    from majordomo.federation import Federation
    from majordomo.noop import ListedDirs
    from majordomo.server_memory import ServerMemory
    from majordomo.tree_watch import TreeWatch

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _config_nats() -> str | None:
    """`--nats` falls back to MAJORDOMO_NATS, then ~/.config/computepods/config.toml's `nats`."""
    if url := os.environ.get("MAJORDOMO_NATS"):
        return url
    path = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "computepods" / "config.toml"
    if path.exists():
        import tomllib

        try:
            return tomllib.loads(path.read_text()).get("nats") or None
        except (OSError, ValueError) as exc:  # TOMLDecodeError is a ValueError
            raise UserError(f"{path}: {exc}") from None
    return None


class UserError(Exception):
    """Something the user can fix; printed as one line, no traceback."""


# Commands whose modules cost tens of milliseconds to import: loaded only when asked for.
_HEAVY_COMMANDS = {
    "status": ("majordomo.status", "show the federation now: chefs, load, stores, NATS server"),
    "dashboard": ("majordomo.dashboard", "serve a live web page of the federation on 127.0.0.1"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The command line's parser. Only `command`'s own arguments are set up (the others are listed
    by name and help), since each command's are ~0.1 ms of every build's start; all of them when
    `command` is None or unknown, so that help and errors are complete."""
    p = argparse.ArgumentParser(prog="majordomo", description="Build a project with a federation of chefs.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    full = command is None or command not in _SUBCOMMANDS
    for name, (help_text, add_arguments) in _SUBCOMMANDS.items():
        if add_arguments is None and name == command:
            __import__(_HEAVY_COMMANDS[name][0], fromlist=["add_parser"]).add_parser(sub)
        elif add_arguments is not None and (full or name == command):
            add_arguments(sub.add_parser(name, help=help_text))
        else:
            sub.add_parser(name, help=help_text, add_help=False)
    return p


def _build_arguments(b: argparse.ArgumentParser) -> None:
    b.add_argument("targets", nargs="*", metavar="TARGET", help="an output path, a recipe name or a step id")
    b.add_argument("-C", dest="directory", type=Path, default=Path("."), help="project directory")
    b.add_argument("-f", "--file", default="majordomo.toml", help="recipe file name (default majordomo.toml)")
    b.add_argument("-j", "--jobs", type=int, default=0, help="steps in flight (default: the chefs' slots)")
    b.add_argument("--nats", default=None, help="NATS URL of an existing federation (default: embedded)")
    b.add_argument("--federation", default=None, help="subject prefix of the federation (default cp)")
    b.add_argument("--var", action="append", default=[], metavar="NAME=VALUE", help="override a [vars] entry")
    b.add_argument("--sftp-listen", default="127.0.0.1:0", metavar="HOST:PORT",
                   help="where this pod serves sources to chefs (default 127.0.0.1, any port)")
    b.add_argument("--advertise", default="", metavar="HOST", help="address chefs use to reach this pod")
    b.add_argument("--lease", type=float, default=10.0, metavar="SECONDS",
                   help="a chef silent this long loses its steps to other chefs (default 10)")
    b.add_argument("--max-attempts", type=int, default=3, metavar="N",
                   help="dispatch a step at most N times before failing it (default 3)")
    _add_observe_flags(b)
    b.add_argument("--json", action="store_true", help="print a JSON summary as the last line of stdout")
    b.add_argument("-q", "--quiet", action="store_true", help="print only failures and the summary")
    b.add_argument("-v", "--verbose", action="store_true", help="also print cached steps and commands")


def _watch_arguments(w: argparse.ArgumentParser) -> None:
    w.add_argument("targets", nargs="*", metavar="TARGET")
    w.add_argument("-C", dest="directory", type=Path, default=Path("."))
    w.add_argument("-f", "--file", default="majordomo.toml")
    w.add_argument("-j", "--jobs", type=int, default=0)
    w.add_argument("--nats", default=None)
    w.add_argument("--federation", default=None)
    w.add_argument("--var", action="append", default=[], metavar="NAME=VALUE")
    w.add_argument("-q", "--quiet", action="store_true")
    w.add_argument("-v", "--verbose", action="store_true")
    w.add_argument("--rescan", type=float, default=30.0, metavar="SECONDS",
                   help="check everything this often even without file events (default 30)")
    _add_observe_flags(w)


def _explain_arguments(ex: argparse.ArgumentParser) -> None:
    ex.add_argument("targets", nargs="*", metavar="TARGET")
    ex.add_argument("-C", dest="directory", type=Path, default=Path("."))
    ex.add_argument("-f", "--file", default="majordomo.toml")
    ex.add_argument("--var", action="append", default=[], metavar="NAME=VALUE")
    ex.add_argument("--nats", metavar="URL", help="explain against this federation: its chefs' toolchains, "
                    "and where each step would go now (default: as `build`)")
    ex.add_argument("--federation", default=None, help="subject prefix of the federation (default cp)")


def _owners_arguments(ow: argparse.ArgumentParser) -> None:
    ow.add_argument("artefact", metavar="PATH|DIGEST")
    ow.add_argument("-C", dest="directory", type=Path, default=Path("."))
    ow.add_argument("--nats", default=None, help="ask the federation's ownership map (default: this project's)")
    ow.add_argument("--federation", default=None)


def _directory_argument(st: argparse.ArgumentParser) -> None:
    st.add_argument("-C", dest="directory", type=Path, default=Path("."))


def _log_arguments(lg: argparse.ArgumentParser) -> None:
    lg.add_argument("step", help="step id, e.g. compile[main]")
    lg.add_argument("-C", dest="directory", type=Path, default=Path("."))


# Name -> (help, what adds its arguments; None: its module's add_parser), in `majordomo --help`'s order.
_SUBCOMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None] | None]] = {
    "build": ("build targets (default: the project's defaults, else everything)", _build_arguments),
    "watch": ("build, then rebuild whenever a file changes (Ctrl-C stops)", _watch_arguments),
    "explain": ("say why each step would run, or that it is up to date", _explain_arguments),
    **{name: (help_text, None) for name, (_module, help_text) in _HEAVY_COMMANDS.items()},
    "owners": ("show which pods hold an artefact (by path or digest)", _owners_arguments),
    "stop": ("stop this project's resident embedded federation (NATS and local chefs)", _directory_argument),
    "log": ("show the stored output of a step's last run", _log_arguments),
}


def _add_observe_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dashboard", nargs="?", type=int, const=0, default=None, metavar="PORT",
                   help="serve the live dashboard on 127.0.0.1 while steps run (PORT, default any)")
    p.add_argument("--metrics-listen", default=None, metavar="HOST:PORT",
                   help="serve Prometheus metrics at http://HOST:PORT/metrics")


def _metrics_server(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The MajorDomo's metrics and, if asked for, the server that exposes them with its address."""
    from artefacts.metrics import MetricsServer
    from majordomo.metrics import MajordomoMetrics

    metrics = MajordomoMetrics()
    if not args.metrics_listen:
        return metrics, None, None
    host, _, port = args.metrics_listen.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--metrics-listen expects HOST:PORT, got {args.metrics_listen!r}")
    return metrics, MetricsServer(metrics), (host, int(port))


def main(argv: list[str] | None = None) -> int:
    called_with, argv = argv, sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    if called_with is None:  # a command line, not a test calling main() in its own process
        _stop_on_sigterm()
    if args.command in _HEAVY_COMMANDS:
        return __import__(_HEAVY_COMMANDS[args.command][0], fromlist=["run"]).run(args)
    try:
        if args.command == "build":
            return _build(args, argv, command_line=called_with is None)
        if args.command == "log":
            return _log(args)
        if args.command == "explain":
            return _explain(args)
        if args.command == "watch":
            return _watch(args)
        if args.command == "owners":
            return _owners(args)
        if args.command == "stop":
            return _stop(args)
    except UserError as exc:
        print(f"majordomo: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("majordomo: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_USAGE


def _stop_on_sigterm() -> None:
    """SIGTERM (`timeout`, `kill`, a service manager) stops us as Ctrl-C does, in order: a build is
    cancelled and its federation stopped, instead of the process vanishing and leaving its
    nats-server and chefs running."""
    import signal

    signal.signal(signal.SIGTERM, lambda _sig, _frame: signal.raise_signal(signal.SIGINT))


def _parse_vars(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not eq or not name:
            raise UserError(f"--var expects NAME=VALUE, got {item!r}")
        out[name] = value
    return out


def _load(args: argparse.Namespace, memo: dict | None = None,  # type: ignore[no-untyped-def]
          listed: ListedDirs | None = None):
    """The project, loaded and checked. With `memo` (the resident build server's, kept between
    builds) an unchanged recipe file over an unchanged file list is not parsed and expanded again.
    `listed` receives the directories' stats as of the listing of the files (for the no-op stamp)."""
    from majordomo.recipes import RecipeError, load_project

    root = args.directory.resolve()
    if not (root / args.file).is_file():
        raise UserError(f"no {args.file} in {root}")
    if listed is not None:
        listed.read_recipe_stat(str(root / args.file))
    try:
        overrides = _parse_vars(args.var)
        files = _source_lister(root, listed)()
        if memo is not None:
            text = (root / args.file).read_bytes()
            found = memo.get((root, args.file, tuple(args.var)))
            if found is not None and found[0] == text and found[1] == files:
                return found[2]
        project = load_project(root, recipe_file=args.file, overrides=overrides, list_files=lambda: files)
        _check_normalisers(project)
    except RecipeError as exc:
        raise UserError(str(exc)) from None
    except OSError as exc:
        raise UserError(f"cannot read the project in {root}: {exc}") from None
    if memo is not None:
        memo.clear()  # one project per server: keep only the latest
        memo[(root, args.file, tuple(args.var))] = (text, files, project)
    return project


def _source_lister(root: Path, listed: ListedDirs | None = None):  # type: ignore[no-untyped-def]
    """The project's files as globs should see them: without the outputs this tool wrote.

    An output whose recipe is gone is still on disk until the build removes it; a glob such as
    `build/*.o` must not pick it up as a source. Outputs that recipes still make are added back
    by the loader as outputs. `listed` (time, dir -> stat) is refilled at each listing."""
    from majordomo.recipes import list_project_files
    from majordomo.state import produced_paths

    def list_files() -> list[str]:
        produced = produced_paths(root)
        dir_stats: dict[str, os.stat_result] | None = None if listed is None else {}
        listed_at = time.time_ns()
        files = list_project_files(root, dir_stats)
        if listed is not None and dir_stats is not None:
            from majordomo.noop import stat_tuple

            listed.stats = {d: stat_tuple(st) for d, st in dir_stats.items()}
            listed.at_ns = listed_at
        return [f for f in files if f not in produced] if produced else files

    return list_files


def _check_normalisers(project) -> None:  # type: ignore[no-untyped-def]
    """Normaliser names are checked against the real list here (the loader checks their syntax)."""
    if not any(step.normalise for step in project.steps):
        return
    from artefacts.normalise import NormaliserError, parse_spec
    from majordomo.recipes import RecipeError

    for step in project.steps:
        for glob, spec in step.normalise:
            try:
                parse_spec(spec)
            except NormaliserError as exc:
                file, _, line = step.origin.rpartition(":")
                raise RecipeError(file, int(line) if line.isdigit() else None, f"normalise {glob!r}: {exc}",
                                  recipe=step.recipe) from None


def _build(args: argparse.Namespace, argv: list[str], *, command_line: bool = False) -> int:
    """`command_line`: this process is the `majordomo` command (not a caller of `main`), so a build
    answered by the resident server may end the process as soon as its output is out."""
    root = args.directory.resolve()
    nats_url = args.nats or _config_nats()
    stamp_key = _stamp_key(args, nats_url)
    # A resident build server knows from its watch what changed (majordomo/tree_watch.py): it
    # answers a no-op sooner than this process could stat every file.
    if nats_url is None and _may_build_in_resident(args, root):
        from majordomo.build_client import build_in_new_resident, build_in_resident, exit_now

        code = build_in_resident(root, argv)
        if code is None and not (root / ".majordomo" / "state.db").exists():
            code = build_in_new_resident(root, argv)  # a first build: every step will run
        if code is not None:
            if command_line:
                exit_now(code)
            return code
    from majordomo import noop

    if stamp_key and not args.verbose:
        steps = noop.check_stamp(str(root), stamp_key)
        if steps is not None:
            return _report_noop(args, steps, sys.stdout, sys.stderr)
    noop.remove_stamp(str(root))  # the full path decides now; a failed build must leave no stamp
    return _full_build(args, nats_url, stamp_key)


def _stamp_key(args: argparse.Namespace, nats_url: str | None) -> str | None:
    # The stamp vouches for the local toolchain only: with a remote federation, chefs decide.
    return repr((args.targets, args.var, args.file, args.federation)) if nats_url is None else None


def _may_build_in_resident(args: argparse.Namespace, root: Path) -> bool:
    """Whether the project's resident build server may run this build: the embedded federation,
    nothing that must live in this process (a dashboard, a metrics endpoint, a chosen SFTP address),
    and a recipe file to build (errors about a missing one are ours to print)."""
    from majordomo.resident import idle_seconds

    return (idle_seconds() > 0 and args.dashboard is None and args.metrics_listen is None
            and args.sftp_listen == "127.0.0.1:0" and not args.advertise and (root / args.file).is_file())


def _report_noop(args: argparse.Namespace, steps: int, out: TextIO, err: TextIO) -> int:
    import json

    summary = {"ok": True, "steps_run": 0, "steps_cached": steps, "steps_failed": 0, "steps_skipped": 0,
               "steps_visited": 0,
               "chefs": [], "files_pulled": 0, "bytes_pulled": 0, "files_local": 0, "bytes_local": 0,
               "duration_s": 0.0}
    human = err if args.json else out
    print(f"build ok: nothing changed, {steps} steps up to date", file=human)
    if args.json:
        print(json.dumps(summary), file=out)
    return EXIT_OK


def _full_build(args: argparse.Namespace, nats_url: str | None, stamp_key: str | None) -> int:
    import asyncio

    from artefacts.childwatch import use_pidfd_child_watcher
    from majordomo.noop import ListedDirs

    listed = ListedDirs()
    project = _load(args, listed=listed)
    use_pidfd_child_watcher()
    return asyncio.run(full_build(args, project, nats_url, stamp_key, sys.stdout, sys.stderr, listed=listed))


async def build_in_server(argv: list[str], cwd: str, out: TextIO, err: TextIO, shared: Federation,
                          memory: ServerMemory, later: list[Callable[[], Awaitable[None]]]) -> int:
    """`majordomo build ARGV` run by the resident build server on its own federation, printing to
    the client's streams. Work the client need not wait for (the stamp) is appended to `later`.

    If the last build left a carry-over (majordomo/carryover.py) that still holds, the files whose
    stats moved since its stamp are found (among those the tree watch named, or by stat'ing all),
    and only what they can affect is visited; none, or only stats moved: a no-op, as the client's
    own stamp check would say."""
    import asyncio

    from majordomo import noop
    from majordomo.state import StateError

    args = _build_parser_cached().parse_args(argv)
    args.directory = Path(cwd, args.directory)
    root = args.directory.resolve()
    key = _stamp_key(args, None)
    assert key is not None
    carry, memory.carry = memory.carry, None  # consumed: only a successful build leaves a new one
    disk, memory.disk_stamp = memory.disk_stamp, None  # the stamp on disk, watched while no carry-over is
    tree = memory.tree if memory.tree is not None and memory.tree.root == str(root) else None
    vouched = carry.stamp if carry is not None else disk[0] if disk is not None else None
    named = tree.take(vouched) if tree is not None else None
    try:
        try:
            state, unchanged = await asyncio.to_thread(memory.state, root)
        except StateError as exc:
            raise UserError(str(exc)) from None
        changed = None
        # -v lists every step, the unchanged ones too: only the full path visits them.
        if (unchanged and carry is not None and carry.stamp is not None and carry.root == root
                and carry.args_key == key and not args.verbose):
            base = carry.stamp
            index = carry.stamp_index()
            changed = await _changed_since(root, base, carry.stamp_id, key, named, index)
            if changed is not None and (settled := await _settled(root, base, changed, tree, later, index)) is not None:
                if settled is not base:  # the same files at the same positions: the stamp's index holds
                    carry.stamp, carry.stamp_id = settled, noop.stamp_id(str(root))
                memory.carry = carry
                return _report_noop(args, int(settled[10]), out, err)  # type: ignore[call-overload]
        elif not args.verbose:
            # No memory of a build to start from (a first request, or another process built since):
            # the stamp on disk may still vouch for everything, as it would for the client. Once
            # checked, the watch adopts it, and the next requests compare only what events name.
            found = None
            if disk is not None:
                index = await asyncio.to_thread(noop.stamp_index, disk[0])  # once, and not on the loop
                moved = await _changed_since(root, disk[0], disk[1], key, named, index)
                if moved is not None and (settled := await _settled(root, disk[0], moved, tree, later,
                                                                    index)) is not None:
                    found = (settled, disk[1] if settled is disk[0] else noop.stamp_id(str(root)))
            elif (found := await asyncio.to_thread(noop.vouching_stamp, str(root), key)) is not None and tree:
                whole = found[0]

                async def adopt() -> None:
                    await tree.adopt(whole, None, None)

                later.append(adopt)
            if found is not None:
                if found[1] is not None:
                    memory.disk_stamp = (found[0], found[1])
                return _report_noop(args, int(found[0][10]), out, err)  # type: ignore[call-overload]
        listed = None
        if changed is None:
            carry = None
            listed = noop.ListedDirs()
            project = await asyncio.to_thread(_load, args, memory.projects, listed)
        else:
            project = carry.project
        await asyncio.to_thread(noop.remove_stamp, str(root))
        return await full_build(args, project, None, key, out, err, shared, later,
                                memory=memory, state=state, carry=carry, changed=changed, listed=listed)
    except UserError as exc:
        print(f"majordomo: {exc}", file=err)
        return EXIT_USAGE


@functools.cache
def _build_parser_cached() -> argparse.ArgumentParser:
    """The resident build server parses every request with one parser (parsing does not change it)."""
    return build_parser("build")


async def _changed_since(root: Path, stamp: tuple[object, ...], ident: object, key: str, named: set[str] | None,
                         index: dict[str, int] | None) -> list[str] | None:
    """The files whose stats moved since `stamp` (file identity `ident`): among the paths the tree
    watch `named` when it could tell and the stamp is still that file, else by stat'ing them all.
    None: something structural changed."""
    import asyncio

    from majordomo import noop, tree_watch

    if named is not None and noop.stamp_id(str(root)) == ident:
        if len(named) <= tree_watch.INLINE_COMPARE:  # a few stats: no thread hop
            return noop.changed_among(str(root), stamp, key, named, index)
        return await asyncio.to_thread(noop.changed_among, str(root), stamp, key, named, index)
    return await asyncio.to_thread(noop.changed_files, str(root), stamp, key)


async def _settled(root: Path, base: tuple[object, ...], changed: list[str], tree: TreeWatch | None,
                   later: list[Callable[[], Awaitable[None]]],
                   index: dict[str, int] | None = None) -> tuple[object, ...] | None:
    """The stamp that vouches for everything when the files `changed` since `base` leave every step
    up to date: none changed, or only their stats moved (same bytes; the stamp, rewritten, then
    records their new stats). None when a build must run. `index`: the stamp's path positions,
    when kept."""
    import asyncio

    from majordomo import noop, tree_watch

    if not changed:
        return base
    if len(changed) <= tree_watch.INLINE_COMPARE:  # a few stats: no thread hop to find other bytes
        touched = noop.touched_only(str(root), base, changed, index)
        settled = None if touched is None else await asyncio.to_thread(noop.settle, str(root), base, touched)
    else:
        settled = await asyncio.to_thread(noop.settle_touched, str(root), base, changed, index)
    if settled is None:
        return None
    if tree is not None:
        # After the answer, still in this request's turn. Stats too fresh to record leave the
        # stamp as it was: adopting it puts the files back among those compared next time.
        async def adopt() -> None:
            await tree.adopt(settled, base, set(changed))

        later.append(adopt)
    return settled


async def full_build(args: argparse.Namespace, project, nats_url: str | None,  # type: ignore[no-untyped-def]
                     stamp_key: str | None, out: TextIO, err: TextIO, shared: Federation | None = None,
                     later: list[Callable[[], Awaitable[None]]] | None = None, *,
                     memory: ServerMemory | None = None, state=None, carry: Carryover | None = None,
                     changed: list[str] | None = None, listed: ListedDirs | None = None) -> int:
    """One build, in-process or in the resident build server (which passes its `memory`, the
    project's open `state`, and a still-valid `carry` with the files `changed` since). `listed`:
    the directories' stats when the project's files were listed (a carried-over build has its
    stamp's instead)."""
    import asyncio
    import json

    from majordomo import noop
    from majordomo.progress import make_reporter
    from majordomo.state import State, StateError

    own_state = state is None
    if own_state:
        try:
            state = State(project.root)
        except StateError as exc:
            raise UserError(str(exc)) from None
    human = err if args.json else out
    reporter = make_reporter(human, quiet=args.quiet, verbose=args.verbose, live=not args.json)
    started = time.time_ns()
    try:
        report, build = await _run_build(project, state, args, nats_url, reporter, shared, carry, changed,
                                         memory.durations if memory is not None else None)
    except BaseException:
        reporter.close()  # cancelled or failed: erase the live area (the resident server has no atexit)
        raise
    finally:
        if own_state:
            state.close()
    if report.ok and stamp_key is not None:
        kept = None
        if memory is not None and memory.still_ours():
            from majordomo.carryover import Carryover

            kept = memory.carry = Carryover.of(build, stamp_key, carry)

        async def stamp() -> None:
            root, steps = str(project.root), report.steps_run + report.steps_cached
            data = index = None
            base = carry.stamp if carry is not None else None  # the stamp this build started from
            if base is not None:
                # Only what this build visited can have moved since the last stamp: O(visited).
                index = carry.stamp_index()
                files, _ = build.stamp_inputs(build.visited)
                data = await asyncio.to_thread(noop.refresh_stamp, root, base, files, build.written_dirs,
                                               steps, index)
            refreshed = data is not None
            if data is None:
                index = None
                files, tools = build.stamp_inputs()
                dirs = listed if base is None else noop.listed_from(base, started)
                data = await asyncio.to_thread(noop.write_stamp, root, stamp_key, args.file, files, tools, steps,
                                               written=build.written_dirs, listed=dirs)
            if kept is not None and data is not None:
                kept.stamp = data  # what the next request compares the disk with
                kept.stamp_id = noop.stamp_id(root)
                kept.set_stamp_index(index)
                kept.index()  # now, while no client waits
                if memory is not None and memory.tree is not None and memory.tree.root == root:
                    await memory.tree.adopt(data, base if refreshed else None,
                                            {path for path, _, _ in files} if refreshed else None,
                                            kept.stamp_index())
                await state.run(state.warm)

        if later is None:
            await stamp()
        else:
            later.append(stamp)
    reporter.summary(report)
    if args.json:
        print(json.dumps(report.as_json()), file=out, flush=True)
    return EXIT_OK if report.ok else EXIT_FAILED


async def _run_build(project, state, args, nats_url, reporter, shared=None,  # type: ignore[no-untyped-def]
                     carry=None, changed=None, durations=None):
    from majordomo.engine import Build, BuildError, BuildOptions
    from protocol import subjects

    host, _, port = args.sftp_listen.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--sftp-listen expects HOST:PORT, got {args.sftp_listen!r}")
    options = BuildOptions(targets=args.targets, jobs=max(0, args.jobs), nats_url=nats_url,
                           federation=args.federation or subjects.DEFAULT_FEDERATION,
                           sftp_listen=(host, int(port)), advertise_host=args.advertise,
                           lease_s=max(0.5, args.lease), max_attempts=max(1, args.max_attempts),
                           dashboard_port=args.dashboard)
    metrics, server, address = _metrics_server(args)
    build = Build(project, state, options, on_step=reporter.step, on_event=reporter.event, metrics=metrics,
                  shared=shared, carry=carry, changed=changed, durations=durations)
    if shared is not None:
        shared.pod_id = build.pod_id
    try:
        if server:
            await server.start(*address)
        return await build.run(), build
    except OSError as exc:
        raise UserError(f"--metrics-listen {args.metrics_listen}: {exc}") from None
    except BuildError as exc:
        raise UserError(str(exc)) from None
    except Exception as exc:
        # Federation problems are the user's to fix (URL, chefs): one line, never a traceback.
        from artefacts.natsutil import NatsUnreachable
        from majordomo.federation import FederationError

        if isinstance(exc, NatsUnreachable | FederationError):
            raise UserError(str(exc)) from None
        raise
    finally:
        if server:
            await server.stop()


def _watch(args: argparse.Namespace) -> int:
    import asyncio

    from majordomo.engine import BuildOptions
    from majordomo.progress import make_reporter
    from majordomo.recipes import load_project
    from majordomo.watch import WatchOptions, watch
    from protocol import subjects

    project = _load(args)  # a broken recipe at start is an error; later ones are reported and waited out
    root = project.root
    overrides = _parse_vars(args.var)
    reporter = make_reporter(sys.stdout, quiet=args.quiet, verbose=args.verbose)
    options = WatchOptions(
        build=BuildOptions(targets=args.targets, jobs=max(0, args.jobs), nats_url=args.nats or _config_nats(),
                           federation=args.federation or subjects.DEFAULT_FEDERATION,
                           dashboard_port=args.dashboard),
        rescan_s=max(0.5, args.rescan),
    )
    metrics, server, address = _metrics_server(args)

    def load():  # type: ignore[no-untyped-def]
        loaded = load_project(root, recipe_file=args.file, overrides=overrides, list_files=_source_lister(root))
        _check_normalisers(loaded)
        return loaded

    try:
        asyncio.run(watch(root, load, options, sys.stdout, reporter.summary, on_step=reporter.step,
                          on_event=reporter.event, metrics=metrics, metrics_server=(server, address)))
    except KeyboardInterrupt:
        print("majordomo: watch stopped", file=sys.stderr)
    return EXIT_OK


def _explain(args: argparse.Namespace) -> int:
    import asyncio

    from majordomo.engine import Build, BuildError, BuildOptions
    from majordomo.explain import explain
    from majordomo.state import State

    project = _load(args)
    from protocol import subjects

    nats_url = args.nats or _config_nats()
    federation = args.federation or subjects.DEFAULT_FEDERATION
    state = State(project.root)
    try:
        build = Build(project, state, BuildOptions(targets=args.targets, nats_url=nats_url, federation=federation))
        try:
            view = asyncio.run(_federation_view(nats_url, federation)) if nats_url else None
            found = asyncio.run(explain(build, view))
        except BuildError as exc:
            raise UserError(str(exc)) from None
    finally:
        state.close()
    for item in found:
        verdict = "RUN " if item.runs else "ok  "
        print(f"{verdict} {item.step.id}: {item.reasons[0]}")
        for reason in (*item.reasons[1:], *item.placement):
            print(f"       {reason}")
    return EXIT_OK


async def _federation_view(url: str, federation: str):  # type: ignore[no-untyped-def]
    """The federation's chefs and ownership map, read (never written) for `explain`."""
    from artefacts.natsutil import NatsUnreachable, connect
    from majordomo.explain import FederationView
    from majordomo.observe import owners_by_digest, read_chefs

    try:
        nc = await connect(url, "majordomo-explain")
    except NatsUnreachable as exc:
        raise UserError(str(exc)) from None
    try:
        return FederationView(await read_chefs(nc, federation), await owners_by_digest(nc, federation))
    finally:
        await nc.close()


def _stop(args: argparse.Namespace) -> int:
    from majordomo.resident import stop_resident

    state_dir = args.directory.resolve() / ".majordomo"
    try:
        stopped = state_dir.is_dir() and stop_resident(state_dir)
    except TimeoutError as exc:
        raise UserError(f"could not stop the resident federation: {exc}") from None
    print("majordomo: resident federation stopped" if stopped else "majordomo: no resident federation runs here",
          file=sys.stderr)
    return EXIT_OK


def _owners(args: argparse.Namespace) -> int:
    import asyncio

    from majordomo.state import State
    from protocol.digests import InvalidDigest, parse_digest

    root = args.directory.resolve()
    digest = args.artefact
    try:
        parse_digest(digest)
    except InvalidDigest:
        if not (root / ".majordomo" / "state.db").exists():
            raise UserError(f"no build state in {root}: run `majordomo build` first, or give a digest") from None
        state = State(root)
        try:
            found = state.digest_of(args.artefact)
        finally:
            state.close()
        if found is None:
            raise UserError(f"{args.artefact}: not an artefact this project has built or read") from None
        digest = found
    url = args.nats or _config_nats()
    if url:
        owners, size = asyncio.run(_federation_owners(url, args.federation, digest))
    else:
        state = State(root)
        try:
            owners = sorted(state.owners_of(digest))
        finally:
            state.close()
        size = None
    print(f"{args.artefact}: {digest}" + (f" ({size} bytes)" if size is not None else ""))
    for pod in owners:
        print(f"  {pod}")
    if not owners:
        print("  no owner known")
    return EXIT_OK


async def _federation_owners(url: str, federation: str | None, digest: str) -> tuple[list[str], int | None]:
    from artefacts.natsutil import NatsUnreachable, connect
    from artefacts.ownership import FederationMaps
    from protocol import subjects

    try:
        nc = await connect(url, "majordomo:owners")
    except NatsUnreachable as exc:
        raise UserError(str(exc)) from None
    try:
        found = await (await FederationMaps(nc, federation or subjects.DEFAULT_FEDERATION).open()).owners(digest)
    finally:
        await nc.close()
    return (list(found.owners), found.size) if found else ([], None)


def _log(args: argparse.Namespace) -> int:
    from majordomo.state import State

    root = args.directory.resolve()
    if not (root / ".majordomo" / "state.db").exists():
        raise UserError(f"no build state in {root}: run `majordomo build` first")
    state = State(root)
    try:
        found = state.step_log(args.step)
    finally:
        state.close()
    if found is None:
        raise UserError(f"no log stored for step {args.step!r}")
    log, ok, chef, _at = found
    print(f"# {args.step}: {'ok' if ok else 'FAILED'} on {chef}")
    sys.stdout.write(log)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
