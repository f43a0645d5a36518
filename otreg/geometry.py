r"""Geometries: the only code that touches the cost matrix.

A solver sees a geometry only through a few reductions, so a new geometry (a grid, a low-rank
factorisation, a GPU kernel) is one class:

* ``lse(h, eps, axis, weights)``: row (``axis=1``, length n) or column (``axis=0``, length m)
  log-sum-exp of :math:`h - C / \varepsilon`;
* ``apply_plan(f, g, a, b, eps, v, axis)``: :math:`P v` or :math:`P^\top v` for the plan
  :math:`P_{ij} = a_i b_j \exp((f_i + g_j - C_{ij})/\varepsilon)`, without materialising P when
  the geometry is blocked;
* ``kernel(f, g, eps)``: the stabilised kernel
  :math:`\tilde K = \exp((f_i + g_j - C_{ij})/\varepsilon)`
  (materialised geometries only), on which Sinkhorn iterates with matrix-vector products;
* ``row_top_k(h, eps, k)``: the k largest entries of each row of :math:`h_j - C_{ij}/\varepsilon`
  (indices and costs; SNS's sparsified Hessian, sparse OT's columns via ``transpose()``).

``PointCloud(..., block_size=B)`` never builds more than a ``B x m`` (or ``B x n``) block: every
reduction is a ``lax.map`` over row blocks (the remainder padded and discarded), with the block
function under ``jax.checkpoint`` so that reverse-mode differentiation stores no n x m residual
either. Column reductions of a blocked cloud run over blocks of ``y``: the built-in costs are
symmetric (the block is ``cost(y_blk, x)``), a user callable is evaluated as ``cost(x, y_blk).T``,
so a cost that is not symmetric gives the same plan blocked as dense.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from otreg import costs as costs_lib
from otreg._checks import (
    check_finite,
    check_option,
    check_points,
    check_positive_float,
    check_positive_int,
    float_array,
)
from otreg._math import HIGHEST, logsumexp

__all__ = ["CostMatrix", "PointCloud", "as_geometry"]


class _Geometry:
    """Shared behaviour; subclasses provide ``shape``, ``dtype``, ``cost_matrix``, ``lse`` etc."""

    is_blocked = False

    def plan(self, f, g, a, b, eps):
        """Dense plan :math:`a_i b_j \\exp((f_i + g_j - C_{ij})/\\varepsilon)` (n x m)."""
        return _plan_block(f, g, a, b, self.cost_matrix, eps)

    def kernel(self, f, g, eps, a=None, b=None):
        """:math:`\\exp((f_i + g_j - C_{ij})/\\varepsilon)`; with weights, entries whose row and
        column weights are both 0 are 0 (their potentials are unconstrained and may overflow)."""
        z = (f[:, None] + g[None, :] - self.cost_matrix) / eps
        if a is not None:
            z = jnp.where((a > 0)[:, None] | (b > 0)[None, :], z, -jnp.inf)
        return jnp.exp(z)

    def lse(self, h, eps, axis, weights=None):
        C = self.cost_matrix
        if axis == 1:
            return logsumexp(h[None, :] - C / eps, axis=1,
                             weights=None if weights is None else weights[None, :])
        return logsumexp(h[:, None] - C / eps, axis=0,
                         weights=None if weights is None else weights[:, None])

    def row_top_k(self, h, eps, k):
        """Per row, the ``k`` largest entries of :math:`h_j - C_{ij}/\varepsilon`: returns their
        column indices (n, k) and costs :math:`C_{ij}` (n, k). The selection ranks in float32
        (XLA's CPU top-k is a full sort in float64); the costs keep the geometry's dtype."""
        return _top_k_block(self.cost_matrix, h, eps, k)

    def apply_plan(self, f, g, a, b, eps, v, axis=1):
        P = self.plan(f, g, a, b, eps)
        return jnp.matmul(P if axis == 1 else P.T, v, precision=HIGHEST)

    def max_cost(self):
        return jnp.max(self.cost_matrix)

    def mean_cost(self):
        return jnp.mean(self.cost_matrix)

    def materialize(self) -> CostMatrix:
        """A :class:`CostMatrix` holding this geometry's cost (differentiable in its inputs)."""
        return CostMatrix(self.cost_matrix)


@jax.tree_util.register_pytree_node_class
class CostMatrix(_Geometry):
    """A geometry given by an explicit cost matrix ``C: (n, m)``.

    ``fill`` (internal, set by solvers under ``jit``): when not None, non-finite entries of C read
    as ``fill``; the replacement is fused into every pass instead of copying C.
    """

    def __init__(self, cost_matrix: jax.Array, fill: jax.Array | None = None):
        C = float_array(cost_matrix, "cost_matrix", 2, "CostMatrix")
        if 0 in C.shape:
            raise ValueError(f"CostMatrix: empty cost matrix of shape {tuple(C.shape)}.")
        if fill is None:  # concrete NaN/inf raises; under jit the solvers repair and report
            check_finite(C, "cost_matrix", "CostMatrix", "costs")
        self._C, self.fill = C, fill

    @property
    def cost_matrix(self) -> jax.Array:
        if self.fill is None:
            return self._C
        return jnp.where(jnp.isfinite(self._C), self._C, self.fill)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self._C.shape)

    @property
    def dtype(self):
        return self._C.dtype

    def materialize(self) -> CostMatrix:
        return self

    def transpose(self) -> CostMatrix:
        """The geometry with the roles of rows and columns swapped (C^T: one copy)."""
        return CostMatrix(self._C.T, self.fill)

    def astype(self, dtype) -> CostMatrix:
        fill = None if self.fill is None else jnp.asarray(self.fill, dtype)
        return CostMatrix(self._C.astype(dtype), fill)

    def tree_flatten(self):
        return (self._C, self.fill), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        obj = object.__new__(cls)
        obj._C, obj.fill = children
        return obj

    def __repr__(self):
        return f"CostMatrix(shape={self.shape}, dtype={self.dtype})"


def _plan_block(f, g, a, b, C, eps):
    """``a_i b_j exp((f_i + g_j - C_ij) / eps)``, exactly 0 (never 0 * inf) on zero weights."""
    z = jnp.where((a > 0)[:, None] & (b > 0)[None, :], (f[:, None] + g[None, :] - C) / eps,
                  -jnp.inf)
    return a[:, None] * b[None, :] * jnp.exp(z)


def _top_k_block(C, h, eps, k):
    scores = (h[None, :] - C / eps).astype(jnp.float32)
    _, idx = jax.lax.top_k(scores, k)
    return idx, jnp.take_along_axis(C, idx, axis=1)


def _pad_rows(z: jax.Array, nb: int, bs: int, value=0.0) -> jax.Array:
    pad = nb * bs - z.shape[0]
    if pad:
        widths = [(0, pad)] + [(0, 0)] * (z.ndim - 1)
        z = jnp.pad(z, widths, constant_values=value)
    return z.reshape((nb, bs) + z.shape[1:])


def _map_row_blocks(fn: Callable, bs: int, xs: jax.Array, *per_row: jax.Array) -> jax.Array:
    """``concat([fn(x_blk, *row_blk) for blocks])[:n]`` with a checkpointed ``lax.map``."""
    n = xs.shape[0]
    nb = -(-n // bs)
    blocks = (_pad_rows(xs, nb, bs),) + tuple(_pad_rows(r, nb, bs) for r in per_row)
    out = jax.lax.map(lambda args: jax.checkpoint(fn)(*args), blocks)
    return jax.tree_util.tree_map(lambda o: o.reshape((nb * bs,) + o.shape[2:])[:n], out)


@jax.tree_util.register_pytree_node_class
class PointCloud(_Geometry):
    r"""Two point clouds ``x: (n, d)``, ``y: (m, d)`` and a ground cost.

    Args:
      x, y: the points.
      cost: ``"sqeuclidean"`` (default), ``"euclidean"``, ``"cosine"``, ``"lp:P"`` or a callable
        ``cost(x, y) -> (n, m)`` (need not be symmetric: C is always ``cost(x, y)``); see
        :mod:`otreg.costs`.
      block_size: ``None`` materialises C once per solve (fastest while n x m fits);
        an int B evaluates C in ``B x m`` blocks inside every reduction, so memory is O((n + m) B)
        and no n x m buffer ever exists.
      scale_cost: divide the cost by this positive float, or by its ``"max"`` or ``"mean"``
        (computed block by block when blocked).
    """

    def __init__(self, x: jax.Array, y: jax.Array, cost: str | Callable = "sqeuclidean",
                 block_size: int | None = None, scale_cost: float | str = 1.0):
        x, y = check_points(x, y, "PointCloud")
        check_finite(x, "x", "PointCloud", "points")  # concrete only; under jit: status
        check_finite(y, "y", "PointCloud", "points")
        self.x, self.y = x, y
        self.cost_fn = costs_lib.get(cost)
        self.block_size = None if block_size is None else check_positive_int(
            block_size, "block_size", "PointCloud")
        if isinstance(scale_cost, str):
            check_option(scale_cost, "scale_cost", ("max", "mean"), "PointCloud")
            self.scale = 1.0
            self.scale = self.max_cost() if scale_cost == "max" else self.mean_cost()
        else:
            check_positive_float(scale_cost, "scale_cost", "PointCloud")
            self.scale = scale_cost

    # -- pytree ---------------------------------------------------------------------------------
    def tree_flatten(self):
        return (self.x, self.y, self.scale), (self.cost_fn, self.block_size)

    @classmethod
    def tree_unflatten(cls, aux, children):
        obj = object.__new__(cls)
        obj.x, obj.y, obj.scale = children
        obj.cost_fn, obj.block_size = aux
        return obj

    def __repr__(self):
        name = getattr(self.cost_fn, "__name__", repr(self.cost_fn))
        return (f"PointCloud(n={self.shape[0]}, m={self.shape[1]}, d={self.x.shape[1]}, "
                f"cost={name}, block_size={self.block_size})")

    # -- basics ---------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return (self.x.shape[0], self.y.shape[0])

    @property
    def dtype(self):
        return jnp.result_type(self.x, self.y)

    @property
    def is_blocked(self) -> bool:
        return self.block_size is not None

    def astype(self, dtype) -> PointCloud:
        return PointCloud.tree_unflatten(
            (self.cost_fn, self.block_size),
            (self.x.astype(dtype), self.y.astype(dtype), jnp.asarray(self.scale, dtype)))

    def _cost(self, x, y):
        return self.cost_fn(x, y) / self.scale

    def transpose(self) -> PointCloud:
        """The cloud with x and y swapped whose cost matrix is C^T (no copy): a symmetric cost is
        kept, any other is wrapped as ``(y, x) -> cost(x, y).T``."""
        return PointCloud.tree_unflatten((costs_lib.transposed(self.cost_fn), self.block_size),
                                         (self.y, self.x, self.scale))

    @property
    def cost_matrix(self) -> jax.Array:
        """The dense (n, m) cost; for a blocked cloud this materialises it (avoid for large n)."""
        return self._cost(self.x, self.y)

    # -- blocked reductions -----------------------------------------------------------------------
    def _sides(self, axis):
        """(points whose blocks index the output, block cost function) for a reduction: row
        reductions see ``C[blk, :]``, column reductions ``C[:, blk].T``."""
        if axis == 1:
            return self.x, lambda xb: self._cost(xb, self.y)
        if costs_lib.is_symmetric(self.cost_fn):
            return self.y, lambda yb: self._cost(yb, self.x)
        return self.y, lambda yb: self._cost(self.x, yb).T

    def lse(self, h, eps, axis, weights=None):
        if not self.is_blocked:
            return super().lse(h, eps, axis, weights)
        rows, cost_block = self._sides(axis)

        def block(xb):
            z = h[None, :] - cost_block(xb) / eps
            return logsumexp(z, axis=1, weights=None if weights is None else weights[None, :])

        return _map_row_blocks(block, self.block_size, rows)

    def apply_plan(self, f, g, a, b, eps, v, axis=1):
        if not self.is_blocked:
            return super().apply_plan(f, g, a, b, eps, v, axis)
        rows, cost_block = self._sides(axis)
        fr, fo, wr, wo = (f, g, a, b) if axis == 1 else (g, f, b, a)

        def block(xb, frb, wrb):
            return jnp.matmul(_plan_block(frb, fo, wrb, wo, cost_block(xb), eps), v,
                              precision=HIGHEST)

        return _map_row_blocks(block, self.block_size, rows, fr, wr)

    def row_top_k(self, h, eps, k):
        if not self.is_blocked:
            return super().row_top_k(h, eps, k)
        return _map_row_blocks(lambda xb: _top_k_block(self._cost(xb, self.y), h, eps, k),
                               self.block_size, self.x)

    def max_cost(self):
        if not self.is_blocked:
            return super().max_cost()
        return jnp.max(_map_row_blocks(lambda xb: jnp.max(self._cost(xb, self.y), axis=1),
                                       self.block_size, self.x))

    def mean_cost(self):
        if not self.is_blocked:
            return super().mean_cost()
        sums = _map_row_blocks(lambda xb: jnp.sum(self._cost(xb, self.y), axis=1),
                               self.block_size, self.x)
        return jnp.sum(sums) / (self.shape[0] * self.shape[1])

    def materialize(self) -> _Geometry:
        """Dense clouds become a :class:`CostMatrix`; blocked clouds stay as they are."""
        return self if self.is_blocked else CostMatrix(self.cost_matrix)


def as_geometry(geom, fn: str = "otreg") -> _Geometry:
    """Accept a geometry or a raw (n, m) cost array."""
    if isinstance(geom, _Geometry):
        return geom
    try:
        C = float_array(geom, "geom", 2, fn)
        if 0 in C.shape:
            raise ValueError(f"empty cost matrix of shape {tuple(C.shape)}")
    except (TypeError, ValueError) as err:
        raise type(err)(f"{fn}: `geom` must be a CostMatrix, a PointCloud or an (n, m) cost "
                        f"array; got {type(geom).__name__} ({err}).") from None
    check_finite(C, "geom", fn, "costs")  # a value fact: named as the caller passed it
    return CostMatrix(C)
