"""A progress display for the entropic solvers' ``progress=`` callable (used by the CLI).

The solver calls ``bar(iteration, error, epsilon)`` after every accepted block (Python numbers).
On a terminal one line is redrawn in place: a bar of the error's progress from its first value
to ``tol`` on a log scale, the sweeps, the elapsed time and an estimate of the time left. The
estimate assumes the linear convergence Sinkhorn shows at a fixed epsilon: the error's log-rate
per sweep over the last reports of the current epsilon stage, extrapolated to ``tol`` (or to
``max_iter``, whichever comes first), times the measured seconds per sweep. Elsewhere (a pipe, a
log file) it prints plain lines, at most one per ``every`` seconds, and the last one.
"""

from __future__ import annotations

import math
import sys
import time
from typing import TextIO


class ProgressBar:
    """Callable ``(iteration, error, epsilon) -> None`` that draws a progress bar."""

    WIDTH = 24

    def __init__(self, tol: float, max_iter: int, *, stream: TextIO | None = None,
                 tty: bool | None = None, every: float = 1.0, label: str = "sinkhorn"):
        self.tol, self.max_iter, self.label, self.every = float(tol), int(max_iter), label, every
        self.stream = sys.stderr if stream is None else stream
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)()) if tty is None else tty
        self.t0: float | None = None  # the first report: compilation is not counted
        self.first_err: float | None = None
        self.history: list[tuple[int, float, float]] = []  # (iteration, error, time) this stage
        self.eps: float | None = None
        self.last_print = -math.inf
        self.line = ""

    def eta(self) -> float | None:
        """Seconds left, extrapolated from the current stage's rate; None when unknown."""
        if len(self.history) < 2:
            return None
        (i0, e0, t0), (i1, e1, t1) = self.history[max(0, len(self.history) - 4)], self.history[-1]
        if i1 <= i0 or e1 <= 0 or e0 <= e1:
            return None
        rate = (math.log(e0) - math.log(e1)) / (i1 - i0)  # log-error decrease per sweep
        sweeps = min(max(math.log(e1 / self.tol), 0.0) / rate, max(self.max_iter - i1, 0))
        return sweeps * (t1 - t0) / (i1 - i0)

    def fraction(self, err: float) -> float:
        if self.first_err is None or err <= self.tol:
            return 1.0 if err <= self.tol else 0.0
        span = math.log(max(self.first_err, self.tol * 1.0001) / self.tol)
        return min(max(1.0 - math.log(err / self.tol) / span, 0.0), 1.0)

    def __call__(self, iteration, error, epsilon) -> None:
        it, err, eps = int(iteration), float(error), float(epsilon)
        now = time.perf_counter()
        if self.t0 is None:
            self.t0 = now
        if eps != self.eps:  # a new annealing stage: its bar and its rate start afresh
            self.eps, self.history, self.first_err = eps, [], None
        if self.first_err is None and math.isfinite(err):
            self.first_err = err
        if math.isfinite(err):
            self.history.append((it, err, now))
        elapsed = now - self.t0
        eta = self.eta()
        left = "" if eta is None else f" | ~{_seconds(eta)} left"
        text = (f"{self.label}: error {err:.2e} -> tol {self.tol:.0e} | sweeps {it} | "
                f"eps {eps:.3g} | {_seconds(elapsed)}{left}")
        if self.tty:
            done = int(round(self.WIDTH * self.fraction(err)))
            self.line = f"\r[{'#' * done}{'.' * (self.WIDTH - done)}] {text}"
            self.stream.write(self.line + "\x1b[K")
            self.stream.flush()
        elif now - self.last_print >= self.every or err <= self.tol or it >= self.max_iter:
            self.stream.write(text + "\n")
            self.stream.flush()
            self.last_print = now

    def close(self) -> None:
        """End the redrawn line (terminal mode) so later output starts on a new line."""
        if self.tty and self.line:
            self.stream.write("\n")
            self.stream.flush()


def _seconds(s: float) -> str:
    if s < 60:
        return f"{s:.1f} s"
    m, s = divmod(int(s), 60)
    return f"{m} min {s:02d} s" if m < 60 else f"{m // 60} h {m % 60:02d} min"
