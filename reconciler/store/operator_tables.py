"""What operators and the last pass leave for others to read: requests, conditions, facts,
rejected specs and orphans.

Part of the store (see `store.Store`, which is made of these tables). Each table is small and
read whole; the CLI writes requests, the daemon's pass writes the rest, `status` reads all.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict
from typing import Any

from reconciler.store.database import Connection
from reconciler.store.records import (
    ConditionKind,
    ConditionRecord,
    OrphanRecord,
    RejectedSpecRecord,
    RequestKind,
    RequestRecord,
)
from reconciler.store.rows import open_kind, orphan_record, orphan_values


class OperatorTables(Connection):
    """Requests, conditions, facts, rejected specs and orphans."""

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
