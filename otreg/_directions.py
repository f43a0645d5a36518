r"""Direction designs for sliced Wasserstein: where the L slices are taken on the sphere.

Every design is randomised so that each direction, taken alone, is uniform on
:math:`S^{d-1}`: the mean of :math:`W_2^2(\theta_\sharp\mu, \theta_\sharp\nu)` over the L
directions is an unbiased estimate of :math:`SW_2^2` whatever the dependence between them, and a
fresh key gives an independent estimate. The designs differ in that dependence:

* ``"gaussian"``: i.i.d. directions (normalised Gaussian vectors); plain Monte Carlo.
* ``"orthogonal"``: stacked Haar-random orthonormal frames (Rowland et al., "Orthogonal
  estimation of Wasserstein distances", AISTATS 2019); the last frame is truncated when d does not
  divide L (a reduced QR: its rows are the first rows of a Haar-random frame). Within a frame the
  directions repel, which cancels the variance of every quadratic form
  :math:`\theta^\top A\theta` (a complete frame sums it to :math:`\mathrm{tr} A`).
* ``"qmc"``, randomised quasi-Monte Carlo (Nguyen et al., "Quasi-Monte Carlo for 3D sliced
  Wasserstein", ICLR 2024), d <= 3. d = 2: L equally spaced angles on the half circle with one
  uniform random offset (the trapezoidal rule of a smooth, π-periodic function: spectrally
  accurate; its first L - 1 even Fourier modes are integrated exactly). d = 3: the spherical
  Fibonacci point set :math:`z_i = 1 - (2i + 1)/L`, :math:`\phi_i = 2\pi i/\varphi` (golden ratio
  :math:`\varphi`), under one Haar-random rotation. d = 1: the only direction, exact.

The groups returned by :func:`groups` are the independent randomisation units (one per direction,
one per frame, one for a whole QMC set): a control-variate coefficient fitted on the other groups
is independent of the group it corrects (see :mod:`otreg.sliced`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from otreg._math import HIGHEST

DESIGNS = ("gaussian", "orthogonal", "qmc")
_GOLDEN = (1.0 + math.sqrt(5.0)) / 2.0


def _haar(key: jax.Array, shape: tuple[int, ...], d: int, k: int, dtype) -> jax.Array:
    """``shape + (k, d)``: the first k rows of Haar-random orthogonal matrices (reduced QR of a
    Gaussian ``(d, k)`` matrix, signs fixed by R's diagonal so the distribution is Haar)."""
    g = jax.random.normal(key, shape + (d, k), dtype)
    q, r = jnp.linalg.qr(g)  # q: (..., d, k)
    q = q * jnp.sign(jnp.diagonal(r, axis1=-2, axis2=-1))[..., None, :]
    return jnp.swapaxes(q, -1, -2)


def gaussian(key: jax.Array, n: int, d: int, dtype) -> jax.Array:
    theta = jax.random.normal(key, (n, d), dtype)
    return theta / jnp.linalg.norm(theta, axis=-1, keepdims=True)


def orthogonal(key: jax.Array, n: int, d: int, dtype) -> jax.Array:
    full, rest = divmod(n, d)
    k_full, k_rest = jax.random.split(key)
    parts = []
    if full:
        parts.append(_haar(k_full, (full,), d, d, dtype).reshape(full * d, d))
    if rest:  # O(d rest^2), not a full d x d QR
        parts.append(_haar(k_rest, (), d, rest, dtype))
    return jnp.concatenate(parts) if len(parts) > 1 else parts[0]


def qmc(key: jax.Array, n: int, d: int, dtype) -> jax.Array:
    if d == 1:
        return jnp.ones((n, 1), dtype)
    if d == 2:
        u = jax.random.uniform(key, (), dtype)
        phi = (jnp.arange(n, dtype=dtype) + u) * (math.pi / n)
        return jnp.stack([jnp.cos(phi), jnp.sin(phi)], -1)
    if d != 3:
        raise ValueError(f"directions='qmc' is defined for d <= 3 (got d = {d}); in higher "
                         f"dimension use directions='orthogonal' (the best design measured "
                         f"there) or 'auto'.")
    i = np.arange(n, dtype=np.float64)  # the point set is a constant: built in float64
    z = 1.0 - (2.0 * i + 1.0) / n
    r = np.sqrt(np.maximum(1.0 - z * z, 0.0))
    phi = 2.0 * math.pi * np.mod(i / _GOLDEN, 1.0)
    base = jnp.asarray(np.stack([r * np.cos(phi), r * np.sin(phi), z], -1), dtype)
    rot = _haar(key, (), 3, 3, dtype)
    return jnp.matmul(base, rot, precision=HIGHEST)  # rows: the rotated points


def sample(key: jax.Array, n: int, d: int, design: str, dtype) -> jax.Array:
    """``(n, d)`` unit directions of ``design``."""
    return {"gaussian": gaussian, "orthogonal": orthogonal, "qmc": qmc}[design](key, n, d, dtype)


def groups(design: str, n: int, d: int) -> np.ndarray:
    """Static group id of each direction: its independent randomisation unit."""
    if design == "orthogonal":
        return np.arange(n) // d
    if design == "qmc":
        return np.zeros(n, np.int32)
    return np.arange(n)  # i.i.d. (and user-given directions, treated as i.i.d.)
