"""Issue 12 contracts for the entropic solvers: every `method=`, exact second derivatives,
hard iteration budgets, honest progress and CG reports, traced bad epsilon, asymmetric costs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import ot
import pytest
from conftest import clouds, sqdist

import otreg
from otreg import implicit
from otreg.status import Status

METHODS = ("sinkhorn", "sns", "auto")


def _readme_clouds(rng, n, dtype):
    """The README's clouds (standard normal, y shifted by 1), smaller."""
    return (jnp.asarray(rng.standard_normal((n, 2)), dtype),
            jnp.asarray(rng.standard_normal((n, 2)) + 1.0, dtype))


@pytest.mark.slow  # ~35 s; test_every_method_float32_honest covers every method by default
def test_every_method_readme_arguments_float64(rng, x64):
    """README: `otreg.sinkhorn_divergence(x, y, epsilon=1e-4, method="auto")` (auto picks SNS
    here), and the same for each method of sinkhorn_divergence and of the losses."""
    x, y = _readme_clouds(rng, 24, jnp.float64)
    vals = {}
    for method in METHODS:
        v, aux = otreg.sinkhorn_divergence(x, y, epsilon=1e-4, method=method)
        # honest status always; SNS (and auto, which picks it here) must converge. Plain
        # Sinkhorn at eps = 1e-4 may need more than max_iter sweeps on some random clouds: then
        # it must say MAX_ITER, and its value is not compared.
        assert bool(aux.converged) == (int(aux.status) == Status.SUCCESS), (method, aux.status)
        assert bool(aux.ot_xy.converged) == (float(aux.ot_xy.error) <= 1e-6), method
        if method != "sinkhorn":
            assert bool(aux.converged), (method, aux.status)
        if bool(aux.converged):
            vals[method] = float(v)
        else:
            assert int(aux.status) == Status.MAX_ITER, (method, aux.status)
    n = x.shape[0]
    C = sqdist(np.asarray(x), np.asarray(y))
    emd = ot.emd2(np.full(n, 1 / n), np.full(n, 1 / n), C)
    ref = vals["sns"]
    for method, val in vals.items():  # same problem, same value; eps = 1e-4 is close to the LP
        np.testing.assert_allclose(val, ref, rtol=1e-7, err_msg=method)
        assert abs(val - emd) <= 1e-3 * emd, (val, emd)
    # losses: a batch of two problems (the pair and its swap: equal by symmetry)
    pred, target = jnp.stack([x, y]), jnp.stack([y, x])
    for method in vals:
        loss = otreg.losses.sinkhorn_divergence_loss(pred, target, epsilon=1e-4, method=method)
        np.testing.assert_allclose(np.asarray(loss), ref, rtol=1e-7, err_msg=method)


def test_every_method_float32_honest(rng):
    """float32, README arguments: no crash, finite, and `converged` only with error <= tol."""
    x, y = _readme_clouds(rng, 24, jnp.float32)
    ref = None
    for method in METHODS:
        v, aux = otreg.sinkhorn_divergence(x, y, epsilon=1e-4, method=method)
        assert bool(jnp.isfinite(v))
        assert bool(aux.converged) == (int(aux.status) == Status.SUCCESS)
        if bool(aux.ot_xy.converged):
            assert float(aux.ot_xy.error) <= 1e-3
            ref = float(v) if ref is None else ref
            np.testing.assert_allclose(float(v), ref, rtol=2e-3, err_msg=method)


def test_label_loss_every_method(rng, x64):
    K = 5
    M = jnp.asarray(np.abs(np.arange(K)[:, None] - np.arange(K)[None, :]), jnp.float64)
    logits = jnp.asarray(rng.standard_normal((3, K)))
    labels = jnp.asarray(rng.dirichlet(np.ones(K), 3))
    out = [otreg.losses.wasserstein_label_loss(logits, labels, M, epsilon=0.05, tol=1e-10,
                                               method=m) for m in METHODS]
    p = np.asarray(jax.nn.softmax(logits))
    for i in range(3):
        ab = np.outer(p[i], np.asarray(labels[i]))
        P = ot.sinkhorn(p[i], np.asarray(labels[i]), np.asarray(M), 0.05,
                        method="sinkhorn_log", stopThr=1e-13, numItermax=100_000)
        ref = float((P * np.asarray(M)).sum() + 0.05 * ((P * np.log(P / ab)).sum()
                                                      - P.sum() + ab.sum()))
        for o in out:
            np.testing.assert_allclose(float(o[i]), ref, rtol=1e-7)


def _fd_grad(grad, z, dz, h=1e-5):
    return (grad(z + h * dz) - grad(z - h * dz)) / (2 * h)


def test_second_derivatives_match_finite_differences(rng, x64):
    """Hessian-vector products of `cost` in every mode against float64 finite differences of
    the gradient (the gradient itself is checked against FD in test_sinkhorn_robust)."""
    x, y, a, b = (jnp.asarray(z) for z in clouds(rng, 7, 6, 2))
    v = jnp.asarray(rng.standard_normal(x.shape))

    def cost(x):
        return otreg.sinkhorn(otreg.PointCloud(x, y), a, b, epsilon=0.3, tol=1e-13).cost

    grad = jax.grad(cost)
    fd = _fd_grad(grad, x, v)
    scale = float(jnp.max(jnp.abs(fd)))
    assert scale > 1e-2
    hvp_fwd = jax.jvp(grad, (x,), (v,))[1]
    H_rev = jax.jacrev(jax.jacrev(cost))(x).reshape(x.size, x.size)
    H = jax.hessian(cost)(x).reshape(x.size, x.size)
    for got in (hvp_fwd.ravel(), H_rev @ v.ravel(), H @ v.ravel()):
        np.testing.assert_allclose(got, fd.ravel(), atol=1e-6 * scale)
    # in epsilon too (the potentials move with epsilon inside the derivative)
    C = jnp.asarray(sqdist(np.asarray(x), np.asarray(y)))
    ge = jax.grad(lambda e: otreg.sinkhorn(C, a, b, epsilon=e, tol=1e-13).cost)
    np.testing.assert_allclose(jax.grad(ge)(0.3), _fd_grad(ge, 0.3, 1.0), rtol=1e-5)


@pytest.mark.slow  # ~20 s; make test-all
def test_sns_backward_uses_callers_cg_max_iter(rng, x64):
    """A capped backward CG (cg_max_iter=1) changes the implicit gradient: sns must pass the
    caller's value on (it used 1000) and give the same gradient as sinkhorn with that cap."""
    x, y, a, b = (jnp.asarray(z) for z in clouds(rng, 10, 8, 2))
    w = jnp.asarray(rng.standard_normal(10))

    def grad(solver, cap):
        def loss(x):
            r = solver(otreg.PointCloud(x, y), a, b, epsilon=0.5, tol=1e-12, cg_max_iter=cap)
            return jnp.dot(w, r.f)
        return jax.grad(loss)(x)

    exact = grad(otreg.sinkhorn, 1000)
    capped = grad(otreg.sinkhorn, 1)
    assert float(jnp.max(jnp.abs(capped - exact))) > 1e-6 * float(jnp.max(jnp.abs(exact)))
    np.testing.assert_allclose(grad(otreg.sns, 1), capped, atol=1e-10)


def test_backward_check_reports_cg(rng):
    x, y, a, b = clouds(rng, 20, 15, 2)
    geom = otreg.PointCloud(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32))
    res = otreg.sinkhorn(geom, a, b, epsilon=0.5)
    ok = implicit.backward_check(res)
    assert bool(ok.converged) and float(ok.residual) <= 1e-5 and int(ok.n_products) > 1
    capped = implicit.backward_check(res, cg_max_iter=1)
    assert not bool(capped.converged) and float(capped.residual) > 1e-5
    assert int(capped.n_products) == 1 and bool(jnp.isfinite(capped.residual))
    # a capped backward still gives a finite gradient (never NaN)
    g = jax.grad(lambda x: jnp.sum(otreg.sinkhorn(otreg.PointCloud(x, geom.y), a, b,
                                                  epsilon=1e-3, cg_max_iter=1).f ** 2))(geom.x)
    assert bool(jnp.all(jnp.isfinite(g)))


@pytest.mark.parametrize("solver", [otreg.sinkhorn, otreg.sns])
def test_traced_bad_epsilon_reported(rng, solver):
    x, y, _, _ = clouds(rng, 12, 9, 2)
    geom = otreg.PointCloud(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32))
    solve = jax.jit(lambda e: solver(geom, epsilon=e))
    good = solver(geom)  # epsilon=None: the documented default, used in place of a bad one
    for eps in (0.0, -1.0, float("nan"), float("inf")):
        r = solve(jnp.float32(eps))
        assert int(r.status) == Status.BAD_PARAMETER, eps
        for z in (r.cost, r.f, r.g, r.plan(), r.error):
            assert bool(jnp.all(jnp.isfinite(z))), eps
        np.testing.assert_allclose(float(r.cost), float(good.cost), rtol=1e-5)
    v, aux = jax.jit(lambda e: otreg.sinkhorn_divergence(geom.x, geom.y, epsilon=e))(-1.0)
    assert int(aux.status) == Status.BAD_PARAMETER and bool(jnp.isfinite(v))
    assert int(solve(jnp.float32(0.3)).status) == Status.SUCCESS


@pytest.mark.parametrize("mode", ["kernel", "log", pytest.param("sns", marks=pytest.mark.slow)])
def test_max_iter_is_a_hard_bound(rng, mode):
    x, y, a, b = clouds(rng, 30, 30, 2)
    C = jnp.asarray(sqdist(x, y) / 10, jnp.float32)
    for max_iter, check_every, anneal in ((20, 10, False), (23, 10, True), (7, 3, True),
                                          (1, 10, True)):
        kw = dict(epsilon=1e-3, tol=1e-9, max_iter=max_iter, check_every=check_every,
                  anneal=anneal)
        if mode == "sns":
            r = otreg.sns(C, a, b, warmup_iter=5, block_sweeps=7, **kw)
        else:
            r = otreg.sinkhorn(C, a, b, mode=mode, **kw)
        assert 1 <= int(r.n_iters) <= max_iter, (mode, max_iter, check_every, anneal)
        assert not bool(r.converged) and bool(jnp.isfinite(r.cost))
        assert int(r.status) in (Status.MAX_ITER, Status.NEWTON_STALLED)


def test_progress_reports_only_accepted_blocks(rng):
    """float32, eps = 1e-3, no annealing: the first kernel block underflows and is redone in
    the log domain; the user sees increasing iterations with finite errors, as NumPy scalars."""
    x, y, a, b = clouds(rng, 30, 25, 2, shift=3.0)
    C = jnp.asarray(sqdist(x, y), jnp.float32)
    C = C / C.max()
    seen = []
    r = otreg.sinkhorn(C, a, b, epsilon=1e-3, check_every=10, anneal=False, max_iter=200,
                       progress=lambda *v: seen.append(v))
    jax.block_until_ready(r)
    jax.effects_barrier()
    its = [s[0] for s in seen]
    assert its and its == list(range(10, 10 * len(its) + 1, 10)), its
    assert its[-1] == int(r.n_iters)
    assert all(type(s[0]) is int and type(s[1]) is float and np.isfinite(s[1]) for s in seen)


@pytest.mark.parametrize("block_size", [None, 4])
def test_asymmetric_callable_cost_blocked_equals_dense(rng, x64, block_size):
    x, y, a, b = (jnp.asarray(z) for z in clouds(rng, 13, 11, 2))

    def cost(x, y):  # not symmetric: cost(y, x) != cost(x, y).T
        return jnp.sum((x[:, None, :] - y[None, :, :]) ** 2, -1) + 0.8 * (
            x[:, None, 0] - y[None, :, 0])

    C = cost(x, y)
    dense = otreg.sinkhorn(C, a, b, epsilon=0.3, tol=1e-12)
    r = otreg.sinkhorn(otreg.PointCloud(x, y, cost=cost, block_size=block_size), a, b,
                       epsilon=0.3, tol=1e-12)
    assert bool(r.converged)
    np.testing.assert_allclose(np.asarray(r.plan()), np.asarray(dense.plan()), atol=1e-12)
    np.testing.assert_allclose(float(r.cost), float(dense.cost), rtol=1e-10)
    t = otreg.PointCloud(x, y, cost=cost, block_size=block_size).transpose()
    np.testing.assert_allclose(np.asarray(t.cost_matrix), np.asarray(C).T, atol=1e-12)
