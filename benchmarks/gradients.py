"""Differentiation and batching benchmarks (one process; run pinned and single-threaded:
``bash benchmarks/run_gradients.sh``).

Every time is the median process-CPU time of several calls of an already compiled function
(``jit``; ``block_until_ready``), so with one pinned thread it is the wall time of one core.

1. ``jax.value_and_grad`` of ``sinkhorn_divergence`` vs its forward value, n = m = 2000, d = 3,
   eps = 0.1, float32.
2. Implicit vs unrolled backward, otreg and OTT-JAX 0.6 on one problem: x ~ N(0, I), y ~ N(1, I),
   n = m = 500, d = 2, uniform weights, cost |x - y|^2 (unscaled), epsilon = eps * max C (a
   constant) for eps in 0.05 / 0.01 / 0.003, float32, stopping at L1 marginal error <= 1e-4
   (otreg ``tol``; OTT ``threshold`` with ``norm_error=1``; both check every 10 sweeps at the
   target epsilon), loss ``sum(W * plan)`` with a fixed Gaussian W, ``jax.value_and_grad``
   with respect to x. Methods: otreg implicit with its defaults (absorbed kernel, annealing
   when max C / epsilon > 100, over-relaxation); otreg implicit with ``mode="log",
   accelerate=False`` (the same log-domain plain sweeps, annealing included, as the unrolled
   mode); otreg ``implicit_diff=False``; OTT ``Sinkhorn()`` (default ``ImplicitDiff()``, log
   domain, plain sweeps, no annealing); OTT ``Sinkhorn(implicit_diff=None)`` (unrolled). Each
   unrolled solve gets ``max_iter`` = the sweeps its library's plain implicit solve needed,
   rounded up to a multiple of 10, plus 10 (the cost of otreg's unrolled scan grows with
   ``max_iter``; OTT's unrolled forward stores one state per 10 sweeps of
   ``max_iterations``). Printed per method: ``max_iter``, sweeps, the solver's converged flag,
   the plan's L1 marginal error (float64, from the plan), time, time / otreg implicit, gradient
   gap max|g - g_ref| / max|g_ref| with g_ref = otreg implicit's (default), and the compiled
   function's temporary memory (``memory_analysis``); then the ratios of times.
3. A batch of 512 problems of 64 x 64 (d = 2, cost / max, eps = 0.05, tol 1e-5, float32 input):
   otreg ``jit(vmap(sinkhorn))`` vs OTT-JAX ``jit(vmap(Sinkhorn))`` (L1 error <= tol) vs POT
   ``ot.solve_batch`` (NumPy) with its default ``method="auto"`` (log-domain Sinkhorn for
   reg > 0) and with ``method="sinkhorn"``. POT checks every 10 sweeps whether the largest
   L2 norm of the row-marginal error over the batch is below tol, a looser rule than L1; its
   non-log path starts from float64 scalings, so it computes (and returns the plan) in float64.
   Per solver: time, the largest L1 marginal error of its plans over the batch (float64, from
   the returned plans) and the largest relative gap of <P, C> to otreg's.

Usage: python benchmarks/gradients.py [--skip-peers] [--only divergence|implicit|batch]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def cpu_time(fn, reps=5):
    import jax
    jax.block_until_ready(fn())
    ts = []
    for _ in range(reps):
        t0 = time.process_time()
        jax.block_until_ready(fn())
        ts.append(time.process_time() - t0)
    return statistics.median(ts)


def divergence_gradient():
    import jax
    import jax.numpy as jnp

    import otreg
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2000, 3)), jnp.float32)
    y = jnp.asarray(rng.standard_normal((2000, 3)) + 1.0, jnp.float32)
    fwd = jax.jit(lambda x, y: otreg.sinkhorn_divergence(x, y, epsilon=0.1)[0])
    grad = jax.jit(jax.value_and_grad(lambda x, y: otreg.sinkhorn_divergence(
        x, y, epsilon=0.1)[0]))
    tf, tg = cpu_time(lambda: fwd(x, y)), cpu_time(lambda: grad(x, y))
    print(f"## sinkhorn_divergence n=m=2000 d=3 eps=0.1 f32: forward {1e3 * tf:.1f} ms, "
          f"value_and_grad {1e3 * tg:.1f} ms, ratio {tg / tf:.2f}", flush=True)


def l1_marginal_error(P):
    """L1 marginal error against uniform weights, in float64, of a plan (n, m) or a batch of
    plans (B, n, m): ||P 1 - 1/n||_1 + ||P^T 1 - 1/m||_1 (per plan)."""
    P = np.asarray(P, np.float64)
    n, m = P.shape[-2:]
    return (np.abs(P.sum(-1) - 1.0 / n).sum(-1) + np.abs(P.sum(-2) - 1.0 / m).sum(-1))


def compiled_value_and_grad(loss, x):
    """``jit(value_and_grad(loss, has_aux=True))`` compiled for x, and its temporary MiB."""
    import jax
    c = jax.jit(jax.value_and_grad(loss, has_aux=True)).lower(x).compile()
    return c, c.memory_analysis().temp_size_in_bytes / 2**20


def round_up_plus_block(n_iters, block=10):
    """max_iter for an unrolled solve: n_iters rounded up to a multiple of block, plus one."""
    return -(-int(n_iters) // block) * block + block


def implicit_vs_unrolled(skip_peers, reps=7):
    import jax.numpy as jnp

    import otreg
    rng = np.random.default_rng(1)
    n, tol = 500, 1e-4
    x = jnp.asarray(rng.standard_normal((n, 2)), jnp.float32)
    y = jnp.asarray(rng.standard_normal((n, 2)) + 1.0, jnp.float32)
    W = jnp.asarray(rng.standard_normal((n, n)), jnp.float32)
    xn, yn = np.asarray(x, np.float64), np.asarray(y, np.float64)
    c_max = float(((xn[:, None] - yn[None]) ** 2).sum(-1).max())

    def otreg_loss(eps_abs, **kw):
        def loss(x):
            r = otreg.sinkhorn(otreg.PointCloud(x, y), epsilon=eps_abs, tol=tol, **kw)
            P = r.plan()
            return jnp.sum(W * P), (r.n_iters, r.converged, P)
        return loss

    def ott_loss(eps_abs, **kw):
        from ott.geometry import pointcloud
        from ott.problems.linear import linear_problem
        from ott.solvers.linear import sinkhorn as ott_sinkhorn
        solver = ott_sinkhorn.Sinkhorn(threshold=tol, norm_error=1, inner_iterations=10, **kw)

        def loss(x):
            out = solver(linear_problem.LinearProblem(
                pointcloud.PointCloud(x, y, epsilon=eps_abs)))
            P = out.matrix
            return jnp.sum(W * P), (out.n_iters, out.converged, P)
        return loss

    print(f"## implicit vs unrolled, value_and_grad of sum(W * plan) w.r.t. x, n = m = {n}, "
          f"d = 2, cost |x - y|^2, epsilon = eps * max C (max C = {c_max:.2f}), L1 tol {tol}, "
          f"f32, median of {reps}", flush=True)
    summary = []
    for eps in (0.05, 0.01, 0.003):
        eps_abs = eps * c_max
        rows = []  # (name, max_iter, sweeps, converged, l1 error, seconds, grad, temp MiB)

        def run(name, loss, max_iter, rows=rows):
            c, mib = compiled_value_and_grad(loss, x)
            t = cpu_time(lambda: c(x), reps=reps)
            (_, (it, conv, P)), g = c(x)
            rows.append((name, max_iter, int(it), bool(conv), float(l1_marginal_error(P)), t,
                         np.asarray(g, np.float64), mib))
            return int(it)

        run("otreg implicit (default)", otreg_loss(eps_abs), "10000 (default)")
        it = run('otreg implicit, mode="log", accelerate=False',
                 otreg_loss(eps_abs, mode="log", accelerate=False), "10000 (default)")
        mi = round_up_plus_block(it)
        run("otreg unrolled (implicit_diff=False)",
            otreg_loss(eps_abs, implicit_diff=False, max_iter=mi), mi)
        if not skip_peers:
            it = run("OTT implicit (ImplicitDiff())", ott_loss(eps_abs, max_iterations=100_000),
                     100_000)
            mi = round_up_plus_block(it)
            run("OTT unrolled (implicit_diff=None)",
                ott_loss(eps_abs, implicit_diff=None, max_iterations=mi), mi)
        t_ref, g_ref = rows[0][5], rows[0][6]
        g_scale = np.abs(g_ref).max()
        print(f"\n### eps {eps} (epsilon {eps_abs:.4g})\n\n| method | max_iter | sweeps | "
              f"converged | L1 error of plan | value_and_grad ms | / otreg implicit | "
              f"grad gap to otreg implicit | temp MiB |\n|---|---|---|---|---|---|---|---|---|")
        for name, mi, it, conv, err, t, g, mib in rows:
            gap = np.abs(g - g_ref).max() / g_scale
            print(f"| {name} | {mi} | {it} | {conv} | "
                  f"{err:.1e} | {1e3 * t:.1f} | {t / t_ref:.2f} | {gap:.1e} | {mib:.2f} |",
                  flush=True)
        t = [r[5] for r in rows]  # otreg default, otreg log plain, otreg unrolled, OTT, OTT
        line = (f"eps {eps}: otreg unrolled / otreg implicit (default) {t[2] / t[0]:.2f}, "
                f"otreg unrolled / otreg implicit log plain {t[2] / t[1]:.2f}")
        if not skip_peers:
            line += (f", OTT unrolled / OTT implicit {t[4] / t[3]:.2f}, OTT implicit / otreg "
                     f"implicit (default) {t[3] / t[0]:.2f}, OTT unrolled / otreg unrolled "
                     f"{t[4] / t[2]:.2f}")
        summary.append(line)
        if not all(r[3] for r in rows):
            print("WARNING: not every solve converged", flush=True)
    print("\nratios of value_and_grad times:\n" + "\n".join(summary), flush=True)


def batch(skip_peers, reps=5):
    import jax
    import jax.numpy as jnp

    import otreg
    B, n, eps, tol = 512, 64, 0.05, 1e-5
    rng = np.random.default_rng(2)
    x = rng.standard_normal((B, n, 2))
    y = rng.standard_normal((B, n, 2)) + 1.0
    C = ((x[:, :, None] - y[:, None]) ** 2).sum(-1)
    C /= C.max(axis=(1, 2), keepdims=True)
    Cj = jnp.asarray(C, jnp.float32)
    solve = jax.jit(jax.vmap(lambda C: otreg.sinkhorn(C, epsilon=eps, tol=tol)))
    t_ours = cpu_time(lambda: solve(Cj), reps=reps)
    res = solve(Cj)
    P = np.asarray(jax.vmap(lambda r: r.plan())(res), np.float64)
    ours = (P * C).sum((1, 2))

    def row(name, t, P, extra):
        gap = np.abs(((np.asarray(P, np.float64) * C).sum((1, 2)) - ours) / ours).max()
        print(f"| {name} | {1e3 * t:.1f} | {t / t_ours:.3f} | "
              f"{l1_marginal_error(P).max():.1e} | {gap:.1e} | {extra} |", flush=True)

    print(f"\n## batch of {B} x ({n} x {n}), d = 2, cost / max, eps {eps}, tol {tol}, "
          f"f32 input, median of {reps}\n\n| solver | ms | / otreg | max L1 marginal error "
          f"(f64, from plans) | max rel. gap of <P, C> to otreg | notes |\n"
          f"|---|---|---|---|---|---|", flush=True)
    row("otreg jit(vmap(sinkhorn))", t_ours, P,
        f"max sweeps {int(res.n_iters.max())}, all converged {bool(res.converged.all())}")
    if skip_peers:
        return
    from ott.geometry import geometry
    from ott.problems.linear import linear_problem
    from ott.solvers.linear import sinkhorn as ott_sinkhorn
    solver = ott_sinkhorn.Sinkhorn(threshold=tol, norm_error=1, inner_iterations=10,
                                   max_iterations=10_000)

    def ott_one(C):
        out = solver(linear_problem.LinearProblem(geometry.Geometry(cost_matrix=C, epsilon=eps)))
        return out.matrix, out.n_iters, out.converged
    ott = jax.jit(jax.vmap(ott_one))
    t_ott = cpu_time(lambda: ott(Cj), reps=reps)
    P_ott, it_ott, conv_ott = ott(Cj)
    row("OTT jit(vmap(Sinkhorn))", t_ott, P_ott,
        f"max sweeps {int(it_ott.max())}, all converged {bool(conv_ott.all())}")
    import ot
    C32 = C.astype(np.float32)
    for method in ("auto", "sinkhorn"):
        ts, out = [], None
        for _ in range(reps):
            t0 = time.process_time()
            out = ot.solve_batch(M=C32, reg=eps, max_iter=10_000, tol=tol, reg_type="kl",
                                 method=method)
            ts.append(time.process_time() - t0)
        plan = np.asarray(out.plan)
        label = "log_sinkhorn" if method == "auto" else method
        row(f'POT {ot.__version__} solve_batch method="{method}" ({label}, NumPy)',
            statistics.median(ts), plan,
            f"sweeps {int(out.log['n_iter']) + 1} (whole batch), plan dtype {plan.dtype}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-peers", action="store_true")
    ap.add_argument("--only", choices=["divergence", "implicit", "batch"], default=None)
    args = ap.parse_args()
    if args.only in (None, "divergence"):
        divergence_gradient()
    if args.only in (None, "implicit"):
        implicit_vs_unrolled(args.skip_peers)
    if args.only in (None, "batch"):
        batch(args.skip_peers)


if __name__ == "__main__":
    main()
