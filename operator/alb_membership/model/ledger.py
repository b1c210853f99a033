"""One ledger per (region, server group): every server identity the operator owns there, who owns it, and the
removal under way for it. Plain code, no I/O.

Why per group and keyed by identity: the cloud knows a server only as (ServerType, ServerId, Port, ServerIp for
Eni), never as a pod. Two owners can hold one identity (hostNetwork pods on one node, a pod IP reused by a new pod,
a pod that is also an endpoint of a Service, two resources naming one group), so the question "may this server
leave?" has one answer per identity, across every resource on the group: only when no owner of it is live.

Invariants (PRODUCT.md 3.7, 3.9):
- An entry without a removal has only live owners; a leaving owner next to a live one is dropped at once (the
  identity stays while the live one holds it, and leaves when that one does).
- An entry with a removal holds the owners whose leaving decided it, and any live owner that appeared after the
  call had gone out (too late to stop it).
- An entry disappears when its removal is final or its last owner is released: state is O(live owners + pending).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field

from alb_membership.alb.models import Server

# (resource UID, owner id): the owner id is the pod UID for pods, endpoint/<service>/<pod UID or address> for
# endpoints and static/<server> for static servers, so the same pod selected by two resources is two owners.
OwnerKey = tuple[str, str]
MAX_DONE = 100_000
GroupKey = tuple[str, str]  # (region, server group id)
IN_GROUP = frozenset({"Available", "Adding", "Configuring"})  # statuses of a server the group holds and keeps
ABSENT = "Absent"
DRY_RUN = "DryRunPassed"  # an addition's precheck passed under dryRun: not asked again while it stays so


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(slots=True)
class Owner:
    source: str  # pod | endpoint | static
    name: str | None = None  # the pod's name, for people reading status
    leaving: bool = False
    trigger: str | None = None


@dataclass(slots=True)
class Done:
    """An owner whose leaving is final: its server was taken out (``removed``, with the weight it had when known:
    an undo's), or not (``removed`` None: another owner keeps it, or a dry run only prechecked its removal)."""

    source: str
    removed: Server | None = None
    weight: int | None = None


@dataclass(slots=True)
class Change:
    """A change of one server decided and not yet final. ``client_token`` is set when it is put into a call and stays
    for every retry and re-submission of that call; a new ``attempt`` (after a failed or unconfirmed job) gets a new
    one."""

    trigger: str
    decided_at: dt.datetime
    attempt: int = 0
    client_token: str | None = None
    job_id: str | None = None
    refused: int = 0  # times refused on the way to the cloud, sent alone
    failures: int = 0  # jobs that failed or were never confirmed
    error: str | None = None  # the cloud's last error code for it, for people (a readiness gate's reason)

    @property
    def sent(self) -> bool:
        """True once its call may have reached the cloud: nothing can stop it any more."""
        return self.client_token is not None


@dataclass(slots=True)
class Removal(Change):
    deletion_started: dt.datetime | None = None
    # The server's weight in the group when known (a listing): an undo puts it back with it (PRODUCT.md 3.13).
    weight: int | None = None
    # For albm_exposure_seconds. ``gated``: a resource with the deletion gate decided it (not kept in status: the
    # resource's spec tells a successor). Kept in status while set, for a successor: ``exposed_since``, when the
    # gate let the pod's deletion go ahead while the server was still in rotation (timed out, too many, error);
    # ``held_out``, the gate held the deletion until the server was out (exposure 0). ``holds``: this process's
    # holds waiting on it now (a deletion still held: not exposed). A deletion-gate removal with none of these
    # (no leader answered, a takeover, the webhook's timeout) is exposed from the pod's deletion.
    gated: bool = False
    exposed_since: dt.datetime | None = None
    held_out: bool = False
    holds: int = 0


@dataclass(slots=True)
class Addition(Change):
    """``trigger``: registration (a live, ready member of a resource with registration on) or undo (a removal of
    this operator's that turned out wrong, PRODUCT.md 3.13)."""

    weight: int = 100


@dataclass(slots=True)
class Entry:
    server: Server
    owners: dict[OwnerKey, Owner] = field(default_factory=dict)
    removal: Removal | None = None
    # Beside a removal only while the addition's call is out (its job ends first; then the removal goes).
    addition: Addition | None = None
    # What the group shows of the server, as last read or as this operator's own job ended: Available, Adding,
    # Configuring, Removing, Absent; None while not known.
    in_group: str | None = None
    weight: int | None = None  # its weight in the group, when known
    # Taken out by this operator for an owner that turned out live, and why: it goes back (PRODUCT.md 3.13), with
    # registration off too.
    undo: str | None = None
    # Recorded by a look at every member (a resource created, registration turned on, an operator start) without
    # knowing whether the group holds it: read before it is added (another controller may have put it in).
    read_first: bool = False

    @property
    def change(self) -> Change | None:
        """The change the group's pipeline handles next: an addition out (its job ends first), else a removal,
        else an addition."""
        if self.addition is not None and (self.addition.sent or self.removal is None):
            return self.addition
        return self.removal

    @property
    def adding(self) -> bool:
        return self.change is not None and self.change is self.addition

    def concerned(self) -> list[OwnerKey]:
        """The owners a change is made for: those leaving, for a removal; the live ones, for an addition."""
        return self.live_owners() if self.adding else self.leaving_owners()

    def live_owners(self) -> list[OwnerKey]:
        return [k for k, o in self.owners.items() if not o.leaving]

    def leaving_owners(self) -> list[OwnerKey]:
        return [k for k, o in self.owners.items() if o.leaving]


class GroupLedger:
    def __init__(self, key: GroupKey, touched: Callable[[str], None] = lambda _uid: None) -> None:
        """``touched(resource UID)``: a change of one owner altered what another resource's status shows (a removal
        called off drops the leaving owners of every resource; live owners recorded by the last check before a
        call): that resource's status must be written too, not only the one whose round made the change."""
        self.key = key
        self._touched = touched
        self.entries: dict[Server, Entry] = {}
        self._by_owner: dict[OwnerKey, Server] = {}
        self._by_resource: dict[str, set[str]] = {}  # resource UID -> owner ids
        # Owners whose removal is final while their pod or endpoint may still be seen terminating (for its whole
        # grace period): seeing them again is not news. Dropped when they are gone (settle), and bounded (the
        # oldest go first). Also by resource, so that one resource's are found without a scan of every one's.
        self._done: dict[OwnerKey, Done] = {}
        self._done_by_resource: dict[str, dict[str, str]] = {}  # resource UID -> owner id -> source
        # Endpoint owners done since their resource's endpoints were last looked at (fresh_done): a look at only
        # the endpoints an event touched must still settle these if their endpoints are gone meanwhile.
        self._fresh: dict[str, set[str]] = {}

    @property
    def group_id(self) -> str:
        return self.key[1]

    # -- owners ------------------------------------------------------------------------------------------------

    def server_of(self, key: OwnerKey) -> Server | None:
        return self._by_owner.get(key)

    def owner(self, key: OwnerKey) -> Owner | None:
        server = self._by_owner.get(key)
        return self.entries[server].owners[key] if server is not None else None

    def owner_ids(self, resource_uid: str) -> list[str]:
        return sorted(self._by_resource.get(resource_uid, ()))

    def hold(self, key: OwnerKey, server: Server, source: str, name: str | None = None) -> bool:
        """``key`` is a live owner of ``server``. Cancels a removal of ``server`` that has not gone out yet: a live
        owner holds it. An owner whose removal was final seen live again (a deletion refused after the gate, an
        endpoint back in its slices) puts its server back: ``undo`` on its entry. True when anything changed."""
        done = self._done.get(key)
        revived = done is not None and source != "static"
        weight = done.weight if done is not None else None
        self._undone(key)
        known = self._by_owner.get(key)
        if known is not None and known != server:
            self.release(key)  # a re-keyed member (backend changed): the old identity is let go, never removed
        entry = self.entries.setdefault(server, Entry(server))
        owner = entry.owners.get(key)
        if owner is not None and not owner.leaving and owner.name == name:
            return False
        if owner is not None and owner.leaving and source != "static":
            return False  # a pod or endpoint that started leaving does not come back; a static server put back does
        fresh = not entry.owners and entry.removal is None
        entry.owners[key] = Owner(source, name)
        self._index(key, server)
        if revived and fresh:
            entry.undo, entry.in_group, entry.weight = "owner-live-again", "Absent", weight
        if entry.removal is not None and not entry.removal.sent:
            self._cancel(entry)
        return True

    def leave(
        self,
        key: OwnerKey,
        trigger: str,
        deletion_started: dt.datetime | None = None,
        server: Server | None = None,
        source: str = "pod",
        name: str | None = None,
    ) -> bool:
        """``key`` stops holding its server (a pod terminating or gone, an endpoint terminating or gone, a static
        server dropped). ``server`` records an owner seen for the first time already leaving (a terminating pod the
        operator never saw live); without it, an owner the ledger never recorded is not acted on. True when a
        removal was decided."""
        known = self._by_owner.get(key)
        if known is None:
            if server is None or key in self._done:
                return False
            self.entries.setdefault(server, Entry(server)).owners[key] = Owner(source, name)
            self._index(key, server)
            known = server
        entry = self.entries[known]
        owner = entry.owners[key]
        if owner.leaving:
            # Seen leaving again: a removal the gate decided before the pod's deletion existed learns when it began.
            removal = entry.removal
            if removal is not None and deletion_started is not None:
                known_start = removal.deletion_started
                removal.deletion_started = min(known_start, deletion_started) if known_start else deletion_started
            return False
        owner.leaving, owner.trigger = True, trigger
        if entry.live_owners():
            self._drop_owner(entry, key)  # another owner still holds the identity
            return False
        entry.undo = None
        if entry.addition is not None and not entry.addition.sent:
            entry.addition = None  # nobody wants it in any more
            if entry.in_group == "Absent":
                self._drop_owner(entry, key)  # never added: nothing to take out
                return False
        if entry.removal is not None:
            return False
        entry.removal = Removal(trigger, now(), deletion_started=deletion_started, weight=entry.weight)
        return True

    def revive(self, key: OwnerKey) -> bool:
        """A leaving owner turned out live (its deletion, held by the gate, never came): it holds its server again.
        A removal not sent yet is called off; one sent already is undone once it ends (``finished``). True when
        anything changed."""
        server = self._by_owner.get(key)
        if server is None:
            return False
        entry = self.entries[server]
        owner = entry.owners[key]
        if not owner.leaving:
            return False
        owner.leaving, owner.trigger = False, None
        if entry.removal is not None and not entry.removal.sent:
            self._cancel(entry)
        return True

    def release(self, key: OwnerKey) -> bool:
        """Stops tracking ``key`` without removing anything (a spec edit, a resource deleted with Retain)."""
        server = self._by_owner.get(key)
        if server is None:
            return False
        entry = self.entries[server]
        if entry.owners[key].leaving:
            return False  # its removal goes on: terminating pods leave whatever happens to the spec
        self._drop_owner(entry, key)
        return True

    # -- removals ------------------------------------------------------------------------------------------------

    def restore(self, key: OwnerKey, server: Server, source: str, name: str | None, removal: Removal) -> None:
        """A removal recorded in status by an earlier operator, with its token and attempt."""
        entry = self.entries.setdefault(server, Entry(server))
        entry.owners[key] = Owner(source, name, leaving=True, trigger=removal.trigger)
        self._index(key, server)
        if entry.removal is None or (removal.client_token and not entry.removal.client_token):
            entry.removal = removal
        for other in entry.live_owners():
            self._drop_owner(entry, other)
            self._touched(other[0])

    def restore_addition(
        self, key: OwnerKey, server: Server, source: str, name: str | None, addition: Addition
    ) -> None:
        """An addition recorded in status by an earlier operator, with its token and attempt: its owner is live."""
        entry = self.entries.setdefault(server, Entry(server))
        entry.owners[key] = Owner(source, name)
        self._index(key, server)
        if entry.addition is None or (addition.client_token and not entry.addition.client_token):
            entry.addition = addition
        if addition.trigger == "undo":
            entry.undo = entry.undo or "owner-live-again"

    def pending(self) -> list[Entry]:
        """Entries with a removal decided."""
        return [e for e in self.entries.values() if e.removal is not None]

    def changing(self) -> list[Entry]:
        """Entries with a change decided: a removal or an addition."""
        return [e for e in self.entries.values() if e.change is not None]

    def want(self, server: Server, weight: int, trigger: str) -> bool:
        """A live owner wants ``server`` in the group and nothing shows it there: an addition, unless a change of it
        is under way. True when one was decided."""
        entry = self.entries.get(server)
        if entry is None or entry.removal is not None or entry.addition is not None or not entry.live_owners():
            return False
        if entry.in_group not in (None, ABSENT):
            return False  # in the group, on its way out of it (an IP reused while draining), or a dry run
        entry.addition = Addition(trigger, now(), weight=weight)
        return True

    def added(self, server: Server, in_group: str, weight: int | None) -> Entry | None:
        """The addition of ``server`` is final: the group shows it (``in_group``), or it already held it."""
        entry = self.entries.get(server)
        if entry is None:
            return None
        if entry.addition is not None:
            entry.addition = None
        entry.in_group, entry.undo = in_group, None
        entry.weight = weight if weight is not None else entry.weight
        if not entry.owners and entry.removal is None:
            self.entries.pop(server, None)
        return entry

    def drop_addition(self, server: Server) -> None:
        """Nobody wants ``server`` in the group any more: its addition is given up (a removal beside it goes)."""
        entry = self.entries.get(server)
        if entry is None:
            return
        entry.addition = None
        if not entry.owners and entry.removal is None:
            self.entries.pop(server, None)

    def forget_dry_runs(self, resource_uid: str) -> None:
        """The resource is no dry run any more: what its prechecks passed for is decided again."""
        for owner_id in self._by_resource.get(resource_uid, ()):
            server = self._by_owner[(resource_uid, owner_id)]
            entry = self.entries[server]
            if entry.in_group == DRY_RUN:
                entry.in_group = None

    def seen_in_group(self, server: Server, in_group: str, weight: int | None) -> bool:
        """What a read of the group shows of ``server`` (Absent when it is not listed). True when that is news."""
        entry = self.entries.get(server)
        if entry is None or (entry.in_group, entry.weight) == (
            in_group,
            weight if weight is not None else entry.weight,
        ):
            return False
        entry.in_group = in_group
        if weight is not None:
            entry.weight = weight
            if entry.removal is not None and not entry.removal.sent:
                entry.removal.weight = weight
        return True

    def cancel_held(self, server: Server, holders: dict[OwnerKey, tuple[str, str | None]]) -> bool:
        """Before a call: ``holders`` are live owners of ``server`` in the cluster right now (across every resource
        on the group). If there are any, the removal is called off and they are recorded. True when called off."""
        entry = self.entries.get(server)
        if entry is None or entry.removal is None or not holders:
            return False
        for key, (source, name) in holders.items():
            entry.owners[key] = Owner(source, name)
            self._index(key, server)
            self._touched(key[0])
        self._cancel(entry)
        return True

    def finished(self, server: Server, removed: bool = True) -> Entry | None:
        """The removal of ``server`` is final (the job succeeded, or the server was already gone; ``removed`` False:
        a dry run's precheck passed, nothing was taken out). The entry is dropped, unless a live owner appeared
        after the call went out: that one stays recorded."""
        entry = self.entries.get(server)
        if entry is None:
            return None
        weight = entry.removal.weight if entry.removal is not None else None
        for key in entry.leaving_owners():
            self._drop_owner(entry, key, keep_empty=True, removed=removed, weight=weight)
        entry.removal = None
        if not entry.owners:
            self.entries.pop(server, None)
        elif removed:
            entry.in_group = "Absent"
            if entry.addition is None:
                entry.undo, entry.weight = "owner-live-after-removal", weight  # a live owner came after the call
        return entry

    def settle(self, key: OwnerKey) -> None:
        """The owner's pod or endpoint is gone: nothing more will be seen of it."""
        self._undone(key)

    def done_ids(self, resource_uid: str) -> list[tuple[str, str]]:
        """(owner id, source) of the resource's owners whose removal is final, oldest first."""
        self._fresh.pop(resource_uid, None)
        return list(self._done_by_resource.get(resource_uid, {}).items())

    def done_source(self, key: OwnerKey) -> str | None:
        """The owner's source if its removal is final (see done_ids), else None."""
        done = self._done.get(key)
        return done.source if done is not None else None

    def removed_server(self, key: OwnerKey) -> Server | None:
        """The server this operator took out for the owner, while its removal is final (see done_ids); None when
        there is none (not done, another owner kept the server, a dry run)."""
        done = self._done.get(key)
        return done.removed if done is not None else None

    def fresh_done(self, resource_uid: str) -> list[str]:
        """The resource's endpoint owners whose removal became final since this was last asked (or done_ids was),
        forgotten once told (keep_fresh tells again)."""
        return sorted(self._fresh.pop(resource_uid, ()))

    def keep_fresh(self, key: OwnerKey) -> None:
        """fresh_done tells of this owner (done) again next time."""
        if key in self._done:
            self._fresh.setdefault(key[0], set()).add(key[1])

    def new_attempt(self, server: Server) -> None:
        """The job failed or was never confirmed: the same token would only return the same job, so the next call
        is a new attempt with a new token."""
        entry = self.entries.get(server)
        change = entry.change if entry is not None else None
        if change is not None:
            change.attempt += 1
            change.client_token = None
            change.job_id = None

    def unsend(self, server: Server) -> None:
        """The cloud refused the call outright (no job): its token may go with other servers next time."""
        entry = self.entries.get(server)
        change = entry.change if entry is not None else None
        if change is not None:
            change.client_token = None

    def forget_resource(self, resource_uid: str) -> None:
        """A resource is gone: its owners go too (its removals were final before its finalizer was released)."""
        for owner_id in list(self._by_resource.get(resource_uid, ())):
            server = self._by_owner.get((resource_uid, owner_id))
            if server is not None:
                entry = self.entries[server]
                self._drop_owner(entry, (resource_uid, owner_id))
                if not entry.owners:
                    self.entries.pop(server, None)  # a removal nobody waits for (its group does not exist)
        for owner_id in self._done_by_resource.pop(resource_uid, {}):
            del self._done[(resource_uid, owner_id)]
        self._fresh.pop(resource_uid, None)

    # -- internals ---------------------------------------------------------------------------------------------

    def _index(self, key: OwnerKey, server: Server) -> None:
        self._by_owner[key] = server
        self._by_resource.setdefault(key[0], set()).add(key[1])

    def _undone(self, key: OwnerKey) -> None:
        if self._done.pop(key, None) is not None:
            done = self._done_by_resource[key[0]]
            del done[key[1]]
            if not done:
                del self._done_by_resource[key[0]]
            fresh = self._fresh.get(key[0])
            if fresh is not None:
                fresh.discard(key[1])
                if not fresh:
                    del self._fresh[key[0]]

    def _cancel(self, entry: Entry) -> None:
        entry.removal = None
        for key in entry.leaving_owners():
            self._drop_owner(entry, key, keep_empty=True)
            self._touched(key[0])

    def _drop_owner(
        self, entry: Entry, key: OwnerKey, keep_empty: bool = False, removed: bool = False, weight: int | None = None
    ) -> None:
        """``removed``: its server was taken out (``weight``: what it had)."""
        owner = entry.owners.pop(key, None)
        if owner is not None and owner.leaving:
            # It left (removed, or another owner holds the server): seeing it leave again is not news.
            self._done[key] = Done(owner.source, entry.server if removed else None, weight)
            self._done_by_resource.setdefault(key[0], {})[key[1]] = owner.source
            if owner.source == "endpoint":
                self._fresh.setdefault(key[0], set()).add(key[1])
            while len(self._done) > MAX_DONE:
                self._undone(next(iter(self._done)))
        if self._by_owner.get(key) == entry.server:
            del self._by_owner[key]
            ids = self._by_resource.get(key[0])
            if ids is not None:
                ids.discard(key[1])
                if not ids:
                    del self._by_resource[key[0]]
        if not entry.owners and entry.removal is None and entry.addition is None and not keep_empty:
            self.entries.pop(entry.server, None)
