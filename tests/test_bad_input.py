"""The bad-input table: every public function x every bad input (DESIGN.md section 2).

* Concrete inputs: bad static facts (shape, rank, dtype, d = 0, empty, options, ``epsilon <= 0``,
  non-int counts) and bad values (NaN/inf points, negative, non-finite or zero-mass weights,
  unequal masses) raise ``ValueError``/``TypeError`` whose message names the argument.
* Under ``jax.jit`` (value facts only): a result with a ``status`` reports a non-SUCCESS code and
  stays finite (NaN is allowed only where the input had a NaN and the status says so); a result
  without one (a loss, a 1-D distance) is NaN, the flag.

The table is keyed by the public names: :func:`test_every_public_function_is_in_the_table` fails
when a name enters ``__all__`` of ``otreg`` (or of ``otreg.losses``, ``transforms``, ``nn``,
``costs``) without cases. No case is marked xfail: every one passes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import otreg
from otreg import _checks, costs, losses, transforms

nn = pytest.importorskip("otreg.nn")
nnx = pytest.importorskip("flax.nnx")

N, M, D = 5, 4, 2
NAN, INF = float("nan"), float("inf")

# Public names that take no input to validate: result types, constants, modules, type aliases.
EXEMPT = {
    "otreg.DivergenceAux": "result type", "otreg.SinkhornResult": "result type",
    "otreg.SolverStats": "result type", "otreg.SparseOTResult": "result type",
    "otreg.Status": "constants", "otreg.costs": "module (its __all__ is enumerated)",
    "otreg.losses": "module (its __all__ is enumerated)",
    "otreg.transforms": "module (its __all__ is enumerated)", "otreg.__version__": "constant",
    "otreg.nn": "module (its __all__ is enumerated)",
    "otreg.data": "module of example data sets and file loading (tested in test_cli)",
    "otreg.plots": "module of figure helpers (matplotlib; exercised by the notebooks)",
    "transforms.AddOTPenaltyState": "state type", "transforms.ProjectTransportState": "state type",
    "costs.Cost": "type alias",
}
MODULES = {"otreg": otreg, "losses": losses, "transforms": transforms, "nn": nn, "costs": costs}


def public_names() -> set[str]:
    return {f"{mod}.{name}" for mod, m in MODULES.items() for name in m.__all__}


# ----------------------------------------------------------------------------------------------
# inputs: fresh random data each run (the seed is printed by the `rng` fixture)


@pytest.fixture(scope="module")
def data():
    seed = np.random.SeedSequence().entropy % (2 ** 32)
    print(f"test_bad_input data seed: {seed}")
    rng = np.random.default_rng(seed)
    a, b = rng.uniform(0.2, 1, N), rng.uniform(0.2, 1, M)
    f32 = lambda z: jnp.asarray(z, jnp.float32)  # noqa: E731
    return {"x": f32(rng.normal(size=(N, D))), "y": f32(rng.normal(size=(M, D)) + 1),
            "a": f32(a / a.sum()), "b": f32(b / b.sum()),
            "C": f32(rng.uniform(size=(N, M))), "P": f32(np.full((N, M), 1 / (N * M))),
            "logits": f32(rng.normal(size=(3, M))), "u": f32(rng.normal(size=(N,))),
            "v": f32(rng.normal(size=(M,)) + 1)}


def nan_at(z, value=NAN):
    return z.at[(0,) * z.ndim].set(value)


def neg(w):
    return w.at[0].set(-w[0])


# ----------------------------------------------------------------------------------------------
# concrete cases: (public name, case id, call(data), exception, regex the message must match)


class Case(NamedTuple):
    name: str
    id: str
    call: Callable[[dict], Any]
    exc: type
    match: str


def geom_cases(name: str, solve: Callable, needs_eps: bool = True) -> list[Case]:
    """Cases shared by the solvers that take ``(geom, a, b)``; ``solve(geom, a, b, **kw)``."""
    pc = otreg.PointCloud
    out = [
        Case(name, "nan_C", lambda d: solve(nan_at(d["C"]), d["a"], d["b"]), ValueError,
             "cost|geom"),
        Case(name, "inf_C", lambda d: solve(nan_at(d["C"], INF), d["a"], d["b"]), ValueError,
             "cost|geom"),
        Case(name, "nan_points", lambda d: solve(pc(nan_at(d["x"]), d["y"]), d["a"], d["b"]),
             ValueError, "point|geom|`x`"),
        Case(name, "neg_a", lambda d: solve(d["C"], neg(d["a"]), d["b"]), ValueError, "`a`"),
        Case(name, "nan_b", lambda d: solve(d["C"], d["a"], nan_at(d["b"])), ValueError, "`b`"),
        Case(name, "zero_mass_a", lambda d: solve(d["C"], 0 * d["a"], d["b"]), ValueError,
             "`a`"),
        Case(name, "mass_mismatch", lambda d: solve(d["C"], d["a"], 1.5 * d["b"]), ValueError,
             "`a`.*`b`|`b`.*`a`"),
        Case(name, "shape_a", lambda d: solve(d["C"], d["a"][:-1], d["b"]), ValueError, "`a`"),
        Case(name, "rank_C", lambda d: solve(d["C"][0], d["a"], d["b"]), ValueError,
             "geom|cost_matrix"),
        Case(name, "int_C", lambda d: solve(d["C"].astype(jnp.int32), None, None), TypeError,
             "geom|cost_matrix"),
        Case(name, "int_a", lambda d: solve(d["C"], jnp.ones(N, jnp.int32), None), TypeError,
             "`a`"),
        Case(name, "d0", lambda d: solve(pc(jnp.ones((N, 0)), jnp.ones((M, 0))), None, None),
             ValueError, "dimension d = 0"),
        Case(name, "empty", lambda d: solve(jnp.ones((0, M)), None, None), ValueError,
             "empty"),
        Case(name, "geom_str", lambda d: solve("C", None, None), TypeError, "geom"),
        Case(name, "max_iter_0", lambda d: solve(d["C"], None, None, max_iter=0), ValueError,
             "max_iter"),
        Case(name, "max_iter_float", lambda d: solve(d["C"], None, None, max_iter=10.0),
             TypeError, "max_iter"),
        Case(name, "tol_neg", lambda d: solve(d["C"], None, None, tol=-1.0), ValueError, "tol"),
    ]
    if needs_eps:
        out += [Case(name, f"epsilon_{tag}", lambda d, e=e: solve(d["C"], None, None, epsilon=e),
                     ValueError, "epsilon") for tag, e in (("0", 0.0), ("neg", -1.0),
                                                           ("nan", NAN))]
    return out


def points_cases(name: str, solve: Callable) -> list[Case]:
    """Cases shared by functions of point clouds ``solve(x, y, a, b, **kw)``."""
    return [
        Case(name, "nan_x", lambda d: solve(nan_at(d["x"]), d["y"], d["a"], d["b"]), ValueError,
             "`x`|point"),
        Case(name, "inf_y", lambda d: solve(d["x"], nan_at(d["y"], INF), d["a"], d["b"]),
             ValueError, "`y`|point"),
        Case(name, "neg_a", lambda d: solve(d["x"], d["y"], neg(d["a"]), d["b"]), ValueError,
             "`a`"),
        Case(name, "nan_b", lambda d: solve(d["x"], d["y"], d["a"], nan_at(d["b"])),
             ValueError, "`b`"),
        Case(name, "zero_mass_b", lambda d: solve(d["x"], d["y"], d["a"], 0 * d["b"]),
             ValueError, "`b`"),
        Case(name, "shape_b", lambda d: solve(d["x"], d["y"], d["a"], d["b"][:-1]), ValueError,
             "`b`"),
        Case(name, "rank_x", lambda d: solve(d["x"][:, 0], d["y"], None, None), ValueError,
             "`x`"),
        Case(name, "d_mismatch", lambda d: solve(d["x"], d["y"][:, :1], None, None), ValueError,
             "`x` and `y`"),
        Case(name, "d0", lambda d: solve(jnp.ones((N, 0)), jnp.ones((M, 0)), None, None),
             ValueError, "dimension d = 0"),
        Case(name, "empty", lambda d: solve(jnp.ones((0, D)), d["y"], None, None), ValueError,
             "empty"),
        Case(name, "int_x", lambda d: solve(jnp.ones((N, D), jnp.int32), d["y"], None, None),
             TypeError, "`x`"),
    ]


def _sinkhorn(geom, a, b, **kw):
    return otreg.sinkhorn(geom, a, b, **kw)


def _sns(geom, a, b, **kw):
    return otreg.sns(geom, a, b, **kw)


def _sparse(geom, a, b, **kw):
    return otreg.sparse_ot(geom, a, b, **{"k": 2, **kw})


def _quadratic(geom, a, b, **kw):
    return otreg.quadratic_ot(geom, a, b, **kw)


def _gamma_cases(name, solve):
    return [Case(name, f"gamma_{tag}", lambda d, g=g: solve(d["C"], None, None, gamma=g),
                 ValueError, "gamma") for tag, g in (("0", 0.0), ("neg", -1.0), ("nan", NAN))]


def _divergence(x, y, a, b, **kw):
    return otreg.sinkhorn_divergence(x, y, a, b, **kw)


def _sw(x, y, a, b, **kw):
    return otreg.sliced_w2(x, y, a, b, **kw)


def _pt_update(d, P=None, u=None, **kw):
    P = d["P"] if P is None else P
    tx = transforms.project_transport(0.5, **kw)
    state = tx.init({"P": d["P"]})
    return tx.update({"P": d["P"] * 0 if u is None else u}, state, {"P": P})


def _penalty(d, fn, params=None):
    tx = transforms.add_ot_penalty(fn, 0.1, key=jax.random.PRNGKey(0))
    params = {"w": d["u"]} if params is None else params
    return tx.update(params, tx.init(params), params)


def _router(d, x, **kw):
    router = nn.SparseOTRouter(D, 2, 3, rngs=nnx.Rngs(0), **kw)
    return router(x)


M3 = jnp.abs(jnp.arange(M, dtype=jnp.float32)[:, None] - jnp.arange(M)[None])
LABELS = jnp.asarray([0, 1, 3])
_label = losses.wasserstein_label_loss
_pair = (lambda d: d["x"][None], lambda d: d["y"][None])  # batch of one point set

CONCRETE: list[Case] = [
    *geom_cases("otreg.sinkhorn", _sinkhorn),
    Case("otreg.sinkhorn", "mode", lambda d: otreg.sinkhorn(d["C"], mode="fast"), ValueError,
         "mode"),
    Case("otreg.sinkhorn", "check_every_float", lambda d: otreg.sinkhorn(d["C"], check_every=2.5),
         TypeError, "check_every"),
    *geom_cases("otreg.sns", _sns),
    Case("otreg.sns", "keep_mass", lambda d: otreg.sns(d["C"], keep_mass=1.5), ValueError,
         "keep_mass"),
    *geom_cases("otreg.sparse_ot", _sparse, needs_eps=False),
    *_gamma_cases("otreg.sparse_ot", _sparse),
    Case("otreg.sparse_ot", "k_0", lambda d: otreg.sparse_ot(d["C"], k=0), ValueError, "`k`"),
    Case("otreg.sparse_ot", "k_float", lambda d: otreg.sparse_ot(d["C"], k=1.5), TypeError,
         "`k`"),
    Case("otreg.sparse_ot", "k_gt_n", lambda d: otreg.sparse_ot(d["C"], k=N + 1), ValueError,
         "`k`"),
    Case("otreg.sparse_ot", "formulation", lambda d: otreg.sparse_ot(d["C"], k=2,
                                                                     formulation="primal"),
         ValueError, "formulation"),
    *geom_cases("otreg.quadratic_ot", _quadratic, needs_eps=False),
    *_gamma_cases("otreg.quadratic_ot", _quadratic),
    Case("otreg.quadratic_ot", "solver", lambda d: otreg.quadratic_ot(d["C"], solver="adam"),
         ValueError, "solver"),
    *points_cases("otreg.sinkhorn_divergence", _divergence),
    Case("otreg.sinkhorn_divergence", "epsilon_0",
         lambda d: otreg.sinkhorn_divergence(d["x"], d["y"], epsilon=0.0), ValueError, "epsilon"),
    Case("otreg.sinkhorn_divergence", "mass_mismatch",
         lambda d: otreg.sinkhorn_divergence(d["x"], d["y"], d["a"], 2 * d["b"]), ValueError,
         "`a`.*`b`|`b`.*`a`"),
    Case("otreg.sinkhorn_divergence", "method",
         lambda d: otreg.sinkhorn_divergence(d["x"], d["y"], method="newton"), ValueError,
         "method"),
    *points_cases("otreg.sliced_w2", _sw),
    Case("otreg.sliced_w2", "n_projections_float",
         lambda d: otreg.sliced_w2(d["x"], d["y"], n_projections=10.0), TypeError,
         "n_projections"),
    Case("otreg.sliced_w2", "n_projections_0",
         lambda d: otreg.sliced_w2(d["x"], d["y"], n_projections=0), ValueError,
         "n_projections"),
    Case("otreg.sliced_w2", "control_variate",
         lambda d: otreg.sliced_w2(d["x"], d["y"], control_variate="both"), ValueError,
         "control_variate"),
    Case("otreg.wasserstein_1d", "nan_u", lambda d: otreg.wasserstein_1d(nan_at(d["u"]), d["v"]),
         ValueError, "`u`"),
    Case("otreg.wasserstein_1d", "nan_u_equal_sizes",
         lambda d: otreg.wasserstein_1d(nan_at(d["u"])[:M], d["v"]), ValueError, "`u`"),
    Case("otreg.wasserstein_1d", "neg_weights",
         lambda d: otreg.wasserstein_1d(d["u"], d["v"], neg(d["a"]), None), ValueError,
         "u_weights"),
    Case("otreg.wasserstein_1d", "zero_mass",
         lambda d: otreg.wasserstein_1d(d["u"], d["v"], None, 0 * d["b"]), ValueError,
         "v_weights"),
    Case("otreg.wasserstein_1d", "p_below_1",
         lambda d: otreg.wasserstein_1d(d["u"], d["v"], p=0.5), ValueError, "`p`"),
    Case("otreg.wasserstein_1d", "shape_weights",
         lambda d: otreg.wasserstein_1d(d["u"], d["v"], d["a"][:-1]), ValueError, "u_weights"),
    Case("otreg.wasserstein_1d", "empty",
         lambda d: otreg.wasserstein_1d(d["u"][:0], d["v"]), ValueError, "empty"),
    Case("otreg.wasserstein_1d", "int_u",
         lambda d: otreg.wasserstein_1d(jnp.arange(N), d["v"]), TypeError, "`u`"),
    Case("otreg.wasserstein_1d", "sort", lambda d: otreg.wasserstein_1d(d["u"], d["v"],
                                                                        sort="quick"),
         ValueError, "sort"),
    Case("otreg.PointCloud", "nan_x", lambda d: otreg.PointCloud(nan_at(d["x"]), d["y"]),
         ValueError, "`x`"),
    Case("otreg.PointCloud", "d0", lambda d: otreg.PointCloud(jnp.ones((N, 0)),
                                                              jnp.ones((M, 0))),
         ValueError, "dimension d = 0"),
    Case("otreg.PointCloud", "rank", lambda d: otreg.PointCloud(d["x"][0], d["y"]), ValueError,
         "`x`"),
    Case("otreg.PointCloud", "int", lambda d: otreg.PointCloud(d["x"].astype(int), d["y"]),
         TypeError, "`x`"),
    Case("otreg.PointCloud", "cost", lambda d: otreg.PointCloud(d["x"], d["y"], cost="l3"),
         ValueError, "cost"),
    Case("otreg.PointCloud", "block_size", lambda d: otreg.PointCloud(d["x"], d["y"],
                                                                      block_size=2.0),
         TypeError, "block_size"),
    Case("otreg.PointCloud", "scale_cost", lambda d: otreg.PointCloud(d["x"], d["y"],
                                                                      scale_cost=-1.0),
         ValueError, "scale_cost"),
    Case("otreg.CostMatrix", "nan", lambda d: otreg.CostMatrix(nan_at(d["C"])), ValueError,
         "cost_matrix"),
    Case("otreg.CostMatrix", "rank", lambda d: otreg.CostMatrix(d["C"][0]), ValueError,
         "cost_matrix"),
    Case("otreg.CostMatrix", "empty", lambda d: otreg.CostMatrix(jnp.ones((0, 3))), ValueError,
         "empty"),
    Case("otreg.CostMatrix", "int", lambda d: otreg.CostMatrix(jnp.ones((2, 3), int)),
         TypeError, "cost_matrix"),
    Case("otreg.explain", "unknown", lambda d: otreg.explain(99), ValueError, "status code"),
    # losses
    *[Case(f"losses.{name}", cid, call, exc, match) for name, fn in (
        ("sinkhorn_divergence_loss", losses.sinkhorn_divergence_loss),
        ("sliced_w2_loss", losses.sliced_w2_loss),
        ("sparse_ot_loss", lambda p, t: losses.sparse_ot_loss(p, t, k=2)))
      for cid, call, exc, match in (
          ("nan_pred", lambda d, fn=fn: fn(nan_at(d["x"])[None], d["y"][None]), ValueError,
           "`pred`"),
          ("inf_target", lambda d, fn=fn: fn(d["x"][None], nan_at(d["y"], INF)[None]),
           ValueError, "`target`"),
          ("batch", lambda d, fn=fn: fn(d["x"][None], d["y"]), ValueError, "batch shape"),
          ("rank", lambda d, fn=fn: fn(d["x"][0], d["y"][0]), ValueError, r"\(\.\.\., n, d\)"),
          ("d0", lambda d, fn=fn: fn(jnp.ones((1, N, 0)), jnp.ones((1, M, 0))), ValueError,
           "d >= 1"),
          ("int", lambda d, fn=fn: fn(jnp.ones((N, D), int), d["y"]), TypeError, "`pred`"),
      )],
    Case("losses.sinkhorn_divergence_loss", "neg_weights",
         lambda d: losses.sinkhorn_divergence_loss(d["x"], d["y"], pred_weights=neg(d["a"])),
         ValueError, "pred_weights"),
    Case("losses.sinkhorn_divergence_loss", "epsilon_0",
         lambda d: losses.sinkhorn_divergence_loss(d["x"], d["y"], epsilon=0.0), ValueError,
         "epsilon"),
    Case("losses.sliced_w2_loss", "n_projections_float",
         lambda d: losses.sliced_w2_loss(d["x"], d["y"], n_projections=8.0), TypeError,
         "n_projections"),
    Case("losses.sparse_ot_loss", "k_float",
         lambda d: losses.sparse_ot_loss(d["x"], d["y"], k=1.5), TypeError, "`k`"),
    Case("losses.sparse_ot_loss", "cost", lambda d: losses.sparse_ot_loss(d["x"], d["y"], k=1,
                                                                          cost="l7"),
         ValueError, "cost"),
    Case("losses.wasserstein_label_loss", "nan_logits",
         lambda d: _label(nan_at(d["logits"]), LABELS, M3), ValueError, "`logits`"),
    Case("losses.wasserstein_label_loss", "label_range",
         lambda d: _label(d["logits"], LABELS.at[0].set(M), M3), ValueError, "`labels`"),
    Case("losses.wasserstein_label_loss", "soft_sum",
         lambda d: _label(d["logits"], jnp.full((3, M), 0.5), M3), ValueError, "`labels`"),
    Case("losses.wasserstein_label_loss", "soft_neg",
         lambda d: _label(d["logits"], jnp.full((3, M), 1.0 / M).at[0, 0].set(-0.1), M3),
         ValueError, "`labels`"),
    Case("losses.wasserstein_label_loss", "nan_cost",
         lambda d: _label(d["logits"], LABELS, nan_at(M3)), ValueError, "cost_matrix"),
    Case("losses.wasserstein_label_loss", "cost_shape",
         lambda d: _label(d["logits"], LABELS, M3[:-1]), ValueError, "cost_matrix"),
    Case("losses.wasserstein_label_loss", "labels_dtype",
         lambda d: _label(d["logits"], LABELS > 0, M3), TypeError, "`labels`"),
    Case("losses.wasserstein_label_loss", "epsilon_neg",
         lambda d: _label(d["logits"], LABELS, M3, epsilon=-1.0), ValueError, "epsilon"),
    Case("losses.wasserstein_label_loss", "method",
         lambda d: _label(d["logits"], LABELS, M3, method="exact"), ValueError, "method"),
    # transforms
    Case("transforms.add_ot_penalty", "key_none",
         lambda d: transforms.add_ot_penalty(lambda p, k: 0.0, 0.1, key=None), TypeError, "key"),
    Case("transforms.add_ot_penalty", "key_int",
         lambda d: transforms.add_ot_penalty(lambda p, k: 0.0, 0.1, key=3), TypeError, "key"),
    Case("transforms.add_ot_penalty", "not_callable",
         lambda d: transforms.add_ot_penalty(1.0, 0.1, key=jax.random.key(0)), TypeError,
         "penalty_fn"),
    Case("transforms.add_ot_penalty", "strength_neg",
         lambda d: transforms.add_ot_penalty(lambda p, k: 0.0, -1.0, key=jax.random.key(0)),
         ValueError, "strength"),
    Case("transforms.add_ot_penalty", "non_scalar",
         lambda d: _penalty(d, lambda p, k: p["w"] ** 2), ValueError, "penalty_fn"),
    Case("transforms.add_ot_penalty", "nan_gradient",
         lambda d: _penalty(d, lambda p, k: jnp.sum(jnp.sqrt(-jnp.abs(p["w"]) - 1.0))), ValueError,
         "penalty_fn"),
    Case("transforms.wasserstein_weight_decay", "strength_0",
         lambda d: transforms.wasserstein_weight_decay(0.0, prior_std=1.0), ValueError,
         "strength"),
    Case("transforms.wasserstein_weight_decay", "prior_std_nan",
         lambda d: transforms.wasserstein_weight_decay(1.0, prior_std=NAN), ValueError,
         "prior_std"),
    Case("transforms.wasserstein_weight_decay", "nan_params",
         lambda d: transforms.wasserstein_weight_decay(1.0, prior_std=1.0).update(
             {"w": d["u"]}, None, {"w": nan_at(d["u"])}), ValueError, "params"),
    Case("transforms.gaussian_w2", "nan_w", lambda d: transforms.gaussian_w2(nan_at(d["u"]), 1.0),
         ValueError, "`w`"),
    Case("transforms.gaussian_w2", "prior_std_0", lambda d: transforms.gaussian_w2(d["u"], 0.0),
         ValueError, "prior_std"),
    Case("transforms.project_transport", "epsilon_0",
         lambda d: transforms.project_transport(0.0), ValueError, "epsilon"),
    Case("transforms.project_transport", "neg_P", lambda d: _pt_update(d, P=-d["P"]),
         ValueError, "params"),
    Case("transforms.project_transport", "nan_update", lambda d: _pt_update(d, u=nan_at(d["P"])),
         ValueError, "updates"),
    Case("transforms.project_transport", "neg_a",
         lambda d: transforms.project_transport(0.5, a=neg(d["a"])), ValueError, "`a`"),
    Case("transforms.project_transport", "mass",
         lambda d: _pt_update(d, a=d["a"], b=2 * d["b"]), ValueError, "`a`.*`b`"),
    Case("transforms.project_transport", "shape_a", lambda d: _pt_update(d, a=d["a"][:-1]),
         ValueError, "`a`"),
    Case("transforms.project_transport", "vector_param",
         lambda d: transforms.project_transport(0.5).init({"P": d["u"]}), ValueError, "matrix"),
    Case("transforms.project_transport", "max_iter_float",
         lambda d: transforms.project_transport(0.5, max_iter=5.0), TypeError, "max_iter"),
    # nn
    Case("nn.SparseOTRouter", "nan_x", lambda d: _router(d, nan_at(d["x"])), ValueError, "`x`"),
    Case("nn.SparseOTRouter", "features", lambda d: _router(d, d["x"][:, :1]), ValueError,
         "`x`.*in_features"),
    Case("nn.SparseOTRouter", "int_x", lambda d: _router(d, d["x"].astype(int)), TypeError,
         "`x`"),
    Case("nn.SparseOTRouter", "rank", lambda d: _router(d, d["x"][0]), ValueError, "`x`"),
    Case("nn.SparseOTRouter", "gamma_0", lambda d: _router(d, d["x"], gamma=0.0), ValueError,
         "gamma"),
    Case("nn.SparseOTRouter", "capacity_float",
         lambda d: nn.SparseOTRouter(D, 2, 2.0, rngs=nnx.Rngs(0)), TypeError, "capacity"),
    Case("nn.route", "nan_logits", lambda d: nn.route(nan_at(d["logits"]), 2), ValueError,
         "`logits`"),
    Case("nn.route", "capacity_0", lambda d: nn.route(d["logits"], 0), ValueError, "capacity"),
    Case("nn.route", "rank", lambda d: nn.route(d["logits"][0], 2), ValueError, "`logits`"),
    # costs
    Case("costs.get", "unknown", lambda d: costs.get("manhattan"), ValueError, "cost"),
    Case("costs.lp", "p_0", lambda d: costs.lp(0.0), ValueError, "`p`"),
    Case("costs.transposed", "not_callable", lambda d: costs.transposed("sqeuclidean"),
         TypeError, "cost"),
    Case("costs.is_symmetric", "not_callable", lambda d: costs.is_symmetric(2.0), TypeError,
         "cost"),
]


# ----------------------------------------------------------------------------------------------
# under jit: one compiled function per public function, reused by all its cases (same shapes)


class JitCase(NamedTuple):
    name: str
    id: str
    run: Callable[[dict], tuple]  # -> ("status", status, outputs) or ("flag", out, must_be_nan)
    nan_input: bool = False


_JIT: dict[str, Callable] = {}


def jitted(key: str, fn: Callable) -> Callable:
    if key not in _JIT:
        _JIT[key] = jax.jit(fn)
    return _JIT[key]


def _res_outputs(res):
    if isinstance(res, otreg.SinkhornResult):
        return res.status, [res.cost, res.f, res.g, res.error]
    return res.status, [res.cost, res.primal, res.alpha, res.beta, res.values, res.error]


def solver_jit_cases(name: str, solve: Callable, param: str, good: float) -> list[JitCase]:
    """``solve(C, a, b, hyper)`` under jit on bad C, weights, and a traced hyperparameter."""
    f = lambda d: jitted(name, lambda C, a, b, h: _res_outputs(solve(C, a, b, h)))  # noqa: E731
    run = lambda C=None, a=None, b=None, h=good: lambda d: ("status", *f(d)(  # noqa: E731
        d["C"] if C is None else C(d), d["a"] if a is None else a(d),
        d["b"] if b is None else b(d), jnp.asarray(h, jnp.float32)))
    return [
        JitCase(name, "nan_C", run(C=lambda d: nan_at(d["C"])), True),
        JitCase(name, "inf_C", run(C=lambda d: nan_at(d["C"], INF))),
        JitCase(name, "neg_a", run(a=lambda d: neg(d["a"]))),
        JitCase(name, "nan_b", run(b=lambda d: nan_at(d["b"])), True),
        JitCase(name, "zero_mass_a", run(a=lambda d: 0 * d["a"])),
        JitCase(name, "mass_mismatch", run(b=lambda d: 1.5 * d["b"])),
        *[JitCase(name, f"{param}_{tag}", run(h=h)) for tag, h in
          (("0", 0.0), ("neg", -1.0), ("nan", NAN))],
    ]


def _flag_run(key, fn, make_args, must_be_nan):
    return lambda d: ("flag", jitted(key, fn)(*make_args(d)), must_be_nan)


_sw8 = lambda x, y, a, b: otreg.sliced_w2(x, y, a, b, n_projections=8)  # noqa: E731
_w1 = lambda u, v, uw, vw: otreg.wasserstein_1d(u, v, uw, vw)  # noqa: E731
_label_jit = lambda z, y: _label(z, y, M3, epsilon=0.5)  # noqa: E731
_point_losses = {
    "sinkhorn_divergence_loss": lambda p, t: losses.sinkhorn_divergence_loss(p, t, epsilon=1.0),
    "sliced_w2_loss": lambda p, t: losses.sliced_w2_loss(p, t, n_projections=8),
    "sparse_ot_loss": lambda p, t: losses.sparse_ot_loss(p, t, k=2, max_iter=50),
}
_ONE_BAD = np.array([True, False])  # a batch of two examples, the first one bad


def _two(z, bad):
    return jnp.stack([bad(z), z])


def _pt_jit(d, P, u):
    tx = transforms.project_transport(0.5)
    upd, state = jitted("project", tx.update)({"P": u}, tx.init({"P": d["P"]}), {"P": P})
    return "status", state.status, [upd["P"], state.error]


def _pen_jit(d):
    tx = transforms.add_ot_penalty(lambda p, k: jnp.sum(jnp.sqrt(p["w"])), 0.1,
                                   key=jax.random.PRNGKey(0))
    params = {"w": neg(jnp.abs(d["u"]))}
    upd, state = jitted("penalty", tx.update)(params, tx.init(params), params)
    return "status", state.status, [upd["w"]]


def _decay_jit(d):
    tx = transforms.wasserstein_weight_decay(1.0, prior_std=1.0)
    w = nan_at(d["u"])
    upd, _ = jitted("decay", tx.update)({"w": d["u"]}, tx.init({"w": w}), {"w": w})
    return "flag", upd["w"], np.arange(N) == 0  # NaN only where the parameter was NaN


def _router_jit(d):
    router = nn.SparseOTRouter(D, 2, 3, rngs=nnx.Rngs(0))
    fn = _JIT.setdefault("router", nnx.jit(lambda m, x: m(x, return_status=True)))
    dispatch, combine, status = fn(router, nan_at(d["x"]))
    return "status", status, [dispatch, combine]


def _cost_jit(c):
    def run(d):
        out = jitted(f"cost_{c.__name__}", c)(nan_at(d["x"]), d["y"])
        return "flag", out, np.broadcast_to((np.arange(N) == 0)[:, None], (N, M))
    return run


_sink_pc = lambda x, y: _res_outputs(otreg.sinkhorn(otreg.PointCloud(x, y), epsilon=1.0,  # noqa: E731
                                                    max_iter=200))

def _div(x, y, a, b, e):
    v, aux = otreg.sinkhorn_divergence(x, y, a, b, epsilon=e, max_iter=200)
    return aux.status, [v, aux.p, aux.q]


def _div_run(make_args):
    return lambda d: ("status", *jitted("div", _div)(*make_args(d)))


JITTED: list[JitCase] = [
    *solver_jit_cases("otreg.sinkhorn", lambda C, a, b, e: otreg.sinkhorn(
        C, a, b, epsilon=e, max_iter=200), "epsilon", 0.5),
    JitCase("otreg.sinkhorn", "nan_points",
            lambda d: ("status", *jitted("sink_pc", _sink_pc)(nan_at(d["x"]), d["y"])), True),
    *solver_jit_cases("otreg.sns", lambda C, a, b, e: otreg.sns(
        C, a, b, epsilon=e, max_iter=200, warmup_iter=20), "epsilon", 0.5),
    *solver_jit_cases("otreg.sparse_ot", lambda C, a, b, g: otreg.sparse_ot(
        C, a, b, k=2, gamma=g, max_iter=50), "gamma", 0.5),
    *solver_jit_cases("otreg.quadratic_ot", lambda C, a, b, g: otreg.quadratic_ot(
        C, a, b, gamma=g, max_iter=50), "gamma", 0.5),
    JitCase("otreg.PointCloud", "nan_x_in_sinkhorn",
            lambda d: ("status", *jitted("sink_pc", _sink_pc)(nan_at(d["x"]), d["y"])), True),
    *[JitCase("otreg.sinkhorn_divergence", cid, _div_run(mk), nan) for cid, mk, nan in (
        ("nan_x", lambda d: (nan_at(d["x"]), d["y"], d["a"], d["b"], 1.0), True),
        ("neg_a", lambda d: (d["x"], d["y"], neg(d["a"]), d["b"], 1.0), False),
        ("mass_mismatch", lambda d: (d["x"], d["y"], d["a"], 2 * d["b"], 1.0), False),
        ("zero_mass_b", lambda d: (d["x"], d["y"], d["a"], 0 * d["b"], 1.0), False),
        ("epsilon_0", lambda d: (d["x"], d["y"], d["a"], d["b"], 0.0), False))],
    *[JitCase("otreg.sliced_w2", cid, _flag_run("sw", _sw8, mk, True), nan) for cid, mk, nan in (
        ("nan_x", lambda d: (nan_at(d["x"]), d["y"], d["a"], d["b"]), True),
        ("neg_a", lambda d: (d["x"], d["y"], neg(d["a"]), d["b"]), False),
        ("zero_mass_b", lambda d: (d["x"], d["y"], d["a"], 0 * d["b"]), False))],
    *[JitCase("otreg.wasserstein_1d", cid, _flag_run("w1", _w1, mk, True), nan)
      for cid, mk, nan in (
          ("nan_u", lambda d: (nan_at(d["u"]), d["v"], d["a"], d["b"]), True),
          ("neg_weights", lambda d: (d["u"], d["v"], neg(d["a"]), d["b"]), False),
          ("zero_mass", lambda d: (d["u"], d["v"], d["a"], 0 * d["b"]), False))],
    JitCase("otreg.wasserstein_1d", "nan_u_equal_sizes", _flag_run(
        "w1eq", lambda u, v: otreg.wasserstein_1d(u, v),
        lambda d: (nan_at(d["u"][:M]), d["v"]), True), True),
    *[JitCase(f"losses.{name}", cid, _flag_run(f"loss_{name}", fn, mk, _ONE_BAD), nan)
      for name, fn in _point_losses.items() for cid, mk, nan in (
          ("nan_pred", lambda d: (_two(d["x"], nan_at), jnp.stack([d["y"]] * 2)), True),
          ("inf_target", lambda d: (jnp.stack([d["x"]] * 2),
                                    _two(d["y"], lambda z: nan_at(z, INF))), False))],
    *[JitCase("losses.wasserstein_label_loss", cid, _flag_run("label", _label_jit, mk,
                                                              np.array([True, False, False])),
              nan) for cid, mk, nan in (
        ("nan_logits", lambda d: (nan_at(d["logits"]), LABELS), True),
        ("label_range", lambda d: (d["logits"], LABELS.at[0].set(M)), False),
        ("label_negative", lambda d: (d["logits"], LABELS.at[0].set(-1)), False))],
    JitCase("losses.wasserstein_label_loss", "soft_sum", _flag_run(
        "label_soft", _label_jit, lambda d: (d["logits"], jnp.full((3, M), 1.0 / M).at[0].mul(2)),
        np.array([True, False, False]))),
    JitCase("transforms.project_transport", "nan_update",
            lambda d: _pt_jit(d, d["P"], nan_at(d["P"])), False),
    JitCase("transforms.project_transport", "neg_P", lambda d: _pt_jit(d, -d["P"], 0 * d["P"])),
    JitCase("transforms.add_ot_penalty", "nan_gradient", _pen_jit),
    JitCase("transforms.wasserstein_weight_decay", "nan_params", _decay_jit, True),
    JitCase("transforms.gaussian_w2", "nan_w", _flag_run(
        "gw2", transforms.gaussian_w2, lambda d: (nan_at(d["u"]), 1.0), True), True),
    JitCase("nn.SparseOTRouter", "nan_x", _router_jit, True),
    *[JitCase(f"costs.{c.__name__}", "nan_x", _cost_jit(c), True)
      for c in (costs.sqeuclidean, costs.euclidean, costs.cosine)],
]

def _params(cases, kind):
    return [pytest.param(c, id=f"{c.name}-{c.id}") for c in cases]


def test_every_public_function_is_in_the_table():
    names = public_names()
    covered = {c.name for c in CONCRETE} | {c.name for c in JITTED}
    missing = sorted(names - covered - set(EXEMPT))
    assert not missing, f"public names without bad-input cases (add them to the table): {missing}"
    stale = sorted((covered | set(EXEMPT)) - names)
    assert not stale, f"table entries that are no longer public: {stale}"


@pytest.mark.parametrize("case", _params(CONCRETE, "concrete"))
def test_concrete_bad_input_raises_naming_the_argument(case, data):
    with pytest.raises(case.exc, match=case.match):
        case.call(data)


@pytest.mark.parametrize("case", _params(JITTED, "jit"))
def test_jit_bad_input_is_reported(case, data):
    kind, *rest = case.run(data)
    if kind == "status":
        status, outputs = rest
        status = np.asarray(status)
        assert np.all(status != otreg.Status.SUCCESS), f"status {status} for a bad input"
        for out in outputs:
            out = np.asarray(out)
            ok = np.isfinite(out) | (np.isnan(out) if case.nan_input else False)
            assert np.all(ok), f"non-finite output ({out}) for a bad input with status {status}"
    else:
        out, must_be_nan = np.asarray(rest[0]), np.broadcast_to(rest[1], np.shape(rest[0]))
        np.testing.assert_array_equal(np.isnan(out), must_be_nan,
                                      err_msg=f"NaN flag wrong: {out}")
        assert np.all(np.isfinite(out[~must_be_nan]))


def test_python_lists_are_accepted(data):
    """Lists are arrays: validation turns them into the same arrays (the solvers then see
    exactly what they see for jnp input; the router's list case is in test_nn)."""
    x, y = np.asarray(data["x"]).tolist(), np.asarray(data["y"]).tolist()
    np.testing.assert_array_equal(otreg.PointCloud(x, y).cost_matrix,
                                  otreg.PointCloud(data["x"], data["y"]).cost_matrix)
    C = np.asarray(data["C"]).tolist()
    np.testing.assert_array_equal(otreg.CostMatrix(C).cost_matrix, data["C"])
    a = _checks.check_weights(np.asarray(data["a"]).tolist(), N, "a", jnp.float32)
    np.testing.assert_array_equal(a, data["a"])


def test_mass_tolerance_follows_the_weights_precision(x64):
    """float32-normalised weights cast to float64 pass the equal-mass check (as in POT and
    OTT-JAX), concrete and in-graph; a real mismatch (1e-3) still raises / is reported."""
    rng = np.random.default_rng()
    w32 = rng.uniform(size=(20, 1000)).astype(np.float32)
    w32 = (w32 / w32.sum(axis=1, keepdims=True)).astype(np.float64)  # each off 1 by ~1e-8
    uniform = np.full(7, 1 / 7)  # float64 precision
    repair = jax.jit(lambda a, b: _checks.repair_weights(a, b)[2])
    for a in w32:
        _checks.check_weight_values(jnp.asarray(a), jnp.asarray(uniform))  # no ValueError
        assert int(repair(jnp.asarray(a), jnp.asarray(uniform))) == otreg.Status.SUCCESS
    for b in (uniform * 1.001, (np.full(7, 1 / 7, np.float32) * np.float32(1.001)).astype(
            np.float64)):
        with pytest.raises(ValueError, match="`a` sums to"):
            _checks.check_weight_values(jnp.asarray(w32[0]), jnp.asarray(b))
        assert int(repair(jnp.asarray(w32[0]), jnp.asarray(b))) == otreg.Status.MASS_MISMATCH
    a64 = rng.uniform(size=50)
    a64 /= a64.sum()  # float64 weights keep the float64 tolerance
    with pytest.raises(ValueError, match="`a` sums to"):
        _checks.check_weight_values(jnp.asarray(a64), jnp.asarray(uniform * (1 + 1e-6)))
    assert int(repair(jnp.asarray(a64), jnp.asarray(uniform * (1 + 1e-6)))) == 3
