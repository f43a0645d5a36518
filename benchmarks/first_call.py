"""Time to first result: compile + first run of each solver in a fresh process, otreg vs peers.

Each row runs in its own Python process (nothing compiled before, no persistent cache): the time
of ``import`` of the library, then of the first call (tracing, compilation and the solve) and of
a second call on the same inputs (the solve alone), all with ``block_until_ready``. Problems:
x ~ N(0, I), y ~ N(1, I), n = m = 2000, d = 2, float32, cost = squared Euclidean / max
(``sinkhorn``, ``sinkhorn_divergence``: eps = 0.05, tol 1e-3; ``sliced_w2``: L = 128;
``sparse_ot``/``quadratic_ot``: n = 500, gamma = 0.1) and the SNS paper's assignment problem
(n = 500, C uniform, eps = 1/1200, tol 1e-5). Wall-clock seconds, pinned, median of
``--repeat`` fresh processes per row (3; the libraries interleaved): run
``bash benchmarks/run_first_call.sh``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

SETUP = """
import time
t0 = time.perf_counter()
import jax, jax.numpy as jnp, numpy as np
{imports}
t_import = time.perf_counter() - t0
rng = np.random.default_rng(0)
n = {n}
x = rng.standard_normal((n, 2)); y = rng.standard_normal((n, 2)) + 1.0
C = ((x[:, None] - y[None]) ** 2).sum(-1); s = np.sqrt(C.max()); C = C / C.max()
xs, ys = jnp.asarray(x / s, jnp.float32), jnp.asarray(y / s, jnp.float32)
Cj = jnp.asarray(C, jnp.float32)
U = jnp.asarray(rng.uniform(size=(n, n)), jnp.float32)
def call():
    return {call}
t1 = time.perf_counter(); out = jax.block_until_ready(call()); t_first = time.perf_counter() - t1
t2 = time.perf_counter(); out = jax.block_until_ready(call()); t_second = time.perf_counter() - t2
print(__import__("json").dumps(dict(import_s=t_import, first_s=t_first, second_s=t_second)))
"""

OT = "import otreg"
OTT = ("from ott.geometry import pointcloud, geometry\n"
       "from ott.problems.linear import linear_problem\n"
       "from ott.solvers.linear import sinkhorn as ott_sinkhorn\n"
       "from ott.tools import sinkhorn_divergence as ott_div, sliced as ott_sliced\n"
       "from ott.solvers import linear as ott_linear")
POT = "import ot"

ROWS = [
    ("sinkhorn", 2000,
     ("otreg", OT, "otreg.sinkhorn(otreg.PointCloud(xs, ys), epsilon=0.05, tol=1e-3).cost"),
     ("OTT-JAX", OTT, "ott_linear.solve(pointcloud.PointCloud(xs, ys, epsilon=0.05), "
                      "threshold=1e-3).reg_ot_cost"),
     ("POT", POT, "ot.sinkhorn2(np.full(n, 1 / n), np.full(n, 1 / n), C, 0.05, stopThr=1e-3)")),
    ("sinkhorn_divergence", 2000,
     ("otreg", OT, "otreg.sinkhorn_divergence(xs, ys, epsilon=0.05, tol=1e-3)[0]"),
     ("OTT-JAX", OTT, "ott_div.sinkhorn_divergence(pointcloud.PointCloud, xs, ys, "
                      "epsilon=0.05, solve_kwargs=dict(threshold=1e-3))[0]"),
     ("POT", POT, "ot.bregman.empirical_sinkhorn_divergence(x / s, y / s, 0.05, stopThr=1e-3)")),
    ("sliced_w2", 2000,
     ("otreg", OT, "otreg.sliced_w2(xs, ys, key=jax.random.key(0), n_projections=128)"),
     ("OTT-JAX", OTT, "ott_sliced.sliced_wasserstein(xs, ys, n_proj=128, "
                      "rng=jax.random.key(0))[0]"),
     ("POT", POT, "ot.sliced_wasserstein_distance(x / s, y / s, n_projections=128, seed=0)")),
    ("sns (assignment)", 500,
     ("otreg", OT, "otreg.sns(U, epsilon=1 / 1200, tol=1e-5).cost"),
     ("OTT-JAX", OTT, "ott_linear.solve(geometry.Geometry(cost_matrix=U, epsilon=1 / 1200), "
                      "threshold=1e-5, max_iterations=5000).reg_ot_cost")),
    ("sparse_ot k=2", 500,
     ("otreg", OT, "otreg.sparse_ot(Cj, k=2, gamma=0.1).primal"),
     ("POT", POT, "ot.smooth.smooth_ot_semi_dual(np.full(n, 1 / n), np.full(n, 1 / n), C, 0.1, "
                  "reg_type='sparsity_constrained', max_nz=2)")),
    ("quadratic_ot", 500,
     ("otreg", OT, "otreg.quadratic_ot(Cj, gamma=0.1).primal"),
     ("POT", POT, "ot.smooth.smooth_ot_dual(np.full(n, 1 / n), np.full(n, 1 / n), C, 0.1, "
                  "reg_type='l2')")),
]


def run(imports: str, call: str, n: int) -> dict | str:
    code = textwrap.dedent(SETUP.format(imports=imports, call=call, n=n))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=900)
    if out.returncode != 0:
        return "failed: " + (out.stderr.strip().splitlines() or ["?"])[-1][:80]
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    import argparse
    import statistics

    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3,
                    help="fresh processes per row, interleaved across libraries; medians shown")
    args = ap.parse_args()
    print(f"median of {args.repeat} fresh processes per row (libraries interleaved); "
          "[min-max] of the first call")
    print("| problem | library | import (s) | first call (s) | second call (s) |")
    print("|---|---|---|---|---|")
    for name, n, *peers in ROWS:
        runs = {lib: [] for lib, _, _ in peers}
        for _ in range(args.repeat):  # interleaved: a noisy minute hits every library alike
            for lib, imports, call in peers:
                runs[lib].append(run(imports, call, n))
        for lib, _, _ in peers:
            ok = [r for r in runs[lib] if not isinstance(r, str)]
            if not ok:
                print(f"| {name} | {lib} | {runs[lib][0]} | | |", flush=True)
                continue
            med = {k: statistics.median(r[k] for r in ok) for k in ok[0]}
            lo, hi = min(r["first_s"] for r in ok), max(r["first_s"] for r in ok)
            failed = f" ({len(runs[lib]) - len(ok)} failed)" if len(ok) < len(runs[lib]) else ""
            print(f"| {name} | {lib} | {med['import_s']:.2f} | {med['first_s']:.2f} "
                  f"[{lo:.2f}-{hi:.2f}]{failed} | {med['second_s']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
