#!/usr/bin/env bash
# The annealing grid: otreg's default (annealing above the dtype's max(C)/eps threshold, and
# over-relaxation) against annealing off and over-relaxation off, both dtypes, pinned.
set -euo pipefail
source "$(dirname "$0")/env.sh"
PIN="taskset -c ${PIN_CORE:-1}"
for dt in f32 f64; do
  $PIN $PY benchmarks/sinkhorn.py $dt --n 500 2000 --d 2 64 --eps 0.005 0.001 --reps 3 \
    --libs otreg otreg_noanneal otreg_plain
done
