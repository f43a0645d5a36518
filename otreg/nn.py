r"""Flax NNX modules built on otreg (needs the ``flax`` extra: ``pip install otreg[flax]``).

:class:`SparseOTRouter` routes the tokens of a mixture-of-experts layer with sparsity-constrained
optimal transport (Liu, Puigcerver and Blondel, ICLR 2023, whose motivating application this is):
tokens are the rows of the plan (mass 1/n each), experts its columns (mass 1/E each), the cost is
minus the gate's softmax, and every column has at most ``capacity`` nonzeros, so **no expert ever
receives more than ``capacity`` tokens**, by construction, and every expert receives tokens
("experts choose tokens", balanced by the column marginal).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from otreg import _checks
from otreg.sparse import sparse_ot

__all__ = ["SparseOTRouter", "route"]


def route(logits: jax.Array, capacity: int, *, gamma: float = 0.1,
          max_iter: int = 200) -> tuple[jax.Array, jax.Array]:
    """Dispatch and combine tensors for gate ``logits`` (n_tokens, n_experts).

    Returns ``(dispatch, combine)``, both (n_tokens, n_experts, capacity): ``dispatch[t, e, c]``
    is 1 when token t fills slot c of expert e (at most one token per slot, at most ``capacity``
    tokens per expert); ``combine`` is ``dispatch`` times the gate probability of (t, e), which
    carries the gradient to the gate (the assignment itself is piecewise constant).
    """
    n, e = logits.shape
    probs = jax.nn.softmax(logits, axis=-1)
    cost = -jax.lax.stop_gradient(probs)
    res = sparse_ot(cost, k=min(capacity, n), gamma=gamma, max_iter=max_iter)
    idx, values = res.plan_sparse()  # (e, k): token indices per expert slot, and their mass
    k = idx.shape[1]
    used = (values > 0).astype(logits.dtype)  # (e, k)
    onehot = jax.nn.one_hot(idx, n, dtype=logits.dtype) * used[..., None]  # (e, k, n)
    dispatch = jnp.transpose(onehot, (2, 0, 1))  # (n, e, k)
    if k < capacity:  # fewer tokens than slots: pad the slot axis
        dispatch = jnp.pad(dispatch, ((0, 0), (0, 0), (0, capacity - k)))
    combine = dispatch * probs[:, :, None]
    return dispatch, combine


class SparseOTRouter(nnx.Module):
    """Token-to-expert router by sparsity-constrained OT (each expert takes <= ``capacity``
    tokens).

    Args:
      in_features: token dimension.
      num_experts: number of experts E.
      capacity: most tokens per expert (the plan's column sparsity k).
      gamma: the OT regulariser :math:`\\frac\\gamma2\\|T\\|^2` (cost = -softmax, in [-1, 0]).
      rngs: ``nnx.Rngs`` for the gate's initialisation.

    Call: ``router(x)`` with ``x: (n_tokens, in_features)`` or ``(batch, n_tokens,
    in_features)`` returns ``(dispatch, combine)`` of shape ``(..., n_tokens, num_experts,
    capacity)`` (see :func:`route`). Jittable and differentiable in the gate's weights.
    """

    def __init__(self, in_features: int, num_experts: int, capacity: int, *,
                 gamma: float = 0.1, rngs: nnx.Rngs):
        fn = "SparseOTRouter"
        self.num_experts = _checks.check_positive_int(num_experts, "num_experts", fn)
        self.capacity = _checks.check_positive_int(capacity, "capacity", fn)
        _checks.check_positive_float(gamma, "gamma", fn)
        self.gamma = float(gamma)
        self.gate = nnx.Linear(in_features, num_experts, rngs=rngs)

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        if x.ndim not in (2, 3):
            raise ValueError(f"SparseOTRouter: x must be (n_tokens, d) or (batch, n_tokens, d), "
                             f"got shape {x.shape}.")
        logits = self.gate(x)
        one = lambda z: route(z, self.capacity, gamma=self.gamma)  # noqa: E731
        return one(logits) if x.ndim == 2 else jax.vmap(one)(logits)
