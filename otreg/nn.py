r"""Flax NNX modules built on otreg (needs the ``flax`` extra: ``pip install otreg[flax]``).

:class:`SparseOTRouter` routes the tokens of a mixture-of-experts layer with sparsity-constrained
optimal transport (Liu, Puigcerver and Blondel, ICLR 2023, whose motivating application this is):
tokens are the rows of the plan (mass 1/n each), experts its columns (mass 1/E each), the cost is
minus the gate's softmax, and every column has at most ``capacity`` nonzeros, so **no expert ever
receives more than ``capacity`` tokens**, by construction, and every expert receives tokens
("experts choose tokens", balanced by the column marginal).

Bad tokens: on concrete input a NaN or inf token raises ``ValueError`` naming ``x``. Under
``jit`` a token with a non-finite feature (or whose gate logits are not finite) is **not
routed**: its rows of ``dispatch`` and ``combine`` are 0 (its MoE output is 0, like a token
dropped for capacity), every other entry stays finite, and the status returned with
``return_status=True`` is NONFINITE_INPUT (``otreg.explain``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from otreg import _checks
from otreg._math import HIGHEST
from otreg.sparse import sparse_ot
from otreg.status import Status

__all__ = ["SparseOTRouter", "route"]


def route(logits: jax.Array, capacity: int, *, gamma: float = 0.1, max_iter: int = 200,
          return_status: bool = False) -> tuple[jax.Array, ...]:
    """Dispatch and combine tensors for gate ``logits`` (n_tokens, n_experts).

    Returns ``(dispatch, combine)``, both (n_tokens, n_experts, capacity): ``dispatch[t, e, c]``
    is 1 when token t fills slot c of expert e (at most one token per slot, at most ``capacity``
    tokens per expert); ``combine`` is ``dispatch`` times the gate probability of (t, e), which
    carries the gradient to the gate (the assignment itself is piecewise constant). With
    ``return_status=True`` also the sparse OT solve's status (NONFINITE_INPUT when a token's
    logits were not finite: that token is not routed).
    """
    fn = "route"
    logits = _checks.float_array(logits, "logits", 2, fn)
    capacity = _checks.check_positive_int(capacity, "capacity", fn)
    _checks.check_finite(logits, "logits", fn, "gate logits")
    n, e = logits.shape
    ok = jnp.all(jnp.isfinite(logits), axis=-1)  # (n,): tokens that can be routed
    probs = jax.nn.softmax(jnp.where(ok[:, None], logits, 0.0), axis=-1)
    probs = jnp.where(ok[:, None], probs, 0.0)  # bad tokens: the largest cost, never preferred
    cost = -jax.lax.stop_gradient(probs)
    res = sparse_ot(cost, k=min(capacity, n), gamma=gamma, max_iter=max_iter)
    idx, values = res.plan_sparse()  # (e, k): token indices per expert slot, and their mass
    k = idx.shape[1]
    used = ((values > 0) & ok[idx]).astype(logits.dtype)  # (e, k)
    onehot = jax.nn.one_hot(idx, n, dtype=logits.dtype) * used[..., None]  # (e, k, n)
    dispatch = jnp.transpose(onehot, (2, 0, 1))  # (n, e, k)
    if k < capacity:  # fewer tokens than slots: pad the slot axis
        dispatch = jnp.pad(dispatch, ((0, 0), (0, 0), (0, capacity - k)))
    combine = dispatch * probs[:, :, None]
    if not return_status:
        return dispatch, combine
    status = jnp.where(jnp.all(ok), res.status, Status.NONFINITE_INPUT).astype(jnp.int32)
    return dispatch, combine, status


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
    capacity)`` (see :func:`route`); ``router(x, return_status=True)`` also returns the status
    (per batch element for 3-D ``x``). Jittable and differentiable in the gate's weights.
    """

    def __init__(self, in_features: int, num_experts: int, capacity: int, *,
                 gamma: float = 0.1, rngs: nnx.Rngs):
        fn = "SparseOTRouter"
        self.in_features = _checks.check_positive_int(in_features, "in_features", fn)
        self.num_experts = _checks.check_positive_int(num_experts, "num_experts", fn)
        self.capacity = _checks.check_positive_int(capacity, "capacity", fn)
        _checks.check_positive_float(gamma, "gamma", fn)
        self.gamma = float(gamma)
        self.gate = nnx.Linear(in_features, num_experts, precision=HIGHEST, rngs=rngs)

    def __call__(self, x: jax.Array, *, return_status: bool = False) -> tuple[jax.Array, ...]:
        fn = "SparseOTRouter"
        x = _checks.float_array(x, "x", None, fn)
        if x.ndim not in (2, 3) or x.shape[-1] != self.in_features:
            raise ValueError(f"{fn}: `x` must have shape (n_tokens, {self.in_features}) or "
                             f"(batch, n_tokens, {self.in_features}) (in_features = "
                             f"{self.in_features}), got shape {x.shape}.")
        if x.shape[-2] == 0:
            raise ValueError(f"{fn}: `x` has no tokens (shape {x.shape}).")
        _checks.check_finite(x, "x", fn, "tokens")
        logits = self.gate(x)
        one = lambda z: route(z, self.capacity, gamma=self.gamma,  # noqa: E731
                              return_status=return_status)
        return one(logits) if x.ndim == 2 else jax.vmap(one)(logits)
