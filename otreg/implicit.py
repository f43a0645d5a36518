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

Memory: O(n + m) beyond the geometry (P is materialised once in the backward pass for dense
geometries, never for blocked ones), independent of the number of Sinkhorn iterations.
Reference: Luise et al. 2018; Eisenberger et al. 2022; the same system as Newton steps on the dual.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from otreg.geometry import CostMatrix

__all__ = ["implicit_potentials", "marginal_residual", "solve_hessian", "dual_value",
           "envelope_value"]


def marginal_residual(geom, a, b, eps, f, g):
    """``F(z; theta) = (a - P 1, b - P^T 1)`` through log-sum-exp reductions (blockwise if
    the geometry is blocked)."""
    rows = a * jnp.exp(f / eps + geom.lse(g / eps, eps, 1, b))
    cols = b * jnp.exp(g / eps + geom.lse(f / eps, eps, 0, a))
    return a - rows, b - cols


def _plan_operators(geom, a, b, eps, f, g):
    """(v -> P v, u -> P^T u); dense geometries materialise P once."""
    if getattr(geom, "is_blocked", False):
        def pv(v):
            return geom.apply_plan(f, g, a, b, eps, v[:, None], 1)[:, 0]

        def ptu(u):
            return geom.apply_plan(f, g, a, b, eps, u[:, None], 0)[:, 0]
        return pv, ptu
    P = geom.plan(f, g, a, b, eps)
    return (lambda v: P @ v), (lambda u: u @ P)


def solve_hessian(geom, a, b, eps, f, g, rf, rg, *, tol, max_iter):
    """Solve ``H (w_f, w_g) = (r_f, r_g)`` for the dual Hessian at (f, g); rhs must satisfy
    ``sum(r_f) == sum(r_g)`` (projected here). Returns ``(w_f, w_g)``, zero on zero-weight atoms."""
    pv, ptu = _plan_operators(geom, a, b, eps, f, g)
    r = a * jnp.exp(f / eps + geom.lse(g / eps, eps, 1, b))
    c = b * jnp.exp(g / eps + geom.lse(f / eps, eps, 0, a))
    row_on, col_on = r > 0, c > 0
    inv_r = jnp.where(row_on, 1.0 / jnp.where(row_on, r, 1.0), 0.0)
    inv_c = jnp.where(col_on, 1.0 / jnp.where(col_on, c, 1.0), 0.0)
    rf, rg = jnp.where(row_on, rf, 0.0), jnp.where(col_on, rg, 0.0)
    t = (jnp.sum(rf) - jnp.sum(rg)) / (jnp.sum(row_on) + jnp.sum(col_on))
    rf, rg = jnp.where(row_on, rf - t, 0.0), jnp.where(col_on, rg + t, 0.0)

    def schur(v):
        return c * v - ptu(inv_r * pv(v))

    rhs = rg - ptu(rf * inv_r)
    wg, _ = jax.scipy.sparse.linalg.cg(schur, rhs, tol=tol, maxiter=max_iter,
                                       M=lambda v: inv_c * v)
    wg = jnp.where(col_on, wg, 0.0)
    return (rf - pv(wg)) * inv_r, wg


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7))
def implicit_potentials(geom, a, b, eps, f, g, cg_tol, cg_max_iter):
    """Identity on solved potentials ``(f, g)`` whose VJP is the implicit one (see module doc).

    ``eps`` gets no gradient here (the value ``cost`` carries the epsilon derivative)."""
    return f, g


def _fwd(geom, a, b, eps, f, g, cg_tol, cg_max_iter):
    return (f, g), (geom, a, b, eps, f, g)


def _bwd(cg_tol, cg_max_iter, res, ct):
    geom, a, b, eps, f, g = res
    fbar, gbar = ct
    wf, wg = solve_hessian(geom, a, b, eps, f, g, eps * fbar, eps * gbar, tol=cg_tol,
                           max_iter=cg_max_iter)
    _, vjp = jax.vjp(lambda geom, a, b: marginal_residual(geom, a, b, eps, f, g), geom, a, b)
    geom_bar, a_bar, b_bar = vjp((wf, wg))
    return geom_bar, a_bar, b_bar, jnp.zeros_like(eps), jnp.zeros_like(f), jnp.zeros_like(g)


implicit_potentials.defvjp(_fwd, _bwd)


def dual_value(geom, a, b, eps, f, g):
    """Dual objective <f, a> + <g, b> - eps (sum P - |a| |b|), one log-sum-exp pass."""
    ratio = jnp.exp(f / eps + geom.lse(g / eps, eps, 1, b))
    return jnp.dot(f, a) + jnp.dot(g, b) - eps * (jnp.dot(a, ratio) - jnp.sum(a) * jnp.sum(b))


@jax.custom_vjp
def envelope_value(geom, a, b, eps, f, g, ratio):
    """:func:`dual_value` from the row ratio ``P 1 / a`` the solver already has (no pass over C);
    its VJP is that of :func:`dual_value` at fixed (f, g): the envelope (Danskin) gradient in C
    (or x, y), a, b and epsilon, exact at convergence (Feydy et al. 2019, section 1.5 of
    ALGORITHMS.md). Pass ``f``, ``g``, ``ratio`` under ``stop_gradient``."""
    return jnp.dot(f, a) + jnp.dot(g, b) - eps * (jnp.dot(a, ratio) - jnp.sum(a) * jnp.sum(b))


def _envelope_fwd(geom, a, b, eps, f, g, ratio):
    return envelope_value(geom, a, b, eps, f, g, ratio), (geom, a, b, eps, f, g, ratio)


def _envelope_bwd(res, ct):
    geom, a, b, eps, f, g, ratio = res
    if isinstance(geom, CostMatrix):  # closed form from one pass over the kernel
        K = geom.kernel(f, g, eps, a, b)
        P = a[:, None] * b[None, :] * K
        mass_a, mass_b = jnp.sum(a), jnp.sum(b)
        row_ratio, col_ratio = K @ b, a @ K  # P 1 / a and P^T 1 / b, also at zero weights
        a_bar = f - eps * (row_ratio - mass_b)
        b_bar = g - eps * (col_ratio - mass_a)
        logK = jnp.where(P > 0, (f[:, None] + g[None, :] - geom.cost_matrix) / eps, 0.0)
        eps_bar = -(jnp.dot(a, row_ratio) - mass_a * mass_b) + jnp.sum(P * logK)
        zero = jnp.zeros_like
        fill_bar = None if geom.fill is None else zero(geom.fill)
        return (CostMatrix(ct * P, fill_bar), ct * a_bar, ct * b_bar, ct * eps_bar, zero(f),
                zero(g), zero(ratio))
    _, vjp = jax.vjp(dual_value, geom, a, b, eps, f, g)
    return (*vjp(ct), jnp.zeros_like(ratio))


envelope_value.defvjp(_envelope_fwd, _envelope_bwd)
