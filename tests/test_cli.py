"""python -m siglayer: the newcomer's main job."""

from __future__ import annotations

import subprocess
import sys

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
