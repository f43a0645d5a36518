"""Sinkhorn-Newton-Sparse: otreg SNS vs otreg Sinkhorn vs OTT-JAX vs POT vs regot, one process.

Problems (the SNS paper's settings at CPU size; ../shared/REFERENCE.md):
  assignment   C uniform on [0, 1], n = 500, uniform marginals, eps = 1/1200
  grid-L2/L1   two smooth densities on a 28 x 28 grid (a ring and two blobs, floored at 1e-3 of
               their peak: a stand-in for the paper's MNIST pair), cost |p - q|^2 or |p - q|_1
               between pixel centres, scaled to max 1; eps = 1e-3
  cloud        x ~ N(0, I_d), y ~ N(1, I_d), d = 64, n = 2000, C = |x - y|^2 / max, eps in
               {1e-2, 1e-3, 1e-4}
Every solver runs to the same L1 marginal error (``--tol``, float64; 1e-4 with ``--f32``),
each with its own stopping rule set to that tolerance; the error reached is then measured in
float64 from the returned plan. Iterations: Sinkhorn sweeps, and each Newton step counts one (as
the paper does); CG products are reported separately. Slow solvers get an iteration cap
(``--cap-*``); a capped run reports its time and the error it reached, and its ratio to otreg SNS
is then a lower bound (marked ">").

Timing: after compilation, block_until_ready, median process CPU time of up to --reps runs (one
run past --budget seconds). Run pinned and single-threaded: benchmarks/run_sinkhorn.sh shows how.

Seeds (``--seeds 0 1 2``): the random problems (assignment, cloud) are drawn once per seed and
each row reports the median over seeds with the min-max in brackets (``--per-seed`` adds one row
per seed); the grids are deterministic and run once. A capped or unconverged seed makes the
ratio a lower bound (">"); 'reached' counts the seeds within 1.5 tol. regot's rows are skipped,
with a note, where regot is not installed.

Usage: python benchmarks/sns.py [--problems assignment grid-L2 grid-L1 cloud] [--tol 1e-8 1e-11]
       [--seeds 0 1 2] [--per-seed] [--f32]
       [--libs otreg_sns otreg_sinkhorn ott ott_anderson pot_log regot_ssns regot_sn]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from _timing import timeit_cpu as timeit

LIBS = ("otreg_sns", "otreg_sinkhorn", "ott", "ott_anderson", "pot_log", "regot_ssns",
        "regot_sn")


def grid_problem(metric):
    t = (np.arange(28) + 0.5) / 28
    X, Y = np.meshgrid(t, t, indexing="ij")
    ring = np.exp(-((np.hypot(X - 0.5, Y - 0.5) - 0.3) ** 2) / 0.005)
    blobs = (np.exp(-((X - 0.3) ** 2 + (Y - 0.35) ** 2) / 0.01)
             + np.exp(-((X - 0.7) ** 2 + (Y - 0.6) ** 2) / 0.02))
    a, b = (np.maximum(z, 1e-3 * z.max()).ravel() for z in (ring, blobs))
    pts = np.stack([X.ravel(), Y.ravel()], 1)
    diff = pts[:, None, :] - pts[None, :, :]
    C = (diff ** 2).sum(-1) if metric == "L2" else np.abs(diff).sum(-1)
    return C / C.max(), a / a.sum(), b / b.sum()


def problems(names, eps_cloud, seed=0):
    """(label, C, a, b, eps) of each named problem; random ones drawn with ``seed`` (the grids
    are deterministic: every seed gives the same grid problem)."""
    for name in names:
        if name == "assignment":
            rng = np.random.default_rng(seed)
            C = rng.uniform(size=(500, 500))
            yield "assignment n=500", C, np.full(500, 1 / 500), np.full(500, 1 / 500), 1 / 1200
        elif name.startswith("grid-"):
            C, a, b = grid_problem(name[5:])
            yield f"{name} n=784", C, a, b, 1e-3
        elif name == "cloud":
            rng = np.random.default_rng(seed)
            n, d = 2000, 64
            x, y = rng.standard_normal((n, d)), rng.standard_normal((n, d)) + 1.0
            C = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2 * x @ y.T
            C = np.maximum(C, 0) / C.max()
            for eps in eps_cloud:
                yield f"cloud n={n} d={d}", C, np.full(n, 1 / n), np.full(n, 1 / n), eps


def l1_error(P, a, b):
    P = np.asarray(P, np.float64)
    return float(np.abs(P.sum(1) - a).sum() + np.abs(P.sum(0) - b).sum())


def run(lib, C, a, b, eps, tol, dtype, args):
    """-> (cpu seconds, iterations, cg products or None, plan)"""
    if lib.startswith("otreg"):
        import jax

        import otreg
        Cj, aj, bj = (jax.numpy.asarray(z, dtype) for z in (C, a, b))
        if lib == "otreg_sns":
            def solve():
                return otreg.sns(Cj, aj, bj, epsilon=eps, tol=tol, keep=args.keep)
        else:
            def solve():
                return otreg.sinkhorn(Cj, aj, bj, epsilon=eps, tol=tol,
                                      max_iter=args.cap_sinkhorn)
        jax.block_until_ready(solve())
        cpu, out = timeit(lambda: jax.block_until_ready(solve()), args.reps, args.budget)
        cg = int(out.stats.n_cg) if lib == "otreg_sns" else None
        return cpu, int(out.n_iters), cg, np.asarray(out.plan())
    if lib.startswith("ott"):
        import jax
        from ott.geometry import geometry
        from ott.problems.linear import linear_problem
        from ott.solvers.linear import acceleration
        from ott.solvers.linear import sinkhorn as ott_sinkhorn
        kw = dict(anderson=acceleration.AndersonAcceleration(memory=5)) if "anderson" in lib \
            else {}
        solver = ott_sinkhorn.Sinkhorn(threshold=tol, max_iterations=args.cap_ott, norm_error=1,
                                       inner_iterations=10, lse_mode=True, **kw)
        Cj, aj, bj = (jax.numpy.asarray(z, dtype) for z in (C, a, b))

        @jax.jit
        def solve(C, a, b):
            out = solver(linear_problem.LinearProblem(geometry.Geometry(C, epsilon=eps), a, b))
            return out.matrix, out.n_iters

        jax.block_until_ready(solve(Cj, aj, bj))
        cpu, (P, it) = timeit(lambda: jax.block_until_ready(solve(Cj, aj, bj)), args.reps,
                              args.budget)
        return cpu, int(it), None, np.asarray(P)
    if lib == "pot_log":
        import ot
        cpu, (P, log) = timeit(lambda: ot.sinkhorn(a, b, C, eps, method="sinkhorn_log",
                                                   stopThr=tol, numItermax=args.cap_pot,
                                                   log=True), 1, args.budget)
        return cpu, int(log.get("niter", -1)), None, P
    if lib.startswith("regot"):
        import regot
        fn = regot.sinkhorn_ssns if lib == "regot_ssns" else regot.sinkhorn_sparse_newton
        cap = 1000 if lib == "regot_ssns" else args.cap_regot_sn
        Cf = np.asfortranarray(C)
        cpu, out = timeit(lambda: fn(Cf, a, b, eps, tol=tol, max_iter=cap), args.reps,
                          args.budget)
        return cpu, int(out.niter), None, np.asarray(out.plan)
    raise ValueError(lib)


def spread(values, fmt):
    """``median (min-max)`` of one value per seed (just the value for a single seed)."""
    med = statistics.median(values)
    if len(values) == 1 or min(values) == max(values):
        return format(med, fmt)
    return f"{format(med, fmt)} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--problems", nargs="+", default=["assignment", "grid-L2", "grid-L1", "cloud"])
    p.add_argument("--tol", nargs="+", type=float, default=[1e-8, 1e-11])
    p.add_argument("--eps-cloud", nargs="+", type=float, default=[1e-2, 1e-3, 1e-4])
    p.add_argument("--seeds", nargs="+", type=int, default=[0],
                   help="draws of the random problems (assignment, cloud); the grids are fixed")
    p.add_argument("--per-seed", action="store_true", help="also print one row per seed")
    p.add_argument("--f32", action="store_true")
    p.add_argument("--libs", nargs="+", default=list(LIBS))
    p.add_argument("--keep", type=int, default=10)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--budget", type=float, default=10.0)
    p.add_argument("--cap-sinkhorn", type=int, default=100_000)
    p.add_argument("--cap-ott", type=int, default=5_000)
    p.add_argument("--cap-pot", type=int, default=1_000)
    p.add_argument("--cap-regot-sn", type=int, default=2_000)
    args = p.parse_args()
    import jax
    if not args.f32:
        jax.config.update("jax_enable_x64", True)
    dtype = np.float32 if args.f32 else np.float64
    tols = [1e-4] if args.f32 else args.tol
    libs = list(args.libs)
    if any(lib.startswith("regot") for lib in libs):
        try:
            import regot  # noqa: F401
        except ImportError:
            print("# regot is not installed (pip install regot): its rows are skipped")
            libs = [lib for lib in libs if not lib.startswith("regot")]
    if args.f32:
        libs = [lib for lib in libs if not lib.startswith("regot")]  # regot is float64 only
    print(f"# SNS benchmark, {'float32' if args.f32 else 'float64'}, keep={args.keep}, "
          f"seeds {args.seeds}, {time.strftime('%Y-%m-%d')}; per solver the median over seeds "
          "(min-max) of the median CPU time, iterations and error; 'reached': seeds within "
          "1.5 tol; ratio: median time / median otreg SNS time")
    print("| problem | eps | tol | solver | iterations | CG products | CPU time (s) | "
          "L1 error reached | reached | time / otreg SNS |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    draws = {}  # label, eps -> [(seed, C, a, b)] over the seeds (one entry for a fixed problem)
    for seed in args.seeds:
        for name, C, a, b, eps in problems(args.problems, args.eps_cloud, seed):
            runs = draws.setdefault((name, eps), [])
            if name.startswith("grid-") and runs:
                continue  # deterministic: the same problem for every seed
            runs.append((seed, C, a, b))
    for (name, eps), runs in draws.items():
        for tol in tols:
            base = None
            for lib in libs:
                cpus, its, cgs, errs = [], [], [], []
                for seed, C, a, b in runs:
                    cpu, it, cg, P = run(lib, C, a, b, eps, tol, dtype, args)
                    err = l1_error(P, a, b)
                    cpus.append(cpu), its.append(it), errs.append(err)
                    if cg is not None:
                        cgs.append(cg)
                    if args.per_seed and len(runs) > 1:
                        print(f"| {name} seed {seed} | {eps:.3g} | {tol:.0e} | {lib} | {it} | "
                              f"{'' if cg is None else cg} | {cpu:.3f} | {err:.1e} | "
                              f"{int(err <= 1.5 * tol)}/1 | |", flush=True)
                ok = sum(e <= 1.5 * tol for e in errs)
                med = statistics.median(cpus)
                if lib == "otreg_sns":
                    base = med
                ratio = "" if base is None else \
                    f"{'' if ok == len(runs) else '>'}{med / base:.1f}"
                print(f"| {name} | {eps:.3g} | {tol:.0e} | {lib} | {spread(its, 'd')} | "
                      f"{spread(cgs, 'd') if cgs else ''} | {spread(cpus, '.3f')} | "
                      f"{spread(errs, '.1e')} | {ok}/{len(runs)} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
