r"""Sorting on every backend without host callbacks, differentiable in both modes.

XLA's CPU sort compares floats through a total-order comparator (NaN and signed zeros handled
per comparison) and carries every extra operand through the sort; measured on one core it is
~100x slower than ``np.sort`` on float32 rows, and an ``argsort`` (keys plus an index operand) is
slower still. Integers sort ~8x faster. So values are sorted as **order-preserving integer keys**
(the IEEE-754 bit pattern, with the magnitude bits flipped for negative numbers, is monotone in
the value) and bitcast back: exact, keys only, no index operand.

The permutation is never materialised. A derivative needs, for each input entry, the block of
sorted positions holding its value; a binary search of its key in the sorted keys gives the block
start ``lo`` and end ``hi``. The tangent of ``sort(x)`` at position ``k`` is the mean of the
input tangents over ``k``'s tie block: the permutation's tangent when the values are distinct,
and the average over all sorting permutations (an element of the Clarke subdifferential) at
ties, so ties never give a NaN nor an arbitrary choice. The rule is linear in the tangent
(a scatter-add and a gather), so reverse mode transposes it, and it is itself differentiable
(``jvp``, ``hessian``, ``jax.export`` all work; no host callback anywhere).

Cost per row of length n: one integer sort O(n log n) plus, under differentiation, two binary
searches O(n log n) of gathers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["sort_values", "search_left", "block_starts", "sorted_keys", "to_key"]


def _int_type(dtype):
    return {2: jnp.int16, 4: jnp.int32, 8: jnp.int64}[jnp.dtype(dtype).itemsize]


def to_key(x: jax.Array) -> jax.Array:
    """Order-preserving signed-integer image of a float array (same width).

    The bitcast acts on the flattened array: on CPU (jax 0.10), when XLA constant-folds a
    ``transpose(dot(constants))`` (a cloud closed over by a jitted function) into a literal of
    transposed layout, a ``bitcast_convert`` of it reads the bits in the wrong layout, i.e. the
    rows of another problem (``tests/test_sort_constant_folding.py``). A 1-D array has one
    layout. (An ``optimization_barrier`` before the bitcast also avoids the wrong values; this
    form leaves XLA free to fold and fuse.)"""
    it = _int_type(x.dtype)
    bits = jnp.iinfo(it).bits
    i = _bitcast_flat(x, it)
    mask = jnp.array(jnp.iinfo(it).max, it)
    return i ^ ((i >> (bits - 1)) & mask)


def _bitcast_flat(x: jax.Array, dtype) -> jax.Array:
    """``bitcast_convert_type`` through the flattened array (see :func:`to_key`)."""
    return jax.lax.bitcast_convert_type(x.reshape(-1), dtype).reshape(x.shape)


def _from_key(k: jax.Array, dtype) -> jax.Array:
    it = k.dtype
    bits = jnp.iinfo(it).bits
    mask = jnp.array(jnp.iinfo(it).max, it)
    return _bitcast_flat(k ^ ((k >> (bits - 1)) & mask), dtype)


def sorted_keys(x: jax.Array) -> jax.Array:
    """The integer keys of ``x`` sorted along the last axis."""
    return jax.lax.sort(to_key(x), dimension=x.ndim - 1, is_stable=False)


def search_left(sorted_k: jax.Array, q: jax.Array) -> jax.Array:
    """Per row, the number of entries of ``sorted_k (..., n)`` strictly below each ``q (..., j)``
    (``searchsorted(side="left")``, a binary search per query). Both arrays hold keys of the
    same type, or floats of the same dtype."""
    lead = sorted_k.shape[:-1]
    a2 = sorted_k.reshape(-1, sorted_k.shape[-1])
    q2 = q.reshape(-1, q.shape[-1])
    out = jax.vmap(lambda a, v: jnp.searchsorted(a, v, side="left"))(a2, q2)
    return out.astype(jnp.int32).reshape(lead + q.shape[-1:])


def block_starts(sorted_k: jax.Array) -> jax.Array:
    """For each sorted position, the first position holding the same key (start of its tie
    block), by a running maximum: no search, no cancellation."""
    n = sorted_k.shape[-1]
    pos = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), sorted_k.shape)
    new = jnp.concatenate([jnp.ones(sorted_k.shape[:-1] + (1,), bool),
                           sorted_k[..., 1:] != sorted_k[..., :-1]], axis=-1)
    return jax.lax.cummax(jnp.where(new, pos, 0), axis=sorted_k.ndim - 1)


def _scatter_add_rows(idx: jax.Array, vals: jax.Array, n: int) -> jax.Array:
    """``out[..., idx[..., i]] += vals[..., i]`` row by row, ``out`` of length n."""
    lead = idx.shape[:-1]
    idx2 = idx.reshape(-1, idx.shape[-1])
    val2 = vals.reshape(-1, vals.shape[-1])
    rows = jnp.arange(idx2.shape[0], dtype=jnp.int32)[:, None]
    out = jnp.zeros((idx2.shape[0], n), vals.dtype).at[rows, idx2].add(val2)
    return out.reshape(lead + (n,))


def block_scatter(x_keys: jax.Array, sorted_k: jax.Array, vals: jax.Array) -> jax.Array:
    """Each entry's ``vals`` added at the start of its value's tie block in sorted order (the
    other positions of a block get 0): the weights of a sample in sorted order, ties merged."""
    return _scatter_add_rows(search_left(sorted_k, x_keys), vals, sorted_k.shape[-1])


@jax.custom_jvp
def _sort(x):
    return _from_key(sorted_keys(x), x.dtype)


@_sort.defjvp
def _sort_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    s = _sort(x)  # itself differentiable: higher orders work
    sk = to_key(jax.lax.stop_gradient(s))  # sorted keys (a bitcast of the sorted values)
    xk = to_key(x)
    lo = search_left(sk, xk)
    hi = search_left(sk, jnp.where(xk == jnp.iinfo(xk.dtype).max, xk, xk + 1))
    cnt = jnp.maximum(hi - lo, 1).astype(t.dtype)
    agg = _scatter_add_rows(lo, t / cnt, x.shape[-1])  # block means, at each block's start
    return s, jnp.take_along_axis(agg, block_starts(sk), axis=-1)


def sort_values(x: jax.Array) -> jax.Array:
    """``x`` sorted along its last axis, in the graph (no host callback, every backend);
    differentiable in forward and reverse mode, to any order."""
    x = jnp.asarray(x)
    if x.dtype not in (jnp.float32, jnp.float64):
        return sort_values(x.astype(jnp.float32)).astype(x.dtype)
    return _sort(x)
