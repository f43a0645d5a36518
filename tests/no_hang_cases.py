"""Calls that once hung or aborted on CPU, run by tests/test_no_hang.py in a child process pinned
to one core with a hard timeout: ``python tests/no_hang_cases.py GROUP DEVICES ASYNC`` with GROUP
``single`` or ``sharded`` (needs ``--xla_force_host_platform_device_count=2`` in XLA_FLAGS); the
expected device count and async-dispatch setting (1/0) are checked before the cases run.
Prints ``ok <case>`` after each case and ``done`` at the end; any hang is the caller's timeout.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__" and hasattr(os, "sched_setaffinity"):  # one core, before jax starts
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import otreg  # noqa: E402
from otreg import losses  # noqa: E402


def _clouds(n, d, seed=0, dtype=jnp.float32):
    x = np.random.default_rng(seed).normal(size=(n, d))
    return jnp.asarray(x, dtype), jnp.asarray(x + 1.0, dtype)


def eager_successive():
    """The issue's reproduction: eager sliced_w2 calls, each read back before the next."""
    x, y = _clouds(1000, 5)
    vals = [float(otreg.sliced_w2(x, y, key=jax.random.key(i), n_projections=1000))
            for i in range(5)]
    assert all(abs(v - 1.0) < 0.05 for v in vals), vals  # SW2^2 of a shift t is |t|^2 / d = 1
    u, v = x[:, 0], y[:300, 1]
    w = [float(otreg.wasserstein_1d(u, v)) for _ in range(3)]
    assert len(set(w)) == 1


def in_flight():
    """Many jitted computations dispatched without blocking, then read back together."""
    x, y = _clouds(500, 4)
    sw = jax.jit(lambda k: otreg.sliced_w2(x, y, key=k, n_projections=500))
    sk = jax.jit(lambda e: otreg.sinkhorn(otreg.PointCloud(x[:200], y[:150]), epsilon=e).cost)
    outs = []
    for i in range(8):
        outs.append(sw(jax.random.key(i)))
        outs.append(sk(0.5 + 0.1 * i))
        outs.append(otreg.wasserstein_1d(x[:, i % 4], y[:, 0]))
    vals = np.asarray(jax.block_until_ready(jnp.stack(outs)))
    assert np.all(np.isfinite(vals))


def optax_loop():
    """grad of sliced_w2_loss in an optax loop that never blocks until the end."""
    x, y = _clouds(256, 3)
    opt = optax.adam(0.05)
    params = x
    state = opt.init(params)

    @jax.jit
    def step(params, state, key):
        loss, g = jax.value_and_grad(lambda p: losses.sliced_w2_loss(
            p, y, key=key, n_projections=256))(params)
        upd, state = opt.update(g, state)
        return optax.apply_updates(params, upd), state, loss

    key = jax.random.key(0)
    hist = []
    for _ in range(40):
        key, sub = jax.random.split(key)
        params, state, loss = step(params, state, sub)
        hist.append(loss)
    hist = np.asarray(jnp.stack(hist))
    assert hist[-1] < 0.5 * hist[0], hist


def progress_vmap():
    """sinkhorn(..., progress=callable) under vmap, several batches in flight."""
    seen = []
    xs = jnp.stack([_clouds(64, 2, seed=s)[0] for s in range(4)])
    ys = xs + 0.5

    def run(x, y):
        return otreg.sinkhorn(otreg.PointCloud(x, y), epsilon=0.05, check_every=10,
                              progress=lambda it, err, eps: seen.append(int(it))).cost

    f = jax.jit(jax.vmap(run))
    outs = [f(xs, ys + 0.1 * i) for i in range(3)]
    vals = np.asarray(jax.block_until_ready(jnp.stack(outs)))
    assert np.all(np.isfinite(vals)) and seen, (vals, len(seen))


def sharded():
    """Row-sharded inputs on 2 CPU devices: jit(sliced_w2), a batch-sharded loss, shard_map."""
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    assert jax.device_count() >= 2, jax.devices()
    mesh = Mesh(np.array(jax.devices()[:2]), ("data",))
    x, y = _clouds(1000, 5)
    xs = jax.device_put(x, NamedSharding(mesh, P("data", None)))
    ys = jax.device_put(y, NamedSharding(mesh, P("data", None)))
    ref = float(otreg.sliced_w2(x, y, key=jax.random.key(1), n_projections=500))
    got = float(jax.jit(lambda x, y: otreg.sliced_w2(x, y, key=jax.random.key(1),
                                                     n_projections=500))(xs, ys))
    assert abs(got - ref) < 1e-4 * ref, (got, ref)
    xb = jnp.stack([x[:200], x[200:400], x[400:600], x[600:800]])
    yb = xb + 1.0
    xbs = jax.device_put(xb, NamedSharding(mesh, P("data")))
    ybs = jax.device_put(yb, NamedSharding(mesh, P("data")))
    lf = jax.jit(lambda p, t: losses.sliced_w2_loss(p, t, key=jax.random.key(2),
                                                    n_projections=200))
    lb = np.asarray(lf(xbs, ybs))
    assert np.allclose(lb, np.asarray(lf(xb, yb)), rtol=1e-5), lb
    sm = jax.jit(jax.shard_map(
        lambda p, t: losses.sliced_w2_loss(p, t, key=jax.random.key(2), n_projections=200),
        mesh=mesh, in_specs=(P("data"), P("data")), out_specs=P("data")))
    local = np.concatenate([np.asarray(lf(xb[:2], yb[:2])), np.asarray(lf(xb[2:], yb[2:]))])
    assert np.allclose(np.asarray(sm(xbs, ybs)), local, rtol=1e-5)  # keys split per shard
    g = jax.jit(jax.grad(lambda p: losses.sliced_w2_loss(
        p, ybs, key=jax.random.key(2), n_projections=200).mean()))(xbs)
    assert np.all(np.isfinite(np.asarray(g)))


def _check_config(devices: str, async_dispatch: str) -> None:
    assert os.sched_getaffinity(0).__len__() == 1, os.sched_getaffinity(0)
    assert jax.device_count() == int(devices), jax.devices()
    assert jax.config.values["jax_cpu_enable_async_dispatch"] == (async_dispatch == "1")


GROUPS = {"single": (eager_successive, in_flight, optax_loop, progress_vmap),
          "sharded": (sharded,)}

if __name__ == "__main__":
    jax.config.update("jax_cpu_enable_async_dispatch", sys.argv[3] == "1")  # before any backend
    _check_config(sys.argv[2], sys.argv[3])
    for case in GROUPS[sys.argv[1]]:
        case()
        print("ok", case.__name__, flush=True)
    print("done", flush=True)
