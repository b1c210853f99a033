"""The ALB API's flow-control quotas, per account, region and API (calls per 60 s), and the client-side limits the
operator keeps under them: every action it calls has one, so that no read loop can spend the region's quota.

Documented (reference/alb-api.md, the ALB quota page): AddServersToServerGroup and ReplaceServersInServerGroup
200/60 s. UNCONFIRMED: RemoveServersFromServerGroup (probably 200/60 s, like the other writes) and the reads
ListServerGroupServers, ListServerGroups and ListAsynJobs (the GWLB/NLB pages give reads 600/60 s). The limits
below keep 10% under each, so that another client of the account still has room."""

from __future__ import annotations

from alb_membership.alb.ratelimit import SlidingWindowLimiter

# The resource limit on servers in one server group (reference/alb-api.md section 8); past it an add is refused
# with QuotaExceeded.ServersNum. (Servers per call: batching.MAX_BATCH_SIZE.)
SERVERS_PER_GROUP = 1000

PERIOD_SECONDS = 60.0
QUOTAS = {
    "RemoveServersFromServerGroup": 200,
    "AddServersToServerGroup": 200,
    "ReplaceServersInServerGroup": 200,
    "ListServerGroupServers": 600,
    "ListServerGroups": 600,
    "ListAsynJobs": 600,
}
SHARE = 0.9


def limiters(write_calls: int, write_period: float) -> dict[str, SlidingWindowLimiter]:
    """One limiter per action. The writes take the operator's --api-rate-limit/--api-rate-period (default 180 per
    60 s); the reads 90% of their quota."""
    writes = {"RemoveServersFromServerGroup", "AddServersToServerGroup", "ReplaceServersInServerGroup"}
    return {
        action: SlidingWindowLimiter(write_calls, write_period)
        if action in writes
        else SlidingWindowLimiter(int(quota * SHARE), PERIOD_SECONDS)
        for action, quota in QUOTAS.items()
    }
