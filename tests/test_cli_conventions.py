"""CLI conventions a user expects of any tool: `xopt --version`, `python -m xopt`, and help text
that shows what it says (rich markup must not swallow a literal `[run]`)."""

import re
import subprocess
import sys

import click
import typer
from typer.testing import CliRunner

import xopt
from xopt.cli import app

runner = CliRunner()


def test_version_prints_the_package_version_and_exits_0():
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == f"xopt {xopt.__version__}"


def test_python_m_xopt_is_the_xopt_command():
    out = subprocess.run([sys.executable, "-m", "xopt", "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"xopt {xopt.__version__}"
    out = subprocess.run([sys.executable, "-m", "xopt", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "compile" in out.stdout and "pick" in out.stdout


def _helps(cmd: click.Command):
    """(command path, raw help strings) of every command: its doc and its parameters' help."""
    yield [], [cmd.help or ""] + [getattr(p, "help", None) or "" for p in cmd.params]
    for name, sub in getattr(cmd, "commands", {}).items():
        for path, texts in _helps(sub):
            yield [name, *path], texts


def test_help_shows_bracketed_words_as_written():
    """A `[word]` in a help string is rich markup unless escaped as `\\[word]`; every one must
    reach the rendered `--help` (e.g. `xopt run --help`: "plus a [run] section")."""
    seen = 0
    for path, texts in _helps(typer.main.get_command(app)):
        words = {w for t in texts for w in re.findall(r"\[[^\]\s]+\]", t.replace("\\[", "["))}
        if not words:
            continue
        res = runner.invoke(app, [*path, "--help"], terminal_width=200)
        assert res.exit_code == 0, res.output
        for w in words:
            assert w in res.stdout, f"xopt {' '.join(path)} --help lost {w}"
            seen += 1
        assert "\\[" not in res.stdout
    assert seen        # `xopt run`'s [run] at least


def _readme_flag_table():
    """(flags, commands) of each row of README's shared-flag table (under "One kebab-case
    spelling per meaning")."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = text.split("One kebab-case spelling per meaning", 1)[1].split("| flag |", 1)[1].split("\n\n", 1)[0]
    for row in table.splitlines()[2:]:
        cells = [c.strip() for c in row.strip("|").split(" | ")]
        flags = re.findall(r"`(--[a-z-]+)", cells[0])
        commands = [c.strip() for c in re.sub(r"\(.*?\)", "", cells[-1]).split(",")]   # "compile (`trt-*`)"
        yield flags, commands


def test_readme_says_which_spellings_xopt_shares_and_they_hold():
    """README names what xopt shares with optimum-cli and trtexec, not a blanket claim: its table's
    flags exist on the commands it lists, and the peers' own spellings are refused, as it says."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "as optimum-cli and trtexec spell them" not in readme
    rows = list(_readme_flag_table())
    assert len(rows) >= 6
    for flags, commands in rows:
        for cmd in commands:
            res = runner.invoke(app, [cmd, "--help"], terminal_width=200)
            assert res.exit_code == 0, (cmd, res.output)
            for flag in flags:
                assert flag in res.stdout, f"README: xopt {cmd} {flag}, which its --help does not list"
    for cmd, flag in (("bench", "--batch_size"), ("bench", "--sequence_length"), ("compile", "--minShapes"),
                      ("compile", "--fp16")):
        res = runner.invoke(app, [cmd, flag, "1"])
        assert res.exit_code != 0 and "No such option" in res.output, (cmd, flag, res.output)
