"""No otreg call hangs or aborts on CPU: one core, one or two devices, asynchronous dispatch on
and off, computations in flight (the cases live in tests/no_hang_cases.py and run in a child
process pinned to one core with a hard timeout). And, structurally: no host callback in the
graph of any default code path, on any backend (host callbacks are what deadlocked)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import optax
import pytest

import otreg
from otreg import losses, transforms

CASES = Path(__file__).with_name("no_hang_cases.py")
TIMEOUT_S = 420  # generous for a loaded 2-core CI machine; a hang never finishes


def _run(group: str, devices: int = 1, async_dispatch: bool = True) -> None:
    env = dict(os.environ)
    flags = env.get("XLA_FLAGS", "")
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
    env["JAX_PLATFORMS"] = "cpu"
    try:
        proc = subprocess.run([sys.executable, str(CASES), group, str(devices),
                               "1" if async_dispatch else "0"], env=env, capture_output=True,
                              text=True, timeout=TIMEOUT_S)  # the child pins itself to one core
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{group} (devices={devices}, async={async_dispatch}) hung for "
                    f"{TIMEOUT_S} s; finished: {e.stdout!r}")
    assert proc.returncode == 0 and proc.stdout.rstrip().endswith("done"), (
        f"{group} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr[-4000:]}")


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs Linux CPU affinity")
@pytest.mark.parametrize("async_dispatch", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_single_device_one_core(async_dispatch):
    _run("single", devices=1, async_dispatch=async_dispatch)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs Linux CPU affinity")
def test_two_devices_one_core():
    _run("sharded", devices=2)


def _primitives(jaxpr, out=None):
    out = set() if out is None else out
    for eqn in jaxpr.eqns:
        out.add(eqn.primitive.name)
        for sub in jax.core.subjaxprs(eqn) if hasattr(jax.core, "subjaxprs") else ():
            _primitives(sub, out)
        for v in eqn.params.values():
            for j in (v if isinstance(v, (list, tuple)) else [v]):
                inner = getattr(j, "jaxpr", j)
                if hasattr(inner, "eqns"):
                    _primitives(inner, out)
    return out


def _default_calls():
    x = jnp.ones((12, 2)) * jnp.arange(12.0)[:, None] / 12
    y = jnp.ones((9, 2)) * jnp.arange(9.0)[:, None] / 9 + 0.3
    geom = otreg.PointCloud(x, y)
    key = jax.random.PRNGKey(0)
    penalty = transforms.add_ot_penalty(lambda p, k: jnp.sum(p["w"] ** 2), 0.1, key=key)
    decay = transforms.wasserstein_weight_decay(0.1, prior_std=1.0)
    params = {"w": x}
    return {
        "sinkhorn": lambda x: otreg.sinkhorn(otreg.PointCloud(x, y), epsilon=0.1).cost,
        "sinkhorn_grad": jax.grad(lambda x: otreg.sinkhorn(otreg.PointCloud(x, y),
                                                           epsilon=0.1).cost),
        "sns": lambda x: otreg.sns(otreg.PointCloud(x, y), epsilon=0.1).cost,
        "sinkhorn_divergence": lambda x: otreg.sinkhorn_divergence(x, y, epsilon=0.1)[0],
        "sliced_w2": lambda x: otreg.sliced_w2(x, y, key=key),
        "sliced_w2_grad": jax.grad(lambda x: otreg.sliced_w2(x, y, key=key)),
        "wasserstein_1d": lambda x: otreg.wasserstein_1d(x[:, 0], y[:, 1], x[:, 1], None),
        "wasserstein_1d_grad": jax.grad(lambda x: otreg.wasserstein_1d(x[:, 0], y[:, 0])),
        "sparse_ot": lambda x: otreg.sparse_ot(otreg.PointCloud(x, y), k=2, gamma=1.0).cost,
        "quadratic_ot": lambda x: otreg.quadratic_ot(geom, gamma=1.0).cost,
        "sliced_w2_loss": lambda x: losses.sliced_w2_loss(x[None], y[None], key=key),
        "sinkhorn_divergence_loss": lambda x: losses.sinkhorn_divergence_loss(
            x[None], y[None], epsilon=0.1),
        "add_ot_penalty": lambda x: penalty.update(params, penalty.init(params), params)[0],
        "wasserstein_weight_decay": lambda x: decay.update(params, decay.init(params),
                                                           params)[0],
        "optax_chain": lambda x: optax.chain(decay, optax.sgd(0.1)).update(
            params, optax.chain(decay, optax.sgd(0.1)).init(params), params)[0],
    }


@pytest.mark.parametrize("name", sorted(_default_calls()))
def test_no_host_callback_in_default_paths(name):
    fun = _default_calls()[name]
    x = jnp.ones((12, 2)) * jnp.arange(12.0)[:, None] / 12
    prims = _primitives(jax.make_jaxpr(fun)(x).jaxpr)
    callbacks = {p for p in prims if "callback" in p}
    assert not callbacks, f"{name}: host callbacks {callbacks} in the default path"
