"""bfloat16 storage computing in float32 (docs/bfloat16.md).

The oracle is siglayer.reference in float64 on the bfloat16 inputs themselves (float64
gradcheck cannot apply to bfloat16 storage). The bounds follow the roundings the contract
names, with u = 2**-8 the unit roundoff of bfloat16 (8 significant bits) and e = 2**-24
that of float32:

- out: the product of two bfloat16 values is exact in float32, the sum of K = n_in of them
  errs by at most gamma_K ~ K e times |x| @ |W|; sigma' <= 1/4 and sigma in float32 adds a
  few e; then one rounding to bfloat16, u |out|. Bound: u |out| + 1/4 * 2 (K + 4) e
  (|x| @ |W|) + 4 e.
- db: dZ in float32 (3 roundings), summed in float32 over n rows: 2 (n + 4) e sum|dZ|.
- dW: dZ rounded to bfloat16 once (u |dZ|), then products summed in float32 over n rows:
  (u + 2 (n + 4) e) (|x|.T @ |dZ|).
- dx: the same with W over n_out, then one rounding of the result: u |dx| + (1 + u)
  (u + 2 (n_out + 4) e) (|dZ| @ |W|.T).

Both ways a bfloat16 product can run are tested where the build has them: "convert" (the
operands widened to float32, the float32 GEMM) everywhere, "blas" (MKL's bfloat16 GEMM)
in an MKL build, skipped with the reason elsewhere.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import siglayer
from conftest import (
    FEW_OUTPUT_BASE,
    NARROW_DZ_OUTPUTS,
    NARROW_DZ_SHAPE,
    SUM_ROWS,
    assert_same_bits,
    rows_apart,
)
from siglayer import _core, reference

ml_dtypes = pytest.importorskip("ml_dtypes", reason="bfloat16 needs ml-dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)
U = 2.0**-8
E = 2.0**-24

# (n, n_in, n_out): T, M, L and XL of the benchmarks, odd sizes that leave tile and panel
# remainders, and both ways forward shares a widened operand (layer_bf16.cpp).
SHAPES = [
    (1, 1, 1),
    (7, 5, 3),
    (32, 64, 32),
    (256, 512, 512),
    (257, 129, 65),
    (600, 70, 40),  # dW^T transposed into dW (from 512 rows, up to 64 outputs)
    (700, 1024, 64),  # the same with a 4 KB row of dW^T (n_in 1024)
    (300, 1000, 1100),  # column bands with x widened once for the team
    (1024, 1024, 1024),  # row bands with W widened once for the team
    (4096, 2048, 2048),  # XL of the benchmarks
]


def bf16(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, np.float32).astype(BF16)


def f64(a: np.ndarray) -> np.ndarray:
    return np.asarray(a).astype(np.float64)


def inputs(n: int, n_in: int, n_out: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = bf16(rng.standard_normal((n, n_in)))
    W = bf16(rng.standard_normal((n_in, n_out)) / np.sqrt(n_in))
    b = rng.standard_normal(n_out).astype(np.float32)
    return x, W, b


def assert_bounded(got: np.ndarray, want: np.ndarray, bound: np.ndarray, what: str) -> None:
    err = np.abs(f64(got) - want)
    assert np.isfinite(got.astype(np.float64)).all(), f"{what}: non-finite values"
    worst = float((err - bound).max())
    assert worst <= 0, f"{what}: max error {err.max():.3e} exceeds its bound by {worst:.3e}"


GEMM_PATHS = ["convert", "blas", "avx512bf16"]


def gemm_path_missing(path: str) -> str | None:
    """Why this machine cannot run the bfloat16 GEMM path, or None if it can."""
    if path == "blas" and not _core.config()["bf16_gemm_in_blas"]:
        return (
            f"no bfloat16 GEMM: the {_core.config()['blas']} build has none and MKL's is not "
            "loaded (SIGLAYER_BF16_GEMM=blas with the mkl extra, or an MKL build)"
        )
    if path == "avx512bf16" and not _core.config()["bf16_gemm_own"]:
        return "siglayer's bfloat16 GEMM needs AVX512-BF16, which this CPU lacks"
    return None


@pytest.fixture(params=GEMM_PATHS)
def gemm_path(request: pytest.FixtureRequest):
    path = request.param
    missing = gemm_path_missing(path)
    if missing:
        pytest.skip(missing)
    before = _core.config()["bf16_gemm"]
    _core.select_bf16_gemm(path)
    yield path
    _core.select_bf16_gemm(before)


# --- conversions ---------------------------------------------------------------------

# Every instruction set this CPU can run, each forced in turn: the AVX512-BF16 copy rounds
# with vcvtne2ps2bf16 (which flushes subnormals, so blocks holding one are redone), the
# others in integer arithmetic; all must give the same bits.
ISAS = _core.config()["simd_available"].split(",")


@pytest.fixture(params=ISAS)
def isa(request: pytest.FixtureRequest):
    before = _core.config()["simd"]
    _core.select_isa(request.param)
    yield request.param
    _core.select_isa(before)


def test_every_bfloat16_widens_exactly(isa):
    every = np.arange(1 << 16, dtype=np.uint16).view(BF16)
    got = _core.to_float32(every)
    want = every.astype(np.float32)  # ml_dtypes: exact, the upper half of the float32
    nan = np.isnan(want)
    assert (np.isnan(got) == nan).all()
    assert (got.view(np.uint32)[~nan] == want.view(np.uint32)[~nan]).all()
    assert (got.view(np.uint32) == every.view(np.uint16).astype(np.uint32) << 16).all()


def rne_reference(f: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16 bits, nearest even, in integer arithmetic (NaN apart)."""
    u = f.view(np.uint32).astype(np.uint64)
    upper, lower = u >> 16, u & 0xFFFF
    up = (lower > 0x8000) | ((lower == 0x8000) & (upper & 1 == 1))
    return (upper + up).astype(np.uint16)


def test_rounding_to_nearest_even_on_random_bits_and_the_hard_cases(isa):
    rng = np.random.default_rng(1)
    bits = rng.integers(0, 1 << 32, size=1 << 20, dtype=np.uint64).astype(np.uint32)
    ties = (np.arange(1 << 16, dtype=np.uint32) << 16) | 0x8000  # every exact tie
    near = np.concatenate([ties - 1, ties + 1])  # just below and above each tie
    special = np.array(
        [0.0, -0.0, 1.0, np.inf, -np.inf, np.finfo(np.float32).max, 1e-45, -1e-45, 1e-40],
        np.float32,
    ).view(np.uint32)
    f = np.concatenate([bits, ties, near, special]).view(np.float32)
    got = _core.to_bfloat16(f).view(np.uint16)
    nan = np.isnan(f)
    assert (got[~nan] == rne_reference(f[~nan])).all()
    assert (got[~nan] == f[~nan].astype(BF16).view(np.uint16)).all()  # and ml_dtypes agrees
    assert np.isnan(got[nan].view(BF16).astype(np.float32)).all()  # NaN stays NaN
    # Hand-checked: 1 + 2**-8 is a tie between 1 and 1 + 2**-7 (odd): rounds to 1;
    # 1 + 3 * 2**-8 is a tie between 1 + 2**-7 (odd) and 1 + 2**-6: rounds up.
    hand = np.array([1 + 2.0**-8, 1 + 3 * 2.0**-8, 3.4e38, -np.inf], np.float32)
    assert _core.to_bfloat16(hand).view(np.uint16).tolist() == [0x3F80, 0x3F82, 0x7F80, 0xFF80]


def test_narrowing_subnormals_nan_payloads_and_tails(isa):
    """Subnormal float32 values round to subnormal bfloat16 (not to zero, as
    vcvtne2ps2bf16 alone would), including those that round up to the smallest normal;
    one subnormal in a block of normal values, at every position and every length up to
    two vector blocks (the masked tail); NaNs of every payload stay quiet NaNs with the
    same bits on every instruction set."""
    rng = np.random.default_rng(7)
    subnormal = np.concatenate(
        [
            np.arange(1, 1 << 16, dtype=np.uint32),  # the smallest ones, every rounding case
            np.arange((1 << 23) - (1 << 16), 1 << 23, dtype=np.uint32),  # up to 2**-126
            rng.integers(1, 1 << 23, size=1 << 16, dtype=np.uint32),
        ]
    )
    subnormal = np.concatenate([subnormal, subnormal | 0x80000000]).view(np.float32)
    got = _core.to_bfloat16(subnormal).view(np.uint16)
    assert (got == rne_reference(subnormal)).all()
    assert np.count_nonzero(got & 0x7FFF) > len(got) // 2  # not flushed
    assert (got[subnormal.view(np.uint32) & 0x7FFFFFFF == 0x7FFFFF] & 0x7FFF == 0x80).all()

    normal = rng.standard_normal(64).astype(np.float32)
    for length in range(1, 65):
        want = rne_reference(normal[:length])
        assert (_core.to_bfloat16(normal[:length]).view(np.uint16) == want).all(), length
        for position in range(length):
            f = normal[:length].copy()
            f[position] = np.float32(3e-39)  # subnormal: bits 0x0020aaa0 or so
            got = _core.to_bfloat16(f).view(np.uint16)
            assert (got == rne_reference(f)).all(), (length, position)

    payloads = rng.integers(1, 1 << 23, size=4096, dtype=np.uint32)
    nans = np.concatenate([0x7F800000 | payloads, 0xFF800000 | payloads]).view(np.float32)
    got = _core.to_bfloat16(nans).view(np.uint16)
    want = (nans.view(np.uint32) >> 16).astype(np.uint16) | 0x0040  # quiet, sign and top kept
    assert (got == want).all()


@pytest.mark.parametrize("n_out", [3, 40])
def test_a_nan_preactivation_gives_the_same_out_bits_on_every_instruction_set(isa, n_out):
    """sigma of a NaN is the NaN made quiet with its sign bit set on every instruction set
    (the baseline kept the sign where the SIMD copies set it: a review saw 0x7fc0 against
    0xffc0), so a bfloat16 out has the same bits whichever copy runs."""
    x = np.zeros((5, 4), BF16)
    W = np.ones((4, n_out), BF16)
    b = np.resize(np.array([0x7FC0, 0xFFC0, 0x7FD2, 0x3F80], np.uint16), n_out).view(BF16)
    out = siglayer.forward(x, W, b).view(np.uint16)
    is_nan = np.isnan(b.astype(np.float32))
    want = b.view(np.uint16)[is_nan] | np.uint16(0x8000)
    assert (out[:, is_nan] == want).all()
    assert (out[:, ~is_nan] == 0x3F3B).all()  # sigma(1) = 0.7311 rounds to 0.73046875


@pytest.mark.parametrize("shape", [(7, 5, 3), (33, 70, 45), (256, 512, 512)])
def test_avx512bf16_gives_the_bits_of_avx512(shape):
    """forward and backward in bfloat16 under the two AVX-512 copies, with and without
    vcvtne2ps2bf16: they share every float kernel and differ only in how they round to
    bfloat16, which must not show, so their bits agree exactly. (AVX2 and baseline differ
    from AVX-512 in the last float32 bit of sigma now and then, which a bfloat16 rounding
    can expose: the tests above hold them to the oracle's bounds instead.)"""
    x, W, b = inputs(*shape, seed=3)
    x[0, 0] = bf16(np.float32(1e-39))  # a subnormal input
    W[:, 0], b[0] = 0, -89.0  # sigma(-89) ~ 2.2e-39: a column of subnormal outputs
    dout = bf16(np.random.default_rng(4).standard_normal((shape[0], shape[2])))
    before = _core.config()["simd"]
    if "avx512bf16" not in ISAS:
        pytest.skip(f"the CPU lacks AVX512-BF16 (it runs {ISAS})")
    results = {}
    try:
        for name in ("avx512bf16", "avx512"):
            _core.select_isa(name)
            out = siglayer.forward(x, W, b)
            dx, dW, db = siglayer.backward(dout, x, W, out)
            results[name] = [
                a.view(np.uint16 if a.dtype == BF16 else np.uint32) for a in (out, dx, dW, db)
            ]
    finally:
        _core.select_isa(before)
    column = results["avx512"][0].reshape(shape[0], shape[2])[:, 0]
    assert ((column > 0) & (column < 0x80)).all()  # subnormal bfloat16 bits, not flushed
    for what, got, want in zip(
        ("out", "dx", "dW", "db"), results["avx512bf16"], results["avx512"], strict=True
    ):
        assert (got == want).all(), f"{what}: avx512bf16 differs from avx512"


@pytest.mark.parametrize("blocked", [False, True], ids=["importable", "blocked"])
def test_conversions_before_anyone_imported_ml_dtypes(blocked):
    """to_bfloat16 / to_float32 as the first bfloat16 call of a process (a review found a
    segfault: the bfloat16 dtype was looked up only among loaded modules): ml_dtypes is
    imported then, or, where it cannot be, an ImportError says what to install."""
    block = "sys.modules['ml_dtypes'] = None; " if blocked else ""
    code = (
        f"import sys; {block}import numpy as np, siglayer\n"
        "from siglayer import _core\n"
        "try:\n"
        "    h = _core.to_bfloat16(np.array([1.0, 1 + 2**-8, 3.0], np.float32))\n"
        "    print(h.dtype, h.view(np.uint16).tolist(), _core.to_float32(h).tolist())\n"
        "except ImportError as e:\n"
        "    print('ImportError', e)\n"
        "try:\n"
        "    _core.to_float32(np.zeros(3, np.float32))\n"
        "except (ImportError, TypeError) as e:\n"
        "    print(type(e).__name__, e)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    if blocked:
        assert lines[0].startswith("ImportError bfloat16 arrays need ml-dtypes"), lines
        assert lines[1].startswith("ImportError bfloat16 arrays need ml-dtypes"), lines
    else:  # 1 + 2^-8 is a tie between 1 and 1 + 2^-7: to even, 1
        assert lines[0] == "bfloat16 [16256, 16256, 16448] [1.0, 1.0, 3.0]", lines
        assert lines[1].startswith("TypeError a has dtype float32, expected bfloat16"), lines


def test_conversions_refuse_other_dtypes_and_layouts():
    with pytest.raises(TypeError, match="a has dtype float64, expected float32"):
        _core.to_bfloat16(np.zeros(3))
    with pytest.raises(TypeError, match="a has dtype float32, expected bfloat16"):
        _core.to_float32(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        _core.to_bfloat16(np.zeros((4, 4), np.float32)[:, ::2])
    with pytest.raises(TypeError, match="out has dtype float32, expected bfloat16"):
        _core.to_bfloat16(np.zeros(3, np.float32), out=np.zeros(3, np.float32))
    # Non-native byte order: the type number alone matches, and the bytes were read as
    # native ones (1.0 became 9.2e-41, no error; a review's find).
    with pytest.raises(TypeError, match="a has dtype >f4, expected float32"):
        _core.to_bfloat16(np.ones(3, ">f4"))
    swapped = np.ones(3, BF16).view(np.dtype(BF16).newbyteorder(">"))
    with pytest.raises(TypeError, match=r"a has dtype .*, expected bfloat16"):
        _core.to_float32(swapped)
    with pytest.raises(TypeError, match="out has dtype >f4, expected float32"):
        _core.to_float32(np.ones(3, BF16), out=np.empty(3, ">f4"))


def test_sigmoid_of_every_bfloat16(isa):
    every = np.arange(1 << 16, dtype=np.uint16).view(BF16)
    got = _core.sigmoid(every)
    assert got.dtype == BF16
    with np.errstate(invalid="ignore"):  # the signalling NaNs among them
        z = _core.to_float32(every).astype(np.float64)
        got64 = _core.to_float32(got).astype(np.float64)
    want = reference.sigmoid(z)
    nan = np.isnan(z)
    assert np.isnan(got64[nan]).all()
    # sigma in float32 (<= 2 float32 ulp), rounded once to bfloat16: within u |sigma| + 4 e |sigma|,
    # and where sigma is subnormal half the spacing of bfloat16's subnormals, 2**-134 (and of
    # float32's, 2**-149, twice).
    err = np.abs(got64[~nan] - want[~nan])
    assert (err <= (U + 4 * E) * want[~nan] + 2.0**-134 + 2.0**-148).all(), err.max()
    assert got64[z == np.inf].tolist() == [1.0]
    assert got64[z == -np.inf].tolist() == [0.0]


# --- the layer against the float64 reference on the bfloat16 inputs ------------------


def forward_bound(x, W, out_ref) -> np.ndarray:
    K = x.shape[-1]
    return U * np.abs(out_ref) + 0.25 * 2 * (K + 4) * E * (np.abs(f64(x)) @ np.abs(f64(W))) + 4 * E


def gradient_bounds(x, W, dZ_ref, dx_ref):
    n, n_out = dZ_ref.shape
    adZ = np.abs(dZ_ref)
    b_dW = (U + 2 * (n + 4) * E) * (np.abs(f64(x)).T @ adZ) + 1e-30
    b_db = 2 * (n + 4) * E * adZ.sum(axis=0) + 1e-30
    b_dx = U * np.abs(dx_ref) + (1 + U) * (U + 2 * (n_out + 4) * E) * (adZ @ np.abs(f64(W)).T)
    return b_dx + 1e-30, b_dW, b_db


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_forward_and_backward_against_the_reference(shape, gemm_path, threads):
    x, W, b = inputs(*shape)
    x0, W0, b0 = x.copy(), W.copy(), b.copy()
    out = siglayer.forward(x, W, b)
    assert out.dtype == BF16 and out.shape == (shape[0], shape[2])
    out_ref = reference.forward(f64(x), f64(W), f64(b))
    assert_bounded(out, out_ref, forward_bound(x, W, out_ref), "out")

    dout = bf16(np.random.default_rng(2).standard_normal(out.shape))
    dx, dW, db = siglayer.backward(dout, x, W, out)
    assert (dx.dtype, dW.dtype, db.dtype) == (BF16, np.float32, np.float32)
    o = f64(out)
    dZ_ref = f64(dout) * o * (1 - o)
    dx_ref, dW_ref, db_ref = reference.backward_from_preactivation(dZ_ref, f64(x), f64(W))
    b_dx, b_dW, b_db = gradient_bounds(x, W, dZ_ref, dx_ref)
    assert_bounded(dW, dW_ref, b_dW, "dW")
    assert_bounded(db, db_ref, b_db, "db")
    assert_bounded(dx, dx_ref, b_dx, "dx")
    # The inputs are never modified.
    for a, a0 in ((x, x0), (W, W0), (b, b0)):
        assert (a.view(np.uint8) == a0.view(np.uint8)).all()


@pytest.mark.parametrize("shape", SHAPES[1:5], ids=lambda s: "x".join(map(str, s)))
def test_backward_from_preactivation_against_the_reference(shape, gemm_path):
    x, W, _ = inputs(*shape)
    dZ = bf16(np.random.default_rng(3).standard_normal((shape[0], shape[2])) / 8)
    dx, dW, db = siglayer.backward_from_preactivation(dZ, x, W)
    dx_ref, dW_ref, db_ref = reference.backward_from_preactivation(f64(dZ), f64(x), f64(W))
    n, n_out = dZ.shape
    adZ = np.abs(f64(dZ))  # dZ is an input: no rounding of its own
    assert_bounded(dW, dW_ref, 2 * (n + 4) * E * (np.abs(f64(x)).T @ adZ) + 1e-30, "dW")
    assert_bounded(db, db_ref, 2 * (n + 4) * E * adZ.sum(axis=0) + 1e-30, "db")
    b_dx = U * np.abs(dx_ref) + (1 + U) * 2 * (n_out + 4) * E * (adZ @ np.abs(f64(W)).T)
    assert_bounded(dx, dx_ref, b_dx + 1e-30, "dx")


@pytest.mark.parametrize("grad_dtype", [None, "bfloat16"])
@pytest.mark.parametrize("method", ["backward", "backward_from_preactivation"])
def test_skipped_gradients_leave_the_others_bitwise_unchanged(
    gemm_path, threads, method, grad_dtype
):
    """need_dx / need_dW drop a product on every GEMM path; what remains is the full
    call's bits (the full call is checked against the reference above)."""
    x, W, b = inputs(257, 129, 65, seed=5)
    # Every other column of a wider array: a layout the products must pack (C and F order
    # reach the GEMM as they are), a packing skipped with dW.
    wide = np.zeros((x.shape[0], 2 * x.shape[1]), BF16)
    wide[:, ::2] = x
    x = wide[:, ::2]
    out = siglayer.forward(x, W, b)
    dout = bf16(np.random.default_rng(6).standard_normal(out.shape))
    call = getattr(siglayer, method)
    args = (dout, x, W, out) if method == "backward" else (dout, x, W)
    full = call(*args, grad_dtype=grad_dtype)
    for need_dx, need_dW in ((True, False), (False, True), (False, False)):
        got = call(*args, need_dx=need_dx, need_dW=need_dW, grad_dtype=grad_dtype)
        for name, g, f, needed in zip(
            "dx dW db".split(), got, full, (need_dx, need_dW, True), strict=True
        ):
            if needed:
                assert g.dtype == f.dtype and (g.view(np.uint8) == f.view(np.uint8)).all(), name
            else:
                assert g is None, name


def test_batch_dimensions_strides_and_a_float32_bias():
    x, W, b = inputs(24, 40, 12, seed=4)
    xb = x.reshape(2, 3, 4, 40)
    out = siglayer.forward(xb, W, b)
    assert out.shape == (2, 3, 4, 12)
    # The same values in other layouts give bitwise the same result.
    flat = siglayer.forward(x, W, b)
    assert (out.reshape(24, 12).view(np.uint16) == flat.view(np.uint16)).all()
    W_f = np.asfortranarray(W)
    x_strided = np.empty((24, 80), BF16)[:, ::2]
    x_strided[...] = x
    assert (siglayer.forward(x_strided, W_f, b).view(np.uint16) == flat.view(np.uint16)).all()
    # A bfloat16 bias is widened exactly: the same as the float32 bias of its values.
    b16 = b.astype(BF16)
    assert (
        siglayer.forward(x, W, b16).view(np.uint16)
        == siglayer.forward(x, W, b16.astype(np.float32)).view(np.uint16)
    ).all()
    dx, dW, _ = siglayer.backward(bf16(np.ones((2, 3, 4, 12))), xb, W, out)
    assert dx.shape == (2, 3, 4, 40) and dW.shape == (40, 12)


@pytest.mark.parametrize("long_rows", [False, True], ids=["short", "4KB"])
@pytest.mark.parametrize("n_out", [1, 3, 4, 11])
def test_few_outputs_a_rows_out_and_dx_do_not_depend_on_its_batch(isa, n_out, long_rows):
    """As tests/test_layer.py's twin: a row alone gets the bits it gets in any batch (out
    from row_dots, x widened in registers; dx from row_combos and its one rounding). Rows
    of 4120 bytes take row_dots' groups of four rows with 3 and 4 outputs (AVX-512)."""
    n, n_in = (70, 2060) if long_rows else (29, 77)
    x, W, b = inputs(n, n_in, n_out, seed=n_out)
    dZ = bf16(np.random.default_rng(1).standard_normal((n, n_out)))
    out = siglayer.forward(x, W, b).view(np.uint16)
    dx = siglayer.backward_from_preactivation(dZ, x, W)[0].view(np.uint16)
    for i in range(n):
        for lo, hi in ((i, i + 1), (max(0, i - 2), i + 1), (i, min(n, i + 6))):
            got = siglayer.forward(x[lo:hi], W, b).view(np.uint16)
            assert (got == out[lo:hi]).all(), f"out rows {lo}:{hi}"
            got = siglayer.backward_from_preactivation(dZ[lo:hi], x[lo:hi], W)[0]
            assert (got.view(np.uint16) == dx[lo:hi]).all(), f"dx rows {lo}:{hi}"


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("n_out", [3, 5, 8, 9, 11])
def test_few_outputs_streamed_x_same_bits_as_its_rows_alone(restore_threads, isa, n_out, threads):
    """As tests/test_layer.py's twin: a batch of 24 MiB and more of bfloat16 x, where row_dots
    goes over x once, fetching rows ahead (5 and more outputs in one pass with W^T in
    chunks): each row's out is still its bits alone. On the convert path, as siglayer's own
    GEMM takes 5 and more outputs."""
    before = _core.config()["bf16_gemm"]
    _core.select_bf16_gemm("convert")
    siglayer.set_num_threads(threads)
    try:
        streamed_rows_alone(n_out)
    finally:
        _core.select_bf16_gemm(before)


def streamed_rows_alone(n_out: int) -> None:
    n_in = 1001
    n = ((24 << 20) // (n_in * 2) + 7) | 1
    x, W, b = inputs(n, n_in, n_out, seed=n_out)
    out = siglayer.forward(x, W, b).view(np.uint16)
    for lo, hi in ((0, 1), (0, 40), (255, 258), (n - 40, n), (n - 1, n)):
        got = siglayer.forward(x[lo:hi], W, b).view(np.uint16)
        assert (got == out[lo:hi]).all(), f"out rows {lo}:{hi}"


@pytest.mark.parametrize("n_out", [1, 2, 3, 4])
def test_few_outputs_dw_of_leading_columns_same_bits(isa, n_out):
    """As tests/test_layer.py's twin (x widened in col_dots' registers, dW in float32): dW
    of x's first m columns is bitwise the first m rows of the whole dW, m = 1 to 256."""
    x, W, _ = inputs(9, 256, n_out, seed=n_out)
    dZ = bf16(np.random.default_rng(2).standard_normal((9, n_out)))
    full = siglayer.backward_from_preactivation(dZ, x, W, need_dx=False)[1]
    assert full.dtype == np.float32
    for m in range(1, 257):
        got = siglayer.backward_from_preactivation(dZ, x[:, :m], W[:m], need_dx=False)[1]
        assert (got.view(np.uint32) == full[:m].view(np.uint32)).all(), f"first {m} columns"
    want = f64(x).T @ f64(dZ)
    bound = 2 * 9 * 2.0**-24 * (np.abs(f64(x)).T @ np.abs(f64(dZ))) + 1e-30
    assert (np.abs(full - want) <= bound).all()


@pytest.mark.parametrize("layout", ["F", "strided", "negative"])
def test_few_outputs_from_preactivation_same_bits_for_any_dz_layout(threads, layout):
    """As tests/test_layer.py's twin: dZ of any layout gives the bits of a C-ordered dZ
    (dx from row_combos, dW from col_dots, db), for the thread count in use."""
    x, W, _ = inputs(3000, 70, 8, seed=5)
    dZ = bf16(np.random.default_rng(6).standard_normal((3000, 8)))
    big = np.zeros((6000, 24), BF16)
    big[::2, ::3] = dZ
    given = {
        "F": np.asfortranarray(dZ),
        "strided": big[::2, ::3],
        "negative": np.ascontiguousarray(dZ[::-1, ::-1])[::-1, ::-1],
    }[layout]
    want = siglayer.backward_from_preactivation(dZ, x, W)
    got = siglayer.backward_from_preactivation(given, x, W)

    def bits(a: np.ndarray) -> np.ndarray:
        return a.view(np.uint16 if a.dtype == BF16 else np.uint32)

    for name, g, w in zip(("dx", "dW", "db"), got, want, strict=True):
        assert (bits(g) == bits(w)).all(), name


def _bf16_layouts(a: np.ndarray) -> dict[str, np.ndarray]:
    big = np.zeros((a.shape[0] * 2, a.shape[1] * 3), BF16)
    big[::2, ::3] = a
    return {
        "C": a,
        "rows-apart": np.concatenate([a, a], axis=1)[:, : a.shape[1]],  # contiguous rows
        "strided": big[::2, ::3],
        "Tview": np.ascontiguousarray(a.T).T,  # F order
        "negative": np.ascontiguousarray(a[::-1, ::-1])[::-1, ::-1],
    }


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("n_out", NARROW_DZ_OUTPUTS)
def test_dz_of_narrow_rows_end_to_end_same_bits_as_row_by_row(restore_threads, isa, n_out, threads):
    """As in test_layer.py: dZ (rounded to bfloat16 once, the unrounded values summed into
    db) of rows of fewer than 32 values end to end, in one loop over many rows, against the
    same rows apart, one at a time: the same bits."""
    n = NARROW_DZ_SHAPE[0]
    x, W, b = inputs(*NARROW_DZ_SHAPE, n_out, seed=n_out)
    dout = bf16(np.random.default_rng(n_out).standard_normal((n, n_out)))
    siglayer.set_num_threads(threads)
    out = siglayer.forward(x, W, b)
    grads = siglayer.backward(dout, x, W, out)
    assert_same_bits(siglayer.backward(rows_apart(dout), x, W, rows_apart(out)), grads)
    o = f64(out)
    dZ_ref = f64(dout) * o * (1 - o)
    b_db = 2 * (n + 4) * 2.0**-24 * np.abs(dZ_ref).sum(axis=0)
    assert_bounded(grads[2], dZ_ref.sum(axis=0), b_db, "db")


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("n_out", [1, 2, 4])
def test_few_outputs_dw_along_the_rows_same_bits_as_the_strips(isa, n_out, threads):
    """dW of a layer with few outputs goes along x's rows where a row spans 4 KB or more
    (col_dots_rows: on AVX2, and on AVX-512 with one output) and in strips of columns
    otherwise: the same operations in the same order for every entry, so the same bits.
    x as rows 4.2 KB apart (a view into a wider array) against its contiguous copy (1.2 KB
    rows); 1031 rows, n_in 602 (a partial vector and a partial chunk). Elsewhere both take
    the strips. (From 5 outputs siglayer's own GEMM, where it runs, takes dW.)"""
    x, W, b = inputs(1031, 602, n_out, seed=n_out)
    dout = bf16(np.random.default_rng(n_out).standard_normal((1031, n_out)))
    wide = np.zeros((1031, 2100), BF16)
    wide[:, :602] = x
    apart = wide[:, :602]
    assert apart.strides[0] >= 4096 > x.strides[0]
    before = siglayer.get_num_threads()
    siglayer.set_num_threads(threads)
    try:
        out = siglayer.forward(x, W, b)
        _, dW, db = siglayer.backward(dout, x, W, out)
        _, dW_apart, db_apart = siglayer.backward(dout, apart, W, out)
    finally:
        siglayer.set_num_threads(before)
    np.testing.assert_array_equal(dW_apart, dW)
    np.testing.assert_array_equal(db_apart, db)
    o = f64(out)
    dZ_ref = f64(dout) * o * (1 - o)
    _, dW_ref, _ = reference.backward_from_preactivation(dZ_ref, f64(x), f64(W))
    _, b_dW, _ = gradient_bounds(x, W, dZ_ref, dZ_ref @ f64(W).T)
    assert_bounded(dW, dW_ref, b_dW, "dW")


@pytest.mark.parametrize("layout", ["C", "rows-apart", "strided", "Tview"])
@pytest.mark.parametrize("n_out", [1, 2, 5, 11])
def test_few_outputs_on_every_instruction_set_and_layout(isa, n_out, layout):
    """Fewer than 12 outputs: forward and dW take row_dots and col_dots (x widened in
    registers) when x's rows are contiguous, the float GEMM on widened panels otherwise,
    and dx row_combos (layer_detail.hpp), on the blas and convert paths, and for 1 to 4
    outputs on avx512bf16 (from 5 siglayer's own GEMM, whose sums run over k in fixed
    blocks); against the oracle's bounds, and the same bits for one thread and two."""
    before = siglayer.get_num_threads()
    try:
        # conftest's shapes and rows of 4 KB, whose dW AVX2 sums along the rows
        for n, n_in in [*FEW_OUTPUT_BASE, (1031, 2102)]:
            x, W, b = inputs(n, n_in, n_out, seed=n + n_in)
            x, W = _bf16_layouts(x)[layout], _bf16_layouts(W)[layout]
            dout = bf16(np.random.default_rng(n).standard_normal((n, n_out)))
            runs = []
            for t in (1, 2):
                siglayer.set_num_threads(t)
                out = siglayer.forward(x, W, b)
                out0 = runs[0][0] if runs else out
                runs.append((out, *siglayer.backward(dout, x, W, out0)))
            out, dx, dW, db = runs[0]
            out_ref = reference.forward(f64(x), f64(W), f64(b))
            assert_bounded(out, out_ref, forward_bound(x, W, out_ref), f"out {n}x{n_in}")
            o = f64(out)
            dZ_ref = f64(dout) * o * (1 - o)
            dx_ref, dW_ref, db_ref = reference.backward_from_preactivation(dZ_ref, f64(x), f64(W))
            b_dx, b_dW, b_db = gradient_bounds(x, W, dZ_ref, dx_ref)
            assert_bounded(dx, dx_ref, b_dx, f"dx {n}x{n_in}")
            assert_bounded(dW, dW_ref, b_dW, f"dW {n}x{n_in}")
            assert_bounded(db, db_ref, b_db, f"db {n}x{n_in}")
            rows = layout in ("C", "rows-apart")
            same = {"out": rows, "dx": True, "dW": rows, "db": True}
            for name, one, two in zip(("out", "dx", "dW", "db"), runs[0], runs[1], strict=True):
                if same[name]:
                    assert (one.view(np.uint8) == two.view(np.uint8)).all(), f"{name} {n}x{n_in}"
    finally:
        siglayer.set_num_threads(before)


@pytest.mark.parametrize(
    "n, n_in, n_out",
    [(70, 1024, 12), (70, 512, 24), (70, 77, 33), (70, 2048, 64), (1100, 1024, 32)],
)
def test_convert_dx_by_row_combos_up_to_64_outputs(restore_threads, isa, n, n_in, n_out):
    """On the convert path dx takes row_combos up to 64 outputs from 16 rows, as the float
    layer's (W^T widened, its rows padded where they would crowd a few L1 sets: n_in 1024
    and 2048), rounded once: within the oracle's bounds, the same bits for one thread and
    two, and a row's bits in any batch of 16 rows or more (backward and
    backward_from_preactivation from the same dZ alike). 1100 x 1024 x 32 splits dZ's rows
    between two threads; the others, below 2**20 multiply-adds, run on one thread whatever
    the setting."""
    if isa == "baseline":
        pytest.skip("the portable loop leaves dx from 12 outputs to the float GEMM")
    before = _core.config()["bf16_gemm"]
    _core.select_bf16_gemm("convert")
    try:
        x, W, b = inputs(n, n_in, n_out, seed=n_in + n_out)
        dout = bf16(np.random.default_rng(n_out).standard_normal((n, n_out)))
        out = siglayer.forward(x, W, b)
        runs = []
        for t in (1, 2):
            siglayer.set_num_threads(t)
            runs.append(siglayer.backward(dout, x, W, out)[0].view(np.uint16))
        assert (runs[0] == runs[1]).all()
        o = f64(out)
        dZ_ref = f64(dout) * o * (1 - o)
        dx_ref = reference.backward_from_preactivation(dZ_ref, f64(x), f64(W))[0]
        b_dx = gradient_bounds(x, W, dZ_ref, dx_ref)[0]
        assert_bounded(runs[0].view(BF16), dx_ref, b_dx, "dx")
        dZ = np.asarray(dZ_ref, np.float32)
        whole = siglayer.backward_from_preactivation(dZ.astype(BF16), x, W)[0].view(np.uint16)
        for lo, hi in ((0, 16), (n - 16, n), (5, 22), (1, n - 2)):
            got = siglayer.backward_from_preactivation(dZ[lo:hi].astype(BF16), x[lo:hi], W)[0]
            assert (got.view(np.uint16) == whole[lo:hi]).all(), f"rows {lo}:{hi}"
        for lo, hi in ((0, 1), (3, 9), (n - 15, n)):  # the float GEMM below 16 rows
            part = dZ[lo:hi].astype(BF16)
            got = siglayer.backward_from_preactivation(part, x[lo:hi], W)[0]
            want = reference.backward_from_preactivation(f64(part), f64(x[lo:hi]), f64(W))[0]
            bound = gradient_bounds(x[lo:hi], W, f64(part), want)[0]
            assert_bounded(got, want, bound, f"dx rows {lo}:{hi}")
    finally:
        _core.select_bf16_gemm(before)


@pytest.mark.parametrize("n_out", [3, 600], ids=["few-outputs", "gemm"])
def test_db_and_dx_same_bits_for_any_thread_count(gemm_path, n_out):
    """4 or 8 blocks of rows (the last short), cut between 1 to 4 threads: backward's
    threads split dZ's rows on 2 and 4 threads, each computing dx for its rows, and its
    columns on 3 (layer_detail.hpp, rows_for_threads; bfloat16 only where n >= n_in);
    db is one thread's bits either way, with dx or without (where a missing barrier shows
    most: helper-84), and so is dx on siglayer's own GEMM and the few-output kernels (sums
    over k in a fixed order), against the oracle's bounds too."""
    # past the 2**20 multiply-adds below which one thread runs, with n >= n_in
    n, n_in = (3 * SUM_ROWS + 77, 16) if n_out > 12 else (7 * SUM_ROWS + 77, 400)
    x, W, b = inputs(n, n_in, n_out, seed=n_out)
    dout = bf16(np.random.default_rng(2).standard_normal((n, n_out)))
    before = siglayer.get_num_threads()
    try:
        siglayer.set_num_threads(1)
        out = siglayer.forward(x, W, b)
        want_dx, _, want_db = siglayer.backward(dout, x, W, out)
        o = f64(out)
        dZ_ref = f64(dout) * o * (1 - o)
        dx_ref, _, db_ref = reference.backward_from_preactivation(dZ_ref, f64(x), f64(W))
        b_dx, _, b_db = gradient_bounds(x, W, dZ_ref, dx_ref)
        for threads in (2, 3, 4):
            siglayer.set_num_threads(threads)
            for _ in range(10):  # a missing barrier shows only in some calls
                dx, _, db = siglayer.backward(dout, x, W, out)
                assert db.tobytes() == want_db.tobytes(), f"db, {threads} threads"
                if gemm_path != "blas" or n_out <= 12:
                    assert dx.tobytes() == want_dx.tobytes(), f"dx, {threads} threads"
                db_alone = siglayer.backward(dout, x, W, out, need_dx=False, need_dW=False)[2]
                assert db_alone.tobytes() == want_db.tobytes(), f"db alone, {threads} threads"
            assert_bounded(dx, dx_ref, b_dx, f"dx, {threads} threads")
            assert_bounded(db, db_ref, b_db, f"db, {threads} threads")
    finally:
        siglayer.set_num_threads(before)


@pytest.mark.parametrize("split", ["one-thread", "row-split"])
@pytest.mark.parametrize("n_out", [3, 19], ids=["few-outputs", "gemm"])
def test_backward_with_dout_and_out_in_different_layouts(gemm_path, restore_threads, n_out, split):
    """dout and out each in its own layout, x and W contiguous: dZ is the same elementwise
    whatever the layouts, so the gradients are the contiguous call's bits. A mutation
    review (helper-81) read out with dout's row step and got NaN on both GEMM paths, which
    no test saw: every layout test gave all arguments one layout. "row-split": 4 or 8
    blocks of 128 rows on two threads, where backward splits dZ's rows (a review,
    helper-84, read dout with out's row length there unseen)."""
    if split == "one-thread":
        n, n_in = 57, 40
    else:  # past the 2**20 multiply-adds below which one thread runs, with n >= n_in
        n, n_in = (3 * SUM_ROWS + 77, 130) if n_out > 12 else (7 * SUM_ROWS + 77, 400)
        siglayer.set_num_threads(2)
    x, W, b = inputs(n, n_in, n_out, seed=n_out)
    dout = bf16(np.random.default_rng(1).standard_normal((n, n_out)))
    out = siglayer.forward(x, W, b)
    want = siglayer.backward(dout, x, W, out)
    o = f64(out)
    dZ_ref = f64(dout) * o * (1 - o)
    dx_ref, dW_ref, db_ref = reference.backward_from_preactivation(dZ_ref, f64(x), f64(W))
    bounds = gradient_bounds(x, W, dZ_ref, dx_ref)
    for name, g, r, bd in zip(
        ("dx", "dW", "db"), want, (dx_ref, dW_ref, db_ref), bounds, strict=True
    ):
        assert_bounded(g, r, bd, name)
    for ld, dout_l in _bf16_layouts(dout).items():
        for lo, out_l in _bf16_layouts(out).items():
            got = siglayer.backward(dout_l, x, W, out_l)
            for name, g, w in zip(("dx", "dW", "db"), got, want, strict=True):
                assert g.tobytes() == w.tobytes(), f"{name}: dout {ld}, out {lo}"


@pytest.mark.parametrize("n_out", [3, 19], ids=["few-outputs", "gemm"])
def test_strided_bias(gemm_path, n_out):
    """A float32 or bfloat16 b with a step or a negative stride gives the contiguous b's
    bits (a mutation that read a bfloat16 b as contiguous went unseen: helper-81)."""
    x, W, b32 = inputs(33, 21, n_out, seed=3)
    for b in (b32, bf16(b32)):
        want = siglayer.forward(x, W, b)
        for given in (np.repeat(b, 2)[::2], np.ascontiguousarray(b[::-1])[::-1]):
            assert given.strides != b.strides
            got = siglayer.forward(x, W, given)
            assert got.tobytes() == want.tobytes(), (b.dtype, given.strides)
            np.testing.assert_array_equal(given, b)  # the input is left as it was


@pytest.mark.parametrize("layout", ["C", "x-F", "preactivation"])
@pytest.mark.parametrize("bound", [0.0, 5_000.0, 40_000.0, 100_000.0, 1e6])
@pytest.mark.parametrize(
    ("n", "n_in", "n_out"),
    [(1031, 33, 17), (1025, 33, 17), (4099, 64, 16), (2050, 20, 40), (700, 9, 100), (200, 16, 512)],
)
def test_convert_products_in_small_gemm_panels(threads, n, n_in, n_out, bound, layout):
    """On the convert path the float products run in panels for OpenBLAS's small-matrix
    kernels as the float layer's do (layer_bf16.cpp, gemm_panel_rows), forced here on any
    BLAS through _core.set_small_gemm. Forward's tiles in panels of bound / (n_in x the
    tile's columns) rows, a multiple of 8 and at least 8 (1031 x 33 x 17: 8, 64 and 176 at
    5 000, 40 000 and 100 000; 1025 x 33 x 17 a last panel of one row; 200 x 16 x 512 on two
    threads in tiles of 256 columns, panels of 24 at 100 000), x widened panel by panel
    (x-F: from columns); dW's batch, up to 64 outputs, in panels of bound / (n_in x n_out)
    rows added into dW (none at 100 or 512 outputs); none at 0, nor where the whole is
    under the bound. out and dW start as NaN: every value within the float64 oracle's
    bounds on the rounded inputs, so each panel was written, and the first dW panel over
    the NaN."""
    x, W, b = inputs(n, n_in, n_out, seed=n_out)
    if layout == "x-F":
        x = np.asfortranarray(x)
    out = np.full((n, n_out), np.nan, np.float32).astype(BF16)
    dW = np.full((n_in, n_out), np.nan, np.float32)
    rng = np.random.default_rng(2)
    dout = bf16(rng.standard_normal((n, n_out)))
    dZ = bf16(rng.standard_normal((n, n_out)) / 8)
    path = _core.config()["bf16_gemm"]
    before = _core.set_small_gemm(bound)
    try:
        _core.select_bf16_gemm("convert")
        assert _core.config()["small_gemm"] == bound
        siglayer.forward(x, W, b, out=out)
        if layout == "preactivation":
            got = siglayer.backward_from_preactivation(dZ, x, W, dW=dW)
        else:
            got = siglayer.backward(dout, x, W, out, dW=dW)
    finally:
        _core.set_small_gemm(before)
        _core.select_bf16_gemm(path)
    assert got[1] is dW
    out_ref = reference.forward(f64(x), f64(W), f64(b))
    assert_bounded(out, out_ref, forward_bound(x, W, out_ref), "out")
    if layout == "preactivation":
        dx_ref, dW_ref, db_ref = reference.backward_from_preactivation(f64(dZ), f64(x), f64(W))
        adZ = np.abs(f64(dZ))  # an input: no rounding of its own
        b_dW = 2 * (n + 4) * E * (np.abs(f64(x)).T @ adZ) + 1e-30
        b_db = 2 * (n + 4) * E * adZ.sum(axis=0) + 1e-30
        b_dx = U * np.abs(dx_ref) + (1 + U) * 2 * (n_out + 4) * E * (adZ @ np.abs(f64(W)).T)
        b_dx += 1e-30
    else:
        o = f64(out)
        dZ_ref = f64(dout) * o * (1 - o)
        dx_ref, dW_ref, db_ref = reference.backward_from_preactivation(dZ_ref, f64(x), f64(W))
        b_dx, b_dW, b_db = gradient_bounds(x, W, dZ_ref, dx_ref)
    assert_bounded(got[1], dW_ref, b_dW, "dW")
    assert_bounded(got[2], db_ref, b_db, "db")
    assert_bounded(got[0], dx_ref, b_dx, "dx")


def test_the_gemm_paths_agree_where_they_exist():
    paths = [path for path in GEMM_PATHS if gemm_path_missing(path) is None]
    if len(paths) < 2:
        pytest.skip(f"one path only ({paths}): no bfloat16 GEMM in the BLAS or the CPU")
    x, W, b = inputs(300, 200, 100)
    before = _core.config()["bf16_gemm"]
    results = {}
    try:
        for path in paths:
            _core.select_bf16_gemm(path)
            results[path] = siglayer.forward(x, W, b).astype(np.float64)
    finally:
        _core.select_bf16_gemm(before)
    # Same bfloat16 operands, float32 accumulation in another order: a rounding apart.
    for path in paths[1:]:
        assert np.abs(results[path] - results["convert"]).max() <= 2 * U, path


# --- errors ----------------------------------------------------------------------------


def test_bad_dtype_mixes_are_type_errors_naming_the_argument():
    x, W, b = inputs(8, 6, 4)
    with pytest.raises(TypeError, match=r"x has dtype float16.*float16 is not bfloat16"):
        siglayer.forward(x.astype(np.float16), W, b)
    assert b.dtype == np.float32  # a float32 b is allowed beside bfloat16 x and W
    with pytest.raises(
        TypeError,
        match=r"^x and W must share one dtype \(b may be float32 beside bfloat16 x and W\); "
        r"got x bfloat16, W float32, b float32$",
    ):
        siglayer.forward(x, W.astype(np.float32), b)
    with pytest.raises(TypeError, match="share one dtype; got x bfloat16, W float32, b bfloat16"):
        siglayer.forward(x, W.astype(np.float32), b.astype(BF16))
    # The rule for b said (the generic "share one dtype" did not: a new user's find).
    with pytest.raises(
        TypeError, match=r"^b has dtype float64; beside bfloat16 x and W, b is bfloat16 or float32$"
    ):
        siglayer.forward(x, W, b.astype(np.float64))
    with pytest.raises(TypeError, match="out has dtype bfloat16, expected float32"):
        siglayer.forward(
            f64(x).astype(np.float32), f64(W).astype(np.float32), b, out=np.empty((8, 4), BF16)
        )
    with pytest.raises(TypeError, match="out has dtype float32, expected bfloat16"):
        siglayer.forward(x, W, b, out=np.empty((8, 4), np.float32))
    out = siglayer.forward(x, W, b)
    with pytest.raises(TypeError, match="dW has dtype bfloat16, expected float32"):
        siglayer.backward(out, x, W, out, dW=np.empty((6, 4), BF16))
    with pytest.raises(TypeError, match="share one dtype; got dout float32"):
        siglayer.backward(out.astype(np.float32), x, W, out)


def test_losses_and_optimizers_take_float32_not_bfloat16():
    out = bf16(np.full((4, 3), 0.5))
    with pytest.raises(TypeError, match=r"out.*bfloat16.*float32"):
        siglayer.losses.mse_loss(out, out)
    p = siglayer.Parameter("W", bf16(np.zeros((2, 2))), bf16(np.zeros((2, 2))))
    with pytest.raises(TypeError, match="bfloat16"):
        siglayer.optim.SGD([p], lr=0.1).step()


# --- the mixed-precision layer -------------------------------------------------------------


def test_layer_keeps_float32_masters_and_computes_in_bfloat16():
    layer = siglayer.SigmoidLayer(20, 8, dtype="bfloat16", seed=0)
    assert layer.dtype == BF16 and layer.W.dtype == np.float32 and layer.b.dtype == np.float32
    assert "dtype=bfloat16" in repr(layer)
    layer.b[...] = np.linspace(-1, 1, 8, dtype=np.float32)
    x = bf16(np.random.default_rng(5).standard_normal((16, 20)))
    out = layer(x)
    # W rounded once per forward; b used in float32.
    want = siglayer.forward(x, layer.W.astype(BF16), layer.b)
    assert out.dtype == BF16 and (out.view(np.uint16) == want.view(np.uint16)).all()
    # A float32 x is rounded to bfloat16 once: the same as passing the rounded x.
    x32 = np.random.default_rng(6).standard_normal((16, 20)).astype(np.float32)
    assert (layer(x32).view(np.uint16) == layer(x32.astype(BF16)).view(np.uint16)).all()
    dout32 = np.random.default_rng(7).standard_normal((16, 8)).astype(np.float32)
    dx = layer.backward(dout32)
    dx_w, dW_w, db_w = siglayer.backward(
        dout32.astype(BF16), x32.astype(BF16), layer.W.astype(BF16), layer(x32.astype(BF16))
    )
    assert dx.dtype == BF16 and layer.dW.dtype == np.float32
    assert (dx.view(np.uint16) == dx_w.view(np.uint16)).all()
    assert (layer.dW == dW_w).all() and (layer.db == db_w).all()
    with pytest.raises(TypeError, match=r"x has dtype float64.*ml_dtypes.bfloat16"):
        layer(x32.astype(np.float64))


def test_layer_refuses_float64_saying_float32_is_rounded_by_design():
    # A bfloat16 layer rounds float32 by design, float64 never: the message says both.
    mixed = siglayer.SigmoidLayer(4, 3, seed=0, dtype="bfloat16")
    with pytest.raises(
        TypeError,
        match=r"^x has dtype float64 but this bfloat16 layer takes bfloat16, or float32 "
        r"\(which it rounds to bfloat16, as documented\); pass x\.astype\(np\.float32\) or "
        r"x\.astype\(ml_dtypes\.bfloat16\): a float64 is never rounded silently$",
    ):
        mixed(np.ones((2, 4)))
    mixed(np.ones((2, 4), np.float32))
    with pytest.raises(TypeError, match=r"^dout has dtype float64 but this bfloat16 layer"):
        mixed.backward(np.ones((2, 3)))


@pytest.mark.parametrize("kind", ["masked", "matrix"])
def test_layer_refuses_float32_masked_and_matrix_inputs(kind):
    """A bfloat16 layer rounds a float32 x, dout or dZ in Python before the core sees it:
    a masked array or np.matrix is refused there as the core refuses it (a review found the
    mask silently dropped, the masked rows computed)."""
    wrap = {
        "masked": lambda a: np.ma.masked_array(a, mask=np.ones(a.shape, bool)),
        "matrix": lambda a: a.view(np.matrix),
    }[kind]
    # numpy.ma.core.MaskedArray on NumPy 1.x
    name = {"masked": r"numpy\.ma\.(core\.)?MaskedArray", "matrix": r"numpy\.matrix"}[kind]
    layer = siglayer.SigmoidLayer(3, 2, dtype="bfloat16", seed=0)
    x = np.ones((4, 3), np.float32)
    with pytest.raises(TypeError, match=rf"^x must be a plain numpy\.ndarray, got {name}"):
        layer(wrap(x))
    out = layer(x).copy()
    W_before, dW_before = layer.W.copy(), layer.dW.copy()
    for method, arg in (("backward", "dout"), ("backward_from_preactivation", "dZ")):
        with pytest.raises(TypeError, match=rf"^{arg} must be a plain numpy\.ndarray, got {name}"):
            getattr(layer, method)(wrap(np.ones((4, 2), np.float32)))
    assert (layer.W == W_before).all() and (layer.dW == dW_before).all()
    # The layer still holds the good forward: a backward after the refusals is the oracle's.
    dx = layer.backward(np.ones((4, 2), np.float32))
    want = siglayer.backward(bf16(np.ones((4, 2))), bf16(x), layer.W.astype(BF16), out)
    assert (dx.view(np.uint16) == want[0].view(np.uint16)).all()


@pytest.mark.parametrize("failure", ["out-dtype", "own-output"])
def test_a_failed_forward_leaves_the_last_copy_of_W(failure):
    """backward uses the bfloat16 copy of W that the last successful forward multiplied: a
    forward that raises (after the masters changed) must not replace it (a review found the
    copy made before the call's checks, so later gradients used the new W)."""
    layer = siglayer.SigmoidLayer(3, 3, dtype="bfloat16", seed=0, reuse_buffers=True)
    x = bf16(np.random.default_rng(3).standard_normal((4, 3)))
    out = layer(x)
    W_used = layer.W.astype(BF16)
    layer.W -= 0.5  # as an optimizer step would
    with pytest.raises((TypeError, ValueError)):
        if failure == "out-dtype":
            layer(x, out=np.empty((4, 3), np.float32))
        else:  # the layer's own output buffer as x: refused, it would be overwritten
            layer(out)
    dout = bf16(np.random.default_rng(4).standard_normal((4, 3)))
    dx = layer.backward(dout)
    want_dx = siglayer.backward(dout, x, W_used, out)[0]
    assert (dx.view(np.uint16) == want_dx.view(np.uint16)).all()
    z = layer.preactivation()
    assert np.allclose(z, x.astype(np.float32) @ W_used.astype(np.float32) + layer.b, atol=1e-6)
    # The next successful forward takes the new masters.
    layer(x)
    dx_new = layer.backward(dout)
    want_new = siglayer.backward(dout, x, layer.W.astype(BF16), layer(x).copy())[0]
    assert (dx_new.view(np.uint16) == want_new.view(np.uint16)).all()


@pytest.mark.parametrize("reuse", [True, False], ids=["reuse", "fresh"])
def test_a_failed_forward_leaves_the_last_rounded_x(reuse):
    """A float32 x is rounded into a buffer of the layer's with reuse_buffers=True (two per
    shape, taken in turn): a forward that raises after rounding a new x of the same shape
    must leave the x of the last successful forward, which backward reads, as it was."""
    layer = siglayer.SigmoidLayer(3, 2, dtype="bfloat16", seed=0, reuse_buffers=reuse)
    rng = np.random.default_rng(5)
    x1, x2, x3 = (rng.standard_normal((4, 3)).astype(np.float32) for _ in range(3))
    out = layer(x1).copy()
    with pytest.raises(TypeError, match="out"):
        layer(x2, out=np.empty((4, 2), np.float32))
    dout = rng.standard_normal((4, 2)).astype(np.float32)
    _, dW, db = siglayer.backward(bf16(dout), bf16(x1), layer.W.astype(BF16), out)
    layer.backward(dout, need_dx=False)
    assert (layer.dW == dW).all() and (layer.db == db).all()
    for x in (x2, x3, x1):  # buffers taken in turn: each forward's own x is read
        out = layer(x).copy()
        _, dW, _ = siglayer.backward(bf16(dout), bf16(x), layer.W.astype(BF16), out)
        layer.backward(dout, need_dx=False)
        assert (layer.dW == dW).all()


def test_optimizer_updates_the_float32_masters():
    net = siglayer.Sequential(
        siglayer.SigmoidLayer(10, 6, dtype="bfloat16", seed=1),
        siglayer.SigmoidLayer(6, 3, dtype="bfloat16", seed=2),
    )
    opt = siglayer.optim.SGD(net.parameters(), lr=0.5)
    W0 = net[0].W.copy()
    x = np.random.default_rng(8).standard_normal((32, 10)).astype(np.float32)
    out = net(x)
    assert out.dtype == BF16
    net.backward(np.ones((32, 3), np.float32))
    dW = net[0].dW.copy()
    opt.step()
    # Exactly the float32 update of the float32 master, not a bfloat16 round trip.
    assert (net[0].W == (W0 - np.float32(0.5) * dW)).all()
    assert np.abs(dW).max() > 0


def test_bf16_gemm_switch_from_the_environment():
    code = textwrap.dedent(
        """
        import siglayer
        print(siglayer._core.config()["bf16_gemm"], siglayer.show_config(mode="dicts")["bf16_gemm"])
        """
    )
    env = {**os.environ, "SIGLAYER_BF16_GEMM": "convert"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("convert convert (float32 GEMM on widened operands")
    # Where the own GEMM runs, convert is only ever forced, and the line says so.
    assert ("the CPU has AVX512-BF16)" in done.stdout) == _core.config()["bf16_gemm_own"]
    env["SIGLAYER_BF16_GEMM"] = "fastest"
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0
    assert "SIGLAYER_BF16_GEMM='fastest'" in done.stderr
    assert "auto, blas, avx512bf16, convert" in done.stderr
    env["SIGLAYER_BF16_GEMM"] = "avx512bf16"
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    if _core.config()["bf16_gemm_own"]:
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("avx512bf16 avx512bf16 (siglayer's bfloat16 GEMM")
    else:
        assert done.returncode != 0
        assert "SIGLAYER_BF16_GEMM='avx512bf16'" in done.stderr and "AVX512-BF16" in done.stderr
    # SIGLAYER_BF16_GEMM=blas in a build without a bfloat16 GEMM: tests/test_mkl_runtime.py.


def test_gradients_in_bfloat16_on_request():
    x, W, b = inputs(40, 24, 16, seed=9)
    out = siglayer.forward(x, W, b)
    dout = bf16(np.random.default_rng(10).standard_normal(out.shape))
    dx, dW, db = siglayer.backward(dout, x, W, out)
    dx16, dW16, db16 = siglayer.backward(dout, x, W, out, grad_dtype="bfloat16")
    assert (dW16.dtype, db16.dtype) == (BF16, BF16)
    # Exactly the float32 gradients rounded once, dx untouched.
    assert (dW16.view(np.uint16) == dW.astype(BF16).view(np.uint16)).all()
    assert (db16.view(np.uint16) == db.astype(BF16).view(np.uint16)).all()
    assert (dx16.view(np.uint16) == dx.view(np.uint16)).all()
    # Into the caller's bfloat16 buffers; and from the pre-activation too.
    dW_buf, db_buf = np.empty(W.shape, BF16), np.empty(16, BF16)
    _, dW_r, db_r = siglayer.backward_from_preactivation(
        dout, x, W, grad_dtype=BF16, dW=dW_buf, db=db_buf
    )
    assert dW_r is dW_buf and db_r is db_buf
    _, dW_p, _ = siglayer.backward_from_preactivation(dout, x, W)
    assert (dW_buf.view(np.uint16) == dW_p.astype(BF16).view(np.uint16)).all()
    # float32 is the default; anything else is refused, naming grad_dtype.
    assert siglayer.backward(dout, x, W, out, grad_dtype=np.float32)[1].dtype == np.float32
    with pytest.raises(TypeError, match=r"grad_dtype is float64 but for bfloat16 inputs"):
        siglayer.backward(dout, x, W, out, grad_dtype=np.float64)
    x32 = f64(x).astype(np.float32)
    with pytest.raises(TypeError, match=r"grad_dtype is bfloat16 but for float32 inputs"):
        siglayer.backward(
            dout.astype(np.float32),
            x32,
            x32[:24, :16].copy(),
            out.astype(np.float32),
            grad_dtype="bfloat16",
        )
    # An x that is no array is x's error, not grad_dtype's (which named "None inputs").
    with pytest.raises(TypeError, match=r"x must be a numpy\.ndarray, got list"):
        siglayer.backward(dout, f64(x).tolist(), W, out, grad_dtype=np.float32)
    # A buffer of the other grad_dtype's dtype: the error says which grad_dtype it fits
    # (a review, helper-88, found no hint); in backward_from_preactivation too.
    fits_float32 = r"grad_dtype='bfloat16' rounds dW and db into bfloat16 buffers; drop it"
    fits_bfloat16 = r"a bfloat16 call returns dW and db in float32; pass grad_dtype='bfloat16'"
    dZ = bf16(np.ones(out.shape))
    for call in (
        lambda kw: siglayer.backward(dout, x, W, out, **kw),
        lambda kw: siglayer.backward_from_preactivation(dZ, x, W, **kw),
    ):
        with pytest.raises(
            TypeError, match=rf"^dW has dtype float32, expected bfloat16: {fits_float32}"
        ):
            call({"grad_dtype": "bfloat16", "dW": np.empty(W.shape, np.float32)})
        with pytest.raises(
            TypeError, match=rf"^db has dtype float32, expected bfloat16: {fits_float32}"
        ):
            call({"grad_dtype": "bfloat16", "db": np.empty(W.shape[1], np.float32)})
        with pytest.raises(
            TypeError, match=rf"^dW has dtype bfloat16, expected float32: {fits_bfloat16}"
        ):
            call({"dW": np.empty(W.shape, BF16)})
        with pytest.raises(
            TypeError, match=rf"^db has dtype bfloat16, expected float32: {fits_bfloat16}"
        ):
            call({"db": np.empty(W.shape[1], BF16)})
        with pytest.raises(TypeError, match=r"^dW has dtype float64, expected float32$"):
            call({"dW": np.empty(W.shape, np.float64)})  # fits neither: no hint


# (n, n_in, n_out): each way a tile of dW is summed before it is rounded. 40 x 24 x 16
# and 300 x 40 x 96: dW^T on siglayer's own GEMM (up to 128 outputs), 300 x 200 x 160 the
# plain product (on two threads, two tiles of dW's rows), 37 x 19 x 3 the few-output
# kernels (col_dots), 0 x 8 x 4 an empty batch (zeros), 5 x 0 x 4 no inputs (dW empty).
ROUNDED_SHAPES = [(40, 24, 16), (300, 40, 96), (300, 200, 160), (37, 19, 3), (0, 8, 4), (5, 0, 4)]


@pytest.mark.parametrize("n, n_in, n_out", ROUNDED_SHAPES)
@pytest.mark.parametrize("method", ["backward", "backward_from_preactivation"])
def test_rounded_gradients_are_the_float32_ones_rounded_once(
    gemm_path, threads, method, n, n_in, n_out
):
    """grad_dtype='bfloat16' returns dW and db rounded once from their float32 sums. The
    oracle is the float32 call's result rounded by ml_dtypes: bit for bit, on every GEMM
    path, way of summing dW and thread count; dx unchanged; the caller's buffers filled."""
    x, W, b = inputs(n, n_in, n_out, seed=n + n_in + n_out)
    out = siglayer.forward(x, W, b)
    dout = bf16(np.random.default_rng(31).standard_normal(out.shape))
    call = getattr(siglayer, method)
    args = (dout, x, W, out) if method == "backward" else (dout, x, W)
    dx, dW, db = call(*args)
    dx16, dW16, db16 = call(*args, grad_dtype="bfloat16")
    assert (dW16.dtype, db16.dtype, dW16.shape, db16.shape) == (BF16, BF16, W.shape, (n_out,))
    assert (dW16.view(np.uint16) == dW.astype(BF16).view(np.uint16)).all()
    assert (db16.view(np.uint16) == db.astype(BF16).view(np.uint16)).all()
    assert (dx16.view(np.uint16) == dx.view(np.uint16)).all()
    if n > 0 and n_in > 0:
        assert np.abs(f64(dW16)).max() > 0  # a case with something to round
    # Without dW, db alone is rounded; with the caller's buffers, those are filled.
    _, none, db_only = call(*args, need_dW=False, grad_dtype="bfloat16")
    assert none is None and (db_only.view(np.uint16) == db16.view(np.uint16)).all()
    dW_buf, db_buf = np.full(W.shape, np.nan, BF16), np.full(n_out, np.nan, BF16)
    _, dW_r, db_r = call(*args, grad_dtype="bfloat16", dW=dW_buf, db=db_buf)
    assert dW_r is dW_buf and db_r is db_buf
    assert (dW_buf.view(np.uint16) == dW16.view(np.uint16)).all()
    assert (db_buf.view(np.uint16) == db16.view(np.uint16)).all()


def _bf16_buffers_case(case):
    """(kwargs, inputs and buffers to watch) for one wrong set of bfloat16 gradient
    buffers, all views of one sentinel-filled backing array where they overlap."""
    x, W, b = inputs(5, 8, 4, seed=21)
    out = siglayer.forward(x, W, b)
    dout = bf16(np.random.default_rng(22).standard_normal(out.shape))
    backing = np.full(96, 7.0, BF16)
    args = {"dout": dout, "x": x, "W": W, "out": out}
    if case == "dW-overlaps-dx":
        args |= {"dx": backing[:40].reshape(5, 8), "dW": backing[8:40].reshape(8, 4)}
    elif case == "db-overlaps-dW":
        args |= {"dW": backing[:32].reshape(8, 4), "db": backing[30:34]}
    elif case == "dW-is-W":
        args |= {"dW": W}
    elif case == "db-wrong-shape-after-dx":  # dx valid, db not: nothing may be written
        args |= {"dx": backing[:40].reshape(5, 8), "db": backing[40:43]}
    elif case == "dW-F-order":
        args |= {"dW": np.asfortranarray(backing[:32].reshape(8, 4))}
    return args, [backing, x, W, dout, out]


@pytest.mark.parametrize(
    "case, error, message",
    [
        ("dW-overlaps-dx", ValueError, r"dx overlaps dW"),
        ("db-overlaps-dW", ValueError, r"dW overlaps db"),
        ("dW-is-W", ValueError, r"dW overlaps W"),
        ("db-wrong-shape-after-dx", ValueError, r"db has shape \(3,\), expected \(4,\)"),
        ("dW-F-order", ValueError, r"dW must be C-contiguous"),
    ],
)
def test_bfloat16_gradient_buffers_are_checked_before_anything_is_written(case, error, message):
    """grad_dtype='bfloat16' buffers get every rule of the float32 ones (overlap with
    the inputs, dx and each other; shape; layout), checked before the core runs: the
    error names the buffer, and no buffer or input changes."""
    args, watch = _bf16_buffers_case(case)
    before = [a.copy() for a in watch]
    with pytest.raises(error, match=message):
        siglayer.backward(**args, grad_dtype="bfloat16")
    for a, b in zip(watch, before, strict=True):
        assert (a.view(np.uint16) == b.view(np.uint16)).all()


def test_out_overlapping_a_bfloat16_bias_is_refused():
    """A bfloat16 b is widened to float32 for the core; out is still checked against
    the caller's b (it was overwritten)."""
    x, W, _ = inputs(1, 8, 4, seed=23)
    backing = bf16(np.arange(8.0))
    b = backing[:4]
    with pytest.raises(ValueError, match=r"out overlaps b"):
        siglayer.forward(x, W, b, out=backing[2:6].reshape(1, 4))
    assert (f64(backing) == np.arange(8.0)).all()


def test_compare_uses_the_float64_oracle_for_bfloat16():
    x, W, b = inputs(64, 32, 16, seed=11)
    # Given arrays, or drawn ones of dtype "bfloat16" as SigmoidLayer and grad_dtype take
    # it (a review found compare alone refusing the name).
    for errors in (siglayer.compare(x, W, b), siglayer.compare(dtype="bfloat16", seed=11)):
        # out is one rounding from the float64 oracle; the gradients a few (module docstring).
        assert errors["out"].max_abs <= U
        for key in ("dx", "dW", "db"):
            assert errors[key].max_rel <= 4 * U, (key, errors[key])


def test_compare_takes_the_name_bfloat16_before_ml_dtypes_is_imported():
    """NumPy knows the name "bfloat16" once ml_dtypes is imported (as in this file), so the
    name is tried in a process of its own, where only siglayer can import it: compare
    raised NumPy's 'data type not understood' there."""
    code = (
        "import sys, siglayer\n"
        "assert 'ml_dtypes' not in sys.modules\n"
        "e = siglayer.compare(dtype='bfloat16', n=16, n_in=8, n_out=4)\n"
        "assert e['out'].max_abs <= 2.0**-8, e\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
