"""A group's call size: halved when the way to the cloud refuses a call, grown back once calls go through."""

from __future__ import annotations

from alb_membership.engine.call_size import RECOVERY_CALLS, CallSize


def test_a_refused_size_halves_the_calls_until_enough_go_through() -> None:
    size = CallSize(200)
    assert size.next() == 200
    size.refused(200)
    size.refused(100)
    assert size.next() == 50
    for _ in range(RECOVERY_CALLS - 1):
        size.went_through(50)
    assert size.next() == 50
    size.went_through(20)  # a smaller call says nothing about the cap
    size.went_through(50)
    assert size.next() == 100
    for _ in range(RECOVERY_CALLS):
        size.went_through(100)
    assert size.next() == 200, "never past --batch-size"
    for _ in range(RECOVERY_CALLS):
        size.went_through(200)
    assert size.next() == 200


def test_halving_once_applies_to_the_next_call_only() -> None:
    size = CallSize(40)
    size.halve_once(3)
    assert size.next() == 1 and size.next() == 40
