"""`reconciler config check` and `config default`: the config printed whole as TOML that
reads back to the same settings."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from reconciler.cli import main
from reconciler.config import Settings, settings_from_mapping, settings_toml
from reconciler.testing.config_file import block_device_node, write_config
from reconciler.testing.fakekernel import FakeKernel

ROOT = Path(__file__).resolve().parents[2]
# A key's line, set or commented out: `key = value` or `# key = value`.
KEY_LINE = re.compile(r"^(?:# )?([a-z_]+) = ", re.MULTILINE)


def _keys(text: str) -> list[str]:
    return KEY_LINE.findall(text)


def test_config_default_reads_back_to_the_defaults(capsys: pytest.CaptureFixture[str]
                                                   ) -> None:
    """`config default` exits 0 and its TOML, read as a config file is, gives Settings()."""
    assert main(["config", "default"]) == 0
    out = capsys.readouterr().out
    assert settings_from_mapping(tomllib.loads(out)) == Settings()


def test_config_default_lists_the_keys_of_the_example_in_its_order(
        capsys: pytest.CaptureFixture[str]) -> None:
    """The same keys as config.example.toml, in the same order, each after the same doc line;
    unset keys and node_name (the host's name) commented out, as there."""
    assert main(["config", "default"]) == 0
    out = capsys.readouterr().out
    example = (ROOT / "config.example.toml").read_text()
    assert _keys(out) == _keys(example)
    commented = {k for k in _keys(out) if f"\n# {k} = " in "\n" + out}
    assert commented == {k for k in _keys(example) if f"\n# {k} = " in "\n" + example}
    assert commented == {"spec_dir", "data_device", "metadata_device", "grpc_socket",
                         "node_name", "metrics_address"}


def test_config_default_ignores_a_broken_config(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """The defaults are printed even when -c names a file that does not load."""
    bad = write_config(tmp_path / "config.toml", colour="red")
    assert main(["config", "default", "-c", str(bad)]) == 0
    assert settings_from_mapping(tomllib.loads(capsys.readouterr().out)) == Settings()


def test_config_check_prints_the_effective_config_whole(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    """Given a file with a few keys (a relative path among them), `config check` exits 0 and
    prints every key; read back, it is the settings `run` would use."""
    config = write_config(tmp_path / "config.toml", root_path="state", pool_name="checked",
                          retry_max="2m", node_name="worker-7", max_removals="unlimited")
    assert main(["config", "check", "-c", str(config)], host=FakeKernel()) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert captured.out.startswith(f"# The effective config of {config}:")
    printed = settings_from_mapping(tomllib.loads(captured.out))
    assert printed == Settings(root_path=tmp_path / "state", pool_name="checked",
                               retry_max=120.0, node_name="worker-7", max_removals=None)
    assert _keys(captured.out) == _keys((ROOT / "config.example.toml").read_text())
    assert f'root_path = "{tmp_path / "state"}"' in captured.out
    assert 'retry_max = "2m"' in captured.out
    assert 'node_name = "worker-7"' in captured.out


def test_config_check_without_a_file_prints_the_defaults(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """No -c, no $RECONCILER_CONFIG and no default file: exit 0, the defaults, said so."""
    monkeypatch.delenv("RECONCILER_CONFIG", raising=False)
    monkeypatch.setattr("reconciler.cli.DEFAULT_CONFIG_PATH", tmp_path / "absent.toml")
    monkeypatch.setattr("reconciler.config.load.DEFAULT_CONFIG_PATH", tmp_path / "absent.toml")
    assert main(["config", "check"], host=FakeKernel()) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"# No config file ({tmp_path / 'absent.toml'} does not exist)")
    assert settings_from_mapping(tomllib.loads(out)) == Settings()


# Values that are awkward to write back: inexact sizes, durations without a whole unit,
# shares with decimals, strings that need escapes, lists of options, IPv6 addresses.
ROUND_TRIPS = [
    {"base_image_size": (1 << 30) + 512, "loopback_data_size": "1.5GiB"},
    {"resync_interval": 1.1, "retry_initial": "1.5s", "retry_max": 3540},
    {"retry_initial": 0.01234, "resync_interval": "1h"},
    {"pool_reserve": "12.345%", "pool_metadata_reserve": "3MiB"},
    {"pool_reserve": "0%", "pool_metadata_reserve": 0},
    {"fs_options": "-E 'lazy_itable_init=1,nodiscard' -O ^has_journal"},
    {"fs_options": ["-L", 'a "quoted" label\\', "tab\there"]},
    {"node_name": "nœud-☃-\U0001f600", "pool_name": "p.o_o-l"},
    {"metrics_address": "[::1]:9560", "max_removals": 1, "max_attempts": 1000},
    {"metrics_address": "localhost:80", "async_remove": True, "discard_blocks": True,
     "allow_foreign_specs": True, "dm_driver": "dmsetup", "fs_type": "xfs"},
    {"spec_dir": "/etc/reconciler/specs", "grpc_socket": "/run/r/s.sock",
     "data_device": "DATA", "metadata_device": "META"},  # block nodes made by the test
]


@pytest.mark.parametrize("raw", ROUND_TRIPS, ids=lambda raw: ",".join(raw))
def test_printed_settings_read_back_to_the_same_settings(raw: dict[str, object],
                                                        tmp_path: Path) -> None:
    """settings_toml's text, parsed and read as a config file, gives the settings again."""
    for key, minor in (("data_device", 250), ("metadata_device", 251)):
        if key in raw:  # the device keys take block devices only
            raw = {**raw, key: str(block_device_node(tmp_path / str(raw[key]), minor))}
    settings = settings_from_mapping(raw)
    assert settings != Settings()
    text = settings_toml(settings)
    assert settings_from_mapping(tomllib.loads(text)) == settings
