r"""OT as Optax gradient transformations: usable inside ``optax.chain``, ``optax.masked`` and jit.

* :func:`add_ot_penalty`: ``updates + strength * grad penalty_fn(params, key)`` for any otreg
  distance of the parameters, with a PRNG key carried and split in the state (stochastic
  penalties such as sliced W2 see fresh directions every step).
* :func:`wasserstein_weight_decay`: pulls the empirical distribution of each parameter leaf toward
  :math:`\mathcal N(0, s^2)` along the gradient of the exact 1-D
  :math:`W_2^2(\hat\mu_w, \mathcal N(0, s^2))`, computed by sorting against the Gaussian's
  quantiles: a distributional ``optax.add_decayed_weights``.
* :func:`project_transport`: keeps matrix parameters on the transport polytope
  :math:`U(a, b)` by an entropic (KL) projection after the update (an exponentiated-gradient /
  mirror step: learnt soft permutations, doubly-stochastic matrices).

Each follows Optax's conventions (``GradientTransformationExtraArgs``, a ``NamedTuple`` state,
``init``/``update``; ``ValueError(optax NO_PARAMS_MSG)`` when ``params`` are needed but missing).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.scipy.special import ndtri

from otreg import _checks
from otreg.univariate import sort_values

__all__ = ["add_ot_penalty", "AddOTPenaltyState", "wasserstein_weight_decay",
           "gaussian_w2", "project_transport"]

NO_PARAMS_MSG = optax._src.base.NO_PARAMS_MSG


class AddOTPenaltyState(NamedTuple):
    """The PRNG key handed (after a split) to the penalty at the next step."""

    key: jax.Array


def add_ot_penalty(penalty_fn: Callable[[Any, jax.Array], jax.Array], strength: float, *,
                   key: jax.Array) -> optax.GradientTransformationExtraArgs:
    r"""Add ``strength * grad_params penalty_fn(params, key)`` to the updates.

    Args:
      penalty_fn: ``(params, key) -> scalar``, e.g. a sliced W2 between some layer's outputs
        and a target sample, or a Sinkhorn divergence between two parameter clouds.
      strength: the penalty's weight (a float or a schedule ``step -> float`` is not supported:
        scale with ``optax.scale_by_schedule`` in the chain instead).
      key: the initial PRNG key (``jax.random.key`` or ``PRNGKey``); split at every update.

    Returns:
      a gradient transformation whose state carries the key.
    """
    _checks.check_positive_float(strength, "strength", "add_ot_penalty")
    if not callable(penalty_fn):
        raise TypeError(f"add_ot_penalty: `penalty_fn` must be callable (params, key) -> "
                        f"scalar, got {type(penalty_fn).__name__}.")

    def init_fn(params):
        del params
        return AddOTPenaltyState(key=key)

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        if params is None:
            raise ValueError(NO_PARAMS_MSG)
        key, sub = jax.random.split(state.key)
        grads = jax.grad(penalty_fn)(params, sub)
        updates = jax.tree_util.tree_map(lambda u, g: u + strength * g.astype(u.dtype), updates,
                                         grads)
        return updates, AddOTPenaltyState(key=key)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def gaussian_w2(w: jax.Array, prior_std: float) -> jax.Array:
    r""":math:`W_2^2` between the empirical distribution of the entries of ``w`` and
    :math:`\mathcal N(0, s^2)`, matched by sorting: the k-th smallest entry is paired with the
    Gaussian quantile :math:`s\,\Phi^{-1}((k + 1/2) / N)` (the exact 1-D coupling against the
    Gaussian discretised at N mid-quantiles)."""
    flat = jnp.ravel(w)
    n = flat.shape[0]
    q = prior_std * ndtri((np.arange(n) + 0.5) / n).astype(flat.dtype)
    return jnp.mean((sort_values(flat) - q) ** 2)


def wasserstein_weight_decay(strength: float, *, prior_std: float
                             ) -> optax.GradientTransformationExtraArgs:
    r"""Add ``strength * grad W_2^2(w, N(0, prior_std^2))`` for every parameter leaf ``w``.

    .. math::
        u \leftarrow u + \lambda\,\nabla_w W_2^2(\hat\mu_w, \mathcal N(0, s^2)),\qquad
        \nabla_{w_i} = \tfrac2N\,(w_i - s\,\Phi^{-1}(\tfrac{r_i + 1/2}{N}))

    with :math:`r_i` the rank of :math:`w_i`: each weight is pulled toward the Gaussian quantile
    of its rank, so the layer keeps its ordering while its histogram becomes Gaussian
    (``optax.add_decayed_weights`` pulls every weight to 0 instead). One sort per leaf and step.
    Leaves of fewer than 2 entries are left alone.
    """
    fn = "wasserstein_weight_decay"
    _checks.check_positive_float(strength, "strength", fn)
    _checks.check_positive_float(prior_std, "prior_std", fn)

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        if params is None:
            raise ValueError(NO_PARAMS_MSG)

        def one(u, w):
            if w.size < 2:
                return u
            g = jax.grad(gaussian_w2)(w.astype(jnp.promote_types(w.dtype, jnp.float32)),
                                      prior_std)
            return u + strength * g.astype(u.dtype)

        return jax.tree_util.tree_map(one, updates, params), state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def project_transport(epsilon: float, *, a: jax.Array | None = None,
                      b: jax.Array | None = None, tol: float | None = None,
                      max_iter: int = 1000) -> optax.GradientTransformationExtraArgs:
    r"""Keep matrix parameters ``P`` (n, m) on :math:`U(a, b)` through an entropic projection.

    The update ``u`` (e.g. ``-lr * grad``) is applied as a mirror (exponentiated-gradient) step
    followed by the KL projection on the polytope:

    .. math::
        P^+ = \arg\min_{Q \in U(a, b)} \mathrm{KL}\big(Q \,\big|\, P \odot e^{u/\varepsilon}\big),

    computed by :func:`otreg.sinkhorn` on the cost :math:`-(\varepsilon\log(P / a\otimes b) + u)`
    at temperature ``epsilon`` (so :math:`P^+ = \mathrm{diag}(s)\,(P\odot e^{u/\varepsilon})
    \,\mathrm{diag}(t)`); the returned update is :math:`P^+ - P`. Entries of P must be positive
    (start from e.g. :math:`a\otimes b`); they stay positive. Apply it last in the chain, to the
    selected leaves only (``optax.masked``); every selected leaf must be 2-D.

    Args:
      epsilon: temperature of the mirror step (update units per e-fold of P).
      a, b: the marginals (default: uniform, total mass 1 each); ``a = b = ones(n)`` gives
        doubly-stochastic matrices.
      tol, max_iter: Sinkhorn's stopping rule for the projection (L1 marginal error).
    """
    fn = "project_transport"
    _checks.check_positive_float(epsilon, "epsilon", fn)
    max_iter = _checks.check_positive_int(max_iter, "max_iter", fn)

    def init_fn(params):
        for leaf in jax.tree_util.tree_leaves(params):
            if jnp.ndim(leaf) != 2:
                raise ValueError(f"{fn}: every selected parameter must be a matrix (n, m); got "
                                 f"shape {jnp.shape(leaf)}. Select the matrices with "
                                 f"optax.masked.")
        return optax.EmptyState()

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        if params is None:
            raise ValueError(NO_PARAMS_MSG)
        from otreg.sinkhorn import sinkhorn  # local: transforms is a leaf of the package

        def one(u, P):
            if P.ndim != 2:
                raise ValueError(f"{fn}: parameter of shape {P.shape} is not a matrix.")
            n, m = P.shape
            dt = jnp.promote_types(P.dtype, jnp.float32)
            aa = jnp.full((n,), 1.0 / n, dt) if a is None else jnp.asarray(a, dt)
            bb = jnp.full((m,), 1.0 / m, dt) if b is None else jnp.asarray(b, dt)
            Pd, ud = P.astype(dt), u.astype(dt)
            logp = jnp.log(jnp.maximum(Pd, jnp.finfo(dt).tiny) / (aa[:, None] * bb[None, :]))
            res = sinkhorn(-(epsilon * logp + ud), aa, bb, epsilon=epsilon, tol=tol,
                           max_iter=max_iter, anneal=False, init=None)
            return (res.plan() - Pd).astype(u.dtype)

        return jax.tree_util.tree_map(one, updates, params), state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
