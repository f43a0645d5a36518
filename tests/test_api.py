"""The public surface: names from DESIGN.md section 3 that exist so far, and explain()."""

from __future__ import annotations

import inspect
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import otreg


def test_public_names():
    for name in ("sinkhorn", "SinkhornResult", "PointCloud", "CostMatrix", "explain", "Status",
                 "costs", "__version__"):
        assert name in otreg.__all__ and hasattr(otreg, name)
    for name in otreg.__all__:
        assert hasattr(otreg, name)


def test_sinkhorn_signature():
    sig = inspect.signature(otreg.sinkhorn)
    for kw, default in (("epsilon", None), ("tol", None), ("max_iter", 10_000), ("anneal", True),
                        ("check_every", 10), ("init", None), ("progress", False)):
        p = sig.parameters[kw]
        assert p.kind is inspect.Parameter.KEYWORD_ONLY and p.default == default
    assert list(sig.parameters)[:3] == ["geom", "a", "b"]


def test_explain():
    for code, msg in otreg.Status.MESSAGES.items():
        assert otreg.explain(code).endswith(msg)
    assert "converged" in otreg.explain(0)
    with pytest.raises(ValueError, match="unknown status"):
        otreg.explain(99)
    assert otreg.Status.name(8) == "ROW_GAP" and otreg.Status.name(0) == "SUCCESS"
    assert all(getattr(otreg.Status, otreg.Status.name(c)) == c for c in otreg.Status.MESSAGES)
    with pytest.raises(ValueError, match="unknown status"):
        otreg.Status.name(99)


def test_optional_modules_are_lazy_attributes():
    code = ("import sys, otreg; assert 'flax' not in sys.modules and 'matplotlib' not in "
            "sys.modules, 'import otreg pulled in an optional dependency'; "
            "print(otreg.nn.SparseOTRouter.__name__, otreg.plots.sparse_plans_figure.__name__, "
            "otreg.data.gaussians.__name__, 'nn' in dir(otreg))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["SparseOTRouter", "sparse_plans_figure", "gaussians", "True"]
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        otreg.nope  # noqa: B018


def test_result_reprs_are_short_and_informative():
    rng = np.random.default_rng()
    x = jnp.asarray(rng.normal(size=(40, 2)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(30, 2)) + 1, jnp.float32)
    res = otreg.sinkhorn(otreg.PointCloud(x, y), epsilon=0.1, max_iter=5000)
    text = repr(res)
    assert len(text) < 250 and "\n" not in text, text
    assert f"n_iters={int(res.n_iters)}" in text and "converged=" in text
    assert text.startswith(f"SinkhornResult(cost={float(res.cost):.6g}")
    assert "status=0 (SUCCESS)" in text
    short = otreg.sinkhorn(otreg.PointCloud(x, y), epsilon=0.01, max_iter=3)
    assert "status=1 (MAX_ITER)" in repr(short) and "converged=False" in repr(short)
    batch = jax.vmap(lambda x: otreg.sinkhorn(otreg.PointCloud(x, y), epsilon=0.1))(
        jnp.stack([x, 2 * x, 3 * x]))
    assert len(repr(batch)) < 400 and "3/3 True" in repr(batch)
    seen = []
    jax.jit(lambda x: seen.append(repr(otreg.sinkhorn(otreg.PointCloud(x, y), epsilon=0.1)))
            or 0.0)(x)
    assert "<traced float32[]>" in seen[0]
    # the other results share the formatter: built from fields (no solve, nothing to compile)
    big = jnp.zeros((2000,))
    aux = otreg.DivergenceAux(ot_xy=res, p=big, q=big, ot_xx=jnp.float32(0.5),
                              ot_yy=jnp.float32(0.25), converged=jnp.bool_(True),
                              n_iters=jnp.asarray([3, 4, 5]), status=jnp.int32(0))
    assert len(repr(aux)) < 400 and "ot_xy=SinkhornResult(" in repr(aux)
    assert "n_iters=[3, 4, 5]" in repr(aux) and "ot_xx=0.5" in repr(aux)
    sp = otreg.SparseOTResult(cost=jnp.float32(1.5), primal=jnp.float32(1.25), alpha=big,
                              beta=big, converged=jnp.bool_(False), n_iters=jnp.int32(7),
                              error=jnp.float32(0.125), status=jnp.int32(8),
                              idx=jnp.zeros((2000, 2), int), values=jnp.zeros((2000, 2)),
                              a=big, b=big)
    assert repr(sp) == ("SparseOTResult(primal=1.25, cost=1.5, converged=False, n_iters=7, "
                        "error=0.125, status=8 (ROW_GAP))")
    assert repr(res.stats).startswith("SolverStats(n_sinkhorn=")
