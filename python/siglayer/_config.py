"""Threads and build information."""

from __future__ import annotations

import importlib.util
import os
import platform
import signal
import sys
import threading
import warnings
from collections.abc import Callable
from typing import Any, Literal, TextIO, TypedDict, cast, overload

import numpy as np  # first: NumPy's own OpenBLAS reads the environment as the user set it


def _load_core() -> None:
    """Import the compiled core without starting a thread pool it never uses.

    The default build on Linux ships its own OpenBLAS beside _core
    (libscipy_openblas_siglayer.so, loaded with it), which siglayer calls from its own
    OpenMP threads, one BLAS thread each. OpenBLAS starts its worker pool when it is
    loaded, one thread per CPU but one (or as OPENBLAS_NUM_THREADS, GOTO_NUM_THREADS or
    OMP_NUM_THREADS say), and is set to one thread only afterwards: 63 idle threads in
    every process on a 64-CPU host (a packaging audit counted one more thread after
    ``import siglayer`` on two CPUs). Loaded with OPENBLAS_NUM_THREADS=1 it starts none
    (it starts them when asked for more, as the benchmarks' BLAS-threaded floor does).
    The variable is set for the load alone and restored right after, in the C library's
    environment, which OpenBLAS reads and child processes inherit: os.environ is never
    touched, and a value set with os.putenv or by C code (which os.environ does not
    know) is restored too (a review found os.environ's view deleting it). For the few
    milliseconds of the load the process environment does say 1: a process that another
    thread starts in that window inherits it. A system OpenBLAS (``SIGLAYER_BLAS=system``)
    may serve another package too and keeps the user's setting; MKL does not read the
    variable.
    """
    spec = importlib.util.find_spec(f"{__package__}._core")
    folder = os.path.dirname(spec.origin) if spec is not None and spec.origin else ""
    if not os.path.exists(os.path.join(folder, "libscipy_openblas_siglayer.so")):
        return  # another build, or not Linux: imported below as it is
    import ctypes

    libc = ctypes.CDLL(None)
    libc.getenv.restype = ctypes.c_char_p  # copied into bytes at once
    libc.getenv.argtypes = [ctypes.c_char_p]
    libc.setenv.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int]
    libc.unsetenv.argtypes = [ctypes.c_char_p]
    variable = b"OPENBLAS_NUM_THREADS"
    saved = libc.getenv(variable)
    libc.setenv(variable, b"1", 1)
    try:
        from . import _core  # noqa: F401
    finally:
        if saved is None:
            libc.unsetenv(variable)
        else:
            libc.setenv(variable, saved, 1)


def _started_as_worker() -> bool:
    """Whether this process is a worker that its starter may kill or end with os._exit:
    one torchrun started (TORCHELASTIC_RUN_ID), or one multiprocessing started (spawn,
    forkserver) that is importing its code now (``_inheriting``: the parent's main module,
    before the worker runs) or has been handed its task (``parent_process``)."""
    if os.environ.get("TORCHELASTIC_RUN_ID"):
        return True
    mp = sys.modules.get("multiprocessing")
    if mp is None:
        return False
    return mp.parent_process() is not None or bool(
        getattr(mp.current_process(), "_inheriting", False)
    )


# libiomp5 registers every process that starts it in a file named by its pid in /dev/shm
# and removes it at exit, from a destructor that a multiprocessing worker never runs (it
# ends with os._exit, or is killed by Pool.terminate): every such worker left its file for
# good. A worker removes its own as soon as the runtime has written it: a forked child by
# itself (the core's fork handler), a spawned one or torchrun's right here, as the core is
# loaded (cpp/siglayer/threads.hpp, forget_registration; docs/reliability.md, "Worker
# processes"). The runtime writes the file as it loads, with the core, so a SIGTERM
# between the load and the removal left it (Pool.terminate, when the other worker has done
# every task while this one is still importing: 9 and 10 of 10 workers in two runs of
# tests/test_fork.py's scenario, which kills each as soon as its file appears; seen once in
# a CI run).
# So a worker whose SIGTERM would end it (the default disposition) holds the signal off for
# that while: a handler that does nothing, the signal noted by Python's C handler in a pipe
# (signal.set_wakeup_fd: at once, where the Python handler would run only at the next
# bytecode, and a SIGTERM caught just before the default is put back would be dropped,
# leaving a worker that Pool.terminate then waits for); once the file is gone, the default
# is put back and a noted SIGTERM raised again. A handler, not a blocked signal: the signal
# goes to the process, and NumPy's OpenBLAS threads, already running, would take it. A
# worker with a handler of its own (a Python one, or one set from C, which
# signal.getsignal still reports as the default: PyTorch's DataLoader workers,
# faulthandler.register) is not ended by SIGTERM at once anyway, and is left as it is.
# SIGKILL cannot be held off.
def _sigterm_is_default() -> bool:
    """Whether SIGTERM's disposition is SIG_DFL in the C library too (Linux x86-64 and
    aarch64, where struct sigaction begins with the handler; elsewhere False)."""
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return False
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "aarch64"):
        return False
    import ctypes

    action = ctypes.create_string_buffer(256)  # struct sigaction (152 bytes here)
    if ctypes.CDLL(None).sigaction(int(signal.SIGTERM), None, action) != 0:
        return False
    return ctypes.c_void_p.from_buffer(action).value is None  # SIG_DFL is 0


def _hold_termination() -> Callable[[], None] | None:
    """Holds a default SIGTERM off until the returned release() is called, which puts the
    default back and raises a SIGTERM that arrived meanwhile again; None where there is
    nothing to hold (a handler of the program's) or Python cannot hold it (not the main
    thread, no pipe to be had, a wakeup fd refused)."""
    if threading.current_thread() is not threading.main_thread() or not _sigterm_is_default():
        return None
    try:
        read_end, write_end = os.pipe()
    except OSError:
        return None
    os.set_blocking(read_end, False)
    os.set_blocking(write_end, False)
    try:
        wakeup_before = signal.set_wakeup_fd(write_end)
    except ValueError:  # not the main interpreter
        os.close(read_end)
        os.close(write_end)
        return None
    signal.signal(signal.SIGTERM, lambda signum, frame: None)

    def release() -> None:
        noted = b""
        try:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # from here on a SIGTERM ends it
        finally:
            # (its warn_on_full_buffer cannot be read back: a program that turned it off
            # gets the default, True)
            signal.set_wakeup_fd(wakeup_before)
            try:
                noted = os.read(read_end, 4096)  # one byte per signal caught: its number
            except BlockingIOError:
                pass
            os.close(read_end)
            os.close(write_end)
        others = bytes(number for number in noted if number != signal.SIGTERM)
        if others and wakeup_before != -1:  # the program's own wakeup fd (asyncio's) gets
            try:  # the other signals noted meanwhile, as it would have
                os.write(wakeup_before, others)
            except OSError:
                pass
        if signal.SIGTERM in noted:
            signal.raise_signal(signal.SIGTERM)

    return release


_IS_WORKER = _started_as_worker()
_release = _hold_termination() if _IS_WORKER else None
try:
    _load_core()

    from . import _core

    if _IS_WORKER:
        _core.forget_registration()
finally:
    if _release is not None:
        _release()
del _release

__all__ = ["Config", "config", "get_num_threads", "set_num_threads", "show_config"]


# SIGLAYER_ISA=avx2 (or avx512bf16, avx512, baseline) picks the elementwise kernels at
# import instead of the best the CPU has: to measure the AVX2 path on an AVX-512 machine,
# or to rule the vector kernels out. A CPU that cannot run the choice, or a misspelt one,
# fails the import with a ValueError that names the variable.
def _select_from_environment(variable: str, select: Callable[[Any], object]) -> None:
    """select(value of the variable) where it is set; the core checks the value, and a
    ValueError names the variable."""
    value = os.environ.get(variable)
    if value:
        try:
            select(value)
        except ValueError as exc:
            raise ValueError(f"{variable}={value!r}: {exc}") from None


_select_from_environment("SIGLAYER_ISA", _core.select_isa)

# SIGLAYER_POOL=own (or shared, auto) picks whose OpenMP pool siglayer's parallel regions
# run on in a process that has loaded PyTorch: auto, the default, runs the calls that
# siglayer.torch's operators make on PyTorch's own pool (libgomp), whose workers are
# awake after the operator before; shared runs every call there; own never does
# (docs/reliability.md, "Threads beside other libraries"). A misspelt value fails the
# import with a ValueError that names the variable.
_select_from_environment("SIGLAYER_POOL", _core.select_pool)

# SIGLAYER_BF16_GEMM=convert (or blas, auto) picks how bfloat16 products run: convert
# (operands widened to float32, the float32 GEMM: any BLAS, any CPU) forces the fallback
# on a machine whose BLAS and CPU have a bfloat16 GEMM; blas forces the BLAS's bfloat16
# GEMM even on a CPU without bfloat16 instructions (MKL then emulates it); avx512bf16
# forces siglayer's own bfloat16 GEMM (vdpbf16ps; a CPU with AVX512-BF16). auto, the
# default: blas on a CPU with AMX-BF16 where there is one (MKL's AMX code), else
# avx512bf16 where the CPU has AVX512-BF16 (on Zen 4 MKL's bfloat16 GEMM runs a generic
# path, slower than convert: docs/bfloat16.md), else convert.
# "The BLAS's" is the build's own (an MKL build) or, in a build without one (the
# default), MKL's from the `mkl` package (pip install mkl, or the mkl extra), loaded here only
# when blas could be chosen: see _find_mkl_rt. A misspelt value, blas with neither, or
# avx512bf16 on a CPU without it, fails the import with a ValueError that names the
# variable.


def _find_mkl_rt() -> str | None:
    """Path of libmkl_rt: SIGLAYER_MKL_RT if set, else the one the `mkl` package installed."""
    if os.environ.get("SIGLAYER_MKL_RT"):
        return os.environ["SIGLAYER_MKL_RT"]
    import importlib.metadata

    try:
        files = importlib.metadata.distribution("mkl").files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if f.name.startswith("libmkl_rt.so"):
            return os.path.realpath(str(f.locate()))
    return None


def _choose_bf16_gemm() -> None:
    mode = os.environ.get("SIGLAYER_BF16_GEMM") or "auto"
    core = _core.config()
    auto_blas = core["cpu_amx_bf16"] or (core["cpu_bf16"] and not core["bf16_gemm_own"])
    wanted = mode == "blas" or (mode == "auto" and auto_blas)
    if wanted and not core["bf16_gemm_in_blas"] and sys.platform.startswith("linux"):
        path = _find_mkl_rt()
        if path is not None:
            try:
                _core.load_mkl_bf16(path)
            except ValueError as exc:
                if mode == "blas" or os.environ.get("SIGLAYER_MKL_RT"):
                    raise ValueError(f"SIGLAYER_BF16_GEMM={mode!r}: {exc}") from None
                warnings.warn(
                    f"siglayer: bfloat16 products run through convert: {exc}",
                    RuntimeWarning,
                    stacklevel=3,
                )
    try:
        _core.select_bf16_gemm(cast(Any, mode))  # the core checks the name
    except ValueError as exc:
        raise ValueError(f"SIGLAYER_BF16_GEMM={mode!r}: {exc}") from None


_choose_bf16_gemm()

# A child forked after a parallel call would otherwise wait forever for the parent's
# OpenMP workers: before os.fork (multiprocessing, concurrent.futures, servers that
# pre-fork) siglayer waits for its running calls and releases its pool; parent and
# child start fresh pools at their next call (cpp/siglayer/threads.hpp, and
# docs/reliability.md, "Worker processes").
os.register_at_fork(
    before=_core.before_fork,
    after_in_parent=_core.after_fork_in_parent,
    after_in_child=_core.after_fork_in_child,
)


class Config(TypedDict):
    """What ``show_config`` prints, in this order."""

    version: str
    blas: str
    blas_details: str
    blas_int_bits: int
    simd: str
    simd_available: str
    bf16_gemm: str
    openmp: int
    openmp_runtime: str
    thread_pool: str
    compiler: str
    threads: int
    blas_threads: int
    numpy: str
    python: str
    machine: str


def set_num_threads(n: int) -> None:
    """Use ``n`` threads for the large products and sweeps of forward and backward.

    siglayer runs one OpenMP pool; with the default BLAS each of its threads calls a
    single-threaded BLAS on its own slab of each product, so this one number governs
    all of siglayer's threads. With a system or MKL BLAS the BLAS's own thread count
    is set to ``n`` as well.

    Parameters
    ----------
    n : int
        Number of threads, at least 1.

    Raises
    ------
    TypeError
        n is not an integer (``bool`` included).
    ValueError
        n < 1, or n > 2**31 - 1.

    Notes
    -----
    Like ``omp_set_num_threads``, this applies to calls made from the calling thread
    only: a thread started later begins with the OpenMP default (``OMP_NUM_THREADS`` or
    the number of CPUs), so call it in each worker thread that should differ. Problems
    below about 10**6 multiply-adds run on one thread whatever this says.
    ``threadpoolctl.threadpool_limits`` sets the same OpenMP pool (docs/guide.md,
    "Threads").

    Examples
    --------
    >>> import siglayer
    >>> before = siglayer.get_num_threads()
    >>> siglayer.set_num_threads(1)
    >>> siglayer.get_num_threads()
    1
    >>> siglayer.set_num_threads(before)
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"n must be an int, got {type(n).__name__}")
    if not 1 <= n <= 2**31 - 1:
        raise ValueError(f"n must be between 1 and 2**31 - 1, got {n}")
    _core.set_num_threads(int(n))


def get_num_threads() -> int:
    """Number of threads siglayer uses for large problems.

    This is the size of the OpenMP pool as the calling thread sees it
    (``omp_get_max_threads()``): the ``OMP_NUM_THREADS`` environment variable or the
    number of CPUs by default, then whatever ``set_num_threads`` or
    ``threadpoolctl.threadpool_limits`` last set.

    Returns
    -------
    int
        At least 1.

    Examples
    --------
    >>> import siglayer
    >>> siglayer.get_num_threads() >= 1
    True
    """
    return int(_core.get_num_threads())


def config() -> Config:
    """Version, BLAS backend, threads and SIMD level, as a dict (see ``show_config``)."""
    core = _core.config()
    return {
        "version": _core.__version__,
        "blas": core["blas"],
        "blas_details": core["blas_details"],
        "blas_int_bits": core["blas_int_bits"],
        "simd": core["simd"],
        "simd_available": core["simd_available"],
        "bf16_gemm": _bf16_gemm_description(core),
        "openmp": core["openmp"],
        "openmp_runtime": core["openmp_runtime"],
        "thread_pool": core["thread_pool"],
        "compiler": core["compiler"],
        "threads": get_num_threads(),
        "blas_threads": int(_core.blas_num_threads()),
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


def _bf16_gemm_description(core: _core.CoreConfig) -> str:
    """How bfloat16 products run, and why (docs/bfloat16.md)."""
    if core["cpu_amx_bf16"]:
        cpu = "the CPU has AMX-BF16"
    elif core["cpu_bf16"]:
        cpu = "the CPU has AVX512-BF16, not AMX-BF16"
    else:
        cpu = "the CPU lacks AVX512-BF16 and AMX-BF16"
    gemm = "the BLAS's bfloat16 GEMM"
    if core["bf16_gemm_mkl_runtime"]:
        gemm = f"the bfloat16 GEMM of {core['bf16_gemm_mkl_runtime']}"
    if core["bf16_gemm"] == "blas":
        amx = f"; AMX tile data {core['amx_permission']}" if core["cpu_amx_bf16"] else ""
        return f"blas ({gemm}; {cpu}{amx})"
    if core["bf16_gemm"] == "avx512bf16":
        amx = "the CPU has AMX-BF16" if core["cpu_amx_bf16"] else "the CPU lacks AMX-BF16"
        mkl = "MKL's is loaded" if core["bf16_gemm_in_blas"] else "no MKL"
        return f"avx512bf16 (siglayer's bfloat16 GEMM on AVX512-BF16, vdpbf16ps; {amx}, {mkl})"
    if core["bf16_gemm_own"] and core["simd"] != "avx512bf16":
        # auto after SIGLAYER_ISA / select_isa forced the kernels below avx512bf16
        return (
            f"convert (float32 GEMM on widened operands: the kernels run {core['simd']}, "
            f"as on a CPU without AVX512-BF16; the CPU has AVX512-BF16)"
        )
    if core["bf16_gemm_own"]:  # only when forced: auto takes avx512bf16 or blas here
        return (
            "convert (float32 GEMM on widened operands, as SIGLAYER_BF16_GEMM or "
            "select_bf16_gemm asked; the CPU has AVX512-BF16)"
        )
    if core["bf16_gemm_in_blas"]:
        blas = "there is one"
    elif core["cpu_amx_bf16"]:
        blas = "the BLAS has none: pip install mkl for MKL's"
    else:
        blas = "the BLAS has none"
    return f"convert (float32 GEMM on widened operands; {blas}, {cpu})"


@overload
def show_config(file: TextIO | None = None, *, mode: Literal["stdout"] = "stdout") -> None: ...
@overload
def show_config(file: None = None, *, mode: Literal["dicts"]) -> dict[str, object]: ...
def show_config(
    file: TextIO | None = None, *, mode: Literal["stdout", "dicts"] = "stdout"
) -> dict[str, object] | None:
    """Print the version, BLAS backend, threads and SIMD level in use, one per line; or,
    with ``mode="dicts"`` (as ``numpy.show_config``), return them as a dict.

    The lines are: ``version`` (``siglayer.__version__``), ``blas`` (the backend
    compiled in: scipy-openblas32, mkl or system), ``blas_details`` (its own
    configuration string), ``blas_int_bits`` (32: each matrix dimension must fit in a
    32-bit int), ``simd`` (the elementwise kernels in use) and ``simd_available``,
    ``bf16_gemm`` (how bfloat16 products run: ``blas``, the BLAS's own bfloat16 GEMM,
    ``avx512bf16``, siglayer's own on AVX512-BF16, or ``convert``, a float32 GEMM on
    operands widened in siglayer, and why;
    ``SIGLAYER_BF16_GEMM`` overrides), ``openmp`` (the OpenMP version date),
    ``openmp_runtime`` (``intel (libiomp5)`` with how long idle workers spin, or
    ``compiler``), ``thread_pool`` (whose pool the parallel work runs on: ``own``, or
    ``auto``/``shared`` and whether PyTorch's libgomp pool is borrowed and for which calls;
    ``SIGLAYER_POOL`` sets it), ``compiler``, ``threads`` (``get_num_threads()``),
    ``blas_threads``
    (the BLAS's own pool: 1 for the default backend, whose parallelism is siglayer's
    OpenMP pool), then the versions of NumPy
    and Python and the machine.

    Parameters
    ----------
    file : text stream, optional
        Where to print; ``sys.stdout`` by default.
    mode : "stdout" (default) or "dicts"
        "dicts": print nothing and return a new dict of the same keys and values.

    Returns
    -------
    None, or with ``mode="dicts"`` a dict of str to str or int.

    Examples
    --------
    >>> import io, siglayer
    >>> text = io.StringIO()
    >>> siglayer.show_config(text)
    >>> text.getvalue().splitlines()[0] == f"        version: {siglayer.__version__}"
    True
    >>> siglayer.show_config(mode="dicts")["version"] == siglayer.__version__
    True
    """
    if mode == "dicts":
        if file is not None:
            raise ValueError("show_config(mode='dicts') returns the dict; it takes no file")
        return dict(config())
    if mode != "stdout":
        raise ValueError(f"mode must be 'stdout' or 'dicts', got {mode!r}")
    out = sys.stdout if file is None else file
    for key, value in config().items():
        print(f"{key:>15}: {value}", file=out)
    return None
