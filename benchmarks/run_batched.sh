#!/usr/bin/env bash
# Batched Sinkhorn: jit(vmap) vs a loop of single solves vs OTT-JAX, pinned to one core.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
$PIN $PY benchmarks/batched.py "$@"
