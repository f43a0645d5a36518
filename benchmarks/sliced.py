"""Sliced W2: otreg vs POT vs OTT-JAX vs a plain NumPy project-and-sort, control-variate
variance ratios, and the MSE of every direction design and variate against NumPy prototypes of
the published estimators. Run pinned and single-threaded: ``bash benchmarks/run_sliced.sh``
(``--quick``: every section at tiny size, a smoke test of about a minute).

1. ``timing``: time per call of otreg's default estimator (``directions`` and
   ``control_variate`` "auto"), n = ``--timing-n`` (5000; x ~ N(0, I), y ~ N(1, I)), uniform
   weights, for d and L given, in each dtype of ``--dtypes`` (float32 and float64), every
   implementation in the same dtype: otreg (in-graph integer-key sort), POT
   `ot.sliced_wasserstein_distance` (NumPy; given directions drawn in the row's dtype inside the
   timed call, since POT's own are float64 and would promote float32 clouds), OTT
   `ott.tools.sliced.sliced_wasserstein`, and the floor: NumPy projection and `np.sort` of both
   clouds. Values are compared (all estimate SW_2 from L directions).
2. ``variance``: variance ratio Var(plain MC) / Var(control variate) at L = 100 over `--keys`
   keys, otreg with i.i.d. (``"gaussian"``) directions: anisotropic Gaussians in d = 3, 10 and
   100, and sphere vs torus point clouds (n = 2048, 3-D) (``--data``); next to otreg's, the ratios
   of an independent NumPy implementation of the paper's estimator on the same data (over 500
   keys a ratio has about 9% relative error; otreg's variates are not the paper's fitted-gamma
   estimator, see ``otreg.sliced``).
3. ``to1pct``: time to a 1% relative std of SW_2^2, measured only: on the data of 2. (same
   draws), in ``--to1-dtype`` for both libraries, for each estimator (POT plain MC; otreg plain,
   lower, upper, i.i.d. directions) the relative std over ``--to1-keys`` independent keys (POT:
   seeds) at each L of ``--to1-L`` in increasing order, stopping at the first L whose relative
   std is <= 1%; that L is then timed (CPU, one call). If no L of the grid reaches 1%: "not
   reached at L <= max", with the relative std and the time of one call at the largest L.
4. ``variance_L``: relative std of SW_2^2 over keys at L in ``--var-L`` (2, 10, 100, 1000),
   i.i.d. directions.
5. ``mse`` (issue 16): for each data set of ``--mse-data`` (gauss3, sphere_torus and
   sphere_torus_shifted (3-D), gauss10, gauss64, gauss100, gauss784: anisotropic Gaussians, see
   :func:`clouds`; ``--mse-n`` = 1000 points per cloud, 500 at d = 784 to bound the projection
   cost), float64:

   - a reference SW_2^2 with its standard error (:func:`_sliced_prototypes.reference`:
     ``--mse-ref-dirs`` directions, 1/4 of them at d = 3, in 16 independent randomised batches:
     orthogonal frames, or at d = 3 randomised spherical Fibonacci sets, with control variates
     whose coefficients come from an independent pilot batch, so exactly unbiased); a warning if
     its standard error is not below 0.1 x the smallest RMSE of any row;
   - for every design, ``--mse-reps`` (200) independent estimates at each L of ``--mse-L``
     (16, 64, 100, 256): the NumPy prototypes of the published estimators
     (``benchmarks/_sliced_prototypes.py``: plain MC, Nguyen & Ho's lower and upper control
     variates, Rowland et al.'s orthogonal frames, at d = 3 randomised spherical Fibonacci QMC
     (Nguyen et al.) alone and with the lower variate, and Leluc et al.'s spherical-harmonics
     control variates) and otreg's designs (gaussian / orthogonal / qmc (d <= 3) with variate
     none / lower / upper, and auto; one jitted call per estimate, a design otreg refuses is
     n/a);
   - tables: MSE vs L (and MSE(plain MC) / MSE, plain MC of the same implementation); bias
     (mean - reference) with its standard error; time per call (median process time of
     ``--mse-time-reps`` (21) single calls made round-robin, in random order, over the designs
     and L of one implementation); MSE at equal time, at the budget of the same implementation's
     plain MC at each grid L (each row at the L its call takes in that time, MSE interpolated in
     log-log over L; a little extrapolation is flagged, a lower bound `>=` below that);
   - the goal line: otreg's auto vs the best published prototype, each at its own
     implementation's plain-MC budget (equal cost in plain-MC calls: the comparison of the
     designs, not of NumPy's sort against XLA's; at the smallest budgets the NumPy rows' fixed
     Python overhead weighs in), with the ratios at equal absolute time and at equal L as well;
     at d = 3 also auto vs every single method. A summary table closes the section.

   At full size the section takes about 12 minutes on one core (2 minutes per data set).

Usage: python benchmarks/sliced.py [--d 3 64 784] [--L 10 100 1000] [--keys 500]
       [--only timing to1pct mse] [--mse-data gauss3 gauss64] [--mse-reps 200] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np


def cpu_time(fn, reps=7):
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.process_time()
        fn()
        ts.append(time.process_time() - t0)
    return statistics.median(ts)


def numpy_floor(x, y, L, rng):
    theta = rng.standard_normal((L, x.shape[1]))
    theta /= np.linalg.norm(theta, axis=1, keepdims=True)
    xp, yp = np.sort(x @ theta.T, axis=0), np.sort(y @ theta.T, axis=0)
    return np.sqrt(np.mean((xp - yp) ** 2))


def pot_sw(x, y, L, rng):
    """POT's SW_2 with L uniform directions drawn by ``rng`` in x's dtype (POT draws its own in
    float64, which promotes float32 clouds to float64)."""
    import ot
    theta = rng.standard_normal((x.shape[1], L)).astype(x.dtype)
    theta /= np.linalg.norm(theta, axis=0, keepdims=True)
    return ot.sliced_wasserstein_distance(x, y, projections=theta)


def timing(args):
    import jax
    import jax.numpy as jnp

    import otreg
    jax.config.update("jax_enable_x64", True)  # float32 arrays stay float32; float64 possible
    rng = np.random.default_rng(0)
    n = args.timing_n
    print(f"## time per call, n = {n} (ms, CPU), every implementation in the row's dtype\n"
          "| dtype | d | L | otreg | POT | OTT | NumPy floor | otreg/POT | otreg/floor | "
          "values otreg / POT / floor |\n|---|---|---|---|---|---|---|---|---|---|", flush=True)
    for d in args.d:
        x64 = rng.standard_normal((n, d))
        y64 = rng.standard_normal((n, d)) + 1.0
        for dtype in args.dtypes:
            x, y = x64.astype(dtype), y64.astype(dtype)
            xj, yj = jnp.asarray(x), jnp.asarray(y)
            for L in args.L:
                f = jax.jit(lambda x, y, L=L: otreg.sliced_w2(x, y, key=jax.random.PRNGKey(0),
                                                             n_projections=L))
                t_ours = cpu_time(lambda f=f: jax.block_until_ready(f(xj, yj)))
                v_ours = float(f(xj, yj))
                t_pot = cpu_time(lambda L=L: pot_sw(x, y, L, np.random.default_rng(0)), reps=3)
                v_pot = pot_sw(x, y, L, np.random.default_rng(0))
                t_floor = cpu_time(lambda L=L: numpy_floor(x, y, L, np.random.default_rng(0)))
                v_floor = numpy_floor(x, y, L, np.random.default_rng(0))
                try:
                    from ott.tools import sliced as ott_sliced
                    g = jax.jit(lambda x, y, L=L: ott_sliced.sliced_wasserstein(
                        x, y, n_proj=L, rng=jax.random.PRNGKey(0))[0])
                    t_ott = 1e3 * cpu_time(lambda g=g: jax.block_until_ready(g(xj, yj)), reps=3)
                    t_ott = f"{t_ott:.1f}"
                except Exception as err:  # a peer failing must not stop the run
                    t_ott = f"failed ({type(err).__name__})"
                print(f"| {dtype} | {d} | {L} | {1e3 * t_ours:.1f} | {1e3 * t_pot:.1f} | {t_ott} "
                      f"| {1e3 * t_floor:.1f} | {t_ours / t_pot:.3f} | {t_ours / t_floor:.2f} | "
                      f"{v_ours:.4f} / {v_pot:.4f} / {v_floor:.4f} |", flush=True)


DATA = ("gauss3", "gauss10", "gauss100", "sphere_torus", "sphere_torus_shifted")


def clouds(kind, rng, n=None):
    """The data sets, n points per cloud (default: 1000 for the Gaussians, 2048 for sphere/torus;
    the draws for the default n are those of the earlier sections).

    ``gauss3``: scales (2, 1, .5) vs (.5, 1.5, 1), shift 1. ``gauss<d>`` (d != 3): scales uniform
    in [0.5, 2], the second cloud with the reversed scales, shift 1. ``lin<d>``: the setting of
    REFERENCE.md's sliced anchors, scales linspace(0.5, 2, d) vs 0.8 x the reverse, shift 1.
    ``lin<d>c``: the same, centred (no shift): the mean variate carries nothing.
    ``sphere_torus``: unit sphere vs torus (R = 1, r = 0.3) about the same centre; ``_shifted``:
    the torus moved by (1, 1, 1)."""
    if kind == "gauss3":
        n = n or 1000
        x = rng.standard_normal((n, 3)) * np.array([2.0, 1.0, 0.5])
        y = rng.standard_normal((n, 3)) * np.array([0.5, 1.5, 1.0]) + 1.0
    elif kind.startswith("gauss"):
        n, d = n or 1000, int(kind[5:])
        s = rng.uniform(0.5, 2.0, d)
        x = rng.standard_normal((n, d)) * s
        y = rng.standard_normal((n, d)) * s[::-1] + 1.0
    elif kind.startswith("lin"):
        n, d = n or 1000, int(kind[3:].rstrip("c"))
        s = np.linspace(0.5, 2.0, d)
        x = rng.standard_normal((n, d)) * s
        y = rng.standard_normal((n, d)) * (0.8 * s[::-1]) + (0.0 if kind.endswith("c") else 1.0)
    elif kind.startswith("sphere_torus"):
        n = n or 2048
        v = rng.standard_normal((n, 3))
        x = v / np.linalg.norm(v, axis=1, keepdims=True)
        u, w = rng.uniform(0, 2 * np.pi, (2, n))
        y = np.c_[(1 + 0.3 * np.cos(w)) * np.cos(u), (1 + 0.3 * np.cos(w)) * np.sin(u),
                  0.3 * np.sin(w)] + (1.0 if kind.endswith("shifted") else 0.0)
    else:
        raise ValueError(f"unknown data set {kind!r}")
    return x, y


def prototype_ratios(x, y, L, keys, rng):
    """Var(plain MC) / Var(CV) of an independent NumPy implementation of the paper's estimator
    (directions from NumPy, gamma centred at E C as in the authors' code), on the same data."""
    n, d = x.shape
    dm = x.mean(0) - y.mean(0)
    e_low = dm @ dm / d
    e_up = e_low + (((x - x.mean(0)) ** 2).sum(1).mean() + ((y - y.mean(0)) ** 2).sum(1).mean()) / d
    est = {None: [], "lower": [], "upper": []}
    for _ in range(keys):
        th = rng.standard_normal((L, d))
        th /= np.linalg.norm(th, axis=1, keepdims=True)
        xp, yp = x @ th.T, y @ th.T
        w = ((np.sort(xp, 0) - np.sort(yp, 0)) ** 2).mean(0)
        low = (xp.mean(0) - yp.mean(0)) ** 2
        est[None].append(w.mean())
        for kind, c, e in (("lower", low, e_low), ("upper", low + xp.var(0) + yp.var(0), e_up)):
            g = np.sum((w - w.mean()) * (c - e)) / (np.sum((c - e) ** 2) + 1e-24)
            est[kind].append(w.mean() - g * (c.mean() - e))
    plain = np.var(est[None])
    return plain / np.var(est["lower"]), plain / np.var(est["upper"])


def variance(args):
    """Var(plain MC) / Var(CV) of SW_2^2 at L = 100 over ``--keys`` keys, otreg in float32, next
    to the NumPy prototype's ratios (float64) on the same data."""
    import jax
    import jax.numpy as jnp

    import otreg
    rng = np.random.default_rng(1)
    keys = jax.random.split(jax.random.PRNGKey(2), args.keys)
    print(f"## Var(plain MC) / Var(control variate), SW_2^2, L = 100, {args.keys} keys\n"
          "| data | plain MC rel. std | lower | upper | NumPy prototype lower / upper |\n"
          "|---|---|---|---|---|", flush=True)
    for kind in args.data:
        xn, yn = clouds(kind, rng)
        x, y = (jnp.asarray(z, jnp.float32) for z in (xn, yn))
        est = {}
        for cv in (None, "lower", "upper"):
            f = jax.jit(jax.vmap(lambda k, cv=cv: otreg.sliced_w2(
                x, y, key=k, n_projections=100, directions="gaussian", control_variate=cv,
                squared=True)))
            est[cv] = np.asarray(f(keys), np.float64)
        plain = est[None].var()
        proto = prototype_ratios(xn, yn, 100, args.keys, np.random.default_rng(5))
        print(f"| {kind} | {est[None].std() / est[None].mean():.3f} | "
              f"{plain / est['lower'].var():.1f} | {plain / est['upper'].var():.1f} | "
              f"{proto[0]:.1f} / {proto[1]:.1f} |", flush=True)


def to_one_percent(args):
    """Time to a 1% relative std of SW_2^2, measured (module doc, part 3): no extrapolation."""
    import jax
    import jax.numpy as jnp

    import otreg
    jax.config.update("jax_enable_x64", True)  # float32 arrays stay float32
    dtype, K, grid = args.to1_dtype, args.to1_keys, sorted(args.to1_L)
    rng = np.random.default_rng(1)  # the data of variance(): same generator, same order
    print(f"## time to a 1% relative std of SW_2^2, measured: rel. std (ddof 1) over {K} "
          f"independent keys at each L of {grid} (up to the first L <= 1%; the std itself has "
          f"~{100 / np.sqrt(2 * (K - 1)):.0f}% relative error), then CPU ms of one call at that L; "
          f"{dtype} for POT and otreg; cell: ms at L (rel. std there)\n"
          "| data | POT plain | otreg plain | otreg lower | otreg upper | POT / best otreg |\n"
          "|---|---|---|---|---|---|", flush=True)

    def otreg_fns(x, y, cv, L):
        one = jax.jit(lambda k: otreg.sliced_w2(x, y, key=k, n_projections=L,
                                                directions="gaussian", control_variate=cv,
                                                squared=True))
        batch = max(1, min(K, int(4e6 // (L * max(x.shape[0], y.shape[0])))))
        many = jax.jit(lambda ks: jax.lax.map(one, ks, batch_size=batch))
        return one, many

    for kind in args.data:
        xn, yn = (z.astype(dtype) for z in clouds(kind, rng))
        x, y = jnp.asarray(xn), jnp.asarray(yn)
        cells, times, reached = [], {}, {}
        for name in ("POT plain", "otreg plain", "otreg lower", "otreg upper"):
            cv = None if name.endswith("plain") else name.split()[1]
            for L in grid:
                if name.startswith("POT"):
                    v = np.array([pot_sw(xn, yn, L, np.random.default_rng((7, L, s))) ** 2
                                  for s in range(K)], np.float64)
                    call = lambda L=L: pot_sw(xn, yn, L, np.random.default_rng(0))  # noqa: E731
                    reps = 3
                else:
                    one, many = otreg_fns(x, y, cv, L)
                    keys = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(8), L), K)
                    v = np.asarray(many(keys), np.float64)
                    call = lambda one=one: jax.block_until_ready(  # noqa: E731
                        one(jax.random.PRNGKey(0)))
                    reps = 7
                rel = v.std(ddof=1) / v.mean()
                if rel <= 0.01:
                    break
            times[name], reached[name] = 1e3 * cpu_time(call, reps=reps), rel <= 0.01
            cells.append(f"{times[name]:.2f} at L = {L} ({rel:.4f})" if reached[name] else
                         f"not reached at L <= {L} ({rel:.3f}; {times[name]:.1f} at L = {L})")
        ours = [t for k, t in times.items() if k.startswith("otreg") and reached[k]]
        pot = times["POT plain"]
        if not ours:
            ratio = "n/a (otreg not reached)"
        elif reached["POT plain"]:
            ratio = f"{pot / min(ours):.0f}x"
        else:  # POT needs L > max: more than its time at max
            ratio = f"> {pot / min(ours):.0f}x (POT not reached)"
        print(f"| {kind} | " + " | ".join(cells) + f" | {ratio} |", flush=True)


def variance_vs_L(args):
    """Relative std of SW_2^2 over keys as L grows (the paper's variance-vs-L comparison)."""
    import jax
    import jax.numpy as jnp

    import otreg
    rng = np.random.default_rng(3)
    keys = jax.random.split(jax.random.PRNGKey(4), args.keys)
    print(f"## relative std of SW_2^2 vs L ({args.keys} keys)\n| data | L | plain MC | lower | "
          "upper |\n|---|---|---|---|---|", flush=True)
    for kind in ("gauss3", "sphere_torus_shifted"):
        x, y = (jnp.asarray(z, jnp.float32) for z in clouds(kind, rng))
        for L in args.var_L:
            row = []
            for cv in (None, "lower", "upper"):
                f = jax.jit(jax.vmap(lambda k, cv=cv, L=L: otreg.sliced_w2(
                    x, y, key=k, n_projections=L, directions="gaussian",
                    control_variate=cv, squared=True)))
                v = np.asarray(f(keys), np.float64)
                row.append(v.std() / v.mean())
            print(f"| {kind} | {L} | " + " | ".join(f"{r:.2e}" for r in row) + " |", flush=True)


# --- mse: every design, MSE vs L and vs time (issue 16) -------------------------------------------

MSE_DATA = ("gauss3", "sphere_torus", "sphere_torus_shifted", "gauss10", "gauss64", "gauss100",
            "gauss784")
MSE_N_784 = 500  # points per cloud at d = 784 (projection cost), whatever --mse-n says
EXTRAP = 2.0  # equal-time MSEs are extrapolated at most this factor in L below the grid,
EXTRAP_UP = 1.25  # and this factor above it (a local rate is not trusted further)


def _proto():
    import importlib
    import os
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    return importlib.import_module("_sliced_prototypes")


def otreg_designs(d):
    """(label, directions, control_variate, single): every design x variate otreg offers at d,
    and auto; ``single``: one published ingredient (otreg's variates are not the published
    estimator: exact mean split / leave-one-out fit, see otreg.sliced)."""
    designs = ["gaussian", "orthogonal"] + (["qmc"] if d <= 3 else [])
    out = []
    for D in designs:
        for cv in (None, "lower", "upper"):
            single = D == "gaussian" or cv is None
            out.append((f"otreg {D} / {cv or 'none'}", D, cv, single))
    return out + [("otreg auto", "auto", "auto", False)]


def _run_calls(call, R):
    """R calls of ``call(r) -> float`` (after a warm-up call that compiles): the values."""
    call(0)
    return np.array([call(r) for r in range(R)])


def _time_calls(rows, reps, seed=0):
    """Time per call of every (row, L), the median process time of ``reps`` single calls made
    round-robin, in a fresh random order each round, over the rows of one implementation at a
    time (no order, drift or leftover work of a bigger call favours a row)."""
    rng = np.random.default_rng(seed)
    for impl in dict.fromkeys(r.impl for r in rows):
        cells = [(row, L) for row in rows if row.impl == impl for L in row.calls]
        ts = {(row.name, L): [] for row, L in cells}
        for rep in range(reps):
            for i in rng.permutation(len(cells)):
                row, L = cells[i]
                t0 = time.process_time()
                row.calls[L](rep)
                ts[row.name, L].append(time.process_time() - t0)
        for row, L in cells:
            row.t[L] = float(np.median(ts[row.name, L]))


class _Row:
    """One design over the L grid: vals[L] (R estimates), t[L] (s per call), why[L] if n/a."""

    def __init__(self, name, impl, single):
        self.name, self.impl, self.single = name, impl, single
        self.vals, self.t, self.why, self.calls = {}, {}, {}, {}

    def complete(self, grid):
        return all(L in self.vals for L in grid)

    def mse(self, L, truth):
        return float(np.mean((self.vals[L] - truth) ** 2))

    def mse_rel_se(self, L, truth):
        e2 = (self.vals[L] - truth) ** 2
        return float(e2.std(ddof=1) / np.sqrt(len(e2)) / e2.mean())


def _equiv_L(row, grid, t):
    """The (fractional) L at which the row's call takes time t: its measured time per call is
    interpolated piecewise linearly in L (made nondecreasing), extrapolated linearly beyond the
    grid; None where t is below the row's fixed cost (extrapolated L < 1)."""
    Ls = np.asarray(grid, float)
    ts = np.maximum.accumulate([row.t[L] for L in grid])
    if len(Ls) == 1:
        return Ls[0] * t / ts[0]
    if t < ts[0] or t > ts[-1]:
        i = (0, 1) if t < ts[0] else (-2, -1)
        slope = max(ts[i[1]] - ts[i[0]], 1e-12 * ts[-1]) / (Ls[i[1]] - Ls[i[0]])
        j = i[0] if t < ts[0] else i[1]
        L = Ls[j] + (t - ts[j]) / slope
        return L if L >= 1 else None
    k = min(int(np.searchsorted(ts, t, side="right")), len(ts) - 1)
    if ts[k] == ts[k - 1]:
        return Ls[k - 1]
    return Ls[k - 1] + (t - ts[k - 1]) / (ts[k] - ts[k - 1]) * (Ls[k] - Ls[k - 1])


def _at_time(row, grid, truth, t):
    """The row's MSE at a time budget t, at the L its call takes in time t (:func:`_equiv_L`):
    log MSE interpolated linearly in log L over the grid (flag ""), extrapolated from the two end
    points up to a factor ``EXTRAP`` in L below it and ``EXTRAP_UP`` above it ("~"); further
    below the grid, the MSE at the smallest grid L, a lower bound (">=": the MSE does not grow
    with L); further above, NaN ("n/a"); where the call alone exceeds t, inf ("over"). Returns
    (mse, flag, nearest grid L, L)."""
    L = _equiv_L(row, grid, t)
    if L is None:
        return float("inf"), "over", grid[0], 0.0
    lL, lm = np.log(grid), np.log([row.mse(g, truth) for g in grid])
    x = np.log(L)
    near = grid[int(np.argmin(np.abs(lL - x)))]
    if lL[0] <= x <= lL[-1]:
        return float(np.exp(np.interp(x, lL, lm))), "", near, L
    if L < grid[0] / EXTRAP:
        return float(np.exp(lm[0])), ">=", grid[0], L
    if L > grid[-1] * EXTRAP_UP or len(grid) == 1:
        return float("nan"), "n/a", near, L
    i = (0, 1) if x < lL[0] else (-2, -1)
    slope = (lm[i[1]] - lm[i[0]]) / (lL[i[1]] - lL[i[0]])
    j = i[0] if x < lL[0] else i[1]
    return float(np.exp(lm[j] + slope * (x - lL[j]))), "~", near, L


def _fmt(v):
    return f"{v:.2e}"


def _eq_cell(m, flag, Lt, ref):
    if flag == "over":
        return "over budget at L = 1"
    if flag == "n/a":
        return f"n/a (L {Lt:.0f}, beyond the grid)"
    return f"{flag}{_fmt(m)} ({ref / m:.3g}x, L {Lt:.0f})"


def mse_section(args):
    """MSE of SW_2^2 vs L and vs time for every design: NumPy prototypes of the published
    estimators and otreg's designs on the same data (module doc, part 5)."""
    import jax
    import jax.numpy as jnp

    import otreg
    jax.config.update("jax_enable_x64", True)
    P = _proto()
    grid, R = sorted(args.mse_L), args.mse_reps
    auto_pick = getattr(getattr(otreg, "sliced", None), "auto_estimator", None)
    print(f"## MSE of SW_2^2 for every design (section `mse`), float64, {R} independent "
          f"repetitions per cell, L in {grid}, n = {args.mse_n} per cloud "
          f"(d = 784: {min(args.mse_n, MSE_N_784)})\n\nNumPy prototypes of the published "
          "estimators (benchmarks/_sliced_prototypes.py) and otreg's designs on the same data. "
          "MSE relative to a reference value; ratio = MSE(plain MC) / MSE(design), plain MC of "
          "the same implementation (NumPy `plain MC` / `otreg gaussian / none`). Time: median "
          f"process time of one call over {args.mse_time_reps} calls made round-robin (random "
          "order each round) over all designs and L of one implementation (otreg: one jitted "
          "call, NumPy: one function call), pinned core.\n",
          flush=True)
    cache = {}

    def otreg_fn(D, cv, L):
        if (D, cv, L) not in cache:
            cache[D, cv, L] = jax.jit(lambda x, y, k: otreg.sliced_w2(
                x, y, key=k, n_projections=L, directions=D, control_variate=cv, squared=True))
        return cache[D, cv, L]

    summary = []
    for kind in args.mse_data:
        d_kind = int(kind[5:]) if kind.startswith("gauss") else (
            int(kind[3:].rstrip("c")) if kind.startswith("lin") else 3)
        n = min(args.mse_n, MSE_N_784) if d_kind >= 784 else args.mse_n
        xn, yn = clouds(kind, np.random.default_rng(11), n)
        d = xn.shape[1]
        t0 = time.time()
        truth, se, how = P.reference(xn, yn, np.random.default_rng(12),
                                     n_dirs=args.mse_ref_dirs // (4 if d <= 3 else 1))
        rows = []
        for name, (fn, single) in P.available(d).items():
            row = _Row(name, "numpy", single)
            for L in grid:  # the same seeds for every prototype: common random numbers
                row.calls[L] = lambda r, fn=fn, L=L: fn(
                    xn, yn, L, np.random.default_rng((13, L, r)))
                row.vals[L] = _run_calls(row.calls[L], R)
            rows.append(row)
        x, y = jnp.asarray(xn), jnp.asarray(yn)
        keys = {L: list(jax.random.split(jax.random.fold_in(jax.random.PRNGKey(14), L), R))
                for L in grid}
        for name, D, cv, single in otreg_designs(d):
            row = _Row(name, "otreg", single)
            for L in grid:
                f = otreg_fn(D, cv, L)
                call = lambda r, f=f, L=L: float(f(x, y, keys[L][r % R]))
                try:
                    row.vals[L] = _run_calls(call, R)
                    row.calls[L] = call
                except Exception as err:  # a design otreg lacks or refuses here: n/a
                    row.why[L] = f"{type(err).__name__}: {str(err).splitlines()[0][:90]}"
            rows.append(row)
        _time_calls(rows, args.mse_time_reps)
        full = [r for r in rows if r.complete(grid)]
        min_rmse = min(np.sqrt(r.mse(L, truth)) for r in rows for L in r.vals)
        print(f"### {kind}: n = {n}, d = {d}; reference SW_2^2 = {truth:.10g} +- {se:.2g} (SE; "
              f"{how}); smallest RMSE of any row {min_rmse:.2g}", flush=True)
        if se > 0.1 * min_rmse:
            print(f"\n**warning**: the reference's standard error {se:.2g} is not far below the "
                  f"smallest RMSE {min_rmse:.2g}: the smallest MSEs are inflated by up to "
                  f"{(se / min_rmse) ** 2:.0%}.", flush=True)
        if auto_pick is not None:
            try:
                picks = ", ".join(f"L = {L}: {auto_pick(d, L)}" for L in grid)
                print(f"\nauto picks (directions, control_variate): {picks}", flush=True)
            except Exception as err:
                print(f"\nauto_estimator failed: {err}", flush=True)
        base = {"numpy": next(r for r in full if r.name == "plain MC"),
                "otreg": next((r for r in full if r.name == "otreg gaussian / none"), None)}

        def table(title, fmt):
            print(f"\n{title}\n| design | " + " | ".join(f"L = {L}" for L in grid) + " |\n"
                  + "|---" * (len(grid) + 1) + "|")
            for row in rows:
                print(f"| {row.name} | " + " | ".join(
                    fmt(row, L) if L in row.vals else "n/a" for L in grid) + " |")

        def mse_cell(r, L):
            b = base[r.impl]
            ratio = f" ({b.mse(L, truth) / r.mse(L, truth):.3g}x)" if b else ""
            return _fmt(r.mse(L, truth)) + ratio

        def bias_cell(r, L):
            v = r.vals[L]
            b, s = v.mean() - truth, np.sqrt(v.var(ddof=1) / len(v) + se ** 2)
            return f"{b:+.2e} +- {s:.1e}{' !' if abs(b) > 3 * s else ''}"

        table("MSE vs L: MSE (MSE(plain MC) / MSE)", mse_cell)
        why = [f"{r.name} at L = {L}: {w}" for r in rows for L, w in r.why.items()]
        if why:
            print("\nn/a: " + "; ".join(why))
        table("bias = mean - reference +- its SE (`!` where |bias| > 3 SE)", bias_cell)
        table("time per call (ms)", lambda r, L: f"{1e3 * r.t[L]:.3g}")
        # equal time: budgets = the time of plain MC of the same implementation at each grid L
        print("\nMSE at equal time: budget = time of plain MC of the same implementation at L "
              "(NumPy rows: NumPy plain MC; otreg rows: otreg gaussian / none); each row at the "
              "L its call takes in that time (time per call interpolated linearly in L), MSE "
              f"interpolated in log-log over its L grid (`~`: extrapolated, at most {EXTRAP:g}x "
              f"in L below the grid and {EXTRAP_UP:g}x above; `>=`: further below the grid, the "
              "MSE at its smallest L, a lower bound); cell: MSE (MSE(plain MC) / MSE, L)\n"
              "| design | "
              + " | ".join(f"L = {L}" for L in grid) + " |\n" + "|---" * (len(grid) + 1) + "|")
        eq = {}
        for row in rows:
            b = base[row.impl]
            if not row.complete(grid) or b is None:
                print(f"| {row.name} | " + " | ".join(["n/a"] * len(grid)) + " |")
                continue
            out = []
            for L in grid:
                m, flag, near, Lt = _at_time(row, grid, truth, b.t[L])
                eq[row.name, L] = (m, near)
                out.append(_eq_cell(m, flag, Lt, b.mse(L, truth)))
            print(f"| {row.name} | " + " | ".join(out) + " |")
        line, text = _goal(kind, d, grid, full, eq, truth, base)
        summary.append(line)
        print(f"\n{text}\n\n(data set done in {time.time() - t0:.0f} s wall)\n", flush=True)
    print("### goal: auto vs the best published estimator at equal time (all data sets)\n\n"
          "Ratio MSE(best NumPy prototype) / MSE(otreg auto), each at the budget of its own "
          "implementation's plain MC at L (equal cost in plain-MC calls) +- its standard error; "
          "goal: >= 1 at every budget (and at d = 3 above every single method).\n\n"
          "| data | d | " + " | ".join(f"L = {L}" for L in grid) + " | goal |\n"
          + "|---" * (len(grid) + 3) + "|")
    for line in summary:
        print(line)
    print(flush=True)


def _goal(kind, d, grid, rows, eq, truth, base):
    """The goal: otreg's auto vs the best NumPy prototype, each at the budget of its own plain MC
    at L (equal cost in units of plain MC calls); at d = 3 also vs every single method. Returns
    (summary table line, text)."""
    auto = next((r for r in rows if r.name == "otreg auto"), None)
    if auto is None or base["otreg"] is None:
        return (f"| {kind} | {d} | " + " | ".join(["n/a"] * len(grid)) + " | n/a (otreg auto or "
                "plain MC n/a) |", f"goal: n/a for {kind} (otreg auto or plain MC n/a)")
    pubs = [r for r in rows if r.impl == "numpy"]
    notes, status, raw = [], [], []
    for L in grid:
        ma, na = eq["otreg auto", L]
        above = [r.name for r in pubs if np.isnan(eq[r.name, L][0])]  # L beyond the grid
        if np.isnan(ma) or above:
            status.append("n/a")
            notes.append("n/a (" + ", ".join(above or ["auto"]) + " beyond the grid)")
        else:
            best = min(pubs, key=lambda r: eq[r.name, L][0])
            mb, nb = eq[best.name, L]
            ratio = mb / ma
            err = ratio * np.hypot(auto.mse_rel_se(na, truth), best.mse_rel_se(nb, truth))
            status.append("ok" if ratio >= 1 else "noise" if ratio + 2 * err >= 1 else "fail")
            notes.append(f"{ratio:.3g}x +- {err:.2g} (vs {best.name})")
        # the same at equal absolute time (includes the implementations' speeds, NumPy's sort
        # against XLA's): every row at the time of otreg's plain MC at L; a prototype whose L
        # there is beyond the grid counts with its MSE at the largest L, an upper bound of its
        # MSE (so the ratio is then an upper bound, `<=`)
        t = base["otreg"].t[L]
        mauto = _at_time(auto, grid, truth, t)[0]
        vals = [_at_time(r, grid, truth, t)[0] for r in pubs]
        bound = any(np.isnan(v) for v in vals)
        mraw = min(r.mse(grid[-1], truth) if np.isnan(v) else v for r, v in zip(pubs, vals,
                                                                                strict=True))
        raw.append(f"L = {L}: " + (f"{'<=' if bound else ''}{mraw / mauto:.3g}x"
                                   if np.isfinite(mauto) else "n/a (auto beyond the grid)"))
    at_L = []
    for L in grid:
        best = min(pubs, key=lambda r: r.mse(L, truth))
        at_L.append(f"L = {L}: {best.mse(L, truth) / auto.mse(L, truth):.3g}x ({best.name})")
    verdict = ("fails" if "fail" in status else "holds within noise (2 SE)" if "noise" in status
               else "holds" if "ok" in status else "n/a")
    if "n/a" in status and verdict != "fails":
        verdict += " where measured"
    text = (f"auto vs best published at equal time ({kind}): ratio MSE(best published) / "
            f"MSE(auto), each at the budget of its own implementation's plain MC at L: "
            + "; ".join(f"L = {L}: {s}" for L, s in zip(grid, notes, strict=True))
            + f". Goal (auto >= best published at every budget): **{verdict}**. At equal "
            f"absolute time (budget: otreg's plain MC at L; NumPy's faster sort included): "
            + "; ".join(raw) + ". At equal L: " + "; ".join(at_L) + ".")
    if d == 3:
        singles = [r for r in rows if r.single]
        worst = []
        for L in grid:
            ma = eq["otreg auto", L][0]
            above = [r.name for r in singles if np.isnan(eq[r.name, L][0])]
            if np.isnan(ma) or above:  # undecided: some L beyond the grid
                worst.append((float("nan"), L, ", ".join(above or ["auto"]) + " beyond grid"))
                continue
            r = min(singles, key=lambda r: eq[r.name, L][0])
            worst.append((eq[r.name, L][0] / ma, L, r.name))
        beats = all(w[0] > 1 for w in worst)  # False if any is NaN
        text += (" d = 3, auto vs every single method (the prototypes but RQMC + CV lower, and "
                 "otreg's single designs): smallest ratio "
                 + "; ".join(f"L = {L}: {w:.3g}x ({nm})" for w, L, nm in worst)
                 + f": **{'beats every single method' if beats else 'does NOT beat every one'}**.")
        verdict += "; beats every single method" if beats else "; not every single method"
    return f"| {kind} | {d} | " + " | ".join(notes) + f" | {verdict} |", text


QUICK = dict(d=[3], L=[10], keys=20, dtypes=["float32"], timing_n=1000, to1_keys=10, to1_L=[2, 10],
             var_L=[2, 10], data=["gauss3", "sphere_torus_shifted"], mse_L=[16, 64],
             mse_reps=12, mse_n=200, mse_data=["gauss3", "sphere_torus_shifted", "gauss64"],
             mse_ref_dirs=2**13, mse_time_reps=5)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: every section at tiny size (explicit options still win)")
    ap.add_argument("--d", type=int, nargs="+", default=[3, 64, 784])
    ap.add_argument("--L", type=int, nargs="+", default=[10, 100, 1000])
    ap.add_argument("--timing-n", type=int, default=5000)
    ap.add_argument("--keys", type=int, default=500)
    ap.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    ap.add_argument("--to1-dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--to1-keys", type=int, default=100)
    ap.add_argument("--to1-L", type=int, nargs="+", default=[2, 5, 10, 20, 50, 100, 200, 500, 1000])
    ap.add_argument("--var-L", type=int, nargs="+", default=[2, 10, 100, 1000])
    ap.add_argument("--data", nargs="+", default=list(DATA), help="data sets of variance, to1pct")
    ap.add_argument("--mse-data", nargs="+", default=list(MSE_DATA),
                    help="data sets of the mse section (also lin<d> / lin<d>c: REFERENCE.md's "
                    "setting, shifted / centred, e.g. lin3 lin64c)")
    ap.add_argument("--mse-L", type=int, nargs="+", default=[16, 64, 100, 256])
    ap.add_argument("--mse-reps", type=int, default=200)
    ap.add_argument("--mse-n", type=int, default=1000)
    ap.add_argument("--mse-ref-dirs", type=int, default=2**17)
    ap.add_argument("--mse-time-reps", type=int, default=21,
                    help="timed calls per design and L (round-robin), the median is reported")
    parts = ["timing", "variance", "to1pct", "variance_L", "mse"]
    ap.add_argument("--only", nargs="+", choices=parts, default=parts)
    if "--quick" in sys.argv:
        ap.set_defaults(**QUICK)
    args = ap.parse_args()
    for part, fn in zip(parts, (timing, variance, to_one_percent, variance_vs_L, mse_section),
                        strict=True):
        if part in args.only:
            fn(args)


if __name__ == "__main__":
    main()
