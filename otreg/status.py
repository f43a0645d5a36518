"""Result codes shared by every solver. ``explain(code)`` turns a code into its message.

A solver never raises under ``jit`` for a bad *value* (a negative weight, masses that differ): it
repairs the input to something finite, solves, and reports what it found in ``result.status``. The
code with the highest priority wins (input problems before convergence problems).
"""

from __future__ import annotations

import numpy as np

__all__ = ["Status", "explain"]


class Status:
    """Integer result codes. ``Status.MESSAGES[code]`` is the message ``explain`` prints."""

    SUCCESS = 0
    MAX_ITER = 1
    NUMERICAL = 2
    MASS_MISMATCH = 3
    BAD_WEIGHTS = 4
    NONFINITE_INPUT = 5
    NEWTON_STALLED = 6
    STALLED = 7
    ROW_GAP = 8
    BAD_PARAMETER = 9

    MESSAGES = {
        SUCCESS: "converged: the marginal error reached `tol`.",
        MAX_ITER: "not converged: `max_iter` was reached before the marginal error fell below "
        "`tol`; raise `max_iter`, loosen `tol`, or raise the regularisation (`epsilon` or "
        "`gamma`).",
        NUMERICAL: "numerical breakdown: an iterate left the floating-point range and the solver "
        "stopped with the last finite potentials; use float64 or a larger `epsilon`.",
        MASS_MISMATCH: "invalid input: `a` and `b` have different total mass; `b` was rescaled to "
        "the mass of `a`. Normalise both weight vectors to the same sum.",
        BAD_WEIGHTS: "invalid input: a weight in `a` or `b` was negative or not finite; such "
        "weights were set to 0. Pass non-negative, finite weights.",
        NONFINITE_INPUT: "invalid input: the cost (or a point) was not finite; such entries were "
        "replaced by finite values. Remove NaN/inf from the inputs.",
        NEWTON_STALLED: "not converged: Newton steps failed their line search or stopped "
        "reducing the marginal error (the sparsified Hessian keeps too few entries, the CG "
        "budget is too small, or the precision's floor was reached); raise `keep` or "
        "`cg_max_iter`, loosen `tol`, or use float64.",
        STALLED: "not converged: the solver became stationary (its steps stopped reducing the "
        "objective or the error) before the marginal error reached `tol`, or its iterations "
        "reached `tol` but the returned potentials, rounded to the dtype, do not; the "
        "floating-point floor of the dtype or a small regularization was reached. Use float64, "
        "a larger `gamma`/`epsilon`, or a looser `tol`.",
        ROW_GAP: "not converged: the solver of the semi-dual (relaxed) problem became stationary, "
        "but the plan it recovers misses the row marginal `a` by more than `tol` (the k-sparse "
        "relaxation is not tight for this problem, or the nonsmooth solve stopped short: in "
        "float32 its line search stops where objective changes fall below float32 "
        "resolution). Raise `k` or `gamma`, use float64, or loosen `tol`.",
        BAD_PARAMETER: "invalid input: a traced hyperparameter (`epsilon`, `gamma`, `strength`) "
        "was not a positive finite number; it was replaced by a safe positive value and the "
        "result does not answer the problem asked. Pass a positive finite value.",
    }


    @classmethod
    def name(cls, code) -> str:
        """The constant's name for a code: ``Status.name(8) == "ROW_GAP"``."""
        for key, value in vars(cls).items():
            if key.isupper() and key != "MESSAGES" and value == int(code):
                return key
        raise ValueError(f"Status.name: unknown status code {int(code)}; known codes are "
                         f"{sorted(cls.MESSAGES)}.")


def explain(status) -> str:
    """Message for a result code (an int, or a concrete scalar array from a result).

    For a batch of codes (from ``vmap``) the distinct codes' messages are joined, one per line.
    """
    codes = np.unique(np.asarray(status).astype(int).ravel())
    out = []
    for c in codes:
        if int(c) not in Status.MESSAGES:
            raise ValueError(f"explain: unknown status code {int(c)}; known codes are "
                             f"{sorted(Status.MESSAGES)}.")
        out.append(f"{int(c)}: {Status.MESSAGES[int(c)]}")
    return "\n".join(out)
