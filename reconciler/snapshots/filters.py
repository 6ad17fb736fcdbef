"""containerd's filter syntax, for Walk/List.

    filter   := selector ("," selector)*          all selectors must match
    selector := fieldpath [op value]              op: == != ~= @=; none: the field is present
    fieldpath:= part ("." part)*                  part: a name, or a "quoted string"
    value    := a "quoted string" | /regexp/ | text up to the next ","

Several filters match when any one does. Snapshots have the fields name, parent, kind
(active/view/committed) and labels.<key>.

`~=` is matched by RE2, as containerd matches it with Go's regexp (RE2 syntax): in time
linear in the text, whatever the pattern. Python's `re` backtracks, and a client's
`name~="^(a+)+$"` against one long key would hold the reconcile thread, so the whole daemon,
for as long as it took. A pattern RE2 cannot take (backreferences, lookarounds, a
repetition over 1000) is InvalidArgument, as containerd refuses it. This is the only
module that imports re2 (an import-linter contract).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import re2

from reconciler.snapshots.model import Info, InvalidArgument

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPERATORS = ("==", "!=", "~=", "@=")
_QUOTES = '"/|'
# A client's bad pattern is its error, answered as InvalidArgument: not one for RE2 to log
# on the daemon's stderr.
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False


class Pattern(Protocol):
    """A compiled `~=` regular expression (re2 ships no type information)."""

    def search(self, text: str) -> object | None:
        """A match anywhere in `text`, or None."""


@dataclass(frozen=True)
class Selector:
    """One `fieldpath[op value]` test."""

    path: tuple[str, ...]
    op: str | None
    value: str
    pattern: Pattern | None = None

    def matches(self, field: Callable[[tuple[str, ...]], str | None]) -> bool:
        """Whether the object whose fields `field` reads passes this test."""
        found = field(self.path)
        if self.op is None:
            return found is not None
        if self.op == "==":
            return found == self.value
        if self.op == "!=":
            return found != self.value
        text = found or ""
        if self.op == "@=":
            return self.value in text
        assert self.pattern is not None
        return self.pattern.search(text) is not None


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def error(self, what: str) -> InvalidArgument:
        return InvalidArgument(f"filter {self.text!r}: {what} at position {self.pos}")

    def done(self) -> bool:
        return self.pos >= len(self.text)

    def peek(self, token: str) -> bool:
        return self.text.startswith(token, self.pos)

    def quoted(self) -> str:
        quote = self.text[self.pos]
        self.pos += 1
        out = []
        while not self.done():
            char = self.text[self.pos]
            self.pos += 1
            if char == "\\" and not self.done():
                nxt = self.text[self.pos]
                self.pos += 1
                # In a /regexp/, a backslash escapes for the regexp, not for us.
                out.append(nxt if nxt == quote or quote == '"' else char + nxt)
                continue
            if char == quote:
                return "".join(out)
            out.append(char)
        raise self.error("unterminated quoted string")

    def part(self) -> str:
        if not self.done() and self.text[self.pos] == '"':
            return self.quoted()
        match = _NAME.match(self.text, self.pos)
        if match is None:
            raise self.error("expected a field name")
        self.pos = match.end()
        return match.group()

    def value(self) -> str:
        if not self.done() and self.text[self.pos] in _QUOTES:
            return self.quoted()
        end = self.text.find(",", self.pos)
        end = len(self.text) if end < 0 else end
        value, self.pos = self.text[self.pos:end], end
        if not value:
            raise self.error("expected a value")
        return value


def _selector(scan: _Scanner) -> Selector:
    path = [scan.part()]
    while scan.peek("."):
        scan.pos += 1
        path.append(scan.part())
    op = next((o for o in _OPERATORS if scan.peek(o)), None)
    if op is None:
        return Selector(tuple(path), None, "")
    scan.pos += len(op)
    value = scan.value()
    pattern = None
    if op == "~=":
        pattern = _compile(scan, value)
    return Selector(tuple(path), op, value, pattern)


def _compile(scan: _Scanner, value: str) -> Pattern:
    """A `~=` pattern compiled by RE2; InvalidArgument when RE2 refuses it."""
    try:
        pattern: Pattern = re2.compile(value, _RE2_OPTIONS)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode(errors="replace")
        raise scan.error(f"bad regular expression {value!r} ({reason}; RE2 syntax, as "
                         "containerd's)") from None
    return pattern


def parse_filter(text: str) -> tuple[Selector, ...]:
    """One filter string: selectors that must all match."""
    scan = _Scanner(text.strip())
    if scan.done():
        raise scan.error("empty filter")
    selectors = [_selector(scan)]
    while not scan.done():
        if not scan.peek(","):
            raise scan.error("expected ',' or the end")
        scan.pos += 1
        selectors.append(_selector(scan))
    return tuple(selectors)


def snapshot_field(info: Info) -> Callable[[tuple[str, ...]], str | None]:
    """How a filter reads a snapshot's fields (None: the field is absent)."""
    def read(path: tuple[str, ...]) -> str | None:
        head, rest = path[0], path[1:]
        if head == "labels":
            return info.labels.get(".".join(rest)) if rest else None
        if rest:
            return None
        if head == "name":
            return info.name
        if head == "parent":
            return info.parent
        if head == "kind":
            return info.kind.value
        return None
    return read


class Matcher:
    """Filters parsed once: a snapshot passes when any filter's selectors all match."""

    def __init__(self, filters: Sequence[str]) -> None:
        self.filters = [parse_filter(text) for text in filters if text.strip()]

    def __call__(self, info: Info) -> bool:
        if not self.filters:
            return True
        read = snapshot_field(info)
        return any(all(s.matches(read) for s in selectors) for selectors in self.filters)
