"""Backend-dependent paths, tested on CPU by forcing the accelerator branch (issue 15, part 2).

Every choice otreg makes on the platform goes through ``otreg._math.backend``:

* ``_sinkhorn_loops.batch_aware`` (the ``vmap`` rule of the Sinkhorn loops, chosen at trace
  time): on CPU a batch runs one problem after the other (``n * m >= SEQUENTIAL_MIN_SIZE``) or in
  lockstep chunks of ``LOCKSTEP_CHUNK``; on GPU/TPU the whole batch runs in lockstep.
* ``_checks._on_host`` (``max_abs``, ``check_finite``, ``_methods._take_rows``): NumPy on a
  CPU-resident array, a jitted device reduction otherwise.

``force_backend("gpu")`` makes the second branch run here; each test also checks that the forced
branch was really taken (the compiled structure, or the device reduction being called).
"""

from __future__ import annotations

import contextlib
import math
from collections import Counter

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

import otreg
from otreg import _checks
from otreg import _sinkhorn_loops as loops
from otreg._entropic import ANNEAL_MIN_RATIO_F64
from otreg._math import backend, force_backend


def _eqns(jaxpr, out=None):
    """Every equation of ``jaxpr`` and of its sub-jaxprs (loops, conds, calls, custom rules)."""
    out = [] if out is None else out
    for eqn in jaxpr.eqns:
        out.append(eqn)
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    _eqns(sub.jaxpr, out)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    _eqns(sub, out)
    return out


def _callbacks(closed) -> set[str]:
    """Names of the host-callback primitives (pure/io/debug callback) anywhere in the jaxpr."""
    return {e.primitive.name for e in _eqns(closed.jaxpr) if "callback" in e.primitive.name}


def _scan_lengths(closed) -> Counter:
    return Counter(e.params["length"] for e in _eqns(closed.jaxpr) if e.primitive.name == "scan")


def test_force_backend_is_scoped():
    assert backend() == jax.default_backend() == "cpu"
    with force_backend("gpu"):
        assert backend() == "gpu" and backend(jnp.zeros(3)) == "gpu"
        with force_backend("tpu"):
            assert backend() == "tpu"
        assert backend() == "gpu"
    assert backend() == "cpu" and backend(jnp.zeros(3)) == "cpu"


def test_callback_walker_finds_a_callback():
    """Control for the no-callback checks below: ``progress=True`` puts a debug callback in the
    loop (deep inside while/cond bodies), and the walker sees it."""
    x = jnp.zeros((6, 2))
    closed = jax.make_jaxpr(lambda x: otreg.sinkhorn(otreg.PointCloud(x, x + 1.0), epsilon=0.1,
                                                     progress=lambda *a: None).cost)(x)
    assert _callbacks(closed)


# (n, m, block_size): the absorbed-kernel path (dense) and the blocked log-domain path, below
# and above the one-by-one threshold n * m >= 128^2 of the CPU branch
CASES = [(12, 10, None), (12, 10, 4), (130, 128, None), (130, 128, 64)]
B = 5  # not a multiple of LOCKSTEP_CHUNK: the CPU branch pads its last chunk


@pytest.mark.parametrize("n, m, block", CASES)
def test_vmap_forced_accelerator_branch_matches_cpu_and_single_calls(rng, x64, n, m, block):
    """In float64: two code paths are equal "to rounding" only where rounding is not amplified
    past the comparison. In float32 these solves stop at error 1e-3, where the slow mode of a
    near-decoupled problem carries the last-ulp differences of a batched against an unbatched
    log-sum-exp into the potentials at ~2e-4 (|f| ~ 5: ~170 ulp) even at equal sweep counts
    (seeds 2985102294, 1341149938, 34360499); the float32 paths are compared by value below."""
    assert (n * m >= loops.SEQUENTIAL_MIN_SIZE) == (n > 100)
    xs = jnp.asarray(rng.standard_normal((B, n, 2)))
    shifts = rng.uniform(0.2, 2.0, (B, 1, 1))  # different problems: different sweep counts
    ys = jnp.asarray(rng.standard_normal((B, m, 2)) + shifts)
    peaks = ((xs[:, :, None] - ys[:, None]) ** 2).sum(-1).max(axis=(1, 2))
    eps = float(peaks.min()) / (1.5 * ANNEAL_MIN_RATIO_F64)

    def solve(x, y):  # max(C) / eps >= 1.5 x the float64 threshold: the solves anneal too
        return otreg.sinkhorn(otreg.PointCloud(x, y, block_size=block), epsilon=eps, tol=1e-4)

    def value_and_grad(solve):  # one compile: the results as aux, d(sum of costs)/d(points)
        def total(xs, ys):
            res = solve(xs, ys)
            return jnp.sum(res.cost), res
        return jax.jit(jax.grad(total, has_aux=True))

    batched = value_and_grad(jax.vmap(solve))
    cpu_grad, cpu = batched(xs, ys)
    cpu_jaxpr = jax.make_jaxpr(batched)(xs, ys)
    single = value_and_grad(solve)
    single_grad, singles = zip(*(single(xs[i], ys[i]) for i in range(B)), strict=True)
    with force_backend("gpu"):  # traced inside the block: the rule takes the accelerator branch
        dev_grad, dev = batched(xs, ys)
        dev_jaxpr = jax.make_jaxpr(batched)(xs, ys)

    # the branch really differs: the CPU one maps over the batch (one by one: a scan of length
    # B; in chunks of 4: a scan over ceil(B / 4) chunks), the accelerator one does not
    length = B if n * m >= loops.SEQUENTIAL_MIN_SIZE else math.ceil(B / loops.LOCKSTEP_CHUNK)
    assert _scan_lengths(cpu_jaxpr)[length] == _scan_lengths(dev_jaxpr)[length] + 1
    assert not _callbacks(dev_jaxpr)  # forward and backward: the jaxpr holds both

    assert bool(jnp.all(dev.converged)), otreg.explain(dev.status)
    # the two branches: the same sweeps and codes, the same values to rounding
    for name in ("n_iters", "status", "converged"):
        np.testing.assert_array_equal(getattr(dev, name), getattr(cpu, name), err_msg=name)
    # a batched reduction may sum in another order than another batching: float64 rounding,
    # amplified by the slow mode of a near-decoupled problem (docstring), stays below 1e-8
    tight = (("cost", 1e-10), ("f", 1e-8), ("g", 1e-8), ("error", 1e-10))
    for name, atol in tight:
        np.testing.assert_allclose(getattr(dev, name), getattr(cpu, name), atol=atol,
                                   err_msg=name)
    np.testing.assert_allclose(dev_grad, cpu_grad, atol=1e-8)
    # single calls: the same status, and the same result where they ran the same sweeps. An
    # unbatched log-sum-exp rounds differently from a batched one, so a block's error can
    # cross tol one block earlier or later, and over-relaxation then adapts differently
    # (measured on 12 x 10 blocked problems: 2-6% differ, by 10 to 240 sweeps); both are then
    # solutions to tol 1e-3, equal in value to 1e-5 and in gradient to ~1e-3 (the potentials
    # of such near-decoupled problems are not pinned beyond that)
    for i, (r, g1) in enumerate(zip(singles, single_grad, strict=True)):
        assert int(r.status) == int(dev.status[i]) and bool(r.converged)
        same = int(r.n_iters) == int(dev.n_iters[i])
        for name, atol in tight if same else (("cost", 1e-5),):
            np.testing.assert_allclose(getattr(dev, name)[i], getattr(r, name), atol=atol,
                                       err_msg=f"{name}[{i}]")
        np.testing.assert_allclose(dev_grad[i], g1, atol=1e-8 if same else 2e-3)

def test_one_dimensional_solvers_hold_no_callback_on_either_branch(rng):
    """The sort behind wasserstein_1d / sliced_w2 is in-graph on every backend (the host sort
    was removed): no callback, forward or backward, CPU or forced accelerator."""
    x = jnp.asarray(rng.standard_normal((9, 3)), jnp.float32)
    y = jnp.asarray(rng.standard_normal((7, 3)), jnp.float32)
    fns = (lambda x: otreg.sliced_w2(x, y, n_projections=8),
           lambda x: otreg.wasserstein_1d(x[:, 0], y[:, 0]),
           lambda x: otreg.wasserstein_1d(x[:, 0], x[:, 1] + 1.0))
    for forced in (None, "gpu"):
        with force_backend(forced) if forced else contextlib.nullcontext():
            for fn in fns:
                assert not _callbacks(jax.make_jaxpr(jax.value_and_grad(fn))(x))


def _arrays(x64: bool):
    """(name, array, expected max |x|) covering the cases the finiteness checks must get right."""
    cases = [
        ("nan", jnp.array([1.0, jnp.nan, -2.0], jnp.float32), np.nan),
        ("inf", jnp.array([1.0, -jnp.inf, 2.0], jnp.float32), np.inf),
        ("nan and inf", jnp.array([jnp.inf, jnp.nan], jnp.float32), np.nan),
        ("finite", jnp.array([[1.5, -3.0], [0.0, 2.0]], jnp.float32), 3.0),
        ("bfloat16 finite", jnp.array([0.5, -7.0], jnp.bfloat16), 7.0),
        ("bfloat16 nan", jnp.array([0.5, jnp.nan], jnp.bfloat16), np.nan),
        ("bfloat16 inf", jnp.array([jnp.inf, 0.5], jnp.bfloat16), np.inf),
        ("float16 inf", jnp.array([-jnp.inf, 0.5], jnp.float16), np.inf),
        ("empty", jnp.zeros((0, 3), jnp.float32), 0.0),
        ("empty bfloat16", jnp.zeros((0,), jnp.bfloat16), 0.0),
        ("int", jnp.array([3, -4], jnp.int32), 4.0),
    ]
    if x64:
        cases += [("float64 1e300", jnp.array([1e300, -2.0], jnp.float64), 1e300),
                  ("float64 nan", jnp.array([1e300, np.nan], jnp.float64), np.nan)]
    return cases


def _same(a: float, b: float) -> bool:
    return (np.isnan(a) and np.isnan(b)) or a == b


@pytest.mark.parametrize("use_x64", [False, True])
def test_max_abs_and_check_finite_same_on_forced_device_branch(monkeypatch, use_x64, request):
    if use_x64:
        request.getfixturevalue("x64")
    calls = []
    device = _checks._device_max_abs
    monkeypatch.setattr(_checks, "_device_max_abs", lambda z: calls.append(1) or device(z))
    for name, arr, expected in _arrays(use_x64):
        host = _checks.max_abs(arr)
        assert not calls, name  # a CPU array is reduced by NumPy
        host_raise = _raises(arr)
        with force_backend("gpu"):
            dev = _checks.max_abs(arr)
            dev_raise = _raises(arr)
            assert _checks.max_abs(np.asarray(arr)) == host or np.isnan(host)  # NumPy: host
        assert calls or arr.size == 0, f"{name}: the device branch was not taken"
        calls.clear()
        assert _same(host, dev) and _same(host, float(expected)), (name, host, dev)
        assert host_raise == dev_raise == (not np.isfinite(expected)), name


def _raises(arr) -> bool:
    try:
        _checks.check_finite(arr, "x", "test")
    except ValueError as err:
        assert "`x` contains NaN or inf" in str(err)
        return True
    return False


def test_solver_validation_same_on_forced_device_branch(rng):
    """The public entry points reject the same non-finite inputs, with the same message, when
    the device reduction does the check; and accept the same finite ones."""
    x = jnp.asarray(rng.standard_normal((6, 2)), jnp.float32)
    C = jnp.asarray(rng.uniform(size=(6, 5)), jnp.float32)
    bad_c = C.at[2, 3].set(jnp.inf)
    for forced in (None, "gpu"):
        with force_backend(forced) if forced else contextlib.nullcontext():
            with pytest.raises(ValueError, match="`geom` contains NaN or inf"):
                otreg.sinkhorn(bad_c, epsilon=0.1)
            with pytest.raises(ValueError, match="`x` contains NaN or inf"):
                otreg.sliced_w2(x.at[0, 0].set(jnp.nan), x, n_projections=4)
            res = otreg.sinkhorn(C, epsilon=0.1)
            assert int(res.status) == otreg.Status.SUCCESS
