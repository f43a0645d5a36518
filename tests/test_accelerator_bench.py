"""benchmarks/accelerator.py (issue 15) cannot rot: its small mode runs here on CPU, every row
prints a ratio against OTT-JAX or an explicit skip reason, and every row's agreement check (both
libraries reach the tolerance, values within the row's tolerance) passes. The skip paths (device
memory, budget) are exercised in process, without solving anything."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "accelerator.py"
ROW = re.compile(r"^\| (\d+) \| ")


def table_rows(out: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in out.splitlines() if ROW.match(line)]


def test_small_mode_runs_and_the_libraries_agree():
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--small"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=400)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr[-3000:]
    assert "# device cpu" in out and "ott-jax 0." in out, out
    rows = table_rows(out)
    assert [int(r[0]) for r in rows] == list(range(1, 21)), out
    for r in rows:
        if r[2].startswith("skipped:"):
            assert len(r[2]) > len("skipped: ") + 5, r  # a reason, not just the word
            continue
        assert len(r) == 11, r
        assert re.fullmatch(r">?\d+\.\d\d", r[4]), f"no ratio: {r}"
        assert r[9] == "ok", f"check failed: {r}"
    assert "all checks passed" in out


def load_script():
    spec = importlib.util.spec_from_file_location("accelerator_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_dense_rows_skip_on_small_memory_and_all_rows_skip_past_the_budget():
    bench = load_script()
    args = argparse.Namespace(small=True, budget=0.0, tol=1e-4, reps=1, rows=None,
                              ott_precision="highest")
    ctx = bench.Ctx(args, bench.SMALL, time.monotonic() - 1.0, "float64", mem_bytes=1e5)
    rows = bench.build_rows(ctx)
    dense = [r for r in rows if r.label.startswith("sinkhorn dense")]
    assert len(dense) == 8 and all("device memory" in r.skip for r in dense)
    assert not any(r.skip for r in rows if r not in dense)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        failed = bench.run_rows(ctx, rows, set())
    printed = table_rows(buf.getvalue())
    assert not failed and len(printed) == len(rows)
    assert all(r[2].startswith("skipped: ") for r in printed)
    assert sum("budget" in r[2] for r in printed) == len(rows) - len(dense)


def test_a_disagreement_or_an_unreached_tolerance_fails_the_row():
    bench = load_script()

    def outcome(ours_value, ours_reached=True, peer_reached=True):
        ours = bench.Lib("otreg", time_s=1.0, err=1e-5, value=ours_value, reached=ours_reached)
        peer = bench.Lib("OTT log", time_s=2.0, err=1e-5, value=1.0, reached=peer_reached)
        return bench.Outcome(ours, [peer], rtol=1e-3)

    row = bench.Row("a row", "dense", None)
    line, failed = bench.format_row(1, row, outcome(1.0005), 0.0)
    assert not failed and "| ok |" in line and "| 2.00 |" in line
    line, failed = bench.format_row(1, row, outcome(1.01), 0.0)
    assert failed and "FAIL: values disagree" in line
    line, failed = bench.format_row(1, row, outcome(1.0, ours_reached=False), 0.0)
    assert failed and "FAIL: otreg did not reach tol" in line
    line, failed = bench.format_row(1, row, outcome(1.0, peer_reached=False), 0.0)
    assert not failed and "no check: OTT not reached" in line and "| >2.00 |" in line
