"""What operators and the last pass leave for others to read: requests, conditions, facts,
rejected specs, orphans, and the removal guard's holds and window.

Part of the store (see `store.Store`, which is made of these tables). Each table is small and
read whole; the CLI writes requests, the daemon's pass writes the rest, `status` reads all.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict
from typing import Any

import peewee

from reconciler.store.database import Connection
from reconciler.store.records import (
    ConditionKind,
    ConditionRecord,
    HeldRemoval,
    HoldCause,
    OrphanRecord,
    RejectedSpecRecord,
    RemovalEvent,
    RequestKind,
    RequestRecord,
)
from reconciler.store.rows import open_kind, orphan_record, orphan_values


class OperatorTables(Connection):
    """Requests, conditions, facts, rejected specs, orphans, held removals."""

    # -- rejected specs --------------------------------------------------------------------

    def replace_rejected_specs(self, rejected: Iterable[RejectedSpecRecord]) -> None:
        """Make the stored list of rejected specs exactly this one (the last pass's view)."""
        self._replace_all(self._m.RejectedSpec, [asdict(item) for item in rejected])

    def rejected_specs(self) -> list[RejectedSpecRecord]:
        """Spec files the last pass rejected, by name."""
        return [
            RejectedSpecRecord(name=row.name, path=row.path, error=row.error, seen_at=row.seen_at)
            for row in self._m.RejectedSpec.select().order_by(self._m.RejectedSpec.name)
        ]

    # -- operator requests -----------------------------------------------------------------

    def add_request(self, kind: RequestKind, name: str, arg: int | None = None) -> int:
        """Queue a request for the daemon (it runs them at the start of its next pass);
        returns its id."""
        row = self._m.Request.create(kind=kind.value, name=name, at=self.clock(), arg=arg)
        request_id: int = row.id
        return request_id

    def has_requests(self) -> bool:
        """Whether any request waits (one cheap query)."""
        return self._sql("SELECT 1 FROM requests LIMIT 1").fetchone() is not None

    def take_requests(self) -> list[RequestRecord]:
        """Remove and return the queued requests, oldest first (CLI processes add them at
        any moment: the read and the delete are one IMMEDIATE transaction)."""
        def take() -> list[Any]:
            rows = list(self._m.Request.select().order_by(self._m.Request.id))
            self._m.Request.delete().where(self._m.Request.id.in_([r.id for r in rows])).execute()
            return rows

        return [RequestRecord(id=r.id, kind=open_kind(RequestKind, r.kind), name=r.name,
                              at=r.at, arg=r.arg)
                for r in self._atomically(take)]


    # -- orphans ---------------------------------------------------------------------------

    def replace_orphans(self, orphans: Iterable[OrphanRecord]) -> None:
        """Make the stored orphan list exactly this one (the last full pass's view)."""
        self._replace_all(self._m.Orphan, [orphan_values(item) for item in orphans])

    def orphans(self) -> list[OrphanRecord]:
        """Thin ids and dm devices of our pool the store does not manage."""
        return [orphan_record(r) for r in
                self._m.Orphan.select().order_by(self._m.Orphan.kind, self._m.Orphan.name)]

    # -- conditions and facts --------------------------------------------------------------

    def set_condition(self, kind: ConditionKind, message: str,
                      names: Iterable[str] = ()) -> ConditionRecord:
        """Say a condition is in force (again): its count grows, its `since` stays."""
        now = self.clock()
        row = self._m.Condition
        listed = json.dumps(sorted(names))

        def count_in() -> tuple[int, float]:
            old = row.get_or_none(row.kind == kind.value)
            count = 1 if old is None else old.count + 1
            since = now if old is None else old.since
            row.insert(kind=kind.value, message=message, names=listed, count=count,
                       since=since, at=now).on_conflict_replace().execute()
            return count, since

        count, since = self._atomically(count_in)
        return ConditionRecord(kind, message, tuple(json.loads(listed)), count, since, now)

    def clear_condition(self, kind: ConditionKind) -> None:
        """The condition no longer holds."""
        self._m.Condition.delete().where(self._m.Condition.kind == kind.value).execute()

    def conditions(self) -> list[ConditionRecord]:
        """Every condition in force, by kind."""
        return [ConditionRecord(open_kind(ConditionKind, r.kind), r.message,
                                tuple(json.loads(r.names)), r.count, r.since, r.at)
                for r in self._m.Condition.select().order_by(self._m.Condition.kind)]

    def condition(self, kind: ConditionKind) -> ConditionRecord | None:
        """One condition, if in force."""
        return next((c for c in self.conditions() if c.kind == kind), None)

    def fact(self, key: str) -> str | None:
        """A value remembered across restarts (e.g. the spec directory's filesystem)."""
        row = self._m.Fact.get_or_none(self._m.Fact.key == key)
        return None if row is None else str(row.value)

    def set_fact(self, key: str, value: str) -> None:
        """Remember a value across restarts."""
        self._m.Fact.insert(key=key, value=value).on_conflict_replace().execute()

    # -- the removal guard -------------------------------------------------------------------

    def held_removals(self) -> dict[str, HeldRemoval]:
        """Every removal the guard holds (or an operator confirmed, not yet done), by name."""
        row = self._m.HeldRemoval
        try:
            rows = list(row.select().order_by(row.name))
        except peewee.OperationalError:  # a read-only look at a file an older version wrote
            if not self._db.table_exists("held_removals"):
                return {}
            raise
        return {r.name: HeldRemoval(r.name, open_kind(HoldCause, r.cause), r.reason, r.held_at,
                                    r.selection, r.confirmed_at) for r in rows}

    def hold_removals(self, names: Iterable[str], cause: HoldCause, reason: str,
                      selection: str) -> None:
        """Hold these removals under `selection`. A name held already keeps its `held_at`;
        held under another selection, it loses its confirmation (that config asked no more)."""
        now = self.clock()
        row = self._m.HeldRemoval
        listed = sorted(set(names))

        def hold() -> None:
            old = {r.name: r for r in row.select().where(row.name.in_(listed))}
            for name in listed:
                before = old.get(name)
                held_at, confirmed_at = now, None
                if before is not None:
                    held_at = before.held_at
                    if before.selection == selection:
                        confirmed_at = before.confirmed_at
                row.insert(name=name, cause=cause.value, reason=reason, held_at=held_at,
                           selection=selection, confirmed_at=confirmed_at,
                           ).on_conflict_replace().execute()

        if listed:
            self._atomically(hold)

    def confirm_held(self, names: Iterable[str]) -> None:
        """An operator confirmed these held removals: the next pass does them."""
        row = self._m.HeldRemoval
        listed = sorted(set(names))
        if listed:
            row.update(confirmed_at=self.clock()).where(row.name.in_(listed)).execute()

    def release_holds(self, names: Iterable[str]) -> None:
        """These holds are over (the spec returned, or the device is gone)."""
        listed = sorted(set(names))
        if listed:
            self._m.HeldRemoval.delete().where(self._m.HeldRemoval.name.in_(listed)).execute()

    def removal_events(self) -> list[RemovalEvent]:
        """The removals the guard let through without a confirm that are still remembered,
        oldest first."""
        row = self._m.RemovalEvent
        return [RemovalEvent(r.id, r.name, r.at, r.open)
                for r in row.select().order_by(row.at, row.id)]

    def note_removals(self, names: Iterable[str], close: Iterable[int] = (),
                      forget: Iterable[int] = ()) -> None:
        """Remember removals let through now; mark the events with ids in `close` done (their
        device is gone or wanted again); forget those in `forget` (out of the window)."""
        now = self.clock()
        row = self._m.RemovalEvent
        rows = [{"name": n, "at": now, "open": True} for n in sorted(set(names))]
        done, gone = list(close), list(forget)

        def note() -> None:
            if gone:
                row.delete().where(row.id.in_(gone)).execute()
            if done:
                row.update(open=False).where(row.id.in_(done)).execute()
            if rows:
                row.insert_many(rows).execute()

        if rows or done or gone:
            self._atomically(note)
