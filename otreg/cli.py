"""The ``otreg`` command: ``otreg demo`` (every solver on built-in data) and ``otreg distance``."""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["main"]


def _timed(fn: Callable):
    """``(output, first-call seconds (compiles), second-call seconds)``."""
    import jax
    t0 = time.perf_counter()
    jax.block_until_ready(fn())  # compiles
    t1 = time.perf_counter()
    out = jax.block_until_ready(fn())
    return out, t1 - t0, time.perf_counter() - t1


def _row(name: str, res, timing: tuple, *, value=None, n_iters=None, error=None,
         status=True) -> dict:
    """One result as a record: what ``--json`` prints and the table shows."""
    from otreg.status import explain
    first, second = timing
    rec = {"method": name, "value": float(res.cost if value is None else value)}
    if status:
        code = int(res.status)
        rec.update(converged=bool(res.converged), status=code,
                   status_message=explain(code).split(": ", 1)[1],
                   n_iters=int(res.n_iters if n_iters is None else n_iters),
                   error=float(res.error if error is None else error))
    else:  # a Monte Carlo estimate: there is no convergence to report
        rec.update(converged=None, status=None, status_message="Monte Carlo estimate "
                   "(no iteration, no convergence)", n_iters=n_iters, error=None)
    rec["seconds"] = {"first_call": round(first, 4), "second_call": round(second, 4)}
    return rec


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
    for name, geom_kw, kw in configs:
        solve = jax.jit(lambda x, y, g=geom_kw, k=kw: otreg.sinkhorn(
            otreg.PointCloud(x, y, scale_cost="max", **g), epsilon=epsilon, tol=1e-4, **k))
        res, *t = _timed(lambda s=solve: s(xj, yj))
        yield _row(name, res, t)
    s = float(np.sqrt(np.max(((x[:, None] - y[None]) ** 2).sum(-1))))  # same cost scale
    div = jax.jit(lambda x, y: otreg.sinkhorn_divergence(x / s, y / s, epsilon=epsilon,
                                                         tol=1e-4))
    (val, aux), *t = _timed(lambda: div(xj, yj))
    yield _row("sinkhorn_divergence (debiased)", aux, t, value=val, n_iters=int(aux.n_iters.sum()),
               error=aux.ot_xy.error)
    for label, kw in (("plain Monte Carlo", {"directions": "gaussian",
                                             "control_variate": None}), ("auto", {})):
        sw = jax.jit(lambda x, y, kw=kw: otreg.sliced_w2(x / s, y / s, key=jax.random.PRNGKey(0),
                                                        n_projections=100, squared=True, **kw))
        val, *t = _timed(lambda sw=sw: sw(xj, yj))
        yield _row(f"sliced_w2^2 (L=100, {label})", None, t, value=val, n_iters=100,
                   status=False)


SNS_N, SNS_TOL = 200, 1e-6  # the SNS showcase rows (see _sns_rows)


def _sns_rows(n=SNS_N, seed=0, tol=SNS_TOL):
    """SNS's showcase: the SNS paper's random assignment problem (C uniform on [0, 1],
    eps = 1/1200) in float64 to ``tol`` = 1e-6, both solvers with their defaults, then what
    ``method="auto"`` picks here and why (otreg._methods). Here plain Sinkhorn spends its
    10,000 sweeps without reaching 1e-6 (0.12-0.15 s) and SNS converges in 39 iterations
    (7-8 ms; ``otreg demo --n 200`` pinned to one core, two runs, 2026-12-02);
    benchmarks/auto_rule.py has where each solver wins (Sinkhorn: float32, tol 1e-3, or a plan
    that is not sparse)."""
    import jax
    import jax.numpy as jnp

    import otreg
    from otreg._methods import auto_reason, choose_solver
    eps = 1 / 1200
    x64 = functools.partial(jax.enable_x64, True)  # these rows only: the caller's setting stays
    with x64():
        C = jnp.asarray(np.random.default_rng(seed).uniform(size=(n, n)), jnp.float64)
    label = f"assignment n={n} eps=1/1200 f64 tol={tol:g}"
    for name, solver in (("sinkhorn", otreg.sinkhorn), ("sns", otreg.sns)):
        with x64():
            res, *t = _timed(lambda solver=solver: solver(C, epsilon=eps, tol=tol))
        yield _row(f"{name}, {label}", res, t)
    with x64():
        _, why = auto_reason(C, eps, tol=tol)
        solver = choose_solver("auto", C, eps, "otreg demo", tol=tol)
        res, *t = _timed(lambda: solver(C, epsilon=eps, tol=tol))
    rec = _row(f"auto -> {solver.__name__}, {label}", res, t)
    rec["auto"] = {"picks": solver.__name__, "reason": why}
    yield rec


def _sparse_rows(x, y, n=300, gamma=0.1):
    """quadratic_ot and sparse_ot on the first n points (cost / max), float32."""
    import jax.numpy as jnp

    import otreg
    geom = otreg.PointCloud(jnp.asarray(x[:n], jnp.float32), jnp.asarray(y[:n], jnp.float32),
                            scale_cost="max")
    for name, fn in ((f"quadratic_ot (gamma={gamma}, n={n})",
                      lambda: otreg.quadratic_ot(geom, gamma=gamma)),
                     (f"sparse_ot (k=2 per column, gamma={gamma}, n={n})",
                      lambda: otreg.sparse_ot(geom, k=2, gamma=gamma))):
        res, *t = _timed(fn)
        yield _row(name, res, t, value=res.primal)


COLUMNS = (("method", 58), ("value", 12), ("iterations", 10), ("first call (s)", 14),
           ("time (ms)", 10), ("converged", 9))


def _line(cells: Sequence[str]) -> str:
    return "  ".join(c.ljust(w) for c, (_, w) in zip(cells, COLUMNS, strict=True)).rstrip()


def _table_row(r: dict) -> str:
    conv = "n/a" if r["converged"] is None else str(r["converged"])
    return _line((r["method"], f"{r['value']:.6g}", str(r["n_iters"]),
                  f"{r['seconds']['first_call']:.2f}", f"{1e3 * r['seconds']['second_call']:.1f}",
                  conv))


def demo(args) -> int:
    import jax

    from otreg import data
    x, y = data.gaussians(args.n, d=args.d, seed=args.seed)
    rows = _chain(_sinkhorn_rows(x, y, args.epsilon), _sns_rows(), _sparse_rows(x, y))
    if args.json:
        for r in rows:
            print(json.dumps(r), flush=True)
        return 0
    print(f"otreg demo on {jax.default_backend()}: x ~ N(0, I), y ~ N(1, I), n = m = {args.n}, "
          f"d = {args.d}, cost = squared Euclidean / max, epsilon = {args.epsilon}, float32 "
          "(the SNS rows: their own problem, float64).\n"
          "The first call of each solver compiles it (a few seconds, shown as 'first call'); "
          "'time' is a second call, compiled.", flush=True)
    print(_line([c for c, _ in COLUMNS]))
    print(_line(["-" * w for _, w in COLUMNS]), flush=True)
    for r in rows:
        print(_table_row(r), flush=True)
        if "auto" in r:
            print(f"  ^ method='auto' picks {r['auto']['picks']}: {r['auto']['reason']}",
                  flush=True)
    return 0


def _chain(*gens):
    for g in gens:
        yield from g


def _emit(rec: dict, args, extra: str = "") -> int:
    """Print one result (JSON object, or value on stdout and a summary on stderr); exit code."""
    if args.json:
        print(json.dumps(rec), flush=True)
    else:
        print(f"{rec['value']:.10g}")
        conv = "n/a" if rec["converged"] is None else rec["converged"]
        it = "" if rec["n_iters"] is None else f" iterations={rec['n_iters']}"
        err = "" if rec["error"] is None else f" error={rec['error']:.3e}"
        print(f"# method={rec['method']}{extra}{it}{err} converged={conv} "
              f"({rec['seconds']['total']:.2f} s)", file=sys.stderr)
        if rec["converged"] is False:
            print(f"# status {rec['status']}: {rec['status_message']}", file=sys.stderr)
    return 1 if rec["converged"] is False else 0


def _compiled(fn, *operands):
    """``(result, compile seconds, run seconds)`` of ``jit(fn)(*operands)``, compiled ahead."""
    import jax
    t0 = time.perf_counter()
    exe = jax.jit(fn).lower(*operands).compile()
    t1 = time.perf_counter()
    out = jax.block_until_ready(exe(*operands))
    return out, t1 - t0, time.perf_counter() - t1


def distance(args) -> int:
    import jax
    import jax.numpy as jnp

    import otreg
    from otreg import data
    from otreg._methods import choose_solver
    from otreg._progress import ProgressBar
    if args.x64:
        jax.config.update("jax_enable_x64", True)
    dt = jnp.float64 if args.x64 else jnp.float32
    t_start = time.perf_counter()
    x, y = data.load_points(args.x), data.load_points(args.y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"{args.x} has d = {x.shape[1]} but {args.y} has d = {y.shape[1]}.")
    for path, z in ((args.x, x), (args.y, y)):
        bad = np.argwhere(~np.isfinite(z))
        if bad.size:
            raise ValueError(f"{path}: contains NaN or inf (row {int(bad[0, 0])}); remove or "
                             "impute those points.")
    xj, yj = jnp.asarray(x, dt), jnp.asarray(y, dt)
    geom_of = lambda x, y: otreg.PointCloud(x, y, cost=args.cost,  # noqa: E731
                                            block_size=args.block_size)
    geom_of(xj, yj)  # static checks (cost name, block size) with a clear error, before compiling
    extra = ""
    if args.method == "sliced":
        key = jax.random.PRNGKey(args.seed)
        val, tc, tr = _compiled(lambda x, y: otreg.sliced_w2(
            x, y, key=key, n_projections=args.n_projections), xj, yj)
        rec = _row("sliced", None, (tc, tr), value=val, n_iters=args.n_projections, status=False)
        extra = f" n_projections={args.n_projections} seed={args.seed} (SW_2, control variate)"
    elif args.method in ("sparse", "quadratic"):
        kw = dict(gamma=args.gamma, max_iter=args.max_iter, tol=args.tol)
        solve = (lambda x, y: otreg.sparse_ot(geom_of(x, y), k=args.k, **kw)) \
            if args.method == "sparse" else (lambda x, y: otreg.quadratic_ot(geom_of(x, y), **kw))
        res, tc, tr = _compiled(solve, xj, yj)
        rec = _row(args.method, res, (tc, tr), value=res.primal)
        extra = f" gamma={args.gamma}" + (f" k={args.k}" if args.method == "sparse" else "")
    else:
        solver = choose_solver(args.method, geom_of(xj, yj), args.epsilon, "otreg distance",
                               tol=args.tol)
        bar = None
        if args.progress:
            tol = args.tol if args.tol is not None else (1e-6 if args.x64 else 1e-3)
            bar = ProgressBar(tol, args.max_iter, label=solver.__name__)
        res, tc, tr = _compiled(lambda x, y: solver(
            geom_of(x, y), epsilon=args.epsilon, tol=args.tol, max_iter=args.max_iter,
            progress=bar or False), xj, yj)
        if bar is not None:
            bar.close()
        rec = _row(solver.__name__, res, (tc, tr))
        rec["epsilon"] = float(res.epsilon)
        extra = f" epsilon={float(res.epsilon):.4g}"
    rec["seconds"] = {"compile": round(tc, 4), "solve": round(tr, 4),
                      "total": round(time.perf_counter() - t_start, 4)}
    rec.update(n=int(x.shape[0]), m=int(y.shape[0]), d=int(x.shape[1]),
               dtype=jnp.dtype(dt).name)
    return _emit(rec, args, extra)


def _version() -> str:
    import jax

    import otreg
    return f"otreg {otreg.__version__} (jax {jax.__version__}, backend {jax.default_backend()})"


class _VersionAction(argparse.Action):
    def __init__(self, option_strings, dest, **kw):
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        print(_version())
        parser.exit()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="otreg", description="Optimal transport in JAX.")
    ap.add_argument("--version", action=_VersionAction)
    sub = ap.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="run every solver on built-in data, one row as each finishes")
    d.add_argument("--n", type=int, default=1000)
    d.add_argument("--d", type=int, default=2)
    d.add_argument("--epsilon", type=float, default=0.01)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--json", action="store_true", help="one JSON object per row (JSON lines)")
    d.set_defaults(func=demo)
    t = sub.add_parser("distance", help="OT cost between two point files (.npy, .npz, .csv)")
    t.add_argument("x")
    t.add_argument("y")
    t.add_argument("--method", choices=["sinkhorn", "sns", "auto", "sliced", "sparse", "quadratic"],
                   default="sinkhorn",
                   help="entropic OT by Sinkhorn or Sinkhorn-Newton-Sparse (auto: SNS in "
                   "float64 at tol <= 1e-4 when epsilon <= max cost / 300 and the plan is "
                   "sparse, else Sinkhorn), sliced W2, sparsity-constrained OT (--k) or "
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
    t.add_argument("--json", action="store_true",
                   help="print one JSON object (value, converged, status, timings) on stdout")
    t.add_argument("--progress", action="store_true",
                   help="sinkhorn/sns/auto: a progress bar on stderr (error vs tol, sweeps, "
                   "elapsed, time left); plain lines when stderr is not a terminal")
    t.set_defaults(func=distance)
    args = ap.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, OSError) as err:
        print(f"otreg {args.command}: error: {err}", file=sys.stderr)
        return 2


def _enable_compilation_cache() -> None:
    """Keep compiled solvers across invocations of the command (JAX's persistent compilation
    cache in ``$OTREG_CACHE_DIR``, default ``~/.cache/otreg/jax``; ``OTREG_CACHE_DIR=`` (empty)
    turns it off). Only the command does this: importing otreg never touches the global cache
    setting of the user's own programs."""
    path = os.environ.get("OTREG_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache",
                                                          "otreg", "jax"))
    if not path:
        return
    try:
        import jax
        os.makedirs(path, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    except (OSError, AttributeError):  # read-only home, or a JAX without the option: no cache
        pass


def entry() -> int:
    """The console script: :func:`main` with the persistent compilation cache."""
    _enable_compilation_cache()
    return main()


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    sys.exit(entry())
