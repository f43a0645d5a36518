"""NaN-safe numerical primitives shared by every solver.

Each function here is finite, with finite derivatives, for every finite input: the places where the
textbook formula has a singular derivative (sqrt at 0, norm at the origin, log of a zero weight) are
handled explicitly instead of being left to produce NaN in a backward pass.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["safe_sqrt", "safe_norm", "safe_log", "safe_pow", "logsumexp", "tiny_exponent"]


@jax.custom_jvp
def safe_sqrt(x: jax.Array) -> jax.Array:
    """``sqrt(max(x, 0))`` whose derivative at 0 is 0 instead of infinity."""
    return jnp.sqrt(jnp.maximum(x, 0.0))


@safe_sqrt.defjvp
def _safe_sqrt_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    y = safe_sqrt(x)
    positive = y > 0
    scale = jnp.where(positive, 0.5 / jnp.where(positive, y, 1.0), 0.0)
    return y, scale * dx


def safe_norm(x: jax.Array, axis: int = -1, keepdims: bool = False) -> jax.Array:
    """Euclidean norm with a zero (sub)gradient at the origin."""
    return safe_sqrt(jnp.sum(x * x, axis=axis, keepdims=keepdims))


def safe_log(x: jax.Array) -> jax.Array:
    """``log(x)`` for ``x >= 0`` with ``log(0) = -inf`` and a zero derivative where ``x == 0``.

    Used for weights: a zero weight is a masked atom, never a source of NaN.
    """
    positive = x > 0
    return jnp.where(positive, jnp.log(jnp.where(positive, x, 1.0)), -jnp.inf)


def safe_pow(x: jax.Array, p: float) -> jax.Array:
    """``max(x, 0) ** p`` for ``p > 0`` with a zero derivative at 0 (also for ``p < 1``)."""
    positive = x > 0
    return jnp.where(positive, jnp.where(positive, x, 1.0) ** p, 0.0)


def logsumexp(z: jax.Array, axis: int = -1, weights: jax.Array | None = None) -> jax.Array:
    r""":math:`\log\sum_k w_k e^{z_k}` along ``axis``; ``-inf`` (not NaN) for an empty sum.

    ``weights`` (non-negative, broadcast against ``z``) multiply inside the sum instead of being
    added as ``log w``, so gradients with respect to a zero weight are finite and correct. The
    shift by the maximum is taken under ``stop_gradient`` and replaced by 0 where the maximum is
    not finite, so ``exp`` never sees ``-inf - (-inf)``.
    """
    zm = z if weights is None else jnp.where(weights > 0, z, -jnp.inf)  # zero weights: no say
    m = jax.lax.stop_gradient(jnp.max(zm, axis=axis, keepdims=True))
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    e = jnp.exp(zm - m)
    if weights is not None:
        e = e * weights
    return safe_log(jnp.sum(e, axis=axis)) + jnp.squeeze(m, axis=axis)


def tiny_exponent(dtype) -> float:
    """``-log(smallest normal number)`` of ``dtype``: exponents beyond it underflow to 0."""
    return float(-np.log(float(jnp.finfo(dtype).tiny)))
