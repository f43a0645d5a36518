"""What ``method="auto"`` should pick: otreg ``sinkhorn`` vs otreg ``sns``, both with their
defaults, time to the same tolerance on a grid, and how many grid cells the rule
(``otreg._methods.prefers_sns``) gets right.

Problems (random ones drawn afresh per seed; max|C| = 1 in all, so epsilon = 1 / ratio):
  cloud-d2, cloud-d64   x ~ N(0, I_d), y ~ N(1, I_d), n = m points, C = |x - y|^2 / max C
  assignment            the SNS paper's problem: C uniform on [0, 1], n x n
  grid-L2, grid-L1      (off the default grid) benchmarks/sns.py's 28 x 28 grids, n = 784, its
                        ring and blobs marginals; deterministic: one seed
Uniform marginals except on the grids, ``CostMatrix(C)`` (the dense cost, as a materialised
``PointCloud`` solves). Grid: problem x n x ratio = max|C| / epsilon x tol, in one dtype per
process (``--dtype``; jax_enable_x64 is process-wide). Each solver: ``otreg.sinkhorn(C, a, b,
epsilon=eps, tol=tol)`` / ``otreg.sns(...)``, every other argument at its default (so
``max_iter`` = 10,000: a run that stops there or stalls did not reach tol).

Timing: after compilation (epsilon and tol are traced arguments of both solvers: one compile per
shape), block_until_ready, median process CPU time of up to ``--reps`` runs (stopping once their
sum passes ``--budget`` seconds); then the median over seeds. Sinkhorn first runs with
``max_iter = --cap-sinkhorn`` (2,000); when it stops there unconverged after more CPU time than
SNS took on that seed, SNS is the faster there and the default 10,000-sweep run is skipped (the
table then shows the time spent and the error reached). A seed on which a solver does not
converge counts as an infinite time for it; the faster solver of a cell is the one with the
smaller median; if both are infinite, the one with the smaller median error. A cell is a tie
(either pick right) when both converged within ``--tie`` (10%) of each other, or SNS took no
Newton step and Sinkhorn's iteration count (it ran the same sweeps). ``--save`` keeps the
measured cells as JSON; ``--replay`` prints them again under the current rule, without timing.
Run pinned and single-threaded (benchmarks/run_auto_rule.sh).

Relaxed marginals (issue 17): ``--rho R`` solves the unbalanced problem (rho = R on both sides,
``otreg.sinkhorn(..., rho=R)`` / ``otreg.sns(..., rho=R)``; tol is then their relaxed residual)
and ``--mass-b M`` scales b to total mass M (uniform a and b otherwise); the rule is the same.

Usage: python benchmarks/auto_rule.py --dtype f64 [--problems cloud-d2 cloud-d64 assignment]
       [--n 200 1000] [--ratios 1e1 1e2 1e3 1e4] [--tol 1e-3 1e-4 1e-6 1e-9] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import numpy as np
from _timing import timeit_cpu as timeit


def make_cost(problem: str, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if problem == "assignment":
        return rng.uniform(size=(n, n))
    d = int(problem.split("-d")[1])
    x, y = rng.standard_normal((n, d)), rng.standard_normal((n, d)) + 1.0
    C = np.maximum((x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2 * x @ y.T, 0.0)
    return C / C.max()


def make_problem(problem: str, n: int, seed: int):
    """``(C, a, b)``; a, b None (uniform) except on the grids (benchmarks/sns.py: a ring and
    two blobs on a 28 x 28 grid, n = 784 whatever ``n`` and ``seed`` say)."""
    if problem.startswith("grid-"):
        from sns import grid_problem
        return grid_problem(problem[5:])
    return make_cost(problem, n, seed), None, None


def median(values):
    return statistics.median(values) if values else math.inf


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dtype", choices=["f32", "f64"], required=True)
    p.add_argument("--problems", nargs="+", default=["cloud-d2", "cloud-d64", "assignment"])
    p.add_argument("--n", nargs="+", type=int, default=[200, 1000])
    p.add_argument("--ratios", nargs="+", type=float, default=[1e1, 1e2, 1e3, 1e4])
    p.add_argument("--tol", nargs="+", type=float, default=None,
                   help="default: 1e-3 1e-4 1e-5 (f32), 1e-3 1e-4 1e-6 1e-9 (f64)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--budget", type=float, default=0.5)
    p.add_argument("--save", help="write the measured cells to this JSON file")
    p.add_argument("--replay", help="print the table of a --save file under the current rule "
                   "(no timing)")
    p.add_argument("--rho", type=float, default=None,
                   help="relaxed marginals: rho on both sides (default: balanced)")
    p.add_argument("--mass-b", type=float, default=1.0,
                   help="total mass of b (needs --rho when not 1)")
    p.add_argument("--tie", type=float, default=0.1,
                   help="both converged within this relative margin: a tie, either pick right")
    p.add_argument("--cap-sinkhorn", type=int, default=2000,
                   help="Sinkhorn first runs with this max_iter; if it stops there unconverged "
                   "after more CPU time than SNS took, SNS is faster and the default max_iter "
                   "run is skipped (its time is shown as a lower bound)")
    args = p.parse_args()
    import jax
    if args.dtype == "f64":
        jax.config.update("jax_enable_x64", True)
    import otreg
    from otreg._methods import prefers_sns
    dtype = np.float64 if args.dtype == "f64" else np.float32
    tols = args.tol or ([1e-3, 1e-4, 1e-5] if args.dtype == "f32" else [1e-3, 1e-4, 1e-6, 1e-9])
    solvers = {"sinkhorn": otreg.sinkhorn, "sns": otreg.sns}

    def solve(name, problem, eps, tol, cap, reps=args.reps):
        """(median CPU s, result) of the solver with its defaults on ``problem = (C, a, b)``;
        ``cap``: Sinkhorn's max_iter (None: the default)."""
        fn, kw = solvers[name], {} if args.rho is None else {"rho": args.rho}
        if name == "sinkhorn" and cap is not None:
            kw["max_iter"] = cap
        C, a, b = problem
        return timeit(lambda: jax.block_until_ready(fn(C, a, b, epsilon=eps, tol=tol, **kw)),
                      reps, args.budget)

    if args.mass_b != 1.0 and args.rho is None:
        p.error("--mass-b needs --rho (balanced OT needs equal masses)")
    what = f"replay of {args.replay}" if args.replay else f"seeds {args.seeds}"
    if args.rho is not None:
        what += f", relaxed: rho = {args.rho:g} on both sides, mass of b {args.mass_b:g}"
    print(f"# auto rule grid, {args.dtype}, {what}, {time.strftime('%Y-%m-%d')}; "
          "times: median over seeds of the median process CPU ms per solve; 'it': median "
          "iterations (sweeps + Newton steps; SNS: Newton steps in brackets); 'conv': seeds "
          "converged; 'S/N' = Sinkhorn time / SNS time (>1: SNS faster); 'tie': both converged "
          f"and within {args.tie:.0%} of each other; 'same sweeps': SNS took no Newton step and "
          "Sinkhorn's iteration count (the same work: a tie); a tie counts as right for either "
          "pick", flush=True)
    print("| problem | n | max C/eps | tol | Sinkhorn ms | it | conv | SNS ms | it | conv | S/N "
          "| faster | rule | old rule |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    t_start = time.time()
    records = json.load(open(args.replay)) if args.replay else []
    tally = Tally()
    if args.replay:
        for rec in records:
            report(rec, args, tally, prefers_sns, dtype)
    for problem in [] if args.replay else args.problems:
        for n in args.n:
            grid = problem.startswith("grid-")
            if grid and n != args.n[0]:
                continue  # a grid has one size
            seeds = args.seeds[:1] if grid else args.seeds
            costs = [tuple(None if z is None else jax.numpy.asarray(z, dtype)
                           for z in make_problem(problem, n, s)) for s in seeds]
            if args.mass_b != 1.0:  # uniform a, b of total mass args.mass_b
                costs = [(C, jax.numpy.full(C.shape[0], 1.0 / C.shape[0], dtype) if a is None
                          else a, args.mass_b * (jax.numpy.full(C.shape[1], 1.0 / C.shape[1],
                                                                dtype) if b is None else b))
                         for C, a, b in costs]
            n = costs[0][0].shape[0]
            for C in costs:  # compile once per shape and solver, outside the timings
                for name in solvers:
                    for cap in (args.cap_sinkhorn, None):
                        solve(name, C, 0.1, 1e-3, cap, reps=1)
            peak = float(jax.numpy.max(costs[0][0]))
            for ratio in args.ratios:
                eps = 1.0 / ratio
                for tol in tols:
                    cell = dict(problem=problem, n=n, ratio=ratio, tol=tol, peak=peak,
                                seeds=len(costs), seed0=seeds[0])
                    for name in ("sns", "sinkhorn"):
                        times, spent, iters, newton, errs, conv = [], [], [], [], [], 0
                        for k, C in enumerate(costs):
                            cpu, res = solve(name, C, eps, tol, args.cap_sinkhorn)
                            if (name == "sinkhorn" and not bool(res.converged)
                                    and int(res.n_iters) >= args.cap_sinkhorn
                                    and cpu <= cell["sns"]["times"][k]):
                                cpu, res = solve(name, C, eps, tol, None)  # the default budget
                            ok = bool(res.converged)
                            conv += ok
                            times.append(cpu if ok else math.inf)
                            spent.append(cpu)
                            iters.append(int(res.n_iters))
                            newton.append(int(res.stats.n_newton))
                            errs.append(float(res.error))
                        cell[name] = dict(t=median(times), times=times, spent=median(spent),
                                          it=int(statistics.median(iters)), conv=conv,
                                          newton=int(statistics.median(newton)),
                                          err=statistics.median(errs))
                    records.append(cell)
                    report(cell, args, tally, prefers_sns, dtype)
    print(f"\nrule right in {tally.right}/{tally.cells} cells ({tally.strict}/{tally.cells} "
          f"counting ties as misses where it picked the slower one); old rule (max C/eps >= "
          f"1000) right in {tally.old}/{tally.cells}; wall {time.time() - t_start:.0f} s")
    for m in tally.misses:
        print(f"  miss: {m}")
    if args.save and not args.replay:
        with open(args.save, "w") as fh:
            json.dump(records, fh)


class Tally:
    def __init__(self):
        self.right = self.strict = self.old = self.cells = 0
        self.misses = []


def report(cell, args, tally, prefers_sns, dtype):
    """Print one grid cell and count whether the rule (and the old one) picked the faster."""
    import jax.numpy as jnp
    s, nw = cell["sinkhorn"], cell["sns"]
    problem, n, ratio, tol = cell["problem"], cell["n"], cell["ratio"], cell["tol"]
    if s["t"] < math.inf or nw["t"] < math.inf:
        faster = "sns" if nw["t"] < s["t"] else "sinkhorn"
    else:
        faster = "sns" if nw["err"] < s["err"] else "sinkhorn"
    both = s["t"] < math.inf and nw["t"] < math.inf
    # SNS without a Newton step and with Sinkhorn's iteration count ran the same sweeps (plus
    # its checks): any time difference there is noise, so the cell is a tie too
    same = both and nw["newton"] == 0 and nw["it"] == s["it"]
    tie = same or (both and max(s["t"], nw["t"]) <= (1 + args.tie) * min(s["t"], nw["t"]))
    # the rule sees the cell's first cost matrix (its seed's), epsilon, tol and dtype
    C = jnp.asarray(make_problem(problem, n, cell.get("seed0", 0))[0], dtype)
    relax = None if args.rho is None else ("rho", (args.rho, args.rho))
    rule = "sns" if prefers_sns(C, 1.0 / ratio, tol=tol, relax=relax) else "sinkhorn"
    old = "sns" if cell["peak"] * ratio >= 1000 else "sinkhorn"
    tally.cells += 1
    tally.strict += rule == faster
    tally.right += rule == faster or tie
    tally.old += old == faster or tie
    sn = s["t"] / nw["t"] if nw["t"] < math.inf else math.nan
    if rule != faster and not tie:
        tally.misses.append(f"{problem} n={n} max C/eps={ratio:g} tol={tol:g}: rule {rule}, "
                            f"faster {faster} (S/N {sn:.2f})")

    def ms(c):
        if c["t"] < math.inf:
            return f"{1e3 * c['t']:.1f}"
        return f"not reached (err {c['err']:.1e}; {1e3 * c['spent']:.0f} ms)"
    verdict = f"{faster} (same sweeps)" if same else f"{faster} (tie)" if tie else faster
    mark = "" if rule == faster or tie else " (miss)"
    print(f"| {problem} | {n} | {ratio:.0e} | {tol:.0e} | {ms(s)} | {s['it']} | "
          f"{s['conv']}/{cell['seeds']} | {ms(nw)} | {nw['it']} ({nw['newton']}) | "
          f"{nw['conv']}/{cell['seeds']} | {sn:.2f} | {verdict} | {rule}{mark} | {old} |",
          flush=True)


if __name__ == "__main__":
    main()
