"""Ready and Degraded conditions, and what to tell a person when the cloud refuses a removal."""

from __future__ import annotations

from alb_membership.alb.errors import CREDENTIALS_UNAVAILABLE, AlbError
from alb_membership.model.state import ResourceState


def set_health(state: ResourceState, degraded: tuple[str, str] | None) -> None:
    if degraded is None:
        state.set_condition("Degraded", "False", "AsExpected", "removals are going through")
        state.set_condition("Ready", "True", "Reconciled", "watching members; removals go out as they start leaving")
    else:
        reason, message = degraded
        state.set_condition("Degraded", "True", reason, message)
        state.set_condition("Ready", "False", reason, message)


def group_missing(state: ResourceState) -> bool:
    degraded = state.conditions.get("Degraded")
    return degraded is not None and degraded.status == "True" and degraded.reason == "ResourceNotFoundServerGroup"


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
