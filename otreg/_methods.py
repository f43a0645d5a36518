"""The ``method="sinkhorn" | "sns" | "auto"`` choice between entropic solvers, used by
:func:`otreg.sinkhorn_divergence`, :mod:`otreg.losses` and the CLI (kept out of the solvers: a
caller should not reach into one solver to pick between them).

``"auto"`` picks :func:`otreg.sns` when all of these hold, else :func:`otreg.sinkhorn`:

1. the solve runs in float64 (in float32 it is always Sinkhorn);
2. ``tol <= AUTO_SNS_MAX_TOL`` (1e-4; ``tol=None`` means the solvers' default, 1e-6 in float64);
3. ``max|C| / epsilon >= AUTO_SNS_RATIO`` (300);
4. the plan is sparse at this epsilon: the mean over rows of the gap between a row's two
   smallest costs is at least ``AUTO_SNS_GAP`` (2) times epsilon, so the best entry of a typical
   row of the kernel outweighs its runner-up by ``e^2`` or more.

5. with relaxed marginals (``rho``/``tau``): the smallest relaxed ``rho`` is at least
   ``AUTO_SNS_MIN_RHO`` (10) times ``max|C|`` (a mild relaxation; a strong one speeds Sinkhorn
   up more than SNS).

3 and 4 are measured on at most ``AUTO_SNS_ROWS`` (256) rows spread evenly over the cost (taken
only when 1 and 2 hold; a blocked cloud samples at most one block of rows).

Evidence (``bash benchmarks/run_auto_rule.sh``, 2026-12-02, 2 shared AMD EPYC cores, one pinned,
single-threaded; both solvers with their defaults, time to tol, median over 3 seeds; a cell is a
tie when both converged within 10%, or SNS took no Newton step and Sinkhorn's sweep count):
clouds ``x ~ N(0, I_d)``, ``y ~ N(1, I_d)`` (d = 2, 64) with cost ``|x - y|^2 / max`` and the SNS
paper's uniform assignment cost, n = 200 and 1000, ``max|C| / epsilon`` in {1e1, 1e2, 1e3, 1e4},
tol in {1e-3, 1e-4, 1e-6, 1e-9} (float64) and {1e-3, 1e-4, 1e-5} (float32).

- tol 1e-3, both dtypes: Sinkhorn is faster or within 10% in all 48 cells (with over-relaxation
  it reaches 1e-3 in at most ~420 sweeps even at ratio 1e4); ratio 1e1 and 1e2: in all 84 cells.
- float64, tol 1e-6 and 1e-9, ratio >= 1e3: SNS reached tol in all 24 cells, Sinkhorn missed it
  (within 2,000 sweeps) on some seed in 20; SNS is the faster in 20. Sinkhorn is the faster (by
  1.3-2.6x) in the 4 where the plan is not sparse: 2-d clouds and assignment with n = 1000 at
  ratio 1e3 (mean row gap / eps 0.5-1.1). tol 1e-4 with ratio >= 1e3 is the boundary: SNS
  the faster in 7 cells, Sinkhorn in 4, one tie.
- float32: SNS stalled above tol (its float32 floor, 2e-5 to 2e-4) on some seed in 8 of the 72
  cells (tol <= 1e-4, ratio >= 1e3), where Sinkhorn is the faster; SNS was the faster (1.3-2.2x,
  or Sinkhorn unconverged after 2,000 sweeps) in 8 others.
- This rule picks the faster solver (or a tie) in 94 of the 96 float64 cells; misses: 2-d clouds
  n = 200, ratio 1e3, tol 1e-4 (SNS picked, 2.1x slower) and 2-d clouds n = 1000, ratio 1e4,
  tol 1e-4 (1.3x slower); in float32, 64 of 72 (misses: the 8 cells where SNS was the faster).
  The old rule (``max|C| / epsilon >= 1000``, tol and dtype ignored): 80 / 96 and 48 / 72.
- Off that grid, on benchmarks/sns.py's 28 x 28 grids (non-uniform marginals): float32 24 / 24,
  float64 25 / 32; the 7 misses are SNS picks at ratio >= 1e3 where Sinkhorn was 1.1-5x faster
  (the L1 grid's optimal plan is not unique: SNS takes no Newton step there; the row gap does
  not see that).

Relaxed marginals (``RELAXED=1 bash benchmarks/run_auto_rule.sh``, 2026-12-03, same machine;
float64 only (float32 is Sinkhorn anyway), the grid above without ratio 1e1, b of mass 1.5,
rho = R max|C| on both sides, 54 cells per R). The balanced rules 1-4 alone pick the faster
solver in 37/54 (R = 1), 49/54 (R = 10) and 53/54 (R = 100) cells: a strong relaxation makes
Sinkhorn (over-relaxed, with the translation step) converge in 30-1,200 sweeps, where SNS,
5-50 Newton steps, is 1.2-6x slower on 2-d and 64-d clouds at ratio 1e3. With rule 5: 43/54,
49/54, 53/54. Its misses at R = 1 are 11 cells at ratio 1e4 (and one at 1e3, tol 1e-9) where
SNS is faster (1.1-2.2x, or Sinkhorn did not reach tol within its 2,000-sweep probe).

The thresholds are fitted to this grid; off it, expect misses near the boundaries. The test
needs concrete values: under ``jit`` (a traced epsilon, tol or points) ``"auto"`` is Sinkhorn:
pass ``method="sns"`` explicitly there.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from otreg import _checks
from otreg.geometry import CostMatrix, PointCloud, as_geometry
from otreg.newton import sns
from otreg.sinkhorn import sinkhorn

__all__ = ["choose_solver", "prefers_sns", "METHODS", "AUTO_SNS_RATIO", "AUTO_SNS_MAX_TOL",
           "AUTO_SNS_GAP", "AUTO_SNS_ROWS", "AUTO_SNS_MIN_RHO", "auto_reason"]

AUTO_SNS_RATIO = 300.0  # SNS needs max|C| / epsilon at least this ...
AUTO_SNS_MAX_TOL = 1e-4  # ... a tol at most this (float64) ...
AUTO_SNS_GAP = 2.0  # ... and a mean row gap (second smallest - smallest cost) of this * epsilon
AUTO_SNS_ROWS = 256  # rows sampled for the gap
AUTO_SNS_MIN_RHO = 10.0  # relaxed: SNS needs the smallest rho at least this * max|C|
METHODS = ("sinkhorn", "sns", "auto")


def _sample_rows(geom, rows: int) -> np.ndarray:
    """Indices of at most ``rows`` rows spread evenly over ``geom`` (at most ``block_size`` for
    a blocked cloud, so no buffer beyond one block of rows exists)."""
    n = geom.shape[0]
    if isinstance(geom, PointCloud) and geom.is_blocked:
        rows = min(rows, geom.block_size)
    return np.unique(np.linspace(0, n - 1, min(rows, n)).round().astype(np.int64))


def _take_rows(z, idx):
    """``z[idx]``: by NumPy for a CPU-resident array (an eager gather compiles an executable)."""
    return np.asarray(z)[idx] if _checks._on_host(z) else z[idx]


def _row_sample(geom, rows: int):
    """The cost of the rows :func:`_sample_rows` picks (one small jitted cost evaluation for a
    point cloud; nothing compiled for a CPU-resident cost matrix)."""
    idx = _sample_rows(geom, rows)
    if isinstance(geom, CostMatrix):
        return _take_rows(geom.cost_matrix, idx)
    C = _sample_cost(geom.cost_fn)(_take_rows(geom.x, idx), geom.y)
    return np.asarray(C) / float(geom.scale)


@functools.lru_cache(maxsize=16)
def _sample_cost(cost_fn):
    return jax.jit(cost_fn)


def _row_stats(geom, rows: int) -> tuple[float, float]:
    """On the sampled rows: ``(max |C|, mean of (second smallest - smallest) cost per row)``
    (the gap is 0 with a single column). The rows come to the host (``rows x m`` values) and
    the statistics are NumPy's: nothing to compile beyond the row selection."""
    C = np.asarray(_row_sample(geom, rows))
    peak = float(np.max(np.abs(C)))
    if C.shape[1] < 2:
        return peak, 0.0
    two = np.partition(C, 1, axis=1)[:, :2]
    return peak, float(np.mean(two[:, 1] - two[:, 0]))


def _smallest_rho(relax, eps: float):
    """The smallest relaxed rho of a spec from :func:`otreg._unbalanced.parse` (tau converted
    at ``eps``); None when balanced; raises TypeError when a value is traced."""
    if relax is None:
        return None
    kind, values = relax
    out = []
    for v in values:
        if v is None:
            continue
        if not _checks.is_concrete(v):
            raise TypeError("traced")
        v = float(np.asarray(v))
        out.append(v if kind == "rho" else eps * v / (1.0 - v))
    return min(out)


def auto_reason(geom, epsilon, *, tol=None, relax=None) -> tuple[bool, str]:
    """``(prefers SNS, why)``: :func:`prefers_sns` with the deciding test in words."""
    if epsilon is None or not _checks.is_concrete(epsilon):
        return False, "epsilon is traced or None: auto is Sinkhorn under jit"
    if tol is not None and not _checks.is_concrete(tol):
        return False, "tol is traced: auto is Sinkhorn under jit"
    geom = as_geometry(geom, "method='auto'")
    if not _checks.is_concrete(*jax.tree_util.tree_leaves(geom)):
        return False, "the inputs are traced: auto is Sinkhorn under jit"
    if geom.dtype != jnp.float64:
        return False, "float32: SNS stalls above small tols there (module docstring)"
    tol = 1e-6 if tol is None else float(tol)
    if tol > AUTO_SNS_MAX_TOL:
        return False, f"tol {tol:g} > {AUTO_SNS_MAX_TOL:g}: Sinkhorn gets there first"
    eps = float(epsilon)
    with jax.ensure_compile_time_eval():
        peak, gap = _row_stats(geom, AUTO_SNS_ROWS)
    if peak < AUTO_SNS_RATIO * eps:
        return False, f"max|C|/eps = {peak / eps:.3g} < {AUTO_SNS_RATIO:g}"
    if gap < AUTO_SNS_GAP * eps:
        return False, (f"plan not sparse: mean row gap / eps = {gap / eps:.3g} < "
                       f"{AUTO_SNS_GAP:g}")
    try:
        rho = _smallest_rho(relax, eps)
    except TypeError:
        return False, "rho or tau is traced: auto is Sinkhorn under jit"
    if rho is not None and rho < AUTO_SNS_MIN_RHO * peak:
        return False, (f"relaxed: rho / max|C| = {rho / peak:.3g} < {AUTO_SNS_MIN_RHO:g} "
                       f"(Sinkhorn converges fast)")
    return True, (f"float64, tol {tol:g} <= {AUTO_SNS_MAX_TOL:g}, max|C|/eps = {peak / eps:.3g} "
                  f">= {AUTO_SNS_RATIO:g}, mean row gap / eps = {gap / eps:.3g} >= "
                  f"{AUTO_SNS_GAP:g}")


def prefers_sns(geom, epsilon, *, tol=None, relax=None) -> bool:
    """Whether ``method="auto"`` takes SNS for this problem (the rule and its evidence: this
    module's docstring). ``tol=None`` is the solvers' default for the dtype. Needs a concrete
    epsilon, tol and inputs (then it looks at most ``AUTO_SNS_ROWS`` rows of the cost); False
    when any is traced (then the choice cannot depend on values: pass ``method="sns"``
    explicitly inside ``jit``). ``relax``: the relaxation, as from
    :func:`otreg._unbalanced.parse` (None: balanced)."""
    return auto_reason(geom, epsilon, tol=tol, relax=relax)[0]


def choose_solver(method: str, geom, epsilon, fn: str = "otreg", *, tol=None,
                  relax=None) -> Callable:
    """The entropic solver for ``method`` in ``"sinkhorn" | "sns" | "auto"`` (see
    :func:`prefers_sns` for what ``"auto"`` decides; pass the ``tol`` the solve will use, None
    for the default). Both solvers accept the same arguments and return a
    :class:`~otreg.SinkhornResult`. ``relax`` (the ``rho``/``tau`` spec of
    :func:`otreg._unbalanced.parse`): both solvers take it; ``"auto"`` adds rule 5."""
    _checks.check_option(method, "method", METHODS, fn)
    if method == "auto":
        method = "sns" if prefers_sns(geom, epsilon, tol=tol, relax=relax) else "sinkhorn"
    return sns if method == "sns" else sinkhorn
