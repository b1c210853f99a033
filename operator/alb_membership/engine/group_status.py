"""A group's status as the cloud shows it (ListServerGroups, a read): whether it takes changes now, and its
connection drain timeout.

Why: while a job of the group runs, the cloud refuses other changes (IncorrectStatus.ServerGroup). Rather than spend
the region's write quota on refused calls, the pipeline waits here until the group takes changes again or its jobs
end; the call's own retries cover what is left."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from alb_membership.alb.client import AlbClient

log = logging.getLogger(__name__)

READ_SECONDS = 2.0


class GroupStatus:
    def __init__(self, client: AlbClient, group_id: str, poll_seconds: float, wait_seconds: float) -> None:
        self._client = client
        self._group_id = group_id
        self._poll_seconds = poll_seconds
        self._wait_seconds = wait_seconds
        self.drain_seconds: float | None = None  # the connection drain timeout, as last read (None: never read)

    async def until_accepts(self, busy: Callable[[], bool]) -> None:
        """``busy``: a job of ours runs in the group. Returns once the group is not Configuring, nothing of ours
        runs, the wait ran out, or the group could not be read (the call itself will tell what is wrong). Every
        read, retries included, stays within the wait."""
        if self.drain_seconds is not None and not busy():
            return  # read before, and nothing of ours runs in the group: no reason to think it busy
        deadline = asyncio.get_running_loop().time() + self._wait_seconds
        while True:
            try:
                # A group that cannot be read now lets the call go out (its own retries take over): one read is
                # not given the client's whole retry policy.
                read_by = min(deadline, asyncio.get_running_loop().time() + READ_SECONDS)
                [group] = await self._client.list_server_groups([self._group_id], deadline=read_by)
            except Exception as exc:
                log.debug("could not read the status of %s: %s", self._group_id, exc)
                return
            drain = group.get("ConnectionDrainConfig") or {}
            enabled = drain.get("ConnectionDrainEnabled") in (True, "true")
            self.drain_seconds = float(drain.get("ConnectionDrainTimeout") or 0) if enabled else 0.0
            if group.get("ServerGroupStatus") != "Configuring" or not busy():
                return
            if asyncio.get_running_loop().time() > deadline:
                return
            await asyncio.sleep(self._poll_seconds)
