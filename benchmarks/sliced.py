"""Sliced W2: otreg vs POT vs OTT-JAX vs a plain NumPy project-and-sort, and control-variate
variance ratios. Run pinned and single-threaded: ``bash benchmarks/run_sliced.sh``.

1. ``timing``: time per call, n = 5000 (x ~ N(0, I), y ~ N(1, I)), uniform weights, for d and L
   given, in each dtype of ``--dtypes`` (float32 and float64), every implementation in the same
   dtype: otreg (in-graph integer-key sort), POT `ot.sliced_wasserstein_distance` (NumPy; given
   directions drawn in the row's dtype inside the timed call, since POT's own are float64 and
   would promote float32 clouds), OTT `ott.tools.sliced.sliced_wasserstein`, and the floor: NumPy
   projection and `np.sort` of both clouds. Values are compared (all estimate SW_2 from L
   directions).
2. ``variance``: variance ratio Var(plain MC) / Var(control variate) at L = 100 over `--keys`
   keys: anisotropic Gaussians in d = 3, 10 and 100, and sphere vs torus point clouds
   (n = 2048, 3-D); next to otreg's, the ratios of an independent NumPy implementation of the
   paper's estimator on the same data (a statistical check: over 500 keys a ratio has about 9%
   relative error).
3. ``to1pct``: time to a 1% relative std of SW_2^2, measured only: on the data of 2. (same
   draws), in ``--to1-dtype`` for both libraries, for each estimator (POT plain MC; otreg plain,
   lower, upper) the relative std over ``--to1-keys`` independent keys (POT: seeds) at each L of
   ``--to1-L`` in increasing order, stopping at the first L whose relative std is <= 1%; that L
   is then timed (CPU, one call). If no L of the grid reaches 1%: "not reached at L <= max", with
   the relative std and the time of one call at the largest L.
4. ``variance_L``: relative std of SW_2^2 over keys at L = 2, 10, 100, 1000.

Usage: python benchmarks/sliced.py [--d 3 64 784] [--L 10 100 1000] [--keys 500]
       [--only timing to1pct]
"""

from __future__ import annotations

import argparse
import statistics
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
    print("## time per call, n = 5000 (ms, CPU), every implementation in the row's dtype\n"
          "| dtype | d | L | otreg | POT | OTT | NumPy floor | otreg/POT | otreg/floor | "
          "values otreg / POT / floor |\n|---|---|---|---|---|---|---|---|---|---|", flush=True)
    for d in args.d:
        x64 = rng.standard_normal((5000, d))
        y64 = rng.standard_normal((5000, d)) + 1.0
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


def clouds(kind, rng):
    if kind == "gauss3":
        x = rng.standard_normal((1000, 3)) * np.array([2.0, 1.0, 0.5])
        y = rng.standard_normal((1000, 3)) * np.array([0.5, 1.5, 1.0]) + 1.0
    elif kind in ("gauss10", "gauss100"):
        d = int(kind[5:])
        s = rng.uniform(0.5, 2.0, d)
        x = rng.standard_normal((1000, d)) * s
        y = rng.standard_normal((1000, d)) * s[::-1] + 1.0
    else:  # unit sphere vs torus (R = 1, r = 0.3), n = 2048; "shifted": torus moved by (1,1,1)
        v = rng.standard_normal((2048, 3))
        x = v / np.linalg.norm(v, axis=1, keepdims=True)
        u, w = rng.uniform(0, 2 * np.pi, (2, 2048))
        y = np.c_[(1 + 0.3 * np.cos(w)) * np.cos(u), (1 + 0.3 * np.cos(w)) * np.sin(u),
                  0.3 * np.sin(w)] + (1.0 if kind.endswith("shifted") else 0.0)
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
    for kind in DATA:
        xn, yn = clouds(kind, rng)
        x, y = (jnp.asarray(z, jnp.float32) for z in (xn, yn))
        est = {}
        for cv in (None, "lower", "upper"):
            f = jax.jit(jax.vmap(lambda k, cv=cv: otreg.sliced_w2(
                x, y, key=k, n_projections=100, control_variate=cv, squared=True)))
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
                                                control_variate=cv, squared=True))
        batch = max(1, min(K, int(4e6 // (L * max(x.shape[0], y.shape[0])))))
        many = jax.jit(lambda ks: jax.lax.map(one, ks, batch_size=batch))
        return one, many

    for kind in DATA:
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
        for L in (2, 10, 100, 1000):
            row = []
            for cv in (None, "lower", "upper"):
                f = jax.jit(jax.vmap(lambda k, cv=cv, L=L: otreg.sliced_w2(
                    x, y, key=k, n_projections=L, control_variate=cv, squared=True)))
                v = np.asarray(f(keys), np.float64)
                row.append(v.std() / v.mean())
            print(f"| {kind} | {L} | " + " | ".join(f"{r:.2e}" for r in row) + " |", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--d", type=int, nargs="+", default=[3, 64, 784])
    ap.add_argument("--L", type=int, nargs="+", default=[10, 100, 1000])
    ap.add_argument("--keys", type=int, default=500)
    ap.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    ap.add_argument("--to1-dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--to1-keys", type=int, default=100)
    ap.add_argument("--to1-L", type=int, nargs="+", default=[2, 5, 10, 20, 50, 100, 200, 500, 1000])
    parts = ["timing", "variance", "to1pct", "variance_L"]
    ap.add_argument("--only", nargs="+", choices=parts, default=parts)
    args = ap.parse_args()
    for part, fn in zip(parts, (timing, variance, to_one_percent, variance_vs_L),
                        strict=True):
        if part in args.only:
            fn(args)


if __name__ == "__main__":
    main()
