"""Peak memory of a blocked PointCloud solve: n = m = 20,000, d = 64, float32.

Reports XLA's compiled memory analysis (temporaries + arguments + outputs) and the process's
peak resident set size (ru_maxrss, which includes the Python/JAX runtime itself) after the solve.
The dense cost alone would be n * m * 4 bytes = 1.6 GB.

Usage: python benchmarks/memory_blocked.py [--n 20000] [--d 64] [--block-size 256] [--eps 0.05]
       [--solver sinkhorn|sns] [--keep 10]
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--block-size", type=int, default=256)
    ap.add_argument("--eps", type=float, default=0.05)
    ap.add_argument("--max-iter", type=int, default=200)
    ap.add_argument("--solver", choices=["sinkhorn", "sns"], default="sinkhorn")
    ap.add_argument("--keep", type=int, default=10)
    args = ap.parse_args()
    import jax
    import jax.numpy as jnp

    import otreg

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((args.n, args.d)), jnp.float32)
    y = jnp.asarray(rng.standard_normal((args.n, args.d)) + 1.0, jnp.float32)

    def solve(x, y):
        geom = otreg.PointCloud(x, y, block_size=args.block_size, scale_cost="max")
        kw = dict(keep=args.keep) if args.solver == "sns" else {}
        r = getattr(otreg, args.solver)(geom, epsilon=args.eps, tol=1e-3, max_iter=args.max_iter,
                                        **kw)
        return r.cost, r.n_iters, r.error, r.converged

    compiled = jax.jit(solve).lower(x, y).compile()
    mem = compiled.memory_analysis()
    t0 = time.perf_counter()
    cost, it, err, conv = jax.block_until_ready(compiled(x, y))
    dt = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    dense = args.n * args.n * 4 / 2**30
    print(f"{args.solver}: n = m = {args.n}, d = {args.d}, block_size = {args.block_size}, "
          f"eps = {args.eps}")
    print(f"value {float(cost):.6g}, iterations {int(it)}, error {float(err):.2e}, "
          f"converged {bool(conv)}, time {dt:.1f} s")
    print(f"XLA temporaries {mem.temp_size_in_bytes / 2**20:.1f} MiB, arguments "
          f"{mem.argument_size_in_bytes / 2**20:.1f} MiB, outputs "
          f"{mem.output_size_in_bytes / 2**20:.3f} MiB; process peak RSS {rss:.2f} GiB "
          f"(a dense cost would be {dense:.2f} GiB)")


if __name__ == "__main__":
    main()
