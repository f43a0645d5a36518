#!/usr/bin/env bash
# Pinned, single-threaded runs of benchmarks/sns.py (float64 to 1e-8 and 1e-11, float32 to 1e-4).
set -euo pipefail
source "$(dirname "$0")/env.sh"
$PIN $PY benchmarks/sns.py --problems assignment grid-L2 grid-L1 "$@"
$PIN $PY benchmarks/sns.py --problems cloud --tol 1e-8 --cap-sinkhorn 20000 --cap-ott 1000 \
  --cap-pot 100 --cap-regot-sn 200 "$@"
$PIN $PY benchmarks/sns.py --f32 --problems assignment grid-L2 grid-L1 cloud --cap-ott 5000 \
  --cap-pot 300 "$@"
