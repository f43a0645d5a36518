"""Per-example OT losses, following ``optax.losses`` conventions.

Batch axes lead, there is no reduction (the caller averages), hyperparameters are keyword-only,
and shapes are checked with errors that name the argument. Every loss is ``jit``/``vmap``/``grad``
safe and finite for finite inputs.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from otreg import _checks
from otreg.divergence import sinkhorn_divergence
from otreg.geometry import CostMatrix, PointCloud
from otreg.newton import choose_solver
from otreg.sliced import sliced_w2
from otreg.sparse import sparse_ot

__all__ = ["sinkhorn_divergence_loss", "sliced_w2_loss", "wasserstein_label_loss",
           "sparse_ot_loss"]


def _flat_map(fn, batch_shape, *arrays):
    """Apply ``fn`` (scalar output) to every leading-batch element with one ``vmap``."""
    if not batch_shape:
        return fn(*arrays)
    size = math.prod(batch_shape)
    flat = [None if z is None else z.reshape((size,) + z.shape[len(batch_shape):])
            for z in arrays]
    axes = [None if z is None else 0 for z in flat]
    return jax.vmap(fn, in_axes=axes)(*flat).reshape(batch_shape)


def _point_sets(pred, target, fn):
    """Check ``(..., n, d)`` and ``(..., m, d)`` point sets; returns them and the batch shape."""
    pred = _checks.float_array(pred, "pred", None, fn)
    target = _checks.float_array(target, "target", None, fn)
    if pred.ndim < 2 or target.ndim < 2:
        raise ValueError(f"{fn}: `pred` and `target` must have shape (..., n, d) and "
                         f"(..., m, d); got {pred.shape} and {target.shape}.")
    batch = pred.shape[:-2]
    if target.shape[:-2] != batch or target.shape[-1] != pred.shape[-1]:
        raise ValueError(f"{fn}: `target` {target.shape} must share the batch shape {batch} "
                         f"and the dimension d = {pred.shape[-1]} of `pred` {pred.shape}.")
    return pred, target, batch


def sinkhorn_divergence_loss(
    pred: jax.Array,
    target: jax.Array,
    *,
    epsilon: float | None = None,
    pred_weights: jax.Array | None = None,
    target_weights: jax.Array | None = None,
    cost: Any = "sqeuclidean",
    block_size: int | None = None,
    **kwargs: Any,
) -> jax.Array:
    r"""Debiased Sinkhorn divergence between point sets, per example.

    Args:
      pred: ``(..., n, d)`` predicted point sets (e.g. a generator's samples).
      target: ``(..., m, d)`` target point sets, same batch shape.
      epsilon: absolute regularisation (cost units); ``None`` is ``0.05 * mean cost`` of each
        example. Fix it for a loss that is comparable across steps.
      pred_weights, target_weights: ``(..., n)`` / ``(..., m)`` weights (None = uniform).
      cost, block_size, **kwargs: passed to :func:`otreg.sinkhorn_divergence`.

    Returns:
      ``(...)``: :math:`S_\varepsilon` of each example (see :func:`otreg.sinkhorn_divergence`);
      gradients by the envelope theorem.
    """
    fn = "sinkhorn_divergence_loss"
    pred, target, batch = _point_sets(pred, target, fn)
    for name, w, pts in (("pred_weights", pred_weights, pred),
                         ("target_weights", target_weights, target)):
        if w is not None and jnp.shape(w) != pts.shape[:-1]:
            raise ValueError(f"{fn}: `{name}` must have shape {pts.shape[:-1]}, got "
                             f"{jnp.shape(w)}.")
    _checks.check_epsilon(epsilon, fn)

    def one(x, y, a, b):
        return sinkhorn_divergence(x, y, a, b, epsilon=epsilon, cost=cost,
                                   block_size=block_size, **kwargs)[0]

    return _flat_map(one, batch, pred, target, pred_weights, target_weights)


def sliced_w2_loss(
    pred: jax.Array,
    target: jax.Array,
    *,
    key: jax.Array | None = None,
    n_projections: int = 128,
    control_variate: str | None = "upper",
    squared: bool = False,
    **kwargs: Any,
) -> jax.Array:
    r"""Sliced Wasserstein-2 between point sets, per example (see :func:`otreg.sliced_w2`).

    Args:
      pred: ``(..., n, d)`` point sets; target: ``(..., m, d)``, same batch shape.
      key: PRNG key; every example gets its own directions (``key`` split over the batch).
        ``None`` is a fixed key: the same directions at every step (pass a fresh key per step
        for unbiased stochastic gradients).
      n_projections, control_variate, squared, **kwargs: as in :func:`otreg.sliced_w2`.

    Returns:
      ``(...)`` per-example :math:`\widehat{SW}_2` (or its square).
    """
    fn = "sliced_w2_loss"
    pred, target, batch = _point_sets(pred, target, fn)
    key = jax.random.PRNGKey(0) if key is None else key
    keys = jax.random.split(key, max(math.prod(batch), 1)).reshape(batch + key.shape)

    def one(x, y, k):
        return sliced_w2(x, y, key=k, n_projections=n_projections,
                         control_variate=control_variate, squared=squared, **kwargs)

    return _flat_map(one, batch, pred, target, keys)


def wasserstein_label_loss(
    logits: jax.Array,
    labels: jax.Array,
    cost_matrix: jax.Array,
    *,
    epsilon: float | None = None,
    tol: float | None = None,
    max_iter: int = 1_000,
    method: str = "sinkhorn",
) -> jax.Array:
    r"""Entropic Wasserstein loss between predicted class histograms and labels, per example
    (Frogner et al. 2015, "Learning with a Wasserstein Loss").

    .. math::
        \ell = \mathrm{OT}_\varepsilon(\mathrm{softmax}(z), y)
        = \min_{P \in U(\mathrm{softmax}(z), y)} \langle P, M\rangle + \varepsilon\,
          \mathrm{KL}(P \,|\, \mathrm{softmax}(z) \otimes y)

    with a ground metric ``M`` between classes (confusing nearby classes costs less). For a hard
    label the plan is forced and :math:`\ell = \sum_k \mathrm{softmax}(z)_k M_{k, y}`.

    Args:
      logits: ``(..., K)`` unnormalised scores.
      labels: ``(...)`` integer class ids, or ``(..., K)`` label histograms (rows summing to 1).
      cost_matrix: ``(K, K)`` ground cost between classes (non-negative).
      epsilon: absolute regularisation; ``None`` is ``0.05 * mean(cost_matrix)``.
      tol, max_iter: Sinkhorn stopping rule (see :func:`otreg.sinkhorn`).
      method: ``"sinkhorn"``, ``"sns"`` or ``"auto"`` (see :func:`otreg.sinkhorn_divergence`).

    Returns:
      ``(...)`` loss per example; its gradient in ``logits`` is the envelope gradient.
    """
    fn = "wasserstein_label_loss"
    logits = _checks.float_array(logits, "logits", None, fn)
    M = _checks.float_array(cost_matrix, "cost_matrix", 2, fn)
    if logits.ndim < 1:
        raise ValueError(f"{fn}: `logits` must have shape (..., K), got a scalar.")
    K = logits.shape[-1]
    if M.shape != (K, K):
        raise ValueError(f"{fn}: `cost_matrix` must have shape ({K}, {K}) for {K} classes, "
                         f"got {M.shape}.")
    labels = jnp.asarray(labels)
    if jnp.issubdtype(labels.dtype, jnp.integer):
        if labels.shape != logits.shape[:-1]:
            raise ValueError(f"{fn}: integer `labels` must have shape {logits.shape[:-1]}, "
                             f"got {labels.shape}.")
        if _checks.is_concrete(labels) and labels.size:
            lab = np.asarray(labels)  # concrete (also when closed over by a traced caller)
            if int(lab.min()) < 0 or int(lab.max()) >= K:
                raise ValueError(f"{fn}: `labels` must lie in [0, {K}), got values in "
                                 f"[{int(lab.min())}, {int(lab.max())}].")
        target = jax.nn.one_hot(labels, K, dtype=logits.dtype)
    elif jnp.issubdtype(labels.dtype, jnp.floating):
        if labels.shape != logits.shape:
            raise ValueError(f"{fn}: histogram `labels` must have the shape of `logits` "
                             f"{logits.shape}, got {labels.shape}.")
        target = labels.astype(logits.dtype)
    else:
        raise TypeError(f"{fn}: `labels` must be integer class ids or float histograms, got "
                        f"dtype {labels.dtype}.")
    _checks.check_epsilon(epsilon, fn)
    if _checks.is_concrete(M) and not (np.all(np.isfinite(np.asarray(M)))
                                       and np.all(np.asarray(M) >= 0)):
        raise ValueError(f"{fn}: `cost_matrix` must be finite and non-negative.")
    probs = jax.nn.softmax(logits, axis=-1)
    geom = CostMatrix(M)
    solver = choose_solver(method, geom, epsilon, fn)

    def one(p, t):
        return solver(geom, p, t, epsilon=epsilon, tol=tol, max_iter=max_iter).cost

    return _flat_map(one, logits.shape[:-1], probs, target)


def sparse_ot_loss(
    pred: jax.Array,
    target: jax.Array,
    *,
    k: int,
    gamma: float = 0.1,
    cost: Any = "sqeuclidean",
    **kwargs: Any,
) -> jax.Array:
    r"""Sparsity-constrained OT value between point sets, per example (uniform weights): each
    target point receives mass from at most ``k`` predicted points (:func:`otreg.sparse_ot`).

    Args:
      pred: ``(..., n, d)``; target: ``(..., m, d)``, same batch shape; ``1 <= k <= n``.
      gamma: the regulariser :math:`\frac\gamma2\|T\|^2` in cost units.
      cost, **kwargs: the ground cost, and :func:`otreg.sparse_ot` options (``tol``,
        ``max_iter``, ``formulation``).

    Returns:
      ``(...)``: the (semi-)dual value of each example; gradients by the envelope theorem
      (the plan is the gradient in the cost).
    """
    fn = "sparse_ot_loss"
    pred, target, batch = _point_sets(pred, target, fn)
    PointCloud(pred.reshape(-1, pred.shape[-1])[:1], target.reshape(-1, target.shape[-1])[:1],
               cost=cost)  # validates `cost` eagerly

    def one(x, y):
        return sparse_ot(PointCloud(x, y, cost=cost), k=k, gamma=gamma, **kwargs).cost

    return _flat_map(one, batch, pred, target)
