r"""The sparsified dual Hessian of entropic OT in ELL form, and its Schur-complement CG solve.

Shared by :func:`otreg.sns` (:mod:`otreg._sns_loop`) and the quadratic-OT Newton solver
(:mod:`otreg._qot_newton`). The off-diagonal block is held as a static (n, keep) array of column
indices and one of values: the product by ``P~`` is a gather, by ``P~^T`` a ``segment_sum``;
the diagonals stay exact (module doc of :mod:`otreg.newton`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from otreg._math import cg, safe_log

__all__ = ["EllHessian", "ell_hessian", "hessian_matvec", "solve_ell"]


class EllHessian(NamedTuple):
    """Sparsified dual Hessian :math:`\\tilde H` (module doc) in ELL form.

    Attributes:
      rows, cols: exact diagonals :math:`P\\mathbf 1` (n,) and :math:`P^\\top\\mathbf 1` (m,).
      idx: (n, keep) column indices of the kept plan entries of each row.
      vals: (n, keep) their values :math:`P_{ij}`.
    """

    rows: jax.Array
    cols: jax.Array
    idx: jax.Array
    vals: jax.Array


def ell_hessian(geom, a, b, eps, f, g, rows, cols, keep: int) -> EllHessian:
    """The ``keep`` largest plan entries of each row; exact diagonals ``rows`` and ``cols``."""
    log_b = safe_log(b)
    idx, c_kept = geom.row_top_k(g / eps + log_b, eps, keep)
    live = (a > 0)[:, None] & (b[idx] > 0)
    z = jnp.where(live, (f[:, None] + g[idx] - c_kept) / eps, -jnp.inf)
    vals = a[:, None] * b[idx] * jnp.exp(z)
    return EllHessian(rows, cols, idx, vals)


def hessian_matvec(h: EllHessian, u, v, shift=0.0):
    """:math:`(\\tilde H + \\mu\\,\\mathrm{diag}) (u, v)` by a gather and a ``segment_sum``."""
    m = h.cols.shape[0]
    hu = (1.0 + shift) * h.rows * u + jnp.sum(h.vals * v[h.idx], axis=1)
    hv = (1.0 + shift) * h.cols * v + jax.ops.segment_sum(
        (h.vals * u[:, None]).ravel(), h.idx.ravel(), num_segments=m)
    return hu, hv


def solve_ell(h: EllHessian, rf, rg, *, shift, rtol, max_iter):
    """Solve ``(H~ + shift diag(H~)) (u, v) = (rf, rg)`` through the Schur complement
    :math:`S = D_c - \tilde P^\top D_r^{-1} \tilde P` (m unknowns) by CG, preconditioned by
    the exact diagonal of S (one ``segment_sum``): near a permutation-like plan each row's
    dominant entry nearly cancels its column's diagonal, which a Jacobi preconditioner on the
    full system does not see. Returns ``(u, v, cg_products)``."""
    m = h.cols.shape[0]
    dr, dc = (1.0 + shift) * h.rows, (1.0 + shift) * h.cols
    inv_r = 1.0 / dr

    def p_mul(v):  # P~ v
        return jnp.sum(h.vals * v[h.idx], axis=1)

    def pt_mul(u):  # P~^T u
        return jax.ops.segment_sum((h.vals * u[:, None]).ravel(), h.idx.ravel(),
                                   num_segments=m)

    # the preconditioner's column sums and the right-hand side's P~^T D_r^-1 rf in one
    # two-column segment_sum (each column summed in the same order as alone; one scatter less
    # to compile)
    sums = jax.ops.segment_sum(
        jnp.stack([(h.vals * h.vals * inv_r[:, None]).ravel(),
                   (h.vals * (inv_r * rf)[:, None]).ravel()], axis=1),
        h.idx.ravel(), num_segments=m)
    s_diag = jnp.maximum(dc - sums[:, 0], 1e-3 * shift * dc + jnp.finfo(dc.dtype).tiny)
    v, k = cg(lambda v: dc * v - pt_mul(inv_r * p_mul(v)), rg - sums[:, 1],
              lambda r: r / s_diag, rtol=rtol, max_iter=max_iter)
    return inv_r * (rf - p_mul(v)), v, k
