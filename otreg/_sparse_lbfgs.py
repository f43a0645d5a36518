r"""The L-BFGS solve of :mod:`otreg.sparse`: the (semi-)dual objective with its Danskin gradient,
and Optax's L-BFGS (zoom line search) inside one ``lax.while_loop``, with restarts from the best
point when it stalls (the relaxation is nonsmooth for ``k < n``).

``params`` is ``alpha`` (n,) for the semi-dual and ``(alpha, beta)`` for the dual; ``gt`` is the
transposed (m, n) geometry of the normalised cost (see :mod:`otreg.sparse`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from otreg._math import HIGHEST
from otreg._simplex import Columns, dual_columns, row_sums, semi_dual_columns

__all__ = ["kept", "make_loss", "lbfgs", "STALL_STEPS", "FLAT_RTOL", "RESTARTS"]

STALL_STEPS = 20  # L-BFGS steps without objective progress before declaring stationarity
FLAT_RTOL = 1e-6  # objective change per step, relative, times tol, that counts as stationary
RESTARTS = 3  # L-BFGS restarts from the best point after a stall (nonsmooth relaxation)


def kept(gt, alpha, k) -> Columns:
    """Top k of ``alpha - c_j`` for every column j (gt: the transposed geometry); every row
    when ``k >= n`` (no selection: quadratic OT)."""
    m, n = gt.shape
    if k >= n:  # every row: no indices (idx None), dense reductions instead of gathers/scatters
        return Columns(None, gt.cost_matrix)
    idx, cost = gt.row_top_k(alpha, jnp.asarray(1.0, alpha.dtype), k)
    return Columns(idx, cost)


def _objective(params, gt, a, b, gamma, k, formulation):
    """(value to maximise, plan values (m, k), cols) at ``params``."""
    if formulation == "semi-dual":
        alpha = params
        cols = kept(gt, alpha, k)
        y, val = semi_dual_columns(alpha, cols, b, gamma)
        return (jnp.dot(alpha, a, precision=HIGHEST) - jnp.dot(b, val, precision=HIGHEST),
                b[:, None] * y, cols)
    alpha, beta = params
    cols = kept(gt, alpha, k)
    t, val = dual_columns(alpha, beta, cols, gamma)
    return (jnp.dot(alpha, a, precision=HIGHEST) + jnp.dot(beta, b, precision=HIGHEST)
            - jnp.sum(val), t, cols)


def _marginal_grad(params, t, cols, a, b, formulation):
    rows = row_sums(t, cols, a.shape[0])
    if formulation == "semi-dual":
        return a - rows
    return a - rows, b - jnp.sum(t, axis=1)


def make_loss(gt, a, b, gamma, k, formulation):
    """-objective with its exact (Danskin) gradient -(a - T1[, b - T^T 1])."""

    @jax.custom_vjp
    def loss(params):
        return -_objective(params, gt, a, b, gamma, k, formulation)[0]

    def fwd(params):
        val, t, cols = _objective(params, gt, a, b, gamma, k, formulation)
        return -val, _marginal_grad(params, t, cols, a, b, formulation)

    def bwd(grad, ct):
        return (jax.tree_util.tree_map(lambda g: -ct * g, grad),)

    loss.defvjp(fwd, bwd)
    return loss


def _error(grad):
    """L1 norm of the gradient: the marginal error (the semi-dual meets ``b`` exactly)."""
    return sum(jnp.sum(jnp.abs(g)) for g in jax.tree_util.tree_leaves(grad))


def lbfgs(loss, p0, tol, dtype, *, max_iter, memory, smooth):
    """Optax L-BFGS (zoom line search) in one ``lax.while_loop``, until the marginal error is at
    most ``tol``, ``max_iter`` steps, or stationarity: STALL_STEPS steps without a relative gain of
    FLAT_RTOL * tol, after RESTARTS restarts (memory cleared) from the best point. Returns the
    point (the first one at ``tol``; else, on the nonsmooth relaxation (``smooth`` False), the
    best objective, and on a smooth problem the smallest error), iterations and whether
    ``max_iter`` ended the run."""
    opt = optax.lbfgs(memory_size=memory,
                      linesearch=optax.scale_by_zoom_linesearch(max_linesearch_steps=30))
    value_and_grad = optax.value_and_grad_from_state(loss)
    flat_tol = jnp.maximum(10 * jnp.finfo(dtype).eps, FLAT_RTOL * tol)
    pick = lambda c, new, old: jax.tree_util.tree_map(  # noqa: E731
        lambda u, v: jnp.where(c, u, v), new, old)

    def body(c):
        p, st, it, _, stall, prev, restarts, p_val, v_best, p_err, e_best = c
        restart = stall >= STALL_STEPS
        p, st = pick(restart, (p_val, opt.init(p_val)), (p, st))
        stall, restarts = jnp.where(restart, 0, stall), restarts + restart
        value, grad = value_and_grad(p, state=st)
        # the first step's value is the objective at p0 (the state holds none yet): the
        # reference values start there (no separate evaluation before the loop: compile time)
        first = it == 0
        prev, v_best = jnp.where(first, value, prev), jnp.where(first, value, v_best)
        upd, st = opt.update(grad, st, p, value=value, grad=grad, value_fn=loss)
        p = optax.apply_updates(p, upd)
        new = optax.tree_utils.tree_get(st, "value")
        err = _error(optax.tree_utils.tree_get(st, "grad"))
        better = new < prev - flat_tol * (1.0 + jnp.abs(prev))
        kv, ke = new <= v_best, err <= e_best
        return (p, st, it + 1, err, jnp.where(better, 0, stall + 1),
                jnp.where(better, new, prev), restarts, pick(kv, p, p_val),
                jnp.where(kv, new, v_best), pick(ke, p, p_err), jnp.where(ke, err, e_best))

    def cond(c):
        stalled = (c[4] >= STALL_STEPS) & (c[6] >= RESTARTS)
        return (c[3] > tol) & ~stalled & (c[2] < max_iter)

    inf = jnp.asarray(jnp.inf, dtype)
    zero = jnp.array(0, jnp.int32)
    # the reference values (previous and best objective) are set by the first step
    out = jax.lax.while_loop(cond, body, (p0, opt.init(p0), zero, inf, zero, inf, zero, p0, inf,
                                          p0, inf))
    done = out[10] <= tol
    p = pick(done | smooth, out[9], out[7])
    return p, out[2], ~done & (out[2] >= max_iter) & ~(out[4] >= STALL_STEPS)
