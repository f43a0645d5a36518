"""Euclidean projection on the probability simplex, without sorting (shared by the quadratic and
sparsity-constrained OT solvers)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["simplex_threshold"]


def simplex_threshold(z: jax.Array, axis: int = -1) -> jax.Array:
    r"""The :math:`\tau` with :math:`\sum_i [z_i - \tau]_+ = 1` along ``axis`` (entries at
    ``-inf`` are excluded), by Michelot's iteration
    :math:`\tau \leftarrow (\sum_{z_i > \tau} z_i - 1) / |\{z_i > \tau\}|` from
    :math:`\max z - 1`: monotone, exact after finitely many steps (as many as the support
    changes). The projection on the simplex is then :math:`[z - \tau]_+`."""
    tau0 = jnp.max(z, axis=axis, keepdims=True) - 1.0

    def step(tau):
        on = z > tau
        cnt = jnp.maximum(jnp.sum(on, axis=axis, keepdims=True), 1)
        return (jnp.sum(jnp.where(on, z, 0.0), axis=axis, keepdims=True) - 1.0) / cnt

    def body(c):
        tau, _, it = c
        new = jnp.maximum(step(tau), tau)  # monotone; guards against rounding
        return new, jnp.any(new != tau), it + 1

    tau, _, _ = jax.lax.while_loop(lambda c: c[1] & (c[2] < 100), body,
                                   (tau0, jnp.array(True), jnp.array(0)))
    return tau
