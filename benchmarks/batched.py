"""Batches: ``jit(vmap(sinkhorn))`` against a Python loop of the jitted single solve, and OTT-JAX.

Problems (float32, squared Euclidean cost, L1 marginal tol 1e-3 for every solver):
  raw-256: 32 clouds of (256, 3), raw cost, eps = 0.01;
  raw-64:  512 clouds of (64, 3), raw cost, eps = 0.01;
  easy-64: 512 clouds of (64, 2), cost / max, eps = 0.05 (the regime where vmap always won);
  raw-128: 128 clouds of (128, 3), raw cost, eps = 0.01 (the size where the CPU batching path
           of otreg changes);
  raw-32:  1024 clouds of (32, 3), raw cost, eps = 0.01.
Rows: otreg vmap, otreg loop, OTT vmap (lse_mode True, its default, and False), with the OTT
``min_iterations = max_iterations`` trick left off (our users should not need it). Times are
medians of process-CPU seconds after compilation; each row reports the largest relative gap of
its costs <P, C> to otreg's loop and how many problems converged. Run pinned and single-threaded:
``bash benchmarks/run_batched.sh``.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

sys.path.insert(0, "benchmarks")
from _timing import timeit_cpu  # noqa: E402

PROBLEMS = {"raw-256": (32, 256, 3, 0.01, False), "raw-64": (512, 64, 3, 0.01, False),
            "easy-64": (512, 64, 2, 0.05, True), "raw-128": (128, 128, 3, 0.01, False),
            "raw-32": (1024, 32, 3, 0.01, False)}
TOL = 1e-3


def problem(name, seed):
    B, n, d, eps, scaled = PROBLEMS[name]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, n, d))
    y = rng.standard_normal((B, n, d)) + 1.0
    C = ((x[:, :, None] - y[:, None]) ** 2).sum(-1)
    if scaled:
        C = C / C.max(axis=(1, 2), keepdims=True)
    return C.astype(np.float32), eps


def plan_costs(P, C):
    return (np.asarray(P, np.float64) * C).sum((1, 2))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--problems", nargs="*", default=list(PROBLEMS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-ott", action="store_true")
    args = ap.parse_args()
    import jax
    import jax.numpy as jnp

    import otreg
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, float32, tol {TOL}")
    for name in args.problems:
        C, eps = problem(name, args.seed)
        Cj = jnp.asarray(C)
        B = C.shape[0]
        one = jax.jit(lambda C: otreg.sinkhorn(C, epsilon=eps, tol=TOL))
        vm = jax.jit(jax.vmap(lambda C: otreg.sinkhorn(C, epsilon=eps, tol=TOL)))
        res = vm(Cj)
        singles = [one(Cj[i]) for i in range(B)]
        ref = np.array([float(jnp.sum(r.plan() * Cj[i])) for i, r in enumerate(singles)])
        t_loop, _ = timeit_cpu(lambda: jax.block_until_ready([one(Cj[i]) for i in range(B)]),
                               5, 60)
        t_vmap, _ = timeit_cpu(lambda: jax.block_until_ready(vm(Cj)), 5, 60)
        gap = np.max(np.abs(plan_costs(jax.vmap(lambda r: r.plan())(res), C) - ref) / ref)
        from otreg import _sinkhorn_loops as loops
        n = C.shape[1]
        path = ("one by one (lax.map)" if n * n >= loops.SEQUENTIAL_MIN_SIZE
                else f"lockstep chunks of {loops.LOCKSTEP_CHUNK}")
        print(f"## {name}: {B} problems of {n} x {C.shape[2]}, eps {eps}; otreg vmap on CPU: "
              f"{path}")
        iters = np.array([int(r.n_iters) for r in singles])
        print(f"otreg loop of jit(sinkhorn): {1e3 * t_loop:9.1f} ms  iterations mean "
              f"{iters.mean():.0f} max {iters.max()}  converged "
              f"{sum(bool(r.converged) for r in singles)}/{B}")
        print(f"otreg jit(vmap(sinkhorn)):   {1e3 * t_vmap:9.1f} ms  loop/vmap "
              f"{t_loop / t_vmap:5.2f}x  converged {int(res.converged.sum())}/{B}  "
              f"max rel. gap of <P, C> {gap:.1e}", flush=True)
        if args.skip_ott:
            continue
        from ott.geometry import geometry
        from ott.problems.linear import linear_problem
        from ott.solvers.linear import sinkhorn as ott_sinkhorn
        for lse in (True, False):
            solver = ott_sinkhorn.Sinkhorn(threshold=TOL, norm_error=1, inner_iterations=10,
                                           max_iterations=20_000, lse_mode=lse)
            ott = jax.jit(jax.vmap(lambda C, s=solver: s(linear_problem.LinearProblem(
                geometry.Geometry(cost_matrix=C, epsilon=eps)))))
            out = ott(Cj)
            t_ott, _ = timeit_cpu(lambda o=ott: jax.block_until_ready(o(Cj)), 5, 60)
            costs = plan_costs(jax.vmap(lambda o: o.matrix)(out), C)
            ok = np.isfinite(costs)
            gap = np.max(np.abs(costs[ok] - ref[ok]) / ref[ok]) if ok.any() else np.inf
            print(f"OTT jit(vmap) lse_mode={lse!s:5}: {1e3 * t_ott:9.1f} ms  otreg vmap is "
                  f"{t_ott / t_vmap:5.2f}x faster  converged {int(out.converged.sum())}/{B}  "
                  f"finite {int(ok.sum())}/{B}  max rel. gap of <P, C> {gap:.1e}", flush=True)


if __name__ == "__main__":
    main()
