"""python -m siglayer: the newcomer's main job."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import siglayer
from siglayer import __main__ as cli


def test_main_job_runs_and_reports_matches():
    # --no-timing keeps the suite fast; the timing table is exercised below on one size.
    result = subprocess.run(
        [sys.executable, "-m", "siglayer", "check", "--no-timing"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "all results match the reference" in result.stdout
    assert result.stdout.count(" ok") == 2 * len(cli.CHECK_SIZES)
    assert "MISMATCH" not in result.stdout


def test_main_job_fails_on_a_mismatch(monkeypatch, capsys):
    real = siglayer._api.forward

    def wrong_forward(x, W, b, *, out=None):
        return real(x, W, b, out=out) + 1e-3

    monkeypatch.setattr(cli._compare._api, "forward", wrong_forward)
    assert cli.check(timing=False) == 1
    assert "MISMATCH" in capsys.readouterr().out


def test_timing_table(monkeypatch, capsys):
    monkeypatch.setattr(cli, "TIMING_SIZES", [(8, 4, 3)])
    assert cli.check(timing=True) == 0
    out = capsys.readouterr().out
    assert "speedup" in out and "(8, 4, 3)" in out


def test_show_config_names_backend_and_simd(capsys):
    siglayer.show_config()
    out = capsys.readouterr().out
    assert "blas" in out and "simd" in out and siglayer.__version__ in out


@pytest.mark.parametrize("bad", [["nonsense"]])
def test_unknown_command(bad):
    with pytest.raises(SystemExit):
        cli.main(bad)


def test_quick_form_checks_without_timing(capsys):
    assert cli.main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "all results match the reference" in out and "speedup" not in out


@pytest.mark.parametrize("argv", [["--help"], ["check", "--help"]])
def test_help_names_no_private_module(argv, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "usage: python -m siglayer" in out
    assert not re.search(r"\bsiglayer\._|\b_(core|timing|api|compare)\b", out), out
    assert "``" not in out  # the docstring's reST literals, printed as plain words


def test_timing_says_how_long_before_it_starts(monkeypatch, capsys):
    monkeypatch.setattr(cli, "TIMING_SIZES", [(8, 4, 3)])
    cli.check(timing=True)
    out = capsys.readouterr().out
    announce = out.index(f"about {cli.TIMING_SECONDS} s")
    assert announce < out.index("(8, 4, 3)") and "--quick" in out[announce:]


def test_docs_command_lists_the_installed_documentation(capsys):
    assert cli.main(["docs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    pages = {line.strip().rsplit("/", 1)[-1]: line.strip() for line in lines[1:]}
    assert {"README.md", "guide.md", "derivation.md", "reliability.md"} <= set(pages)
    with open(pages["guide.md"], encoding="utf-8") as f:
        listed = f.read()
    assert listed.startswith("# siglayer user guide")
    # The pages as they are in this checkout: an editable install lists the source tree's
    # (its build-time copies went stale as the pages changed), a wheel its own copies.
    source = Path(__file__).resolve().parent.parent / "docs" / "guide.md"
    assert listed == source.read_text(encoding="utf-8")
    # The README's links to the pages resolve where it is listed (an installed copy in
    # siglayer/docs/ pointed at siglayer/docs/docs/, a user's find).
    readme = Path(pages["README.md"])
    links = re.findall(r"\]\((docs/[^)#]+\.md)", readme.read_text(encoding="utf-8"))
    assert links and all((readme.parent / link).is_file() for link in links), links


def test_main_job_warns_when_the_machine_is_busy():
    from siglayer.__main__ import busy_note

    assert busy_note(0.3, 2) is None and busy_note(1.9, 4) is None
    note = busy_note(4.3, 2)
    assert note is not None and "load average 4.3 on 2 CPUs" in note


@pytest.mark.parametrize("command", ["explain", "docs"])
def test_quick_is_refused_where_there_is_no_timing(command, capsys):
    """--quick skips check's timing table; with another command it was silently ignored."""
    with pytest.raises(SystemExit) as exited:
        cli.main(["--quick", command])
    assert exited.value.code == 2
    assert f"--quick skips check's timing table; {command} has none" in capsys.readouterr().err


def test_quick_with_check_still_skips_the_timing(capsys):
    assert cli.main(["--quick", "check"]) == 0
    out = capsys.readouterr().out
    assert "all results match the reference" in out and "speedup" not in out


@pytest.mark.parametrize("command", ["explain", "docs", "check"])
def test_a_closed_pipe_ends_quietly(command):
    """python -m siglayer explain | head: no BrokenPipeError traceback once the reader has
    gone, and the status a command ended by SIGPIPE has. The read end is closed before
    the child writes anything, so every write fails (no race with the pipe's buffer)."""
    argv = [sys.executable, "-m", "siglayer", command]
    if command == "check":
        argv.append("--no-timing")
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert child.stdout is not None and child.stderr is not None
    child.stdout.close()
    err = child.stderr.read().decode()
    child.stderr.close()
    assert child.wait(timeout=300) == cli.SIGPIPE_STATUS, err
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
