"""The store's indexes, so that an event costs what it touches, not what the cluster holds: pods by UID and by
address (IP, ECI or ENI id), EndpointSlices by Service and, within a Service, endpoints by owner key (pod UID, or
address for an endpoint without a pod), by address and by pod name.

Each index hears every change of the informer's records (``Informer(on_store=...)``: ``put(old, new)``), so it
always holds exactly what the records hold. A pod's name and UID never change; a pod deleted and made again under
its name is a new record with a new UID, and the old UID leaves the index with the old record.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol

from alb_membership.model.membership import EndpointView, PodView, endpoint_key


class PodIndex:
    """namespace -> UID -> pod, and namespace -> address -> UID -> pod."""

    def __init__(self) -> None:
        self._by_uid: dict[str, dict[str, PodView]] = {}
        self._at: dict[str, dict[str, dict[str, PodView]]] = {}

    def put(self, old: PodView | None, new: PodView | None) -> None:
        if old is not None:
            self._drop(old)
        if new is not None:
            self._by_uid.setdefault(new.namespace, {})[new.uid] = new
            at = self._at.setdefault(new.namespace, {})
            for address in addresses(new):
                at.setdefault(address, {})[new.uid] = new

    def pod(self, namespace: str, uid: str) -> PodView | None:
        return self._by_uid.get(namespace, {}).get(uid)

    def at(self, namespace: str, address: str) -> list[PodView]:
        return list(self._at.get(namespace, {}).get(address, {}).values())

    def _drop(self, old: PodView) -> None:
        by_uid = self._by_uid.get(old.namespace)
        if by_uid is None or by_uid.get(old.uid) is not old:
            return  # already replaced by a newer record of that UID
        del by_uid[old.uid]
        if not by_uid:
            del self._by_uid[old.namespace]
        at = self._at.get(old.namespace, {})
        for address in addresses(old):
            holders = at.get(address)
            if holders is not None and holders.get(old.uid) is old:
                del holders[old.uid]
                if not holders:
                    del at[address]
        if not at:
            self._at.pop(old.namespace, None)


def addresses(pod: PodView) -> set[str]:
    """What a server may name a pod by: its IP, and its ECI or ENI id (the only annotations a PodView keeps)."""
    out = set(pod.annotations.values())
    if pod.ip:
        out.add(pod.ip)
    return out


class Slice(Protocol):
    @property
    def namespace(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def service(self) -> str: ...
    @property
    def endpoints(self) -> list[EndpointView]: ...


Terms = dict[str, dict[str, list[EndpointView]]]  # term -> slice name -> that slice's endpoints with the term


class ServiceEndpoints:
    """One Service's EndpointSlices and their endpoints, by owner key, address and pod name. Look-ups keep the
    slices' order (the informer's records' order), so that an owner seen in two slices is judged as a scan of
    the records would judge it."""

    __slots__ = ("by_address", "by_key", "by_pod_name", "order", "slices")

    def __init__(self) -> None:
        self.slices: dict[str, Slice] = {}  # slice name -> record
        self.order: dict[str, int] = {}
        self.by_key: Terms = {}
        self.by_address: Terms = {}
        self.by_pod_name: Terms = {}

    def endpoints(self) -> list[EndpointView]:
        ordered = sorted(self.slices, key=self.order.__getitem__)
        return [ep for name in ordered for ep in self.slices[name].endpoints]

    def add(self, record: Slice, position: int) -> None:
        if record.name not in self.slices:
            self.order[record.name] = position
        self.slices[record.name] = record
        for ep in record.endpoints:
            _add(self.by_key, endpoint_key(ep), record.name, ep)
            _add(self.by_address, ep.address, record.name, ep)
            if ep.pod_name:
                _add(self.by_pod_name, ep.pod_name, record.name, ep)

    def remove(self, record: Slice) -> None:
        for ep in record.endpoints:
            _remove(self.by_key, endpoint_key(ep), record.name)
            _remove(self.by_address, ep.address, record.name)
            if ep.pod_name:
                _remove(self.by_pod_name, ep.pod_name, record.name)
        self.slices.pop(record.name, None)
        self.order.pop(record.name, None)

    def replace(self, old: Slice, new: Slice) -> set[str]:
        """A new version of a slice (same name): only the owners whose endpoints changed are re-indexed (the
        others' entries are equal either way). Returns their keys."""
        before, after = by_key(old.endpoints), by_key(new.endpoints)
        changed = {key for key in before.keys() | after.keys() if before.get(key) != after.get(key)}
        self.slices[new.name] = new  # in its place
        name = new.name
        for key in changed:
            gone, come = before.get(key, []), after.get(key, [])
            if come:
                self.by_key.setdefault(key, {})[name] = come
            else:
                _remove(self.by_key, key, name)
            for ep in gone:
                _discard(self.by_address, ep.address, name, ep)
                if ep.pod_name:
                    _discard(self.by_pod_name, ep.pod_name, name, ep)
            for ep in come:
                _add(self.by_address, ep.address, name, ep)
                if ep.pod_name:
                    _add(self.by_pod_name, ep.pod_name, name, ep)
        return changed

    def look_up(self, terms: Terms, term: str) -> list[EndpointView]:
        found = terms.get(term)
        if not found:
            return []
        if len(found) == 1:
            return list(next(iter(found.values())))
        return [ep for name in sorted(found, key=self.order.__getitem__) for ep in found[name]]


def _add(terms: Terms, term: str, slice_name: str, ep: EndpointView) -> None:
    terms.setdefault(term, {}).setdefault(slice_name, []).append(ep)


def _remove(terms: Terms, term: str, slice_name: str) -> None:
    found = terms.get(term)
    if found is not None:
        found.pop(slice_name, None)
        if not found:
            del terms[term]


def _discard(terms: Terms, term: str, slice_name: str, ep: EndpointView) -> None:
    """One endpoint (by value) out of a term's list for a slice."""
    found = terms.get(term)
    listed = found.get(slice_name) if found is not None else None
    if found is None or listed is None or ep not in listed:
        return
    listed.remove(ep)
    if not listed:
        del found[slice_name]
        if not found:
            del terms[term]


class EndpointIndex:
    """(namespace, Service) -> its endpoints."""

    def __init__(self) -> None:
        self._services: dict[tuple[str, str], ServiceEndpoints] = {}
        # (namespace, slice name) -> when first seen: the informer's records keep a name's place until it is
        # deleted, whatever Service its slice names meanwhile, and the index keeps that order.
        self._order: dict[tuple[str, str], int] = {}
        self._seen = 0
        self._last: tuple[Slice, Slice, frozenset[str]] | None = None  # the last replace: (old, new, changed keys)

    def put(self, old: Slice | None, new: Slice | None) -> None:
        self._last = None
        if old is not None and new is not None and (old.namespace, old.service) == (new.namespace, new.service):
            service = self._services.get((old.namespace, old.service))
            if old.service and service is not None and service.slices.get(old.name) is old:
                self._last = (old, new, frozenset(service.replace(old, new)))
                return
        if old is not None and old.service:
            service = self._services.get((old.namespace, old.service))
            if service is not None and service.slices.get(old.name) is old:
                service.remove(old)
                if not service.slices:
                    del self._services[(old.namespace, old.service)]
        if old is not None and new is None:
            self._order.pop((old.namespace, old.name), None)
        if new is not None:
            place = self._order.get((new.namespace, new.name))
            if place is None:
                self._seen += 1
                place = self._order[(new.namespace, new.name)] = self._seen
            if new.service:
                self._services.setdefault((new.namespace, new.service), ServiceEndpoints()).add(new, place)

    def service(self, namespace: str, service: str) -> ServiceEndpoints | None:
        return self._services.get((namespace, service))

    def changed(self, old: Slice, new: Slice) -> frozenset[str]:
        """The owner keys whose endpoints differ between two versions of a slice of one Service (known already
        when it was the index's last change)."""
        if self._last is not None and self._last[0] is old and self._last[1] is new:
            return self._last[2]
        before, after = by_key(old.endpoints), by_key(new.endpoints)
        return frozenset(key for key in before.keys() | after.keys() if before.get(key) != after.get(key))


def by_key(endpoints: Iterable[EndpointView]) -> Mapping[str, list[EndpointView]]:
    out: dict[str, list[EndpointView]] = {}
    for ep in endpoints:
        out.setdefault(endpoint_key(ep), []).append(ep)
    return out
