"""Point-cloud gradient flow with sliced W2 (the paper's experiment at CPU size), every design.

``--n`` source points (a noisy unit sphere, default 2048) flow toward as many target points (a
torus, R = 1, r = 0.3, shifted by (1, 1, 1)) by plain gradient descent on N * SW_2 estimated
from L fresh directions per step (default L = 16), for each estimator at equal L, with the same
keys for all:

- ``plain MC``: ``directions="gaussian", control_variate=None``;
- ``lower CV`` / ``upper CV``: gaussian directions with otreg's lower (exact mean split) and
  upper (leave-one-out fitted) variates (not the published fitted-gamma estimator: see
  ``otreg.sliced``);
- ``orthogonal``: Haar orthonormal frames, no variate;
- ``RQMC``: ``directions="qmc"`` (randomised spherical Fibonacci), no variate;
- ``RQMC + lower``: qmc directions with the lower variate;
- ``auto``: ``directions="auto", control_variate="auto"`` (the pair it picks is printed).

Every ``--every`` steps the exact W2 between the moving cloud and the target is measured with POT's
`ot.emd2` (squared Euclidean cost, then the square root); the table gives the mean over
``--seeds`` (3) independent key sequences (the same sequences for every estimator), and the std
over them at the last checkpoint. A design otreg lacks or refuses is reported as n/a.
Float32, CPU. The last row is the CPU time per gradient step (ms, median). The earlier table in
RESULTS.md (plain / lower / upper only) used L = 10 and one key sequence: ``--L 10 --seeds 1``.
``--quick``: n = 256, 30 steps, W2 every 10, 2 key sequences (a smoke test, seconds).

Usage: python benchmarks/sliced_flow.py [--n 2048] [--steps 300] [--lr 0.01] [--every 50]
       [--L 16] [--seeds 3] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

ESTIMATORS = (("plain MC", "gaussian", None), ("lower CV", "gaussian", "lower"),
              ("upper CV", "gaussian", "upper"), ("orthogonal", "orthogonal", None),
              ("RQMC", "qmc", None), ("RQMC + lower", "qmc", "lower"), ("auto", "auto", "auto"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--L", type=int, default=16)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: n = 256, 30 steps, W2 every 10 (explicit options win)")
    if "--quick" in sys.argv:
        ap.set_defaults(n=256, steps=30, every=10, seeds=2)
    args = ap.parse_args()
    import jax
    import jax.numpy as jnp
    import ot

    import otreg
    rng = np.random.default_rng(0)
    v = rng.standard_normal((args.n, 3))
    x0 = v / np.linalg.norm(v, axis=1, keepdims=True) + 0.05 * rng.standard_normal((args.n, 3))
    u, w = rng.uniform(0, 2 * np.pi, (2, args.n))
    y = np.c_[(1 + 0.3 * np.cos(w)) * np.cos(u), (1 + 0.3 * np.cos(w)) * np.sin(u),
              0.3 * np.sin(w)] + 1.0
    yj = jnp.asarray(y, jnp.float32)
    a = np.full(args.n, 1.0 / args.n)

    def exact_w2(x):
        return float(np.sqrt(ot.emd2(a, a, ot.dist(np.asarray(x, np.float64), y))))

    pick = getattr(getattr(otreg, "sliced", None), "auto_estimator", None)
    print(f"# gradient flow, n = {args.n}, L = {args.L}, lr = {args.lr}, {args.seeds} key "
          f"sequence(s), exact W2 (ot.emd2)"
          + (f"; auto picks {pick(3, args.L)}" if pick is not None else ""))
    w2_start = exact_w2(x0)
    results, step_ms, last_std = {}, {}, {}
    for name, directions, cv in ESTIMATORS:
        step = jax.jit(jax.grad(lambda x, k, directions=directions, cv=cv: args.n *
                                otreg.sliced_w2(x, yj, key=k, n_projections=args.L,
                                                directions=directions, control_variate=cv)))
        try:
            step(jnp.asarray(x0, jnp.float32), jax.random.PRNGKey(0)).block_until_ready()
        except Exception as err:  # a design this otreg lacks or refuses: n/a
            results[name] = f"n/a ({type(err).__name__})"
            continue
        traces, times = [], []
        for s in range(args.seeds):
            x = jnp.asarray(x0, jnp.float32)
            key = jax.random.PRNGKey(1 + s)  # the same keys for every estimator
            trace = {0: w2_start}
            for t in range(1, args.steps + 1):
                key, sub = jax.random.split(key)
                t0 = time.process_time()
                x = (x - args.lr * step(x, sub)).block_until_ready()
                times.append(time.process_time() - t0)
                if t % args.every == 0:
                    trace[t] = exact_w2(x)
            traces.append(trace)
        results[name] = {t: float(np.mean([tr[t] for tr in traces])) for t in traces[0]}
        last_std[name] = float(np.std([tr[args.steps // args.every * args.every]
                                       for tr in traces], ddof=1)) if args.seeds > 1 else None
        step_ms[name] = 1e3 * statistics.median(times)
    names = [e[0] for e in ESTIMATORS]
    print("| step | " + " | ".join(names) + " |\n|---" + "|---" * len(names) + "|")
    ref = next(r for r in results.values() if isinstance(r, dict))
    for t in ref:
        print(f"| {t} | " + " | ".join(
            f"{results[k][t]:.4f}" if isinstance(results[k], dict) else results[k]
            for k in names) + " |", flush=True)
    if args.seeds > 1:
        print(f"| std over seeds, step {args.steps // args.every * args.every} | " + " | ".join(
            f"{last_std[k]:.4f}" if k in last_std else "n/a" for k in names) + " |")
    print("| ms / step | " + " | ".join(f"{step_ms[k]:.2f}" if k in step_ms else "n/a"
                                        for k in names) + " |", flush=True)


if __name__ == "__main__":
    main()
