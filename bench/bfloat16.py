"""bfloat16 against float32, the bfloat16 GEMM floor and PyTorch's bfloat16, in one process.

    python bench/bfloat16.py                  # T, S, M, L, N
    python bench/bfloat16.py --sizes L,XL --rounds 9
    python bench/run.py --bfloat16            # the same table

Contenders, forward and forward + backward (with dx), on the same values:

- ``bf16``: siglayer on bfloat16 x, W, dout, float32 b (out and dx bfloat16, dW and db
  float32), through the bfloat16 GEMM path in use (``siglayer.show_config()``,
  ``bf16_gemm``); ``bf16(convert)``, ``bf16(blas)``, ``bf16(avx512bf16)`` each other
  path this machine can run, switched before each call.
- ``f32``: siglayer float32 on the same (widened) values.
- ``floor``: the three products alone on the bfloat16 operands, float32 results, through
  siglayer's bfloat16 GEMM split between the threads as the layer splits it
  (``_core.gemm``): what the layer would cost if everything but the products were free.
- ``torch``: PyTorch bfloat16, ``sigmoid(addmm(b, x, W))`` with bfloat16 parameters and
  autograd (the issue's comparison), and ``torch32`` the same in float32.

``--isa avx512`` adds ``bf16(isa)``: siglayer bfloat16 with another instruction set's
kernels (e.g. the integer rounding to bfloat16 against ``vcvtne2ps2bf16`` of the default
``avx512bf16`` copy), switched before each call and back after.

After the table come issue 16's bars (fwd+bwd), each ratio with its limit and "met" or
"MISSED": on a CPU with AMX its AMX bars (the sizes they name that were not measured
listed as such: ``--sizes M,L,N,XL`` with PyTorch measures them all); on a CPU without
AMX its bar for such CPUs (within 1.3x of float32 at every size), with the AMX bars
printed for reference.

``--no-settle`` runs the contenders back to back, with no pause for the thread pools to
fall asleep between them (the view of a script that mixes them).

Every result is checked against the float64 reference on the bfloat16 inputs first
(bounds from bfloat16's unit roundoff: out within 2**-7, dW, db, dx within 2**-5 of
their largest magnitude); exit status 1 if one disagrees. Times are interleaved medians
(siglayer._timing), ratios taken within one run.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

import harness
from siglayer import _api, _config, _core, reference
from siglayer._timing import interleaved_medians

try:
    import ml_dtypes
except ImportError:  # pragma: no cover
    raise SystemExit("bench/bfloat16.py needs ml-dtypes: pip install ml-dtypes") from None

BF16 = np.dtype(ml_dtypes.bfloat16)
Result = dict[str, np.ndarray]


def problem(size: str, seed: int = 0) -> dict[str, np.ndarray]:
    n, n_in, n_out = harness.SIZES[size]
    rng = np.random.default_rng(seed)
    return {
        "x": rng.standard_normal((n, n_in)).astype(np.float32).astype(BF16),
        "W": (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32).astype(BF16),
        "b": rng.standard_normal(n_out).astype(np.float32),
        "dout": rng.standard_normal((n, n_out)).astype(np.float32).astype(BF16),
    }


def check(name: str, got: Result, p: dict[str, np.ndarray]) -> None:
    """Against the float64 reference on the bfloat16 inputs (module docstring)."""
    x, W, b, dout = (p[k].astype(np.float64) for k in ("x", "W", "b", "dout"))
    out = reference.forward(x, W, b)
    if "z" in got:  # the floor: products only, each checked (dZ is dout there)
        for key, want in (("z", x @ W), ("dW", x.T @ dout), ("dx", dout @ W.T)):
            if key in got:
                err = np.abs(got[key] - want).max()
                assert err <= 2**-5 * np.abs(want).max(), f"{name}: product {key} error {err:.3e}"
        return
    assert np.abs(got["out"].astype(np.float64) - out).max() <= 2**-7, f"{name}: out"
    if "dW" not in got:
        return
    o = got["out"].astype(np.float64)
    dx, dW, db = reference.backward(dout, x, W, o)
    assert dx is not None
    for key, want in (("dx", dx), ("dW", dW), ("db", db)):
        err = np.abs(got[key].astype(np.float64) - want).max()
        assert err <= 2**-5 * np.abs(want).max(), f"{name}: {key} error {err:.3e}"


def layer_calls(
    x: np.ndarray,
    W: np.ndarray,
    b: np.ndarray,
    dout: np.ndarray,
    path: str | None = None,
    isa: str | None = None,
) -> dict[str, Callable[[], Result]]:
    """siglayer's forward and forward + backward on these arrays; ``path`` selects the
    bfloat16 GEMM path before each call (None: leave it), ``isa`` the kernels for the
    call (None: leave them)."""
    default_isa = _core.config()["simd"]

    def use_path() -> None:
        if path is not None:
            _core.select_bf16_gemm(path)  # type: ignore[arg-type]

    def with_isa(call: Callable[[], Result]) -> Callable[[], Result]:
        if isa is None:
            return call

        def switched() -> Result:
            _core.select_isa(isa)  # type: ignore[arg-type]
            try:
                return call()
            finally:
                _core.select_isa(default_isa)  # type: ignore[arg-type]

        return switched

    def forward() -> Result:
        use_path()
        return {"out": _api.forward(x, W, b)}

    def forward_backward() -> Result:
        use_path()
        out = _api.forward(x, W, b)
        dx, dW, db = _api.backward(dout, x, W, out)
        assert dx is not None
        return {"out": out, "dx": dx, "dW": dW, "db": db}

    return {"forward": with_isa(forward), "forward_backward": with_isa(forward_backward)}


def siglayer_calls(
    p: dict[str, np.ndarray], path: str | None, isa: str | None = None
) -> dict[str, Callable[[], Result]]:
    return layer_calls(p["x"], p["W"], p["b"], p["dout"], path, isa)


def float32_calls(p: dict[str, np.ndarray]) -> dict[str, Callable[[], Result]]:
    """The same values widened to float32 (exactly)."""
    x, W, dout = (_core.to_float32(p[k]) for k in ("x", "W", "dout"))
    return layer_calls(x, W, p["b"], dout)


def floor_calls(p: dict[str, np.ndarray]) -> dict[str, Callable[[], Result]]:
    x, W, dout = p["x"], p["W"], p["dout"]
    dZ = dout  # any bfloat16 (n, n_out) operand costs the same
    z = np.empty((x.shape[0], W.shape[1]), np.float32)
    dW, dx = np.empty(W.shape, np.float32), np.empty(x.shape, np.float32)

    def forward() -> Result:
        _core.gemm(x, W, False, False, z)
        return {"z": z}

    def forward_backward() -> Result:
        _core.gemm(x, W, False, False, z)  # z = x·W
        _core.gemm(x, dZ, True, False, dW)  # dW = xᵀ·dZ
        _core.gemm(dZ, W, False, True, dx)  # dx = dZ·Wᵀ
        return {"z": z, "dW": dW, "dx": dx}

    return {"forward": forward, "forward_backward": forward_backward}


def torch_calls(
    p: dict[str, np.ndarray], torch: Any, dtype: Any
) -> dict[str, Callable[[], dict[str, Any]]]:
    """PyTorch's calls return its tensors as they are: converting a bfloat16 result to a
    float32 NumPy array is work PyTorch's own training step never does, so it happens in
    ``as_numpy`` for the check, outside the timed call. (Until 2026-12-05 it was inside:
    in one process on Zen 5 it added 6 % (M) to 37-81 % (L) to PyTorch's bfloat16 fwd+bwd
    time, varying from run to run, and flattered siglayer's bf16/torch ratios;
    docs/bfloat16.md says which tables.)"""

    def tensor(a: np.ndarray) -> Any:
        return torch.from_numpy(_core.to_float32(a) if a.dtype == BF16 else a).to(dtype)

    x, W, b, dout = (tensor(p[k]) for k in ("x", "W", "b", "dout"))
    xg, Wg, bg = (t.detach().clone().requires_grad_(True) for t in (x, W, b))

    def forward() -> dict[str, Any]:
        with torch.no_grad():
            return {"out": torch.sigmoid(torch.addmm(b, x, W))}

    def forward_backward() -> dict[str, Any]:
        out = torch.sigmoid(torch.addmm(bg, xg, Wg))
        dx, dW, db = torch.autograd.grad(out, (xg, Wg, bg), dout)
        return {"out": out, "dx": dx, "dW": dW, "db": db}

    return {"forward": forward, "forward_backward": forward_backward}


def as_numpy(got: dict[str, Any]) -> Result:
    """A contender's results as NumPy arrays for ``check``: siglayer's as they are,
    PyTorch's tensors widened to float32 (exact for bfloat16)."""
    return {
        key: value if isinstance(value, np.ndarray) else value.detach().float().numpy()
        for key, value in got.items()
    }


PATHS = ("convert", "blas", "avx512bf16")
COLUMNS = (
    "bf16",
    *(f"bf16({path})" for path in PATHS),
    "bf16(isa)",
    "f32",
    "floor",
    "torch",
    "torch32",
)


def other_paths() -> list[str]:
    """The bfloat16 GEMM paths this machine runs besides the one in use."""
    c = _core.config()
    runs = {"convert": True, "blas": c["bf16_gemm_in_blas"], "avx512bf16": c["bf16_gemm_own"]}
    return [p for p in PATHS if runs[p] and p != c["bf16_gemm"]]


# Without AVX512-BF16 or AMX, PyTorch's bfloat16 products take a slow path (Zen 3, M:
# 124 ms fwd+bwd against 5.4 ms in float32): from L up a call takes seconds, so there
# the torch columns are left out unless --torch-all.
SLOW_TORCH_SIZES = ("L", "N", "XL")


def torch_runs(size: str, torch_all: bool) -> bool:
    return torch_all or _core.config()["cpu_bf16"] or size not in SLOW_TORCH_SIZES


# Issue 16's bars on fwd+bwd: (numerator, denominator, sizes, the largest ratio that meets
# the bar). bf16/torch: against PyTorch's bfloat16; bf16/f32: against siglayer's float32;
# bf16/floor: the three bfloat16 products alone. Set for a CPU with AMX:
AMX_BARS: tuple[tuple[str, str, tuple[str, ...], float], ...] = (
    ("bf16", "torch", ("L", "N", "XL"), 0.8),
    ("bf16", "torch", ("M",), 1.0),
    ("bf16", "f32", ("L", "N", "XL"), 0.4),  # 2.5x faster than float32
    ("bf16", "floor", ("L", "XL"), 1.2),
)
# and for a CPU without AMX (Zen 4's avx512bf16 path, the convert path): bfloat16 within
# 1.3x of siglayer's float32 at every size.
NO_AMX_BAR = ("bf16", "f32", tuple(harness.SIZES), 1.3)


def bar_lines(rows: list[dict[str, Any]], amx: bool) -> tuple[list[str], int, int]:
    """One line per bar and size (the ratio, the limit, met or MISSED; on a CPU with AMX,
    "not measured" for an AMX bar's size the rows lack),
    the number of bars judged and the number missed, counting only the bars set for this
    CPU. The AMX bars are printed on a CPU without AMX too, marked "for reference" (the
    Zen 4 table of docs/bfloat16.md reads them) and not counted."""
    bars = [(bar, amx) for bar in AMX_BARS] + ([] if amx else [(NO_AMX_BAR, True)])
    fwd_bwd = {row["size"]: row for row in rows if row["pass"] == "forward_backward"}
    lines, judged, missed = [], 0, 0
    for (num, den, sizes, limit), counted in bars:
        note = "" if counted else " (set for AMX: for reference)"
        for size in sizes:
            row = fwd_bwd.get(size)
            if row is None or num not in row or den not in row:
                if counted and amx:  # an AMX bar this run cannot answer
                    lines.append(f"{num}/{den} at {size}: not measured")
                continue
            value = row[num] / row[den]
            met = value <= limit
            if counted:
                judged += 1
                missed += not met
            lines.append(
                f"{num}/{den} at {size}: {value:.2f}, bar <= {limit}{note}: "
                + ("met" if met else "MISSED")
            )
    return lines, judged, missed


def run(
    sizes: list[str],
    rounds: int,
    threads: int,
    torch: Any,
    torch_all: bool = False,
    settle: bool = True,
    isa: str | None = None,
) -> list[dict[str, Any]]:
    active = _core.config()["bf16_gemm"]
    others = other_paths()
    columns = [
        c
        for c in COLUMNS
        if not c.startswith("bf16(") or c[5:-1] in others or (c == "bf16(isa)" and isa)
    ]
    if torch is None:
        columns = [c for c in columns if not c.startswith("torch")]
    rows = []
    with harness.limit_threads(threads, torch):
        print(
            f"bfloat16, {threads} threads; CPU {harness.cpu_model()}; "
            f"ISA {_core.config()['simd']}; siglayer BLAS {_core.config()['blas']}; "
            f"bf16 GEMM {_config.config()['bf16_gemm']}"
            + (f"; bf16(isa) = {isa} kernels" if isa else "")
            + (f"; torch {torch.__version__}" if torch is not None else "")
            + ("" if settle else "; back to back, no settle pause")
        )
        print(
            f"\n{'size':4} {'pass':7} "
            + "".join(f"{c:>16} " for c in columns)
            + f"{'bf16/f32':>9} {'bf16/floor':>10} {'bf16/torch':>10} {'torch/t32':>9}"
            + (f" {'isa/bf16':>8}" if isa else "")
        )
        for size in sizes:
            p = problem(size)
            groups: dict[str, dict[str, Callable[[], dict[str, Any]]]] = {
                "bf16": siglayer_calls(p, active if others else None),
                "f32": float32_calls(p),
                "floor": floor_calls(p),
            }
            for path in others:
                groups[f"bf16({path})"] = siglayer_calls(p, path)
            if isa:
                groups["bf16(isa)"] = siglayer_calls(p, active if others else None, isa)
            if torch is not None and torch_runs(size, torch_all):
                groups["torch"] = torch_calls(p, torch, torch.bfloat16)
                groups["torch32"] = torch_calls(p, torch, torch.float32)
            calls = {}
            for name, passes in groups.items():
                for pass_, call in passes.items():
                    check(f"{name} {pass_} {size}", as_numpy(call()), p)
                    calls[f"{name}:{pass_}"] = call
            pause = {} if settle else {"settle_seconds": 0.0}
            medians = interleaved_medians(calls, rounds=rounds, **pause)
            if others:
                _core.select_bf16_gemm(active)  # type: ignore[arg-type]
            for pass_ in harness.PASSES:
                t = {k.split(":")[0]: v for k, v in medians.items() if k.endswith(":" + pass_)}
                rows.append({"size": size, "pass": pass_, **t})

                def ratio(a: str, b: str, t: dict[str, float] = t) -> str:
                    return f"{t[a] / t[b]:.2f}" if a in t and b in t else "-"

                print(
                    f"{size:4} {harness.PASS_LABELS[pass_]:7} "
                    + "".join(
                        f"{t[c] * 1e3:>14.3f}ms " if c in t else f"{'-':>16} " for c in columns
                    )
                    + f"{ratio('bf16', 'f32'):>9} {ratio('bf16', 'floor'):>10} "
                    f"{ratio('bf16', 'torch'):>10} {ratio('torch', 'torch32'):>9}"
                    + (f" {ratio('bf16(isa)', 'bf16'):>8}" if isa else ""),
                    flush=True,
                )
    amx = bool(_core.config()["cpu_amx_bf16"])
    lines, judged, missed = bar_lines(rows, amx)
    if lines:
        cpu = "this CPU has AMX-BF16" if amx else "this CPU lacks AMX-BF16"
        print(
            f"\nIssue 16's bars, fwd+bwd ({cpu}; bfloat16 path {active}): "
            f"{missed} of {judged} measured missed"
        )
        for line in lines:
            print("  " + line)
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", default="T,S,M,L,N", help="comma-separated, of T S M L N XL")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds per size")
    parser.add_argument("--threads", type=int, default=None, help="default: siglayer's")
    parser.add_argument("--no-torch", action="store_true", help="leave PyTorch out")
    parser.add_argument(
        "--no-settle",
        action="store_true",
        help="contenders back to back, no pause for the thread pools to fall asleep",
    )
    parser.add_argument(
        "--isa",
        default=None,
        help="add bf16(isa): siglayer with these kernels (avx512bf16, avx512, avx2, baseline)",
    )
    parser.add_argument(
        "--torch-all",
        action="store_true",
        help="PyTorch at L, N, XL too on a CPU without bfloat16 instructions (slow)",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python bench/bfloat16.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    sizes = [s.strip().upper() for s in args.sizes.split(",")]
    unknown = [s for s in sizes if s not in harness.SIZES]
    if unknown:
        parser.error(f"unknown sizes {unknown}; choose from {', '.join(harness.SIZES)}")
    torch = None if args.no_torch else harness.import_torch()
    threads = args.threads or _config.get_num_threads()
    try:
        run(sizes, args.rounds, threads, torch, args.torch_all, not args.no_settle, args.isa)
    except AssertionError as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
