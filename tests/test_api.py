"""The public surface: names from DESIGN.md section 3 that exist so far, and explain()."""

from __future__ import annotations

import inspect

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
