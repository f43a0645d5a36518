r"""Sinkhorn-Newton-Sparse: :func:`sns` (Tang, Shavlovsky, Rahmanian, Tardini, Thekumparampil,
Xiao and Ying, "Accelerating Sinkhorn Algorithm with Sparse Newton Iterations", ICLR 2024).

Same problem, same :class:`~otreg.SinkhornResult` as :func:`otreg.sinkhorn`. A Sinkhorn warm-up
brings the dual potentials :math:`z = (f, g)` close to the optimum, then Newton steps ascend the
concave dual

.. math::
    \Phi(f, g) = \langle f, a\rangle + \langle g, b\rangle - \varepsilon \sum_{ij} P_{ij},
    \qquad \nabla\Phi = (a - P\mathbf 1,\; b - P^\top \mathbf 1),
    \qquad -\varepsilon\nabla^2\Phi = H = \begin{bmatrix}\mathrm{diag}(P\mathbf 1) & P\\
    P^\top & \mathrm{diag}(P^\top\mathbf 1)\end{bmatrix}.

Near the optimum P concentrates on few entries per row (exactly one at the unregularised
optimum of an assignment problem), so the off-diagonal block is replaced by its ``keep`` largest
entries per row, stored in ELL form (a static (n, keep) array of column indices and one of values:
the product by ``P~`` is a gather, by ``P~^T`` a ``segment_sum``), while the diagonal stays exact.
The step :math:`\tilde H \Delta = \varepsilon\nabla\Phi` is solved by Jacobi-preconditioned
conjugate gradient; the dropped mass makes :math:`\tilde H` positive definite on every connected
component that has some, and a shift :math:`\mu\,\mathrm{diag}(\tilde H)` with
:math:`\mu = \min(\mathrm{err}, 10^{-3})` covers the rest. A backtracking line search on the merit
:math:`\|\nabla\Phi\|_2` (not on :math:`\Phi`, whose decrease float64 cannot resolve near the
optimum; ALGORITHMS.md section 2.5) accepts the step; when it fails, a block of log-domain Sinkhorn
sweeps is taken instead and counted in ``stats.n_fallback``. Where the kept entries hold less than
``keep_mass`` of the plan (a plan still spread over many entries per row: large epsilon, or
low-dimensional clouds), Sinkhorn blocks are taken instead of Newton steps, so SNS degrades to
Sinkhorn rather than to a slow Newton iteration.

Cost per Newton step: one pass over C to select the kept entries (block by block for a blocked
:class:`~otreg.PointCloud`, so memory stays O(n * keep)), two passes per line-search trial for the
marginals, and O((n + m) keep) per CG product. Everything runs in one compiled
``lax.while_loop``; the result's potentials are differentiated implicitly with the full Hessian
(:mod:`otreg.implicit`), exactly as for :func:`otreg.sinkhorn`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from otreg import _checks
from otreg import _sinkhorn_loops as loops
from otreg._math import cg, safe_log
from otreg.sinkhorn import (
    SinkhornResult,
    SolverStats,
    finish,
    prepare,
    reattach,
    validate_cg,
    validate_problem,
)
from otreg.status import Status

__all__ = ["sns", "EllHessian", "ell_hessian", "hessian_matvec", "solve_ell"]

SHIFT_MAX = 1e-3  # largest relative diagonal shift of the sparsified Hessian
ARMIJO = 1e-4  # sufficient decrease of the gradient-norm merit
STALL_STEPS = 3  # steps without a new best error before giving up (floating-point floor)
NEWTON_MIN_GAIN = 1.25  # a Newton step dividing the error by less than this is weak ...
WEAK_STEPS = 2  # ... and this many in a row are followed by a Sinkhorn block


class EllHessian(NamedTuple):
    """Sparsified dual Hessian :math:`\\tilde H` (module doc) in ELL form.

    Attributes:
      rows, cols: exact diagonals :math:`P\\mathbf 1` (n,) and :math:`P^\\top\\mathbf 1` (m,).
      idx: (n, keep) column indices of the kept plan entries of each row.
      vals: (n, keep) their values :math:`P_{ij}`.
    """

    rows: jax.Array
    cols: jax.Array
    idx: jax.Array
    vals: jax.Array


def ell_hessian(geom, a, b, eps, f, g, rows, cols, keep: int) -> EllHessian:
    """The ``keep`` largest plan entries of each row; exact diagonals ``rows`` and ``cols``."""
    log_b = safe_log(b)
    idx, c_kept = geom.row_top_k(g / eps + log_b, eps, keep)
    live = (a > 0)[:, None] & (b[idx] > 0)
    z = jnp.where(live, (f[:, None] + g[idx] - c_kept) / eps, -jnp.inf)
    vals = a[:, None] * b[idx] * jnp.exp(z)
    return EllHessian(rows, cols, idx, vals)


def hessian_matvec(h: EllHessian, u, v, shift=0.0):
    """:math:`(\\tilde H + \\mu\\,\\mathrm{diag}) (u, v)` by a gather and a ``segment_sum``."""
    m = h.cols.shape[0]
    hu = (1.0 + shift) * h.rows * u + jnp.sum(h.vals * v[h.idx], axis=1)
    hv = (1.0 + shift) * h.cols * v + jax.ops.segment_sum(
        (h.vals * u[:, None]).ravel(), h.idx.ravel(), num_segments=m)
    return hu, hv


def solve_ell(h: EllHessian, rf, rg, *, shift, rtol, max_iter):
    """Solve ``(H~ + shift diag(H~)) (u, v) = (rf, rg)`` through the Schur complement
    :math:`S = D_c - \tilde P^\top D_r^{-1} \tilde P` (m unknowns) by CG, preconditioned by
    the exact diagonal of S (one ``segment_sum``): near a permutation-like plan each row's
    dominant entry nearly cancels its column's diagonal, which a Jacobi preconditioner on the
    full system does not see. Returns ``(u, v, cg_products)``."""
    m = h.cols.shape[0]
    dr, dc = (1.0 + shift) * h.rows, (1.0 + shift) * h.cols
    inv_r = 1.0 / dr

    def p_mul(v):  # P~ v
        return jnp.sum(h.vals * v[h.idx], axis=1)

    def pt_mul(u):  # P~^T u
        return jax.ops.segment_sum((h.vals * u[:, None]).ravel(), h.idx.ravel(),
                                   num_segments=m)

    s_diag = dc - jax.ops.segment_sum((h.vals * h.vals * inv_r[:, None]).ravel(),
                                      h.idx.ravel(), num_segments=m)
    s_diag = jnp.maximum(s_diag, 1e-3 * shift * dc + jnp.finfo(dc.dtype).tiny)
    v, k = cg(lambda v: dc * v - pt_mul(inv_r * p_mul(v)), rg - pt_mul(inv_r * rf),
              lambda r: r / s_diag, rtol=rtol, max_iter=max_iter)
    return inv_r * (rf - p_mul(v)), v, k


def _marginals(geom, a, b, eps, f, g):
    """``(P 1, P^T 1)``: two log-sum-exp reductions (blockwise when blocked). The weights enter
    as ``log b`` (not as masks: 3x faster on CPU; the Newton stage is not differentiated)."""
    rows = a * jnp.exp(f / eps + geom.lse(g / eps + safe_log(b), eps, 1))
    cols = b * jnp.exp(g / eps + geom.lse(f / eps + safe_log(a), eps, 0))
    return rows, cols


class _State(NamedTuple):
    f: jax.Array
    g: jax.Array
    rows: jax.Array
    cols: jax.Array
    err: jax.Array  # L1 marginal error
    merit: jax.Array  # L2 norm of the dual gradient
    best: jax.Array
    stall: jax.Array
    step: jax.Array  # outer steps (Newton steps and Sinkhorn blocks)
    newton: jax.Array  # Newton steps taken
    sweeps: jax.Array  # Sinkhorn sweeps taken in this stage
    n_cg: jax.Array
    n_fallback: jax.Array  # failed line searches
    n_capped: jax.Array  # CG solves stopped by cg_max_iter
    weak: jax.Array  # consecutive Newton steps that gained less than NEWTON_MIN_GAIN
    errors: jax.Array
    done: jax.Array
    failed: jax.Array


def _errors(a, b, rows, cols):
    ra, rb = a - rows, b - cols
    err = jnp.sum(jnp.abs(ra)) + jnp.sum(jnp.abs(rb))
    merit = jnp.sqrt(jnp.sum(ra * ra) + jnp.sum(rb * rb))
    return err, merit


def _newton_loop(pb: loops.Problem, f, g, it0, *, keep, keep_mass, max_iter, cg_tol, cg_max_iter,
                 ls_steps, block_sweeps, check_every, sweep_loop, progress):
    """Newton steps where the kept entries hold at least ``keep_mass`` of the plan's mass, blocks
    of ``block_sweeps`` Sinkhorn sweeps where they do not or where a line search fails."""
    geom, a, b, eps, tol = pb.geom, pb.a, pb.b, pb.eps, pb.tol
    dtype = a.dtype
    row_on, col_on = a > 0, b > 0
    rows, cols = _marginals(geom, a, b, eps, f, g)
    err, merit = _errors(a, b, rows, cols)
    fine = jnp.isfinite(err)
    zero = jnp.array(0, jnp.int32)
    n_hist = -(-max_iter // check_every)
    # marginals that overflow (potentials of an earlier annealing stage when the warm-up ran out)
    # are not a breakdown: the first step is then a log-domain Sinkhorn block, which recovers
    inf = jnp.asarray(jnp.inf, dtype)
    err, merit = jnp.where(fine, err, inf), jnp.where(fine, merit, inf)
    init = _State(f, g, rows, cols, err, merit, err, zero, zero, zero, zero, zero, zero, zero,
                  jnp.where(fine, zero, WEAK_STEPS), -jnp.ones((n_hist,), dtype),
                  fine & (err <= tol), jnp.array(False))
    final_pb = pb._replace(n_stages=zero, eps0=eps)

    def direction(s: _State, h: EllHessian):
        shift = jnp.minimum(s.err, SHIFT_MAX)
        # zero-weight atoms: unit diagonal and zero right-hand side, so their step is 0
        h = h._replace(rows=jnp.where(row_on, h.rows, 1.0), cols=jnp.where(col_on, h.cols, 1.0))
        rhs = (jnp.where(row_on, eps * (a - s.rows), 0.0),
               jnp.where(col_on, eps * (b - s.cols), 0.0))
        rtol = jnp.maximum(cg_tol, jnp.minimum(0.1, jnp.sqrt(s.err)))  # inexact Newton forcing
        du, dv, k = solve_ell(h, *rhs, shift=shift, rtol=rtol.astype(dtype),
                              max_iter=cg_max_iter)
        return du, dv, k

    def line_search(s: _State, du, dv):
        def body(c):
            alpha = jnp.asarray(0.5, dtype) ** c[1]
            f, g = s.f + alpha * du, s.g + alpha * dv
            rows, cols = _marginals(geom, a, b, eps, f, g)
            err, merit = _errors(a, b, rows, cols)
            ok = jnp.isfinite(merit) & (merit <= (1.0 - ARMIJO * alpha) * s.merit)
            out = jax.tree_util.tree_map(lambda n, o: jnp.where(ok, n, o),
                                         (f, g, rows, cols, err, merit), c[2])
            return ok, c[1] + 1, out

        out0 = (s.f, s.g, s.rows, s.cols, s.err, s.merit)
        ok, _, out = jax.lax.while_loop(lambda c: ~c[0] & (c[1] < ls_steps), body,
                                        (jnp.array(False), zero, out0))
        return ok, out

    def sinkhorn_block(s: _State, budget):
        """At most ``min(block_sweeps, budget)`` Sinkhorn sweeps from the current point: the
        sweep loop starts its counter at ``block_sweeps - budget`` (max_iter is a hard bound)."""
        start = jnp.clip(block_sweeps - budget, 0, block_sweeps)
        st = loops.initial_state(s.f, s.g, 1, dtype)
        st = st._replace(it=start.astype(st.it.dtype))
        st = sweep_loop(final_pb, st, max_iter=block_sweeps, check_every=check_every,
                        progress=None)
        n = (st.it - start).astype(jnp.int32)
        rows = a * st.ratio
        cols = b * jnp.exp(st.g / eps + geom.lse(st.f / eps + safe_log(a), eps, 0))
        err, merit = _errors(a, b, rows, cols)
        old = (s.f, s.g, s.rows, s.cols, s.err, s.merit)  # no sweep ran: nothing changed
        out = jax.tree_util.tree_map(lambda x, y: jnp.where(n > 0, x, y),
                                     (st.f, st.g, rows, cols, err, merit), old)
        return out, n

    def newton(s: _State, h: EllHessian, budget):
        du, dv, k = direction(s, h)
        ok, out = line_search(s, du, dv)
        out, n = jax.lax.cond(ok, lambda: (out, zero), lambda: sinkhorn_block(s, budget - 1))
        return out, n, k, ok

    def sinkhorn_step(s: _State, budget):
        return (*sinkhorn_block(s, budget), zero, jnp.array(True), jnp.array(False))

    def newton_or_sinkhorn(s: _State, budget):
        h = ell_hessian(geom, a, b, eps, s.f, s.g, s.rows, s.cols, keep)
        kept = jnp.sum(h.vals) >= keep_mass * jnp.sum(s.rows)
        return jax.lax.cond(kept, lambda: (*newton(s, h, budget), jnp.array(True)),
                            lambda: sinkhorn_step(s, budget))

    def body(s: _State):
        # after WEAK_STEPS weak Newton steps (little gain) one Sinkhorn block, then Newton again
        budget = max_iter - (it0 + s.sweeps + s.newton)  # >= 1 here (see cond)
        out, n, k, ok, took_newton = jax.lax.cond(s.weak >= WEAK_STEPS, sinkhorn_step,
                                                  newton_or_sinkhorn, s, budget)
        f, g, rows, cols, err, merit = out
        good = jnp.isfinite(err) & jnp.all(jnp.isfinite(f)) & jnp.all(jnp.isfinite(g))
        better = err < s.best
        stall = jnp.where(better, 0, s.stall + 1)
        weak = jnp.where(took_newton & ~(err * NEWTON_MIN_GAIN <= s.err), s.weak + 1, 0)
        newton_steps = s.newton + jnp.where(took_newton, 1, 0)
        loops.report(progress, it0 + s.sweeps + n + newton_steps, err, eps, good)
        new = _State(f, g, rows, cols, err, merit, jnp.minimum(err, s.best), stall, s.step + 1,
                     newton_steps, s.sweeps + n, s.n_cg + k, s.n_fallback + jnp.where(ok, 0, 1),
                     s.n_capped + jnp.where(k >= cg_max_iter, 1, 0), weak,
                     s.errors.at[s.step].set(err, mode="drop"), err <= tol, jnp.array(False))
        return jax.tree_util.tree_map(lambda n, o: jnp.where(good, n, o), new,
                                      s._replace(failed=jnp.array(True)))

    def cond(s: _State):
        return (~s.done & ~s.failed & (s.stall < STALL_STEPS)
                & (it0 + s.sweeps + s.newton < max_iter))

    return jax.lax.while_loop(cond, body, init)


@functools.partial(jax.jit, static_argnames=(
    "keep", "keep_mass", "warmup_iter", "max_iter", "check_every", "anneal", "decay", "progress",
    "implicit_diff", "cg_tol", "cg_max_iter", "ls_steps", "block_sweeps"))
def _solve(geom, a, b, epsilon, tol, warmup_tol, init, max_abs, *, keep, keep_mass, warmup_iter,
           max_iter, check_every, anneal, decay, progress, implicit_diff, cg_tol, cg_max_iter,
           ls_steps, block_sweeps):
    # the warm-up stops at max(warmup_tol, tol), in-graph: tol may be traced (e.g. passed on by
    # sinkhorn_divergence under jit)
    warmup_tol = jnp.maximum(jnp.asarray(warmup_tol), jnp.asarray(tol))
    p = prepare(geom, a, b, epsilon, warmup_tol, init, max_abs, max_iter=warmup_iter,
                check_every=check_every, anneal=anneal, decay=decay)
    loop = loops.log_loop if p.live.is_blocked else loops.kernel_loop
    warm = loop(p.pb, p.state, max_iter=min(warmup_iter, max_iter), check_every=check_every,
                progress=progress)
    pb = p.pb._replace(tol=jnp.asarray(tol, p.eps.dtype))
    s = _newton_loop(pb, warm.f, warm.g, warm.it.astype(jnp.int32), keep=keep, keep_mass=keep_mass,
                     max_iter=max_iter, cg_tol=cg_tol, cg_max_iter=cg_max_iter, ls_steps=ls_steps,
                     block_sweeps=block_sweeps, check_every=check_every, sweep_loop=loop,
                     progress=progress)
    used = warm.it.astype(jnp.int32) + s.sweeps + s.newton
    n_newton, n_cg, n_fallback, n_capped = s.newton, s.n_cg, s.n_fallback, s.n_capped
    # the budget ran out in the warm-up (max_iter <= warmup sweeps): potentials of an earlier
    # annealing stage may overflow at the target epsilon; that is MAX_ITER, not a breakdown
    spent = (s.step == 0) & (warm.it >= max_iter)
    failed = (s.failed | (warm.failed & (s.step == 0))) & ~spent
    ok_rows = jnp.all(jnp.isfinite(s.rows)) & jnp.isfinite(s.err)
    s = s._replace(rows=jnp.where(ok_rows, s.rows, p.pb.a),
                   err=jnp.where(ok_rows, s.err, warm.err.astype(s.err.dtype)))
    converged = s.done & ~failed
    stalled = (n_fallback > 0) | (s.stall >= STALL_STEPS) | (n_capped > 0)
    solve = jnp.where(converged, Status.SUCCESS, jnp.where(
        failed, Status.NUMERICAL, jnp.where(stalled, Status.NEWTON_STALLED, Status.MAX_ITER)))
    status = jnp.where(p.status != Status.SUCCESS, p.status, solve).astype(jnp.int32)
    stats = SolverStats(used - n_newton, n_newton, n_cg, n_fallback)
    ratio = s.rows / jnp.where(p.pb.a > 0, p.pb.a, 1.0)
    return finish(p, s.f, s.g, ratio, converged=converged,
                  n_iters=used, error=s.err,
                  errors=jnp.concatenate([warm.errors, s.errors]), status=status, stats=stats,
                  implicit_diff=implicit_diff, cg_tol=cg_tol, cg_max_iter=cg_max_iter)


def resolve_keep(keep: int | float, m: int, fn: str = "sns") -> int:
    """Entries kept per row: an int count in [1, m], or a float fraction of m in (0, 1]."""
    if isinstance(keep, bool) or not isinstance(keep, (int, float)):
        raise TypeError(f"{fn}: `keep` must be an int (entries per row) or a float fraction in "
                        f"(0, 1], got {keep!r}.")
    if isinstance(keep, float):
        if not 0.0 < keep <= 1.0:
            raise ValueError(f"{fn}: a fractional `keep` must lie in (0, 1], got {keep!r}.")
        return max(1, min(m, math.ceil(keep * m)))
    if not 1 <= keep:
        raise ValueError(f"{fn}: `keep` must be at least 1 entry per row, got {keep!r}.")
    return min(int(keep), m)


def sns(
    geom: Any,
    a: jax.Array | None = None,
    b: jax.Array | None = None,
    *,
    epsilon: float | jax.Array | None = None,
    warmup_iter: int = 1000,
    warmup_tol: float = 0.1,
    keep: int | float = 10,
    keep_mass: float = 0.9,
    tol: float | None = None,
    max_iter: int = 10_000,
    cg_tol: float | None = None,
    cg_max_iter: int = 500,
    anneal: bool = True,
    check_every: int = 10,
    init: tuple[jax.Array, jax.Array] | None = None,
    progress: bool | Callable = False,
    implicit_diff: bool = True,
    line_search_steps: int = 12,
    block_sweeps: int = 50,
) -> SinkhornResult:
    r"""Entropic OT by Sinkhorn-Newton-Sparse (Tang et al., ICLR 2024): the problem of
    :func:`otreg.sinkhorn`, in far fewer iterations at small epsilon.

    .. math::
        \min_{P \ge 0,\, P1 = a,\, P^\top 1 = b} \langle P, C\rangle
            + \varepsilon\, \mathrm{KL}(P \,|\, a \otimes b)

    Args:
      geom: a :class:`~otreg.CostMatrix`, a :class:`~otreg.PointCloud` (a blocked one keeps
        O(n * keep) memory: the kept entries are found block by block) or an (n, m) array.
      a, b: non-negative weights with equal sums; ``None`` is uniform.
      epsilon: regularisation in cost units; ``None`` is ``0.05 * mean(C)``.
      warmup_iter: most Sinkhorn sweeps before the Newton stage (annealing stages included).
      warmup_tol: L1 marginal error at which the warm-up hands over to Newton steps.
      keep: plan entries kept per row in the sparsified Hessian: an int count or a float
        fraction of m (static). More entries: fewer, more expensive Newton steps (the paper's
        2/n gives linear convergence on assignment problems, about 10/n superlinear).
      keep_mass: a Newton step is taken only when the kept entries hold at least this fraction
        of the plan's mass; otherwise (a plan still spread over many entries per row, where the
        sparsified Hessian is a poor model) a block of ``block_sweeps`` Sinkhorn sweeps is
        taken instead. So SNS never does much worse than Sinkhorn where the plan is not sparse.
      tol: target L1 marginal error :math:`\|P1 - a\|_1 + \|P^\top 1 - b\|_1`; default 1e-3 in
        float32, 1e-6 in float64 (float64 reaches 1e-12).
      max_iter: most iterations: Sinkhorn sweeps plus Newton steps, a hard bound
        (``n_iters <= max_iter`` always; a Sinkhorn block is cut short at the budget).
      cg_tol: floor of the relative CG tolerance of each Newton step (the tolerance used is
        ``max(cg_tol, min(0.1, sqrt(error)))``), and the tolerance of the implicit backward
        pass; default 1e-5 (float32) / 1e-8 (float64).
      cg_max_iter: CG products per Newton step, and per solve of the implicit backward pass.
      anneal, check_every, init, progress, implicit_diff: as in :func:`otreg.sinkhorn` (for the
        warm-up; ``progress`` also reports every Newton step).
      line_search_steps: most step halvings before a step counts as failed.
      block_sweeps: Sinkhorn sweeps taken in place of a Newton step (failed line search, or
        too little kept mass).

    Returns:
      :class:`~otreg.SinkhornResult`, as from :func:`otreg.sinkhorn`. ``n_iters`` counts each
      Sinkhorn sweep and each Newton step as one iteration (as the paper does); ``stats`` has
      the split, the total CG products and the failed line searches; ``errors`` is the warm-up
      history (per ``check_every`` sweeps) followed by the error after each step of the Newton
      stage (a Newton step or a Sinkhorn block; -1 where none ran).

    Raises:
      TypeError / ValueError: as :func:`otreg.sinkhorn`, and for a bad ``keep``.

    Failure modes: ``status == Status.NEWTON_STALLED`` when Newton steps failed their line
    search, exhausted ``cg_max_iter`` or stopped improving (a ``keep`` too small for the problem,
    a CG budget too small, or the floating-point floor of float32); ``Status.MAX_ITER`` when
    ``max_iter`` iterations ran out. The result is finite in every case.
    """
    fn = "sns"
    geom, a, b, max_abs, tol, init, progress = validate_problem(
        fn, geom, a, b, epsilon, tol, init, progress)
    keep = resolve_keep(keep, geom.shape[1], fn)
    warmup_iter = _checks.check_positive_int(warmup_iter, "warmup_iter", fn)
    _checks.check_positive_float(warmup_tol, "warmup_tol", fn)
    max_iter = _checks.check_positive_int(max_iter, "max_iter", fn)
    check_every = _checks.check_positive_int(check_every, "check_every", fn)
    line_search_steps = _checks.check_positive_int(line_search_steps, "line_search_steps", fn)
    block_sweeps = _checks.check_positive_int(block_sweeps, "block_sweeps", fn)
    _checks.check_positive_float(keep_mass, "keep_mass", fn, upper=1.0)
    for name, flag in (("anneal", anneal), ("implicit_diff", implicit_diff)):
        if not isinstance(flag, bool):
            raise TypeError(f"{fn}: `{name}` must be True or False, got {flag!r}.")
    cg_tol, cg_max_iter = validate_cg(fn, geom, cg_tol, cg_max_iter)
    res = _solve(geom, a, b, epsilon, tol, warmup_tol, init, max_abs,
                 keep=keep, keep_mass=float(keep_mass), warmup_iter=warmup_iter,
                 max_iter=max_iter,
                 check_every=check_every, anneal=anneal, decay=0.1, progress=progress,
                 implicit_diff=implicit_diff, cg_tol=cg_tol, cg_max_iter=cg_max_iter,
                 ls_steps=line_search_steps, block_sweeps=block_sweeps)
    return reattach(res, geom)


def __getattr__(name):
    """``choose_solver``, ``prefers_sns``, ``METHODS``, ``AUTO_SNS_RATIO`` live in
    :mod:`otreg._methods` (the choice between solvers is not one solver's business); the old
    ``otreg.newton`` import path keeps working."""
    if name in ("choose_solver", "prefers_sns", "METHODS", "AUTO_SNS_RATIO"):
        from otreg import _methods
        return getattr(_methods, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
