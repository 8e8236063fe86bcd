# Sourced by the CI scripts that build siglayer in an environment of their own
# (gomp.sh, sanitize.sh): a throwaway directory, $work, removed when the script exits,
# holding a fresh virtual environment, activated, with an up-to-date pip.
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
# shellcheck disable=SC1091
source "$work/venv/bin/activate"
python -m pip install -q --upgrade pip
