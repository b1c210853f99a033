"""The gauges the alerts read: resources Degraded, and each group's oldest pending removal, counted at scrape time."""

from __future__ import annotations

from prometheus_client import generate_latest

from alb_membership.engine import census
from alb_membership.metrics import Metrics
from alb_membership.model.health import set_health
from tests.unit.fakes import RecordingKube, RecordingReconciler, View, pod, selected


async def test_degraded_resources_and_the_oldest_pending_removal_are_exported() -> None:
    view = View()
    view.pod_list = [pod("a"), pod("b", ip="10.0.0.2")]
    rec = RecordingReconciler(view, RecordingKube())
    metrics = Metrics()
    metrics.resources_degraded.set_function(lambda: census.degraded(rec.resources.values()))
    metrics.track_pending(lambda: census.oldest_pending(rec.ledgers))

    state = rec.start(selected(), repair=False)
    text = generate_latest(metrics.registry).decode()
    assert "albm_resources_degraded 0.0" in text
    assert 'albm_jobs_total{status="Unknown"} 0.0' in text, "a first Unknown job is an increase the alert sees"
    assert 'albm_gate_outcomes_total{outcome="timed-out"} 0.0' in text
    assert "albm_pending_oldest_seconds{" not in text, "no group has a pending removal yet"

    rec.pod_changed(pod("a", deleting=True), deleted=False)
    set_health(state, ("AccessDenied", "grant alb:RemoveServersFromServerGroup"))
    text = generate_latest(metrics.registry).decode()
    assert "albm_resources_degraded 1.0" in text
    [line] = [x for x in text.splitlines() if x.startswith("albm_pending_oldest_seconds{")]
    assert f'server_group="{state.group[1]}"' in line and 0.0 <= float(line.split()[-1]) < 60.0

    set_health(state, None)
    assert census.degraded(rec.resources.values()) == 0
