#!/usr/bin/env bash
# Fill wheels/ (git-ignored) with what the GPU machine lacks, for CPython 3.12 on x86_64 Linux, plus the clips the
# check encodes; run here, where PyPI is reachable (the GPU machine reaches nothing). Then, when a GPU is lent,
# the device tool's run (carry: ["wheels"], timeout_s: 540; the command line, well under 2,000 characters):
#
#   bash benchmarks/gpu_check.sh
#
# The GPU machine's image has Python 3.12 with torch 2.11.0, torchvision 0.26.0, timm, transformers (and so
# huggingface_hub, safetensors, regex, tqdm, numpy, packaging), rich, typer, einops, pillow and opencv; this adds
# open_clip_torch and decord (the library), ftfy and wcwidth (open_clip), psutil (benchmarks/common.py), pytest
# and hypothesis (the CUDA tests, and tests/test_aggregate.py's imports). Not PyAV: about 40 MB, over the carry
# limit with decord; the tests run with --noconftest and the clips are made here. gpu_check.sh installs only the
# wheels whose distribution is missing there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
WHEELS=wheels
mkdir -p "$WHEELS"
"$PY" -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    --platform manylinux2010_x86_64 --no-deps -d "$WHEELS" \
    open_clip_torch==3.3.0 decord==0.6.0 ftfy wcwidth psutil \
    pytest pluggy iniconfig hypothesis sortedcontainers attrs
"$PY" benchmarks/gpu_check.py --make-videos "$WHEELS/videos" > /dev/null  # 4 x 10 s 640x360 H.264 (needs PyAV)
du -sh "$WHEELS"
ls -l "$WHEELS" "$WHEELS/videos"
