"""What the installed package carries and how it loads beside other libraries: the
shipped OpenBLAS under a library name of its own (a packaging audit found the upstream
name shared with other copies: `import siglayer` failed after another release of it was
loaded), and no OpenBLAS thread pool started at import."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import processes
import siglayer

# The compiled part's folder (in an editable install, not the sources' python/siglayer).
PACKAGE = Path(siglayer._core.__file__).resolve().parent
CONFIG = siglayer._core.config()
ROOT = Path(__file__).resolve().parents[1]  # the source checkout
linux_default_blas = pytest.mark.skipif(
    not sys.platform.startswith("linux") or CONFIG["blas"] != "scipy-openblas32",
    reason="the private OpenBLAS copy is the default build's, on Linux",
)
needs_proc = pytest.mark.skipif(
    not os.path.exists("/proc/self/task"), reason="reads /proc/self (no /proc mounted)"
)


def _run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )


@pytest.fixture(scope="module")
def upstream_named_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty shared library under scipy-openblas32's own soname, libscipy_openblas.so:
    what another package's copy of another release looks like to the loader (it goes by
    the name, not by the contents)."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("needs a C compiler to build a stand-in library")
    folder = tmp_path_factory.mktemp("other")
    source = folder / "empty.c"
    source.write_text("int other_package_marker(void) { return 7; }\n")
    library = folder / "libscipy_openblas.so"
    subprocess.run(
        [compiler, "-shared", "-fPIC", "-Wl,-soname,libscipy_openblas.so", "-o", library, source],
        check=True,
        timeout=120,
        env=processes.without_sanitizers(),
    )
    return library


@linux_default_blas
@needs_proc
def test_shipped_openblas_has_a_name_of_its_own():
    shipped = sorted(p.name for p in PACKAGE.iterdir() if "openblas" in p.name)
    assert shipped == ["libscipy_openblas_siglayer.so"]
    maps = Path("/proc/self/maps").read_text()
    assert str(PACKAGE / "libscipy_openblas_siglayer.so") in maps


@linux_default_blas
def test_import_after_another_library_of_the_upstream_name(upstream_named_library):
    """Loaded first, a library named libscipy_openblas.so (another package's OpenBLAS)
    is not taken for siglayer's: siglayer imports and computes (under the shared name,
    the import failed with 'undefined symbol')."""
    result = _run(
        f"""
        import ctypes
        ctypes.CDLL({str(upstream_named_library)!r})
        import numpy as np, siglayer
        x = np.ones((3, 4), np.float32)
        W = np.full((4, 2), 0.5, np.float32)
        out = siglayer.forward(x, W, np.zeros(2, np.float32))
        np.testing.assert_allclose(out, 1 / (1 + np.exp(-2.0)), rtol=1e-6)
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ok"]


@linux_default_blas
@needs_proc
def test_a_later_request_for_the_upstream_name_does_not_get_siglayers_copy():
    """After `import siglayer`, a library asking for libscipy_openblas.so by name gets its
    own (none, where no copy is on the search path: the load fails; or a file of that
    name, scipy-openblas32's on LD_LIBRARY_PATH, say), not siglayer's copy held to one
    thread (which would map no file of that name)."""
    result = _run(
        """
        import ctypes, siglayer
        try:
            ctypes.CDLL("libscipy_openblas.so")
        except OSError:
            print("not-found")
        else:
            with open("/proc/self/maps") as maps:
                own = any(line.rstrip().endswith("/libscipy_openblas.so") for line in maps)
            print("its-own" if own else "siglayers-copy")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() in (["not-found"], ["its-own"])


@linux_default_blas
@needs_proc
@pytest.mark.parametrize("preset", [None, "3"])
def test_import_starts_no_blas_threads_and_leaves_the_environment(preset):
    """OpenBLAS starts a pool of one thread per CPU but one when it is loaded; siglayer's
    copy runs one thread per call, so the import loads it with OPENBLAS_NUM_THREADS=1
    and restores the variable (a packaging audit counted one idle thread more after
    `import siglayer` on two CPUs: 63 on 64). The BLAS's own threads still start when
    asked for (the benchmarks' floor with threading='blas')."""
    env = dict(os.environ)
    env.pop("OPENBLAS_NUM_THREADS", None)
    if preset is not None:
        env["OPENBLAS_NUM_THREADS"] = preset
    code = textwrap.dedent(
        """
        import os, numpy as np
        def tasks():
            return len(os.listdir("/proc/self/task"))
        before, environ = tasks(), dict(os.environ)
        import siglayer
        after = tasks()
        assert dict(os.environ) == environ, "the environment changed"
        assert siglayer._core.blas_num_threads() == 1
        A = np.ones((512, 512), np.float32)
        siglayer.set_num_threads(2)
        C = siglayer._core.gemm(A, A, threading="blas")
        assert (C == 512).all()
        print(before, after, tasks(), siglayer._core.blas_num_threads())
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 0, result.stderr
    before, after, asked, blas_threads = map(int, result.stdout.split())
    assert after == before
    assert blas_threads == 1  # back to one thread after the call
    if (os.cpu_count() or 1) > 1:
        assert asked == before + 1  # OpenBLAS's second thread, started on demand


@linux_default_blas
def test_import_restores_a_variable_os_environ_does_not_know():
    """A value set with os.putenv (or by C code) is in the C library's environment but
    not in os.environ: the import's restore must not take os.environ's word that the
    variable was unset (it deleted the user's value, a review found)."""
    code = """
        import ctypes, os
        libc = ctypes.CDLL(None)
        libc.getenv.restype = ctypes.c_char_p
        os.putenv("OPENBLAS_NUM_THREADS", "3")
        import siglayer
        print(libc.getenv(b"OPENBLAS_NUM_THREADS").decode(), "OPENBLAS_NUM_THREADS" in os.environ)
        """
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["3", "False"]


def test_licenses_ship_with_the_package():
    """siglayer's license and the notices for what a build ships, and the full text of
    each shipped library's license from the package it came from (a packaging audit found
    none: no LICENSE in the sdist or the wheel)."""
    import importlib.metadata

    files = {
        str(f).split(".dist-info/", 1)[-1]: f
        for f in importlib.metadata.files("siglayer") or []
        if ".dist-info/licenses/" in str(f)
    }
    assert {"licenses/LICENSE", "licenses/THIRD_PARTY_NOTICES.txt"} <= set(files)
    assert "BSD 3-Clause" in files["licenses/LICENSE"].read_text()
    shipped = {p.name for p in PACKAGE.iterdir()}
    expected = set()
    if any(name.startswith("libscipy_openblas") for name in shipped):
        expected.add("licenses/third_party/scipy-openblas32-LICENSE.txt")
    if "libiomp5.so" in shipped:
        expected.add("licenses/third_party/intel-openmp-LICENSE.txt")
    assert expected <= set(files)
    for name in expected:
        assert files[name].locate().stat().st_size > 1000, name


def _floors_declared() -> dict[str, str]:
    """Each `name>=version` of the build requirements, the dependencies and the test extra
    of pyproject.toml (what a plain `pip install ".[test]"` builds and runs with)."""
    tomllib = pytest.importorskip("tomllib", reason="tomllib is Python 3.11's")
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    declared = [
        *project["build-system"]["requires"],
        *project["project"]["dependencies"],
        *project["project"]["optional-dependencies"]["test"],
    ]
    floors = {}
    for text in declared:
        requirement = Requirement(text)
        for spec in requirement.specifier:
            if spec.operator == ">=":
                floors[canonicalize_name(requirement.name)] = spec.version
    return floors


def test_ci_floors_are_the_declared_floors():
    """.ci/floors.txt (the constraints .ci/pythons.sh's 3.10 leg builds and tests under)
    pins each declared floor at exactly its version, and nothing else: a floor raised in
    pyproject.toml without the CI file (or the reverse) would test a version nobody declared."""
    from packaging.utils import canonicalize_name
    from packaging.version import Version

    declared = _floors_declared()
    pinned = {}
    for line in (ROOT / ".ci" / "floors.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            pinned[canonicalize_name(name)] = version
    assert sorted(pinned) == sorted(declared)
    for name, version in declared.items():
        assert Version(pinned[name]) == Version(version), (name, pinned[name], version)
