"""Shared timer of the benchmark scripts (run them from the repository root)."""

from __future__ import annotations

import statistics
import time


def timeit_cpu(fn, reps, budget):
    """Median process-CPU seconds of ``fn()`` over up to ``reps`` runs (stopping once their sum
    passes ``budget`` seconds), and the last output."""
    out, cpu = None, []
    for _ in range(reps):
        c0 = time.process_time()
        out = fn()
        cpu.append(time.process_time() - c0)
        if sum(cpu) > budget:
            break
    return statistics.median(cpu), out
