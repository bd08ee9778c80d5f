"""Hashing throughput of `artefacts.hashing.hash_files` against plain `sha256sum`, measured in one run.

    python -m bench.hash [--small N] [--big-mib M] [--rounds R]

Both sides run hot (every file read once before timing) and the best of R rounds counts.
Targets: at least 20,000 small files/s; at least 90% of one plain sha256sum's throughput on one
large file.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from artefacts.hashing import hash_files

SMALL_FILE_BYTES = 4 << 10
SMALL_FILES_PER_SECOND_TARGET = 20_000
LARGE_FILE_RATIO_TARGET = 0.90


@dataclass
class Row:
    case: str
    peer: str
    ours_s: float
    peer_s: float
    unit: str
    amount: float  # files or MiB per run

    def line(self) -> str:
        ours_rate = self.amount / self.ours_s
        peer_rate = self.amount / self.peer_s
        return (
            f"{self.case:<36} {ours_rate:>12,.0f} {self.unit:<8} {peer_rate:>12,.0f} {self.unit:<8}"
            f" {ours_rate / peer_rate:>6.2f}x  ({self.peer})"
        )


def make_small_files(directory: Path, count: int) -> list[Path]:
    directory.mkdir()
    blob = os.urandom(count * SMALL_FILE_BYTES)
    paths = []
    for index in range(count):
        path = directory / f"f{index:06d}"
        path.write_bytes(blob[index * SMALL_FILE_BYTES : (index + 1) * SMALL_FILE_BYTES])
        paths.append(path)
    return paths


def make_big_file(path: Path, mib: int) -> Path:
    with open(path, "wb") as file:
        for _ in range(0, mib, 16):
            file.write(os.urandom(16 << 20))
    return path


def warm(paths: Sequence[Path]) -> None:
    for path in paths:
        with open(path, "rb", buffering=0) as file:
            while file.read(1 << 20):
                pass


async def plain_sha256sum(paths: Sequence[Path]) -> list[str]:
    """One plain sha256sum process over every file: the peer."""
    process = await asyncio.create_subprocess_exec(
        "sha256sum", "-z", "--", *map(str, paths), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await process.communicate()
    assert process.returncode == 0
    return ["sha256:" + record[:64].decode() for record in out.split(b"\0") if record]


async def best_of(rounds: int, run: Callable[[], Awaitable[list[str]]]) -> tuple[float, list[str]]:
    best = float("inf")
    digests: list[str] = []
    for _ in range(rounds):
        start = time.perf_counter()
        digests = await run()
        best = min(best, time.perf_counter() - start)
    return best, digests


async def compare(
    case: str, paths: Sequence[Path], rounds: int, unit: str, amount: float, backend: str = "auto"
) -> Row:
    ours_s, ours = await best_of(rounds, lambda: hash_files(paths, backend=backend))
    peer_s, peer = await best_of(rounds, lambda: plain_sha256sum(paths))
    assert ours == peer, "digests differ from sha256sum's"
    return Row(case, "one sha256sum process", ours_s, peer_s, unit, amount)


async def latency_ms(paths: Sequence[Path], backend: str, rounds: int) -> float:
    seconds, _ = await best_of(rounds, lambda: hash_files(paths, backend=backend))
    return seconds * 1e3


async def main(count: int, big_mib: int, rounds: int) -> bool:
    with tempfile.TemporaryDirectory(prefix="bench-hash-") as scratch:
        root = Path(scratch)
        started = time.perf_counter()
        small = await asyncio.to_thread(make_small_files, root / "small", count)
        big = await asyncio.to_thread(make_big_file, root / "big.bin", big_mib)
        await asyncio.to_thread(os.sync)  # no writeback of the new files during the timings
        await asyncio.to_thread(warm, [*small, big])
        print(f"made {count:,} x 4 KiB files and one {big_mib} MiB file in {time.perf_counter() - started:.1f} s")
        print(f"cpus: {os.cpu_count()}, best of {rounds}, page cache hot on both sides\n")

        rows = [
            await compare(f"{count:,} x 4 KiB (auto)", small, rounds, "files/s", count),
            await compare(f"{count:,} x 4 KiB (sha256sum backend)", small, rounds, "files/s", count, "sha256sum"),
            await compare(f"1 x {big_mib} MiB (auto)", [big], rounds, "MiB/s", big_mib),
            await compare(f"1 x {big_mib} MiB (sha256sum backend)", [big], rounds, "MiB/s", big_mib, "sha256sum"),
        ]
        print(f"{'case':<36} {'ours':>21} {'plain sha256sum':>21} {'ratio':>7}")
        for row in rows:
            print(row.line())

        print("\nlatency of tiny sets (ms, best of 10)")
        for size in (1, 10, 100):
            auto = await latency_ms(small[:size], "auto", 10)
            spawn = await latency_ms(small[:size], "sha256sum", 10)
            print(f"  {size:>4} files: auto {auto:6.2f}   sha256sum backend {spawn:6.2f}")

    small_rate = count / rows[0].ours_s
    big_ratio = rows[2].peer_s / rows[2].ours_s
    verdicts = [
        (f"small files >= {SMALL_FILES_PER_SECOND_TARGET:,}/s", f"{small_rate:,.0f}/s",
         small_rate >= SMALL_FILES_PER_SECOND_TARGET),
        (f"large file >= {LARGE_FILE_RATIO_TARGET:.0%} of sha256sum", f"{big_ratio:.0%}",
         big_ratio >= LARGE_FILE_RATIO_TARGET),
    ]  # fmt: skip
    print("\ntargets")
    for target, value, ok in verdicts:
        print(f"  {'PASS' if ok else 'MISS'}  {target:<36} measured {value}")
    return all(ok for _, _, ok in verdicts)


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=10_000, help="number of 4 KiB files")
    parser.add_argument("--big-mib", type=int, default=512, help="size of the large file in MiB")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per measurement; the best counts")
    arguments = parser.parse_args()
    ok = asyncio.run(main(arguments.small, arguments.big_mib, arguments.rounds))
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    cli()
