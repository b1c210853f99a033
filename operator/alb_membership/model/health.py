"""Ready and Degraded conditions, and what to tell a person when the cloud refuses a change."""

from __future__ import annotations

from alb_membership.alb.errors import CREDENTIALS_UNAVAILABLE, AlbError
from alb_membership.alb.quotas import SERVERS_PER_GROUP
from alb_membership.model.state import ResourceState

GROUP_NOT_FOUND = "ResourceNotFoundServerGroup"


UNMAPPABLE = "UnmappableMember"


def set_health(state: ResourceState, degraded: tuple[str, str] | None) -> None:
    """``degraded``: (reason, message), or None when calls go through. A resource with registration that has members
    it cannot turn into servers (so cannot add) stays Degraded for them until they are mapped or gone."""
    if degraded is None and state.unmappable and state.spec.register_weight is not None:
        names = sorted(state.unmappable)
        degraded = (
            UNMAPPABLE,
            f"{len(names)} member(s) cannot be added: "
            + "; ".join(f"{n}: {state.unmappable[n]}" for n in names[:5])
            + (" ..." if len(names) > 5 else ""),
        )
    state.group_not_found = degraded is not None and degraded[0] == GROUP_NOT_FOUND
    if degraded is None:
        state.set_condition("Degraded", "False", "AsExpected", "removals are going through")
        state.set_condition("Ready", "True", "Reconciled", "watching members; removals go out as they start leaving")
    else:
        reason, message = degraded
        state.set_condition("Degraded", "True", reason, message)
        state.set_condition("Ready", "False", reason, message)


def mapping_changed(state: ResourceState) -> None:
    """The members that cannot be mapped changed: Degraded follows, unless it says something else."""
    current = state.conditions.get("Degraded")
    if current is None or current.status == "False" or current.reason == UNMAPPABLE:
        set_health(state, None)


def group_missing(state: ResourceState) -> bool:
    """The cloud said so to this operator: a condition restored from status is an earlier answer, perhaps about a
    group that exists again, and deleting a resource on its word would release its finalizer removing nothing."""
    return state.group_not_found


# What advice calls each write when it has nothing more particular to say.
CHANGES = {
    "RemoveServersFromServerGroup": "removal",
    "AddServersToServerGroup": "addition",
}


def advice(exc: AlbError, group_id: str, action: str = "RemoveServersFromServerGroup") -> str:
    """What a person can do about a refusal of ``action`` on ``group_id``."""
    if exc.code == "ResourceNotFound.ServerGroup":
        return f"server group {group_id} does not exist in this region: check spec.serverGroupId and spec.region"
    if exc.code.startswith(("Forbidden", "NoPermission")) or exc.http_status == 403:
        return f"the operator's credentials may not change {group_id}: grant alb:{action}"
    if exc.code == CREDENTIALS_UNAVAILABLE:
        return "the operator has no usable credentials (Secret, RRSA token or instance role): check its configuration"
    if exc.code.startswith(("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidSecurityToken")):
        return "the operator's credentials are not accepted: check the AccessKey, RRSA role or instance role"
    if exc.code == "QuotaExceeded.ServersNum":
        return (
            f"server group {group_id} would hold more than {SERVERS_PER_GROUP:,} servers, the most ALB allows in one"
            " group: remove servers it no longer needs, or spread the members over more server groups; adding is"
            " refused until it has room"
        )
    if exc.code == "Mismatch.ServerType":
        return (
            f"server group {group_id} does not take servers of this type (an Ip group takes Ip servers, an Instance"
            " group Ecs, Eni and Eci): make spec.backend.serverType and spec.servers' serverType match the group's"
            " type, or use a group of the right type"
        )
    if exc.code == "IllegalParam.Weight":
        return "the cloud refused a server's weight: a weight is a whole number from 0 to 100"
    if action == "RemoveServersFromServerGroup":
        return "the cloud refused the removal; fix the cause named here, the operator retries every minute"
    return f"the cloud refused the {CHANGES.get(action, 'change')}; fix the cause named here"
