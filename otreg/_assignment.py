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
unassigned (the Jacobi, all-bidders-at-once variant). A round only reads the unassigned columns:
they are gathered into the smallest of a ladder of fixed buffers (``LADDER_MIN`` up to ``CHUNK``
columns, by factors of ``LADDER``) that holds them, or the first ``CHUNK`` of them bid (any
subset of the unassigned columns may bid), so a round costs O(buffer * n), not O(n^2); the top
two values are plain float reductions (XLA:CPU's argmax is far slower than a max). A phase
ends when every column is assigned; the assignment then satisfies
:math:`\varepsilon`-complementary slackness and is within :math:`n\varepsilon` of the optimum.
Epsilon-scaling runs phases at :math:`\varepsilon_0 = 1/4` of the cost spread, divided by
``FACTOR`` each phase, keeping the prices and the pairs that still satisfy
:math:`\varepsilon`-complementary slackness at the new :math:`\varepsilon` (only the others
bid again).

**Certificate.** Exactness for real costs needs :math:`n\varepsilon` below the gap between the
best and second-best assignments, which is unknown; so once :math:`\varepsilon \le 1/n` each
phase's assignment is checked. With :math:`\pi = \sigma^{-1}`, complementary slackness is the
system of difference constraints
:math:`\alpha_i \le \alpha_r + C_{i\pi_r} - C_{r\pi_r}`, solvable iff the graph has no negative
cycle; Bellman-Ford from the auction's prices (min-plus passes
:math:`\alpha_i \leftarrow \min_r \alpha_r + C_{i\pi_r} - C_{r\pi_r}`, at most ``PASSES``
of them, n in the last phase) either reaches a fixed point (up to ``TIE`` ulps of the spread:
then :math:`\sigma` is optimal within n such ulps in total, and :math:`\alpha` is an optimal
dual) or does not (a cheaper assignment exists, or more passes were needed: scaling continues,
and smaller epsilons leave prices that need fewer passes). The loop stops uncertified only at
the precision floor (:math:`\varepsilon` below ``FLOOR`` ulps) or when the round budget is
spent.
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
CHECK = 1.0  # certify phases once epsilon <= CHECK / n
CHUNK = 128  # most bidders in one round
LADDER = 4  # ratio between bidder-buffer sizes
LADDER_MIN = 4  # smallest bidder buffer
PASSES = 48  # Bellman-Ford passes per certificate (n in the last phase)


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


def _ladder(n: int) -> tuple[int, ...]:
    """Bidder-buffer sizes, ascending: a round gathers the unassigned columns into the smallest
    buffer that holds them all, or the largest (first columns first) when none does."""
    sizes = [min(n, CHUNK)]
    while sizes[-1] > LADDER_MIN:
        sizes.append(max(sizes[-1] // LADDER, 1))
    return tuple(sorted(set(sizes)))


def _round(CT, eps, s: _Bids, size: int) -> _Bids:
    """One Jacobi bidding round of (at most ``size``) unassigned columns."""
    n = CT.shape[0]
    rows = jnp.arange(n, dtype=jnp.int32)
    cols = jnp.nonzero(s.assigned < 0, size=size, fill_value=n)[0].astype(jnp.int32)
    active = cols < n
    v = -CT[jnp.minimum(cols, n - 1)] - s.price[None, :]  # (bidder, row): alpha_i - C_ij
    # top two values by plain float reductions (XLA:CPU's argmax is ~10x slower than a max)
    at = jnp.arange(n).astype(v.dtype)
    w1 = jnp.max(v, axis=1)
    k1 = jnp.max(jnp.where(v == w1[:, None], at, -1.0), axis=1)  # the last best row
    w2 = jnp.max(jnp.where(at[None, :] == k1[:, None], -jnp.inf, v), axis=1)
    i1 = jnp.clip(k1, 0, n - 1).astype(jnp.int32)  # NaN-free costs: k1 >= 0
    w2 = jnp.where(jnp.isfinite(w2), w2, w1)  # n = 1
    bid = jnp.where(active, s.price[i1] + (w1 - w2) + eps, -jnp.inf)
    best = jax.ops.segment_max(bid, i1, num_segments=n)
    cand = jnp.where(active & (bid == best[i1]), cols, n)  # ties: the lowest column wins
    win = jax.ops.segment_min(cand, i1, num_segments=n)
    got = win < n
    assigned = s.assigned.at[jnp.where(got & (s.owner >= 0), s.owner, n)].set(-1, mode="drop")
    assigned = assigned.at[jnp.where(got, win, n)].set(rows, mode="drop")
    return _Bids(jnp.where(got, best, s.price), jnp.where(got, win, s.owner), assigned,
                 s.rounds + 1)


def _bid_until_assigned(CT, eps, bids: _Bids, max_rounds) -> _Bids:
    n = CT.shape[0]
    sizes = _ladder(n)
    branches = [lambda s, b=b: _round(CT, eps, s, b) for b in sizes]
    sizes_arr = jnp.asarray(sizes, jnp.int32)

    def body(s):
        k = jnp.sum(s.assigned < 0, dtype=jnp.int32)
        which = jnp.minimum(jnp.sum(sizes_arr < k), len(sizes) - 1)
        return jax.lax.switch(which, branches, s)

    return jax.lax.while_loop(lambda s: jnp.any(s.assigned < 0) & (s.rounds < max_rounds),
                              body, bids)


def _keep_eps_cs(CT, eps, bids: _Bids) -> _Bids:
    """Unassign the columns whose pair violates eps-complementary slackness at the new eps."""
    n = CT.shape[0]
    v = -CT - bids.price[None, :]
    top = jnp.max(v, axis=1)
    mine = jnp.take_along_axis(v, jnp.maximum(bids.assigned, 0)[:, None], axis=1)[:, 0]
    keep = (bids.assigned >= 0) & (mine >= top - eps)
    assigned = jnp.where(keep, bids.assigned, -1)
    owner = jnp.full((n,), -1, jnp.int32).at[jnp.where(keep, assigned, n)].set(
        jnp.arange(n, dtype=jnp.int32), mode="drop")
    return bids._replace(owner=owner, assigned=assigned)


def _certify(C, sigma, alpha, tie, max_passes):
    """Bellman-Ford on the complementary-slackness constraints of ``sigma`` from ``alpha``:
    returns (potentials, whether a fixed point was reached within ``max_passes`` passes)."""
    n = C.shape[0]
    pi = jnp.zeros(n, jnp.int32).at[sigma].set(jnp.arange(n, dtype=jnp.int32))
    D = C[:, pi]  # D[i, r] = C[i, pi_r]
    off = jnp.diagonal(D)  # C[r, pi_r]

    def body(c):
        al, _, it = c
        new = jnp.min(D + (al - off)[None, :], axis=1)  # <= al (the r = i term)
        return jnp.minimum(al, new), jnp.any(al - new > tie), it + 1

    al, moved, _ = jax.lax.while_loop(lambda c: c[1] & (c[2] <= max_passes), body,
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
    CT = C.T

    def phase(c):
        bids, eps, _, _, _ = c
        bids = _bid_until_assigned(CT, eps, _keep_eps_cs(CT, eps, bids), max_rounds)
        check = jnp.all(bids.assigned >= 0) & (eps <= CHECK / n)
        last = (eps / FACTOR < FLOOR * ulp) | (bids.rounds >= max_rounds)
        alpha, ok = jax.lax.cond(
            check, lambda: _certify(C, bids.assigned, -bids.price, TIE * ulp,
                                    jnp.where(last, n, min(PASSES, n))),
            lambda: (-bids.price, jnp.array(False)))
        return bids, eps / FACTOR, ok, eps / FACTOR < FLOOR * ulp, alpha

    def more(c):
        bids, _, ok, floor, _ = c
        return ~ok & ~floor & (bids.rounds < max_rounds)

    init = (_Bids(jnp.zeros((n,), dtype), free, free, zero), jnp.asarray(EPS0, dtype),
            jnp.array(False), jnp.array(False), jnp.zeros((n,), dtype))
    bids, _, ok, _, alpha = jax.lax.while_loop(more, phase, init)
    return Assignment(_complete(bids), alpha, ok, bids.rounds, ~ok & (bids.rounds >= max_rounds))
