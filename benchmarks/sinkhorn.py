"""Sinkhorn: otreg vs OTT-JAX vs POT on the same problem, in one process per dtype.

Problem (../shared/REFERENCE.md): x ~ N(0, I_d), y ~ N(1, I_d), n = m, uniform weights,
C = |x - y|^2 / max |x - y|^2 computed in float64 then cast, absolute epsilon on that C.
Stopping rule: L1 marginal error <= tol (1e-5 float32, 1e-6 float64), checked every 10 iterations,
for otreg and OTT (native L1 criterion, norm_error=1). POT's criterion is an L2 norm, so POT runs
"matched": exactly the iteration count OTT needed (POT and OTT start from zero potentials and do the
same sweeps, so that is the time POT needs for the same L1 error). Every library's answer is checked
in float64 from its returned plan: L1 marginal error and <P, C>, and the relative difference of
<P, C> to OTT's is printed.

Timing: after compilation, ``block_until_ready``, median of `--reps` runs (wall and process CPU
time). Run pinned and single-threaded, as benchmarks/run_sinkhorn.sh does.

OTT-JAX runs in each of its modes as its own row: ``ott_geom`` (log domain, its default),
``ott_kernel`` (``lse_mode=False``), ``ott_momentum`` (adaptive over-relaxation, Lehmann's rule)
and ``ott_anderson`` (Anderson acceleration); otreg as ``otreg`` (default: annealing and
over-relaxation), ``otreg_plain`` (``accelerate=False``) and ``otreg_noanneal``.

Unbalanced rows (``--rho R``, both sides, and ``--mass-b M``: b uniform of mass M): otreg's
``rho=R``; OTT with ``tau = R / (R + eps)`` on ``C - eps (log a (+) log b)`` (its entropy is
relative to the counting measure: that is the same problem, same plan); POT's
``sinkhorn_unbalanced(reg_type="kl")`` run for exactly OTT's iteration count (same plain scaled
sweeps). Stopping rule: the L1 optimality residual ``|P1 - a e^{-f/rho}| + |P^T 1 - b
e^{-g/rho}|`` <= tol (otreg's ``error``; OTT's unbalanced ``solution_error`` is that norm of the
dual gradient). The check, from each returned plan alone in float64: with ``f = -rho log(P1 /
a)`` and ``g = -rho log(P^T 1 / b)`` (what optimality implies), the L1 distance between the
marginals of ``a b^T e^{(f + g - C)/eps}`` and those of P (zero exactly at the optimum); and the
primal objective's relative difference to OTT's.

Usage: python benchmarks/sinkhorn.py f32|f64 [--n 500 2000] [--d 2 64] [--eps 0.05 0.005]
       [--libs otreg otreg_plain ott_geom ott_kernel ott_momentum ott_anderson pot ...]
       [--rho 1.0 --mass-b 1.5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

TOL = {"f32": 1e-5, "f64": 1e-6}
# OTT-JAX on the cost matrix: its default (log domain), its kernel mode, its adaptive momentum
# (Lehmann et al. 2021's rule, estimated once at iteration 20) and Anderson acceleration (memory 5)
OTT_MODES = ("ott_geom", "ott_kernel", "ott_momentum", "ott_anderson")


def problem(n, d, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    y = rng.standard_normal((n, d)) + 1.0
    C = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1) if n * n * d < 5e8 else (
        (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2 * x @ y.T)
    cmax = C.max()
    return x, y, C / cmax, cmax


def timeit(fn, reps, budget_s=20.0):
    """Medians of wall and process-CPU time over up to `reps` runs (fewer once over budget)."""
    out, wall, cpu = None, [], []
    for _ in range(reps):
        c0, t0 = time.process_time(), time.perf_counter()
        out = fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        if sum(wall) > budget_s:
            break
    return statistics.median(wall), statistics.median(cpu), out


def metrics(P, C, a, b, eps=None, rho=None):
    """(error, value, any NaN): balanced, the L1 marginal error and <P, C>; unbalanced (rho),
    the plan-only optimality residual (module doc) and the primal objective."""
    P = np.asarray(P, np.float64)
    if rho is None:
        err = np.abs(P.sum(1) - a).sum() + np.abs(P.sum(0) - b).sum()
        return float(err), float((P * C).sum()), bool(np.isnan(P).any())
    r, c = P.sum(1), P.sum(0)
    f, g = -rho * np.log(r / a), -rho * np.log(c / b)
    Q = np.outer(a, b) * np.exp((f[:, None] + g[None, :] - C) / eps)
    err = np.abs(Q.sum(1) - r).sum() + np.abs(Q.sum(0) - c).sum()

    def kl(p, q):
        return float(np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1) / q), 0)) - p.sum()
                     + q.sum())
    val = float((P * C).sum()) + eps * kl(P, np.outer(a, b)) + rho * (kl(r, a) + kl(c, b))
    return float(err), val, bool(np.isnan(P).any())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dtype", choices=["f32", "f64"])
    ap.add_argument("--n", type=int, nargs="+", default=[500, 2000])
    ap.add_argument("--d", type=int, nargs="+", default=[2, 64])
    ap.add_argument("--eps", type=float, nargs="+", default=[0.05, 0.005])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--libs", nargs="+", default=["otreg", "otreg_noanneal", "ott_geom", "pot"])
    ap.add_argument("--block-size", type=int, default=256)
    ap.add_argument("--ott-batch-size", type=int, default=None)
    ap.add_argument("--rho", type=float, default=None, help="unbalanced rows: rho, both sides")
    ap.add_argument("--mass-b", type=float, default=1.0, help="total mass of b (uniform)")
    args = ap.parse_args()

    import jax
    jax.config.update("jax_enable_x64", args.dtype == "f64")
    import jax.numpy as jnp

    import otreg

    dt = jnp.float64 if args.dtype == "f64" else jnp.float32
    npdt = np.float64 if args.dtype == "f64" else np.float32
    tol = TOL[args.dtype]
    print(f"# sinkhorn benchmark {args.dtype}, tol {tol}, jax {jax.__version__}"
          + ("" if args.rho is None else f", unbalanced rho {args.rho}, mass(b) {args.mass_b}"),
          flush=True)
    head = ("| lib | n | d | eps | time s | cpu s | iters | ms/iter | err (f64) | <P,C> rel. "
            "diff vs OTT | ratio otreg/lib |")
    print(head + "\n|" + "---|" * 11, flush=True)

    for n in args.n:
        for d in args.d:
            x, y, C, cmax = problem(n, d)
            a = np.full(n, 1.0 / n)
            b = np.full(n, args.mass_b / n)
            Cj, xj, yj = jnp.asarray(C, dt), jnp.asarray(x, dt), jnp.asarray(y, dt)
            # floors: two matrix-vector products; one fused on-the-fly LSE sweep (blocked path)
            mv = jax.jit(lambda K, u, v: (K @ v, u @ K))
            u0 = jnp.ones(n, dt) / n
            jax.block_until_ready(mv(Cj, u0, u0))
            floor_mv = timeit(lambda mv=mv, C=Cj, u=u0: jax.block_until_ready(mv(C, u, u)),
                              21)[1] * 1e3
            print(f"floor: two matvecs n={n}: {floor_mv:.3f} ms (cpu)", flush=True)
            floor_lse = None
            if any(lib.endswith("_pc") for lib in args.libs):
                # one row and one column log-sum-exp of the cost computed on the fly from x, y
                # (XLA fuses what it can; no blocking): the floor of a log-domain sweep
                s = float(np.sqrt(cmax))
                xs, ys = xj / s, yj / s

                def lse_sweep(x, y, f, g, eps=0.005):
                    C = otreg.costs.sqeuclidean(x, y)
                    return (jax.nn.logsumexp(g[None, :] - C / eps, axis=1),
                            jax.nn.logsumexp(f[:, None] - C / eps, axis=0))

                sweep = jax.jit(lse_sweep)
                jax.block_until_ready(sweep(xs, ys, u0, u0))
                floor_lse = timeit(lambda sw=sweep, x=xs, y=ys, u=u0: jax.block_until_ready(
                    sw(x, y, u, u)), 11)[1] * 1e3
                print(f"floor: fused LSE sweep from points n={n} d={d}: {floor_lse:.3f} ms "
                      f"(cpu)", flush=True)
            for eps in args.eps:
                rows = {}
                ott_iters = None
                for lib in args.libs:
                    try:
                        res = run(lib, jax, jnp, otreg, dt, npdt, xj, yj, Cj, C, a, b, eps,
                                  tol, args, ott_iters, cmax)
                    except Exception as err:  # a peer failing must not stop the run
                        print(f"| {lib} | {n} | {d} | {eps} | failed: {err!r} |", flush=True)
                        continue
                    if res is None:
                        continue
                    wall, cpu, iters, P = res
                    err_, val, nan = metrics(P, C, a, b, eps, args.rho)
                    rows[lib] = (wall, cpu, iters, err_, val)
                    if lib == "ott_geom":
                        ott_iters = iters
                for lib, (wall, cpu, iters, err_, val) in rows.items():
                    ref = rows.get("ott_geom", rows.get("ott_pc", (None,) * 5))[4]
                    rel = abs(val - ref) / abs(ref) if ref else float("nan")
                    mine = rows.get("otreg_pc" if lib.endswith("_pc") else "otreg")
                    ratio = mine[1] / cpu if mine else float("nan")
                    print(f"| {lib} | {n} | {d} | {eps} | {wall:.4f} | {cpu:.4f} | {iters} | "
                          f"{1e3 * cpu / max(iters, 1):.3f} | {err_:.2e} | {rel:.1e} | "
                          f"{ratio:.3f} |", flush=True)
                if "otreg" in rows:
                    per = 1e3 * rows["otreg"][1] / rows["otreg"][2]
                    print(f"otreg ms/iter / two-matvec floor: {per / floor_mv:.2f}", flush=True)
                if "otreg_pc" in rows and floor_lse:
                    per = 1e3 * rows["otreg_pc"][1] / rows["otreg_pc"][2]
                    print(f"otreg_pc ms/iter / fused LSE floor: {per / floor_lse:.2f}", flush=True)


def run(lib, jax, jnp, otreg, dt, npdt, xj, yj, Cj, C, a, b, eps, tol, args, ott_iters, cmax):
    n = C.shape[0]
    rho = args.rho
    aj, bj = jnp.asarray(a, dt), jnp.asarray(b, dt)
    if lib in ("otreg", "otreg_noanneal", "otreg_plain", "otreg_pc"):
        if lib == "otreg_pc":
            geom_args = (xj, yj)

            def make(x, y):
                return otreg.PointCloud(x, y, block_size=args.block_size, scale_cost="max")
        else:
            geom_args = (Cj,)
            make = otreg.CostMatrix
        anneal = lib != "otreg_noanneal"
        accelerate = lib != "otreg_plain"

        def solve(*g):  # the public call as users write it (jitted inside, inputs validated)
            return otreg.sinkhorn(make(*g), aj, bj, epsilon=eps, tol=tol, anneal=anneal,
                                  accelerate=accelerate, max_iter=20_000, rho=rho)
        out = jax.block_until_ready(solve(*geom_args))
        wall, cpu, out = timeit(lambda: jax.block_until_ready(solve(*geom_args)), args.reps)
        return wall, cpu, int(out.n_iters), np.asarray(out.plan())
    if lib in OTT_MODES or lib == "ott_pc":
        from ott.geometry import geometry, pointcloud
        from ott.problems.linear import linear_problem
        from ott.solvers.linear import acceleration
        from ott.solvers.linear import sinkhorn as ott_sinkhorn
        extra = {"ott_kernel": dict(lse_mode=False),
                 "ott_momentum": dict(momentum=acceleration.Momentum(start=20)),
                 "ott_anderson": dict(anderson=acceleration.AndersonAcceleration(memory=5))}
        solver = ott_sinkhorn.Sinkhorn(**{**dict(threshold=tol, max_iterations=20_000,
                                                 norm_error=1, inner_iterations=10,
                                                 lse_mode=True), **extra.get(lib, {})})
        tau = {} if rho is None else dict(tau_a=rho / (rho + eps), tau_b=rho / (rho + eps))
        if lib != "ott_pc":
            # unbalanced: OTT's problem on C - eps (log a (+) log b) is ours on C (module doc)
            geom_args = (Cj if rho is None else jnp.asarray(
                C - eps * (np.log(a)[:, None] + np.log(b)[None, :]), dt),)

            def make(C):
                return geometry.Geometry(cost_matrix=C, epsilon=eps)
        else:
            geom_args = (xj, yj)

            # OTT 0.6.0's online mode (batch_size=...) fails on jax 0.10 (it calls
            # jax.interpreters.batching.is_vmappable); its dense PointCloud is the comparison.
            def make(x, y):
                return pointcloud.PointCloud(x, y, epsilon=eps, scale_cost="max_cost",
                                             batch_size=args.ott_batch_size)

        @jax.jit
        def solve(*g):
            out = solver(linear_problem.LinearProblem(make(*g), aj, bj, **tau))
            return out.matrix, out.n_iters

        jax.block_until_ready(solve(*geom_args))
        wall, cpu, (P, it) = timeit(lambda: jax.block_until_ready(solve(*geom_args)), args.reps)
        return wall, cpu, int(it), np.asarray(P)
    if lib in ("pot", "pot_log"):
        import ot
        if ott_iters is None:
            print(f"skip {lib}: needs the ott_geom iteration count first", flush=True)
            return None
        method = "sinkhorn" if lib == "pot" else "sinkhorn_log"
        if rho is not None:
            method = "sinkhorn" if lib == "pot" else "sinkhorn_stabilized"
        Cn, an = C.astype(npdt), a.astype(npdt)
        reps = args.reps if lib == "pot" else 1
        if lib == "pot_log" and n * n * ott_iters > 2e10:
            print(f"skip pot_log n={n}: about {n * n * ott_iters / 4e7:.0f} s", flush=True)
            return None

        def call():
            if rho is not None:
                return ot.unbalanced.sinkhorn_unbalanced(
                    an, b.astype(npdt), Cn, eps, rho, reg_type="kl", numItermax=ott_iters,
                    stopThr=0.0, method=method)
            return ot.sinkhorn(an, an, Cn, eps, method=method, numItermax=ott_iters,
                               stopThr=0.0, warn=False)

        wall, cpu, P = timeit(call, reps)
        return wall, cpu, ott_iters, P
    raise SystemExit(f"unknown lib {lib}")


if __name__ == "__main__":
    sys.exit(main())
