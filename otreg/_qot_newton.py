r"""Semi-smooth Newton on the dual of quadratic-regularised OT (``quadratic_ot(solver="newton")``).

The dual :math:`G(\alpha, \beta) = \langle\alpha, a\rangle + \langle\beta, b\rangle -
\frac1{2\gamma}\sum_{ij}[\alpha_i + \beta_j - C_{ij}]_+^2` is concave with a piecewise-linear
gradient :math:`(a - T\mathbf 1, b - T^\top\mathbf 1)`,
:math:`T = [\alpha\oplus\beta - C]_+/\gamma`.
Its generalised Hessian is :math:`-\frac1\gamma\begin{bmatrix}\mathrm{diag}(\sigma\mathbf 1) &
\sigma\\ \sigma^\top & \mathrm{diag}(\sigma^\top\mathbf 1)\end{bmatrix}` with the active set
:math:`\sigma = [\alpha\oplus\beta > C]` (the support of the plan). Each step solves the
regularised system :math:`(H + \mu I)\Delta = \gamma\nabla G`, :math:`\mu` proportional to the
gradient norm (Lorenz, Manns and Meyer 2021, "Quadratically regularized optimal transport"; the
regularised, globalised variant is regot's ``qrot_grssn``), by conjugate gradient on the Schur
complement of the row block with its exact diagonal as preconditioner (as in
:func:`otreg.newton.solve_ell`, here with dense matrix-vector products), then a backtracking line
search on the gradient norm (the dual's own decrease is below float64 resolution near the
optimum). Converges superlinearly once the support is identified.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from otreg._math import cg
from otreg._simplex import simplex_threshold

ARMIJO = 1e-4
LAM0, LAM_UP, LAM_DOWN, LAM_MIN, LAM_MAX = 1e-3, 4.0, 0.25, 1e-8, 1e8


class _State(NamedTuple):
    lam: jax.Array
    alpha: jax.Array
    beta: jax.Array
    gf: jax.Array
    gg: jax.Array
    merit: jax.Array
    err: jax.Array
    it: jax.Array
    n_cg: jax.Array
    stall: jax.Array
    done: jax.Array


def _grad(C, a, b, gamma, alpha, beta):
    S = jnp.maximum(alpha[:, None] + beta[None, :] - C, 0.0)
    T = S / gamma
    gf, gg = a - jnp.sum(T, axis=1), b - jnp.sum(T, axis=0)
    err = jnp.sum(jnp.abs(gf)) + jnp.sum(jnp.abs(gg))
    return gf, gg, jnp.sqrt(jnp.sum(gf * gf) + jnp.sum(gg * gg)), err


def _dual(C, a, b, gamma, alpha, beta):
    S = jnp.maximum(alpha[:, None] + beta[None, :] - C, 0.0)
    return jnp.dot(alpha, a) + jnp.dot(beta, b) - jnp.sum(S * S) / (2.0 * gamma)


def _exact_rows(C, w, gamma, other):
    r"""For every row i, the potential meeting its marginal exactly given the other side's:
    :math:`\sum_j [\alpha_i + \beta_j - C_{ij}]_+ = \gamma a_i` (a simplex threshold)."""
    scale = gamma * jnp.where(w > 0, w, 1.0)[:, None]
    tau = simplex_threshold((other[None, :] - C) / scale, axis=1)[:, 0]
    return jnp.where(w > 0, -scale[:, 0] * tau, jnp.min(C - other[None, :], axis=1))


def block_ascent(C, a, b, gamma, sweeps):
    """``sweeps`` rounds of exact maximisation of the dual in alpha, then in beta (the quadratic
    analogue of Sinkhorn): every row and column then carries mass, Newton's starting point."""
    def sweep(_, z):
        alpha, beta = z
        alpha = _exact_rows(C, a, gamma, beta)
        return alpha, _exact_rows(C.T, b, gamma, alpha)

    zero = jnp.zeros(C.shape[1], C.dtype)
    return jax.lax.fori_loop(0, sweeps, sweep, (jnp.zeros(C.shape[0], C.dtype), zero))


def solve(C, a, b, gamma, tol, alpha, beta, *, max_iter, cg_max_iter, ls_steps=30):
    """Newton iterations from ``(alpha, beta)``; returns ``(alpha, beta, it, err, n_cg)``."""
    dtype = C.dtype
    zero = jnp.array(0, jnp.int32)
    gf, gg, merit, err = _grad(C, a, b, gamma, alpha, beta)
    init = _State(jnp.asarray(LAM0, dtype), alpha, beta, gf, gg, merit, err, zero, zero, zero,
                  err <= tol)

    def body(s: _State):
        sigma = (s.alpha[:, None] + s.beta[None, :] - C > 0).astype(dtype)
        mu = s.lam * s.merit / gamma  # Levenberg-Marquardt shift, adapted below
        dr = jnp.sum(sigma, axis=1) / gamma + mu
        dc = jnp.sum(sigma, axis=0) / gamma + mu
        inv_r = 1.0 / dr
        rf, rg = s.gf, s.gg  # H in units of 1/gamma: solve (H + mu) d = grad

        def pv(v):
            return sigma @ v / gamma

        def ptu(u):
            return u @ sigma / gamma

        s_diag = jnp.maximum(dc - (inv_r @ sigma) / gamma ** 2, mu)
        rtol = jnp.clip(jnp.sqrt(s.err), 1e-10, 0.1).astype(dtype)
        dv, k = cg(lambda v: dc * v - ptu(inv_r * pv(v)), rg - ptu(inv_r * rf),
                   lambda r: r / s_diag, rtol=rtol, max_iter=cg_max_iter)
        du = inv_r * (rf - pv(dv))

        def ls_body(c):
            ok, j, best = c
            t = jnp.asarray(0.5, dtype) ** j
            al, be = s.alpha + t * du, s.beta + t * dv
            gf, gg, merit, err = _grad(C, a, b, gamma, al, be)
            # ascent of the dual (Armijo), or, near the optimum where float64 cannot resolve
            # the dual's increase, a decrease of the gradient norm
            rise = _dual(C, a, b, gamma, al, be) - g0
            slope = jnp.dot(s.gf, du) + jnp.dot(s.gg, dv)
            good = jnp.isfinite(merit) & ((merit <= (1.0 - ARMIJO * t) * s.merit)
                                          | (rise >= ARMIJO * t * slope))
            new = (al, be, gf, gg, merit, err)
            return good, j + 1, jax.tree_util.tree_map(lambda x, y: jnp.where(good, x, y), new,
                                                       best)

        g0 = _dual(C, a, b, gamma, s.alpha, s.beta)
        best0 = (s.alpha, s.beta, s.gf, s.gg, s.merit, s.err)
        ok, j, best = jax.lax.while_loop(lambda c: ~c[0] & (c[1] < ls_steps), ls_body,
                                         (jnp.array(False), zero, best0))
        al, be, gf, gg, merit, err = best
        lam = jnp.where(ok & (j == 1), s.lam * LAM_DOWN, s.lam * LAM_UP)
        lam = jnp.clip(lam, LAM_MIN, LAM_MAX)
        return _State(lam, al, be, gf, gg, merit, err, s.it + 1, s.n_cg + k,
                      jnp.where(ok, 0, s.stall + 1), err <= tol)

    def cond(s: _State):
        return ~s.done & (s.stall < 2) & (s.it < max_iter)

    s = jax.lax.while_loop(cond, body, init)
    return s.alpha, s.beta, s.it, s.err, s.n_cg
