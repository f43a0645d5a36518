"""Sinkhorn-Newton-Sparse on relaxed marginals (``sns(..., rho=)``): the same problem and result
as ``sinkhorn(..., rho=)`` (itself checked against POT and OTT-JAX in test_unbalanced.py), the
plan against POT directly, Newton steps actually taken, gradients, jit/vmap/blocked/float32, and
the solver choice."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import sqdist
from test_unbalanced import pot_plan, primal, problem

import otreg
from otreg import Status
from otreg._methods import choose_solver

RHOS = [(0.3, 5.0), (None, 2.0)]  # (rho_a, None) is the same code with the sides swapped


@pytest.mark.parametrize("rho", RHOS)
def test_plan_matches_pot(rng, x64, rho):
    """Moderate epsilon (POT's scaled Sinkhorn converges there): POT's plan to 1e-6 of its
    largest entry, cost = primal objective of the plan, error <= tol (blocked == dense:
    test_jit_vmap_blocked_float32)."""
    x, y, a, b, C = problem(rng)
    eps = float(rng.uniform(0.2, 1.0))
    P_ref = pot_plan(a, b, C, eps, rho)
    res = otreg.sns(jnp.asarray(C), jnp.asarray(a), jnp.asarray(b), epsilon=eps, rho=rho,
                    tol=1e-10, warmup_tol=1e-2)
    assert int(res.status) == Status.SUCCESS and float(res.error) <= 1e-10
    P = np.asarray(res.plan())
    np.testing.assert_allclose(P, P_ref, atol=1e-6 * P_ref.max(), rtol=0)
    np.testing.assert_allclose(float(res.cost), primal(P, C, a, b, eps, rho), rtol=1e-9)


@pytest.mark.parametrize("rho", [(0.7, 0.7), (None, 1.5), (2.0, 0.4), (1e4, 1e4)])
def test_small_epsilon_newton_matches_sinkhorn(rng, x64, rho):
    """eps = 0.005 on 2-d clouds (max C / eps ~ 4,000): SNS takes Newton steps, reaches tol =
    1e-10 in fewer iterations than Sinkhorn and returns Sinkhorn's potentials. rho = 1e4 is the
    damped-phase case found in development (the L1 error rose for a few Newton steps while the
    merit fell: it used to stop NEWTON_STALLED at error 0.1)."""
    x, y, a, b, C = problem(rng, mass_b=1.5)  # the shapes of test_plan_matches_pot: one compile
    Cj, aj, bj = jnp.asarray(C), jnp.asarray(a), jnp.asarray(b)
    ref = otreg.sinkhorn(Cj, aj, bj, epsilon=0.005, rho=rho, tol=1e-10)
    res = otreg.sns(Cj, aj, bj, epsilon=0.005, rho=rho, tol=1e-10)
    assert int(ref.status) == Status.SUCCESS
    assert int(res.status) == Status.SUCCESS, (int(res.status), float(res.error))
    assert int(res.stats.n_newton) > 0 and int(res.n_iters) < int(ref.n_iters)
    assert res.rho is not None
    scale = max(1.0, float(jnp.abs(ref.f).max()))  # rho = 1e4: |f| ~ 1e3
    np.testing.assert_allclose(res.f, ref.f, atol=1e-8 * scale)
    np.testing.assert_allclose(res.g, ref.g, atol=1e-8 * scale)
    np.testing.assert_allclose(float(res.cost), float(ref.cost), rtol=1e-10)
    P = np.asarray(res.plan())
    ta = a if rho[0] is None else a * np.exp(-np.asarray(res.f) / rho[0])
    tb = b if rho[1] is None else b * np.exp(-np.asarray(res.g) / rho[1])
    resid = np.abs(P.sum(1) - ta).sum() + np.abs(P.sum(0) - tb).sum()
    assert resid <= 1e-9, resid


def test_gradients(rng, x64):
    """float64 central differences: the cost in C (its gradient is the plan: envelope) and the
    potentials in C (implicit, with the relaxed Hessian); both equal Sinkhorn's."""
    _, _, a, b, C = problem(rng, n=15, m=12, mass_b=0.6)
    eps, rho = 0.05, (0.5, 2.0)
    aj, bj, Cj = jnp.asarray(a), jnp.asarray(b), jnp.asarray(C)
    w = jnp.asarray(rng.standard_normal(15))

    def out(solver, C):
        res = solver(C, aj, bj, epsilon=eps, rho=rho, tol=1e-12)
        return res.cost + 1e-3 * (jnp.vdot(res.f, w) + jnp.sum(res.g)), res

    (v, res), grad = jax.value_and_grad(lambda c: out(otreg.sns, c), has_aux=True)(Cj)
    assert int(res.status) == Status.SUCCESS
    dC, h = jnp.asarray(rng.standard_normal(C.shape)), 1e-6
    fd = (out(otreg.sns, Cj + h * dC)[0] - out(otreg.sns, Cj - h * dC)[0]) / (2 * h)
    np.testing.assert_allclose(jnp.vdot(grad, dC), fd, rtol=1e-6, atol=1e-9)
    ref = jax.grad(lambda c: out(otreg.sinkhorn, c)[0])(Cj)
    np.testing.assert_allclose(grad, ref, atol=1e-9)


def test_jit_vmap_blocked_float32(rng):
    """float32: jit (traced rho) and vmap give the single-call answers; blocked == dense; at
    small epsilon and small or large rho the result and its gradient are finite with an honest
    status (SUCCESS only at error <= tol)."""
    x, y, a, b, _ = (np.asarray(z, np.float32) for z in problem(rng, n=64, m=48, mass_b=1.3))
    xj, yj, aj, bj = map(jnp.asarray, (x, y, a, b))

    @jax.jit
    def solve(x, eps, r):
        def cost(x):
            res = otreg.sns(otreg.PointCloud(x, yj), aj, bj, epsilon=eps, rho=r)
            return res.cost, res
        (_, res), g = jax.value_and_grad(cost, has_aux=True)(x)
        return res, g

    dense, _ = solve(xj, 0.05, 1.0)
    blocked = otreg.sns(otreg.PointCloud(xj, yj, block_size=16), aj, bj, epsilon=0.05, rho=1.0)
    assert int(dense.status) == Status.SUCCESS and int(blocked.status) == Status.SUCCESS
    np.testing.assert_allclose(blocked.plan(), dense.plan(), atol=1e-4 * float(dense.plan().max()))
    vm = jax.vmap(solve, in_axes=(0, None, None))(jnp.stack([xj, xj + 0.5]), 0.05, 1.0)[0]
    np.testing.assert_allclose(vm.cost, [dense.cost, solve(xj + 0.5, 0.05, 1.0)[0].cost],
                               rtol=1e-5)
    for eps, rho in ((1e-3, 1e-3), (1e-3, 10.0), (0.05, 1e-4)):
        res, g = solve(xj, eps, rho)
        assert np.isfinite(float(res.cost)) and bool(jnp.all(jnp.isfinite(g)))
        assert bool(jnp.all(jnp.isfinite(res.f))) and bool(jnp.all(jnp.isfinite(res.g)))
        assert int(res.status) in (Status.SUCCESS, Status.NEWTON_STALLED, Status.STALLED,
                                   Status.MAX_ITER), int(res.status)
        assert (int(res.status) == Status.SUCCESS) == bool(res.converged)
        if bool(res.converged):  # the default float32 tol
            assert float(res.error) <= 1e-3


def test_bad_relaxation_raises(rng):
    x = jnp.asarray(rng.standard_normal((6, 2)))
    for kw, match in ((dict(rho=0.0), "rho"), (dict(rho=-1.0), "rho"), (dict(tau=1.5), "tau"),
                      (dict(tau=0.0), "tau"), (dict(rho=1.0, tau=0.5), "not both")):
        with pytest.raises(ValueError, match=match):
            otreg.sns(x @ x.T, **kw)
    res = jax.jit(lambda r: otreg.sns(sqdist(x, x + 1), rho=r))(jnp.nan)
    assert int(res.status) == Status.BAD_PARAMETER and np.isfinite(float(res.cost))


def test_solver_choice_and_divergence(rng, x64):
    """method='sns' solves relaxed problems (the divergence, and so the loss); method='auto'
    adds rule 5 (a mild relaxation only) to the balanced rule (otreg._methods)."""
    x = jnp.asarray(rng.standard_normal((20, 2)))
    y = x[::-1] + 0.3
    C = sqdist(x, y)
    assert choose_solver("sns", C, 0.01, relax=("rho", (1.0, 1.0))) is otreg.sns
    peak = float(C.max())
    eps = peak / 1e4  # balanced rule: SNS (float64, default tol, max C / eps = 1e4) ...
    assert choose_solver("auto", C, eps) is otreg.sns
    mild = ("rho", (20.0 * peak, None))
    assert choose_solver("auto", C, eps, relax=mild) is otreg.sns
    for strong in (("rho", (peak, 20.0 * peak)), ("tau", (None, 0.5))):  # ... rule 5: not
        assert choose_solver("auto", C, eps, relax=strong) is otreg.sinkhorn
    kw = dict(epsilon=0.05, rho=0.5, tol=1e-10)
    v_sns, aux = otreg.sinkhorn_divergence(x, y, method="sns", **kw)
    v_sk, _ = otreg.sinkhorn_divergence(x, y, method="sinkhorn", **kw)
    assert int(aux.status) == Status.SUCCESS
    np.testing.assert_allclose(float(v_sns), float(v_sk), rtol=1e-8)
