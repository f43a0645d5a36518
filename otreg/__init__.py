"""otreg: optimal transport distances, losses and regularizers in JAX.

Pure, jittable, vmappable, differentiable functions; float32 by default, float64 under
``jax_enable_x64``; no NaN from finite inputs.
"""

from otreg import costs, losses, transforms
from otreg.divergence import DivergenceAux, sinkhorn_divergence
from otreg.geometry import CostMatrix, PointCloud
from otreg.newton import sns
from otreg.sinkhorn import SinkhornResult, SolverStats, sinkhorn
from otreg.sliced import sliced_w2
from otreg.sparse import SparseOTResult, quadratic_ot, sparse_ot
from otreg.status import Status, explain
from otreg.univariate import wasserstein_1d

__version__ = "0.1.0"

_LAZY = {"nn": "flax", "plots": "matplotlib", "data": None}  # optional dependencies stay optional


def __getattr__(name: str):
    """``otreg.nn`` and ``otreg.plots`` (and ``otreg.data``) import on first use, so ``import
    otreg`` does not need Flax or matplotlib."""
    if name in _LAZY:
        import importlib
        try:
            return importlib.import_module(f"otreg.{name}")
        except ModuleNotFoundError as err:
            extra = _LAZY[name]
            if extra is None or err.name != extra:
                raise
            raise ModuleNotFoundError(f"otreg.{name} needs {extra}: pip install 'otreg[{extra}]'"
                                      f" (or pip install {extra}).", name=extra) from err
    raise AttributeError(f"module 'otreg' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

__all__ = [
    "CostMatrix",
    "DivergenceAux",
    "PointCloud",
    "SinkhornResult",
    "SolverStats",
    "SparseOTResult",
    "Status",
    "costs",
    "data",
    "explain",
    "losses",
    "nn",
    "plots",
    "quadratic_ot",
    "sinkhorn",
    "sinkhorn_divergence",
    "sliced_w2",
    "sns",
    "sparse_ot",
    "transforms",
    "wasserstein_1d",
    "__version__",
]
