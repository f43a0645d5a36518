r"""Entropic optimal transport by Sinkhorn's algorithm: :func:`sinkhorn`, :class:`SinkhornResult`.

Solves

.. math::
    \mathrm{OT}_\varepsilon(a, b) = \min_{P \in U(a, b)} \langle P, C\rangle
        + \varepsilon\,\mathrm{KL}(P \,|\, a \otimes b),

through its dual potentials :math:`(f, g)`,
:math:`P_{ij} = a_i b_j e^{(f_i + g_j - C_{ij})/\varepsilon}`
(Cuturi 2013; log-domain stabilisation and absorption: Schmitzer 2019; epsilon scaling: Kosowsky &
Yuille 1994, Feydy 2020). The iterations themselves live in :mod:`otreg._sinkhorn_loops`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from otreg import _checks, implicit
from otreg import _sinkhorn_loops as loops
from otreg import _unbalanced as ub
from otreg._entropic import Prepared, prepare, validate_cg, validate_problem, verify
from otreg._repr import result_repr
from otreg.geometry import CostMatrix
from otreg.status import Status

__all__ = ["sinkhorn", "SinkhornResult", "SolverStats"]


class SinkhornResult(NamedTuple):
    """Output of :func:`sinkhorn` (a pytree: it passes through ``jit`` and ``vmap``).

    Attributes:
      cost: :math:`\\langle P, C\\rangle + \\varepsilon \\mathrm{KL}(P | a \\otimes b)` at the
        returned potentials, evaluated as the dual objective; differentiable with respect to the
        cost (C, or x and y), ``a`` and ``b`` by the envelope theorem (no linear solve).
      f, g: dual potentials in cost units, in the gauge :math:`\\langle f, a\\rangle =
        \\langle g, b\\rangle` (held constant under differentiation).
      converged: whether the L1 marginal error reached ``tol`` at the target epsilon.
      n_iters: Sinkhorn sweeps run (all annealing stages).
      error: final L1 marginal error :math:`\\|P1 - a\\|_1 + \\|P^\\top 1 - b\\|_1`.
        Below ``tol`` 1e-4 (float32; 1e-10 in float64) a SUCCESS is re-checked on the returned
        potentials and ``error`` is theirs (STALLED when it misses ``tol``).
      errors: ``errors[k]`` is the last error measured at an iteration in
        ``(k * check_every, (k + 1) * check_every]``; -1 where none was.
      status: result code; ``otreg.explain(status)`` says what it means.
      geom, a, b, epsilon: the problem solved (weights after validation, epsilon resolved), in
        the solve's dtype.
      stats: :class:`SolverStats` (Sinkhorn sweeps, Newton steps, CG products, fallbacks).
      rho: the relaxation solved, ``(rho_a, rho_b)`` (None on a hard side; ``tau`` converted),
        or None for balanced OT.
      fg_solve: ``(f, g)`` in the solve's dtype (float32) when the input was bfloat16 or
        float16, else None. ``cost``, ``f``, ``g``, ``error``, ``errors`` and the outputs of
        ``plan()``, ``apply()``, ``marginals()`` are in the input dtype; the methods compute
        from ``fg_solve``, so only their output is rounded (not potentials divided by eps).
    """

    cost: jax.Array
    f: jax.Array
    g: jax.Array
    converged: jax.Array
    n_iters: jax.Array
    error: jax.Array
    errors: jax.Array
    status: jax.Array
    geom: Any
    a: jax.Array
    b: jax.Array
    epsilon: jax.Array
    stats: Any = None
    fg_solve: Any = None
    rho: Any = None

    def __repr__(self) -> str:
        return result_repr("SinkhornResult", self,
                           ("cost", "converged", "n_iters", "error", "epsilon"))

    def _fg(self):
        """``(f, g, output dtype)``: the solve's potentials and the input dtype."""
        f, g = (self.f, self.g) if self.fg_solve is None else self.fg_solve
        return f, g, self.f.dtype

    def plan(self) -> jax.Array:
        """The dense transport plan (n x m); materialises it, also for blocked geometries."""
        f, g, dtype = self._fg()
        return self.geom.plan(f, g, self.a, self.b, self.epsilon).astype(dtype)

    def apply(self, v: jax.Array, axis: int = 1) -> jax.Array:
        """``P @ v`` (``axis=1``, v: (m,) or (m, k)) or ``P.T @ v`` (``axis=0``), blockwise when
        the geometry is blocked (no n x m buffer)."""
        if axis not in (0, 1):
            raise ValueError(f"SinkhornResult.apply: `axis` must be 0 or 1, got {axis!r}.")
        v = jnp.asarray(v)
        expected = self.b.shape[0] if axis == 1 else self.a.shape[0]
        if v.ndim not in (1, 2) or v.shape[0] != expected:
            raise ValueError(f"SinkhornResult.apply: `v` must have shape ({expected},) or "
                             f"({expected}, k) for axis={axis}, got {tuple(v.shape)}.")
        vec = v.ndim == 1
        f, g, dtype = self._fg()
        out = self.geom.apply_plan(f, g, self.a, self.b, self.epsilon,
                                   v[:, None] if vec else v, axis)
        out = out.astype(jnp.result_type(dtype, v.dtype))
        return out[:, 0] if vec else out

    def marginals(self) -> tuple[jax.Array, jax.Array]:
        """``(P 1, P^T 1)``, by two log-sum-exp reductions (blockwise when blocked)."""
        eps = self.epsilon
        f, g, dtype = self._fg()
        rows = self.a * jnp.exp(f / eps + self.geom.lse(g / eps, eps, 1, self.b))
        cols = self.b * jnp.exp(g / eps + self.geom.lse(f / eps, eps, 0, self.a))
        return rows.astype(dtype), cols.astype(dtype)


class SolverStats(NamedTuple):
    """Work counts of a solve (same fields for every entropic solver, so results share a type).

    Attributes:
      n_sinkhorn: Sinkhorn sweeps (all annealing stages, warm-up and fallbacks included).
      n_newton: Newton steps taken (0 for :func:`sinkhorn`).
      n_cg: conjugate-gradient matrix-vector products over all Newton steps.
      n_fallback: Newton steps whose line search failed and were replaced by Sinkhorn sweeps.
    """

    n_sinkhorn: jax.Array
    n_newton: jax.Array
    n_cg: jax.Array
    n_fallback: jax.Array

    def __repr__(self) -> str:
        return result_repr("SolverStats", self, self._fields)


def finish(p: Prepared, f, g, ratio, *, converged, n_iters, error, errors, status, stats,
           implicit_diff, cg_tol, cg_max_iter, tol) -> SinkhornResult:
    """Shared epilogue: implicit potentials (if asked), gauge, a SUCCESS re-checked on the
    returned potentials against the caller's ``tol`` (:func:`otreg._entropic.verify`),
    envelope value, result."""
    live, a, b, eps, eps_live, rho = p.live, p.a, p.b, p.eps, p.eps_live, p.rho
    if implicit_diff:
        f, g = implicit.implicit_potentials(live, a, b, eps_live, f, g, rho, cg_tol,
                                            cg_max_iter)
    if rho is None:  # a relaxed problem has no gauge freedom
        f, g = loops.gauge(f, g, a, b)
    sg = jax.lax.stop_gradient
    dtype = eps.dtype
    tol = jnp.asarray(tol, dtype)
    error, status = verify(p.pb._replace(tol=tol), sg(f), sg(g), sg(error), status,
                            cond=loops.batch_cond if implicit_diff else jax.lax.cond)
    converged = status == Status.SUCCESS
    cost = implicit.envelope_value(live, a, b, eps_live, sg(f), sg(g), sg(ratio), cg_tol,
                                   cg_max_iter, rho=rho)
    geom = p.geom
    return cast_result(SinkhornResult(
        cost=cost, f=f, g=g, converged=converged, n_iters=n_iters,
        error=error, errors=errors, status=status, a=a, b=b, epsilon=eps,
        # a CostMatrix leaves as its fill value only: returning C would copy n x m each call
        geom=geom.fill if isinstance(geom, CostMatrix) else geom, stats=stats,
        rho=None if rho is None else tuple(None if r is None else sg(r) for r in rho)),
        p.in_dtype)


def cast_result(res: SinkhornResult, dtype) -> SinkhornResult:
    """``res`` with its values (cost, f, g, error, errors) in ``dtype``, the input's, and the
    solve's potentials kept in ``fg_solve`` for the methods; ``res`` when ``dtype`` is the
    solve's."""
    if jnp.dtype(dtype) == res.f.dtype:
        return res
    c = lambda z: z.astype(dtype)  # noqa: E731
    return res._replace(cost=c(res.cost), f=c(res.f), g=c(res.g), error=c(res.error),
                        errors=c(res.errors), fg_solve=(res.f, res.g))


def reattach(res: SinkhornResult, geom) -> SinkhornResult:
    """Outside ``jit``: put the caller's cost matrix back into the result (no copy)."""
    if isinstance(geom, CostMatrix):
        C = geom.cost_matrix
        C = C if C.dtype == res.geom.dtype else C.astype(res.geom.dtype)
        res = res._replace(geom=CostMatrix(C, res.geom))
    return res


@functools.partial(jax.jit, static_argnames=("max_iter", "check_every", "anneal", "decay",
                                             "progress", "mode", "implicit_diff", "cg_tol",
                                             "cg_max_iter", "accelerate", "relax_kind"))
def _solve(geom, a, b, epsilon, tol, init, max_abs, relax_values=None, *, max_iter, check_every,
           anneal, decay, progress, mode, implicit_diff, cg_tol, cg_max_iter, accelerate,
           relax_kind=None):
    # the unrolled (differentiated) iterations stay plain: omega is a data-dependent choice
    p = prepare(geom, a, b, epsilon, tol, init, max_abs, max_iter=max_iter,
                check_every=check_every, anneal=anneal, decay=decay,
                accelerate=accelerate and implicit_diff,
                relax=None if relax_kind is None else (relax_kind, relax_values))
    kw = dict(max_iter=max_iter, check_every=check_every, progress=progress)
    if implicit_diff:
        use_kernel = mode == "kernel" or (mode == "auto" and not p.live.is_blocked)
        loop = functools.partial(loops.kernel_loop if use_kernel else loops.log_loop, **kw)
        state = loops.batch_aware(loop)(p.pb, p.state)
    else:  # differentiate through the (checkpointed, log-domain) iterations themselves
        state = loops.unrolled_loop(p.pb._replace(geom=p.live, a=p.a, b=p.b), p.state, **kw)
    zero = jnp.array(0, jnp.int32)
    stats = SolverStats(state.it, zero, zero, zero)
    return finish(p, state.f, state.g, state.ratio, converged=state.done & ~state.failed,
                  n_iters=state.it, error=state.err, errors=state.errors,
                  status=loops.final_status(state, p.status), stats=stats,
                  implicit_diff=implicit_diff, cg_tol=cg_tol, cg_max_iter=cg_max_iter, tol=tol)


def sinkhorn(
    geom: Any,
    a: jax.Array | None = None,
    b: jax.Array | None = None,
    *,
    epsilon: float | jax.Array | None = None,
    tol: float | None = None,
    max_iter: int = 10_000,
    anneal: bool = True,
    check_every: int = 10,
    init: tuple[jax.Array, jax.Array] | None = None,
    progress: bool | Callable = False,
    implicit_diff: bool = True,
    mode: str = "auto",
    anneal_decay: float = 0.1,
    cg_tol: float | None = None,
    cg_max_iter: int = 1000,
    accelerate: bool = True,
    rho: float | jax.Array | tuple | None = None,
    tau: float | jax.Array | tuple | None = None,
) -> SinkhornResult:
    r"""Entropic OT between ``a`` and ``b`` on a geometry, by Sinkhorn iterations; balanced, or
    unbalanced / semi-relaxed with ``rho`` (or ``tau``).

    .. math::
        \min_{P \ge 0,\, P1 = a,\, P^\top 1 = b} \langle P, C\rangle
            + \varepsilon\, \mathrm{KL}(P \,|\, a \otimes b)

    and, with ``rho = (rho_a, rho_b)``, the marginal constraints become penalties:

    .. math::
        \min_{P \ge 0} \langle P, C\rangle + \varepsilon\,\mathrm{KL}(P \,|\, a \otimes b)
            + \rho_a \mathrm{KL}(P1 \,|\, a) + \rho_b \mathrm{KL}(P^\top 1 \,|\, b)

    (generalised KL, :math:`\mathrm{KL}(p|q) = \langle p, \log(p/q)\rangle - m(p) + m(q)`;
    Chizat et al. 2018, "Scaling algorithms for unbalanced optimal transport problems").

    Args:
      geom: a :class:`~otreg.CostMatrix`, a :class:`~otreg.PointCloud` (blocked or not), or a raw
        (n, m) cost array.
      a, b: non-negative weights (n,) and (m,) with equal sums; ``None`` is uniform.
      epsilon: regularisation in cost units; ``None`` is ``0.05 * mean(C)``.
      tol: target L1 marginal error; default 1e-3 in float32, 1e-6 in float64.
      max_iter: most Sinkhorn sweeps (all stages; the last block may overrun by less than
        ``check_every``).
      anneal: when ``max(C) / epsilon`` exceeds 100 in float32 or 700 in float64 (where the
        kernel from zero potentials underflows), geometric epsilon decay from ``max(C)`` down to
        ``epsilon`` by ``anneal_decay`` per stage, each stage warm-started and run one sweep at a
        time until its error is below 0.01, the last one to ``tol`` at ``epsilon`` (the result
        is the target-epsilon solution). With ``init``: the warm start is kept when its L1
        marginal error is below 1 (of at most 4), otherwise the solve anneals from zero.
      check_every: sweeps between error checks (and ``progress`` reports).
      init: warm start ``(f, g)`` in cost units (e.g. a previous result's ``f, g``); with
        ``anneal=False`` it is always used.
      progress: ``True`` prints ``(iteration, error, epsilon)`` after every accepted block via
        ``jax.debug.callback``; a callable receives those three values (Python numbers)
        instead. Opt-in: it is the only host callback in otreg, and host callbacks can
        deadlock under JAX's asynchronous CPU dispatch (jax issue #25861); keep the callable
        free of JAX calls. With ``progress=False`` (the default) the graph holds no callback.
      implicit_diff: how ``f``, ``g`` and everything built on them (``plan()``, ``apply()``)
        are differentiated. ``True``: implicitly (:mod:`otreg.implicit`, a conjugate-gradient
        solve in the backward pass, memory independent of the iteration count). ``False``:
        through the iterations, run as a checkpointed ``lax.scan`` of log-domain blocks (every
        geometry; no absorbed kernel; costs ``max_iter / check_every`` scan steps of bookkeeping).
      mode: ``"auto"`` (absorbed kernel on materialised costs, log-domain on blocked clouds),
        ``"kernel"`` or ``"log"``.
      anneal_decay: ratio between consecutive stage epsilons, in (0, 1).
      cg_tol, cg_max_iter: conjugate-gradient tolerance (relative; default 1e-5 in float32,
        1e-8 in float64) and iteration cap of the implicit backward pass.
      accelerate: over-relax the sweeps at the target epsilon, :math:`f \leftarrow (1 - \omega)
        f + \omega \hat f`, with :math:`\omega \in [1, 1.95]` raised from the measured
        contraction rate once the error is below 0.1, and reset to 1 when a block's error grows
        (Lehmann et al. 2021; see ``otreg._sinkhorn_loops.relax``). The fixed point, and so the
        result, is the same; only the sweep count changes. ``implicit_diff=False`` always runs
        plain sweeps.
      rho: marginal penalty, a scalar for both sides or a pair ``(rho_a, rho_b)``; ``None`` or
        ``inf`` on a side keeps that marginal hard (one hard side: semi-relaxed OT). In cost
        units, independent of epsilon: a mass deviation costs about ``rho`` times its KL.
        **POT**: ``ot.unbalanced.sinkhorn_unbalanced(a, b, C, reg=epsilon, reg_m=(rho_a,
        rho_b), reg_type="kl")`` solves the same problem. **GeomLoss**: its ``reach`` is
        ``rho = reach ** p`` in its own cost units; its ``p = 2`` cost is ``|x - y|^2 / 2``, so
        with the squared Euclidean cost here ``rho = 2 * reach ** 2`` (and ``epsilon = 2 *
        blur ** 2``). The masses of ``a`` and ``b`` may differ. ``rho -> inf`` is the
        balanced problem (a rho above ``max(max C, epsilon) / dtype epsilon``, where the
        dtype cannot tell them apart, is capped there), ``rho -> 0`` the trivial plan
        :math:`a_i b_j e^{-C_{ij}/\varepsilon}` (the marginals cost nothing).
      tau: the same relaxation as OTT-JAX's ``tau_a, tau_b``: :math:`\tau = \rho / (\rho +
        \varepsilon)` in (0, 1], 1 a hard side; converted to ``rho = epsilon tau / (1 - tau)``
        at the target epsilon (pass ``rho`` or ``tau``, not both). OTT-JAX's entropy is
        relative to the counting measure, not to ``a (x) b``: its unbalanced problem on ``C``
        is this one on ``C + epsilon (log a (+) log b)`` (same plan). Under relaxation the
        updates are the damped ones :math:`f \leftarrow \tau_a\, T_b(g)` (in both the kernel
        and the log-domain path, with annealing and warm starts), ``error`` and ``tol`` refer
        to the L1 residual of the optimality conditions,
        :math:`\|P1 - a e^{-f/\rho_a}\|_1 + \|P^\top 1 - b e^{-g/\rho_b}\|_1` (zero exactly
        at the fixed point; the balanced L1 marginal error on a hard side), ``cost`` is the
        unbalanced dual objective :math:`\sum_i a_i \rho_a (1 - e^{-f_i/\rho_a}) + \sum_j
        b_j \rho_b (1 - e^{-g_j/\rho_b}) - \varepsilon \langle a\otimes b,
        e^{(f \oplus g - C)/\varepsilon} - 1\rangle` (equal to the primal objective above at
        the optimum; envelope gradients), implicit differentiation uses the relaxed dual
        Hessian, and the potentials have no gauge shift (they are unique).

    Returns:
      :class:`SinkhornResult`. Cost per sweep: two (n x m) matrix-vector products on materialised
      costs (two log-sum-exp passes when falling back, or on blocked clouds: O(nmd) with cost
      evaluation, O((n + m) block_size) memory).

    Raises:
      TypeError / ValueError: bad shapes, dtypes, options, ``epsilon <= 0``; and, for concrete
        inputs, negative or non-finite weights, unequal masses, non-finite costs. Under ``jit``
        the latter are repaired to finite values and reported in ``status`` instead.

    Failure modes: ``converged`` is False when ``max_iter`` runs out (small epsilon needs many
    sweeps; float32 cannot reach errors much below 1e-6). Gradients: ``cost`` by the envelope
    theorem (exact at convergence, no linear solve); ``f``, ``g``, ``plan()``, ``apply()`` as
    chosen by ``implicit_diff``. Atoms of zero weight get zero potential gradients.
    """
    fn = "sinkhorn"
    relax = ub.parse(rho, tau, fn)
    geom, a, b, max_abs, tol, init, progress = validate_problem(
        fn, geom, a, b, epsilon, tol, init, progress, balanced=relax is None)
    max_iter = _checks.check_positive_int(max_iter, "max_iter", fn)
    check_every = _checks.check_positive_int(check_every, "check_every", fn)
    _checks.check_option(mode, "mode", ("auto", "kernel", "log"), fn)
    if mode == "kernel" and getattr(geom, "is_blocked", False):
        raise ValueError(f"{fn}: mode='kernel' needs a materialised cost; a blocked PointCloud "
                         f"uses mode='log' (or 'auto').")
    for name, flag in (("anneal", anneal), ("implicit_diff", implicit_diff),
                       ("accelerate", accelerate)):
        if not isinstance(flag, bool):
            raise TypeError(f"{fn}: `{name}` must be True or False, got {flag!r}.")
    if not implicit_diff and mode == "kernel":
        raise ValueError(f"{fn}: implicit_diff=False differentiates log-domain iterations; "
                         f"use mode='auto' or 'log' with it.")
    cg_tol, cg_max_iter = validate_cg(fn, geom, cg_tol, cg_max_iter)
    _checks.check_positive_float(anneal_decay, "anneal_decay", fn, upper=1.0)
    res = _solve(geom, a, b, epsilon, tol, init, max_abs,
                 None if relax is None else relax[1], cg_tol=cg_tol, max_iter=max_iter,
                 check_every=check_every, anneal=anneal, decay=float(anneal_decay),
                 progress=progress, mode=mode, implicit_diff=implicit_diff,
                 cg_max_iter=cg_max_iter, accelerate=accelerate,
                 relax_kind=None if relax is None else relax[0])
    return reattach(res, geom)
