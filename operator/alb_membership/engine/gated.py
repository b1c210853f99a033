"""Pods whose deletion the gate holds: still live, but no longer holders of their servers (the last check before a
call must not keep a server the gate is taking out). Each is remembered for a while, so that a deletion refused after
the gate (by a PodDisruptionBudget, another webhook) lets its pod count again; bounded in number and pruned on every
use and on a clock of their own, whatever else happens."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

GATED_SECONDS = 60.0  # longer than any hold (25 s) plus the deletion's own way through the API server
MAX_GATED = 10_000


class GatedPods:
    def __init__(
        self, seconds: float = GATED_SECONDS, limit: int = MAX_GATED, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._seconds = seconds
        self._limit = limit
        self._clock = clock
        self._until: OrderedDict[str, float] = OrderedDict()  # pod UID -> until when; oldest first

    def add(self, pod_uid: str) -> None:
        self._until.pop(pod_uid, None)
        self._until[pod_uid] = self._clock() + self._seconds
        self.prune()

    def discard(self, pod_uid: str) -> None:
        """The pod's deletion never came: it counts again."""
        self._until.pop(pod_uid, None)

    def __contains__(self, pod_uid: object) -> bool:
        self.prune()
        return pod_uid in self._until

    def __len__(self) -> int:
        self.prune()
        return len(self._until)

    def prune(self) -> None:
        """Drops the pods whose time ran out (also called on its own clock by the gate, see gate/review.py)."""
        clock = self._clock()
        while self._until and (len(self._until) > self._limit or next(iter(self._until.values())) <= clock):
            self._until.popitem(last=False)
