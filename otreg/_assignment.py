r"""Exact linear assignment, jittable: Bertsekas's auction with epsilon-scaling, then an
optimality certificate (used by ``sparse_ot(k=1)`` on uniform square problems).

**Problem.** For a square cost :math:`C \in \mathbb R^{n\times n}` find the permutation
:math:`\sigma` (column :math:`j` to row :math:`\sigma_j`) minimising
:math:`\sum_j C_{\sigma_j j}`. Its LP dual, in the semi-dual form of unregularised OT with
uniform weights, is

.. math::
    \max_\alpha\ \sum_i \alpha_i - \sum_j \max_i(\alpha_i - C_{ij}),

and :math:`\sigma` is optimal iff some :math:`\alpha` has every column's assigned row among its
maximisers (complementary slackness):
:math:`\alpha_{\sigma_j} - C_{\sigma_j j} \ge \alpha_i - C_{ij}` for all :math:`i, j`.

**Auction** (D. P. Bertsekas, "The auction algorithm: a distributed relaxation method for the
assignment problem", Annals of Operations Research 14, 1988; epsilon-scaling: Bertsekas and
Eckstein 1988). Columns bid for rows, whose prices are :math:`p = -\alpha`. In a round, every
unassigned column j finds its best row :math:`i_1` (value :math:`w_1 = \alpha_{i_1} - C_{i_1 j}`)
and second best value :math:`w_2`, and bids :math:`p_{i_1} + w_1 - w_2 + \varepsilon`; every
row that received bids goes to its highest bidder at that price, its previous owner becomes
unassigned (the Jacobi, all-bidders-at-once variant: one vectorised O(n^2) pass per round). A
phase ends when every column is assigned; the assignment then satisfies
:math:`\varepsilon`-complementary slackness and is within :math:`n\varepsilon` of the optimum.
Epsilon-scaling runs phases at :math:`\varepsilon_0 = 1/4` of the cost spread, divided by
``FACTOR`` each phase, keeping the prices and restarting the assignment.

**Certificate.** Exactness for real costs needs :math:`n\varepsilon` below the gap between the
best and second-best assignments, which is unknown; so once :math:`\varepsilon \le 1/n` each
phase's assignment is checked. With :math:`\pi = \sigma^{-1}`, complementary slackness is the
system of difference constraints
:math:`\alpha_i \le \alpha_r + C_{i\pi_r} - C_{r\pi_r}`, solvable iff the graph has no negative
cycle; Bellman-Ford from the auction's prices (min-plus passes
:math:`\alpha_i \leftarrow \min_r \alpha_r + C_{i\pi_r} - C_{r\pi_r}`, at most n of them)
either reaches a fixed point (up to ``TIE`` ulps of the spread: then :math:`\sigma` is optimal
within n such ulps in total, and :math:`\alpha` is an optimal dual) or does not (a cheaper
assignment exists: scaling continues). The loop stops uncertified only at the precision floor
(:math:`\varepsilon` below ``FLOOR`` ulps) or when the round budget is spent.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["solve", "Assignment"]

EPS0 = 0.25  # first epsilon, in units of the cost spread
FACTOR = 6.0  # epsilon-scaling factor between phases
TIE = 8.0  # certificate tolerance per column, in ulps of the spread
FLOOR = 64.0  # smallest epsilon, in ulps of the spread


class Assignment(NamedTuple):
    sigma: jax.Array  # (n,) row assigned to each column (a permutation)
    alpha: jax.Array  # (n,) dual potentials (certified optimal when ``certified``)
    certified: jax.Array  # complementary slackness verified
    rounds: jax.Array  # bidding rounds
    exhausted: jax.Array  # the round budget ran out before a certificate


class _Bids(NamedTuple):
    price: jax.Array
    owner: jax.Array  # row -> column, -1 if free
    assigned: jax.Array  # column -> row, -1 if unassigned
    rounds: jax.Array


def _round(C, eps, s: _Bids) -> _Bids:
    """One Jacobi bidding round of every unassigned column."""
    n = C.shape[0]
    rows = jnp.arange(n, dtype=jnp.int32)
    v = -C.T - s.price[None, :]  # (column, row): alpha_i - C_ij
    i1 = jnp.argmax(v, axis=1).astype(jnp.int32)
    w1 = jnp.max(v, axis=1)
    w2 = jnp.max(jnp.where(rows[None, :] == i1[:, None], -jnp.inf, v), axis=1)
    w2 = jnp.where(jnp.isfinite(w2), w2, w1)  # n = 1
    active = s.assigned < 0
    bid = jnp.where(active, s.price[i1] + (w1 - w2) + eps, -jnp.inf)
    best = jax.ops.segment_max(bid, i1, num_segments=n)
    cand = jnp.where(active & (bid == best[i1]), rows, n)  # ties: the lowest column wins
    win = jax.ops.segment_min(cand, i1, num_segments=n)
    got = win < n
    assigned = s.assigned.at[jnp.where(got & (s.owner >= 0), s.owner, n)].set(-1, mode="drop")
    assigned = assigned.at[jnp.where(got, win, n)].set(rows, mode="drop")
    return _Bids(jnp.where(got, best, s.price), jnp.where(got, win, s.owner), assigned,
                 s.rounds + 1)


def _certify(C, sigma, alpha, tie):
    """Bellman-Ford on the complementary-slackness constraints of ``sigma`` from ``alpha``:
    returns (potentials, whether a fixed point was reached within n + 1 passes)."""
    n = C.shape[0]
    pi = jnp.zeros(n, jnp.int32).at[sigma].set(jnp.arange(n, dtype=jnp.int32))
    D = C[:, pi]  # D[i, r] = C[i, pi_r]
    off = jnp.diagonal(D)  # C[r, pi_r]

    def body(c):
        al, _, it = c
        new = jnp.min(D + (al - off)[None, :], axis=1)  # <= al (the r = i term)
        return jnp.minimum(al, new), jnp.any(al - new > tie), it + 1

    al, moved, _ = jax.lax.while_loop(lambda c: c[1] & (c[2] <= n), body,
                                      (alpha, jnp.array(True), jnp.array(0)))
    return al, ~moved


def _complete(s: _Bids):
    """The assignment with any unassigned columns given the free rows in order (only when the
    round budget ran out mid-phase): always a permutation."""
    free_rows = jnp.argsort(s.owner >= 0, stable=True)
    rank = jnp.cumsum(s.assigned < 0) - 1
    return jnp.where(s.assigned < 0, free_rows[jnp.maximum(rank, 0)].astype(jnp.int32),
                     s.assigned)


def solve(C: jax.Array, *, max_rounds: int) -> Assignment:
    """Optimal assignment for a square cost ``C`` whose entries span [0, 1] (callers normalise
    by the spread: every tolerance here is relative to it)."""
    n = C.shape[0]
    dtype = C.dtype
    ulp = jnp.finfo(dtype).eps
    zero = jnp.array(0, jnp.int32)
    free = jnp.full((n,), -1, jnp.int32)

    def phase(c):
        bids, eps, _, _, _ = c
        bids = jax.lax.while_loop(
            lambda s: jnp.any(s.assigned < 0) & (s.rounds < max_rounds),
            lambda s: _round(C, eps, s), bids._replace(owner=free, assigned=free))
        check = jnp.all(bids.assigned >= 0) & (eps <= 1.0 / n)
        alpha, ok = jax.lax.cond(check, lambda: _certify(C, bids.assigned, -bids.price, TIE * ulp),
                                 lambda: (-bids.price, jnp.array(False)))
        return bids, eps / FACTOR, ok, eps / FACTOR < FLOOR * ulp, alpha

    def more(c):
        bids, _, ok, floor, _ = c
        return ~ok & ~floor & (bids.rounds < max_rounds)

    init = (_Bids(jnp.zeros((n,), dtype), free, free, zero), jnp.asarray(EPS0, dtype),
            jnp.array(False), jnp.array(False), jnp.zeros((n,), dtype))
    bids, _, ok, _, alpha = jax.lax.while_loop(more, phase, init)
    return Assignment(_complete(bids), alpha, ok, bids.rounds, ~ok & (bids.rounds >= max_rounds))
