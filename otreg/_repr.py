"""Short, informative reprs for result pytrees (a result can hold a 1,000-entry error history).

One line of headline fields; a scalar field prints its value, a batched field (from ``vmap``) its
range and shape, a traced field its shape. The status code is followed by its message's first
clause (``otreg.explain`` has the whole message).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from otreg.status import Status


def _concrete(v: Any) -> np.ndarray | None:
    try:
        return np.asarray(v)
    except Exception:  # a tracer (inside jit/vmap/grad) has no value to show
        return None


def _fmt(v: Any) -> str:
    if v is None:
        return "None"
    arr = _concrete(v)
    if arr is None:
        return f"<traced {getattr(v, 'dtype', '')}{list(getattr(v, 'shape', ()))}>"
    if arr.dtype == bool:
        return str(bool(arr)) if arr.ndim == 0 else f"{int(arr.sum())}/{arr.size} True"
    if arr.ndim == 0:
        return (f"{float(arr):.6g}" if arr.dtype.kind == "f" or arr.dtype.name == "bfloat16"
                else str(arr.item()))
    if arr.size <= 4 and arr.ndim == 1:
        return "[" + ", ".join(_fmt(v) for v in arr) + "]"
    if arr.size == 0:
        return f"[] {arr.shape}"
    return f"[{arr.min():.4g} .. {arr.max():.4g}] {arr.shape}"


def _status(v: Any) -> str:
    arr = _concrete(v)
    if arr is None:
        return _fmt(v)
    codes = np.unique(arr.astype(int).ravel())
    words = [f"{c} ({Status.name(c) if int(c) in Status.MESSAGES else 'unknown'})"
             for c in codes]
    return words[0] if arr.ndim == 0 else "{" + ", ".join(words) + "}"


def result_repr(name: str, obj: Any, fields: Sequence[str]) -> str:
    """``Name(field=value, ..., status=code (its meaning))`` for the given fields."""
    parts = [f"{f}={_fmt(getattr(obj, f))}" for f in fields]
    if hasattr(obj, "status"):
        parts.append(f"status={_status(obj.status)}")
    return f"{name}({', '.join(parts)})"
