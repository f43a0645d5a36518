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

With relaxed marginals (``rho``; :mod:`otreg._unbalanced`) the mass terms
:math:`\sum_i a_i \rho_a (1 - e^{-f_i/\rho_a})` replace :math:`\langle f, a\rangle` (and the same
for ``g``): the gradient becomes :math:`(a e^{-f/\rho_a} - P\mathbf 1,\; b e^{-g/\rho_b} -
P^\top\mathbf 1)` and H gains the diagonals :math:`(\varepsilon/\rho_a)\, a e^{-f/\rho_a}` and
:math:`(\varepsilon/\rho_b)\, b e^{-g/\rho_b}`, which remove the balanced problem's null
direction :math:`(\mathbf 1, -\mathbf 1)`; everything else is unchanged.

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
marginals, and O((n + m) keep) per CG product. The Newton stage runs in one compiled
``lax.while_loop`` (:mod:`otreg._sns_loop`, which also says how the graph is kept small: compile
time), the sparsified Hessian lives in :mod:`otreg._ell`; the result's potentials are
differentiated implicitly with the full Hessian (:mod:`otreg.implicit`), exactly as for
:func:`otreg.sinkhorn`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from otreg import _checks, _sns_loop
from otreg import _sinkhorn_loops as loops
from otreg import _unbalanced as ub
from otreg._ell import EllHessian, ell_hessian, hessian_matvec, solve_ell
from otreg._entropic import prepare, validate_cg, validate_problem
from otreg.sinkhorn import SinkhornResult, SolverStats, finish, reattach
from otreg.status import Status

__all__ = ["sns", "EllHessian", "ell_hessian", "hessian_matvec", "solve_ell"]


@functools.partial(jax.jit, static_argnames=(
    "keep", "keep_mass", "warmup_iter", "max_iter", "check_every", "anneal", "decay", "progress",
    "implicit_diff", "cg_tol", "cg_max_iter", "ls_steps", "block_sweeps", "relax_kind"))
def _solve(geom, a, b, epsilon, tol, warmup_tol, init, max_abs, relax_values=None, *, keep,
           keep_mass, warmup_iter, max_iter, check_every, anneal, decay, progress, implicit_diff,
           cg_tol, cg_max_iter, ls_steps, block_sweeps, relax_kind=None):
    # the warm-up stops at max(warmup_tol, tol), in-graph: tol may be traced (e.g. passed on by
    # sinkhorn_divergence under jit)
    warmup_tol = jnp.maximum(jnp.asarray(warmup_tol), jnp.asarray(tol))
    p = prepare(geom, a, b, epsilon, warmup_tol, init, max_abs, max_iter=warmup_iter,
                check_every=check_every, anneal=anneal, decay=decay,
                relax=None if relax_kind is None else (relax_kind, relax_values))
    loop = loops.log_loop if p.live.is_blocked else loops.kernel_loop
    s, warm = _sns_loop.run(p.pb, p.state, tol, warmup_iter=warmup_iter,
                            keep=keep, keep_mass=keep_mass, max_iter=max_iter, cg_tol=cg_tol,
                            cg_max_iter=cg_max_iter, ls_steps=ls_steps,
                            block_sweeps=block_sweeps, check_every=check_every,
                            sweep_loop=loop, progress=progress)
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
    stalled = (n_fallback > 0) | (s.stall >= _sns_loop.STALL_STEPS) | (n_capped > 0)
    solve = jnp.where(converged, Status.SUCCESS, jnp.where(
        failed, Status.NUMERICAL, jnp.where(stalled, Status.NEWTON_STALLED, Status.MAX_ITER)))
    status = jnp.where(p.status != Status.SUCCESS, p.status, solve).astype(jnp.int32)
    stats = SolverStats(used - n_newton, n_newton, n_cg, n_fallback)
    ratio = s.rows / jnp.where(p.pb.a > 0, p.pb.a, 1.0)
    return finish(p, s.f, s.g, ratio, converged=converged,
                  n_iters=used, error=s.err,
                  errors=jnp.concatenate([warm.errors, s.errors]), status=status, stats=stats,
                  implicit_diff=implicit_diff, cg_tol=cg_tol, cg_max_iter=cg_max_iter, tol=tol)


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
    rho: Any = None,
    tau: Any = None,
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
      tol: target L1 marginal error :math:`\|P1 - a\|_1 + \|P^\top 1 - b\|_1` (relaxed:
        the residual :math:`\|P1 - a e^{-f/\rho_a}\|_1 + \|P^\top 1 - b e^{-g/\rho_b}\|_1`
        of :func:`otreg.sinkhorn`); default 1e-3 in float32, 1e-6 in float64 (float64 reaches
        1e-12).
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
      rho, tau: relaxed (unbalanced / semi-relaxed) marginals, exactly as in
        :func:`otreg.sinkhorn` (same problem, same error, same result). The Newton system
        is the relaxed dual's: each relaxed side adds :math:`(\varepsilon/\rho)\, a\,
        e^{-f/\rho}` to its diagonal and its gradient is :math:`a e^{-f/\rho} - P1`
        (module doc).

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
    relax = ub.parse(rho, tau, fn)
    geom, a, b, max_abs, tol, init, progress = validate_problem(
        fn, geom, a, b, epsilon, tol, init, progress, balanced=relax is None)
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
                 None if relax is None else relax[1], relax_kind=None if relax is None
                 else relax[0], keep=keep, keep_mass=float(keep_mass), warmup_iter=warmup_iter,
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
