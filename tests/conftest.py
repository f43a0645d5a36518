"""Shared fixtures: fresh random inputs every run (the seed is printed), and float64 on demand."""

from __future__ import annotations

import gc
import os

import jax
import numpy as np
import pytest


@pytest.fixture
def rng(request):
    """A NumPy generator with a fresh seed each run; the seed is printed for reproduction.

    Set OTREG_TEST_SEED to replay a failing run.
    """
    seed = int(os.environ.get("OTREG_TEST_SEED", np.random.SeedSequence().entropy % (2**32)))
    print(f"{request.node.name}: OTREG_TEST_SEED={seed}")
    return np.random.default_rng(seed)


MAX_MAPS = 30_000  # half of Linux's default vm.max_map_count (65,530)


def _n_maps() -> int:
    try:
        with open("/proc/self/maps", "rb") as fh:
            return sum(1 for _ in fh)
    except OSError:  # not Linux: no such limit to watch
        return 0


@pytest.fixture(autouse=True)
def _bounded_compiled_programs():
    """Keep a test process below the kernel's limit on memory maps.

    Every compiled XLA executable keeps ~3 memory maps (its JIT-compiled code) while JAX's
    caches hold it. A pytest-xdist worker that runs half of this suite compiles enough
    programs to reach ``vm.max_map_count`` (65,530 by default): the next ``mmap`` in the XLA
    compiler then fails and the worker dies with a segfault or an abort inside
    ``backend_compile_and_load``, in whichever test happens to compile next (a core file of
    such a worker held 65,531 mappings). ``jax.clear_caches()`` releases them; it runs only
    when a test leaves the process above ``MAX_MAPS``."""
    yield
    if _n_maps() > MAX_MAPS:
        jax.clear_caches()
        gc.collect()


@pytest.fixture
def x64():
    """Enable float64 for one test, restoring the previous setting afterwards."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)


def clouds(rng, n, m, d, shift=1.0):
    """x ~ N(0, I), y ~ N(shift, I) and random positive weights summing to 1 (float64 NumPy)."""
    x = rng.standard_normal((n, d))
    y = rng.standard_normal((m, d)) + shift
    a = rng.uniform(0.2, 1.0, n)
    b = rng.uniform(0.2, 1.0, m)
    return x, y, a / a.sum(), b / b.sum()


def sqdist(x, y):
    return ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)


def smooth_central_difference(f, point, draw, steps=(1e-6, 1e-6, 1e-7, 1e-7, 1e-8)):
    """``(tangents, fd)``: the central difference of ``f`` at ``point`` (a tuple of float64
    arrays) along ``tangents = draw()``, on a direction and step ``h`` over which ``f`` is
    smooth.

    Sorting-based losses are piecewise smooth: the ranks (and, with weights, the quantile
    breakpoints) change on a measure-zero set of inputs, where the derivative jumps. A central
    difference across such a kink is not the derivative, and a random point lies within
    ~1e-6 of one in about 1% of draws (thousands of projected pairs and breakpoints). A step is
    accepted only when the forward and the backward Richardson estimates (``2 D(h/2) - D(h)``,
    exact to O(h^2) where ``f`` is smooth on that side) agree with the central difference;
    otherwise a fresh direction is drawn with the next (smaller) step. This never relaxes the
    gradient check that follows: it only refuses to compare a derivative with a difference
    quotient that is not one."""
    f0 = float(f(*point))
    for h in steps:
        t = draw()
        val = {s: float(f(*(p + s * h * d for p, d in zip(point, t, strict=True))))
               for s in (-1, -0.5, 0.5, 1)}
        central = (val[1] - val[-1]) / (2 * h)
        fwd = 2 * (val[0.5] - f0) / (h / 2) - (val[1] - f0) / h
        bwd = 2 * (f0 - val[-0.5]) / (h / 2) - (f0 - val[-1]) / h
        tol = 1e-7 * (abs(central) + abs(f0)) + 1e-14 * abs(f0) / h + 1e-12
        if abs(fwd - central) <= tol and abs(bwd - central) <= tol:
            return t, central
    raise AssertionError(f"no kink-free step among {steps}: is f smooth anywhere near here?")
