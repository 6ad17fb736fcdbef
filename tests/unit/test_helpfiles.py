"""The completions and the man page: generated from the parser, naming every command and
option, installed by the wheel at the documented paths, and working in bash."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from reconciler import cli, config
from reconciler.arguments import Shell, build_parser
from reconciler.cli import main
from reconciler.config import Settings
from reconciler.daemon.lock import LOCK_NAME
from reconciler.helpfiles import DATA_FILES, completion, manpage

ROOT = Path(__file__).resolve().parents[2]
INSTALLED = ["share/bash-completion/completions/reconciler",
             "share/zsh/site-functions/_reconciler", "share/man/man8/reconciler.8"]


def _words(parser: argparse.ArgumentParser) -> set[str]:
    """Every command name (nested ones too) and every option string of `parser`, but the
    hidden ones (a deprecated spelling kept for scripts: `adopt --id`)."""
    words: set[str] = set()
    for action in parser._actions:
        if action.help != argparse.SUPPRESS:
            words.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                words |= {name} | _words(sub)
    return words


def _plain(text: str) -> str:
    # roff writes a hyphen as "\-".
    return text.replace("\\-", "-")


def test_the_parser_has_the_commands_and_options_the_files_must_name() -> None:
    """The words checked below are the parser's own, nested commands included."""
    words = _words(build_parser())
    assert {"run", "status", "plan", "retry", "gc", "confirm-removals", "adopt", "resync",
            "config", "check", "default", "completion"} <= words
    assert {"-c", "--config", "--log-level", "--once", "--json", "--orphans", "--thin-id",
            "--no-headers", "--version"} <= words


@pytest.mark.parametrize("relative", INSTALLED)
def test_each_file_names_every_command_and_every_option(relative: str) -> None:
    """The bash and zsh completions and reconciler(8) mention each command and option."""
    text = _plain(DATA_FILES[relative]())
    missing = sorted(w for w in _words(build_parser()) if w not in text)
    # argparse-manpage shows -h in each usage line but, as man pages do, gives --help no entry.
    assert missing == (["--help"] if relative.startswith("share/man/") else [])


def test_the_man_page_is_roff_for_section_eight() -> None:
    """reconciler(8), "System Administration": a .TH header for section 8, NAME with the
    description, a section per command (`config check` among them), then EXIT STATUS,
    ENVIRONMENT, FILES, SIGNALS and SEE ALSO, in man-pages(7)'s order."""
    page = manpage({})
    assert page.startswith('.TH RECONCILER "8" "" "reconciler" "System Administration"\n')
    assert "\n.SH NAME\nreconciler \\- keep device\\-mapper thin devices" in page
    assert "\n.SH COMMAND \\fI\\,'reconciler config check'\\/\\fR\n" in page
    headings = [line[4:] for line in page.splitlines() if line.startswith(".SH ")]
    assert headings[-5:] == ["EXIT STATUS", "ENVIRONMENT", "FILES", "SIGNALS", "SEE ALSO"]


def _section(page: str, heading: str) -> str:
    """One section's roff, from its .SH line to the next, hyphens plain."""
    return _plain(page.split(f"\n.SH {heading}\n", 1)[1].split("\n.SH ", 1)[0])


def test_the_man_page_names_what_it_documents_as_the_code_does() -> None:
    """The exit codes, variables, paths and signals the man page names are the code's own:
    its copies (helpfiles is loaded at build time without the runtime dependencies) equal
    their originals."""
    page = manpage({})
    exits = _section(page, "EXIT STATUS")
    for code in (cli.EXIT_OK, cli.EXIT_NOT_CONVERGED, cli.EXIT_USAGE):
        assert f".B {code}\n" in exits
    environment = _section(page, "ENVIRONMENT")
    for name in (config.CONFIG_ENV, config.LOG_LEVEL_ENV, config.NODE_NAME_ENV,
                 "NOTIFY_SOCKET", "WATCHDOG_USEC", "JOURNAL_STREAM"):
        assert f".B {name}\n" in environment
    files = _section(page, "FILES")
    defaults = Settings(node_name="n")
    for path in (config.DEFAULT_CONFIG_PATH, defaults.root_path, defaults.database_path.name,
                 LOCK_NAME, defaults.control_socket.name, "specs/"):
        assert f".B {path}" in files
    assert defaults.specs_path == defaults.root_path / "specs"
    signals = _section(page, "SIGNALS")
    assert all(name in signals for name in ("SIGTERM", "SIGINT", "SIGHUP", "SIGUSR1",
                                            "SIGQUIT"))
    assert ".BR dmsetup (8)," in _section(page, "SEE ALSO")


@pytest.mark.parametrize(("environ", "date"), [
    ({}, ""),
    ({"SOURCE_DATE_EPOCH": ""}, ""),
    ({"SOURCE_DATE_EPOCH": "1700000000"}, "2023\\-11\\-14"),
    ({"SOURCE_DATE_EPOCH": "0"}, "1970\\-01\\-01"),
], ids=["unset", "empty", "set", "epoch"])
def test_the_man_page_is_dated_only_by_source_date_epoch(environ: dict[str, str],
                                                         date: str) -> None:
    """Without $SOURCE_DATE_EPOCH the page carries no date (the same source, the same
    bytes, whenever built); with it, that day in UTC."""
    first = manpage(environ).splitlines()[0]
    assert first == f'.TH RECONCILER "8" "{date}" "reconciler" "System Administration"'
    assert manpage(environ) == manpage(dict(environ))


@pytest.mark.parametrize("epoch", ["yesterday", "-1", "1.5", "١٢"])
def test_a_source_date_epoch_that_is_not_seconds_fails_the_build(epoch: str) -> None:
    """A $SOURCE_DATE_EPOCH that is not a whole number of seconds stops the build, naming
    it, rather than dating the page by the clock."""
    with pytest.raises(ValueError, match="SOURCE_DATE_EPOCH"):
        manpage({"SOURCE_DATE_EPOCH": epoch})


@pytest.mark.parametrize("shell", list(Shell))
def test_completion_command_prints_the_installed_script(
        shell: Shell, capsys: pytest.CaptureFixture[str]) -> None:
    """`reconciler completion SHELL` exits 0 and prints what the wheel installs, whole."""
    assert main(["completion", shell]) == 0
    out = capsys.readouterr().out
    assert out == completion(shell)
    assert out.endswith("\n")


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
@pytest.mark.parametrize(("words", "expected"), [
    (["reconciler", "con"], {"config", "confirm-removals", "containerd-config"}),
    (["reconciler", "containerd-config", "--containerd-version", ""], {"1.6", "1.7", "2.x"}),
    (["reconciler", "config", ""], {"check", "default"}),
    (["reconciler", "status", "--j"], {"--json"}),
    (["reconciler", "status", "--log-level", ""], {"debug", "info", "warning", "error"}),
    (["reconciler", "completion", ""], {"bash", "zsh"}),
])
def test_bash_completes_commands_options_and_choices(words: list[str], expected: set[str],
                                                     tmp_path: Path) -> None:
    """Sourced into bash, the script completes the last word as the parser allows."""
    script = tmp_path / "reconciler.bash"
    script.write_text(completion(Shell.BASH))
    line = " ".join(words)
    program = (f'source {script}; COMP_WORDS=({" ".join(repr(w) for w in words)}); '
               f"COMP_CWORD={len(words) - 1}; COMP_LINE={line!r}; COMP_POINT={len(line)}; "
               f'_shtab_reconciler reconciler {words[-1]!r} {words[-2]!r}; '
               'printf "%s\\n" "${COMPREPLY[@]}"')
    done = subprocess.run(["bash", "--norc", "-c", program], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert set(done.stdout.split()) == expected


@pytest.mark.skipif(not (ROOT / "reconciler").is_dir(),
                    reason="builds a wheel from the source tree; scripts/floors runs the tests "
                    "against an installed wheel, from a tree without reconciler/")
def test_the_wheel_installs_the_files_at_their_paths(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A wheel built from a copy of the tree holds the three files as data under the
    documented paths, equal to what reconciler.helpfiles generates."""
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".venv", ".git", "build", "*.egg-info", "__pycache__", ".mypy_cache", ".ruff_cache"))
    # The man page's date, the same in the build and here.
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(tmp_path / "dist"), str(source)],
        capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    (wheel,) = (tmp_path / "dist").glob("reconciler-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        data = {name.split(".data/data/", 1)[1]: archive.read(name).decode()
                for name in archive.namelist() if ".data/data/" in name}
    assert sorted(data) == sorted(INSTALLED)
    assert data == {relative: generate() for relative, generate in DATA_FILES.items()}
    assert '"2023\\-11\\-14"' in data["share/man/man8/reconciler.8"].splitlines()[0]
