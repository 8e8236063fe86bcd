"""pytest-benchmark for siglayer: a group per size, dtype and pass holding siglayer, the
NumPy reference, the GEMM floor and PyTorch (when installed).

    pytest bench --benchmark-enable                     # time everything (several minutes)
    pytest bench --benchmark-enable --sizes T,L --dtypes float32 --threads 2
    pytest bench                                        # run each once and check results

The project's pytest configuration passes --benchmark-disable (the default run collects
only tests/), so without --benchmark-enable every benchmark runs once and is checked.
On a machine whose OpenBLAS is pinned by OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE, unset
them for the benchmark command only: `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE ...`.
The contenders and the check live in bench/harness.py, shared with
`python bench/run.py`.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest

import harness


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("siglayer benchmarks")
    group.addoption(
        "--sizes",
        default=",".join(harness.SIZES),
        help=f"comma-separated sizes from {','.join(harness.SIZES)}",
    )
    group.addoption("--dtypes", default=",".join(harness.DTYPES), help="float32,float64")
    group.addoption(
        "--threads", type=int, default=None, help="threads for siglayer, NumPy's BLAS and PyTorch"
    )


def _option_list(config: pytest.Config, name: str, allowed: list[str]) -> list[str]:
    values = [v.strip() for v in config.getoption(name).split(",") if v.strip()]
    unknown = [v for v in values if v not in allowed]
    if unknown or not values:
        raise pytest.UsageError(f"--{name}: unknown {unknown}; choose from {','.join(allowed)}")
    return values


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # One flat parameter list, so the items of a group run one after the other and the
    # group's problem and reference are computed once (see the `group` fixture).
    if "case" in metafunc.fixturenames:
        sizes = _option_list(metafunc.config, "sizes", list(harness.SIZES))
        dtypes = _option_list(metafunc.config, "dtypes", list(harness.DTYPES))
        contenders = getattr(metafunc.module, "CONTENDERS", harness.CONTENDERS)
        passes = getattr(metafunc.module, "PASSES", harness.PASSES)
        cases = [(s, d, p, c) for s in sizes for d in dtypes for p in passes for c in contenders]
        metafunc.parametrize("case", cases, ids=["-".join(c) for c in cases])


@pytest.fixture(scope="session")
def torch() -> ModuleType | None:
    return harness.import_torch()


@pytest.fixture(scope="session", autouse=True)
def threads(pytestconfig: pytest.Config, torch: ModuleType | None) -> Iterator[int]:
    """The same thread count for every contender, for the whole session."""
    count = pytestconfig.getoption("threads")
    count = harness._config.get_num_threads() if count is None else count
    with harness.limit_threads(count, torch):
        yield count


class _GroupCache:
    """The last group's problem and reference: one group in memory at a time."""

    key: tuple[str, str] | None = None
    value: tuple[harness.Problem, harness.Result] | None = None

    @classmethod
    def get(cls, size: str, dtype: str) -> tuple[harness.Problem, harness.Result]:
        if cls.key != (size, dtype) or cls.value is None:
            cls.value = None  # free the previous group first
            problem = harness.make_problem(size, dtype)
            cls.value = (problem, harness.reference_results(problem))
            cls.key = (size, dtype)
        return cls.value


@pytest.fixture
def group(case: tuple[str, str, str, str]) -> tuple[harness.Problem, harness.Result]:
    """(problem, reference results) of this case's size and dtype, computed once."""
    return _GroupCache.get(case[0], case[1])


def pytest_benchmark_update_json(config: pytest.Config, benchmarks: Any, output_json: dict) -> None:
    output_json["siglayer"] = harness._config.config()
    output_json["siglayer"]["cpu"] = harness.cpu_model()
