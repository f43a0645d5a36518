#!/usr/bin/env bash
# Pinned, single-threaded runs of benchmarks/sinkhorn.py (one process per dtype / configuration):
# otreg (default, plain, no annealing) against OTT-JAX in each of its modes (log domain, kernel,
# adaptive momentum, Anderson) and POT (kernel, log), on the same problem in the same dtype.
set -euo pipefail
source "$(dirname "$0")/env.sh"
PIN="taskset -c ${PIN_CORE:-1}"
for dt in f32 f64; do
  $PIN $PY benchmarks/sinkhorn.py $dt --n 500 2000 --d 2 64 --eps 0.05 0.005 --reps 3 \
    --libs otreg otreg_plain otreg_noanneal ott_geom ott_kernel ott_momentum ott_anderson pot \
    pot_log
done
$PIN $PY benchmarks/sinkhorn.py f32 --n 5000 --d 2 --eps 0.05 0.005 --reps 3 \
  --libs otreg otreg_plain ott_geom ott_kernel ott_momentum ott_anderson pot
# blocked point clouds vs OTT's online PointCloud
$PIN $PY benchmarks/sinkhorn.py f32 --n 2000 --d 2 64 --eps 0.05 0.005 --reps 3 \
  --libs otreg_pc ott_pc
# unbalanced (issue 17): rho = 1 on both sides, target mass 1.5, against OTT's tau (its
# equivalent cost) and POT's sinkhorn_unbalanced for OTT's iteration count
for dt in f32 f64; do
  $PIN $PY benchmarks/sinkhorn.py $dt --n 500 2000 --d 2 64 --eps 0.05 0.005 --reps 3 \
    --rho 1.0 --mass-b 1.5 --libs otreg otreg_plain ott_geom ott_kernel ott_momentum pot
done
