#!/usr/bin/env bash
# Time to first result (fresh process per row), pinned to one core, single-threaded.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
$PIN $PY benchmarks/first_call.py "$@"
