"""Shared fixtures: fresh random inputs every run (the seed is printed), and float64 on demand."""

from __future__ import annotations

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
