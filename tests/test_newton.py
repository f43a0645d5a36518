"""Sinkhorn-Newton-Sparse: same answer as Sinkhorn and POT, far fewer iterations, sound failure."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import ot
import pytest
from conftest import clouds, sqdist

import otreg
from otreg import newton
from otreg.status import Status


def _assignment(rng, n):
    """The SNS paper's random assignment problem: C uniform on [0, 1], uniform marginals."""
    return jnp.asarray(rng.uniform(size=(n, n)))


def test_same_solution_as_sinkhorn_and_pot(rng, x64):
    n, m = int(rng.integers(40, 70)), int(rng.integers(40, 70))
    x, y, a, b = clouds(rng, n, m, 3)
    C = sqdist(x, y)
    C /= C.max()
    eps = 0.005
    res = otreg.sns(jnp.asarray(C), a, b, epsilon=eps, tol=1e-11)
    assert bool(res.converged) and int(res.status) == Status.SUCCESS
    ref = otreg.sinkhorn(jnp.asarray(C), a, b, epsilon=eps, tol=1e-11, max_iter=200_000)
    assert bool(ref.converged)
    np.testing.assert_allclose(np.asarray(res.plan()), np.asarray(ref.plan()), atol=1e-12,
                               rtol=1e-7)
    # potentials agree up to the (fixed) gauge, value to float64 accuracy
    np.testing.assert_allclose(np.asarray(res.f), np.asarray(ref.f), atol=1e-8)
    np.testing.assert_allclose(np.asarray(res.g), np.asarray(ref.g), atol=1e-8)
    np.testing.assert_allclose(float(res.cost), float(ref.cost), rtol=1e-9)
    P_pot = ot.sinkhorn(a, b, C, eps, method="sinkhorn_log", stopThr=1e-13, numItermax=200_000)
    np.testing.assert_allclose(np.asarray(res.plan()), P_pot, atol=1e-9, rtol=1e-5)
    rows, cols = res.marginals()
    assert np.abs(np.asarray(rows) - a).sum() + np.abs(np.asarray(cols) - b).sum() < 1e-10
    assert int(res.stats.n_newton) > 0 and int(res.stats.n_cg) > 0


def test_far_fewer_iterations_than_sinkhorn(rng, x64):
    """Random assignment at eps = 1/1200 (the paper's setting, smaller n): SNS converges to
    1e-10 while Sinkhorn given 10x SNS's iteration count does not."""
    n = 150
    C = _assignment(rng, n)
    res = otreg.sns(C, epsilon=1 / 1200, tol=1e-10)
    assert bool(res.converged), otreg.explain(res.status)
    assert int(res.stats.n_newton) <= 40
    assert int(res.n_iters) == int(res.stats.n_sinkhorn) + int(res.stats.n_newton)
    ref = otreg.sinkhorn(C, epsilon=1 / 1200, tol=1e-10, max_iter=10 * int(res.n_iters))
    assert not bool(ref.converged)
    P = np.asarray(res.plan())
    err = np.abs(P.sum(1) - 1 / n).sum() + np.abs(P.sum(0) - 1 / n).sum()
    assert err < 1e-10  # measured on the returned plan, not taken from the solver


def test_ell_matvec_equals_restricted_dense_hessian(rng, x64):
    n, m, keep = 30, 25, 4
    x, y, a, b = clouds(rng, n, m, 2)
    C = jnp.asarray(sqdist(x, y))
    a, b = jnp.asarray(a), jnp.asarray(b)
    f, g = jnp.asarray(rng.normal(size=n)) * 0.1, jnp.asarray(rng.normal(size=m)) * 0.1
    eps = 0.5
    geom = otreg.CostMatrix(C)
    P = np.asarray(geom.plan(f, g, a, b, eps))
    rows, cols = P.sum(1), P.sum(0)
    h = newton.ell_hessian(geom, a, b, eps, f, g, jnp.asarray(rows), jnp.asarray(cols), keep)
    mask = np.zeros_like(P, bool)  # the keep largest entries of each row, found here by sorting
    np.put_along_axis(mask, np.argsort(-P, axis=1)[:, :keep], True, axis=1)
    Pk = np.where(mask, P, 0.0)
    H = np.block([[np.diag(rows), Pk], [Pk.T, np.diag(cols)]])
    u, v = rng.normal(size=n), rng.normal(size=m)
    hu, hv = newton.hessian_matvec(h, jnp.asarray(u), jnp.asarray(v))
    np.testing.assert_allclose(np.concatenate([hu, hv]), H @ np.concatenate([u, v]),
                               rtol=1e-12, atol=1e-15)
    # and the Schur-complement solve inverts it (plus the relative shift)
    shift = 1e-3
    rf, rg = rng.normal(size=n), rng.normal(size=m)
    rg += (rf.sum() - rg.sum()) / m  # consistent with the kernel (1, -1) if any
    du, dv, _ = newton.solve_ell(h, jnp.asarray(rf), jnp.asarray(rg), shift=shift, rtol=1e-13,
                                 max_iter=500)
    Hs = H + shift * np.diag(np.concatenate([rows, cols]))
    np.testing.assert_allclose(Hs @ np.concatenate([du, dv]), np.concatenate([rf, rg]),
                               atol=1e-10)


def test_blocked_point_cloud_matches_dense_and_float32(rng, x64):
    """Blocked == dense: in float64 at tol 1e-9 the plans agree entry by entry; in float32 at
    tol 1e-4 both converge, their values agree and each returned plan meets tol (checked in
    float64). (Two float32 solutions within an L1 marginal error of 1e-4 can differ by 2e-5 in
    a single entry of 1e-4 where a row splits its mass between two columns at this small
    epsilon: that is within the tolerance asked, not a mismatch.)"""
    n, m = 300, 260
    x, y, a, b = clouds(rng, n, m, 8)
    scale = float(sqdist(x, y).max())
    for dtype, tol, atol in ((jnp.float64, 1e-9, 1e-9), (jnp.float32, 1e-4, None)):
        xs, ys = jnp.asarray(x, dtype), jnp.asarray(y, dtype)
        ws = (jnp.asarray(a, dtype), jnp.asarray(b, dtype))
        kw = dict(epsilon=2e-3, tol=tol)
        dense = otreg.sns(otreg.PointCloud(xs, ys, scale_cost=scale), *ws, **kw)
        blocked = otreg.sns(otreg.PointCloud(xs, ys, block_size=64, scale_cost=scale), *ws, **kw)
        for res in (dense, blocked):
            assert bool(res.converged), otreg.explain(res.status)
            assert res.f.dtype == dtype and float(res.error) <= tol
            assert int(res.stats.n_newton) > 0
            P = np.asarray(res.plan(), np.float64)
            marg = np.abs(P.sum(1) - a).sum() + np.abs(P.sum(0) - b).sum()
            assert marg <= 1.1 * tol, marg
        np.testing.assert_allclose(float(dense.cost), float(blocked.cost),
                                   rtol=1e-10 if atol else 1e-4)
        if atol:
            np.testing.assert_allclose(np.asarray(dense.plan()), np.asarray(blocked.plan()),
                                       atol=atol)


def test_blocked_memory_has_no_n_by_m_buffer():
    n = m = 4000
    x = jnp.zeros((n, 16), jnp.float32)
    y = jnp.ones((m, 16), jnp.float32)

    def solve(x, y):
        return otreg.sns(otreg.PointCloud(x, y, block_size=256), epsilon=1e-2, max_iter=50).cost

    mem = jax.jit(solve).lower(x, y).compile().memory_analysis()
    nm_bytes = n * m * 4
    assert mem.temp_size_in_bytes < nm_bytes / 4, mem.temp_size_in_bytes


@pytest.mark.slow  # make test-all; keeps the default suite under 10 min
def test_jit_vmap_and_implicit_gradients(rng, x64):
    n, m, d = 12, 10, 2
    x, y, a, b = clouds(rng, n, m, d)
    eps = 0.05
    kw = dict(epsilon=eps, tol=1e-12, keep=4)

    def loss(x):  # uses the potentials (implicit gradient) and the plan
        res = otreg.sns(otreg.PointCloud(x, jnp.asarray(y)), a, b, **kw)
        return jnp.sum(res.f * jnp.arange(n)) + jnp.sum(res.plan() * jnp.asarray(sqdist(x, y)))

    x0 = jnp.asarray(x)
    grad = jax.jit(jax.grad(loss))(x0)
    direction = rng.normal(size=x.shape)
    h = 1e-5
    fd = (loss(x0 + h * direction) - loss(x0 - h * direction)) / (2 * h)
    np.testing.assert_allclose(float(jnp.vdot(grad, direction)), float(fd), rtol=1e-5,
                               atol=1e-8)
    # vmap over a batch of cost matrices equals one call each
    Cs = jnp.asarray(rng.uniform(size=(3, n, m)))
    batched = jax.vmap(lambda C: otreg.sns(C, epsilon=0.02, tol=1e-10).cost)(Cs)
    single = [float(otreg.sns(C, epsilon=0.02, tol=1e-10).cost) for C in Cs]
    np.testing.assert_allclose(np.asarray(batched), single, rtol=1e-9)


def test_bad_input_raises():
    C = jnp.ones((5, 4))
    for keep in (0, -1, 1.5, 0.0):
        with pytest.raises(ValueError, match="keep"):
            otreg.sns(C, keep=keep)
    with pytest.raises(TypeError, match="keep"):
        otreg.sns(C, keep="many")
    with pytest.raises(ValueError, match="epsilon"):
        otreg.sns(C, epsilon=0.0)
    with pytest.raises(ValueError, match="keep_mass"):
        otreg.sns(C, keep_mass=1.5)
    with pytest.raises(ValueError, match="`a` has 3 entries"):
        otreg.sns(C, jnp.ones(3) / 3)
    with pytest.raises(ValueError, match="mass"):
        otreg.sns(C, jnp.ones(5) / 5, jnp.ones(4))


def test_forced_failure_is_finite_and_explained(rng, x64):
    """One kept entry per row and a CG budget of 1: no convergence, finite output, a status
    that names the cause."""
    C = _assignment(rng, 80)
    res = otreg.sns(C, epsilon=1 / 1200, tol=1e-12, keep=1, keep_mass=0.01, cg_max_iter=1,
                    max_iter=80,
                    warmup_iter=20)
    assert not bool(res.converged)
    assert int(res.status) == Status.NEWTON_STALLED
    assert "cg_max_iter" in otreg.explain(res.status)
    for z in (res.f, res.g, res.cost, res.plan()):
        assert bool(jnp.all(jnp.isfinite(z)))
    # under jit with a mass mismatch: reported, finite
    out = jax.jit(lambda a: otreg.sns(C, a, jnp.ones(80) / 80, epsilon=0.05))(jnp.ones(80) / 40)
    assert int(out.status) == Status.MASS_MISMATCH and bool(jnp.isfinite(out.cost))


def test_compiled_program_holds_two_sweep_loops():
    """Compile time (issue 14): the Newton stage traces its Sinkhorn block once (a failed line
    search, too little kept mass and weak steps share it), so the program holds the warm-up's
    sweep loop and one more (it held four): while loops of two Sinkhorn solves, plus the
    Newton loop, its line search and its CG."""
    C = jnp.asarray(np.random.default_rng(0).uniform(size=(20, 20)), jnp.float32)

    def n_while(f):
        return jax.jit(f).lower(C).as_text().count("stablehlo.while")

    n_sinkhorn = n_while(lambda C: otreg.sinkhorn(C, epsilon=0.01, mode="kernel"))
    for progress in (False, lambda *_: None):
        def solve(C, progress=progress):
            return otreg.sns(C, epsilon=0.01, progress=progress)

        assert n_while(solve) <= 2 * n_sinkhorn + 3
