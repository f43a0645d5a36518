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

__all__ = [
    "CostMatrix",
    "DivergenceAux",
    "PointCloud",
    "SinkhornResult",
    "SolverStats",
    "SparseOTResult",
    "Status",
    "costs",
    "explain",
    "losses",
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
