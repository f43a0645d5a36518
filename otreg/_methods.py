"""The ``method="sinkhorn" | "sns" | "auto"`` choice between entropic solvers, used by
:func:`otreg.sinkhorn_divergence`, :mod:`otreg.losses` and the CLI (kept out of the solvers: a
caller should not reach into one solver to pick between them).

``"auto"`` picks :func:`otreg.sns` when ``max|C| / epsilon >= AUTO_SNS_RATIO``: Sinkhorn's
iteration count grows like ``max|C| / epsilon``, SNS's stays nearly flat
(``benchmarks/RESULTS.md``). The test needs concrete values; under ``jit`` (a traced epsilon or
traced points) ``"auto"`` is Sinkhorn: pass ``method="sns"`` explicitly there.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from otreg import _checks
from otreg.geometry import CostMatrix, as_geometry
from otreg.newton import sns
from otreg.sinkhorn import ANNEAL_MIN_RATIO, sinkhorn

__all__ = ["choose_solver", "prefers_sns", "METHODS", "AUTO_SNS_RATIO"]

AUTO_SNS_RATIO = 10 * ANNEAL_MIN_RATIO
METHODS = ("sinkhorn", "sns", "auto")


def prefers_sns(geom, epsilon) -> bool:
    """``max|C| / epsilon >= AUTO_SNS_RATIO`` for a concrete epsilon and concrete inputs (one
    pass over the cost, blockwise when blocked); False when either is traced (then the choice
    cannot depend on values: pass ``method="sns"`` explicitly inside ``jit``)."""
    if epsilon is None or not _checks.is_concrete(epsilon):
        return False
    geom = as_geometry(geom, "method='auto'")
    leaves = jax.tree_util.tree_leaves(geom)
    if not _checks.is_concrete(*leaves):
        return False
    with jax.ensure_compile_time_eval():
        peak = float(jnp.max(jnp.abs(geom.cost_matrix)) if isinstance(geom, CostMatrix)
                     else geom.max_cost())
    return peak >= AUTO_SNS_RATIO * float(epsilon)


def choose_solver(method: str, geom, epsilon, fn: str = "otreg") -> Callable:
    """The entropic solver for ``method`` in ``"sinkhorn" | "sns" | "auto"`` (see
    :func:`prefers_sns` for what ``"auto"`` decides). Both solvers accept the same arguments and
    return a :class:`~otreg.SinkhornResult`."""
    _checks.check_option(method, "method", METHODS, fn)
    if method == "auto":
        method = "sns" if prefers_sns(geom, epsilon) else "sinkhorn"
    return sns if method == "sns" else sinkhorn
