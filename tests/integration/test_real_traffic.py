"""Real requests through the emulator's data plane to pods on the real node during a rollout (issue 20): with the
operator's registration, the readiness gate and the deletion gate, a rolling restart of three pods under 200
requests a second fails none of at least 3,000 requests, and no preStop hook is needed: each old pod gets SIGTERM
only once its server is out of rotation, and each new pod is counted available only once its server is in; the
proxy's own count agrees. Without the operator, the same rollout behind a group that keeps the old pods' addresses
fails requests: refused as each old pod closes its listener at SIGTERM, then timed out or unreachable once its
address is gone; none fails before the restart, and none before its pod was deleted. So the load and the proxy
measure what happens to the pods, and the first test could fail.

Requests go only to 127.0.0.1 (the proxy) and from the proxy only to the real node's bridge (``proxy_networks``).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import kubernetes
import pytest

from alb_emulator.loadgen import LoadResult, Sample
from tests.support.cluster import Cluster, wait_for
from tests.support.emulator import EmulatorProcess, server
from tests.support.gate import GATE, Gated
from tests.support.realnode import TIMINGS, RealNodeInfo, workload_deployment
from tests.support.scenario import GROUP, apply, sgm, status_when
from tests.support.traffic import Load, client_timeout, describe, failed, kind, open_listener

pytestmark = [pytest.mark.integration, pytest.mark.real_node]

REPLICAS = 3
RATE = 200.0  # requests a second
MIN_REQUESTS = 3_000  # a gated rollout must fail none of at least this many
BEFORE, AFTER = 2.0, 2.0  # seconds of load before the restart and after the rollout is complete
WARM_UP = RATE * BEFORE  # and at least this many requests answered ok before the restart ...
WARM_UP_TIMEOUT = 30.0  # ... waited for this long at most (a loaded machine answers slowly at first)
CONDITION = "target-health.albmembership.io/web"
MEMBERS = {"podSelector": {"matchLabels": {"app": "web"}}, "backend": {"serverType": "Ip", "port": 8080}}


@pytest.fixture
def proxy(emulator: EmulatorProcess) -> Iterator[EmulatorProcess]:
    """The emulator, its proxy's networks put back afterwards: open_listener widens them to the bridge, and the
    per-test reset keeps behaviour."""
    before = emulator.admin("GET", "behaviour")["proxy_networks"]
    try:
        yield emulator
    finally:
        emulator.admin("PUT", "behaviour", {"proxy_networks": before})


def deployment(real_node: RealNodeInfo, gated: bool) -> dict[str, Any]:
    # No preStop hook: with the deletion gate the pod has nothing to outlast.
    out = workload_deployment("web", REPLICAS, node=real_node.name, grace=10)
    # One pod at a time, never fewer than the replicas: the rollout that a gate is supposed to make safe.
    out["spec"]["strategy"] = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    if gated:
        out["spec"]["template"]["spec"]["readinessGates"] = [{"conditionType": CONDITION}]
    return out


def ready(pod: kubernetes.client.V1Pod) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def pods(core: kubernetes.client.CoreV1Api, ns: str) -> list[kubernetes.client.V1Pod]:
    return list(core.list_namespaced_pod(ns, label_selector="app=web").items)


def ready_ips(core: kubernetes.client.CoreV1Api, ns: str) -> dict[str, str]:
    """name -> IP of the Ready pods not being deleted."""
    return {p.metadata.name: p.status.pod_ip for p in pods(core, ns) if ready(p) and not p.metadata.deletion_timestamp}


def group(emulator: EmulatorProcess) -> dict[str, str]:
    """ServerId -> Status of every server in the group."""
    return {s["ServerId"]: s["Status"] for s in emulator.group(GROUP)["Servers"]}


def stamp(t: float) -> str:
    return datetime.fromtimestamp(t).strftime("%H:%M:%S.%f")[:-3]


class Rollout:
    """``kubectl rollout restart`` watched every 0.1 s until ``done`` says it is complete: when each old pod was
    first seen deleted, bracketed by the last look that saw it not deleted (so a deletion happened in
    ``(undeleted[name], deleted[name]]``)."""

    def __init__(self, cluster: Cluster, core: kubernetes.client.CoreV1Api, ns: str, old: dict[str, str]):
        self.cluster, self.core, self.ns, self.old = cluster, core, ns, old
        self.undeleted: dict[str, float] = {}
        self.deleted: dict[str, float] = {}
        self.restarted = 0.0

    def run(self, done: Callable[[list[kubernetes.client.V1Pod]], bool], timeout: float = 90.0) -> float:
        """Restarts, waits until ``done(pods)``; returns when it was seen complete."""
        self.restarted = time.time()
        self.cluster.kubectl("rollout", "restart", "deployment/web", "-n", self.ns)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            asked = time.time()
            now = pods(self.core, self.ns)
            seen = time.time()
            alive = {p.metadata.name for p in now if not p.metadata.deletion_timestamp}
            for name in self.old:
                if name in alive:
                    self.undeleted[name] = asked
                else:
                    self.deleted.setdefault(name, seen)
            if done(now):
                return seen
            time.sleep(0.1)
        raise AssertionError(f"the rollout did not end in {timeout:.0f} s; old pods deleted: {sorted(self.deleted)}")

    def first_deletion_after(self) -> float:
        """A time before which no old pod was deleted."""
        first = min(self.deleted, key=self.deleted.__getitem__)
        return self.undeleted.get(first, self.restarted)

    def timeline(self) -> str:
        return ", ".join(
            f"{name} deleted in ({stamp(self.undeleted.get(name, self.restarted))}, {stamp(t)}]"
            for name, t in sorted(self.deleted.items(), key=lambda kv: kv[1])
        )


def load_until(load: Load, started: float, complete: float) -> LoadResult:
    """Keeps loading AFTER seconds past the rollout's end, and for at least MIN_REQUESTS in all; stops the load."""
    time.sleep(max(0.0, complete + AFTER - time.time(), started + MIN_REQUESTS / RATE + 0.5 - time.time()))
    return load.stop()


def sent(result: LoadResult) -> list[Sample]:
    """The requests that went out (not those the generator skipped as overload)."""
    return [s for s in result.samples if s.error != "overload"]


def ended(sample: Sample) -> float:
    return sample.sent + (sample.latency_ms or 0.0) / 1000


def backend_ip(sample: Sample) -> str | None:
    return sample.backend.rsplit(":", 1)[0].strip("[]") if sample.backend else None


def traffic(emulator: EmulatorProcess, since: float) -> dict[str, Any]:
    return emulator.admin("GET", f"server-groups/{GROUP}/traffic?since={since}&events=failures")  # type: ignore[no-any-return]


def warm_up(proxy: EmulatorProcess, since: float) -> int:
    """Waits BEFORE seconds, then until the proxy has answered WARM_UP requests ok that arrived since ``since``
    (WARM_UP_TIMEOUT seconds in all at most); returns its count. A slow start, as on a machine loaded by a benchmark,
    then delays the restart rather than leaving too few requests before it (a fixed sleep did: 109 of 360)."""
    deadline = time.monotonic() + WARM_UP_TIMEOUT
    time.sleep(BEFORE)
    while True:
        # The proxy counts a request once it has answered it: these ended (for the proxy) before the restart.
        totals = proxy.admin("GET", f"server-groups/{GROUP}/traffic?since={since}&events=none")["totals"]
        if totals["ok"] >= WARM_UP:
            return int(totals["ok"])
        if time.monotonic() > deadline:
            raise AssertionError(f"the proxy answered {totals} in {WARM_UP_TIMEOUT:.0f} s, not {WARM_UP:.0f} ok")
        time.sleep(0.1)


def latency(samples: list[Sample]) -> str:
    """p50, p99 and max of the answered requests' latency: for assertion messages (a loaded machine shows here)."""
    ms = sorted(s.latency_ms for s in samples if s.status is not None and s.latency_ms is not None)
    if not ms:
        return "no request answered"
    p50, p99 = (ms[min(len(ms) - 1, int(q * len(ms)))] for q in (0.5, 0.99))
    return f"p50 {p50:.0f} ms, p99 {p99:.0f} ms, max {ms[-1]:.0f} ms"


def proxy_failures(view: dict[str, Any], first: int = 8) -> list[str]:
    """The first failures as the proxy saw them: arrival, latency, where to, the server's status then, why."""
    return [
        f"{stamp(e['at'])} +{e['latency_ms']:.0f} ms {e['backend']} ({e['routed_as']}) {e['kind']}: {e['reason']}"
        for e in view["events"][:first]
    ]


def failures_by_kind(view: dict[str, Any]) -> dict[str, int]:
    return {kind: n for kind, n in view["totals"]["failures"].items() if n}


def test_a_rollout_with_both_gates_fails_no_request(
    gated: Gated, proxy: EmulatorProcess, api_client: kubernetes.client.ApiClient, real_node: RealNodeInfo
) -> None:
    began = time.monotonic()
    core = kubernetes.client.CoreV1Api(api_client)
    ns = gated.namespace
    proxy.add_group(GROUP, [])  # empty: the operator puts every server in
    op = gated.serving()
    apply(gated.cluster, ns, sgm("web", **MEMBERS, deletionGate=GATE, registration={"enabled": True}))
    status_when(gated.cluster, ns, lambda s: "conditions" in s, "the resource started")
    apply(gated.cluster, ns, deployment(real_node, gated=True))

    def settled() -> dict[str, str] | None:
        ips = ready_ips(core, ns)
        return ips if len(ips) == REPLICAS and group(proxy) == dict.fromkeys(ips.values(), "Available") else None

    old = wait_for(settled, "3 pods Ready and their servers Available", timeout=90)
    url = open_listener(proxy, GROUP, [str(real_node.subnet)])
    rollout = Rollout(gated.cluster, core, ns, old)

    def complete(now: list[kubernetes.client.V1Pod]) -> bool:
        new = {p.status.pod_ip for p in now if ready(p) and not p.metadata.deletion_timestamp}
        return (
            len(new) == REPLICAS
            and not {p.metadata.name for p in now} & set(old)
            and group(proxy) == dict.fromkeys(new, "Available")
        )

    started = time.time()
    with Load(url, rate=RATE, max_seconds=120, request_timeout=client_timeout(proxy)) as load:
        warmed = warm_up(proxy, started - 1)
        done = rollout.run(complete)
        result = load_until(load, started, done)
    new = ready_ips(core, ns)
    samples = sent(result)
    view = traffic(proxy, started - 1)
    history = proxy.admin("GET", f"server-groups/{GROUP}/history")
    removals = {
        r["ServerId"]: f"Removing {stamp(r['removing_at'])}, out "
        + (stamp(r["out_of_rotation_at"]) if r["out_of_rotation_at"] is not None else "never")
        for r in history
    }
    TIMINGS["a rollout of 3 pods under load with both gates (whole test)"] = time.monotonic() - began
    context = (
        f"{describe(samples)}; latency {latency(samples)}; {warmed} ok before the restart; {rollout.timeline()}; "
        f"removals: {removals}; the proxy's first failures: {proxy_failures(view)}; operator log: {op.log}"
    )

    assert len(samples) >= MIN_REQUESTS, f"only {len(samples)} requests sent"
    assert failed(samples) == [], context
    # No preStop hook is needed because the deletion gate holds each old pod's DELETE, and so its SIGTERM, until
    # its server is out of rotation: the emulator took it out before the rollout saw the pod deleted.
    for name, ip in old.items():
        records = [r for r in history if r["ServerId"] == ip]
        assert len(records) == 1, f"{name}'s server {ip} was removed {len(records)} times: {removals}"
        out = records[0]["out_of_rotation_at"]
        assert out is not None, f"{name}'s server {ip} is still in rotation: {removals}; {context}"
        assert out <= rollout.deleted[name], (
            f"{name}'s server out of rotation at {stamp(out)}, after its pod was seen deleted at "
            f"{stamp(rollout.deleted[name])}: {context}"
        )
    answered = Counter(s.pod for s in samples)
    assert set(old) <= set(answered), f"not every old pod answered: {dict(answered)}"
    assert set(new) <= set(answered), f"not every new pod answered: {dict(answered)}"
    assert set(answered) == set(old) | set(new), f"answers from pods of neither: {dict(answered)}"
    # The proxy's own count: every request the load sent arrived, and it failed none.
    assert view["totals"]["requests"] == len(samples), (view["totals"], len(samples))
    assert view["totals"]["ok"] == len(samples) and failures_by_kind(view) == {}, context
    print(f"\nboth gates: {len(samples)} sent, 0 failed, by pod {dict(answered)}")


def test_without_the_operator_a_rollout_fails_requests(
    cluster: Cluster,
    proxy: EmulatorProcess,
    api_client: kubernetes.client.ApiClient,
    namespace: str,
    real_node: RealNodeInfo,
) -> None:
    began = time.monotonic()
    core = kubernetes.client.CoreV1Api(api_client)
    apply(cluster, namespace, deployment(real_node, gated=False))

    def three_ready() -> dict[str, str] | None:
        ips = ready_ips(core, namespace)
        return ips if len(ips) == REPLICAS else None

    old = wait_for(three_ready, "3 pods Ready", timeout=90)
    # What a group nobody keeps looks like: the pods' addresses put in once.
    proxy.add_group(GROUP, [server(ip) for ip in old.values()])
    url = open_listener(proxy, GROUP, [str(real_node.subnet)])
    rollout = Rollout(cluster, core, namespace, old)

    def complete(now: list[kubernetes.client.V1Pod]) -> bool:
        new = [p for p in now if ready(p) and not p.metadata.deletion_timestamp]
        return len(new) == REPLICAS and not {p.metadata.name for p in now} & set(old)

    started = time.time()
    with Load(url, rate=RATE, max_seconds=60, request_timeout=client_timeout(proxy)) as load:
        warmed = warm_up(proxy, started - 1)
        done = rollout.run(complete)
        time.sleep(max(0.0, done + AFTER - time.time()))
        result = load.stop()
    new = ready_ips(core, namespace)
    samples = sent(result)
    # By when a request ended, not when it went: one whose connection was still being tried (a SYN dropped by a
    # full accept queue is sent again 1 s later) when its pod went away fails then, because of the rollout.
    before = [s for s in samples if ended(s) < rollout.restarted]
    bad = failed(samples)
    view = traffic(proxy, started - 1)
    reasons = Counter(f"{e['kind']}: {e['reason']}" for e in view["events"])
    TIMINGS["a rollout of 3 pods under load without the operator (whole test)"] = time.monotonic() - began
    context = f"{describe(samples)}; latency {latency(samples)}; {rollout.timeline()}; emulator: {dict(reasons)}"

    assert not set(new.values()) & set(old.values()), f"a new pod has an old one's address: {old}, {new}"
    # The proxy had answered WARM_UP ok before the restart; the client may hear of the last few later.
    assert len(before) >= WARM_UP * 0.9, (
        f"only {len(before)} requests ended before the restart (the proxy answered {warmed} ok); latency "
        f"{latency(before)} then, {latency(samples)} in all; {context}"
    )
    assert failed(before) == [], f"failures before the restart: the harness fails requests itself: {context}"
    assert bad, f"no request failed although the group kept the old pods' addresses: {context}"
    assert all(s.failure for s in bad), f"failures the proxy did not answer: {Counter(kind(s) for s in bad)}"
    # What a pod that went away does to the proxy: from its SIGTERM on its listener is closed, so connections are
    # refused (one caught in the backlog as it closed is reset); once its sandbox is gone nothing answers for its
    # address, so connecting times out or gives up unreachable (EHOSTUNREACH, also refused).
    assert {s.failure for s in bad} <= {"refused", "reset", "timeout"}, context
    assert reasons["refused: ECONNREFUSED"] > 0, context
    assert {r for r in reasons if r.startswith("timeout")} <= {"timeout: no connection within the connect timeout"}
    assert failures_by_kind(view) == dict(Counter(s.failure for s in bad)), context
    # Each old pod failed requests only once it was deleted (and so none failed before the first deletion).
    by_ip = {ip: name for name, ip in old.items()}
    early = [
        (stamp(s.sent), name)
        for s in bad
        if (name := by_ip.get(backend_ip(s) or "")) is None or ended(s) < rollout.undeleted.get(name, rollout.restarted)
    ]
    assert early == [], f"failed before its pod was deleted (or on no old pod's address): {early[:5]}; {context}"
    assert min(ended(s) for s in bad) >= rollout.first_deletion_after(), context
    print(f"\nwithout the operator: {len(samples)} sent, {len(bad)} failed: {dict(reasons)}")
