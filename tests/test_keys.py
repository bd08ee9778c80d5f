"""Key files: made once, atomically, whoever asks first; public lines read and checked without asyncssh."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from artefacts.keys import check_public_key_line, fingerprint, load_or_create_key, public_key_line


def test_processes_making_the_same_key_at_once_all_get_the_one_on_disk(tmp_path: Path) -> None:
    """A first build and the resident federation it starts both make the project's key: each must
    end up with the key the file holds, or one side's SFTP logins fail."""
    path = tmp_path / "keys" / "federation"
    start = threading.Barrier(6)
    lines: list[str] = []

    def make() -> None:
        start.wait()
        lines.append(public_key_line(load_or_create_key(path)))

    threads = [threading.Thread(target=make) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    on_disk = public_key_line(load_or_create_key(path))
    assert lines == [on_disk] * 6
    assert Path(f"{path}.pub").read_text().strip() == on_disk
    assert sorted(p.name for p in path.parent.iterdir()) == ["federation", "federation.pub"]  # no temp left
    assert path.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("algorithm", ["ssh-ed25519", "ecdsa-sha2-nistp256", "ssh-rsa"])
def test_a_public_line_fingerprint_needs_no_asyncssh_and_matches_it(algorithm: str) -> None:
    import asyncssh

    key = asyncssh.generate_private_key(algorithm)
    line = public_key_line(key)
    assert fingerprint(line) == key.get_fingerprint("sha256")
    assert check_public_key_line(line) == key.public_data


@pytest.mark.parametrize("line", ["", "ssh-ed25519", "ssh-ed25519 %%%", "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIP5lF9uD"])
def test_a_malformed_public_line_is_refused_naming_where(line: str) -> None:
    with pytest.raises(ValueError, match=r"keys/x\.pub: not an OpenSSH public key line"):
        check_public_key_line(line, "keys/x.pub")
