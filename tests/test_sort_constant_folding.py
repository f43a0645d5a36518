"""Sorting inside ``jit`` where one operand is a constant computed in the graph.

On CPU (jax 0.10) XLA constant-folds ``transpose(dot(c1, c2))`` into a constant whose bits,
reinterpreted by ``bitcast_convert`` (the integer sort keys), came out in the wrong layout: the
rows of other problems. ``otreg._sort.to_key`` bitcasts the flattened array (one layout).
Every check compares the jitted call (the operand a folded constant) with the eager one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import otreg
from otreg._sort import sort_values


def test_sort_of_a_folded_transposed_product(rng, x64):
    y = jnp.asarray(rng.standard_normal((30, 3)))
    theta = jnp.asarray(rng.standard_normal((11, 3)))
    x = jnp.asarray(rng.standard_normal((30, 3)))
    ref = np.sort(np.asarray(y @ theta.T).T, -1)
    inner = jax.jit(sort_values)
    out = jax.jit(lambda x: (inner((y @ theta.T).T), x)[0])(x)
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-14)


def test_public_calls_with_a_closed_over_cloud(rng, x64):
    x = jnp.asarray(rng.standard_normal((30, 3)))
    y = jnp.asarray(rng.standard_normal((25, 3)) + 1)
    theta = jnp.asarray(rng.standard_normal((11, 3)))
    f = lambda x: otreg.sliced_w2(x, y, directions=theta)  # noqa: E731
    np.testing.assert_allclose(jax.jit(f)(x), f(x), rtol=1e-12)
    g = lambda u: otreg.wasserstein_1d(u, y @ theta.T, axis=0)  # noqa: E731
    u = x @ theta.T
    np.testing.assert_allclose(jax.jit(g)(u), g(u), rtol=1e-12)
    h = lambda u: otreg.wasserstein_1d(u.T, (y @ theta.T).T)  # noqa: E731
    np.testing.assert_allclose(jax.jit(h)(u), h(u), rtol=1e-12)
