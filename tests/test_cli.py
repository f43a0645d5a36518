"""The command line: `otreg demo` and `otreg distance` on files, against POT's exact answer."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import ot
import pytest

import otreg
from otreg import cli, data
from otreg._progress import ProgressBar


def test_demo_prints_table(capsys):
    assert cli.main(["demo", "--n", "200"]) == 0
    out = capsys.readouterr().out
    assert "method" in out and "converged" in out
    sliced = [line for line in out.splitlines() if line.startswith("sliced_w2")]
    assert len(sliced) == 2 and all(line.rstrip().endswith("n/a") for line in sliced)
    # SNS's showcase (float64 assignment, tol 1e-6): Sinkhorn, SNS, then what method="auto"
    # picks there and why; SNS is the faster by a wide margin (Sinkhorn spends thousands of
    # sweeps), as this very run measures
    assign = [line for line in out.splitlines() if "assignment" in line]
    assert [line.split(",")[0] for line in assign] == ["sinkhorn", "sns", "auto -> sns"]
    assert all(line.rstrip().endswith("True") for line in assign[1:])
    its = [int(line.split()[-4]) for line in assign]
    ms = [float(line.split()[-2]) for line in assign]
    assert its[1] < its[0] / 10 and ms[1] < ms[0]  # SNS: fewer iterations, less time
    assert its[2] == its[1]  # auto ran SNS on the same problem
    why = [line for line in out.splitlines() if line.startswith("  ^ method='auto' picks sns:")]
    assert len(why) == 1 and "mean row gap / eps" in why[0]
    assert "first call of each solver compiles" in out
    sparse = [line for line in out.splitlines() if line.startswith(("quadratic_ot", "sparse_ot"))]
    assert len(sparse) == 2 and sparse[0].rstrip().endswith("True")
    # the k = 2 relaxation may stop with a row gap above tol: the demo prints the solver's own
    # status, never a claimed convergence (same problem as cli._sparse_rows)
    x, y = data.gaussians(200, d=2, seed=0)  # the demo's defaults at --n 200
    geom = otreg.PointCloud(jnp.asarray(x[:300], jnp.float32), jnp.asarray(y[:300], jnp.float32),
                            scale_cost="max")
    res = otreg.sparse_ot(geom, k=2, gamma=0.1)
    assert sparse[1].rstrip().endswith(str(bool(res.converged)))
    assert not bool(res.converged) or float(res.error) <= 1e-4  # SUCCESS is earned (float32 tol)
    rows = [line for line in out.splitlines()
            if line.startswith("sinkhorn") and "assignment" not in line]
    assert len(rows) == 4 and all(line.rstrip().endswith("True") for line in rows)
    values = {float(line.split()[-5]) for line in rows if "divergence" not in line}
    assert max(values) - min(values) < 1e-4 * max(values)
    div = [float(line.split()[-5]) for line in rows if "divergence" in line][0]
    assert 0 <= div < min(values)  # debiasing removes the entropic self-transport terms


@pytest.mark.parametrize("ext,method", [("npy", "sinkhorn"), ("npz", "sns"), ("csv", "auto")])
def test_distance_from_files(tmp_path, rng, x64, ext, method, capsys):
    x, y = rng.standard_normal((30, 2)), rng.standard_normal((25, 2)) + 1
    px, py = tmp_path / f"x.{ext}", tmp_path / f"y.{ext}"
    for p, v in ((px, x), (py, y)):
        {"npy": lambda p, v: np.save(p, v), "npz": lambda p, v: np.savez(p, pts=v),
         "csv": lambda p, v: np.savetxt(p, v, delimiter=",")}[ext](p, v)
    code = cli.main(["distance", str(px), str(py), "--epsilon", "0.5", "--x64", "--tol", "1e-9",
                     "--method", method])
    assert code == 0
    value = float(capsys.readouterr().out.strip())
    C = ot.dist(x, y)
    P = ot.sinkhorn(np.full(30, 1 / 30), np.full(25, 1 / 25), C, 0.5, method="sinkhorn_log",
                    stopThr=1e-12, numItermax=100_000)
    a, b = np.full(30, 1 / 30), np.full(25, 1 / 25)
    kl = (P * np.log(P / np.outer(a, b))).sum()
    np.testing.assert_allclose(value, (P * C).sum() + 0.5 * kl, rtol=1e-7)


def test_distance_sliced(tmp_path, rng, capsys):
    x = rng.standard_normal((40, 3))
    px, py = tmp_path / "x.npy", tmp_path / "y.npy"
    np.save(px, x)
    y = x * np.array([2.0, 1.0, 0.5]) + np.array([1.0, 0.0, 0.0])  # not a translation: the
    np.save(py, y)  # default estimator (QMC + the exact mean split) is exact on translations
    xj, yj = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
    values = []
    for seed, n_proj in ((0, 128), (3, 40)):
        assert cli.main(["distance", str(px), str(py), "--method", "sliced", "--seed", str(seed),
                         "--n-projections", str(n_proj)]) == 0
        out = capsys.readouterr()
        value = float(out.out.strip().splitlines()[0])
        assert "converged=n/a" in out.err
        ref = float(otreg.sliced_w2(xj, yj, key=jax.random.PRNGKey(seed), n_projections=n_proj))
        np.testing.assert_allclose(value, ref, rtol=1e-6)
        values.append(value)
    assert values[0] != values[1]  # the seed and the number of projections reach the solver


def test_distance_sparse(tmp_path, rng, x64, capsys):
    x, y = rng.standard_normal((30, 2)), rng.standard_normal((30, 2)) + 1
    px, py = tmp_path / "x.npy", tmp_path / "y.npy"
    np.save(px, x)
    np.save(py, y)
    assert cli.main(["distance", str(px), str(py), "--method", "quadratic", "--x64",
                     "--gamma", "0.5", "--tol", "1e-9"]) == 0
    value = float(capsys.readouterr().out.strip())
    a = np.full(30, 1 / 30)
    T = ot.smooth.smooth_ot_dual(a, a, ot.dist(x, y), 0.5, reg_type="l2", stopThr=1e-14,
                                 numItermax=100_000)
    np.testing.assert_allclose(value, (T * ot.dist(x, y)).sum() + 0.25 * (T ** 2).sum(),
                               rtol=1e-5)
    code = cli.main(["distance", str(px), str(py), "--method", "sparse", "--k", "1"])
    out = capsys.readouterr()
    value = float(out.out.strip())
    geom = otreg.PointCloud(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32))
    res = otreg.sparse_ot(geom, k=1, gamma=0.1, max_iter=10_000, tol=None)  # the CLI defaults
    np.testing.assert_allclose(value, float(res.primal), rtol=1e-6)
    assert code == (0 if bool(res.converged) else 1)
    assert f"converged={bool(res.converged)}" in out.err


def test_distance_errors(tmp_path, capsys):
    p = tmp_path / "x.txt"
    p.write_text("1")
    assert cli.main(["distance", str(p), str(p)]) == 2
    assert "unsupported file type" in capsys.readouterr().err


def test_console_script_entry_point():
    out = subprocess.run([sys.executable, "-m", "otreg.cli", "--help"], capture_output=True,
                         text=True, check=True).stdout
    assert "demo" in out and "distance" in out
    assert data.gaussians(5, d=3)[1].shape == (5, 3)


def test_version():
    out = subprocess.run([sys.executable, "-m", "otreg.cli", "--version"], capture_output=True,
                         text=True, check=True).stdout
    assert out.startswith(f"otreg {otreg.__version__} (jax {jax.__version__}")


def _files(tmp_path, x, y):
    px, py = tmp_path / "x.npy", tmp_path / "y.npy"
    np.save(px, x)
    np.save(py, y)
    return str(px), str(py)


def test_distance_json(tmp_path, rng, capsys):
    x, y = rng.standard_normal((40, 2)), rng.standard_normal((30, 2)) + 1
    px, py = _files(tmp_path, x, y)
    assert cli.main(["distance", px, py, "--epsilon", "0.5", "--json"]) == 0
    out = capsys.readouterr()
    rec = json.loads(out.out)
    assert out.err == ""
    res = otreg.sinkhorn(otreg.PointCloud(jnp.asarray(x, jnp.float32),
                                          jnp.asarray(y, jnp.float32)), epsilon=0.5)
    np.testing.assert_allclose(rec["value"], float(res.cost), rtol=1e-5)
    assert rec["converged"] is True and rec["status"] == 0 and rec["error"] <= 1e-3
    assert rec["n_iters"] == int(res.n_iters) and rec["method"] == "sinkhorn"
    assert (rec["n"], rec["m"], rec["d"], rec["dtype"]) == (40, 30, 2, "float32")
    assert set(rec["seconds"]) == {"compile", "solve", "total"}
    assert 0 < rec["seconds"]["solve"] <= rec["seconds"]["total"]
    # a result that is not converged says so, with the reason, and exits 1
    assert cli.main(["distance", px, py, "--epsilon", "0.01", "--max-iter", "3", "--json"]) == 1
    rec = json.loads(capsys.readouterr().out)
    assert rec["converged"] is False and rec["status"] == otreg.Status.MAX_ITER
    assert rec["status_message"].startswith("not converged")
    assert cli.main(["distance", px, py, "--method", "sliced", "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["converged"] is None and rec["status"] is None and rec["n_iters"] == 128


def test_sparse_and_quadratic_explain_non_convergence(tmp_path, rng, capsys):
    x, y = rng.standard_normal((30, 2)), rng.standard_normal((30, 2)) + 1
    px, py = _files(tmp_path, x, y)
    for method in ("quadratic", "sparse"):
        assert cli.main(["distance", px, py, "--method", method, "--max-iter", "2"]) == 1
        err = capsys.readouterr().err
        assert "converged=False" in err and "# status " in err and "not converged" in err


def test_distance_rejects_nan_points(tmp_path, rng, capsys):
    x = rng.standard_normal((10, 2))
    x[3, 1] = np.nan
    px, py = _files(tmp_path, x, rng.standard_normal((10, 2)))
    assert cli.main(["distance", px, py]) == 2
    assert "contains NaN or inf (row 3)" in capsys.readouterr().err


def test_progress_plain_lines_when_not_a_terminal(tmp_path, rng, capsys):
    x, y = rng.standard_normal((60, 2)), rng.standard_normal((60, 2)) + 1
    px, py = _files(tmp_path, x, y)
    # float64: float32 can stop just above 1e-5 here (honestly STALLED: the floor, issue 15)
    assert cli.main(["distance", px, py, "--epsilon", "0.05", "--progress", "--tol", "1e-5",
                     "--x64"]) == 0
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("sinkhorn: error")]
    assert lines and "\r" not in err  # plain lines: no carriage returns in a log
    assert "-> tol 1e-05" in lines[-1] and "sweeps" in lines[-1]
    assert float(lines[-1].split()[2]) <= 1e-5  # the last line is the converged report


def test_progress_bar_on_a_terminal_draws_and_estimates_time_left():
    stream = io.StringIO()
    bar = ProgressBar(1e-6, 10_000, stream=stream, tty=True)
    err = 1e-1
    for it in range(10, 230, 10):  # linear convergence: the error falls 10x per 40 sweeps
        bar(it, err, 0.01)
        err /= 10 ** 0.25
    bar.close()
    frames = stream.getvalue().split("\r")[1:]
    assert len(frames) == 22 and stream.getvalue().endswith("\n")
    assert frames[0].startswith("[" + "." * ProgressBar.WIDTH + "]")
    assert frames[-1].startswith("[" + "#" * ProgressBar.WIDTH + "]")  # reached tol
    assert "left" in frames[5]
    assert bar.eta() is not None and bar.eta() < 1.0  # nothing left to do at tol
    mid = ProgressBar(1e-6, 10_000, stream=io.StringIO(), tty=True)
    for it, e in ((10, 1e-1), (20, 1e-2), (30, 1e-3)):
        mid(it, e, 0.01)
    h = mid.history
    per_sweep = (h[-1][2] - h[0][2]) / 20
    np.testing.assert_allclose(mid.eta(), 30 * per_sweep, rtol=1e-6)  # 3 decades at 10 sweeps


def test_console_script_keeps_compiled_solvers(tmp_path, rng):
    """The command (not `import otreg`, not `cli.main`) uses JAX's persistent compilation cache:
    a second invocation finds the compiled solver there."""
    px, py = _files(tmp_path, rng.standard_normal((50, 2)), rng.standard_normal((40, 2)))
    cache = tmp_path / "cache"
    env = {**os.environ, "OTREG_CACHE_DIR": str(cache)}
    runs = [json.loads(subprocess.run(
        [sys.executable, "-m", "otreg.cli", "distance", px, py, "--epsilon", "0.5", "--json"],
        capture_output=True, text=True, check=True, env=env).stdout) for _ in range(2)]
    assert any(cache.iterdir()), "nothing was written to the compilation cache"
    assert runs[0]["value"] == runs[1]["value"]
    assert jax.config.jax_compilation_cache_dir in (None, "")  # this process: untouched
