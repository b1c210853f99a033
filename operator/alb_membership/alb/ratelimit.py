"""Client-side flow control: at most ``calls`` per ``period`` seconds per API, over a sliding window.

Why not a token bucket (such as aiolimiter): a bucket that starts full admits its capacity at once and then
refills, so one window can see nearly twice the quota, and the cloud's per-window quota answers that with
``Throttling.User``. A sliding window never exceeds the quota in any window.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable


class SlidingWindowLimiter:
    def __init__(self, calls: int, period: float, clock: Callable[[], float] = time.monotonic) -> None:
        if calls < 1 or period <= 0:
            raise ValueError("a rate limit needs at least 1 call per a positive period")
        self.calls = calls
        self.period = period
        self._clock = clock
        self._times: deque[float] = deque()
        self._lock = asyncio.Lock()  # FIFO: callers are admitted in arrival order

    async def acquire(self) -> float:
        """Waits for a slot; returns the seconds waited."""
        async with self._lock:
            waited = 0.0
            while True:
                now = self._clock()
                while self._times and self._times[0] <= now - self.period:
                    self._times.popleft()
                if len(self._times) < self.calls:
                    self._times.append(now)
                    return waited
                pause = self._times[0] + self.period - now
                waited += pause
                await asyncio.sleep(pause)
