"""The derivation, checked: jacobian, gradcheck, docs/derivation.md, `python -m siglayer explain`.

Oracles: finite differences of forward, siglayer.reference, hand values, and the
contractions sum_ij G[i,j] J[i,j,...] that backward claims to compute.
"""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import siglayer
from siglayer import __main__ as cli
from siglayer import _derivation, reference
from siglayer._compare import _errors

DOC = Path(__file__).resolve().parents[1] / "docs" / "derivation.md"

# float64 contractions of a few terms: both sides are within a few ulp of the exact value.
CONTRACTION_TOL = 1e-12

# (n, n_in, n_out): scalar, tiny, rectangular both ways, one input, an empty batch.
SHAPES = [(1, 1, 1), (2, 3, 2), (5, 4, 3), (7, 13, 5), (3, 1, 6), (0, 3, 2)]
SHAPE_IDS = [f"n{n}-in{i}-out{o}" for n, i, o in SHAPES]


def problem(seed: int, n: int, n_in: int, n_out: int, dtype: type = np.float64):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, n_in)).astype(dtype)
    W = (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(dtype)
    b = rng.standard_normal(n_out).astype(dtype)
    G = rng.standard_normal((n, n_out)).astype(dtype)
    return x, W, b, G


def contract(G: np.ndarray, J_W: np.ndarray, J_b: np.ndarray, J_x: np.ndarray):
    """sum over (i, j) of G[i, j] * J[i, j, ...]: the vector-Jacobian products."""
    return (
        np.einsum("ij,ijpk->pk", G, J_x),
        np.einsum("ij,ijkl->kl", G, J_W),
        np.einsum("ij,ijl->l", G, J_b),
    )


# --- jacobian -------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "n_in", "n_out"), SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("b_shape", ["b1d", "b2d"])
def test_contracted_jacobians_equal_backward(n, n_in, n_out, b_shape):
    x, W, b, G = problem(n + 10 * n_in + 100 * n_out, n, n_in, n_out)
    if b_shape == "b2d":
        b = b.reshape(1, n_out)
    J_W, J_b, J_x = siglayer.jacobian(x, W, b)
    assert J_W.shape == (n, n_out, n_in, n_out)
    assert J_b.shape == (n, n_out, n_out)
    assert J_x.shape == (n, n_out, n, n_in)
    contracted = contract(G, J_W, J_b, J_x)

    out = siglayer.forward(x, W, b)
    ref_out = reference.forward(x, W, b)
    for source, got in (
        ("siglayer", siglayer.backward(G, x, W, out)),
        ("reference", reference.backward(G, x, W, ref_out)),
    ):
        for name, from_J, from_backward in zip(("dx", "dW", "db"), contracted, got, strict=True):
            assert from_backward is not None
            assert from_J.shape == from_backward.shape, (source, name)
            error = _errors(from_J, from_backward).max_rel
            assert error <= CONTRACTION_TOL, f"{name} vs {source}.backward: {error:.2e}"


def test_contraction_with_ones_is_the_textbook_formula():
    x, W, b, _ = problem(3, 6, 4, 3)
    J_W, _, _ = siglayer.jacobian(x, W, b)
    out = reference.forward(x, W, b)
    textbook = x.T @ (out * (1 - out))  # (n_in, n_out)
    assert _errors(J_W.sum(axis=(0, 1)), textbook).max_rel <= CONTRACTION_TOL


def test_torch_linear_weight_grad_is_the_transposed_layout():
    """docs/derivation.md and the README: torch.nn.Linear stores W transposed, (n_out,
    n_in), so its weight.grad is dZᵀ·x, the transpose of siglayer's dW = xᵀ·dZ."""
    torch = pytest.importorskip("torch")
    x, W, b, dout = problem(4, 6, 5, 3)
    linear = torch.nn.Linear(5, 3, dtype=torch.float64)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(W.T))
        linear.bias.copy_(torch.from_numpy(b))
    out_t = torch.sigmoid(linear(torch.from_numpy(x)))
    out_t.backward(torch.from_numpy(dout))
    out = reference.forward(x, W, b)
    dZ = dout * out * (1 - out)
    weight_grad = linear.weight.grad.numpy()
    assert weight_grad.shape == (3, 5)
    np.testing.assert_allclose(weight_grad, dZ.T @ x, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(weight_grad.T, siglayer.backward(dout, x, W, out)[1], rtol=1e-12)


def test_jacobian_entries_match_finite_differences():
    # Every entry of all three Jacobians, from central differences of forward: no formula
    # (and no delta) assumed.
    x, W, b, _ = problem(11, 3, 2, 2)
    J_W, J_b, J_x = siglayer.jacobian(x, W, b)
    h = 1e-6
    for name, J in (("x", J_x), ("W", J_W), ("b", J_b)):
        params = {"x": x, "W": W, "b": b}
        param = params[name]
        for index in np.ndindex(param.shape):
            up, down = param.copy(), param.copy()
            up[index] += h
            down[index] -= h
            out_up = siglayer.forward(**{**params, name: up})
            out_down = siglayer.forward(**{**params, name: down})
            slope = (out_up - out_down) / (2 * h)  # (n, n_out)
            np.testing.assert_allclose(
                J[(slice(None), slice(None), *index)],
                slope,
                rtol=0,
                atol=1e-9,
                err_msg=f"J_{name}[:, :, {index}]",
            )


def test_jacobian_hand_case():
    # W = 0, b = 0: out = 1/2 everywhere, s = out (1 - out) = 1/4.
    x = np.array([[1.0, 2.0, -1.0], [0.5, 0.0, 3.0]])
    W = np.zeros((3, 2))
    b = np.zeros(2)
    J_W, J_b, J_x = siglayer.jacobian(x, W, b)
    assert J_W[1, 0, 2, 0] == 0.25 * 3.0
    assert J_W[0, 1, 1, 1] == 0.25 * 2.0
    assert J_W[0, 1, 1, 0] == 0.0  # delta(j, l)
    np.testing.assert_array_equal(J_b, np.broadcast_to(0.25 * np.eye(2), (2, 2, 2)))
    np.testing.assert_array_equal(J_x, np.zeros((2, 2, 2, 3)))  # W = 0: x has no effect


def test_jacobian_keeps_float32_and_leaves_inputs_alone():
    x, W, b, G = problem(5, 4, 3, 2, np.float32)
    before = [a.copy() for a in (x, W, b)]
    J_W, J_b, J_x = siglayer.jacobian(x, W, b)
    assert J_W.dtype == J_b.dtype == J_x.dtype == np.float32
    for a, a0 in zip((x, W, b), before, strict=True):
        np.testing.assert_array_equal(a, a0)
    out = siglayer.forward(x, W, b)
    dx, dW, db = siglayer.backward(G, x, W, out)
    for from_J, want in zip(contract(G, J_W, J_b, J_x), (dx, dW, db), strict=True):
        assert _errors(from_J, want).max_rel <= 1e-5  # float32: a few ulp of out and s


def test_size_limit_raises_before_allocating():
    # J_x alone would be 2000 * 50 * 2000 * 50 = 10**10 elements (80 GB): a missing check
    # would fail with MemoryError or take the machine down, not with this message.
    x = np.zeros((2000, 50))
    W = np.zeros((50, 50))
    total = 2000 * 50 * 50 * 50 + 2000 * 50 * 50 + 2000 * 50 * 2000 * 50
    with pytest.raises(ValueError, match=rf"would hold {total:,} elements.*limit of 10,000,000"):
        siglayer.jacobian(x, W, np.zeros(50))


def test_size_limit_boundary(monkeypatch):
    x, W, b, _ = problem(0, 3, 4, 2)
    total = 3 * 2 * 4 * 2 + 3 * 2 * 2 + 3 * 2 * 3 * 4
    monkeypatch.setattr(_derivation, "MAX_JACOBIAN_ELEMENTS", total)
    siglayer.jacobian(x, W, b)  # exactly at the limit: fine
    monkeypatch.setattr(_derivation, "MAX_JACOBIAN_ELEMENTS", total - 1)
    with pytest.raises(ValueError, match=rf"would hold {total} elements"):
        siglayer.jacobian(x, W, b)


_x, _W, _b, _G = problem(0, 4, 3, 2)
JACOBIAN_BAD = {
    "x-list": ({"x": [[1.0, 2.0, 3.0]]}, TypeError, r"x must be a numpy\.ndarray, got list"),
    "x-None": ({"x": None}, TypeError, r"x must be a numpy\.ndarray, got None$"),
    "x-1d": ({"x": _x[0]}, ValueError, r"x must be 2-D \(n, n_in\) for jacobian, got shape \(3,\)"),
    "x-3d": ({"x": _x[None]}, ValueError, r"x must be 2-D .* got shape \(1, 4, 3\)"),
    "x-int": ({"x": _x.astype(np.int64)}, TypeError, r"x has dtype int64"),
    "W-float16": ({"W": _W.astype(np.float16)}, TypeError, r"W has dtype float16"),
    "W-list": ({"W": _W.tolist()}, TypeError, r"W must be a numpy\.ndarray"),
    "mixed": (
        {"W": _W.astype(np.float32)},
        TypeError,
        r"share one dtype; got x float64, W float32",
    ),
    "x-matrix": ({"x": _x.view(np.matrix)}, TypeError, r"x must be a plain numpy\.ndarray"),
    "inner-mismatch": (
        {"x": np.ones((4, 5))},
        ValueError,
        r"W has shape \(3, 2\) but x has 5 features \(shape \(4, 5\)\)",
    ),
    "b-size": ({"b": np.ones(3)}, ValueError, r"b has 3 entries but W has shape \(3, 2\)"),
    "W-1d": ({"W": _W[:, 0]}, ValueError, r"W must be 2-D \(n_in, n_out\)"),
}


@pytest.mark.parametrize("case", list(JACOBIAN_BAD), ids=list(JACOBIAN_BAD))
def test_jacobian_bad_input(case):
    change, exc, match = JACOBIAN_BAD[case]
    with pytest.raises(exc, match=match):
        siglayer.jacobian(**{"x": _x, "W": _W, "b": _b, **change})


# --- gradcheck ------------------------------------------------------------------------

# n_out >= 2 keeps db away from the one ill-conditioned case (a single sum of dZ that
# cancels to nearly zero), where the relative error is large for a correct gradient.
GRADCHECK_SHAPES = [((1, 1), 2), ((5, 4), 3), ((7, 13), 5), ((16, 3), 6), ((2, 3, 4), 3)]
GRADCHECK_TOL = {np.dtype(np.float64): 1e-7, np.dtype(np.float32): 1e-4}


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize(
    ("shape_x", "n_out"),
    GRADCHECK_SHAPES,
    ids=[f"x{'x'.join(map(str, s))}-out{o}" for s, o in GRADCHECK_SHAPES],
)
def test_gradcheck_passes(dtype, shape_x, n_out):
    rng = np.random.default_rng(len(shape_x) * 100 + shape_x[-1] * 10 + n_out)
    x = rng.standard_normal(shape_x).astype(dtype)
    W = (rng.standard_normal((shape_x[-1], n_out)) / np.sqrt(shape_x[-1])).astype(dtype)
    b = rng.standard_normal(n_out).astype(dtype)
    before = [a.copy() for a in (x, W, b)]
    errors = siglayer.gradcheck(x, W, b)
    assert isinstance(errors, siglayer.GradcheckErrors)
    assert errors._fields == ("dx", "dW", "db")
    assert max(errors) <= GRADCHECK_TOL[np.dtype(dtype)], errors
    for a, a0 in zip((x, W, b), before, strict=True):
        np.testing.assert_array_equal(a, a0)


@pytest.mark.parametrize("layout", ["F", "negative-rows", "strided"])
def test_gradcheck_passes_in_any_memory_layout(layout):
    """x, W and dout F-ordered, with negative row strides or every other row: the
    finite differences perturb copies of them (an F-ordered copy was perturbed through a
    reshape that copied it: every difference 0, errors of 0.16-0.37 for a correct
    backward, a review's find). Only F met that bug: gradcheck's np.array already made C
    copies of the other two, which are here for coverage of the layouts it accepts."""
    x, W, b, G = problem(5, 4, 3, 3)
    make = {
        "F": np.asfortranarray,
        "negative-rows": lambda a: np.ascontiguousarray(a[::-1])[::-1],
        "strided": lambda a: np.repeat(a, 2, axis=0)[::2],
    }[layout]
    x, W, G = make(x), make(W), make(G)
    before = [a.copy() for a in (x, W, b, G)]
    errors = siglayer.gradcheck(x, W, b, dout=G)
    assert max(errors) <= GRADCHECK_TOL[np.dtype(np.float64)], errors
    for a, a0 in zip((x, W, b, G), before, strict=True):
        np.testing.assert_array_equal(a, a0)


def test_gradcheck_with_given_dout_and_eps():
    x, W, b, G = problem(4, 6, 5, 3)
    errors = siglayer.gradcheck(x, W, b, dout=G, eps=1e-6)
    assert max(errors) <= 1e-7, errors


def _broken(which: str):
    real = siglayer._api.backward

    def backward(dout, x, W, out, **kwargs):
        dx, dW, db = real(dout, x, W, out, **kwargs)
        s = out * (1 - out)
        if which == "dW-ignores-dout":  # the textbook formula whatever the upstream gradient
            dW = x.T @ s
        elif which == "dW-scaled":  # a subtle bug: 1 % off
            dW = dW * 1.01
        elif which == "db-mean":  # mean over the batch instead of the sum
            db = (dout * s).mean(axis=0)
        elif which == "dx-no-sigmoid-derivative":
            dx = dout @ W.T
        return dx, dW, db

    return backward


BROKEN = ["dW-ignores-dout", "dW-scaled", "db-mean", "dx-no-sigmoid-derivative"]


@pytest.mark.parametrize("which", BROKEN)
def test_gradcheck_catches_a_wrong_gradient(monkeypatch, which):
    x, W, b, _ = problem(8, 6, 4, 3)
    monkeypatch.setattr(siglayer._api, "backward", _broken(which))
    errors = siglayer.gradcheck(x, W, b)._asdict()
    wrong = which.split("-")[0]
    assert errors[wrong] > 5e-3, errors  # at least 1e-2 relative, down to rounding of the max
    for name, error in errors.items():
        if name != wrong:
            assert error <= 1e-7, errors


GRADCHECK_BAD = {
    "eps-zero": ({"eps": 0.0}, ValueError, r"eps must be finite and > 0, got 0\.0"),
    "eps-negative": ({"eps": -1e-5}, ValueError, r"eps must be finite and > 0"),
    "eps-nan": ({"eps": float("nan")}, ValueError, r"eps must be finite and > 0, got nan"),
    "eps-str": ({"eps": "1e-5"}, TypeError, r"eps must be a real number, got str"),
    "eps-bool": ({"eps": True}, TypeError, r"eps must be a real number, got bool"),
    "x-list": ({"x": [[1.0, 2.0, 3.0]]}, TypeError, r"x must be a numpy\.ndarray, got list"),
    "x-int": ({"x": _x.astype(np.int32)}, TypeError, r"x has dtype int32"),
    "mixed": ({"b": _b.astype(np.float32)}, TypeError, r"share one dtype"),
    "dout-shape": (
        {"dout": np.ones((4, 3))},
        ValueError,
        r"dout has shape \(4, 3\), expected \(4, 2\)",
    ),
    "dout-dtype": (
        {"dout": _G.astype(np.float32)},
        TypeError,
        r"share one dtype; got dout float32",
    ),
    "inner-mismatch": (
        {"W": np.ones((5, 2))},
        ValueError,
        r"W has shape \(5, 2\) but x has 3 features",
    ),
}


@pytest.mark.parametrize("case", list(GRADCHECK_BAD), ids=list(GRADCHECK_BAD))
def test_gradcheck_bad_input(case):
    change, exc, match = GRADCHECK_BAD[case]
    with pytest.raises(exc, match=match):
        siglayer.gradcheck(**{"x": _x, "W": _W, "b": _b, **change})


@pytest.mark.parametrize("tool", ["jacobian", "gradcheck"])
@pytest.mark.parametrize("b_dtype", ["bfloat16", "float32"])
def test_bfloat16_is_refused_by_the_derivation_tools(tool, b_dtype):
    """The core takes bfloat16 (x, W; b bfloat16 or float32), the derivation tools do
    not: gradcheck's errors in bfloat16 (~4e-3) are those of a wrong gradient, and a
    Jacobian rounded to 8 bits shows nothing. Refused by name, before any work."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    bf16 = ml_dtypes.bfloat16
    held = "x, W, b are" if b_dtype == "bfloat16" else "x, W are"
    with pytest.raises(TypeError, match=rf"{tool} takes float32 or float64 arrays; {held} bf"):
        getattr(siglayer, tool)(_x.astype(bf16), _W.astype(bf16), _b.astype(b_dtype))


# --- docs/derivation.md ---------------------------------------------------------------


def doc_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", DOC.read_text(encoding="utf-8"), flags=re.S | re.M)


def test_every_python_block_of_the_derivation_runs():
    blocks = doc_blocks()
    # Setup, then sections 1-6 (section 2 has two): a regex that found nothing would
    # otherwise pass vacuously.
    assert len(blocks) == 8
    assert all("assert" in block for block in blocks[1:])
    namespace: dict[str, object] = {"__name__": "derivation_md"}
    for number, block in enumerate(blocks):
        exec(compile(block, f"{DOC.name}, python block {number}", "exec"), namespace)


def test_a_false_claim_in_a_block_would_fail():
    # The blocks' checks have teeth: the same comparisons reject a wrong gradient.
    namespace: dict[str, object] = {}
    exec(compile(doc_blocks()[0], "setup", "exec"), namespace)
    same = namespace["same"]
    x, W, out = (namespace[k] for k in ("x", "W", "out"))
    _, dW, _ = siglayer.backward(np.ones_like(out), x, W, out)
    assert same(dW, x.T @ (out * (1 - out)))  # type: ignore[operator]
    assert not same(dW, (x.T @ (out * (1 - out))) * (1 + 1e-9))  # type: ignore[operator]


# --- python -m siglayer explain -------------------------------------------------------

NUMBER = re.compile(r"-?\d+(?:\.\d*)?(?:e[+-]\d+)?")


def _array_lines(lines: list[str], start: int) -> list[str]:
    """The lines of a printed array that begins on lines[start] (until brackets close)."""
    depth, taken = 0, []
    for line in lines[start:]:
        taken.append(line)
        depth += line.count("[") - line.count("]")
        if depth == 0:
            return taken
    raise AssertionError(f"unterminated array after line {start}: {lines[start]!r}")


def shown(lines: list[str], title: str, occurrence: int = 0) -> np.ndarray:
    """The array printed under '<title> =' (the occurrence-th such block)."""
    starts = [n for n, line in enumerate(lines) if line.startswith(title) and line.endswith("=")]
    text = " ".join(_array_lines(lines, starts[occurrence] + 1))
    return np.array([float(v) for v in NUMBER.findall(text)])


def side_by_side(lines: list[str], left: str, right: str, occurrence: int = 0):
    """The two arrays printed next to each other under the titles left and right."""
    starts = [n for n, line in enumerate(lines) if line.startswith(left) and right in line]
    header = starts[occurrence]
    column = lines[header].index(right)
    rows = _array_lines(lines, header + 1)
    parse = lambda parts: np.array([float(v) for p in parts for v in NUMBER.findall(p)])  # noqa: E731
    return parse(r[:column] for r in rows), parse(r[column:] for r in rows)


def blocks(lines: list[str], titles: list[str]) -> list[np.ndarray]:
    """The arrays printed next to each other under these titles, left to right."""
    header = next(n for n, line in enumerate(lines) if all(t in line for t in titles))
    columns = [lines[header].index(t) for t in titles] + [None]
    rows = _array_lines(lines, header + 1)
    return [
        np.array([float(v) for r in rows for v in NUMBER.findall(r[start:stop])])
        for start, stop in itertools.pairwise(columns)
    ]


def test_explain_prints_matching_numbers():
    result = subprocess.run(
        [sys.executable, "-m", "siglayer", "explain"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "every contraction equals backward" in result.stdout
    assert "MISMATCH" not in result.stdout
    assert result.stdout.count("  equal") == 7  # batch sum, then dW, db, dx for each G

    # The printed inputs are tenths, so they parse back exactly; recompute everything here.
    n = 4  # the batch differs from n_in = 3 and n_out = 2
    x = shown(lines, f"x  (n={n}, n_in=3)").reshape(n, 3)
    W = shown(lines, "W  (n_in=3, n_out=2)").reshape(3, 2)
    b = shown(lines, "b  (n_out=2,)")
    out = reference.forward(x, W, b)
    np.testing.assert_allclose(shown(lines, "out = sigmoid").reshape(n, 2), out, atol=1e-8)

    s = out * (1 - out)
    for i in range(n):
        J_i0, J_i1 = side_by_side(lines, f"J_W[{i}, 0]", f"J_W[{i}, 1]")
        np.testing.assert_allclose(J_i0.reshape(3, 2), np.outer(x[i], [s[i, 0], 0]), atol=1e-8)
        np.testing.assert_allclose(J_i1.reshape(3, 2), np.outer(x[i], [0, s[i, 1]]), atol=1e-8)

    for occurrence, G in enumerate([np.ones((n, 2)), shown(lines, "G", 1).reshape(n, 2)]):
        np.testing.assert_array_equal(shown(lines, "G", occurrence).reshape(n, 2), G)
        _, want, _ = reference.backward(G, x, W, out)
        from_J, from_backward = side_by_side(lines, "dW from J_W", "dW from backward", occurrence)
        np.testing.assert_allclose(from_J.reshape(3, 2), want, atol=1e-8)
        np.testing.assert_allclose(from_backward.reshape(3, 2), want, atol=1e-8)
    assert not np.all(shown(lines, "G", 1) == 1)  # the second G really is another one

    outers = blocks(lines, [f"outer(x[{i}], dZ[{i}])" for i in range(n)])
    dZ_ones = out * (1 - out)
    for i, printed in enumerate(outers):  # each sample's own outer product
        np.testing.assert_allclose(printed.reshape(3, 2), np.outer(x[i], dZ_ones[i]), atol=1e-8)
    _, dW_ones, _ = reference.backward(np.ones((n, 2)), x, W, out)
    np.testing.assert_allclose(sum(outers).reshape(3, 2), dW_ones, atol=4e-8)


@pytest.mark.parametrize("which", ["dW-scaled", "db-mean", "dx-no-sigmoid-derivative"])
def test_explain_exits_nonzero_on_a_mismatch(monkeypatch, capsys, which):
    monkeypatch.setattr(siglayer._api, "backward", _broken(which))
    assert cli.main(["explain"]) == 1
    captured = capsys.readouterr()
    assert "MISMATCH" in captured.err
    name = which.split("-")[0]
    verdicts = re.findall(
        rf"^{name}: contraction of J_{name[1:]} vs backward.*  (\w+)$", captured.out, flags=re.M
    )
    assert verdicts == ["MISMATCH", "MISMATCH"]  # for G = ones and for the random G
    for other in {"dx", "dW", "db"} - {name}:
        assert re.findall(rf"^{other}: .*  (\w+)$", captured.out, flags=re.M) == ["equal"] * 2
