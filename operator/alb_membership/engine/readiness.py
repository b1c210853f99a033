"""Pod readiness gates (PRODUCT.md 3.12): the condition ``target-health.albmembership.io/<resource>`` on every member
pod that declares it, True once every server of the pod for that resource is Available in the group, False with a
reason a person can act on otherwise; and the reads of the group that tell.

Why reads, not our own jobs alone: with registration off someone else adds the servers, and even our own job's end
says the call was done, not that the group sends the server traffic. So while a declared pod's server is not
Available and no addition of ours is under way for it, its group is read (those servers only) every poll.

Only conditions that change are written (by status and reason), one write per pod at a time, the newest wins.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from alb_membership.alb.models import Server
from alb_membership.metrics import Metrics
from alb_membership.model.ledger import Entry, GroupKey, GroupLedger
from alb_membership.model.membership import PodView, gate_condition

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0
MAX_WRITING = 8  # condition writes at once
MAX_RETRY_SECONDS = 30.0  # a condition that could not be written is tried again, at most this far apart

SetCondition = Callable[[str, str, str, dict[str, Any]], Awaitable[bool]]  # namespace, name, uid, condition
ReadGroup = Callable[[GroupKey, list[Server]], Awaitable[dict[Server, tuple[str, int | None]]]]
OnRead = Callable[[GroupKey, dict[Server, tuple[str, int | None]]], None]


@dataclass(frozen=True)
class GateVerdict:
    status: str  # True | False
    reason: str
    message: str


def verdict(entries: list[Entry], group_id: str) -> GateVerdict:
    """What the gate of a pod says, from the entries of its servers for one resource. Pure."""
    if not entries:
        return GateVerdict("False", "ServerNotRegistered", "no server of this pod is known yet (no IP, not picked)")
    failed = [e for e in entries if e.addition is not None and e.addition.error is not None]
    if failed:
        error = failed[0].addition.error if failed[0].addition is not None else None
        return GateVerdict(
            "False", "RegistrationFailed", f"RegistrationFailed: {error or 'unknown'} (adding {failed[0].server})"
        )
    waiting = [e for e in entries if e.in_group != "Available"]
    if not waiting:
        return GateVerdict("True", "ServerAvailable", f"every server of this pod is Available in {group_id}")
    first = waiting[0]
    if first.addition is not None or first.in_group in ("Adding", "Configuring"):
        return GateVerdict("False", "ServerAdding", f"{first.server} is being added to {group_id}")
    if first.removal is not None:
        return GateVerdict("False", "ServerLeaving", f"{first.server} is leaving {group_id}")
    return GateVerdict("False", "ServerNotRegistered", f"{first.server} is not in {group_id} yet")


class ReadinessGates:
    def __init__(
        self,
        set_condition: SetCondition,
        read_group: ReadGroup,
        on_read: OnRead,
        metrics: Metrics,
        poll_seconds: float = POLL_SECONDS,
    ) -> None:
        self._set = set_condition
        self._read = read_group
        self._on_read = on_read
        self._metrics = metrics
        self._poll_seconds = poll_seconds
        # (namespace, name) -> (uid, condition, tries): the newest condition each pod is to get.
        self._writes: OrderedDict[tuple[str, str], tuple[str, dict[str, Any], int]] = OrderedDict()
        self._writing: set[tuple[str, str]] = set()
        self._writer: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._waiting: dict[GroupKey, set[Server]] = {}  # servers to read, by group
        self._pollers: dict[GroupKey, asyncio.Task[None]] = {}
        self._later: set[asyncio.TimerHandle] = set()
        self.closed = False

    def consider(self, resource_name: str, ledger: GroupLedger, pod: PodView, entries: list[Entry]) -> None:
        """``entries``: those of the pod's live servers for the resource named ``resource_name``."""
        if self.closed or not pod.declares(resource_name) or pod.going_away:
            return
        now = verdict(entries, ledger.group_id)
        if now.status != "True" and (pod.containers_ready or pod.ready):
            self._wait(ledger.key, [e.server for e in entries if e.in_group != "Available" and e.change is None])
        if pod.gate(resource_name) == (now.status, now.reason):
            return
        condition: dict[str, Any] = {
            "type": gate_condition(resource_name),
            "status": now.status,
            "reason": now.reason,
            "message": now.message,
        }
        if pod.gate(resource_name)[0] != now.status:
            condition["lastTransitionTime"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        key = (pod.namespace, pod.name)
        self._writes.pop(key, None)
        self._writes[key] = (pod.uid, condition, 0)
        self._wake.set()
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_all(), name="readiness-gates")

    def confirm(self, key: GroupKey, servers: Iterable[Server]) -> None:
        """These servers are to be read alone (by their ServerIds) with the next poll."""
        if not self.closed:
            self._wait(key, servers)

    async def close(self) -> None:
        self.closed = True
        for handle in self._later:
            handle.cancel()
        tasks = [t for t in (self._writer, *self._pollers.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- writes --------------------------------------------------------------------------------------------------

    async def _write_all(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._writes:
                ready = [k for k in self._writes if k not in self._writing][:MAX_WRITING]
                if not ready:
                    break
                await asyncio.gather(*(self._write(key) for key in ready))

    async def _write(self, key: tuple[str, str]) -> None:
        uid, condition, tries = self._writes.pop(key)
        self._writing.add(key)
        try:
            if await self._set(key[0], key[1], uid, condition):
                self._metrics.gate_conditions.labels(condition["status"]).inc()
        except Exception as exc:
            # Tried again, less and less often, until written or superseded: a pod whose condition is never
            # written would wait for an unrelated event of its own.
            self._metrics.internal_errors.labels("readiness-gate").inc()
            delay = min(MAX_RETRY_SECONDS, 0.25 * 2**tries)
            log.warning("could not set %s on pod %s/%s (%s); again in %.1fs", condition["type"], *key, exc, delay)
            self._again(key, (uid, condition, tries + 1), delay)
        finally:
            self._writing.discard(key)

    def _again(self, key: tuple[str, str], write: tuple[str, dict[str, Any], int], delay: float) -> None:
        handle: asyncio.TimerHandle

        def fire() -> None:
            self._later.discard(handle)
            if self.closed or key in self._writes:
                return  # a newer condition for the pod is on its way
            self._writes[key] = write
            self._wake.set()

        handle = asyncio.get_running_loop().call_later(delay, fire)
        self._later.add(handle)

    # -- reads ---------------------------------------------------------------------------------------------------

    def _wait(self, key: GroupKey, servers: Iterable[Server]) -> None:
        wanted = self._waiting.setdefault(key, set())
        wanted.update(servers)
        if not wanted:
            del self._waiting[key]
            return
        poller = self._pollers.get(key)
        if poller is None or poller.done():
            self._pollers[key] = asyncio.create_task(self._poll(key), name=f"readiness-{key[1]}")

    async def _poll(self, key: GroupKey) -> None:
        """Reads the group's awaited servers every poll, while any are awaited (considering a pod again awaits
        its servers again)."""
        while self._waiting.get(key):
            await asyncio.sleep(self._poll_seconds)
            servers = sorted(self._waiting.pop(key, set()))
            if not servers:
                break
            try:
                listed = await self._read(key, servers)
            except Exception as exc:
                log.debug("could not read %s for readiness gates: %s", key[1], exc)
                self._waiting.setdefault(key, set()).update(servers)
                continue
            self._on_read(key, listed)
        self._pollers.pop(key, None)
