"""otreg: optimal transport distances, losses and regularizers in JAX.

Pure, jittable, vmappable, differentiable functions; float32 by default, float64 under
``jax_enable_x64``; no NaN from finite inputs.
"""

from otreg import costs, losses
from otreg.divergence import DivergenceAux, sinkhorn_divergence
from otreg.geometry import CostMatrix, PointCloud
from otreg.newton import sns
from otreg.sinkhorn import SinkhornResult, SolverStats, sinkhorn
from otreg.sliced import sliced_w2
from otreg.status import Status, explain
from otreg.univariate import wasserstein_1d

__version__ = "0.1.0"

__all__ = [
    "CostMatrix",
    "DivergenceAux",
    "PointCloud",
    "SinkhornResult",
    "SolverStats",
    "Status",
    "costs",
    "explain",
    "losses",
    "sinkhorn",
    "sinkhorn_divergence",
    "sliced_w2",
    "sns",
    "wasserstein_1d",
    "__version__",
]
