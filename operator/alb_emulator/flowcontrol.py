"""Per-API flow control over a sliding window, as the cloud's quota (calls per API per account per window)."""

from __future__ import annotations

from collections import deque


class FlowControl:
    def __init__(self, limits: dict[str, tuple[int, float]]) -> None:
        self.limits = limits
        self._calls: dict[str, deque[float]] = {}

    def admit(self, action: str, now: float) -> bool:
        limit = self.limits.get(action)
        if limit is None:
            return True
        calls, window = limit
        recent = self._calls.setdefault(action, deque())
        while recent and recent[0] <= now - window:
            recent.popleft()
        if len(recent) >= calls:
            return False
        recent.append(now)
        return True
