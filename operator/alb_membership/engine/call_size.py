"""How many servers a group's next call takes: up to --batch-size, less after the way to the cloud refused a call
of some size (halved, for a while), and once less after an answer that could not be told apart ("already gone"
for a call the listing cannot explain). Plain code."""

from __future__ import annotations

RECOVERY_CALLS = 10  # calls at a refused-down size that go through before calls may be twice as large again


class CallSize:
    def __init__(self, batch_size: int) -> None:
        self._batch_size = batch_size
        self.cap = batch_size  # the largest call the way to the cloud takes now
        self._at_cap = 0  # calls at the cap that went through since it was lowered
        self._once = 0  # > 0: the next call takes at most this many

    def next(self) -> int:
        size, self._once = min(self.cap, self._once or self.cap), 0
        return size

    def refused(self, size: int) -> None:
        """A call of ``size`` servers was refused on the way: calls take half that from now on."""
        self.cap, self._at_cap = max(1, size // 2), 0

    def halve_once(self, size: int) -> None:
        """The next call takes half of ``size``: each half's answer tells what the whole call's could not."""
        self._once = max(1, size // 2)

    def went_through(self, size: int) -> None:
        """A refusal of a large call may have been a passing one (a proxy's bad minute): after RECOVERY_CALLS
        calls at the cap went through, calls may be twice as large again, up to --batch-size."""
        if self.cap >= self._batch_size or size < self.cap:
            return
        self._at_cap += 1
        if self._at_cap >= RECOVERY_CALLS:
            self.cap, self._at_cap = min(self._batch_size, self.cap * 2), 0
