"""Argument validation shared by every public function (the one place that raises).

Static facts (shape, rank, dtype, ``epsilon <= 0``, unknown options) raise ``ValueError`` or
``TypeError`` at trace time. Value facts (negative or non-finite weights, masses that differ) raise
when the inputs are concrete; under ``jit`` they cannot be inspected, so :func:`repair_weights`
makes them finite in-graph and returns the status code the solver reports.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from otreg._math import backend
from otreg.status import Status

__all__ = [
    "is_concrete", "float_array", "compute_dtype", "check_points", "check_weights",
    "check_weight_values", "check_weight_vector", "check_epsilon", "check_positive_int",
    "check_positive_float", "check_option", "repair_weights", "solve_dtype_and_weights",
    "mass_rtol", "MASS_RTOL", "check_finite", "max_abs",
]

_HOST_CHUNK = 1 << 20  # elements per NumPy pass of max_abs (bounds its temporaries)
_device_max_abs = jax.jit(lambda z: jnp.max(jnp.abs(z)))  # one fused pass; NaN/inf propagate


def _on_host(x: Any) -> bool:
    """NumPy input, or a JAX array whose every shard lives on a CPU device (as
    :func:`otreg._math.backend` says: a forced accelerator makes every JAX array device-side)."""
    return not isinstance(x, jax.Array) or backend(x) == "cpu"


def max_abs(x: Any) -> float:
    """``max |x|`` of a concrete array as a Python float: NaN if an entry is NaN, else inf if
    one is infinite (so ``isfinite(max_abs(x))`` is "every entry is finite").

    A CPU-resident array (and a NumPy one) is reduced by NumPy in chunks of ``_HOST_CHUNK``
    entries: an eager ``jnp`` reduction compiles its own executable per shape and dtype, about
    0.1 s each on a user's first call, for a pass that costs microseconds. On an accelerator
    the reduction runs on the device (one jitted pass, no transfer of the array)."""
    if np.size(x) == 0:  # an empty array has no entry to be non-finite (and max has no identity)
        return 0.0
    if not _on_host(x):
        with jax.ensure_compile_time_eval():
            return float(_device_max_abs(x))
    flat = np.asarray(x).reshape(-1)
    if not np.issubdtype(flat.dtype, np.floating) and flat.dtype.kind != "V":
        flat = flat.astype(np.float64)  # ints/bools: finite; ml_dtypes floats stay as they are
    peaks = [np.max(np.abs(flat[i:i + _HOST_CHUNK])).astype(np.float64)
             for i in range(0, flat.size, _HOST_CHUNK)]
    return float(np.max(np.asarray(peaks, np.float64)))


def is_concrete(*xs: Any) -> bool:
    """True when no argument is a tracer (so its values can be inspected on the host)."""
    return not any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(xs))


def compute_dtype(*xs: Any) -> jnp.dtype:
    """The float dtype a solve runs in: float64 if any input is, else float32 (bf16/f16 upcast)."""
    dts = [jnp.asarray(x).dtype for x in xs if x is not None]
    if any(dt == jnp.float64 for dt in dts) and jax.config.jax_enable_x64:
        return jnp.dtype(jnp.float64)
    return jnp.dtype(jnp.float32)


def float_array(x: Any, name: str, ndim: int | None = None, fn: str = "otreg") -> jax.Array:
    """``x`` as a JAX array of a floating dtype and rank ``ndim``; raises naming ``name``."""
    if x is None:
        raise TypeError(f"{fn}: `{name}` is None; pass an array.")
    # NumPy input: device_put (jnp.asarray compiles a staging executable per shape and dtype)
    arr = jax.device_put(x) if isinstance(x, np.ndarray) else jnp.asarray(x)
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        raise TypeError(
            f"{fn}: `{name}` has dtype {arr.dtype}; a floating dtype is required "
            f"(pass `{name}.astype(jnp.float32)` or float64 with jax_enable_x64).")
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(
            f"{fn}: `{name}` must have {ndim} dimension(s), got shape {tuple(arr.shape)}"
            + (" (batch problems with jax.vmap)." if arr.ndim > ndim else "."))
    return arr


def check_points(x: Any, y: Any, fn: str = "otreg") -> tuple[jax.Array, jax.Array]:
    """Point clouds ``x: (n, d)`` and ``y: (m, d)`` with the same ``d`` and at least one point."""
    x = float_array(x, "x", 2, fn)
    y = float_array(y, "y", 2, fn)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"{fn}: `x` and `y` must have the same dimension d, got x: "
                         f"{tuple(x.shape)} and y: {tuple(y.shape)}.")
    if x.shape[0] == 0 or y.shape[0] == 0:
        raise ValueError(f"{fn}: empty point cloud (x: {tuple(x.shape)}, y: {tuple(y.shape)}); "
                         f"pass at least one point on each side.")
    if x.shape[1] == 0:
        raise ValueError(f"{fn}: `x` and `y` have dimension d = 0 (x: {tuple(x.shape)}, y: "
                         f"{tuple(y.shape)}); points need at least one coordinate (reshape "
                         f"1-D samples to (n, 1)).")
    return x, y


def check_weights(w: Any, size: int, name: str, dtype, fn: str = "otreg") -> jax.Array:
    """Weights of shape ``(size,)`` in ``dtype``; ``None`` means uniform ``1 / size``."""
    if w is None:  # built on the host: an eager jnp.full compiles an executable of its own
        return jax.device_put(np.full((size,), 1.0 / size, dtype=dtype))
    w = float_array(w, name, 1, fn)
    if w.shape[0] != size:
        raise ValueError(f"{fn}: `{name}` has {w.shape[0]} entries but the geometry has {size} "
                         f"points on that side; pass one weight per point (or None for uniform).")
    # bfloat16/float16 weights stay so: the equal-mass check (mass_rtol) follows their precision;
    # the solvers upcast them with everything else
    return w if jnp.dtype(w.dtype).name in _NARROW else w.astype(dtype)


# Relative tolerance of the equal-mass check, by the precision the weights carry. float32: a
# normalisation ``w / w.sum()`` in float32 leaves the mass off 1 by the relative rounding error
# of the sum, ~log2(n) ulps (pairwise summation) and n ulps at worst: 1e-4 covers n up to ~10^3
# in the worst case and any realistic n in practice. float64: 1e-8, far above its rounding.
# bfloat16 / float16 (unit roundoff u = 2^-8 / 2^-11): ``w / w.sum()`` rounds the sum and each
# quotient, so a mass is off by at most ~2u and two masses differ by at most ~4u: 2e-2 / 2e-3.
MASS_RTOL = {"bfloat16": 2e-2, "float16": 2e-3, "float32": 1e-4, "float64": 1e-8}
_NARROW = ("bfloat16", "float16")  # float dtypes the solvers upcast to float32


def _f32_exact(w: Any) -> Any:
    """Whether every entry of a float64 array is exactly a float32 value (NumPy or in-graph)."""
    xp = np if isinstance(w, np.ndarray) else jnp
    return xp.all(w.astype(xp.float32).astype(w.dtype) == w)


def mass_rtol(a: Any, b: Any) -> Any:
    """Relative tolerance of ``|sum a - sum b|`` for weights ``a``, ``b`` (NumPy or in-graph).

    It follows the precision the weights carry, not only their dtype: float64 weights whose
    entries are all float32 values (normalised in float32, then cast, as POT and OTT-JAX users
    often pass them) get the float32 tolerance, because that rounding is what their masses
    carry; genuinely float64 weights get the float64 one. Either vector carrying float32
    precision is enough (``a=None`` is uniform in float64 while ``b`` came from float32); the
    same for a vector in bfloat16 or float16 (by dtype: the solvers keep it until this check).
    """
    names = (jnp.dtype(a.dtype).name, jnp.dtype(b.dtype).name)
    narrow = [MASS_RTOL[k] for k in _NARROW if k in names]
    if narrow:
        return max(narrow)
    if jnp.dtype(a.dtype) != jnp.float64 and jnp.dtype(b.dtype) != jnp.float64:
        return MASS_RTOL["float32"]
    xp = np if isinstance(a, np.ndarray) and isinstance(b, np.ndarray) else jnp
    coarse = _f32_exact(a) | _f32_exact(b)
    return xp.where(coarse, MASS_RTOL["float32"], MASS_RTOL["float64"])


def check_finite(x: Any, name: str, fn: str = "otreg", what: str = "values") -> None:
    """On a concrete array: raise ``ValueError`` naming ``name`` if an entry is NaN or inf."""
    if x is None or not is_concrete(x):
        return
    if not np.isfinite(max_abs(x)):
        raise ValueError(f"{fn}: `{name}` contains NaN or inf; pass finite {what}.")


def check_weight_vector(w: Any, name: str, fn: str = "otreg") -> None:
    """On a concrete array: finite, non-negative, positive mass along the last axis."""
    if w is None or not is_concrete(w):
        return
    wn = np.asarray(w)
    if not np.all(np.isfinite(wn)):
        raise ValueError(f"{fn}: `{name}` contains NaN or inf; pass finite weights.")
    if np.any(wn < 0):
        raise ValueError(f"{fn}: `{name}` has negative entries (min {wn.min():.3g}); "
                         f"weights must be >= 0.")
    if np.any(wn.sum(axis=-1) <= 0):
        raise ValueError(f"{fn}: `{name}` sums to {wn.sum(axis=-1).min():.3g}; weights need "
                         f"positive mass.")


def check_weight_values(a: jax.Array, b: jax.Array, fn: str = "otreg",
                        check_mass: bool = True) -> None:
    """On concrete inputs, raise if a weight is negative/non-finite or (``check_mass``, balanced
    problems) if the masses differ."""
    if not is_concrete(a, b):
        return
    check_weight_vector(a, "a", fn)
    check_weight_vector(b, "b", fn)
    if not check_mass:
        return
    an, bn = np.asarray(a), np.asarray(b)
    ma, mb = float(np.sum(an, dtype=np.float64)), float(np.sum(bn, dtype=np.float64))
    if abs(ma - mb) > float(mass_rtol(an, bn)) * max(ma, mb):
        raise ValueError(f"{fn}: `a` sums to {ma:.8g} but `b` sums to {mb:.8g}; balanced OT needs "
                         f"equal masses: normalise both (e.g. `a / a.sum()`, `b / b.sum()`).")


def repair_weights(a: jax.Array, b: jax.Array, rtol: Any = None,
                   check_mass: bool = True) -> tuple[jax.Array, jax.Array, jax.Array]:
    """In-graph repair for traced weights: bad entries -> 0, a vector without positive mass ->
    uniform, ``b`` rescaled to the mass of ``a``.

    Returns ``(a, b, status)`` with ``status`` the highest-priority problem found (or SUCCESS):
    BAD_WEIGHTS for a negative or non-finite entry or a vector without positive mass,
    MASS_MISMATCH when the masses differ by more than ``rtol`` (default :func:`mass_rtol`;
    pass the one of the weights as given when they were upcast since). ``check_mass=False``
    (relaxed marginals): the masses may differ, nothing is rescaled.
    """
    rtol = mass_rtol(a, b) if rtol is None else rtol
    bad = jnp.any(~jnp.isfinite(a) | (a < 0)) | jnp.any(~jnp.isfinite(b) | (b < 0))
    bad = bad | ~(jnp.sum(jnp.where(jnp.isfinite(a), a, 0.0)) > 0)
    bad = bad | ~(jnp.sum(jnp.where(jnp.isfinite(b), b, 0.0)) > 0)
    a = jnp.where(jnp.isfinite(a) & (a > 0), a, 0.0)
    b = jnp.where(jnp.isfinite(b) & (b > 0), b, 0.0)
    a = jnp.where(jnp.sum(a) > 0, a, jnp.full_like(a, 1.0 / a.shape[0]))
    b = jnp.where(jnp.sum(b) > 0, b, jnp.full_like(b, 1.0 / b.shape[0]))
    ma, mb = jnp.sum(a), jnp.sum(b)
    mismatch = jnp.abs(ma - mb) > rtol * jnp.maximum(ma, mb)
    if check_mass:
        b = b * (ma / mb)
    else:
        mismatch = jnp.array(False)
    status = jnp.where(bad, Status.BAD_WEIGHTS, jnp.where(mismatch, Status.MASS_MISMATCH,
                                                          Status.SUCCESS))
    return a, b, status.astype(jnp.int32)


def check_epsilon(epsilon: Any, fn: str = "otreg", allow_none: bool = True) -> None:
    """``epsilon`` must be a positive finite number (checked whenever it is concrete)."""
    if epsilon is None:
        if allow_none:
            return
        raise ValueError(f"{fn}: `epsilon` is required; pass a positive float.")
    if not is_concrete(epsilon):
        return
    arr = np.asarray(epsilon)
    if arr.ndim != 0:
        raise ValueError(f"{fn}: `epsilon` must be a scalar, got shape {arr.shape}.")
    real = jnp.issubdtype(arr.dtype, jnp.floating) or jnp.issubdtype(arr.dtype, jnp.integer)
    if not real or not np.isfinite(arr) or arr <= 0:  # (floating: bfloat16 too, unlike np.number)
        raise ValueError(f"{fn}: `epsilon` must be a positive finite number, got {epsilon!r}; "
                         f"pass e.g. epsilon=0.05 * mean cost, or None for that default.")


def check_positive_int(value: Any, name: str, fn: str = "otreg", minimum: int = 1) -> int:
    """A Python int >= ``minimum`` (these arguments are static: they shape the compiled loop)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{fn}: `{name}` must be a Python int (it is static), got {value!r}.")
    if value < minimum:
        raise ValueError(f"{fn}: `{name}` must be >= {minimum}, got {value}.")
    return int(value)


def check_positive_float(value: Any, name: str, fn: str = "otreg",
                         upper: float | None = None) -> None:
    """A positive finite number (checked when concrete); ``upper`` is an exclusive bound."""
    if not is_concrete(value):
        return
    arr = np.asarray(value)
    if arr.ndim != 0 or not np.isfinite(arr) or arr <= 0 or (upper is not None and arr >= upper):
        bound = f" and < {upper}" if upper is not None else ""
        raise ValueError(f"{fn}: `{name}` must be a positive finite number{bound}, "
                         f"got {value!r}.")


def check_option(value: Any, name: str, options: Iterable[Any], fn: str = "otreg") -> Any:
    """``value`` must be one of ``options``."""
    options = tuple(options)
    if value not in options:
        raise ValueError(f"{fn}: unknown `{name}`={value!r}; choose one of {options}.")
    return value


def solve_dtype_and_weights(geom: Any, a: Any, b: Any, check_mass: bool = True):
    """In-graph preamble shared by the solvers: the geometry in its solve dtype (float64 stays,
    everything else float32), uniform weights for ``None``, repaired weights.

    Returns ``(geom, a, b, status, in_dtype)``."""
    in_dtype = geom.dtype
    dtype = jnp.float64 if in_dtype == jnp.float64 else jnp.float32
    geom = geom.astype(dtype) if in_dtype != dtype else geom
    n, m = geom.shape
    a = jnp.full((n,), 1.0 / n, dtype) if a is None else a
    b = jnp.full((m,), 1.0 / m, dtype) if b is None else b
    a, b, status = repair_weights(a.astype(dtype), b.astype(dtype), mass_rtol(a, b),
                                  check_mass)
    return geom, a, b, status, in_dtype
