"""`python -m majordomo.dashboard --nats URL [--port N]`: the dashboard without the `majordomo` front door."""

from __future__ import annotations

import argparse
import sys

from majordomo.dashboard import add_parser, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="majordomo")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return run(parser.parse_args(["dashboard", *(sys.argv[1:] if argv is None else argv)]))


if __name__ == "__main__":
    sys.exit(main())
