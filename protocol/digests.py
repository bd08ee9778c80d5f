"""Digest strings (`sha256:<hex>`, `blake3:<hex>`) and project-relative artefact paths."""

from __future__ import annotations

import posixpath
import re

ALGORITHMS = ("sha256", "blake3")
DEFAULT_ALGORITHM = "sha256"
_HEX_LEN = {"sha256": 64, "blake3": 64}
_DIGEST_RE = re.compile(r"^(sha256|blake3):([0-9a-f]{64})$")


class InvalidDigest(ValueError):
    """A string that is not a well-formed digest."""


def parse_digest(digest: str) -> tuple[str, str]:
    """Split `algo:hex` into its parts, refusing anything malformed."""
    match = _DIGEST_RE.match(digest)
    if not match:
        raise InvalidDigest(f"not a digest: {digest!r}")
    return match.group(1), match.group(2)


def make_digest(algo: str, hexdigest: str) -> str:
    digest = f"{algo}:{hexdigest.lower()}"
    parse_digest(digest)
    return digest


def store_relpath(digest: str) -> str:
    """Where a digest lives inside a store, and the path it is served under: `<algo>/<ab>/<cd>/<hex>`."""
    algo, hexdigest = parse_digest(digest)
    return f"{algo}/{hexdigest[:2]}/{hexdigest[2:4]}/{hexdigest}"


_STORE_PATH_RE = re.compile(r"^/?(sha256|blake3)/([0-9a-f]{2})/([0-9a-f]{2})/([0-9a-f]{64})$")


def digest_from_store_relpath(path: str) -> str | None:
    """The digest named by a served path, or None when the path is not exactly of store shape."""
    match = _STORE_PATH_RE.match(path)
    if not match:
        return None
    algo, ab, cd, hexdigest = match.groups()
    if hexdigest[:2] != ab or hexdigest[2:4] != cd:
        return None
    return f"{algo}:{hexdigest}"


class InvalidArtefactPath(ValueError):
    """A path that does not name a file inside the project."""


def normalise_artefact_path(path: str) -> str:
    """A clean, relative, forward-slash path inside the project; refuses absolute paths and `..` escapes."""
    if not path or "\x00" in path:
        raise InvalidArtefactPath(f"empty or NUL-containing path: {path!r}")
    if path.startswith("/"):
        raise InvalidArtefactPath(f"absolute path not allowed: {path}")
    clean = posixpath.normpath(path)
    if clean == "." or clean == ".." or clean.startswith("../"):
        raise InvalidArtefactPath(f"path leaves the project: {path}")
    return clean
