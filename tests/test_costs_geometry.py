"""Costs against SciPy's cdist; geometry reductions against dense NumPy; NaN-safe primitives."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import cdist

import otreg
from otreg import _math, costs


@pytest.mark.parametrize("name,metric,power", [("sqeuclidean", "sqeuclidean", 1),
                                               ("euclidean", "euclidean", 1),
                                               ("cosine", "cosine", 1), ("lp:1.5", "euclidean",
                                                                          1.5)])
def test_costs_match_scipy(rng, x64, name, metric, power):
    x, y = rng.standard_normal((7, 4)), rng.standard_normal((9, 4))
    C = np.asarray(costs.get(name)(jnp.asarray(x), jnp.asarray(y)))
    np.testing.assert_allclose(C, cdist(x, y, metric) ** power, atol=1e-12)
    np.testing.assert_allclose(costs.get(name)(jnp.asarray(y), jnp.asarray(x)), C.T, atol=1e-12)


@pytest.mark.parametrize("name", ["sqeuclidean", "euclidean", "cosine", "lp:0.5"])
def test_cost_gradients_finite_at_coincident_points(name):
    x = jnp.array([[1.0, 2.0], [0.0, 0.0]])
    g = jax.grad(lambda x: jnp.sum(costs.get(name)(x, x)))(x)
    assert bool(jnp.all(jnp.isfinite(g)))


def test_math_primitives():
    assert float(jax.grad(_math.safe_sqrt)(0.0)) == 0.0
    assert float(jax.grad(_math.safe_sqrt)(4.0)) == pytest.approx(0.25)
    assert float(_math.safe_log(0.0)) == -np.inf
    assert float(jax.grad(_math.safe_log)(0.0)) == 0.0
    z = jnp.array([-jnp.inf, -jnp.inf])
    assert float(_math.logsumexp(z)) == -np.inf
    assert bool(jnp.all(jnp.isfinite(jax.grad(lambda z: _math.logsumexp(z))(jnp.zeros(3)))))
    w = jnp.array([0.0, 2.0, 1.0])
    z = jnp.array([5.0, 1.0, -1.0])
    assert float(_math.logsumexp(z, weights=w)) == pytest.approx(np.log(2 * np.e + np.exp(-1)))


@pytest.mark.slow  # make test-all; keeps the default suite under 10 min
@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 12), m=st.integers(1, 12), bs=st.integers(1, 7),
       eps=st.floats(0.05, 5.0), seed=st.integers(0, 2**31 - 1))
def test_blocked_reductions_match_dense(n, m, bs, eps, seed):
    rng = np.random.default_rng(seed)
    x, y = (jnp.asarray(rng.standard_normal((k, 3)), jnp.float32) for k in (n, m))
    f, g = (jnp.asarray(rng.standard_normal(k), jnp.float32) for k in (n, m))
    a, b = (jnp.asarray(rng.uniform(0, 1, k), jnp.float32) for k in (n, m))
    dense, blocked = otreg.PointCloud(x, y), otreg.PointCloud(x, y, block_size=bs)
    C = np.asarray(dense.cost_matrix, np.float64)
    for axis in (0, 1):
        h = g if axis == 1 else f
        np.testing.assert_allclose(blocked.lse(h, eps, axis), dense.lse(h, eps, axis),
                                   rtol=1e-5, atol=1e-5)
    P = np.asarray(a)[:, None] * np.asarray(b)[None] * np.exp(
        (np.asarray(f)[:, None] + np.asarray(g)[None] - C) / eps)
    v, u = rng.standard_normal((m, 2)), rng.standard_normal((n, 2))
    np.testing.assert_allclose(blocked.apply_plan(f, g, a, b, eps, jnp.asarray(v, jnp.float32), 1),
                               P @ v, rtol=2e-4, atol=1e-4 * np.abs(P).sum() + 1e-30)
    np.testing.assert_allclose(blocked.apply_plan(f, g, a, b, eps, jnp.asarray(u, jnp.float32), 0),
                               P.T @ u, rtol=2e-4, atol=1e-4 * np.abs(P).sum() + 1e-30)
    np.testing.assert_allclose(blocked.max_cost(), C.max(), rtol=1e-5)
    np.testing.assert_allclose(blocked.mean_cost(), C.mean(), rtol=1e-5)


def test_scale_cost(rng):
    x, y = jnp.asarray(rng.standard_normal((6, 2))), jnp.asarray(rng.standard_normal((5, 2)))
    for bs in (None, 2):
        g = otreg.PointCloud(x, y, scale_cost="max", block_size=bs)
        np.testing.assert_allclose(jnp.max(g.cost_matrix), 1.0, rtol=1e-6)
        g = otreg.PointCloud(x, y, scale_cost="mean", block_size=bs)
        np.testing.assert_allclose(jnp.mean(g.cost_matrix), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="scale_cost"):
        otreg.PointCloud(x, y, scale_cost=-1.0)
    with pytest.raises(ValueError, match="scale_cost"):
        otreg.PointCloud(x, y, scale_cost="median")
