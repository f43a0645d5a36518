"""Implicit differentiation of the potentials vs unrolling vs central finite differences (f64)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import clouds, sqdist

import otreg

EPS = 0.3


def _losses(rng, n, m):
    W = jnp.asarray(rng.standard_normal((n, m)))
    wf, wg = jnp.asarray(rng.standard_normal(n)), jnp.asarray(rng.standard_normal(m))

    def plan_loss(r):
        return jnp.sum(W * r.plan()) + jnp.sum(jnp.sin(r.apply(jnp.arange(m) / m)))

    def potential_loss(r):
        return jnp.dot(wf, r.f) + jnp.dot(wg, r.g) + 0.1 * jnp.sum(r.f ** 2)

    return plan_loss, potential_loss


def _fd(fun, z, dz, h=1e-6):
    return (fun(z + h * dz) - fun(z - h * dz)) / (2 * h)


@pytest.mark.slow  # make test-all; keeps the default suite under 10 min
@pytest.mark.parametrize("blocked", [False, True])
def test_implicit_unrolled_fd_agree(rng, x64, blocked):
    n, m = 9, 7
    x, y, a, b = (jnp.asarray(z) for z in clouds(rng, n, m, 2))
    plan_loss, potential_loss = _losses(rng, n, m)
    dx = jnp.asarray(rng.standard_normal(x.shape))
    da = jnp.asarray(rng.standard_normal(n))
    da = (da - da.mean()) * 0.1  # keep the masses equal
    for loss in (plan_loss, potential_loss):
        grads = {}
        for imp in (True, False):
            def L(x, a, imp=imp, loss=loss):
                geom = otreg.PointCloud(x, y, block_size=4 if blocked else None)
                return loss(otreg.sinkhorn(geom, a, b, epsilon=EPS, tol=1e-13, implicit_diff=imp))
            grads[imp] = jax.grad(L, argnums=(0, 1))(x, a)
            np.testing.assert_allclose(jnp.vdot(grads[imp][0], dx), _fd(lambda z: L(z, a), x, dx),
                                       rtol=1e-6, atol=1e-8)
            np.testing.assert_allclose(jnp.vdot(grads[imp][1], da), _fd(lambda z: L(x, z), a, da),
                                       rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(grads[True][0], grads[False][0], rtol=1e-6, atol=1e-8)


def test_implicit_wrt_cost_matrix(rng, x64):
    x, y, a, b = clouds(rng, 8, 6, 2)
    C = jnp.asarray(sqdist(x, y))
    plan_loss, potential_loss = _losses(rng, 8, 6)
    dC = jnp.asarray(rng.standard_normal(C.shape))
    for loss in (plan_loss, potential_loss):
        def L(C, loss=loss):
            return loss(otreg.sinkhorn(C, a, b, epsilon=EPS * 3, tol=1e-13))
        np.testing.assert_allclose(jnp.vdot(jax.grad(L)(C), dC), _fd(L, C, dC), rtol=1e-6,
                                   atol=1e-8)


def test_implicit_gradients_finite_degenerate(rng):
    """float32, zero weights, coincident points, small epsilon: finite gradients."""
    x = jnp.asarray(rng.standard_normal((12, 2)), jnp.float32)
    a = jnp.asarray(np.r_[0.0, np.full(11, 1 / 11)], jnp.float32)
    W = jnp.asarray(rng.standard_normal((12, 12)), jnp.float32)
    for y, eps in ((x, 0.1), (x + 1, 1e-3), (jnp.concatenate([x[:6], x[:6]]), 0.05)):
        g = jax.grad(lambda x, y=y, eps=eps: jnp.sum(
            W * otreg.sinkhorn(otreg.PointCloud(x, y), a, epsilon=eps).plan()))(x)
        assert bool(jnp.all(jnp.isfinite(g)))


def test_backward_memory_independent_of_iterations():
    """Implicit: the compiled gradient's temporaries grow with max_iter only by the error history
    (4 bytes per check); unrolled keeps every block's carry for the backward pass."""
    n = 200
    x = jax.ShapeDtypeStruct((n, 2), jnp.float32)

    def temp(implicit_diff, max_iter):
        def L(x, y):
            r = otreg.sinkhorn(otreg.PointCloud(x, y), epsilon=0.01, max_iter=max_iter,
                               implicit_diff=implicit_diff)
            return jnp.sum(r.apply(y[:, 0]))
        return jax.jit(jax.grad(L)).lower(x, x).compile().memory_analysis().temp_size_in_bytes

    implicit_growth = temp(True, 5000) - temp(True, 500)
    assert implicit_growth <= 4 * 2 * (5000 - 500) // 10
    assert temp(False, 5000) - temp(False, 500) > 100 * max(implicit_growth, 1)
