"""Hostile spec files: every pass completes, every bad file is named, other devices untouched.

Two layers. A seeded corpus of 600+ hostile entries (random bytes, TOML mutations, nesting
bombs, huge and negative sizes, odd names, long chains and cycles, labels of wrong types,
special files) dropped at once beside valid specs whose devices hold data, reconciled on the
fake kernel. And property tests (hypothesis) of the reader, the parser and the parent
resolution, which must answer every input with a spec or a rejection, never an exception.
Failures found by either are kept below as fixed regression cases.
"""

from __future__ import annotations

import os
import random
import socket
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from reconciler.specs import (
    NAME_RE,
    Defaults,
    DeviceSpec,
    RejectedSpec,
    SpecError,
    load_spec_dir,
    parse_spec,
    read_spec,
    resolve,
)
from reconciler.testing.world import World
from reconciler.units import Bytes
from reconciler.vocabulary import Filesystem

DEFAULTS = Defaults(size=Bytes(64 << 20), filesystem=Filesystem.EXT4)
KEEP = ("keep-1", "keep-2", "keep-3")
PAYLOAD = b"untouched\n" * 400
VALID = 'size = "8MiB"\nfilesystem = "none"\n'
SEED = 20261130


def _toml_value(rng: random.Random, depth: int = 0) -> str:
    """A random TOML value, sometimes of the wrong type for any key."""
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return str(rng.choice([0, -1, 1, 511, 512, 1 << 63, -(1 << 63), 1 << 64, 10**30]))
    if kind == 1:
        return rng.choice(['"1GiB"', '"-1GiB"', '"99999999TiB"', '"1e30"', '"nan"', '"inf"',
                           '"0x10"', '"1.5KiB"', '""', '"\\u0000"', '"8MiB\\n"', '"512"'])
    if kind == 2:
        return rng.choice(["true", "false", "nan", "inf", "-inf", "1.5", "1e308"])
    if kind == 3:
        return rng.choice(['"ext4"', '"xfs"', '"none"', '"btrfs"', '"EXT4"', '"ext4\\n"'])
    if kind == 4:
        return '"' + rng.choice(["keep-1", "a/b", "../x", "snap-1", "x\\ny", "", "-x",
                                 "é", "p" * 70, "self", "h-0001"]) + '"'
    if kind == 5:
        return "1979-05-27T07:32:00Z"
    if kind == 6:
        return "[" + ", ".join(_toml_value(rng, depth + 1) for _ in range(rng.randrange(3))) + "]"
    if kind == 7:
        pairs = (f"k{i} = {_toml_value(rng, depth + 1)}" for i in range(rng.randrange(3)))
        return "{" + ", ".join(pairs) + "}"
    return '"' + "".join(rng.choice(string.printable[:62]) for _ in range(8)) + '"'


def _mutate(rng: random.Random, text: str) -> str:
    chars = list(text)
    for _ in range(rng.randrange(1, 6)):
        position = rng.randrange(len(chars) + 1)
        action = rng.randrange(3)
        if action == 0 and chars:
            del chars[min(position, len(chars) - 1)]
        elif action == 1:
            chars.insert(position, rng.choice('="[]{}#\\\n\t .,\x00é'))
        elif chars:
            chars[min(position, len(chars) - 1)] = rng.choice(string.printable)
    return "".join(chars)


def _special(kind: str, path: Path) -> None:
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        before = os.getcwd()
        os.chdir(path.parent)
        try:
            sock = socket.socket(socket.AF_UNIX)
            sock.bind(path.name)
            sock.close()
        finally:
            os.chdir(before)
    elif kind == "directory":
        path.mkdir()
    elif kind == "dangling":
        path.symlink_to(path.parent / "nothing-here")
    elif kind == "loop":
        path.symlink_to(path.name)
    elif kind == "devnull":
        path.symlink_to("/dev/null")
    elif kind == "huge":
        path.write_bytes(b"#" * ((1 << 20) + 10))


def hostile_corpus(directory: Path, seed: int = SEED) -> dict[str, str]:
    """Write the corpus into `directory`; returns each entry's stem and its class."""
    rng = random.Random(seed)
    written: dict[str, str] = {}

    def put(stem: str, kind: str, content: bytes | None = None) -> None:
        path = directory / f"{stem}.toml"
        if content is None:
            _special(kind.removeprefix("special: "), path)
        else:
            path.write_bytes(content)
        written[stem] = kind

    for i in range(120):
        put(f"h-bytes-{i:03}", "random bytes",
            bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))))
    for i in range(150):
        put(f"h-mutant-{i:03}", "TOML mutation",
            _mutate(rng, 'size = "8MiB"\nfilesystem = "none"\n[labels]\nteam = "x"\n')
            .encode("utf-8", "surrogatepass"))
    for i in range(120):
        keys = rng.sample(["size", "parent", "filesystem", "active", "readonly", "labels",
                           "bogus", "Size"], rng.randrange(1, 5))
        text = "".join(f"{key} = {_toml_value(rng)}\n" for key in keys)
        put(f"h-values-{i:03}", "wrong values", text.encode())
    for i, depth in enumerate((100, 400, 900, 2000, 5000)):
        put(f"h-nest-array-{i}", "nesting bomb", f"a = {'[' * depth}{']' * depth}\n".encode())
        put(f"h-nest-table-{i}", "nesting bomb",
            ("labels = " + "{a = " * depth + "1" + "}" * depth + "\n").encode())
        put(f"h-nest-dotted-{i}", "nesting bomb",
            ("labels." + ".".join(["a"] * depth) + ' = "x"\n').encode())
    odd = ["x\n", "-lead", "é-unicode", "p" * 65, "snap-7", "white space",
           "tab\there", "a:b", "UPPER", "x" * 64, "semi;colon", "\u202eevil", "q\r"]
    for stem in odd:
        put(stem, "odd name", VALID.encode())
    # A 150-long chain whose root is broken, one whose root is good, and cycles.
    put("h-chain-000", "chain", b"size = 'x'\n")
    for i in range(1, 150):
        put(f"h-chain-{i:03}", "chain", f'parent = "h-chain-{i - 1:03}"\n'.encode())
    for i in range(3):
        put(f"h-cycle-{i}", "cycle", f'parent = "h-cycle-{(i + 1) % 3}"\n'.encode())
    put("h-self", "cycle", b'parent = "h-self"\n')
    for i in range(20):
        labels = rng.choice(['labels = 3\n', 'labels = ["a"]\n', '[labels]\na = 1\n',
                             '[labels]\na = {b = "c"}\n', 'labels = "x"\n',
                             '[labels]\n"" = ""\n', '[labels]\na = true\n'])
        put(f"h-labels-{i:02}", "labels of wrong types", labels.encode())
    for kind in ("fifo", "socket", "directory", "dangling", "loop", "devnull", "huge"):
        for i in range(2):
            put(f"h-special-{kind}-{i}", f"special: {kind}")
    return written


def _device_state(world: World, name: str) -> tuple[str, int | None]:
    assert world.store is not None
    record = world.store.device(name)
    assert record is not None
    return record.state, record.device_id


def test_a_hostile_corpus_is_answered_file_by_file(fake_world: World) -> None:
    """600+ hostile entries at once: every pass completes, each entry is a spec or is named
    with its reason in status, and the devices of the valid specs keep ids, state and data."""
    for name in KEEP:
        fake_world.spec(name, VALID)
    assert fake_world.run_pass().ok
    for name in KEEP:
        fake_world.host.write(f"/dev/mapper/{fake_world.pool}-{name}", 4096, PAYLOAD)
    before = {name: _device_state(fake_world, name) for name in KEEP}

    written = hostile_corpus(fake_world.settings.specs_path)
    assert len(written) >= 600
    for attempt in range(2):  # a pass, then a restart's pass
        result = fake_world.reconciler().run_pass()
        rejected = {r.name for r in result.rejected}
        answered = rejected | set(result.converged) | set(result.pending) | set(result.faulty)
        assert set(written) <= answered, sorted(set(written) - answered)[:5]
        assert result.removed == [] and result.faulty == {}
        for name in KEEP:
            assert _device_state(fake_world, name) == before[name], (attempt, name)
            device = f"/dev/mapper/{fake_world.pool}-{name}"
            assert fake_world.host.read(device, 4096, len(PAYLOAD)) == PAYLOAD
    report = fake_world.report()
    named = {r["name"] for r in report["rejected_specs"]}
    assert named == rejected and all(r["error"] for r in report["rejected_specs"])
    assert {written[n] for n in rejected} >= {
        "random bytes", "TOML mutation", "wrong values", "nesting bomb", "odd name", "chain",
        "cycle", "labels of wrong types", "special: fifo", "special: socket",
        "special: directory", "special: dangling", "special: loop", "special: devnull",
        "special: huge"}


# -- properties ------------------------------------------------------------------------------

def _answered(item: DeviceSpec | RejectedSpec) -> bool:
    return isinstance(item, DeviceSpec) or bool(item.error)


@settings(max_examples=500, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.binary(max_size=2048))
@example(content=b"a = " + b"[" * 3000 + b"]" * 3000)
@example(content=b"size = 9223372036854775808\nfilesystem = 'none'\n")
@example(content=b"\xef\xbb\xbfsize = '1GiB'\n")  # a UTF-8 byte order mark
def test_any_bytes_are_a_spec_or_a_rejection(tmp_path: Path, content: bytes) -> None:
    """read_spec answers every byte string with a spec or a named rejection."""
    path = tmp_path / "any.toml"
    path.write_bytes(content)
    assert _answered(read_spec(path, DEFAULTS))


_SCALARS = st.one_of(
    st.integers(min_value=-(1 << 70), max_value=1 << 70), st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20).map(lambda s: '"' + s.replace("\\", "").replace('"', "") + '"'),
)


def _render(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return {float("inf"): "inf", float("-inf"): "-inf"}.get(value, "nan" if value != value
                                                             else repr(value))
    if isinstance(value, list):
        return "[" + ", ".join(map(_render, value)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f'"{k}" = {_render(v)}' for k, v in value.items()) + "}"
    return str(value)


_VALUES = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.text(alphabet=string.ascii_letters, min_size=1, max_size=5), inner, max_size=3),
    max_leaves=8)
_KEYS = st.sampled_from(["size", "parent", "filesystem", "active", "readonly", "labels",
                         "other"])


@settings(max_examples=400, deadline=None)
@given(name=st.text(max_size=80), document=st.dictionaries(_KEYS, _VALUES, max_size=6))
@example(name="x\n", document={})
@example(name="a", document={"size": 1 << 63, "filesystem": '"none"'})
@example(name="a", document={"labels": {"k": 1}})
def test_any_name_and_document_are_a_spec_or_a_spec_error(name: str,
                                                          document: dict[str, object]) -> None:
    """parse_spec raises SpecError or returns a spec whose name is a whole-match name."""
    text = "".join(f"{key} = {_render(value)}\n" for key, value in document.items())
    try:
        spec = parse_spec(name, text, DEFAULTS)
    except SpecError as exc:
        message = str(exc)
        assert message, "a SpecError says what is wrong"
        return
    assert NAME_RE.fullmatch(spec.name)
    assert spec.size > 0 and spec.size % 512 == 0


_NAMES = st.sampled_from([f"n{i}" for i in range(12)])


@settings(max_examples=400, deadline=None)
@given(parents=st.dictionaries(_NAMES, st.one_of(st.none(), _NAMES, st.just("absent")),
                               max_size=12))
def test_any_parent_graph_resolves_every_name_once(parents: dict[str, str | None]) -> None:
    """resolve puts every name in exactly one of specs and rejected, and what it accepts has
    no cycle."""
    specs = {name: DeviceSpec(name=name, size=Bytes(1 << 20), filesystem=Filesystem.NONE,
                              parent=parent if parent != name else None)
             for name, parent in parents.items()}
    result = resolve(specs, [], Path("/specs"))
    rejected = {r.name for r in result.rejected}
    assert set(result.specs) | rejected == set(specs)
    assert not set(result.specs) & rejected
    for name in result.specs:
        seen = set()
        current: str | None = name
        while current is not None and current in result.specs:
            assert current not in seen, f"cycle through {current}"
            seen.add(current)
            current = result.specs[current].parent


def test_the_corpus_reads_without_a_kernel(tmp_path: Path) -> None:
    """load_spec_dir over the corpus (no kernel): every entry accounted for."""
    written = hostile_corpus(tmp_path)
    loaded = load_spec_dir(tmp_path, DEFAULTS)
    assert loaded.source_error is None
    assert set(written) <= set(loaded.specs) | {r.name for r in loaded.rejected}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_other_seeds_read_without_a_kernel(tmp_path: Path, seed: int) -> None:
    """Three more corpora: the same holds whatever the seed."""
    written = hostile_corpus(tmp_path, seed)
    loaded = load_spec_dir(tmp_path, DEFAULTS)
    assert set(written) <= set(loaded.specs) | {r.name for r in loaded.rejected}
