"""Every NATS subject and bucket name, built in one place under a federation prefix.

Two federations sharing one NATS server never see each other's traffic.
"""

from __future__ import annotations

import re

DEFAULT_FEDERATION = "cp"
CHEF_SERVICE_NAME = "computepods-chef"
MAJORDOMO_SERVICE_NAME = "computepods-majordomo"
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]+$")


def check_token(token: str, what: str = "token") -> str:
    if not _TOKEN_RE.match(token):
        raise ValueError(f"invalid {what} {token!r}: use letters, digits, '-' and '_' only")
    return token


def chef_run(federation: str, chef_id: str) -> str:
    """Request/reply: run one step on this chef."""
    return f"{federation}.chef.{chef_id}.run"


def chef_pull(federation: str, chef_id: str) -> str:
    """Request/reply: ask this chef to pull artefacts into its store (replication, hand-over)."""
    return f"{federation}.chef.{chef_id}.pull"


def chef_verify(federation: str, chef_id: str) -> str:
    """Request/reply: re-hash these digests in the chef's store and drop the copies that are wrong."""
    return f"{federation}.chef.{chef_id}.verify"


def build_cancelled(federation: str) -> str:
    """Publish: a build was cancelled (Ctrl-C); payload its build id. Chefs stop its running steps."""
    return f"{federation}.build.cancelled"


def events(federation: str, kind: str = ">") -> str:
    """Published events (JSON): `<fed>.events.<kind>`; subscribe with the default for all of them."""
    return f"{federation}.events.{kind}"


def chefs_bucket(federation: str) -> str:
    """JetStream KV bucket: chef id -> ChefInfo (msgpack), refreshed by heartbeats, expiring with its TTL."""
    return f"{federation}_chefs"


REGISTRY_TTL_S = 10.0  # the chefs bucket's max age: a chef whose heartbeats stop drops out after it


def owners_bucket(federation: str) -> str:
    """JetStream KV bucket: digest key -> Ownership (msgpack)."""
    return f"{federation}_owners"


def actions_bucket(federation: str) -> str:
    """JetStream KV bucket: action key -> ActionResult (msgpack), the shared action cache."""
    return f"{federation}_actions"


def kv_key(digest: str) -> str:
    """KV keys may not contain ':'; digests become `<algo>.<hex>`."""
    return digest.replace(":", ".")
