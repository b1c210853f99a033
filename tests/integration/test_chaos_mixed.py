"""Mixed chaos (issue 18): rounds of pod churn on a group of more than 100 servers, each under one fault picked by a
seeded random choice among operator SIGKILL, API server restart, emulator restart, connection resets, a forced
watch relist (410), an IP reused by a new pod and a hostNetwork pod; after every round: no live pod's server removed,
no leaving server left once it settled, no token reused across server sets, foreign servers untouched
(tests/support/chaos.py says how each fault is made and each check is judged).

``make test`` runs ``ALBM_CHAOS_ROUNDS`` rounds (default 7: each fault once, in a seeded order); the long run is
``ALBM_CHAOS_ROUNDS=1000 make chaos``. The seed is ``ALBM_CHAOS_SEED`` (default: a new one), printed at the start
and in every failure, so that a failing run can be repeated round for round.
"""

from __future__ import annotations

import os
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import kubernetes
import pytest
from alibabacloud_alb20200616 import models as alb
from alibabacloud_tea_openapi.exceptions import ClientException

from localcluster import LocalCluster
from tests.support.chaos import KINDS, LAG_SECONDS, PORT, MixedChaos, RoundResult, dump, summary
from tests.support.cluster import Cluster
from tests.support.scenario import GROUP

pytestmark = pytest.mark.integration

ROUNDS = int(os.environ.get("ALBM_CHAOS_ROUNDS", str(len(KINDS))))
SEED = int(os.environ.get("ALBM_CHAOS_SEED") or random.SystemRandom().randrange(1, 10**9))
ROUND_BUDGET_SECONDS = 60  # pytest-timeout: a round that hangs fails the run, a long run is not cut short


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@pytest.fixture
def chaos(
    cluster: Cluster,
    local_cluster: LocalCluster | None,
    api_client: kubernetes.client.ApiClient,
    namespace: str,
    tmp_path: Path,
    crd: None,
) -> Iterator[MixedChaos]:
    if local_cluster is None:
        pytest.skip("restarting the API server and a watch gap need the tests' own local cluster")
    harness = MixedChaos(cluster, local_cluster, api_client, namespace, tmp_path, SEED)
    try:
        harness.populate()
        yield harness
    finally:
        harness.stop()


def plan(rounds: int, seed: int) -> list[str]:
    """Every fault once in a shuffled order, then each round's pick at random: any run of 7 rounds or more has
    them all."""
    rng = random.Random(seed * 7919)
    kinds = list(KINDS)
    rng.shuffle(kinds)
    while len(kinds) < rounds:
        kinds.append(rng.choice(KINDS))
    return kinds[:rounds]


@pytest.mark.timeout(300 + ROUNDS * ROUND_BUDGET_SECONDS)
def test_mixed_chaos(chaos: MixedChaos, tmp_path: Path) -> None:
    say(f"\n[chaos] ALBM_CHAOS_SEED={SEED} ALBM_CHAOS_ROUNDS={ROUNDS}")
    results: list[RoundResult] = []
    began = time.time()
    try:
        for number, kind in enumerate(plan(ROUNDS, SEED), start=1):
            result = chaos.round(number, kind)
            results.append(result)
            extra = f", {result.reused} IP(s) reused" if result.reused else ""
            extra += f", the operator listed again {result.relisted} time(s)" if result.kind == "relist" else ""
            say(f"[chaos] round {number}/{ROUNDS} {kind}: {result.seconds:.1f}s, deleted {result.victims}{extra}")
    finally:
        dump(results, tmp_path / "chaos-rounds.json")
    say("[chaos] " + summary(results, SEED, time.time() - began))
    if ROUNDS >= 50:  # a long run that never reused an IP or relisted did not test what it claims
        assert sum(r.reused for r in results) > 0, "no IP was reused by a new pod in the whole run"
        assert any(r.relisted for r in results if r.kind == "relist"), "no watch was relisted"


def test_the_checks_catch_what_they_are_for(chaos: MixedChaos) -> None:
    """The checks are not vacuous: a live pod's server removed, a foreign server removed, a token sent again with
    other servers: each fails the round's check."""
    client = chaos.sdk()
    live_ip = next(p.status.pod_ip for p in chaos.list_pods() if p.metadata.labels.get("tier") == "a")

    def remove(token: str, ip: str) -> None:
        chaos.wait(lambda: chaos.group()["ServerGroupStatus"] == "Available", "the group to take changes", 30)
        server = alb.RemoveServersFromServerGroupRequestServers(server_id=ip, server_type="Ip", port=PORT)
        request = alb.RemoveServersFromServerGroupRequest(server_group_id=GROUP, client_token=token, servers=[server])
        try:
            client.remove_servers_from_server_group(request)
        except ClientException as exc:
            assert exc.code == "IdempotenceSignatureMismatch"

    time.sleep(LAG_SECONDS)  # the pod has been seen Ready long enough: the operator knows it too
    remove("rogue-1", live_ip)
    with pytest.raises(AssertionError, match=f"removed {live_ip} while live pod"):
        chaos.check(RoundResult(1, "rogue", 0.0, [], began=time.time() - 60))
    remove("rogue-2", sorted(chaos.foreign)[3])
    with pytest.raises(AssertionError, match="removed a foreign server"):
        chaos.check(RoundResult(2, "rogue", 0.0, [], began=time.time() - 60))
    remove("rogue-2", sorted(chaos.foreign)[4])  # the same token with another server: refused, and recorded
    with pytest.raises(AssertionError, match="sent again with other servers"):
        chaos.check(RoundResult(3, "rogue", 0.0, [], began=time.time()))
