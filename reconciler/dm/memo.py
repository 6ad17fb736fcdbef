"""LastCall: the results of the previous call's inputs, kept for the next call.

A converged system prints the same lines pass after pass: the status of 10,000 idle devices
is the same 10,000 lines as a minute ago. Remembering what each line parsed to on the last
call lets a pass parse only the lines that changed. Only one call's worth is kept, so a line
that keeps changing (a device's mapped-sector count) never piles up old entries.

Results must be immutable (the frozen dataclasses of dm.types): the same object is handed
to every later call that sees the same input, so a caller may also tell an unchanged line
by identity (`is`), which is how the observation reuses what it built from it.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Hashable, Iterator, Sequence
from itertools import accumulate
from typing import Generic, TypeVar, cast

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LastCall(Generic[K, V]):
    """`get(key, make)` returns the value last call made for `key`, or makes it;
    `end_call()` forgets every key this call did not ask for."""

    def __init__(self) -> None:
        self._previous: dict[K, V] = {}
        self._current: dict[K, V] = {}

    def get(self, key: K, make: Callable[[K], V]) -> V:
        """The value for `key`: the last call's if it had one, else `make(key)`."""
        try:
            value = self._current[key]
        except KeyError:
            try:
                value = self._previous[key]
            except KeyError:
                value = make(key)
            self._current[key] = value
        return value

    def call(self, keys: Sequence[K], make: Callable[[K], V]) -> list[V]:
        """One whole call: the value of every key (`get` for each, then `end_call`), with
        the lookups of unchanged keys done in C: 10,000 listing lines in about a
        millisecond. Values must not be None."""
        if self._current:
            self.end_call()
        previous = self._previous
        values: list[V | None] = list(map(previous.get, keys))
        # A set difference, not `None in values`: that would call each value's __eq__.
        if not previous.keys() >= set(keys):
            for index, value in enumerate(values):
                if value is None:
                    values[index] = make(keys[index])
        done = cast(list[V], values)
        self._previous, self._current = dict(zip(keys, done, strict=True)), {}
        return done

    def end_call(self) -> None:
        """This call is over: what it asked for is what the next call may reuse."""
        self._previous, self._current = self._current, {}

    def __len__(self) -> int:
        return len(self._previous)


R = TypeVar("R")


class LastText(Generic[V, R]):
    """What the last whole listing's text parsed to: the same text again (a converged
    system's) is one comparison and the very same result; another text parses only the
    lines the last one did not print.

    Keeps the last text and one value per line, not each line as a string of its own: at
    50,000 devices a listing's lines kept as a LastCall's keys held its text a second time
    (13.6 MB for info and table). A changed text splits the old one again to match its
    lines, work done only when some device changed."""

    # How much of the last text is split at a time to match a changed text's lines against:
    # its lines all at once were as many strings again as the new text's (11 MB for 50,000
    # info lines) at the peak of every pass whose listing changed.
    chunk_chars = 1 << 20

    def __init__(self, split: Callable[[str], list[str]], make: Callable[[str], V],
                 assemble: Callable[[list[V]], R]) -> None:
        self._split, self._make, self._assemble = split, make, assemble
        self._last: tuple[str, list[V], R] | None = None

    def parse(self, text: str) -> R:
        """The result of `text`: the last call's if it was the same text. Values must not
        be None."""
        last = self._last
        if last is not None and last[0] == text:
            return last[2]
        if last is None:
            values = self._made(text)
        else:
            found, where = self._reused(last[0], last[1], text)
            values = self._filled(text, found, where)
        result = self._assemble(values)
        self._last = (text, values, result)
        return result

    def _filled(self, text: str, found: list[V | None],
                where: tuple[array[int], array[int]] | None) -> list[V]:
        """`found` with the value of each line none was found for made: the line sliced out
        of `text` by its start and length (`where`), or, where `_reused` split the texts
        whole, taken from the whole split."""
        missing = [j for j, value in enumerate(found) if value is None]
        if not missing:
            return cast(list[V], found)
        if where is None:
            lines = self._split(text)
            for j in missing:
                found[j] = self._make(lines[j])
        else:
            starts, lengths = where
            for j in missing:
                found[j] = self._make(_line(text, starts, lengths, j))
        return cast(list[V], found)

    def _made(self, text: str) -> list[V]:
        """The value of every line of a first text, split a chunk at a time: its lines all
        at once were 10 MB of strings beside the values being made, at the peak of a
        50,000-device start-up. A chunk that `split` does not cut as str.splitlines does
        (its special case) has the whole text split at once instead."""
        values: list[V] = []
        for chunk in _chunks(text, self.chunk_chars):
            lines = self._split(chunk)
            if len(lines) != len(chunk.splitlines()):
                return [self._make(line) for line in self._split(text)]
            values.extend(map(self._make, lines))
        return values

    def _reused(self, last_text: str, last_values: list[V], text: str
                ) -> tuple[list[V | None], tuple[array[int], array[int]] | None]:
        """For each line of `text`, the value of an equal line of the last text, or None.
        Neither text is held as lines at once (at 50,000 devices, a changed info listing's
        lines and a dict of them were 12 MB at the peak of the pass): the new text's lines
        are known by hash, start and length, a chunk at a time, and a line of the last text
        whose hash matches is compared with its slice of the new text, so a hash collision
        never reuses the wrong value. Chunks end after a newline: `split` cuts at line ends
        (str.splitlines), so the chunks' lines are the whole text's, unless a chunk is a
        special case of `split` (a lone "No devices found" line): then the whole texts are
        split at once instead (no starts and lengths are then returned)."""
        where: dict[int, int] = {}
        starts, lengths = array("q"), array("q")
        offset = 0
        for chunk in _chunks(text, self.chunk_chars):
            kept = chunk.splitlines(keepends=True)
            lines = self._split(chunk)
            if len(lines) != len(kept):
                return self._reused_whole(last_text, last_values, self._split(text)), None
            first = len(starts)
            where.update(zip(map(hash, lines), range(first, first + len(lines)), strict=True))
            starts.extend(accumulate(map(len, kept[:-1]), initial=offset))
            lengths.extend(map(len, lines))
            offset += len(chunk)
        found: list[V | None] = [None] * len(starts)
        index = 0
        for chunk in _chunks(last_text, self.chunk_chars):
            for line in self._split(chunk):
                if index == len(last_values):
                    return self._reused_whole(last_text, last_values, self._split(text)), None
                i = where.get(hash(line))
                if i is not None and lengths[i] == len(line) \
                        and text.startswith(line, starts[i]):
                    found[i] = last_values[index]
                index += 1
        if index != len(last_values):
            return self._reused_whole(last_text, last_values, self._split(text)), None
        for j, value in enumerate(found):
            if value is None:  # a line printed twice: `where` named its last place
                i = where[hash(_line(text, starts, lengths, j))]
                if i != j and _line(text, starts, lengths, i) == _line(text, starts, lengths, j):
                    found[j] = found[i]
        return found, (starts, lengths)

    def _reused_whole(self, last_text: str, last_values: list[V],
                      lines: list[str]) -> list[V | None]:
        """_reused with the last text split at once."""
        known: dict[str, V] = dict(zip(self._split(last_text), last_values, strict=True))
        return list(map(known.get, lines))


def _line(text: str, starts: array[int], lengths: array[int], index: int) -> str:
    """Line `index` of `text`, its start and length known."""
    return text[starts[index]:starts[index] + lengths[index]]


def _chunks(text: str, size: int) -> Iterator[str]:
    """`text` in pieces of about `size` characters, each but the last ending after a "\n"
    (which no line break continues: a "\r\n" ends there too)."""
    start = 0
    while start < len(text):
        end = text.find("\n", start + size)
        end = len(text) if end < 0 else end + 1
        yield text[start:end]
        start = end
