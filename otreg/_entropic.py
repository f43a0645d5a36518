"""Shared preamble of the entropic solvers (:func:`otreg.sinkhorn`, :func:`otreg.sns`): the
checks outside ``jit`` (:func:`validate_problem`, :func:`validate_cg`), the in-graph problem set-up
(:func:`prepare`: dtype, repaired weights and geometry, epsilon, relaxation, annealing schedule,
warm start) and the re-check of a SUCCESS on the returned potentials (:func:`verify`). The result
type and the epilogue that builds it live in :mod:`otreg.sinkhorn`."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from otreg import _checks
from otreg import _sinkhorn_loops as loops
from otreg import _unbalanced as ub
from otreg._geom_checks import repair_geometry, validate_geometry_values
from otreg.geometry import as_geometry
from otreg.status import Status

__all__ = ["prepare", "Prepared", "verify", "marginal_error", "validate_problem", "validate_cg",
           "VERIFY_BELOW", "ANNEAL_MIN_RATIO", "ANNEAL_MIN_RATIO_F64", "INIT_KEEP_TOL"]

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


def _default_progress(it, err, eps):
    print(f"sinkhorn: iteration {int(it):6d}  error {float(err):.3e}  epsilon {float(eps):.3g}",
          flush=True)


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
    rho, bad_rho = ub.resolve(relax, eps_live, dtype, max_cost)
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
            err = marginal_error(solve_geom, a_s, b_s, eps, fi, gi, rho_s)
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


def marginal_error(geom, a, b, eps, f, g, rho):
    r"""The error at ``(f, g)`` from two log-sum-exp passes (blockwise when blocked): the L1
    marginal error :math:`\|P1 - a\|_1 + \|P^\top 1 - b\|_1`, or the relaxed residual
    (:func:`otreg._unbalanced.residual`) when ``rho`` is not None."""
    if rho is not None:
        return ub.residual(geom, a, b, eps, f, g, rho)
    rows = a * jnp.exp(f / eps + geom.lse(g / eps, eps, 1, b))
    cols = b * jnp.exp(g / eps + geom.lse(f / eps, eps, 0, a))
    return jnp.sum(jnp.abs(rows - a)) + jnp.sum(jnp.abs(cols - b))


def verify(pb: loops.Problem, f, g, error, status, cond=jax.lax.cond):
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
        err = marginal_error(geom, a, b, eps, f, g, rho)
        return jnp.where(jnp.isfinite(err), err, jnp.inf).astype(error.dtype)

    err = cond(need, check, lambda *ops: ops[-1], pb.geom, a, b, eps, f, g, pb.rho, error)
    status = jnp.where(need & ~(err <= tol), Status.STALLED, status).astype(jnp.int32)
    return err, status


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
