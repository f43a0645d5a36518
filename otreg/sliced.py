r"""Sliced Wasserstein-2 with control variates (Nguyen & Ho, ICLR 2024, "Sliced Wasserstein
Estimation with Control Variates"; ALGORITHMS.md section 3).

.. math::
    SW_2^2(\mu, \nu) = \mathbb E_{\theta \sim U(S^{d-1})} W_2^2(\theta_\sharp\mu, \theta_\sharp\nu)

is estimated from L directions. Each projected pair is approximated by Gaussians (moment
matching), whose :math:`W_2^2` is bounded below by :math:`C_{low}(\theta) = (\theta^\top\Delta m)^2`
and above by :math:`C_{up}(\theta) = C_{low}(\theta) + \theta^\top\Sigma_\mu\theta +
\theta^\top\Sigma_\nu\theta`, with closed-form expectations :math:`\|\Delta m\|^2 / d` and
:math:`(\|\Delta m\|^2 + \mathrm{tr}\Sigma_\mu + \mathrm{tr}\Sigma_\nu) / d`. The estimator

.. math::
    \widehat{SW_2^2} = \bar w - \hat\gamma (\bar c - \mathbb E C),\qquad
    \hat\gamma = \frac{\sum_l (w_l - \bar w)(c_l - \bar c)}{\sum_l (c_l - \bar c)^2}

(the intercept of the least-squares fit of :math:`w` on :math:`c - \mathbb E C`; the reference code
centres :math:`c` at :math:`\mathbb E C` instead, which differs at O(1/L) and is not exact when
:math:`w` is an affine function of :math:`c`, e.g. for a translation with the lower variate)
keeps the Monte Carlo mean's expectation (up to O(1/L) from reusing the directions for
:math:`\hat\gamma`) and removes the part of its variance explained by the control variate. Both
variates come almost free: :math:`\theta^\top\Sigma\theta` is the variance of the already projected
samples. Cost O(L d (n + m) + L (n + m) log(n + m)).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from otreg import _checks
from otreg._math import HIGHEST, safe_sqrt
from otreg.univariate import bad_weights, check_sort
from otreg.univariate import solve as w1d_solve

__all__ = ["sliced_w2", "sample_directions"]

_DEFAULT_KEY_SEED = 0
GAMMA_MAX = 2.0  # the bounds are positively correlated with W2; gamma* is ~1 or below


def sample_directions(key: jax.Array, n_projections: int, d: int, kind: str = "gaussian",
               dtype=jnp.float32) -> jax.Array:
    """``(n_projections, d)`` unit directions: ``"gaussian"`` (i.i.d. uniform on the sphere) or
    ``"orthogonal"`` (stacked random orthonormal frames, each an exact rotation of the axes;
    the last frame truncated)."""
    if kind == "gaussian":
        theta = jax.random.normal(key, (n_projections, d), dtype)
        return theta / jnp.linalg.norm(theta, axis=-1, keepdims=True)
    n_frames = -(-n_projections // d)
    g = jax.random.normal(key, (n_frames, d, d), dtype)
    q, r = jnp.linalg.qr(g)
    q = q * jnp.sign(jnp.diagonal(r, axis1=-2, axis2=-1))[:, None, :]  # Haar-distributed
    return jnp.swapaxes(q, -1, -2).reshape(n_frames * d, d)[:n_projections]


def _control_variate(kind, xp, yp, a, b, x, y):
    """(c_l per direction, E c) for the lower or upper Gaussian bound."""
    mx, my = jnp.matmul(a, x, precision=HIGHEST), jnp.matmul(b, y, precision=HIGHEST)  # means
    d = x.shape[-1]
    dm = mx - my
    c = (jnp.sum(a[:, None] * xp, 0) - jnp.sum(b[:, None] * yp, 0)) ** 2  # (theta . dm)^2
    expect = jnp.sum(dm * dm) / d
    if kind == "upper":
        var_x = jnp.sum(a[:, None] * (xp - jnp.sum(a[:, None] * xp, 0)) ** 2, 0)
        var_y = jnp.sum(b[:, None] * (yp - jnp.sum(b[:, None] * yp, 0)) ** 2, 0)
        c = c + var_x + var_y
        tr_x = jnp.sum(a * jnp.sum((x - mx) ** 2, -1))
        tr_y = jnp.sum(b * jnp.sum((y - my) ** 2, -1))
        expect = expect + (tr_x + tr_y) / d
    return c, expect


def sliced_w2(
    x: jax.Array,
    y: jax.Array,
    a: jax.Array | None = None,
    b: jax.Array | None = None,
    *,
    key: jax.Array | None = None,
    n_projections: int = 128,
    control_variate: str | None = "upper",
    directions: str = "gaussian",
    squared: bool = False,
    sort: str = "auto",
) -> jax.Array:
    r"""Sliced Wasserstein-2 between ``(x, a)`` and ``(y, b)``, with control variates.

    Args:
      x, y: points ``(n, d)`` and ``(m, d)``.
      a, b: weights (None = uniform; each normalised to sum 1).
      key: PRNG key for the directions. ``None`` uses a fixed key (``PRNGKey(0)``): the same
        directions at every call, so in training the loss is a fixed (biased for that draw)
        slice set, not a stochastic estimate. Pass a fresh key per step for an unbiased
        stochastic gradient.
      n_projections: L, number of directions.
      control_variate: ``"upper"`` (default), ``"lower"`` or ``None`` (plain Monte Carlo).
      directions: ``"gaussian"`` (uniform on the sphere) or ``"orthogonal"``.
      squared: return :math:`\widehat{SW_2^2}`; otherwise its square root (clamped at 0, with a
        zero gradient at 0, so ``x == y`` gives a finite gradient).
      sort: ``"auto"`` or ``"xla"``: an in-graph integer-key sort on every backend, no host
        callback (see :func:`otreg.wasserstein_1d`).

    Returns:
      A scalar in the points' dtype. Differentiable in x, y, a, b, in forward and reverse mode
      (through the sorted values, the quantile breakpoints, the control variate and its
      coefficient).

    Raises:
      ValueError: on concrete inputs with NaN/inf points or bad weights. Under ``jit`` those
        give NaN (never a finite wrong value).
    """
    fn = "sliced_w2"
    uniform = a is None and b is None
    x, y = _checks.check_points(x, y, fn)
    dtype = _checks.compute_dtype(x, y)
    in_dtype = jnp.result_type(x, y)
    x, y = x.astype(dtype), y.astype(dtype)
    n, d = x.shape
    m = y.shape[0]
    a = _checks.check_weights(a, n, "a", dtype, fn)
    b = _checks.check_weights(b, m, "b", dtype, fn)
    _checks.check_weight_vector(a, "a", fn)
    _checks.check_weight_vector(b, "b", fn)
    a, b = a.astype(dtype), b.astype(dtype)  # bfloat16/float16 weights are kept until checked
    n_projections = _checks.check_positive_int(n_projections, "n_projections", fn)
    _checks.check_option(control_variate, "control_variate", ("upper", "lower", None), fn)
    _checks.check_option(directions, "directions", ("gaussian", "orthogonal"), fn)
    check_sort(sort, fn)
    if not isinstance(squared, bool):
        raise TypeError(f"{fn}: `squared` must be True or False, got {squared!r}.")
    _checks.check_finite(x, "x", fn, "points")
    _checks.check_finite(y, "y", fn, "points")
    if key is None:
        key = jax.random.PRNGKey(_DEFAULT_KEY_SEED)
    return _sliced(x, y, a, b, key, n_projections, control_variate, directions, squared,
                   uniform).astype(in_dtype)


@functools.partial(jax.jit, static_argnums=(5, 6, 7, 8, 9))
def _sliced(x, y, a, b, key, n_projections, control_variate, directions, squared, uniform):
    """The validated estimate as one compiled program (inlined under an outer ``jit``)."""
    n, d = x.shape
    bad = bad_weights(a) | bad_weights(b)  # under jit: NaN out, never a finite wrong value
    a, b = a / jnp.sum(a), b / jnp.sum(b)
    theta = sample_directions(key, n_projections, d, directions, x.dtype)
    xp = jnp.matmul(x, theta.T, precision=HIGHEST)  # (n, L)
    yp = jnp.matmul(y, theta.T, precision=HIGHEST)
    if uniform and n == y.shape[0]:  # sort both and pair in order
        w = w1d_solve(xp.T, yp.T, None, None, 2.0)
    else:
        w = w1d_solve(xp.T, yp.T, jnp.broadcast_to(a, xp.T.shape),
                      jnp.broadcast_to(b, yp.T.shape), 2.0)
    est = jnp.mean(w)
    if control_variate is not None:
        c, expect = _control_variate(control_variate, xp, yp, a, b, x, y)
        dc = c - jnp.mean(c)
        var = jnp.mean(dc * dc)
        # a variate with no spread at the estimate's precision carries no information: gamma = 0
        # (unbiased), and the division is never done (its reverse-mode 1/var^2 would overflow)
        scale = jax.lax.stop_gradient(jnp.abs(est) + jnp.sqrt(jnp.mean((w - est) ** 2)))
        ok = var > jnp.finfo(var.dtype).eps * scale * scale
        gamma = jnp.where(ok, jnp.mean((w - est) * dc) / jnp.where(ok, var, 1.0), 0.0)
        # any fixed gamma keeps the expectation; clipping bounds the damage of a wild estimate
        # from very few directions (at L = 2 an unclipped OLS slope can multiply the variance)
        gamma = jnp.clip(gamma, 0.0, GAMMA_MAX)
        est = est - gamma * (jnp.mean(c) - expect)
    out = est if squared else safe_sqrt(est)
    return jnp.where(bad, jnp.nan, out)
