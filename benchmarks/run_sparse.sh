#!/usr/bin/env bash
# Quadratic and sparsity-constrained OT: otreg vs POT vs regot (float64), pinned to one core
# (PIN_CORE, default 1). Extra arguments go to benchmarks/sparse.py.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
PIN="taskset -c ${PIN_CORE:-1}"
$PIN $PY benchmarks/sparse.py "$@"
