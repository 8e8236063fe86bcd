"""bfloat16 products through every path this machine has (blas::Bf16Gemm): convert
everywhere, MKL's GEMM where loaded, siglayer's own AVX512-BF16 GEMM (gemm_bf16.cpp) where
the CPU has it, each skipped with the reason elsewhere.

Oracle: the float64 product of the bfloat16 values. Bound: each product of two bfloat16
values is exact in float32 and the sum of K of them errs by at most about K float32
roundings, 2 (K + 4) 2**-24 (|a| @ |b|); plus K 2**-126 for the bfloat16 instructions,
which flush subnormal products to zero (docs/bfloat16.md).

The shapes cross every blocking boundary of the own GEMM (kMR = 12 rows, kNR = 32
columns, kMC = 144, kKC = 512, kNC = 512 in gemm_bf16.hpp), odd K (a half pair), and all
four stored layouts of A and B; and both of its narrow-product departures: narrow tiles
(a sliver of B with at most 8, 16 or 24 columns multiplies only those, in zmm and ymm
registers) and A's rows read in place rather than packed (at most 128 columns of B in a
block, or a block of k of at most 64).
"""

from __future__ import annotations

import numpy as np
import pytest

from siglayer import _core

ml_dtypes = pytest.importorskip("ml_dtypes", reason="bfloat16 needs ml-dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)

SHAPES = [
    (1, 1, 1),
    (12, 32, 2),  # one register tile, one pair
    (13, 33, 3),  # a tile and a row/column past it, a half pair
    (37, 45, 71),
    (145, 545, 1025),  # past kMC, kNC and two kKC blocks
    (300, 64, 1536),  # three k blocks
    (25, 16, 67),  # half tiles only; A's rows read in place (two slivers, then packed rows)
    (40, 300, 48),  # short k: A's rows in place past four slivers of B, the last a half
    (30, 8, 70),  # 8-lane (ymm) tiles only
    (29, 56, 45),  # a whole sliver, then 24 columns: a zmm and a ymm register
    (20, 88, 600),  # 24 columns left, summed over two blocks of k (C read back)
]


def paths() -> list[tuple[str, str | None]]:
    c = _core.config()
    return [
        ("convert", None),
        ("blas", None if c["bf16_gemm_in_blas"] else "no bfloat16 GEMM in the BLAS"),
        ("avx512bf16", None if c["bf16_gemm_own"] else "the CPU lacks AVX512-BF16"),
    ]


@pytest.fixture(params=[p for p, _ in paths()])
def path(request: pytest.FixtureRequest):
    reason = dict(paths())[request.param]
    if reason:
        pytest.skip(reason)
    before = _core.config()["bf16_gemm"]
    _core.select_bf16_gemm(request.param)
    yield request.param
    _core.select_bf16_gemm(before)


def bound(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    abs_ab = np.abs(a.astype(np.float64)) @ np.abs(b.astype(np.float64))
    return 2 * (k + 4) * 2.0**-24 * abs_ab + k * 2.0**-126


def stored(a: np.ndarray, trans: bool, layout: str) -> np.ndarray:
    s = a.T if trans else a
    return np.ascontiguousarray(s) if layout == "C" else np.asfortranarray(s)


@pytest.mark.parametrize("layout", ["C", "F"])
@pytest.mark.parametrize(
    ("trans_a", "trans_b"),
    [(False, False), (True, False), (False, True), (True, True)],
    ids=["NN", "TN", "NT", "TT"],
)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_products_against_float64(path, threads, shape, trans_a, trans_b, layout):
    M, N, K = shape
    rng = np.random.default_rng(M * 7 + N * 3 + K)
    a = rng.standard_normal((M, K)).astype(np.float32).astype(BF16)
    b = rng.standard_normal((K, N)).astype(np.float32).astype(BF16)
    A, B = stored(a, trans_a, layout), stored(b, trans_b, layout)
    before = A.copy(), B.copy()
    out = np.full((M, N), np.nan, np.float32)  # never read: beta is 0
    C = _core.gemm(A, B, trans_a, trans_b, out)
    assert C is out
    want = a.astype(np.float64) @ b.astype(np.float64)
    err = np.abs(C.astype(np.float64) - want)
    worst = err - bound(a, b, K)
    assert np.isfinite(C).all()
    assert worst.max() <= 0, f"{path}: error {err.max():.3e} past its bound by {worst.max():.3e}"
    assert (A.view(np.uint16) == before[0].view(np.uint16)).all()
    assert (B.view(np.uint16) == before[1].view(np.uint16)).all()


def test_exact_products_are_exact(path):
    # Small integers: every product and every partial sum is exact in float32, so any order
    # of additions gives the exact result (a hand-checkable oracle).
    rng = np.random.default_rng(5)
    a = rng.integers(-8, 9, size=(50, 700)).astype(np.float32).astype(BF16)
    b = rng.integers(-8, 9, size=(700, 70)).astype(np.float32).astype(BF16)
    C = _core.gemm(a, b)
    want = a.astype(np.int64) @ b.astype(np.int64)
    assert (C == want).all()
    assert _core.gemm(a[:1, :1], b[:1, :1])[0, 0] == float(a[0, 0]) * float(b[0, 0])


@pytest.mark.parametrize("n", [5, 8, 9, 16, 17, 24, 33, 40, 57, 64, 128])
@pytest.mark.parametrize("k", [63, 700])
def test_narrow_products_give_the_bits_of_wide_ones(path, n, k):
    """Each entry of C is one chain of products in the order of k, whatever tile holds it:
    a narrow product (the own GEMM's half tiles and rows of A read in place, at most 128
    columns or k <= 64) gives the bits of the same columns of a wide one (full tiles, A
    packed). The own GEMM's property: a BLAS's edge kernels sum in other orders."""
    if path != "avx512bf16":
        pytest.skip("siglayer's own GEMM only (OpenBLAS's sgemm edge columns differ)")
    rng = np.random.default_rng(n + k)
    a = rng.standard_normal((40, k)).astype(np.float32).astype(BF16)
    b = rng.standard_normal((k, 300)).astype(np.float32).astype(BF16)
    wide = _core.gemm(a, b)
    narrow = _core.gemm(a, np.ascontiguousarray(b[:, :n]))
    assert (narrow.view(np.uint32) == wide[:, :n].view(np.uint32)).all()


@pytest.mark.parametrize("m", [1, 4, 5, 8, 12, 13, 16, 20, 24])
@pytest.mark.parametrize("k", [7, 64, 1025])
@pytest.mark.parametrize("n", [3, 16, 20, 32, 77, 90, 512, "view"])
@pytest.mark.parametrize("trans_a", [False, True], ids=["AN", "AT"])
def test_b_read_in_place_gives_the_bits_of_b_packed(path, m, k, n, trans_a):
    """The own GEMM reads B's rows in place (pairing them in the microkernel, in shuffled
    lanes put back before the store) when A has at most 24 rows and B's rows lie at most
    512 elements apart, and packs B otherwise: the first m rows of a 100-row product (B
    packed) are the bits of the m-row product (B read in place), over odd k, two blocks of
    k, slivers of 8, 16, 24 and 32 lanes (3, 16, 20 columns; 77 and 90 past whole slivers),
    a whole 512-column block, B's rows further apart than its columns (a view of 45 of 130
    columns), A read in place or packed."""
    if path != "avx512bf16":
        pytest.skip("siglayer's own GEMM only")
    rng = np.random.default_rng(m * 1000 + k + (n if isinstance(n, int) else 7))
    a = rng.standard_normal((100, k)).astype(np.float32).astype(BF16)
    if n == "view":
        b = rng.standard_normal((k, 130)).astype(np.float32).astype(BF16)[:, 40:85]
        assert b.strides[0] == 260
    else:
        b = rng.standard_normal((k, n)).astype(np.float32).astype(BF16)
    A = stored(a, trans_a, "C")
    packed = _core.gemm(A, b, trans_a)
    rows = np.ascontiguousarray(A[:, :m] if trans_a else A[:m])
    in_place = _core.gemm(rows, b, trans_a)
    assert (in_place.view(np.uint32) == packed[:m].view(np.uint32)).all()
    want = a[:m].astype(np.float64) @ b.astype(np.float64)
    assert (np.abs(in_place - want) <= bound(a[:m], b, k)).all()


_GUARDED = r"""
import ctypes, mmap, sys
import numpy as np, ml_dtypes
from siglayer import _core

BF16 = np.dtype(ml_dtypes.bfloat16)
libc = ctypes.CDLL(None, use_errno=True)
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
PAGE = mmap.PAGESIZE
keep = []

def guarded(a):
    # a copy of a whose last byte is the last before a page that may not be read
    size = (a.nbytes + PAGE - 1) // PAGE * PAGE
    region = mmap.mmap(-1, size + PAGE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(region))
    assert libc.mprotect(base + size, PAGE, 0) == 0, ctypes.get_errno()
    keep.append(region)
    out = np.frombuffer(region, np.uint8, a.nbytes, size - a.nbytes).view(a.dtype)
    out = out.reshape(a.shape)
    out[...] = a
    return out

rng = np.random.default_rng(0)
for m, k, n in [(1, 3, 3), (5, 7, 16), (13, 65, 20), (24, 1025, 77), (20, 33, 100), (3, 2, 8)]:
    a = rng.standard_normal((m, k)).astype(np.float32).astype(BF16)
    b = rng.standard_normal((k, n)).astype(np.float32).astype(BF16)
    want = _core.gemm(a, b)
    for A in (guarded(a), guarded(np.ascontiguousarray(a.T)).T):
        got = _core.gemm(A, guarded(b))
        assert (got.view(np.uint32) == want.view(np.uint32)).all(), (m, k, n)
print("ok")
"""


def test_b_read_in_place_stays_inside_b(path, tmp_path):
    """B read in place loads 8, 16 or 32 columns of two rows at a time under a mask: B (and
    A) placed so that their last byte is the last before an unreadable page, in a child
    process (a read past them is a segmentation fault there, not here). AddressSanitizer
    does not see masked loads, so this is the test that does."""
    if path != "avx512bf16":
        pytest.skip("siglayer's own GEMM only")
    import os
    import subprocess
    import sys

    script = tmp_path / "guarded.py"
    script.write_text(_GUARDED)
    env = {**os.environ, "SIGLAYER_BF16_GEMM": "avx512bf16"}
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", (done.returncode, done.stderr)


@pytest.mark.parametrize("trans", [False, True], ids=["N", "T"])
def test_nan_and_inf_propagate(path, trans):
    # K odd, with infinities in the last k (the half pair that packing pads with zeros:
    # padding that held anything but zeros would turn inf into NaN here).
    a = np.ones((20, 41), np.float32)
    b = np.ones((41, 36), np.float32)
    a[3, 5], b[7, 30], a[10, 40], b[40, 20] = np.nan, np.inf, np.inf, -np.inf
    A, B = stored(a.astype(BF16), trans, "C"), stored(b.astype(BF16), trans, "C")
    C = _core.gemm(A, B, trans, trans)
    with np.errstate(invalid="ignore"):
        want = a.astype(np.float64) @ b.astype(np.float64)
    assert (np.isnan(C) == np.isnan(want)).all()
    assert (C[~np.isnan(want)] == want[~np.isnan(want)]).all()
    assert np.isnan(C[3]).all() and C[10, 0] == np.inf and C[10, 20] == C[0, 20] == -np.inf


def test_the_own_gemm_switch_refuses_a_cpu_without_it():
    if _core.config()["bf16_gemm_own"]:
        pytest.skip("this CPU has AVX512-BF16: the switch is accepted (tests above)")
    with pytest.raises(ValueError, match="needs a CPU with AVX512-BF16"):
        _core.select_bf16_gemm("avx512bf16")


@pytest.mark.parametrize("layout", ["C", "F"])
@pytest.mark.parametrize(
    "shape",
    [
        (1100, 300, 200),
        (2048, 96, 700),
        (1000, 256, 12),
        (517, 70, 16),
        (300, 40, 41),
        (24, 6000, 100),
        (600, 70, 5),  # the fewest outputs the own GEMM takes (kOwnGemmOutputs)
        (200, 86, 20),  # out and dx in 24-lane tiles (dx rounded from a ymm register)
    ],
    ids=lambda s: "x".join(map(str, s)),
)
def test_the_layer_multiplies_as_the_bare_gemm(threads, shape, layout):
    """On siglayer's own GEMM each element's sum runs over k in the same blocks whatever the
    tiling: the layer's forward and dx are exactly the bare product's bits rounded once
    (B packed once for all the panels of a tile; dx rounded as the GEMM stores it, up to
    512 outputs), and dW the bare x^T . dZ's bits (computed as dZ^T . x, transposed, up to
    128 outputs, in chunks of 2048 or more columns of x: 6000 x 100 takes three), with x and
    dZ C- or F-ordered."""
    if not _core.config()["bf16_gemm_own"]:
        pytest.skip("the CPU lacks AVX512-BF16")
    n, n_in, n_out = shape
    rng = np.random.default_rng(11)
    order = {"C": np.ascontiguousarray, "F": np.asfortranarray}[layout]
    x = order(rng.standard_normal((n, n_in)).astype(np.float32).astype(BF16))
    W = (rng.standard_normal((n_in, n_out)) / 16).astype(np.float32).astype(BF16)
    b = rng.standard_normal(n_out).astype(np.float32)
    dZ = order((rng.standard_normal((n, n_out)) / 4).astype(np.float32).astype(BF16))
    before = _core.config()["bf16_gemm"]
    _core.select_bf16_gemm("avx512bf16")
    try:
        out = _core.forward(x, W, b)
        dx, dW, _ = _core.backward_from_preactivation(dZ, x, W)
        z = _core.gemm(x, W) + b
        want_out = _core.to_bfloat16(_core.sigmoid(z))
        want_dx = _core.to_bfloat16(_core.gemm(dZ, W, False, True))
        want_dW = _core.gemm(x, dZ, True, False)
    finally:
        _core.select_bf16_gemm(before)
    assert (out.view(np.uint16) == want_out.view(np.uint16)).all()
    assert (dx.view(np.uint16) == want_dx.view(np.uint16)).all()
    assert (dW.view(np.uint32) == want_dW.view(np.uint32)).all()
