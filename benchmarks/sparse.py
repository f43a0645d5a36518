"""Quadratic-regularised and sparsity-constrained OT: otreg vs POT vs regot, one process.

Problem (../shared/REFERENCE.md): x ~ N(0, I_2), y ~ N(1, I_2), n = m, uniform weights,
C = |x - y|^2 / max, float64 for every library (NumPy/SciPy for POT, C++ for regot, x64 JAX).

Regularisation conventions, all mapped to the same problem
:math:`\\min_T \\langle T, C\\rangle + \\frac\\gamma2\\|T\\|^2` (sparse: at most k nonzeros
per column):
  otreg ``gamma``  = POT ``reg`` (``ot.smooth``, ``reg_type="l2"`` / ``"sparsity_constrained"``)
                   = regot ``reg`` (``qrot_*``, optional: rows skipped if not installed; its
                     dual vector is (alpha, beta): its plan is [alpha_i + beta_j - C_ij]_+ / reg,
                     checked on a small problem).

Every row is scored by the same float64 functions of this script (../shared/ALGORITHMS.md 4, 5):
  primal  <T, C> + gamma/2 |T|^2 at the returned plan (not a bound: the plans miss the
          marginals by the printed L1 errors);
  F       the semi-dual F(alpha) = <alpha, a> - sum_j b_j max_{y in simplex, |y|_0 <= k}
          (<y, alpha - c_j> - gamma b_j / 2 |y|^2), at the returned alpha (exact top-k and
          simplex projection; k = n for quadratic OT);
  D       the dual <alpha, a> + <beta, b> - 1/(2 gamma) sum_j sum_{top k} [alpha + beta_j - c_j]_+^2
          at the returned pair, for the solvers that return one (otreg's Newton, POT
          ``smooth_ot_dual``, regot); "-" for semi-dual solvers
          (F(alpha) = max_beta D(alpha, beta)).
F and D are lower bounds of the relaxation's optimum (weak duality): higher is better solved.
sparse_ot and POT ``smooth_ot_semi_dual`` both maximise F; otreg's Newton and POT
``smooth_ot_dual`` both maximise D. "At equal value" rows: otreg re-run over a grid of ``tol``
(POT's L1 marginal error, then / sqrt(10) per step, down to ``--tol-floor``), stopped at the
first (loosest) tol whose F (sparse) or D (quadratic) is >= POT's, then timed; the ratio is POT's
time / that time. The tol is chosen with POT's value known (an oracle stop); the search runs are
not timed.

Reported: CPU time (median of up to ``--reps`` runs within ``--budget`` s; POT once), primal, F,
D, nonzeros per column (max), L1 error of each marginal, time ratio to otreg's default row.

Usage: bash benchmarks/run_sparse.sh (pinned, single-threaded), or
       python benchmarks/sparse.py [--n 500 2000] [--k 1 2 4 16] [--gamma 0.1]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time

import numpy as np
from _timing import timeit_cpu as timeit


def problem(n, seed=0):
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal((n, 2)), rng.standard_normal((n, 2)) + 1.0
    C = ((x[:, None] - y[None]) ** 2).sum(-1)
    return C / C.max(), np.full(n, 1 / n), np.full(n, 1 / n)


def top_k_rows(X, k):
    """Row indices (k, m) of the k largest entries of each column of X (all rows if k >= n)."""
    n, m = X.shape
    if k >= n:
        return np.broadcast_to(np.arange(n)[:, None], (n, m))
    return np.argpartition(-X, k - 1, axis=0)[:k]


def sparse_simplex(X, k):
    """Each column of X projected on {y in the simplex, |y|_0 <= k}: keep its k largest
    entries, project them on the simplex (sort-based threshold), zero the rest."""
    idx = top_k_rows(X, k)
    top = np.take_along_axis(X, idx, 0)
    u = -np.sort(-top, axis=0)
    css = np.cumsum(u, axis=0) - 1.0
    rho = (u - css / np.arange(1, u.shape[0] + 1)[:, None] > 0).sum(0)  # a prefix holds
    tau = css[rho - 1, np.arange(u.shape[1])] / rho
    Y = np.zeros_like(X)
    np.put_along_axis(Y, idx, np.maximum(top - tau, 0.0), 0)
    return Y


def semi_dual(alpha, C, a, b, gamma, k):
    """F(alpha) in float64 (module doc; POT's and otreg's formula, ALGORITHMS.md 4.3)."""
    alpha = np.asarray(alpha, np.float64)
    X = alpha[:, None] - C
    Y = sparse_simplex(X / (gamma * b), k)
    val = (X * Y).sum(0) - 0.5 * gamma * b * (Y * Y).sum(0)
    return float(alpha @ a - b @ val)


def dual(alpha, beta, C, a, b, gamma, k):
    """D(alpha, beta) in float64 (module doc; ALGORITHMS.md 4.2, eq. (7) of Blondel et al.
    for k = n)."""
    alpha, beta = np.asarray(alpha, np.float64), np.asarray(beta, np.float64)
    S = alpha[:, None] + beta[None] - C
    top = np.maximum(np.take_along_axis(S, top_k_rows(S, k), 0), 0.0)
    return float(alpha @ a + beta @ b - (top * top).sum() / (2 * gamma))


def metrics(T, C, a, b, gamma):
    T = np.asarray(T, np.float64)
    return dict(obj=float((T * C).sum() + gamma / 2 * (T * T).sum()),
                nnz=int((T != 0).sum(0).max()), row=float(np.abs(T.sum(1) - a).sum()),
                col=float(np.abs(T.sum(0) - b).sum()))


def quiet(fn):
    with contextlib.redirect_stdout(io.StringIO()):  # POT's sparsity code prints shapes
        return fn()


def tol_grid(start, floor):
    """``start``, then / sqrt(10) per step, down to ``floor``."""
    out, t = [], max(start, floor)
    while t >= floor * (1 - 1e-9):
        out.append(t)
        t /= 10 ** 0.5
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--n", nargs="+", type=int, default=[500, 2000])
    p.add_argument("--k", nargs="*", type=int, default=[1, 2, 4, 16],
                   help="sparse_ot k values (none: quadratic OT only)")
    p.add_argument("--gamma", type=float, default=0.1)
    p.add_argument("--tol", type=float, default=1e-6)
    p.add_argument("--tol-floor", type=float, default=1e-8,
                   help="tightest otreg tol tried when matching POT's value")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--budget", type=float, default=20.0)
    p.add_argument("--skip-pot-above", type=int, default=2000)
    p.add_argument("--no-lbfgs-qot", action="store_true",
                   help="skip the quadratic_ot L-BFGS semi-dual row (69 s at n = 2000)")
    args = p.parse_args()
    import jax
    jax.config.update("jax_enable_x64", True)
    import ot

    import otreg
    try:
        import regot
    except ImportError:  # optional peer (pip install regot)
        regot = None
    g = args.gamma
    print(f"# quadratic / sparsity-constrained OT, float64 (all libraries), gamma = {g}, "
          f"{time.strftime('%Y-%m-%d')}\n# F = semi-dual at the returned alpha, D = dual at the "
          "returned (alpha, beta), both float64 by this script's functions; higher = better "
          "solved")
    print("| n | k | solver | CPU time (s) | primal | F (semi-dual) | D (dual) | max nnz/col | "
          "row L1 err | col L1 err | time / otreg |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")

    def score(n, k, C, a, b, T, alpha, beta=None):
        kk = n if k == "inf" else k
        mt = metrics(T, C, a, b, g)
        mt["F"] = semi_dual(alpha, C, a, b, g, kk)
        mt["D"] = None if beta is None else dual(alpha, beta, C, a, b, g, kk)
        return mt

    def row(n, k, name, cpu, mt, base):
        ratio = "1.0" if base is None else f"{cpu / base:.1f}"
        d = "-" if mt["D"] is None else f"{mt['D']:.10f}"
        print(f"| {n} | {k} | {name} | {cpu:.3f} | {mt['obj']:.10f} | {mt['F']:.10f} | {d} | "
              f"{mt['nnz']} | {mt['row']:.1e} | {mt['col']:.1e} | {ratio} |", flush=True)

    def otreg_score(n, k, C, a, b, res, pair):
        return score(n, k, C, a, b, res.plan(), res.alpha, res.beta if pair else None)

    def match(n, k, C, a, b, key, target, run, pair, pot_cpu, pot_err, base):
        """otreg over the tol grid, stopped at the first tol whose F or D >= POT's, timed."""
        best = None
        for tol in tol_grid(pot_err, args.tol_floor):
            mt = otreg_score(n, k, C, a, b, run(tol), pair)
            best = mt[key] if best is None else max(best, mt[key])
            if mt[key] >= target:
                cpu, res = timeit(lambda tol=tol: run(tol), args.reps, args.budget)
                mt = otreg_score(n, k, C, a, b, res, pair)
                row(n, k, f"otreg, tol={tol:.1e}: first grid tol with {key} >= POT's", cpu, mt,
                    base)
                print(f"| {n} | {k} | POT / otreg at equal {key} (otreg's {key} - POT's = "
                      f"{mt[key] - target:.1e}) | {pot_cpu / cpu:.1f}x | | | | | | | |",
                      flush=True)
                return
        print(f"| {n} | {k} | otreg did not reach POT's {key} = {target:.10f} at tol >= "
              f"{args.tol_floor:.0e} (best: otreg's - POT's = {best - target:.1e}) | | | | | | | | "
              "|", flush=True)

    for n in args.n:
        C, a, b = problem(n)
        Cj, aj, bj = (jax.numpy.asarray(z) for z in (C, a, b))
        # quadratic OT (k = infinity)
        newton = lambda tol: jax.block_until_ready(otreg.quadratic_ot(  # noqa: E731
            Cj, aj, bj, gamma=g, tol=tol))
        newton(1.0)  # compile (tol is traced: a loose tol compiles the same program)
        base, res = timeit(lambda: newton(args.tol), args.reps, args.budget)
        row(n, "inf", f"otreg quadratic_ot (newton, tol={args.tol:g})", base,
            otreg_score(n, "inf", C, a, b, res, True), None)
        if not args.no_lbfgs_qot:
            solve = lambda tol: jax.block_until_ready(otreg.quadratic_ot(  # noqa: E731
                Cj, aj, bj, gamma=g, tol=tol, solver="lbfgs", formulation="semi-dual"))
            solve(1.0)
            cpu, res = timeit(lambda: solve(args.tol), args.reps, args.budget)
            row(n, "inf", f"otreg quadratic_ot (lbfgs, semi-dual, tol={args.tol:g})", cpu,
                otreg_score(n, "inf", C, a, b, res, False), base)
        if n <= args.skip_pot_above:
            cpu, (T, log) = timeit(lambda: ot.smooth.smooth_ot_dual(a, b, C, g, reg_type="l2",
                                                                   log=True), 1, args.budget)
            mt = score(n, "inf", C, a, b, T, log["alpha"], log["beta"])
            row(n, "inf", "POT smooth_ot_dual l2 (defaults)", cpu, mt, base)
            match(n, "inf", C, a, b, "D", mt["D"], newton, True, cpu, mt["row"] + mt["col"],
                  base)
        if regot is not None:
            Cf = np.asfortranarray(C)
            for name in ("qrot_grssn", "qrot_lbfgs_dual"):
                cpu, out = timeit(lambda name=name: getattr(regot, name)(
                    Cf, a, b, g, tol=args.tol, max_iter=5000), args.reps, args.budget)
                mt = score(n, "inf", C, a, b, out.plan, out.dual[:n], out.dual[n:])
                row(n, "inf", f"regot {name} (tol={args.tol:g})", cpu, mt, base)
        for k in args.k:
            run = lambda tol, k=k: jax.block_until_ready(otreg.sparse_ot(  # noqa: E731
                Cj, aj, bj, k=k, gamma=g, tol=tol))
            run(1.0)
            base, res = timeit(lambda k=k: run(args.tol), args.reps, args.budget)
            row(n, k, f"otreg sparse_ot (semi-dual, tol={args.tol:g})", base,
                otreg_score(n, k, C, a, b, res, False), None)
            if n <= args.skip_pot_above:
                cpu, (T, log) = timeit(lambda k=k: quiet(lambda: ot.smooth.smooth_ot_semi_dual(
                    a, b, C, g, reg_type="sparsity_constrained", max_nz=k, log=True)), 1,
                    args.budget)
                mt = score(n, k, C, a, b, T, log["alpha"])
                row(n, k, "POT smooth_ot_semi_dual (defaults)", cpu, mt, base)
                match(n, k, C, a, b, "F", mt["F"], run, False, cpu, mt["row"] + mt["col"], base)


if __name__ == "__main__":
    main()
