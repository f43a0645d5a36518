"""Checks and in-graph repair of a geometry's values, shared by the solvers.

Kept apart from :mod:`otreg._checks` because it needs :class:`~otreg.CostMatrix`, and
:mod:`otreg.geometry` imports :mod:`otreg._checks` (importing geometry there would be a cycle).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from otreg import _checks
from otreg.geometry import CostMatrix

__all__ = ["validate_geometry_values", "repair_geometry"]

def validate_geometry_values(geom, fn="sinkhorn"):
    """Concrete inputs: non-finite costs or points raise. Returns max |C| for a concrete cost
    matrix (reused by the solve instead of another pass), else None."""
    leaves = (geom.cost_matrix,) if isinstance(geom, CostMatrix) else (geom.x, geom.y)
    if not _checks.is_concrete(*leaves):
        return None
    peaks = [_checks.max_abs(leaf) for leaf in leaves]  # NumPy on CPU: nothing to compile
    if not all(np.isfinite(p) for p in peaks):
        what = "cost matrix" if isinstance(geom, CostMatrix) else "point cloud"
        raise ValueError(f"{fn}: the {what} contains NaN or inf; remove them (an "
                         f"infinite cost is not supported: use a large finite cost).")
    if not isinstance(geom, CostMatrix):
        return None
    return jax.device_put(np.asarray(peaks[0], geom.dtype))  # a transfer, not an executable


def repair_geometry(geom, max_abs=None):
    """In-graph: non-finite costs/points read as finite values. Returns (geom, ok, cost stats)
    where the stats are ``(max |C|, mean C)`` thunks that reuse the passes already made."""
    if isinstance(geom, CostMatrix):  # non-finite entries read as the largest finite cost
        C = geom.cost_matrix
        hi = jnp.max(jnp.abs(C)) if max_abs is None else max_abs.astype(C.dtype)  # NaN/inf
        ok = jnp.isfinite(hi)
        big = jax.lax.cond(ok, lambda: hi, lambda: jnp.max(jnp.where(jnp.isfinite(C), C,
                                                                      -jnp.inf)))
        big = jnp.where(jnp.isfinite(big), big, 0.0)
        fixed = CostMatrix(C, big)
        mean = lambda: jax.lax.cond(ok, lambda: jnp.mean(C), fixed.mean_cost)  # noqa: E731
        return fixed, ok, (lambda: big), mean
    ok = jnp.all(jnp.isfinite(geom.x)) & jnp.all(jnp.isfinite(geom.y))
    leaves, treedef = jax.tree_util.tree_flatten(geom)
    x, y = (jnp.where(jnp.isfinite(z), z, 0.0) for z in (geom.x, geom.y))
    fixed = jax.tree_util.tree_unflatten(treedef, [x, y, *leaves[2:]])
    return fixed, ok, fixed.max_cost, fixed.mean_cost
