"""hash_files, hash_bytes and StreamHasher against hashlib/blake3, with real sha256sum processes."""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import blake3
import pytest

from artefacts.hashing import (
    EITHER,
    LARGE_FILE_BYTES,
    MIN_PROCESS_BATCH_COST,
    PER_FILE_COST,
    PROCESS,
    THREAD,
    HashError,
    StreamHasher,
    _argv_cost,
    _hash_with_sha256sum,
    _plan,
    hash_bytes,
    hash_files,
)

WEIRD_NAMES = ["new\nline", "back\\slash", "sp ace", "-dash", "--", "-", "star*", "tab\there", "ünï"]


def sha256_of(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def blake3_of(path: Path) -> str:
    return "blake3:" + blake3.blake3(path.read_bytes()).hexdigest()


@pytest.fixture
def corpus(tmp_path: Path) -> list[Path]:
    """Many small files, weird names, an empty file, a duplicate, and two files above the large threshold."""
    paths = []
    for index in range(3000):
        path = tmp_path / f"f{index:05d}"
        path.write_bytes(os.urandom(index % 5000))
        paths.append(path)
    for name in WEIRD_NAMES:
        path = tmp_path / name
        path.write_bytes(name.encode() * 3)
        paths.append(path)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    for index in range(2):
        big = tmp_path / f"big{index}"
        big.write_bytes(os.urandom(LARGE_FILE_BYTES * 3 + index))
        paths.append(big)
    return [*paths, empty, paths[7]]


@pytest.mark.parametrize("backend", ["auto", "sha256sum", "thread"])
async def test_sha256_matches_hashlib_in_order(corpus: list[Path], backend: str) -> None:
    sizes = [path.stat().st_size for path in corpus]
    kinds = {batch.kind for batch in _plan(corpus, sizes, algo="sha256", jobs=2, backend=backend)}
    assert kinds == {"auto": {THREAD, EITHER}, "sha256sum": {PROCESS}, "thread": {THREAD}}[backend]
    assert await hash_files(corpus, jobs=2, backend=backend) == [sha256_of(path) for path in corpus]


@pytest.fixture
def weird_relative(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    monkeypatch.chdir(tmp_path)
    for name in WEIRD_NAMES:
        Path(name).write_bytes(b"<" + name.encode() + b">")
    return [Path(name) for name in WEIRD_NAMES]


async def test_relative_names_including_lone_dash(weird_relative: list[Path]) -> None:
    relative = weird_relative
    expected = [sha256_of(path) for path in relative]
    assert await hash_files(relative, backend="sha256sum") == expected
    assert await hash_files(relative) == expected


async def test_sizes_hint_only_plans(corpus: list[Path]) -> None:
    sizes = [path.stat().st_size for path in corpus]
    assert await hash_files(corpus, sizes=sizes, jobs=2) == [sha256_of(path) for path in corpus]
    with pytest.raises(ValueError, match="sizes"):
        await hash_files(corpus, sizes=sizes[1:])


async def test_blake3_matches_reference(corpus: list[Path], tmp_path: Path) -> None:
    huge = tmp_path / "huge"
    huge.write_bytes(os.urandom(9 << 20))  # above the size where blake3 uses its own threads
    paths = [*corpus[:200], *corpus[-5:], huge]
    assert await hash_files(paths, algo="blake3", jobs=2) == [blake3_of(path) for path in paths]


async def test_empty_list_and_empty_file(tmp_path: Path) -> None:
    empty = tmp_path / "e"
    empty.write_bytes(b"")
    assert await hash_files([]) == []
    assert await hash_files([empty], backend="sha256sum") == ["sha256:" + hashlib.sha256(b"").hexdigest()]


@pytest.mark.parametrize("backend", ["auto", "sha256sum", "thread"])
async def test_missing_file_is_named(corpus: list[Path], tmp_path: Path, backend: str) -> None:
    missing = tmp_path / "no such\nfile"
    with pytest.raises(HashError) as caught:
        await hash_files([*corpus[:50], missing, *corpus[50:100]], backend=backend)
    assert caught.value.path == missing
    assert "No such file" in caught.value.reason
    assert str(missing) in str(caught.value)
    assert isinstance(caught.value, OSError)
    assert pickle.loads(pickle.dumps(caught.value)).path == missing


async def test_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(HashError, match="Is a directory") as caught:
        await hash_files([tmp_path])
    assert caught.value.path == tmp_path


async def test_sha256sum_output_is_matched_by_name(corpus: list[Path], tmp_path: Path) -> None:
    """A file sha256sum cannot read gets no line: the failure lands on that file, not on its neighbour."""
    gone = tmp_path / "vanished"
    batch = [*corpus[:10], gone, *corpus[10:20]]
    with pytest.raises(HashError) as caught:
        await _hash_with_sha256sum(batch, range(len(batch)), [bytes(path) for path in batch])
    assert caught.value.path == gone
    good = corpus[:20]
    operands = [bytes(path) for path in good]
    assert await _hash_with_sha256sum(good, range(20), operands) == [sha256_of(path) for path in good]


def test_plan_balances_by_count_size_and_argv() -> None:
    count = 20_000
    directory = Path("/some/rather/long/directory/name/for/the/argv/budget")
    paths = [directory / f"file{i:06d}" for i in range(count)]
    sizes = [4096] * count
    sizes[123] = 5 << 30  # one huge file among many small ones
    batches = _plan(paths, sizes, algo="sha256", jobs=2, backend="sha256sum")
    indices = sorted(index for batch in batches for index in batch.indices)
    assert indices == list(range(count))
    assert [123] in [batch.indices for batch in batches], "the huge file travels alone"
    small = [batch for batch in batches if 123 not in batch.indices]
    assert len(small) >= 4, "enough batches to keep two cores busy"
    assert all(sum(_argv_cost(bytes(paths[i])) for i in batch.indices) < 1 << 20 for batch in batches)
    assert all(batch.operands == [bytes(paths[i]) for i in batch.indices] for batch in batches)
    assert all(MIN_PROCESS_BATCH_COST <= batch.cost for batch in small[:-1]), "no batch too small for a spawn"
    assert max(batch.cost for batch in small) < 2 * min(batch.cost for batch in small[:-1]), "balanced"

    auto = _plan(paths, sizes, algo="sha256", jobs=2, backend="auto")
    threaded = [batch.indices for batch in auto if batch.kind == THREAD]
    assert threaded == [[123]], "a large file goes to a thread, small ones to either kind of worker"


def test_tiny_set_needs_no_process() -> None:
    paths = [Path(f"f{i}") for i in range(50)]
    batches = _plan(paths, [4096] * 50, algo="sha256", jobs=2, backend="auto")
    assert len(batches) == 1 and batches[0].kind == THREAD
    assert 50 * (4096 + PER_FILE_COST) < MIN_PROCESS_BATCH_COST


@pytest.mark.parametrize("algo", ["sha256", "blake3"])
def test_hash_bytes_and_stream_hasher(algo: str) -> None:
    data = os.urandom(3 << 20)
    reference = hashlib.sha256(data).hexdigest() if algo == "sha256" else blake3.blake3(data).hexdigest()
    assert hash_bytes(data, algo) == f"{algo}:{reference}"
    hasher = StreamHasher(algo)
    for start in range(0, len(data), 100_003):
        hasher.update(memoryview(data)[start : start + 100_003])
    assert hasher.digest() == f"{algo}:{reference}"
    assert hasher.size == len(data)


def test_unknown_algorithm_is_refused() -> None:
    with pytest.raises(ValueError, match="md5"):
        hash_bytes(b"x", "md5")
