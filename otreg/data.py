"""Built-in generated data for ``otreg demo`` and the examples (NumPy, deterministic by seed)."""

from __future__ import annotations

import numpy as np

__all__ = ["gaussians", "ring_and_blob", "load_points"]


def gaussians(n: int = 1000, m: int | None = None, d: int = 2, shift: float = 1.0,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """x ~ N(0, I_d) (n points), y ~ N(shift, I_d) (m points): the benchmark problem."""
    rng = np.random.default_rng(seed)
    m = n if m is None else m
    return rng.standard_normal((n, d)), rng.standard_normal((m, d)) + shift


def ring_and_blob(n: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A noisy unit ring (n points) and a tight Gaussian blob at its centre (n points), 2-D."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(0, 2 * np.pi, n)
    ring = np.c_[np.cos(t), np.sin(t)] + 0.05 * rng.standard_normal((n, 2))
    return ring, 0.2 * rng.standard_normal((n, 2))


def load_points(path: str) -> np.ndarray:
    """Points (n, d) from a .npy, .npz (its first array) or .csv (comma-separated, no header)."""
    if path.endswith(".npy"):
        arr = np.load(path)
    elif path.endswith(".npz"):
        with np.load(path) as z:
            if not z.files:
                raise ValueError(f"{path}: the .npz archive holds no array.")
            arr = z[z.files[0]]
    elif path.endswith(".csv"):
        arr = np.loadtxt(path, delimiter=",", ndmin=2)
    else:
        raise ValueError(f"{path}: unsupported file type; use .npy, .npz or .csv.")
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"{path}: expected an (n, d) array of points, got shape {arr.shape}.")
    return arr
