#!/usr/bin/env bash
# Gradients (implicit vs unrolled, otreg vs OTT-JAX) and batching (otreg vs OTT-JAX vs POT),
# pinned to one core (PIN_CORE, default 1), single-threaded.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
PIN="taskset -c ${PIN_CORE:-1}"
$PIN $PY benchmarks/gradients.py "$@"
