"""The float32 floor of every solver: which tolerances float32 reaches, and what it reports.

TPUs run float32 (float64 is emulated), so each solver's default tolerance must be reachable in
float32, or the result must say that it was not. For each solver and benchmark problem this runs
float32 solves at a ladder of tolerances and prints, per tol:

- ``status`` as the solver reports it, and its own ``error``;
- ``plan err``: the L1 marginal error of the returned plan (``result.plan()``, as the user gets
  it), summed in float64;
- ``f64 err``: the L1 marginal error, in float64, of the plan that the returned float32
  potentials define on the float64 cost of the same points (Sinkhorn/SNS: the dual pair's plan;
  sparse/quadratic: the returned plan on its support). This is the error against the exact
  problem: it also carries the float32 rounding of the cost itself.
- ``honest``: ``yes`` when SUCCESS comes with ``f64 err <= tol`` (what ``converged`` promises:
  the returned solution meets tol on the exact problem), ``-`` when the status is not SUCCESS,
  ``NO`` otherwise. ``plan err`` can exceed ``f64 err`` by float32 rounding of the plan's own
  evaluation (a few percent near the floor).

The floor of a row is the smallest tol on the ladder with an honest SUCCESS. Problems (the
benchmarks' own): clouds x ~ N(0, I_d), y ~ N(1, I_d), cost |x - y|^2 / max, uniform weights;
the SNS paper's assignment problem (C uniform on [0, 1], eps = 1/1200). Deterministic seeds.

Run: ``python benchmarks/float32_floor.py`` (about a minute on one core).
"""

from __future__ import annotations

import argparse
import datetime

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)  # the float64 references; every solve is float32

import jax.numpy as jnp  # noqa: E402

import otreg  # noqa: E402

TOLS = (1e-3, 1e-4, 1e-5, 1e-6)


def clouds(n, d, seed):
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal((n, d)), rng.standard_normal((n, d)) + 1.0
    C = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    return C / C.max()


def assignment(n, seed):
    return np.random.default_rng(seed).uniform(size=(n, n))


def l1(P, a, b):
    P = np.asarray(P, np.float64)
    return float(np.abs(P.sum(1) - a).sum() + np.abs(P.sum(0) - b).sum())


def dual_plan(f, g, C64, eps, a, b):
    f, g = np.asarray(f, np.float64), np.asarray(g, np.float64)
    return a[:, None] * b[None, :] * np.exp((f[:, None] + g[None, :] - C64) / eps)


def row(label, tol, res, plan_err, f64_err):
    status = otreg.Status.name(int(res.status))
    ok = status == "SUCCESS"
    honest = "-" if not ok else ("yes" if f64_err <= tol else "NO")
    print(f"| {label} | {tol:.0e} | {status} | {float(res.error):.1e} | {plan_err:.1e} | "
          f"{f64_err:.1e} | {int(res.n_iters)} | {honest} |", flush=True)
    return ok and f64_err <= tol


def entropic(name, solver, C64, eps, seed_label):
    n, m = C64.shape
    a, b = np.full(n, 1 / n), np.full(m, 1 / m)
    C32 = jnp.asarray(C64, jnp.float32)
    floor = None
    for tol in TOLS:
        res = solver(C32, epsilon=eps, tol=tol)
        plan_err = l1(res.plan(), a, b)
        f64_err = l1(dual_plan(res.f, res.g, C64, eps, a, b), a, b)
        if row(f"{name} {seed_label}", tol, res, plan_err, f64_err):
            floor = tol  # the ladder descends: the last honest SUCCESS is the smallest
    return floor


def smooth(name, solver, C64, seed_label, **kw):
    n, m = C64.shape
    a, b = np.full(n, 1 / n), np.full(m, 1 / m)
    C32 = jnp.asarray(C64, jnp.float32)
    floor = None
    for tol in TOLS:
        res = solver(C32, tol=tol, **kw)
        P = np.asarray(res.plan(), np.float64)
        plan_err = l1(P, a, b)
        if row(f"{name} {seed_label}", tol, res, plan_err, plan_err):
            floor = tol
    return floor


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    n, s = args.n, args.seed
    print(f"# float32 floors, {datetime.date.today()}, jax {jax.__version__}, "
          f"backend {jax.default_backend()}, n = {n}, seed {s}; solves in float32, references "
          "in float64")
    print("| solver, problem | tol | status | reported err | plan err | f64 err | iterations "
          "| honest |")
    print("|---|---|---|---|---|---|---|---|")
    floors = {}
    for d in (2, 64):
        C = clouds(n, d, s)
        for eps in (0.05, 0.005):
            key = f"sinkhorn, clouds d={d} eps={eps}"
            floors[key] = entropic("sinkhorn", otreg.sinkhorn, C, eps, f"clouds d={d} eps={eps}")
    A = assignment(n, s)
    floors["sinkhorn, assignment"] = entropic("sinkhorn", otreg.sinkhorn, A, 1 / 1200,
                                              "assignment eps=1/1200")
    floors["sns, assignment"] = entropic("sns", otreg.sns, A, 1 / 1200, "assignment eps=1/1200")
    C = clouds(n, 64, s)
    floors["sns, clouds d=64 eps=0.005"] = entropic("sns", otreg.sns, C, 0.005,
                                                    "clouds d=64 eps=0.005")
    for gamma in (0.1, 0.01):
        floors[f"quadratic_ot gamma={gamma}"] = smooth(
            "quadratic_ot", otreg.quadratic_ot, clouds(n, 2, s), f"clouds d=2 gamma={gamma}",
            gamma=gamma)
    for k in (2, 8):
        floors[f"sparse_ot k={k}"] = smooth("sparse_ot", otreg.sparse_ot, clouds(n, 2, s),
                                            f"clouds d=2 k={k} gamma=0.1", k=k, gamma=0.1)
    print("\nThe same sparse/quadratic problems in float64 at the float32 default tol (1e-4):")
    for label, call in ((f"quadratic_ot gamma={g}", lambda C, g=g: otreg.quadratic_ot(
            C, gamma=g, tol=1e-4)) for g in (0.1, 0.01)):
        res = call(jnp.asarray(clouds(n, 2, s), jnp.float64))
        print(f"- {label}: {otreg.Status.name(int(res.status))}, error {float(res.error):.1e}")
    for k in (2, 8):
        res = otreg.sparse_ot(jnp.asarray(clouds(n, 2, s), jnp.float64), k=k, gamma=0.1,
                              tol=1e-4)
        print(f"- sparse_ot k={k}: {otreg.Status.name(int(res.status))}, "
              f"error {float(res.error):.1e}")
    print("\n| solver, problem | float32 floor (smallest tol with an honest SUCCESS) |")
    print("|---|---|")
    for k, v in floors.items():
        print(f"| {k} | {'none on the ladder' if v is None else f'{v:.0e}'} |")


if __name__ == "__main__":
    main()
