"""The jittable auction (otreg._assignment): exact against scipy's linear_sum_assignment on fresh
random problems (continuous costs, clouds, integer costs with many ties), certified duals, and
a permutation even when the round budget runs out."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from otreg import _assignment


@functools.cache
def _solver(max_rounds):
    return jax.jit(functools.partial(_assignment.solve, max_rounds=max_rounds))


def _problem(rng, n, kind):
    if kind == "uniform":
        C = rng.uniform(size=(n, n))
    elif kind == "cloud":
        d = int(rng.integers(1, 4))
        x, y = rng.standard_normal((n, d)), rng.standard_normal((n, d)) + rng.normal()
        C = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    elif kind == "integer":  # many ties, many optimal assignments
        C = rng.integers(0, int(rng.choice([2, 5, 50])), size=(n, n)).astype(float)
    else:  # a few distinct values spread over a wide range
        C = rng.choice([0.0, 1e-6, 0.5, 1.0], size=(n, n))
    spread = C.max() - C.min()
    return (C - C.min()) / (spread if spread > 0 else 1.0)


def _check(C, res, what):
    n = C.shape[0]
    sigma = np.asarray(res.sigma)
    np.testing.assert_array_equal(np.sort(sigma), np.arange(n), err_msg=what)
    r, c = linear_sum_assignment(C)
    exact = C[r, c].sum()
    got = C[sigma, np.arange(n)].sum()
    assert abs(got - exact) <= 1e-9 * max(1.0, abs(exact)), (what, got, exact)
    assert bool(res.certified) and not bool(res.exhausted), what
    # the certificate: complementary slackness of sigma with alpha, up to rounding
    alpha = np.asarray(res.alpha)
    own = alpha[sigma] - C[sigma, np.arange(n)]
    best = (alpha[:, None] - C).max(0)
    assert np.all(own >= best - 1e-12 * n), what


@pytest.mark.parametrize("n", [1, 2, 3, 8, 33, 70])
def test_exact_against_linear_sum_assignment(rng, x64, n):
    solve = _solver(100_000)
    for trial in range(12):
        kind = ["uniform", "cloud", "integer", "spread"][trial % 4]
        C = _problem(rng, n, kind)
        _check(C, solve(jnp.asarray(C)), (n, trial, kind))


def test_constant_and_transposed(rng, x64):
    solve = _solver(100_000)
    n = 12
    _check(np.zeros((n, n)), solve(jnp.zeros((n, n))), "constant")
    C = _problem(rng, n, "integer")
    _check(C.T.copy(), solve(jnp.asarray(C.T)), "transposed")
    # a permutation matrix of zeros in a cost of ones: the only optimum
    perm = rng.permutation(n)
    C = np.ones((n, n))
    C[perm, np.arange(n)] = 0.0
    res = solve(jnp.asarray(C))
    np.testing.assert_array_equal(np.asarray(res.sigma), perm)
    _check(C, res, "planted")


def test_round_budget_gives_a_permutation(rng, x64):
    n = 40
    C = _problem(rng, n, "cloud")
    res = _solver(3)(jnp.asarray(C))
    np.testing.assert_array_equal(np.sort(np.asarray(res.sigma)), np.arange(n))
    assert int(res.rounds) <= 3
    assert bool(res.exhausted) and not bool(res.certified)


def test_float32(rng):
    n = 25
    C = _problem(rng, n, "uniform").astype(np.float32)
    res = _solver(100_000)(jnp.asarray(C))
    sigma = np.asarray(res.sigma)
    np.testing.assert_array_equal(np.sort(sigma), np.arange(n))
    C64 = C.astype(np.float64)
    r, c = linear_sum_assignment(C64)
    assert C64[sigma, np.arange(n)].sum() - C64[r, c].sum() <= 1e-4
