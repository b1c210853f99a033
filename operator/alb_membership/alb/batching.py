"""Splits removals into API calls and gives each call a deterministic ClientToken.

The token is a digest of the caller's seed (Kubernetes UIDs), the batch's position and its servers: the same
removal always gets the same token, so a retry or a re-submission after a restart cannot start a second job,
while a different removal (say, a reused pod IP under a new pod UID) never collides with an old one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from alb_membership.alb.models import Server

MAX_TOKEN_LENGTH = 64
DEFAULT_BATCH_SIZE = 40  # the API page's per-call figure
MAX_BATCH_SIZE = 200  # the API's current limit


@dataclass(frozen=True)
class Batch:
    servers: tuple[Server, ...]
    client_token: str


def client_token(seed: str, servers: Iterable[Server], index: int = 0) -> str:
    digest = hashlib.sha256("\n".join([seed, str(index), *sorted(s.key for s in servers)]).encode()).hexdigest()
    return f"albm-{digest[: MAX_TOKEN_LENGTH - 5]}"


def batches(servers: Iterable[Server], seed: str, size: int = DEFAULT_BATCH_SIZE) -> list[Batch]:
    if not 1 <= size <= MAX_BATCH_SIZE:
        raise ValueError(f"batch size must be between 1 and {MAX_BATCH_SIZE}, not {size}")
    ordered = sorted(set(servers))
    chunks = [tuple(ordered[i : i + size]) for i in range(0, len(ordered), size)]
    return [Batch(servers=c, client_token=client_token(seed, c, i)) for i, c in enumerate(chunks)]
