#!/usr/bin/env bash
# Pinned, single-threaded runs of benchmarks/auto_rule.py: otreg sinkhorn vs sns (defaults) on the
# grid behind method="auto" (3 seeds), float64 and float32 in separate processes (jax_enable_x64
# is process-wide), then the two 28 x 28 grids of benchmarks/sns.py as problems off that grid.
# RELAXED=1: only the relaxed grids (rule 5), rho = 1, 10, 100 (see the end).
# SAVE_DIR=dir keeps the measured cells (auto_rule_<dtype>[_grids].json) for --replay.
set -euo pipefail
source "$(dirname "$0")/env.sh"
PIN="taskset -c ${PIN_CORE:-1}"
save() { [ -n "${SAVE_DIR:-}" ] && echo --save "$SAVE_DIR/auto_rule_$1.json" || true; }
if [ -z "${RELAXED:-}" ]; then
  for dt in f64 f32; do
    $PIN $PY benchmarks/auto_rule.py --dtype $dt --reps 3 $(save $dt) "$@"
  done
  for dt in f64 f32; do
    $PIN $PY benchmarks/auto_rule.py --dtype $dt --reps 3 --problems grid-L2 grid-L1 --seeds 0 \
      $(save ${dt}_grids) "$@"
  done
fi
# relaxed marginals (rule 5 of otreg._methods): rho = R * max|C| on both sides, b of mass 1.5
if [ -n "${RELAXED:-}" ]; then
  for R in 1 10 100; do
    $PIN $PY benchmarks/auto_rule.py --dtype f64 --reps 3 --ratios 1e2 1e3 1e4 \
      --tol 1e-4 1e-6 1e-9 --rho $R --mass-b 1.5 $(save f64_rho$R) "$@"
  done
fi
