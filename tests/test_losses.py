"""Losses: batch shapes, jit/vmap/grad, agreement with single calls, closed forms, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import ot
import pytest

import otreg
from otreg import losses


@pytest.mark.slow  # make test-all; keeps the default suite under 10 min
def test_divergence_loss_batch_axes(rng):
    pred = jnp.asarray(rng.standard_normal((2, 3, 12, 2)), jnp.float32)
    target = jnp.asarray(rng.standard_normal((2, 3, 9, 2)) + 1, jnp.float32)
    out = losses.sinkhorn_divergence_loss(pred, target, epsilon=0.1)
    assert out.shape == (2, 3) and out.dtype == jnp.float32
    jitted = jax.jit(lambda p, t: losses.sinkhorn_divergence_loss(p, t, epsilon=0.1))(pred,
                                                                                      target)
    np.testing.assert_allclose(jitted, out, rtol=1e-5)
    for i, j in ((0, 0), (1, 2)):
        single = otreg.sinkhorn_divergence(pred[i, j], target[i, j], epsilon=0.1)[0]
        np.testing.assert_allclose(out[i, j], single, rtol=1e-4, atol=1e-6)
    vm = jax.vmap(lambda p, t: losses.sinkhorn_divergence_loss(p, t, epsilon=0.1))(pred, target)
    np.testing.assert_allclose(vm, out, rtol=1e-4)
    g = jax.grad(lambda p: losses.sinkhorn_divergence_loss(p, target, epsilon=0.1).mean())(pred)
    assert g.shape == pred.shape
    for i, j in ((0, 1), (1, 0)):  # the batch gradient is the per-example one, over the mean
        gs = jax.grad(lambda p, t=target[i, j]: otreg.sinkhorn_divergence(p, t, epsilon=0.1)[0])(
            pred[i, j])
        np.testing.assert_allclose(g[i, j], gs / 6, rtol=1e-3, atol=1e-6)
    assert float(losses.sinkhorn_divergence_loss(pred[0, 0], pred[0, 0], epsilon=0.1)) < 1e-4


def test_divergence_loss_errors():
    with pytest.raises(ValueError, match="batch shape"):
        losses.sinkhorn_divergence_loss(jnp.ones((2, 4, 2)), jnp.ones((3, 4, 2)))
    with pytest.raises(ValueError, match="dimension d"):
        losses.sinkhorn_divergence_loss(jnp.ones((4, 2)), jnp.ones((4, 3)))
    with pytest.raises(ValueError, match=r"\(\.\.\., n, d\)"):
        losses.sinkhorn_divergence_loss(jnp.ones(4), jnp.ones(4))
    with pytest.raises(ValueError, match="pred_weights"):
        losses.sinkhorn_divergence_loss(jnp.ones((4, 2)), jnp.ones((4, 2)),
                                        pred_weights=jnp.ones(3) / 3)
    with pytest.raises(ValueError, match="epsilon"):
        losses.sinkhorn_divergence_loss(jnp.ones((4, 2)), jnp.ones((4, 2)), epsilon=-1.0)


def _ground_metric(K):
    k = np.arange(K, dtype=np.float64)
    return np.abs(k[:, None] - k[None, :])


def test_label_loss_hard_labels_closed_form(rng):
    K = 6
    M = jnp.asarray(_ground_metric(K), jnp.float32)
    logits = jnp.asarray(rng.standard_normal((4, 5, K)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, K, (4, 5)))
    out = losses.wasserstein_label_loss(logits, labels, M, epsilon=0.05)
    probs = jax.nn.softmax(logits, -1)
    closed = jnp.sum(probs * M[:, labels].transpose(1, 2, 0), -1)  # sum_k p_k M[k, y]
    assert out.shape == (4, 5)
    np.testing.assert_allclose(out, closed, rtol=1e-4, atol=1e-5)
    g = jax.grad(lambda z: losses.wasserstein_label_loss(z, labels, M, epsilon=0.05).sum())(logits)
    g_closed = jax.grad(lambda z: jnp.sum(jax.nn.softmax(z, -1) *
                                          M[:, labels].transpose(1, 2, 0)))(logits)
    np.testing.assert_allclose(g, g_closed, atol=1e-4)


def test_label_loss_soft_labels_vs_pot(rng, x64):
    K = 7
    M = _ground_metric(K) / K
    logits = rng.standard_normal((3, K))
    soft = rng.dirichlet(np.ones(K), 3)
    out = jax.jit(lambda z, s: losses.wasserstein_label_loss(z, s, jnp.asarray(M), epsilon=0.1,
                                                            tol=1e-10))(logits, soft)
    for i in range(3):
        p = np.exp(logits[i]) / np.exp(logits[i]).sum()
        P = ot.sinkhorn(p, soft[i], M, 0.1, method="sinkhorn_log", stopThr=1e-13,
                        numItermax=100_000)
        ref = (P * M).sum() + 0.1 * (P * np.log(P / np.outer(p, soft[i]))).sum()
        np.testing.assert_allclose(out[i], ref, rtol=1e-7)


def test_label_loss_errors_and_no_nan():
    M = jnp.asarray(_ground_metric(3), jnp.float32)
    with pytest.raises(ValueError, match="cost_matrix"):
        losses.wasserstein_label_loss(jnp.zeros((2, 3)), jnp.zeros(2, int), jnp.ones((4, 4)))
    with pytest.raises(ValueError, match=r"lie in \[0, 3\)"):
        losses.wasserstein_label_loss(jnp.zeros((2, 3)), jnp.array([0, 3]), M)
    with pytest.raises(ValueError, match="shape"):
        losses.wasserstein_label_loss(jnp.zeros((2, 3)), jnp.zeros(3, int), M)
    with pytest.raises(TypeError, match="integer class ids"):
        losses.wasserstein_label_loss(jnp.zeros((2, 3)), jnp.zeros((2, 3), bool), M)
    logits = jnp.array([[80.0, -80.0, 0.0], [0.0, 0.0, 0.0]])  # softmax underflows to 0
    val, g = jax.value_and_grad(lambda z: losses.wasserstein_label_loss(
        z, jnp.array([2, 0]), M, epsilon=1e-3).sum())(logits)
    assert bool(jnp.isfinite(val)) and bool(jnp.all(jnp.isfinite(g)))


def test_sliced_loss_batch_and_errors(rng):
    pred = jnp.asarray(rng.standard_normal((2, 3, 20, 2)), jnp.float32)
    target = jnp.asarray(rng.standard_normal((2, 3, 15, 2)) + 1, jnp.float32)
    key = jax.random.PRNGKey(1)
    out = losses.sliced_w2_loss(pred, target, key=key, n_projections=32)
    assert out.shape == (2, 3) and bool(jnp.all(out > 0))
    keys = jax.random.split(key, 6).reshape(2, 3, -1)
    np.testing.assert_allclose(out[1, 2], otreg.sliced_w2(pred[1, 2], target[1, 2], key=keys[1, 2],
                                                          n_projections=32), rtol=1e-5)
    g = jax.jit(jax.grad(lambda p: losses.sliced_w2_loss(p, target, key=key,
                                                         n_projections=32).mean()))(pred)
    for i, j in ((0, 0), (1, 2)):
        gs = jax.grad(lambda p, t=target[i, j], k=keys[i, j]: otreg.sliced_w2(
            p, t, key=k, n_projections=32))(pred[i, j])
        np.testing.assert_allclose(g[i, j], gs / 6, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="batch shape"):
        losses.sliced_w2_loss(pred, target[0])
    with pytest.raises(ValueError, match="n_projections"):
        losses.sliced_w2_loss(pred, target, n_projections=0)


def _fd(f, z, direction, h=1e-5):
    """Central finite difference of a float64 function along ``direction``."""
    return (f(z + h * direction) - f(z - h * direction)) / (2 * h)


@pytest.mark.slow  # ~50 s; divergence and sliced FD checks run by default in their modules
def test_loss_gradients_match_finite_differences(rng, x64):
    """float64: the gradient of each (summed) loss along a random direction equals the central
    finite difference of the loss (envelope gradients are exact at convergence)."""
    pred = jnp.asarray(rng.standard_normal((2, 6, 2)))
    target = jnp.asarray(rng.standard_normal((2, 5, 2)) + 0.5)
    direction = jnp.asarray(rng.standard_normal(pred.shape))
    key = jax.random.PRNGKey(int(rng.integers(1 << 30)))
    square = jnp.asarray(rng.standard_normal((2, 6, 2)) + 0.5)  # quadratic OT: k = n = m
    point_losses = {
        "divergence": lambda p: losses.sinkhorn_divergence_loss(p, target, epsilon=0.5,
                                                                tol=1e-12).sum(),
        "sliced": lambda p: losses.sliced_w2_loss(p, target, key=key, n_projections=8).sum(),
        "quadratic": lambda p: losses.sparse_ot_loss(p, square, k=6, gamma=1.0,
                                                     tol=1e-12).sum(),
    }
    for name, f in point_losses.items():
        g = jax.grad(f)(pred)
        np.testing.assert_allclose(float(jnp.vdot(g, direction)), _fd(f, pred, direction),
                                   rtol=1e-5, atol=1e-8, err_msg=name)
    K = 5
    M = jnp.asarray(_ground_metric(K) / K)
    logits = jnp.asarray(rng.standard_normal((3, K)))
    soft = jnp.asarray(rng.dirichlet(np.ones(K), 3))
    dz = jnp.asarray(rng.standard_normal(logits.shape))
    for labels in (soft, jnp.asarray(rng.integers(0, K, 3))):
        f = lambda z, labels=labels: losses.wasserstein_label_loss(  # noqa: E731
            z, labels, M, epsilon=0.1, tol=1e-12).sum()
        g = jax.grad(f)(logits)
        np.testing.assert_allclose(float(jnp.vdot(g, dz)), _fd(f, logits, dz), rtol=1e-6,
                                   atol=1e-9)
        for i in range(3):  # the batch gradient row is the single-example gradient
            gi = jax.grad(lambda z, i=i, labels=labels: losses.wasserstein_label_loss(
                z, labels[i], M, epsilon=0.1, tol=1e-12))(logits[i])
            np.testing.assert_allclose(g[i], gi, rtol=1e-7, atol=1e-12)


def test_bad_examples_flagged_nan_under_jit(rng):
    """Under jit, an example with bad input is NaN (its gradient 0); the others are unchanged."""
    pred = jnp.asarray(rng.standard_normal((3, 6, 2)), jnp.float32)
    target = jnp.asarray(rng.standard_normal((3, 6, 2)) + 1, jnp.float32)
    bad = pred.at[1, 2, 0].set(jnp.nan)
    key = jax.random.PRNGKey(0)
    f = jax.jit(lambda p: losses.sliced_w2_loss(p, target, key=key, n_projections=16))
    clean, flagged = np.asarray(f(pred)), np.asarray(f(bad))
    assert np.isnan(flagged[1]) and np.all(np.isfinite(clean))
    np.testing.assert_allclose(flagged[[0, 2]], clean[[0, 2]], rtol=1e-6)
    g = jax.jit(jax.grad(lambda p: jnp.nansum(f(p))))(bad)
    assert bool(jnp.all(jnp.isfinite(g))) and float(jnp.abs(g[1]).max()) == 0.0
    with pytest.raises(ValueError, match="`pred`"):
        losses.sliced_w2_loss(bad, target)
    K = 4
    M = jnp.asarray(_ground_metric(K), jnp.float32)
    logits = jnp.asarray(rng.standard_normal((4, K)), jnp.float32)
    lf = jax.jit(lambda z, y: losses.wasserstein_label_loss(z, y, M, epsilon=0.1))
    good = np.asarray(lf(logits, jnp.asarray([0, 1, 2, 3])))
    out = np.asarray(lf(logits.at[0, 1].set(jnp.inf), jnp.asarray([0, 1, K, -1])))
    assert np.all(np.isnan(out[[0, 2, 3]])) and np.isfinite(out[1])
    np.testing.assert_allclose(out[1], good[1], rtol=1e-6)
    soft = jnp.full((2, K), 1.0 / K).at[1].mul(1.01)  # the second row sums to 1.01
    assert np.isnan(lf(logits[:2], soft)).tolist() == [False, True]
    with pytest.raises(ValueError, match="`labels`.*sum to 1"):
        losses.wasserstein_label_loss(logits[:2], soft, M)


def test_divergence_loss_warm_start_through_a_jitted_step(rng, x64):
    """`return_potentials=True` then `init=`: the potentials ride in the step's state; values and
    gradients equal a cold start (float64, tol 1e-9); a wrongly shaped `init` raises."""
    pred = jnp.asarray(rng.standard_normal((3, 20, 2)))
    target = jnp.asarray(rng.standard_normal((3, 15, 2)) + 1.0)

    def loss(p, init):
        vals, pots = losses.sinkhorn_divergence_loss(p, target, epsilon=0.1, tol=1e-9,
                                                     init=init, return_potentials=True)
        return vals.sum(), pots

    step = jax.jit(lambda p, init: jax.value_and_grad(loss, has_aux=True)(p, init))
    (v0, pots), g0 = step(pred, None)
    assert [z.shape for z in pots] == [(3, 20), (3, 15), (3, 20), (3, 15)]
    pred2 = pred - 5.0 * g0
    (v_cold, _), g_cold = step(pred2, None)
    (v_warm, _), g_warm = step(pred2, pots)
    np.testing.assert_allclose(float(v_warm), float(v_cold), rtol=1e-7)
    np.testing.assert_allclose(np.asarray(g_warm), np.asarray(g_cold), rtol=1e-5, atol=1e-10)
    plain = losses.sinkhorn_divergence_loss(pred2, target, epsilon=0.1, tol=1e-9)
    np.testing.assert_allclose(float(plain.sum()), float(v_cold), rtol=1e-12)
    with pytest.raises(ValueError, match="init"):
        losses.sinkhorn_divergence_loss(pred2, target, epsilon=0.1, init=(pots[1],) + pots[1:])
    with pytest.raises(TypeError, match="init"):
        losses.sinkhorn_divergence_loss(pred2, target, epsilon=0.1, init=pots[:2])
