"""What the cluster's view means for a resource's owners in its group's ledger (PRODUCT.md 3.1, 3.7-3.8).

- An owner leaves when its pod is terminating, terminal or gone, its endpoint terminating or gone, or its static
  server is dropped from the spec. The server is removed when no owner of it is live (the ledger's rule).
- A spec edit that stops picking a live pod or endpoint releases it: no longer tracked, never removed.
- A pod first seen already terminal is never recorded: its IP went back to the pool.
- A pod whose deletion the gate holds is leaving, whatever it looks like, until the gate says otherwise.
- A live owner ready for traffic (Ready; or its containers ready, when it declares the resource's readiness gate)
  whose server the group does not show is added: with registration on, and, with it off, when the server was taken
  out by this operator for an owner that turned out live (PRODUCT.md 3.11, 3.13).
- An endpoint missing from every slice while its pod is live, or one without a pod, is judged only after a grace
  period: EndpointSlice updates for a move between slices do not arrive together.

Every decision goes into the ledger and into the Round; nothing here calls the cloud, writes or tells anyone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Container, Iterable, Mapping
from typing import Any

from alb_membership.engine.round import Round
from alb_membership.model.ledger import GroupLedger, OwnerKey
from alb_membership.model.membership import PodView, Seen, endpoint_parts
from alb_membership.model.spec import DEFAULT_WEIGHT
from alb_membership.model.state import ResourceState


class Decider:
    def __init__(self, endpoint_grace_seconds: float, gated: Container[str] = frozenset()) -> None:
        self._grace = endpoint_grace_seconds
        self._gated = gated
        # Endpoint owners absent from every slice, since when: resource UID -> owner id -> monotonic time.
        self._missing: dict[str, dict[str, float]] = {}

    def forget(self, resource_uid: str) -> None:
        self._missing.pop(resource_uid, None)

    def missing(self, resource_uid: str) -> list[str]:
        """The resource's endpoint owners absent from every slice and not judged yet (their grace runs)."""
        return sorted(self._missing.get(resource_uid, ()))

    def reconcile(
        self,
        state: ResourceState,
        ledger: GroupLedger,
        seen: Mapping[str, Seen],
        sources: set[str],
        pod_of: Callable[[str], PodView | None],
        round_: Round,
        only: Iterable[str] | None = None,
        look: Callable[[Iterable[str]], Mapping[str, Seen]] | None = None,
    ) -> None:
        """``seen``: every owner of ``sources`` the spec picks now; recorded owners of those sources missing from
        it are judged unseen. With ``only`` (owner ids), just those owners are looked at, and ``seen`` holds what
        the spec picks of them: what one event touched, at the cost of what it touched; ``look`` tells what the
        spec picks of other owners (those whose removal this look makes final, to be settled if gone). ``pod_of``:
        a pod by UID, as the cluster shows it now."""
        uid = state.ref.uid
        # Live owners first, then those leaving, each in id order: a server a live owner holds is never decided
        # for removal on the way (to be called off at once), and the outcome does not depend on the slices' order.
        for found in sorted(seen.values(), key=lambda s: (s.leaving, s.owner_id)):
            self.apply(state, ledger, found, round_, pod_of(found.pod_uid) if found.pod_uid else None)
        if only is None:
            done = ledger.done_ids(uid)
            recorded = ledger.owner_ids(uid)
        else:
            wanted = set(only)
            ids = sorted(wanted)
            # As done_ids would: the owners made final by the applying above too (fresh_done), seen or not.
            fresh = ledger.fresh_done(uid)
            made_final = [i for i in fresh if i not in wanted]
            also = look(made_final) if look is not None and made_final else {}
            seen = {**also, **seen}
            for owner_id in fresh:
                again = seen.get(owner_id)
                if again is not None and not again.leaving:
                    ledger.keep_fresh((uid, owner_id))  # a look at everything would hold it again next time
            done = [(i, source) for i in [*ids, *made_final] if (source := ledger.done_source((uid, i))) is not None]
            recorded = [i for i in ids if ledger.server_of((uid, i)) is not None]
        for owner_id, source in done:
            if owner_id not in seen and source in sources:
                ledger.settle((uid, owner_id))
        for owner_id in recorded:
            key = (uid, owner_id)
            owner = ledger.owner(key)
            if owner_id in seen or owner is None or owner.leaving or owner.source not in sources:
                continue
            if owner.source == "pod":
                self.unseen_pod(ledger, key, pod_of(owner_id), round_)
            elif owner.source == "endpoint":
                self._unseen_endpoint(state, ledger, key, owner.name, pod_of, round_)
            else:
                leave(ledger, key, "spec-change", None, round_)

    def apply(
        self, state: ResourceState, ledger: GroupLedger, seen: Seen, round_: Round, pod: PodView | None = None
    ) -> None:
        """``pod``: the pod behind a pod or endpoint owner, as the cluster shows it now."""
        key = (state.ref.uid, seen.owner_id)
        self._found(key)
        if not seen.leaving:
            if seen.pod_uid is not None and seen.pod_uid in self._gated:
                return  # its deletion is held by the gate: leaving, not holding (engine/gated.py)
            known = ledger.server_of(key)
            if known is not None and known != seen.server:
                round_.released.append(f"{seen.name or seen.owner_id} ({known}, now {seen.server})")
            round_.changed |= ledger.hold(key, seen.server, seen.source, seen.name)
            self._maybe_add(state, ledger, seen, pod, round_)
        elif ledger.server_of(key) is None and seen.terminal:
            return  # never recorded while it held the IP, and the IP may be someone else's now
        elif ledger.leave(key, seen.trigger or "unknown", seen.deletion_started, seen.server, seen.source, seen.name):
            round_.removals.append(ledger.server_of(key) or seen.server)
        else:
            round_.changed = True

    @staticmethod
    def _maybe_add(state: ResourceState, ledger: GroupLedger, seen: Seen, pod: PodView | None, round_: Round) -> None:
        entry = ledger.entries.get(seen.server)
        if entry is None or entry.change is not None:
            return
        ready = seen.ready or (pod is not None and pod.registrable_for(state.ref.name))
        if not ready:
            return
        registration = state.spec.register_weight
        if entry.undo is not None:
            reason = entry.undo
            weight = entry.weight if entry.weight is not None else registration
            if ledger.want(seen.server, DEFAULT_WEIGHT if weight is None else weight, "undo"):
                round_.additions.append(seen.server)
                round_.undone.append((seen.server, reason))
        elif registration is not None and ledger.want(seen.server, registration, "registration"):
            round_.additions.append(seen.server)

    @staticmethod
    def unseen_pod(ledger: GroupLedger, key: OwnerKey, pod: PodView | None, round_: Round) -> None:
        if pod is None:
            leave(ledger, key, "pod-gone", None, round_)
        elif pod.going_away:
            leave(ledger, key, "pod-terminating", pod.deletion_started, round_)
        else:
            release(ledger, key, pod.name, round_)

    def _unseen_endpoint(
        self,
        state: ResourceState,
        ledger: GroupLedger,
        key: OwnerKey,
        pod_name: str | None,
        pod_of: Callable[[str], PodView | None],
        round_: Round,
    ) -> None:
        service, pod_uid = endpoint_parts(key[1])
        if state.spec.service_name != service or state.spec.backend is None:
            self._found(key)
            release(ledger, key, pod_name or key[1], round_)  # its Service is no longer referenced
            return
        pod = pod_of(pod_uid)
        if pod_name and pod is None:
            self._found(key)
            leave(ledger, key, "endpoint-gone", None, round_)  # its pod is gone
            return
        if pod is not None and pod.going_away:
            self._found(key)
            leave(ledger, key, "endpoint-gone", pod.deletion_started, round_)
            return
        first = self._missing.setdefault(key[0], {}).setdefault(key[1], time.monotonic())
        left = first + self._grace - time.monotonic()
        if left > 0:
            round_.recheck(left)
            return
        self._found(key)
        if pod is not None:
            release(ledger, key, pod.name, round_)  # the Service no longer selects a live pod
        else:
            leave(ledger, key, "endpoint-gone", None, round_)

    def _found(self, key: OwnerKey) -> None:
        """No longer missing: seen again, or judged."""
        missing = self._missing.get(key[0])
        if missing is not None and missing.pop(key[1], None) is not None and not missing:
            del self._missing[key[0]]


def leave(ledger: GroupLedger, key: OwnerKey, trigger: str, started: Any, round_: Round) -> None:
    """A recorded owner leaves; its server goes once no live owner holds it."""
    server = ledger.server_of(key)
    if server is None:
        return
    if ledger.leave(key, trigger, started):
        round_.removals.append(server)
    round_.changed = True


def release(ledger: GroupLedger, key: OwnerKey, name: str | None, round_: Round) -> None:
    """A live owner is no longer tracked; its server stays."""
    if ledger.release(key):
        round_.released.append(name or key[1])
        round_.changed = True
