r"""The two Sinkhorn iterations behind :func:`otreg.sinkhorn`, as compiled ``lax.while_loop``\ s.

Both keep the potentials in cost units,
:math:`P_{ij} = a_i b_j e^{(f_i + g_j - C_{ij})/\varepsilon}`, run ``check_every`` sweeps per
block and test the L1 row-marginal error after each block (the
column marginal is exact after a ``g``-update, so this is the whole error). The error costs O(n):
each sweep ends with the reduction the next ``f``-update needs, which also gives the row marginal.

* **log-domain** (:func:`log_loop`): two log-sum-exp passes per sweep through ``geom.lse``; works on
  every geometry, blocked point clouds included.
* **absorbed kernel** (:func:`kernel_loop`, materialised costs): the potentials ``(f, g)`` are
  absorbed into :math:`\tilde K = e^{(f_i + g_j - C_{ij})/\varepsilon}` and the sweeps act on
  scalings ``u, v`` (:math:`f + \varepsilon\log u`, :math:`g + \varepsilon\log v`) with two
  matrix-vector products, 11-13x cheaper per entry than a log-sum-exp on CPU. When a scaling leaves
  :math:`[e^{-\tau}, e^{\tau}]` the scalings are absorbed into the potentials and the kernel is
  rebuilt (Schmitzer 2019, "Stabilized sparse scaling algorithms for entropy regularized transport
  problems"). When a block would under- or overflow (a kernel row that vanished in float32,
  typically at the start of a stage with small epsilon) it is discarded and replaced by a
  log-domain block.

Both over-relax the final stage (:func:`relax`): :math:`f \leftarrow (1-\omega) f + \omega
\hat f` (and the same for ``g``), with :math:`\omega \in [1, 2)` chosen from the measured
contraction rate (Lehmann, von Renesse, Sambale, Uschmajew 2021, "A note on overrelaxation in the
Sinkhorn algorithm"; Thibault, Chizat, Dossal, Papadakis 2021); the error then counts both
marginals (the column marginal is no longer exact after a relaxed ``g``-update).

Epsilon annealing is shared: stage ``k`` uses :math:`\max(\varepsilon, \varepsilon_0 q^k)`;
earlier stages run one sweep per block and end when their error is below ``STAGE_TOL``; the last
stage runs blocks of ``check_every`` sweeps to ``tol`` at the target epsilon, so the result is the
target-epsilon solution.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from otreg import _unbalanced as ub
from otreg._math import HIGHEST, backend, safe_log, tiny_exponent
from otreg.status import Status

STAGE_TOL = 1e-2  # error at which an intermediate annealing stage hands over to the next
OMEGA_MAX = 1.95  # largest over-relaxation factor
RELAX_START = 0.1  # the rate is estimated (and omega raised) only below this L1 error
RELAX_MARGIN = 1.1  # raise omega only while the observed rate exceeds this times (omega - 1)
KAPPA_MAX = 0.9999  # largest plain-Sinkhorn contraction rate the estimate may report


def batch_cond(pred, true_fn, false_fn, *operands):
    """``lax.cond(pred, true_fn, false_fn, *operands)`` whose ``vmap`` runs a branch only when
    some batch element takes it.

    Under ``vmap`` a ``lax.cond`` with a batched predicate becomes a ``select`` that runs both
    branches for every element: the rare log-domain fallback block would cost every element of
    a batch a full log-sum-exp block at every iteration (5-8x slower than a loop of single
    solves). Here the batched rule runs the true branch for the whole batch when every element
    takes it, the false branch when none does, and both (then selects) only when they differ.
    The branches must take everything they use as ``operands`` (no closed-over batched values).
    Forward-mode differentiable; not reverse-mode (used inside while loops only).
    """
    @jax.custom_batching.custom_vmap
    def call(pred, *ops):
        return jax.lax.cond(pred, true_fn, false_fn, *ops)

    @call.def_vmap
    def rule(axis_size, in_batched, pred, *ops):
        pred_b, *ops_b = in_batched
        ops = jax.tree_util.tree_map(
            lambda x, batched: x if batched else jnp.broadcast_to(x, (axis_size, *jnp.shape(x))),
            list(ops), list(ops_b))
        vt, vf = jax.vmap(true_fn), jax.vmap(false_fn)
        if not pred_b:
            out = jax.lax.cond(pred, vt, vf, *ops)
        else:
            def mixed(*o):
                return jax.tree_util.tree_map(
                    lambda x, y: jnp.where(jnp.reshape(pred, (axis_size,) + (1,) * (x.ndim - 1)),
                                           x, y), vt(*o), vf(*o))
            index = jnp.where(jnp.all(pred), 0, jnp.where(jnp.any(pred), 1, 2))
            out = jax.lax.switch(index, (vt, mixed, vf), *ops)
        return out, jax.tree_util.tree_map(lambda _: True, out)

    return call(pred, *operands)


SEQUENTIAL_MIN_SIZE = 128 * 128  # on CPU, a vmapped solve of n * m >= this runs one by one
LOCKSTEP_CHUNK = 4  # on CPU, smaller vmapped solves run in lockstep chunks of this many


def batch_aware(loop):
    r"""``loop(pb, state)`` whose ``vmap`` chooses how to batch, by measurement
    (``benchmarks/batched.py``).

    A batch of ``while_loop``\ s runs in lockstep: every element does the sweeps of the slowest
    one, and any element's absorption, stage change or log-domain fallback costs the whole
    batch a kernel rebuild or a log block. On a GPU/TPU the batch runs in parallel and lockstep
    wins. On CPU a batched sweep is no cheaper per element than a single one once the problem
    has ``n * m >= SEQUENTIAL_MIN_SIZE`` entries, so there the batch runs as ``lax.map``: one
    element after the other, each with its own sweep count, in one compiled loop (no Python
    dispatch). Smaller problems on CPU run as a ``lax.map`` over lockstep chunks of
    ``LOCKSTEP_CHUNK`` elements: a batched sweep amortises the per-operation overhead that
    dominates a small sweep, and a small chunk waits for few stragglers (measured on one core,
    2026-12-02: 512 problems of 64 x 64 at eps 0.01, mean 385 and max 1150 sweeps: full
    lockstep 811 ms, one by one 367-456 ms, chunks of 4 470 ms; at 0.05, 10 sweeps each:
    12 ms, 16-51 ms, 10 ms). The last chunk is padded with copies of element 0.
    """
    @jax.custom_batching.custom_vmap
    def run(pb, state):
        return loop(pb, state)

    @run.def_vmap
    def rule(axis_size, in_batched, pb, state):
        args = jax.tree_util.tree_map(
            lambda x, batched: x if batched else jnp.broadcast_to(x, (axis_size, *jnp.shape(x))),
            (pb, state), tuple(in_batched))
        n, m = pb.a.shape[-1], pb.b.shape[-1]
        if backend() != "cpu":  # chosen at trace time (otreg._math.force_backend: tests)
            chunk = axis_size
        else:
            chunk = 1 if n * m >= SEQUENTIAL_MIN_SIZE else min(LOCKSTEP_CHUNK, axis_size)
        if chunk >= axis_size:
            out = jax.vmap(loop)(*args)
        else:
            k = -(-axis_size // chunk)
            pad = k * chunk - axis_size  # repeat element 0 to fill the last chunk
            args = jax.tree_util.tree_map(
                lambda x: jnp.concatenate([x, jnp.broadcast_to(x[:1], (pad, *x.shape[1:]))])
                .reshape(k, chunk, *x.shape[1:]), args)
            out = jax.lax.map(lambda z: jax.vmap(loop)(*z), args)
            out = jax.tree_util.tree_map(lambda x: x.reshape(k * chunk, *x.shape[2:])[:axis_size],
                                         out)
        return out, jax.tree_util.tree_map(lambda _: True, out)

    return run


class Problem(NamedTuple):
    """Everything a loop needs that does not change across iterations (all stop-gradient)."""

    geom: object
    a: jax.Array
    b: jax.Array
    eps: jax.Array  # target epsilon
    eps0: jax.Array  # first stage
    n_stages: jax.Array  # int: index of the target stage
    decay: float
    tol: jax.Array
    rho: object = None  # relaxed marginals: None (balanced) or (rho_a, rho_b), see _unbalanced


class LoopState(NamedTuple):
    f: jax.Array
    g: jax.Array
    stage: jax.Array
    it: jax.Array
    err: jax.Array
    errors: jax.Array
    done: jax.Array
    failed: jax.Array
    use_log: jax.Array
    ratio: jax.Array  # row marginal / a at (f, g): gives the value without another pass
    omega: jax.Array  # over-relaxation factor of the final stage (1: plain Sinkhorn)
    omega_cap: jax.Array  # largest omega allowed (1: over-relaxation off)
    ref_err: jax.Array  # error of the previous final-stage block at this omega (inf: none)


def stage_eps(pb: Problem, stage):
    return jnp.maximum(pb.eps, pb.eps0 * pb.decay ** stage.astype(pb.eps.dtype))


def _row_error(a, ratio):
    """L1 row-marginal error from the ratio (row marginal / a)."""
    return jnp.sum(a * jnp.abs(ratio - 1.0))


def _log_sweeps(pb: Problem, f, g, R, eps, omega, n, n_max, differentiable=False):
    """``n <= n_max`` log-domain sweeps (``n_max`` static), over-relaxed by ``omega``; R is the
    row LSE for the incoming g. ``differentiable``: plain ``lax.cond`` (reverse-mode
    differentiable); otherwise :func:`batch_cond` (a batch skips the sweeps no element needs).
    Returns ``(f, g, row ratio, L1 error of both marginals)``."""

    def sweep(pb, eps, omega, carry):  # everything batched comes in as an operand
        ra, rb = ub.side(pb.rho, 0), ub.side(pb.rho, 1)
        f, g, R, _ = carry
        if ra is None:  # the balanced expression, unchanged (bit for bit)
            f = (1.0 - omega) * f - omega * eps * R
        else:  # relaxed: tau * T(g)
            f = (1.0 - omega) * f - omega * (ub.tau(ra, eps) * eps) * R
        gs = -eps * pb.geom.lse(f / eps + safe_log(pb.a), eps, axis=0)  # balanced T(f)
        g = (1.0 - omega) * g + omega * (gs if rb is None else ub.tau(rb, eps) * gs)
        if not ub.is_balanced(pb.rho):  # translation-invariant step (the marginals keep)
            lam = ub.shift(f, g, pb.a, pb.b, pb.rho)
            f, g, gs = f + lam, g - lam, gs - lam
        return f, g, pb.geom.lse(g / eps + safe_log(pb.b), eps, axis=1), gs

    cond = jax.lax.cond if differentiable else batch_cond
    f, g, R, gs = jax.lax.fori_loop(
        0, n_max, lambda i, c: cond(i < n, sweep, lambda pb, eps, omega, c: c, pb, eps, omega, c),
        (f, g, R, g))
    ratio = jnp.exp(f / eps + R)
    ra, rb = ub.side(pb.rho, 0), ub.side(pb.rho, 1)
    return f, g, ratio, (ub.l1_residual(pb.a, ratio, f, ra)
                         + ub.l1_residual(pb.b, jnp.exp((g - gs) / eps), g, rb))


def _row_lse(pb: Problem, g, eps):
    return pb.geom.lse(g / eps + safe_log(pb.b), eps, axis=1)


def host_progress(progress):
    """The host function behind ``progress=``: it receives ``(it, err, eps, accepted)`` and calls
    the user's ``progress(it, err, eps)`` with NumPy scalars (``int``, ``float``, ``float``) only
    for accepted blocks. It never calls back into JAX: it only reads the host buffers it was
    given, so a user callable that stays in NumPy/Python cannot wait on the JAX runtime."""
    def report(it, err, eps, accepted):
        if bool(np.asarray(accepted)):
            progress(np.asarray(it).item(), np.asarray(err).item(), np.asarray(eps).item())
    return report


def report(progress, it, err, eps, accepted=True):
    """Progress report of one block (a host callback; only when ``progress`` is set: the
    default path has none). A discarded block (``accepted`` False) is not shown to the user."""
    if progress is not None:
        jax.debug.callback(host_progress(progress), it, err, eps, accepted)


def block_length(pb: Problem, stage, check_every, it, max_iter):
    """Sweeps in the next block: ``check_every`` at the target epsilon, 1 in earlier stages,
    never past ``max_iter`` sweeps in all (a hard bound)."""
    n = jnp.where(stage >= pb.n_stages, check_every, 1)
    return jnp.maximum(jnp.minimum(n, max_iter - it), 0)


def relax(state: LoopState, final, err, n):
    r"""Over-relaxation factor after a block of ``n`` sweeps at ``state.omega`` with error ``err``.

    The observed rate per sweep is :math:`\lambda = (e_k / e_{k-1})^{1/n}`. For Sinkhorn, a
    block Gauss-Seidel iteration near the solution, over-relaxation by :math:`\omega` below the
    optimum contracts at :math:`\lambda` with
    :math:`(\lambda + \omega - 1)^2 = \lambda \omega^2 \kappa`, :math:`\kappa` the rate of
    plain Sinkhorn (at :math:`\omega = 1`, :math:`\kappa = \lambda`); the optimum is
    :math:`\omega^* = 2 / (1 + \sqrt{1 - \kappa})`, where the rate becomes
    :math:`\omega^* - 1` (Young's SOR theory, as used for Sinkhorn by Lehmann et al. 2021). So
    :math:`\kappa` is re-estimated from every block and :math:`\omega` raised towards
    :math:`\omega^*` while the error is below ``RELAX_START`` (near the solution, where the
    linear theory holds) and the rate is clearly slower than :math:`\omega - 1`. A block whose
    error grew resets :math:`\omega` to 1 and halves the room above 1 (``omega_cap``): the
    safeguard that keeps the iteration globally convergent. The block after a change of
    :math:`\omega` is not used for an estimate (transient)."""
    dtype = err.dtype
    w, cap = state.omega, state.omega_cap
    valid = final & jnp.isfinite(state.ref_err) & (state.ref_err > 0) & (n > 0)
    lam = (err / jnp.where(valid, state.ref_err, 1.0)) ** (
        1.0 / jnp.maximum(n, 1).astype(dtype))
    kappa = jnp.clip((lam + w - 1.0) ** 2 / jnp.maximum(lam * w * w, jnp.finfo(dtype).tiny),
                     0.0, KAPPA_MAX)
    target = jnp.minimum(2.0 / (1.0 + jnp.sqrt(1.0 - kappa)), cap)
    worse = valid & ~(lam < 1.0) & (w > 1.0)
    grow = (valid & (lam > 0.0) & (lam < 1.0) & (err < RELAX_START)
            & (lam > RELAX_MARGIN * (w - 1.0)) & (target > w + 1e-3))
    new_w = jnp.where(worse, 1.0, jnp.where(grow, target, w)).astype(dtype)
    new_cap = jnp.where(worse, 1.0 + 0.5 * (w - 1.0), cap).astype(dtype)
    ref = jnp.where(final & (new_w == w), err, jnp.inf).astype(dtype)
    return new_w, new_cap, ref


def _record(state: LoopState, pb: Problem, f, g, ratio, err, n, check_every):
    """Book-keeping after a completed block of n sweeps: history, stage change, stopping,
    over-relaxation factor."""
    it = state.it + n
    errors = state.errors.at[(it + check_every - 1) // check_every - 1].set(err, mode="drop")
    final = state.stage >= pb.n_stages
    stage_tol = jnp.where(final, pb.tol, STAGE_TOL)
    ok = err <= stage_tol
    omega, cap, ref = relax(state, final, err, n)
    return state._replace(f=f, g=g, ratio=ratio, it=it, err=err, errors=errors, done=final & ok,
                          stage=jnp.where(ok & ~final, state.stage + 1, state.stage),
                          omega=omega, omega_cap=cap, ref_err=ref)


def gauge(f, g, a, b):
    """Shift (f - t, g + t) so that <f, a> = <g, b>: keeps both of order the cost in float32.

    Differentiable: applied after implicit differentiation it fixes the gauge of the gradients."""
    fa, gb = jnp.dot(f, a, precision=HIGHEST), jnp.dot(g, b, precision=HIGHEST)
    t = (fa - gb) / (jnp.sum(a) + jnp.sum(b))
    return f - t, g + t


def _cond(max_iter):
    def cond(s: LoopState):
        return ~s.done & ~s.failed & (s.it < max_iter)
    return cond


def _finite(*xs):
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in xs]))


def _log_body(check_every, progress, max_iter, differentiable=False):
    def body(pb: Problem, s: LoopState):
        eps = stage_eps(pb, s.stage)
        R = _row_lse(pb, s.g, eps)
        n = block_length(pb, s.stage, check_every, s.it, max_iter)
        omega = jnp.where(s.stage >= pb.n_stages, s.omega, 1.0).astype(s.omega.dtype)
        f, g, ratio, err = _log_sweeps(pb, s.f, s.g, R, eps, omega, n, check_every,
                                       differentiable)
        good = _finite(f, g, err)
        new = _record(s, pb, f, g, ratio, err, n, check_every)
        report(progress, new.it, err, eps, good)
        return jax.tree_util.tree_map(lambda x, y: jnp.where(good, x, y), new,
                                      s._replace(failed=jnp.array(True)))
    return body


def log_loop(pb: Problem, state: LoopState, *, max_iter, check_every, progress):
    """Log-domain Sinkhorn with annealing; returns the final LoopState."""
    body = _log_body(check_every, progress, max_iter)
    return jax.lax.while_loop(_cond(max_iter), lambda s: body(pb, s), state)


def unrolled_loop(pb: Problem, state: LoopState, *, max_iter, check_every, progress):
    """:func:`log_loop` as a ``lax.scan`` (reverse-mode differentiable): one step per block,
    skipped by ``lax.cond`` once stopped, each block under ``jax.checkpoint`` so that memory is
    O(blocks * (n + m)) rather than O(iterations * n * m)."""
    body = _log_body(check_every, progress, max_iter, differentiable=True)
    cond = _cond(max_iter)
    n_blocks = -(-max_iter // check_every) + 64  # + the one-sweep annealing stages (<= 64)

    @jax.checkpoint  # the whole step, so the scan keeps only its carry per step
    def step(s, _):
        return jax.lax.cond(cond(s), lambda s: body(pb, s), lambda s: s, s), None

    return jax.lax.scan(step, state, None, length=n_blocks)[0]


class _Inner(NamedTuple):
    u: jax.Array
    v: jax.Array
    r: jax.Array
    outer: LoopState
    exit: jax.Array  # 0 running, 1 stage finished / done, 2 absorb, 3 discard block (use log)


def kernel_loop(pb: Problem, state: LoopState, *, max_iter, check_every, progress):
    """Absorbed-kernel Sinkhorn (materialised costs) with log-domain fallback and annealing."""
    dtype = pb.a.dtype
    tau = 0.25 * tiny_exponent(dtype)  # soft bound on |log u|, |log v| before absorbing
    lo, hi = float(np.exp(-tau)), float(np.exp(tau))
    hard_lo = float(np.finfo(dtype).tiny) * 1e4
    hard_hi = 1.0 / hard_lo
    cond_outer = _cond(max_iter)

    def kernel_block(pb: Problem, s: LoopState):
        ra, rb = ub.side(pb.rho, 0), ub.side(pb.rho, 1)
        a, b = pb.a, pb.b
        eps = stage_eps(pb, s.stage)
        K = pb.geom.kernel(s.f, s.g, eps, a, b)
        one_n, one_m = jnp.ones_like(a), jnp.ones_like(b)
        # a relaxed side's update is u = e^{l} r^{-tau}, l = -f / (rho + eps) for the absorbed f
        # (f + eps log u = tau T(g)); None on a hard side (u = 1 / r)
        side_a = None if ra is None else (-s.f / (ra + eps), ub.tau(ra, eps))
        side_b = None if rb is None else (-s.g / (rb + eps), ub.tau(rb, eps))

        def sweeps(relaxed):
            """A block of sweeps; ``relaxed``: over-relaxed by omega (two more transcendental
            passes over u and v per sweep), else plain (u = 1 / r)."""
            def scale(x, other, omega, lt):
                if lt is not None:  # relaxed marginal: log target l - tau log(other)
                    step = lt[0] - lt[1] * jnp.log(other)
                    return x * jnp.exp(omega * (step - jnp.log(x))) if relaxed else jnp.exp(step)
                return x * jnp.exp(-omega * jnp.log(x * other)) if relaxed else 1.0 / other

            def run(n, K, a, b, omega, sides, fg, c):
                def sweep(_, c):
                    u, v, r, sv, rmin, rmax, smin, smax = c
                    u = scale(u, r, omega, sides[0])
                    sv = jnp.matmul(a * u, K, precision=HIGHEST)
                    v = scale(v, sv, omega, sides[1])
                    r = jnp.matmul(K, b * v, precision=HIGHEST)
                    if fg is not None:  # relaxed: translation-invariant step (ratios keep)
                        lam = ub.shift(fg[0] + fg[2] * jnp.log(u), fg[1] + fg[2] * jnp.log(v),
                                       a, b, fg[3])
                        t = jnp.exp(lam / fg[2])
                        u, v, r, sv = u * t, v / t, r / t, sv * t
                    return (u, v, r, sv, jnp.minimum(rmin, jnp.min(r)),
                            jnp.maximum(rmax, jnp.max(r)), jnp.minimum(smin, jnp.min(sv)),
                            jnp.maximum(smax, jnp.max(sv)))
                return jax.lax.fori_loop(0, n, sweep, c)
            return run

        def inner_body(st: _Inner):
            u, v, r = st.u, st.v, st.r
            omega = jnp.where(st.outer.stage >= pb.n_stages, st.outer.omega, 1.0).astype(dtype)
            rmin, rmax = jnp.min(r), jnp.max(r)
            smin, smax = jnp.asarray(jnp.inf, dtype), jnp.asarray(0.0, dtype)
            n = block_length(pb, st.outer.stage, check_every, st.outer.it, max_iter)
            u, v, r, sv, rmin, rmax, smin, smax = batch_cond(
                omega == 1.0, sweeps(False), sweeps(True), n, K, a, b, omega,
                (side_a, side_b), None if ub.is_balanced(pb.rho) else (s.f, s.g, eps, pb.rho),
                (u, v, r, 1.0 / v, rmin, rmax, smin, smax))
            ratio = u * r
            if ub.is_balanced(pb.rho):
                err = _row_error(a, ratio) + _row_error(b, v * sv)
            else:  # the optimality residual at the updated (f + eps log u, g + eps log v)
                err = (ub.l1_residual(a, ratio, s.f + eps * jnp.log(u), ra)
                       + ub.l1_residual(b, v * sv, s.g + eps * jnp.log(v), rb))
            hard = ~(jnp.isfinite(err) & (rmin > hard_lo) & (rmax < hard_hi)
                     & (smin > hard_lo) & (smax < hard_hi))
            soft = (rmin < lo) | (rmax > hi) | (smin < lo) | (smax > hi)
            for z, relaxed_side in ((u, ra), (v, rb)):  # a relaxed scaling is not 1 / r
                if relaxed_side is not None:
                    hard = hard | ~((jnp.min(z) > hard_lo) & (jnp.max(z) < hard_hi))
                    soft = soft | (jnp.min(z) < lo) | (jnp.max(z) > hi)
            o = st.outer
            rec = _record(o, pb, o.f, o.g, ratio, err, n, check_every)
            report(progress, rec.it, err, eps, ~hard)  # a discarded block is redone, not shown
            stage_change = rec.stage != o.stage
            ex = jnp.where(rec.done | stage_change | (rec.it >= max_iter), 1,
                           jnp.where(soft, 2, 0))
            new = _Inner(u, v, r, rec, ex)
            bad = _Inner(st.u, st.v, st.r, o._replace(use_log=jnp.array(True)), jnp.array(3))
            return jax.tree_util.tree_map(lambda x, y: jnp.where(hard, x, y), bad, new)

        init = _Inner(one_n, one_m, jnp.matmul(K, b, precision=HIGHEST),
                      s._replace(use_log=jnp.array(False)), jnp.array(0))
        st = jax.lax.while_loop(lambda st: st.exit == 0, inner_body, init)
        f, g = s.f + eps * jnp.log(st.u), s.g + eps * jnp.log(st.v)
        if ub.is_balanced(pb.rho):  # a relaxed problem has no gauge freedom
            f, g = gauge(f, g, a, b)
        return st.outer._replace(f=f, g=g)

    log_body = _log_body(check_every, progress, max_iter)

    def log_block(pb: Problem, s: LoopState):  # one log-domain block, then back to the kernel
        return log_body(pb, s)._replace(use_log=jnp.array(False))

    def body(s: LoopState):  # batched: the log block runs only when some element needs it
        use_log = s.use_log
        if not ub.is_balanced(pb.rho):  # a kernel-path floor above tol: log blocks only
            use_log = use_log | ub.kernel_floor_too_high(pb.rho, pb.eps, pb.tol)
        return batch_cond(use_log, log_block, kernel_block, pb, s)

    return jax.lax.while_loop(cond_outer, body, state)


def initial_state(f, g, n_checks, dtype, accelerate=True) -> LoopState:
    """Start of a loop at ``(f, g)``; ``accelerate=False`` keeps omega at 1 (plain Sinkhorn)."""
    return LoopState(f=f, g=g, stage=jnp.array(0), it=jnp.array(0),
                     err=jnp.asarray(jnp.inf, dtype), errors=-jnp.ones((n_checks,), dtype),
                     done=jnp.array(False), failed=jnp.array(False), use_log=jnp.array(False),
                     ratio=jnp.ones_like(f), omega=jnp.asarray(1.0, dtype),
                     omega_cap=jnp.asarray(OMEGA_MAX if accelerate else 1.0, dtype),
                     ref_err=jnp.asarray(jnp.inf, dtype))


def final_status(state: LoopState, input_status):
    solve = jnp.where(state.failed, Status.NUMERICAL,
                      jnp.where(state.done, Status.SUCCESS, Status.MAX_ITER))
    return jnp.where(input_status != Status.SUCCESS, input_status, solve).astype(jnp.int32)
