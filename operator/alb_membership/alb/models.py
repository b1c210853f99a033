"""Values the ALB client takes and returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

SERVER_TYPES = ("Ecs", "Eni", "Eci", "Ip", "Fc")
PORT_REQUIRED = frozenset({"Ecs", "Eni", "Eci", "Ip"})
# A server's Status in ListServerGroupServers: the ALB SDK's four, and Draining, which GWLB documents and the
# emulator shows with drain_status: Draining (docs/emulator.md). Another value is kept as the cloud gave it.
SERVER_STATUSES = ("Adding", "Available", "Configuring", "Removing", "Draining")
# A server's Weight: 0 (no new requests) to 100, the API's default.
MIN_WEIGHT, MAX_WEIGHT = 0, 100
DEFAULT_WEIGHT = MAX_WEIGHT


@dataclass(frozen=True, order=True, slots=True)
class Server:
    """One backend of a server group, identified as the API identifies it."""

    server_type: str
    server_id: str
    port: int | None = None
    server_ip: str | None = None

    def __post_init__(self) -> None:
        if self.server_type not in SERVER_TYPES:
            raise ValueError(f"server type {self.server_type!r} is not one of {', '.join(SERVER_TYPES)}")
        if not self.server_id:
            raise ValueError("a server needs an id")
        if self.port is None and self.server_type in PORT_REQUIRED:
            raise ValueError(f"a {self.server_type} server needs a port")
        if self.port is not None and not 1 <= self.port <= 65535:
            raise ValueError(f"port {self.port} is not between 1 and 65535")

    @classmethod
    def parse(cls, spec: str) -> Server:
        """``TYPE:ID:PORT[:IP]``, e.g. ``Ip:10.0.0.5:8080``, ``Eni:eni-bp1abc:80:10.0.0.5`` or, with IPv6 in
        brackets, ``Ip:[fd00::5]:8080``. Also reads the unbracketed IPv6 form operator 0.1 wrote to status."""
        parts = _fields(spec)
        if parts is None:
            raise ValueError(f"server {spec!r} is not TYPE:ID:PORT[:IP]")
        try:
            port = int(parts[2]) if parts[2] else None
        except ValueError:
            raise ValueError(f"server {spec!r}: port {parts[2]!r} is not a number") from None
        return cls(
            server_type=parts[0],
            server_id=parts[1],
            port=port,
            server_ip=parts[3] if len(parts) == 4 else None,
        )

    @property
    def key(self) -> str:
        return f"{self.server_type}|{self.server_id}|{self.port or ''}|{self.server_ip or ''}"

    @property
    def compact(self) -> str:
        """``TYPE:ID:PORT[:IP]``, the form ``parse`` reads: short enough to key status maps by. A field with a
        colon in it (an IPv6 address) is put in brackets."""
        fields = [self.server_type, self.server_id, str(self.port or "")]
        if self.server_ip:
            fields.append(self.server_ip)
        return ":".join(f"[{f}]" if ":" in f else f for f in fields)

    @staticmethod
    def in_rotation(listed: list[dict[str, Any]]) -> set[Server]:
        """The servers of a ListServerGroupServers answer still in the group (ListedServer.in_rotation)."""
        return {x.server for x in map(ListedServer.from_api, listed) if x.in_rotation}

    @classmethod
    def from_api(cls, raw: dict[str, Any]) -> Server:
        """A server as ListServerGroupServers returns it; ServerIp counts only for Eni, as in the API's identity."""
        port = raw.get("Port")
        server_type = str(raw.get("ServerType"))
        return cls(
            server_type,
            str(raw.get("ServerId")),
            int(port) if port not in (None, "") else None,
            (raw.get("ServerIp") or None) if server_type == "Eni" else None,
        )

    def __str__(self) -> str:
        host = f"[{self.server_id}]" if ":" in self.server_id and self.port else self.server_id
        address = f"{host}:{self.port}" if self.port else self.server_id
        return f"{self.server_type}/{address}" + (f" ({self.server_ip})" if self.server_ip else "")

    def to_status(self) -> dict[str, str | int]:
        out: dict[str, str | int] = {"serverType": self.server_type, "serverId": self.server_id}
        if self.port is not None:
            out["port"] = self.port
        if self.server_ip:
            out["serverIp"] = self.server_ip
        return out

    @classmethod
    def from_status(cls, raw: dict[str, Any]) -> Server:
        port = raw.get("port")
        return cls(raw["serverType"], raw["serverId"], int(port) if port else None, raw.get("serverIp"))

    def to_api(self, weight: int | None = None) -> dict[str, str]:
        """The server's fields as a request carries them (``Weight`` too when given), values as the SDK
        stringifies them. The order does not matter on the wire: query and form body are sorted by key."""
        out = {"ServerId": self.server_id, "ServerType": self.server_type}
        if self.port is not None:
            out["Port"] = str(self.port)
        if self.server_ip:
            out["ServerIp"] = self.server_ip
        if weight is not None:
            out["Weight"] = str(check_weight(weight, self))
        return out


def check_weight(weight: object, server: Server | None = None) -> int:
    """A weight the API takes: a whole number from 0 to 100. Anything else is the caller's mistake (ValueError),
    caught before a call the cloud would refuse with IllegalParam.Weight."""
    if isinstance(weight, bool) or not isinstance(weight, int) or not MIN_WEIGHT <= weight <= MAX_WEIGHT:
        whose = f" for {server}" if server is not None else ""
        raise ValueError(f"weight {weight!r}{whose} is not a whole number from {MIN_WEIGHT} to {MAX_WEIGHT}")
    return weight


@dataclass(frozen=True, slots=True)
class ListedServer:
    """One server as ListServerGroupServers shows it: which server, its ``status`` (one of SERVER_STATUSES, or
    whatever else the cloud said; empty when it said nothing) and its ``weight`` (None when the answer has none
    that reads as a whole number)."""

    server: Server
    status: str
    weight: int | None

    @classmethod
    def from_api(cls, raw: dict[str, Any]) -> ListedServer:
        weight = raw.get("Weight")
        if isinstance(weight, str) and weight.strip().isdigit():
            weight = int(weight)
        return cls(
            Server.from_api(raw),
            str(raw.get("Status") or ""),
            weight if isinstance(weight, int) and not isinstance(weight, bool) else None,
        )

    @property
    def in_rotation(self) -> bool:
        """Still in the group, as far as removing it goes: a Draining one is out of rotation already, and removing
        it again is refused as not found. (Removing is no proof that it is out: docs/deletion-gate.md.)"""
        return self.status != "Draining"


@dataclass(frozen=True)
class RemoveAnswer:
    """What one RemoveServersFromServerGroup call came to.

    accepted: a job was started (``job_id``); already_removed: none of the servers was in the group any more
    (``ResourceNotFound.BackendServer``), so there is nothing to do; dry_run_passed: the precheck passed.
    """

    outcome: Literal["accepted", "already_removed", "dry_run_passed"]
    request_id: str
    job_id: str | None = None


@dataclass(frozen=True)
class AddAnswer:
    """What one AddServersToServerGroup call came to.

    accepted: a job was started (``job_id``); the servers show Adding, then Available. already_added: the cloud
    refused the whole call because at least one of its servers is in the group already
    (``ResourceAlreadyAssociated.BackendServer``): nothing was started, and which of them are there a listing
    tells (AlbClient.listed_servers). dry_run_passed: the precheck passed (``DryRunOperation``).
    """

    outcome: Literal["accepted", "already_added", "dry_run_passed"]
    request_id: str
    job_id: str | None = None


@dataclass(frozen=True)
class Job:
    job_id: str
    status: Literal["Processing", "Succeeded", "Failed", "Unknown"]
    error_code: str | None = None
    error_message: str | None = None


def _fields(spec: str) -> list[str] | None:
    """The fields of a compact server: bracketed ones may hold colons."""
    fields: list[str] = []
    rest = spec
    while True:
        if rest.startswith("["):
            end = rest.find("]")
            if end < 0 or rest[end + 1 : end + 2] not in ("", ":"):
                return None
            fields.append(rest[1:end])
            rest = rest[end + 1 :]
        else:
            field, sep, rest = rest.partition(":")
            fields.append(field)
            rest = sep + rest
        if not rest:
            break
        rest = rest[1:]
    if len(fields) > 4 and "[" not in spec:
        fields = _unbracketed_ipv6(fields)
    if len(fields) not in (3, 4) or not all(fields[:2]):
        return None
    return fields


def _unbracketed_ipv6(fields: list[str]) -> list[str]:
    """Operator 0.1 wrote IPv6 without brackets: ``Ip:fd00::5:8080`` (the id is everything between the type and
    the port) or ``Eni:eni-1:80:fd00::5`` (the IP is everything after the port)."""
    if fields[0] == "Eni":
        return [*fields[:3], ":".join(fields[3:])]
    return [fields[0], ":".join(fields[1:-1]), fields[-1]]
