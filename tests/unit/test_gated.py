"""The gate's set of held pods stays bounded and forgets on its own clock."""

from __future__ import annotations

from alb_membership.engine.gated import GatedPods


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_held_pod_counts_again_once_its_time_ran_out() -> None:
    clock = Clock()
    gated = GatedPods(seconds=60.0, clock=clock)
    gated.add("uid-a")
    clock.now = 59.0
    assert "uid-a" in gated
    clock.now = 60.5
    assert "uid-a" not in gated and len(gated) == 0


def test_the_set_is_bounded_oldest_first() -> None:
    clock = Clock()
    gated = GatedPods(seconds=60.0, limit=3, clock=clock)
    for i in range(10):
        clock.now = float(i)
        gated.add(f"uid-{i}")
    assert len(gated) == 3
    assert "uid-6" not in gated and all(f"uid-{i}" in gated for i in (7, 8, 9))


def test_holding_again_renews_the_time() -> None:
    clock = Clock()
    gated = GatedPods(seconds=60.0, clock=clock)
    gated.add("uid-a")
    clock.now = 50.0
    gated.add("uid-b")
    gated.add("uid-a")
    clock.now = 100.0
    assert "uid-a" in gated and "uid-b" in gated
    clock.now = 110.5
    assert "uid-a" not in gated and "uid-b" not in gated
