#!/usr/bin/env bash
# Sliced W2: timing vs POT / OTT / NumPy floor (both dtypes), control-variate variance ratios,
# measured time to a 1% relative std, pinned to one core (PIN_CORE, default 1).
# Extra arguments go to benchmarks/sliced.py (e.g. --only to1pct).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
PIN="taskset -c ${PIN_CORE:-1}"
$PIN $PY benchmarks/sliced.py "$@"
