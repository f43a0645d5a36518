r"""Exact optimal transport on the line.

.. math::
    W_p^p(\mu, \nu) = \int_0^1 |F_\mu^{-1}(t) - F_\nu^{-1}(t)|^p \, dt, \qquad p \ge 1,

For equal sizes and uniform weights this is ``mean(|sort(u) - sort(v)|^p)``; in general the two
quantile functions are step functions whose merged breakpoints are the cumulative weights of both
samples (POT's ``wasserstein_1d`` computes the same). Pairing in sorted order is optimal for
convex costs only, so ``p < 1`` is refused.

Sorting is :mod:`otreg._sort`'s integer-key sort, in the graph on every backend: no host
callback by default (those can deadlock under asynchronous CPU dispatch), the same derivatives
on CPU, GPU and TPU, forward and reverse mode, exportable. Gradients flow to the points through
the sorted values (tie blocks averaged, so ties give no NaN) and to the weights through the
merged breakpoints (the cumulative weights).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from otreg import _checks
from otreg._math import safe_pow
from otreg._sort import block_scatter, search_left, sort_values, to_key

__all__ = ["wasserstein_1d", "sort_values"]

SORTS = ("auto", "xla")


def check_sort(sort: str, fn: str) -> None:
    """``sort`` is ``"auto"`` or ``"xla"`` (the same in-graph sort); ``"host"`` was removed."""
    if sort == "host":
        raise ValueError(f"{fn}: `sort='host'` was removed: a host-callback sort can deadlock "
                         f"under JAX's asynchronous CPU dispatch on one core and aborts with "
                         f"several CPU devices (jax issue #25861). Use the default "
                         f"sort='auto' (an in-graph integer-key sort on every backend).")
    _checks.check_option(sort, "sort", SORTS, fn)


def _quantile_w(u, v, uw, vw, p):
    """General weights / sizes: integrate |F^-1 - G^-1|^p over the merged breakpoints."""
    us, vs = sort_values(u), sort_values(v)
    # weights in sorted order (a tie block's weight at its first position, 0 on the others)
    wu = block_scatter(to_key(u), to_key(us), uw)
    wv = block_scatter(to_key(v), to_key(vs), vw)
    cu = jnp.cumsum(wu, axis=-1)
    cv = jnp.cumsum(wv, axis=-1)
    cu = cu / cu[..., -1:]
    cv = cv / cv[..., -1:]
    t = sort_values(jnp.concatenate([cu, cv], axis=-1))  # differentiable in the weights
    dt = jnp.diff(t, axis=-1, prepend=jnp.zeros_like(t[..., :1]))
    mid = jax.lax.stop_gradient(t - 0.5 * dt)
    cu_s, cv_s = jax.lax.stop_gradient(cu), jax.lax.stop_gradient(cv)
    iu = jnp.clip(search_left(cu_s, mid), 0, u.shape[-1] - 1)
    iv = jnp.clip(search_left(cv_s, mid), 0, v.shape[-1] - 1)
    du = jnp.take_along_axis(us, iu, axis=-1) - jnp.take_along_axis(vs, iv, axis=-1)
    return jnp.sum(dt * safe_pow(jnp.abs(du), p), axis=-1)


def bad_weights(w: jax.Array) -> jax.Array:
    """True per row where a weight vector is negative, non-finite or has no mass."""
    return jnp.any(~jnp.isfinite(w) | (w < 0), axis=-1) | ~(jnp.sum(w, axis=-1) > 0)


def _axis_text(j: int, ndim: int) -> str:
    """How a hint spells an axis: ``-1`` for the last one (the default), else its index."""
    return "-1 (the default: samples on the last axis)" if j == ndim - 1 else str(j)


def _weights_fit(ws: tuple, zs: tuple, a: int) -> bool:
    """Whether weights of shape ``ws`` fit samples of shape ``zs`` with the samples on axis
    ``a``: a 1-D vector of one weight per sample (shared by every problem), or a shape that
    broadcasts to ``zs`` (NumPy rules) with one weight per sample on axis ``a``."""
    n, d, wd = zs[a], len(zs), len(ws)
    if wd == 1:
        return ws[0] == n
    off = d - wd
    return (2 <= wd <= d and a >= off and ws[a - off] == n
            and all(w in (1, zs[i + off]) for i, w in enumerate(ws)))


def _layout_problem(us: tuple, vs: tuple, uws: tuple | None, vws: tuple | None,
                    axis: int) -> str | None:
    """What is wrong with these shapes when the samples are on ``axis`` (None: nothing).
    ``axis`` is in range for both ``u`` and ``v``."""
    au, av = axis % len(us), axis % len(vs)
    bu, bv = us[:au] + us[au + 1:], vs[:av] + vs[av + 1:]
    try:
        np.broadcast_shapes(bu, bv)
    except ValueError:
        return (f"`u` of shape {us} and `v` of shape {vs} hold their samples on axis {axis} "
                f"(lengths {us[au]} and {vs[av]}); their other (batch) axes {bu} and {bv} must "
                f"match (or broadcast).")
    for name, ws, zs, a, zname in (("u_weights", uws, us, au, "u"),
                                   ("v_weights", vws, vs, av, "v")):
        if ws is not None and not _weights_fit(ws, zs, a):
            eg = tuple(zs[a] if i == a else 1 for i in range(len(zs)))
            return (f"`{name}` of shape {ws} does not fit `{zname}` of shape {zs} with the "
                    f"samples on axis {axis} (length {zs[a]}): pass weights of shape {zs}, "
                    f"({zs[a]},) (one vector shared by every problem) or a shape that "
                    f"broadcasts to {zs} with {zs[a]} entries on that axis (e.g. {eg}).")
    return None


def _layout_hint(us: tuple, vs: tuple, uws: tuple | None, vws: tuple | None, axis: int) -> str:
    """If another sample axis makes every shape fit, say which one (a probable layout mix-up)."""
    if len(us) != len(vs):
        return ""
    d = len(us)
    for j in range(d):
        if j != axis % d and _layout_problem(us, vs, uws, vws, j) is None:
            where = (" for POT's layout (samples on axis 0) pass axis=0" if j == 0 else
                     f" if the samples are on axis {j} pass axis={_axis_text(j, d)}")
            return f" The samples are on axis {axis} (length {us[axis % d]});{where}."
    return ""


def wasserstein_1d(
    u: jax.Array,
    v: jax.Array,
    u_weights: jax.Array | None = None,
    v_weights: jax.Array | None = None,
    *,
    p: float = 2.0,
    sort: str = "auto",
    axis: int = -1,
) -> jax.Array:
    r""":math:`W_p^p` between 1-D empirical measures, batched over the other axes.

    The samples of each problem lie along ``axis`` of ``u`` and ``v`` (the last axis by
    default); every other axis is a batch axis. POT's ``ot.wasserstein_1d`` keeps the samples
    on axis 0 (columns are problems), so
    ``ot.wasserstein_1d(u, v, uw, vw, p)`` equals
    ``otreg.wasserstein_1d(u, v, uw, vw, p=p, axis=0)`` (POT's default is ``p=1``, ours
    ``p=2``; POT expects normalised weights, here each weight vector is normalised).

    Args:
      u, v: samples, ``n`` of them along ``axis`` of ``u`` and ``m`` along ``axis`` of ``v``
        (e.g. ``(..., n)`` and ``(..., m)`` with ``axis=-1``; ``(n, k)`` and ``(m, k)`` with
        ``axis=0``). The remaining (batch) axes must match or broadcast (NumPy rules).
      u_weights, v_weights: non-negative weights (None = uniform); each problem's vector is
        normalised to sum to 1. Accepted: the samples' own shape; a 1-D vector with one
        weight per sample (``(n,)``), shared by every problem; or any shape that broadcasts
        to the samples' shape (NumPy rules, in the samples' layout) with one weight per sample
        on ``axis`` (e.g. ``(n, 1)`` with ``axis=0``).
      p: exponent, ``p >= 1`` (sorting is not optimal for ``p < 1``). Returns
        :math:`W_p^p` (like POT's ``ot.wasserstein_1d``).
      sort: ``"auto"`` or ``"xla"``: both the in-graph integer-key sort of
        :mod:`otreg._sort` (``"host"``, a NumPy callback, was removed: it could hang or abort).
      axis: the axis of ``u`` and ``v`` that holds the samples (a Python int, negative counts
        from the end); ``axis=0`` is POT's layout.

    Returns:
      The batch shape (the broadcast shapes of ``u`` and ``v`` without ``axis``, the other
      axes in their order) in the samples' dtype. Cost O((n + m) log(n + m)) per problem.
      Differentiable (forward and reverse mode) in the samples and the weights.

    Raises:
      TypeError: ``axis`` is not an int.
      ValueError: ``axis`` out of range; shapes that do not fit (the message says the axis
        that would fit, e.g. ``axis=0`` for POT's layout); on concrete inputs, NaN/inf samples,
        negative, non-finite or zero-mass weights (per problem). Under ``jit`` such a problem
        returns NaN instead (never a finite wrong value).
    """
    fn = "wasserstein_1d"
    u = _checks.float_array(u, "u", None, fn)
    v = _checks.float_array(v, "v", None, fn)
    if u.ndim == 0 or v.ndim == 0:
        raise ValueError(f"{fn}: `u` and `v` must have at least one axis (the samples); got "
                         f"shapes {u.shape} and {v.shape}.")
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"{fn}: `axis` must be an int, the axis of `u` and `v` that holds the "
                        f"samples (-1: the last, 0: POT's layout); got {axis!r}.")
    axis = int(axis)
    for name, z in (("u", u), ("v", v)):
        if not -z.ndim <= axis < z.ndim:
            raise ValueError(f"{fn}: `axis`={axis} is out of range for `{name}` of shape "
                             f"{z.shape}; pass an axis in [-{z.ndim}, {z.ndim}) (-1: samples on "
                             f"the last axis, 0: POT's layout).")
    ws = [None if w is None else _checks.float_array(w, name, None, fn)
          for name, w in (("u_weights", u_weights), ("v_weights", v_weights))]
    shapes = (u.shape, v.shape, *(None if w is None else w.shape for w in ws))
    problem = _layout_problem(*shapes, axis)
    if problem is not None:
        raise ValueError(f"{fn}: {problem}{_layout_hint(*shapes, axis)}")
    au, av = axis % u.ndim, axis % v.ndim
    if u.shape[au] == 0 or v.shape[av] == 0:
        raise ValueError(f"{fn}: empty sample (u: {u.shape}, v: {v.shape}, axis={axis}).")
    check_sort(sort, fn)
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 1 <= p < float("inf"):
        raise ValueError(f"{fn}: `p` must be a finite number >= 1, got {p!r}; for p < 1 the "
                         f"sorted (monotone) coupling is not optimal and this formula is wrong.")
    in_dtype = jnp.result_type(u, v)
    dtype = _checks.compute_dtype(u, v)
    u, v = u.astype(dtype), v.astype(dtype)
    _checks.check_finite(u, "u", fn, "samples")  # concrete only; under jit the result is NaN
    _checks.check_finite(v, "v", fn, "samples")
    for i, (name, z, a) in enumerate((("u_weights", u, au), ("v_weights", v, av))):
        w = ws[i]
        if w is not None:
            # per problem: the check reduces over the last axis, so move the samples there
            wa = a - (z.ndim - w.ndim)  # the samples' axis in the weights (validated: >= 0)
            last = w.ndim == 1 or wa == w.ndim - 1 or not _checks.is_concrete(w)
            _checks.check_weight_vector(w if last else np.moveaxis(np.asarray(w), wa, -1),
                                        name, fn)
            ws[i] = w.astype(dtype)
    return _solve_layout(u, v, ws[0], ws[1], float(p), au, av).astype(in_dtype)


@functools.partial(jax.jit, static_argnums=(4, 5, 6))
def _solve_layout(u, v, uw, vw, p, au, av):
    """Samples to the last axis, batch axes and weights broadcast, then :func:`solve`: one
    compiled program (no eager transposes or broadcasts), inlined under an outer ``jit``."""
    moved = []
    for z, w, a in ((u, uw, au), (v, vw, av)):
        if w is not None and w.ndim > 1:  # broadcast in the samples' layout, then move
            w = jnp.moveaxis(jnp.broadcast_to(w, z.shape), a, -1)
        moved.append((jnp.moveaxis(z, a, -1), w))
    (u, uw), (v, vw) = moved
    batch = jnp.broadcast_shapes(u.shape[:-1], v.shape[:-1])
    u, v = jnp.broadcast_to(u, batch + u.shape[-1:]), jnp.broadcast_to(v, batch + v.shape[-1:])
    uw = None if uw is None else jnp.broadcast_to(uw, u.shape)
    vw = None if vw is None else jnp.broadcast_to(vw, v.shape)
    return solve(u, v, uw, vw, p)


@functools.partial(jax.jit, static_argnums=4)
def solve(u, v, uw, vw, p):
    """The validated problem, compiled as one program (an eager call compiles once, not op by
    op); inlined under an outer ``jit``."""
    bad = jnp.any(~jnp.isfinite(u), axis=-1) | jnp.any(~jnp.isfinite(v), axis=-1)
    if uw is None and vw is None and u.shape[-1] == v.shape[-1]:
        diff = sort_values(u) - sort_values(v)
        out = jnp.mean(diff * diff if p == 2 else safe_pow(jnp.abs(diff), p), axis=-1)
    else:
        uw = jnp.ones_like(u) if uw is None else uw
        vw = jnp.ones_like(v) if vw is None else vw
        bad = bad | bad_weights(uw) | bad_weights(vw)
        # bad weights: solve a finite stand-in, then report NaN
        uw = jnp.where(bad_weights(uw)[..., None], 1.0, jnp.where(jnp.isfinite(uw), uw, 0.0))
        vw = jnp.where(bad_weights(vw)[..., None], 1.0, jnp.where(jnp.isfinite(vw), vw, 0.0))
        out = _quantile_w(u, v, jnp.maximum(uw, 0.0), jnp.maximum(vw, 0.0), p)
    return jnp.where(bad, jnp.nan, out)
