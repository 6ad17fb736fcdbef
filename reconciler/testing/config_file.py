"""`write_config`: a config.toml written from keyword arguments, for tests.

Test support (never imported by the product). Tests that run the CLI or a daemon process need
a config file; writing its TOML by hand, with values pasted into f-strings, breaks on a path
holding a quote or a backslash and repeats the same lines in every file. Here each value is
rendered once, strings escaped by the product's own writer of TOML (`config check` prints
with it), and a test names only its keys. Beside it, what a config may point at that no
keyword gives: a block device node for the device keys, a FIFO at a config's path.
"""

from __future__ import annotations

import contextlib
import math
import os
import stat
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from reconciler.config.render import toml_string


def toml_value(value: object) -> str:
    """One TOML value: strings and paths quoted, booleans, integers, floats and arrays."""
    # bool first: it is an int to Python, and TOML spells it in lower case.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str | Path):
        return toml_string(str(value))
    if isinstance(value, Sequence):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML value for {type(value).__name__}: {value!r}")


def config_text(keys: Mapping[str, object]) -> str:
    """The TOML document of `keys`: one `key = value` line each; a mapping is a table."""
    lines = [f"{key} = {toml_value(value)}" for key, value in keys.items()
             if not isinstance(value, Mapping)]
    for key, value in keys.items():
        if isinstance(value, Mapping):
            lines.append(f"\n[{key}]")
            lines.extend(f"{name} = {toml_value(item)}" for name, item in value.items())
    return "".join(f"{line}\n" for line in lines)


def write_config(path: Path, **keys: object) -> Path:
    """Write `keys` to `path` as a config.toml (a directory gets `config.toml` inside it);
    returns the file's path."""
    if path.is_dir():
        path = path / "config.toml"
    path.write_text(config_text(keys))
    return path


def block_device_node(path: Path, minor: int = 250) -> Path:
    """A block device node at `path` (loop's major, 7), for the device keys, which take
    only block devices; no test opens it, so no device need stand behind it."""
    os.mknod(path, stat.S_IFBLK | 0o600, os.makedev(7, minor))
    return path


@contextmanager
def fifo_at(path: Path, release_after: float = 10.0) -> Iterator[Path]:
    """A FIFO at `path` (a config path an operator got wrong). A reader left blocked on it,
    should the product open it as it would a file, gets an end of file after
    `release_after` seconds and on exit: such a regression fails its test, never hangs it."""
    os.mkfifo(path)
    done = threading.Event()

    def release() -> None:
        done.wait(release_after)
        while True:
            # A writer that comes and goes: the blocked open returns, its read ends. OSError:
            # no reader is waiting (ENXIO), or the FIFO is gone.
            with contextlib.suppress(OSError):
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            if done.wait(0.1):
                return

    releaser = threading.Thread(target=release, name="fifo-release", daemon=True)
    releaser.start()
    try:
        yield path
    finally:
        done.set()
        releaser.join()
