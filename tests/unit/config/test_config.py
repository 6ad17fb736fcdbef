"""Config: typed settings, errors that name the key, and the example file kept in step."""

from __future__ import annotations

import socket
import tomllib
from dataclasses import fields
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import settings as examples
from hypothesis import strategies as st

from reconciler.cli import main
from reconciler.config import ConfigError, Settings, load_settings, settings_from_mapping
from reconciler.testing.config_file import write_config
from reconciler.testing.fakekernel import FakeKernel
from reconciler.units import MAX_SIZE

ROOT = Path(__file__).resolve().parents[3]


def test_defaults_give_a_loopback_pool_under_the_state_directory() -> None:
    """With no keys the pool is a loopback pool and specs live under root_path."""
    settings = settings_from_mapping({})
    assert settings.loopback
    assert settings.specs_path == Path("/var/lib/reconciler/specs")
    assert settings.loopback_data_size == 10 << 30
    assert settings.loopback_metadata_size == 128 << 20


@pytest.mark.parametrize(
    ("raw", "key", "words"),
    [
        ({"pool_size": 1}, "pool_size", "unknown key"),
        ({"base_image_size": "lots"}, "base_image_size", "cannot read size"),
        ({"data_device": "/dev/sdb"}, "metadata_device", "both or neither"),
        ({"fs_type": "btrfs"}, "fs_type", "not one of"),
        ({"pool_name": "bad name"}, "pool_name", "not a name"),
        ({"root_path": "relative"}, "root_path", "absolute"),
        ({"data_block_size": "100KiB"}, "data_block_size", "multiple of 64KiB"),
        ({"loopback_metadata_size": "1MiB"}, "loopback_metadata_size", "between 2MiB"),
        ({"fs_options": 3}, "fs_options", "list of strings"),
    ],
)
def test_bad_values_name_the_key_and_the_problem(
    raw: dict[str, object], key: str, words: str
) -> None:
    """Every validation error names the key at fault and says what is wrong."""
    with pytest.raises(ConfigError) as caught:
        settings_from_mapping(raw)
    assert caught.value.key == key
    assert words in str(caught.value)


def test_relative_paths_are_read_relative_to_the_config_file(tmp_path: Path) -> None:
    """spec_dir = "specs" in /x/config.toml means /x/specs."""
    config = write_config(tmp_path / "config.toml", root_path="/tmp/state", spec_dir="specs",
                          fs_options="-E nodiscard")
    settings = load_settings(config)
    assert settings.specs_path == tmp_path / "specs"
    assert settings.fs_options == ("-E", "nodiscard")


def test_unparseable_file_is_a_config_error(tmp_path: Path) -> None:
    """A file that is not TOML gives a ConfigError naming the file."""
    config = tmp_path / "config.toml"
    config.write_text("root_path = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(config)


def test_example_config_documents_every_key_with_its_default() -> None:
    """config.example.toml mirrors Settings: each key's doc line, then the key (maybe commented)."""
    text = (ROOT / "config.example.toml").read_text()
    lines = text.splitlines()
    for f in fields(Settings):
        doc = f"# {f.metadata['doc']}"
        assert doc in lines, f"config.example.toml lacks the doc line of {f.name}"
        following = lines[lines.index(doc) + 1]
        assert following.lstrip("# ").startswith(f"{f.name} = "), f.name
    # The uncommented values are the defaults: loading them changes nothing.
    example = settings_from_mapping(tomllib.loads(text))
    assert example == Settings()


# Every key and the values it must refuse. "{tmp}" stands for a scratch directory holding a
# regular file "file" (made by the test), so the path cases see a real filesystem.
LONG_SOCKET = "{tmp}/" + "s" * 120 + ".sock"
BAD_VALUES: list[tuple[str, object]] = [
    ("root_path", 3),
    ("root_path", ""),
    ("root_path", True),
    ("root_path", {"a": 1}),
    ("root_path", ["/var/lib/reconciler"]),
    ("root_path", "relative"),
    ("root_path", "{tmp}/file"),
    ("root_path", "{tmp}/file/below"),
    ("root_path", "/proc"),
    ("root_path", "/proc/reconciler"),
    ("root_path", "/sys/reconciler"),
    ("root_path", "/tmp/nul\0byte"),
    ("spec_dir", 3),
    ("spec_dir", ""),
    ("spec_dir", {"a": 1}),
    ("spec_dir", "{tmp}/file"),
    ("spec_dir", "/tmp/nul\0byte"),
    ("data_device", 3),
    ("data_device", {"a": 1}),
    ("data_device", "/dev/nul\0byte"),
    ("metadata_device", ""),
    ("metadata_device", {"a": 1}),
    ("grpc_socket", 3),
    ("grpc_socket", {"a": 1}),
    ("grpc_socket", LONG_SOCKET),
    ("grpc_socket", "{tmp}/file"),
    ("grpc_socket", "{tmp}/file/snapshotter.sock"),
    ("metrics_address", 9560),
    ("metrics_address", "127.0.0.1:0"),
    ("metrics_address", "::1:9560"),
    ("metrics_address", {"a": 1}),
    ("pool_name", "x\n"),
    ("pool_name", "bad name"),
    ("pool_name", ""),
    ("pool_name", "-x"),
    ("pool_name", "a" * 65),
    ("pool_name", 3),
    ("pool_name", {"a": 1}),
    ("pool_reserve", "100%"),
    ("pool_reserve", "-1%"),
    ("pool_reserve", "nan%"),
    ("pool_reserve", "x%"),
    ("pool_reserve", "lots"),
    ("pool_reserve", True),
    ("pool_reserve", -1),
    ("pool_reserve", {"a": 1}),
    ("pool_metadata_reserve", "150%"),
    ("pool_metadata_reserve", "99999999TiB"),
    ("pool_metadata_reserve", [1]),
    ("base_image_size", "99999999TiB"),
    ("base_image_size", 2**63),
    ("base_image_size", (1 << 60) + 512),
    ("base_image_size", 0),
    ("base_image_size", -512),
    ("base_image_size", 1000),
    ("base_image_size", 1.5),
    ("base_image_size", True),
    ("base_image_size", "lots"),
    ("base_image_size", "9" * 5000),
    ("base_image_size", {"a": 1}),
    ("loopback_data_size", "99999PiB"),
    ("loopback_data_size", 2**63),
    ("loopback_data_size", "32KiB"),
    ("loopback_data_size", 0),
    ("loopback_data_size", {"a": 1}),
    ("loopback_metadata_size", "1MiB"),
    ("loopback_metadata_size", "32GiB"),
    ("loopback_metadata_size", "99999PiB"),
    ("loopback_metadata_size", {"a": 1}),
    ("data_block_size", "100KiB"),
    ("data_block_size", "32KiB"),
    ("data_block_size", "2GiB"),
    ("data_block_size", 0),
    ("data_block_size", "99999PiB"),
    ("data_block_size", {"a": 1}),
    ("fs_type", "btrfs"),
    ("fs_type", 3),
    ("fs_type", ["ext4"]),
    ("fs_type", {"a": 1}),
    ("fs_options", 3),
    ("fs_options", "-E 'x"),
    ("fs_options", ["-E", 3]),
    ("fs_options", "-L nul\0byte"),
    ("fs_options", {"a": 1}),
    ("resync_interval", float("inf")),
    ("resync_interval", float("nan")),
    ("resync_interval", 1e308),
    ("resync_interval", 10**400),
    ("resync_interval", 0),
    ("resync_interval", -1),
    ("resync_interval", "25h"),
    ("resync_interval", "inf"),
    ("resync_interval", "nan"),
    ("resync_interval", True),
    ("resync_interval", {"a": 1}),
    ("retry_initial", float("nan")),
    ("retry_initial", float("inf")),
    ("retry_initial", 0),
    ("retry_initial", -0.5),
    ("retry_initial", "31s"),
    ("retry_initial", {"a": 1}),
    # stall_after: an ordinary step must not look stalled, a day-long one is stuck.
    ("stall_after", 29.999),
    ("stall_after", "29s"),
    ("stall_after", 0),
    ("stall_after", -600),
    ("stall_after", float("nan")),
    ("stall_after", float("inf")),
    ("stall_after", "25h"),
    ("stall_after", "never"),
    ("stall_after", True),
    ("stall_after", ["600s"]),
    ("removal_window", "0.5s"),
    ("removal_window", "8d"),
    ("removal_window", "forever"),
    ("retry_max", float("inf")),
    ("retry_max", float("nan")),
    ("retry_max", 0),
    ("retry_max", "25h"),
    ("retry_max", "100ms"),
    ("retry_max", {"a": 1}),
    # Issue 23: each duration has a floor and a ceiling (below the floor, a near-zero duration
    # turned run into a busy loop: 6,000-11,000 full passes in 10 s).
    ("resync_interval", 1e-300),
    ("resync_interval", "0.000000001ms"),
    ("resync_interval", 0.999),
    ("resync_interval", "999ms"),
    ("resync_interval", 86400.001),
    ("resync_interval", "1441m"),
    ("retry_initial", 1e-300),
    ("retry_initial", "0.000000001ms"),
    ("retry_initial", 0.009),
    ("retry_initial", "9ms"),
    ("retry_initial", 3600.5),
    ("retry_initial", "61m"),
    ("retry_max", 1e-300),
    ("retry_max", "9ms"),
    ("retry_max", 3600.001),
    ("retry_max", "2h"),
    # Issue 25: the wait for udev, from 100ms to 5m.
    ("udev_timeout", -1),
    ("udev_timeout", 0),
    ("udev_timeout", float("nan")),
    ("udev_timeout", float("inf")),
    ("udev_timeout", "nan"),
    ("udev_timeout", 1e-300),
    ("udev_timeout", "99ms"),
    ("udev_timeout", 300.001),
    ("udev_timeout", "6m"),
    ("udev_timeout", 1e308),
    ("udev_timeout", 10**400),
    ("udev_timeout", True),
    ("udev_timeout", "soon"),
    ("udev_timeout", [60]),
    ("max_attempts", 0),
    ("max_attempts", -1),
    ("max_attempts", 1.5),
    ("max_attempts", True),
    ("max_attempts", "5"),
    ("max_attempts", 10**6),
    ("max_attempts", {"a": 1}),
    ("max_removals", 0),
    ("max_removals", -1),
    ("max_removals", 1.5),
    ("max_removals", True),
    ("max_removals", "8"),
    ("max_removals", "all"),
    ("max_removals", "Unlimited"),
    ("max_removals", 2**63),
    ("max_removals", {"a": 1}),
    ("dm_driver", "lvm"),
    ("dm_driver", 3),
    ("dm_driver", {"a": 1}),
    ("async_remove", "yes"),
    ("async_remove", 1),
    ("async_remove", {"a": 1}),
    ("discard_blocks", "true"),
    ("discard_blocks", 0),
    ("discard_blocks", {"a": 1}),
    ("allow_foreign_specs", "false"),
    ("allow_foreign_specs", 1),
    ("allow_foreign_specs", {"a": 1}),
    ("node_name", ""),
    ("node_name", 3),
    ("node_name", ["worker-1"]),
    ("node_name", " worker-1"),
    ("node_name", "worker\n1"),
    ("node_name", "w" * 254),
    ("log_level", "loud"),
    ("log_level", "INFO"),
    ("log_level", " info"),
    ("log_level", "info\n"),
    ("log_level", ""),
    ("log_level", 20),
    ("log_level", ["info"]),
    ("log_level", {"a": 1}),
    ("pool", {"name": "x"}),
]


def _fill(value: object, tmp: Path) -> object:
    """The case's value with "{tmp}" replaced by the scratch directory."""
    return value.replace("{tmp}", str(tmp)) if isinstance(value, str) else value


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    """A directory holding one regular file, "file"."""
    (tmp_path / "file").write_text("not a directory\n")
    return tmp_path


def test_every_key_has_bad_values_in_the_table() -> None:
    """The table below covers every key of Settings, so a new key cannot go unchecked."""
    assert {f.name for f in fields(Settings)} <= {key for key, _ in BAD_VALUES}


@pytest.mark.parametrize(("key", "value"), BAD_VALUES, ids=lambda v: repr(v)[:40])
def test_every_bad_value_is_a_config_error_naming_its_key(
    key: str, value: object, scratch: Path
) -> None:
    """Each key refuses values of the wrong type, out of range, not finite or unusable, by name,
    in one line."""
    with pytest.raises(ConfigError) as caught:
        settings_from_mapping({key: _fill(value, scratch)})
    assert caught.value.key == key
    assert "\n" not in str(caught.value)


# Files that are no usable TOML at all: the error names "<file>".
BAD_FILES: list[tuple[str, bytes]] = [
    ("not UTF-8", b'pool_name = "caf\xe9"\n'),
    ("not TOML", b"root_path = \n"),
    ("arrays 500 deep", b"fs_options = " + b"[" * 500 + b"]" * 500 + b"\n"),
    ("tables 500 deep", b"x = " + b"{a = " * 500 + b"1" + b"}" * 500 + b"\n"),
    ("a 5000-digit integer", b"max_attempts = " + b"9" * 5000 + b"\n"),
]


@pytest.mark.parametrize(("what", "content"), BAD_FILES, ids=[w for w, _ in BAD_FILES])
def test_an_unreadable_file_is_a_config_error_naming_the_file(
    what: str, content: bytes, tmp_path: Path
) -> None:
    """Bytes that are not UTF-8 TOML, and TOML too deep or too big for the parser, are one
    ConfigError on "<file>", never the parser's own exception."""
    del what
    config = tmp_path / "config.toml"
    config.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    assert caught.value.key == "<file>"
    assert "\n" not in str(caught.value)


# Tables where the config has none: [sections] and inline tables.
TABLES = [
    ('[pool]\nname = "x"\n', "pool"),
    ("[root_path]\na = 1\n", "root_path"),
    ("root_path = {a = 1}\n", "root_path"),
    ("[resync_interval]\n", "resync_interval"),
]


@pytest.mark.parametrize(("text", "key"), TABLES)
def test_a_table_where_a_value_belongs_names_the_key(text: str, key: str, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """A [section] or {...} is refused by its key's name, by load_settings and by the CLI."""
    config = tmp_path / "config.toml"
    config.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    assert caught.value.key == key
    assert main(["-c", str(config), "run", "--once"], host=FakeKernel()) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"config key {key!r}" in err


def test_a_directory_as_config_file_is_a_config_error(tmp_path: Path) -> None:
    """-c pointing at a directory is a ConfigError on "<file>"."""
    with pytest.raises(ConfigError) as caught:
        load_settings(tmp_path)
    assert caught.value.key == "<file>"


# In a file, a relative root_path is read relative to the file's directory: a good path.
FILE_CASES = [case for case in BAD_VALUES if case != ("root_path", "relative")]

# Every command loads its config through the one load_settings whose values the table above
# checks key by key; through main() one bad value per command is enough to show each command
# refuses it (exit 2, one line), each command with another key so that none is special.
FIRST_BAD: dict[str, object] = {}
for _key, _value in FILE_CASES:
    FIRST_BAD.setdefault(_key, _value)
COMMAND_CASES: list[tuple[list[str], str]] = [
    (["run", "--once"], "max_attempts"),
    (["status"], "dm_driver"),
    (["plan"], "node_name"),
    (["retry", "web"], "async_remove"),
    (["gc", "--orphans"], "max_removals"),
    (["adopt", "web", "--id", "1"], "pool_name"),
    (["config", "check"], "root_path"),
]


@pytest.mark.parametrize(("command", "key"), COMMAND_CASES, ids=lambda v: " ".join(v)
                         if isinstance(v, list) else v)
def test_every_command_exits_two_with_one_line_naming_the_key(
    command: list[str], key: str, scratch: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """Through the CLI, a bad value exits 2 before anything runs, with one stderr line that
    names the key and nothing on stdout (config check included)."""
    config = write_config(scratch / "config.toml", **{key: _fill(FIRST_BAD[key], scratch)})
    assert main(["-c", str(config), *command], host=FakeKernel()) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert f"config key {key!r}" in captured.err


@pytest.mark.parametrize(("what", "content"), BAD_FILES, ids=[w for w, _ in BAD_FILES])
def test_an_unreadable_file_exits_two_with_one_line(
    what: str, content: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A config file the parser cannot read exits 2 with one line naming "<file>"."""
    del what
    config = tmp_path / "config.toml"
    config.write_bytes(content)
    assert main(["-c", str(config), "run", "--once"], host=FakeKernel()) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "config key '<file>'" in err


def test_a_pool_name_with_a_trailing_newline_is_refused() -> None:
    """"x\\n" is not "x": the whole name must match, not a prefix up to a final newline."""
    with pytest.raises(ConfigError) as caught:
        settings_from_mapping({"pool_name": "x\n"})
    assert caught.value.key == "pool_name"
    assert settings_from_mapping({"pool_name": "x"}).pool_name == "x"


@pytest.mark.parametrize(("value", "expected"), [(8, 8), (1, 1), ("unlimited", None)])
def test_max_removals_is_a_count_or_unlimited(value: object, expected: int | None) -> None:
    """max_removals takes a whole number of at least 1, or "unlimited" (None)."""
    assert settings_from_mapping({"max_removals": value}).max_removals == expected
    assert Settings().max_removals == 8


def test_missing_directories_are_not_config_errors(tmp_path: Path) -> None:
    """A root_path that can be made and a spec_dir that does not exist yet are accepted: the
    daemon makes the one and waits for the other."""
    settings = settings_from_mapping({
        "root_path": str(tmp_path / "not" / "yet"),
        "spec_dir": str(tmp_path / "specs-to-come"),
        "grpc_socket": str(tmp_path / "run" / "snapshotter.sock"),
    })
    assert settings.root_path == tmp_path / "not" / "yet"
    assert not (tmp_path / "not").exists()
    assert not (tmp_path / "specs-to-come").exists()


def test_an_existing_socket_is_accepted_as_grpc_socket(tmp_path: Path) -> None:
    """A socket left by a killed daemon is no config error: the server replaces it."""
    path = tmp_path / "snapshotter.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as left:
        left.bind(str(path))
        assert settings_from_mapping({"grpc_socket": str(path)}).grpc_socket == path


# Each duration's bounds, inclusive (issue 23); retry_initial is also at most retry_max.
DURATION_BOUNDS = {
    "resync_interval": (1.0, 86400.0),
    "stall_after": (30.0, 86400.0),
    "retry_initial": (0.01, 3600.0),
    "retry_max": (0.01, 3600.0),
    "udev_timeout": (0.1, 300.0),
}
# The bounds themselves, as numbers and as text with units; retry_max is given with each so
# that retry_initial's ceiling is reachable, retry_initial so that retry_max's floor is.
AT_BOUNDS = [
    ({"resync_interval": 1}, "resync_interval", 1.0),
    ({"resync_interval": "1s"}, "resync_interval", 1.0),
    ({"resync_interval": "1000ms"}, "resync_interval", 1.0),
    ({"resync_interval": 86400}, "resync_interval", 86400.0),
    ({"resync_interval": "24h"}, "resync_interval", 86400.0),
    ({"stall_after": "30s"}, "stall_after", 30.0),
    ({"stall_after": 86400}, "stall_after", 86400.0),
    ({"retry_initial": 0.01}, "retry_initial", 0.01),
    ({"retry_initial": "10ms"}, "retry_initial", 0.01),
    ({"retry_initial": 3600, "retry_max": 3600}, "retry_initial", 3600.0),
    ({"retry_initial": "1h", "retry_max": "60m"}, "retry_initial", 3600.0),
    ({"retry_max": 0.01, "retry_initial": 0.01}, "retry_max", 0.01),
    ({"retry_max": "10ms", "retry_initial": "10ms"}, "retry_max", 0.01),
    ({"retry_max": 3600}, "retry_max", 3600.0),
    ({"retry_max": "1h"}, "retry_max", 3600.0),
    ({"udev_timeout": 0.1}, "udev_timeout", 0.1),
    ({"udev_timeout": "100ms"}, "udev_timeout", 0.1),
    ({"udev_timeout": 300}, "udev_timeout", 300.0),
    ({"udev_timeout": "5m"}, "udev_timeout", 300.0),
]


@pytest.mark.parametrize(("raw", "key", "seconds"), AT_BOUNDS, ids=repr)
def test_a_duration_at_its_floor_or_ceiling_is_accepted(
        raw: dict[str, object], key: str, seconds: float) -> None:
    """Both bounds of every duration are inside: a value exactly at one is read as given."""
    assert getattr(settings_from_mapping(raw), key) == seconds


# (key, value, message) the one line names: the key, the value as written, the bound.
OUT_OF_BOUNDS = [
    ("resync_interval", 1e-300, "1e-300s is below the floor of 1s"),
    ("resync_interval", "0.000000001ms", "'0.000000001ms' is below the floor of 1s"),
    ("resync_interval", "25h", "'25h' is above the ceiling of 24h"),
    ("stall_after", 10, "10s is below the floor of 30s"),
    ("stall_after", "48h", "'48h' is above the ceiling of 24h"),
    ("retry_initial", "9ms", "'9ms' is below the floor of 10ms"),
    ("retry_initial", 0.001, "0.001s is below the floor of 10ms"),
    ("retry_max", "2h", "'2h' is above the ceiling of 1h"),
    ("retry_max", 5400, "5400s is above the ceiling of 1h"),
    ("udev_timeout", "99ms", "'99ms' is below the floor of 100ms"),
    ("udev_timeout", 600, "600s is above the ceiling of 5m"),
]


@pytest.mark.parametrize(("key", "value", "message"), OUT_OF_BOUNDS, ids=repr)
def test_a_duration_out_of_bounds_names_the_key_the_value_and_the_bound(
        key: str, value: object, message: str) -> None:
    """The ConfigError says which key, what was written and which bound it crosses."""
    with pytest.raises(ConfigError) as caught:
        settings_from_mapping({key: value})
    assert caught.value.key == key
    assert str(caught.value) == f"config key {key!r}: {message}"


def test_a_near_zero_resync_interval_stops_run_with_exit_two_and_one_line(
        scratch: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """run --once with resync_interval = 1e-300 (issue 23) exits 2 before any pass, with one
    stderr line naming the key and the floor."""
    config = write_config(scratch / "config.toml", resync_interval=1e-300)
    assert main(["-c", str(config), "run", "--once"], host=FakeKernel()) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert "config key 'resync_interval': 1e-300s is below the floor of 1s" in captured.err


@examples(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(DURATION_BOUNDS)),
       st.floats(allow_nan=True, allow_infinity=True) | st.integers())
def test_durations_are_finite_and_within_their_bounds_or_refused(key: str, value: float) -> None:
    """Any number given as a duration is accepted exactly when it is finite and within the
    key's floor and ceiling; otherwise it is a ConfigError naming the key, never another
    exception. (retry_initial is checked with retry_max at its ceiling, retry_max with
    retry_initial at its floor, so that only the key's own bounds decide.)"""
    floor, ceiling = DURATION_BOUNDS[key]
    others: dict[str, dict[str, object]] = {
        "retry_initial": {"retry_max": 3600}, "retry_max": {"retry_initial": 0.01},
        "resync_interval": {}, "stall_after": {}, "udev_timeout": {}}
    other = others[key]
    if floor <= value <= ceiling:
        assert getattr(settings_from_mapping({key: value, **other}), key) == value
    else:
        with pytest.raises(ConfigError) as caught:
            settings_from_mapping({key: value, **other})
        assert caught.value.key == key


@examples(max_examples=200, deadline=None)
@given(st.floats(allow_nan=True, allow_infinity=True) | st.integers())
def test_durations_are_finite_positive_and_at_most_a_day_or_refused(value: float) -> None:
    """Any number given as resync_interval is accepted exactly when it is a finite duration in
    [1s, 1 day]; otherwise it is a ConfigError naming the key, never another exception."""
    if 1 <= value <= 86400:
        assert settings_from_mapping({"resync_interval": value}).resync_interval == value
    else:
        with pytest.raises(ConfigError) as caught:
            settings_from_mapping({"resync_interval": value})
        assert caught.value.key == "resync_interval"


@examples(max_examples=200, deadline=None)
@given(st.integers(min_value=-(2**70), max_value=2**70)
       | st.integers(min_value=0, max_value=2**52).map(lambda sectors: sectors * 512))
def test_sizes_are_bounded_or_refused(value: int) -> None:
    """A whole number as base_image_size is accepted exactly when it is a positive multiple of
    512 no larger than MAX_SIZE; otherwise it is a ConfigError naming the key."""
    if 0 < value <= MAX_SIZE and value % 512 == 0:
        assert settings_from_mapping({"base_image_size": value}).base_image_size == value
    else:
        with pytest.raises(ConfigError) as caught:
            settings_from_mapping({"base_image_size": value})
        assert caught.value.key == "base_image_size"
