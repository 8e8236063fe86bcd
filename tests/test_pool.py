"""Whose OpenMP pool siglayer's regions run on beside PyTorch (threads.hpp, "borrowed").

PyTorch's CPU wheels run their operators on libgomp; SIGLAYER_POOL (select_pool) lets
siglayer's regions run on that pool instead of its own: "auto" (the default) for the calls
siglayer.torch's operators make, "shared" for every call, "own" never. Only on the thread
that imported siglayer, and never in a forked child. The oracle here is siglayer's own
pool: a team of the borrowed pool must give the same bits (the tiles depend on the sizes
and the team size only), and take_last_region tells which team ran.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator

import numpy as np
import pytest

import processes

torch = pytest.importorskip("torch")

import siglayer  # noqa: E402
import siglayer.torch as st  # noqa: E402
from siglayer import _core  # noqa: E402

TIME_LIMIT = 120.0

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux")
    or "libiomp5" not in _core.config()["openmp_runtime"]
    or "libgomp" not in _core.config()["thread_pool"] + _core.config()["openmp_runtime"],
    reason="borrowing needs the default build's libiomp5 on Linux and PyTorch's libgomp",
)

SHAPE = (256, 512, 320)  # above the one-thread threshold; tiles of 16-row blocks


@pytest.fixture
def pool() -> Iterator[None]:
    """Gives back the setting and the thread count whatever the test set."""
    before = _core.select_pool("auto")  # each test selects its own
    threads = siglayer.get_num_threads()
    torch_threads = torch.get_num_threads()
    yield
    _core.select_pool(before)
    siglayer.set_num_threads(threads)
    torch.set_num_threads(torch_threads)


def problem(dtype: str) -> tuple[np.ndarray, ...]:
    n, n_in, n_out = SHAPE
    rng = np.random.default_rng(7)
    x = rng.standard_normal((n, n_in))
    W = rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)
    b = rng.standard_normal(n_out)
    dout = rng.standard_normal((n, n_out))
    if dtype == "bfloat16":
        ml_dtypes = pytest.importorskip("ml_dtypes")
        bf = ml_dtypes.bfloat16
        return x.astype(bf), W.astype(bf), b.astype(np.float32), dout.astype(bf)
    return tuple(a.astype(dtype) for a in (x, W, b, dout))


def step(x: np.ndarray, W: np.ndarray, b: np.ndarray, dout: np.ndarray) -> list[np.ndarray]:
    """forward, backward (two loops and a barrier in one region), backward_from_preactivation."""
    out = siglayer.forward(x, W, b)
    dx, dW, db = siglayer.backward(dout, x, W, out)
    px, pW, pb = siglayer.backward_from_preactivation(dout, x, W)
    return [out, dx, dW, db, px, pW, pb]


def torch_step(x: np.ndarray, W: np.ndarray, b: np.ndarray, dout: np.ndarray) -> list[np.ndarray]:
    """The same through siglayer.torch's operator and autograd."""
    tx = st._from_numpy(x).requires_grad_()
    tW = st._from_numpy(W).requires_grad_()
    tb = torch.from_numpy(b).requires_grad_()
    out = st.sigmoid_linear(tx, tW, tb)
    out.backward(st._from_numpy(dout))
    return [st._to_numpy(t.detach()) for t in (out, tx.grad, tW.grad, tb.grad)]


def same(got: list[np.ndarray], want: list[np.ndarray]) -> bool:
    return len(got) == len(want) and all(
        g.dtype == w.dtype and np.array_equal(g.view(np.uint8), w.view(np.uint8))
        for g, w in zip(got, want, strict=True)
    )


EXPECTED = {  # (setting, caller) -> the team kind of the last region
    ("own", "numpy"): "own",
    ("own", "torch"): "own",
    ("auto", "numpy"): "own",
    ("auto", "torch"): "borrowed",
    ("shared", "numpy"): "borrowed",
    ("shared", "torch"): "borrowed",
}


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16"])
@pytest.mark.parametrize("caller", ["numpy", "torch"])
@pytest.mark.parametrize("setting", ["own", "auto", "shared"])
def test_each_setting_runs_its_pool_and_gives_the_same_bits(
    setting: str, caller: str, dtype: str, threads: int, pool: None
) -> None:
    """PyTorch's pool has 2 threads: a team of 3 is larger than PyTorch's own and runs on
    siglayer's pool whatever the setting (no libgomp worker PyTorch would not start)."""
    args = problem(dtype)
    run = step if caller == "numpy" else torch_step
    torch.set_num_threads(2)
    siglayer.set_num_threads(threads)
    _core.select_pool("own")
    want = run(*args)
    _core.select_pool(setting)
    _core.take_last_region()
    got = run(*args)
    kind = EXPECTED[setting, caller] if threads <= 2 else "own"
    assert _core.take_last_region() == f"{kind} {threads}"
    assert same(got, want), f"{setting}/{caller}: not the bits of siglayer's own pool"


def test_no_team_larger_than_pytorchs_own(pool: None) -> None:
    """PyTorch's pool sized 1 (torch.set_num_threads(1)), siglayer's 2: siglayer's own
    pool runs the call, on 2 threads."""
    torch.set_num_threads(1)
    siglayer.set_num_threads(2)
    args = problem("float32")
    _core.select_pool("own")
    want = torch_step(*args)
    _core.select_pool("auto")
    got = torch_step(*args)
    assert _core.take_last_region() == "own 2"
    assert same(got, want)


def test_other_threads_keep_siglayers_pool(pool: None) -> None:
    """Only the importing thread borrows: a call from another thread runs on one of
    siglayer's leader threads, on its own pool, and gives the same bits."""
    siglayer.set_num_threads(2)
    args = problem("float32")
    _core.select_pool("own")
    want = torch_step(*args)
    _core.select_pool("shared")
    result: dict[str, object] = {}

    def call() -> None:
        siglayer.set_num_threads(2)
        _core.take_last_region()
        result["got"] = torch_step(*args)
        result["team"] = _core.take_last_region()

    t = threading.Thread(target=call)
    t.start()
    t.join(TIME_LIMIT)
    assert not t.is_alive()
    assert result["team"] == "own 2"
    assert same(result["got"], want)  # type: ignore[arg-type]


def test_a_misspelt_setting_is_refused(pool: None) -> None:
    _core.select_pool("shared")
    with pytest.raises(ValueError, match="'auto', 'shared' or 'own', got 'torch'"):
        _core.select_pool("torch")  # type: ignore[arg-type]
    assert _core.select_pool("own") == "shared"  # unchanged by the refusal, and returned


def run_bounded(source: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """source in a fresh interpreter of its own session, killed whole on timeout."""
    code = textwrap.dedent(source)
    return processes.run_bounded(["-c", code], {**os.environ, **env}, TIME_LIMIT, "script")


def test_the_setting_from_the_environment() -> None:
    done = run_bounded(
        """
        import siglayer
        print(siglayer.show_config(mode="dicts")["thread_pool"])
        import torch
        print(siglayer.show_config(mode="dicts")["thread_pool"])
        """,
        {"SIGLAYER_POOL": "shared"},
    )
    assert done.returncode == 0, done.stderr
    before, after = done.stdout.splitlines()
    assert before == "shared: own (no libgomp loaded)"
    assert after.startswith("shared: libgomp's pool (") and "torch" in after
    assert after.endswith(") for every call on the importing thread")
    done = run_bounded("import siglayer", {"SIGLAYER_POOL": "torch"})
    assert done.returncode != 0
    assert "ValueError: SIGLAYER_POOL='torch': the pool must be 'auto', 'shared' or 'own'" in (
        done.stderr
    )


def test_a_forked_child_keeps_to_its_own_pool() -> None:
    """libgomp's team exists only in the parent after a fork: a child that borrowed it
    would wait for its workers forever. The child runs on siglayer's own pool, with the
    parent's bits, and the parent goes on borrowing."""
    done = run_bounded(
        """
        import os, sys
        import numpy as np, torch, siglayer
        from siglayer import _core
        siglayer.set_num_threads(2)
        rng = np.random.default_rng(1)
        x = rng.standard_normal((256, 512), dtype=np.float32)
        W = rng.standard_normal((512, 320), dtype=np.float32)
        b = rng.standard_normal(320, dtype=np.float32)
        want = siglayer.forward(x, W, b)
        assert _core.take_last_region() == "borrowed 2"
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            siglayer.set_num_threads(2)  # a child's count is the environment's again
            out = siglayer.forward(x, W, b)
            team = _core.take_last_region()
            ok = np.array_equal(out, want) and team == "own 2"
            pool = siglayer.show_config(mode="dicts")["thread_pool"]
            os.write(w, f"{int(ok)} {team} {pool}".encode())
            os._exit(0)
        os.close(w)
        _, status = os.waitpid(pid, 0)
        print(os.read(r, 1000).decode())
        again = siglayer.forward(x, W, b)
        print(_core.take_last_region(), np.array_equal(again, want), status)
        """,
        {"SIGLAYER_POOL": "shared"},
    )
    assert done.returncode == 0, done.stderr
    child, parent = done.stdout.splitlines()
    assert child == "1 own 2 shared: own (a forked child)"
    assert parent == "borrowed 2 True 0"


def test_pytorch_in_a_child_forked_after_a_call_with_its_pool_at_one_thread() -> None:
    """With torch.set_num_threads(1) PyTorch starts no libgomp worker; siglayer must not
    either (it runs on its own pool then), or a forked child whose PyTorch opens a region
    would wait forever for the parent's workers (libgomp is not fork-safe)."""
    done = run_bounded(
        """
        import os
        import torch, siglayer, siglayer.torch as st
        from siglayer import _core
        torch.set_num_threads(1)
        siglayer.set_num_threads(2)
        x, W, b = torch.randn(256, 512), torch.randn(512, 320), torch.zeros(320)
        st.sigmoid_linear(x, W, b)
        team = _core.take_last_region()
        pid = os.fork()
        if pid == 0:
            torch.set_num_threads(2)
            torch.sigmoid(torch.randn(2_000_000)).sum()  # a region of PyTorch's own
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        print(team, status)
        """,
        {"SIGLAYER_POOL": "auto"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["own", "2", "0"]


def test_a_child_of_a_fork_that_skips_pythons_hooks_keeps_to_its_own_pool() -> None:
    """A C extension's own fork() runs no os.register_at_fork hook; the child still
    does not borrow (a pthread_atfork handler marks it)."""
    done = run_bounded(
        """
        import ctypes, os
        import numpy as np, torch, siglayer
        from siglayer import _core
        siglayer.set_num_threads(2)
        x = np.ones((256, 512), np.float32)
        W = np.full((512, 320), 0.01, np.float32)
        b = np.zeros(320, np.float32)
        want = siglayer.forward(x, W, b)
        parent = _core.take_last_region()
        libc = ctypes.CDLL(None, use_errno=True)
        r, w = os.pipe()
        pid = libc.fork()
        if pid == 0:
            siglayer.set_num_threads(2)
            ok = np.array_equal(siglayer.forward(x, W, b), want)
            os.write(w, f"{int(ok)} {_core.take_last_region()}".encode())
            os._exit(0)
        os.close(w)
        _, status = os.waitpid(pid, 0)
        print(parent, "|", os.read(r, 100).decode(), status)
        """,
        {"SIGLAYER_POOL": "shared"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "borrowed 2 | 1 own 2 0"
