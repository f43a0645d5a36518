"""Sinkhorn against answers no one here wrote: POT, exact LP, closed-form gradients, FD."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import ot
import pytest
from conftest import clouds, sqdist
from scipy.optimize import linear_sum_assignment

import otreg


def _entropic_objective(P, C, a, b, eps):
    """<P, C> + eps KL(P | a b^T) in float64 NumPy (generalised KL, 0 log 0 = 0)."""
    ab = a[:, None] * b[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = np.where(P > 0, P * np.log(P / ab), 0.0).sum() - P.sum() + ab.sum()
    return (P * C).sum() + eps * kl


@pytest.mark.parametrize("mode", ["kernel", "log"])
@pytest.mark.parametrize("eps", [0.05, 0.01])
def test_matches_pot_float64(rng, x64, mode, eps):
    n, m = int(rng.integers(30, 60)), int(rng.integers(30, 60))
    x, y, a, b = clouds(rng, n, m, 3)
    C = sqdist(x, y)
    C /= C.max()
    res = otreg.sinkhorn(jnp.asarray(C), a, b, epsilon=eps, tol=1e-10, mode=mode)
    assert bool(res.converged) and int(res.status) == 0
    P_pot = ot.sinkhorn(a, b, C, eps, method="sinkhorn_log", stopThr=1e-13, numItermax=100_000)
    P = np.asarray(res.plan())
    np.testing.assert_allclose(P, P_pot, atol=1e-9, rtol=1e-6)
    ref = _entropic_objective(P_pot, C, a, b, eps)
    np.testing.assert_allclose(float(res.cost), ref, rtol=1e-8)
    assert res.f.dtype == jnp.float64


def test_small_eps_close_to_exact_lp(rng, x64):
    n = 60
    x, y, _, _ = clouds(rng, n, n, 2)
    C = sqdist(x, y)
    C /= C.max()
    a = np.full(n, 1.0 / n)
    rows, cols = linear_sum_assignment(C)
    exact = C[rows, cols].mean()
    res = otreg.sinkhorn(jnp.asarray(C), epsilon=2e-4, tol=1e-3, max_iter=50_000)
    assert bool(res.converged)
    P = np.asarray(res.plan())
    assert abs((P * C).sum() - exact) <= 0.01 * exact
    np.testing.assert_allclose(exact, ot.emd2(a, a, C), rtol=1e-9)


def test_small_eps_weighted_vs_emd(rng, x64):
    x, y, a, b = clouds(rng, 50, 70, 2)
    C = sqdist(x, y)
    C /= C.max()
    res = otreg.sinkhorn(otreg.CostMatrix(jnp.asarray(C)), a, b, epsilon=2e-4, tol=1e-3,
                         max_iter=100_000)
    P = np.asarray(res.plan())
    exact = ot.emd2(a, b, C)
    assert abs((P * C).sum() - exact) <= 0.01 * exact


@pytest.mark.parametrize("blocked", [False, True])
def test_marginals_apply_plan(rng, blocked):
    x, y, a, b = clouds(rng, 37, 53, 4)
    geom = otreg.PointCloud(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32),
                            block_size=16 if blocked else None, scale_cost="max")
    res = otreg.sinkhorn(geom, a, b, epsilon=0.02, tol=1e-5)
    assert bool(res.converged) and float(res.error) <= 1e-5
    P = np.asarray(res.plan(), np.float64)
    assert np.abs(P.sum(1) - a).sum() + np.abs(P.sum(0) - b).sum() < 3e-5
    rows, cols = res.marginals()
    np.testing.assert_allclose(rows, P.sum(1), atol=1e-6)
    np.testing.assert_allclose(cols, P.sum(0), atol=1e-6)
    v = rng.standard_normal((53, 3)).astype(np.float32)
    u = rng.standard_normal(37).astype(np.float32)
    np.testing.assert_allclose(res.apply(v), P @ v, atol=1e-5)
    np.testing.assert_allclose(res.apply(v[:, 0]), P @ v[:, 0], atol=1e-5)
    np.testing.assert_allclose(res.apply(u, axis=0), P.T @ u, atol=1e-5)


def test_blocked_equals_dense(rng, x64):
    x, y, a, b = clouds(rng, 45, 33, 3)
    out = []
    for bs in (None, 7, 64):
        geom = otreg.PointCloud(jnp.asarray(x), jnp.asarray(y), block_size=bs)
        out.append(otreg.sinkhorn(geom, a, b, epsilon=0.5, tol=1e-10))
    assert all(bool(r.converged) and float(r.error) <= 1e-10 for r in out)
    for r in out[1:]:
        np.testing.assert_allclose(r.cost, out[0].cost, rtol=1e-10)
        np.testing.assert_allclose(r.plan(), out[0].plan(), atol=1e-12)


def test_symmetry_and_permutation(rng, x64):
    x, y, a, b = clouds(rng, 20, 30, 2)
    C = sqdist(x, y)
    r1 = otreg.sinkhorn(jnp.asarray(C), a, b, epsilon=0.3, tol=1e-11)
    r2 = otreg.sinkhorn(jnp.asarray(C.T), b, a, epsilon=0.3, tol=1e-11)
    assert bool(r1.converged) and bool(r2.converged)
    np.testing.assert_allclose(r1.cost, r2.cost, rtol=1e-9)
    np.testing.assert_allclose(r1.plan(), np.asarray(r2.plan()).T, atol=1e-12)
    p, q = rng.permutation(20), rng.permutation(30)
    r3 = otreg.sinkhorn(jnp.asarray(C[p][:, q]), a[p], b[q], epsilon=0.3, tol=1e-11)
    np.testing.assert_allclose(r3.cost, r1.cost, rtol=1e-9)
    np.testing.assert_allclose(r3.plan(), np.asarray(r1.plan())[p][:, q], atol=1e-12)


def test_warm_start_and_progress(rng):
    x, y, a, b = clouds(rng, 40, 40, 2)
    C = jnp.asarray(sqdist(x, y), jnp.float32)
    r1 = otreg.sinkhorn(C, a, b, epsilon=0.5, tol=1e-5)
    seen = []
    r2 = otreg.sinkhorn(C, a, b, epsilon=0.5, tol=1e-5, init=(r1.f, r1.g),
                        progress=lambda it, err, eps: seen.append((int(it), float(err))))
    jax.block_until_ready(r2)
    assert bool(r1.converged) and bool(r2.converged) and float(r2.error) <= 1e-5
    assert int(r2.n_iters) <= 10 and seen and seen[0][0] == 10
    errs = np.asarray(r1.errors)
    k = -(-int(r1.n_iters) // 10)
    assert np.all(errs[:k] >= 0) and np.all(errs[k:] == -1)
    # tol 1e-5 < VERIFY_BELOW in float32: ``error`` is the re-check on the returned potentials
    # (their float32 rounding moves it off the loop's last check), both at most tol
    assert float(errs[k - 1]) <= 1e-5 and float(r1.error) <= 1e-5
    r3 = otreg.sinkhorn(C, a, b, epsilon=0.5, tol=1e-3)  # no re-check: the loop's last check
    errs3 = np.asarray(r3.errors)
    assert float(r3.error) == float(errs3[errs3 >= 0][-1])


def test_max_iter_reported(rng):
    x, y, a, b = clouds(rng, 40, 40, 2)
    C = jnp.asarray(sqdist(x, y) / 10, jnp.float32)
    res = otreg.sinkhorn(C, a, b, epsilon=1e-3, tol=1e-7, max_iter=20, anneal=False)
    assert not bool(res.converged) and int(res.status) == otreg.Status.MAX_ITER
    assert "max_iter" in otreg.explain(res.status)
    assert np.all(np.isfinite(np.asarray(res.plan())))


@pytest.mark.parametrize("anneal", [False, True])
def test_kernel_underflow_falls_back_to_log_domain(rng, anneal):
    """C / eps > 88 everywhere in float32: exp(-C / eps) underflows for every entry at the start, so
    the absorbed-kernel solver must take log-domain sweeps; it must agree with pure log mode."""
    x, y, a, b = clouds(rng, 40, 30, 2, shift=6.0)
    C = jnp.asarray(sqdist(x, y), jnp.float32)
    eps = min(0.2, float(C.min()) / 100)
    assert float(C.min()) / eps > 88  # every kernel entry underflows at f = g = 0
    kw = dict(epsilon=eps, tol=1e-3, anneal=anneal, max_iter=5000)
    rk = otreg.sinkhorn(C, a, b, mode="kernel", **kw)
    rl = otreg.sinkhorn(C, a, b, mode="log", **kw)
    assert bool(rk.converged) and bool(rl.converged)
    np.testing.assert_allclose(rk.cost, rl.cost, rtol=1e-4)
    P = np.asarray(rk.plan(), np.float64)
    assert np.abs(P.sum(1) - a).sum() + np.abs(P.sum(0) - b).sum() < 2e-3
    assert np.all(np.isfinite(np.asarray(rk.f))) and np.all(np.isfinite(np.asarray(rk.g)))
