"""Sinkhorn over-relaxation (``accelerate``) and the batch-aware ``vmap`` (issue 14)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import ot
import pytest
from conftest import clouds, sqdist
from hypothesis import given, settings
from hypothesis import strategies as st

import otreg
from otreg import _sinkhorn_loops as loops


def _errors(P, a, b):
    P = np.asarray(P, np.float64)
    return np.abs(P.sum(1) - a).sum() + np.abs(P.sum(0) - b).sum()


def _hard_problem(rng, n, d):
    x, y, a, b = clouds(rng, n, n, d)
    C = sqdist(x, y)
    return C / C.max(), a, b


@pytest.mark.parametrize("geometry", ["matrix", "blocked"])
def test_same_solution_fewer_sweeps(rng, x64, geometry):
    """At small epsilon (d = 64, eps = 0.005 on a max-scaled cost) the over-relaxed solve
    reaches the same plan as plain Sinkhorn and as POT's log-domain Sinkhorn, with at most half
    the sweeps (the issue's goal), on the kernel path and on blocked clouds (log path)."""
    n, d, eps, tol = 150, 64, 0.005, 1e-9
    x, y, a, b = clouds(rng, n, n, d)
    s = np.sqrt(sqdist(x, y).max())
    x, y = x / s, y / s
    C = sqdist(x, y)
    geom = (jnp.asarray(C) if geometry == "matrix"
            else otreg.PointCloud(jnp.asarray(x), jnp.asarray(y), block_size=64))
    kw = dict(epsilon=eps, tol=tol, max_iter=20_000)
    fast = otreg.sinkhorn(geom, jnp.asarray(a), jnp.asarray(b), **kw)
    plain = otreg.sinkhorn(geom, jnp.asarray(a), jnp.asarray(b), accelerate=False, **kw)
    assert bool(fast.converged) and bool(plain.converged)
    assert int(fast.n_iters) <= 0.5 * int(plain.n_iters), (fast.n_iters, plain.n_iters)
    for r in (fast, plain):
        err = _errors(r.plan(), a, b)
        assert err <= 2 * tol, err  # the reported error is the whole (row + column) error
        np.testing.assert_allclose(float(r.error), err, rtol=0.5, atol=1e-12)
    np.testing.assert_allclose(fast.plan(), plain.plan(), atol=1e-9)
    np.testing.assert_allclose(float(fast.cost), float(plain.cost), rtol=1e-9)
    P_pot = ot.sinkhorn(a, b, C, eps, method="sinkhorn_log", numItermax=100_000, stopThr=1e-12)
    np.testing.assert_allclose(np.asarray(fast.plan()), P_pot, atol=1e-8)


def test_gradients_unchanged(rng, x64):
    """The fixed point is the same, so are the implicit gradients (cost and potentials)."""
    x, y, a, b = (jnp.asarray(z) for z in clouds(rng, 30, 25, 3))

    def solve(x, accelerate):
        return otreg.sinkhorn(otreg.PointCloud(x, y), a, b, epsilon=0.2, tol=1e-11,
                              accelerate=accelerate, max_iter=50_000)

    def loss(x, accelerate):
        r = solve(x, accelerate)
        return r.cost + jnp.sum(r.f * r.f)

    assert bool(solve(x, True).converged) and bool(solve(x, False).converged)
    np.testing.assert_allclose(jax.grad(loss)(x, True), jax.grad(loss)(x, False), atol=1e-8)


def test_relax_rule():
    """Young's SOR relation: at omega = 1 the estimate is the observed rate; at the optimum the
    rule stays put; a growing error resets omega to 1 and halves the room above 1; no estimate
    from a block right after a change (ref_err inf) or outside the final stage."""
    dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    st0 = loops.initial_state(jnp.zeros(3, dtype), jnp.zeros(3, dtype), 1, dtype)
    n = jnp.array(10)
    kappa = 0.99
    s = st0._replace(ref_err=jnp.asarray(0.01, dtype))
    w, cap, ref = loops.relax(s, jnp.array(True), jnp.asarray(0.01 * kappa ** 10, dtype), n)
    np.testing.assert_allclose(float(w), 2 / (1 + np.sqrt(1 - kappa)), rtol=1e-4)
    assert float(ref) == np.inf and float(cap) == pytest.approx(loops.OMEGA_MAX)
    # at the optimum the observed rate is omega - 1: no change
    w_opt = float(w)
    s = st0._replace(omega=jnp.asarray(w_opt, dtype), ref_err=jnp.asarray(0.01, dtype))
    w2, _, ref2 = loops.relax(s, jnp.array(True), jnp.asarray(0.01 * (w_opt - 1) ** 10, dtype), n)
    assert float(w2) == pytest.approx(w_opt) and float(ref2) > 0
    # growth: reset and halve
    s = st0._replace(omega=jnp.asarray(1.8, dtype), ref_err=jnp.asarray(0.01, dtype))
    w3, cap3, ref3 = loops.relax(s, jnp.array(True), jnp.asarray(0.02, dtype), n)
    assert float(w3) == 1.0 and float(cap3) == pytest.approx(1.4) and float(ref3) == np.inf
    # no estimate without a reference, outside the final stage, or above RELAX_START
    for state, final, err in ((st0, True, 0.001), (s._replace(omega=jnp.asarray(1.0, dtype)),
                                                     False, 0.001),
                              (st0._replace(ref_err=jnp.asarray(0.5, dtype)), True, 0.4)):
        w4, _, _ = loops.relax(state, jnp.array(final), jnp.asarray(err, dtype), n)
        assert float(w4) == 1.0
    # accelerate=False: the cap is 1, omega never moves
    off = loops.initial_state(jnp.zeros(3, dtype), jnp.zeros(3, dtype), 1, dtype, False)
    w5, _, _ = loops.relax(off._replace(ref_err=jnp.asarray(0.01, dtype)), jnp.array(True),
                           jnp.asarray(0.0099, dtype), n)
    assert float(w5) == 1.0


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(2, 40), m=st.integers(2, 40),
       d=st.integers(1, 8), log_eps=st.floats(-3.0, 0.0))
def test_status_is_honest(seed, n, m, d, log_eps):
    """Whatever omega does, ``converged`` means the returned plan's L1 error (recomputed in
    float64 from the float32 solve) is at tol up to float32 rounding, and nothing is NaN."""
    rng = np.random.default_rng(seed)
    x, y, a, b = clouds(rng, n, m, d)
    C = sqdist(x, y)
    C = (C / C.max()).astype(np.float32)
    r = otreg.sinkhorn(jnp.asarray(C), jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32),
                       epsilon=10.0 ** log_eps, tol=1e-3, max_iter=3000)
    assert np.all(np.isfinite(np.asarray(r.f))) and np.isfinite(float(r.cost))
    if bool(r.converged):
        assert _errors(r.plan(), a, b) <= 1e-3 + 1e-5
    else:
        assert int(r.status) == otreg.Status.MAX_ITER


def _fields(r):
    return dict(cost=r.cost, f=r.f, g=r.g, n_iters=r.n_iters, error=r.error, status=r.status,
                converged=r.converged)


@pytest.mark.parametrize("shape", [(5, 10, 12), (3, 130, 128)])
def test_batched_equals_singles(rng, x64, shape):
    """Both batching paths on CPU (lockstep chunks, padded: B = 5 with chunks of 4; one by one:
    n * m >= SEQUENTIAL_MIN_SIZE) give each element exactly what its single call gives, its own
    sweep count included; vmap of vmap too."""
    B, n, m = shape
    assert (n * m >= loops.SEQUENTIAL_MIN_SIZE) == (n == 130)
    Cs = np.stack([sqdist(*clouds(rng, n, m, 3)[:2]) for _ in range(B)])
    Cs = jnp.asarray(Cs / Cs.max())

    def solve(C):
        return _fields(otreg.sinkhorn(C, epsilon=0.01, tol=1e-8, max_iter=5000))

    batch = jax.jit(jax.vmap(solve))(Cs)
    nested = jax.jit(jax.vmap(jax.vmap(solve)))(Cs[None])
    for i in range(B):
        single = solve(Cs[i])
        for k, want in single.items():
            np.testing.assert_allclose(batch[k][i], want, rtol=1e-10, atol=1e-12, err_msg=k)
            np.testing.assert_allclose(nested[k][0, i], want, rtol=1e-10, atol=1e-12,
                                       err_msg=k)
    assert len({int(k) for k in batch["n_iters"]}) >= 1
