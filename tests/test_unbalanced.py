"""Unbalanced and semi-relaxed Sinkhorn (``rho``/``tau``): plans and values against POT and
OTT-JAX, limits, the reported residual, gradients by finite differences, blocked/jit/vmap/float32,
bad input."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import ot
import pytest
from conftest import sqdist

import otreg
from otreg import Status


def _kl(p, q):
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    return float(np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0) / q), 0.0))
                 - p.sum() + q.sum())


def primal(P, C, a, b, eps, rho):
    """<P, C> + eps KL(P | a b^T) + rho_a KL(P 1 | a) + rho_b KL(P^T 1 | b), in NumPy."""
    v = float(np.sum(P * C)) + eps * _kl(P, np.outer(a, b))
    for r, marg, w in ((rho[0], P.sum(1), a), (rho[1], P.sum(0), b)):
        if r is not None:
            v += r * _kl(marg, w)
    return v


def problem(rng, n=30, m=40, d=2, mass_b=1.7):
    x, y = rng.standard_normal((n, d)), rng.standard_normal((m, d)) + 1.0
    a, b = rng.uniform(0.2, 1.0, n), rng.uniform(0.2, 1.0, m)
    return x, y, a / a.sum(), mass_b * b / b.sum(), sqdist(x, y)


def pot_plan(a, b, C, eps, rho):
    """POT's plain scaled Sinkhorn. (Its "sinkhorn_translation_invariant" method returns a plan
    of higher primal objective when reg_m differs between the sides: 2.77 vs 2.50 at
    reg_m = (0.3, 5), POT 0.9.7; not used.)"""
    reg_m = tuple(np.inf if r is None else r for r in rho)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ot.unbalanced.sinkhorn_unbalanced(
            a, b, C, eps, reg_m, method="sinkhorn", reg_type="kl", stopThr=1e-14,
            numItermax=200_000)


RHOS = [(1.0, 1.0), (0.3, 5.0), (None, 2.0), (3.0, None), (50.0, 50.0)]


@pytest.mark.parametrize("rho", RHOS)
def test_plans_and_values_match_pot(rng, x64, rho):
    """Unequal masses (1 and 1.7), relaxed and semi-relaxed: POT's plan to 1e-6 (measured
    ~1e-14), the returned cost is the primal objective of the returned plan, and the
    reported error is the optimality residual recomputed here from plan and potentials."""
    x, y, a, b, C = problem(rng)
    eps = float(rng.uniform(0.2, 1.0))
    P_ref = pot_plan(a, b, C, eps, rho)
    for geom, mode in ((jnp.asarray(C), "kernel"), (jnp.asarray(C), "log"),
                       (otreg.PointCloud(jnp.asarray(x), jnp.asarray(y), block_size=16), "log")):
        res = otreg.sinkhorn(geom, jnp.asarray(a), jnp.asarray(b), epsilon=eps, rho=rho,
                             tol=1e-10, mode=mode)
        assert int(res.status) == Status.SUCCESS and bool(res.converged), mode
        P = np.asarray(res.plan())
        np.testing.assert_allclose(P, P_ref, atol=1e-6 * P_ref.max(), rtol=0)
        np.testing.assert_allclose(float(res.cost), primal(P, C, a, b, eps, rho), rtol=1e-9)
        f, g = np.asarray(res.f), np.asarray(res.g)
        ta = np.ones_like(a) if rho[0] is None else np.exp(-f / rho[0])
        tb = np.ones_like(b) if rho[1] is None else np.exp(-g / rho[1])
        resid = np.abs(P.sum(1) - a * ta).sum() + np.abs(P.sum(0) - b * tb).sum()
        assert float(res.error) <= 1e-10 and resid <= 1e-9, (float(res.error), resid)


@pytest.mark.parametrize("tau", [(0.5, 0.5), (0.9, 0.7), (1.0, 0.8)])
def test_tau_matches_ott(rng, x64, tau):
    """OTT-JAX's tau_a/tau_b: its entropy is relative to the counting measure, so its problem on
    C is ours on C + eps (log a (+) log b); same plan to 1e-6 (measured ~1e-14). And ``tau`` is
    ``rho = eps tau / (1 - tau)``."""
    from ott.geometry import geometry
    from ott.problems.linear import linear_problem
    from ott.solvers.linear import sinkhorn as ott_sinkhorn

    _, _, a, b, C = problem(rng)
    eps = float(rng.uniform(0.3, 1.0))
    geom = geometry.Geometry(cost_matrix=jnp.asarray(C), epsilon=eps)
    prob = linear_problem.LinearProblem(geom, jnp.asarray(a), jnp.asarray(b), tau_a=tau[0],
                                        tau_b=tau[1])
    out = ott_sinkhorn.Sinkhorn(threshold=1e-13, max_iterations=100_000)(prob)
    C2 = C + eps * (np.log(a)[:, None] + np.log(b)[None, :])
    res = otreg.sinkhorn(jnp.asarray(C2), jnp.asarray(a), jnp.asarray(b), epsilon=eps, tau=tau,
                         tol=1e-11)
    ref = np.asarray(out.matrix)
    np.testing.assert_allclose(np.asarray(res.plan()), ref, atol=1e-6 * ref.max(), rtol=0)
    rho = tuple(None if t == 1.0 else eps * t / (1 - t) for t in tau)
    by_rho = otreg.sinkhorn(jnp.asarray(C2), jnp.asarray(a), jnp.asarray(b), epsilon=eps,
                            rho=rho, tol=1e-11)
    np.testing.assert_allclose(by_rho.plan(), res.plan(), atol=1e-12)


def test_limits_and_hard_sides(rng, x64):
    """rho -> inf: the balanced result (equal masses); rho -> 0: the trivial plan
    a b^T e^{-C/eps}; rho = inf / tau = 1 is exactly the balanced solve (same code)."""
    _, _, a, b, C = problem(rng, mass_b=1.0)
    eps = 0.5
    Cj, aj, bj = jnp.asarray(C), jnp.asarray(a), jnp.asarray(b)
    bal = otreg.sinkhorn(Cj, aj, bj, epsilon=eps, tol=1e-10)
    big = otreg.sinkhorn(Cj, aj, bj, epsilon=eps, rho=1e10, tol=1e-10)
    assert bool(big.converged)
    np.testing.assert_allclose(big.plan(), bal.plan(), atol=1e-6 * float(bal.plan().max()))
    np.testing.assert_allclose(float(big.cost), float(bal.cost), rtol=1e-5)
    small = otreg.sinkhorn(Cj, aj, bj, epsilon=eps, rho=1e-9, tol=1e-12)
    trivial = np.outer(a, b) * np.exp(-C / eps)
    np.testing.assert_allclose(small.plan(), trivial, rtol=1e-6, atol=1e-14)
    for same in (otreg.sinkhorn(Cj, aj, bj, epsilon=eps, tol=1e-10, rho=np.inf),
                 otreg.sinkhorn(Cj, aj, bj, epsilon=eps, tol=1e-10, rho=(None, None)),
                 otreg.sinkhorn(Cj, aj, bj, epsilon=eps, tol=1e-10, tau=1.0)):
        assert same.rho is None
        np.testing.assert_array_equal(same.f, bal.f)
        np.testing.assert_array_equal(same.cost, bal.cost)
        assert int(same.n_iters) == int(bal.n_iters)


def test_unequal_masses_are_not_a_mismatch(rng, x64):
    _, _, a, b, C = problem(rng, mass_b=3.0)
    with pytest.raises(ValueError, match="equal masses"):
        otreg.sinkhorn(jnp.asarray(C), jnp.asarray(a), jnp.asarray(b))
    res = otreg.sinkhorn(jnp.asarray(C), jnp.asarray(a), jnp.asarray(b), rho=(None, 1.0))
    assert int(res.status) == Status.SUCCESS
    P = np.asarray(res.plan())  # semi-relaxed: the hard side is met exactly, b is not
    np.testing.assert_allclose(P.sum(1), a, atol=1e-6)
    assert abs(P.sum() - 1.0) < 1e-6
    jitted = jax.jit(lambda a, b: otreg.sinkhorn(jnp.asarray(C), a, b, rho=1.0).status)
    assert int(jitted(jnp.asarray(a), jnp.asarray(b))) == Status.SUCCESS


@pytest.mark.parametrize("rho", [(0.7, 0.7), (None, 1.5), (2.0, 0.4)])
def test_gradients_finite_differences(rng, x64, rho):
    """float64 central differences: the cost in x, a, b (envelope) and in rho; the potentials
    (implicit with the relaxed Hessian, and unrolled) in C."""
    x, y, a, b, C = problem(rng, n=12, m=15)
    eps = 0.6
    aj, bj = jnp.asarray(a), jnp.asarray(b)
    h = 1e-6

    def cost(x, a, b, r=rho):
        return otreg.sinkhorn(otreg.PointCloud(x, jnp.asarray(y)), a, b, epsilon=eps, rho=r,
                              tol=1e-13).cost

    xj = jnp.asarray(x)
    gx, ga, gb = jax.grad(cost, (0, 1, 2))(xj, aj, bj)
    dx, da, db = rng.standard_normal(x.shape), rng.standard_normal(a.shape) * 0.02, \
        rng.standard_normal(b.shape) * 0.02
    fd = (cost(xj + h * dx, aj + h * da, bj + h * db)
          - cost(xj - h * dx, aj - h * da, bj - h * db)) / (2 * h)
    np.testing.assert_allclose(np.vdot(gx, dx) + ga @ da + gb @ db, fd, rtol=1e-6, atol=1e-9)
    k = 1 if rho[1] is not None else 0
    r0 = jnp.asarray(rho[k])

    def cost_r(r):
        return cost(xj, aj, bj, tuple(r if i == k else rho[i] for i in range(2)))
    fd = (cost_r(r0 + h) - cost_r(r0 - h)) / (2 * h)
    np.testing.assert_allclose(jax.grad(cost_r)(r0), fd, rtol=1e-6, atol=1e-9)
    w = jnp.asarray(rng.standard_normal(12))
    dC = jnp.asarray(rng.standard_normal(C.shape))
    Cj = jnp.asarray(C)
    for implicit in (True, False):
        def pot(C, implicit=implicit):
            res = otreg.sinkhorn(C, aj, bj, epsilon=eps, rho=rho, tol=1e-13,
                                 implicit_diff=implicit)
            return jnp.vdot(res.f, w) + jnp.sum(res.g)
        fd = (pot(Cj + h * dC) - pot(Cj - h * dC)) / (2 * h)
        np.testing.assert_allclose(jnp.vdot(jax.grad(pot)(Cj), dC), fd, rtol=1e-6, atol=1e-9)


def test_blocked_jit_vmap_float32(rng):
    """Blocked == dense; jit and vmap; float32 reaches its default tol with finite outputs at
    small epsilon and small rho."""
    x, y, a, b, C = (np.asarray(z, np.float32) for z in problem(rng, n=64, m=48))
    xj, yj, aj, bj = map(jnp.asarray, (x, y, a, b))
    dense = otreg.sinkhorn(otreg.PointCloud(xj, yj), aj, bj, epsilon=0.1, rho=(1.0, 0.5))
    blocked = otreg.sinkhorn(otreg.PointCloud(xj, yj, block_size=16), aj, bj, epsilon=0.1,
                             rho=(1.0, 0.5))
    assert bool(dense.converged) and bool(blocked.converged)
    np.testing.assert_allclose(blocked.plan(), dense.plan(), atol=1e-5)
    f = jax.jit(lambda x: otreg.sinkhorn(otreg.PointCloud(x, yj), aj, bj, epsilon=0.1,
                                         rho=1.0).cost)
    np.testing.assert_allclose(f(xj), otreg.sinkhorn(otreg.PointCloud(xj, yj), aj, bj,
                                                     epsilon=0.1, rho=1.0).cost, rtol=1e-5)
    xs = jnp.stack([xj, xj + 0.5])
    vm = jax.vmap(f)(xs)
    np.testing.assert_allclose(vm[1], f(xj + 0.5), rtol=1e-5)
    for eps, rho in ((1e-3, 1e-3), (1e-3, 10.0), (0.05, 1e-4)):
        res = otreg.sinkhorn(otreg.PointCloud(xj, yj), aj, bj, epsilon=eps, rho=rho,
                             max_iter=3000)
        g = jax.grad(lambda x, eps=eps, rho=rho: otreg.sinkhorn(
            otreg.PointCloud(x, yj), aj, bj, epsilon=eps, rho=rho, max_iter=3000).cost)(xj)
        assert np.all(np.isfinite(np.asarray(res.plan()))) and np.isfinite(float(res.cost))
        assert np.all(np.isfinite(np.asarray(g)))
        assert int(res.status) in (Status.SUCCESS, Status.MAX_ITER, Status.STALLED)
        if int(res.status) == Status.SUCCESS:
            assert float(res.error) <= 1e-3


def test_outliers_move_the_balanced_cost_not_the_relaxed_one(rng, x64):
    """5% of the target mass far away: the balanced cost jumps (it must carry mass there), the
    relaxed one barely moves (it drops that mass)."""
    n = 200
    x = rng.standard_normal((n, 2))
    y = rng.standard_normal((n, 2)) + 0.5
    y_out = y.copy()
    y_out[:10, 0] += 30.0  # 5% of the points, 30 units away
    out = {}
    for name, yy in (("clean", y), ("outliers", y_out)):
        for rho in (None, 1.0):
            res = otreg.sinkhorn(otreg.PointCloud(jnp.asarray(x), jnp.asarray(yy)),
                                 epsilon=0.5, rho=rho, tol=1e-7)
            assert bool(res.converged), otreg.explain(res.status)
            out[name, rho] = float(res.cost)
    bal = out["outliers", None] - out["clean", None]
    rel = out["outliers", 1.0] - out["clean", 1.0]
    assert bal > 30.0, out  # ~0.05 * 30^2 = 45
    assert abs(rel) < 0.2, out
    assert abs(rel) < 0.01 * bal, out


def test_bad_input_is_a_clear_error(rng):
    C = jnp.asarray(rng.uniform(size=(5, 6)))
    for kw, exc, msg in (({"rho": 0.0}, ValueError, "rho"), ({"rho": -1.0}, ValueError, "rho"),
                         ({"rho": np.nan}, ValueError, "rho"),
                         ({"rho": (1.0, -2.0)}, ValueError, "rho_b"),
                         ({"tau": 0.0}, ValueError, "tau"), ({"tau": 1.5}, ValueError, "tau"),
                         ({"tau": (0.5, None)}, ValueError, "tau_b"),
                         ({"rho": 1.0, "tau": 0.5}, ValueError, "not both"),
                         ({"rho": "big"}, TypeError, "rho"), ({"rho": (1.0, 2.0, 3.0)},
                                                              ValueError, "pair"),
                         ({"rho": jnp.ones(3)}, TypeError, "scalar")):
        with pytest.raises(exc, match=msg):
            otreg.sinkhorn(C, **kw)
    # traced and out of range: reported, finite
    res = jax.jit(lambda r: otreg.sinkhorn(C, rho=r))(jnp.asarray(-1.0))
    assert int(res.status) == Status.BAD_PARAMETER and np.isfinite(float(res.cost))
    res = jax.jit(lambda t: otreg.sinkhorn(C, tau=t))(jnp.asarray(2.0))
    assert int(res.status) == Status.BAD_PARAMETER and np.isfinite(float(res.cost))


def test_large_rho_converges_fast(rng, x64):
    """The translation-invariant step: unequal masses at rho = 1e4 (tau = 0.99995) converge
    in tens of sweeps (plain scaled Sinkhorn needed ~95,000 here), to the primal optimum."""
    _, _, a, b, C = problem(rng)
    res = otreg.sinkhorn(jnp.asarray(C), jnp.asarray(a), jnp.asarray(b), epsilon=0.5,
                         rho=1e4, tol=1e-10)
    assert bool(res.converged) and int(res.n_iters) < 500
    P = np.asarray(res.plan())
    np.testing.assert_allclose(float(res.cost), primal(P, C, a, b, 0.5, (1e4, 1e4)),
                               rtol=1e-9)
    # the mass settles between the two masses (KL-balanced geometric mean for equal rho)
    assert 1.0 < P.sum() < 1.7


@pytest.mark.parametrize("rho", [0.1, 2.0])
def test_unbalanced_divergence(rng, x64, rho):
    """Séjourné et al. 2019: >= 0, symmetric, 0 with zero gradient at equal measures, > 0 for a
    pure mass difference; the value is the three unbalanced OT values (checked against POT's
    plans through the primal objective) plus the mass correction."""
    n, m, eps = 15, 18, 0.4
    x, y = rng.standard_normal((n, 2)), rng.standard_normal((m, 2)) + 0.4
    a, b = rng.uniform(0.2, 1, n), rng.uniform(0.2, 1, m)
    a, b = a / a.sum(), 1.6 * b / b.sum()
    xj, yj, aj, bj = map(jnp.asarray, (x, y, a, b))
    kw = dict(epsilon=eps, rho=rho, tol=1e-11)
    v, aux = otreg.sinkhorn_divergence(xj, yj, aj, bj, **kw)
    v_swap, _ = otreg.sinkhorn_divergence(yj, xj, bj, aj, **kw)
    assert int(aux.status) == Status.SUCCESS
    np.testing.assert_allclose(float(v), float(v_swap), rtol=1e-9)
    ot_values = []
    for (p1, w1), (p2, w2) in (((x, a), (y, b)), ((x, a), (x, a)), ((y, b), (y, b))):
        C = sqdist(p1, p2)
        ot_values.append(primal(pot_plan(w1, w2, C, eps, (rho, rho)), C, w1, w2, eps,
                                (rho, rho)))
    ref = ot_values[0] - 0.5 * (ot_values[1] + ot_values[2]) + 0.5 * eps * (a.sum()
                                                                            - b.sum()) ** 2
    np.testing.assert_allclose(float(v), ref, rtol=1e-6)
    assert float(v) > 0
    v0, _ = otreg.sinkhorn_divergence(xj, xj, aj, aj, **kw)
    gx = jax.grad(lambda z: otreg.sinkhorn_divergence(z, xj, aj, aj, **kw)[0])(xj)
    ga = jax.grad(lambda w: otreg.sinkhorn_divergence(xj, xj, w, aj, **kw)[0])(aj)
    assert abs(float(v0)) < 1e-10 and float(jnp.abs(gx).max()) < 1e-8
    assert float(jnp.abs(ga).max()) < 1e-8
    v_mass, _ = otreg.sinkhorn_divergence(xj, xj, aj, 2.0 * aj, **kw)
    assert float(v_mass) > 1e-3
    # the loss gets the same knob, per example
    loss = otreg.losses.sinkhorn_divergence_loss(xj[None], yj[None], pred_weights=aj[None],
                                                  target_weights=bj[None], **kw)
    np.testing.assert_allclose(loss, [float(v)], rtol=1e-9)


def test_relaxed_solver_choice_and_divergence_errors(rng):
    x = jnp.asarray(rng.standard_normal((6, 2)))
    with pytest.raises(ValueError, match="one scalar"):
        otreg.sinkhorn_divergence(x, x, rho=(None, 1.0))
    v, aux = otreg.sinkhorn_divergence(x, x + 1, rho=1.0, method="auto")
    assert int(aux.status) == Status.SUCCESS and np.isfinite(float(v))


def test_huge_traced_and_tiny_rho(rng):
    """Found in review: a traced rho = inf / tau = 1, or a concrete rho of 1e30, is the balanced
    problem (rho is capped where the dtype cannot tell them apart); float32 at eps / rho = 1e5
    converges (the kernel path's floor there is above tol: log-domain blocks); reverse-mode
    gradients of the potentials in one side's rho."""
    x, y = rng.standard_normal((30, 2)), rng.standard_normal((25, 2)) + 1.0
    C = jnp.asarray(sqdist(x, y), jnp.float32)
    bal = float(otreg.sinkhorn(C, epsilon=0.1).cost)
    solve = jax.jit(lambda r: otreg.sinkhorn(C, epsilon=0.1, rho=(None, r)))
    np.testing.assert_allclose(float(solve(jnp.inf).cost), bal, rtol=1e-4)
    both = jax.jit(lambda r: otreg.sinkhorn(C, epsilon=0.1, rho=r))(jnp.inf)
    np.testing.assert_allclose(float(both.cost), bal, rtol=1e-4)
    costs = jax.vmap(lambda t: otreg.sinkhorn(C, epsilon=0.1, tau=t).cost)(jnp.array([0.9, 1.0]))
    np.testing.assert_allclose(float(costs[1]), bal, rtol=1e-4)
    assert float(costs[0]) < bal
    tiny = otreg.sinkhorn(otreg.PointCloud(jnp.asarray(x, jnp.float32),
                                           jnp.asarray(y, jnp.float32)), epsilon=1.0, rho=1e-5)
    assert int(tiny.status) == Status.SUCCESS and int(tiny.n_iters) < 1000


def test_huge_rho_float64_and_one_sided_rho_gradient(rng, x64):
    x, y = rng.standard_normal((30, 2)), rng.standard_normal((25, 2)) + 1.0
    C64 = jnp.asarray(sqdist(x, y))
    bal64 = float(otreg.sinkhorn(C64, epsilon=0.5).cost)
    for r in (1e30, 1e300):
        np.testing.assert_allclose(float(otreg.sinkhorn(C64, epsilon=0.5, rho=r).cost),
                                   bal64, rtol=1e-12)
    b = jnp.asarray(rng.uniform(0.5, 1.5, 25))

    def pot(r):
        return otreg.sinkhorn(C64, None, b, epsilon=0.3, rho=(r, None), tol=1e-13).f.sum()
    fd = (pot(0.7 + 1e-6) - pot(0.7 - 1e-6)) / 2e-6
    np.testing.assert_allclose(jax.grad(pot)(0.7), fd, rtol=1e-6)
