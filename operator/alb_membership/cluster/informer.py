"""A lean list-and-watch of one kind, like client-go's reflector: paged list, watch from its resourceVersion with
bookmarks, and on 410 Gone (or any broken watch that cannot resume) a relist whose difference with what is known
becomes events, deletions included.

Why not kopf for pods and EndpointSlices: kopf keeps per-object state and wakes every indexing worker for each new
object, which costs quadratic time at 10,000 pods (measured: more than 330 CPU-seconds, never ready). Here an
object costs one JSON parse and, if ``keep`` wants it, one small record.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

R = TypeVar("R")
Key = tuple[str, str]  # (namespace, name)

PAGE_SIZE = 500
WATCH_SECONDS = 240  # the server ends each watch; the client's read timeout is longer
READ_TIMEOUT_SECONDS = WATCH_SECONDS + 60


class Gone(Exception):
    """The resourceVersion is too old (HTTP 410, or an ERROR event with code 410): relist."""


@dataclass(frozen=True)
class Source:
    """How to list and watch: ``call(**query)`` is a kubernetes_asyncio list function (namespaced ones bound to
    their namespace), called with ``_preload_content=False`` so that nothing builds model objects."""

    call: Callable[..., Awaitable[Any]]
    label_selector: str | None = None
    describe: str = "objects"


class Informer(Generic[R]):
    """Keeps ``records`` (namespace -> name -> whatever ``convert`` makes of an object, for namespaces ``keep``
    wants) current, and calls ``on_change(old, new)`` for every change once listed (``new`` None: deleted).

    ``on_store(old, new)`` hears every change of ``records`` itself, before and after the first list, fills and
    forgotten namespaces included (``old`` None: added, ``new`` None: dropped): the store keeps its indexes with
    it, so they hold exactly what ``records`` holds."""

    def __init__(
        self,
        source: Source,
        convert: Callable[[dict[str, Any]], R],
        uid_of: Callable[[R], str],
        keep: Callable[[str], bool],
        on_change: Callable[[R | None, R | None], None],
        on_relist: Callable[[], None] = lambda: None,
        on_store: Callable[[R | None, R | None], None] = lambda _old, _new: None,
    ) -> None:
        self._source = source
        self._convert = convert
        self._uid_of = uid_of
        self._keep = keep
        self._on_change = on_change
        self._on_relist = on_relist
        self._on_store = on_store
        self.records: dict[str, dict[str, R]] = {}
        self.synced = asyncio.Event()
        self.relists = 0
        self.events = 0
        self.callback_errors = 0
        self._version: str | None = None  # the last resourceVersion seen: a broken watch resumes from it
        self._filling: dict[str, set[Key]] = {}  # namespace -> keys deleted while it is being filled
        self._filled_while_listing: set[str] | None = None  # set while a list runs

    async def run(self) -> None:
        delay = 0.5
        while True:
            try:
                if self._version is None:
                    self._version = await self._list()
                await self._watch()
                delay = 0.5
            except Gone:
                log.info("watch of %s expired (410 Gone): listing again", self._source.describe)
                self._version = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # A broken connection resumes from the last version seen; the server says Gone if it is too old.
                log.warning(
                    "watch of %s failed (%s: %s); again in %.1fs", self._source.describe, type(exc).__name__, exc, delay
                )
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(30.0, delay * 2)

    async def _list(self) -> str:
        seen: set[Key] = set()
        version = ""
        self._filled_while_listing = set()
        try:
            async for items, listed in self._pages(self._source.call):
                version = listed
                for obj in items:
                    key = self._guarded("ADDED", obj)
                    if key is not None:
                        seen.add(key)
            filled = self._filled_while_listing
        finally:
            self._filled_while_listing = None
        relisted = self.synced.is_set()
        for namespace, named in list(self.records.items()):  # deleted while nobody watched
            if namespace in filled:
                continue  # read by a fill during the list: newer than the pages read before it
            for name in [n for n in named if (namespace, n) not in seen]:
                gone = named.pop(name)
                self._on_store(gone, None)
                self._tell(gone, None)
        if relisted:
            self.relists += 1
            self._on_relist()
        self.synced.set()
        return version

    async def _watch(self) -> None:
        resp = await self._source.call(
            watch=True,
            resource_version=self._version,
            allow_watch_bookmarks=True,
            timeout_seconds=WATCH_SECONDS,
            label_selector=self._source.label_selector,
            _preload_content=False,
            _request_timeout=(10, READ_TIMEOUT_SECONDS),
        )
        try:
            if resp.status == 410:
                raise Gone()
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}: {(await resp.read())[:200]!r}")
            buffer = bytearray()
            async for chunk in resp.content.iter_any():
                searched = len(buffer)  # only the new bytes can hold a line's end: no rescans of a long line
                buffer += chunk
                while (end := buffer.find(b"\n", searched)) >= 0:
                    line, searched = bytes(buffer[:end]), 0
                    del buffer[: end + 1]
                    if line.strip():
                        self._event(json.loads(line))
        finally:
            resp.release()

    def _event(self, event: dict[str, Any]) -> None:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise Gone()
            raise RuntimeError(f"watch error: {obj.get('message')}")
        if kind != "BOOKMARK":
            self._guarded(kind or "MODIFIED", obj)
        self._version = (obj.get("metadata") or {}).get("resourceVersion") or self._version

    def _guarded(self, kind: str, obj: dict[str, Any]) -> Key | None:
        """An object this replica cannot read or index is passed over (logged, counted) like a failing callback:
        raised, the watch would resume before it and fail on it forever."""
        try:
            return self._apply(kind, obj)
        except Exception:
            self.callback_errors += 1
            meta = obj.get("metadata") or {}
            log.exception(
                "%s %s/%s could not be read; passed over",
                self._source.describe,
                meta.get("namespace"),
                meta.get("name"),
            )
            return None

    def _apply(self, kind: str, obj: dict[str, Any]) -> Key | None:
        meta = obj.get("metadata") or {}
        key = (meta.get("namespace", ""), meta.get("name", ""))
        self.events += 1
        if not self._keep(key[0]):
            return None
        named = self.records.setdefault(key[0], {})
        if kind == "DELETED":
            if key[0] in self._filling:
                self._filling[key[0]].add(key)
            known = named.get(key[1])
            if known is not None and self._uid_of(known) == meta.get("uid"):  # not a newer object of that name
                del named[key[1]]
                self._on_store(known, None)
                if self.synced.is_set():
                    self._tell(known, None)
            return key
        record = self._convert(obj)
        old = named.get(key[1])
        named[key[1]] = record
        self._on_store(old, record)
        if self.synced.is_set():
            self._tell(old, record)
        return key

    def _tell(self, old: R | None, new: R | None) -> None:
        """A failing callback must not stop the watch: raised into it, the event would be read again from the
        same resourceVersion, fail again, and so on forever. Logged (and counted by the callback's owner), the
        next relist or anti-entropy round makes up for what the event would have done."""
        try:
            self._on_change(old, new)
        except Exception:
            self.callback_errors += 1
            log.exception("handling a change of %s failed; going on with the next", self._source.describe)

    async def _pages(self, call: Callable[..., Awaitable[Any]]) -> AsyncIterator[tuple[list[dict[str, Any]], str]]:
        """Each page's objects, with the list's resourceVersion."""
        token: str | None = None
        while True:
            query: dict[str, Any] = {"limit": PAGE_SIZE}
            if token:
                query["_continue"] = token
            resp = await call(
                label_selector=self._source.label_selector, _preload_content=False, _request_timeout=(10, 120), **query
            )
            try:
                if resp.status == 410:
                    raise Gone()
                raw = await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"HTTP {resp.status}: {raw[:200]!r}")
            finally:
                resp.release()
            body = json.loads(raw)
            yield body.get("items") or [], body["metadata"]["resourceVersion"]
            token = body["metadata"].get("continue")
            if not token:
                return

    async def fill(self, namespace: str, namespace_call: Callable[..., Awaitable[Any]]) -> None:
        """``namespace`` became interesting after the list (``keep`` says so from now on): read its objects; the
        watch keeps them current from now on. An object a watch event brought in meanwhile is newer than the
        list, one deleted meanwhile stays deleted, and nothing is written once the namespace is no longer kept."""
        deleted = self._filling.setdefault(namespace, set())
        if self._filled_while_listing is not None:
            self._filled_while_listing.add(namespace)
        try:
            async for items, _ in self._pages(namespace_call):
                if not self._keep(namespace):
                    return
                named = self.records.setdefault(namespace, {})
                for obj in items:
                    name = (obj.get("metadata") or {}).get("name", "")
                    if name not in named and (namespace, name) not in deleted:
                        record = named[name] = self._convert(obj)
                        self._on_store(None, record)
        finally:
            del self._filling[namespace]

    def forget_namespace(self, namespace: str) -> None:
        for record in self.records.pop(namespace, {}).values():
            self._on_store(record, None)

    def count(self) -> int:
        return sum(len(named) for named in self.records.values())
