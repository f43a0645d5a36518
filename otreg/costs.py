"""Ground costs on pairs of points: ``cost(x, y) -> C`` with ``x: (n, d)``, ``y: (m, d)``.

Every built-in cost is symmetric (``cost(y, x) == cost(x, y).T``), non-negative, finite with finite
gradients for finite points (coincident points included), and computes its inner products at
``Precision.HIGHEST`` (TPU bf16 passes and TF32 silently break squared-Euclidean costs).

``get(name_or_callable)`` resolves what ``PointCloud(cost=...)`` accepts: ``"sqeuclidean"``,
``"euclidean"``, ``"cosine"``, ``"lp:P"`` (``|x - y|_2^P``), or a callable with that signature
(a callable need not be symmetric; :func:`transposed` gives the cost of the swapped pair).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from otreg._math import HIGHEST, safe_norm, safe_pow, safe_sqrt

__all__ = ["sqeuclidean", "euclidean", "cosine", "lp", "get", "Cost", "is_symmetric",
           "transposed"]

Cost = Callable[[jax.Array, jax.Array], jax.Array]


def _dot(x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.matmul(x, y.T, precision=HIGHEST)


def sqeuclidean(x: jax.Array, y: jax.Array) -> jax.Array:
    r"""Squared Euclidean cost :math:`C_{ij} = \|x_i - y_j\|^2`.

    Computed as :math:`\|x_i\|^2 + \|y_j\|^2 - 2 x_i^\top y_j` (one matmul, O(nmd)) and clamped
    at 0 against cancellation.
    """
    xx = jnp.sum(x * x, axis=-1)
    yy = jnp.sum(y * y, axis=-1)
    return jnp.maximum(xx[:, None] + yy[None, :] - 2.0 * _dot(x, y), 0.0)


def euclidean(x: jax.Array, y: jax.Array) -> jax.Array:
    r"""Euclidean cost :math:`\|x_i - y_j\|_2`, with a zero (sub)gradient at coincident points."""
    return safe_sqrt(sqeuclidean(x, y))


def _lp(x: jax.Array, y: jax.Array, p: float) -> jax.Array:
    return safe_pow(sqeuclidean(x, y), 0.5 * p)


@functools.cache
def lp(p: float) -> Cost:
    r"""Cost :math:`\|x_i - y_j\|_2^p` (the ground cost of :math:`W_p^p`), ``p > 0``.

    ``lp(2.0)`` equals :func:`sqeuclidean` and ``lp(1.0)`` equals :func:`euclidean`. Cached, so
    the same ``p`` gives the same (hashable, static) function.
    """
    if not p > 0:
        raise ValueError(f"costs.lp: `p` must be > 0, got {p!r}.")
    fn = functools.partial(_lp, p=float(p))
    fn.__name__ = f"lp:{float(p):g}"  # type: ignore[attr-defined]
    return fn


def cosine(x: jax.Array, y: jax.Array) -> jax.Array:
    r"""Cosine cost :math:`1 - \frac{x_i^\top y_j}{\|x_i\|\|y_j\|}` in :math:`[0, 2]`.

    A zero vector is treated as orthogonal to everything (cost 1), with finite gradients.
    """
    nx = safe_norm(x, keepdims=True)
    ny = safe_norm(y, keepdims=True)
    xs = x / jnp.where(nx > 0, nx, 1.0)
    ys = y / jnp.where(ny > 0, ny, 1.0)
    return jnp.clip(1.0 - _dot(xs, ys), 0.0, 2.0)


_NAMED = {"sqeuclidean": sqeuclidean, "euclidean": euclidean, "cosine": cosine}


def get(cost: str | Cost) -> Cost:
    """Resolve a cost name (``"sqeuclidean"``, ``"euclidean"``, ``"cosine"``, ``"lp:P"``) or
    pass a callable through."""
    if callable(cost):
        return cost
    if isinstance(cost, str):
        if cost in _NAMED:
            return _NAMED[cost]
        if cost.startswith("lp:"):
            try:
                return lp(float(cost[3:]))
            except ValueError as err:
                raise ValueError(f"PointCloud: cannot parse cost={cost!r}: {err}") from None
    raise ValueError(f"PointCloud: unknown `cost`={cost!r}; choose one of {sorted(_NAMED)}, "
                     f"'lp:P' (e.g. 'lp:1.5'), or pass a callable cost(x, y) -> (n, m).")


def _check_callable(cost) -> None:
    if not callable(cost):
        raise TypeError(f"costs: `cost` must be a callable (x, y) -> (n, m) matrix, got "
                        f"{cost!r}; use costs.get(name) for a named cost.")


def is_symmetric(cost: Cost) -> bool:
    """True for the built-in costs (``cost(y, x) == cost(x, y).T``); a user callable is not
    assumed symmetric."""
    _check_callable(cost)
    return cost in _NAMED.values() or getattr(cost, "func", None) is _lp


class _Transposed:
    """``(y, x) -> cost(x, y).T``; hashable and equal by the wrapped cost (a static jit key)."""

    def __init__(self, cost: Cost):
        self.cost = cost
        self.__name__ = f"transposed({getattr(cost, '__name__', repr(cost))})"

    def __call__(self, y: jax.Array, x: jax.Array) -> jax.Array:
        return self.cost(x, y).T

    def __eq__(self, other):
        return isinstance(other, _Transposed) and other.cost == self.cost

    def __hash__(self):
        return hash((_Transposed, self.cost))


def transposed(cost: Cost) -> Cost:
    """The cost of the swapped pair, ``c'(y, x) = c(x, y)``: the cost itself when symmetric, the
    wrapped cost when ``cost`` is already a transposed one."""
    if is_symmetric(cost):
        return cost
    if isinstance(cost, _Transposed):
        return cost.cost
    return _Transposed(cost)
