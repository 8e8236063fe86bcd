"""MKL's bfloat16 GEMM loaded at run time (cpp/siglayer/blas_mkl_runtime.cpp, _config.py).

The default build's BLAS (scipy-openblas32) has no bfloat16 GEMM. With the `mkl` extra
installed, ``SIGLAYER_BF16_GEMM=blas`` (or ``auto`` on a CPU with AVX512-BF16 or AMX-BF16)
loads libmkl_rt at import, for the bfloat16 products only. Each case runs in a fresh
interpreter, since a process loads it at most once. What is checked here: which path runs
and says so, results against the float64 oracle and against the convert path, and that
every way loading can fail is a ValueError at import naming the variable (never an abort,
as a second OpenMP runtime would cause). The full bfloat16 suite on this path is
tests/test_bfloat16.py under ``SIGLAYER_BF16_GEMM=blas`` (a step of .ci/run).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from siglayer import _config, _core

BUILT_IN = _core.config()["bf16_gemm_in_blas"] and not _core.config()["bf16_gemm_mkl_runtime"]
not_built_in = pytest.mark.skipif(
    BUILT_IN or not sys.platform.startswith("linux"),
    reason="this build's BLAS has its own bfloat16 GEMM, or not Linux: nothing to load",
)
needs_mkl = pytest.mark.skipif(
    BUILT_IN or _config._find_mkl_rt() is None,
    reason="the mkl package is not installed (pip install mkl)",
)

# Prints the path in force, the loaded library, the show_config line, then the largest
# error of out against the float64 oracle and of blas against convert (out, dx, dW, db,
# each relative to the largest magnitude of that result).
PROBE = textwrap.dedent(
    """
    import ml_dtypes, numpy as np, siglayer
    from siglayer import _core
    c = _core.config()
    print(c["bf16_gemm"])
    print(c["bf16_gemm_mkl_runtime"])
    print(siglayer.show_config(mode="dicts")["bf16_gemm"])
    rng = np.random.default_rng(0)
    bf16 = ml_dtypes.bfloat16
    x = rng.standard_normal((300, 200)).astype(bf16)
    W = (rng.standard_normal((200, 100)) / 8).astype(bf16)
    b = rng.standard_normal(100).astype(np.float32)
    dout = rng.standard_normal((300, 100)).astype(bf16)
    out = siglayer.forward(x, W, b)
    z = x.astype(np.float64) @ W.astype(np.float64) + b
    print(np.abs(out.astype(np.float64) - 1 / (1 + np.exp(-z))).max())
    got = [out, *siglayer.backward(dout, x, W, out)]
    _core.select_bf16_gemm("convert")
    out_c = siglayer.forward(x, W, b)
    want = [out_c, *siglayer.backward(dout, x, W, out_c)]
    print(max(
        float(np.abs(g.astype(np.float64) - w.astype(np.float64)).max()
              / np.abs(w.astype(np.float64)).max())
        for g, w in zip(got, want)
    ))
    """
)


def run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {
        k: v for k, v in os.environ.items() if not k.startswith(("SIGLAYER_BF16", "SIGLAYER_MKL"))
    }
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=240,
    )


def check_probe(done: subprocess.CompletedProcess[str]) -> list[str]:
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    path, loaded, line, err_out, err_paths = lines
    assert path == "blas"
    assert loaded.startswith("MKL 20") and "loaded at run time from" in loaded, loaded
    library = loaded.split("loaded at run time from ")[1].rstrip(")")
    assert os.path.basename(library).startswith("libmkl_rt.so") and os.path.exists(library)
    assert line.startswith(f"blas (the bfloat16 GEMM of {loaded}"), line
    # out: one rounding to bfloat16 (2^-9 relative, sigma <= 1) plus float32 accumulation.
    assert float(err_out) <= 2.0**-8
    # The two paths multiply the same values and differ in the order of float32 additions,
    # then round once to bfloat16: at most one bfloat16 step apart, relative to the largest.
    assert float(err_paths) <= 2.0**-7
    return lines


@needs_mkl
def test_blas_loads_mkl_at_import_and_matches_the_oracle():
    check_probe(run(PROBE, SIGLAYER_BF16_GEMM="blas"))


@needs_mkl
def test_auto_loads_mkl_only_where_it_would_be_the_fastest():
    """auto opens MKL on a CPU with AMX-BF16 (its AMX code), or with AVX512-BF16 in a build
    without siglayer's own GEMM; on an AVX512-BF16 CPU without AMX (Zen 4, where MKL's
    bfloat16 GEMM runs a generic path) siglayer's own; elsewhere nothing (MKL would only
    emulate the instructions)."""
    c = _core.config()
    if c["cpu_amx_bf16"] or (c["cpu_bf16"] and not c["bf16_gemm_own"]):
        check_probe(run(PROBE))
        return
    done = run(PROBE)
    assert done.returncode == 0, done.stderr
    path, loaded, line = done.stdout.splitlines()[:3]
    assert loaded == ""  # nothing loaded
    if c["bf16_gemm_own"]:
        assert path == "avx512bf16"
        assert line.startswith("avx512bf16 (siglayer's bfloat16 GEMM") and "no MKL" in line
    else:
        assert path == "convert"
        assert "the BLAS has none, the CPU lacks" in line


@needs_mkl
@pytest.mark.parametrize(
    "variable",
    ["MKL_THREADING_LAYER=INTEL", "MKL_THREADING_LAYER=GNU", "MKL_INTERFACE_LAYER=ILP64"],
)
def test_mkl_layers_from_the_environment_are_overridden(variable: str):
    # Intel threading would load the libiomp5 beside libmkl_rt next to siglayer's own and
    # abort ("OMP: Error #15"); ILP64 would read 32-bit sizes as 64-bit ones. siglayer
    # sets sequential / LP64 before MKL's first call, which wins over the variables.
    name, value = variable.split("=")
    check_probe(run(PROBE, SIGLAYER_BF16_GEMM="blas", **{name: value}))


@not_built_in
def test_forcing_blas_without_mkl_says_how_to_get_it():
    hide_mkl = textwrap.dedent(
        """
        import importlib.metadata as metadata
        def distribution(name):
            raise metadata.PackageNotFoundError(name)
        metadata.distribution = distribution
        import siglayer
        """
    )
    done = run(hide_mkl, SIGLAYER_BF16_GEMM="blas")
    assert done.returncode != 0
    assert "ValueError: SIGLAYER_BF16_GEMM='blas'" in done.stderr
    assert "has no bfloat16 GEMM and MKL's is not loaded" in done.stderr
    assert "pip install mkl (siglayer's mkl extra" in done.stderr


@not_built_in
@pytest.mark.parametrize(
    ("library", "message"),
    [
        ("/nonexistent/libmkl_rt.so.3", "mkl: cannot load '/nonexistent/libmkl_rt.so.3'"),
        ("libm.so.6", "mkl: 'libm.so.6' has no cblas_gemm_bf16bf16f32"),
    ],
)
def test_a_library_that_cannot_serve_is_a_clear_error(library: str, message: str):
    done = run("import siglayer", SIGLAYER_BF16_GEMM="blas", SIGLAYER_MKL_RT=library)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ValueError: SIGLAYER_BF16_GEMM='blas': " + message), done.stderr
    # auto on a CPU without bfloat16 instructions never opens it: the import works.
    if not _core.config()["cpu_bf16"]:
        done = run("import siglayer", SIGLAYER_MKL_RT=library)
        assert done.returncode == 0, done.stderr


AMX_PROBE = textwrap.dedent(
    """
    from siglayer import _core
    c = _core.config()
    print(c["bf16_gemm"])
    print(c["amx_permission"])
    print(_core.request_amx_permission())
    print(_core.config()["amx_permission"])
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a Linux system call")
@pytest.mark.parametrize("bf16_gemm", ["auto", "blas"])
def test_amx_tile_permission_is_asked_for_with_mkl_on_amx(bf16_gemm):
    """Linux gives AMX tile data only to a process that asked (arch_prctl); without it an
    AMX instruction raises SIGILL. Whenever the blas path (MKL) is chosen on a CPU with
    AMX-BF16, siglayer asks at once; elsewhere it never asks. Asking directly gets the
    kernel's real answer: granted on an AMX CPU, refused (EOPNOTSUPP, or EINVAL on a
    kernel older than 5.16) without one."""
    if bf16_gemm == "blas" and (BUILT_IN or _config._find_mkl_rt() is None):
        pytest.skip("the mkl package is not installed (pip install mkl)")
    done = run(AMX_PROBE, SIGLAYER_BF16_GEMM=bf16_gemm)
    assert done.returncode == 0, done.stderr
    path, at_import, answer, after = done.stdout.splitlines()
    amx = _core.config()["cpu_amx_bf16"]
    if amx and path == "blas":
        assert at_import == "granted"
    else:
        assert at_import == "not requested", (path, at_import)
    if amx:
        assert answer == after == "granted"
    else:
        assert answer == after and answer.startswith("refused: "), answer
