#!/usr/bin/env bash
# Pinned, single-threaded runs of benchmarks/sns.py (float64 to 1e-8 and 1e-11, float32 to 1e-4),
# three draws of the random problems (medians with min-max; the grids are deterministic).
# Extra arguments go to every run (e.g. --per-seed, or --seeds 0 to repeat the one-seed tables).
set -euo pipefail
source "$(dirname "$0")/env.sh"
PIN="taskset -c ${PIN_CORE:-1}"
SEEDS=(--seeds 0 1 2)
$PIN $PY benchmarks/sns.py --problems assignment grid-L2 grid-L1 "${SEEDS[@]}" "$@"
$PIN $PY benchmarks/sns.py --problems cloud --tol 1e-8 --cap-sinkhorn 20000 --cap-ott 1000 \
  --cap-pot 100 --cap-regot-sn 200 "${SEEDS[@]}" "$@"
$PIN $PY benchmarks/sns.py --f32 --problems assignment grid-L2 grid-L1 cloud --cap-ott 5000 \
  --cap-pot 300 "${SEEDS[@]}" "$@"
