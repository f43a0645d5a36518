r"""Sliced Wasserstein-2: direction designs, control variates and the ``"auto"`` estimator.

.. math::
    SW_2^2(\mu, \nu) = \mathbb E_{\theta \sim U(S^{d-1})} w(\theta),\qquad
    w(\theta) = W_2^2(\theta_\sharp\mu, \theta_\sharp\nu),

estimated from L directions drawn by a design of :mod:`otreg._directions` (i.i.d., orthogonal
frames, randomised QMC, or the user's own). Each direction is marginally uniform, so the mean of
:math:`w` over them is unbiased for every design.

**Control variates** (after Nguyen & Ho, ICLR 2024, whose Gaussian bounds they use):

* ``"lower"``, the exact mean split. Projections shift with their means, so
  :math:`w(\theta) = (\theta^\top\Delta m)^2 + \bar w(\theta)` exactly, with :math:`\bar w` the
  :math:`W_2^2` of the centred clouds. The first term (Nguyen & Ho's lower bound
  :math:`C_{low}`) integrates in closed form to :math:`\|\Delta m\|^2 / d`; only
  :math:`\bar w` is estimated. This is their lower control variate with the coefficient fixed
  at its exact value 1: no fit, hence **no bias** (the fitted coefficient of the paper is biased
  at O(1/L): measured -2.2e-2 = 5 sigma at L = 16 in ``benchmarks/sliced.py``).
* ``"upper"``: the mean split, then :math:`q(\theta) = \theta^\top(\Sigma_\mu + \Sigma_\nu)
  \theta` (the variance part of the upper bound, :math:`\mathbb E q = (\mathrm{tr}\Sigma_\mu +
  \mathrm{tr}\Sigma_\nu)/d`) as a regression control variate for :math:`\bar w`:
  :math:`\frac1L\sum_g \big[\sum_{l\in g} \bar w_l - \hat\beta_{-g}
  \sum_{l \in g}(q_l - \mathbb E q)\big]`, where :math:`\hat\beta_{-g}` is the least-squares
  slope fitted **leaving out** group g (one direction for i.i.d. designs, one frame for
  orthogonal ones). Each group's coefficient is independent of the group it corrects, so the
  estimate stays exactly unbiased. A QMC set is one randomisation (one group): no independent
  fit exists and ``"upper"`` is refused there. A complete orthonormal frame sums every
  quadratic form to its expectation, so on complete frames the correction is provably 0 and it
  is skipped; a truncated last frame keeps it.

Both variates come almost free: :math:`\theta^\top\Sigma\theta` is the variance of the already
projected samples. Cost O(L d (n + m) + L (n + m) log(n + m)).

**The ``"auto"`` default** (:func:`auto_estimator`) picks the design and variate with the lowest
error per millisecond, statically from d and L; ``benchmarks/sliced.py`` measures it (table in
``benchmarks/RESULTS.md``, section ``mse``, 2026-12-03). MSE of :math:`SW_2^2` relative to plain
Monte Carlo at equal L, on anisotropic shifted Gaussians:

=========  ===========================  ===========================================
d          auto                         measured (gauss*, n = 1000; d = 784: n = 500)
=========  ===========================  ===========================================
1          the one direction            exact
2          ``qmc``                      equal angles: spectral accuracy; both variates
                                        are integrated exactly (L >= 2)
3          ``qmc`` + ``"lower"``        L = 100: 6,240x (QMC alone 2,910x, orthogonal
                                        5.5x, i.i.d. + upper 4.9x); L = 16: 65x
>= 4,      ``orthogonal`` (+ ``lower``  complete frames integrate every quadratic form,
L >= d/2   if d does not divide L)      so the variates add nothing there; d = 10:
                                        78-88x; d = 64, L = 64-256: 5,000-6,900x
>= 4,      ``gaussian`` + ``"upper"``   a frame of L << d directions barely repels:
L < d/2                                 d = 784, L = 256: same MSE as a frame
                                        (2.1e-7 vs 3.0e-7) at 0.6x its time (no QR)
=========  ===========================  ===========================================

(MSE ratio against plain Monte Carlo at equal L; the split of the squared mean gap is most of
the gain on shifted clouds, the design most of it on centred ones.)
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from otreg import _checks, _directions
from otreg._math import HIGHEST, safe_sqrt
from otreg.univariate import bad_weights, check_sort
from otreg.univariate import solve as w1d_solve

__all__ = ["sliced_w2", "sample_directions", "auto_estimator"]

_DEFAULT_KEY_SEED = 0
DEFAULT_L = 128
BETA_MAX = 2.0  # |slope| clip: any coefficient fitted on other groups keeps the expectation
_CVS = ("auto", "upper", "lower", None)


def sample_directions(key: jax.Array, n_projections: int, d: int, kind: str = "gaussian",
                      dtype=jnp.float32) -> jax.Array:
    """``(n_projections, d)`` unit directions of the design ``kind``: ``"gaussian"`` (i.i.d.
    uniform), ``"orthogonal"`` (Haar-random orthonormal frames, the last truncated) or
    ``"qmc"`` (d <= 3: randomised equal angles / spherical Fibonacci). See
    :mod:`otreg._directions`."""
    _checks.check_option(kind, "kind", _directions.DESIGNS, "sample_directions")
    return _directions.sample(key, n_projections, d, kind, dtype)


def auto_estimator(d: int, n_projections: int) -> tuple[str, str | None]:
    """The ``(directions, control_variate)`` pair that ``"auto"`` uses for dimension ``d`` and
    ``n_projections`` directions (the module docstring gives the measurements behind it)."""
    if d <= 2:
        return "qmc", ("lower" if d == 2 and n_projections < 2 else None)
    if d == 3:
        return "qmc", "lower"
    if 2 * n_projections < d:  # a frame this partial barely repels; its QR is not free
        return "gaussian", "upper"
    return "orthogonal", ("lower" if n_projections % d else None)


def _auto_variate(design: str, d: int, n: int) -> str | None:
    """``control_variate="auto"`` for an explicit design: its best variate."""
    if design == "qmc":
        return auto_estimator(min(d, 3), n)[1]
    if design == "orthogonal":
        return "lower" if n % d else None
    if design == "gaussian":
        return "upper" if n >= 2 else "lower"
    return None  # the user's directions: their plain mean, as POT and OTT compute it


def _user_directions(directions: Any, key: jax.Array, d: int, n_projections: int | None,
                     fn: str) -> jax.Array:
    given = directions(key) if callable(directions) else directions
    theta = _checks.float_array(given, "directions", 2, fn)
    if theta.shape[1] != d or theta.shape[0] == 0:
        raise ValueError(f"{fn}: `directions` must be an (L, d) array with d = {d} (the points' "
                         f"dimension) and L >= 1; got shape {theta.shape}.")
    if n_projections is not None and n_projections != theta.shape[0]:
        raise ValueError(f"{fn}: `n_projections={n_projections}` but `directions` holds "
                         f"{theta.shape[0]} directions; leave n_projections out.")
    _checks.check_finite(theta, "directions", fn, "directions")
    if _checks.is_concrete(theta) and not np.all(np.linalg.norm(np.asarray(theta, np.float64),
                                                                axis=-1) > 0):
        raise ValueError(f"{fn}: `directions` has a zero row; every direction must be a nonzero "
                         f"vector (rows are normalised to unit length).")
    return theta


def sliced_w2(
    x: jax.Array,
    y: jax.Array,
    a: jax.Array | None = None,
    b: jax.Array | None = None,
    *,
    key: jax.Array | None = None,
    n_projections: int | None = None,
    control_variate: str | None = "auto",
    directions: str | jax.Array | Callable[[jax.Array], jax.Array] = "auto",
    squared: bool = False,
    sort: str = "auto",
) -> jax.Array:
    r"""Sliced Wasserstein-2 between ``(x, a)`` and ``(y, b)``: an unbiased estimate of
    :math:`SW_2^2` from L directions (its square root unless ``squared``).

    Args:
      x, y: points ``(n, d)`` and ``(m, d)``.
      a, b: weights (None = uniform; each normalised to sum 1).
      key: PRNG key for the directions. ``None`` uses a fixed key (``PRNGKey(0)``): the same
        directions at every call, so in training the loss is a fixed (biased for that draw)
        slice set, not a stochastic estimate. Pass a fresh key per step for an unbiased
        stochastic gradient; every design is randomised, so independent keys give independent
        unbiased estimates.
      n_projections: L, number of directions (default 128; taken from ``directions`` when it is
        an array or a function).
      control_variate: ``"auto"`` (default: the best for the design, module table), ``"lower"``
        (the exact mean split), ``"upper"`` (mean split + a leave-one-group-out variance
        variate) or ``None`` (the plain mean over the directions).
      directions: ``"auto"`` (default: :func:`auto_estimator` picks from d and L; with
        ``control_variate="upper"`` where that design has one group, ``"gaussian"``),
        ``"gaussian"`` (i.i.d.), ``"orthogonal"`` (random orthonormal frames) or ``"qmc"``
        (randomised quasi-Monte Carlo, d <= 3); or your own: an ``(L, d)`` array (as POT's
        ``projections=``, here rows are directions; each is normalised), or a function
        ``key -> (L, d)`` array (as OTT's projection function). Your directions are treated as
        i.i.d. uniform by the variates (unbiased only if they are); their ``"auto"`` variate is
        ``None``.
      squared: return :math:`\widehat{SW_2^2}`; otherwise its square root (clamped at 0, with a
        zero gradient at 0, so ``x == y`` gives a finite gradient).
      sort: ``"auto"`` or ``"xla"``: an in-graph integer-key sort on every backend, no host
        callback (see :func:`otreg.wasserstein_1d`).

    Returns:
      A scalar in the points' dtype. Differentiable in x, y, a, b, in forward and reverse mode
      (through the sorted values, the quantile breakpoints, the means, the variate and its
      coefficient).

    Raises:
      ValueError: on concrete inputs with NaN/inf points or bad weights, on ``"qmc"`` for
        d > 3, and on ``"upper"`` where no independent group exists to fit its coefficient
        (``"qmc"``, one truncated orthogonal frame, L = 1). Under ``jit`` bad values give NaN
        (never a finite wrong value).
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
    if n_projections is not None:
        n_projections = _checks.check_positive_int(n_projections, "n_projections", fn)
    _checks.check_option(control_variate, "control_variate", _CVS, fn)
    check_sort(sort, fn)
    if not isinstance(squared, bool):
        raise TypeError(f"{fn}: `squared` must be True or False, got {squared!r}.")
    _checks.check_finite(x, "x", fn, "points")
    _checks.check_finite(y, "y", fn, "points")
    if key is None:
        key = jax.random.PRNGKey(_DEFAULT_KEY_SEED)
    theta = None
    if isinstance(directions, str):
        _checks.check_option(directions, "directions", ("auto",) + _directions.DESIGNS, fn)
        n_dir = DEFAULT_L if n_projections is None else n_projections
        design = directions
        if design == "auto":
            design, auto_cv = auto_estimator(d, n_dir)
            if control_variate == "auto":
                control_variate = auto_cv
            elif control_variate == "upper" and (design == "qmc" or n_dir < d) and d > 1:
                design = "gaussian"  # the best design with independent groups to fit it on
        if design == "qmc" and d > 3:
            _directions.qmc(key, 1, d, dtype)  # raises with the fix
        if design == "qmc" and d == 1:
            n_dir = 1  # the only direction: exact, one sort
    else:
        theta = _user_directions(directions, key, d, n_projections, fn).astype(dtype)
        design, n_dir = "user", theta.shape[0]
    if control_variate == "auto":
        control_variate = _auto_variate(design, d, n_dir)
    if control_variate == "upper":
        control_variate = _check_upper(design, n_dir, d, fn)
    return _sliced(x, y, a, b, key, theta, n_dir, design, control_variate, squared,
                   uniform).astype(in_dtype)


def _check_upper(design: str, n_dir: int, d: int, fn: str) -> str:
    """``"upper"`` where its leave-one-group-out fit exists; ``"lower"`` where it is provably 0."""
    if d == 1 or (design == "orthogonal" and n_dir % d == 0):
        return "lower"  # complete frames: sum of theta^T A theta = tr A on each, correction 0
    if design == "qmc" or (design == "orthogonal" and n_dir < d) or n_dir < 2:
        raise ValueError(
            f"{fn}: control_variate='upper' fits its coefficient on independent groups of "
            f"directions, leaving each out in turn; directions={design!r} with L = {n_dir} "
            f"(d = {d}) has a single group. Use control_variate='lower' (the exact mean split, "
            f"no fit) or 'auto', or 'gaussian'/'orthogonal' directions with L > d.")
    return "upper"


def _loo_mean(w, q, eq, gid, n_groups):
    r"""Mean of ``w`` corrected by the variate ``q`` (expectation ``eq``) with, for each group,
    the slope fitted on all the other groups: unbiased whenever the groups are independent."""
    L = w.shape[0]
    wt, qt = w - jnp.mean(w), q - jnp.mean(q)  # globally centred sums: no cancellation
    iid = n_groups == L
    seg = (lambda v: v) if iid else (lambda v: jax.ops.segment_sum(v, gid, n_groups))
    cnt = seg(jnp.ones_like(w))
    n_o = L - cnt
    sw, sq = jnp.sum(wt) - seg(wt), jnp.sum(qt) - seg(qt)
    swq, sqq = jnp.sum(wt * qt) - seg(wt * qt), jnp.sum(qt * qt) - seg(qt * qt)
    n_safe = jnp.maximum(n_o, 1.0)
    mw, mq = sw / n_safe, sq / n_safe
    cov, var = swq / n_safe - mw * mq, sqq / n_safe - mq * mq
    # a variate with no spread at the working precision carries no information: slope 0, and
    # the division is never done (its reverse-mode 1/var^2 would overflow)
    scale = jax.lax.stop_gradient(jnp.mean(jnp.abs(q)))
    ok = (n_o >= 2) & (var > jnp.finfo(w.dtype).eps * scale * scale)
    beta = jnp.clip(jnp.where(ok, cov / jnp.where(ok, var, 1.0), 0.0), -BETA_MAX, BETA_MAX)
    return jnp.mean(w) - jnp.sum(beta * seg(q - eq)) / L


@functools.partial(jax.jit, static_argnums=(6, 7, 8, 9, 10))
def _sliced(x, y, a, b, key, theta, n_dir, design, control_variate, squared, uniform):
    """The validated estimate as one compiled program (inlined under an outer ``jit``)."""
    n, d = x.shape
    bad = bad_weights(a) | bad_weights(b)  # under jit: NaN out, never a finite wrong value
    a, b = a / jnp.sum(a), b / jnp.sum(b)
    if theta is None:
        theta = _directions.sample(key, n_dir, d, design, x.dtype)
    else:
        theta = theta / jnp.linalg.norm(theta, axis=-1, keepdims=True)
    centre_points = control_variate is not None and n_dir >= d
    if control_variate is not None:  # centred clouds: w becomes the centred w-bar
        mx, my = jnp.matmul(a, x, precision=HIGHEST), jnp.matmul(b, y, precision=HIGHEST)
    if centre_points:  # O(nd), cheaper than centring the O(nL) projections when L >= d
        x, y = x - mx, y - my
    xp = jnp.matmul(x, theta.T, precision=HIGHEST)  # (n, L)
    yp = jnp.matmul(y, theta.T, precision=HIGHEST)
    if control_variate is not None and not centre_points:
        xp = xp - jnp.matmul(a, xp, precision=HIGHEST)
        yp = yp - jnp.matmul(b, yp, precision=HIGHEST)
    if uniform and n == y.shape[0]:  # sort both and pair in order
        w = w1d_solve(xp.T, yp.T, None, None, 2.0)
    else:
        w = w1d_solve(xp.T, yp.T, jnp.broadcast_to(a, xp.T.shape),
                      jnp.broadcast_to(b, yp.T.shape), 2.0)
    if control_variate is None:
        est = jnp.mean(w)
    else:
        dm = mx - my
        est = jnp.sum(dm * dm) / d  # E (theta . dm)^2, exact
        if control_variate == "lower":
            est = est + jnp.mean(w)
        else:
            q = jnp.matmul(a, xp * xp, precision=HIGHEST) + jnp.matmul(b, yp * yp,
                                                                        precision=HIGHEST)
            cx, cy = (0.0, 0.0) if centre_points else (mx, my)  # one fused pass each
            eq = (jnp.sum(a * jnp.sum((x - cx) ** 2, -1))
                  + jnp.sum(b * jnp.sum((y - cy) ** 2, -1))) / d
            gid = _directions.groups("gaussian" if design == "user" else design, n_dir, d)
            est = est + _loo_mean(w, q, eq, jnp.asarray(gid), int(gid.max()) + 1)
    out = est if squared else safe_sqrt(est)
    return jnp.where(bad, jnp.nan, out)
