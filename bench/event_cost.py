"""Per-event cost of the operator's own bookkeeping, in-process: a real ClusterStore and Reconciler filled with
synthetic pods and EndpointSlices (no API server, no cloud), then one member at a time turns terminating.

What is timed, per event (``time.perf_counter_ns``, median over the events of a run, then the median of the runs):

- ``pod``: a pod's watch event turning it terminating (deletionTimestamp set), the store's and the reconciler's
  work: the informer keeps the record, the reconciler decides (``Reconciler.pod_changed``).
- ``slice``: for ``serviceRef``, the EndpointSlice's watch event that follows (the pod's endpoint turns
  terminating): parse, store, ``Reconciler.endpoints_changed``.
- ``holders``: the last check before a call, ``ResourceDirectory.holders(ledger)`` and one look-up per server of a
  40-server batch, as the pipeline makes it.

``reconciler`` columns time the callbacks alone (what the store calls the reconciler with), ``event`` columns the
whole watch event (the informer's parse included).

    PYTHONPATH=operator python bench/event_cost.py [--runs 5] [--events 40] [--endpoints 1000 5000] [--pods 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import gc
import json
import platform
import statistics
import time
from collections.abc import Callable, Iterable
from typing import Any, cast

from kubernetes_asyncio import client

from alb_membership.alb.models import Server
from alb_membership.cluster.kube import Kube
from alb_membership.cluster.notices import Notices
from alb_membership.cluster.store import SERVICE_LABEL, ClusterStore
from alb_membership.engine.pipeline import GroupPipeline, Services
from alb_membership.engine.reconciler import Reconciler, ReconcilerSettings
from alb_membership.metrics import Metrics
from alb_membership.model.ledger import GroupKey
from alb_membership.model.membership import PodView
from alb_membership.model.spec import Ref

NAMESPACE = "shop"
ENI = "k8s.aliyun.com/eni-id"
SLICE_SIZE = 100  # the EndpointSlice controller's default maximum
BATCH = 40


class FakeKube:
    async def patch_status(self, ref: Ref, status: dict[str, Any]) -> bool:
        return True

    async def event(self, ref: Ref, kind: str, reason: str, message: str) -> None:
        return None


class Sink:
    """A group's pipeline that only keeps what it was given."""

    def __init__(self) -> None:
        self.sent: list[Server] = []

    def enqueue(self, servers: Iterable[Server]) -> None:
        self.sent += list(servers)


class BenchReconciler(Reconciler):
    def __init__(self, kube: FakeKube) -> None:
        super().__init__(
            ReconcilerSettings("cn-hangzhou", ENI, 2.0),
            lambda _region: cast(Services, None),
            cast(Kube, kube),
            Notices(cast(Kube, kube)),
            Metrics(),
        )
        self.sinks: dict[GroupKey, Sink] = {}

    def pipeline(self, key: GroupKey) -> GroupPipeline:
        return cast(GroupPipeline, self.sinks.setdefault(key, Sink()))


def ip_of(i: int) -> str:
    return f"10.{1 + i // 65536}.{(i // 256) % 256}.{i % 256}"


def pod_body(i: int, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "namespace": NAMESPACE,
        "name": f"web-{i}",
        "uid": f"uid-web-{i}",
        "labels": {"app": "web", "pod-template-hash": "5d8f7c9b4"},
        "annotations": {},
        "resourceVersion": str(1000 + i),
    }
    if deleting:
        meta.update(deletionTimestamp="2026-11-28T10:00:30Z", deletionGracePeriodSeconds=30)
    return {
        "metadata": meta,
        "spec": {"nodeName": f"node-{i % 50}"},
        "status": {"phase": "Running", "podIP": ip_of(i), "conditions": [{"type": "Ready", "status": "True"}]},
    }


def slice_body(n: int, pods: int, terminating: set[int]) -> dict[str, Any]:
    first = n * SLICE_SIZE
    return {
        "metadata": {
            "namespace": NAMESPACE,
            "name": f"web-{n:05d}",
            "uid": f"uid-slice-{n}",
            "labels": {SERVICE_LABEL: "web"},
            "resourceVersion": str(900_000 + n),
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [
            {
                "addresses": [ip_of(i)],
                "conditions": {"ready": i not in terminating, "serving": True, "terminating": i in terminating},
                "targetRef": {"kind": "Pod", "namespace": NAMESPACE, "name": f"web-{i}", "uid": f"uid-web-{i}"},
                "nodeName": f"node-{i % 50}",
            }
            for i in range(first, min(first + SLICE_SIZE, pods))
        ],
    }


def sgm_body(kind: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"serverGroupId": "sgp-bench000000001", "backend": {"serverType": "Ip", "port": 8080}}
    if kind == "serviceRef":
        spec["serviceRef"] = {"name": "web"}
    else:
        spec["podSelector"] = {"matchLabels": {"app": "web"}}
    return {"metadata": {"namespace": NAMESPACE, "name": "web", "uid": "sgm-bench", "generation": 1}, "spec": spec}


class Timer:
    def __init__(self) -> None:
        self.samples: list[float] = []

    def wrap(self, fn: Callable[..., None]) -> Callable[..., None]:
        def timed(*args: Any) -> None:
            start = time.perf_counter_ns()
            fn(*args)
            self.samples.append((time.perf_counter_ns() - start) / 1e6)

        return timed


async def one_run(kind: str, members: int, events: int) -> dict[str, float]:
    kube = FakeKube()
    rec = BenchReconciler(kube)
    pod_timer, slice_timer = Timer(), Timer()

    def on_pod(old: PodView | None, new: PodView | None) -> None:  # as Runtime._pod_changed
        if old is not None and (new is None or new.uid != old.uid):
            rec.pod_changed(old, deleted=True)
        if new is not None:
            rec.pod_changed(new, deleted=False)

    async with client.ApiClient() as api:
        store = ClusterStore(
            api, (), ENI, pod_timer.wrap(on_pod), slice_timer.wrap(rec.endpoints_changed), lambda: None
        )
        body = sgm_body(kind)
        sgm_watch, pod_watch, slice_watch = store.sgm_watches[0], store.pod_watches[0], store.slice_watches[0]
        sgm_watch._apply("ADDED", copy.deepcopy(body))
        store._recount()
        for i in range(members):
            pod_watch._apply("ADDED", pod_body(i))
        slices = (members + SLICE_SIZE - 1) // SLICE_SIZE if kind == "serviceRef" else 0
        for n in range(slices):
            slice_watch._apply("ADDED", slice_body(n, members, set()))
        for informer in (sgm_watch, pod_watch, slice_watch):
            informer.synced.set()
        store.synced.set()
        rec.view = store
        state = rec.start(body, repair=False)
        group = rec.ledger(state.group)
        assert len(group.owner_ids(state.ref.uid)) == members, "every member recorded"

        gc.collect()
        pod_events: list[float] = []
        slice_events: list[float] = []
        terminating: set[int] = set()
        step = max(1, members // events)
        for e in range(events):
            i = (e * step) % members
            terminating.add(i)
            start = time.perf_counter_ns()
            pod_watch._apply("MODIFIED", pod_body(i, deleting=True))
            pod_events.append((time.perf_counter_ns() - start) / 1e6)
            if kind == "serviceRef":
                sliced = slice_body(i // SLICE_SIZE, members, terminating)
                start = time.perf_counter_ns()
                slice_watch._apply("MODIFIED", sliced)
                slice_events.append((time.perf_counter_ns() - start) / 1e6)
        sent = rec.sinks[state.group].sent
        assert len(set(sent)) == events, f"{len(set(sent))} servers leaving, {events} expected"

        batch = sent[:BATCH]
        holders: list[float] = []
        for _ in range(10):
            start = time.perf_counter_ns()
            found = rec.directory.holders(group)
            held = [found.get(s) for s in batch]
            holders.append((time.perf_counter_ns() - start) / 1e6)
            assert not any(held), "a leaving server has no live holder"
        await rec.writer.close()

    out = {
        "pod_event_ms": statistics.median(pod_events),
        "pod_reconciler_ms": statistics.median(pod_timer.samples),
        "holders_ms": statistics.median(holders),
    }
    if kind == "serviceRef":
        out["slice_event_ms"] = statistics.median(slice_events)
        out["slice_reconciler_ms"] = statistics.median(slice_timer.samples)
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--events", type=int, default=40, help="members turning terminating per run")
    parser.add_argument("--endpoints", type=int, nargs="*", default=[1000, 5000], help="serviceRef sizes")
    parser.add_argument("--pods", type=int, nargs="*", default=[5000], help="podSelector sizes")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args()
    cases = [("serviceRef", n) for n in args.endpoints] + [("podSelector", n) for n in args.pods]
    print(f"python {platform.python_version()} on {platform.machine()}, {args.runs} runs x {args.events} events")
    results: list[dict[str, Any]] = []
    for kind, members in cases:
        runs = [await one_run(kind, members, args.events) for _ in range(args.runs)]
        row: dict[str, Any] = {"kind": kind, "members": members}
        for key in runs[0]:
            values = sorted(r[key] for r in runs)
            row[key] = round(statistics.median(values), 4)
            row[key + "_range"] = [round(values[0], 4), round(values[-1], 4)]
        results.append(row)
        low_high = {k: row[k + "_range"] for k in runs[0]}
        figures = ", ".join(f"{k} {row[k]:.3f} ({low_high[k][0]:.3f}-{low_high[k][1]:.3f})" for k in runs[0])
        print(f"{kind:11s} {members:6d}: {figures}", flush=True)
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
