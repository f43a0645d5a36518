"""Matmul precision (issue 15): every contraction otreg traces carries an explicit precision.

On TPU (bfloat16 passes) and on GPUs with TF32, XLA runs a float32 ``dot`` of DEFAULT precision at
reduced precision, and so does any backend under the user's ``jax_default_matmul_precision``: the
Sinkhorn kernel matvecs then report convergence at small epsilon while the true marginal error
is far above ``tol``. Every ``dot_general`` in a solver, a cost, a projection must therefore say
``precision=otreg._math.HIGHEST``.

The proof is the trace: each public entry point (and its gradient, its result's methods, its
``vmap``, the accelerator branches via ``force_backend``) is traced to a jaxpr, every nested
jaxpr (while, cond, scan, pjit, custom_jvp/vjp/vmap, custom_linear_solve, remat, ...) is walked,
and every ``dot_general`` must carry a precision other than DEFAULT for both operands, also when
traced under ``jax.default_matmul_precision("bfloat16")`` (explicit precision wins); two
programs are also lowered to StableHLO and checked there. A later unmarked ``@`` fails here.

The value checks at the end run under ``jax.default_matmul_precision("bfloat16")`` with the
tolerances of tests/test_sinkhorn.py, tests/test_sliced.py and tests/test_divergence.py. On CPU
XLA computes float32 dots in full precision whatever the precision config, so they pass either
way there; they guard the answers on accelerators, where the jaxpr test is what makes them hold.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import ot
import pytest
from conftest import clouds, sqdist
from jax.extend import core as jcore

import otreg
from otreg import costs, losses, transforms
from otreg._math import force_backend
from otreg.sliced import sample_directions

DEFAULT = jax.lax.Precision.DEFAULT


def _subjaxprs(value):
    """The jaxprs held by one equation parameter (a jaxpr, a closed jaxpr, or a sequence of them,
    e.g. cond's branches or custom_linear_solve's named tuple)."""
    if isinstance(value, jcore.ClosedJaxpr):
        yield value.jaxpr
    elif isinstance(value, jcore.Jaxpr):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _subjaxprs(v)


def _where(eqn) -> str:
    try:
        from jax._src import source_info_util
        return source_info_util.summarize(eqn.source_info)
    except Exception:  # noqa: BLE001  (private API: the location is only for the message)
        return str(eqn)


def dot_generals(closed) -> list[tuple[object, str]]:
    """``(precision, source location)`` of every ``dot_general`` in ``closed``, recursively."""
    found, stack = [], [closed.jaxpr if isinstance(closed, jcore.ClosedJaxpr) else closed]
    while stack:
        for eqn in stack.pop().eqns:
            if eqn.primitive.name == "dot_general":
                found.append((eqn.params.get("precision"), _where(eqn)))
            for value in eqn.params.values():
                stack.extend(_subjaxprs(value))
    return found


def _implicit(precision) -> bool:
    """None, or DEFAULT for either operand: the global flag (or the platform) decides."""
    if precision is None:
        return True
    pair = precision if isinstance(precision, (tuple, list)) else (precision, precision)
    return any(p is None or p == DEFAULT for p in pair)


def check(fn, *args, expect_dots: bool = True) -> int:
    """Trace ``fn(*args)`` plainly and under a bfloat16 default precision; every dot must carry
    an explicit precision. Returns the number of dots found in the plain trace."""
    counts = []
    for context in (None, "bfloat16"):
        if context is None:
            dots = dot_generals(jax.make_jaxpr(fn)(*args))
        else:
            with jax.default_matmul_precision(context):
                dots = dot_generals(jax.make_jaxpr(fn)(*args))
        bad = sorted({f"{prec} at {where}" for prec, where in dots if _implicit(prec)})
        assert not bad, (f"dot_general without an explicit precision (default precision "
                         f"{context}); pass precision=otreg._math.HIGHEST:\n" + "\n".join(bad))
        counts.append(len(dots))
    assert counts[0] == counts[1]
    if expect_dots:
        assert counts[0] > 0, "no dot_general found: the walker or the case is broken"
    return counts[0]


def test_walker_finds_nested_unmarked_dots():
    """The walker sees dots inside while, cond, scan, pjit, custom_jvp/vjp, remat, vmap and
    reverse mode; the check rejects an unmarked one and accepts HIGHEST."""
    hi = jax.lax.Precision.HIGHEST

    @jax.custom_jvp
    def cj(x):
        return x @ x

    cj.defjvp(lambda p, t: (cj(p[0]), jnp.matmul(t[0], p[0], precision=hi) * 2))

    @jax.custom_vjp
    def cv(x):
        return x @ x

    cv.defvjp(lambda x: (cv(x), x), lambda x, g: (g @ x.T,))

    def body(x):
        w = jax.lax.stop_gradient(x)  # reverse mode does not enter a while loop
        y = x + jax.lax.while_loop(lambda c: c[1] < 2, lambda c: (c[0] @ c[0], c[1] + 1),
                                   (w, 0))[0]
        y = jax.lax.cond(True, lambda z: z @ z, lambda z: z, y)
        y = jax.lax.scan(lambda c, _: (c @ c, None), y, None, length=2)[0]
        y = jax.jit(lambda z: z @ z)(y)
        y = jax.checkpoint(lambda z: z @ z)(y)
        return jnp.sum(cj(y) + cv(y))

    x = jnp.eye(3) * 0.1
    for fn, arg in ((body, x), (jax.grad(body), x), (jax.vmap(body), jnp.stack([x, x]))):
        dots = dot_generals(jax.make_jaxpr(fn)(arg))
        assert sum(_implicit(p) for p, _ in dots) >= 7
    with pytest.raises(AssertionError, match="explicit precision"):
        check(lambda z: z @ z, x)
    assert check(lambda z: jnp.matmul(z, z, precision=hi), x) == 1


def _pts(rng, n=11, m=9, d=3):
    x, y, a, b = clouds(rng, n, m, d)
    f32 = lambda z: jnp.asarray(z, jnp.float32)  # noqa: E731
    return f32(x), f32(y), f32(a), f32(b)


def _use(res, n_out=3):
    """A result and everything a user calls on it."""
    m, n = res.b.shape[0], res.a.shape[0]
    v = jnp.linspace(0.0, 1.0, m * n_out, dtype=res.f.dtype).reshape(m, n_out)
    u = jnp.linspace(-1.0, 1.0, n, dtype=res.f.dtype)
    return (res, res.plan(), res.apply(v), res.apply(v[:, 0]), res.apply(u, axis=0),
            res.marginals())


SINKHORN_KW = {
    "auto": {},
    "kernel": {"mode": "kernel"},
    "log": {"mode": "log"},
    "unrolled": {"implicit_diff": False},
    "no-anneal": {"anneal": False},
    "no-accelerate": {"accelerate": False},
    "relaxed": {"rho": 1.0},
    "semi-relaxed": {"tau": (1.0, 0.9)},
}


@pytest.mark.parametrize(("geometry", "option"), [
    (geometry, option) for geometry in ("costmatrix", "array", "pointcloud", "blocked")
    for option in SINKHORN_KW if (geometry, option) != ("blocked", "kernel")])  # no kernel mode
def test_sinkhorn_and_result_methods(rng, geometry, option):
    kw = SINKHORN_KW[option]
    x, y, a, b = _pts(rng)
    make = {"costmatrix": lambda x, y: otreg.CostMatrix(costs.sqeuclidean(x, y)),
            "array": costs.sqeuclidean,
            "pointcloud": otreg.PointCloud,
            "blocked": lambda x, y: otreg.PointCloud(x, y, block_size=4)}[geometry]
    # epsilon small enough that the annealing stages are in the program
    check(lambda x, y, a, b: _use(otreg.sinkhorn(make(x, y), a, b, epsilon=0.01, **kw)),
          x, y, a, b)


@pytest.mark.parametrize("implicit_diff", [True, False])
@pytest.mark.parametrize("blocked", [False, True])
def test_sinkhorn_gradients(rng, implicit_diff, blocked):
    """Envelope gradient of the cost (x, y, a, b) and the implicit (or unrolled) gradient of
    plan- and apply-based losses (otreg/implicit.py)."""
    x, y, a, b = _pts(rng)
    bs = 4 if blocked else None

    def solve(x, y, a, b):
        return otreg.sinkhorn(otreg.PointCloud(x, y, block_size=bs), a, b, epsilon=0.05,
                              implicit_diff=implicit_diff)

    check(jax.grad(lambda *z: solve(*z).cost, argnums=(0, 1, 2, 3)), x, y, a, b)
    check(jax.grad(lambda x, y, a, b: jnp.sum(solve(x, y, a, b).plan() ** 2)
                   + jnp.sum(solve(x, y, a, b).apply(y) ** 2), argnums=(0, 2)), x, y, a, b)
    check(jax.grad(lambda C: jnp.sum(otreg.sinkhorn(otreg.CostMatrix(C), epsilon=0.05,
                                                    implicit_diff=implicit_diff).f ** 2)),
          costs.sqeuclidean(x, y))
    # relaxed marginals: the unbalanced dual, its envelope (also in rho) and relaxed Hessian
    check(jax.grad(lambda x, a, r: otreg.sinkhorn(otreg.PointCloud(x, y, block_size=bs), a, b,
                                                  epsilon=0.05, rho=(r, None),
                                                  implicit_diff=implicit_diff).cost,
                   argnums=(0, 1, 2)), x, a, jnp.asarray(0.7))
    check(jax.grad(lambda x: jnp.sum(otreg.sinkhorn(otreg.PointCloud(x, y, block_size=bs),
                                                    epsilon=0.05, rho=0.5,
                                                    implicit_diff=implicit_diff).plan() ** 2)), x)


@pytest.mark.parametrize("platform", ["cpu", "gpu"])
def test_sinkhorn_batched_and_accelerator_branch(rng, platform):
    """``vmap`` runs the custom batching rule of the loops (lockstep on accelerators)."""
    x, y, _, _ = _pts(rng)
    xs, ys = jnp.stack([x, x + 1]), jnp.stack([y, y * 2])

    def solve(x, y):
        return otreg.sinkhorn(otreg.PointCloud(x, y), epsilon=0.01)

    with force_backend(platform):
        check(jax.vmap(lambda x, y: _use(solve(x, y))), xs, ys)
        check(jax.grad(lambda x, y: jnp.sum(jax.vmap(lambda x, y: solve(x, y).plan())(x, y)
                                            ** 2)), xs, ys)
        check(lambda x, y: _use(otreg.sns(otreg.PointCloud(x, y), epsilon=0.01)), x, y)


def test_sns(rng):
    x, y, a, b = _pts(rng)
    check(lambda x, y, a, b: _use(otreg.sns(otreg.PointCloud(x, y), a, b, epsilon=0.01)),
          x, y, a, b)
    check(jax.grad(lambda x, y: otreg.sns(otreg.PointCloud(x, y), epsilon=0.01).cost), x, y)
    check(jax.grad(lambda x: jnp.sum(otreg.sns(otreg.PointCloud(x, y), epsilon=0.01).plan()
                                      ** 2)), x)


@pytest.mark.parametrize("kw", [{}, {"block_size": 4}, {"method": "sns"}, {"cost": "euclidean"},
                                {"rho": 0.5}])
def test_sinkhorn_divergence(rng, kw):
    x, y, a, b = _pts(rng)
    check(lambda x, y, a, b: otreg.sinkhorn_divergence(x, y, a, b, epsilon=0.05, **kw), x, y, a, b)
    check(jax.grad(lambda x, y, a: otreg.sinkhorn_divergence(x, y, a, b, epsilon=0.05, **kw)[0],
                   argnums=(0, 1, 2)), x, y, a)


# every accepted pair; qmc + "upper" raises by design (tests/test_sliced_estimators.py)
@pytest.mark.parametrize("directions,control_variate", [
    (dd, cv) for dd in ("gaussian", "orthogonal", "qmc", "auto")
    for cv in (None, "lower", "upper", "auto") if not (dd == "qmc" and cv == "upper")])
def test_sliced_w2(rng, directions, control_variate):
    x, y, a, b = _pts(rng)
    key = jax.random.PRNGKey(0)

    def sw(x, y, a, b):
        return otreg.sliced_w2(x, y, a, b, key=key, n_projections=8, directions=directions,
                               control_variate=control_variate)

    check(sw, x, y, a, b)
    check(jax.grad(sw, argnums=(0, 1, 2, 3)), x, y, a, b)
    check(lambda x, y: otreg.sliced_w2(x, y, key=key, n_projections=8, squared=True,
                                       directions=directions, control_variate=control_variate),
          x, y)


def test_wasserstein_1d(rng):
    """Sorting only: no dots to mark (the walk still must not find an unmarked one)."""
    x, y, a, b = _pts(rng)
    for p in (1.0, 1.5, 2.0):
        check(lambda u, v, uw, vw, p=p: otreg.wasserstein_1d(u, v, uw, vw, p=p),
              x[:, 0], y[:, 0], a, b, expect_dots=False)
        check(jax.grad(lambda u, v, p=p: otreg.wasserstein_1d(u, v, p=p)), x[:, 0], y[:, 0],
              expect_dots=False)


SPARSE_CASES = [
    ("sparse", {"k": 2}),
    ("sparse", {"k": 2, "formulation": "dual"}),
    ("sparse-k1-square", {"k": 1}),  # the auction path (uniform, square, CostMatrix)
    *(("quadratic", {"solver": "lbfgs", "formulation": f}) for f in (None, "semi-dual", "dual")),
    ("quadratic", {"solver": "newton"}),
]


@pytest.mark.parametrize("case", SPARSE_CASES, ids=lambda c: f"{c[0]}-{c[1]}")
def test_sparse_and_quadratic_ot(rng, case):
    name, kw = case
    x, y, a, b = _pts(rng, 10, 10 if name == "sparse-k1-square" else 8)
    if name == "sparse-k1-square":
        solve = lambda x, y, a, b: otreg.sparse_ot(  # noqa: E731
            otreg.CostMatrix(costs.sqeuclidean(x, y)), gamma=0.5, **kw)
    elif name == "sparse":
        solve = lambda x, y, a, b: otreg.sparse_ot(otreg.PointCloud(x, y), a, b,  # noqa: E731
                                                   gamma=0.5, **kw)
    else:
        solve = lambda x, y, a, b: otreg.quadratic_ot(otreg.PointCloud(x, y), a, b,  # noqa: E731
                                                      gamma=0.5, **kw)
    check(lambda *z: (solve(*z), solve(*z).plan(), solve(*z).marginals()), x, y, a, b)
    check(jax.grad(lambda *z: solve(*z).cost, argnums=(0, 1)), x, y, a, b)


def test_losses(rng):
    key = jax.random.PRNGKey(0)
    pred = jnp.asarray(rng.standard_normal((2, 7, 2)), jnp.float32)
    target = jnp.asarray(rng.standard_normal((2, 6, 2)) + 0.5, jnp.float32)
    point_losses = [  # the solvers' own options are covered above
        lambda p: losses.sinkhorn_divergence_loss(p, target, epsilon=0.05, block_size=3,
                                                  return_potentials=True)[0],
        lambda p: losses.sliced_w2_loss(p, target, key=key, n_projections=8),
        lambda p: losses.sparse_ot_loss(p, target, k=3, gamma=0.5),
    ]
    for loss in point_losses:
        check(loss, pred)
        check(jax.grad(lambda p, loss=loss: jnp.sum(loss(p))), pred)
    K = 4
    M = jnp.asarray(np.abs(np.arange(K)[:, None] - np.arange(K)[None, :]) / K, jnp.float32)
    logits = jnp.asarray(rng.standard_normal((3, K)), jnp.float32)
    soft = jnp.asarray(rng.dirichlet(np.ones(K), 3), jnp.float32)
    hard = jnp.asarray(rng.integers(0, K, 3))
    for labels, method in ((hard, "sinkhorn"), (soft, "sns")):
        f = lambda z, labels=labels, method=method: losses.wasserstein_label_loss(  # noqa: E731
            z, labels, M, epsilon=0.05, method=method)
        check(f, logits)
        check(jax.grad(lambda z, f=f: jnp.sum(f(z))), logits)


def test_transforms(rng):
    params = {"w": jnp.asarray(rng.normal(size=(8, 4)), jnp.float32),
              "P": jnp.asarray(rng.uniform(0.5, 1.5, size=(5, 6)), jnp.float32)}
    target = jnp.asarray(rng.normal(size=(16, 2)) + 3.0, jnp.float32)

    def penalty(p, key):
        return (otreg.sliced_w2(p["w"].reshape(-1, 2), target, key=key, n_projections=8)
                + otreg.sinkhorn_divergence(p["w"][:, :2], target, epsilon=0.1)[0])

    key = jax.random.PRNGKey(0)
    txs = {"penalty": (transforms.add_ot_penalty(penalty, 0.1, key=key), True),
           "decay": (transforms.wasserstein_weight_decay(0.1, prior_std=0.5), False),
           "project": (optax.masked(transforms.project_transport(0.1), {"w": False, "P": True}),
                       True)}
    updates = jax.tree_util.tree_map(lambda z: 0.01 * z, params)
    for tx, has_dots in txs.values():
        check(tx.init, params, expect_dots=False)
        state = tx.init(params)
        check(lambda u, s, p, tx=tx: tx.update(u, s, p), updates, state, params,
              expect_dots=has_dots)
    check(lambda w: transforms.gaussian_w2(w, 0.5), params["w"], expect_dots=False)


def test_costs(rng):
    x, y, _, _ = _pts(rng)
    for name in ("sqeuclidean", "euclidean", "cosine"):
        cost = costs.get(name)
        check(cost, x, y)
        check(jax.grad(lambda x, y, cost=cost: jnp.sum(cost(x, y)), argnums=(0, 1)), x, y)
    check(costs.lp(1.5), x, y, expect_dots=False)  # |x - y|^p elementwise: no contraction
    check(costs.transposed(costs.sqeuclidean), x, y)
    check(lambda x, y: otreg.PointCloud(x, y).cost_matrix, x, y)


def test_nn_router(rng):
    nnx = pytest.importorskip("flax.nnx")
    from otreg import nn

    router = nn.SparseOTRouter(6, 4, 5, gamma=0.1, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(router)
    x = jnp.asarray(rng.normal(size=(12, 6)), jnp.float32)

    def call(state, x):
        return nnx.merge(graphdef, state)(x, return_status=True)

    def loss(state, x):
        _, comb, _ = call(state, x)
        return jnp.mean(jnp.einsum("tec,td->td", comb, x, precision=jax.lax.Precision.HIGHEST)
                        ** 2)

    check(call, state, x)
    check(call, state, jnp.stack([x, x[::-1]]))
    check(jax.grad(loss), state, x)
    check(lambda z: nn.route(z, 5, gamma=0.1), x[:, :4], expect_dots=False)


def _stablehlo_dots(fn, *args) -> list[str]:
    with jax.default_matmul_precision("bfloat16"):
        text = jax.jit(fn).lower(*args).as_text()
    return [line for line in text.splitlines() if "stablehlo.dot_general" in line]


def test_stablehlo_precision_under_bfloat16_default(rng):
    """The lowered programs, not only the jaxprs: every dot_general says HIGHEST."""
    x, y, a, b = _pts(rng)
    key = jax.random.PRNGKey(0)
    for fn in (lambda x, y: otreg.sinkhorn(otreg.PointCloud(x, y), epsilon=0.01).plan(),
               jax.grad(lambda x, y: otreg.sliced_w2(x, y, key=key, n_projections=8))):
        lines = _stablehlo_dots(fn, x, y)
        assert lines
        bad = [line for line in lines if "precision = [HIGHEST, HIGHEST]" not in line]
        assert not bad, "\n".join(bad)


# ------------------------------------------------------------- values under a bf16 default


@pytest.mark.parametrize("mode", ["kernel", "log"])
def test_sinkhorn_small_eps_values_under_bfloat16_default(rng, mode):
    """float32, eps = 0.01 on a cost of max 1 (kernel entries down to e^-100): the true L1
    marginal error of the returned plan is within the tolerance of
    test_sinkhorn.test_marginals_apply_plan, the cost matches POT's (tolerance of
    test_kernel_underflow_falls_back_to_log_domain)."""
    x, y, a, b = clouds(rng, 40, 30, 2)
    C = sqdist(x, y)
    C /= C.max()
    eps = 0.01
    with jax.default_matmul_precision("bfloat16"):
        res = otreg.sinkhorn(jnp.asarray(C, jnp.float32), jnp.asarray(a, jnp.float32),
                             jnp.asarray(b, jnp.float32), epsilon=eps, tol=1e-5, mode=mode)
        P = np.asarray(res.plan(), np.float64)
    assert bool(res.converged) and float(res.error) <= 1e-5
    assert np.abs(P.sum(1) - a).sum() + np.abs(P.sum(0) - b).sum() < 3e-5
    P_pot = ot.sinkhorn(a, b, C, eps, method="sinkhorn_log", stopThr=1e-13, numItermax=100_000)
    ab = a[:, None] * b[None, :]
    ref = (P_pot * C).sum() + eps * (np.where(P_pot > 0, P_pot * np.log(P_pot / ab), 0.0).sum()
                                     - P_pot.sum() + ab.sum())
    np.testing.assert_allclose(float(res.cost), ref, rtol=1e-4)
    np.testing.assert_allclose((P * C).sum(), ot.sinkhorn2(a, b, C, eps, method="sinkhorn_log",
                                                           stopThr=1e-13, numItermax=100_000),
                               rtol=1e-4)


def test_sinkhorn_near_exact_under_bfloat16_default(rng):
    """Small epsilon against the exact LP (ot.emd2), within 1% as in test_sinkhorn."""
    x, y, a, b = clouds(rng, 30, 40, 2)
    C = sqdist(x, y)
    C /= C.max()
    with jax.default_matmul_precision("bfloat16"):
        res = otreg.sinkhorn(jnp.asarray(C, jnp.float32), jnp.asarray(a, jnp.float32),
                             jnp.asarray(b, jnp.float32), epsilon=1e-3, tol=1e-3,
                             max_iter=50_000)
        P = np.asarray(res.plan(), np.float64)
    assert bool(res.converged)
    exact = ot.emd2(a, b, C)
    assert abs((P * C).sum() - exact) <= 0.01 * exact


def test_sliced_values_under_bfloat16_default(rng):
    """sliced_w2 equals a NumPy projection-and-sort with the same directions (float32; a
    bfloat16 projection would be off by ~1e-3 relative)."""
    n, d, L = 50, 4, 32
    x = rng.standard_normal((n, d))
    y = rng.standard_normal((n, d)) * 0.7 + 1.0
    key = jax.random.PRNGKey(int(rng.integers(1 << 30)))
    theta = np.asarray(sample_directions(key, L, d), np.float64)
    ref = np.mean((np.sort(x @ theta.T, axis=0) - np.sort(y @ theta.T, axis=0)) ** 2)
    with jax.default_matmul_precision("bfloat16"):
        ours = otreg.sliced_w2(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32),
                               key=key, n_projections=L, control_variate=None, squared=True,
                               directions="gaussian")
    np.testing.assert_allclose(float(ours), ref, rtol=1e-5)


def test_divergence_equal_measures_under_bfloat16_default(rng, x64):
    """S(a, a) ~ 0 with a ~0 gradient, with the tolerances of test_divergence (float64)."""
    z = jnp.asarray(rng.standard_normal((15, 2)))
    w = rng.uniform(0.2, 1.0, 15)
    w = jnp.asarray(w / w.sum())
    with jax.default_matmul_precision("bfloat16"):
        val, grad = jax.value_and_grad(lambda z: otreg.sinkhorn_divergence(
            z, z, w, w, epsilon=0.2, tol=1e-10)[0])(z)
    assert abs(float(val)) < 1e-7 and float(jnp.max(jnp.abs(grad))) < 1e-6
