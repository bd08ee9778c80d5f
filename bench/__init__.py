"""Benchmarks: each prints ratios against a peer measured in the same run.

Importing this package brings the checkout's bytecode up to date first, as an install does (pip
compiles what it installs; deploy/setup-debian.sh compiles this checkout). Otherwise, where
PYTHONDONTWRITEBYTECODE is set, every process the benches start would compile each edited
module again, and the figures would measure the compiler.
"""

import compileall
from pathlib import Path

for _package in ("protocol", "artefacts", "chefs", "majordomo"):
    compileall.compile_dir(Path(__file__).resolve().parent.parent / _package, quiet=1)
