"""Per-example OT losses, following ``optax.losses`` conventions.

Batch axes lead, there is no reduction (the caller averages), hyperparameters are keyword-only,
and shapes are checked with errors that name the argument. Every loss is ``jit``/``vmap``/``grad``
safe and finite for finite inputs.

Bad values (NaN or inf points or logits, negative weights, a label out of range, histograms
that do not sum to 1, a cost matrix with NaN) raise ``ValueError`` naming the argument when the
inputs are concrete. Under ``jit`` a loss has no status to report them in, so **the loss of an
example whose input was bad is NaN** (the flag), and only that example's: the solve runs on a
repaired input, so the other examples' values and every gradient stay finite (the flagged
examples get a zero gradient). An example whose solver reports an input problem (a status among
:data:`INPUT_PROBLEMS`, e.g. a traced ``epsilon <= 0``) is flagged the same way.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from otreg import _checks
from otreg._methods import choose_solver
from otreg.divergence import sinkhorn_divergence
from otreg.geometry import CostMatrix, PointCloud
from otreg.sliced import sliced_w2
from otreg.sparse import sparse_ot
from otreg.status import Status

__all__ = ["sinkhorn_divergence_loss", "sliced_w2_loss", "wasserstein_label_loss",
           "sparse_ot_loss"]

INPUT_PROBLEMS = (Status.MASS_MISMATCH, Status.BAD_WEIGHTS, Status.NONFINITE_INPUT,
                  Status.BAD_PARAMETER)


def _input_problem(status: jax.Array) -> jax.Array:
    """True where a solver's status says its input was bad (the loss is then flagged NaN)."""
    return jnp.isin(status, jnp.asarray(INPUT_PROBLEMS, jnp.int32))


def _finite(z: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(all entries finite, z with non-finite entries -> 0)`` for one example."""
    ok = jnp.isfinite(z)
    return jnp.all(ok), jnp.where(ok, z, jnp.zeros((), z.dtype))


def _flag(bad: jax.Array, value: jax.Array) -> jax.Array:
    """``value``, or NaN where ``bad`` (the under-``jit`` report of a bad input)."""
    return jnp.where(bad, jnp.asarray(jnp.nan, value.dtype), value)


def _flat_map(fn, batch_shape, *arrays):
    """Apply ``fn`` (scalar output) to every leading-batch element with one ``vmap``."""
    if not batch_shape:
        return fn(*arrays)
    size = math.prod(batch_shape)
    flat = [None if z is None else z.reshape((size,) + z.shape[len(batch_shape):])
            for z in arrays]
    axes = [None if z is None else 0 for z in flat]
    out = jax.vmap(fn, in_axes=axes)(*flat)
    return jax.tree_util.tree_map(lambda z: z.reshape(batch_shape + z.shape[1:]), out)


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
    if 0 in pred.shape[-2:] or 0 in target.shape[-2:]:
        raise ValueError(f"{fn}: every example needs at least one point of dimension d >= 1; "
                         f"got `pred` {pred.shape} and `target` {target.shape}.")
    _checks.check_finite(pred, "pred", fn, "points")
    _checks.check_finite(target, "target", fn, "points")
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
    init: tuple | None = None,
    return_potentials: bool = False,
    rho: float | jax.Array | None = None,
    tau: float | jax.Array | None = None,
    **kwargs: Any,
) -> jax.Array | tuple[jax.Array, tuple]:
    r"""Debiased Sinkhorn divergence between point sets, per example.

    Args:
      pred: ``(..., n, d)`` predicted point sets (e.g. a generator's samples).
      target: ``(..., m, d)`` target point sets, same batch shape.
      epsilon: absolute regularisation (cost units); ``None`` is ``0.05 * mean cost`` of each
        example. Fix it for a loss that is comparable across steps.
      pred_weights, target_weights: ``(..., n)`` / ``(..., m)`` weights (None = uniform).
      cost, block_size, **kwargs: passed to :func:`otreg.sinkhorn_divergence`.
      init: warm start, the potentials ``(f, g, p, q)`` of shapes ``(..., n)``, ``(..., m)``,
        ``(..., n)``, ``(..., m)`` returned by a previous call with ``return_potentials=True``
        (e.g. the last training step: keep them in the training state). Same values and
        gradients, fewer iterations (:func:`otreg.sinkhorn_divergence`, ``init``).
      return_potentials: also return those potentials, for the next call's ``init``.
      rho, tau: relaxed marginals (unbalanced divergence with the mass correction; weights of
        any masses), as in :func:`otreg.sinkhorn_divergence`: robust to outliers and to
        class imbalance between the two sets.

    Returns:
      ``(...)``: :math:`S_\varepsilon` of each example (see :func:`otreg.sinkhorn_divergence`);
      gradients by the envelope theorem. NaN for an example with bad input under ``jit``
      (module doc). With ``return_potentials=True``: ``(values, (f, g, p, q))``.
    """
    fn = "sinkhorn_divergence_loss"
    pred, target, batch = _point_sets(pred, target, fn)
    for name, w, pts in (("pred_weights", pred_weights, pred),
                         ("target_weights", target_weights, target)):
        if w is not None and jnp.shape(w) != pts.shape[:-1]:
            raise ValueError(f"{fn}: `{name}` must have shape {pts.shape[:-1]}, got "
                             f"{jnp.shape(w)}.")
    for name, w in (("pred_weights", pred_weights), ("target_weights", target_weights)):
        if w is not None:
            _checks.float_array(w, name, None, fn)
            _checks.check_weight_vector(w, name, fn)
    _checks.check_epsilon(epsilon, fn)
    if init is not None:
        if not (isinstance(init, (tuple, list)) and len(init) == 4):
            raise TypeError(f"{fn}: `init` must be the tuple (f, g, p, q) returned with "
                            f"return_potentials=True, got {type(init).__name__}.")
        n, m = pred.shape[-2], target.shape[-2]
        for name, z, size in zip("fgpq", init, (n, m, n, m), strict=True):
            if jnp.shape(z) != batch + (size,):
                raise ValueError(f"{fn}: `init` entry {name} must have shape "
                                 f"{batch + (size,)}, got {jnp.shape(z)}.")
    f0, g0, p0, q0 = (None,) * 4 if init is None else init

    def one(x, y, a, b, f0, g0, p0, q0):
        okx, x = _finite(x)
        oky, y = _finite(y)
        val, aux = sinkhorn_divergence(x, y, a, b, epsilon=epsilon, cost=cost,
                                       block_size=block_size, rho=rho, tau=tau,
                                       init=None if f0 is None else (f0, g0, p0, q0), **kwargs)
        return (_flag(~(okx & oky) | _input_problem(aux.status), val),
                (aux.ot_xy.f, aux.ot_xy.g, aux.p, aux.q))

    values, pots = _flat_map(one, batch, pred, target, pred_weights, target_weights,
                             f0, g0, p0, q0)
    return (values, pots) if return_potentials else values


def sliced_w2_loss(
    pred: jax.Array,
    target: jax.Array,
    *,
    key: jax.Array | None = None,
    n_projections: int | None = None,
    control_variate: str | None = "auto",
    directions: Any = "auto",
    squared: bool = False,
    **kwargs: Any,
) -> jax.Array:
    r"""Sliced Wasserstein-2 between point sets, per example (see :func:`otreg.sliced_w2`).

    Args:
      pred: ``(..., n, d)`` point sets; target: ``(..., m, d)``, same batch shape.
      key: PRNG key; every example gets its own directions (``key`` split over the batch).
        ``None`` is a fixed key: the same directions at every step (pass a fresh key per step
        for unbiased stochastic gradients).
      n_projections, control_variate, directions, squared, **kwargs: as in
        :func:`otreg.sliced_w2` (the same designs and ``"auto"`` rule; a directions function is
        called with each example's key).

    Returns:
      ``(...)`` per-example :math:`\widehat{SW}_2` (or its square); NaN for an example with
      non-finite points under ``jit`` (module doc).
    """
    fn = "sliced_w2_loss"
    pred, target, batch = _point_sets(pred, target, fn)
    key = jax.random.PRNGKey(0) if key is None else key
    keys = jax.random.split(key, max(math.prod(batch), 1)).reshape(batch + key.shape)

    def one(x, y, k):
        okx, x = _finite(x)
        oky, y = _finite(y)
        val = sliced_w2(x, y, key=k, n_projections=n_projections,
                        control_variate=control_variate, directions=directions,
                        squared=squared, **kwargs)
        return _flag(~(okx & oky), val)

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
      ``(...)`` loss per example; its gradient in ``logits`` is the envelope gradient. Under
      ``jit``, NaN for an example with non-finite logits, a label out of range, a histogram
      that is negative, non-finite or does not sum to 1, or a non-finite ``cost_matrix`` (these
      raise ``ValueError`` on concrete inputs; module doc).
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
    _checks.check_finite(logits, "logits", fn, "scores")
    if jnp.issubdtype(labels.dtype, jnp.integer):
        if labels.shape != logits.shape[:-1]:
            raise ValueError(f"{fn}: integer `labels` must have shape {logits.shape[:-1]}, "
                             f"got {labels.shape}.")
        if _checks.is_concrete(labels) and labels.size:
            lab = np.asarray(labels)  # concrete (also when closed over by a traced caller)
            if int(lab.min()) < 0 or int(lab.max()) >= K:
                raise ValueError(f"{fn}: `labels` must lie in [0, {K}), got values in "
                                 f"[{int(lab.min())}, {int(lab.max())}].")
        label_ok = (labels >= 0) & (labels < K)
        target = jax.nn.one_hot(jnp.where(label_ok, labels, 0), K, dtype=logits.dtype)
    elif jnp.issubdtype(labels.dtype, jnp.floating):
        if labels.shape != logits.shape:
            raise ValueError(f"{fn}: histogram `labels` must have the shape of `logits` "
                             f"{logits.shape}, got {labels.shape}.")
        target = labels.astype(logits.dtype)
        _checks.check_weight_vector(target, "labels", fn)
        mass = jnp.sum(jnp.where(jnp.isfinite(target), target, -1.0), axis=-1)
        label_ok = (jnp.all(jnp.isfinite(target) & (target >= 0), axis=-1)
                    & (jnp.abs(mass - 1) <= _checks.mass_rtol(target, target)))
        if _checks.is_concrete(labels) and labels.size:
            ln = np.asarray(labels)
            sums = ln.sum(axis=-1, dtype=np.float64)
            if np.any(np.abs(sums - 1) > float(_checks.mass_rtol(ln, ln))):
                raise ValueError(f"{fn}: histogram `labels` must sum to 1 along the last axis "
                                 f"(softmax(logits) does); got sums in [{sums.min():.8g}, "
                                 f"{sums.max():.8g}]. Normalise them.")
        target = jnp.where(label_ok[..., None], target, jnp.full((), 1.0 / K, target.dtype))
    else:
        raise TypeError(f"{fn}: `labels` must be integer class ids or float histograms, got "
                        f"dtype {labels.dtype}.")
    _checks.check_epsilon(epsilon, fn)
    if _checks.is_concrete(M) and not (np.all(np.isfinite(np.asarray(M)))
                                       and np.all(np.asarray(M) >= 0)):
        raise ValueError(f"{fn}: `cost_matrix` must be finite and non-negative.")
    logits_ok = jnp.all(jnp.isfinite(logits), axis=-1)
    out_dtype = jnp.result_type(logits, M)  # the loss's dtype; the softmax runs in float32+
    probs = jax.nn.softmax(jnp.where(logits_ok[..., None], logits, 0.0).astype(
        _checks.compute_dtype(logits)), axis=-1)
    bad = ~(logits_ok & label_ok) | ~jnp.all(jnp.isfinite(M))
    geom = CostMatrix(M)
    solver = choose_solver(method, geom, epsilon, fn, tol=tol)

    def one(p, t, bad):
        res = solver(geom, p, t, epsilon=epsilon, tol=tol, max_iter=max_iter)
        return _flag(bad | _input_problem(res.status), res.cost.astype(out_dtype))

    return _flat_map(one, logits.shape[:-1], probs, target, bad)


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
      (the plan is the gradient in the cost). NaN for an example with bad input under ``jit``
      (module doc).
    """
    fn = "sparse_ot_loss"
    pred, target, batch = _point_sets(pred, target, fn)
    PointCloud(pred.reshape(-1, pred.shape[-1])[:1], target.reshape(-1, target.shape[-1])[:1],
               cost=cost)  # validates `cost` eagerly

    def one(x, y):
        okx, x = _finite(x)
        oky, y = _finite(y)
        res = sparse_ot(PointCloud(x, y, cost=cost), k=k, gamma=gamma, **kwargs)
        return _flag(~(okx & oky) | _input_problem(res.status), res.cost)

    return _flat_map(one, batch, pred, target)
