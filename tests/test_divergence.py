"""Sinkhorn divergence against POT-computed entropic values, and its defining properties."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import ot
import pytest
from conftest import clouds, sqdist

import otreg


def _pot_entropic(xa, xb, wa, wb, eps):
    C = sqdist(xa, xb)
    P = ot.sinkhorn(wa, wb, C, eps, method="sinkhorn_log", stopThr=1e-14, numItermax=20_000)
    ab = np.outer(wa, wb)
    return (P * C).sum() + eps * ((P * np.log(P / ab)).sum() - P.sum() + ab.sum())


def test_matches_pot_values(rng, x64):
    x, y, a, b = clouds(rng, 25, 31, 2)
    eps = 2.0  # POT's alternating Sinkhorn on OT(a, a) is slow at small eps (our reference)
    val, aux = otreg.sinkhorn_divergence(x, y, a, b, epsilon=eps, tol=1e-12)
    ref_xy = _pot_entropic(x, y, a, b, eps)
    ref_xx = _pot_entropic(x, x, a, a, eps)
    ref_yy = _pot_entropic(y, y, b, b, eps)
    np.testing.assert_allclose(aux.ot_xy.cost, ref_xy, rtol=1e-9)
    np.testing.assert_allclose(aux.ot_xx, ref_xx, rtol=1e-9)
    np.testing.assert_allclose(aux.ot_yy, ref_yy, rtol=1e-9)
    np.testing.assert_allclose(val, ref_xy - 0.5 * (ref_xx + ref_yy), rtol=1e-8)
    assert bool(aux.converged) and int(aux.status) == 0


def test_properties(rng, x64):
    x, y, a, b = clouds(rng, 20, 15, 3)
    v1, _ = otreg.sinkhorn_divergence(x, y, a, b, epsilon=0.2)
    v2, _ = otreg.sinkhorn_divergence(y, x, b, a, epsilon=0.2)
    assert float(v1) > 0
    np.testing.assert_allclose(v1, v2, rtol=1e-6)
    val, grad = jax.value_and_grad(lambda x: otreg.sinkhorn_divergence(
        x, x, a, a, epsilon=0.2, tol=1e-10)[0])(
        jnp.asarray(x))
    assert abs(float(val)) < 1e-7 and float(jnp.max(jnp.abs(grad))) < 1e-6


def test_gradients_vs_finite_differences(rng, x64):
    x, y, a, b = (jnp.asarray(z) for z in clouds(rng, 10, 12, 2))

    def S(x, a):
        return otreg.sinkhorn_divergence(x, y, a, b, epsilon=0.3, tol=1e-13)[0]

    gx, ga = jax.grad(S, argnums=(0, 1))(x, a)
    dx = jnp.asarray(rng.standard_normal(x.shape))
    da = jnp.asarray(rng.standard_normal(a.shape))
    da = (da - da.mean()) * 0.05
    h = 1e-6
    np.testing.assert_allclose(jnp.vdot(gx, dx), (S(x + h * dx, a) - S(x - h * dx, a)) / (2 * h),
                               rtol=1e-6)
    np.testing.assert_allclose(jnp.vdot(ga, da), (S(x, a + h * da) - S(x, a - h * da)) / (2 * h),
                               rtol=1e-6, atol=1e-10)
    _, aux = otreg.sinkhorn_divergence(x, y, a, b, epsilon=0.3, tol=1e-13)
    np.testing.assert_allclose(ga - ga.mean(), (aux.ot_xy.f - aux.p) - (aux.ot_xy.f - aux.p).mean(),
                               atol=1e-8)


def test_gradient_flow_decreases(rng):
    x = jnp.asarray(rng.standard_normal((40, 2)), jnp.float32)
    y = jnp.asarray(rng.standard_normal((30, 2)) * 0.5 + 2.0, jnp.float32)
    loss = jax.jit(jax.value_and_grad(lambda x: otreg.sinkhorn_divergence(x, y, epsilon=0.05)[0]))
    values = []
    for _ in range(30):
        v, g = loss(x)
        values.append(float(v))
        x = x - 20.0 * g  # uniform weights 1/n: step n * lr
    assert values[-1] < 0.1 * values[0]
    assert all(np.isfinite(values))


def test_blocked_and_batched(rng):
    x = jnp.asarray(rng.standard_normal((3, 17, 2)), jnp.float32)
    y = jnp.asarray(rng.standard_normal((3, 13, 2)) + 1, jnp.float32)
    dense = jax.vmap(lambda x, y: otreg.sinkhorn_divergence(x, y, epsilon=0.1)[0])(x, y)
    blocked = jax.vmap(lambda x, y: otreg.sinkhorn_divergence(x, y, epsilon=0.1,
                                                              block_size=5)[0])(x, y)
    np.testing.assert_allclose(blocked, dense, rtol=2e-3, atol=1e-5)
    single = otreg.sinkhorn_divergence(x[1], y[1], epsilon=0.1)[0]
    np.testing.assert_allclose(dense[1], single, rtol=1e-4)


def test_no_nan_degenerate(rng):
    x = jnp.asarray(rng.standard_normal((10, 2)), jnp.float32)
    a = jnp.asarray(np.r_[0.0, 0.0, np.full(8, 1 / 8)], jnp.float32)
    for y, eps in ((x, 1e-4), (jnp.concatenate([x[:5], x[:5]]), 1e-3), (x + 5, 1e-3)):
        val, g = jax.value_and_grad(
            lambda x, y=y, eps=eps: otreg.sinkhorn_divergence(x, y, a, epsilon=eps)[0])(x)
        assert bool(jnp.isfinite(val)) and bool(jnp.all(jnp.isfinite(g)))


def test_warm_start_same_answer_fewer_iterations(rng, x64):
    """`init=aux` of a previous step: same value and gradient (float64, tol 1e-9), fewer
    iterations along a gradient flow, carried through jit as a pytree; bad `init` raises."""
    x = jnp.asarray(rng.standard_normal((60, 2)))
    y = jnp.asarray(rng.standard_normal((50, 2)) * 0.5 + 2.0)

    def loss(x, init):
        return otreg.sinkhorn_divergence(x, y, epsilon=0.05, tol=1e-9, init=init)

    step = jax.jit(lambda x, init: jax.value_and_grad(loss, has_aux=True)(x, init))
    cold = jax.jit(lambda x: jax.value_and_grad(lambda x: loss(x, None), has_aux=True)(x))
    (_, aux), _ = cold(x)
    n_cold = n_warm = 0
    for _ in range(8):
        (vc, ac), gc = cold(x)
        (vw, aw), gw = step(x, aux)
        assert bool(ac.converged) and bool(aw.converged)
        np.testing.assert_allclose(float(vw), float(vc), rtol=1e-7, atol=1e-10)
        np.testing.assert_allclose(np.asarray(gw), np.asarray(gc), rtol=1e-5, atol=1e-9)
        n_cold, n_warm = n_cold + int(ac.n_iters.sum()), n_warm + int(aw.n_iters.sum())
        x, aux = x - 20.0 * gc, aw
    assert n_warm < n_cold, (n_warm, n_cold)
    tup = (aux.ot_xy.f, aux.ot_xy.g, aux.p, aux.q)
    np.testing.assert_allclose(float(loss(x, tup)[0]), float(loss(x, aux)[0]), rtol=1e-12)
    with pytest.raises(ValueError, match="init.g"):
        loss(x, (aux.ot_xy.f, aux.ot_xy.f, aux.p, aux.q))
    with pytest.raises(TypeError, match="init"):
        loss(x, (aux.ot_xy.f, aux.ot_xy.g))
