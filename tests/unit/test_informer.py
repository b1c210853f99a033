"""The lean watch's hard cases, against a scripted API: a broken watch resumes where it stopped, a replayed or
late DELETED never removes a newer object of the same name, a relist during a namespace's fill does not report
that namespace's objects deleted, a fill stops once its namespace is forgotten, and a failed fill is tried again."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from alb_membership.cluster.informer import Informer, Source


class Body:
    def __init__(self, lines: list[bytes], fail: bool) -> None:
        self.lines, self.fail = lines, fail

    async def iter_any(self) -> AsyncIterator[bytes]:
        for line in self.lines:
            yield line[:5]  # lines arrive cut into pieces
            yield line[5:]
        if self.fail:
            raise ConnectionResetError("connection reset mid-stream")
        await asyncio.sleep(3600)


class Resp:
    def __init__(self, body: Any = None, content: Body | None = None, status: int = 200) -> None:
        self.status, self.content = status, content
        self._raw = json.dumps(body).encode() if body is not None else b""

    async def read(self) -> bytes:
        return self._raw

    def release(self) -> None:
        pass


def obj(ns: str, name: str, uid: str = "", rv: str = "5") -> dict[str, Any]:
    return {"metadata": {"namespace": ns, "name": name, "uid": uid or f"uid-{name}", "resourceVersion": rv}}


def event(kind: str, ns: str, name: str, uid: str, rv: str) -> bytes:
    return (json.dumps({"type": kind, "object": obj(ns, name, uid, rv)}) + "\n").encode()


def informer(call: Callable[..., Any], keep: Callable[[str], bool], changes: list[Any]) -> Informer[dict[str, Any]]:
    return Informer(
        Source(call), lambda o: o, lambda o: o["metadata"]["uid"], keep, lambda o, n: changes.append((o, n))
    )


def uids(changes: list[Any]) -> list[tuple[str | None, str | None]]:
    return [(o and o["metadata"]["uid"], n and n["metadata"]["uid"]) for o, n in changes]


async def test_a_broken_watch_resumes_from_the_last_version_and_a_stale_delete_spares_a_newer_pod() -> None:
    """A StatefulSet's web-0 deleted (u1) and made again (u2), then the connection breaks."""
    watched_from: list[str] = []

    async def call(**q: Any) -> Resp:
        if not q.get("watch"):
            return Resp({"metadata": {"resourceVersion": "10"}, "items": [obj("a", "web-0", "u1", "9")]})
        watched_from.append(q["resource_version"])
        if len(watched_from) == 1:
            return Resp(content=Body([event("DELETED", "a", "web-0", "u1", "11"),
                                      event("ADDED", "a", "web-0", "u2", "12")], fail=True))  # fmt: skip
        # Even if the server replayed the deletion of u1, it must not take u2 away.
        return Resp(content=Body([event("DELETED", "a", "web-0", "u1", "11")], fail=False))

    changes: list[Any] = []
    inf = informer(call, lambda ns: True, changes)
    task = asyncio.create_task(inf.run())
    await asyncio.sleep(1.5)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert watched_from[:2] == ["10", "12"], "resumed from the last version seen"
    assert uids(changes) == [("u1", None), (None, "u2")]
    assert inf.records["a"]["web-0"]["metadata"]["uid"] == "u2"


async def test_a_relist_during_a_fill_does_not_report_that_namespace_deleted() -> None:
    interest = {"c"}
    gate = asyncio.Event()
    pages = [
        {"metadata": {"resourceVersion": "10", "continue": "t"}, "items": [obj("b", "b1"), obj("b", "b2")]},
        {"metadata": {"resourceVersion": "10"}, "items": [obj("c", "c1")]},
    ]

    async def call(**q: Any) -> Resp:
        if q.get("_continue"):
            await gate.wait()  # the relist is between pages...
            return Resp(pages[1])
        return Resp(pages[0])

    async def namespace_call(**q: Any) -> Resp:
        return Resp({"metadata": {"resourceVersion": "11"}, "items": [obj("b", "b1"), obj("b", "b2")]})

    changes: list[Any] = []
    inf = informer(call, lambda ns: ns in interest, changes)
    inf.synced.set()  # as after the first list: this is a relist after 410 Gone
    relist = asyncio.create_task(inf._list())
    await asyncio.sleep(0.01)
    interest.add("b")  # ...when a resource appears in namespace b
    await inf.fill("b", namespace_call)
    gate.set()
    await relist
    assert set(inf.records["b"]) == {"b1", "b2"} and not [c for c in changes if c[1] is None]


async def test_a_fill_writes_nothing_once_its_namespace_is_forgotten() -> None:
    interest = {"b"}
    gate = asyncio.Event()

    async def call(**q: Any) -> Resp:
        return Resp({"metadata": {"resourceVersion": "1"}, "items": []})

    async def namespace_call(**q: Any) -> Resp:
        await gate.wait()
        return Resp({"metadata": {"resourceVersion": "11"}, "items": [obj("b", "b1")]})

    inf = informer(call, lambda ns: ns in interest, [])
    await inf._list()
    fill = asyncio.create_task(inf.fill("b", namespace_call))
    await asyncio.sleep(0.01)
    interest.discard("b")
    inf.forget_namespace("b")
    gate.set()
    await fill
    assert "b" not in inf.records


async def test_a_failed_fill_is_tried_again_when_a_handler_asks() -> None:
    from kubernetes_asyncio import client

    from alb_membership.cluster.store import ClusterStore

    async with client.ApiClient() as api:
        store = ClusterStore(api, (), "eni", lambda o, n: None, lambda ns, s, k: None, lambda: None)
        calls: list[str] = []

        async def flaky(namespace: str, **q: Any) -> Resp:
            calls.append(namespace)
            if len(calls) == 1:
                raise OSError("API server unreachable for a moment")
            return Resp({"metadata": {"resourceVersion": "3"}, "items": [obj(namespace, "p1")]})

        async def no_slices(namespace: str, **q: Any) -> Resp:
            return Resp({"metadata": {"resourceVersion": "3"}, "items": []})

        store._list_pods = flaky  # type: ignore[method-assign]
        store._list_slices = no_slices  # type: ignore[method-assign]
        store.synced.set()
        try:
            await store.ensure("x")
            raised = False
        except RuntimeError:
            raised = True  # kopf retries the handler
        assert raised
        await store.ensure("x")
        assert calls == ["x", "x"] and [p.name for p in store.pods("x")] == ["p1"]


async def watch_a_bad_then_a_good_pod(
    convert: Callable[[dict[str, Any]], dict[str, Any]], on_change: Callable[[Any, Any], None]
) -> tuple[Informer[dict[str, Any]], list[str]]:
    """An informer over a watch that sends "bad" then "good", run for a moment; returns it and the versions it
    watched from."""
    watched_from: list[str] = []

    async def call(**q: Any) -> Resp:
        if not q.get("watch"):
            return Resp({"metadata": {"resourceVersion": "10"}, "items": []})
        watched_from.append(q["resource_version"])
        return Resp(content=Body([event("ADDED", "a", "bad", "u1", "11"),
                                  event("ADDED", "a", "good", "u2", "12")], fail=False))  # fmt: skip

    inf: Informer[dict[str, Any]] = Informer(
        Source(call), convert, lambda o: o["metadata"]["uid"], lambda ns: True, on_change
    )
    task = asyncio.create_task(inf.run())
    await asyncio.sleep(0.5)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return inf, watched_from


async def test_an_event_its_handler_fails_on_is_not_read_again_and_again() -> None:
    """Raised into the watch, the failure would make it resume from the same resourceVersion, read the same event
    and fail again, forever. The watch goes on with the next event instead."""
    handled: list[str] = []

    def on_change(_old: Any, new: Any) -> None:
        if new["metadata"]["name"] == "bad":
            raise RuntimeError("a bug in the handler")
        handled.append(new["metadata"]["name"])

    inf, watched_from = await watch_a_bad_then_a_good_pod(lambda o: o, on_change)
    assert handled == ["good"] and inf.callback_errors == 1
    assert watched_from == ["10"], "one watch: the failing event was not read again"


async def test_an_object_that_cannot_be_read_is_passed_over_not_read_again() -> None:
    def convert(o: dict[str, Any]) -> dict[str, Any]:
        if o["metadata"]["name"] == "bad":
            raise KeyError("status")
        return o

    changes: list[Any] = []
    inf, watched_from = await watch_a_bad_then_a_good_pod(convert, lambda o, n: changes.append(n))
    assert [n["metadata"]["name"] for n in changes] == ["good"] and inf.callback_errors == 1
    assert watched_from == ["10"]
