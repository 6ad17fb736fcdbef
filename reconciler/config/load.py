"""Which config file, and reading it: bounded, UTF-8, TOML, every way it can be unusable one
ConfigError, then checked whole by `config.values`.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from reconciler.config.settings import (
    CONFIG_ENV,
    DEFAULT_CONFIG_PATH,
    MAX_CONFIG_BYTES,
    ConfigError,
    Settings,
)
from reconciler.config.values import settings_from_mapping


def load_settings(path: Path) -> Settings:
    """Read and validate a config file; every way it can be unusable is a ConfigError."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError("<file>", f"cannot read {path}: {exc.strerror}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError("<file>", f"{path} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError("<file>", f"{path} is not UTF-8 text (byte {exc.start})") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("<file>", f"{path} is not valid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError("<file>", f"{path} nests arrays or tables too deeply") from None
    except Exception as exc:  # tomllib's other failures, such as int()'s limit on digits
        raise ConfigError("<file>", f"{path} cannot be read as TOML: {exc}") from exc
    return settings_from_mapping(raw, path.resolve().parent)


def config_path(explicit: Path | None) -> Path:
    """The config file to use: -c PATH, else $RECONCILER_CONFIG, else the system default."""
    if explicit is not None:
        return explicit
    from_env = os.environ.get(CONFIG_ENV)
    return Path(from_env) if from_env else DEFAULT_CONFIG_PATH
