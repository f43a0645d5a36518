"""otreg against OTT-JAX on one accelerator (or CPU): one table of time ratios, one process.

Rows, in order of importance (the global budget skips from the end); full sizes, ``--small`` sizes
in brackets. All float32, cost = squared Euclidean on clouds x ~ N(0, I_d), y ~ N(1, I_d) scaled so
that max C = 1 (../shared/REFERENCE.md's problem; the max is taken on the device and the scaled
points are what both libraries get), uniform weights, absolute epsilon, the same L1 marginal
tolerance (``--tol``, default 1e-4) and iteration cap for both libraries (otreg ``tol``; OTT
``threshold`` with ``norm_error=1``, ``inner_iterations=10``):

1. Sinkhorn, dense: n = m in {1e4, 5e4} [{200, 400}], d in {3, 64}, eps in {0.05, 0.005}. One
   cost matrix built on the device and handed to both (otreg ``CostMatrix``, its default mode;
   OTT ``Geometry`` in log mode, its default, and kernel mode ``lse_mode=False``; the faster OTT
   mode that reaches the tolerance is the reference). Skipped, with the reason, when n*m*4 bytes
   exceed 1/8 of the device memory (``memory_stats()['bytes_limit']``, else the host's RAM).
2. Sinkhorn, blocked: the same grid from the points, no n x m buffer: otreg ``PointCloud(x, y,
   block_size=B)`` against OTT ``PointCloud(x, y, batch_size=B)`` (its online mode), B = 1024 [64].
3. ``sinkhorn_divergence`` and its gradient in x, n = 1e4 [300], d = 3, eps = 0.01:
   ``jax.value_and_grad`` of otreg's against OTT's ``sinkdiv`` (dense; both use envelope
   gradients by default); the value and the gradient are compared.
4. Sliced W2^2, n = 1e5 [2000], d = 64, L = 256: plain Monte Carlo with the same directions in
   both (otreg ``control_variate=None``; OTT ``sliced_wasserstein`` given those directions as
   its ``proj_fn``), so the two estimate the same number; its "error" is the relative error to a
   float64 evaluation with those directions.
5. A vmapped batch: ``jit(vmap(sinkhorn))``, 1024 [16] problems of 64 x 64 [16 x 16], d = 3,
   per-problem cost / max, eps = 0.01, against OTT's ``jit(vmap)`` (both modes).
6. SNS on the random assignment problem (C uniform on [0, 1], eps = 1/1200), n = 5000 [200]:
   ``otreg.sns`` against OTT *Sinkhorn* on the same problem and tolerance (OTT has no Newton
   solver), log mode (its kernel underflows: exp(-1200) = 0 in float32).

Protocol: each library's function is jitted and compiled ahead of time (compile seconds printed
apart; cached across rows of the same shapes, epsilon being a traced argument), run once, checked,
then timed up to ``--reps`` times more (wall clock, ``block_until_ready``, median; fewer past 10 s
of timed calls or the row's allowance, then the first call's time; a mode that did not reach the
tolerance is not repeated). The error reached is recomputed here from each library's returned
potentials, blockwise on the device in float64 (float32 on TPU): the L1 marginal error
||P1 - a||_1 + ||P^T 1 - b||_1 and <P, C>, so no n x m plan is materialised for the blocked rows.
OTT's matmuls are traced under ``jax.default_matmul_precision("highest")`` (``--ott-precision``),
as otreg's are, so that TF32 does not change OTT's problem. OTT 0.6's online mode calls
``jax.interpreters.batching.is_vmappable``, which newer JAX no longer exports: it is put back
(JAX's private function of that name, else one returning False, the same for plain arrays) and
the header says so.

Check per row: both reached the tolerance (error <= 1.5 tol; sliced: relative error <= 1e-3) and
the relative gap to OTT's reference is within the row's tolerance: of <P, C> (batch: the largest
over the problems) within max(1e-3, 10 tol); divergence: the value, and the gradient within 5% of
its largest entry; sliced: the value within 1e-4. The script exits 1 when a check fails (the
reason is printed) or otreg fails. An OTT failure, or an OTT that does not reach the tolerance
within the cap, is printed (its time is then a lower bound: the ratio is marked ">") and is not a
failure. A row that raises prints the error, and the script goes on.

Budget: ``--budget`` seconds (default 450: under 8 minutes with start-up) for the whole run.
Each row has an estimate (seconds on an H100/H200-class GPU; on one CPU core with ``--small``),
scaled by the median ratio of measured to estimated time over the rows run so far; a row whose
predicted time exceeds what is left is printed as skipped. Inside a row, repetitions and the next
library stop at the row's allowance (three times its prediction, or its share of the time left if
more). A watchdog ends the process at the budget plus 15 s whatever runs (one solve past every
limit), printing the rows left as skipped.

Table: times in ms; OTT/otreg is OTT's reference time over otreg's (> 1: otreg is faster); gap is
the relative difference of the compared values; the notes hold OTT's other modes.

Run:
  GPU or TPU host, one command: ``bash benchmarks/run_accelerator.sh`` (full mode; it pins to one
  core only on CPU), with a Python whose JAX sees the device and has ott-jax; from a fresh clone
  ``make bench-accelerator ACCEL_JAX='jax[cuda12]'`` builds that venv first.
  This project's device machine (no internet; python3 has JAX with CUDA, not ott-jax or jaxopt):
  the same command, with the two wheels carried in .whl/ (see benchmarks/run_accelerator.sh).
  CPU, small (part of ``make test``): ``python benchmarks/accelerator.py --small``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import functools
import os
import statistics
import sys
import threading
import time
from pathlib import Path

T_START = time.monotonic()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import otreg  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from batched import plan_costs  # noqa: E402
from gradients import l1_marginal_error  # noqa: E402

FULL = dict(n=(10_000, 50_000), d=(3, 64), eps=(0.05, 0.005), block=1024, div=(10_000, 3, 0.01),
            sliced=(100_000, 64, 256), batch=(1024, 64, 3, 0.01), sns=(5000, 1 / 1200),
            max_iter=2000, sns_cap=20_000)
SMALL = dict(n=(200, 400), d=(3, 64), eps=(0.05, 0.005), block=64, div=(300, 3, 0.01),
             sliced=(2000, 64, 256), batch=(16, 16, 3, 0.01), sns=(200, 1 / 1200),
             max_iter=2000, sns_cap=20_000)
# seconds per row kind: full mode on an H100/H200-class GPU (a guess, calibrated as rows run),
# small mode on one shared CPU core
ESTIMATE = {"full": dict(dense=12, blocked=15, dense_big=35, blocked_big=45, divergence=25,
                         sliced=10, batch=15, sns=25),
            "small": dict(dense=1.5, blocked=2, dense_big=1.5, blocked_big=2, divergence=4,
                          sliced=2, batch=3, sns=4)}
DENSE_MEMORY_FRACTION = 1 / 8  # the cost, OTT's kernel copy and temporaries must fit
REACHED_SLACK = 1.5  # error measured here in float64 vs the solvers' own float32 check
SLICED_TOL = 1e-3  # relative error of a float32 sliced estimate to its float64 value
WATCHDOG_GRACE = 15.0
ROW_ALLOWANCE = 3.0  # a row may take this many times its prediction (or its share of what is left)
REP_SECONDS = 10.0  # no more repetitions once a library's timed calls add up to this


# ------------------------------------------------------------------------------------------------
# results

@dataclasses.dataclass
class Lib:
    """One library's (or mode's) run in a row."""

    name: str
    time_s: float = float("nan")
    compile_s: float = float("nan")
    iters: str = ""
    err: float = float("nan")
    value: object = None  # float, or an array (batch); the gradient rides in `extra`
    reached: bool = False
    extra: object = None
    failed: str = ""


@dataclasses.dataclass
class Outcome:
    ours: Lib
    peers: list
    rtol: float
    grad_rtol: float | None = None
    note: str = ""


@dataclasses.dataclass
class Row:
    label: str
    kind: str
    run: object  # Callable[[Ctx], Outcome]
    skip: str = ""


@dataclasses.dataclass
class Ctx:
    args: argparse.Namespace
    sizes: dict
    deadline: float
    measure_dtype: object
    mem_bytes: float | None
    row_deadline: float = 0.0
    cache: dict = dataclasses.field(default_factory=dict)
    clouds: dict = dataclasses.field(default_factory=dict)


def rel_gap(u, v) -> float:
    u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
    return float(np.max(np.abs(u - v) / np.maximum(np.abs(v), 1e-30)))


# ------------------------------------------------------------------------------------------------
# timing

def compile_once(ctx, key, fn, args):
    """AOT-compiled ``jit(fn)`` for ``args`` and its compile seconds (0 when cached)."""
    sig = (key,) + tuple((a.shape, str(a.dtype)) for a in jax.tree.leaves(args))
    if sig in ctx.cache:
        return ctx.cache[sig], 0.0
    t0 = time.perf_counter()
    exe = jax.jit(fn).lower(*args).compile()
    ctx.cache[sig] = exe
    return exe, time.perf_counter() - t0


def timed(ctx, lib: Lib, key, fn, args, judge) -> Lib:
    """Compile, run once, ``judge(lib, out)`` (fills err, value, reached), then time up to
    ``--reps`` more calls if the tolerance was reached (fewer past ``REP_SECONDS`` of timed calls
    or the row's allowance); the time is their median, else the first call's."""
    if time.monotonic() > ctx.row_deadline:
        lib.failed = "timed out: the row's allowance was spent before this ran"
        return lib
    exe, lib.compile_s = compile_once(ctx, key, fn, args)
    t0 = time.perf_counter()
    out = jax.block_until_ready(exe(*args))
    first = time.perf_counter() - t0
    judge(lib, out)
    times = []
    while (lib.reached and len(times) < ctx.args.reps and sum(times) + first <= REP_SECONDS
           and time.monotonic() + first < ctx.row_deadline):
        t0 = time.perf_counter()
        jax.block_until_ready(exe(*args))
        times.append(time.perf_counter() - t0)
    lib.time_s = statistics.median(times or [first])
    return lib


def guarded(lib: Lib, step) -> Lib:
    """Run ``step()``; an exception is recorded in ``lib.failed`` and the row goes on."""
    try:
        return step()
    except Exception as err:  # one library failing must not stop the row
        lib.failed = one_line(err)
        return lib


def one_line(err: Exception) -> str:
    """``Type: first line of the message`` (at most 160 characters, no table separators)."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text[:160]}".replace("|", "/")


# ------------------------------------------------------------------------------------------------
# problems and the float64 check

@contextlib.contextmanager
def measuring(ctx):
    """float64 on (JAX's x64 switch, scoped), unless the backend measures in float32."""
    old = jax.config.read("jax_enable_x64")
    jax.config.update("jax_enable_x64", ctx.measure_dtype == "float64")
    try:
        yield jnp.float64 if ctx.measure_dtype == "float64" else jnp.float32
    finally:
        jax.config.update("jax_enable_x64", old)


def divisor_block(n: int, m: int, entries: int = 2**25) -> int:
    """The largest divisor of n with at most ``entries`` entries in a (block, m) slab."""
    cap = max(1, min(n, entries // max(m, 1)))
    return next(b for b in range(cap, 0, -1) if n % b == 0)


def sq_cost(x, y, dt):
    x, y = x.astype(dt), y.astype(dt)
    xy = jnp.matmul(x, y.T, precision=jax.lax.Precision.HIGHEST)
    return jnp.maximum((x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2 * xy, 0.0)


@functools.partial(jax.jit, static_argnames=("bs", "weighted"))
def _plan_stats(data, f, g, eps, *, bs, weighted):
    dense = not isinstance(data, tuple)
    n, m = f.shape[0], g.shape[0]
    dt = f.dtype
    a, b = jnp.full(n, 1.0 / n, dt), jnp.full(m, 1.0 / m, dt)
    blocks = data.reshape(n // bs, bs, m) if dense else data[0].reshape(n // bs, bs, -1)

    def step(carry, blk):
        col, tc = carry
        rows, fb = blk
        Cb = rows.astype(dt) if dense else sq_cost(rows, data[1], dt)
        P = jnp.exp((fb[:, None] + g[None, :] - Cb) / eps)
        P = P / (n * m) if weighted else P
        return (col + P.sum(0), tc + (P * Cb).sum()), P.sum(1)

    (col, tc), row = jax.lax.scan(step, (jnp.zeros(m, dt), jnp.zeros((), dt)),
                                  (blocks, f.reshape(n // bs, bs)))
    return jnp.abs(row.reshape(n) - a).sum() + jnp.abs(col - b).sum(), tc


def plan_stats(ctx, data, f, g, eps, weighted):
    """L1 marginal error and <P, C> of P = [a b^T] exp((f + g - C) / eps), uniform a and b,
    blockwise over rows in the measuring dtype. ``data``: C (n, m) or the points (x, y)."""
    with measuring(ctx) as dt:
        f, g = jnp.asarray(f, dt), jnp.asarray(g, dt)
        err, tc = _plan_stats(data, f, g, jnp.asarray(eps, dt),
                              bs=divisor_block(f.shape[0], g.shape[0]), weighted=weighted)
        return float(err), float(tc)


@functools.partial(jax.jit, static_argnames="bs")
def _max_cost(x, y, *, bs):
    return otreg.PointCloud(x, y, block_size=bs).max_cost()


_dense_cost = jax.jit(otreg.costs.sqeuclidean)


def clouds(ctx, n, d, seed=0):
    """x ~ N(0, I), y ~ N(1, I) in float32 on the device, scaled (in float64 on the host) so that
    max |x - y|^2 = 1 (max found blockwise on the device); cached per (n, d)."""
    if (n, d) not in ctx.clouds:
        rng = np.random.default_rng(seed)
        x, y = rng.standard_normal((n, d)), rng.standard_normal((n, d)) + 1.0
        xj, yj = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
        s = np.sqrt(float(_max_cost(xj, yj, bs=divisor_block(n, n))))
        ctx.clouds.clear()  # one problem alive at a time (the 5e4 clouds are small, C is not)
        ctx.clouds[(n, d)] = (jnp.asarray(x / s, jnp.float32), jnp.asarray(y / s, jnp.float32))
    return ctx.clouds[(n, d)]


def judge_potentials(ctx, data, eps, weighted, tol):
    """A ``judge`` for solvers returning (f, g, n_iters, converged, ...)."""
    def judge(lib, out):
        lib.err, lib.value = plan_stats(ctx, data, out[0], out[1], eps, weighted)
        lib.reached = bool(lib.err <= REACHED_SLACK * tol)
        lib.iters = str(int(out[2])) + ("" if bool(out[3]) else " (not converged)")
    return judge


# ------------------------------------------------------------------------------------------------
# the two libraries' calls

def otreg_out(res):
    return res.f, res.g, res.n_iters, res.converged


def ott_solver(ctx, lse_mode=True, max_iter=None):
    from ott.solvers.linear import sinkhorn as ott_sinkhorn
    return ott_sinkhorn.Sinkhorn(threshold=ctx.args.tol, norm_error=1, inner_iterations=10,
                                 max_iterations=max_iter or ctx.sizes["max_iter"],
                                 lse_mode=lse_mode)


def ott_traced(ctx, fn):
    """``fn`` traced under OTT's matmul precision (``--ott-precision``)."""
    def wrapped(*args):
        prec = ctx.args.ott_precision
        with (jax.default_matmul_precision(prec) if prec != "default"
              else contextlib.nullcontext()):
            return fn(*args)
    return wrapped


def ott_out(o):
    return o.f, o.g, o.n_iters, o.converged


def ott_dense(ctx, lse_mode, max_iter=None):
    from ott.geometry import geometry
    from ott.problems.linear import linear_problem
    solver = ott_solver(ctx, lse_mode, max_iter)
    return ott_traced(ctx, lambda C, e: ott_out(solver(linear_problem.LinearProblem(
        geometry.Geometry(cost_matrix=C, epsilon=e)))))


def ott_online(ctx, block):
    from ott.geometry import pointcloud
    from ott.problems.linear import linear_problem
    solver = ott_solver(ctx)
    return ott_traced(ctx, lambda x, y, e: ott_out(solver(linear_problem.LinearProblem(
        pointcloud.PointCloud(x, y, epsilon=e, batch_size=block)))))


def restore_is_vmappable() -> str:
    """OTT 0.6's online PointCloud calls ``jax.interpreters.batching.is_vmappable``, which newer
    JAX no longer exports; put it back (JAX's own private function where it exists)."""
    from jax.interpreters import batching
    if hasattr(batching, "is_vmappable"):
        return ""
    from jax._src.interpreters import batching as private
    batching.is_vmappable = getattr(private, "is_vmappable", lambda x: False)
    return ("jax.interpreters.batching.is_vmappable restored for OTT 0.6's online PointCloud "
            "(JAX no longer exports it)")


# ------------------------------------------------------------------------------------------------
# rows

def sinkhorn_row(n, d, eps, blocked):
    def run(ctx):
        tol, mi, bs = ctx.args.tol, ctx.sizes["max_iter"], ctx.sizes["block"]
        x, y = clouds(ctx, n, d)
        e = jnp.float32(eps)
        if blocked:
            data, args = (x, y), (x, y, e)
            ours = lambda x, y, e: otreg_out(otreg.sinkhorn(  # noqa: E731
                otreg.PointCloud(x, y, block_size=bs), epsilon=e, tol=tol, max_iter=mi))
            peers = [(f"OTT online (batch_size={bs})", "ott-online", ott_online(ctx, bs))]
        else:
            C = _dense_cost(x, y)
            data, args = C, (C, e)
            ours = lambda C, e: otreg_out(otreg.sinkhorn(  # noqa: E731
                otreg.CostMatrix(C), epsilon=e, tol=tol, max_iter=mi))
            peers = [("OTT log", "ott-log", ott_dense(ctx, True)),
                     ("OTT kernel", "ott-kernel", ott_dense(ctx, False))]
        key = f"otreg-{'blocked' if blocked else 'dense'}-{tol}-{mi}-{bs}"
        lib = Lib("otreg")
        ours_lib = guarded(lib, lambda: timed(ctx, lib, key, ours, args,
                                              judge_potentials(ctx, data, eps, True, tol)))
        results = []
        for name, pkey, fn in peers:
            p = Lib(name)
            results.append(guarded(p, lambda p=p, pkey=pkey, fn=fn: timed(
                ctx, p, f"{pkey}-{tol}-{mi}", fn, args,
                judge_potentials(ctx, data, eps, False, tol))))
        return Outcome(ours_lib, results, rtol=max(1e-3, 10 * tol))
    return run


def divergence_row(ctx):
    n, d, eps = ctx.sizes["div"]
    tol, mi = ctx.args.tol, ctx.sizes["max_iter"]
    x, y = clouds(ctx, n, d)
    e = jnp.float32(eps)

    def ours(x, y, e):
        def value(x):
            v, aux = otreg.sinkhorn_divergence(x, y, epsilon=e, tol=tol, max_iter=mi)
            return v, (aux.ot_xy.f, aux.ot_xy.g, aux.n_iters[0], aux.converged)
        return jax.value_and_grad(value, has_aux=True)(x)

    def theirs(x, y, e):
        from ott.tools.sinkhorn_divergence import sinkdiv
        kw = dict(threshold=tol, norm_error=1, inner_iterations=10, max_iterations=mi)

        def value(x):
            v, out = sinkdiv(x, y, epsilon=e, solve_kwargs=kw)
            f, g = out.potentials[0]
            return v, (f, g, out.n_iters[0], jnp.all(jnp.stack(out.converged)))
        return jax.value_and_grad(value, has_aux=True)(x)

    def judge(weighted):
        inner = judge_potentials(ctx, (x, y), eps, weighted, tol)

        def fill(lib, out):
            (v, aux), grad = out
            inner(lib, aux)
            lib.value, lib.extra = float(v), np.asarray(grad, np.float64)
        return fill

    lib = Lib("otreg")
    ours_lib = guarded(lib, lambda: timed(ctx, lib, f"otreg-div-{tol}-{mi}", ours, (x, y, e),
                                          judge(True)))
    p = Lib("OTT sinkdiv")
    peer = guarded(p, lambda: timed(ctx, p, f"ott-div-{tol}-{mi}", ott_traced(ctx, theirs),
                                    (x, y, e), judge(False)))
    return Outcome(ours_lib, [peer], rtol=max(1e-3, 10 * tol), grad_rtol=0.05,
                   note="value_and_grad; err: cross term")


def sliced_row(ctx):
    n, d, L = ctx.sizes["sliced"]
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((n, d)), jnp.float32)
    y = jnp.asarray(rng.standard_normal((n, d)) + 1.0, jnp.float32)
    key = jax.random.PRNGKey(0)
    theta = otreg.sliced.sample_directions(key, L, d)
    with measuring(ctx) as dt:
        xp, yp = (jnp.sort(jnp.matmul(z.astype(dt), theta.astype(dt).T,
                                      precision=jax.lax.Precision.HIGHEST), axis=0)
                  for z in (x, y))
        ref = float(jnp.mean((xp - yp) ** 2))
    del xp, yp

    def ours(x, y, k):
        return otreg.sliced_w2(x, y, key=k, n_projections=L, control_variate=None, squared=True,
                               directions="gaussian")

    def theirs(x, y, k):
        from ott.tools.sliced import sliced_wasserstein
        th = otreg.sliced.sample_directions(k, L, d)
        return sliced_wasserstein(x, y, proj_fn=lambda z: z @ th.T)[0]

    def judge(lib, out):
        lib.value = float(out)
        lib.err = abs(lib.value - ref) / abs(ref)
        lib.reached, lib.iters = lib.err <= SLICED_TOL, "-"

    lib = Lib("otreg")
    ours_lib = guarded(lib, lambda: timed(ctx, lib, f"otreg-sliced-{L}", ours, (x, y, key),
                                          judge))
    p = Lib("OTT sliced_wasserstein")
    peer = guarded(p, lambda: timed(ctx, p, f"ott-sliced-{L}", ott_traced(ctx, theirs),
                                    (x, y, key), judge))
    return Outcome(ours_lib, [peer], rtol=1e-4,
                   note="plain MC, same directions; err: rel. to float64")


def batch_row(ctx):
    B, k, d, eps = ctx.sizes["batch"]
    tol, mi = ctx.args.tol, ctx.sizes["max_iter"]
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((B, k, d)), rng.standard_normal((B, k, d)) + 1.0
    C = ((x[:, :, None] - y[:, None]) ** 2).sum(-1)
    C = (C / C.max(axis=(1, 2), keepdims=True)).astype(np.float32)
    Cj, e = jnp.asarray(C), jnp.float32(eps)
    ours = jax.vmap(lambda C, e: otreg_out(otreg.sinkhorn(C, epsilon=e, tol=tol, max_iter=mi)),
                    in_axes=(0, None))

    def judge(weighted):
        def fill(lib, out):
            f, g = (np.asarray(z, np.float64) for z in out[:2])
            P = np.exp((f[:, :, None] + g[:, None, :] - C) / eps) / (k * k if weighted else 1)
            errs = l1_marginal_error(P)
            lib.err, lib.value = float(errs.max()), plan_costs(P, C)
            lib.reached = bool(lib.err <= REACHED_SLACK * tol)
            its = np.asarray(out[2])
            lib.iters = f"{its.mean():.0f}/{its.max()} ({int(np.sum(out[3]))}/{B} conv.)"
        return fill

    lib = Lib("otreg")
    ours_lib = guarded(lib, lambda: timed(ctx, lib, f"otreg-vmap-{tol}-{mi}", ours, (Cj, e),
                                          judge(True)))
    peers = []
    for lse in (True, False):
        p = Lib(f"OTT {'log' if lse else 'kernel'}")
        fn = jax.vmap(ott_dense(ctx, lse), in_axes=(0, None))
        peers.append(guarded(p, lambda p=p, fn=fn, lse=lse: timed(
            ctx, p, f"ott-vmap-{lse}-{tol}-{mi}", fn, (Cj, e), judge(False))))
    return Outcome(ours_lib, peers, rtol=max(1e-3, 10 * tol),
                   note="jit(vmap); err, gap: worst problem; iters: mean/max")


def sns_row(ctx):
    n, eps = ctx.sizes["sns"]
    tol, cap = ctx.args.tol, ctx.sizes["sns_cap"]
    C = jnp.asarray(np.random.default_rng(3).uniform(size=(n, n)), jnp.float32)
    e = jnp.float32(eps)

    def ours(C, e):
        r = otreg.sns(otreg.CostMatrix(C), epsilon=e, tol=tol)
        return r.f, r.g, r.n_iters, r.converged, r.stats.n_newton

    def judge(weighted):
        inner = judge_potentials(ctx, C, eps, weighted, tol)

        def fill(lib, out):
            inner(lib, out)
            if len(out) > 4:
                lib.iters += f" ({int(out[4])} Newton)"
        return fill

    lib = Lib("otreg sns")
    ours_lib = guarded(lib, lambda: timed(ctx, lib, f"otreg-sns-{tol}", ours, (C, e), judge(True)))
    p = Lib("OTT Sinkhorn log")
    peer = guarded(p, lambda: timed(ctx, p, f"ott-log-{tol}-{cap}", ott_dense(ctx, True, cap),
                                    (C, e), judge(False)))
    return Outcome(ours_lib, [peer], rtol=max(1e-3, 10 * tol),
                   note="OTT has no Newton solver: OTT Sinkhorn on the same problem")


def build_rows(ctx) -> list:
    """All rows, most important first."""
    s = ctx.sizes
    (n1, n2), (d_lo, d_hi), (e_hi, e_lo) = s["n"], s["d"], s["eps"]

    def sk(n, d, eps, blocked):
        big = "_big" if n == n2 else ""
        kind = ("blocked" if blocked else "dense") + big
        label = f"sinkhorn {'blocked' if blocked else 'dense'} n={n} d={d} eps={eps}"
        row = Row(label, kind, sinkhorn_row(n, d, eps, blocked))
        if not blocked and ctx.mem_bytes and n * n * 4 > DENSE_MEMORY_FRACTION * ctx.mem_bytes:
            row.skip = (f"dense C is {n * n * 4 / 1e9:.1f} GB > 1/{int(1 / DENSE_MEMORY_FRACTION)}"
                        f" of {ctx.mem_bytes / 1e9:.0f} GB device memory (the blocked row runs)")
        return row

    div_n, div_d, div_eps = s["div"]
    sl_n, sl_d, sl_L = s["sliced"]
    B, k, _, b_eps = s["batch"]
    rows = [sk(n1, d_hi, e_lo, False), sk(n1, d_hi, e_lo, True),
            Row(f"sinkhorn_divergence + grad n={div_n} d={div_d} eps={div_eps}", "divergence",
                divergence_row),
            Row(f"sliced W2 n={sl_n} d={sl_d} L={sl_L}", "sliced", sliced_row),
            Row(f"vmap batch {B} x ({k} x {k}) eps={b_eps}", "batch", batch_row),
            Row(f"SNS assignment n={s['sns'][0]} eps=1/1200 (vs OTT Sinkhorn)", "sns", sns_row),
            sk(n2, d_hi, e_lo, False), sk(n2, d_hi, e_lo, True)]
    for n in (n1, n2):
        for d, eps in ((d_hi, e_hi), (d_lo, e_lo), (d_lo, e_hi)):
            rows += [sk(n, d, eps, False), sk(n, d, eps, True)]
    return rows


# ------------------------------------------------------------------------------------------------
# the table

HEAD = ("| # | row | otreg ms | OTT ms (mode) | OTT/otreg | compile s otreg / OTT | "
        "iters otreg / OTT | error otreg / OTT | gap | check | notes |\n|" + "---|" * 11)


def fmt(t):
    """Seconds as milliseconds."""
    return "-" if t != t else f"{1e3 * t:.4g}"


def fmt_compile(t):
    return "-" if t != t else ("cached" if t == 0 else f"{t:.2f}")


def verdict(o: Outcome):
    """(reference peer or None, gap text, check text, failed?)"""
    ours = o.ours
    if ours.failed:
        return None, "-", f"FAIL: otreg {ours.failed}", True
    ok = [p for p in o.peers if not p.failed and p.reached]
    ran = [p for p in o.peers if not p.failed]
    ref = min(ok, key=lambda p: p.time_s) if ok else (min(ran, key=lambda p: p.time_s)
                                                     if ran else None)
    if not ours.reached:
        return ref, "-", f"FAIL: otreg did not reach tol (err {ours.err:.1e})", True
    if not ok:
        why = "failed" if all(p.failed for p in o.peers) else "not reached"
        return ref, "-", f"no check: OTT {why} (notes)", False
    gap = rel_gap(ours.value, ref.value)
    text = f"{gap:.1e}"
    if o.grad_rtol is not None:
        ggap = float(np.abs(ours.extra - ref.extra).max() / np.abs(ref.extra).max())
        text += f" (grad {ggap:.1e})"
        if ggap > o.grad_rtol:
            return ref, text, f"FAIL: gradients disagree ({ggap:.1e} > {o.grad_rtol:.0e})", True
    if gap > o.rtol:
        return ref, text, f"FAIL: values disagree ({gap:.1e} > {o.rtol:.0e})", True
    return ref, text, "ok", False


def format_row(i, row, o: Outcome, seconds):
    ref, gap, check, failed = verdict(o)
    ours = o.ours
    if ref is None:
        ratio, peer_t, peer_c, peer_i, peer_e = "-", "-", "-", "-", "-"
    else:
        lower = ">" if not ref.reached else ""
        ratio = f"{lower}{ref.time_s / ours.time_s:.2f}" if ours.time_s == ours.time_s else "-"
        peer_t = f"{lower}{fmt(ref.time_s)} ({ref.name})"
        peer_c, peer_i, peer_e = fmt_compile(ref.compile_s), ref.iters, f"{ref.err:.1e}"
    others = [f"{p.name}: " + (p.failed or f"{fmt(p.time_s)} ms, err {p.err:.1e}"
                               + ("" if p.reached else " not reached"))
              for p in o.peers if p is not ref or not p.reached]
    notes = "; ".join([f"row {seconds:.0f} s"] + [o.note] * bool(o.note) + others)
    line = (f"| {i} | {row.label} | {fmt(ours.time_s)} | {peer_t} | {ratio} | "
            f"{fmt_compile(ours.compile_s)} / {peer_c} | {ours.iters or '-'} / {peer_i} | "
            f"{ours.err:.1e} / {peer_e} | {gap} | {check} | {notes} |")
    return line, failed


# ------------------------------------------------------------------------------------------------
# main

def device_memory() -> float | None:
    try:
        stats = jax.devices()[0].memory_stats() or {}
    except Exception:  # not every backend has memory_stats
        stats = {}
    if stats.get("bytes_limit"):
        return float(stats["bytes_limit"])
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def header(ctx, compat):
    dev = jax.devices()[0]
    try:
        import ott
        ott_v = ott.__version__
    except ImportError:
        ott_v = "not installed (every OTT cell fails)"
    mem = f"{ctx.mem_bytes / 2**30:.1f} GiB" if ctx.mem_bytes else "unknown"
    print(f"# otreg vs OTT-JAX, {'small' if ctx.args.small else 'full'} mode, "
          f"{datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"# device {dev.device_kind} ({len(jax.devices())} x), backend {jax.default_backend()}, "
          f"memory {mem}; jax {jax.__version__}, ott-jax {ott_v}, otreg {otreg.__version__}")
    print(f"# float32, tol {ctx.args.tol} (reached: error <= {REACHED_SLACK} tol), max_iter "
          f"{ctx.sizes['max_iter']}, time: median wall clock of up to {ctx.args.reps} calls after "
          f"compile and a first call (at most {REP_SECONDS:.0f} s of them), "
          f"budget {ctx.args.budget:.0f} s; errors measured in {ctx.measure_dtype}; OTT matmul "
          f"precision {ctx.args.ott_precision}; ratio OTT/otreg > 1: otreg faster")
    if compat:
        print(f"# compat: {compat}")
    print(HEAD, flush=True)


class Watchdog:
    """Ends the process at the budget plus a grace, printing the rows left as skipped."""

    def __init__(self, ctx, rows):
        self.rows, self.index, self.failed = rows, 0, False
        delay = ctx.deadline + WATCHDOG_GRACE - time.monotonic()
        self.timer = threading.Timer(max(delay, 0.0), self.fire)
        self.timer.daemon = True
        self.timer.start()

    def fire(self):
        print(f"| {self.index + 1} | {self.rows[self.index].label} | aborted: the budget plus "
              f"{WATCHDOG_GRACE:.0f} s ran out inside this row |", flush=True)
        for j in range(self.index + 1, len(self.rows)):
            print(f"| {j + 1} | {self.rows[j].label} | skipped: budget |", flush=True)
        print("# watchdog: stopped at the budget", flush=True)
        os._exit(1 if self.failed else 0)


def run_rows(ctx, rows, chosen):
    """Run the chosen rows in order within the budget; returns whether any check failed."""
    dog = Watchdog(ctx, rows)
    try:
        return _run_rows(ctx, rows, chosen, dog)
    finally:
        dog.timer.cancel()


def _run_rows(ctx, rows, chosen, dog):
    ratios, failed = [], False
    estimates = ESTIMATE["small" if ctx.args.small else "full"]
    for i, row in enumerate(rows, 1):
        dog.index = i - 1
        if chosen and i not in chosen:
            continue
        if row.skip:
            print(f"| {i} | {row.label} | skipped: {row.skip} |", flush=True)
            continue
        scale = min(max(statistics.median(ratios), 0.2), 20.0) if ratios else 1.0
        predicted, left = estimates[row.kind] * scale, ctx.deadline - time.monotonic()
        if predicted > left:
            print(f"| {i} | {row.label} | skipped: budget (predicted ~{predicted:.0f} s, "
                  f"{max(left, 0):.0f} s left) |", flush=True)
            continue
        t0 = time.monotonic()
        share = left / sum(1 for j in range(i, len(rows) + 1) if not chosen or j in chosen)
        ctx.row_deadline = t0 + min(left, max(ROW_ALLOWANCE * predicted, share))
        try:
            outcome = row.run(ctx)
            line, bad = format_row(i, row, outcome, time.monotonic() - t0)
        except Exception as err:  # a row failing must not stop the run
            line, bad = f"| {i} | {row.label} | failed: {one_line(err)} |", True
        failed |= bad
        dog.failed = failed
        ratios.append((time.monotonic() - t0) / estimates[row.kind])
        print(line, flush=True)
    return failed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--small", action="store_true", help="tiny sizes (CPU, part of make test)")
    ap.add_argument("--budget", type=float, default=450.0, help="seconds for the whole run")
    ap.add_argument("--tol", type=float, default=1e-4, help="L1 marginal tolerance (float32)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--rows", type=int, nargs="*", help="run only these row numbers")
    ap.add_argument("--ott-precision", default="highest", choices=["highest", "default"],
                    help="matmul precision OTT is traced under (otreg always uses HIGHEST)")
    args = ap.parse_args(argv)
    backend = jax.default_backend()
    ctx = Ctx(args, SMALL if args.small else FULL, T_START + args.budget,
              "float32" if backend == "tpu" else "float64", device_memory())
    compat = restore_is_vmappable()
    header(ctx, compat)
    rows = build_rows(ctx)
    failed = run_rows(ctx, rows, set(args.rows or []))
    print(f"# total {time.monotonic() - T_START:.1f} s; "
          + ("FAILED: a check failed (see the check column)" if failed else "all checks passed"),
          flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
