r"""Exact optimal transport on the line.

.. math::
    W_p^p(\mu, \nu) = \int_0^1 |F_\mu^{-1}(t) - F_\nu^{-1}(t)|^p \, dt, \qquad p \ge 1,

For equal sizes and uniform weights this is ``mean(|sort(u) - sort(v)|^p)``; in general the two
quantile functions are step functions whose merged breakpoints are the cumulative weights of both
samples (POT's ``wasserstein_1d`` computes the same). Pairing in sorted order is optimal for
convex costs only, so ``p < 1`` is refused.

Sorting is :mod:`otreg._sort`'s integer-key sort, in the graph on every backend: no host
callback by default (those can deadlock under asynchronous CPU dispatch), the same derivatives
on CPU, GPU and TPU, forward and reverse mode, exportable. Gradients flow to the points through
the sorted values (tie blocks averaged, so ties give no NaN) and to the weights through the
merged breakpoints (the cumulative weights).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from otreg import _checks
from otreg._math import safe_pow
from otreg._sort import block_scatter, search_left, sort_values, to_key

__all__ = ["wasserstein_1d", "sort_values"]

SORTS = ("auto", "xla")


def check_sort(sort: str, fn: str) -> None:
    """``sort`` is ``"auto"`` or ``"xla"`` (the same in-graph sort); ``"host"`` was removed."""
    if sort == "host":
        raise ValueError(f"{fn}: `sort='host'` was removed: a host-callback sort can deadlock "
                         f"under JAX's asynchronous CPU dispatch on one core and aborts with "
                         f"several CPU devices (jax issue #25861). Use the default "
                         f"sort='auto' (an in-graph integer-key sort on every backend).")
    _checks.check_option(sort, "sort", SORTS, fn)


def _quantile_w(u, v, uw, vw, p):
    """General weights / sizes: integrate |F^-1 - G^-1|^p over the merged breakpoints."""
    us, vs = sort_values(u), sort_values(v)
    # weights in sorted order (a tie block's weight at its first position, 0 on the others)
    wu = block_scatter(to_key(u), to_key(us), uw)
    wv = block_scatter(to_key(v), to_key(vs), vw)
    cu = jnp.cumsum(wu, axis=-1)
    cv = jnp.cumsum(wv, axis=-1)
    cu = cu / cu[..., -1:]
    cv = cv / cv[..., -1:]
    t = sort_values(jnp.concatenate([cu, cv], axis=-1))  # differentiable in the weights
    dt = jnp.diff(t, axis=-1, prepend=jnp.zeros_like(t[..., :1]))
    mid = jax.lax.stop_gradient(t - 0.5 * dt)
    cu_s, cv_s = jax.lax.stop_gradient(cu), jax.lax.stop_gradient(cv)
    iu = jnp.clip(search_left(cu_s, mid), 0, u.shape[-1] - 1)
    iv = jnp.clip(search_left(cv_s, mid), 0, v.shape[-1] - 1)
    du = jnp.take_along_axis(us, iu, axis=-1) - jnp.take_along_axis(vs, iv, axis=-1)
    return jnp.sum(dt * safe_pow(jnp.abs(du), p), axis=-1)


def bad_weights(w: jax.Array) -> jax.Array:
    """True per row where a weight vector is negative, non-finite or has no mass."""
    return jnp.any(~jnp.isfinite(w) | (w < 0), axis=-1) | ~(jnp.sum(w, axis=-1) > 0)


def wasserstein_1d(
    u: jax.Array,
    v: jax.Array,
    u_weights: jax.Array | None = None,
    v_weights: jax.Array | None = None,
    *,
    p: float = 2.0,
    sort: str = "auto",
) -> jax.Array:
    r""":math:`W_p^p` between 1-D empirical measures, batched over leading axes.

    Args:
      u, v: samples ``(..., n)`` and ``(..., m)`` (same leading shape).
      u_weights, v_weights: non-negative weights of the same shapes (None = uniform); each is
        normalised to sum to 1.
      p: exponent, ``p >= 1`` (sorting is not optimal for ``p < 1``). Returns
        :math:`W_p^p` (like POT's ``ot.wasserstein_1d``).
      sort: ``"auto"`` or ``"xla"``: both the in-graph integer-key sort of
        :mod:`otreg._sort` (``"host"``, a NumPy callback, was removed: it could hang or abort).

    Returns:
      ``(...)`` array in the samples' dtype. Cost O((n + m) log(n + m)) per problem.
      Differentiable (forward and reverse mode) in the samples and the weights.

    Raises:
      ValueError: on concrete inputs with NaN/inf samples, negative, non-finite or zero-mass
        weights. Under ``jit`` such a problem returns NaN instead (never a finite wrong value).
    """
    fn = "wasserstein_1d"
    u = _checks.float_array(u, "u", None, fn)
    v = _checks.float_array(v, "v", None, fn)
    if u.ndim == 0 or v.ndim == 0 or u.shape[:-1] != v.shape[:-1]:
        raise ValueError(f"{fn}: `u` and `v` must have shapes (..., n) and (..., m) with the same "
                         f"leading shape; got {u.shape} and {v.shape}.")
    if u.shape[-1] == 0 or v.shape[-1] == 0:
        raise ValueError(f"{fn}: empty sample (u: {u.shape}, v: {v.shape}).")
    check_sort(sort, fn)
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 1 <= p < float("inf"):
        raise ValueError(f"{fn}: `p` must be a finite number >= 1, got {p!r}; for p < 1 the "
                         f"sorted (monotone) coupling is not optimal and this formula is wrong.")
    in_dtype = jnp.result_type(u, v)
    dtype = _checks.compute_dtype(u, v)
    u, v = u.astype(dtype), v.astype(dtype)
    _checks.check_finite(u, "u", fn, "samples")  # concrete only; under jit the result is NaN
    _checks.check_finite(v, "v", fn, "samples")
    ws = []
    for name, w, z in (("u_weights", u_weights, u), ("v_weights", v_weights, v)):
        if w is not None:
            w = _checks.float_array(w, name, None, fn)
            if w.shape != z.shape:
                raise ValueError(f"{fn}: `{name}` must have shape {z.shape}, got {w.shape}.")
            _checks.check_weight_vector(w, name, fn)
            w = w.astype(dtype)
        ws.append(w)
    return solve(u, v, ws[0], ws[1], float(p)).astype(in_dtype)


@functools.partial(jax.jit, static_argnums=4)
def solve(u, v, uw, vw, p):
    """The validated problem, compiled as one program (an eager call compiles once, not op by
    op); inlined under an outer ``jit``."""
    bad = jnp.any(~jnp.isfinite(u), axis=-1) | jnp.any(~jnp.isfinite(v), axis=-1)
    if uw is None and vw is None and u.shape[-1] == v.shape[-1]:
        diff = sort_values(u) - sort_values(v)
        out = jnp.mean(diff * diff if p == 2 else safe_pow(jnp.abs(diff), p), axis=-1)
    else:
        uw = jnp.ones_like(u) if uw is None else uw
        vw = jnp.ones_like(v) if vw is None else vw
        bad = bad | bad_weights(uw) | bad_weights(vw)
        # bad weights: solve a finite stand-in, then report NaN
        uw = jnp.where(bad_weights(uw)[..., None], 1.0, jnp.where(jnp.isfinite(uw), uw, 0.0))
        vw = jnp.where(bad_weights(vw)[..., None], 1.0, jnp.where(jnp.isfinite(vw), vw, 0.0))
        out = _quantile_w(u, v, jnp.maximum(uw, 0.0), jnp.maximum(vw, 0.0), p)
    return jnp.where(bad, jnp.nan, out)
