"""wasserstein_1d's sample ``axis`` and weight layouts (issue 16), against POT's
``ot.wasserstein_1d`` (samples on axis 0, one weight vector shared by the columns or one per
column). Fresh random inputs every run (the ``rng`` fixture prints its seed)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import ot
import pytest
from conftest import smooth_central_difference
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import otreg

N, M, K, B = 9, 6, 4, 3  # samples of u, samples of v, problems (columns), a leading batch
PS = (1, 2, 3)


def pot(u, v, uw=None, vw=None, p=2):
    """POT on columns: ``u: (n, ...)``, weights (n,) or u's shape, normalised per column."""
    norm = lambda w: None if w is None else w / w.sum(axis=0)  # noqa: E731
    return ot.wasserstein_1d(u, v, norm(uw), norm(vw), p=p)


def _full(w, z, axis):
    """Weights in ``z``'s layout, broadcast to its shape (a 1-D vector along ``axis``)."""
    if w is None:
        return None
    if w.ndim == 1:
        w = w.reshape([-1 if i == axis else 1 for i in range(z.ndim)])
    return to_pot(np.broadcast_to(w, z.shape), axis)


def to_pot(z, axis):
    """Samples on ``axis`` -> POT's (n, problems) columns."""
    return np.moveaxis(z, axis, 0).reshape(z.shape[axis], -1)


def _data(rng, *shape_u_v):
    return [rng.standard_normal(s) * (1 + i) + i for i, s in enumerate(shape_u_v)]


def _w(rng, *shape):
    return rng.uniform(0.05, 1.0, shape)


@pytest.mark.parametrize("p", PS)
def test_pot_layout_columns_shared_weights(rng, x64, p):
    """POT's call ``ot.wasserstein_1d(u, v, uw, vw, p)``: (n, k) columns, (n,) weights."""
    u, v = _data(rng, (N, K), (M, K))
    uw, vw = _w(rng, N), _w(rng, M)
    ref = pot(u, v, uw, vw, p)
    out = otreg.wasserstein_1d(u, v, uw, vw, p=p, axis=0)
    assert out.shape == (K,) and out.dtype == jnp.float64
    np.testing.assert_allclose(out, ref, rtol=1e-10, atol=1e-13)
    # the same problems transposed (samples on the last axis, the default), same (n,) weights
    np.testing.assert_allclose(otreg.wasserstein_1d(u.T, v.T, uw, vw, p=p), ref,
                               rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(otreg.wasserstein_1d(u.T, v.T, uw, vw, p=p, axis=1), ref,
                               rtol=1e-10, atol=1e-13)
    # an index of NumPy's integer type is an int too
    np.testing.assert_allclose(otreg.wasserstein_1d(u, v, uw, vw, p=p, axis=np.int64(0)), ref,
                               rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("p", PS)
def test_full_shape_and_broadcast_weights(rng, x64, p):
    u, v = _data(rng, (N, K), (M, K))
    uw, vw = _w(rng, N, K), _w(rng, M, K)
    ref = pot(u, v, uw, vw, p)
    np.testing.assert_allclose(otreg.wasserstein_1d(u, v, uw, vw, p=p, axis=0), ref,
                               rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(otreg.wasserstein_1d(u.T, v.T, uw.T, vw.T, p=p), ref,
                               rtol=1e-10, atol=1e-13)
    # (n, 1) with axis=0 broadcasts over the columns, like the shared (n,) vector
    s = _w(rng, N)
    np.testing.assert_allclose(otreg.wasserstein_1d(u, v, s[:, None], vw, p=p, axis=0),
                               pot(u, v, s, vw, p), rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(otreg.wasserstein_1d(u.T, v.T, s[None], vw.T, p=p),
                               pot(u, v, s, vw, p), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("p", PS)
def test_uniform_on_one_side(rng, x64, p):
    u, v = _data(rng, (N, K), (M, K))
    uw, vw = _w(rng, N), _w(rng, M, K)
    np.testing.assert_allclose(otreg.wasserstein_1d(u, v, uw, None, p=p, axis=0),
                               pot(u, v, uw, None, p), rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(otreg.wasserstein_1d(u, v, None, vw, p=p, axis=0),
                               pot(u, v, None, vw, p), rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(otreg.wasserstein_1d(u.T, v.T, None, vw.T, p=p),
                               pot(u, v, None, vw, p), rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(otreg.wasserstein_1d(u, v, p=p, axis=0), pot(u, v, p=p),
                               rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("p", PS)
def test_3d_samples_on_axis_1(rng, x64, p):
    """(b, n, k) with axis=1: output (b, k); weights (b, n, k), (b, n, 1), (n, 1) or (n,)."""
    u, v = _data(rng, (B, N, K), (B, M, K))
    cases = [(_w(rng, B, N, K), _w(rng, B, M, K)), (_w(rng, B, N, 1), _w(rng, M)),
             (_w(rng, N, 1), None), (None, _w(rng, M))]
    for uw, vw in cases:
        ref = pot(to_pot(u, 1), to_pot(v, 1), _full(uw, u, 1), _full(vw, v, 1), p).reshape(B, K)
        out = otreg.wasserstein_1d(u, v, uw, vw, p=p, axis=1)
        assert out.shape == (B, K)
        np.testing.assert_allclose(out, ref, rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(otreg.wasserstein_1d(u, v, uw, vw, p=p, axis=-2), ref,
                                   rtol=1e-10, atol=1e-13)


def test_batch_axes_broadcast_between_u_and_v(rng, x64):
    """One reference measure against k (or b x k) problems: batch axes broadcast (NumPy)."""
    u, v = _data(rng, (N, K), (M, 1))
    uw, vw = _w(rng, N), _w(rng, M, 1)
    ref = pot(u, np.repeat(v, K, 1), uw, np.repeat(vw, K, 1), 2)
    np.testing.assert_allclose(otreg.wasserstein_1d(u, v, uw, vw, axis=0), ref, rtol=1e-10)
    # v without the batch axis at all (samples last)
    np.testing.assert_allclose(otreg.wasserstein_1d(u.T, v[:, 0], uw, vw[:, 0]), ref,
                               rtol=1e-10)
    out = otreg.wasserstein_1d(u.T[None], v.T, uw, vw.T)  # (1, k, n) with (1, m): (1, k)
    assert out.shape == (1, K)
    np.testing.assert_allclose(out[0], ref, rtol=1e-10)


def _msg(excinfo):
    return str(excinfo.value)


def test_wrong_layout_says_which_axis(rng):
    u, v = _data(rng, (N, K), (M, K))
    uw = _w(rng, N)
    # POT's layout passed with the default axis=-1: the message names the fix
    with pytest.raises(ValueError, match="axis") as e:
        otreg.wasserstein_1d(u, v, uw, None)
    msg = _msg(e)
    assert "`u`" in msg and "axis=0" in msg and "POT" in msg
    with pytest.raises(ValueError, match="axis") as e:
        otreg.wasserstein_1d(u, u, uw, None)  # same shapes: only the weights tell
    msg = _msg(e)
    assert "`u_weights`" in msg and f"({N},)" in msg and f"({N}, {K})" in msg
    assert f"the samples are on axis -1 (length {K})" in msg.lower() and "pass axis=0" in msg
    # the reverse mix-up: samples last but axis=0
    with pytest.raises(ValueError, match="axis=-1"):
        otreg.wasserstein_1d(u.T, v.T, axis=0)
    with pytest.raises(ValueError, match="axis=-1") as e:
        otreg.wasserstein_1d(u.T, u.T, None, uw, axis=0)
    assert "`v_weights`" in _msg(e)
    # shapes no axis fits: the message names the argument, the shapes and what fits
    for bad in (_w(rng, N + 1), _w(rng, 1, K), _w(rng, 2, N, K), _w(rng, K, N)):
        with pytest.raises(ValueError, match="axis") as e:
            otreg.wasserstein_1d(u, v, None, bad, axis=0)
        msg = _msg(e)
        assert "`v_weights`" in msg and str(bad.shape) in msg and f"({M},)" in msg
    # 3-D: weights that cover only the batch axes
    u3, v3 = _data(rng, (B, N, K), (B, M, K))
    with pytest.raises(ValueError, match="u_weights"):
        otreg.wasserstein_1d(u3, v3, _w(rng, B, K), None, axis=1)


def test_bad_axis(rng):
    u, v = _data(rng, (N, K), (M, K))
    for axis in (2, -3, 10):
        with pytest.raises(ValueError, match="`axis`"):
            otreg.wasserstein_1d(u, v, axis=axis)
    with pytest.raises(ValueError, match="`axis`.*`v`"):
        otreg.wasserstein_1d(u.T, v[:, 0], axis=1)  # in range for u, not for v
    for axis in (0.0, "0", None, True, (0,), np.array([0])):
        with pytest.raises(TypeError, match="`axis`"):
            otreg.wasserstein_1d(u, v, axis=axis)
    with pytest.raises(ValueError, match="empty"):
        otreg.wasserstein_1d(u[:0], v, axis=0)


def test_bad_weights_per_problem(rng, x64):
    """Concrete: raise naming the argument; under jit: NaN for the bad problem only."""
    u, v = _data(rng, (N, K), (M, K))
    uw, vw = _w(rng, N), _w(rng, M, K)
    for fill, what in ((0.0, "mass"), (-1.0, "negative"), (np.nan, "NaN")):
        bad = vw.copy()
        bad[:, 1] = fill
        with pytest.raises(ValueError, match="v_weights") as e:
            otreg.wasserstein_1d(u, v, uw, bad, axis=0)
        assert what in _msg(e)
        with pytest.raises(ValueError, match="v_weights"):  # the same, transposed
            otreg.wasserstein_1d(u.T, v.T, uw, bad.T)
        out = jax.jit(functools.partial(otreg.wasserstein_1d, axis=0))(u, v, uw, bad)
        ok = np.arange(K) != 1
        assert np.isnan(out[1]) and np.all(np.isfinite(out[ok]))
        np.testing.assert_allclose(out[ok], pot(u, v, uw, vw)[ok], rtol=1e-10)
    with pytest.raises(ValueError, match="u_weights"):
        otreg.wasserstein_1d(u, v, -uw, vw, axis=0)
    out = jax.jit(functools.partial(otreg.wasserstein_1d, axis=0))(u, v, -uw, vw)
    assert out.shape == (K,) and np.all(np.isnan(out))  # the shared vector: every problem
    with pytest.raises(ValueError, match="u_weights"):  # (n, 1), one bad entry
        otreg.wasserstein_1d(u, v, np.where(np.arange(N) == 3, np.inf, uw)[:, None], vw, axis=0)
    with pytest.raises(ValueError, match="`u`"):
        otreg.wasserstein_1d(np.where(u > 1e9, 0, np.nan), v, uw, vw, axis=0)


def test_jit_and_vmap(rng, x64):
    u, v = _data(rng, (B, N, K), (B, M, K))
    uw, vw = _w(rng, B, N), _w(rng, M)
    ref = otreg.wasserstein_1d(u, v, uw[:, :, None], vw, axis=1)
    jitted = jax.jit(otreg.wasserstein_1d, static_argnames=("p", "axis", "sort"))
    np.testing.assert_allclose(jitted(u, v, uw[:, :, None], vw, axis=1), ref, rtol=1e-12)
    np.testing.assert_allclose(jax.jit(lambda u, v: otreg.wasserstein_1d(
        u, v, uw[:, :, None], vw, axis=1))(u, v), ref, rtol=1e-12)
    # vmap over the leading axis; inside, POT's layout with a shared weight vector
    inner = lambda u, v, uw: otreg.wasserstein_1d(u, v, uw, vw, axis=0)  # noqa: E731
    np.testing.assert_allclose(jax.vmap(inner)(u, v, uw), ref, rtol=1e-12)
    np.testing.assert_allclose(jax.jit(jax.vmap(inner))(u, v, uw), ref, rtol=1e-12)
    # vmap over the columns (in_axes=1) of POT's layout: the problems one by one
    one = lambda u, v: otreg.wasserstein_1d(u, v, uw[0], vw)  # noqa: E731
    np.testing.assert_allclose(jax.vmap(one, in_axes=1)(u[0], v[0]), ref[0], rtol=1e-12)


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0])
def test_gradients_in_pot_layout(rng, x64, p):
    """d/du and d/d(shared weights), axis=0: finite, equal to central differences, and equal to
    the transposed (last-axis) layout's."""
    u, v = _data(rng, (N, K), (M, K))
    uw, vw = _w(rng, N), _w(rng, M, K)
    f = lambda u, uw: otreg.wasserstein_1d(u, v, uw, vw, p=p, axis=0).sum()  # noqa: E731
    gu, gw = jax.grad(f, (0, 1))(u, uw)
    assert gu.shape == (N, K) and gw.shape == (N,)
    assert np.all(np.isfinite(gu)) and np.all(np.isfinite(gw)) and np.abs(gw).max() > 0
    for _ in range(3):
        (du, dw), fd = smooth_central_difference(f, (u, uw), lambda: (
            rng.standard_normal((N, K)), rng.standard_normal(N)))
        np.testing.assert_allclose(np.vdot(gu, du) + gw @ dw, fd, rtol=1e-6, atol=1e-9)
    g = lambda u, uw: otreg.wasserstein_1d(u, v.T, uw, vw.T, p=p).sum()  # noqa: E731
    gu_t, gw_t = jax.grad(g, (0, 1))(u.T, uw)
    np.testing.assert_allclose(gu_t.T, gu, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(gw_t, gw, rtol=1e-12, atol=1e-15)


def test_float32_pot_layout(rng):
    """The default precision: float32 in, float32 out, close to POT in float64."""
    u, v = _data(rng, (N, K), (M, K))
    uw, vw = _w(rng, N), _w(rng, M)
    out = otreg.wasserstein_1d(u.astype(np.float32), v.astype(np.float32),
                               uw.astype(np.float32), vw.astype(np.float32), axis=0)
    assert out.dtype == jnp.float32 and out.shape == (K,)
    np.testing.assert_allclose(out, pot(u, v, uw, vw), rtol=1e-4, atol=1e-6)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(st.integers(1, 3), min_size=0, max_size=2), n=st.integers(1, 6),
       m=st.integers(1, 6), data=st.data(), weights=st.sampled_from(["none", "full", "shared"]),
       p=st.sampled_from([1.0, 2.0, 3.0]), seed=st.integers(0, 2**32 - 1))
def test_moving_the_sample_axis_changes_nothing(x64, batch, n, m, data, weights, p, seed):
    """Samples on any axis give the answer of the same problems with samples on the last."""
    ndim = len(batch) + 1
    axis = data.draw(st.integers(-ndim, ndim - 1), label="axis")
    rng = np.random.default_rng(seed)
    u = np.round(rng.standard_normal((*batch, n)), 1)  # rounded: ties too
    v = np.round(rng.standard_normal((*batch, m)) + 0.5, 1)
    uw = vw = None
    if weights == "full":
        uw, vw = _w(rng, *batch, n), _w(rng, *batch, m)
    elif weights == "shared":
        uw, vw = _w(rng, n), _w(rng, m)
    ref = otreg.wasserstein_1d(u, v, uw, vw, p=p)
    move = lambda z: np.moveaxis(z, -1, axis)  # noqa: E731
    if weights == "full":
        uw, vw = move(uw), move(vw)
    out = otreg.wasserstein_1d(move(u), move(v), uw, vw, p=p, axis=axis)
    assert out.shape == tuple(batch)
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-14)
