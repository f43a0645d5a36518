r"""The iteration of :func:`otreg.sns`: a Sinkhorn warm-up, then the Newton stage in one
``lax.while_loop``.

Each step of the Newton stage is a Newton step on the sparsified Hessian (:mod:`otreg._ell`)
where the kept entries hold at least ``keep_mass`` of the plan's mass, or a block of
``block_sweeps`` Sinkhorn sweeps where they do not, where the line search fails, or after
``WEAK_STEPS`` weak Newton steps (module doc of :mod:`otreg.newton`).

Compile time: the sweep loop (:func:`otreg._sinkhorn_loops.kernel_loop`: annealing stages,
absorption, log-domain fallback, over-relaxation) is the largest subgraph of the solver, and
every call site is a copy of it in the compiled program. So a step tries the Newton step first
and takes the Sinkhorn block after it, under one ``lax.cond`` shared by the three reasons for a
block: one copy in the Newton stage, one for the warm-up. (Running the warm-up as the loop's
first step would save that copy too, but moves the first marginals into the loop, where XLA
rounds them differently, by an ulp: enough to change float32 iteration counts.)
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from otreg import _sinkhorn_loops as loops
from otreg import _unbalanced as ub
from otreg._ell import EllHessian, ell_hessian, solve_ell
from otreg._math import safe_log

SHIFT_MAX = 1e-3  # largest relative diagonal shift of the sparsified Hessian
ARMIJO = 1e-4  # sufficient decrease of the gradient-norm merit
STALL_STEPS = 3  # steps near the floor without a new best error or merit before giving up
# Both count: a Newton step in its damped phase (far from the optimum, large rho / epsilon)
# lowers the merit it line-searches on while the L1 error may rise for a few steps.
FLOOR_ZONE = 1e3  # "near the floor": error <= this * dtype eps * (1 + max|f, g| / eps) * mass.
# The rounding of f / eps alone moves the marginals by about dtype eps * max|f| / eps (relative);
# far above that a step that does not improve is the damped phase of Newton's method, or a
# Sinkhorn block's non-monotone start (relaxed marginals, a fresh stage), not a floor: measured
# at eps = 1e-4, rho = 1 (d = 64), where the rule without the zone stopped at error 0.1.
NEWTON_MIN_GAIN = 1.25  # a Newton step dividing the error by less than this is weak ...
WEAK_STEPS = 2  # ... and this many in a row are followed by a Sinkhorn block


def marginals(geom, a, b, eps, f, g):
    """``(P 1, P^T 1)``: two log-sum-exp reductions (blockwise when blocked). The weights enter
    as ``log b`` (not as masks: 3x faster on CPU; the Newton stage is not differentiated)."""
    rows = a * jnp.exp(f / eps + geom.lse(g / eps + safe_log(b), eps, 1))
    cols = b * jnp.exp(g / eps + geom.lse(f / eps + safe_log(a), eps, 0))
    return rows, cols


def goals(a, b, f, g, rho):
    r"""What the marginals must equal at the optimum: ``(a, b)`` on hard sides,
    :math:`a\,e^{-f/\rho_a}` and :math:`b\,e^{-g/\rho_b}` on relaxed ones (``_unbalanced``)."""
    ra, rb = ub.side(rho, 0), ub.side(rho, 1)
    return (a if ra is None else a * ub.target(f, ra),
            b if rb is None else b * ub.target(g, rb))


class State(NamedTuple):
    f: jax.Array
    g: jax.Array
    rows: jax.Array
    cols: jax.Array
    err: jax.Array  # L1 norm of the dual gradient: the (relaxed) marginal error
    merit: jax.Array  # its L2 norm
    best: jax.Array
    best_merit: jax.Array
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
    it0: jax.Array  # sweeps of the warm-up


def _errors(ta, tb, rows, cols):
    """L1 and L2 norms of the dual gradient ``(ta - rows, tb - cols)`` (``ta, tb``: goals)."""
    ra, rb = ta - rows, tb - cols
    err = jnp.sum(jnp.abs(ra)) + jnp.sum(jnp.abs(rb))
    merit = jnp.sqrt(jnp.sum(ra * ra) + jnp.sum(rb * rb))
    return err, merit


def _where(pred, new, old):
    return jax.tree_util.tree_map(lambda x, y: jnp.where(pred, x, y), new, old)


def run(pb_warm: loops.Problem, state0: loops.LoopState, tol, *, warmup_iter, keep, keep_mass,
        max_iter, cg_tol, cg_max_iter, ls_steps, block_sweeps, check_every, sweep_loop,
        progress):
    """Warm-up (``sweep_loop`` on ``pb_warm`` from ``state0``, at most ``warmup_iter`` sweeps)
    then the Newton stage to ``tol``. Returns ``(State, warm-up LoopState)``."""
    pb = pb_warm._replace(tol=jnp.asarray(tol, pb_warm.eps.dtype))
    geom, a, b, eps, tol, rho = pb.geom, pb.a, pb.b, pb.eps, pb.tol, pb.rho
    dtype = a.dtype
    row_on, col_on = a > 0, b > 0
    zero = jnp.array(0, jnp.int32)
    n_hist = -(-max_iter // check_every)
    warm = sweep_loop(pb_warm, state0, max_iter=min(warmup_iter, max_iter),
                      check_every=check_every, progress=progress)
    final_pb = pb._replace(n_stages=zero, eps0=eps)

    def start(w: loops.LoopState) -> State:
        """The Newton stage's first state, at the warm-up's potentials. Marginals that overflow
        (potentials of an earlier annealing stage when the warm-up ran out) are not a
        breakdown: the first step is then a log-domain Sinkhorn block, which recovers."""
        rows, cols = marginals(geom, a, b, eps, w.f, w.g)
        err, merit = _errors(*goals(a, b, w.f, w.g, rho), rows, cols)
        fine = jnp.isfinite(err)
        inf = jnp.asarray(jnp.inf, dtype)
        err, merit = jnp.where(fine, err, inf), jnp.where(fine, merit, inf)
        return State(w.f, w.g, rows, cols, err, merit, err, merit, zero, zero, zero, zero, zero,
                     zero, zero, jnp.where(fine, zero, WEAK_STEPS), -jnp.ones((n_hist,), dtype),
                     fine & (err <= tol), jnp.array(False), w.it.astype(jnp.int32))

    def direction(s: State, h: EllHessian):
        shift = jnp.minimum(s.err, SHIFT_MAX)
        ta, tb = goals(a, b, s.f, s.g, rho)
        # a relaxed side's mass term adds (eps / rho) a e^{-f/rho} to its diagonal (the
        # Hessian of -eps * sum_i a_i phi(f_i)); the system then has no gauge direction
        dr, dc = h.rows, h.cols
        if ub.side(rho, 0) is not None:
            dr = dr + (eps / ub.side(rho, 0)) * ta
        if ub.side(rho, 1) is not None:
            dc = dc + (eps / ub.side(rho, 1)) * tb
        # zero-weight atoms: unit diagonal and zero right-hand side, so their step is 0
        h = h._replace(rows=jnp.where(row_on, dr, 1.0), cols=jnp.where(col_on, dc, 1.0))
        rhs = (jnp.where(row_on, eps * (ta - s.rows), 0.0),
               jnp.where(col_on, eps * (tb - s.cols), 0.0))
        rtol = jnp.maximum(cg_tol, jnp.minimum(0.1, jnp.sqrt(s.err)))  # inexact Newton forcing
        return solve_ell(h, *rhs, shift=shift, rtol=rtol.astype(dtype), max_iter=cg_max_iter)

    def line_search(s: State, du, dv):
        def body(c):
            alpha = jnp.asarray(0.5, dtype) ** c[1]
            f, g = s.f + alpha * du, s.g + alpha * dv
            if not ub.is_balanced(rho):  # exact ascent along (1, -1): P, and so the
                lam = ub.shift(f, g, a, b, rho)  # marginals, unchanged (see _unbalanced)
                f, g = f + lam, g - lam
            rows, cols = marginals(geom, a, b, eps, f, g)
            err, merit = _errors(*goals(a, b, f, g, rho), rows, cols)
            ok = jnp.isfinite(merit) & (merit <= (1.0 - ARMIJO * alpha) * s.merit)
            return ok, c[1] + 1, _where(ok, (f, g, rows, cols, err, merit), c[2])

        out0 = (s.f, s.g, s.rows, s.cols, s.err, s.merit)
        ok, _, out = jax.lax.while_loop(lambda c: ~c[0] & (c[1] < ls_steps), body,
                                        (jnp.array(False), zero, out0))
        return ok, out

    def skip(s: State):
        return (jnp.array(False), jnp.array(False), (s.f, s.g, s.rows, s.cols, s.err, s.merit),
                zero)

    def attempt(s: State):
        """A Newton step where the kept entries hold enough mass: ``(took, ok, out, k)``."""
        h = ell_hessian(geom, a, b, eps, s.f, s.g, s.rows, s.cols, keep)
        kept = jnp.sum(h.vals) >= keep_mass * jnp.sum(s.rows)

        def newton():
            du, dv, k = direction(s, h)
            return (jnp.array(True), *line_search(s, du, dv), k)

        return jax.lax.cond(kept, newton, lambda: skip(s))

    def block_result(s: State, st: loops.LoopState, start_it):
        """The point after the sweeps from ``start_it`` to ``st.it`` (none: unchanged)."""
        n = (st.it - start_it).astype(jnp.int32)
        rows = a * st.ratio
        cols = b * jnp.exp(st.g / eps + geom.lse(st.f / eps + safe_log(a), eps, 0))
        err, merit = _errors(*goals(a, b, st.f, st.g, rho), rows, cols)
        old = (s.f, s.g, s.rows, s.cols, s.err, s.merit)  # no sweep ran: nothing changed
        return _where(n > 0, (st.f, st.g, rows, cols, err, merit), old), n

    def update(s: State, took_newton, ok, out, n, k) -> State:
        ok = ok | ~took_newton  # failed line searches only
        f, g, rows, cols, err, merit = out
        good = jnp.isfinite(err) & jnp.all(jnp.isfinite(f)) & jnp.all(jnp.isfinite(g))
        better = (err < s.best) | (merit < s.best_merit)
        unit = jnp.finfo(dtype).eps
        size = jnp.maximum(jnp.max(jnp.abs(f)), jnp.max(jnp.abs(g))) / eps
        floor = FLOOR_ZONE * unit * (1.0 + size) * (jnp.sum(a) + jnp.sum(b))
        stall = jnp.where(better | (err > floor), 0, s.stall + 1)
        weak = jnp.where(took_newton & ~(err * NEWTON_MIN_GAIN <= s.err), s.weak + 1, 0)
        newton_steps = s.newton + jnp.where(took_newton, 1, 0)
        loops.report(progress, s.it0 + s.sweeps + n + newton_steps, err, eps, good)
        new = State(f, g, rows, cols, err, merit, jnp.minimum(err, s.best),
                    jnp.minimum(merit, s.best_merit), stall, s.step + 1,
                    newton_steps, s.sweeps + n, s.n_cg + k, s.n_fallback + jnp.where(ok, 0, 1),
                    s.n_capped + jnp.where(k >= cg_max_iter, 1, 0), weak,
                    s.errors.at[s.step].set(err, mode="drop"), err <= tol, jnp.array(False),
                    s.it0)
        return _where(good, new, s._replace(failed=jnp.array(True)))

    def body(s: State):
        budget = max_iter - (s.it0 + s.sweeps + s.newton)  # >= 1 here (see cond)
        # after WEAK_STEPS weak Newton steps (little gain) a Sinkhorn block, then Newton again
        took, ok, out, k = jax.lax.cond(s.weak >= WEAK_STEPS, skip, attempt, s)
        # at most min(block_sweeps, budget) sweeps, a failed Newton step counted (max_iter is a
        # hard bound): the sweep loop starts its counter that far below its bound
        start_it = jnp.clip(block_sweeps - (budget - took.astype(jnp.int32)), 0, block_sweeps)

        def sweeps():
            st = loops.initial_state(s.f, s.g, 1, dtype)
            st = st._replace(it=start_it.astype(st.it.dtype))
            st = sweep_loop(final_pb, st, max_iter=block_sweeps, check_every=check_every,
                            progress=None)
            return block_result(s, st, start_it)

        out, n = jax.lax.cond(~(took & ok), sweeps, lambda: (out, zero))
        return update(s, took, ok, out, n, k)

    def cond(s: State):
        return (~s.done & ~s.failed & (s.stall < STALL_STEPS)
                & (s.it0 + s.sweeps + s.newton < max_iter))

    return jax.lax.while_loop(cond, body, start(warm)), warm
