"""python bench/run.py (bench/harness.py, bench/mixed.py): its contenders compute the right
thing, mismatches are caught, and the table, sigmoid line and plot come out. No timing is
asserted here (bench/ times)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import numpy as np
import pytest

import siglayer
from siglayer import _core

# The harness lives in bench/ (run from the source tree, not installed).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import harness
import mixed
import narrow
import run

TORCH = harness.import_torch()
CONTENDERS = [c for c in harness.CONTENDERS if c != "torch" or TORCH is not None]


@pytest.mark.parametrize("contender", CONTENDERS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("size", ["T", "S"])
def test_contenders_match_the_reference(threads, size, dtype, contender):
    p = harness.make_problem(size, dtype)
    ref = harness.reference_results(p)
    calls = harness.make_contender(contender, p, ref, TORCH)
    assert set(calls) == set(harness.PASSES)
    for pass_, call in calls.items():
        for _ in range(2):  # a second call through reused buffers is checked too
            result = call()
            harness.check(f"{contender} {pass_}", result, ref)
        expected = {"out", "dx", "dW", "db"} if pass_ == "forward_backward" else {"out"}
        if contender.startswith("floor"):
            expected = {"z", "dW", "dx"} if pass_ == "forward_backward" else {"z"}
        assert set(result) == expected


def test_check_catches_wrong_results():
    p = harness.make_problem("T", "float32")
    ref = harness.reference_results(p)
    good = {"out": ref["out"].copy(), "dW": ref["dW"].copy()}
    harness.check("good", good, ref)
    with pytest.raises(AssertionError, match="out differs from the reference"):
        harness.check("biasless", {"out": harness.reference.sigmoid(ref["z"])}, ref)
    with pytest.raises(AssertionError, match="dW differs"):
        harness.check("stale", {"dW": np.zeros_like(ref["dW"])}, ref)
    with pytest.raises(AssertionError, match="dtype float64"):
        harness.check("upcast", {"out": ref["out"].astype(np.float64)}, ref)
    with pytest.raises(AssertionError, match="shape"):
        harness.check("transposed", {"dW": ref["dW"].T.copy()}, ref)


def test_bench_prints_the_table(capsys):
    status = run.main(
        [
            "--sizes",
            "T",
            "--dtypes",
            "float32",
            "--rounds",
            "1",
            "--no-torch",
            "--no-sigmoid",
            "--threads",
            "1",
        ]
    )
    out = capsys.readouterr().out
    assert status == 0
    config = siglayer._config.config()
    assert f"BLAS {config['blas']}" in out and "1 threads" in out and "CPU:" in out
    rows = [line.split() for line in out.splitlines() if line.startswith("T ")]
    assert [r[:3] for r in rows] == [["T", "float32", "fwd"], ["T", "float32", "fwd+bwd"]]
    for r in rows:
        # siglayer, numpy, floor, torch ('-'), then sig/numpy, sig/floor, sig/torch ('-').
        assert r[6] == "-" and r[9] == "-"
        assert float(r[7]) > 0 and float(r[8]) > 0
    assert siglayer.get_num_threads() == config["threads"]  # restored


def test_bench_stops_on_a_mismatch(monkeypatch, capsys):
    real = siglayer._api.forward

    def wrong_forward(x, W, b, *, out=None):
        return real(x, W, b, out=out) + 1e-3

    monkeypatch.setattr(harness._api, "forward", wrong_forward)
    status = run.main(
        [
            "--sizes",
            "T",
            "--dtypes",
            "float64",
            "--rounds",
            "1",
            "--no-torch",
            "--no-sigmoid",
        ]
    )
    assert status == 1
    assert "MISMATCH" in capsys.readouterr().err


@pytest.mark.parametrize(
    "bad", [["--sizes", "Q"], ["--dtypes", "float16"], ["--rounds", "0"], ["--threads", "0"]]
)
def test_bench_rejects_bad_options(bad):
    with pytest.raises(SystemExit):
        run.main(bad)


def test_sigmoid_throughput_checks_then_times():
    blas_threads = _core.blas_num_threads()
    rates = harness.sigmoid_throughput(TORCH, rounds=1)
    assert set(rates) == {"float32", "float64"}
    for r in rates.values():
        assert {"siglayer", "numpy", "siglayer in cache"} <= set(r)
        assert all(v > 0 for v in r.values())
    assert _core.blas_num_threads() == blas_threads


def test_sigmoid_check_catches_an_inaccurate_sigmoid():
    z = np.linspace(-5, 5, 101, dtype=np.float32)
    harness.check_sigmoid(_core.sigmoid(z), z)
    with pytest.raises(AssertionError, match="exceeds 4 ulp"):
        harness.check_sigmoid(_core.sigmoid(z) * np.float32(1 + 1e-6), z)


# matplotlib before 3.10.7 calls pyparsing names that pyparsing 3.3 deprecates ("'enablePackrat'
# deprecated - use 'enable_packrat'"): matplotlib's warning, not the harness's (a floors audit).
@pytest.mark.filterwarnings(r"ignore:'\w+'.* deprecated.* use '\w+':DeprecationWarning")
def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    rows = [
        harness.Row(size, dtype, pass_, 3, {"siglayer": 1.0, "numpy": 2.0, "floor": 0.9})
        for size in ("T", "L")
        for dtype in ("float32", "float64")
        for pass_ in harness.PASSES
    ]
    path = tmp_path / "speedup.png"
    harness.plot(rows, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_mixed_steps_match_the_reference(threads, dtype):
    p = harness.make_problem("S", dtype)
    ref = harness.reference_results(p)
    steps = mixed.make_steps(p, ref, TORCH)
    assert list(steps) == (["numpy", "torch", "siglayer"] if TORCH else ["numpy", "siglayer"])
    for name, step in steps.items():
        harness.check(f"{name} step", step(), ref)


def test_mixed_matrix_times_every_pair():
    calls: list[str] = []

    def step(name: str) -> mixed.Step:
        def run() -> harness.Result:
            calls.append(name)
            return {}

        return run

    medians = mixed.matrix({"a": step("a"), "b": step("b")}, rounds=2, block_seconds=0.0)
    assert set(medians) == {("a", "a"), ("a", "b"), ("b", "a"), ("b", "b")}
    assert all(v >= 0 for v in medians.values())
    # Each timed step follows its partner: 2 rounds x 4 pairs x 3 timed pairs of calls.
    assert len(calls) == 2 * 4 * 3 * 2


def test_mixed_flags_missed_targets():
    names = ["numpy", "siglayer"]
    medians = {
        ("numpy", "numpy"): 1.0,
        ("numpy", "siglayer"): 1.3,  # numpy after siglayer: 1.3 > 1.15
        ("siglayer", "siglayer"): 1.0,
        ("siglayer", "numpy"): 1.2,  # within 1.25
    }
    import io

    text = io.StringIO()
    misses = mixed.print_matrix("M float32", medians, names, text)
    assert misses == ["M float32: numpy after siglayer 1.30 > 1.15"]
    assert "after siglayer" in text.getvalue()


def test_bench_mixed_prints_both_views(capsys):
    status = run.main(
        [
            *["--mixed", "--sizes", "T", "--dtypes", "float32"],
            *["--rounds", "1", "--no-torch", "--no-sigmoid", "--threads", "1"],
        ]
    )
    out = capsys.readouterr().out
    assert status in (0, 2)  # 2: a target missed on this machine; timing is not asserted
    assert "back to back, no pause" in out
    assert "T (32, 64, 32) float32: each step's time right after another's" in out
    table = out.split("each step's time right after another's")[1].splitlines()[2:]
    rows = [line.split() for line in table if line.split()[:1] in (["numpy"], ["siglayer"])]
    assert [r[0] for r in rows] == ["numpy", "siglayer"]
    assert all(float(v) > 0 for r in rows for v in r[2:])


@pytest.mark.filterwarnings("ignore::UserWarning")  # sklearn import-time notices
def test_training_bench_jax_steps_agree(capsys):
    """bench_training.py --jax: the jitted JAX steps, with JAX's layers and with
    siglayer.jax's, give siglayer's loss on the first batch and its weights after one Adam
    step (asserted before timing, within 1e-5); one round, nothing timed is asserted."""
    pytest.importorskip("sklearn")
    pytest.importorskip("jax")
    import bench_training

    bench_training.main(["--rounds", "1", "--batch-sizes", "32", "--no-torch", "--jax"])
    text = capsys.readouterr().out
    header = next(line for line in text.splitlines() if line.lstrip().startswith("batch"))
    assert header.split()[3:7] == ["siglayer", "numpy", "jax", "jax+siglayer"], header


@pytest.mark.skipif(TORCH is None, reason="needs torch")
@pytest.mark.filterwarnings("ignore::UserWarning")  # sklearn/torch import-time notices
def test_torch_benches_check_agreement_and_print(capsys):
    """bench/bench_torch.py and bench/bench_training.py assert that every contender (the
    fused and the unfused siglayer.torch steps among them) gives PyTorch's loss and
    weights after a step before timing; one round each, nothing timed is asserted."""
    pytest.importorskip("sklearn")
    import bench_torch
    import bench_training

    bench_torch.main(["--rounds", "1", "--sizes", "T", "--dtypes", "float64"])
    text = capsys.readouterr().out
    assert "digits network, batch 32" in text and "nn.BCELoss instead of fused" in text
    assert "T (32, 64, 32)" in text
    bench_training.main(["--rounds", "1", "--batch-sizes", "32", "--no-settle"])
    text = capsys.readouterr().out
    assert "torch+siglayer" in text and "vs torch" in text and "back to back" in text


@pytest.mark.skipif(TORCH is None, reason="needs torch")
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_torch_bench_compiled_layers_agree_before_timing(capsys):
    """--compiled: both layers under torch.compile give eager PyTorch's output and
    gradients (asserted inside bench_torch before timing); one round, nothing timed is
    asserted."""
    import bench_torch

    bench_torch.main(
        ["--rounds", "1", "--sizes", "T", "--dtypes", "float64", "--compiled", "--no-digits"]
    )
    text = capsys.readouterr().out
    assert "digits network" not in text
    row = next(line for line in text.splitlines() if "T (32, 64, 32)" in line)
    assert "sig cmp" in text and row.count("us") == 6, row


BENCH = Path(__file__).resolve().parents[1] / "bench"
# The scripts with a command line, and what each needs beyond siglayer's test extra.
SCRIPTS = {
    "run.py": None,
    "bfloat16.py": "ml_dtypes",
    "bench_training.py": None,
    "bench_torch.py": "torch",
    "jax_layer.py": "jax",
    "layer_buffers.py": None,
    "idle_gap.py": None,
    "determinism.py": None,
    "memory_soak.py": None,
    "sigmoid_accuracy.py": None,
}


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_every_bench_script_starts(script):
    """Each script imports what it needs and parses its options (jax_layer.py had kept
    an import of a module that had moved, and failed at its first line)."""
    import subprocess

    if SCRIPTS[script]:
        pytest.importorskip(SCRIPTS[script])
    done = subprocess.run(
        [sys.executable, str(BENCH / script), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout
    # The description is the docstring's whole first paragraph, not its first line only.
    docstring = ast.get_docstring(ast.parse((BENCH / script).read_text()))
    assert docstring is not None
    first_paragraph = " ".join(docstring.split("\n\n", 1)[0].split())
    assert first_paragraph in " ".join(done.stdout.split())


def test_idle_gap_checks_and_prints():
    """bench/idle_gap.py checks each library's step against the reference in its child
    process, then prints one row per library and size (one short round of T and S;
    nothing timed is asserted)."""
    import subprocess

    command = [sys.executable, str(BENCH / "idle_gap.py"), "--sizes", "T,S", "--gaps", "0,1"]
    done = subprocess.run(
        [*command, "--rounds", "1", "--no-torch"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split() for line in done.stdout.splitlines() if line.startswith("siglayer")]
    assert [row[1] for row in rows] == ["T", "S"], done.stdout
    # library, size, "median / p90" for each of the 2 gaps, the ratio
    assert all(len(row) == 2 + 3 * 2 + 1 and row[3] == row[6] == "/" for row in rows), rows


def test_idle_gap_refuses_a_wrong_step(monkeypatch):
    """The check before timing sees a wrong result (db doubled), and --gaps must start
    at 0."""
    import idle_gap
    import siglayer._api

    backward = siglayer._api.backward

    def wrong_backward(*args, **kwargs):
        dx, dW, db = backward(*args, **kwargs)
        return dx, dW, 2 * db

    monkeypatch.setattr(siglayer._api, "backward", wrong_backward)
    with pytest.raises(AssertionError, match="db differs from the reference"):
        idle_gap.child("siglayer", ["T"], [0.0], 1)
    with pytest.raises(SystemExit):
        idle_gap.main(["--gaps", "1,2"])


def test_run_help_lists_bfloat16(capsys):
    """--bfloat16 is taken before parsing (it hands the rest to bench/bfloat16.py), so
    it is added to the parser only for --help to list it."""
    with pytest.raises(SystemExit) as exit_:
        run.main(["--help"])
    assert exit_.value.code == 0
    assert "--bfloat16" in capsys.readouterr().out


def test_layer_buffers_checks_against_the_reference(monkeypatch):
    """bench/layer_buffers.py checks the fresh layer's out, dx, dW and db against the
    float64 reference before timing (it compared the two layers with each other alone):
    an oracle whose db is 1 % off stops it."""
    import layer_buffers

    for dtype in (np.float32, np.float64):
        fresh, reuse = layer_buffers.measure("T", dtype, 0.0)
        assert fresh > 0 and reuse > 0
    backward = layer_buffers.reference.backward

    def off(*args, **kwargs):
        dx, dW, db = backward(*args, **kwargs)
        return dx, dW, db * 1.01

    monkeypatch.setattr(layer_buffers.reference, "backward", off)
    with pytest.raises(AssertionError, match="db error"):
        layer_buffers.measure("T", np.float32, 0.0)


def test_jax_bench_checks_and_prints():
    pytest.importorskip("jax")
    import subprocess

    done = subprocess.run(
        [sys.executable, str(BENCH / "jax_layer.py"), "--sizes", "T", "--budget", "0.01"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| T |")]
    assert len(rows) == 4, done.stdout  # float32 and float64, fwd and fwd+bwd


def test_plot_without_matplotlib_fails_before_timing(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib fails
    with pytest.raises(SystemExit, match="matplotlib"):
        run.main(["--sizes", "T", "--plot", "x.png", "--no-torch"])
    assert "siglayer" not in capsys.readouterr().out  # no table: nothing was timed


def test_narrow_sweep_checks_and_prints(capsys, monkeypatch):
    """bench/narrow.py: a row per n_out and pass, every contender's results checked first
    (a wrong forward, or a wrong dW, which only out and dx were checked for before: a
    review's find, is caught before any timing)."""
    args = ["--n", "40", "--n-in", "20", "--outputs", "1,3", "--rounds", "1", "--threads", "1"]
    assert narrow.main([*args, "--no-torch"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line[:5].strip()]
    table = [r for r in rows if r[0].isdigit()]
    assert [r[:2] for r in table] == [
        ["1", "fwd"],
        ["1", "fwd+bwd"],
        ["3", "fwd"],
        ["3", "fwd+bwd"],
    ]
    real_forward = siglayer.forward
    monkeypatch.setattr(
        narrow.siglayer, "forward", lambda x, W, b: real_forward(x, W, b * 0 + 1e-3)
    )
    with pytest.raises(AssertionError, match="f32 fwd out: error"):
        narrow.main([*args, "--no-torch"])
    with pytest.raises(AssertionError, match="f64 fwd out: error"):
        narrow.main([*args, "--no-torch", "--float64"])
    monkeypatch.undo()
    real_backward = siglayer.backward

    def wrong_dW(*a, **k):
        dx, dW, db = real_backward(*a, **k)
        return dx, dW * 1.01, db

    monkeypatch.setattr(narrow.siglayer, "backward", wrong_dW)
    with pytest.raises(AssertionError, match=r"f32 fwd\+bwd dW: error"):
        narrow.main([*args, "--no-torch"])
    monkeypatch.undo()
    capsys.readouterr()
    assert narrow.main([*args, "--no-torch", "--float64"]) == 0
    out = capsys.readouterr().out
    assert "f64:k/g" in out and "numpy" in out and "f32" not in out.split("\n", 2)[2]


def test_bfloat16_bars_are_judged_on_fwd_bwd():
    """bench/bfloat16.py prints issue 16's bars from its measured rows: each fwd+bwd ratio
    against its limit, met or missed; on a CPU with AMX the AMX bars, naming those not
    measured; on one without, the 1.3x bar counted and the AMX bars for reference."""
    pytest.importorskip("ml_dtypes")
    import bfloat16

    rows = [
        {"size": "L", "pass": "forward", "bf16": 9.0, "torch": 1.0},  # fwd: not judged
        {"size": "L", "pass": "forward_backward", "bf16": 0.7, "torch": 1.0, "f32": 1.0},
        {"size": "M", "pass": "forward_backward", "bf16": 1.1, "torch": 1.0, "f32": 1.0},
        {"size": "XL", "pass": "forward_backward", "bf16": 1.0, "floor": 0.9, "f32": 2.0},
        {"size": "T", "pass": "forward_backward", "bf16": 1.4, "f32": 1.0},
    ]
    lines, judged, missed = bfloat16.bar_lines(rows, amx=True)
    assert lines == [
        "bf16/torch at L: 0.70, bar <= 0.8: met",
        "bf16/torch at N: not measured",
        "bf16/torch at XL: not measured",
        "bf16/torch at M: 1.10, bar <= 1.0: MISSED",
        "bf16/f32 at L: 0.70, bar <= 0.4: MISSED",
        "bf16/f32 at N: not measured",
        "bf16/f32 at XL: 0.50, bar <= 0.4: MISSED",
        "bf16/floor at L: not measured",
        "bf16/floor at XL: 1.11, bar <= 1.2: met",
    ]
    assert (judged, missed) == (5, 3)
    lines, judged, missed = bfloat16.bar_lines(rows, amx=False)
    assert lines[0] == "bf16/torch at L: 0.70, bar <= 0.8 (set for AMX: for reference): met"
    assert not any("not measured" in line for line in lines)
    assert [line for line in lines if "for reference" not in line] == [
        "bf16/f32 at T: 1.40, bar <= 1.3: MISSED",
        "bf16/f32 at M: 1.10, bar <= 1.3: met",
        "bf16/f32 at L: 0.70, bar <= 1.3: met",
        "bf16/f32 at XL: 0.50, bar <= 1.3: met",
    ]
    assert (judged, missed) == (4, 1)


def test_bfloat16_bench_times_pytorch_without_conversions():
    """PyTorch's timed calls in bench/bfloat16.py return its bfloat16 tensors; the widening
    to float32 NumPy arrays happens in as_numpy, for the check only (inside the timed call
    it had added 6-81 % to PyTorch's bfloat16 fwd+bwd time). The check still runs on
    the widened results and stops a wrong one."""
    pytest.importorskip("ml_dtypes")
    torch = pytest.importorskip("torch")
    import bfloat16

    p = bfloat16.problem("T")
    calls = bfloat16.torch_calls(p, torch, torch.bfloat16)
    for pass_, call in calls.items():
        got = call()
        assert all(isinstance(v, torch.Tensor) and v.dtype == torch.bfloat16 for v in got.values())
        assert set(got) == ({"out"} if pass_ == "forward" else {"out", "dx", "dW", "db"})
        bfloat16.check(pass_, bfloat16.as_numpy(got), p)
    got = bfloat16.as_numpy(calls["forward_backward"]())
    assert all(v.dtype == np.float32 for v in got.values())
    got["dW"] = got["dW"] * 1.1
    with pytest.raises(AssertionError, match="dW error"):
        bfloat16.check("torch", got, p)


@pytest.mark.skipif(TORCH is None, reason="needs torch")
def test_torch_pool_bench_checks_before_timing(capsys):
    """bench/torch_pool.py checks the training step under both pool settings against
    PyTorch's before timing it, and stops on a wrong one; one round, nothing timed is
    asserted."""
    import torch_pool

    steps = torch_pool.make_steps("S", "float32")
    torch_pool.check("S", "float32", steps)  # the real step passes
    right = steps["siglayer"]
    steps["siglayer"] = lambda: [t * 1.001 for t in right()]
    with pytest.raises(SystemExit, match="off by"):
        torch_pool.check("S", "float32", steps)
    before = _core.config()["thread_pool"]
    torch_pool.main(["--rounds", "1", "--sizes", "S", "--dtypes", "float32", "--mixed-sizes"])
    assert _core.config()["thread_pool"] == before  # the setting put back
    text = capsys.readouterr().out
    assert f"thread_pool: {before}" in text
    row = next(line for line in text.splitlines() if line.startswith("S "))
    assert len(row.split()) == 8, row
