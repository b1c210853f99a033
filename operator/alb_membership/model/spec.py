"""A ServerGroupMembership's spec as typed values; the API server has already enforced the schema and CEL rules."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from alb_membership.alb.models import Server

GROUP = "albmembership.io"
VERSION = "v1alpha1"
PLURAL = "servergroupmemberships"
KIND = "ServerGroupMembership"
DEFAULT_GATE_SECONDS = 20.0
MAX_GATE_SECONDS = 25.0  # under the API server's 30 s webhook limit
DEFAULT_WEIGHT = 100  # AddServersToServerGroup's own default


@dataclass(frozen=True)
class Ref:
    namespace: str
    name: str
    uid: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"

    def body(self) -> dict[str, Any]:
        """Enough of the object for Events to point at it."""
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": KIND,
            "metadata": {"namespace": self.namespace, "name": self.name, "uid": self.uid},
        }


@dataclass(frozen=True)
class Selector:
    match_labels: Mapping[str, str] = field(default_factory=dict)
    match_expressions: tuple[tuple[str, str, frozenset[str]], ...] = ()

    @classmethod
    def from_spec(cls, raw: Mapping[str, Any]) -> Selector:
        return cls(
            match_labels=dict(raw.get("matchLabels") or {}),
            match_expressions=tuple(
                (e["key"], e["operator"], frozenset(e.get("values") or ())) for e in raw.get("matchExpressions") or ()
            ),
        )

    def matches(self, labels: Mapping[str, str]) -> bool:
        if any(labels.get(k) != v for k, v in self.match_labels.items()):
            return False
        for key, op, values in self.match_expressions:
            present = key in labels
            if (
                (op == "In" and (not present or labels[key] not in values))
                or (op == "NotIn" and present and labels[key] in values)
                or (op == "Exists" and not present)
                or (op == "DoesNotExist" and present)
            ):
                return False
        return True


@dataclass(frozen=True)
class Backend:
    server_type: str  # Ip | Eci | Eni
    port: int


@dataclass(frozen=True)
class Spec:
    server_group_id: str
    region: str | None
    pod_selector: Selector | None
    service_name: str | None
    backend: Backend | None
    servers: tuple[Server, ...]
    deletion_policy: str
    dry_run: bool
    # The deletion gate: the longest a member pod's deletion (or eviction) is held until its servers are out of
    # rotation; None when the gate is off.
    gate_seconds: float | None = None
    # Registration (PRODUCT.md 3.11): the weight live members are added with; None when members are only removed.
    register_weight: int | None = None

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> Spec:
        backend = raw.get("backend")
        gate = raw.get("deletionGate") or {}
        registration = raw.get("registration") or {}
        return cls(
            server_group_id=raw["serverGroupId"],
            region=raw.get("region"),
            pod_selector=Selector.from_spec(raw["podSelector"]) if raw.get("podSelector") is not None else None,
            service_name=(raw.get("serviceRef") or {}).get("name"),
            backend=Backend(backend["serverType"], int(backend["port"])) if backend else None,
            servers=tuple(
                Server(s["serverType"], s["serverId"], int(s["port"]), s.get("serverIp"))
                for s in raw.get("servers") or ()
            ),
            deletion_policy=raw.get("deletionPolicy", "Remove"),
            dry_run=bool(raw.get("dryRun", False)),
            gate_seconds=min(MAX_GATE_SECONDS, float(gate.get("maxWaitSeconds", DEFAULT_GATE_SECONDS)))
            if gate.get("enabled")
            else None,
            register_weight=int(registration.get("weight", DEFAULT_WEIGHT)) if registration.get("enabled") else None,
        )
