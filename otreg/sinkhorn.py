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
import numpy as np

from otreg import _checks, implicit
from otreg import _sinkhorn_loops as loops
from otreg import _unbalanced as ub
from otreg._geom_checks import repair_geometry, validate_geometry_values
from otreg._repr import result_repr
from otreg.geometry import CostMatrix, as_geometry
from otreg.status import Status

__all__ = ["sinkhorn", "SinkhornResult", "SolverStats"]

# anneal only when max(C) / epsilon exceeds this: in float32 above 100, in float64 above 700 (just
# under 708, where exp(-max(C) / epsilon) underflows and the kernel path would need log-domain
# blocks). Measured 2026-12-02 with over-relaxation (benchmarks/RESULTS.md, "Annealing"): at
# max(C) / epsilon = 200 annealing is 1.25-1.6x faster in float32 at d = 64 (the kernel underflows
# there, exp(-200) < 1e-38) but 1.15-1.5x slower in float64 (its stages only add sweeps).
ANNEAL_MIN_RATIO = 100.0
ANNEAL_MIN_RATIO_F64 = 700.0
INIT_KEEP_TOL = 1.0  # with anneal=True, a warm start is kept when its L1 error is below this
# Below these tolerances a SUCCESS is re-checked on the returned (gauged, rounded) potentials:
# folding the scalings into f, g and the gauge shift round each potential to the dtype, which
# moves the plan's marginals by about |f| ulp / eps (float32, |f| ~ 1, eps = 0.005: ~1e-5 per
# row). Above them that is far below tol (benchmarks/float32_floor.py).
VERIFY_BELOW = {"float32": 1e-4, "float64": 1e-10}


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


def _default_progress(it, err, eps):
    print(f"sinkhorn: iteration {int(it):6d}  error {float(err):.3e}  epsilon {float(eps):.3g}",
          flush=True)


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


class Prepared(NamedTuple):
    """A validated, repaired problem ready for a loop (see :func:`prepare`)."""

    live: Any  # the geometry to differentiate through (dense clouds materialised)
    a: jax.Array
    b: jax.Array
    eps: jax.Array  # resolved, stop-gradient, positive
    eps_live: jax.Array  # resolved, differentiable when the caller's epsilon is
    status: jax.Array  # input status
    pb: loops.Problem  # stop-gradient problem for the loops
    state: loops.LoopState
    geom: Any  # repaired input geometry (returned in the result)
    in_dtype: Any
    rho: Any = None  # relaxed marginals (rho_a, rho_b), differentiable; None: balanced


def prepare(geom, a, b, epsilon, tol, init, max_abs, *, max_iter, check_every, anneal,
            decay, accelerate=True, relax=None) -> Prepared:
    """Shared preamble of the entropic solvers (inside ``jit``): dtype, uniform/repaired weights,
    repaired geometry, resolved epsilon and relaxation (``relax``: a spec from
    :func:`otreg._unbalanced.parse`), annealing schedule and warm start."""
    geom, a, b, status, in_dtype = _checks.solve_dtype_and_weights(
        geom, a, b, check_mass=relax is None)
    dtype = a.dtype
    geom, finite, max_cost, mean_cost = repair_geometry(geom, max_abs)
    status = jnp.where(finite, status, Status.NONFINITE_INPUT)

    live = geom.materialize()  # dense clouds become C(x, y): differentiable in x, y
    solve_geom = jax.tree_util.tree_map(jax.lax.stop_gradient, live)
    a_s, b_s = jax.lax.stop_gradient(a), jax.lax.stop_gradient(b)
    sg = jax.lax.stop_gradient
    default_eps = lambda: 0.05 * sg(mean_cost())  # noqa: E731
    if epsilon is None:
        eps_live = default_eps().astype(dtype)
    else:  # a traced epsilon that is not positive finite: the default, reported BAD_PARAMETER
        eps_live = jnp.asarray(epsilon).astype(dtype)
        bad_eps = ~(jnp.isfinite(eps_live) & (eps_live > 0))
        eps_live = jnp.where(bad_eps, default_eps().astype(dtype), eps_live)
        status = jnp.where(bad_eps, Status.BAD_PARAMETER, status).astype(jnp.int32)
    eps_live = jnp.maximum(eps_live, jnp.finfo(dtype).tiny)
    eps = sg(eps_live)
    rho, bad_rho = ub.resolve(relax, eps_live, dtype)
    status = jnp.where(bad_rho & (status == Status.SUCCESS), Status.BAD_PARAMETER,
                       status).astype(jnp.int32)
    rho_s = None if rho is None else tuple(None if r is None else sg(r) for r in rho)
    n, m = live.shape
    f0, g0 = jnp.zeros((n,), dtype), jnp.zeros((m,), dtype)
    n_stages = jnp.array(0, jnp.int32)
    if anneal:
        # stages eps / decay^k, k = n_stages..0, the largest one not above max(C); only when
        # max(C) / eps above the dtype's threshold (ANNEAL_MIN_RATIO*: where the kernel from zero
        # potentials underflows)
        ratio = sg(max_cost()) / eps
        n_stages = jnp.floor(jnp.log(ratio) / np.log(1.0 / decay))
        threshold = ANNEAL_MIN_RATIO_F64 if dtype == jnp.float64 else ANNEAL_MIN_RATIO
        n_stages = jnp.where(ratio > threshold, jnp.clip(n_stages, 0, 64), 0)
        n_stages = n_stages.astype(jnp.int32)
    if init is not None:
        fi, gi = (jax.lax.stop_gradient(jnp.asarray(z, dtype)) for z in init)
        if anneal:  # keep the warm start only if it is already close; else anneal from zero
            if rho is None:
                rows = a_s * jnp.exp(fi / eps + solve_geom.lse(gi / eps, eps, 1, b_s))
                cols = b_s * jnp.exp(gi / eps + solve_geom.lse(fi / eps, eps, 0, a_s))
                err = jnp.sum(jnp.abs(rows - a_s)) + jnp.sum(jnp.abs(cols - b_s))
            else:
                err = ub.residual(solve_geom, a_s, b_s, eps, fi, gi, rho_s)
            keep = err <= INIT_KEEP_TOL
            fi, gi = jnp.where(keep, fi, f0), jnp.where(keep, gi, g0)
            n_stages = jnp.where(keep, 0, n_stages)
        else:
            n_stages = jnp.array(0, jnp.int32)
        f0, g0 = fi, gi
    eps0 = eps / decay ** n_stages.astype(dtype)
    pb = loops.Problem(solve_geom, a_s, b_s, eps, eps0, n_stages, decay, jnp.asarray(tol, dtype),
                       rho_s)
    state = loops.initial_state(f0, g0, -(-max_iter // check_every), dtype, accelerate)
    return Prepared(live, a, b, eps, eps_live, status, pb, state, geom, in_dtype, rho)


def finish(p: Prepared, f, g, ratio, *, converged, n_iters, error, errors, status, stats,
           implicit_diff, cg_tol, cg_max_iter, tol) -> SinkhornResult:
    """Shared epilogue: implicit potentials (if asked), gauge, a SUCCESS re-checked on the
    returned potentials against the caller's ``tol`` (:func:`_verify`), envelope value,
    result."""
    live, a, b, eps, eps_live, rho = p.live, p.a, p.b, p.eps, p.eps_live, p.rho
    if implicit_diff:
        f, g = implicit.implicit_potentials(live, a, b, eps_live, f, g, rho, cg_tol,
                                            cg_max_iter)
    if rho is None:  # a relaxed problem has no gauge freedom
        f, g = loops.gauge(f, g, a, b)
    sg = jax.lax.stop_gradient
    dtype = eps.dtype
    tol = jnp.asarray(tol, dtype)
    error, status = _verify(p.pb._replace(tol=tol), sg(f), sg(g), sg(error), status,
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


def _verify(pb: loops.Problem, f, g, error, status, cond=jax.lax.cond):
    """A SUCCESS at ``tol < VERIFY_BELOW[dtype]`` is re-checked on the returned potentials
    (two log-sum-exp passes, blockwise when blocked): their L1 marginal error becomes the
    reported ``error``, and above ``tol`` the status is ``STALLED`` (``tol`` is below the
    dtype's floor for this problem), never a SUCCESS the returned plan does not meet. The
    check runs in the solve's dtype: in float32 its own rounding is a few percent of the error
    near the floor (``benchmarks/float32_floor.py`` compares it with float64).
    ``cond``: :func:`otreg._sinkhorn_loops.batch_cond` (a batch runs the check only when some
    element needs it) except in the reverse-differentiated unrolled mode (``lax.cond``)."""
    a, b, eps, tol = pb.a, pb.b, pb.eps, pb.tol
    below = VERIFY_BELOW["float64" if eps.dtype == jnp.float64 else "float32"]
    need = (status == Status.SUCCESS) & (tol < below)

    def check(geom, a, b, eps, f, g, rho, error):
        if rho is None:
            rows = a * jnp.exp(f / eps + geom.lse(g / eps, eps, 1, b))
            cols = b * jnp.exp(g / eps + geom.lse(f / eps, eps, 0, a))
            err = jnp.sum(jnp.abs(rows - a)) + jnp.sum(jnp.abs(cols - b))
        else:
            err = ub.residual(geom, a, b, eps, f, g, rho)
        return jnp.where(jnp.isfinite(err), err, jnp.inf).astype(error.dtype)

    err = cond(need, check, lambda *ops: ops[-1], pb.geom, a, b, eps, f, g, pb.rho, error)
    status = jnp.where(need & ~(err <= tol), Status.STALLED, status).astype(jnp.int32)
    return err, status


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


def _dtype_of(geom):
    return jnp.dtype(jnp.float64 if geom.dtype == jnp.float64 else jnp.float32)


def validate_problem(fn, geom, a, b, epsilon, tol, init, progress, balanced=True):
    """Checks shared by the entropic solvers (outside ``jit``). Returns
    ``(geom, a, b, max_abs, tol, init, progress)`` with defaults resolved. ``balanced=False``
    (relaxed marginals): unequal masses are allowed."""
    geom = as_geometry(geom, fn)
    n, m = geom.shape
    dtype = _dtype_of(geom)
    if a is not None or b is not None:  # None: uniform, built inside the solve (no checks)
        a = _checks.check_weights(a, n, "a", dtype, fn)
        b = _checks.check_weights(b, m, "b", dtype, fn)
        _checks.check_weight_values(a, b, fn, check_mass=balanced)
    max_abs = validate_geometry_values(geom, fn)
    _checks.check_epsilon(epsilon, fn)
    tol = (1e-6 if dtype == jnp.float64 else 1e-3) if tol is None else tol
    _checks.check_positive_float(tol, "tol", fn)
    if init is not None:
        if not (isinstance(init, (tuple, list)) and len(init) == 2):
            raise TypeError(f"{fn}: `init` must be a pair (f, g), got {type(init).__name__}.")
        for name, z, size in (("init[0] (f)", init[0], n), ("init[1] (g)", init[1], m)):
            z = _checks.float_array(z, name, 1, fn)
            if z.shape[0] != size:
                raise ValueError(f"{fn}: `{name}` must have shape ({size},), got {z.shape}.")
        init = tuple(init)
    if progress is True:
        progress = _default_progress
    elif progress is False or progress is None:
        progress = None
    elif not callable(progress):
        raise TypeError(f"{fn}: `progress` must be a bool or a callable, got {progress!r}.")
    return geom, a, b, max_abs, tol, init, progress


def validate_cg(fn, geom, cg_tol, cg_max_iter):
    """``(cg_tol, cg_max_iter)`` of the implicit backward pass, defaults resolved."""
    dtype = _dtype_of(geom)
    cg_tol = (1e-8 if dtype == jnp.float64 else 1e-5) if cg_tol is None else cg_tol
    if not isinstance(cg_tol, (float, int)) or not 0 < cg_tol < 1:
        raise ValueError(f"{fn}: `cg_tol` must be a Python float in (0, 1), got {cg_tol!r}.")
    return float(cg_tol), _checks.check_positive_int(cg_max_iter, "cg_max_iter", fn)


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
        balanced problem, ``rho -> 0`` the trivial plan :math:`a_i b_j e^{-C_{ij}/\varepsilon}`
        (the marginals cost nothing).
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
