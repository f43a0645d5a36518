#!/usr/bin/env bash
# Sliced W2, pinned to one core (PIN_CORE, default 1): timing vs POT / OTT / NumPy floor (both
# dtypes), control-variate variance ratios, measured time to a 1% relative std, relative std vs L,
# and (section mse, issue 16) the MSE vs L and vs time of every direction design and variate
# against NumPy prototypes of the published estimators, with the "auto" goal line; then the
# gradient flow of every estimator at equal L (benchmarks/sliced_flow.py).
# Extra arguments go to benchmarks/sliced.py (e.g. --only mse, --mse-data gauss3 gauss64).
# The flow runs unless --only is given (SLICED_FLOW=1 forces it, SLICED_FLOW=0 skips it).
# --quick runs both scripts at tiny size: a smoke test of about a minute each.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
PIN="taskset -c ${PIN_CORE:-1}"
$PIN $PY benchmarks/sliced.py "$@"
flow=1 quick=()
for a in "$@"; do
    [[ "$a" == --only ]] && flow=0
    [[ "$a" == --quick ]] && quick=(--quick)
done
if [[ "${SLICED_FLOW:-$flow}" == 1 ]]; then
    $PIN $PY benchmarks/sliced_flow.py ${quick[@]+"${quick[@]}"}
fi
