"""When and how long to retry: exponential backoff with full jitter, never sooner than the cloud asks
(``x-acs-retry-after``), bounded in total time. The caller keeps the ClientToken the same on every try."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, stop_before_delay
from tenacity.wait import wait_base, wait_random_exponential

from alb_membership.alb.errors import AlbError

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    base_seconds: float = 0.2
    cap_seconds: float = 10.0
    total_seconds: float = 60.0
    max_attempts: int = 12

    def within(self, seconds: float) -> RetryPolicy:
        """The same policy, retrying no longer than ``seconds`` (a caller's deadline)."""
        return replace(self, total_seconds=max(0.0, min(self.total_seconds, seconds)))


class _WaitJitterOrRetryAfter(wait_base):
    def __init__(self, policy: RetryPolicy) -> None:
        self._jitter = wait_random_exponential(multiplier=policy.base_seconds, max=policy.cap_seconds)

    def __call__(self, retry_state: RetryCallState) -> float:
        jitter = float(self._jitter(retry_state))
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        asked = getattr(exc, "retry_after", None) or 0.0
        return max(jitter, asked)


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, AlbError) and exc.retryable


async def with_retries(
    policy: RetryPolicy,
    attempt: Callable[[], Awaitable[T]],
    on_retry: Callable[[AlbError, float], None] = lambda _e, _s: None,
) -> T:
    """Runs ``attempt`` until it succeeds, fails for good, or the policy's time or attempts run out;
    then the last error is raised as it was."""

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, AlbError) and state.next_action is not None:
            on_retry(exc, state.next_action.sleep)

    retrying = AsyncRetrying(
        stop=stop_before_delay(policy.total_seconds) | stop_after_attempt(policy.max_attempts),
        wait=_WaitJitterOrRetryAfter(policy),
        retry=retry_if_exception(_retryable),
        before_sleep=before_sleep,
        reraise=True,
    )
    return await retrying(attempt)
