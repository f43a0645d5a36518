r"""The debiased Sinkhorn divergence (Feydy et al. 2019, "Interpolating between Optimal Transport
and MMD using Sinkhorn Divergences"):

.. math::
    S_\varepsilon(\alpha, \beta) = \mathrm{OT}_\varepsilon(a, b)
        - \tfrac12 \mathrm{OT}_\varepsilon(a, a) - \tfrac12 \mathrm{OT}_\varepsilon(b, b),

non-negative, zero iff the two measures are equal (for the Euclidean and squared Euclidean costs),
and smooth: a training loss that needs no target-side bias correction. The cross term is solved by
:func:`otreg.sinkhorn`; each symmetric term by the averaged fixed-point iteration
:math:`p \leftarrow \tfrac12 (p + T_a(p))`, :math:`T_a(p)_i = -\varepsilon \log\sum_k a_k
e^{(p_k - C_{ik})/\varepsilon}`, which converges in a few tens of log-sum-exp passes (the plain
iteration oscillates). All three values are differentiated by the envelope theorem (no linear
solve): the gradient costs a few passes over the costs, far less than the solves.

With relaxed marginals (``rho``, the same on both sides) the three terms are unbalanced OT
values and the debiased divergence gains the mass correction of Séjourné, Feydy, Vialard,
Trouvé, Peyré (2019), "Sinkhorn divergences for unbalanced optimal transport":

.. math::
    S_{\varepsilon,\rho}(\alpha, \beta) = \mathrm{OT}_{\varepsilon,\rho}(a, b)
        - \tfrac12 \mathrm{OT}_{\varepsilon,\rho}(a, a)
        - \tfrac12 \mathrm{OT}_{\varepsilon,\rho}(b, b)
        + \tfrac{\varepsilon}{2} (m(a) - m(b))^2,

non-negative and zero only for equal measures, also when the masses differ; the symmetric
potentials solve :math:`p = \tau\, T_a(p)`, :math:`\tau = \rho/(\rho + \varepsilon)`, by the
same averaged iteration.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from otreg import _checks, implicit
from otreg import _unbalanced as ub
from otreg._math import safe_log
from otreg._methods import choose_solver
from otreg._repr import result_repr
from otreg.geometry import PointCloud
from otreg.sinkhorn import SinkhornResult, cast_result
from otreg.status import Status

__all__ = ["sinkhorn_divergence", "DivergenceAux"]


class DivergenceAux(NamedTuple):
    """Auxiliary output of :func:`sinkhorn_divergence`.

    Attributes:
      ot_xy: the cross-term :class:`~otreg.SinkhornResult` (plan, potentials f, g).
      p, q: symmetric potentials of ``(x, a)`` and ``(y, b)``; ``f - p`` and ``g - q`` are the
        gradients of the divergence with respect to ``a`` and ``b``.
      ot_xx, ot_yy: the two symmetric values.
      converged: all three solves reached ``tol``.
      n_iters: iterations of the (xy, xx, yy) solves.
      status: the first non-success status of the three (see ``otreg.explain``).
    """

    ot_xy: SinkhornResult
    p: jax.Array
    q: jax.Array
    ot_xx: jax.Array
    ot_yy: jax.Array
    converged: jax.Array
    n_iters: jax.Array
    status: jax.Array

    def __repr__(self) -> str:
        return result_repr("DivergenceAux", self,
                           ("ot_xx", "ot_yy", "converged", "n_iters")) + f"\n  ot_xy={self.ot_xy!r}"


def _symmetric_potential(geom, a, eps, tol, max_iter, p0=None, rho=None):
    """Averaged fixed point of the symmetric problem OT(a, a) from ``p0`` (default 0); with a
    relaxation ``rho`` (a scalar) the damped map ``tau T_a``. Returns (p, ratio, it, err),
    ``err`` the L1 optimality residual of both (equal) marginals."""
    log_a = safe_log(a)

    def transform(p):
        t = -eps * geom.lse(p / eps + log_a, eps, axis=1)
        return t if rho is None else ub.tau(rho, eps) * t

    def body(s):
        p, tp, it, _ = s
        p = 0.5 * (p + tp)
        tp = transform(p)
        bal = tp if rho is None else tp / ub.tau(rho, eps)  # the balanced c-transform
        ratio = jnp.exp((p - bal) / eps)  # row marginal / a of the symmetric plan at p
        return p, tp, it + 1, 2.0 * ub.l1_residual(a, ratio, p, rho)

    def cond(s):
        return (s[3] > tol) & (s[2] < max_iter)

    p0 = jnp.zeros_like(a) if p0 is None else p0
    init = (p0, transform(p0), jnp.array(0), jnp.asarray(jnp.inf, a.dtype))
    p, tp, it, err = jax.lax.while_loop(cond, body, init)
    p = jnp.where(a > 0, p, tp)  # zero-weight atoms: their exact c-transform
    bal = tp if rho is None else tp / ub.tau(rho, eps)
    return p, jnp.exp((p - bal) / eps), it, err


@functools.partial(jax.jit, static_argnames=("cost", "block_size", "max_iter", "sym_max_iter",
                                             "sinkhorn_kw", "solver", "out_dtype",
                                             "relax_kind"))
def _divergence(x, y, a, b, epsilon, tol, init, relax_value=None, *, cost, block_size, max_iter,
                sym_max_iter, sinkhorn_kw, solver, out_dtype, relax_kind=None):
    sg = jax.lax.stop_gradient
    rtol = _checks.mass_rtol(a, b)  # of the weights as given (bfloat16 ones: its tolerance)
    a, b, in_status = _checks.repair_weights(a.astype(x.dtype), b.astype(x.dtype), rtol,
                                             check_mass=relax_kind is None)
    finite = jnp.all(jnp.isfinite(x)) & jnp.all(jnp.isfinite(y))  # under jit: repair, report
    in_status = jnp.where(finite, in_status, Status.NONFINITE_INPUT)
    x, y = jnp.where(jnp.isfinite(x), x, 0.0), jnp.where(jnp.isfinite(y), y, 0.0)
    geom_xy = PointCloud(x, y, cost=cost, block_size=block_size)
    eps_default = lambda: 0.05 * sg(geom_xy.mean_cost())  # noqa: E731
    if epsilon is None:
        eps, bad_eps = eps_default(), jnp.array(False)
    else:  # traced epsilon <= 0 or non-finite: the default, reported as BAD_PARAMETER
        eps = jnp.asarray(epsilon, x.dtype)
        bad_eps = ~(jnp.isfinite(eps) & (eps > 0))
        eps = jnp.where(bad_eps, eps_default(), eps)
    eps = sg(jnp.maximum(eps, jnp.finfo(x.dtype).tiny))
    relax = None if relax_kind is None else (relax_kind, (relax_value, relax_value))
    rho, bad_rho = ub.resolve(relax, eps, x.dtype, geom_xy.max_cost)
    rho = None if rho is None else rho[0]  # the same on both sides
    if init is not None:  # last step's potentials (no gradient flows into a starting point)
        init = tuple(sg(jnp.where(jnp.isfinite(z), z, 0.0).astype(x.dtype)) for z in init)
    values, pots, iters, errs = [], [], [], []
    for k, (pts, w) in enumerate(((x, a), (y, b))):
        live = PointCloud(pts, pts, cost=cost, block_size=block_size).materialize()
        p, ratio, it, err = _symmetric_potential(jax.tree_util.tree_map(sg, live), sg(w), eps,
                                                 tol, sym_max_iter,
                                                 None if init is None else init[2 + k],
                                                 None if rho is None else sg(rho))
        values.append(implicit.envelope_value(live, w, w, eps, p, p, ratio,
                                              rho=None if rho is None else (rho, rho)))
        pots.append(p)
        iters.append(it)
        errs.append(err)
    # warm start at the symmetric potentials: exact when x == y (where alternating Sinkhorn from
    # zero crawls: its iteration map squares an eigenvalue near -1), close when x ~ y; or at the
    # caller's (f, g) from a previous step
    start = (pots[0], pots[1]) if init is None else init[:2]
    relax_kw = {} if rho is None else {"rho": rho}
    ot_xy = solver(geom_xy, a, b, epsilon=eps, tol=tol, max_iter=max_iter, init=start,
                   **relax_kw, **dict(sinkhorn_kw))
    value = ot_xy.cost - 0.5 * (values[0] + values[1])
    if rho is not None:  # the mass correction (zero for equal masses)
        value = value + 0.5 * eps * (jnp.sum(a) - jnp.sum(b)) ** 2
    sym_ok = (errs[0] <= tol) & (errs[1] <= tol)
    status = jnp.where(ot_xy.status != Status.SUCCESS, ot_xy.status,
                       jnp.where(sym_ok, Status.SUCCESS, Status.MAX_ITER))
    status = jnp.where(in_status != Status.SUCCESS, in_status, status)
    status = jnp.where(bad_eps | bad_rho, Status.BAD_PARAMETER, status).astype(jnp.int32)
    c = lambda z: z.astype(out_dtype)  # noqa: E731  (bfloat16/float16 input: its dtype out)
    aux = DivergenceAux(ot_xy=cast_result(ot_xy, out_dtype), p=c(pots[0]), q=c(pots[1]),
                        ot_xx=c(values[0]), ot_yy=c(values[1]),
                        converged=ot_xy.converged & sym_ok,
                        n_iters=jnp.stack([ot_xy.n_iters, iters[0], iters[1]]), status=status)
    return c(value), aux


def sinkhorn_divergence(
    x: jax.Array,
    y: jax.Array,
    a: jax.Array | None = None,
    b: jax.Array | None = None,
    *,
    epsilon: float | jax.Array | None = None,
    cost: Any = "sqeuclidean",
    block_size: int | None = None,
    tol: float | None = None,
    max_iter: int = 10_000,
    sym_max_iter: int = 1_000,
    method: str = "sinkhorn",
    init: DivergenceAux | tuple | None = None,
    rho: float | jax.Array | None = None,
    tau: float | jax.Array | None = None,
    **sinkhorn_kw: Any,
) -> tuple[jax.Array, DivergenceAux]:
    r"""Debiased Sinkhorn divergence between weighted point clouds ``(x, a)`` and ``(y, b)``.

    .. math::
        S_\varepsilon = \mathrm{OT}_\varepsilon(a, b) - \tfrac12\mathrm{OT}_\varepsilon(a, a)
            - \tfrac12\mathrm{OT}_\varepsilon(b, b)
            = \langle f - p, a\rangle + \langle g - q, b\rangle

    Args:
      x, y: points (n, d) and (m, d).
      a, b: weights (None = uniform), equal total mass.
      epsilon: absolute, in cost units; ``None`` is ``0.05 * mean`` of the cross cost. The same
        epsilon is used for all three terms.
      cost, block_size: as in :class:`~otreg.PointCloud` (``block_size`` keeps all three terms
        free of any n x m buffer).
      tol, max_iter: stopping rule of the cross term (as :func:`~otreg.sinkhorn`) and of the
        symmetric terms (L1 marginal error <= tol, at most ``sym_max_iter`` averaged steps).
      method: solver of the cross term: ``"sinkhorn"``, ``"sns"`` (:func:`~otreg.sns`, for small
        epsilon) or ``"auto"`` (SNS when epsilon and the points are concrete and
        ``max C / epsilon >= 1000``; Sinkhorn otherwise, e.g. under ``jit``).
      init: a warm start: the ``aux`` of a previous call (e.g. the last training step, whose
        clouds moved a little), or a tuple ``(f, g, p, q)`` of potentials of shapes (n,), (m,),
        (n,), (m,). The three solves start there instead of at 0 (and the cross term does not
        anneal); the solution, and so the value and its gradients, are those of the problem
        asked (up to ``tol``); only the number of iterations changes. Keep ``aux`` (a pytree of
        arrays) in your training state to carry it across ``jit``-compiled steps.
      **sinkhorn_kw: passed to the cross-term solver (``mode``,
        ``check_every``, ...). The cross term is warm-started at the symmetric potentials
        ``(p, q)`` (so it does not anneal): exact when ``x == y``.
      rho, tau: relaxed marginals (a scalar, the same on both sides: the debiasing needs a
        symmetric penalty), as in :func:`~otreg.sinkhorn`: the unbalanced divergence above, for
        weights of any masses. ``method`` must then be ``"sinkhorn"`` or ``"auto"``.

    Returns:
      ``(value, aux)`` with ``aux`` a :class:`DivergenceAux`. ``value`` is >= 0 up to the
      solver tolerance and 0 at ``x == y``, ``a == b``; its gradients with respect to x, y, a, b
      (and a traced epsilon) are envelope gradients: finite everywhere, zero at ``x == y``.
    """
    fn = "sinkhorn_divergence"
    relax = ub.parse(rho, tau, fn)
    if relax is not None and (relax[1][0] is None or relax[1][1] is None
                              or relax[1][0] is not relax[1][1]):
        raise ValueError(f"{fn}: `rho`/`tau` must be one scalar (the same relaxation on both "
                         f"sides: the debiased divergence needs it symmetric); for "
                         f"semi-relaxed OT use otreg.sinkhorn(..., rho=(None, rho_b)).")
    x, y = _checks.check_points(x, y, fn)
    dtype = _checks.compute_dtype(x, y)
    out_dtype = jnp.result_type(x, y)  # bfloat16/float16 in: solved in float32, cast back
    x, y = x.astype(dtype), y.astype(dtype)
    _checks.check_finite(x, "x", fn, "points")
    _checks.check_finite(y, "y", fn, "points")
    a = _checks.check_weights(a, x.shape[0], "a", dtype, fn)
    b = _checks.check_weights(b, y.shape[0], "b", dtype, fn)
    _checks.check_weight_values(a, b, fn, check_mass=relax is None)
    _checks.check_epsilon(epsilon, fn)
    tol = (1e-6 if dtype == jnp.float64 else 1e-3) if tol is None else tol
    _checks.check_positive_float(tol, "tol", fn)
    max_iter = _checks.check_positive_int(max_iter, "max_iter", fn)
    sym_max_iter = _checks.check_positive_int(sym_max_iter, "sym_max_iter", fn)
    for bad in ("geom", "epsilon", "tol", "max_iter", "anneal"):
        if bad in sinkhorn_kw:
            raise TypeError(f"{fn}: `{bad}` cannot be passed through **sinkhorn_kw.")
    if block_size is not None:
        block_size = _checks.check_positive_int(block_size, "block_size", fn)
    solver = choose_solver(method, PointCloud(x, y, cost=cost, block_size=block_size), epsilon,
                           fn, tol=tol, relax=relax)
    init = _check_init(init, x.shape[0], y.shape[0], dtype, fn)
    return _divergence(x, y, a, b, epsilon, tol, init,
                       None if relax is None else relax[1][0], cost=cost,
                       block_size=block_size, max_iter=max_iter, sym_max_iter=sym_max_iter,
                       sinkhorn_kw=tuple(sorted(sinkhorn_kw.items())), solver=solver,
                       out_dtype=out_dtype, relax_kind=None if relax is None else relax[0])


def _check_init(init, n: int, m: int, dtype, fn: str):
    """``init`` as a tuple ``(f, g, p, q)`` of float arrays of shapes (n,), (m,), (n,), (m,)."""
    if init is None:
        return None
    if isinstance(init, DivergenceAux):
        init = (init.ot_xy.f, init.ot_xy.g, init.p, init.q)
    if not (isinstance(init, (tuple, list)) and len(init) == 4):
        raise TypeError(f"{fn}: `init` must be the `aux` of a previous call or a tuple "
                        f"(f, g, p, q), got {type(init).__name__}.")
    out = []
    for name, z, size in zip(("f", "g", "p", "q"), init, (n, m, n, m), strict=True):
        z = _checks.float_array(z, f"init.{name}", 1, fn)
        if z.shape != (size,):
            raise ValueError(f"{fn}: `init.{name}` must have shape ({size},) for these points, "
                             f"got {z.shape}; pass the aux of a call on clouds of the same sizes.")
        out.append(z.astype(dtype))
    return tuple(out)
