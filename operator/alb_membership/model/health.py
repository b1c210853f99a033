"""Ready and Degraded conditions, and what to tell a person when the cloud refuses a removal."""

from __future__ import annotations

from alb_membership.alb.errors import CREDENTIALS_UNAVAILABLE, AlbError
from alb_membership.model.state import ResourceState

GROUP_NOT_FOUND = "ResourceNotFoundServerGroup"


def set_health(state: ResourceState, degraded: tuple[str, str] | None) -> None:
    state.group_not_found = degraded is not None and degraded[0] == GROUP_NOT_FOUND
    if degraded is None:
        state.set_condition("Degraded", "False", "AsExpected", "removals are going through")
        state.set_condition("Ready", "True", "Reconciled", "watching members; removals go out as they start leaving")
    else:
        reason, message = degraded
        state.set_condition("Degraded", "True", reason, message)
        state.set_condition("Ready", "False", reason, message)


def group_missing(state: ResourceState) -> bool:
    """The cloud said so to this operator: a condition restored from status is an earlier answer, perhaps about a
    group that exists again, and deleting a resource on its word would release its finalizer removing nothing."""
    return state.group_not_found


def advice(exc: AlbError, group_id: str) -> str:
    if exc.code == "ResourceNotFound.ServerGroup":
        return f"server group {group_id} does not exist in this region: check spec.serverGroupId and spec.region"
    if exc.code.startswith(("Forbidden", "NoPermission")) or exc.http_status == 403:
        return f"the operator's credentials may not change {group_id}: grant alb:RemoveServersFromServerGroup"
    if exc.code == CREDENTIALS_UNAVAILABLE:
        return "the operator has no usable credentials (Secret, RRSA token or instance role): check its configuration"
    if exc.code.startswith(("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidSecurityToken")):
        return "the operator's credentials are not accepted: check the AccessKey, RRSA role or instance role"
    return "the cloud refused the removal; fix the cause named here, the operator retries every minute"
