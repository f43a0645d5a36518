"""NaN-safe numerical primitives shared by every solver.

Each function here is finite, with finite derivatives, for every finite input: the places where the
textbook formula has a singular derivative (sqrt at 0, norm at the origin, log of a zero weight) are
handled explicitly instead of being left to produce NaN in a backward pass.

Also the one switch on the platform: every backend-dependent choice asks :func:`backend`, which
:func:`force_backend` overrides (so the accelerator branches are tested on CPU).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["safe_sqrt", "safe_norm", "safe_log", "safe_pow", "logsumexp", "tiny_exponent", "cg",
           "backend", "force_backend", "HIGHEST"]

# The precision every contraction in otreg passes (``precision=HIGHEST``). Unmarked float32 dots
# run at reduced precision on accelerators (bfloat16 passes on TPU, TF32 on Ampere+ GPUs) or
# under the user's ``jax_default_matmul_precision``: that breaks the Sinkhorn kernel matvecs at
# small epsilon (the loop reports converged while the true marginal error is 1e4 times tol), the
# cost |x|^2 + |y|^2 - 2 x.y and the sliced projections. Explicit precision wins over the
# global flag; on CPU it is what XLA does anyway. tests/test_precision.py checks every dot.
HIGHEST = jax.lax.Precision.HIGHEST

_FORCED_BACKEND: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "otreg_forced_backend", default=None)


def backend(x: Any = None) -> str:
    """The platform a backend-dependent choice follows: the one :func:`force_backend` set, else
    the platform of ``x`` (a JAX array; ``"cpu"`` only if every shard is on a CPU device), else
    ``jax.default_backend()``. The only place in otreg that looks at the platform."""
    forced = _FORCED_BACKEND.get()
    if forced is not None:
        return forced
    if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer):
        platforms = {d.platform for d in x.devices()}
        return "cpu" if platforms == {"cpu"} else next(iter(platforms - {"cpu"}))
    return jax.default_backend()


@contextlib.contextmanager
def force_backend(name: str) -> Iterator[None]:
    """Within the block, :func:`backend` answers ``name`` (e.g. ``"gpu"``): the accelerator
    branches run on CPU, for tests. Choices made at trace time (``vmap`` batching rules) are
    cached by JAX, so the caches are cleared on entry and exit: trace inside the block."""
    jax.clear_caches()
    token = _FORCED_BACKEND.set(name)
    try:
        yield
    finally:
        _FORCED_BACKEND.reset(token)
        jax.clear_caches()


@jax.custom_jvp
def safe_sqrt(x: jax.Array) -> jax.Array:
    """``sqrt(max(x, 0))`` whose derivative at 0 is 0 instead of infinity."""
    return jnp.sqrt(jnp.maximum(x, 0.0))


@safe_sqrt.defjvp
def _safe_sqrt_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    y = safe_sqrt(x)
    positive = y > 0
    scale = jnp.where(positive, 0.5 / jnp.where(positive, y, 1.0), 0.0)
    return y, scale * dx


def safe_norm(x: jax.Array, axis: int = -1, keepdims: bool = False) -> jax.Array:
    """Euclidean norm with a zero (sub)gradient at the origin."""
    return safe_sqrt(jnp.sum(x * x, axis=axis, keepdims=keepdims))


def safe_log(x: jax.Array) -> jax.Array:
    """``log(x)`` for ``x >= 0`` with ``log(0) = -inf`` and a zero derivative where ``x == 0``.

    Used for weights: a zero weight is a masked atom, never a source of NaN.
    """
    positive = x > 0
    return jnp.where(positive, jnp.log(jnp.where(positive, x, 1.0)), -jnp.inf)


def safe_pow(x: jax.Array, p: float) -> jax.Array:
    """``max(x, 0) ** p`` for ``p > 0`` with a zero derivative at 0 (also for ``p < 1``)."""
    positive = x > 0
    return jnp.where(positive, jnp.where(positive, x, 1.0) ** p, 0.0)


def logsumexp(z: jax.Array, axis: int = -1, weights: jax.Array | None = None) -> jax.Array:
    r""":math:`\log\sum_k w_k e^{z_k}` along ``axis``; ``-inf`` (not NaN) for an empty sum.

    ``weights`` (non-negative, broadcast against ``z``) multiply inside the sum instead of being
    added as ``log w``, so gradients with respect to a zero weight are finite and correct. The
    shift by the maximum is taken under ``stop_gradient`` and replaced by 0 where the maximum is
    not finite, so ``exp`` never sees ``-inf - (-inf)``.
    """
    zm = z if weights is None else jnp.where(weights > 0, z, -jnp.inf)  # zero weights: no say
    m = jax.lax.stop_gradient(jnp.max(zm, axis=axis, keepdims=True))
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    e = jnp.exp(zm - m)
    if weights is not None:
        e = e * weights
    return safe_log(jnp.sum(e, axis=axis)) + jnp.squeeze(m, axis=axis)


def tiny_exponent(dtype) -> float:
    """``-log(smallest normal number)`` of ``dtype``: exponents beyond it underflow to 0."""
    return float(-np.log(float(jnp.finfo(dtype).tiny)))


def cg(matvec, rhs, precond, *, rtol, max_iter: int):
    r"""Preconditioned conjugate gradient for a symmetric positive semi-definite operator.

    Solves ``matvec(x) = rhs`` from ``x = 0`` until
    :math:`\|r\|_2 \le \mathrm{rtol} \cdot \|\mathrm{rhs}\|_2` (``rtol`` may be traced) or
    ``max_iter`` products. ``rhs`` and ``x`` are pytrees; ``precond(r)`` applies an SPD
    preconditioner. A consistent right-hand side of a singular operator is fine (the iterates
    stay in its range). Returns ``(x, n_products)``; the iterates are never NaN (a vanishing
    curvature stops the iteration instead of dividing by zero).
    """
    tm = jax.tree_util.tree_map
    dot = lambda u, v: sum(jnp.vdot(p, q, precision=HIGHEST) for p, q in zip(  # noqa: E731
        jax.tree_util.tree_leaves(u), jax.tree_util.tree_leaves(v), strict=True))
    x = tm(jnp.zeros_like, rhs)
    z = precond(rhs)
    rz = dot(rhs, z)
    target = jnp.square(rtol) * dot(rhs, rhs)

    def cond(c):
        _, r, _, _, rz, k, ok = c
        return ok & (k < max_iter) & (dot(r, r) > target)

    def body(c):
        x, r, p, _, rz, k, _ = c
        q = matvec(p)
        pq = dot(p, q)
        ok = (pq > 0) & jnp.isfinite(pq)
        alpha = jnp.where(ok, rz / jnp.where(ok, pq, 1.0), 0.0)
        x = tm(lambda x, p: x + alpha * p, x, p)
        r = tm(lambda r, q: r - alpha * q, r, q)
        z = precond(r)
        rz_new = dot(r, z)
        beta = jnp.where(rz > 0, rz_new / jnp.where(rz > 0, rz, 1.0), 0.0)
        p = tm(lambda z, p: z + beta * p, z, p)
        return x, r, p, z, rz_new, k + 1, ok

    init = (x, rhs, z, z, rz, jnp.array(0, jnp.int32), jnp.array(True))
    x, *_, k, _ = jax.lax.while_loop(cond, body, init)
    return x, k
