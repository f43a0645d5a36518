r"""Implicit differentiation of entropic dual potentials (shared by every entropic solver).

At the solution :math:`z^\star = (f, g)` of the marginal conditions

.. math::
    F(z; \theta) = (a - P\mathbf 1,\; b - P^\top\mathbf 1) = 0,\qquad
    P_{ij} = a_i b_j e^{(f_i + g_j - C_{ij})/\varepsilon},\quad
    \theta = (C \text{ or } x, y;\ a, b),

the implicit function theorem gives the vector-Jacobian product of :math:`\theta \mapsto z^\star`:
solve :math:`H w = \varepsilon \bar z` with

.. math::
    H = \begin{bmatrix}\mathrm{diag}(P\mathbf 1) & P\\ P^\top & \mathrm{diag}(P^\top\mathbf 1)
    \end{bmatrix} = -\varepsilon\, \partial_z F,

then :math:`\bar\theta = (\partial_\theta F)^\top w` (one ``jax.vjp`` of F at fixed z). H is
positive semi-definite with kernel :math:`(\mathbf 1, -\mathbf 1)`; the system is solved through its
Schur complement :math:`S = \mathrm{diag}(P^\top 1) - P^\top \mathrm{diag}(1/P1) P` by conjugate
gradient (Jacobi preconditioned). The cotangent is first projected onto
:math:`\mathbf 1^\top \bar f = \mathbf 1^\top \bar g` (the minimum-norm gauge; a no-op for anything
built from P or for gauge-fixed potentials), so CG started at 0 stays orthogonal to the kernel.
Atoms of zero weight carry no constraint: their rows/columns are masked and get zero gradient.

The rule is a ``custom_jvp`` (the tangent :math:`\dot z = \varepsilon H^{+}\,\partial_\theta F
\dot\theta`, solved through ``lax.custom_linear_solve``), so forward mode (``jax.jvp``,
``jacfwd``, ``hessian``) and reverse mode (its transpose: the solve above) both work, to any
order: inside the rule the potentials are themselves implicit, so differentiating a derivative
differentiates through the optimum. :func:`envelope_value` (the solver's ``cost``) has a
``custom_jvp`` of the same kind: its first derivative is the envelope (Danskin) formula, and the
potentials in that formula are implicit, so Hessians and Hessian-vector products of ``cost`` are
exact at convergence (not those of a function with frozen potentials).

CG convergence: the backward solve stops at ``cg_tol`` (relative residual of the Schur system)
or after ``cg_max_iter`` products, whichever comes first; its result is finite in every case
(never NaN). Inside a traced gradient there is no channel to report a capped solve without a
host callback, so the report is a separate, documented diagnostic: :func:`backward_check` runs
the same solve for a result and a cotangent and returns the residual reached, the products
used and whether ``cg_tol`` was met.

Memory: O(n + m) beyond the geometry for blocked geometries (P is never materialised); dense
geometries hold P between the forward and the backward pass. Independent of the number of
Sinkhorn iterations. Reference: Luise et al. 2018; Eisenberger et al. 2022; the same system as
Newton steps on the dual.

Relaxed marginals (``rho = (rho_a, rho_b)``, :mod:`otreg._unbalanced`): the conditions become
:math:`F = (a e^{-f/\rho_a} - P\mathbf 1,\ b e^{-g/\rho_b} - P^\top\mathbf 1)` and
:math:`-\varepsilon\partial_z F = H + \mathrm{diag}(\tfrac{\varepsilon}{\rho_a} a
e^{-f/\rho_a}, \tfrac{\varepsilon}{\rho_b} b e^{-g/\rho_b})`: the same Schur-complement
solve on the augmented diagonals. With a relaxed side the system is definite (no gauge
kernel), so the cotangent is not projected.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from otreg import _unbalanced as ub
from otreg._math import HIGHEST, cg
from otreg.geometry import CostMatrix

__all__ = ["implicit_potentials", "marginal_residual", "solve_hessian", "dual_value",
           "envelope_value", "backward_check", "BackwardCheck", "default_cg_tol"]


def default_cg_tol(dtype) -> float:
    """Relative CG tolerance of the implicit solve: 1e-8 in float64, 1e-5 otherwise."""
    return 1e-8 if jnp.dtype(dtype) == jnp.float64 else 1e-5


def marginal_residual(geom, a, b, eps, f, g, rho=None):
    """``F(z; theta) = (a - P 1, b - P^T 1)`` through log-sum-exp reductions (blockwise if
    the geometry is blocked); ``a e^{-f/rho_a} - P 1`` on a relaxed side."""
    rows = a * jnp.exp(f / eps + geom.lse(g / eps, eps, 1, b))
    cols = b * jnp.exp(g / eps + geom.lse(f / eps, eps, 0, a))
    ra, rb = ub.side(rho, 0), ub.side(rho, 1)
    ta = a if ra is None else a * ub.target(f, ra)
    tb = b if rb is None else b * ub.target(g, rb)
    return ta - rows, tb - cols


def _plan_operators(geom, a, b, eps, f, g):
    """(v -> P v, u -> P^T u, P 1, P^T 1); dense geometries materialise P once."""
    if getattr(geom, "is_blocked", False):
        def pv(v):
            return geom.apply_plan(f, g, a, b, eps, v[:, None], 1)[:, 0]

        def ptu(u):
            return geom.apply_plan(f, g, a, b, eps, u[:, None], 0)[:, 0]
        r = a * jnp.exp(f / eps + geom.lse(g / eps, eps, 1, b))
        c = b * jnp.exp(g / eps + geom.lse(f / eps, eps, 0, a))
        return pv, ptu, r, c
    P = geom.plan(f, g, a, b, eps)
    return ((lambda v: jnp.matmul(P, v, precision=HIGHEST)),
            (lambda u: jnp.matmul(u, P, precision=HIGHEST)), jnp.sum(P, 1), jnp.sum(P, 0))


class _System(NamedTuple):
    matvec: object  # (w_f, w_g) -> H (w_f, w_g)
    solve: object  # (rf, rg) -> ((w_f, w_g), relative Schur residual, CG products)


def _system(geom, a, b, eps, f, g, tol, max_iter, rho=None) -> _System:
    """The dual Hessian H at (f, g) and its Schur-complement CG solve (see module doc)."""
    pv, ptu, r, c = _plan_operators(geom, a, b, eps, f, g)
    ra, rb = ub.side(rho, 0), ub.side(rho, 1)
    if ra is not None:  # relaxed: H's diagonal gains eps / rho * a e^{-f/rho}
        r = r + eps / ra * a * ub.target(f, ra)
    if rb is not None:
        c = c + eps / rb * b * ub.target(g, rb)
    project = ub.is_balanced(rho)
    row_on, col_on = r > 0, c > 0
    inv_r = jnp.where(row_on, 1.0 / jnp.where(row_on, r, 1.0), 0.0)
    inv_c = jnp.where(col_on, 1.0 / jnp.where(col_on, c, 1.0), 0.0)
    n_on = jnp.sum(row_on) + jnp.sum(col_on)

    def matvec(w):
        wf, wg = w
        return (jnp.where(row_on, r * wf + pv(wg), wf), jnp.where(col_on, ptu(wf) + c * wg, wg))

    def solve(rhs):
        rf, rg = (jnp.where(on, z, 0.0) for on, z in zip((row_on, col_on), rhs, strict=True))
        if project:  # balanced: project onto 1^T r_f = 1^T r_g (H's range)
            t = (jnp.sum(rf) - jnp.sum(rg)) / n_on
            rf, rg = jnp.where(row_on, rf - t, 0.0), jnp.where(col_on, rg + t, 0.0)
        schur = lambda v: c * v - ptu(inv_r * pv(v))  # noqa: E731
        rhs_s = rg - ptu(rf * inv_r)
        wg, k = cg(schur, rhs_s, lambda v: inv_c * v, rtol=tol, max_iter=max_iter)
        wg = jnp.where(col_on & jnp.isfinite(wg), wg, 0.0)
        wf = jnp.where(row_on, (rf - pv(wg)) * inv_r, 0.0)
        wf = jnp.where(jnp.isfinite(wf), wf, 0.0)
        res = rhs_s - schur(wg)
        norm = jnp.sqrt(jnp.sum(rhs_s * rhs_s))
        rel = jnp.sqrt(jnp.sum(res * res)) / jnp.where(norm > 0, norm, 1.0)
        return (wf, wg), rel, k

    return _System(matvec, solve)


def solve_hessian(geom, a, b, eps, f, g, rf, rg, *, tol, max_iter, rho=None):
    """Solve ``H (w_f, w_g) = (r_f, r_g)`` for the dual Hessian at (f, g); rhs must satisfy
    ``sum(r_f) == sum(r_g)`` (projected here) when balanced. Returns ``(w_f, w_g)``, zero on
    zero-weight atoms, finite in every case."""
    (wf, wg), _, _ = _system(geom, a, b, eps, f, g, tol, max_iter, rho).solve((rf, rg))
    return wf, wg


def _linear_solve(system: _System, rhs):
    """``H^+ rhs`` as a ``custom_linear_solve`` (transposable: H is symmetric; differentiable
    in what H depends on)."""
    return jax.lax.custom_linear_solve(system.matvec, rhs,
                                       lambda _, r: system.solve(r)[0], symmetric=True)


@functools.partial(jax.custom_jvp, nondiff_argnums=(7, 8))
def implicit_potentials(geom, a, b, eps, f, g, rho, cg_tol, cg_max_iter):
    """Identity on solved potentials ``(f, g)`` whose derivatives are the implicit ones (see
    module doc), in C (or x, y), a, b, epsilon and the relaxation ``rho`` (None: balanced);
    forward and reverse mode, any order."""
    return f, g


@implicit_potentials.defjvp
def _implicit_jvp(cg_tol, cg_max_iter, primals, tangents):
    geom, a, b, eps, f, g, rho = primals
    dgeom, da, db, deps, _, _, drho = tangents
    # the potentials in the rule are implicit too: a derivative of this tangent (second order)
    # then moves them with theta (this call is the identity when nothing outer differentiates)
    fi, gi = implicit_potentials(geom, a, b, eps, f, g, rho, cg_tol, cg_max_iter)
    _, dF = jax.jvp(lambda geom, a, b, eps, rho: marginal_residual(geom, a, b, eps, fi, gi, rho),
                    (geom, a, b, eps, rho), (dgeom, da, db, deps, drho))
    system = _system(geom, a, b, eps, fi, gi, cg_tol, cg_max_iter, rho)
    rhs = (eps * dF[0], eps * dF[1])
    if not ub.is_balanced(rho):
        # a tangent in one side's rho alone leaves the other side's residual a symbolic zero,
        # which custom_linear_solve's transpose rejects: make both linear in every tangent
        link = 0.0 * (jnp.sum(rhs[0]) + jnp.sum(rhs[1]))
        rhs = (rhs[0] + link, rhs[1] + link)
    df, dg = _linear_solve(system, rhs)
    return (f, g), (df, dg)


def dual_value(geom, a, b, eps, f, g, rho=None):
    """Dual objective <f, a> + <g, b> - eps (sum P - |a| |b|), one log-sum-exp pass (relaxed
    sides: :func:`otreg._unbalanced.mass_term` instead of <f, a>)."""
    ratio = jnp.exp(f / eps + geom.lse(g / eps, eps, 1, b))
    return (ub.mass_term(f, a, ub.side(rho, 0)) + ub.mass_term(g, b, ub.side(rho, 1))
            - eps * (_dot(a, ratio) - jnp.sum(a) * jnp.sum(b)))


def _dot(u, v):
    return jnp.dot(u, v, precision=HIGHEST)


def envelope_value(geom, a, b, eps, f, g, ratio, cg_tol=None, cg_max_iter=1000, rho=None):
    """:func:`dual_value` from the row ratio ``P 1 / a`` the solver already has (no pass over C).

    Its derivative (``custom_jvp``) is that of :func:`dual_value` at fixed (f, g): the envelope
    (Danskin) gradient in C (or x, y), a, b and epsilon, exact at convergence (Feydy et al. 2019,
    section 1.5 of ALGORITHMS.md). The potentials inside that derivative are
    :func:`implicit_potentials`, so second derivatives (``jax.hessian``, ``jacrev(jacrev)``,
    forward over reverse) are exact too. Pass ``f``, ``g``, ``ratio`` under ``stop_gradient``
    (they get no derivative here); ``cg_tol``/``cg_max_iter`` configure the implicit solve that
    only second derivatives run. ``rho``: relaxed marginals (differentiable), None when
    balanced."""
    cg_tol = default_cg_tol(jnp.result_type(f)) if cg_tol is None else float(cg_tol)
    return _envelope(cg_tol, int(cg_max_iter), geom, a, b, eps, f, g, ratio, rho)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1))
def _envelope(cg_tol, cg_max_iter, geom, a, b, eps, f, g, ratio, rho):
    return (ub.mass_term(f, a, ub.side(rho, 0)) + ub.mass_term(g, b, ub.side(rho, 1))
            - eps * (_dot(a, ratio) - jnp.sum(a) * jnp.sum(b)))


@_envelope.defjvp
def _envelope_jvp(cg_tol, cg_max_iter, primals, tangents):
    geom, a, b, eps, f, g, ratio, rho = primals
    dgeom, da, db, deps = tangents[:4]
    drho = tangents[7]
    value = _envelope(cg_tol, cg_max_iter, geom, a, b, eps, f, g, ratio, rho)
    f, g = implicit_potentials(geom, a, b, eps, f, g, rho, cg_tol, cg_max_iter)
    drho_term = 0.0  # the mass terms' derivative in rho (relaxed only): O(n + m)
    if not ub.is_balanced(rho):
        _, drho_term = jax.jvp(lambda r: ub.mass_term(f, a, ub.side(r, 0))
                               + ub.mass_term(g, b, ub.side(r, 1)), (rho,), (drho,))
    if isinstance(geom, CostMatrix):  # closed form from one pass over the kernel
        C, dC = jax.jvp(lambda G: G.cost_matrix, (geom,), (dgeom,))
        K = geom.kernel(f, g, eps, a, b)
        P = a[:, None] * b[None, :] * K
        mass_a, mass_b = jnp.sum(a), jnp.sum(b)
        row_ratio = jnp.matmul(K, b, precision=HIGHEST)  # P 1 / a, also at zero weights
        col_ratio = jnp.matmul(a, K, precision=HIGHEST)  # P^T 1 / b
        a_bar = ub.phi(f, ub.side(rho, 0)) - eps * (row_ratio - mass_b)
        b_bar = ub.phi(g, ub.side(rho, 1)) - eps * (col_ratio - mass_a)
        logK = jnp.where(P > 0, (f[:, None] + g[None, :] - C) / eps, 0.0)
        eps_bar = -(_dot(a, row_ratio) - mass_a * mass_b) + jnp.sum(P * logK)
        tangent = jnp.sum(P * dC) + _dot(a_bar, da) + _dot(b_bar, db) + eps_bar * deps
    else:
        _, tangent = jax.jvp(lambda G, a, b, e: dual_value(G, a, b, e, f, g, rho),
                             (geom, a, b, eps), (dgeom, da, db, deps))
    return value, tangent + drho_term


class BackwardCheck(NamedTuple):
    """What the implicit backward solve reached (see :func:`backward_check`).

    Attributes:
      residual: relative residual of the Schur-complement system after the solve.
      n_products: CG products used.
      converged: ``residual <= cg_tol``.
    """

    residual: jax.Array
    n_products: jax.Array
    converged: jax.Array


def backward_check(res, fbar=None, gbar=None, *, cg_tol=None, cg_max_iter=1000) -> BackwardCheck:
    """Diagnose the implicit backward pass of a :class:`~otreg.SinkhornResult` (``sinkhorn`` or
    ``sns``): run the conjugate-gradient solve that ``jax.grad`` runs for the cotangent
    ``(fbar, gbar)`` on ``(f, g)`` and report its relative residual, the products used and
    whether ``cg_tol`` was reached (a gradient computed with a capped solve is finite but
    inexact: raise ``cg_max_iter``, loosen ``cg_tol``, use float64 or a larger epsilon).

    ``fbar, gbar`` default to a fixed generic cotangent (a smooth ramp over the atoms, which
    excites every mode of H); pass the gradient of your loss with respect to ``res.f, res.g``
    to check that exact solve. ``cg_tol`` defaults to the solvers' default for the dtype.
    Jittable; no host callback.
    """
    geom, a, b, eps = res.geom, res.a, res.b, res.epsilon
    dtype = a.dtype
    fg = getattr(res, "fg_solve", None)  # bfloat16/float16 input: the solve's float32 (f, g)
    f, g = (jnp.asarray(z, dtype) for z in ((res.f, res.g) if fg is None else fg))
    geom = (geom.astype(dtype) if geom.dtype != dtype else geom).materialize()
    n, m = f.shape[0], g.shape[0]
    fbar = jnp.linspace(-1.0, 1.0, n, dtype=dtype) if fbar is None else jnp.asarray(fbar, dtype)
    gbar = jnp.linspace(1.0, -1.0, m, dtype=dtype) if gbar is None else jnp.asarray(gbar, dtype)
    cg_tol = default_cg_tol(dtype) if cg_tol is None else float(cg_tol)
    _, rel, k = _system(geom, a, b, eps, f, g, cg_tol, cg_max_iter,
                        getattr(res, "rho", None)).solve(
        (eps * fbar, eps * gbar))
    return BackwardCheck(rel, k, rel <= cg_tol)
