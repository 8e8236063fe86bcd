"""One version: pyproject.toml's, compiled into the module, reported everywhere."""

from __future__ import annotations

import importlib.metadata
import io
import re
from pathlib import Path

import siglayer

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_version_is_the_installed_distributions():
    assert siglayer.__version__ == importlib.metadata.version("siglayer")


def test_version_is_pyprojects():
    # The [project] table's static version, the one source (scikit-build-core passes it
    # to CMake as SKBUILD_PROJECT_VERSION_FULL).
    project = PYPROJECT.read_text().split("\n[project]\n", 1)[1].split("\n[", 1)[0]
    (version,) = re.findall(r'^version = "([^"]+)"$', project, flags=re.MULTILINE)
    assert siglayer.__version__ == version


def test_show_config_reports_the_version():
    text = io.StringIO()
    siglayer.show_config(text)
    assert text.getvalue().splitlines()[0].split() == ["version:", siglayer.__version__]
