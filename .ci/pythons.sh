#!/usr/bin/env bash
# The test suite on every other Python the README promises (3.10, 3.12, 3.13), beside
# .ci/run's own python3 (3.11): each in a throwaway virtual environment, the README's
# `pip install ".[test]"` (no optional extras), then pytest. Python 3.12 and 3.13 crashed
# at exit where 3.10 and 3.11 did not (tests/test_concurrency.py, daemon threads inside a
# call), so one Python is not enough. On 3.10 with the oldest NumPy pyproject.toml admits
# (numpy>=1.23): the suite had failed there, unseen, on NumPy 1.x's names. A Python this
# machine lacks (neither on PATH nor under pyenv) is reported and skipped; a failure in
# one that is here fails CI. The 3.10 leg also builds and tests with the lowest version of
# every build and test requirement pyproject.toml declares (.ci/floors.txt): floors
# declared but never installed had drifted (scikit-build-core 0.10 could not read the
# license field).
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"

find_python() {  # find_python 3.13: the path of a working python3.13, or status 1
    local candidate
    if candidate=$(command -v "python$1") && "$candidate" -c "" 2>/dev/null; then
        echo "$candidate"
        return
    fi
    if command -v pyenv >/dev/null; then
        for candidate in "$(pyenv root)/versions/$1".*/bin/"python$1"; do
            [[ -x "$candidate" ]] && { echo "$candidate"; return; }
        done
    fi
    return 1
}

for version in 3.10 3.12 3.13; do
    if ! python=$(find_python "$version"); then
        echo "pythons.sh: no Python $version on this machine: skipped"
        continue
    fi
    (
        work="$(mktemp -d)"
        trap 'rm -rf "$work"' EXIT
        "$python" -m venv "$work/venv"
        # shellcheck disable=SC1091
        source "$work/venv/bin/activate"
        python -m pip install -q --upgrade pip
        echo "pythons.sh: $(python --version)"
        if [[ "$version" == 3.10 ]]; then
            floors="$root/.ci/floors.txt"
            pip install -q -C build-dir="$work/build" -c "$floors" --build-constraint "$floors" ".[test]"
            echo "pythons.sh: the floors of .ci/floors.txt:"
            pip list --format=freeze | grep -i -E "^(numpy|ml.dtypes|threadpoolctl|hypothesis|pytest|pytest.benchmark)=="
        else
            pip install -q -C build-dir="$work/build" ".[test]"
        fi
        python -c "import numpy; print('pythons.sh: numpy', numpy.__version__)"
        # From outside the source tree, so that `import siglayer` is this installation.
        cd "$work" && python -m pytest -p no:cacheprovider -q --rootdir="$root" \
            -c "$root/pyproject.toml" "$root/tests"
    )
done
