"""Euclidean projection on the probability simplex, without sorting, and the per-column conjugates
built on it (shared by the quadratic and sparsity-constrained OT solvers)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["simplex_threshold", "Columns", "gather", "row_sums", "semi_dual_columns",
           "dual_columns"]


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


class Columns(NamedTuple):
    """Per column j of a plan: the row indices (m, k) of its kept entries and their costs (m, k);
    ``idx`` None means every row, in order (quadratic OT: dense (m, n) reductions)."""

    idx: jax.Array | None
    cost: jax.Array


def gather(v, cols: Columns):
    """``v[idx]`` (m, k), or ``v`` broadcast over the columns when dense."""
    return v[None, :] if cols.idx is None else v[cols.idx]


def row_sums(t, cols: Columns, n):
    """The plan's row sums from its (m, k) column entries."""
    if cols.idx is None:
        return jnp.sum(t, axis=0)
    return jax.ops.segment_sum(t.ravel(), cols.idx.ravel(), num_segments=n)


def semi_dual_columns(alpha, cols: Columns, b, gamma):
    r"""Column j's maximiser :math:`y_j = P_\Delta(x_j / (\gamma b_j))` on its kept entries
    (m, k), :math:`x_j = \alpha - c_j`, and its value
    :math:`\max_{\Omega}(x_j) = \langle y_j, x_j\rangle - \frac{\gamma b_j}2\|y_j\|^2`."""
    x = gather(alpha, cols) - cols.cost
    on = b > 0
    gb = gamma * jnp.where(on, b, 1.0)[:, None]
    if x.shape[1] == 1:  # one kept entry: y = 1 exactly
        y = jnp.ones_like(x)
    else:
        z = x / gb
        y = jnp.maximum(z - simplex_threshold(z, axis=1), 0.0)
    y = jnp.where(on[:, None], y, 0.0)
    val = jnp.sum(y * x, axis=1) - 0.5 * gb[:, 0] * jnp.sum(y * y, axis=1)
    return y, val


def dual_columns(alpha, beta, cols: Columns, gamma):
    r"""Dual plan entries :math:`[\alpha_i + \beta_j - C_{ij}]_+ / \gamma` on the kept entries and
    each column's :math:`\frac1{2\gamma}\sum_i [\cdot]_+^2`."""
    s = jnp.maximum(gather(alpha, cols) + beta[:, None] - cols.cost, 0.0)
    return s / gamma, jnp.sum(s * s, axis=1) / (2.0 * gamma)
