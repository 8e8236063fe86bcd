#!/usr/bin/env bash
# The test suite against a build with the compiler's own OpenMP runtime (GCC's libgomp:
# -C cmake.define.SIGLAYER_OPENMP=compiler), the default off Linux x86-64, where CI's
# other runs use the libiomp5 the package ships. The threads, fork, memory and
# floating-point-mode code differs between the two runtimes (cpp/siglayer/threads.cpp).
# A throwaway virtual environment with only the test extra (torch, which bundles a
# libgomp of its own, is not installed here) and a build directory of its own.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
# shellcheck source=.ci/throwaway_venv.sh
source .ci/throwaway_venv.sh
pip install -q -C cmake.define.SIGLAYER_OPENMP=compiler -C build-dir="$work/build" ".[test]"
python -c "import siglayer; siglayer.show_config()" | grep -E "openmp_runtime: compiler$"
# From outside the source tree, so that `import siglayer` is this install.
(cd "$work" && python -m pytest -p no:cacheprovider -q "$root/tests" --rootdir="$root" \
    -c "$root/pyproject.toml" "$@")
echo "gomp.sh: test suite passed with the compiler's OpenMP runtime"
