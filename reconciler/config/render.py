"""Settings written back as TOML (`reconciler config check` and `config default`): each value
in the spelling a config file would use, so that what is printed reads back the same.
"""

from __future__ import annotations

from dataclasses import MISSING, fields

from reconciler.config.settings import (
    UNLIMITED,
    Reserve,
    Settings,
)
from reconciler.config.values import DURATION_KEYS, SIZE_KEYS
from reconciler.units import (
    format_size,
    parse_duration,
)


def toml_string(text: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped (json.dumps
    would write a character beyond the BMP as a surrogate pair, which TOML refuses)."""
    escaped = "".join(
        "\\" + char if char in '"\\'
        else f"\\u{ord(char):04x}" if ord(char) < 0x20 or ord(char) == 0x7F
        else char
        for char in text)
    return f'"{escaped}"'


def _toml_size(size: int) -> str:
    # "1GiB" when exact; a size it would round ("1.5GiB" of 1610612737 bytes) as its bytes.
    text = format_size(size)
    return str(size) if "." in text else toml_string(text)


def _toml_duration(seconds: float) -> str:
    # The largest unit that says it exactly (read back to the same float), else the number.
    for unit, multiplier in (("h", 3600.0), ("m", 60.0), ("s", 1.0), ("ms", 0.001)):
        count = seconds / multiplier
        if count == int(count) and parse_duration(f"{int(count)}{unit}") == seconds:
            return toml_string(f"{int(count)}{unit}")
    return repr(seconds)


def _toml_reserve(reserve: Reserve) -> str:
    if not reserve.percent:
        return _toml_size(reserve.size)
    short = f"{reserve.percent:g}"
    return toml_string((short if float(short) == reserve.percent else repr(reserve.percent))
                        + "%")


def _toml_value(value: object) -> str:
    """One setting's value as TOML, written as the key's reader takes it back."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Reserve):
        return _toml_reserve(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(toml_string(item) for item in value) + "]"
    if isinstance(value, int):
        return str(value)
    return toml_string(str(value))  # paths, names, choices, listen addresses


def settings_toml(settings: Settings, computed_as_comments: bool = False) -> str:
    """Every key of `settings` as TOML, each after its doc line, in config.example.toml's
    order; read back by settings_from_mapping it gives the same settings. An unset key (None)
    is a comment, `# key = <unset>`; so is a computed default (node_name's, the host name)
    when `computed_as_comments`: a file made from the defaults would otherwise pin the name of
    the host it was made on."""
    chunks = []
    for f in fields(Settings):
        value = getattr(settings, f.name)
        if value is None and f.name == "max_removals":
            line = f"{f.name} = {toml_string(UNLIMITED)}"
        elif value is None:
            line = f"# {f.name} = <unset>"
        elif f.name in SIZE_KEYS:
            line = f"{f.name} = {_toml_size(value)}"
        elif f.name in DURATION_KEYS:
            line = f"{f.name} = {_toml_duration(value)}"
        else:
            line = f"{f.name} = {_toml_value(value)}"
        if computed_as_comments and f.default_factory is not MISSING:
            line = f"# {line}"
        chunks.append(f"# {f.metadata['doc']}\n{line}\n")
    return "\n".join(chunks)
