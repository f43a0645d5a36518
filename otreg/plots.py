"""Notebook figures (matplotlib, imported only when a function here is called)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["sparse_plans_figure", "gaussian_1d_problem"]


def gaussian_1d_problem(n: int = 100) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The paper's 1-D example: two Gaussian histograms on a grid of [0, 1] and the squared
    distance cost scaled to max 1. Returns ``(C, a, b)``."""
    t = np.linspace(0.0, 1.0, n)
    a = np.exp(-((t - 0.3) ** 2) / (2 * 0.08 ** 2))
    b = np.exp(-((t - 0.65) ** 2) / (2 * 0.1 ** 2)) + 0.5 * np.exp(-((t - 0.2) ** 2) /
                                                                  (2 * 0.05 ** 2))
    C = (t[:, None] - t[None, :]) ** 2
    return C / C.max(), a / a.sum(), b / b.sum()


def sparse_plans_figure(C: Any = None, a: Any = None, b: Any = None, *,
                        ks: Sequence[int | None] = (1, 2, 4, None), gamma: float = 0.1,
                        figsize: tuple[float, float] | None = None):
    """Plans of :func:`otreg.sparse_ot` for each k in ``ks`` (``None``: :func:`otreg.quadratic_ot`,
    the large-k limit), side by side, as in Liu, Puigcerver and Blondel (2023), Figure 1.

    Each panel shows the plan's support (log-scaled mass), its largest number of nonzeros per
    column and its row-marginal error. ``C, a, b`` default to :func:`gaussian_1d_problem`.

    Returns:
      the ``matplotlib.figure.Figure``.

    Raises:
      ImportError: matplotlib is not installed (``pip install otreg[notebooks]``).
    """
    try:
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - exercised only without matplotlib
        raise ImportError("sparse_plans_figure needs matplotlib: pip install "
                          "'otreg[notebooks]' (or matplotlib).") from err
    import otreg
    if C is None:
        C, a, b = gaussian_1d_problem()
    fig, axes = plt.subplots(1, len(ks), figsize=figsize or (3.2 * len(ks), 3.2),
                             squeeze=False)
    for ax, k in zip(axes[0], ks, strict=True):
        res = (otreg.quadratic_ot(C, a, b, gamma=gamma) if k is None
               else otreg.sparse_ot(C, a, b, k=k, gamma=gamma))
        P = np.asarray(res.plan())
        shown = np.where(P > 0, np.log10(np.where(P > 0, P, 1.0)), np.nan)
        ax.imshow(shown, cmap="viridis", interpolation="nearest", aspect="auto")
        nnz = int((P > 0).sum(0).max())
        label = "quadratic (k = n)" if k is None else f"k = {k}"
        ax.set_title(f"{label}\nmax nnz/col {nnz}, row err {float(res.error):.1e}", fontsize=9)
        ax.set_xlabel("target j")
        ax.set_ylabel("source i")
    fig.tight_layout()
    return fig
