"""Many Python threads calling forward and backward at once.

The binding releases the GIL around the core, so these calls really overlap: each one
packs into its own thread's scratch and runs its own OpenMP team. Every result must be
bitwise the result of the same call made alone, and the whole run must finish within a
time limit (a deadlock fails the test instead of hanging the suite: the workers are
daemon threads).

OpenMP's thread count is per calling thread (a new Python thread starts from the
default, not from the value set in the main thread), so every worker sets the count
the sequential reference was computed with: results depend on it (docs/reliability.md).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from dataclasses import dataclass, field

import numpy as np
import pytest

import siglayer
from conftest import make_problem

PYTHON_THREADS = 8
ROUNDS = 20  # each worker runs every task this many times, in its own order
TIME_LIMIT = 120.0  # seconds; the run takes about a second


@dataclass
class Task:
    name: str
    x: np.ndarray
    W: np.ndarray
    b: np.ndarray
    dout: np.ndarray
    use_buffers: bool
    want: tuple[np.ndarray, ...] = field(default_factory=tuple)

    def run(self) -> tuple[np.ndarray, ...]:
        if not self.use_buffers:
            out = siglayer.forward(self.x, self.W, self.b)
            dx, dW, db = siglayer.backward(self.dout, self.x, self.W, out)
            assert dx is not None
            return out, dx, dW, db
        dtype = self.x.dtype
        out = np.full((*self.x.shape[:-1], self.W.shape[1]), np.nan, dtype)
        dx, dW, db = (np.full(s, np.nan, dtype) for s in (self.x.shape, self.W.shape, self.b.shape))
        siglayer.forward(self.x, self.W, self.b, out=out)
        siglayer.backward(self.dout, self.x, self.W, out, dx=dx, dW=dW, db=db)
        return out, dx, dW, db


def make_tasks() -> list[Task]:
    """Shapes from tiny to large enough for a two-thread team, both dtypes, C/F/strided
    layouts, batch dimensions, a zero-size batch, fresh and caller-supplied buffers."""
    rng = np.random.default_rng(7)
    specs = [
        ((1, 1), 1, np.float64, "C"),
        ((7, 13), 5, np.float32, "C"),
        ((64, 33), 17, np.float64, "F"),
        ((300, 257), 129, np.float32, "C"),
        ((300, 257), 129, np.float64, "strided"),
        ((1031, 67), 33, np.float32, "F"),
        ((3, 70), 600, np.float64, "C"),
        ((4, 16, 40), 24, np.float32, "strided"),
        ((0, 9), 4, np.float32, "C"),
        ((129, 515), 64, np.float64, "C"),
    ]
    tasks = []
    for i, (shape, n_out, dtype, layout) in enumerate(specs):
        x, W, b, dout = make_problem(rng, shape, n_out, dtype)
        if layout == "F":
            x, W, dout = (np.asfortranarray(a) for a in (x, W, dout))
        elif layout == "strided":
            x, W, dout = (np.repeat(a, 2, axis=-1)[..., ::2] for a in (x, W, dout))
        name = f"{np.dtype(dtype).name}-x{'x'.join(map(str, shape))}-out{n_out}-{layout}"
        tasks.append(Task(name, x, W, b, dout, use_buffers=i % 2 == 1))
    return tasks


def bad_call() -> None:
    """A call that fails inside the core, interleaved with the good ones."""
    x = np.ones((5, 3))
    with pytest.raises(ValueError, match="W has shape"):
        siglayer.forward(x, np.ones((4, 2)), np.ones(2))


@pytest.mark.parametrize("omp_threads", [1, 2], ids=lambda t: f"omp{t}")
def test_threads_give_sequential_results(omp_threads: int) -> None:
    tasks = make_tasks()
    before = siglayer.get_num_threads()
    siglayer.set_num_threads(omp_threads)
    try:
        for task in tasks:
            task.want = task.run()
    finally:
        siglayer.set_num_threads(before)
    inputs = [tuple(a.copy() for a in (t.x, t.W, t.b, t.dout)) for t in tasks]

    start = threading.Barrier(PYTHON_THREADS)
    failures: list[str] = []
    calls = [0] * PYTHON_THREADS

    def worker(index: int) -> None:
        try:
            siglayer.set_num_threads(omp_threads)  # this thread's own OpenMP setting
            order = np.random.default_rng(index).permutation(len(tasks))
            start.wait()
            for _ in range(ROUNDS):
                for k in order:
                    got = tasks[k].run()
                    for name, g, w in zip(
                        ("out", "dx", "dW", "db"), got, tasks[k].want, strict=True
                    ):
                        if g.tobytes() != w.tobytes():
                            failures.append(f"thread {index}: {tasks[k].name} {name} differs")
                    calls[index] += 2
                bad_call()
        except BaseException as e:  # report anything, including a failed pytest.raises
            failures.append(f"thread {index}: {type(e).__name__}: {e}")

    workers = [
        threading.Thread(target=worker, args=(i,), daemon=True) for i in range(PYTHON_THREADS)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(TIME_LIMIT)
    hung = [i for i, w in enumerate(workers) if w.is_alive()]
    assert not hung, f"threads {hung} still running after {TIME_LIMIT} s: deadlock or starvation"
    assert not failures, "\n".join(failures[:20])
    assert sum(calls) == PYTHON_THREADS * ROUNDS * len(tasks) * 2
    for task, kept in zip(tasks, inputs, strict=True):
        for a, k in zip((task.x, task.W, task.b, task.dout), kept, strict=True):
            np.testing.assert_array_equal(a, k, err_msg=f"{task.name}: an input changed")


def test_set_num_threads_is_per_thread() -> None:
    """The OpenMP thread count belongs to the calling thread: what the main thread sets
    does not reach a thread started afterwards (it starts from the default), and what a
    worker sets does not come back."""
    before = siglayer.get_num_threads()
    seen: list[int] = []

    def worker() -> None:
        seen.append(siglayer.get_num_threads())
        siglayer.set_num_threads(3)
        seen.append(siglayer.get_num_threads())

    try:
        siglayer.set_num_threads(1)
        thread = threading.Thread(target=worker)
        thread.start()
        thread.join(30)
        default = seen[0]
        assert seen == [default, 3]
        assert siglayer.get_num_threads() == 1
    finally:
        siglayer.set_num_threads(before)


def test_a_regions_floating_point_mode_is_its_callers() -> None:
    """A two-thread region run for a Python thread is led by one of siglayer's leader
    threads: it computes in the calling thread's floating-point mode. A thread that set
    flush-to-zero (torch.set_flush_denormal) gets flushed subnormals with one thread and
    with two; a thread that did not, afterwards, gets them kept (db of subnormal dZ
    values: 1024 rows of 1e-39 * 1/4 summed, about 2.56e-37, or 0 when flushed)."""
    torch = pytest.importorskip("torch")
    n, n_in, n_out = 1024, 8, 256  # two threads for this backward
    x = np.ones((n, n_in), np.float32)
    W = np.ones((n_in, n_out), np.float32)
    out = np.full((n, n_out), 0.5, np.float32)
    dout = np.full((n, n_out), 1e-39, np.float32)  # a subnormal float32
    kept = np.float32(n * np.float32(1e-39 * 0.25))
    seen: dict[str, list[np.ndarray]] = {"default": [], "flushing": []}

    def db(threads: int) -> np.ndarray:
        siglayer.set_num_threads(threads)
        return siglayer.backward(dout, x, W, out)[2]  # every column: both threads' tiles

    def flushing() -> None:
        torch.set_flush_denormal(True)
        seen["flushing"] += [db(1), db(2)]

    def default() -> None:
        seen["default"] += [db(1), db(2)]

    for target in (default, flushing, default):
        thread = threading.Thread(target=target)
        thread.start()
        thread.join(60)
    assert len(seen["flushing"]) == 2 and len(seen["default"]) == 4
    for got in seen["flushing"]:
        np.testing.assert_array_equal(got, 0.0)
    for got in seen["default"]:
        np.testing.assert_allclose(got, kept, rtol=1e-5)


def _run_fresh(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_first_calls_from_many_threads_at_once_do_not_deadlock():
    """The first calls of a process, from eight threads together (numpy.ma not yet
    imported): the core's one-time lookup of NumPy's array subclasses imports numpy.ma,
    and a C++ static initializer held its guard across that import while another thread
    waited on it holding the GIL: every run hung."""
    done = _run_fresh(
        """
        import sys, threading
        import numpy as np
        import siglayer
        # NumPy 1.x imports numpy.ma itself (no import left to race on there)
        assert "numpy.ma" not in sys.modules or np.__version__.startswith("1.")
        x, W, b = np.ones((2, 3)), np.ones((3, 4)), np.zeros(4)
        out = []
        ts = [threading.Thread(target=lambda: out.append(siglayer.forward(x, W, b)))
              for _ in range(8)]
        [t.start() for t in ts]; [t.join() for t in ts]
        want = 1 / (1 + np.exp(-3.0))
        print(len(out), all(np.allclose(o, want, rtol=1e-15, atol=0) for o in out))
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["8", "True"]


def test_exit_while_daemon_threads_are_inside_calls_is_clean():
    """Pythons before 3.14 end a daemon thread that wants the GIL back during finalization
    with pthread_exit. Its forced unwind through a noexcept destructor aborted the whole
    process ("terminate called without an active exception", exit code 134); let through,
    it ran pybind11's destructors, which drop Python references with no interpreter left:
    SIGSEGV at exit on 3.12 and 3.13, every run (3.10 and 3.11 got away with it). The
    threads now block until the process exits, as Python 3.14 blocks them itself. Four
    daemon threads, each in a different binding (forward, backward, an optimizer step, a
    bfloat16 conversion), all with the GIL released when the interpreter exits."""
    env = dict(os.environ)
    if "ASAN_OPTIONS" in env:
        # .ci/sanitize.sh: the blocked threads' Python objects (frames, arguments, CPython's
        # bootstate for each thread) are never freed, by design, and LeakSanitizer reports
        # them at exit (seen: 96-128 bytes in one run of three). ASan and UBSan still watch
        # this child; siglayer's own allocations are leak-checked by every other test.
        env["ASAN_OPTIONS"] = env["ASAN_OPTIONS"].replace("detect_leaks=1", "detect_leaks=0")
    done = _run_fresh(
        """
        import threading, time
        import numpy as np
        import siglayer
        from siglayer import _core
        x, W, b = (np.ones((64, 64), np.float32), np.ones((64, 64), np.float32),
                   np.zeros(64, np.float32))
        out = siglayer.forward(x, W, b)
        opt = siglayer.optim.SGD([siglayer.Parameter("w", np.zeros(4096, np.float32),
                                                     np.ones(4096, np.float32))], lr=0.1)
        calls = [lambda: siglayer.forward(x, W, b),
                 lambda: siglayer.backward(out, x, W, out),
                 opt.step]
        try:
            import ml_dtypes  # the test extra has it; a bare pytest run may not
            calls.append(lambda: _core.to_bfloat16(np.ones(1 << 16, np.float32)))
        except ImportError:
            pass
        def spin(call):
            while True:
                call()
        for call in calls:
            call()
            threading.Thread(target=spin, args=(call,), daemon=True).start()
        time.sleep(0.3)
        print("exiting")
        """,
        env,
    )
    assert done.returncode == 0, (done.returncode, done.stderr[:800])
    assert "terminate called" not in done.stderr
    assert done.stdout.strip() == "exiting"
