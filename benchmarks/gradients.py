"""Differentiation and batching benchmarks (one process; run pinned and single-threaded).

1. ``jax.grad`` of ``sinkhorn_divergence`` vs its forward value, n = m = 2000, d = 3, float32.
2. Implicit vs unrolled backward of a plan-based loss (``sum(W * plan())``) at 100+ iterations:
   time and the compiled gradient's temporary memory (``memory_analysis``) for two ``max_iter``.
3. A batch of 512 problems of 64 x 64 (d = 2, cost / max, eps = 0.05, L1 tol 1e-5 float32):
   otreg ``jit(vmap(sinkhorn))`` vs OTT-JAX ``jit(vmap(Sinkhorn))`` vs POT ``ot.solve_batch``
   (NumPy), same stopping rule, values compared.

Usage: python benchmarks/gradients.py [--skip-peers]
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


def implicit_vs_unrolled():
    import jax
    import jax.numpy as jnp

    import otreg
    rng = np.random.default_rng(1)
    n = 500
    x = jnp.asarray(rng.standard_normal((n, 2)), jnp.float32)
    y = jnp.asarray(rng.standard_normal((n, 2)) + 1.0, jnp.float32)
    W = jnp.asarray(rng.standard_normal((n, n)), jnp.float32)
    print("## implicit vs unrolled backward, n = 500, loss sum(W * plan()), f32", flush=True)
    print("| eps | iterations | implicit grad ms | unrolled grad ms | ratio | implicit temp MiB "
          "(max_iter 1e3 / 1e4) | unrolled temp MiB (1e3 / 1e4) |\n|---|---|---|---|---|---|---|")
    for eps in (0.05, 0.01, 0.003):
        row = {}
        for imp in (True, False):
            def loss(x, imp=imp, max_iter=2000, eps=eps):
                r = otreg.sinkhorn(otreg.PointCloud(x, y, scale_cost="max"), epsilon=eps,
                                   tol=1e-4, implicit_diff=imp, max_iter=max_iter)
                return jnp.sum(W * r.plan()), r.n_iters
            g = jax.jit(jax.grad(loss, has_aux=True))
            t = cpu_time(lambda g=g: g(x), reps=3)
            mem = []
            for mi in (1000, 10000):
                lowered = jax.jit(jax.grad(lambda x, mi=mi, imp=imp: loss(x, imp, mi)[0])).lower(x)
                mem.append(lowered.compile().memory_analysis().temp_size_in_bytes / 2**20)
            row[imp] = (t, mem, int(loss(x, imp)[1]))
        ti, mi_, it = row[True]
        tu, mu, _ = row[False]
        print(f"| {eps} | {it} | {1e3 * ti:.1f} | {1e3 * tu:.1f} | {tu / ti:.2f} | "
              f"{mi_[0]:.2f} / {mi_[1]:.2f} | {mu[0]:.2f} / {mu[1]:.2f} |", flush=True)


def batch(skip_peers):
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
    t_ours = cpu_time(lambda: solve(Cj))
    res = solve(Cj)
    P = np.asarray(jax.vmap(lambda r: r.plan())(res), np.float64)
    ours = (P * C).sum((1, 2))
    print(f"## batch of {B} x ({n} x {n}), eps {eps}, tol {tol} f32", flush=True)
    print(f"otreg jit(vmap): {1e3 * t_ours:.1f} ms, max iterations {int(res.n_iters.max())}, "
          f"all converged {bool(res.converged.all())}", flush=True)
    if skip_peers:
        return
    from ott.geometry import geometry
    from ott.problems.linear import linear_problem
    from ott.solvers.linear import sinkhorn as ott_sinkhorn
    solver = ott_sinkhorn.Sinkhorn(threshold=tol, norm_error=1, inner_iterations=10,
                                   max_iterations=10_000)
    ott = jax.jit(jax.vmap(lambda C: solver(linear_problem.LinearProblem(
        geometry.Geometry(cost_matrix=C, epsilon=eps))).matrix))
    t_ott = cpu_time(lambda: ott(Cj))
    P_ott = np.asarray(ott(Cj), np.float64)
    diff = np.abs((P_ott * C).sum((1, 2)) - ours).max() / np.abs(ours).max()
    print(f"OTT jit(vmap): {1e3 * t_ott:.1f} ms  (otreg/OTT = {t_ours / t_ott:.3f}; "
          f"max rel. diff of <P, C> {diff:.1e})", flush=True)
    import ot
    if hasattr(ot, "solve_batch"):
        C32 = C.astype(np.float32)
        t0 = time.process_time()
        out = ot.solve_batch(M=C32, reg=eps, max_iter=10_000, tol=tol, reg_type="kl")
        t_pot = time.process_time() - t0
        P_pot = np.asarray(out.plan, np.float64)
        diff = np.abs((P_pot * C).sum((1, 2)) - ours).max() / np.abs(ours).max()
        print(f"POT solve_batch (NumPy): {1e3 * t_pot:.1f} ms  (otreg/POT = "
              f"{t_ours / t_pot:.3f}; max rel. diff of <P, C> {diff:.1e})", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-peers", action="store_true")
    ap.add_argument("--only", choices=["divergence", "implicit", "batch"], default=None)
    args = ap.parse_args()
    if args.only in (None, "divergence"):
        divergence_gradient()
    if args.only in (None, "implicit"):
        implicit_vs_unrolled()
    if args.only in (None, "batch"):
        batch(args.skip_peers)


if __name__ == "__main__":
    main()
