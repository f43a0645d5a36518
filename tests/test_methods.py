"""``method="auto"``: the rule of ``otreg._methods`` (what it decides from epsilon, tol, dtype and
the cost; never from traced values) and ``choose_solver``'s old and new call forms."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import otreg
from otreg import _methods
from otreg._methods import (
    AUTO_SNS_GAP,
    AUTO_SNS_MAX_TOL,
    AUTO_SNS_RATIO,
    auto_reason,
    choose_solver,
    prefers_sns,
)


def _assignment(rng, n=60, dtype=jnp.float64):
    """The SNS paper's cost (uniform on [0, 1]): mean row gap about 1/n, a sparse plan once
    epsilon is well below that."""
    return jnp.asarray(rng.uniform(size=(n, n)), dtype)


def test_float64_small_tol_small_eps_sparse_plan_is_sns(rng, x64):
    C = _assignment(rng)
    eps = 1 / 1200  # max|C|/eps ~ 1200, mean row gap / eps ~ 20
    assert prefers_sns(C, eps, tol=1e-6) and prefers_sns(C, eps, tol=1e-9)
    assert prefers_sns(C, eps)  # tol=None: the float64 default, 1e-6
    ok, why = auto_reason(C, eps, tol=1e-6)
    assert ok and "mean row gap / eps" in why


def test_tol_decides(rng, x64):
    C, eps = _assignment(rng), 1 / 1200
    assert prefers_sns(C, eps, tol=AUTO_SNS_MAX_TOL)
    assert not prefers_sns(C, eps, tol=2 * AUTO_SNS_MAX_TOL)
    assert not prefers_sns(C, eps, tol=1e-3)  # Sinkhorn reaches 1e-3 first on the whole grid
    assert "tol 0.001 >" in auto_reason(C, eps, tol=1e-3)[1]
    # a concrete array tol is a tol
    assert prefers_sns(C, eps, tol=jnp.asarray(1e-8)) and not prefers_sns(C, eps,
                                                                           tol=jnp.asarray(0.01))


def test_ratio_and_gap_decide(rng, x64):
    C = _assignment(rng)
    peak = float(C.max())
    assert not prefers_sns(C, 1.01 * peak / AUTO_SNS_RATIO, tol=1e-9)
    assert "max|C|/eps" in auto_reason(C, 1.01 * peak / AUTO_SNS_RATIO, tol=1e-9)[1]
    # every row's two smallest costs equal (duplicated columns): the plan never concentrates on
    # one entry per row, whatever epsilon, so SNS's sparsified Hessian is a poor model
    dup = jnp.concatenate([C, C], axis=1)
    ok, why = auto_reason(dup, 1e-5, tol=1e-9)
    assert not ok and "plan not sparse" in why
    # the gap test is relative to epsilon: a mean row gap of exactly g flips at g / GAP
    g = 0.004
    M = np.full((8, 8), g)
    np.fill_diagonal(M, 0.0)  # each row: 0, then g (its gap), ...
    M[:7, 7] = 1.0  # ... and max|C| = 1, so max|C|/eps stays above AUTO_SNS_RATIO here
    M = jnp.asarray(M)
    assert prefers_sns(M, 0.99 * g / AUTO_SNS_GAP, tol=1e-9)
    assert not prefers_sns(M, 1.01 * g / AUTO_SNS_GAP, tol=1e-9)


def test_float32_is_sinkhorn(rng):
    C = _assignment(rng, dtype=jnp.float32)
    ok, why = auto_reason(C, 1 / 1200, tol=1e-6)
    assert not ok and "float32" in why
    assert choose_solver("auto", C, 1 / 1200, tol=1e-6) is otreg.sinkhorn


def test_traced_values_are_sinkhorn(rng, x64):
    C, eps = _assignment(rng), 1 / 1200
    seen = []

    @jax.jit
    def traced_eps(e):
        seen.append(prefers_sns(C, e, tol=1e-8))
        return e

    @jax.jit
    def traced_tol(t):
        seen.append(prefers_sns(C, eps, tol=t))
        return t

    @jax.jit
    def traced_cost(c):
        seen.append(prefers_sns(c, eps, tol=1e-8))
        return c

    @jax.jit
    def closed_over(z):  # concrete values closed over inside jit: decided on the values
        seen.append(prefers_sns(C, eps, tol=1e-8))
        return z

    traced_eps(eps), traced_tol(1e-8), traced_cost(C), closed_over(0.0)
    assert seen == [False, False, False, True]
    assert not prefers_sns(C, None, tol=1e-8)  # epsilon=None: the default, not inspected
    assert "jit" in auto_reason(C, None)[1]


def test_point_clouds_dense_and_blocked_agree(rng, x64):
    x = jnp.asarray(rng.standard_normal((40, 16)))
    y = jnp.asarray(rng.standard_normal((40, 16)) + 1.0)
    dense = otreg.PointCloud(x, y, scale_cost="max")
    blocked = otreg.PointCloud(x, y, block_size=64, scale_cost="max")
    C = dense.cost_matrix
    for eps in (1e-1, 1e-2, 1e-3, 1e-4):
        want = prefers_sns(C, eps, tol=1e-8)
        assert prefers_sns(dense, eps, tol=1e-8) == want
        assert prefers_sns(blocked, eps, tol=1e-8) == want
    assert prefers_sns(dense, 1e-4, tol=1e-8) and not prefers_sns(dense, 1e-1, tol=1e-8)
    # a blocked cloud samples at most block_size rows (no n x m buffer)
    small = otreg.PointCloud(x, y, block_size=4, scale_cost="max")
    assert _methods._row_sample(small, _methods.AUTO_SNS_ROWS).shape == (4, 40)
    assert isinstance(prefers_sns(small, 1e-4, tol=1e-8), bool)


def test_choose_solver_old_and_new_call_forms(rng, x64):
    C, eps = _assignment(rng), 1 / 1200
    assert choose_solver("auto", C, eps, "fn") is otreg.sns  # old form: tol = the default
    assert choose_solver("auto", C, eps, "fn", tol=1e-3) is otreg.sinkhorn
    assert choose_solver("auto", C, 0.5, "fn", tol=1e-9) is otreg.sinkhorn
    assert choose_solver("sns", C, 0.5, tol=1e-3) is otreg.sns  # explicit: never overridden
    assert choose_solver("sinkhorn", C, eps, tol=1e-9) is otreg.sinkhorn
    with pytest.raises(ValueError, match="method"):
        choose_solver("newton", C, eps, "fn")
    from otreg import newton  # the old import path of the rule keeps working
    assert newton.prefers_sns is prefers_sns and newton.AUTO_SNS_RATIO == AUTO_SNS_RATIO
