#!/usr/bin/env bash
# The GPU check on the device machine, from a clean checkout with wheels/ carried (see prepare_gpu_wheels.sh):
# install the wheels whose distributions its image lacks (no index, no dependencies, into .gpu-site/, git-ignored),
# install this checkout (pip install --no-deps -e .; PYTHONPATH stands in where that cannot build offline), then
# run benchmarks/gpu_check.py on the carried clips. Arguments go to gpu_check.py (e.g. --budget-s 400).
# Writes $OUT/gpu_check.json when $OUT is set (the device tool sets it), else bench-out/gpu_check.json.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SITE=$PWD/.gpu-site
export PIP_BREAK_SYSTEM_PACKAGES=1 PIP_DISABLE_PIP_VERSION_CHECK=1
missing=()
for whl in wheels/*.whl; do
  dist=$(basename "$whl" | cut -d- -f1)
  "$PY" -c "import importlib.metadata as m, sys; m.version(sys.argv[1])" "$dist" 2>/dev/null || missing+=("$whl")
done
echo "installing ${#missing[@]} wheels: ${missing[*]##*/}"
[ ${#missing[@]} -eq 0 ] || "$PY" -m pip install -q --no-index --no-deps --target "$SITE" "${missing[@]}"
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e . 2>/dev/null || echo "editable install failed; using PYTHONPATH"
"$PY" -c "import torch, open_clip, decord; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'open_clip', open_clip.__version__)"
exec "$PY" benchmarks/gpu_check.py --videos wheels/videos "$@"
