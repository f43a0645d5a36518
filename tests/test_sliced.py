"""Exact 1-D OT against POT and SciPy; sliced W2 against POT, closed forms and statistics."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import ot
import pytest
import scipy.stats
from conftest import smooth_central_difference

import otreg
from otreg.sliced import sample_directions


@pytest.mark.parametrize("sort", ["auto", "xla"])
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
    (du,), fd = smooth_central_difference(f, (u,), lambda: (
        jnp.asarray(rng.standard_normal(u.shape)),))
    np.testing.assert_allclose(jnp.vdot(jax.grad(f)(u), du), fd, rtol=1e-6)
    # the exact gradient: 2/n (u_i - v matched by rank), distinct values
    un, vn = np.asarray(u), np.asarray(v)
    ranks = np.argsort(np.argsort(un, axis=1), axis=1)
    ref = 2 / 20 * (un - np.take_along_axis(np.sort(vn, axis=1), ranks, axis=1))
    np.testing.assert_allclose(jax.grad(f)(u), ref, atol=1e-12)


def test_sliced_equals_pot_with_same_directions(rng, x64):
    x, y = rng.standard_normal((60, 4)), rng.standard_normal((45, 4)) + 1
    a = rng.uniform(0.1, 1, 60)
    key = jax.random.PRNGKey(int(rng.integers(1 << 30)))
    theta = np.asarray(sample_directions(key, 30, 4, dtype=jnp.float64))
    ref = ot.sliced_wasserstein_distance(x, y, a / a.sum(), None, projections=theta.T)
    ours = otreg.sliced_w2(x, y, a, key=key, n_projections=30, control_variate=None,
                           directions="gaussian")
    np.testing.assert_allclose(ours, ref, rtol=1e-9)
    # the same directions given as an array (POT's `projections=`, transposed) or a function
    np.testing.assert_allclose(otreg.sliced_w2(x, y, a, directions=theta), ref, rtol=1e-9)
    np.testing.assert_allclose(otreg.sliced_w2(x, y, a, directions=lambda k: 3.0 * theta),
                               ref, rtol=1e-9)


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
                            directions="gaussian", squared=True)
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
        (dx,), fd = smooth_central_difference(f, (x,), lambda: (
            jnp.asarray(rng.standard_normal(x.shape)),))
        np.testing.assert_allclose(jnp.vdot(g, dx), fd, rtol=1e-5)
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


def test_wasserstein_1d_weight_gradient_is_exact(rng, x64):
    """The gradient in the weights flows through the quantile breakpoints (it was always 0)."""
    n, m = 11, 16
    u, v = rng.standard_normal(n), rng.standard_normal(m) * 1.5 + 0.3
    uw, vw = rng.uniform(0.1, 1, n), rng.uniform(0.1, 1, m)
    for p in (1.0, 2.0, 3.0):
        f = lambda uw, vw, p=p: otreg.wasserstein_1d(u, v, uw, vw, p=p)  # noqa: E731
        gu, gv = jax.grad(f, (0, 1))(uw, vw)
        for _ in range(3):
            # a zero-sum direction in uw, as in POT's emd_1d_dual_backprop test
            (du, dv), fd = smooth_central_difference(f, (uw, vw), lambda: (
                (lambda t: t - t.mean())(rng.standard_normal(n)), rng.standard_normal(m)))
            np.testing.assert_allclose(gu @ du + gv @ dv, fd, rtol=1e-6, atol=1e-10)
            # forward mode agrees with reverse mode
            np.testing.assert_allclose(jax.jvp(f, (uw, vw), (du, dv))[1], gu @ du + gv @ dv,
                                       rtol=1e-10)
        assert float(jnp.abs(gu).max()) > 0
    # and through sliced_w2 with weights and no control variate
    x, y = rng.standard_normal((20, 3)), rng.standard_normal((25, 3)) + 1
    a = rng.uniform(0.1, 1, 20)
    key = jax.random.PRNGKey(int(rng.integers(1 << 30)))
    g = lambda a: otreg.sliced_w2(x, y, a, key=key, control_variate=None)  # noqa: E731
    (da,), fd = smooth_central_difference(g, (a,), lambda: (rng.standard_normal(20),))
    np.testing.assert_allclose(jax.grad(g)(a) @ da, fd, rtol=1e-6)


def test_forward_mode_hessian_and_ties(rng, x64):
    """jvp/jacfwd/hessian work (the same on every backend) and match the exact Hessian."""
    n = 12
    u, v = jnp.asarray(rng.standard_normal(n)), jnp.asarray(rng.standard_normal(n))
    f = lambda u: otreg.wasserstein_1d(u, v)  # noqa: E731
    np.testing.assert_allclose(jax.hessian(f)(u), 2 / n * np.eye(n), atol=1e-12)
    np.testing.assert_allclose(jax.jacrev(jax.jacrev(f))(u), 2 / n * np.eye(n), atol=1e-12)
    du = jnp.asarray(rng.standard_normal(n))
    np.testing.assert_allclose(jax.jvp(f, (u,), (du,))[1], jax.grad(f)(u) @ du, rtol=1e-12)
    # ties: the tangent of a tie block is its mean (symmetric, finite)
    x = jnp.array([3.0, 1.0, 1.0, 2.0])
    jac = np.asarray(jax.jacfwd(otreg.univariate.sort_values)(x))
    np.testing.assert_allclose(jac, [[0, .5, .5, 0], [0, .5, .5, 0], [0, 0, 0, 1], [1, 0, 0, 0]])
    np.testing.assert_allclose(jax.jacrev(otreg.univariate.sort_values)(x), jac)
    x = jnp.asarray(rng.standard_normal((30, 3)))
    y = jnp.asarray(rng.standard_normal((30, 3)))
    hs = jax.hessian(lambda x: otreg.sliced_w2(x, y, key=jax.random.PRNGKey(1),
                                               squared=True, control_variate=None))(x)
    assert hs.shape == (30, 3, 30, 3) and bool(jnp.all(jnp.isfinite(hs)))


def test_export_for_cpu_and_cuda():
    """No host callback: sliced_w2 and wasserstein_1d serialise, also for another platform."""
    x = jnp.ones((64, 3), jnp.float32)
    for fun in (lambda x: otreg.sliced_w2(x, x + 1.0),
                jax.grad(lambda x: otreg.sliced_w2(x, x[::-1] * 2.0)),
                lambda x: otreg.wasserstein_1d(x[:, 0], x[:40, 1], x[:, 2], None)):
        exp = jax.export.export(jax.jit(fun), platforms=("cpu", "cuda"))(x)
        blob = exp.serialize()
        back = jax.export.deserialize(blob)
        np.testing.assert_allclose(back.call(x), jax.jit(fun)(x), rtol=1e-6)


def test_bad_values_raise_or_give_nan(rng):
    u, v = rng.standard_normal(10), rng.standard_normal(7)
    bad = u.copy()
    bad[3] = np.nan
    with pytest.raises(ValueError, match="`u` contains NaN"):
        otreg.wasserstein_1d(bad, v)
    # under jit: NaN, never a finite value (the NaN point is not on a sampled breakpoint)
    assert np.isnan(jax.jit(otreg.wasserstein_1d)(bad, v))
    assert np.isnan(jax.jit(otreg.wasserstein_1d)(u, v, -np.ones(10), None))
    with pytest.raises(ValueError, match="p"):
        otreg.wasserstein_1d(u, v, p=0.5)  # sorting is not optimal for p < 1: 0.707 != 1.0
    with pytest.raises(ValueError, match="host"):
        otreg.wasserstein_1d(u, v, sort="host")
    x, y = rng.standard_normal((20, 3)), rng.standard_normal((20, 3))
    a = rng.uniform(0.1, 1, 20)
    sw = jax.jit(lambda x, a: otreg.sliced_w2(x, y, a))
    assert np.isnan(sw(x, -a))  # negative weights: NaN, not the value of -a / sum(-a)
    assert np.isfinite(sw(x, a))
    xn = x.copy()
    xn[0, 0] = np.nan
    assert np.isnan(sw(xn, a))
    with pytest.raises(ValueError, match="`x` contains NaN"):
        otreg.sliced_w2(xn, y)


@pytest.mark.parametrize("cv", ["lower", "upper", None])
def test_gradient_finite_when_the_variate_has_no_spread(rng, cv):
    """Centred clouds make the lower variate (the squared mean gap) ~0 on every direction: its
    regression coefficient must not divide by ~0 in reverse mode (a NaN gradient in float32)."""
    x, y = rng.standard_normal((100, 3)), rng.standard_normal((100, 3))
    x, y = jnp.asarray(x - x.mean(0), jnp.float32), jnp.asarray(y - y.mean(0), jnp.float32)
    for target in (y, x):  # centred clouds, then identical ones
        f = lambda x, t=target: otreg.sliced_w2(x, t, control_variate=cv,  # noqa: E731
                                                key=jax.random.key(1), squared=True)
        g = jax.grad(f)(x)
        assert bool(jnp.all(jnp.isfinite(g))) and np.isfinite(float(f(x)))
        if target is x:
            np.testing.assert_allclose(np.asarray(g), 0.0, atol=1e-6)
    # with a variate of real spread the coefficient is still used: lower variance than plain MC
    shifted = y + jnp.asarray([2.0, 0.0, 0.0], jnp.float32)
    keys = jax.random.split(jax.random.key(int(rng.integers(1 << 30))), 200)
    est = jax.vmap(lambda k, cv=cv: otreg.sliced_w2(x, shifted, key=k, n_projections=16,
                                                    control_variate=cv, squared=True))(keys)
    plain = jax.vmap(lambda k: otreg.sliced_w2(x, shifted, key=k, n_projections=16,
                                               control_variate=None, squared=True))(keys)
    if cv is not None:
        assert float(jnp.var(est)) < float(jnp.var(plain))
