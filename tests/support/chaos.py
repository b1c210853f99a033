"""Mixed chaos: rounds of pod churn on a shared group of more than 100 servers, each round under one fault picked
at random, with the same checks after every round.

The workload: a Deployment of ``PODS`` pods and one of ``HOST_PODS`` hostNetwork pods (every kwok node has the IP
10.0.0.1, so those share one server), all members of two resources on the group: one by podSelector, one by
serviceRef (so each server has a pod owner and an endpoint owner). The group also holds ``FOREIGN_COUNT`` servers
of nobody's, so ListServerGroupServers pages. The harness plays the ingress: it adds the servers of Ready pods that
are missing (AddServersToServerGroup through the SDK), as the controller that put them there would.

Faults (one per round; ``KINDS``), each while 1-3 pods are deleted:

- ``operator-kill``: the operator SIGKILLed at a random moment, started again.
- ``apiserver-restart``: kube-apiserver stopped and started again (same flags, same port).
- ``emulator-restart``: the emulator stopped and started again (its state file keeps groups, jobs and tokens).
- ``resets``: the emulator closes 25% of connections without an answer for a while.
- ``relist``: a watch gap (tests/support/apiproxy.py: the operator talks to the API server through a proxy): the pods
  are deleted outright while the operator's watches pass nothing on, then every watch ends with 410 Gone, so the
  operator lists again and must find the deletions it never saw.
- ``ip-reuse``: pods deleted outright, so that their replacements get their IPs (kwok hands out the lowest free
  one): the old pod's removal must not take the new pod's server (or, if it went out first, the ingress adds it
  back and nothing removes it again).
- ``host-network``: one of the hostNetwork pods leaves: the server it shares with the other stays.

Checks after every round, once it settled (``SETTLE_SECONDS`` at most):

1. No live pod's server removed: no removal job was created while a pod that the harness had seen holding the
   server's IP (``LAG_SECONDS`` earlier at least, for the operator's own watch; Ready or not: a new pod on a
   reused IP holds it from the start) and not yet deleted held it.
2. No leaving server left: every server of a pod that was deleted, and that no live pod holds, is out of the
   group; nothing is pending in either resource's status.
3. No token reused across server sets: no ClientToken the emulator answered was sent again with other servers
   (the emulator's GET tokens; its records survive its restarts).
4. Foreign servers untouched: all still in the group, none ever named in a call or a job.
"""

from __future__ import annotations

import json
import random
import time
import urllib.error
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import kubernetes
import urllib3
from alibabacloud_alb20200616 import models as alb
from alibabacloud_alb20200616.client import Client
from alibabacloud_tea_openapi import models as open_api_models

from localcluster import LocalCluster
from tests.support.apiproxy import ApiProxy
from tests.support.cluster import Cluster
from tests.support.emulator import ACCESS_KEY_ID, ACCESS_KEY_SECRET, EmulatorProcess, server
from tests.support.restartable import Restartable
from tests.support.scenario import FOREIGN, GROUP, apply, deployment, sgm
from tests.support.workloads import SERVICE_LABEL, service

T = TypeVar("T")

KINDS = (
    "operator-kill",
    "apiserver-restart",
    "emulator-restart",
    "resets",
    "relist",
    "ip-reuse",
    "host-network",
)
PODS = 14
HOST_PODS = 2
FOREIGN_COUNT = 110
GRACE = 3  # seconds a deleted pod stays Terminating (kwok holds it for its grace period)
SETTLE_SECONDS = 60.0
LAG_SECONDS = 3.0
POLL = 0.2
HOST_IP = "10.0.0.1"  # every kwok node's InternalIP
PORT = 8080
BACKEND = {"serverType": "Ip", "port": PORT}


def foreign_servers() -> list[str]:
    return [FOREIGN] + [f"198.18.{i // 250}.{i % 250 + 1}" for i in range(FOREIGN_COUNT - 1)]


def retry(call: Callable[[], T], what: str, seconds: float = 90.0) -> T:
    """``call`` until it works: the API server or the emulator may be restarting."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return call()
        except (kubernetes.client.ApiException, urllib.error.URLError, urllib3.exceptions.HTTPError, OSError) as exc:
            if isinstance(exc, kubernetes.client.ApiException) and exc.status in (404, 409, 422):
                raise
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: still failing after {seconds:.0f}s ({exc})") from exc
            time.sleep(0.2)


@dataclass
class Seen:
    """One pod as the harness saw it (times: the harness's clock, Unix seconds)."""

    name: str
    ip: str | None = None
    ready_at: float | None = None  # first seen Ready and not terminating
    holding_at: float | None = None  # first seen with its IP and not terminating: it holds the server from then
    deleted_at: float | None = None  # the harness asked to delete it (or first saw it terminating)
    gone_at: float | None = None


@dataclass
class RoundResult:
    number: int
    kind: str
    seconds: float
    victims: list[str]
    began: float = 0.0
    reused: int = 0  # replacements that got a deleted pod's IP
    relisted: int = 0  # watches ended with 410
    notes: list[str] = field(default_factory=list)


class MixedChaos:
    def __init__(
        self,
        cluster: Cluster,
        local_cluster: LocalCluster,
        api: kubernetes.client.ApiClient,
        namespace: str,
        tmp: Path,
        seed: int,
    ) -> None:
        self.cluster, self.local, self.namespace, self.tmp = cluster, local_cluster, namespace, tmp
        self.core = kubernetes.client.CoreV1Api(api)
        self.custom = kubernetes.client.CustomObjectsApi(api)
        self.rng = random.Random(seed)
        self.seed = seed
        self.pods: dict[str, Seen] = {}  # uid ->
        self.checked_jobs: set[str] = set()
        self.tokens: dict[str, Any] = {}  # token -> the servers it went with
        self.foreign = set(foreign_servers())
        self.proxy = ApiProxy(local_cluster.server, local_cluster.state_dir / "pki")
        self.proxy.start()
        # The operator's view of the API server is the proxy's (so that a watch gap can be made); the harness's is
        # direct. Its emulator comes back as it was (tests/support/restartable.py).
        through = Cluster(self.proxy.kubeconfig(cluster.kubeconfig, tmp / "operator-kubeconfig"), cluster.kubectl_bin)
        self.cloud = Restartable(through, namespace, tmp, {"job_seconds": 0.3, "job_jitter_seconds": 0.3})
        self._sdk: Client | None = None

    # -- processes ----------------------------------------------------------------------------------------------

    @property
    def emulator(self) -> EmulatorProcess:
        return self.cloud.emulator

    def stop(self) -> None:
        try:
            self.cloud.stop()
        finally:
            self.proxy.stop()

    def sdk(self) -> Client:
        if self._sdk is None:
            config = open_api_models.Config(
                access_key_id=ACCESS_KEY_ID,
                access_key_secret=ACCESS_KEY_SECRET,
                endpoint=self.emulator.endpoint,
                protocol="http",
                read_timeout=5000,
                connect_timeout=2000,
            )
            self._sdk = Client(config)
        return self._sdk

    # -- the workload ---------------------------------------------------------------------------------------------

    def populate(self) -> None:
        web = deployment("web", PODS, grace=GRACE)
        web["spec"]["selector"]["matchLabels"]["tier"] = "a"
        web["spec"]["template"]["metadata"]["labels"]["tier"] = "a"
        hosts = deployment("hn", HOST_PODS, grace=GRACE)
        hosts["spec"]["selector"]["matchLabels"] = {"app": "web", "tier": "hn"}
        hosts["spec"]["template"]["metadata"]["labels"] = {"app": "web", "tier": "hn"}
        hosts["spec"]["template"]["spec"]["hostNetwork"] = True
        for obj in (web, hosts, service("web", {"app": "web"})):
            apply(self.cluster, self.namespace, obj)
        self.wait(lambda: len(self.ready_pods()) == PODS + HOST_PODS, "the pods Ready", 120)
        ips = sorted({p.status.pod_ip for p in self.ready_pods()})
        self.emulator.add_group(
            GROUP, [server(ip, PORT) for ip in ips] + [server(f, PORT) for f in sorted(self.foreign)]
        )
        self.wait(lambda: self._endpoint_count() == PODS + HOST_PODS, "the Service's endpoints", 60)
        apply(self.cluster, self.namespace, sgm("web", podSelector={"matchLabels": {"app": "web"}}, backend=BACKEND))
        apply(self.cluster, self.namespace, sgm("web-svc", serviceRef={"name": "web"}, backend=BACKEND))
        for name in ("web", "web-svc"):
            self.wait(
                # Owners, not servers: the hostNetwork pods share their node's IP (memberCount counts servers).
                lambda n=name: len(self.status(n).get("members") or {}) == PODS + HOST_PODS,
                f"{name}'s members recorded",
                90,
            )

    def _endpoints(self) -> list[kubernetes.client.V1Endpoint]:
        discovery = kubernetes.client.DiscoveryV1Api(self.core.api_client)
        slices = retry(
            lambda: discovery.list_namespaced_endpoint_slice(self.namespace, label_selector=f"{SERVICE_LABEL}=web"),
            "listing EndpointSlices",
        )
        return [ep for s in slices.items for ep in s.endpoints or []]

    def _endpoint_count(self) -> int:
        return sum(len(ep.addresses or []) for ep in self._endpoints())

    def _live_endpoint_owners(self) -> set[str]:
        """The serviceRef resource's owners as the slices show them now: endpoints not terminating."""
        return {
            f"endpoint/web/{ep.target_ref.uid}"
            for ep in self._endpoints()
            if ep.target_ref is not None and not (ep.conditions and ep.conditions.terminating)
        }

    def relists(self) -> int:
        """How often the operator's own watches listed again after 410 Gone (its log says so)."""
        log = self.cloud.operator.log
        return log.read_text(errors="replace").count("(410 Gone): listing again") if log.exists() else 0

    def list_pods(self) -> list[kubernetes.client.V1Pod]:
        pods = retry(lambda: self.core.list_namespaced_pod(self.namespace).items, "listing pods")
        self.observe(pods)
        return pods

    def ready_pods(self) -> list[kubernetes.client.V1Pod]:
        return [p for p in self.list_pods() if ready(p)]

    def observe(self, pods: list[kubernetes.client.V1Pod]) -> None:
        now = time.time()
        present = set()
        for pod in pods:
            uid = pod.metadata.uid
            present.add(uid)
            seen = self.pods.setdefault(uid, Seen(pod.metadata.name))
            seen.ip = seen.ip or pod.status.pod_ip
            if pod.metadata.deletion_timestamp and seen.deleted_at is None:
                seen.deleted_at = now
            if seen.ready_at is None and seen.deleted_at is None and ready(pod):
                seen.ready_at = now
            if seen.holding_at is None and seen.deleted_at is None and seen.ip:
                seen.holding_at = now
        for uid, seen in self.pods.items():
            if uid not in present and seen.gone_at is None:
                seen.gone_at = now
                seen.deleted_at = seen.deleted_at or now

    def delete(self, pod: kubernetes.client.V1Pod, grace: int) -> None:
        seen = self.pods.setdefault(pod.metadata.uid, Seen(pod.metadata.name, pod.status.pod_ip))
        seen.deleted_at = seen.deleted_at or time.time()  # before the call: terminating from now on
        try:
            retry(
                lambda: self.core.delete_namespaced_pod(pod.metadata.name, self.namespace, grace_period_seconds=grace),
                f"deleting {pod.metadata.name}",
            )
        except kubernetes.client.ApiException as exc:
            if exc.status != 404:
                raise

    def status(self, name: str) -> dict[str, Any]:
        body = retry(
            lambda: self.custom.get_namespaced_custom_object(
                "albmembership.io", "v1alpha1", self.namespace, "servergroupmemberships", name
            ),
            f"reading {name}",
        )
        return body.get("status") or {}

    def group(self) -> dict[str, Any]:
        return retry(lambda: self.emulator.group(GROUP), "reading the group")

    def in_group(self) -> set[str]:
        return {s["ServerId"] for s in self.group()["Servers"]}

    def wait(self, check: Callable[[], Any], what: str, seconds: float) -> Any:
        deadline = time.monotonic() + seconds
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.where()}: timed out after {seconds:.0f}s waiting for {what}")
            time.sleep(POLL)

    def where(self) -> str:
        return f"mixed chaos, ALBM_CHAOS_SEED={self.seed}"

    # -- the ingress -------------------------------------------------------------------------------------------------

    def add_missing(self, pods: list[kubernetes.client.V1Pod], present: set[str]) -> None:
        """What the ingress does: the servers of Ready member pods that are not in the group go in."""
        missing = sorted({p.status.pod_ip for p in pods if ready(p)} - present)
        if not missing:
            return
        request = alb.AddServersToServerGroupRequest(
            server_group_id=GROUP,
            servers=[
                alb.AddServersToServerGroupRequestServers(server_id=ip, server_type="Ip", port=PORT) for ip in missing
            ],
        )
        try:
            self.sdk().add_servers_to_server_group(request)
        except Exception:  # a busy group, a server still being removed, a reset: the next look tries again
            return

    # -- a round ----------------------------------------------------------------------------------------------------

    def round(self, number: int, kind: str) -> RoundResult:
        began = time.time()
        pods = [p for p in self.list_pods() if ready(p)]
        regular = [p for p in pods if p.metadata.labels.get("tier") == "a"]
        hosts = [p for p in pods if p.metadata.labels.get("tier") == "hn"]
        count = self.rng.randint(1, 3)
        victims = self.rng.sample(regular, min(count, len(regular)))
        if kind == "host-network" and hosts:
            victims = [self.rng.choice(hosts), *victims[: count - 1]]
        result = RoundResult(number, kind, 0.0, [v.metadata.name for v in victims], began=began)
        freed = {v.status.pod_ip for v in victims}
        getattr(self, "_" + kind.replace("-", "_"))(victims, result)
        self.settle(result)
        if kind in ("ip-reuse", "relist"):
            reused = {s.ip for s in self.pods.values() if s.ready_at and s.ready_at >= began and s.ip in freed}
            result.reused = len(reused)
        self.check(result)
        result.seconds = time.time() - began
        return result

    def _operator_kill(self, victims: list[kubernetes.client.V1Pod], result: RoundResult) -> None:
        for pod in victims:
            self.delete(pod, GRACE)
        time.sleep(self.rng.uniform(0.0, 0.8))  # before, during or after the first call
        self.cloud.operator.kill()
        time.sleep(self.rng.uniform(0.0, 0.3))
        self.cloud.start_operator()

    def _apiserver_restart(self, victims: list[kubernetes.client.V1Pod], result: RoundResult) -> None:
        for pod in victims:
            self.delete(pod, GRACE)
        time.sleep(self.rng.uniform(0.0, 0.5))
        self.local.restart("kube-apiserver")

    def _emulator_restart(self, victims: list[kubernetes.client.V1Pod], result: RoundResult) -> None:
        for pod in victims:
            self.delete(pod, GRACE)
        time.sleep(self.rng.uniform(0.0, 0.8))
        self.emulator.stop()  # groups, jobs and tokens are in its state file
        time.sleep(self.rng.uniform(0.0, 0.3))
        self.cloud.start_emulator()

    def _resets(self, victims: list[kubernetes.client.V1Pod], result: RoundResult) -> None:
        retry(lambda: self.emulator.admin("PUT", "faults", {"rates": {"reset": 0.25}}), "setting faults")
        for pod in victims:
            self.delete(pod, GRACE)
        time.sleep(self.rng.uniform(1.0, 2.0))
        retry(lambda: self.emulator.admin("DELETE", "faults"), "clearing faults")

    def _relist(self, victims: list[kubernetes.client.V1Pod], result: RoundResult) -> None:
        self.proxy.open_gap()
        time.sleep(0.05)
        for pod in victims:
            self.delete(pod, 0)  # gone at once: the operator never sees them go
        names = {v.metadata.name for v in victims}
        self.wait(lambda: not names & {p.metadata.name for p in self.list_pods()}, "the pods gone in the gap", 30)
        time.sleep(self.rng.uniform(0.0, 0.5))
        before = self.relists()
        ended = self.proxy.close_gap()
        # The operator's pod and EndpointSlice watches list again: the fault did what it is for.
        result.relisted = self.wait(lambda: max(0, self.relists() - before), "the operator to list again", 30)
        result.notes.append(f"{ended} watch stream(s) ended with 410")

    def _ip_reuse(self, victims: list[kubernetes.client.V1Pod], result: RoundResult) -> None:
        for pod in victims:
            self.delete(pod, 0)  # its IP is free at once: a replacement gets it

    def _host_network(self, victims: list[kubernetes.client.V1Pod], result: RoundResult) -> None:
        for pod in victims:
            self.delete(pod, GRACE)

    # -- settling and the checks ----------------------------------------------------------------------------------

    def leaving(self, pods: list[kubernetes.client.V1Pod]) -> set[str]:
        """Servers of deleted pods that no live pod holds: they must be out of the group."""
        live = {p.status.pod_ip for p in pods if p.status.pod_ip and not p.metadata.deletion_timestamp}
        return {s.ip for s in self.pods.values() if s.deleted_at is not None and s.ip} - live

    def settle(self, result: RoundResult) -> None:
        deadline = time.monotonic() + SETTLE_SECONDS
        last: dict[str, Any] = {}
        while True:
            pods = self.list_pods()
            members = [p for p in pods if not p.metadata.deletion_timestamp]
            present = self.in_group()
            self.add_missing(members, present)
            left = self.leaving(pods) & present
            statuses = {name: self.status(name) for name in ("web", "web-svc")}
            pending = {name: st.get("pendingCount") or 0 for name, st in statuses.items()}
            unready = len([p for p in members if ready(p)]) != PODS + HOST_PODS
            missing = {p.status.pod_ip for p in members if ready(p)} - present
            # The operator has caught up: it records the live pods, and the Service's live endpoints, as members.
            recorded = {name: set(st.get("members") or {}) for name, st in statuses.items()}
            pod_owners = {p.metadata.uid for p in members if p.status.pod_ip}
            live = {"web": pod_owners, "web-svc": self._live_endpoint_owners()}
            behind = {name: sorted(live[name] ^ recorded[name]) for name in live if live[name] != recorded[name]}
            caught_up = not behind
            last = {
                "left": sorted(left),
                "pending": pending,
                "unready": unready,
                "missing": sorted(missing),
                "members not as the cluster shows them": behind,
            }
            if not left and not any(pending.values()) and not unready and not missing and caught_up:
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.where()}, round {result.number} ({result.kind}): not settled after {SETTLE_SECONDS:.0f}s "
                    f"(a leaving server left, or pending): {last}"
                )
            time.sleep(POLL)

    def check(self, result: RoundResult) -> None:
        where = f"{self.where()}, round {result.number} ({result.kind})"
        jobs = retry(lambda: self.emulator.admin("GET", "jobs"), "reading jobs")
        # 1. No live pod's server removed.
        for job in jobs:
            if job["ApiName"] != "RemoveServersFromServerGroup" or job["Id"] in self.checked_jobs:
                continue
            self.checked_jobs.add(job["Id"])
            created = job["CreateTime"] / 1000
            for ip in job["RemovedServers"]:
                holders = [
                    s.name
                    for s in self.pods.values()
                    if s.ip == ip
                    and s.holding_at is not None
                    and s.holding_at + LAG_SECONDS <= created
                    and (s.deleted_at is None or s.deleted_at > created)
                ]
                assert not holders, f"{where}: job {job['Id']} removed {ip} while live pod(s) {holders} held it"
                assert ip not in self.foreign, f"{where}: job {job['Id']} removed a foreign server {ip}"
        # 3. No token reused across server sets.
        for record in retry(lambda: self.emulator.admin("GET", "tokens"), "reading tokens"):
            if record["action"] != "RemoveServersFromServerGroup":
                continue
            servers = sorted(s["ServerId"] for s in record["params"]["Servers"])
            before = self.tokens.setdefault(record["token"], servers)
            assert before == servers, f"{where}: token {record['token']} went with {before}, then {servers}"
            assert not record["mismatched"], (
                f"{where}: token {record['token']} (servers {servers}) sent again with other servers: "
                f"{[[s['ServerId'] for s in m['Servers']] for m in record['mismatched']]}"
            )
        # 4. Foreign servers untouched.
        present = self.in_group()
        assert self.foreign <= present, f"{where}: foreign servers gone: {sorted(self.foreign - present)[:5]}"
        since = f"requests?action=RemoveServersFromServerGroup&since={result.began}"
        for request in retry(lambda: self.emulator.admin("GET", since), "reading requests"):
            named = set(request.get("servers") or []) & self.foreign
            assert not named, f"{where}: a removal call named foreign servers {sorted(named)[:5]}"
        # 2 was settle's: nothing leaving left, nothing pending.


def ready(pod: kubernetes.client.V1Pod) -> bool:
    return bool(
        pod.status.pod_ip
        and not pod.metadata.deletion_timestamp
        and any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
    )


def summary(results: list[RoundResult], seed: int, seconds: float) -> str:
    by_kind: dict[str, list[float]] = {}
    for r in results:
        by_kind.setdefault(r.kind, []).append(r.seconds)
    kinds = ", ".join(
        f"{kind} {len(times)} ({sum(times) / len(times):.1f}s avg, {max(times):.1f}s max)"
        for kind, times in sorted(by_kind.items())
    )
    reused = sum(r.reused for r in results)
    relisted = sum(r.relisted for r in results)
    return (
        f"mixed chaos: {len(results)} rounds passed in {seconds:.0f}s ({seconds / max(1, len(results)):.1f}s a round), "
        f"ALBM_CHAOS_SEED={seed}; {kinds}; IPs reused by new pods: {reused}; relists after 410: {relisted}"
    )


def dump(results: list[RoundResult], path: Path) -> None:
    path.write_text(json.dumps([r.__dict__ for r in results], indent=1))
