r"""Sparsity-constrained OT (:func:`sparse_ot`) and quadratic-regularised OT (:func:`quadratic_ot`).

Sparsity-constrained OT (Liu, Puigcerver and Blondel, "Sparsity-Constrained Optimal Transport",
ICLR 2023) keeps at most ``k`` nonzeros in each column of the plan:

.. math::
    \min_{T \in U(a, b)} \langle T, C\rangle + \sum_j \tfrac\gamma2 \|t_j\|^2
        \quad\text{s.t. } \|t_j\|_0 \le k,

solved through its smooth (semi-)dual (a convex relaxation: ALGORITHMS.md section 4). With
:math:`x_j = \alpha - c_j`, the **semi-dual** maximises

.. math::
    F(\alpha) = \langle\alpha, a\rangle - \sum_j b_j\Big(\langle y_j, x_j\rangle
        - \tfrac{\gamma b_j}2\|y_j\|^2\Big),\qquad
    y_j = P_{\Delta,k}\big(x_j / (\gamma b_j)\big),\quad t_j = b_j y_j,

where :math:`P_{\Delta,k}` keeps the k largest entries and projects them on the simplex
(Kyrillidis et al. 2013): the columns meet ``b`` exactly, the rows meet ``a`` up to the
relaxation's gap, reported as ``error``. The **dual** maximises
:math:`\langle\alpha, a\rangle + \langle\beta, b\rangle - \frac1{2\gamma}\sum_j
\sum_{i \in \mathrm{top}_k} [\alpha_i + \beta_j - C_{ij}]_+^2`, with
:math:`t_j = [\alpha + \beta_j - c_j]_+ / \gamma` on the top k. For ``k >= n`` both are
quadratic-regularised OT (Blondel, Seguy and Rolet, AISTATS 2018), :func:`quadratic_ot`.

The k largest entries of each column are found with ``lax.top_k`` (ranked in float32, block by
block for a blocked :class:`~otreg.PointCloud`, so memory is O(m k)); the simplex threshold by
Michelot's finite Newton iteration (no sort). The solver is Optax's L-BFGS with its zoom line
search, inside one ``lax.while_loop`` (:mod:`otreg._sparse_lbfgs`).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from otreg import _assignment, _checks, _qot_newton, _sparse_lbfgs
from otreg._geom_checks import repair_geometry, validate_geometry_values
from otreg._math import HIGHEST
from otreg._repr import result_repr
from otreg._simplex import (
    Columns,
    dual_columns,
    gather,
    row_sums,
    semi_dual_columns,
    simplex_threshold,
)
from otreg.geometry import CostMatrix, as_geometry
from otreg.status import Status

__all__ = ["sparse_ot", "quadratic_ot", "SparseOTResult", "simplex_threshold"]

SEMI_DUAL_MAX_SIZE = 10**6  # quadratic_ot's default formulation switches to the dual above
INIT_SWEEPS = 2  # block-ascent sweeps that initialise quadratic OT for L-BFGS
AUCTION_ROUNDS = 100  # k = 1 (uniform, square): bidding rounds per unit of max_iter


class SparseOTResult(NamedTuple):
    """Output of :func:`sparse_ot` / :func:`quadratic_ot` (a pytree).

    Attributes:
      cost: the (semi-)dual objective at the returned potentials: a lower bound of the primal
        (weak duality), equal to it at an exact solution; envelope gradients in C (or x, y),
        a and b.
      primal: :math:`\\langle T, C\\rangle + \\frac\\gamma2\\|T\\|^2` at the returned plan.
      alpha, beta: dual variables (``beta`` is the implied one for the semi-dual:
        ``beta_j = -max_Omega(alpha - c_j)``).
      converged: marginal error <= ``tol`` and every output finite (k = 1 auction: also an
        optimality certificate); otherwise ``status`` says why (ROW_GAP, STALLED, MAX_ITER...).
      n_iters: L-BFGS iterations. error: L1 marginal error of the plan (both marginals).
      status: result code (``otreg.explain``).
      idx, values: the plan in static sparse form: column j has ``values[j, r]`` at row
        ``idx[j, r]`` (k per column; zeros where fewer are used).
      shape: (n, m).
    """

    cost: jax.Array
    primal: jax.Array
    alpha: jax.Array
    beta: jax.Array
    converged: jax.Array
    n_iters: jax.Array
    error: jax.Array
    status: jax.Array
    idx: jax.Array
    values: jax.Array
    a: jax.Array
    b: jax.Array

    def __repr__(self) -> str:
        return result_repr("SparseOTResult", self,
                           ("primal", "cost", "converged", "n_iters", "error"))

    def plan_sparse(self) -> tuple[jax.Array, jax.Array]:
        """``(idx, values)``, both (m, k): column j's nonzeros are at rows ``idx[j]``."""
        return self.idx, self.values

    def plan(self) -> jax.Array:
        """The dense (n, m) plan (at most k nonzeros per column)."""
        n, m = self.a.shape[0], self.b.shape[0]
        cols = jnp.broadcast_to(jnp.arange(m)[:, None], self.idx.shape)
        return jnp.zeros((n, m), self.values.dtype).at[self.idx, cols].add(self.values)

    def marginals(self) -> tuple[jax.Array, jax.Array]:
        """``(T 1, T^T 1)`` (summed in the solve's dtype, returned in the plan's)."""
        t = self.values.astype(self.a.dtype)
        rows = jax.ops.segment_sum(t.ravel(), self.idx.ravel(), num_segments=self.a.shape[0])
        return rows.astype(self.values.dtype), jnp.sum(t, axis=1).astype(self.values.dtype)


@jax.tree_util.register_pytree_node_class
class _Normalised:
    """A blocked cloud seen through :math:`C' = (C - c_0) / s` (the only reductions the solver
    needs on it: the top k of each row, and the transpose)."""

    is_blocked = True

    def __init__(self, geom, c0, s):
        self.geom, self.c0, self.s = geom, c0, s

    def tree_flatten(self):
        return (self.geom, self.c0, self.s), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children)

    @property
    def shape(self):
        return self.geom.shape

    def transpose(self):
        return _Normalised(self.geom.transpose(), self.c0, self.s)

    def row_top_k(self, h, eps, k):  # ranks h - C'/eps = (h + c0 / (s eps)) - C / (s eps)
        idx, c = self.geom.row_top_k(h + self.c0 / (self.s * eps), self.s * eps, k)
        return idx, (c - self.c0) / self.s


def _normalise(live):
    """``(geometry of C' = (C - c0) / s, c0, s)`` with c0 = min C and s = max C - min C (1 for a
    constant C), held constant: C' spans [0, 1], and (C', gamma / s) is the same problem for
    every scale and shift of C (module doc)."""
    sg = jax.lax.stop_gradient
    if isinstance(live, CostMatrix):
        C = live.cost_matrix
        lo, hi = sg(jnp.min(C)), sg(jnp.max(C))
    else:  # the smallest cost of each row is the top 1 of -C
        hi = sg(live.max_cost())
        lo = sg(jnp.min(live.row_top_k(jnp.zeros(live.shape[1], live.dtype), 1.0, 1)[1]))
    s = hi - lo
    s = jnp.where(jnp.isfinite(s) & (s > 0), s, 1.0)
    if isinstance(live, CostMatrix):
        return CostMatrix((C - lo) / s), lo, s
    return _Normalised(live, lo, s), lo, s


@functools.partial(jax.jit, static_argnames=("k", "formulation", "max_iter", "memory", "solver"))
def _solve(geom, a, b, gamma, tol, *, k, formulation, max_iter, memory, solver):
    geom, a, b, status, in_dtype = _checks.solve_dtype_and_weights(geom, a, b)
    geom, finite, _, _ = repair_geometry(geom)
    dtype = a.dtype
    n, m = geom.shape
    gamma = jnp.asarray(gamma, dtype)
    good_gamma = jnp.isfinite(gamma) & (gamma > 0)
    status = jnp.where(finite, status, Status.NONFINITE_INPUT)
    status = jnp.where(good_gamma | (status != Status.SUCCESS), status, Status.BAD_PARAMETER)
    sg = jax.lax.stop_gradient
    # the solve runs on C' = (C - c0) / s, gamma' = gamma / s; results are mapped back
    live, c0, s = _normalise(geom.materialize())
    gamma = jnp.where(good_gamma, gamma, s) / s
    gt = jax.tree_util.tree_map(sg, live.transpose())
    a_s, b_s, gamma_s = sg(a), sg(b), sg(gamma)
    tol = jnp.asarray(tol, dtype)
    loss = _sparse_lbfgs.make_loss(gt, a_s, b_s, gamma_s, k, formulation)
    sigma, use_sigma, certified = None, jnp.array(False), jnp.array(True)
    zeros = (jnp.zeros((n,), dtype), jnp.zeros((m,), dtype))
    lbfgs = functools.partial(_sparse_lbfgs.lbfgs, loss, tol=tol, dtype=dtype,
                              max_iter=max_iter, memory=memory, smooth=k >= n)
    stall_code = jnp.asarray(Status.ROW_GAP if k < n else Status.STALLED, jnp.int32)
    if solver == "newton":  # semi-smooth Newton on the dual with continuation in gamma (k = n)
        alpha, beta, it, err, _, stalled = _qot_newton.solve(
            sg(live.cost_matrix), a_s, b_s, gamma_s, tol, max_iter=max_iter, cg_max_iter=500)
        p, exhausted, stall_code = (alpha, beta), ~stalled, jnp.int32(Status.NEWTON_STALLED)
        formulation = "dual"  # the result is the dual pair
    elif k == 1 and n == m and formulation == "semi-dual" and isinstance(live, CostMatrix):
        # uniform square k = 1: the assignment problem, solved exactly (auction + certificate)
        def auction():
            r = _assignment.solve(gt.cost_matrix.T, max_rounds=AUCTION_ROUNDS * max_iter)
            return r.alpha, r.sigma, r.certified, r.rounds, r.exhausted, jnp.int32(Status.STALLED)

        def relaxation():
            p, it, ex = lbfgs(zeros[0])
            return p, jnp.zeros((m,), jnp.int32), jnp.array(True), it, ex, stall_code

        use_sigma = jnp.all(a_s == a_s[0]) & jnp.all(b_s == b_s[0])
        p, sigma, certified, it, exhausted, stall_code = jax.lax.cond(use_sigma, auction,
                                                                      relaxation)
    else:
        p0 = zeros[0] if formulation == "semi-dual" else zeros
        if k >= n:  # quadratic OT: start from exact block ascent
            alpha0, beta0 = _qot_newton.block_ascent(sg(live.cost_matrix), a_s, b_s, gamma_s,
                                                     INIT_SWEEPS)
            p0 = alpha0 if formulation == "semi-dual" else (alpha0, beta0)
        p, it, exhausted = lbfgs(p0)
    p = sg(p)
    ok = jax.tree_util.tree_reduce(lambda acc, z: acc & jnp.all(jnp.isfinite(z)), p,
                                   jnp.array(True))
    p = jax.tree_util.tree_map(lambda z: jnp.where(ok, z, 0.0), p)
    # value with envelope gradients: the solve is held fixed, C (or x, y), a, b, gamma stay live
    alpha = p if formulation == "semi-dual" else p[0]
    cols = _sparse_lbfgs.kept(gt, alpha, k)
    if sigma is not None:
        cols = Columns(jnp.where(use_sigma, sigma[:, None], cols.idx), None)
    live_t = live.transpose()
    if cols.idx is None:
        c_live = live_t.cost_matrix
    elif isinstance(live_t, CostMatrix):
        c_live = jnp.take_along_axis(live_t.cost_matrix, cols.idx, axis=1)
    else:
        c_live = _sparse_lbfgs.kept(live_t, alpha, k).cost
    cols = Columns(cols.idx, c_live)
    if formulation == "semi-dual":
        y, val = semi_dual_columns(alpha, Columns(cols.idx, sg(c_live)), b_s, gamma_s)
        x = gather(alpha, cols) - cols.cost
        gb = gamma * b[:, None]
        col_val = jnp.sum(sg(y) * x, axis=1) - 0.5 * gb[:, 0] * jnp.sum(sg(y) ** 2, axis=1)
        cost = jnp.dot(alpha, a, precision=HIGHEST) - jnp.dot(b, col_val, precision=HIGHEST)
        t = b_s[:, None] * y
        beta = -sg(val)
    else:
        beta = p[1]
        t, _ = dual_columns(alpha, beta, Columns(cols.idx, sg(c_live)), gamma_s)
        sp = jnp.maximum(gather(alpha, cols) + beta[:, None] - cols.cost, 0.0)
        cost = (jnp.dot(alpha, a, precision=HIGHEST) + jnp.dot(beta, b, precision=HIGHEST)
                - jnp.sum(sp * sp) / (2.0 * gamma))
    rows = row_sums(t, cols, n)
    error = jnp.sum(jnp.abs(rows - a_s)) + jnp.sum(jnp.abs(jnp.sum(t, axis=1) - b_s))
    # back to the caller's units: alpha = s alpha' + c0, beta = s beta', F = s F' + c0 <1, a>
    cost = s * cost + c0 * jnp.sum(a)
    primal = s * (jnp.sum(t * cols.cost) + 0.5 * gamma * jnp.sum(t * t)) + c0 * jnp.sum(t)
    alpha, beta = s * alpha + c0, s * beta
    outs = (cost, primal, alpha, beta, error, t)
    finite_out = ok & functools.reduce(lambda acc, z: acc & jnp.all(jnp.isfinite(z)), outs,
                                       jnp.array(True))
    cost, primal, alpha, beta, error, t = (jnp.where(finite_out, z, 0.0) for z in outs)
    error = jnp.where(finite_out, error, jnp.inf)
    converged = (error <= tol) & finite_out & certified
    solve_status = jnp.where(converged, Status.SUCCESS, jnp.where(
        ~finite_out, Status.NUMERICAL, jnp.where(exhausted, Status.MAX_ITER, stall_code)))
    status = jnp.where(status != Status.SUCCESS, status, solve_status).astype(jnp.int32)
    cast = (lambda z: z.astype(in_dtype)) if in_dtype != dtype else (lambda z: z)
    return SparseOTResult(cost=cast(cost), primal=cast(primal), alpha=cast(alpha),
                          beta=cast(beta), converged=converged, n_iters=it, error=cast(error),
                          status=status, values=cast(t), a=a, b=b,
                          idx=jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32)[None, :], (m, n))
                          if cols.idx is None else cols.idx)


def _validate(fn, geom, a, b, gamma, tol, max_iter, formulation, memory, solver="lbfgs"):
    geom = as_geometry(geom, fn)
    validate_geometry_values(geom, fn)  # concrete NaN/inf costs or points raise
    n, m = geom.shape
    dtype = jnp.dtype(jnp.float64 if geom.dtype == jnp.float64 else jnp.float32)
    if a is not None or b is not None:
        a = _checks.check_weights(a, n, "a", dtype, fn)
        b = _checks.check_weights(b, m, "b", dtype, fn)
        _checks.check_weight_values(a, b, fn)
    if gamma is None or (_checks.is_concrete(gamma) and not float(gamma) > 0):
        raise ValueError(f"{fn}: `gamma` must be a positive float (the regulariser is "
                         f"(gamma / 2) |T|^2, POT's `reg`), got {gamma!r}.")
    _checks.check_positive_float(gamma, "gamma", fn)
    tol = (1e-6 if dtype == jnp.float64 else 1e-4) if tol is None else tol
    _checks.check_positive_float(tol, "tol", fn)
    max_iter = _checks.check_positive_int(max_iter, "max_iter", fn)
    memory = _checks.check_positive_int(memory, "memory", fn)
    _checks.check_option(formulation, "formulation", ("semi-dual", "dual"), fn)
    _checks.check_option(solver, "solver", ("lbfgs", "newton"), fn)
    if solver == "newton" and getattr(geom, "is_blocked", False):
        raise ValueError(f"{fn}: solver='newton' needs a materialised cost (block_size=None).")
    return geom, a, b, tol, max_iter, memory


def sparse_ot(
    geom: Any,
    a: jax.Array | None = None,
    b: jax.Array | None = None,
    *,
    k: int,
    gamma: float | jax.Array = 0.1,
    formulation: str = "semi-dual",
    max_iter: int = 1000,
    tol: float | None = None,
    memory: int = 10,
) -> SparseOTResult:
    r"""Optimal transport with at most ``k`` nonzeros per column of the plan (Liu, Puigcerver
    and Blondel, ICLR 2023), through its smooth relaxation (module doc).

    .. math::
        \min_{T \in U(a, b),\ \|t_j\|_0 \le k} \langle T, C\rangle + \tfrac\gamma2\|T\|^2

    Args:
      geom: a :class:`~otreg.CostMatrix`, a :class:`~otreg.PointCloud` (blocked: the top k of
        each column is found block by block, memory O(m k + (n + m) block_size)) or an array.
      a, b: weights (n,) and (m,), equal sums; ``None`` is uniform. Columns (``b``) are the
        side whose plan columns are k-sparse (e.g. experts receiving at most k tokens).
      k: most nonzeros per column, ``1 <= k <= n`` (static). ``k = 1`` is unregularised OT's
        semi-dual (one-hot columns); ``k = n`` is :func:`quadratic_ot`.
      gamma: the regulariser :math:`\frac\gamma2\|T\|^2` (POT's ``reg``), in cost units.
      formulation: ``"semi-dual"`` (columns meet ``b`` exactly; default) or ``"dual"``.
      max_iter: most L-BFGS iterations. tol: L1 marginal error to stop at (default 1e-6 in
        float64, 1e-4 in float32). memory: L-BFGS history length.

    Returns:
      :class:`SparseOTResult`. Every column has at most k nonzeros by construction (the plan's
      static sparse form stores exactly k slots per column).

    Raises:
      ValueError / TypeError: bad shapes, ``k < 1``, ``k > n``, ``gamma <= 0``, unknown
      ``formulation``; negative weights or unequal masses when concrete (under ``jit`` they are
      repaired and reported in ``status``).

    Scale: the solve runs on :math:`C' = (C - \min C) / s`, :math:`s = \max C - \min C`, with
    :math:`\gamma / s`, so ``(s C, s gamma)`` gives the same plan and ``s`` times the cost.
    ``k = 1`` with ``n == m``, uniform weights, a materialised cost and the semi-dual is the
    assignment problem, solved exactly by an epsilon-scaling auction (Bertsekas 1988) with an
    optimality certificate (:mod:`otreg._assignment`; ``n_iters`` counts bidding rounds, at most
    ``100 * max_iter``); other ``k = 1`` problems use the relaxation below.

    Failure modes: ``converged`` is True only when ``error <= tol`` with finite outputs (and, for
    the auction, a certificate). The relaxation may leave a row-marginal gap (ALGORITHMS.md 4.4);
    L-BFGS then stops on stationarity (after restarts) with status ``ROW_GAP`` and the gap in
    ``error`` (``STALLED`` for quadratic OT, ``NEWTON_STALLED`` for its Newton solver).
    Gradients: ``cost`` by the envelope theorem (C or x, y; a; b): the
    gradient in C is the plan; exact where the relaxation is tight (``error`` at ``tol``; always
    for :func:`quadratic_ot`), a supergradient of the relaxed value otherwise. The plan itself is
    returned under ``stop_gradient`` (differentiate ``cost``).
    """
    fn = "sparse_ot"
    geom, a, b, tol, max_iter, memory = _validate(fn, geom, a, b, gamma, tol, max_iter,
                                                  formulation, memory)
    n = geom.shape[0]
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"{fn}: `k` must be a Python int (nonzeros per column), got {k!r}.")
    if not 1 <= k <= n:
        raise ValueError(f"{fn}: `k` must satisfy 1 <= k <= n = {n} (nonzeros per column), "
                         f"got {k}; use quadratic_ot for the unconstrained limit.")
    return _solve(geom, a, b, gamma, tol, k=k, formulation=formulation, max_iter=max_iter,
                  memory=memory, solver="lbfgs")


def quadratic_ot(
    geom: Any,
    a: jax.Array | None = None,
    b: jax.Array | None = None,
    *,
    gamma: float | jax.Array = 0.1,
    formulation: str | None = None,
    max_iter: int = 1000,
    tol: float | None = None,
    memory: int = 10,
    solver: str = "newton",
) -> SparseOTResult:
    r"""Quadratic-regularised OT (Blondel, Seguy and Rolet, AISTATS 2018): sparse plans without
    a cardinality constraint, :func:`sparse_ot` with ``k = n``.

    .. math::
        \min_{T \in U(a, b)} \langle T, C\rangle + \tfrac\gamma2\|T\|^2

    Smooth (semi-)dual, so the marginals are met to ``tol``. Arguments and result as in
    :func:`sparse_ot`; ``idx``/``values`` hold all n rows of each column (``plan()`` is the
    natural form). The cost is materialised.

    Args:
      solver: ``"newton"`` (default): semi-smooth Newton on the dual (:mod:`otreg._qot_newton`)
        with continuation in gamma (a first stage at a large gamma, then gamma / 4 per stage,
        warm-started), Hessians on the plan's support (sparse ELL form once every row has at
        most 16 active entries), globalised by a line search (dual ascent or gradient-norm
        decrease) and a Levenberg-Marquardt shift; superlinear once the support is found. The
        result holds the dual pair; status ``NEWTON_STALLED`` if it stops at the precision's
        floor (float32 at a tight ``tol``).
        ``"lbfgs"``: Optax L-BFGS throughout (either formulation); its line search cannot
        resolve the objective's decrease below about 1e-6 L1 error in float64 and stops on
        stationarity.
      formulation: for ``solver="lbfgs"``; ``None`` picks ``"semi-dual"`` up to n * m = 10^6
        entries (fewer iterations) and ``"dual"`` above (each iteration one pass over C, no
        simplex thresholds: 4x faster at n = m = 2000).
      gamma, max_iter, tol, memory: as in :func:`sparse_ot` (``max_iter`` bounds each stage).
    """
    fn = "quadratic_ot"
    geom = as_geometry(geom, fn)  # once: a raw array's finiteness check is a pass over C
    if formulation is None:  # fewer iterations (semi-dual) vs cheaper ones (dual: no threshold)
        n, m = geom.shape
        formulation = "semi-dual" if n * m <= SEMI_DUAL_MAX_SIZE else "dual"
    geom, a, b, tol, max_iter, memory = _validate(fn, geom, a, b, gamma, tol, max_iter,
                                                  formulation, memory, solver)
    return _solve(geom, a, b, gamma, tol, k=geom.shape[0], formulation=formulation,
                  max_iter=max_iter, memory=memory, solver=solver)
