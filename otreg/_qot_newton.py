r"""Semi-smooth Newton on the dual of quadratic-regularised OT (``quadratic_ot(solver="newton")``).

The dual :math:`G(\alpha, \beta) = \langle\alpha, a\rangle + \langle\beta, b\rangle -
\frac1{2\gamma}\sum_{ij}[\alpha_i + \beta_j - C_{ij}]_+^2` is concave with a piecewise-linear
gradient :math:`(a - T\mathbf 1, b - T^\top\mathbf 1)`,
:math:`T = [\alpha\oplus\beta - C]_+/\gamma`.
Its generalised Hessian is :math:`-\frac1\gamma\begin{bmatrix}\mathrm{diag}(\sigma\mathbf 1) &
\sigma\\ \sigma^\top & \mathrm{diag}(\sigma^\top\mathbf 1)\end{bmatrix}` with the active set
:math:`\sigma = [\alpha\oplus\beta > C]` (the support of the plan). Each step solves the
regularised system :math:`(H + \mu I)\Delta = \nabla G`, :math:`\mu` proportional to the
gradient norm (Lorenz, Manns and Meyer 2021, "Quadratically regularized optimal transport"; the
regularised, globalised variant is regot's ``qrot_grssn``), then backtracks on dual ascent
(Armijo) or a decrease of the gradient norm (the dual's own increase is below float64 resolution
near the optimum). Converges superlinearly once the support is identified.

Two things make it fast at small :math:`\gamma` (the near-LP regime, a handful of active entries
per row, where a cold start needs >100 globalised steps):

* **Continuation in gamma**: the first stage solves at
  :math:`\gamma_0 = \rho_0\,\mathrm{spread}(C)/\bar w` (a few dozen active entries per row, a
  handful of Newton steps from block ascent), and each later stage divides gamma by
  ``CONT_FACTOR``, warm-started from the previous duals, until the requested gamma; intermediate
  stages stop at a loose marginal error.
* **ELL Hessian**: the active entries are the positive ones among the ``keep`` largest of each
  row (ranked in float32, exact diagonals), so the Schur-complement CG of
  :func:`otreg._ell.solve_ell` costs O(n keep) per product instead of a dense pass over the
  n x m mask. Every other quantity (gradient, dual, counts, the top-k) comes from one fused pass
  over C in row blocks of ``BLOCK_ROWS`` (separate XLA reductions over the rows and the columns
  of a 4M-entry matrix are 6x slower than one blocked pass on CPU).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from otreg._ell import EllHessian, solve_ell
from otreg._math import HIGHEST, cg
from otreg._simplex import simplex_threshold
from otreg.geometry import _pad_rows

ARMIJO = 1e-4
LAM0, LAM_UP, LAM_DOWN, LAM_MIN, LAM_MAX = 0.1, 4.0, 0.25, 1e-8, 1e8
LS_STEPS = 30  # backtracking halvings per Newton step
FLAT_STEPS = 30  # steps at the requested gamma without a 10% gain: stalled
LS_FAILS = 4  # consecutive failed line searches (each raises the LM shift 4x): stalled


CONT_FACTOR = 4.0  # gamma shrinks by this factor between continuation stages
RHO0 = 1e-2  # first stage: gamma * (typical weight) / (cost spread), a few dozen entries per row
STAGE_RTOL = 5e-3  # an intermediate stage ends at this L1 error (relative to the mass)
BLOCK_ROWS = 256  # rows per block of the fused passes over C
INIT_SWEEPS = 1  # block-ascent sweeps at the first gamma


class _Sums(NamedTuple):
    """One fused pass over :math:`S = \\alpha\\oplus\\beta - C` (independent of gamma)."""

    rows: jax.Array  # [S]_+ 1
    cols: jax.Array  # [S]_+^T 1
    sq: jax.Array  # |[S]_+|^2
    n_rows: jax.Array  # active entries per row (the exact Hessian diagonal, times gamma)
    n_cols: jax.Array
    idx: jax.Array  # (n, keep) the largest entries of each row (ELL columns)
    act: jax.Array  # (n, keep) which of them are active


def _blocks(C):
    """C's rows in balanced blocks of at most BLOCK_ROWS, padded with +inf rows (never active),
    and the matching reshape of a per-row vector."""
    n = C.shape[0]
    nb = -(-n // BLOCK_ROWS)
    bs = -(-n // nb)  # at most nb - 1 padded rows
    return _pad_rows(C, nb, bs, value=jnp.inf), lambda v: _pad_rows(v, nb, bs)


def _sums(Cb, rows_of, alpha, beta) -> _Sums:
    """The sums and counts in one blocked pass (``idx``/``act`` left None)."""
    n = alpha.shape[0]

    def block(args):
        c, al = args
        s = al[:, None] + beta[None, :] - c
        sp = jnp.maximum(s, 0.0)
        on = (s > 0).astype(s.dtype)
        return jnp.sum(sp, 1), jnp.sum(sp, 0), jnp.sum(sp * sp), jnp.sum(on, 1), jnp.sum(on, 0)

    r, c, sq, nr, nc = jax.lax.map(block, (Cb, rows_of(alpha)))
    return _Sums(_flat(r, n), jnp.sum(c, 0), jnp.sum(sq), _flat(nr, n), jnp.sum(nc, 0), None,
                 None)


def _flat(z, n):
    return z.reshape((-1,) + z.shape[2:])[:n]


def _top_k(Cb, rows_of, alpha, beta, keep):
    """The ``keep`` largest entries of each row of S (ranked in float32: XLA's f64 top-k is a
    full sort on CPU) and which of them are active."""
    def block(args):
        c, al = args
        s = al[:, None] + beta[None, :] - c
        _, idx = jax.lax.top_k(s.astype(jnp.float32), keep)
        return idx, jnp.take_along_axis(s, idx, axis=1) > 0

    idx, act = jax.lax.map(block, (Cb, rows_of(alpha)))
    n = alpha.shape[0]
    return _flat(idx, n), _flat(act, n)


def _with_ell(C, Cb, rows_of, alpha, beta, sums: _Sums, idx, keep) -> _Sums:
    """``sums`` with the ELL columns at (alpha, beta): the previous ``idx`` when it still holds
    every active entry (its active count equals the row's exact count), a fresh top-k pass when
    the ELL is in use (no row has more than ``keep`` active entries) and the support moved."""
    act = alpha[:, None] + beta[idx] - jnp.take_along_axis(C, idx, axis=1) > 0
    held = jnp.all(jnp.sum(act, axis=1) == sums.n_rows)
    fresh = (jnp.max(sums.n_rows) <= keep) & ~held
    idx, act = jax.lax.cond(fresh, lambda: _top_k(Cb, rows_of, alpha, beta, keep),
                            lambda: (idx, act))
    return sums._replace(idx=idx, act=act)


class _Point(NamedTuple):
    gf: jax.Array
    gg: jax.Array
    merit: jax.Array  # L2 norm of the gradient
    err: jax.Array  # its L1 norm (the marginal error)
    dual: jax.Array


def _point(sums: _Sums, a, b, gamma, alpha, beta) -> _Point:
    gf, gg = a - sums.rows / gamma, b - sums.cols / gamma
    return _Point(gf, gg, jnp.sqrt(jnp.sum(gf * gf) + jnp.sum(gg * gg)),
                  jnp.sum(jnp.abs(gf)) + jnp.sum(jnp.abs(gg)),
                  jnp.dot(alpha, a, precision=HIGHEST) + jnp.dot(beta, b, precision=HIGHEST)
                  - sums.sq / (2.0 * gamma))
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


def first_gamma(C, a, b, gamma):
    """The continuation's first gamma: :math:`\\rho_0` (max C - min C) / (typical weight)."""
    w = jnp.minimum(jnp.sum(a) / a.shape[0], jnp.sum(b) / b.shape[0])
    return jnp.maximum(gamma, RHO0 * (jnp.max(C) - jnp.min(C)) / w)


def _solve_dense(sigma, dr, dc, rf, rg, rtol, max_iter):
    """As :func:`otreg._ell.solve_ell` with the dense scaled mask ``sigma`` (n, m)."""
    inv_r = 1.0 / dr
    mm = lambda p, q: jnp.matmul(p, q, precision=HIGHEST)  # noqa: E731
    s_diag = jnp.maximum(dc - mm(inv_r, sigma * sigma), jnp.finfo(dc.dtype).tiny)
    v, k = cg(lambda v: dc * v - mm(inv_r * mm(sigma, v), sigma), rg - mm(inv_r * rf, sigma),
              lambda r: r / s_diag, rtol=rtol, max_iter=max_iter)
    return inv_r * (rf - mm(sigma, v)), v, k


class _State(NamedTuple):
    gamma: jax.Array  # this stage's gamma
    lam: jax.Array
    alpha: jax.Array
    beta: jax.Array
    sums: _Sums
    pt: _Point
    it: jax.Array
    n_cg: jax.Array
    stall: jax.Array  # consecutive failed line searches
    best: jax.Array  # smallest error at the requested gamma so far
    flat: jax.Array  # steps at the requested gamma without a 10% gain on ``best``
    done: jax.Array


def solve(C, a, b, gamma, tol, *, max_iter, cg_max_iter, keep=16):
    """Continuation + Newton from block ascent at the first gamma.

    Returns ``(alpha, beta, it, err, n_cg, stalled)``; ``err`` is the L1 marginal error at
    ``gamma`` (``inf`` if ``max_iter`` ended the run before the last stage); ``stalled``: stopped
    early, after LS_FAILS failed line searches in a row or FLAT_STEPS steps at ``gamma`` without
    a 10% gain (the precision's floor: in float32, S = alpha + beta - C carries an absolute
    error of about eps max|C|, a relative error of eps max|C| / (gamma a_i / support) in T)."""
    dtype = C.dtype
    keep = min(keep, C.shape[1])
    zero = jnp.array(0, jnp.int32)
    Cb, rows_of = _blocks(C)
    g0 = first_gamma(C, a, b, gamma)
    alpha, beta = block_ascent(C, a, b, g0, INIT_SWEEPS)
    idx, act = _top_k(Cb, rows_of, alpha, beta, keep)
    sums = _sums(Cb, rows_of, alpha, beta)._replace(idx=idx, act=act)
    pt = _point(sums, a, b, g0, alpha, beta)
    mass = jnp.sum(a) + jnp.sum(b)

    def finished(g, pt):
        return (g <= gamma) & (pt.err <= tol)

    inf = jnp.asarray(jnp.inf, dtype)
    init = _State(g0, jnp.asarray(LAM0, dtype), alpha, beta, sums, pt, zero, zero, zero, inf,
                  zero, finished(g0, pt))

    def body(s: _State):
        g = s.gamma
        mu = s.lam * s.pt.merit / g  # Levenberg-Marquardt shift, adapted below
        dr, dc = s.sums.n_rows / g + mu, s.sums.n_cols / g + mu
        rtol = jnp.clip(jnp.sqrt(s.pt.err), 1e-10, 0.1).astype(dtype)

        def ell():
            h = EllHessian(dr, dc, s.sums.idx, s.sums.act.astype(dtype) / g)
            return solve_ell(h, s.pt.gf, s.pt.gg, shift=0.0, rtol=rtol, max_iter=cg_max_iter)

        def dense():  # some row has more active entries than the ELL holds
            sigma = (s.alpha[:, None] + s.beta[None, :] - C > 0).astype(dtype) / g
            return _solve_dense(sigma, dr, dc, s.pt.gf, s.pt.gg, rtol, cg_max_iter)

        du, dv, k = jax.lax.cond(jnp.max(s.sums.n_rows) > keep, dense, ell)
        slope = jnp.dot(s.pt.gf, du, precision=HIGHEST) + jnp.dot(s.pt.gg, dv, precision=HIGHEST)

        def trial(c):
            _, j, best = c
            t = jnp.asarray(0.5, dtype) ** j
            al, be = s.alpha + t * du, s.beta + t * dv
            sm = _sums(Cb, rows_of, al, be)
            p = _point(sm, a, b, g, al, be)
            # ascent of the dual (Armijo), or, near the optimum where float64 cannot resolve
            # the dual's increase, a decrease of the gradient norm
            good = jnp.isfinite(p.merit) & ((p.merit <= (1.0 - ARMIJO * t) * s.pt.merit)
                                            | (p.dual - s.pt.dual >= ARMIJO * t * slope))
            return good, j + 1, jax.tree_util.tree_map(
                lambda x, y: jnp.where(good, x, y), (al, be, sm, p), best)

        ok, j, (al, be, sm, p) = jax.lax.while_loop(
            lambda c: ~c[0] & (c[1] < LS_STEPS), trial,
            (jnp.array(False), zero, (s.alpha, s.beta, s.sums._replace(idx=None, act=None),
                                      s.pt)))
        sm = _with_ell(C, Cb, rows_of, al, be, sm, s.sums.idx, keep)
        lam = jnp.where(ok & (j == 1), s.lam * LAM_DOWN, s.lam * LAM_UP)
        # next stage once this one is solved loosely: same duals, smaller gamma
        nxt = (g > gamma) & (p.err <= jnp.maximum(tol, STAGE_RTOL * mass))
        g_new = jnp.where(nxt, jnp.maximum(g / CONT_FACTOR, gamma), g)
        p = jax.lax.cond(nxt, lambda: _point(sm, a, b, g_new, al, be), lambda: p)
        last = g_new <= gamma
        gain = last & (p.err < 0.9 * s.best)
        return _State(g_new, jnp.clip(jnp.where(nxt, LAM0, lam), LAM_MIN, LAM_MAX), al, be,
                      sm, p, s.it + 1, s.n_cg + k, jnp.where(ok | nxt, 0, s.stall + 1),
                      jnp.where(gain, p.err, s.best), jnp.where(gain | ~last, 0, s.flat + 1),
                      finished(g_new, p))

    def stalled(s: _State):
        return (s.stall >= LS_FAILS) | (s.flat >= FLAT_STEPS)

    def cond(s: _State):
        return ~s.done & ~stalled(s) & (s.it < max_iter)

    s = jax.lax.while_loop(cond, body, init)
    err = jnp.where(s.gamma <= gamma, s.pt.err, jnp.inf)
    return s.alpha, s.beta, s.it, err, s.n_cg, ~s.done & stalled(s)
