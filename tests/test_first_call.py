"""A first call compiles one executable: the solve. No eager pre-pass (finiteness checks, max
|C|, uniform weights, NumPy inputs) compiles executables of its own (each costs ~0.1 s on a
user's first call; issue 14). Shapes are unusual so that no other test has compiled them."""

from __future__ import annotations

import logging

import jax
import numpy as np
import pytest

import otreg


class _Compiles(logging.Handler):
    def __init__(self):
        super().__init__()
        self.names: list[str] = []

    def emit(self, record):
        msg = record.getMessage()
        if msg.startswith("Compiling "):
            self.names.append(msg.split()[1])


def compiled_by(call):
    """The names of the executables compiled while ``call()`` runs (and blocks)."""
    handler, logger = _Compiles(), logging.getLogger("jax")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)  # log_compiles logs at WARNING
    try:
        with jax.log_compiles(True):
            jax.block_until_ready(call())
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return handler.names


def _cases(rng):
    n, m, d = 37 + int(rng.integers(0, 5)), 29, 3  # fresh shapes each run
    x, y = rng.standard_normal((n, d)), rng.standard_normal((m, d)) + 1.0
    C = rng.uniform(size=(n, m))
    xj, yj, Cj = (jax.device_put(z.astype(np.float32)) for z in (x, y, C))
    key = jax.random.key(1)  # the user's key: made (and compiled for) outside the call
    return {
        "sinkhorn (NumPy points)": lambda: otreg.sinkhorn(otreg.PointCloud(x, y), epsilon=0.1).cost,
        "sinkhorn (cost matrix)": lambda: otreg.sinkhorn(Cj, epsilon=0.1).cost,
        "sinkhorn_divergence": lambda: otreg.sinkhorn_divergence(xj, yj, epsilon=0.1)[0],
        "sns": lambda: otreg.sns(Cj, epsilon=0.01).cost,
        "sparse_ot": lambda: otreg.sparse_ot(Cj, k=2, gamma=0.1).primal,
        "quadratic_ot": lambda: otreg.quadratic_ot(Cj, gamma=0.1).primal,
        "sliced_w2": lambda: otreg.sliced_w2(xj, yj, key=key, n_projections=8),
    }


@pytest.mark.parametrize("name", ["sinkhorn (NumPy points)", "sinkhorn (cost matrix)",
                                  "sinkhorn_divergence", "sns", "sparse_ot", "quadratic_ot",
                                  "sliced_w2"])
def test_first_call_compiles_only_the_solve(rng, name):
    call = _cases(rng)[name]
    names = compiled_by(call)
    assert len(names) == 1, f"{name}: compiled {names}; eager pre-passes compile executables"
    assert compiled_by(call) == []  # the second call: nothing
