r"""Relaxed (unbalanced and semi-relaxed) marginals: the pieces every entropic solver shares.

The problem (Chizat, Peyré, Schmitzer, Vialard 2018, "Scaling algorithms for unbalanced optimal
transport problems"; Séjourné et al. 2019):

.. math::
    \min_{P \ge 0} \langle P, C\rangle + \varepsilon\,\mathrm{KL}(P \,|\, a \otimes b)
        + \rho_a \mathrm{KL}(P\mathbf 1 \,|\, a) + \rho_b \mathrm{KL}(P^\top \mathbf 1 \,|\, b),

with the generalised KL (``KL(p | q) = <p, log(p / q)> - m(p) + m(q)``) and
:math:`\rho = \infty` on a side meaning its marginal is a hard constraint. Its dual

.. math::
    D(f, g) = \sum_i a_i \varphi_a(f_i) + \sum_j b_j \varphi_b(g_j)
        - \varepsilon \langle a \otimes b, e^{(f \oplus g - C)/\varepsilon} - 1\rangle,
    \qquad \varphi(f) = -\rho\,(e^{-f/\rho} - 1) \quad (\varphi(f) = f \text{ when } \rho=\infty),

is maximised by the scaled Sinkhorn updates :math:`f \leftarrow \tau_a\, \mathcal T_b(g)`,
:math:`\tau = \rho / (\rho + \varepsilon)`, :math:`\mathcal T_b(g) = -\varepsilon \log \sum_j
b_j e^{(g_j - C_{ij})/\varepsilon}` the balanced update. At the optimum the marginals are
:math:`P\mathbf 1 = a\, e^{-f/\rho_a}` and :math:`P^\top \mathbf 1 = b\, e^{-g/\rho_b}`: the
**error** the solvers report (and stop on) is the L1 residual of these optimality conditions,

.. math::
    \| P\mathbf 1 - a\, e^{-f/\rho_a} \|_1 + \| P^\top\mathbf 1 - b\, e^{-g/\rho_b}\|_1,

zero exactly at the fixed point of the updates, and the balanced L1 marginal error when both
sides are hard.

Here a relaxation ``rho`` is ``None`` (balanced) or a pair ``(rho_a, rho_b)``, each ``None`` (a
hard side) or a positive scalar array. Every function is the balanced formula, unchanged
operation for operation, on a hard side.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from otreg._math import HIGHEST

__all__ = ["is_balanced", "side", "tau", "target", "phi", "mass_term", "l1_residual",
           "residual", "shift", "resolve", "parse"]


def is_balanced(rho) -> bool:
    """Both marginals hard (static)."""
    return rho is None or (rho[0] is None and rho[1] is None)


def side(rho, k: int):
    """``rho_a`` (k = 0) or ``rho_b`` (k = 1); None when hard."""
    return None if rho is None else rho[k]


def tau(r, eps):
    """The damping :math:`\\tau = \\rho / (\\rho + \\varepsilon) = 1 / (1 + \\varepsilon/\\rho)`
    of a relaxed side (finite, in (0, 1], also for rho = inf or tiny)."""
    return 1.0 / (1.0 + eps / r)


def target(pot, r):
    """:math:`e^{-f/\\rho}`: the ratio (marginal / weight) a relaxed side has at optimality."""
    return jnp.exp(-pot / r)


def phi(pot, r):
    """:math:`\\varphi(f) = -\\rho\\,(e^{-f/\\rho} - 1)` per atom (``pot`` itself when hard):
    the dual's mass term, also its derivative in the weight."""
    return pot if r is None else -r * jnp.expm1(-pot / r)


def mass_term(pot, w, r):
    """:math:`\\sum_i w_i \\varphi(f_i)`; :math:`\\langle f, w\\rangle` on a hard side."""
    return jnp.dot(phi(pot, r), w, precision=HIGHEST)


def l1_residual(w, ratio, pot, r):
    """:math:`\\sum_i w_i |\\mathrm{ratio}_i - e^{-f_i/\\rho}|` (``ratio`` = marginal / weight);
    the L1 marginal error :math:`\\sum_i w_i |\\mathrm{ratio}_i - 1|` on a hard side."""
    if r is None:
        return jnp.sum(w * jnp.abs(ratio - 1.0))
    return jnp.sum(w * jnp.abs(ratio - target(pot, r)))


def _log_mass(pot, w, r):
    r""":math:`\log \sum_i w_i e^{-f_i/\rho}`, or :math:`\log \sum_i w_i` on a hard side."""
    if r is None:
        return jnp.log(jnp.sum(w))
    return jax.nn.logsumexp(-pot / r, b=w)


def shift(f, g, a, b, rho):
    r"""The dual-optimal translation :math:`\lambda` of :math:`(f + \lambda, g - \lambda)`.

    The coupling term of the dual is invariant under it, so the dual restricted to that line is
    :math:`-\rho_a A e^{-\lambda/\rho_a} - \rho_b B e^{\lambda/\rho_b}` (+ const), with
    :math:`A = \sum a e^{-f/\rho_a}`, :math:`B = \sum b e^{-g/\rho_b}` (a hard side: its
    mass, and the linear term instead), maximised at
    :math:`\lambda = \log(A/B) / (1/\rho_a + 1/\rho_b)`: one exact coordinate ascent step
    along the direction plain scaled Sinkhorn contracts slowest along when rho is large
    (rate :math:`\tau^2`). The translation-invariant Sinkhorn of Séjourné, Vialard, Peyré
    (2022), "Faster unbalanced optimal transport: translation invariant Sinkhorn and 1-D
    Frank-Wolfe". O(n + m); only for a relaxed problem (balanced: no such direction)."""
    ra, rb = side(rho, 0), side(rho, 1)
    inv = sum(1.0 / r for r in (ra, rb) if r is not None)
    return (_log_mass(f, a, ra) - _log_mass(g, b, rb)) / inv


def kernel_floor_too_high(rho, eps, tol):
    """Whether the absorbed-kernel path cannot resolve ``tol`` on a relaxed side: it carries
    the potential as ``f + eps log u``, whose rounding (``eps`` times the dtype's epsilon) the
    residual's target ``e^{-f/rho}`` multiplies by ``1/rho``. Its floor is about ``eps / rho``
    times the dtype's epsilon (float32, eps / rho = 1e5: 1e-3, where the log-domain path,
    whose potentials stay near 0 at small rho, reaches 1e-6); above ``tol / 10`` the solve
    runs log-domain blocks only."""
    unit = jnp.finfo(eps.dtype).eps
    worst = sum(eps / r for r in rho if r is not None)
    return 10.0 * worst * unit > tol


def residual(geom, a, b, eps, f, g, rho):
    """The reported error at ``(f, g)``: two log-sum-exp passes (blockwise when blocked)."""
    rows = jnp.exp(f / eps + geom.lse(g / eps, eps, 1, b))
    cols = jnp.exp(g / eps + geom.lse(f / eps, eps, 0, a))
    return l1_residual(a, rows, f, side(rho, 0)) + l1_residual(b, cols, g, side(rho, 1))


def _check_scalar(value: Any, name: str, fn: str, lo: float, hi: float, hi_open: bool):
    """A real scalar (Python number or 0-d array); concrete values checked in (lo, hi]."""
    if isinstance(value, bool) or not (isinstance(value, (int, float)) or
                                       (hasattr(value, "shape") and np.ndim(value) == 0)):
        raise TypeError(f"{fn}: `{name}` must be a real scalar (or None), got "
                        f"{type(value).__name__} {value!r}.")
    if isinstance(value, jax.core.Tracer):
        return value
    if hasattr(value, "dtype") and not jnp.issubdtype(value.dtype, jnp.floating) and \
            not jnp.issubdtype(value.dtype, jnp.integer):
        raise TypeError(f"{fn}: `{name}` must be a real scalar, got dtype {value.dtype}.")
    v = float(np.asarray(value))
    if not (v > lo and (v < hi if hi_open else v <= hi)) or math.isnan(v):
        interval = f"({lo:g}, {hi:g}{')' if hi_open else ']'}"
        fix = ("use None (or inf) for a hard marginal" if name.startswith("rho")
               else "use 1 for a hard marginal; tau = rho / (rho + epsilon)")
        raise ValueError(f"{fn}: `{name}` must lie in {interval}, got {value!r}; {fix}.")
    return value


def parse(rho: Any, tau: Any, fn: str):
    """Validate the user's ``rho`` / ``tau`` (each a scalar or a pair ``(a side, b side)``).

    Returns ``None`` (balanced) or ``(kind, (va, vb))`` with ``kind`` "rho" or "tau" and each
    value ``None`` (hard: rho None or inf, tau 1) or the scalar as given (traced allowed)."""
    if rho is not None and tau is not None:
        raise ValueError(f"{fn}: pass `rho` or `tau`, not both (tau = rho / (rho + epsilon)).")
    if rho is None and tau is None:
        return None
    kind, value = ("rho", rho) if rho is not None else ("tau", tau)
    pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(pair) != 2:
        raise ValueError(f"{fn}: `{kind}` must be a scalar or a pair (for a, for b), got "
                         f"{len(pair)} values.")
    out = []
    for k, v in zip(("a", "b"), pair, strict=True):
        name = f"{kind}_{k}" if isinstance(value, (tuple, list)) else kind
        if v is None:
            if kind == "tau":
                raise ValueError(f"{fn}: `{name}` must be a number in (0, 1]; 1 is a hard "
                                 f"marginal.")
            out.append(None)
            continue
        if kind == "rho":
            v = _check_scalar(v, name, fn, 0.0, math.inf, hi_open=False)
            hard = not isinstance(v, jax.core.Tracer) and math.isinf(float(np.asarray(v)))
        else:
            v = _check_scalar(v, name, fn, 0.0, 1.0, hi_open=False)
            hard = not isinstance(v, jax.core.Tracer) and float(np.asarray(v)) == 1.0
        out.append(None if hard else v)
    if out[0] is None and out[1] is None:
        return None
    return kind, tuple(out)


def resolve(spec, eps, dtype, max_cost=None):
    """Inside the solve: ``(rho, bad)`` with ``rho`` the pair ``(rho_a, rho_b)`` (None on a
    hard side; ``tau`` converted at the target ``eps``, differentiable in both) or None
    (balanced), and ``bad`` whether a traced value was out of range (NaN, rho <= 0, tau outside
    (0, 1]): it is then replaced by a safe one (rho = 1) and the caller reports
    BAD_PARAMETER.

    ``rho`` is capped at ``max(max_cost, eps) / (dtype epsilon)`` (float64: ~4.5e15 times the
    cost scale, float32: ~8.4e6): beyond it the relaxed problem is the balanced one to the
    dtype's precision, and a larger rho would only turn a rounding-level mass difference into
    potentials of size rho * 1e-16 whose sum f + g cancels (a traced rho = inf or tau = 1 lands
    there too)."""
    bad = jnp.array(False)
    if spec is None:
        return None, bad
    kind, values = spec
    out = []
    max_cost = max_cost() if callable(max_cost) else max_cost  # one pass, only when relaxed
    scale = eps if max_cost is None else jnp.maximum(jax.lax.stop_gradient(max_cost), eps)
    big = jax.lax.stop_gradient(scale) / jnp.finfo(dtype).eps
    for v in values:
        if v is None:
            out.append(None)
            continue
        v = jnp.asarray(v, dtype)
        if kind == "tau":  # rho = eps tau / (1 - tau)
            ok = (v > 0) & (v <= 1)
            v = jnp.where(v < 1, eps * v / jnp.where(v < 1, 1.0 - v, 1.0), big)
        else:
            ok = v > 0  # False for NaN
        bad = bad | ~ok
        out.append(jnp.where(ok, jnp.minimum(v, big), 1.0).astype(dtype))
    return tuple(out), bad
