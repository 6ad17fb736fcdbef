"""Typed settings read from the TOML config file.

Every setting has a default and a one-line doc here, mirrored line for line by
config.example.toml (a test keeps the two in step). Key names follow containerd's devmapper
snapshotter where it has one, so its users recognise them.

The whole config is checked when it is read, before anything runs: each key's type, range and
finiteness, the rules between keys, and the paths on the filesystem. A config that fails is
never half-applied: `run` and every command exit 2, and a SIGHUP reload keeps the old
config. Every failure, whatever its cause (a file that is not UTF-8, TOML nested too deeply
for the parser), is one ConfigError whose one-line message names the key.

The package, by question: `settings` (the dataclass, its defaults and bounds), `values` (each
key checked, the rules between keys), `paths` (the paths on this machine), `load` (which
file, and reading it), `render` (settings back to TOML). Importers use the names here.
"""

from reconciler.config.load import config_path, load_settings
from reconciler.config.render import settings_toml
from reconciler.config.settings import (
    CONFIG_ENV,
    DEFAULT_CONFIG_PATH,
    DEFAULT_LOG_LEVEL,
    LOG_LEVEL_ENV,
    LOG_LEVELS,
    NODE_NAME_ENV,
    ConfigError,
    ListenAddress,
    Reserve,
    Settings,
    default_node_name,
)
from reconciler.config.values import effective_log_level, settings_from_mapping

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_LOG_LEVEL",
    "LOG_LEVELS",
    "LOG_LEVEL_ENV",
    "NODE_NAME_ENV",
    "ConfigError",
    "ListenAddress",
    "Reserve",
    "Settings",
    "config_path",
    "default_node_name",
    "effective_log_level",
    "load_settings",
    "settings_from_mapping",
    "settings_toml",
]
