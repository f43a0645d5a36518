"""Exact 1-D OT against POT and SciPy; sliced W2 against POT, closed forms and statistics."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import ot
import pytest
import scipy.stats

import otreg
from otreg.sliced import sample_directions


@pytest.mark.parametrize("sort", ["host", "xla"])
def test_wasserstein_1d_vs_pot_and_scipy(rng, x64, sort):
    u, v = rng.standard_normal(37), rng.standard_normal(53) * 2 + 1
    uw, vw = rng.uniform(0, 1, 37), rng.uniform(0, 1, 53)
    for p in (1.0, 2.0, 1.5):
        ours = otreg.wasserstein_1d(u, v, uw, vw, p=p, sort=sort)
        np.testing.assert_allclose(ours, ot.wasserstein_1d(u, v, uw / uw.sum(), vw / vw.sum(),
                                                           p=p), rtol=1e-10)
    np.testing.assert_allclose(otreg.wasserstein_1d(u, v, uw, vw, p=1, sort=sort),
                               scipy.stats.wasserstein_distance(u, v, uw, vw), rtol=1e-10)
    np.testing.assert_allclose(otreg.wasserstein_1d(u, v, p=1, sort=sort),
                               scipy.stats.wasserstein_distance(u, v), rtol=1e-10)
    w = rng.standard_normal(37)
    np.testing.assert_allclose(otreg.wasserstein_1d(u, w, p=2, sort=sort),
                               np.mean((np.sort(u) - np.sort(w)) ** 2), rtol=1e-12)


def test_wasserstein_1d_batched_grad_ties(rng, x64):
    u = jnp.asarray(rng.standard_normal((4, 20)))
    v = jnp.asarray(rng.standard_normal((4, 20)))
    out = otreg.wasserstein_1d(u, v)
    assert out.shape == (4,)
    for i in range(4):
        ref = ot.wasserstein_1d(np.asarray(u[i]), np.asarray(v[i]), p=2)
        np.testing.assert_allclose(out[i], ref, rtol=1e-10)
    ties = jnp.zeros((4, 20))
    g = jax.grad(lambda u: otreg.wasserstein_1d(u, ties).sum())(jnp.zeros((4, 20)))
    assert bool(jnp.all(jnp.isfinite(g)))
    f = lambda u: otreg.wasserstein_1d(u, v, p=2).sum()  # noqa: E731
    du = jnp.asarray(rng.standard_normal(u.shape))
    h = 1e-6
    np.testing.assert_allclose(jnp.vdot(jax.grad(f)(u), du), (f(u + h * du) - f(u - h * du)) /
                               (2 * h), rtol=1e-6)
    gh = jax.grad(lambda u: otreg.wasserstein_1d(u, v, sort="host").sum())(u)
    gx = jax.grad(lambda u: otreg.wasserstein_1d(u, v, sort="xla").sum())(u)
    np.testing.assert_allclose(gh, gx, atol=1e-12)


def test_sliced_equals_pot_with_same_directions(rng, x64):
    x, y = rng.standard_normal((60, 4)), rng.standard_normal((45, 4)) + 1
    a = rng.uniform(0.1, 1, 60)
    key = jax.random.PRNGKey(int(rng.integers(1 << 30)))
    theta = np.asarray(sample_directions(key, 30, 4, dtype=jnp.float64))
    ref = ot.sliced_wasserstein_distance(x, y, a / a.sum(), None, projections=theta.T)
    ours = otreg.sliced_w2(x, y, a, key=key, n_projections=30, control_variate=None)
    np.testing.assert_allclose(ours, ref, rtol=1e-9)


def test_sliced_d1_is_exact_and_translation(rng, x64):
    x, y = rng.standard_normal((50, 1)), rng.standard_normal((50, 1)) + 2
    for cv in (None, "lower", "upper"):
        np.testing.assert_allclose(otreg.sliced_w2(x, y, control_variate=cv, squared=True),
                                   ot.wasserstein_1d(x[:, 0], y[:, 0], p=2), rtol=1e-9)
    d = 5
    x = rng.standard_normal((40, d))
    t = rng.standard_normal(d)
    key = jax.random.PRNGKey(3)
    theta = np.asarray(sample_directions(key, 64, d, dtype=jnp.float64))
    plain = otreg.sliced_w2(x, x + t, key=key, n_projections=64, control_variate=None,
                            squared=True)
    np.testing.assert_allclose(plain, np.mean((theta @ t) ** 2), rtol=1e-9)
    # the lower control variate is exactly (theta . t)^2: zero variance, exact expectation
    lower = otreg.sliced_w2(x, x + t, key=key, n_projections=64, control_variate="lower",
                            squared=True)
    np.testing.assert_allclose(lower, np.sum(t * t) / d, rtol=1e-9)


@pytest.mark.parametrize("directions", ["gaussian", "orthogonal"])
def test_control_variates_unbiased_and_lower_variance(rng, directions):
    d = 3
    x = rng.standard_normal((300, d)) * np.array([1.5, 1.0, 0.5])
    y = rng.standard_normal((300, d)) * np.array([1.0, 1.2, 0.7]) + 2
    xj, yj = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
    keys = jax.random.split(jax.random.PRNGKey(int(rng.integers(1 << 30))), 300)
    est = {}
    for cv in (None, "lower", "upper"):
        f = jax.jit(jax.vmap(lambda k, cv=cv: otreg.sliced_w2(
            xj, yj, key=k, n_projections=20, control_variate=cv, directions=directions,
            squared=True)))
        est[cv] = np.asarray(f(keys), np.float64)
    # reference: plain Monte Carlo with 30,000 orthogonal directions, and its standard error
    big = np.asarray(jax.jit(jax.vmap(lambda k: otreg.sliced_w2(
        xj, yj, key=k, n_projections=3000, control_variate=None, directions="orthogonal",
        squared=True)))(jax.random.split(jax.random.PRNGKey(7), 10)), np.float64)
    truth, truth_se = big.mean(), big.std() / np.sqrt(len(big))
    for cv, vals in est.items():
        se = np.hypot(vals.std() / np.sqrt(len(vals)), truth_se) + 0.002 * truth  # + O(1/L)
        assert abs(vals.mean() - truth) < 5 * se, (cv, vals.mean(), truth, se)
    assert est["lower"].var() < 0.5 * est[None].var()
    assert est["upper"].var() < 0.5 * est[None].var()


def test_sliced_grad_jit_vmap_and_errors(rng, x64):
    x, y = jnp.asarray(rng.standard_normal((30, 3))), jnp.asarray(rng.standard_normal((25, 3)))
    key = jax.random.PRNGKey(0)
    for cv in (None, "lower", "upper"):
        f = lambda x, cv=cv: otreg.sliced_w2(x, y, key=key, n_projections=16,  # noqa: E731
                                             control_variate=cv)
        g = jax.grad(f)(x)
        dx = jnp.asarray(rng.standard_normal(x.shape))
        h = 1e-6
        np.testing.assert_allclose(jnp.vdot(g, dx), (f(x + h * dx) - f(x - h * dx)) / (2 * h),
                                   rtol=1e-5)
        np.testing.assert_allclose(jax.jit(f)(x), f(x), rtol=1e-12)
    g0 = jax.grad(lambda x: otreg.sliced_w2(x, x))(x)
    assert bool(jnp.all(jnp.isfinite(g0))) and float(jnp.abs(g0).max()) == 0.0
    xs = jnp.stack([x, x + 1])
    vm = jax.vmap(lambda x: otreg.sliced_w2(x, y, key=key))(xs)
    np.testing.assert_allclose(vm[1], otreg.sliced_w2(x + 1, y, key=key), rtol=1e-10)
    x32 = x.astype(jnp.float32)
    assert otreg.sliced_w2(x32, y.astype(jnp.float32)).dtype == jnp.float32
    with pytest.raises(ValueError, match="n_projections"):
        otreg.sliced_w2(x, y, n_projections=0)
    with pytest.raises(ValueError, match="control_variate"):
        otreg.sliced_w2(x, y, control_variate="middle")
    with pytest.raises(ValueError, match="directions"):
        otreg.sliced_w2(x, y, directions="halton")
    with pytest.raises(ValueError, match="same dimension"):
        otreg.sliced_w2(x, y[:, :2])


def test_control_variate_stable_with_two_directions(rng):
    """With L = 2 the estimated coefficient is wild; the clipped estimator must not be much worse
    than plain Monte Carlo (an unclipped OLS slope multiplied the variance 600x here)."""
    x = jnp.asarray(rng.standard_normal((300, 3)) * np.array([2.0, 1.0, 0.5]), jnp.float32)
    y = jnp.asarray(rng.standard_normal((300, 3)) * np.array([0.5, 1.5, 1.0]) + 1, jnp.float32)
    keys = jax.random.split(jax.random.PRNGKey(int(rng.integers(1 << 30))), 400)
    var = {}
    for cv in (None, "lower", "upper"):
        f = jax.jit(jax.vmap(lambda k, cv=cv: otreg.sliced_w2(x, y, key=k, n_projections=2,
                                                              control_variate=cv, squared=True)))
        var[cv] = float(np.var(np.asarray(f(keys), np.float64)))
    assert var["lower"] < 2.0 * var[None] and var["upper"] < 2.0 * var[None]
