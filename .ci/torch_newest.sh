#!/usr/bin/env bash
# The suite against the newest PyTorch the torch extra admits that this machine has, beside
# .ci/run's 2.13.0: the extra is a floor (torch>=2.13), so a user who already has a newer
# torch keeps it. PyTorch 2.14.1 is a CUDA build (about 5.4 GB installed) that runs on the
# CPU; on these machines it lies on local disk. With it, 158 torch tests failed on
# warnings about PyTorch's own code (torch.jit's deprecation became a FutureWarning; its
# fake tensors read .grad of non-leaf copies it makes) until pyproject.toml's filters
# named them. Its own throwaway environment and build directory.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
# shellcheck source=.ci/throwaway_venv.sh
source .ci/throwaway_venv.sh
newest=2.14.1
pip install -q "torch==$newest"
pip install -q -C build-dir="$work/build" ".[test,torch]"
python -c "import torch; print('torch_newest.sh: torch', torch.__version__)"
# From outside the source tree, so that `import siglayer` is this installation.
cd "$work" && python -m pytest -p no:cacheprovider -q --rootdir="$root" \
    -c "$root/pyproject.toml" "$root/tests"
