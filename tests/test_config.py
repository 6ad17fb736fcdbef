"""Config: typed settings, errors that name the key, and the example file kept in step."""

from __future__ import annotations

import tomllib
from dataclasses import fields
from pathlib import Path

import pytest

from reconciler.config import ConfigError, Settings, load_settings, settings_from_mapping

ROOT = Path(__file__).resolve().parent.parent


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
    config = tmp_path / "config.toml"
    config.write_text('root_path = "/tmp/state"\nspec_dir = "specs"\nfs_options = "-E nodiscard"\n')
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
