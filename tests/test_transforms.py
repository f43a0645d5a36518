"""Optax transformations: chain, masked, jit without retracing, math, sharded state."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import otreg
from otreg import transforms


def _params(rng):
    return {"w": jnp.asarray(rng.normal(size=(16, 8)), jnp.float32),
            "b": jnp.asarray(rng.normal(size=(8,)), jnp.float32)}


def test_add_ot_penalty_in_chain_jit_no_retrace(rng):
    params = _params(rng)
    target = jnp.asarray(rng.normal(size=(64, 2)) + 3.0, jnp.float32)

    def penalty(p, key):  # sliced W2 between the rows of w (as 2-D points) and a target cloud
        pts = p["w"].reshape(-1, 2)
        return otreg.sliced_w2(pts, target, key=key, n_projections=16, squared=True)

    opt = optax.chain(transforms.add_ot_penalty(penalty, 0.5, key=jax.random.PRNGKey(0)),
                      optax.adam(0.1))
    state = opt.init(params)
    assert isinstance(state[0], transforms.AddOTPenaltyState)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(params, state):
        grads = jax.tree_util.tree_map(jnp.zeros_like, params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    keys, losses = [], []
    for _ in range(40):
        keys.append(np.asarray(jax.random.key_data(state[0].key)))
        losses.append(float(penalty(params, jax.random.PRNGKey(1))))
        params, state = step(params, state)
    assert len({k.tobytes() for k in keys}) == len(keys)  # a fresh key every step
    assert losses[-1] < 0.5 * losses[0]  # the penalty is being minimised
    for leaf in jax.tree_util.tree_leaves(params):
        assert leaf.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(leaf)))
    with pytest.raises(ValueError, match="params"):
        opt.update(params, state)  # no params


def test_wasserstein_weight_decay_matches_finite_differences(rng, x64):
    w = jnp.asarray(rng.normal(size=(7, 5)) * 2 + 0.5)
    tx = transforms.wasserstein_weight_decay(0.3, prior_std=0.7)
    state = tx.init({"w": w})
    zero = {"w": jnp.zeros_like(w)}
    updates, _ = jax.jit(tx.update)(zero, state, {"w": w})
    direction = rng.normal(size=w.shape)
    h = 1e-6
    f = lambda w: float(transforms.gaussian_w2(jnp.asarray(w), 0.7))  # noqa: E731
    fd = (f(w + h * direction) - f(w - h * direction)) / (2 * h)
    np.testing.assert_allclose(float(jnp.vdot(updates["w"], direction)), 0.3 * fd, rtol=1e-6)
    # the closed form: 2/N (w_i - s Phi^-1((rank + 1/2)/N))
    from scipy.stats import norm
    flat = np.asarray(w).ravel()
    ranks = np.argsort(np.argsort(flat))
    ref = 2 / flat.size * (flat - 0.7 * norm.ppf((ranks + 0.5) / flat.size))
    np.testing.assert_allclose(np.asarray(updates["w"]).ravel(), 0.3 * ref, atol=1e-12)


def test_weight_decay_under_masked_moves_histogram_to_gaussian(rng):
    params = {"w": jnp.asarray(rng.uniform(2, 4, size=(400,)), jnp.float32),
              "skip": jnp.ones((3,), jnp.float32)}
    opt = optax.chain(optax.masked(transforms.wasserstein_weight_decay(1.0, prior_std=1.0),
                                   {"w": True, "skip": False}), optax.sgd(100.0))
    state = opt.init(params)
    step = jax.jit(lambda p, s: opt.update(jax.tree_util.tree_map(jnp.zeros_like, p), s, p))
    before = float(transforms.gaussian_w2(params["w"], 1.0))
    for _ in range(50):
        updates, state = step(params, state)
        params = optax.apply_updates(params, updates)
    assert float(transforms.gaussian_w2(params["w"], 1.0)) < 0.01 * before
    np.testing.assert_array_equal(np.asarray(params["skip"]), np.ones(3))
    assert abs(float(jnp.std(params["w"])) - 1.0) < 0.05


def test_project_transport_lands_on_polytope(rng, x64):
    n, m = 6, 5
    a = rng.uniform(0.5, 1.5, n)
    b = rng.uniform(0.5, 1.5, m)
    b *= a.sum() / b.sum()
    P = jnp.asarray(np.outer(a, b) / a.sum())
    tx = transforms.project_transport(0.1, a=a, b=b, tol=1e-12)
    state = tx.init({"P": P})
    u = jnp.asarray(rng.normal(size=(n, m)) * 0.05)
    upd, _ = jax.jit(tx.update)({"P": u}, state, {"P": P})
    Q = np.asarray(P + upd["P"])
    assert (Q > 0).all()
    np.testing.assert_allclose(Q.sum(1), a, atol=1e-10)
    np.testing.assert_allclose(Q.sum(0), b, atol=1e-10)
    # Q = diag(s) (P exp(u / eps)) diag(t): log Q - log P - u/eps is rank one (x_i + y_j)
    R = np.log(Q) - np.log(np.asarray(P)) - np.asarray(u) / 0.1
    R = R - R[:, :1] - R[:1, :] + R[0, 0]
    np.testing.assert_allclose(R, 0.0, atol=1e-8)
    with pytest.raises(ValueError, match="matrix"):
        tx.init({"v": jnp.ones(3)})
    with pytest.raises(ValueError, match="epsilon"):
        transforms.project_transport(0.0)


def test_sharded_state_preserved_on_8_devices():
    """In its own process: 8 simulated CPU devices, parameters sharded along rows."""
    code = textwrap.dedent("""
        import jax, jax.numpy as jnp, optax, numpy as np
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        from otreg import transforms
        assert len(jax.devices()) == 8
        mesh = Mesh(np.array(jax.devices()), ("rows",))
        shard = NamedSharding(mesh, P("rows", None))
        w = jax.device_put(jnp.asarray(np.random.default_rng(0).normal(size=(64, 4)),
                                       jnp.float32), shard)
        params = {"w": w}
        penalty = lambda p, key: jnp.sum(p["w"] ** 2) * jax.random.uniform(key)
        opt = optax.chain(transforms.add_ot_penalty(penalty, 0.1, key=jax.random.PRNGKey(0)),
                          transforms.wasserstein_weight_decay(0.1, prior_std=1.0),
                          optax.adam(1e-2))
        state = opt.init(params)
        step = jax.jit(lambda p, s: opt.update(jax.tree_util.tree_map(jnp.zeros_like, p), s, p))
        updates, new_state = step(params, state)
        mu_before = state[2][0].mu["w"].sharding
        mu_after = new_state[2][0].mu["w"].sharding
        assert mu_after.is_equivalent_to(mu_before, 2), (mu_before, mu_after)
        assert updates["w"].sharding.is_equivalent_to(shard, 2), updates["w"].sharding
        print("ok")
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


@pytest.mark.parametrize("which", ["penalty", "decay", "project"])
def test_each_transform_in_masked_chain_jit_once(rng, which):
    chex.clear_trace_counter()  # one counter per parametrised case
    n = 5
    params = {"P": jnp.full((n, n), 1.0 / n ** 2, jnp.float32),
              "v": jnp.asarray(rng.normal(size=(7,)), jnp.float32)}
    tx = {"penalty": transforms.add_ot_penalty(lambda p, key: jnp.sum(p["P"] ** 2), 0.1,
                                               key=jax.random.PRNGKey(0)),
          "decay": transforms.wasserstein_weight_decay(0.1, prior_std=0.1),
          "project": transforms.project_transport(0.1)}[which]
    mask = {"P": True, "v": False}
    inner = tx if which == "penalty" else optax.masked(tx, mask)  # the penalty sees all params
    opt = optax.chain(optax.adam(1e-2), inner) if which == "project" else optax.chain(
        inner, optax.adam(1e-2))
    state = opt.init(params)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(params, state, grads):
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for _ in range(5):
        grads = jax.tree_util.tree_map(lambda p: jnp.asarray(rng.normal(size=p.shape),
                                                             p.dtype), params)
        new, state = step(params, state, grads)
        chex.assert_trees_all_equal_shapes_and_dtypes(new, params)
        params = new
    assert all(bool(jnp.all(jnp.isfinite(z))) for z in jax.tree_util.tree_leaves(params))
    if which == "project":  # stays on U(1/n, 1/n), positive
        P = np.asarray(params["P"])
        assert (P > 0).all()
        np.testing.assert_allclose(P.sum(0), 1 / n, atol=1e-4)
        np.testing.assert_allclose(P.sum(1), 1 / n, atol=1e-4)


def test_project_transport_large_steps_keep_entries_positive(rng):
    """A step that shrinks an entry past float32's precision must not round it to exactly 0 in
    `apply_updates` (the next update would then reject the parameter)."""
    n = 8
    P = jnp.full((n, n), 1.0 / n, jnp.float32)
    tx = transforms.project_transport(0.01, a=jnp.ones(n), b=jnp.ones(n))
    state = tx.init(P)
    G = jnp.asarray(rng.standard_normal((n, n)), jnp.float32)
    for _ in range(6):
        u, state = tx.update(-0.05 * G, state, P)
        P = optax.apply_updates(P, u)
        assert float(P.min()) > 0
        assert int(state.status) in (otreg.Status.SUCCESS, otreg.Status.MAX_ITER)
        for axis in (0, 1):  # still on the polytope, up to the projection's reported error
            gap = float(jnp.abs(P.sum(axis) - 1).sum())
            assert gap <= float(state.error) + 1e-4, (gap, float(state.error))
