"""Threads as threadpoolctl sees them: siglayer's BLAS and OpenMP pool, and their limits."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from threadpoolctl import threadpool_info, threadpool_limits

import siglayer
from siglayer import _core

# Where the bundled libraries sit: beside _core (in an editable install the Python files
# stay in the source tree and the compiled ones go to site-packages).
PACKAGE_DIR = Path(siglayer._core.__file__).resolve().parent
SCIPY_OPENBLAS = _core.config()["blas"] == "scipy-openblas32"


def _siglayer_openmp_pools(n_threads: int) -> list[dict[str, object]]:
    """The OpenMP runtimes whose pool size is what siglayer.get_num_threads() reports."""
    siglayer.set_num_threads(n_threads)
    return [
        info
        for info in threadpool_info()
        if info["user_api"] == "openmp" and info["num_threads"] == n_threads
    ]


@pytest.mark.skipif(not SCIPY_OPENBLAS, reason="the private BLAS of the default build")
def test_threadpoolctl_sees_siglayers_private_openblas():
    ours = [
        info
        for info in threadpool_info()
        if info["user_api"] == "blas" and Path(info["filepath"]).resolve().parent == PACKAGE_DIR
    ]
    assert len(ours) == 1, threadpool_info()
    (blas,) = ours
    assert blas["internal_api"] == "openblas"
    assert blas["prefix"] == "libscipy_openblas"
    assert str(blas["version"]) in _core.config()["blas_details"]
    # One thread by design: siglayer's OpenMP threads each call it on their own slab.
    assert blas["num_threads"] == 1 == _core.blas_num_threads()


def test_threadpoolctl_sees_siglayers_openmp_pool(restore_threads):
    # A pool that follows siglayer.set_num_threads to 3 and to 1 is the one siglayer uses.
    pools_at_3 = {info["filepath"] for info in _siglayer_openmp_pools(3)}
    pools_at_1 = {info["filepath"] for info in _siglayer_openmp_pools(1)}
    assert pools_at_3 & pools_at_1, threadpool_info()
    assert all(
        info["internal_api"] == "openmp"
        for info in threadpool_info()
        if info["filepath"] in pools_at_3
    )


def test_threadpool_limits_one_makes_siglayer_single_threaded(restore_threads):
    siglayer.set_num_threads(3)
    with threadpool_limits(limits=1):
        assert siglayer.get_num_threads() == 1
        assert all(info["num_threads"] == 1 for info in threadpool_info())
    assert siglayer.get_num_threads() == 3
    if SCIPY_OPENBLAS:
        assert _core.blas_num_threads() == 1  # restored to its designed value too


def test_threadpool_limits_on_openmp_alone(restore_threads):
    siglayer.set_num_threads(3)
    with threadpool_limits(limits=2, user_api="openmp"):
        assert siglayer.get_num_threads() == 2
    assert siglayer.get_num_threads() == 3


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads in /proc")
def test_threadpool_limits_one_starts_no_worker_thread():
    """In a fresh process: under threadpool_limits(1) a large forward and backward start
    no thread at all; with 2 threads the same calls start OpenMP's second thread."""
    script = textwrap.dedent(
        """
        import os, numpy as np, siglayer
        from threadpoolctl import threadpool_limits
        threads = lambda: len(os.listdir("/proc/self/task"))
        rng = np.random.default_rng(0)
        x = rng.standard_normal((256, 512)); W = rng.standard_normal((512, 512)) / 23
        b = np.zeros(512)
        siglayer.set_num_threads(2)
        before = threads()
        with threadpool_limits(limits=1):
            out = siglayer.forward(x, W, b)
            siglayer.backward(out, x, W, out)
        limited = threads()
        out = siglayer.forward(x, W, b)
        siglayer.backward(out, x, W, out)
        print(before, limited, threads())
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    before, limited, unlimited = map(int, result.stdout.split())
    assert limited == before, result.stdout
    assert unlimited == before + 1, result.stdout


# The problem of THREAD_LIMIT, and what a team of two gives for it, in a process of its
# own: a team's tiles are not a one-thread call's, and OpenBLAS's float32 kernels may round
# a tile's rows differently from the same rows of a larger product (seen with its Haswell
# kernels on Zen 5), so a team's bits may differ from a one-thread call's. Computed apart
# so that the limited process has started no worker before the limit.
LIMIT_PROBLEM = """
import numpy as np, siglayer
rng = np.random.default_rng(0)
x = rng.standard_normal((512, 256)).astype(np.float32)
W = rng.standard_normal((256, 512)).astype(np.float32)
b = rng.standard_normal(512).astype(np.float32)
dout = rng.standard_normal((512, 512)).astype(np.float32)
"""
TEAM_OF_TWO = (
    LIMIT_PROBLEM
    + """
import io, sys
siglayer.set_num_threads(2)
out = siglayer.forward(x, W, b)
dx, dW, db = siglayer.backward(dout, x, W, out)
buffer = io.BytesIO()
np.savez(buffer, out=out, dx=dx, dW=dW, db=db)
sys.stdout.buffer.write(buffer.getvalue())
"""
)

THREAD_LIMIT = (
    LIMIT_PROBLEM
    + """
import ctypes, io, os, resource, subprocess, sys, threading, time
tasks = lambda: len(os.listdir("/proc/self/task"))
siglayer.set_num_threads(1)  # no worker thread yet
want = siglayer.forward(x, W, b)
want_grads = siglayer.backward(dout, x, W, want)
team = subprocess.run([sys.executable, "-c", TEAM_OF_TWO], capture_output=True)
if team.returncode != 0:
    raise SystemExit("the team of two failed: " + team.stderr.decode()[-2000:])
with np.load(io.BytesIO(team.stdout)) as f:
    want2, want2_grads = f["out"], (f["dx"], f["dW"], f["db"])
# Now as nobody: RLIMIT_NPROC does not bind root. After the calls above, which import
# what the calls below need (the environment may be in a directory only root can read).
# libiomp5 names its registration file by uid too, and at exit, as nobody, would look for
# nobody's: root's is removed now (as a worker's is), or each run left it in /dev/shm.
siglayer._core.forget_registration()
os.setgid(65534)
os.setuid(65534)
ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE, which setuid cleared (LSan needs it)


def step(want=want, want_grads=want_grads):
    out = siglayer.forward(x, W, b)
    grads = siglayer.backward(dout, x, W, out)
    return np.array_equal(out, want) and all(map(np.array_equal, grads, want_grads))


results = []
go, done = threading.Event(), threading.Event()
before = tasks()


def other():  # a thread that was running before the limit: it needs a leader thread
    siglayer.set_num_threads(2)  # per thread: not from the default (1 on a 1-core runner)
    go.wait()
    results.append(step())
    done.set()


caller = threading.Thread(target=other)
caller.start()
siglayer.set_num_threads(2)
soft, hard = resource.getrlimit(resource.RLIMIT_NPROC)
resource.setrlimit(resource.RLIMIT_NPROC, (tasks(), hard))  # no thread more
try:
    threading.Thread(target=lambda: None).start()
    raise SystemExit("RLIMIT_NPROC is not enforced here")
except RuntimeError:
    pass
results.append(step())  # the main thread's team needs a worker
go.set()
done.wait(60)
caller.join()
resource.setrlimit(resource.RLIMIT_NPROC, (soft, hard))
results.append(step(want2, want2_grads))  # now the team forms: one worker more
for _ in range(500):  # a joined thread may linger in /proc for a moment
    if not os.path.exists(f"/proc/self/task/{caller.native_id}"):
        break
    time.sleep(0.01)
print(results, before, tasks())
""".replace("TEAM_OF_TWO", repr(TEAM_OF_TWO))
)


PARTIAL_ROOM = """
import ctypes, os, resource
import numpy as np, siglayer
rng = np.random.default_rng(0)
x = rng.standard_normal((1024, 512)).astype(np.float32)
W = rng.standard_normal((512, 1024)).astype(np.float32)
b = rng.standard_normal(1024).astype(np.float32)
# The oracle: the float64 reference (a team of two cuts the product into other tiles than
# one thread does, and OpenBLAS's float32 kernels may round a tile's rows differently
# from the same rows of a larger product: seen with its Haswell kernels on Zen 5), to
# float32's accuracy over 512 terms; and every call of the team the same bits.
want = siglayer.reference.forward(*(a.astype(np.float64) for a in (x, W, b)))
first = []
siglayer.set_num_threads(1)  # no worker thread yet
siglayer.forward(x, W, b)  # as root: imports what the calls as nobody need (numpy.ma)


def right(out):
    if not first:
        first.append(out)
    return np.abs(out - want).max() <= 1e-4 and np.array_equal(out, first[0])


siglayer._core.forget_registration()  # root's registration file (see THREAD_LIMIT)
os.setgid(65534)
os.setuid(65534)
ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)
main = str(ctypes.CDLL(None).gettid())


def worker_ticks():  # CPU time (utime + stime, clock ticks) of every thread but this one
    total = 0
    for tid in os.listdir("/proc/self/task"):
        if tid != main:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total


siglayer.set_num_threads(4)
soft, hard = resource.getrlimit(resource.RLIMIT_NPROC)
start = len(os.listdir("/proc/self/task"))
resource.setrlimit(resource.RLIMIT_NPROC, (start + 1, hard))
rounds = []
for _ in range(3):  # room for one worker: a team of two, on every call
    before = worker_ticks()
    ok = all([right(siglayer.forward(x, W, b)) for _ in range(20)])
    rounds.append((ok, worker_ticks() > before))
resource.setrlimit(resource.RLIMIT_NPROC, (soft, hard))
print(rounds, len(os.listdir("/proc/self/task")) - start)
"""


def run_as_nobody(script: str) -> str:
    """Runs a script that drops to nobody (whose threads RLIMIT_NPROC counts; root is
    exempt) in a fresh process; its stdout, once it exited cleanly. Under the sanitizers
    there is no leak check at its exit: LeakSanitizer, as nobody, cannot read the
    interpreter's libraries to name their frames, so CPython's own allocations escape
    .ci/lsan.supp."""
    env = dict(os.environ)
    if "ASAN_OPTIONS" in env:
        env["ASAN_OPTIONS"] += ":detect_leaks=0"
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",
        env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


ROOT_ONLY = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0,
    reason="drops from root to nobody, whose threads RLIMIT_NPROC counts",
)


@ROOT_ONLY
def test_at_the_thread_limit_a_team_keeps_the_workers_it_could_start():
    """Four threads wanted, room for one worker: every call runs on a team of two (the
    worker does work in each round of 20 calls) and gives the same bits on every call,
    within 1e-4 of the float64 reference (sigmoid outputs, 512 float32 terms a sum: the
    bits of a one-thread call are no oracle for a team's). A first version
    of the check asked for three new threads at every call, found none once the worker
    existed, and ran every call after the first on one thread."""
    stdout = run_as_nobody(PARTIAL_ROOM)
    rounds, new_threads = stdout.rsplit(" ", 1)
    assert rounds == "[(True, True), (True, True), (True, True)]", stdout
    assert int(new_threads) == 1, stdout  # the one worker


@ROOT_ONLY
def test_calls_when_no_thread_can_be_started_run_on_the_callers_thread():
    """At the process's thread limit (RLIMIT_NPROC) a call that needs a new thread (a
    worker for the main thread's team, a leader for another Python thread) runs all of
    its work on the caller's thread and gives a one-thread call's bits (and a team of
    two, once it forms, a team of two's), where the OpenMP runtime
    ended the process ("OMP: Error #34", libiomp5) and a new thread's call was a
    RuntimeError; once threads can be started again, the team forms."""
    stdout = run_as_nobody(THREAD_LIMIT)
    results, before, after = stdout.rsplit(" ", 2)
    assert results == "[True, True, True]", stdout
    assert int(after) == int(before) + 1, stdout  # the team's worker


@pytest.mark.skipif(not SCIPY_OPENBLAS, reason="the private BLAS of the default build")
def test_raising_the_blas_limit_does_not_oversubscribe():
    """threadpool_limits(2) also raises siglayer's private OpenBLAS to 2 threads; siglayer
    puts it back to one before it splits a product between its own threads, so no BLAS
    call runs inside an OpenMP region with threads of its own (OpenBLAS would warn
    "Detect OpenMP Loop" on stderr). Run in a subprocess to read that stderr."""
    code = textwrap.dedent(
        """
        import numpy as np, siglayer
        from threadpoolctl import threadpool_limits, threadpool_info
        from pathlib import Path
        here = Path(siglayer._core.__file__).resolve().parent
        rng = np.random.default_rng(0)
        x = rng.standard_normal((512, 256)); W = rng.standard_normal((256, 384))
        b = rng.standard_normal(384)
        with threadpool_limits(2):
            out = siglayer.forward(x, W, b)
            ours = [i["num_threads"] for i in threadpool_info()
                    if i["user_api"] == "blas" and Path(i["filepath"]).resolve().parent == here]
        assert np.allclose(out, siglayer.reference.forward(x, W, b), rtol=1e-12, atol=1e-15)
        print(ours)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[1]"
    assert "OpenMP Loop" not in result.stderr


@pytest.mark.parametrize("isa", ["baseline", "avx2", "avx512", "avx512bf16"])
def test_siglayer_isa_switch_picks_the_kernels_at_import(isa):
    """SIGLAYER_ISA, read at import, forces an instruction set the CPU has; one it lacks
    or a misspelt name fails the import with an error that names the variable."""
    code = (
        "import siglayer; c = siglayer._config.config(); "
        "print(c['simd'], c['bf16_gemm'].split()[0]); print(c['bf16_gemm'])"
    )
    env = dict(os.environ, SIGLAYER_ISA=isa)
    env.pop("SIGLAYER_BF16_GEMM", None)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if isa in siglayer._config.config()["simd_available"].split(","):
        assert done.returncode == 0, done.stderr
        first, line = done.stdout.splitlines()
        simd, bf16_gemm = first.split()
        assert simd == isa
        # Below avx512bf16 the bfloat16 products run as on a CPU without it (they kept
        # siglayer's vdpbf16ps GEMM before, so the switch did not give an AVX2 machine's path),
        # and show_config's line says what the CPU has (it said "the CPU runs avx512bf16").
        if isa != "avx512bf16":
            assert bf16_gemm == "convert"
            if "avx512bf16" in siglayer._config.config()["simd_available"].split(","):
                assert line.endswith(
                    f"the kernels run {isa}, as on a CPU without AVX512-BF16; "
                    "the CPU has AVX512-BF16)"
                ), line
    else:
        assert done.returncode != 0
        assert "SIGLAYER_ISA='" + isa + "'" in done.stderr and "cannot run" in done.stderr


def test_siglayer_isa_switch_rejects_unknown_names():
    env = dict(os.environ, SIGLAYER_ISA="sse9")
    done = subprocess.run(
        [sys.executable, "-c", "import siglayer"], env=env, capture_output=True, text=True
    )
    assert done.returncode != 0
    assert "SIGLAYER_ISA='sse9'" in done.stderr and "expected one of" in done.stderr


@pytest.mark.parametrize(
    ("variable", "value", "spin", "named"),
    [
        (None, None, 1, False),
        ("KMP_BLOCKTIME", "7", 7, True),
        ("OMP_WAIT_POLICY", "PASSIVE", 0, True),
        ("OMP_WAIT_POLICY", "passive", 0, True),
        ("OMP_WAIT_POLICY", "", 1, False),  # the runtime ignores it: siglayer's 1 ms stays
        ("OMP_WAIT_POLICY", "sleepy", 1, False),
    ],
    ids=["default", "KMP_BLOCKTIME", "PASSIVE", "passive", "empty", "misspelt"],
)
def test_the_users_wait_policy_wins_over_the_idle_spin(variable, value, spin, named):
    """siglayer sets libiomp5's idle spin to 1 ms unless the environment chose one: a
    KMP_BLOCKTIME, or OMP_WAIT_POLICY (PASSIVE is no spin; a review found it silently
    turned back into 1 ms). The block time is read back from the runtime after a call,
    and show_config names the variable."""
    if not siglayer._core.config()["openmp_runtime"].startswith("intel"):
        pytest.skip("the idle spin is set with libiomp5 only")
    code = (
        "import ctypes, glob, os, numpy as np, siglayer\n"
        "x = np.ones((512, 256), np.float32); W = np.ones((256, 256), np.float32)\n"
        "siglayer.forward(x, W, np.zeros(256, np.float32))\n"
        "lib = glob.glob(os.path.join(os.path.dirname(siglayer._core.__file__), 'libiomp5*'))\n"
        "print(ctypes.CDLL(lib[0]).kmp_get_blocktime())\n"
        "print(siglayer._core.config()['openmp_runtime'])\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("KMP_BLOCKTIME", "OMP_WAIT_POLICY")}
    if variable:
        env[variable] = value
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    blocktime, runtime = done.stdout.splitlines()
    assert int(blocktime) == spin
    assert runtime.endswith(f"idle spin {spin} ms" + (f" ({variable})" if named else ""))
