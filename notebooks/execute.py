"""Execute the notebooks top to bottom and fail on any error or NaN shown.

    python notebooks/execute.py                 # every notebook, small mode, outputs discarded
    python notebooks/execute.py 02_sliced*.ipynb
    python notebooks/execute.py --full --write  # the full run whose outputs are committed

Small mode sets ``OTREG_NOTEBOOK_SMALL=1`` in the kernel's environment: every notebook reads it
and shrinks its sizes and step counts. A notebook fails when a cell raises (its last cell asserts
the notebook's story) or when a printed or displayed text output shows ``nan``. The kernel is the
``python3`` kernel of the interpreter running this script. Exit status 1 names what failed.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
NAN = re.compile(r"(?<![A-Za-z_])nan(?![A-Za-z_(])", re.IGNORECASE)


def _texts(cell) -> list[str]:
    out = []
    for o in cell.get("outputs", []):
        if o.get("output_type") == "stream":
            out.append(o.get("text", ""))
        elif o.get("output_type") in ("execute_result", "display_data"):
            out.append(o.get("data", {}).get("text/plain", ""))
    return ["".join(t) if isinstance(t, list) else t for t in out]


def run(path: Path, *, small: bool = True, write: bool = False, timeout: int = 600) -> float:
    """Execute ``path``; return seconds taken. Raise RuntimeError on an error or a NaN shown."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    env_small = os.environ.get("OTREG_NOTEBOOK_SMALL")
    os.environ["OTREG_NOTEBOOK_SMALL"] = "1" if small else "0"
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    t0 = time.perf_counter()
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
    except Exception as err:  # CellExecutionError carries the traceback text
        raise RuntimeError(f"{path.name}: a cell raised:\n{err}") from None
    finally:
        if env_small is None:
            os.environ.pop("OTREG_NOTEBOOK_SMALL", None)
        else:
            os.environ["OTREG_NOTEBOOK_SMALL"] = env_small
    dt = time.perf_counter() - t0
    for i, cell in enumerate(nb.cells):
        for text in _texts(cell):
            if NAN.search(text):
                raise RuntimeError(f"{path.name}: cell {i} shows NaN:\n{text[:2000]}")
    if write:
        for cell in nb.cells:  # committed outputs carry no machine-specific execution metadata
            cell.get("metadata", {}).pop("execution", None)
        nbformat.write(nb, path)
    return dt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebooks", nargs="*", help="default: every notebooks/*.ipynb")
    ap.add_argument("--full", action="store_true", help="default sizes (OTREG_NOTEBOOK_SMALL=0)")
    ap.add_argument("--write", action="store_true", help="save the outputs into the notebook")
    args = ap.parse_args(argv)
    paths = [Path(p) for p in args.notebooks] or sorted(HERE.glob("*.ipynb"))
    failed = []
    for p in paths:
        try:
            dt = run(p.resolve(), small=not args.full, write=args.write)
            print(f"ok    {p.name}  {dt:.1f} s", flush=True)
        except RuntimeError as err:
            print(f"FAIL  {err}", flush=True)
            failed.append(p.name)
    if failed:
        print(f"{len(failed)} notebook(s) failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
