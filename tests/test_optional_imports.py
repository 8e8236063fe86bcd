"""The optional frontends without their framework: `import siglayer` imports none of
torch, jax and dask, and importing siglayer.torch / .jax / .dask where the framework is
missing is an ImportError that says what to install. Each runs in a fresh process where
importing the framework fails, so these run whether or not it is installed."""

from __future__ import annotations

import subprocess
import sys

import pytest


def run(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_import_siglayer_imports_no_framework():
    frameworks = ("torch", "jax", "dask")
    out = run(f"import sys, siglayer; print(sorted(m for m in {frameworks!r} if m in sys.modules))")
    assert out.strip() == "[]"


@pytest.mark.parametrize(
    "module, framework, message",
    [
        (
            "torch",
            "torch",
            "siglayer.torch needs PyTorch, which is not installed: pip install torch==2.13.0 "
            "--index-url https://download.pytorch.org/whl/cpu",
        ),
        ("jax", "jax", "siglayer.jax needs JAX, which is not installed: pip install jax"),
        (
            "dask",
            "dask",
            "siglayer.dask needs Dask, which is not installed: pip install 'dask[array]'",
        ),
    ],
)
def test_clear_import_error_without_the_framework(module, framework, message):
    out = run(
        f"import sys; sys.modules[{framework!r}] = None\n"
        "import siglayer\n"
        "try:\n"
        f"    import siglayer.{module}\n"
        "except ImportError as e:\n"
        "    print('ImportError:', e)\n"
    )
    assert f"ImportError: {message}" in out
