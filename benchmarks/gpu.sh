#!/usr/bin/env bash
# The GPU figures in the README, in one run: per-step and per-generation speed of a
# FLUX.1-dev-width transformer (4096 image + 512 text tokens, 24x128 heads, bf16), plain
# torch.compile against jano. Depth defaults to 5 + 10 blocks to keep compile time short;
# each block is the FLUX.1-dev block, so the ratios are per-block ratios.
#
#   LAYERS=19 SINGLE=38 bash benchmarks/gpu.sh     # the full FLUX.1-dev depth
set -euo pipefail
cd "$(dirname "$0")"
SIZE="--flux-dev --layers ${LAYERS:-5} --single-layers ${SINGLE:-10} --dtype bfloat16 --device cuda"
python3 step_speed.py $SIZE --rounds 7
python3 pipeline_speed.py $SIZE --runs 3
