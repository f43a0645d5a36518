"""The ``otreg`` command: ``otreg demo`` (every solver on built-in data) and ``otreg distance``."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["main"]


def _timed(fn: Callable):
    import jax
    out = jax.block_until_ready(fn())  # compile
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    return out, time.perf_counter() - t0


def _sinkhorn_rows(x, y, epsilon):
    import jax
    import jax.numpy as jnp

    import otreg
    xj, yj = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
    configs = [
        ("sinkhorn (PointCloud, absorbed kernel)", dict(block_size=None), {}),
        ("sinkhorn (PointCloud blocked, log-domain)", dict(block_size=256), {}),
        ("sinkhorn (no annealing)", dict(block_size=None), dict(anneal=False)),
    ]
    rows = []
    for name, geom_kw, kw in configs:
        solve = jax.jit(lambda x, y, g=geom_kw, k=kw: otreg.sinkhorn(
            otreg.PointCloud(x, y, scale_cost="max", **g), epsilon=epsilon, tol=1e-4, **k))
        res, dt = _timed(lambda s=solve: s(xj, yj))
        rows.append((name, float(res.cost), int(res.n_iters), dt, bool(res.converged)))
    s = float(np.sqrt(np.max(((x[:, None] - y[None]) ** 2).sum(-1))))  # same cost scale
    div = jax.jit(lambda x, y: otreg.sinkhorn_divergence(x / s, y / s, epsilon=epsilon,
                                                         tol=1e-4))
    (val, aux), dt = _timed(lambda: div(xj, yj))
    rows.append(("sinkhorn_divergence (debiased)", float(val), int(aux.n_iters.sum()), dt,
                 bool(aux.converged)))
    for cv in (None, "upper"):
        sw = jax.jit(lambda x, y, cv=cv: otreg.sliced_w2(x / s, y / s, key=jax.random.PRNGKey(0),
                                                        n_projections=100, control_variate=cv,
                                                        squared=True))
        val, dt = _timed(lambda sw=sw: sw(xj, yj))
        # a Monte Carlo estimate, not an iteration: there is no convergence to report
        rows.append((f"sliced_w2^2 (L=100, control variate: {cv})", float(val), 100, dt, None))
    return rows


def _sns_rows(n=300, seed=0):
    """The SNS paper's random assignment problem (C uniform on [0, 1], eps = 1/1200), float32."""
    import jax.numpy as jnp

    import otreg
    C = jnp.asarray(np.random.default_rng(seed).uniform(size=(n, n)), jnp.float32)
    rows = []
    for name, solver in (("sinkhorn", otreg.sinkhorn), ("sns (Sinkhorn-Newton-Sparse)", otreg.sns)):
        res, dt = _timed(lambda solver=solver: solver(C, epsilon=1 / 1200, tol=1e-4))
        rows.append((f"{name}, assignment n={n} eps=1/1200", float(res.cost), int(res.n_iters),
                     dt, bool(res.converged)))
    return rows


def _sparse_rows(x, y, n=300, gamma=0.1):
    """quadratic_ot and sparse_ot on the first n points (cost / max), float32."""
    import jax.numpy as jnp

    import otreg
    geom = otreg.PointCloud(jnp.asarray(x[:n], jnp.float32), jnp.asarray(y[:n], jnp.float32),
                            scale_cost="max")
    rows = []
    for name, fn in ((f"quadratic_ot (gamma={gamma}, n={n})",
                      lambda: otreg.quadratic_ot(geom, gamma=gamma)),
                     (f"sparse_ot (k=2 per column, gamma={gamma}, n={n})",
                      lambda: otreg.sparse_ot(geom, k=2, gamma=gamma))):
        res, dt = _timed(fn)
        rows.append((name, float(res.primal), int(res.n_iters), dt, bool(res.converged)))
    return rows


def _table(rows: Sequence[tuple]) -> str:
    head = ("method", "value", "iterations", "time (ms)", "converged")
    cells = [head] + [(r[0], f"{r[1]:.6g}", str(r[2]), f"{1e3 * r[3]:.1f}",
                       "n/a" if r[4] is None else str(r[4])) for r in rows]
    w = [max(len(c[i]) for c in cells) for i in range(len(head))]
    lines = ["  ".join(c[i].ljust(w[i]) for i in range(len(head))) for c in cells]
    lines.insert(1, "  ".join("-" * wi for wi in w))
    return "\n".join(lines)


def demo(args) -> int:
    from otreg import data
    x, y = data.gaussians(args.n, d=args.d, seed=args.seed)
    print(f"otreg demo: x ~ N(0, I), y ~ N(1, I), n = m = {args.n}, d = {args.d}, cost = "
          f"squared Euclidean / max, epsilon = {args.epsilon}, float32 (times after compilation)")
    print(_table(_sinkhorn_rows(x, y, args.epsilon) + _sns_rows() + _sparse_rows(x, y)))
    return 0


def distance(args) -> int:
    import jax
    import jax.numpy as jnp

    import otreg
    from otreg import data
    from otreg.newton import choose_solver
    if args.x64:
        jax.config.update("jax_enable_x64", True)
    dt = jnp.float64 if args.x64 else jnp.float32
    x, y = data.load_points(args.x), data.load_points(args.y)
    if x.shape[1] != y.shape[1]:
        print(f"otreg distance: {args.x} has d = {x.shape[1]} but {args.y} has d = "
              f"{y.shape[1]}.", file=sys.stderr)
        return 2
    geom = otreg.PointCloud(jnp.asarray(x, dt), jnp.asarray(y, dt), cost=args.cost,
                            block_size=args.block_size)
    if args.method == "sliced":
        val = otreg.sliced_w2(geom.x, geom.y, key=jax.random.PRNGKey(args.seed),
                              n_projections=args.n_projections)
        print(f"{float(val):.10g}")
        print(f"# method=sliced n_projections={args.n_projections} seed={args.seed} (SW_2, "
              f"control variate) converged=n/a", file=sys.stderr)
        return 0
    if args.method in ("sparse", "quadratic"):
        kw = dict(gamma=args.gamma, max_iter=args.max_iter, tol=args.tol)
        res = (otreg.sparse_ot(geom, k=args.k, **kw) if args.method == "sparse"
               else otreg.quadratic_ot(geom, **kw))
        print(f"{float(res.primal):.10g}")
        print(f"# method={args.method} gamma={args.gamma} iterations={int(res.n_iters)} "
              f"marginal error={float(res.error):.3e} converged={bool(res.converged)}",
              file=sys.stderr)
        return 0 if bool(res.converged) else 1
    solver = choose_solver(args.method, geom, args.epsilon, "otreg distance")
    res = solver(geom, epsilon=args.epsilon, tol=args.tol, max_iter=args.max_iter,
                 progress=args.progress)
    print(f"{float(res.cost):.10g}")
    print(f"# method={solver.__name__} epsilon={float(res.epsilon):.4g} "
          f"iterations={int(res.n_iters)} "
          f"error={float(res.error):.3e} converged={bool(res.converged)}", file=sys.stderr)
    if not bool(res.converged):
        print("# " + otreg.explain(res.status), file=sys.stderr)
    return 0 if bool(res.converged) else 1


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="otreg", description="Optimal transport in JAX.")
    sub = ap.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="run every solver on built-in data and print a table")
    d.add_argument("--n", type=int, default=1000)
    d.add_argument("--d", type=int, default=2)
    d.add_argument("--epsilon", type=float, default=0.01)
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=demo)
    t = sub.add_parser("distance", help="OT cost between two point files (.npy, .npz, .csv)")
    t.add_argument("x")
    t.add_argument("y")
    t.add_argument("--method", choices=["sinkhorn", "sns", "auto", "sliced", "sparse", "quadratic"],
                   default="sinkhorn",
                   help="entropic OT by Sinkhorn or Sinkhorn-Newton-Sparse (auto: SNS when "
                   "epsilon <= max cost / 1000), sliced W2, sparsity-constrained OT (--k) or "
                   "quadratic-regularised OT (--gamma)")
    t.add_argument("--k", type=int, default=2, help="for --method sparse: nonzeros per column")
    t.add_argument("--gamma", type=float, default=0.1,
                   help="for --method sparse/quadratic: the regulariser (gamma/2)|T|^2")
    t.add_argument("--n-projections", type=int, default=128, help="for --method sliced")
    t.add_argument("--seed", type=int, default=0, help="for --method sliced")
    t.add_argument("--epsilon", type=float, default=None,
                   help="absolute, in cost units (default: 0.05 * mean cost)")
    t.add_argument("--cost", default="sqeuclidean")
    t.add_argument("--tol", type=float, default=None)
    t.add_argument("--max-iter", type=int, default=10_000)
    t.add_argument("--block-size", type=int, default=None,
                   help="evaluate the cost in blocks of this many rows (large inputs)")
    t.add_argument("--x64", action="store_true", help="solve in float64")
    t.add_argument("--progress", action="store_true")
    t.set_defaults(func=distance)
    args = ap.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, OSError) as err:
        print(f"otreg {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    sys.exit(main())
