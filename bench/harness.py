"""The benchmark: siglayer against NumPy, the GEMM floor and PyTorch, in one process.

Contenders, each for the forward pass alone and for forward + backward (with dx):

- ``siglayer``: the public calls, ``forward`` then ``backward``, fresh outputs;
  ``siglayer_buffers`` the same with preallocated ``out=``, ``dx=``, ``dW=``, ``db=``.
- ``numpy``: NumPy as its users write the layer, ``siglayer._timing.numpy_layer``
  (``1 / (1 + np.exp(-(x @ W + b)))``, ``dZ.sum(axis=0)``); up to commit fe211fa it was
  ``siglayer.reference``, the oracle every contender is checked against, whose stable
  sigmoid and float64 db sum flattered every sig/numpy figure (review helper-80).
- ``floor``: the matrix products alone (x·W; then xᵀ·dZ and dZ·Wᵀ) through siglayer's
  own BLAS, split between the OpenMP threads exactly as the layer splits its products
  (``_core.gemm``), into preallocated outputs: what the layer would cost if bias,
  sigmoid, dZ, db, validation and allocation were free. ``floor_blas`` makes each
  product one call on the BLAS's own threads instead.
- ``torch``: PyTorch CPU as its users write it (``sigmoid(addmm(b, x, W))``, gradients
  from autograd), when it is installed.

Every contender's result is checked against the reference before it is timed. Times
come from :func:`siglayer._timing.interleaved_medians`: the contenders take turns, so
the drift of a shared machine hits them alike, and ratios are taken within one run.
``python bench/run.py`` prints the table; ``pytest bench --benchmark-enable`` runs the
same contenders under pytest-benchmark.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from siglayer import _api, _compare, _config, _core, reference
from siglayer._timing import interleaved_medians, numpy_layer

__all__ = [
    "CONTENDERS",
    "DEFAULT_SIZES",
    "DTYPES",
    "PASSES",
    "SIZES",
    "Problem",
    "check",
    "limit_threads",
    "main",
    "make_contender",
    "make_problem",
    "reference_results",
    "run",
    "sigmoid_calls",
    "sigmoid_throughput",
]

Array = NDArray[Any]
Result = dict[str, Array]
Call = Callable[[], Result]

# (n, n_in, n_out): x is (n, n_in), W is (n_in, n_out).
SIZES: dict[str, tuple[int, int, int]] = {
    "T": (32, 64, 32),
    "S": (64, 256, 128),
    "M": (256, 512, 512),
    "L": (1024, 1024, 1024),
    "N": (8192, 256, 64),
    "XL": (4096, 2048, 2048),
    # One output column, a logistic-regression head: every product is a matrix-vector one.
    "H": (8192, 256, 1),
}
DTYPES: dict[str, type[np.floating[Any]]] = {"float32": np.float32, "float64": np.float64}
PASSES = ("forward", "forward_backward")
PASS_LABELS = {"forward": "fwd", "forward_backward": "fwd+bwd"}
CONTENDERS = ("siglayer", "siglayer_buffers", "numpy", "floor", "floor_blas", "torch")
# The default run stays near two minutes; XL alone takes two to three minutes more.
DEFAULT_SIZES = ("T", "S", "M", "L", "N")
SIGMOID_VALUES = 1 << 20
SIGMOID_CACHED_VALUES = 1 << 15


@dataclass(frozen=True)
class Problem:
    """Seeded inputs of one benchmark group: x (n, n_in), W (n_in, n_out), b (n_out,),
    dout (n, n_out), all of one dtype."""

    name: str
    x: Array
    W: Array
    b: Array
    dout: Array

    @property
    def shape(self) -> tuple[int, int, int]:
        """(n, n_in, n_out)."""
        return (self.x.shape[0], self.x.shape[1], self.W.shape[1])

    @property
    def dtype(self) -> np.dtype[Any]:
        return self.x.dtype


def make_problem(size: str, dtype: str | type, seed: int = 0) -> Problem:
    """The inputs for size ``size`` (a key of SIZES) in ``dtype``.

    W is scaled by 1/sqrt(n_in) so that x·W + b stays where the sigmoid is not flat.
    """
    n, n_in, n_out = SIZES[size]
    dt = np.dtype(dtype)
    rng = np.random.default_rng(seed)
    return Problem(
        name=size,
        x=rng.standard_normal((n, n_in), dtype=np.float64).astype(dt),
        W=(rng.standard_normal((n_in, n_out)) / math.sqrt(n_in)).astype(dt),
        b=rng.standard_normal(n_out).astype(dt),
        dout=rng.standard_normal((n, n_out)).astype(dt),
    )


def reference_results(p: Problem) -> Result:
    """What every contender is checked against, computed once per group with
    siglayer.reference in float64 and rounded to the problem's dtype (so that the NumPy
    contender, the same formulas in that dtype, is checked against something else than
    itself: a review's find): out, dx, dW, db, and the pre-activation product z = x·W
    and dZ = dout ⊙ out ⊙ (1 - out) that the GEMM floor starts from."""
    x, W, b, dout = (a.astype(np.float64) for a in (p.x, p.W, p.b, p.dout))
    out = reference.forward(x, W, b)
    dx, dW, db = reference.backward(dout, x, W, out)
    assert dx is not None
    results = {"out": out, "dx": dx, "dW": dW, "db": db, "z": x @ W, "dZ": dout * out * (1 - out)}
    return {k: v.astype(p.x.dtype) for k, v in results.items()}


def check(name: str, got: Result, want: Result) -> None:
    """Raise AssertionError unless every array in ``got`` matches ``want``.

    The criterion is ``python -m siglayer check``'s: the largest absolute error
    divided by the largest reference magnitude stays within siglayer._compare's
    TOLERANCE for the dtype (1e-4 for float32, 1e-11 for float64). A wrong result
    (a missing bias, a transposed product, a stale buffer) misses it by orders of
    magnitude; rounding at these reduction lengths (at most 8192) stays well inside.
    """
    assert got, f"{name}: no result to check"
    for key, value in got.items():
        expected = want[key]
        assert value.shape == expected.shape, (
            f"{name}: {key} has shape {value.shape}, expected {expected.shape}"
        )
        assert value.dtype == expected.dtype, (
            f"{name}: {key} has dtype {value.dtype}, expected {expected.dtype}"
        )
        tolerance = _compare.TOLERANCE[expected.dtype]
        errors = _compare._errors(value, expected)
        assert errors.max_rel <= tolerance, (
            f"{name}: {key} differs from the reference by {errors.max_abs:.3e} "
            f"(relative {errors.max_rel:.3e} > {tolerance:.0e})"
        )


def _siglayer(p: Problem, *, buffers: bool) -> dict[str, Call]:
    x, W, b, dout = p.x, p.W, p.b, p.dout
    if not buffers:

        def forward() -> Result:
            return {"out": _api.forward(x, W, b)}

        def forward_backward() -> Result:
            out = _api.forward(x, W, b)
            dx, dW, db = _api.backward(dout, x, W, out)
            assert dx is not None
            return {"out": out, "dx": dx, "dW": dW, "db": db}

        return {"forward": forward, "forward_backward": forward_backward}

    out_buf = np.empty_like(dout)
    dx_buf, dW_buf, db_buf = np.empty_like(x), np.empty_like(W), np.empty_like(b)

    def forward_into() -> Result:
        return {"out": _api.forward(x, W, b, out=out_buf)}

    def forward_backward_into() -> Result:
        out = _api.forward(x, W, b, out=out_buf)
        _api.backward(dout, x, W, out, dx=dx_buf, dW=dW_buf, db=db_buf)
        return {"out": out, "dx": dx_buf, "dW": dW_buf, "db": db_buf}

    return {"forward": forward_into, "forward_backward": forward_backward_into}


def _numpy(p: Problem) -> dict[str, Call]:
    x, W, b, dout = p.x, p.W, p.b, p.dout

    def forward() -> Result:
        return {"out": numpy_layer(x, W, b)[0]}

    def forward_backward() -> Result:
        out, dx, dW, db = numpy_layer(x, W, b, dout)
        return {"out": out, "dx": dx, "dW": dW, "db": db}

    return {"forward": forward, "forward_backward": forward_backward}


def _floor(p: Problem, ref: Result, *, threading: Literal["slabs", "blas"]) -> dict[str, Call]:
    x, W = p.x, p.W
    dZ = ref["dZ"]
    z, dW, dx = np.empty_like(ref["z"]), np.empty_like(W), np.empty_like(x)
    gemm = _core.gemm

    def forward() -> Result:
        gemm(x, W, False, False, z, threading)
        return {"z": z}

    def forward_backward() -> Result:
        gemm(x, W, False, False, z, threading)  # z = x·W        (n, n_out)
        gemm(x, dZ, True, False, dW, threading)  # dW = xᵀ·dZ     (n_in, n_out)
        gemm(dZ, W, False, True, dx, threading)  # dx = dZ·Wᵀ     (n, n_in)
        return {"z": z, "dW": dW, "dx": dx}

    return {"forward": forward, "forward_backward": forward_backward}


def _torch(p: Problem, torch: ModuleType) -> dict[str, Call]:
    # from_numpy shares memory: no copy inside the timed calls.
    x, W, b, dout = (torch.from_numpy(a) for a in (p.x, p.W, p.b, p.dout))
    xg, Wg, bg = (t.detach().clone().requires_grad_(True) for t in (x, W, b))

    def forward() -> Result:
        with torch.no_grad():
            return {"out": torch.sigmoid(torch.addmm(b, x, W)).numpy()}

    def forward_backward() -> Result:
        out = torch.sigmoid(torch.addmm(bg, xg, Wg))
        dx, dW, db = torch.autograd.grad(out, (xg, Wg, bg), dout)
        return {"out": out.detach().numpy(), "dx": dx.numpy(), "dW": dW.numpy(), "db": db.numpy()}

    return {"forward": forward, "forward_backward": forward_backward}


def import_torch() -> ModuleType | None:
    """PyTorch if it is installed (an optional contender), else None."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def make_contender(
    name: str, p: Problem, ref: Result, torch: ModuleType | None = None
) -> dict[str, Call]:
    """``{"forward": call, "forward_backward": call}`` for contender ``name`` (one of
    CONTENDERS) on problem ``p``; ``ref`` is ``reference_results(p)`` (the floor starts
    from its dZ). Each call returns a dict of named arrays for :func:`check`."""
    if name == "siglayer":
        return _siglayer(p, buffers=False)
    if name == "siglayer_buffers":
        return _siglayer(p, buffers=True)
    if name == "numpy":
        return _numpy(p)
    if name == "floor":
        return _floor(p, ref, threading="slabs")
    if name == "floor_blas":
        return _floor(p, ref, threading="blas")
    if name == "torch":
        if torch is None:
            raise ValueError("the torch contender needs PyTorch: pip install torch==2.13.0")
        return _torch(p, torch)
    raise ValueError(f"unknown contender {name!r}; expected one of {', '.join(CONTENDERS)}")


@contextlib.contextmanager
def limit_threads(threads: int, torch: ModuleType | None = None) -> Iterator[str]:
    """Run siglayer, NumPy's BLAS and PyTorch on ``threads`` threads inside the block.

    NumPy's BLAS is limited with threadpoolctl when it is installed; siglayer's own
    BLAS library is left alone (it stays single-threaded: siglayer parallelizes around
    it). Yields a note on what could not be limited ("" when everything was).
    """
    before = _config.get_num_threads()
    torch_before = torch.get_num_threads() if torch is not None else 0
    note = ""
    with contextlib.ExitStack() as stack:
        try:
            import threadpoolctl  # type: ignore[import-untyped]
        except ImportError:
            note = "numpy's BLAS threads not limited (pip install threadpoolctl)"
        else:
            controller = threadpoolctl.ThreadpoolController()
            ours = os.path.dirname(os.path.abspath(_core.__file__))
            others = [
                lib.filepath
                for lib in controller.lib_controllers
                if lib.user_api == "blas" and not os.path.abspath(lib.filepath).startswith(ours)
            ]
            if others:
                stack.enter_context(controller.select(filepath=others).limit(limits=threads))
        _config.set_num_threads(threads)
        if torch is not None:
            torch.set_num_threads(threads)
        try:
            yield note
        finally:
            _config.set_num_threads(before)
            if torch is not None:
                torch.set_num_threads(torch_before)


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux) and its logical CPU count."""
    name = ""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    return f"{name or platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs"


def numpy_blas() -> str:
    """NumPy's BLAS as threadpoolctl sees it, e.g. 'openblas 0.3.31 (2 threads)'."""
    try:
        import threadpoolctl
    except ImportError:
        return "unknown BLAS"
    ours = os.path.dirname(os.path.abspath(_core.__file__))
    for info in threadpoolctl.threadpool_info():
        if info["user_api"] == "blas" and not os.path.abspath(info["filepath"]).startswith(ours):
            return f"{info['internal_api']} {info['version']} ({info['num_threads']} threads)"
    return "unknown BLAS"


def _sigmoid_input(dtype: np.dtype[Any]) -> Array:
    # Spans the whole curve: the tails where sigma saturates and the middle.
    return np.random.default_rng(1).uniform(-30, 30, SIGMOID_VALUES).astype(dtype)


def check_sigmoid(got: Array, z: Array) -> None:
    """Raise AssertionError unless ``got`` is sigma(z) to within 4 ulp (relative).

    The reference is NumPy's stable formula evaluated in float64 (and rounded for a
    float32 z); the accuracy budget of the kernels themselves is tested in tests/.
    """
    want = reference.sigmoid(z.astype(np.float64))
    eps = float(np.finfo(z.dtype).eps)
    tiny = float(np.finfo(z.dtype).smallest_subnormal)
    err = np.abs(got.astype(np.float64) - want)
    bound = 4 * eps * np.abs(want) + tiny
    assert (err <= bound).all(), (
        f"sigmoid {z.dtype}: error {float((err / np.maximum(np.abs(want), tiny)).max()):.2e} "
        f"relative exceeds 4 ulp"
    )


def sigmoid_calls(z: Array, torch: ModuleType | None) -> dict[str, Callable[[], Array]]:
    """sigma(z) by siglayer's kernel, NumPy's reference and PyTorch (when given), each
    a call without arguments returning the result (siglayer and PyTorch into a buffer
    allocated here, as a sweep over a preallocated activation would)."""
    y = np.empty_like(z)

    def with_siglayer() -> Array:
        return _core.sigmoid(z, y)

    def with_numpy() -> Array:
        return reference.sigmoid(z)

    calls: dict[str, Callable[[], Array]] = {"siglayer": with_siglayer, "numpy": with_numpy}
    if torch is not None:
        zt, yt = torch.from_numpy(z), torch.from_numpy(np.empty_like(z))

        def with_torch() -> Array:
            return torch.sigmoid(zt, out=yt).numpy()  # type: ignore[no-any-return]

        calls["torch"] = with_torch
    return calls


def sigmoid_throughput(torch: ModuleType | None, *, rounds: int = 9) -> dict[str, dict[str, float]]:
    """G values/s on one thread for 2**20 values: {dtype: {contender: rate}}.

    Contenders: siglayer's kernel (``_core.sigmoid``), NumPy's ``reference.sigmoid``
    and ``torch.sigmoid``, taking turns (so each starts with the others' data in the
    caches: 2**20 values read and written is 8 MB in float32). Each result is checked
    before it is timed. ``siglayer in cache`` is the kernel's own rate: the first 2**15
    values (256 KB in and out in float32, within a core's L2), calls back to back.
    """
    rates: dict[str, dict[str, float]] = {}
    with limit_threads(1, torch):
        for dtype_name, dtype in DTYPES.items():
            z = _sigmoid_input(np.dtype(dtype))
            calls = sigmoid_calls(z, torch)
            for call in calls.values():
                check_sigmoid(call(), z)
            medians = interleaved_medians(calls, rounds=rounds)
            rates[dtype_name] = {k: SIGMOID_VALUES / t / 1e9 for k, t in medians.items()}
            small = z[:SIGMOID_CACHED_VALUES].copy()
            y = np.empty_like(small)
            check_sigmoid(_core.sigmoid(small, y), small)
            cached = interleaved_medians(
                {"in cache": functools.partial(_core.sigmoid, small, y)},
                rounds=rounds,
                settle_seconds=0.0,
                warmup_seconds=0.02,
            )
            rates[dtype_name]["siglayer in cache"] = (
                SIGMOID_CACHED_VALUES / cached["in cache"] / 1e9
            )
    return rates


@dataclass
class Row:
    """Medians (seconds) of one size, dtype and pass; None for a contender not run."""

    size: str
    dtype: str
    pass_: str
    rounds: int
    times: dict[str, float]

    def ratio(self, other: str) -> float | None:
        """siglayer's time over ``other``'s (< 1: siglayer is faster)."""
        if other not in self.times or "siglayer" not in self.times:
            return None
        return self.times["siglayer"] / self.times[other]


def _fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return f"{'-':>10}"
    if seconds < 1e-3:
        return f"{seconds * 1e6:>8.1f}us"
    if seconds < 1:
        return f"{seconds * 1e3:>8.2f}ms"
    return f"{seconds:>9.3f}s"


def _fmt_ratio(value: float | None) -> str:
    return f"{'-':>10}" if value is None else f"{value:>10.2f}"


def _floor_time(times: dict[str, float], floor: str) -> float | None:
    candidates = {"slabs": ["floor"], "blas": ["floor_blas"], "best": ["floor", "floor_blas"]}
    found = [times[k] for k in candidates[floor] if k in times]
    return min(found) if found else None


def check_close(label: str, got: Any, want: Array, rtol: float) -> None:
    """Raise AssertionError unless ``got`` has ``want``'s shape and its largest error is
    within ``rtol`` of ``want``'s largest magnitude: :func:`check`'s criterion at a
    tolerance the caller states (the scripts beside run.py check tighter than it)."""
    got = np.asarray(got)
    assert got.shape == want.shape, f"{label} has shape {got.shape}, expected {want.shape}"
    e = _compare._errors(got, want)
    assert e.max_rel <= rtol, (
        f"{label} error {e.max_abs:.3e} (relative {e.max_rel:.3e} > {rtol:.0e})"
    )


def build_summary() -> str:
    """siglayer's BLAS (with its kernel) and instruction set, for a script's header."""
    c = _config.config()
    return f"BLAS {c['blas_details']}, SIMD {c['simd']}"


def header(
    threads: int,
    torch: ModuleType | None,
    rounds: int,
    note: str,
    *,
    buffers: bool = False,
    settle: bool = True,
) -> str:
    """Threads, BLAS backend, CPU and versions: the first lines of the table."""
    c = _config.config()
    torch_part = (
        f"torch {torch.__version__} ({threads} threads)"
        if torch is not None
        else ("torch not installed")
    )
    env = [
        f"{k}={os.environ[k]}"
        for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
        if k in os.environ
    ]
    lines = [
        f"siglayer {c['version']}, {threads} threads: BLAS {c['blas']} ({c['blas_details']}), "
        f"SIMD {c['simd']}{', with out=/dx=/dW=/db= buffers' if buffers else ''}",
        f"CPU: {cpu_model()}; Python {c['python']}",
        f"numpy {c['numpy']} ({numpy_blas()}); {torch_part}",
        f"medians of up to {rounds} interleaved rounds "
        + (
            "(settle pause + warm-up before each turn)"
            if settle
            else "(contenders back to back, no pause)"
        )
        + "; ratios are siglayer's time over the other's: < 1 means siglayer is faster",
    ]
    if env:
        lines.append("environment: " + " ".join(env))
    if note:
        lines.append("note: " + note)
    return "\n".join(lines)


def _estimate_round_seconds(call_seconds: Sequence[float], settle: bool) -> float:
    # interleaved_medians' turn: a settle pause, at least one warm-up call (or 20 ms
    # of them) and the timed calls (at least one, or 2 ms of them); or the timed calls alone.
    if not settle:
        return sum(max(2e-3, t) for t in call_seconds)
    return sum(0.1 + max(0.02, t) + max(2e-3, t) for t in call_seconds)


def run(
    sizes: Sequence[str],
    dtypes: Sequence[str],
    *,
    rounds: int = 7,
    min_rounds: int = 3,
    group_seconds: float = 8.0,
    threads: int | None = None,
    contenders: Sequence[str] = ("siglayer", "numpy", "floor", "torch"),
    floor: str = "slabs",
    sigmoid: bool = True,
    torch: ModuleType | None = None,
    file: Any = None,
    settle: bool = True,
) -> tuple[list[Row], dict[str, dict[str, float]] | None]:
    """Time every contender on every size and dtype; print the table as it goes.

    Each group (size, dtype) gets ``rounds`` interleaved rounds, fewer (but at least
    ``min_rounds``) when one round would push the group past ``group_seconds``. With
    ``settle=False`` the contenders run back to back, each right after the previous one,
    with no pause for the pools to fall asleep (the view of a script that mixes them).
    Raises AssertionError if a contender's result does not match the reference.
    """
    out = sys.stdout if file is None else file
    threads = _config.get_num_threads() if threads is None else threads
    names = [c for c in contenders if c != "torch" or torch is not None]
    rows: list[Row] = []
    with limit_threads(threads, torch) as note:
        print(
            header(
                threads, torch, rounds, note, buffers="siglayer_buffers" in names, settle=settle
            ),
            file=out,
        )
        floor_label = {"slabs": "floor", "blas": "floor(blas)", "best": "floor(best)"}[floor]
        print(
            f"\n{'size':4} {'dtype':7} {'pass':7} {'siglayer':>10} {'numpy':>10} "
            f"{floor_label:>10} {'torch':>10} {'sig/numpy':>10} {'sig/floor':>10} "
            f"{'sig/torch':>10} {'rounds':>6}",
            file=out,
            flush=True,
        )
        for size in sizes:
            for dtype in dtypes:
                p = make_problem(size, dtype)
                ref = reference_results(p)
                calls: dict[str, Call] = {}
                seconds: list[float] = []
                for name in names:
                    for pass_, call in make_contender(name, p, ref, torch).items():
                        t0 = time.perf_counter()
                        result = call()
                        seconds.append(time.perf_counter() - t0)
                        check(f"{name} {pass_} {size} {dtype}", result, ref)
                        calls[f"{name}:{pass_}"] = call
                del ref
                group_rounds = max(
                    min_rounds,
                    min(rounds, int(group_seconds / _estimate_round_seconds(seconds, settle))),
                )
                pause = {} if settle else {"settle_seconds": 0.0}
                medians = interleaved_medians(calls, rounds=group_rounds, **pause)
                for pass_ in PASSES:
                    times = {
                        k.split(":")[0]: v for k, v in medians.items() if k.endswith(":" + pass_)
                    }
                    if "siglayer_buffers" in times and "siglayer" not in times:
                        times["siglayer"] = times.pop("siglayer_buffers")
                    floor_time = _floor_time(times, floor)
                    for k in ("floor", "floor_blas"):
                        times.pop(k, None)
                    if floor_time is not None:
                        times["floor"] = floor_time
                    row = Row(size, dtype, pass_, group_rounds, times)
                    rows.append(row)
                    print(
                        f"{size:4} {dtype:7} {PASS_LABELS[pass_]:7} "
                        + "".join(
                            _fmt_time(times.get(k)) + " "
                            for k in ("siglayer", "numpy", "floor", "torch")
                        )
                        + "".join(
                            _fmt_ratio(row.ratio(k)) + " " for k in ("numpy", "floor", "torch")
                        )
                        + f"{group_rounds:>6}",
                        file=out,
                        flush=True,
                    )
    rates = None
    if sigmoid:
        rates = sigmoid_throughput(torch)
        parts = []
        for dtype, r in rates.items():
            others = ", ".join(f"{k} {v:.2f}" for k, v in r.items() if k != "siglayer")
            parts.append(f"{dtype} {r['siglayer']:.2f} ({others})")
        print(
            f"\nsigmoid, 1 thread, 2^20 values (siglayer in cache: 2^15), G values/s: "
            f"{'; '.join(parts)}",
            file=out,
        )
    return rows, rates


def _matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError as exc:
        raise SystemExit('--plot needs matplotlib: pip install ".[plot]"') from exc
    return matplotlib


def plot(rows: Sequence[Row], path: str) -> None:
    """Speedup of siglayer (the other's time over siglayer's) against size, one panel
    per pass, one line per contender and dtype, saved to ``path``."""
    matplotlib = _matplotlib()
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = list(dict.fromkeys(r.size for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    colors = {"numpy": "tab:blue", "floor": "tab:gray", "torch": "tab:orange"}
    labels = {"numpy": "vs NumPy", "floor": "vs GEMM floor", "torch": "vs PyTorch"}
    for ax, pass_ in zip(axes, PASSES, strict=True):
        for other, color in colors.items():
            for dtype, style in (("float32", "-"), ("float64", "--")):
                points = [
                    (sizes.index(r.size), 1 / ratio)
                    for r in rows
                    if r.pass_ == pass_
                    and r.dtype == dtype
                    and (ratio := r.ratio(other)) is not None
                ]
                if points:
                    xs, ys = zip(*points, strict=True)
                    ax.plot(
                        xs, ys, style, marker="o", color=color, label=f"{labels[other]} ({dtype})"
                    )
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(sizes)), [f"{s}\n{SIZES[s]}" for s in sizes], fontsize=8)
        ax.set_yscale("log")
        ax.set_title({"forward": "forward", "forward_backward": "forward + backward (dx)"}[pass_])
        ax.set_xlabel("size (n, n_in, n_out)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("speedup of siglayer (other's time / siglayer's)")
    axes[1].legend(fontsize=7, loc="best")
    c = _config.config()
    fig.suptitle(f"siglayer {c['version']}, BLAS {c['blas']}, {cpu_model()}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _names(text: str, allowed: Sequence[str], what: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in allowed]
    if unknown or not names:
        raise SystemExit(f"--{what}: unknown {unknown or text!r}; choose from {','.join(allowed)}")
    return names


def add_arguments(parser: Any) -> None:
    """The options of ``python bench/run.py``."""
    parser.add_argument(
        "--sizes",
        default=None,
        help=f"comma-separated sizes from {','.join(SIZES)}, or 'all' "
        f"(default: {','.join(DEFAULT_SIZES)}, with --mixed M,L,N; XL adds 2 to 3 minutes)",
    )
    parser.add_argument("--dtypes", default="float32,float64", help="float32, float64 or both")
    parser.add_argument(
        "--rounds",
        type=int,
        default=7,
        help="interleaved rounds per size and dtype (fewer for sizes whose "
        "round takes long, see --group-seconds; default 7)",
    )
    parser.add_argument(
        "--group-seconds",
        type=float,
        default=8.0,
        help="time a size/dtype may take before its rounds drop toward 3",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads for siglayer, NumPy's BLAS and PyTorch (default: siglayer's current setting)",
    )
    parser.add_argument(
        "--floor",
        choices=("slabs", "blas", "best"),
        default="slabs",
        help="GEMM floor: products split as the layer splits them (slabs), "
        "one call on the BLAS's own threads (blas), or the faster",
    )
    parser.add_argument(
        "--buffers",
        action="store_true",
        help="time siglayer with preallocated out=/dx=/dW=/db= buffers",
    )
    parser.add_argument(
        "--mixed",
        action="store_true",
        help="run the contenders back to back with no settle pause, then time each "
        "library's step right after each other library's; exit status 2 if a "
        "composition target is missed",
    )
    parser.add_argument("--no-torch", action="store_true", help="leave PyTorch out")
    parser.add_argument("--no-sigmoid", action="store_true", help="skip the sigmoid line")
    parser.add_argument(
        "--plot",
        metavar="FILE.png",
        default=None,
        help="draw speedup against size (needs matplotlib)",
    )


def main(args: Any) -> int:
    """Run the benchmark for parsed ``args``; the exit status (1 on a mismatch)."""
    sizes_text = args.sizes or ("M,L,N" if args.mixed else ",".join(DEFAULT_SIZES))
    sizes = list(SIZES) if sizes_text == "all" else _names(sizes_text, list(SIZES), "sizes")
    dtypes = _names(args.dtypes, list(DTYPES), "dtypes")
    if args.rounds < 1:
        raise SystemExit("--rounds must be >= 1")
    if args.threads is not None and args.threads < 1:
        raise SystemExit("--threads must be >= 1")
    if args.plot:
        _matplotlib()  # before minutes of timing, not after
    torch = None if args.no_torch else import_torch()
    contenders = ["siglayer_buffers" if args.buffers else "siglayer", "numpy"]
    contenders += {"slabs": ["floor"], "blas": ["floor_blas"], "best": ["floor", "floor_blas"]}[
        args.floor
    ]
    contenders.append("torch")
    try:
        rows, _ = run(
            sizes,
            dtypes,
            rounds=args.rounds,
            min_rounds=min(3, args.rounds),
            group_seconds=args.group_seconds,
            threads=args.threads,
            contenders=contenders,
            floor=args.floor,
            sigmoid=not args.no_sigmoid,
            torch=torch,
            settle=not args.mixed,
        )
        misses: list[str] = []
        if args.mixed:
            import mixed

            threads = _config.get_num_threads() if args.threads is None else args.threads
            with limit_threads(threads, torch):
                misses = mixed.run(sizes, dtypes, rounds=args.rounds, torch=torch, file=sys.stdout)
    except AssertionError as exc:
        print(f"MISMATCH, nothing timed for this group: {exc}", file=sys.stderr)
        return 1
    if args.plot:
        plot(rows, args.plot)
        print(f"plot written to {args.plot}")
    if misses:
        print("\ncomposition targets missed:\n  " + "\n  ".join(misses))
        return 2
    return 0
