# Types of the compiled module siglayer._core (cpp/bindings/*.cpp). Keep in step with the
# m.def(...) calls there: tests/test_typing.py checks that every function defined by the
# module is declared here with the same parameter names.
#
# At run time the functions accept any object and raise TypeError/ValueError naming the
# argument; the types below describe the calls that succeed: floating-point arrays (the
# core takes float32 and float64, and ml_dtypes.bfloat16 for the layer, whose b may
# then be float32 and whose dW, db are float32), one dtype per call, and results of
# that dtype.

from collections.abc import Sequence
from typing import Any, Literal, TypedDict, TypeVar, overload

import numpy as np
from numpy.typing import NDArray

_Float = TypeVar("_Float", bound=np.floating)

__version__: str

class CoreConfig(TypedDict):
    blas: str
    blas_details: str
    blas_int_bits: Literal[32, 64]
    bf16_gemm: Literal["blas", "avx512bf16", "convert"]
    few_outputs: Literal["kernels", "gemm"]
    small_gemm: float
    bf16_gemm_in_blas: bool
    cpu_bf16: bool
    cpu_amx_bf16: bool
    bf16_gemm_own: bool
    db_sum_rows: int
    bf16_gemm_mkl_runtime: str
    amx_permission: str
    simd: str
    simd_available: str
    openmp: int
    openmp_runtime: str
    thread_pool: str
    compiler: str

# x (n, n_in), W (n_in, n_out), b (n_out,) or (1, n_out) -> out (n, n_out).
def forward(
    x: NDArray[_Float],
    W: NDArray[_Float],
    b: NDArray[_Float],
    out: NDArray[_Float] | None = None,
) -> NDArray[_Float]: ...

# dout, out (n, n_out), x (n, n_in), W (n_in, n_out) -> (dx (n, n_in) or None, dW, db).
@overload
def backward(
    dout: NDArray[_Float],
    x: NDArray[_Float],
    W: NDArray[_Float],
    out: NDArray[_Float],
    need_dx: Literal[True] = True,
    need_dW: Literal[True] = True,
    dx: NDArray[_Float] | None = None,
    dW: NDArray[_Float] | None = None,
    db: NDArray[_Float] | None = None,
    round_grads: bool = False,
) -> tuple[NDArray[_Float], NDArray[_Float], NDArray[_Float]]: ...
@overload
def backward(
    dout: NDArray[_Float],
    x: NDArray[_Float],
    W: NDArray[_Float],
    out: NDArray[_Float],
    need_dx: bool,
    need_dW: bool = True,
    dx: NDArray[_Float] | None = None,
    dW: NDArray[_Float] | None = None,
    db: NDArray[_Float] | None = None,
    round_grads: bool = False,
) -> tuple[NDArray[_Float] | None, NDArray[_Float] | None, NDArray[_Float]]: ...

# dZ (n, n_out), x (n, n_in), W (n_in, n_out) -> (dx (n, n_in) or None, dW or None, db).
@overload
def backward_from_preactivation(
    dZ: NDArray[_Float],
    x: NDArray[_Float],
    W: NDArray[_Float],
    need_dx: Literal[True] = True,
    need_dW: Literal[True] = True,
    dx: NDArray[_Float] | None = None,
    dW: NDArray[_Float] | None = None,
    db: NDArray[_Float] | None = None,
    round_grads: bool = False,
) -> tuple[NDArray[_Float], NDArray[_Float], NDArray[_Float]]: ...
@overload
def backward_from_preactivation(
    dZ: NDArray[_Float],
    x: NDArray[_Float],
    W: NDArray[_Float],
    need_dx: bool,
    need_dW: bool = True,
    dx: NDArray[_Float] | None = None,
    dW: NDArray[_Float] | None = None,
    db: NDArray[_Float] | None = None,
    round_grads: bool = False,
) -> tuple[NDArray[_Float] | None, NDArray[_Float] | None, NDArray[_Float]]: ...

# Losses over C-contiguous out and y of one shape and dtype: write the gradient into dZ
# (dout), a buffer of that shape, and return the summed loss (the caller divides).
def bce_sigmoid(
    out: NDArray[_Float], y: NDArray[_Float], dZ: NDArray[_Float], divisor: float
) -> float: ...
def mse(
    out: NDArray[_Float], y: NDArray[_Float], dout: NDArray[_Float], divisor: float
) -> float: ...

# Optimizer updates of every params[i] in place; state lists run parallel to params.
def sgd_step(
    params: Sequence[NDArray[np.floating]],
    grads: Sequence[NDArray[np.floating]],
    velocities: Sequence[NDArray[np.floating] | None],
    lr: float,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
    first_step: bool,
) -> None: ...
def adam_step(
    params: Sequence[NDArray[np.floating]],
    grads: Sequence[NDArray[np.floating]],
    exp_avgs: Sequence[NDArray[np.floating]],
    exp_avg_sqs: Sequence[NDArray[np.floating]],
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled_weight_decay: bool,
    step: int,
) -> None: ...

# Elementwise sigmoid of a C-contiguous array of any shape.
def sigmoid(z: NDArray[_Float], out: NDArray[_Float] | None = None) -> NDArray[_Float]: ...
def set_num_threads(n: int) -> None: ...
def get_num_threads() -> int: ...
def blas_num_threads() -> int: ...
def config() -> CoreConfig: ...
def before_fork() -> None: ...
def after_fork_in_parent() -> None: ...
def after_fork_in_child() -> None: ...
def forget_registration() -> None: ...
def set_tiles_per_thread(n: int) -> None: ...
def tiles_per_thread() -> int: ...
def select_pool(pool: Literal["auto", "shared", "own"]) -> Literal["auto", "shared", "own"]: ...
def set_torch_caller(on: bool) -> bool: ...
def take_last_region() -> str: ...

class OverlapError(ValueError): ...

def dispatch_probe(a: NDArray[Any]) -> str: ...
def select_isa(name: Literal["avx512bf16", "avx512", "avx2", "baseline"]) -> None: ...
def select_bf16_gemm(name: Literal["auto", "blas", "avx512bf16", "convert"]) -> None: ...
def select_few_outputs(name: Literal["kernels", "gemm"]) -> None: ...
def set_small_gemm(bound: float) -> float: ...
def load_mkl_bf16(path: str) -> str: ...

# Linux's permission for AMX tile data, asked once per process (blas.hpp says when):
# "granted", "refused: <strerror>", or "not requested" before any request.
def request_amx_permission() -> str: ...

# float32 <-> ml_dtypes.bfloat16 of a C-contiguous array (rounded to nearest even; exact).
def to_bfloat16(a: NDArray[np.float32], out: NDArray[Any] | None = None) -> NDArray[Any]: ...
def to_float32(a: NDArray[Any], out: NDArray[np.float32] | None = None) -> NDArray[np.float32]: ...

# The bare product C = op(A) @ op(B), (M, N), through siglayer's BLAS: the benchmarks'
# GEMM floor (cpp/bindings/register_blas.cpp). op(A) is (M, K), op(B) is (K, N).
def gemm(
    A: NDArray[_Float],
    B: NDArray[_Float],
    trans_a: bool = False,
    trans_b: bool = False,
    out: NDArray[_Float] | None = None,
    threading: Literal["slabs", "blas"] = "slabs",
) -> NDArray[_Float]: ...
