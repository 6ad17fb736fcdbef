"""The command's parser: standard library only, constants equal to their originals, and the
global options taken before or after the subcommand."""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler import config, logs
from reconciler.arguments import DEFAULT_CONFIG_PATH, LOG_LEVELS, build_parser
from reconciler.cli import main
from reconciler.testing.config_file import write_config
from reconciler.testing.fakekernel import FakeKernel

ROOT = Path(__file__).resolve().parents[2]


def test_the_copied_constants_equal_their_originals() -> None:
    """The parser's copies of the default config path and the log levels are the originals',
    and so is the config's copy of the levels."""
    assert DEFAULT_CONFIG_PATH == config.DEFAULT_CONFIG_PATH
    assert LOG_LEVELS == logs.LEVELS == config.LOG_LEVELS


def test_the_parser_loads_by_file_path_with_only_the_standard_library() -> None:
    """Loaded from its file (as setup.py does) with site-packages off (-S, -I), it builds."""
    # The module Python would import: the source tree's, or an installed wheel's (the
    # floors run tests one from a tree without reconciler/).
    spec = importlib.util.find_spec("reconciler.arguments")
    assert spec is not None and spec.origin is not None
    path = spec.origin
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('arguments', {path!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "module.build_parser().parse_args(['status'])\n"
        "print(sorted(m for m in sys.modules\n"
        "             if m.split('.')[0] not in (*sys.stdlib_module_names, '__main__')))\n"
    )
    done = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# Every command with the arguments it needs; test_the_table_covers_every_command keeps it whole.
COMMANDS: list[list[str]] = [
    ["run"], ["run", "--once"], ["status"], ["status", "web", "--json"], ["plan"],
    ["retry", "web"], ["gc", "--orphans"], ["confirm-removals"], ["adopt", "web", "--id", "7"],
    ["resync"], ["config", "check"], ["config", "default"], ["completion", "bash"],
    ["completion", "zsh"], ["containerd-config", "--containerd-version", "2.x"],
]


def _commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
              ) -> set[tuple[str, ...]]:
    """Every leaf command of `parser` as the words that name it."""
    found: set[tuple[str, ...]] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found |= _commands(sub, (*prefix, name)) or {(*prefix, name)}
    return found


def test_the_table_covers_every_command() -> None:
    """COMMANDS names each leaf command of the parser at least once."""
    named = {tuple(w for w in argv if not w.startswith("-"))[:2] for argv in COMMANDS}
    for command in _commands(build_parser()):
        assert any(n[:len(command)] == command for n in named), command


@pytest.mark.parametrize("argv", COMMANDS, ids=" ".join)
@pytest.mark.parametrize("where", ["before", "after"])
def test_global_options_are_taken_before_or_after_the_command(argv: list[str], where: str
                                                              ) -> None:
    """-c/--config and --log-level mean the same before the command and after it."""
    options = ["-c", "/x/config.toml", "--log-level", "debug"]
    args = build_parser().parse_args(options + argv if where == "before" else argv + options)
    assert args.config == Path("/x/config.toml")
    assert args.log_level == "debug"


@pytest.mark.parametrize("argv", COMMANDS, ids=" ".join)
def test_the_commands_copy_of_a_global_option_wins(argv: list[str]) -> None:
    """Given before and after the command, the one after it (the command's) is taken."""
    args = build_parser().parse_args(["--config", "/before.toml", "--log-level", "error",
                                      *argv, "--config=/after.toml", "--log-level=warning"])
    assert args.config == Path("/after.toml")
    assert args.log_level == "warning"


@pytest.mark.parametrize("argv", COMMANDS, ids=" ".join)
def test_without_global_options_the_defaults_hold(argv: list[str]) -> None:
    """Given nowhere, the config and the log level are unset (the environment's, the config's
    or the defaults): a command's parser never overwrites them with its own defaults."""
    args = build_parser().parse_args(argv)
    assert args.config is None
    assert args.log_level is None


@pytest.mark.parametrize("argv", [["status", "--log-level", "loud"],
                                  ["--log-level", "loud", "status"],
                                  ["status", "-c"], ["config"], ["completion", "fish"]])
def test_bad_global_options_and_missing_words_are_usage_errors(
        argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """A bad level, a -c without a path, `config` alone or an unknown shell exit 2 (usage)."""
    with pytest.raises(SystemExit) as raised:
        build_parser().parse_args(argv)
    assert raised.value.code == 2
    assert "usage: reconciler" in capsys.readouterr().err


def test_a_config_given_after_the_command_is_the_one_used(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`run --once -c X` and `status --json --config X` use X (its pool name shows), and a
    -c before the command is overridden by the one after it."""
    config = write_config(tmp_path / "config.toml", root_path=tmp_path / "state",
                          pool_name="after", loopback_data_size="256MiB",
                          loopback_metadata_size="8MiB")
    (tmp_path / "state" / "specs").mkdir(parents=True)
    (tmp_path / "state" / "specs" / "a.toml").write_text('size = "16MiB"\n')
    host = FakeKernel()
    assert main(["run", "--once", "-c", str(config), "--log-level", "error"], host=host) == 0
    capsys.readouterr()
    absent = tmp_path / "absent.toml"
    assert main(["-c", str(absent), "status", "--json", "--config", str(config)],
                host=host) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["pool"]["name"] == "after"
    assert [d["name"] for d in report["devices"]] == ["a"]
