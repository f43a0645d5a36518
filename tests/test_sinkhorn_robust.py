"""Sinkhorn: envelope gradients vs finite differences, transforms, no-NaN, bad input, memory."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import clouds, sqdist

import otreg

EPS = 0.5


def _cost_of_C(C, a, b):
    return otreg.sinkhorn(C, a, b, epsilon=EPS, tol=1e-12).cost


def test_envelope_gradient_vs_finite_differences(rng, x64):
    x, y, a, b = clouds(rng, 12, 9, 2)
    x, y, a, b = (jnp.asarray(z) for z in (x, y, a, b))
    h = 1e-5

    def cost_x(x):
        return otreg.sinkhorn(otreg.PointCloud(x, y), a, b, epsilon=EPS, tol=1e-12).cost

    # x: closed form 2 (a_i x_i - (P y)_i) and a central difference along a random direction
    gx = jax.grad(cost_x)(x)
    res = otreg.sinkhorn(otreg.PointCloud(x, y), a, b, epsilon=EPS, tol=1e-12)
    np.testing.assert_allclose(gx, 2 * (a[:, None] * x - res.apply(y)), atol=1e-8)
    dx = jnp.asarray(rng.standard_normal(x.shape))
    fd = (cost_x(x + h * dx) - cost_x(x - h * dx)) / (2 * h)
    np.testing.assert_allclose(jnp.vdot(gx, dx), fd, rtol=1e-6, atol=1e-9)
    # C: gradient is the plan
    C = jnp.asarray(sqdist(np.asarray(x), np.asarray(y)))
    gC = jax.grad(_cost_of_C)(C, a, b)
    np.testing.assert_allclose(gC, res.plan(), atol=1e-10)
    dC = jnp.asarray(rng.standard_normal(C.shape))
    fd = (_cost_of_C(C + h * dC, a, b) - _cost_of_C(C - h * dC, a, b)) / (2 * h)
    np.testing.assert_allclose(jnp.vdot(gC, dC), fd, rtol=1e-6, atol=1e-9)
    # a: along a mass-preserving direction (the masses must stay equal)
    ga = jax.grad(_cost_of_C, argnums=1)(C, a, b)
    da = jnp.asarray(rng.standard_normal(a.shape))
    da = (da - da.mean()) * 0.01
    fd = (_cost_of_C(C, a + h * da, b) - _cost_of_C(C, a - h * da, b)) / (2 * h)
    np.testing.assert_allclose(jnp.vdot(ga, da), fd, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(ga - ga.mean(), res.f - res.f.mean(), atol=1e-8)


def test_blocked_gradient_matches_dense(rng, x64):
    x, y, a, b = (jnp.asarray(z) for z in clouds(rng, 20, 15, 3))

    def cost(x, bs):
        return otreg.sinkhorn(otreg.PointCloud(x, y, block_size=bs), a, b, epsilon=EPS,
                              tol=1e-12).cost

    np.testing.assert_allclose(jax.grad(cost)(x, 8), jax.grad(cost)(x, None), atol=1e-9)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_jit_vmap_dtype(rng, x64, dtype):
    """vmapped results equal per-element single calls, field by field (random problems may be
    ill-conditioned: a plan split into disconnected blocks needs ~10^4 sweeps, so convergence is
    not asserted here, only that the batch did what each single call does)."""
    B, n, m = 3, 10, 14
    xs = jnp.asarray(rng.standard_normal((B, n, 2)), dtype)
    ys = jnp.asarray(rng.standard_normal((B, m, 2)) + 1, dtype)

    def solve(x, y):
        r = otreg.sinkhorn(otreg.PointCloud(x, y), epsilon=0.1, max_iter=2000)
        return r.cost, r.f, r.g, r.converged, r.n_iters, r.error, r.status

    batch = jax.jit(jax.vmap(solve))(xs, ys)
    assert batch[0].dtype == dtype and batch[1].dtype == dtype
    rtol = 1e-4 if dtype == jnp.float32 else 1e-9
    for i in range(B):
        single = solve(xs[i], ys[i])
        for name, got, want in zip(("cost", "f", "g", "converged", "n_iters", "error",
                                    "status"), batch, single, strict=True):
            if name in ("converged", "n_iters", "status"):
                assert int(got[i]) == int(want), (name, i)
            else:
                atol = 1e-5 if dtype == jnp.float32 else 1e-10
                np.testing.assert_allclose(got[i], want, rtol=rtol, atol=atol, err_msg=name)


def test_bfloat16_is_upcast():
    x = jnp.linspace(0, 1, 8, dtype=jnp.bfloat16)[:, None]
    r = otreg.sinkhorn(otreg.PointCloud(x, x + 0.5), epsilon=0.1)
    assert r.cost.dtype == jnp.bfloat16 and bool(r.converged)
    ref = otreg.sinkhorn(otreg.PointCloud(x.astype(jnp.float32), x.astype(jnp.float32) + 0.5),
                         epsilon=0.1)
    # the bf16 inputs are exact in float32, so the only difference is bf16 output rounding
    np.testing.assert_allclose(float(r.cost), float(ref.cost), rtol=2 ** -7)
    np.testing.assert_allclose(np.asarray(r.f, np.float32), np.asarray(ref.f),
                               rtol=2 ** -7, atol=2 ** -7 * float(jnp.max(jnp.abs(ref.f))))


def _all_finite(tree):
    return all(bool(jnp.all(jnp.isfinite(z))) for z in jax.tree_util.tree_leaves(tree)
               if jnp.issubdtype(jnp.asarray(z).dtype, jnp.floating))


def test_no_nan_degenerate_inputs(rng):
    x = jnp.asarray(rng.standard_normal((16, 3)), jnp.float32)
    dup = jnp.concatenate([x[:8], x[:8]])
    a0 = jnp.asarray(np.r_[0.0, 0.0, np.full(14, 1 / 14)], jnp.float32)

    def cost(x, y, a, eps):
        return otreg.sinkhorn(otreg.PointCloud(x, y), a, None, epsilon=eps).cost

    for args in [(x, x, None, 0.1), (x, dup, None, 0.1), (x, x, a0, 0.1), (x, x * 3, None, 1e-4),
                 (dup, x, a0, 1e-4)]:
        val, grads = jax.value_and_grad(cost, argnums=(0, 1))(*args)
        assert _all_finite((val, grads)), args[3]
    r = otreg.sinkhorn(otreg.PointCloud(x, 3 * x, cost="euclidean"), epsilon=1e-4)
    assert _all_finite(r.plan()) and _all_finite(r.f)
    g = jax.grad(lambda x: otreg.sinkhorn(otreg.PointCloud(x, x, cost="euclidean"),
                                          epsilon=1e-2).cost)(x)
    assert _all_finite(g)


def test_bad_input_raises():
    C = jnp.ones((4, 5))
    with pytest.raises(ValueError, match="`a` has 3 entries"):
        otreg.sinkhorn(C, jnp.ones(3) / 3)
    with pytest.raises(TypeError, match="floating dtype"):
        otreg.sinkhorn(jnp.ones((4, 5), jnp.int32))
    with pytest.raises(ValueError, match="2 dimension"):
        otreg.sinkhorn(jnp.ones(4))
    for eps in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="`epsilon`"):
            otreg.sinkhorn(C, epsilon=eps)
    with pytest.raises(ValueError, match="negative"):
        otreg.sinkhorn(C, jnp.array([0.5, 0.6, -0.1, 0.0]))
    with pytest.raises(ValueError, match="NaN or inf"):
        otreg.sinkhorn(C, jnp.array([0.5, jnp.nan, 0.5, 0.0]))
    with pytest.raises(ValueError, match="balanced OT needs equal masses"):
        otreg.sinkhorn(C, jnp.ones(4) / 2)
    with pytest.raises(ValueError, match="sinkhorn: `geom` contains NaN or inf"):
        otreg.sinkhorn(C.at[0, 0].set(jnp.inf))
    with pytest.raises(ValueError, match="unknown `mode`"):
        otreg.sinkhorn(C, mode="fast")
    with pytest.raises(ValueError, match="same dimension"):
        otreg.PointCloud(jnp.ones((3, 2)), jnp.ones((3, 3)))
    with pytest.raises(ValueError, match="unknown `cost`"):
        otreg.PointCloud(jnp.ones((3, 2)), jnp.ones((3, 2)), cost="manhattan")
    with pytest.raises(ValueError, match="`max_iter` must be >= 1"):
        otreg.sinkhorn(C, max_iter=0)
    with pytest.raises(ValueError, match="init"):
        otreg.sinkhorn(C, init=(jnp.zeros(4), jnp.zeros(4)))


def test_bad_values_under_jit_reported():
    C = jnp.asarray(np.random.default_rng(0).random((4, 5)), jnp.float32)
    solve = jax.jit(lambda C, a, b: otreg.sinkhorn(C, a, b, epsilon=0.1))
    b = jnp.ones(5) / 5
    cases = [(jnp.array([0.5, 0.6, -0.1, 0.0]), b, otreg.Status.BAD_WEIGHTS),
             (jnp.array([0.5, jnp.nan, 0.5, 0.0]), b, otreg.Status.BAD_WEIGHTS),
             (jnp.ones(4) / 2, b, otreg.Status.MASS_MISMATCH)]
    for a, bb, code in cases:
        r = solve(C, a, bb)
        assert int(r.status) == code and _all_finite((r.cost, r.f, r.g, r.plan()))
        assert "invalid input" in otreg.explain(r.status)
    r = solve(C.at[1, 2].set(jnp.nan), jnp.ones(4) / 4, b)
    assert int(r.status) == otreg.Status.NONFINITE_INPUT and _all_finite((r.cost, r.plan()))
    assert int(solve(C, jnp.ones(4) / 4, b).status) == otreg.Status.SUCCESS


def test_blocked_compiles_to_no_n_by_m_buffer():
    n, d, bs = 3000, 8, 100
    x = jax.ShapeDtypeStruct((n, d), jnp.float32)

    def solve(x, y, block):
        return otreg.sinkhorn(otreg.PointCloud(x, y, block_size=block), epsilon=0.1,
                              max_iter=50).cost

    nm_bytes = n * n * 4
    blocked = jax.jit(lambda x, y: solve(x, y, bs)).lower(x, x).compile().memory_analysis()
    dense = jax.jit(lambda x, y: solve(x, y, None)).lower(x, x).compile().memory_analysis()
    assert dense.temp_size_in_bytes >= nm_bytes  # the check can fail: dense does hold C
    assert blocked.temp_size_in_bytes < nm_bytes / 10


def test_blocked_20k_compiles_under_1gib():
    """n = m = 20,000, d = 64 (the issue's size): compile only, no solve."""
    x = jax.ShapeDtypeStruct((20_000, 64), jnp.float32)
    solve = jax.jit(lambda x, y: otreg.sinkhorn(otreg.PointCloud(x, y, block_size=256),
                                                epsilon=0.05).cost)
    mem = solve.lower(x, x).compile().memory_analysis()
    total = mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
    assert total < 2**30 / 4


def test_batch_cond_runs_a_branch_only_when_some_element_takes_it():
    """`batch_cond` equals `lax.cond` element by element under vmap (mixed, all-true, all-false
    and unbatched predicates, batched and unbatched operands) and is forward differentiable;
    a branch that no element takes is not executed (its side effect never happens)."""
    from otreg._sinkhorn_loops import batch_cond
    calls = []

    def true_fn(x, y):
        jax.debug.callback(lambda: calls.append("true"))
        return jnp.sin(x) * y

    def false_fn(x, y):
        jax.debug.callback(lambda: calls.append("false"))
        return x + y

    x = jnp.linspace(-1.0, 1.0, 6)
    y = jnp.float32(2.0)
    for pred in (x > 0, x > 5, x < 5):
        calls.clear()
        out = jax.vmap(lambda p, x: batch_cond(p, true_fn, false_fn, x, y))(pred, x)
        jax.effects_barrier()
        ref = jnp.where(pred, jnp.sin(x) * y, x + y)
        np.testing.assert_allclose(out, ref, rtol=1e-6)
        took = ({"true"} if bool(pred.any()) else set()) | \
            ({"false"} if bool((~pred).any()) else set())
        assert set(calls) == took, (pred, calls)
    out = jax.vmap(lambda x: batch_cond(jnp.bool_(True), true_fn, false_fn, x, y))(x)
    np.testing.assert_allclose(out, jnp.sin(x) * y, rtol=1e-6)
    _, tangent = jax.jvp(lambda x: batch_cond(x > 0, true_fn, false_fn, x, y), (0.5,), (1.0,))
    np.testing.assert_allclose(tangent, np.cos(0.5) * 2.0, rtol=1e-6)
