r"""Independent NumPy prototypes of the published estimators of SW_2^2, for ``benchmarks/sliced.py``
and nothing else: uniform weights, equal sizes (1-D W_2^2 by sorting both projections and
pairing in order), float64. Written from the papers' descriptions (ALGORITHMS.md section 3), not
from otreg or any other library, so that otreg's designs can be checked against them.

Every estimator is a function ``(x, y, L, rng) -> float``: ``x, y`` are ``(n, d)`` arrays, ``L``
the number of directions, ``rng`` a ``numpy.random.Generator`` (the only randomness).

- ``plain``: plain Monte Carlo, L i.i.d. directions uniform on S^{d-1} (normalised Gaussians).
- ``cv_lower`` / ``cv_upper``: control variates of Nguyen & Ho (ICLR 2024): the Gaussian lower
  bound C_low = (theta . dm)^2 or the upper bound
  C_up = C_low + theta' S_x theta + theta' S_y theta, with exact expectations |dm|^2 / d and
  (|dm|^2 + tr S_x + tr S_y) / d;
  gamma = mean (w - w_bar)(c - E c) / (mean (c - E c)^2 + 1e-24), fitted on the same L directions,
  estimate w_bar - gamma (c_bar - E c) (ALGORITHMS.md 3.3; the published O(1/L) bias included).
- ``orthogonal``: Rowland et al. (AISTATS 2019), orthogonal frames: stacked independent
  Haar-random orthonormal frames (QR of a Gaussian matrix, signs fixed by diag(R)), the last
  frame truncated to L rows (drawn directly as L mod d rows by a reduced QR: same distribution,
  and no d x d QR at d = 784 for a few directions).
- ``rqmc`` (d = 3): Nguyen et al. (ICLR 2024, "Quasi-Monte Carlo for 3D sliced Wasserstein"),
  randomised spherical Fibonacci points: z_i = 1 - (2i - 1) / L, phi_i = 2 pi i / golden ratio,
  i = 1..L, on the whole sphere, under one Haar-random rotation of R^3 per call.
- ``rqmc_lower`` (d = 3): the combination RQMC + lower control variate (gamma fitted on the same
  L points, centred at E c as above); each RQMC point is marginally uniform, so E c is unchanged.
- ``shcv`` (d = 2 or 3): Leluc et al. (ICML 2024), spherical-harmonics control variates: the OLS
  fit of w_l on [1, h_1(theta_l), .., h_p(theta_l)] with i.i.d. uniform directions; the estimate is
  the intercept. The h_j span the real spherical harmonics of even degree 2 .. ``degree``
  (w(theta) = w(-theta), so odd degrees carry nothing). We use the equivalent basis of the
  degree-``degree`` monomials of theta centred at their exact moments on the sphere (on S^{d-1}
  the monomials of even degree 2k span exactly the harmonics of even degree <= 2k; one centred
  monomial is dropped, the rest span the degree >= 2 part): the OLS fit, hence the intercept, is
  the same as with orthonormal harmonics. d = 3, degree 4: 14 regressors (5 of degree 2 and 9 of
  degree 4); d = 2: the Fourier modes cos/sin 2 phi, 4 phi (4 regressors). ``degree`` defaults
  to :func:`shcv_degree`: the largest of 4, 2 with L >= 2 (p + 1) for its p regressors (d = 3:
  degree 4 from L = 30, degree 2 from L = 12, plain Monte Carlo below), because an OLS fit with
  nearly as many coefficients as points is worse than plain Monte Carlo (measured on gauss3 and
  the shifted sphere/torus: at L = 16 degree 2 gives 7x / 725x over plain, degree 4 5x / 97x; at
  L = 32 degree 4 gives 270x / 6200x, degree 2 10x / 1250x).
"""

from __future__ import annotations

import itertools
import math

import numpy as np

GOLDEN = (1.0 + math.sqrt(5.0)) / 2.0


# --- directions -----------------------------------------------------------------------------------

def uniform_directions(L, d, rng):
    """L i.i.d. directions uniform on S^{d-1}."""
    th = rng.standard_normal((L, d))
    return th / np.linalg.norm(th, axis=1, keepdims=True)


def haar_frame(d, k, rng):
    """The first k rows of a Haar-random d x d orthogonal matrix: the reduced QR of a Gaussian
    (d, k) matrix (Gram-Schmidt of k Gaussian vectors), column signs fixed by diag R."""
    q, r = np.linalg.qr(rng.standard_normal((d, k)))
    return (q * np.sign(np.diag(r))).T


def haar_rotation(d, rng):
    """A Haar-random orthogonal matrix."""
    return haar_frame(d, d, rng).T


def orthogonal_directions(L, d, rng):
    """Stacked independent Haar-random orthonormal frames, the last one truncated to L rows
    (drawn as k < d rows directly: the same distribution as truncating a full frame)."""
    sizes = [d] * (L // d) + ([L % d] if L % d else [])
    return np.concatenate([haar_frame(d, k, rng) for k in sizes])


def fibonacci_sphere(L):
    """The spherical Fibonacci point set with L points on S^2 (deterministic)."""
    i = np.arange(1, L + 1)
    z = 1.0 - (2.0 * i - 1.0) / L
    phi = 2.0 * np.pi * i / GOLDEN
    r = np.sqrt(np.maximum(0.0, 1.0 - z * z))
    return np.c_[r * np.cos(phi), r * np.sin(phi), z]


def rqmc_directions(L, d, rng):
    """Randomised spherical Fibonacci points (d = 3): the point set under a Haar rotation."""
    if d != 3:
        raise ValueError("RQMC (spherical Fibonacci) is defined for d = 3 only")
    return fibonacci_sphere(L) @ haar_rotation(3, rng).T


# --- per-direction quantities ---------------------------------------------------------------------

def project(x, y, theta):
    """(L, n) projections: one contiguous row per direction (NumPy sorts rows fastest)."""
    return theta @ x.T, theta @ y.T


def w2_per_direction(xp, yp):
    """w_l = W_2^2 of the l-th projections (sort both and pair in order)."""
    return np.mean((np.sort(xp, axis=1) - np.sort(yp, axis=1)) ** 2, axis=1)


def c_lower(xp, yp):
    return (xp.mean(1) - yp.mean(1)) ** 2


def c_upper(xp, yp):
    return c_lower(xp, yp) + xp.var(1) + yp.var(1)


def projected_stats(x, y, theta):
    """w_l and the two control variates c_low, c_up at the directions theta."""
    xp, yp = project(x, y, theta)
    return w2_per_direction(xp, yp), c_lower(xp, yp), c_upper(xp, yp)


def cv_expectations(x, y):
    """Exact E c_low and E c_up over theta uniform on the sphere (E theta theta' = I / d)."""
    d = x.shape[1]
    dm = x.mean(0) - y.mean(0)
    e_low = dm @ dm / d
    tr = ((x - x.mean(0)) ** 2).sum(1).mean() + ((y - y.mean(0)) ** 2).sum(1).mean()
    return e_low, e_low + tr / d


def cv_combine(w, c, e):
    """Nguyen & Ho's estimate: gamma on the same directions, c centred at its exact mean."""
    dc = c - e
    gamma = np.mean((w - w.mean()) * dc) / (np.mean(dc * dc) + 1e-24)
    return w.mean() - gamma * dc.mean()


def sphere_moment(powers):
    """E prod theta_i^{k_i} for theta uniform on S^{d-1} (0 unless every k_i is even)."""
    if any(k % 2 for k in powers):
        return 0.0
    d, s = len(powers), sum(powers)
    num = math.prod(math.prod(range(k - 1, 0, -2)) for k in powers)  # prod (k_i - 1)!!
    den = math.prod(d + 2 * j for j in range(s // 2))  # d (d + 2) ... (d + s - 2)
    return num / den


def harmonic_features(theta, degree):
    """Centred monomials of degree ``degree`` (even) of theta, one dropped: they span the real
    spherical harmonics of even degree 2 .. ``degree`` on S^{d-1} (module doc)."""
    d = theta.shape[1]
    powers = [p for p in itertools.product(range(degree + 1), repeat=d) if sum(p) == degree]
    feats = [np.prod(theta ** np.array(p), axis=1) - sphere_moment(p) for p in powers[1:]]
    return np.stack(feats, axis=1)


def n_harmonics(d, degree):
    return math.comb(degree + d - 1, d - 1) - 1


def shcv_degree(d, L):
    """The harmonic degree used at L: the largest of 4, 2 with L >= 2 (p + 1) (p regressors)."""
    for deg in (4, 2):
        if L >= 2 * (n_harmonics(d, deg) + 1):
            return deg
    return 0


def ols_intercept(w, feats):
    a = np.c_[np.ones(len(w)), feats]
    coef, *_ = np.linalg.lstsq(a, w, rcond=None)
    return coef[0]


# --- the estimators -------------------------------------------------------------------------------

def _mean_w(x, y, theta):
    return w2_per_direction(*project(x, y, theta)).mean()


def _cv(x, y, theta, kind):
    xp, yp = project(x, y, theta)
    e_low, e_up = cv_expectations(x, y)
    if kind == "lower":
        return cv_combine(w2_per_direction(xp, yp), c_lower(xp, yp), e_low)
    return cv_combine(w2_per_direction(xp, yp), c_upper(xp, yp), e_up)


def plain(x, y, L, rng):
    return _mean_w(x, y, uniform_directions(L, x.shape[1], rng))


def cv_lower(x, y, L, rng):
    return _cv(x, y, uniform_directions(L, x.shape[1], rng), "lower")


def cv_upper(x, y, L, rng):
    return _cv(x, y, uniform_directions(L, x.shape[1], rng), "upper")


def orthogonal(x, y, L, rng):
    return _mean_w(x, y, orthogonal_directions(L, x.shape[1], rng))


def rqmc(x, y, L, rng):
    return _mean_w(x, y, rqmc_directions(L, x.shape[1], rng))


def rqmc_lower(x, y, L, rng):
    return _cv(x, y, rqmc_directions(L, x.shape[1], rng), "lower")


def shcv(x, y, L, rng, degree=None):
    d = x.shape[1]
    if d not in (2, 3):
        raise ValueError("spherical-harmonics control variates: d = 2 or 3 here")
    theta = uniform_directions(L, d, rng)
    w = w2_per_direction(*project(x, y, theta))
    degree = shcv_degree(d, L) if degree is None else degree
    if degree == 0:
        return w.mean()
    return ols_intercept(w, harmonic_features(theta, degree))


# name -> (function, dimensions it is defined for (None: all), single published method?)
ESTIMATORS = {
    "plain MC": (plain, None, True),
    "CV lower (N&H)": (cv_lower, None, True),
    "CV upper (N&H)": (cv_upper, None, True),
    "orthogonal (Rowland)": (orthogonal, None, True),
    "RQMC Fibonacci": (rqmc, (3,), True),
    "RQMC + CV lower": (rqmc_lower, (3,), False),
    "SHCV (Leluc)": (shcv, (2, 3), True),
}


def available(d):
    """The prototypes defined in dimension d, as {name: (fn, single)}."""
    return {k: (f, single) for k, (f, dims, single) in ESTIMATORS.items()
            if dims is None or d in dims}


# --- reference value ------------------------------------------------------------------------------

def reference(x, y, rng, n_dirs=2**17, n_batches=16, chunk=4096):
    """A high-accuracy unbiased SW_2^2 with a standard error, from ``n_dirs`` directions in
    ``n_batches`` independent randomised batches: d = 3, randomised spherical Fibonacci sets;
    otherwise stacked Haar orthogonal frames. Control variates with a coefficient fitted on an
    independent pilot batch (so fixed, hence exactly unbiased): c_low, c_up and, for d <= 3, the
    centred harmonic monomials of degree 4. The standard error is the spread of the batch means.
    Returns (value, standard error, description)."""
    d = x.shape[1]
    e_low, e_up = cv_expectations(x, y)
    per = n_dirs // n_batches

    def batch(m):
        theta = (rqmc_directions(m, 3, rng) if d == 3 else orthogonal_directions(m, d, rng))
        ws, fs = [], []
        for s in range(0, m, chunk):
            th = theta[s:s + chunk]
            w, low, up = projected_stats(x, y, th)
            f = [low - e_low, up - e_up]
            if d <= 3:
                f += list(harmonic_features(th, 4).T)
            ws.append(w)
            fs.append(np.stack(f, axis=1))
        return np.concatenate(ws), np.concatenate(fs)

    w, f = batch(per)  # pilot: fits the coefficients only
    coef, *_ = np.linalg.lstsq(np.c_[np.ones(len(w)), f], w, rcond=None)
    beta = coef[1:]
    ests = []
    for _ in range(n_batches):
        w, f = batch(per)
        ests.append(np.mean(w - f @ beta))
    ests = np.array(ests)
    kind = "randomised spherical Fibonacci" if d == 3 else "orthogonal frames"
    desc = (f"{n_batches} x {per} {kind} directions (float64), control variates with "
            f"coefficients from an independent pilot batch")
    return ests.mean(), ests.std(ddof=1) / np.sqrt(n_batches), desc
