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

Bad values (a non-finite gradient or penalty gradient, a transport parameter that is not
positive) raise ``ValueError`` naming the argument when ``update`` runs on concrete arrays. Under
``jit`` the offending entries are neutralised (a non-finite update entry counts as 0, a
non-positive P entry as the smallest positive float) so that the parameters stay finite, and the
state's ``status`` says so (``otreg.explain``).
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
from otreg.status import Status
from otreg.univariate import sort_values

__all__ = ["add_ot_penalty", "AddOTPenaltyState", "wasserstein_weight_decay",
           "gaussian_w2", "project_transport", "ProjectTransportState"]

NO_PARAMS_MSG = optax._src.base.NO_PARAMS_MSG
_INPUT_CODES = (Status.MASS_MISMATCH, Status.BAD_WEIGHTS, Status.NONFINITE_INPUT,
                Status.BAD_PARAMETER)


def _success() -> jax.Array:
    return jnp.asarray(Status.SUCCESS, jnp.int32)


def _worse(s: jax.Array, t: jax.Array) -> jax.Array:
    """The status to report of two: an input problem beats a convergence one, then the larger."""
    rank = lambda c: jnp.where(jnp.isin(c, jnp.asarray(_INPUT_CODES)), 100 + c, c)  # noqa: E731
    return jnp.where(rank(t) > rank(s), t, s).astype(jnp.int32)


class AddOTPenaltyState(NamedTuple):
    """The PRNG key handed (after a split) to the penalty at the next step, and the status of
    the last step: NONFINITE_INPUT when the penalty's gradient had non-finite entries (under
    ``jit``; they were left out of the update)."""

    key: jax.Array
    status: jax.Array | None = None


class ProjectTransportState(NamedTuple):
    """What the last projection found, over all selected matrices.

    Attributes:
      status: Sinkhorn's status of the projection (the worst over the leaves; MAX_ITER when it
        did not reach ``tol``), or NONFINITE_INPUT when an update entry was not finite or a
        parameter entry not positive (under ``jit``; those entries were neutralised).
      error: the largest L1 marginal error of the projected matrices.
    """

    status: jax.Array
    error: jax.Array


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
      a gradient transformation whose state carries the key and the last step's status.

    Raises:
      TypeError: ``penalty_fn`` not callable, ``key`` not a PRNG key; ValueError: a penalty that
      is not a scalar (at trace time), a non-finite penalty gradient on concrete inputs.
    """
    fn = "add_ot_penalty"
    _checks.check_positive_float(strength, "strength", fn)
    if not callable(penalty_fn):
        raise TypeError(f"{fn}: `penalty_fn` must be callable (params, key) -> "
                        f"scalar, got {type(penalty_fn).__name__}.")
    _check_key(key, fn)

    def init_fn(params):
        del params
        return AddOTPenaltyState(key=key, status=_success())

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        if params is None:
            raise ValueError(NO_PARAMS_MSG)
        key, sub = jax.random.split(state.key)
        out = jax.eval_shape(penalty_fn, params, sub)
        if getattr(out, "shape", None) != () or not jnp.issubdtype(out.dtype, jnp.floating):
            raise ValueError(f"{fn}: `penalty_fn(params, key)` must return a float scalar, got "
                             f"{getattr(out, 'shape', out)} of dtype {getattr(out, 'dtype', '')}"
                             f"; reduce it (e.g. with jnp.sum or jnp.mean).")
        grads = jax.grad(penalty_fn)(params, sub)
        leaves = jax.tree_util.tree_leaves(grads)
        ok = jnp.all(jnp.asarray([jnp.all(jnp.isfinite(g)) for g in leaves] or [True]))
        if _checks.is_concrete(*leaves) and not bool(ok):
            raise ValueError(f"{fn}: the gradient of `penalty_fn` at these `params` contains "
                             f"NaN or inf; make the penalty differentiable there (e.g. no sqrt "
                             f"or log at 0, finite params).")
        updates = jax.tree_util.tree_map(
            lambda u, g: u + strength * jnp.where(jnp.isfinite(g), g, 0).astype(u.dtype),
            updates, grads)
        status = jnp.where(ok, Status.SUCCESS, Status.NONFINITE_INPUT).astype(jnp.int32)
        return updates, AddOTPenaltyState(key=key, status=status)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _check_key(key: Any, fn: str) -> None:
    """A PRNG key: a typed key array (``jax.random.key``) or a raw ``uint32[2]``
    (``jax.random.PRNGKey``)."""
    if key is None:
        raise TypeError(f"{fn}: `key` is None; pass a PRNG key, e.g. key=jax.random.key(0).")
    arr = key if isinstance(key, jax.Array) else np.asarray(key)
    typed = jnp.issubdtype(arr.dtype, jax.dtypes.prng_key)
    if not (typed and arr.shape == ()) and not (arr.dtype == np.uint32 and arr.shape == (2,)):
        raise TypeError(f"{fn}: `key` must be a PRNG key (jax.random.key(0) or "
                        f"jax.random.PRNGKey(0)), got {type(key).__name__} of shape "
                        f"{getattr(arr, 'shape', None)} and dtype {arr.dtype}.")


def gaussian_w2(w: jax.Array, prior_std: float) -> jax.Array:
    r""":math:`W_2^2` between the empirical distribution of the entries of ``w`` and
    :math:`\mathcal N(0, s^2)`, matched by sorting: the k-th smallest entry is paired with the
    Gaussian quantile :math:`s\,\Phi^{-1}((k + 1/2) / N)` (the exact 1-D coupling against the
    Gaussian discretised at N mid-quantiles). NaN entries raise ``ValueError`` on concrete
    input; under ``jit`` the value is NaN (and the gradient NaN only at those entries)."""
    fn = "gaussian_w2"
    w = _checks.float_array(w, "w", None, fn)
    _checks.check_positive_float(prior_std, "prior_std", fn)
    _checks.check_finite(w, "w", fn, "parameters")
    return _gaussian_w2(w, prior_std)


@jax.jit
def _gaussian_w2(w: jax.Array, prior_std: jax.Array) -> jax.Array:
    """:func:`gaussian_w2` without the checks, compiled as one program (an eager call would
    otherwise dispatch and compile its sort's dozens of small operations one by one)."""
    flat = jnp.ravel(w)
    n = flat.shape[0]
    q = prior_std * ndtri((np.arange(n) + 0.5) / n).astype(flat.dtype)
    return jnp.mean((sort_values(flat) - q) ** 2)


_gaussian_w2_grad = jax.jit(jax.grad(_gaussian_w2))


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

    :math:`W_2^2` is a mean over the leaf's N entries, so the pull on each weight is
    :math:`2\lambda/N` times its distance to its quantile: the same ``strength`` pulls a large
    leaf's weights more weakly than a small one's. To match ``optax.add_decayed_weights(c)``
    per weight on a leaf of N entries, use ``strength = c * N / 2``.
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
            _checks.check_finite(w, "params", fn, "parameters")
            if w.size < 2:
                return u
            dt = jnp.promote_types(w.dtype, jnp.float32)
            g = _gaussian_w2_grad(w.astype(dt), jnp.asarray(prior_std, dt))
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

    Returns:
      a gradient transformation whose state (:class:`ProjectTransportState`) holds the last
      projection's status and marginal error: a projection that did not reach ``tol`` is
      reported there, never silently.
    """
    fn = "project_transport"
    _checks.check_positive_float(epsilon, "epsilon", fn)
    max_iter = _checks.check_positive_int(max_iter, "max_iter", fn)
    if tol is not None:
        _checks.check_positive_float(tol, "tol", fn)
    for name, w in (("a", a), ("b", b)):
        if w is not None:
            _checks.check_weight_vector(_checks.float_array(w, name, 1, fn), name, fn)

    def marginals(n, m, dt):
        aa = jnp.full((n,), 1.0 / n, dt) if a is None else jnp.asarray(a, dt)
        bb = jnp.full((m,), 1.0 / m, dt) if b is None else jnp.asarray(b, dt)
        if aa.shape != (n,) or bb.shape != (m,):
            raise ValueError(f"{fn}: `a` {aa.shape} and `b` {bb.shape} must have one entry per "
                             f"row and column of the ({n}, {m}) parameter.")
        return aa, bb

    def check_params(P):
        if jnp.ndim(P) != 2:
            raise ValueError(f"{fn}: every selected parameter must be a matrix (n, m); got "
                             f"shape {jnp.shape(P)}. Select the matrices with optax.masked.")
        if _checks.is_concrete(P):
            Pn = np.asarray(P)
            if not (np.all(np.isfinite(Pn)) and np.all(Pn > 0)):
                raise ValueError(f"{fn}: the transport parameter in `params` must have finite, "
                                 f"positive entries (min {np.nanmin(Pn):.3g}); start from e.g. "
                                 f"jnp.outer(a, b), which the projection keeps positive.")

    def init_fn(params):
        for leaf in jax.tree_util.tree_leaves(params):
            check_params(leaf)
            aa, bb = marginals(*jnp.shape(leaf), jnp.promote_types(leaf.dtype, jnp.float32))
            _checks.check_weight_values(aa, bb, fn)
        return ProjectTransportState(status=_success(), error=jnp.zeros((), jnp.float32))

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args, state
        if params is None:
            raise ValueError(NO_PARAMS_MSG)
        from otreg.sinkhorn import sinkhorn  # local: transforms is a leaf of the package

        found = []

        def one(u, P):
            check_params(P)
            _checks.check_finite(u, "updates", fn, "updates (gradients)")
            n, m = P.shape
            dt = jnp.promote_types(P.dtype, jnp.float32)
            aa, bb = marginals(n, m, dt)
            Pd, ud = P.astype(dt), u.astype(dt)
            ok = jnp.all(jnp.isfinite(ud)) & jnp.all(jnp.isfinite(Pd) & (Pd > 0))
            ud = jnp.where(jnp.isfinite(ud), ud, 0.0)
            Pd = jnp.where(jnp.isfinite(Pd) & (Pd > 0), Pd, jnp.finfo(dt).tiny)
            logp = jnp.log(Pd / (aa[:, None] * bb[None, :]))
            res = sinkhorn(-(epsilon * logp + ud), aa, bb, epsilon=epsilon, tol=tol,
                           max_iter=max_iter, anneal=False, init=None)
            status = jnp.where(ok, res.status, Status.NONFINITE_INPUT).astype(jnp.int32)
            found.append((status, res.error.astype(jnp.float32)))
            P0 = jnp.where(jnp.isfinite(P), P, 0).astype(dt)  # P + update = the projection
            # an entry the step shrinks below P's precision would round to exactly 0 in
            # `apply_updates` (P + (P+ - P)), or underflow: keep it at >= 4 ulp of P and >= the
            # smallest normal float, so P stays positive (the L1 mass this adds is at most
            # 4 eps * sum(P) + n m tiny, far below `tol`)
            info = jnp.finfo(jnp.result_type(P.dtype, u.dtype))
            floor = jnp.maximum(4 * info.eps * P0, info.tiny)
            return (jnp.maximum(res.plan(), floor) - P0).astype(u.dtype)

        out = jax.tree_util.tree_map(one, updates, params)
        status, error = _success(), jnp.zeros((), jnp.float32)
        for st, err in found:
            status, error = _worse(status, st), jnp.maximum(error, err)
        return out, ProjectTransportState(status=status, error=error)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
