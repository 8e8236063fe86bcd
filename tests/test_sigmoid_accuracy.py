"""Accuracy of the vectorized sigmoid, in ulps, against a higher-precision reference.

Budget (the README states it too): float32 <= 2 ulp, float64 <= 4 ulp, for every
instruction set this CPU can run (each is forced in turn). The reference is
1/(1 + e^-z) in np.longdouble (64-bit mantissa on x86-64), evaluated in the stable
form, then the error is measured in ulps of the exact result rounded to the dtype.
Special values must be exact.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import platform

import numpy as np
import pytest

import siglayer
from siglayer import _core

ISAS = _core.config()["simd_available"].split(",")
BUDGET_ULP = {np.dtype(np.float32): 2.0, np.dtype(np.float64): 4.0}
# Where sigma(-|z|) underflows to zero: every z up to there is swept.
UNDERFLOW = {np.dtype(np.float32): 104.0, np.dtype(np.float64): 746.0}


@pytest.fixture(params=ISAS)
def isa(request: pytest.FixtureRequest):
    best = ISAS[0]
    _core.select_isa(request.param)
    yield request.param
    _core.select_isa(best)


def reference(z: np.ndarray) -> np.ndarray:
    zl = z.astype(np.longdouble)
    t = np.exp(-np.abs(zl))
    return np.where(zl >= 0, 1 / (1 + t), t / (1 + t))


def ulp_error(got: np.ndarray, exact: np.ndarray) -> np.ndarray:
    dtype = got.dtype
    rounded = exact.astype(dtype)
    spacing = np.spacing(np.abs(rounded)).astype(np.longdouble)  # ulp of the true result
    return np.abs(got.astype(np.longdouble) - exact) / spacing


def sweep(dtype: np.dtype, seed: int = 7) -> np.ndarray:
    """About 1.1 million inputs: uniform over the whole range where sigma is neither 0
    nor 1, uniform over [-20, 20], a dense [-1, 1], and log-spaced magnitudes from 1e-30.
    (bench/sigmoid_accuracy.py prints the worst case of another seed.)"""
    rng = np.random.default_rng(seed)
    limit = UNDERFLOW[dtype]
    parts = [
        rng.uniform(-limit, limit, 400_000),
        rng.uniform(-20, 20, 400_000),
        np.linspace(-1, 1, 200_001),
        -np.logspace(-30, np.log10(limit), 50_000),
        np.logspace(-30, np.log10(limit), 50_000),
    ]
    return np.concatenate(parts).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_max_ulp_error_within_budget(isa, dtype):
    dtype = np.dtype(dtype)
    z = sweep(dtype)
    errors = ulp_error(_core.sigmoid(z), reference(z))
    worst = int(np.argmax(errors))
    assert errors[worst] <= BUDGET_ULP[dtype], (
        f"{isa} {dtype}: {float(errors[worst]):.3f} ulp at z = {z[worst]!r}"
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_special_values_exact(isa, dtype):
    big = np.finfo(dtype).max
    tiny = np.finfo(dtype).smallest_subnormal
    z = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e4, -1e4, big, -big, tiny, -tiny], dtype)
    want = np.array([0.5, 0.5, 1.0, 0.0, np.nan, 1.0, 0.0, 1.0, 0.0, 0.5, 0.5], dtype)
    np.testing.assert_array_equal(_core.sigmoid(z), want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_results_are_exactly_zero_or_one_where_the_truth_rounds_there(isa, dtype):
    dtype = np.dtype(dtype)
    limit = UNDERFLOW[dtype]
    z = np.concatenate([np.linspace(limit - 5, limit + 50, 10_001), np.linspace(15, 60, 10_001)])
    z = np.concatenate([z, -z]).astype(dtype)
    got = _core.sigmoid(z)
    want = reference(z).astype(dtype)
    np.testing.assert_array_equal(got[want == 1], 1)
    np.testing.assert_array_equal(got[want == 0], 0)
    assert np.all((got > 0) == (want > 0))


@pytest.mark.parametrize("length", [0, 1, 15, 16, 17, 31, 100])
def test_every_length_and_tail(isa, length):
    """The vector loops handle lengths that are not multiples of the vector width."""
    z = np.linspace(-8, 8, length).astype(np.float32)
    np.testing.assert_allclose(_core.sigmoid(z), reference(z).astype(np.float32), rtol=3e-7, atol=0)


def test_out_overlapping_z_is_refused_in_place_is_exact():
    """_core.sigmoid's out: z itself (in place, elementwise) gives the same values as a
    fresh array; a partial overlap is an OverlapError and leaves the memory unchanged."""
    z = np.linspace(-8, 8, 40).astype(np.float32)
    want = _core.sigmoid(z)
    inplace = z.copy()
    assert _core.sigmoid(inplace, inplace) is inplace
    np.testing.assert_array_equal(inplace, want)
    backing = np.linspace(-8, 8, 41).astype(np.float32)
    before = backing.copy()
    with pytest.raises(ValueError, match="out overlaps z"):
        _core.sigmoid(backing[:40], backing[1:])
    np.testing.assert_array_equal(backing, before)


# The caller's rounding mode (fesetround; x86-64 glibc's values). sigma computes in
# round-to-nearest whatever it is (kernels_isa.cpp: under FE_UPWARD the vector copies
# gave sigma(z) = 1 + 2^-23 for large z and 1000-ulp errors in float64); the products
# of a layer keep the caller's mode.
FE_MODES = {"upward": 0x800, "downward": 0x400, "towardzero": 0xC00}
on_x86_glibc = pytest.mark.skipif(
    platform.machine() not in ("x86_64", "AMD64") or not platform.libc_ver()[0] == "glibc",
    reason="fesetround's mode values are those of x86-64 glibc",
)


@contextlib.contextmanager
def rounding(mode: str):
    libm = ctypes.CDLL(ctypes.util.find_library("m"))
    assert libm.fesetround(FE_MODES[mode]) == 0
    try:
        yield libm
    finally:
        libm.fesetround(0)  # FE_TONEAREST


def assert_sse_rounds(mode: str) -> None:
    """NumPy's float64 arithmetic (SSE, rounded as MXCSR says) rounds as ``mode`` asks:
    1 +- 2**-60 by hand. fegetround reads the x87 control word on x86-64 glibc, not
    MXCSR, so it cannot see a kernel that leaves MXCSR changed (a mutation that dropped
    the restore of MXCSR went unseen: helper-81)."""
    one, tiny = np.ones(1), 2.0**-60
    up, down = (one + tiny)[0], (one - tiny)[0]
    want = {
        "upward": (np.nextafter(1.0, 2.0), 1.0),
        "downward": (1.0, np.nextafter(1.0, 0.0)),
        "towardzero": (1.0, np.nextafter(1.0, 0.0)),
    }[mode]
    assert (up, down) == want, f"after the call NumPy rounds {mode} as {(up, down)}"


@on_x86_glibc
@pytest.mark.parametrize("mode", FE_MODES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_sigma_is_the_same_in_every_rounding_mode(isa, dtype, mode):
    """Bitwise the round-to-nearest result (so within the ulp budget, in [0, 1], exact
    at the special values), and the caller's mode is left as it was."""
    dtype = np.dtype(dtype)
    z = np.concatenate(
        [sweep(dtype)[::8], np.array([np.inf, -np.inf, np.nan, 0.0, 1e30, -1e30, 40.0, -40.0])]
    ).astype(dtype)
    want = _core.sigmoid(z)
    with rounding(mode) as libm:
        assert_sse_rounds(mode)
        got = _core.sigmoid(z)
        mode_after = libm.fegetround()
        assert_sse_rounds(mode)
    assert mode_after == FE_MODES[mode]
    np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))


@on_x86_glibc
def test_exception_flags_raised_inside_sigma_are_kept(isa):
    """Putting the caller's rounding mode back must not clear the flags sigma raised (every
    sigma of a non-trivial z is inexact)."""
    FE_INEXACT = 0x20
    z = np.linspace(-5, 5, 1001)
    with rounding("upward") as libm:
        libm.feclearexcept(0x3D)  # FE_ALL_EXCEPT
        _core.sigmoid(z)
        raised = libm.fetestexcept(FE_INEXACT)
    assert raised == FE_INEXACT


@on_x86_glibc
@pytest.mark.parametrize("mode", FE_MODES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_a_layer_under_a_directed_rounding_mode_stays_in_the_unit_interval(
    isa, threads, dtype, mode
):
    """forward under the caller's mode, on every thread of the team: the products round
    as the caller asked, sigma does not leave [0, 1], and saturated units are exactly 0
    and 1 (before the fix: 1.0000001 in float32, which the library's own loss refused)."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((512, 64)) * 4).astype(dtype)
    W = rng.standard_normal((64, 96)).astype(dtype)
    b = np.linspace(-3000, 3000, 96).astype(dtype)  # columns far past saturation at both ends
    with rounding(mode):
        out = siglayer.forward(x, W, b)
        assert_sse_rounds(mode)
        siglayer.backward(np.ones_like(out), x, W, out)
        assert_sse_rounds(mode)
    assert ((out >= 0) & (out <= 1)).all()
    np.testing.assert_array_equal(out[:, 0], 0)
    np.testing.assert_array_equal(out[:, -1], 1)
    # Apart from sigma the two differ by the products' rounding alone: |dz| <= 2 n_in eps
    # (|x| |W| + |b|), and sigma' <= 1/4, plus a few ulp of out.
    nearest = siglayer.forward(x, W, b)
    eps = float(np.finfo(dtype).eps)
    dz = 2 * 64 * eps * (np.abs(x).astype(np.float64) @ np.abs(W) + np.abs(b))
    assert (np.abs(out.astype(np.float64) - nearest) <= dz / 4 + 4 * eps).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_the_reference_sigmoid_is_quiet_under_numpy_errors_raise(dtype):
    """reference.sigmoid says "without floating-point warnings": under np.errstate(all=
    "raise") too, where exp(-|z|) underflows for large |z| (a review found a
    FloatingPointError). Hand values: 0 and 1 at the far ends, 1/2 at 0, NaN kept."""
    z = np.array([-1e4, -800.0, 0.0, 800.0, 1e4, -np.inf, np.inf, np.nan], dtype)
    with np.errstate(all="raise"):
        got = siglayer.reference.sigmoid(z)
    np.testing.assert_array_equal(got[:7], np.array([0, 0, 0.5, 1, 1, 0, 1], dtype))
    assert np.isnan(got[7]) and got.dtype == dtype


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_nan_in_gives_the_same_nan_bits_on_every_instruction_set(isa, dtype):
    """sigma(NaN) is z's NaN made quiet with its sign bit set, on every instruction set (a
    review found the baseline kept z's sign where the SIMD kernels set it: the bits of a
    result depended on the CPU). Hand-made patterns: both signs, quiet and signalling,
    payloads, at every position of a vector and of its tail."""
    uint = {np.dtype(np.float32): np.uint32, np.dtype(np.float64): np.uint64}[np.dtype(dtype)]
    bits = 8 * np.dtype(dtype).itemsize
    mantissa = np.finfo(dtype).nmant
    sign, quiet = uint(1) << uint(bits - 1), uint(1) << uint(mantissa - 1)
    exponent = uint((1 << (bits - 1 - mantissa)) - 1) << uint(mantissa)
    payloads = [quiet, quiet | uint(0x1234), uint(1), uint(0x155)]  # the last two signalling
    nans = np.array([exponent | p | s for p in payloads for s in (uint(0), sign)], uint)
    for length in (1, 8, 37):
        z = np.resize(nans, length).view(dtype)
        z[1::3] = 0.25  # numbers between the NaNs
        got = _core.sigmoid(z).view(uint)
        is_nan = np.isnan(z)
        want = z.view(uint)[is_nan] | sign | quiet
        np.testing.assert_array_equal(got[is_nan], want, err_msg=f"{isa}, length {length}")
        assert not np.isnan(got.view(dtype)[~is_nan]).any()
